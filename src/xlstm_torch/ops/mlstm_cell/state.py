"""The mLSTM state handed between calls (MATH.md, "Stabilised recurrent form")."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class MLSTMState(NamedTuple):
    """Scaled matrix memory after the last step.

    C: (B, NH, DK, DV)  C̄ = C·exp(-m)
    n: (B, NH, DK)      n̄ = n·exp(-m)
    m: (B, NH)          log-scale (max-stabiliser); -inf for an empty state
    float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs.
    """

    C: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def empty_mlstm_state(B: int, NH: int, DK: int, DV: int, *, dtype=torch.float32, device=None) -> MLSTMState:
    return MLSTMState(
        torch.zeros(B, NH, DK, DV, dtype=dtype, device=device),
        torch.zeros(B, NH, DK, dtype=dtype, device=device),
        torch.full((B, NH), float("-inf"), dtype=dtype, device=device),
    )


def normaliser_floor(m: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """exp(-m), the scaled form of the 1 in max(|qᵀn|, 1) (MATH.md).

    The exponent is kept inside the dtype's normal range: above it |h| < exp(-cap) (~1e-35 in
    float32) is zero to working precision, and an infinite floor would turn the backward's 0 * inf
    into NaN; below it a zero floor would make 0/0 of a step whose normaliser underflows.
    """
    dtype = dtype or m.dtype
    info = torch.finfo(dtype)
    return torch.exp((-m).clamp(min=math.log(info.tiny), max=math.log(info.max) - 8.0)).to(dtype)
