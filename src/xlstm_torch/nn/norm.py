"""Normalisation layers of the xLSTM models.

- ``LayerNorm``: the pre-norm of every residual block and the post-blocks norm of the paper
  models, weight only (xLSTM paper Sec. 2.4 and its training details: no biases in the norms).
- ``RMSNorm``: its replacement in xLSTM 7B (Beck et al. 2025, architecture section: "RMSNorm instead of LayerNorm").
- ``MultiHeadNorm``: the per-head norm of the cell output h (the "GN" of the paper's block figures, group norm with
  one group per head), i.e. a layer norm over each head's features with one weight per channel.

float16/bfloat16 inputs are reduced in float32 and cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .functional import reduction_dtype


class _WeightOnlyNorm(nn.Module):
    """A norm over the last dim of width ``dim`` with a per-channel weight (init 1) and no bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.fill_(1.0)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class LayerNorm(_WeightOnlyNorm):
    """Layer norm over the last dim with a weight and no bias. x: (..., D) -> (..., D)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__(dim, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rdtype = reduction_dtype(x.dtype)
        if rdtype == x.dtype == self.weight.dtype:  # no casts: each costs a dispatch when decoding
            return F.layer_norm(x, (self.dim,), self.weight, None, self.eps)
        y = F.layer_norm(x.to(rdtype), (self.dim,), self.weight.to(rdtype), None, self.eps)
        return y.to(x.dtype)


class RMSNorm(_WeightOnlyNorm):
    """x / sqrt(mean(x²) + eps) * weight over the last dim. x: (..., D) -> (..., D)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rdtype = reduction_dtype(x.dtype)
        if rdtype == x.dtype == self.weight.dtype:  # no casts: each costs a dispatch when decoding
            return F.rms_norm(x, (self.dim,), self.weight, self.eps)
        return F.rms_norm(x.to(rdtype), (self.dim,), self.weight.to(rdtype), self.eps).to(x.dtype)


class MultiHeadNorm(nn.Module):
    """Layer norm of each head's features separately, then a per-channel weight (no bias).

    x: (..., NH, DH) -> (..., NH, DH); weight: (NH * DH,), channel h*DH + j scales feature j of head h.
    Equal to GroupNorm with NH groups over the NH*DH channels, without the bias.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.num_heads, self.head_dim):
            raise ValueError(f"x must end in (num_heads, head_dim) = ({self.num_heads}, {self.head_dim}), "
                             f"got shape {tuple(x.shape)}")
        rdtype = reduction_dtype(x.dtype)
        if rdtype == x.dtype == self.weight.dtype:  # no casts: each costs a dispatch when decoding
            return F.layer_norm(x, (self.head_dim,), None, None, self.eps) * self.weight.view(self.num_heads, self.head_dim)
        y = F.layer_norm(x.to(rdtype), (self.head_dim,), None, None, self.eps)  # (..., NH, DH)
        y = y * self.weight.to(rdtype).view(self.num_heads, self.head_dim)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, eps={self.eps}"
