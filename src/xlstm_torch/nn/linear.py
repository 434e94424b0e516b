"""Head-wise (block-diagonal) linear map (xLSTM paper Sec. 2.4 and its block figures).

The mLSTM block computes q, k and v with block-diagonal projections of small blocks (4 x 4 in
the paper) and the sLSTM block computes its gate inputs with one block per head, so features of
one head never mix with another's.

Speed: with blocks as small as 4 x 4 a batched product per block is slow on a CPU (inner
dimensions of 4 and a copy to and from a head-major layout dominate). ``HeadwiseLinear`` therefore
merges neighbouring blocks into dense groups of about ``GROUP_WIDTH`` features, whose weight is the
block-diagonal of the merged blocks (zeros elsewhere): a few times more multiply-adds, but products
the CPU runs at speed. The per-block form is kept as ``headwise_linear_reference``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd import forward_ad

from .decode import WeightCache, decoding
from .lean import needs_grad

GROUP_WIDTH = 32  # widest merged group of blocks (input or output features) the forward builds


def headwise_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The definition, one block per head. x: (..., in) with weight (NH, out/NH, in/NH) -> (..., out)."""
    heads = x.unflatten(-1, (weight.shape[0], -1))  # (..., NH, in/NH)
    y = torch.einsum("...hi,hoi->...ho", heads, weight).flatten(-2)  # (..., out)
    return y if bias is None else y + bias


def grouped_products(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``headwise_linear_reference(x, weight, None)`` as one batched product: x (..., G·I), weight (G, O, I) ->
    (..., G·O).

    In plain eager mode the product of each group runs on strided views of x and y: a group's rows are G·I
    (G·O) apart, which a BLAS product takes as its leading dimension, so nothing is copied into or out of a
    head-major layout (einsum's plan copies both ways); bit-identical to the einsum at the shapes checked.
    Where a product into a strided ``out=`` is not allowed (``_strided_out_allowed``) the result comes from
    ``bmm`` and one copy.
    """
    G, O, I = weight.shape
    rows = x.reshape(-1, G, I)  # (N, G, I)
    if not _strided_out_allowed(x, weight):
        y = torch.bmm(rows.transpose(0, 1), weight.transpose(1, 2))  # (G, N, O)
        return y.transpose(0, 1).reshape(*x.shape[:-1], G * O)  # (..., G·O)
    y = x.new_empty(rows.shape[0], G, O)
    torch.bmm(rows.transpose(0, 1), weight.transpose(1, 2), out=y.transpose(0, 1))  # (G, N, O) view of y
    return y.view(*x.shape[:-1], G * O)  # (..., G·O)


def _strided_out_allowed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``bmm(..., out=strided view)`` may run: not where autograd records (``out=`` ops have no
    derivative), not while torch.compile traces (it breaks the graph on a non-contiguous ``out=``), not under
    autocast (which casts ``bmm``'s inputs but not an ``out=`` tensor), not on torch.func-transformed tensors nor
    inside a forward-mode AD level (neither has ``out=`` rules)."""
    return not (needs_grad(x, weight) or torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type)
                or torch._C._functorch.is_functorch_wrapped_tensor(x) or forward_ad._current_level >= 0)


class HeadwiseLinearFunction(torch.autograd.Function):
    """y = x @ blockdiag(W_1, ..., W_G)ᵀ for x (..., G·I) and weight (G, O, I) -> y (..., G·O).

    Saves x and the weight (``einsum`` would save a head-major copy of x, one per projection, although
    x itself stays alive: q and k read the same x_conv, v reads x_in, which the layer keeps anyway).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return grouped_products(x, weight)  # (..., G·O)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        G, O, I = weight.shape
        # Under autocast the forward ran in the autocast dtype (its bmm is cast) while x and the weight keep
        # theirs: the gradients are formed in the wider of grad's and the weight's dtypes and returned in x's
        # and the weight's own (a no-op without autocast).
        dtype = torch.promote_types(grad.dtype, weight.dtype)
        dy = grad.reshape(-1, G, O).to(dtype)  # (N, G, O)
        dx = dw = None
        if ctx.needs_input_grad[0]:  # dx[n, g] = dy[n, g] @ W_g: the forward's product with W_gᵀ in W_g's place
            dx = grouped_products(dy.flatten(1), weight.transpose(1, 2).to(dtype))  # (N, G·I)
            dx = dx.reshape(x.shape).to(x.dtype)  # (..., G·I)
        if ctx.needs_input_grad[1]:
            rows = x.reshape(-1, G, I).to(dtype).transpose(0, 1)  # (G, N, I)
            dw = torch.bmm(dy.permute(1, 2, 0), rows).to(weight.dtype)  # (G, O, N) @ (G, N, I)
        return dx, dw


def _heads_per_group(num_heads: int, block_width: int) -> int:
    """The most blocks to merge, dividing num_heads, with merged width <= GROUP_WIDTH (at least 1)."""
    return max(b for b in range(1, num_heads + 1) if num_heads % b == 0 and (b == 1 or b * block_width <= GROUP_WIDTH))


class HeadwiseLinear(nn.Module):
    """y = x @ blockdiag(W_1, ..., W_NH)ᵀ (+ bias), with W_h of shape (out/NH, in/NH).

    weight: (NH, out_features/NH, in_features/NH); head h reads input features
    [h*in/NH, (h+1)*in/NH) and writes output features [h*out/NH, (h+1)*out/NH).
    """

    def __init__(self, in_features: int, out_features: int, num_heads: int, bias: bool = False):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value <= 0 or value % num_heads:
                raise ValueError(f"{name}={value} must be a positive multiple of num_heads={num_heads}")
        self.in_features, self.out_features, self.num_heads = in_features, out_features, num_heads
        self.heads_per_group = _heads_per_group(num_heads, max(in_features, out_features) // num_heads)
        self.weight = nn.Parameter(torch.empty(num_heads, out_features // num_heads, in_features // num_heads))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.grouped_weight = WeightCache()  # the merged blocks, kept when nothing needs a gradient
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Like nn.Linear, with the fan-in of one block.
        bound = 1.0 / math.sqrt(self.in_features // self.num_heads)
        self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features); equal to ``headwise_linear_reference``."""
        if self.heads_per_group == 1:
            grouped = self.weight
        elif decoding(x, self):  # the merged weight is the same until the weight changes (nn/decode.py)
            grouped = self.grouped_weight.get([self.weight], self._grouped)
        else:
            grouped = self._grouped()
        if needs_grad(x, grouped):  # training: keep x for the backward, not einsum's head-major copy of it
            y = HeadwiseLinearFunction.apply(x, grouped)
        else:
            y = grouped_products(x, grouped)
        return y if self.bias is None else y + self.bias

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` for rows x (N, in_features) -> (N, out_features) without gradients (decoding):
        one batched product over the (merged) heads, without einsum's planning, which at a few rows
        costs more than the product (equal to rounding)."""
        if self.heads_per_group == 1:
            weight = self.weight
        else:
            weight = self.grouped_weight.get([self.weight], self._grouped)  # (G, out/G, in/G)
        y = grouped_products(x, weight)  # (N, out)
        return y if self.bias is None else y + self.bias

    def _grouped(self) -> torch.Tensor:
        """The weight as G = NH / b dense blocks of b merged heads: (G, b·out/NH, b·in/NH)."""
        b = self.heads_per_group
        NH, out_b, in_b = self.weight.shape
        G = NH // b
        eye = torch.eye(b, dtype=self.weight.dtype, device=self.weight.device)
        # grouped[g, (p, o), (r, i)] = weight[g b + p, o, i] if p == r else 0: b blocks on a diagonal
        grouped = torch.einsum("gpoi,pr->gpori", self.weight.view(G, b, out_b, in_b), eye)
        return grouped.reshape(G, b * out_b, b * in_b)  # (G, out/G, in/G)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_heads={self.num_heads}, bias={self.bias is not None}")
