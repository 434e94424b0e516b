"""mLSTM parallel form: quadratic in S, like causal attention with a gate-decay matrix.

MATH.md "Parallel form"; xLSTM paper Sec. 2.3 / App. A.3. The decay matrix log D is built in float64
(cumulative log forget gates lose precision in float32 on long sequences with saturated gates);
everything else runs in the state dtype. Backward is plain autograd (exact, m included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .state import MLSTMState, normaliser_floor


def mlstm_parallel(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6):
    """Same contract as ``mlstm_reference``: returns (h (B, NH, S, DV), final MLSTMState)."""
    B, NH, S, DK = q.shape
    dtype = q.dtype
    log_fcum = torch.cumsum(F.logsigmoid(f.double()), dim=-1)  # (B, NH, S) F_t
    log_d = log_fcum[..., :, None] - log_fcum[..., None, :] + i.double()[..., None, :]  # (B, NH, S, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    m = log_d.amax(dim=-1)  # (B, NH, S)
    if state is not None:
        log_carry = log_fcum + state.m.double()[..., None]  # (B, NH, S) weight of the carried state
        m = torch.maximum(m, log_carry)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(DK)  # (B, NH, S, S)
    weights = scores * torch.exp(log_d - m[..., None]).to(dtype)
    num = weights @ v  # (B, NH, S, DV)
    den = weights.sum(-1)  # (B, NH, S)
    if state is not None:
        carry = torch.exp(log_carry - m).to(dtype)  # (B, NH, S)
        num = num + carry[..., None] * (q @ state.C)
        den = den + carry * (q * state.n[:, :, None, :]).sum(-1)
    h = num / (torch.maximum(den.abs(), normaliser_floor(m, dtype)) + eps)[..., None]

    # Final state: the last row of the decay matrix weights each step's contribution.
    m_last = m[..., -1]  # (B, NH)
    w_last = torch.exp(log_d[..., -1, :] - m_last[..., None]).to(dtype)  # (B, NH, S)
    k_w = k / math.sqrt(DK) * w_last[..., None]  # (B, NH, S, DK)
    C = k_w.transpose(-1, -2) @ v  # (B, NH, DK, DV)
    n = k_w.sum(-2)  # (B, NH, DK)
    if state is not None:
        carry_last = carry[..., -1]
        C = C + carry_last[..., None, None] * state.C
        n = n + carry_last[..., None] * state.n
    return h, MLSTMState(C, n, m_last.to(dtype))
