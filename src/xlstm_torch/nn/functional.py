"""Small stateless helpers shared by the xLSTM layers.

``soft_cap`` is the tanh soft-capping of the xLSTM 7B paper (Beck et al. 2025: gate
pre-activations capped at 15, output logits at 30). ``round_up`` sizes the
up-projections of the xLSTM paper (Beck et al. 2024: widths rounded up to multiples of 64).
"""

from __future__ import annotations

import math

import torch


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap): close to the identity for |x| << cap, bounded by ±cap. Same shape as x."""
    return cap * torch.tanh(x / cap)


def round_up(x: float, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= x.

    x is a width times a decimal projection factor (e.g. 1.3 * 768 or 2.667 * 4096); it is rounded
    to 6 decimals first so that a product such as (4/3) * 768 = 1023.9999999999999 counts as 1024.
    """
    return int(math.ceil(round(x, 6) / multiple)) * multiple


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the recurrent cell states (MATH.md): float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduction_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which the norms reduce: float16/bfloat16 are lifted to float32, others kept."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
