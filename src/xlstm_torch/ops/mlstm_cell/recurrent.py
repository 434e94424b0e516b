"""mLSTM recurrent form: the O(1)-per-token step used for decoding, and a sequence loop over it.

MATH.md "Stabilised recurrent form". The step works on the matrix memory in place of a
(B, NH, S, ...) sequence, so generation costs the same per token at any context length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._packing import run_per_document
from .state import MLSTMState, normaliser_floor, empty_mlstm_state


def mlstm_step(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6):
    """One step. q, k: (B, NH, DK); v: (B, NH, DV); i, f: (B, NH). Returns h (B, NH, DV), MLSTMState."""
    B, NH, DK = q.shape
    if state is None:
        state = empty_mlstm_state(B, NH, DK, v.shape[-1], dtype=q.dtype, device=q.device)
    C, n, m = state
    # The (B, NH) gate scalars in float64: in float32 the stabiliser (|m| ~ 10 with the 7B's gate
    # bias) would cost ~1e-6 relative per step, accumulating over a long decode. At decode time the
    # step is a few dozen ops on tiny tensors, each costing more in dispatch than in arithmetic, so
    # the scalars are lifted together (one stack, one cast) and the three results come back to the
    # state dtype in one cast; the values are those of lifting and casting each one on its own.
    f64, m64, i64 = torch.stack((f, m, i)).double().unbind(0)  # (B, NH) each
    log_f_plus_m = F.logsigmoid(f64) + m64
    m_new64 = torch.maximum(log_f_plus_m, i64)
    f_scaled64, i_scaled64 = torch.exp(torch.stack((log_f_plus_m, i64)) - m_new64).unbind(0)  # (B, NH) each
    f_scaled, k_scale, m_new = torch.stack((f_scaled64, i_scaled64 / math.sqrt(DK), m_new64)).to(q.dtype).unbind(0)
    k_scaled = k * k_scale[..., None]  # (B, NH, DK)
    C = torch.addcmul(C * f_scaled[..., None, None], k_scaled[..., :, None], v[..., None, :])  # (B, NH, DK, DV)
    n = torch.addcmul(k_scaled, n, f_scaled[..., None])  # (B, NH, DK)
    num = torch.bmm(q.reshape(B * NH, 1, DK), C.reshape(B * NH, DK, -1)).view(B, NH, -1)  # (B, NH, DV)
    den = (q * n).sum(-1)  # (B, NH)
    h = num / (torch.maximum(den.abs(), normaliser_floor(m_new)) + eps)[..., None]
    return h, MLSTMState(C, n, m_new)


def mlstm_recurrent(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6,
                    cu_seqlens: tuple[int, ...] | None = None):
    """The sequence as S calls of ``mlstm_step``; same contract as ``mlstm_reference``.

    Packed documents (``cu_seqlens``) run one after the other, each from its own initial state.
    """
    if cu_seqlens is not None:
        return run_per_document(lambda *x, state: mlstm_recurrent(*x, state=state, eps=eps),
                                (q, k, v, i, f), 2, state, cu_seqlens)
    S = q.shape[2]
    h = q.new_empty(*q.shape[:3], v.shape[-1]) if not torch.is_grad_enabled() else None
    hs = []
    for t in range(S):
        h_t, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state, eps)
        if h is not None:
            h[:, :, t] = h_t
        else:
            hs.append(h_t)
    return (h if h is not None else torch.stack(hs, dim=2)), state
