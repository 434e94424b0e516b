"""The xLSTM 7B ("xLSTM Large") mLSTM layer and block (Beck et al. 2025, "xLSTM 7B":
the architecture section and its block figure).

Changes from the paper block, all for throughput and training stability at scale: no conv, no
pre up-projection (the cell runs at width D, qk at D/2), plain dense q/k/v projections, gates from
x itself (not from [q, k, v]), soft-capped gate pre-activations, an output gate, RMSNorm, and a
SwiGLU feed-forward after every mLSTM layer:

    x (B, S, D) ─ RMSNorm ─┬─ q, k: D -> D/2, v: D -> D   (NH heads)
                           ├─ i, f = 15 tanh(Linear(x) / 15)   (one per head, with bias)
                           └─ o = σ(W_o x)
          h = o ⊙ MultiHeadNorm(mLSTM(q, k, v, i, f)) ─ out_proj ─ + x
    ─ RMSNorm ─ SwiGLU FFN (factor 2.667, rounded up to 64) ─ + x
"""

from __future__ import annotations

import torch
from torch import nn

from xlstm_torch import ops

from .decode import FusedWeights, decoding, linear, row_linear
from .feedforward import GatedFeedForward
from .functional import soft_cap, state_dtype
from .init import small_init_, wang_init_, zero_bias_
from .mlstm import multihead_mlstm
from .norm import MultiHeadNorm, RMSNorm
from .state import LayerState

INPUT_GATE_BIAS_INIT = -10.0  # xLSTM 7B: a strongly negative input gate keeps early updates small


class LargeMLSTMLayer(nn.Module):
    """x: (B, S, D) -> y (B, S, D), LayerState(conv None, cell MLSTMState).

    With ``cu_seqlens`` (documents packed in one row, B == 1) the state rows are documents, in and out.

    qk width D_qk = qk_dim_factor * D, value width D_v = v_dim_factor * D, both split over NH heads.
    ``num_blocks`` only sets the scale of out_proj's init (wang init).
    """

    def __init__(self, embedding_dim: int, *, num_heads: int = 8, qk_dim_factor: float = 0.5,
                 v_dim_factor: float = 1.0, gate_soft_cap: float = 15.0, chunk_size: int | None = 64,
                 bias: bool = False, norm_eps: float = 1e-6, num_blocks: int = 1):
        super().__init__()
        D = embedding_dim
        self.embedding_dim, self.num_heads, self.num_blocks = D, num_heads, num_blocks
        self.qk_dim, self.v_dim = int(D * qk_dim_factor), int(D * v_dim_factor)
        if self.qk_dim % num_heads or self.v_dim % num_heads or self.qk_dim <= 0 or self.v_dim <= 0:
            raise ValueError(f"qk width {self.qk_dim} and value width {self.v_dim} must be positive multiples "
                             f"of num_heads={num_heads}")
        self.gate_soft_cap, self.chunk_size = gate_soft_cap, chunk_size

        self.q = nn.Linear(D, self.qk_dim, bias=bias)
        self.k = nn.Linear(D, self.qk_dim, bias=bias)
        self.v = nn.Linear(D, self.v_dim, bias=bias)
        self.ogate_preact = nn.Linear(D, self.v_dim, bias=bias)
        self.igate_preact = nn.Linear(D, num_heads, bias=True)
        self.fgate_preact = nn.Linear(D, num_heads, bias=True)
        self.multihead_norm = MultiHeadNorm(num_heads, self.v_dim // num_heads, eps=norm_eps)
        self.out_proj = nn.Linear(self.v_dim, D, bias=bias)
        self.fused_in = FusedWeights()  # q, k, v, o, i, f as one product in ``step``
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """small init for q, k, v, o; wang init for out_proj; gates start from their biases alone:
        forget linspace(3, 6) over heads, input -10."""
        D = self.embedding_dim
        for proj in (self.q, self.k, self.v, self.ogate_preact):
            small_init_(proj.weight, D)
            zero_bias_(proj)
        wang_init_(self.out_proj.weight, D, self.num_blocks)
        zero_bias_(self.out_proj)
        self.igate_preact.weight.zero_()
        self.igate_preact.bias.fill_(INPUT_GATE_BIAS_INIT)
        self.fgate_preact.weight.zero_()
        self.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        self.multihead_norm.reset_parameters()

    def forward(self, x: torch.Tensor, state: LayerState | None = None, cu_seqlens: torch.Tensor | None = None,
                *, return_state: bool = True) -> tuple[torch.Tensor, LayerState | None]:
        B, S, _ = x.shape
        NH = self.num_heads
        q = self.q(x).view(B, S, NH, -1)  # (B, S, NH, DK)
        k = self.k(x).view(B, S, NH, -1)  # (B, S, NH, DK)
        v = self.v(x).view(B, S, NH, -1)  # (B, S, NH, DV)
        o = torch.sigmoid(self.ogate_preact(x))  # (B, S, D_v)
        i = soft_cap(self.igate_preact(x), self.gate_soft_cap)  # (B, S, NH)
        f = soft_cap(self.fgate_preact(x), self.gate_soft_cap)  # (B, S, NH)
        h, cell_state = multihead_mlstm(q, k, v, i, f, None if state is None else state.cell,
                                        chunk_size=self.chunk_size, cu_seqlens=cu_seqlens,
                                        return_state=return_state)  # (B, S, NH, DV)
        h = o * self.multihead_norm(h).reshape(B, S, -1)  # (B, S, D_v)
        return self.out_proj(h), LayerState(None, cell_state) if return_state else None  # (B, S, D)

    def step(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """One decoding step without gradients: x (B, D) -> y (B, D), LayerState; ``forward`` on (B, 1, D).

        The six projections of x run as one product (``FusedWeights``), the cell as ``ops.mlstm_step``.
        """
        B, NH = x.shape[0], self.num_heads
        projections = (self.q, self.k, self.v, self.ogate_preact, self.igate_preact, self.fgate_preact)
        fused = self.fused_in.get(projections)
        if fused is None:
            q, k, v, o, i, f = (linear(m, x) for m in projections)
            gates = torch.cat((i, f), dim=-1)  # (B, 2 NH)
        else:
            sizes = (self.qk_dim, self.qk_dim, self.v_dim, self.v_dim, 2 * NH)
            q, k, v, o, gates = row_linear(x, *fused).split(sizes, dim=-1)  # (B, D_qk | D_v | 2 NH)
        q, k, v = q.reshape(B, NH, -1), k.reshape(B, NH, -1), v.reshape(B, NH, -1)  # (B, NH, DK | DV)
        i, f = soft_cap(gates, self.gate_soft_cap).chunk(2, dim=-1)  # (B, NH) each
        sdtype = state_dtype(x.dtype)  # the op contract: cell arithmetic in float32 (float64 for float64)
        if sdtype != x.dtype:
            q, k, v, i, f = (t.to(sdtype) for t in (q, k, v, i, f))
        h, cell_state = ops.mlstm_step(q, k, v, i, f, None if state is None else state.cell)  # h (B, NH, DV)
        h = torch.sigmoid(o) * self.multihead_norm(h.to(x.dtype)).reshape(B, -1)  # (B, D_v)
        return linear(self.out_proj, h), LayerState(None, cell_state)  # (B, D)


class LargeMLSTMBlock(nn.Module):
    """x + LargeMLSTMLayer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)). x: (B, S, D) -> (B, S, D), LayerState.

    Keyword arguments other than the FFN's and ``norm_eps`` go to ``LargeMLSTMLayer``.
    """

    def __init__(self, embedding_dim: int, *, ffn_proj_factor: float = 2.667, round_up_to_multiple_of: int = 64,
                 bias: bool = False, norm_eps: float = 1e-6, num_blocks: int = 1, **layer_kwargs):
        super().__init__()
        self.norm_mlstm = RMSNorm(embedding_dim, eps=norm_eps)
        self.mlstm_layer = LargeMLSTMLayer(embedding_dim, bias=bias, norm_eps=norm_eps, num_blocks=num_blocks,
                                           **layer_kwargs)
        self.norm_ffn = RMSNorm(embedding_dim, eps=norm_eps)
        self.ffn = GatedFeedForward(embedding_dim, ffn_proj_factor, "silu", round_up_to_multiple_of=round_up_to_multiple_of,
                                    bias=bias, num_blocks=num_blocks)

    def reset_parameters(self) -> None:
        for module in (self.norm_mlstm, self.mlstm_layer, self.norm_ffn, self.ffn):
            module.reset_parameters()

    def forward(self, x: torch.Tensor, state: LayerState | None = None, cu_seqlens: torch.Tensor | None = None,
                *, return_state: bool = True) -> tuple[torch.Tensor, LayerState | None]:
        if x.shape[1] == 1 and cu_seqlens is None and return_state and decoding(x, self):
            y, state = self.step(x[:, 0], state)
            return y[:, None], state  # (B, 1, D)
        y, state = self.mlstm_layer(self.norm_mlstm(x), state, cu_seqlens, return_state=return_state)
        x = x + y
        return x + self.ffn(self.norm_ffn(x)), state

    def step(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """One decoding step without gradients: x (B, D) -> (B, D), LayerState; what ``forward`` runs
        for one token when nothing needs a gradient (nn/decode.py)."""
        y, state = self.mlstm_layer.step(self.norm_mlstm(x), state)
        x = x + y
        return x + self.ffn.step(self.norm_ffn(x)), state
