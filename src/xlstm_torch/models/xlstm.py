"""The xLSTM language model of the paper (Beck et al. 2024, Sec. 2.4 and the
stacked-blocks architecture of its Fig. 1).

Read top to bottom in the order the paper draws it:

    input_ids (B, S)
    └─ embedding                        (B, S, D)
       └─ L residual blocks, mLSTM or sLSTM (xLSTM[a:b]; config.slstm_at)
          └─ post-blocks LayerNorm
             └─ lm_head (tied to the embedding by default)   logits (B, S, V)
"""

from __future__ import annotations

import torch
from torch import nn

from xlstm_torch.nn import LayerNorm, MLSTMBlock, SLSTMBlock
from xlstm_torch.nn.init import small_init_

from .base import LanguageModel, keep_positions, register_model
from .config import XLSTMConfig
from .state import ModelState, check_inputs, run_blocks


@register_model
class XLSTMLanguageModel(LanguageModel):
    """xLSTM[a:b] language model. forward(input_ids (B, S), state=None) -> logits (B, S, V), ModelState.

    Logits are in the model's dtype. forward(input_ids (1, S), cu_seqlens=...) runs packed documents,
    each as if alone, and returns one state row per document (models/state.py). return_state=False (a
    training step) computes no final state and returns None for it.
    """

    model_type = "xlstm"
    supports_packed_states = True
    config_class = XLSTMConfig

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        if not isinstance(config, XLSTMConfig):
            raise TypeError(f"config must be an XLSTMConfig, got {type(config).__name__}")
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim)
        self.embedding_dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([self._make_block(j, kind) for j, kind in enumerate(c.block_types)])
        self.out_norm = LayerNorm(c.embedding_dim, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.embedding_dim, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    def _make_block(self, index: int, kind: str) -> nn.Module:
        c = self.config
        if kind == "mlstm":
            return MLSTMBlock(c.embedding_dim, num_heads=c.num_heads, proj_factor=c.mlstm_proj_factor,
                              round_up_to_multiple_of=c.round_up_to_multiple_of, conv_kernel_size=c.conv_kernel_size,
                              qkv_block_size=c.qkv_block_size, chunk_size=c.chunk_size, bias=c.bias,
                              dropout=c.dropout, norm_eps=c.norm_eps, num_blocks=c.num_blocks)
        return SLSTMBlock(c.embedding_dim, num_heads=c.slstm_num_heads, conv_kernel_size=c.slstm_conv_kernel_size,
                          ffn_proj_factor=c.ffn_proj_factor, round_up_to_multiple_of=c.round_up_to_multiple_of,
                          bias=c.bias, dropout=c.dropout, norm_eps=c.norm_eps, block_index=index,
                          num_blocks=c.num_blocks)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's init (training details): small init for the embedding (and an untied head), each block's
        own scheme (see MLSTMLayer/SLSTMLayer.reset_parameters), norms at one."""
        small_init_(self.embedding.weight, self.config.embedding_dim)
        for block in self.blocks:
            block.reset_parameters()
        self.out_norm.reset_parameters()
        if not self.config.tie_weights:
            small_init_(self.lm_head.weight, self.config.embedding_dim)

    def forward(self, input_ids: torch.Tensor, state: ModelState | None = None, cu_seqlens: torch.Tensor | None = None,
                *, return_state: bool = True, logits_to_keep: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ModelState | None]:
        block_states = check_inputs(input_ids, state, len(self.blocks), cu_seqlens)
        x = self.embedding_dropout(self.embedding(input_ids))  # (B, S, D)
        x, state = run_blocks(self.blocks, x, block_states, cu_seqlens, return_state)  # (B, S, D)
        logits = self.lm_head(self.out_norm(keep_positions(x, logits_to_keep)))  # (B, S, V) or as kept
        return logits, state
