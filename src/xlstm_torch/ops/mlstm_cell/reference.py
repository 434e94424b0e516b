"""mLSTM reference: the stabilised recurrence of MATH.md, one step at a time, plain autograd.

This is the specification every fast form is tested against (xLSTM paper, Sec. 2.3, eqs. 19-27,
with the max-stabiliser of App. A). It is slow (a Python loop over S) and meant for float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._packing import run_per_document
from .state import MLSTMState, normaliser_floor, empty_mlstm_state


def mlstm_reference(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6,
                    cu_seqlens: tuple[int, ...] | None = None):
    """q, k: (B, NH, S, DK); v: (B, NH, S, DV); i, f: (B, NH, S) gate pre-activations.

    Returns h (B, NH, S, DV) and the final MLSTMState. Inputs must already be in the state dtype.
    cu_seqlens: document boundaries (0, l_1, ..., S) of a packed row (B == 1; ops/_packing.py): each
    document runs alone, from row d of ``state`` (D rows) or the empty state; the final state has D rows.
    """
    if cu_seqlens is not None:
        return run_per_document(lambda *x, state: mlstm_reference(*x, state=state, eps=eps),
                                (q, k, v, i, f), 2, state, cu_seqlens)
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    C, n, m = state if state is not None else empty_mlstm_state(B, NH, DK, DV, dtype=q.dtype, device=q.device)
    k = k / math.sqrt(DK)
    log_f = F.logsigmoid(f)  # (B, NH, S)
    hs = []
    for t in range(S):
        m_new = torch.maximum(log_f[..., t] + m, i[..., t])  # (B, NH)
        f_scaled = torch.exp(log_f[..., t] + m - m_new)
        i_scaled = torch.exp(i[..., t] - m_new)
        k_t, v_t, q_t = k[:, :, t], v[:, :, t], q[:, :, t]
        C = f_scaled[..., None, None] * C + i_scaled[..., None, None] * (k_t[..., :, None] * v_t[..., None, :])
        n = f_scaled[..., None] * n + i_scaled[..., None] * k_t
        num = torch.einsum("bhd,bhde->bhe", q_t, C)  # (B, NH, DV)
        den = (q_t * n).sum(-1)  # (B, NH)
        hs.append(num / (torch.maximum(den.abs(), normaliser_floor(m_new)) + eps)[..., None])
        m = m_new
    return torch.stack(hs, dim=2), MLSTMState(C, n, m)
