"""The mLSTM layer and block of the paper models (xLSTM paper Sec. 2.3, and Sec. 2.4 with
its mLSTM block figure).

The mLSTM block is a "pre up-projection" residual block (like a state-space-model block): the
cell runs in an up-projected space of width Di = 2 D (rounded up to a multiple of 64), and there
is no separate feed-forward network:

    x (B, S, D) ─ LayerNorm ─ proj_up ─┬─ x_in ─ conv4 ─ SiLU = x_conv ─┬─ q, k (head-wise 4x4 blocks)
                                       │         └──────────────────────┼─ v from x_in (head-wise)
                                       │                                └─ i, f = Linear([q, k, v])
                                       │    h = MultiHeadNorm(mLSTM(q, k, v, i, f)) + skip ⊙ x_conv
                                       └─ z ───── SiLU(z) ⊙ h ─ proj_down ─ + x
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_torch import ops

from .conv import CausalConv1d
from .decode import WeightCache, decoding, linear
from .functional import reduction_dtype, round_up, state_dtype
from .init import small_init_, wang_init_, zero_bias_
from .lean import mlstm_output_gate, needs_grad
from .linear import HeadwiseLinear
from .norm import LayerNorm, MultiHeadNorm
from .state import LayerState


def multihead_mlstm(q, k, v, i, f, state: ops.MLSTMState | None, *, chunk_size: int | None, eps: float = 1e-6,
                    cu_seqlens: torch.Tensor | None = None, return_state: bool = True):
    """Run the mLSTM cell on head-split inputs in the layers' (B, S, NH, ...) layout.

    q, k: (B, S, NH, DK); v: (B, S, NH, DV); i, f: (B, S, NH) gate pre-activations.
    Returns h (B, S, NH, DV) in v's dtype and the final MLSTMState.
    One-token calls take ``ops.mlstm_step`` directly: the decoding step is O(1) in the context length.
    cu_seqlens: packed documents (B == 1), as in ``ops.mlstm``: state rows are documents.
    return_state=False: the final state is not computed (training); None in its place.
    """
    if q.shape[1] == 1 and cu_seqlens is None:
        sdtype = state_dtype(q.dtype)  # the op contract: cell arithmetic in float32 (float64 for float64)
        h, state = ops.mlstm_step(*(x[:, 0].to(sdtype) for x in (q, k, v, i, f)), state, eps)  # h (B, NH, DV)
        return h.to(v.dtype)[:, None], state  # (B, 1, NH, DV)
    out = ops.mlstm(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), i.transpose(1, 2),
                    f.transpose(1, 2), state=state, return_state=return_state, chunk_size=chunk_size, eps=eps,
                    cu_seqlens=cu_seqlens)
    h, state = out if return_state else (out, None)
    return h.transpose(1, 2), state  # (B, S, NH, DV)


class MLSTMLayer(nn.Module):
    """mLSTM layer with pre up-projection (everything of the block but the pre-norm and residual).

    x: (B, S, D) -> y (B, S, D), LayerState(conv (B, K-1, Di), cell MLSTMState).
    With ``cu_seqlens`` (documents packed in one row, B == 1) the state rows are documents, in and out.
    Di = proj_factor * D rounded up to ``round_up_to_multiple_of``; NH heads of width Di/NH for q,
    k and v. ``num_blocks`` only sets the scale of proj_down's init (wang init).
    """

    def __init__(self, embedding_dim: int, *, num_heads: int = 4, proj_factor: float = 2.0,
                 round_up_to_multiple_of: int = 64, conv_kernel_size: int = 4, qkv_block_size: int = 4,
                 chunk_size: int | None = 64, bias: bool = False, dropout: float = 0.0, norm_eps: float = 1e-5,
                 num_blocks: int = 1):
        super().__init__()
        D = embedding_dim
        Di = round_up(proj_factor * D, round_up_to_multiple_of)
        if Di % num_heads or Di % qkv_block_size:
            raise ValueError(f"the inner width {Di} must be divisible by num_heads={num_heads} "
                             f"and qkv_block_size={qkv_block_size}")
        self.embedding_dim, self.inner_dim, self.num_heads = D, Di, num_heads
        self.head_dim, self.chunk_size, self.num_blocks = Di // num_heads, chunk_size, num_blocks

        self.proj_up = nn.Linear(D, 2 * Di, bias=bias)
        self.conv = CausalConv1d(Di, conv_kernel_size)
        self.q = HeadwiseLinear(Di, Di, Di // qkv_block_size)
        self.k = HeadwiseLinear(Di, Di, Di // qkv_block_size)
        self.v = HeadwiseLinear(Di, Di, Di // qkv_block_size)
        self.igate_preact = nn.Linear(3 * Di, num_heads, bias=True)
        self.fgate_preact = nn.Linear(3 * Di, num_heads, bias=True)
        self.multihead_norm = MultiHeadNorm(num_heads, self.head_dim, eps=norm_eps)
        self.learnable_skip = nn.Parameter(torch.ones(Di))
        self.proj_down = nn.Linear(Di, D, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.gate_weights = WeightCache()  # the stacked i/f gate weight and bias, when nothing needs a gradient
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Paper init: small init for the projections into the cell, wang init for proj_down; the
        gates start from their biases alone (zero weights), forget-gate biases spread over heads by
        linspace(3, 6) (long memory at the start of training), input-gate biases N(0, 0.1)."""
        D, Di = self.embedding_dim, self.inner_dim
        small_init_(self.proj_up.weight, D)
        for proj in (self.q, self.k, self.v):
            small_init_(proj.weight, Di)
        wang_init_(self.proj_down.weight, D, self.num_blocks)
        zero_bias_(self.proj_up)
        zero_bias_(self.proj_down)
        self.conv.reset_parameters()
        self.igate_preact.weight.zero_()
        self.igate_preact.bias.normal_(0.0, 0.1)
        self.fgate_preact.weight.zero_()
        self.fgate_preact.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        self.multihead_norm.reset_parameters()
        self.learnable_skip.fill_(1.0)

    def gate_preacts(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input and forget gate pre-activations from [q, k, v]: q, k, v (B, S, Di) -> i, f (B, S, NH).

        Equal to ``igate_preact(cat([q, k, v]))`` and ``fgate_preact(...)``, computed as three
        products with column slices of the two stacked weights (no (B, S, 3 Di) concatenation).
        The decoding step's form, where q, k and v are at hand; ``forward`` takes ``gate_preacts_folded``.
        """
        NH, Di = self.num_heads, self.inner_dim
        params = [self.igate_preact.weight, self.fgate_preact.weight, self.igate_preact.bias, self.fgate_preact.bias]
        if decoding(q, self):  # kept between calls (nn/decode.py)
            weight, bias = self.gate_weights.get(params, lambda: (torch.cat(params[:2]), torch.cat(params[2:])))
            w_q, w_k, w_v = weight.split(Di, dim=1)  # (2 NH, Di) each
        else:
            weight, bias = torch.cat(params[:2]), torch.cat(params[2:])  # (2 NH, 3 Di), (2 NH,)
            w_q, w_k, w_v = weight.split(Di, dim=1)  # (2 NH, Di) each
        preacts = F.linear(v, w_v, bias).add_(F.linear(q, w_q)).add_(F.linear(k, w_k))  # (B, S, 2 NH)
        return preacts[..., :NH], preacts[..., NH:]

    def gate_preacts_folded(self, x_conv: torch.Tensor, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gate_preacts(q(x_conv), k(x_conv), v(x_in))`` with the head-wise q/k/v maps folded into the gate
        weights: x_conv, x_in (B, S, Di) -> i, f (B, S, NH), equal up to rounding.

        The gates are linear in q, k and v, which are linear in x_conv and x_in, so two products with folded
        (2 NH, Di) weights give them. Then nothing but the cell reads q, k and v: the cell keeps its own
        head-major copies for the backward and the layer's (B, S, Di) tensors are freed, the backward has no
        gate terms to add into dq, dk and dv, and it is two products instead of three.
        """
        NH, Di = self.num_heads, self.inner_dim
        weight = torch.cat([self.igate_preact.weight, self.fgate_preact.weight])  # (2 NH, 3 Di) over [q, k, v]
        bias = torch.cat([self.igate_preact.bias, self.fgate_preact.bias])  # (2 NH,)
        folded = []
        for w, proj in zip(weight.split(Di, dim=1), (self.q, self.k, self.v)):  # w: (2 NH, Di)
            blocks, out_b, _ = proj.weight.shape  # (blocks, out/blocks, in/blocks)
            # Σ_o w[g, (h, o)] W_h[o, i] = folded[g, (h, i)]
            folded.append(torch.einsum("gho,hoi->ghi", w.view(-1, blocks, out_b), proj.weight).flatten(1))
            if proj.bias is not None:
                bias = bias + F.linear(proj.bias, w)
        preacts = F.linear(x_in, folded[2], bias).add_(F.linear(x_conv, folded[0] + folded[1]))  # (B, S, 2 NH)
        return preacts[..., :NH], preacts[..., NH:]

    def forward(self, x: torch.Tensor, state: LayerState | None = None, cu_seqlens: torch.Tensor | None = None,
                *, return_state: bool = True) -> tuple[torch.Tensor, LayerState | None]:
        B, S, _ = x.shape
        NH, DH = self.num_heads, self.head_dim
        conv_state, cell_state = (None, None) if state is None else state
        x_in, z = self.proj_up(x).chunk(2, dim=-1)  # (B, S, Di) each
        x_conv, conv_state = self.conv.forward_silu(x_in, conv_state, cu_seqlens)  # (B, S, Di)
        q, k, v = self.q(x_conv), self.k(x_conv), self.v(x_in)  # (B, S, Di) each
        i, f = self.gate_preacts_folded(x_conv, x_in)  # (B, S, NH) each
        h, cell_state = multihead_mlstm(q.view(B, S, NH, DH), k.view(B, S, NH, DH), v.view(B, S, NH, DH), i, f,
                                        cell_state, chunk_size=self.chunk_size, cu_seqlens=cu_seqlens,
                                        return_state=return_state)  # (B, S, NH, DH)
        norm = self.multihead_norm
        if needs_grad(h, x_conv, z, norm.weight, self.learnable_skip) and reduction_dtype(h.dtype) == h.dtype \
                == x_conv.dtype == norm.weight.dtype == self.learnable_skip.dtype:  # MultiHeadNorm's no-cast case
            # training: the same function, saving only tensors that stay alive anyway (nn/lean.py)
            h = mlstm_output_gate(h, norm.weight, x_conv, self.learnable_skip, z, norm.eps)  # (B, S, Di)
        else:
            h = norm(h).reshape(B, S, -1)  # (B, S, Di)
            h = (h + self.learnable_skip * x_conv) * F.silu(z)
        y = self.dropout(self.proj_down(h))  # (B, S, D)
        return y, LayerState(conv_state, cell_state) if return_state else None

    def step(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """One decoding step without gradients, in eval mode: x (B, D) -> y (B, D), LayerState;
        ``forward`` on (B, 1, D), with the functional ops called directly and the cell as ``ops.mlstm_step``."""
        B = x.shape[0]
        NH, DH = self.num_heads, self.head_dim
        conv_state, cell_state = (None, None) if state is None else state
        x_in, z = linear(self.proj_up, x).chunk(2, dim=-1)  # (B, Di) each
        x_conv, conv_state = self.conv.step(x_in, conv_state)
        x_conv = F.silu(x_conv)  # (B, Di)
        q, k, v = self.q.step(x_conv), self.k.step(x_conv), self.v.step(x_in)  # (B, Di) each
        i, f = self.gate_preacts(q, k, v)  # (B, NH) each
        sdtype = state_dtype(x.dtype)  # the op contract: cell arithmetic in float32 (float64 for float64)
        h, cell_state = ops.mlstm_step(*(t.to(sdtype) for t in (q.view(B, NH, DH), k.view(B, NH, DH),
                                                                 v.view(B, NH, DH), i, f)), cell_state)  # (B, NH, DH)
        h = self.multihead_norm(h.to(x.dtype)).reshape(B, -1)  # (B, Di)
        h = (h + self.learnable_skip * x_conv) * F.silu(z)
        return linear(self.proj_down, h), LayerState(conv_state, cell_state)


class MLSTMBlock(nn.Module):
    """Residual pre-norm mLSTM block: x + MLSTMLayer(LayerNorm(x)). x: (B, S, D) -> (B, S, D), LayerState.

    Keyword arguments other than ``norm_eps`` go to ``MLSTMLayer``.
    """

    def __init__(self, embedding_dim: int, *, norm_eps: float = 1e-5, **layer_kwargs):
        super().__init__()
        self.norm_mlstm = LayerNorm(embedding_dim, eps=norm_eps)
        self.mlstm_layer = MLSTMLayer(embedding_dim, norm_eps=norm_eps, **layer_kwargs)

    def reset_parameters(self) -> None:
        self.norm_mlstm.reset_parameters()
        self.mlstm_layer.reset_parameters()

    def forward(self, x: torch.Tensor, state: LayerState | None = None, cu_seqlens: torch.Tensor | None = None,
                *, return_state: bool = True) -> tuple[torch.Tensor, LayerState | None]:
        if x.shape[1] == 1 and cu_seqlens is None and return_state and decoding(x, self):
            y, state = self.step(x[:, 0], state)
            return y[:, None], state  # (B, 1, D)
        y, state = self.mlstm_layer(self.norm_mlstm(x), state, cu_seqlens, return_state=return_state)
        return x + y, state

    def step(self, x: torch.Tensor, state: LayerState | None = None) -> tuple[torch.Tensor, LayerState]:
        """One decoding step without gradients, in eval mode: x (B, D) -> (B, D), LayerState (nn/decode.py)."""
        y, state = self.mlstm_layer.step(self.norm_mlstm(x), state)
        return x + y, state
