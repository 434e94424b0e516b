"""Gated feed-forward network (GLU family).

- xLSTM paper (Sec. 2.4, the sLSTM block): the sLSTM block's post up-projection, a GeLU-gated MLP with
  projection factor 4/3.
- xLSTM 7B paper (architecture section): a SwiGLU MLP (SiLU gate) with factor 2.667 after every mLSTM layer.
The hidden width is factor * D rounded up to a multiple of 64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .decode import linear
from .functional import round_up
from .init import small_init_, wang_init_, zero_bias_

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


class GatedFeedForward(nn.Module):
    """proj_down(act(proj_up_gate(x)) * proj_up(x)). x: (..., D) -> (..., D).

    Hidden width F = proj_factor * D rounded up to a multiple of ``round_up_to_multiple_of``.
    ``num_blocks`` only sets the scale of proj_down's init (wang init).
    """

    def __init__(self, dim: int, proj_factor: float, activation: str = "gelu", *, round_up_to_multiple_of: int = 64,
                 bias: bool = False, dropout: float = 0.0, num_blocks: int = 1):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.dim, self.activation, self.num_blocks = dim, activation, num_blocks
        self.hidden_dim = round_up(proj_factor * dim, round_up_to_multiple_of)
        self.proj_up_gate = nn.Linear(dim, self.hidden_dim, bias=bias)
        self.proj_up = nn.Linear(dim, self.hidden_dim, bias=bias)
        self.proj_down = nn.Linear(self.hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        small_init_(self.proj_up_gate.weight, self.dim)
        small_init_(self.proj_up.weight, self.dim)
        wang_init_(self.proj_down.weight, self.dim, self.num_blocks)
        for linear in (self.proj_up_gate, self.proj_up, self.proj_down):
            zero_bias_(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = ACTIVATIONS[self.activation](self.proj_up_gate(x)) * self.proj_up(x)  # (..., F)
        return self.dropout(self.proj_down(gated))  # (..., D)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` in eval mode, with the functional ops called directly (one decoding step: a few
        module calls cost more than the products at batch 1). x: (..., D) -> (..., D)."""
        gated = ACTIVATIONS[self.activation](linear(self.proj_up_gate, x)) * linear(self.proj_up, x)  # (..., F)
        # A compiled step would recompute an exact GELU once per output inside the product (nn/decode.py row_linear)
        return linear(self.proj_down, gated, row_form=self.activation != "gelu")  # (..., D)
