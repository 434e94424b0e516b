"""The xLSTM 7B language model ("xLSTM Large"; Beck et al. 2025, architecture
section).

    input_ids (B, S)
    └─ embedding                                   (B, S, D)
       └─ L blocks: mLSTM layer + SwiGLU FFN, RMSNorm pre-norms (LargeMLSTMBlock)
          └─ final RMSNorm
             └─ lm_head (untied) ─ 30 tanh(logits / 30)    logits (B, S, V)

Parameter names: embedding.weight, blocks.{j}.norm_mlstm.weight, blocks.{j}.mlstm_layer.{q,k,v,
ogate_preact,igate_preact,fgate_preact,out_proj}.weight (+ .bias of the gates),
blocks.{j}.mlstm_layer.multihead_norm.weight, blocks.{j}.norm_ffn.weight,
blocks.{j}.ffn.{proj_up_gate,proj_up,proj_down}.weight, out_norm.weight, lm_head.weight.
"""

from __future__ import annotations

import torch
from torch import nn

from xlstm_torch.nn import LargeMLSTMBlock, RMSNorm, soft_cap
from xlstm_torch.nn.init import small_init_

from .base import LanguageModel, keep_positions, register_model
from .config import XLSTMLargeConfig
from .state import ModelState, check_inputs, run_blocks


@register_model
class XLSTMLargeLanguageModel(LanguageModel):
    """xLSTM 7B architecture. forward(input_ids (B, S), state=None) -> logits (B, S, V), ModelState.

    Logits are soft-capped at ``config.output_logit_soft_cap`` and in the model's dtype.
    forward(input_ids (1, S), cu_seqlens=...) runs packed documents, each as if alone, and returns
    one state row per document (models/state.py).
    """

    model_type = "xlstm-large"
    supports_packed_states = True
    config_class = XLSTMLargeConfig

    def __init__(self, config: XLSTMLargeConfig):
        super().__init__()
        if not isinstance(config, XLSTMLargeConfig):
            raise TypeError(f"config must be an XLSTMLargeConfig, got {type(config).__name__}")
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim)
        self.blocks = nn.ModuleList([
            LargeMLSTMBlock(c.embedding_dim, num_heads=c.num_heads, qk_dim_factor=c.qk_dim_factor,
                            v_dim_factor=c.v_dim_factor, gate_soft_cap=c.gate_soft_cap, chunk_size=c.chunk_size,
                            ffn_proj_factor=c.ffn_proj_factor, round_up_to_multiple_of=c.round_up_to_multiple_of,
                            bias=c.bias, norm_eps=c.norm_eps, num_blocks=c.num_blocks)
            for _ in range(c.num_blocks)
        ])
        self.out_norm = RMSNorm(c.embedding_dim, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.embedding_dim, c.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """small init for the embedding and the head; each block's own scheme (LargeMLSTMLayer,
        GatedFeedForward); norms at one."""
        small_init_(self.embedding.weight, self.config.embedding_dim)
        for block in self.blocks:
            block.reset_parameters()
        self.out_norm.reset_parameters()
        small_init_(self.lm_head.weight, self.config.embedding_dim)

    def forward(self, input_ids: torch.Tensor, state: ModelState | None = None, cu_seqlens: torch.Tensor | None = None,
                *, return_state: bool = True, logits_to_keep: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ModelState | None]:
        block_states = check_inputs(input_ids, state, len(self.blocks), cu_seqlens)
        x = self.embedding(input_ids)  # (B, S, D)
        x, state = run_blocks(self.blocks, x, block_states, cu_seqlens, return_state)  # (B, S, D)
        logits = self.lm_head(self.out_norm(keep_positions(x, logits_to_keep)))  # (B, S, V) or as kept
        return soft_cap(logits, self.config.output_logit_soft_cap), state
