"""The sLSTM state handed between calls (MATH.md "sLSTM")."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SLSTMState(NamedTuple):
    """State after the last step, each (B, NH, DH); c̄ = c·exp(-m), n̄ = n·exp(-m).

    float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs. Empty: h = c = n = 0,
    m = -inf.
    """

    h: torch.Tensor
    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def empty_slstm_state(B: int, NH: int, DH: int, *, dtype=torch.float32, device=None) -> SLSTMState:
    zeros = torch.zeros(B, NH, DH, dtype=dtype, device=device)
    return SLSTMState(zeros, zeros.clone(), zeros.clone(), torch.full((B, NH, DH), float("-inf"), dtype=dtype, device=device))
