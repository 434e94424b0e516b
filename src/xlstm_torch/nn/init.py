"""The paper's weight initialisations (xLSTM paper, training details in the appendix;
xLSTM 7B paper, architecture section).

- small init: N(0, std = sqrt(2 / (5 D))) for embeddings and input-side projections
  (Nguyen & Salazar 2019), with D the width the projection reads from.
- wang init: N(0, std = 2 / (L sqrt(D))) for projections that write back into the residual
  stream, with L the number of blocks, so that the residual sum does not grow with depth.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def small_init_(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Fill ``weight`` in place with N(0, 2 / (5 dim)) ("small init")."""
    return weight.normal_(0.0, math.sqrt(2.0 / (5.0 * dim)))


@torch.no_grad()
def wang_init_(weight: torch.Tensor, dim: int, num_blocks: int) -> torch.Tensor:
    """Fill ``weight`` in place with N(0, std = 2 / (num_blocks sqrt(dim))) ("wang init")."""
    return weight.normal_(0.0, 2.0 / (num_blocks * math.sqrt(dim)))


@torch.no_grad()
def zero_bias_(module: torch.nn.Module) -> None:
    """Zero the bias of a Linear-like module if it has one."""
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()
