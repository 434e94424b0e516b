"""Head-wise (block-diagonal) linear map (xLSTM paper Sec. 2.4 and its block figures).

The mLSTM block computes q, k and v with block-diagonal projections of small blocks (4 x 4 in
the paper) and the sLSTM block computes its gate inputs with one block per head, so features of
one head never mix with another's.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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
        self.weight = nn.Parameter(torch.empty(num_heads, out_features // num_heads, in_features // num_heads))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Like nn.Linear, with the fan-in of one block.
        bound = 1.0 / math.sqrt(self.in_features // self.num_heads)
        self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features)."""
        heads = x.unflatten(-1, (self.num_heads, -1))  # (..., NH, in/NH)
        y = torch.einsum("...hi,hoi->...ho", heads, self.weight).flatten(-2)  # (..., out)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_heads={self.num_heads}, bias={self.bias is not None}")
