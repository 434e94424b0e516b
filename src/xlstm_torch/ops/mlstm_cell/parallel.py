"""mLSTM parallel form: quadratic in S, like causal attention with a gate-decay matrix.

MATH.md "Parallel form"; xLSTM paper Sec. 2.3 / App. A.3. The decay matrix log D is built in float64
(cumulative log forget gates lose precision in float32 on long sequences with saturated gates);
everything else runs in the state dtype. Backward is plain autograd (exact, m included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._packing import document_ids, document_spans, select_rows
from .state import MLSTMState, normaliser_floor


def mlstm_parallel(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6,
                   cu_seqlens: tuple[int, ...] | None = None):
    """Same contract as ``mlstm_reference``: returns (h (B, NH, S, DV), final MLSTMState).

    Packed documents (``cu_seqlens``, B == 1): the cumulative log forget gates restart at every
    document and log D is -inf between tokens of different documents (a block-diagonal decay
    matrix); token t sees only the initial state of its own document. The final state has one row
    per document. Unpacked, the whole row is one document: state rows are batch rows.
    """
    B, NH, S, DK = q.shape
    dtype = q.dtype
    spans = document_spans(cu_seqlens or (0, S))
    log_f = F.logsigmoid(f.double())  # (B, NH, S)
    # F_t, summed from the start of t's document: exactly the sums of a call on the document alone.
    log_fcum = torch.cat([torch.cumsum(log_f[..., a:b], dim=-1) for a, b in spans], dim=-1)  # (B, NH, S)
    log_d = log_fcum[..., :, None] - log_fcum[..., None, :] + i.double()[..., None, :]  # (B, NH, S, S)
    allowed = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    if cu_seqlens is not None:
        doc = document_ids(cu_seqlens, q.device)  # (S,)
        allowed &= doc[:, None] == doc[None, :]
    log_d = log_d.masked_fill(~allowed, float("-inf"))
    m = log_d.amax(dim=-1)  # (B, NH, S)
    if state is not None:
        # Per document: the weight of its initial state on each of its tokens, and q_t C̄_0, q_t·n̄_0.
        initial = [state] if cu_seqlens is None else [select_rows(state, slice(d, d + 1)) for d in range(len(spans))]
        log_carry = torch.cat([log_fcum[..., a:b] + s0.m.double()[..., None] for (a, b), s0 in zip(spans, initial)],
                              dim=-1)  # (B, NH, S)
        m = torch.maximum(m, log_carry)
        q_state = torch.cat([q[:, :, a:b] @ s0.C for (a, b), s0 in zip(spans, initial)], dim=2)  # (B, NH, S, DV)
        q_norm = torch.cat([(q[:, :, a:b] * s0.n[:, :, None, :]).sum(-1) for (a, b), s0 in zip(spans, initial)],
                           dim=2)  # (B, NH, S)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(DK)  # (B, NH, S, S)
    weights = scores * torch.exp(log_d - m[..., None]).to(dtype)
    num = weights @ v  # (B, NH, S, DV)
    den = weights.sum(-1)  # (B, NH, S)
    if state is not None:
        carry = torch.exp(log_carry - m).to(dtype)  # (B, NH, S)
        num = num + carry[..., None] * q_state
        den = den + carry * q_norm
    h = num / (torch.maximum(den.abs(), normaliser_floor(m, dtype)) + eps)[..., None]

    # Final state of each document: the row of its last token weights each step's contribution.
    # Rows of the state: B (one document per batch row) or D (packed, B == 1), i.e. B·D in both cases.
    last = [b - 1 for _, b in spans]
    D = len(last)
    m_last = m[..., last]  # (B, NH, D)
    w_last = torch.exp(log_d[..., last, :] - m_last[..., None]).to(dtype)  # (B, NH, D, S)
    k_w = (k / math.sqrt(DK))[:, :, None] * w_last[..., None]  # (B, NH, D, S, DK)
    C = k_w.transpose(-1, -2) @ v[:, :, None]  # (B, NH, D, DK, DV)
    n = k_w.sum(-2)  # (B, NH, D, DK)
    C, n, m_last = (x.transpose(1, 2).reshape(B * D, NH, *x.shape[3:]) for x in (C, n, m_last))  # (B·D, NH, ...)
    if state is not None:
        carry_last = carry[..., last].transpose(1, 2).reshape(B * D, NH)  # (B·D, NH)
        C = C + carry_last[..., None, None] * state.C
        n = n + carry_last[..., None] * state.n
    return h, MLSTMState(C, n, m_last.to(dtype))
