"""The sLSTM layer and block of the paper models (xLSTM paper Sec. 2.2, and Sec. 2.4 with
its sLSTM block figure).

The sLSTM block is a "post up-projection" residual block (like a Transformer block): the cell
runs at the model width D, followed by a gated feed-forward network:

    x (B, S, D) ─ LayerNorm ─┬─ conv4 ─ SiLU ─ i, f gate inputs (head-wise)
                             └───────────────── z, o gate inputs (head-wise)
                 sLSTM cell (block-diagonal recurrence per head and gate) ─ MultiHeadNorm ─ + x
    ─ LayerNorm ─ GeLU-gated FFN (factor 4/3) ─ + x

The conv is optional (kernel size 0 turns it off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_torch import ops
from xlstm_torch.ops.slstm_cell import slstm_step, slstm_step_weights

from .conv import CausalConv1d
from .decode import WeightCache, decoding
from .feedforward import GatedFeedForward
from .functional import state_dtype
from .init import small_init_
from .linear import HeadwiseLinear
from .norm import LayerNorm, MultiHeadNorm
from .state import LayerState


def powerlaw_forget_bias(head_dim: int, block_index: int, num_blocks: int) -> torch.Tensor:
    """Forget-gate bias of unit j in a head for block ``block_index`` of ``num_blocks`` (paper init).

    b_f[j] = 5 - 12 * (j / (DH - 1)) ** (0.3 + 1.3 * r),  r = block_index / (num_blocks - 1):
    each head spans time scales from long memory (b_f = 5, f ≈ 0.993) to almost none (b_f = -7),
    and deeper blocks put more of their units at the short end. Returns (DH,).
    """
    r = block_index / (num_blocks - 1) if num_blocks > 1 else 0.0
    position = torch.arange(head_dim, dtype=torch.float64) / max(head_dim - 1, 1)  # 0 .. 1
    return (5.0 - 12.0 * position ** (0.3 + 1.3 * r)).float()


class SLSTMLayer(nn.Module):
    """sLSTM layer: gate inputs, the sLSTM cell and the per-head norm.

    x: (B, S, D) -> y (B, S, D), LayerState(conv (B, K-1, D) or None, cell SLSTMState).
    With ``cu_seqlens`` (documents packed in one row, B == 1) the state rows are documents, in and out.
    Parameters named as in ``xlstm_torch.ops.slstm``: recurrent_kernel r (NH, 4, DH, DH) and bias b
    (NH, 4, DH), gates in the order (i, f, z, o). ``block_index``/``num_blocks`` set the forget-gate
    bias init (``powerlaw_forget_bias``).
    """

    GATES = ("i", "f", "z", "o")

    def __init__(self, embedding_dim: int, *, num_heads: int = 4, conv_kernel_size: int = 4, dropout: float = 0.0,
                 norm_eps: float = 1e-5, block_index: int = 0, num_blocks: int = 1):
        super().__init__()
        D = embedding_dim
        if D % num_heads:
            raise ValueError(f"embedding_dim={D} must be divisible by num_heads={num_heads}")
        self.embedding_dim, self.num_heads, self.head_dim = D, num_heads, D // num_heads
        self.block_index, self.num_blocks = block_index, num_blocks
        NH, DH = num_heads, self.head_dim

        self.conv = CausalConv1d(D, conv_kernel_size) if conv_kernel_size > 0 else None
        self.igate_preact = HeadwiseLinear(D, D, NH)
        self.fgate_preact = HeadwiseLinear(D, D, NH)
        self.zgate_preact = HeadwiseLinear(D, D, NH)
        self.ogate_preact = HeadwiseLinear(D, D, NH)
        self.recurrent_kernel = nn.Parameter(torch.empty(NH, 4, DH, DH))
        self.bias = nn.Parameter(torch.empty(NH, 4, DH))
        self.multihead_norm = MultiHeadNorm(NH, DH, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.step_weights = WeightCache()  # r and b in the layout of ``slstm_step``
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Paper init: small init for the gate inputs, zero recurrent matrices (the cell starts as a
        gated recurrence without memory mixing), biases zero except the power-law forget gate."""
        for proj in (self.igate_preact, self.fgate_preact, self.zgate_preact, self.ogate_preact):
            small_init_(proj.weight, self.embedding_dim)
        if self.conv is not None:
            self.conv.reset_parameters()
        self.recurrent_kernel.zero_()
        self.bias.zero_()
        self.bias[:, 1] = powerlaw_forget_bias(self.head_dim, self.block_index, self.num_blocks)
        self.multihead_norm.reset_parameters()

    def forward(self, x: torch.Tensor, state: LayerState | None = None, cu_seqlens: torch.Tensor | None = None,
                *, return_state: bool = True) -> tuple[torch.Tensor, LayerState | None]:
        B, S, D = x.shape
        conv_state, cell_state = (None, None) if state is None else state
        if self.conv is not None:
            x_conv, conv_state = self.conv.forward_silu(x, conv_state, cu_seqlens)  # (B, S, D)
        else:
            x_conv = x
        gate_inputs = (self.igate_preact(x_conv), self.fgate_preact(x_conv), self.zgate_preact(x), self.ogate_preact(x))
        wx = torch.stack([g.view(B, S, self.num_heads, self.head_dim) for g in gate_inputs], dim=3)  # (B, S, NH, 4, DH)
        out = ops.slstm(wx, self.recurrent_kernel.to(wx.dtype), self.bias.to(wx.dtype), state=cell_state,
                        return_state=return_state, cu_seqlens=cu_seqlens)
        h, cell_state = out if return_state else (out, None)  # h (B, S, NH, DH)
        y = self.dropout(self.multihead_norm(h).reshape(B, S, D))  # (B, S, D)
        return y, LayerState(conv_state, cell_state) if return_state else None

    def step(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """One decoding step without gradients, in eval mode: x (B, D) -> y (B, D), LayerState;
        ``forward`` on (B, 1, D), with the cell as ``slstm_step`` (the recurrent backend's step)."""
        B, D = x.shape
        conv_state, cell_state = (None, None) if state is None else state
        if self.conv is not None:
            x_conv, conv_state = self.conv.step(x, conv_state)
            x_conv = F.silu(x_conv)  # (B, D)
        else:
            x_conv = x
        sdtype = state_dtype(x.dtype)
        gate_inputs = (self.igate_preact.step(x_conv), self.fgate_preact.step(x_conv), self.zgate_preact.step(x),
                       self.ogate_preact.step(x))
        wx = torch.stack([g.view(B, self.num_heads, self.head_dim) for g in gate_inputs], dim=2)  # (B, NH, 4, DH)
        weights = self.step_weights.get([self.recurrent_kernel, self.bias], lambda: slstm_step_weights(
            self.recurrent_kernel.to(sdtype), self.bias.to(sdtype)))
        if cell_state is not None:
            cell_state = type(cell_state)(*(t.to(sdtype) for t in cell_state))
        h, cell_state = slstm_step(wx.to(sdtype), weights, cell_state)  # h (B, NH, DH)
        return self.multihead_norm(h.to(x.dtype)).reshape(B, D), LayerState(conv_state, cell_state)


class SLSTMBlock(nn.Module):
    """Residual sLSTM block: x + SLSTMLayer(LayerNorm(x)), then x + FFN(LayerNorm(x)).

    x: (B, S, D) -> (B, S, D), LayerState. The FFN is GeLU-gated with width
    ``ffn_proj_factor`` * D rounded up to ``round_up_to_multiple_of``.
    """

    def __init__(self, embedding_dim: int, *, num_heads: int = 4, conv_kernel_size: int = 4,
                 ffn_proj_factor: float = 4 / 3, round_up_to_multiple_of: int = 64, bias: bool = False,
                 dropout: float = 0.0, norm_eps: float = 1e-5, block_index: int = 0, num_blocks: int = 1):
        super().__init__()
        self.norm_slstm = LayerNorm(embedding_dim, eps=norm_eps)
        self.slstm_layer = SLSTMLayer(embedding_dim, num_heads=num_heads, conv_kernel_size=conv_kernel_size,
                                      dropout=dropout, norm_eps=norm_eps, block_index=block_index,
                                      num_blocks=num_blocks)
        self.norm_ffn = LayerNorm(embedding_dim, eps=norm_eps)
        self.ffn = GatedFeedForward(embedding_dim, ffn_proj_factor, "gelu", round_up_to_multiple_of=round_up_to_multiple_of,
                                    bias=bias, dropout=dropout, num_blocks=num_blocks)

    def reset_parameters(self) -> None:
        for module in (self.norm_slstm, self.slstm_layer, self.norm_ffn, self.ffn):
            module.reset_parameters()

    def forward(self, x: torch.Tensor, state: LayerState | None = None, cu_seqlens: torch.Tensor | None = None,
                *, return_state: bool = True) -> tuple[torch.Tensor, LayerState | None]:
        if x.shape[1] == 1 and cu_seqlens is None and return_state and decoding(x, self):
            y, state = self.step(x[:, 0], state)
            return y[:, None], state  # (B, 1, D)
        y, state = self.slstm_layer(self.norm_slstm(x), state, cu_seqlens, return_state=return_state)
        x = x + y
        return x + self.ffn(self.norm_ffn(x)), state

    def step(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """One decoding step without gradients, in eval mode: x (B, D) -> (B, D), LayerState (nn/decode.py)."""
        y, state = self.slstm_layer.step(self.norm_slstm(x), state)
        x = x + y
        return x + self.ffn.step(self.norm_ffn(x)), state
