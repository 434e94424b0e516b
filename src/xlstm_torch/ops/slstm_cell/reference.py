"""sLSTM reference: the stabilised recurrence of MATH.md, one step at a time, plain autograd.

xLSTM paper Sec. 2.2 (eqs. 8-17) with the stabiliser of eqs. 15-17: scalar memory per unit,
exponential input gate, memory mixing through block-diagonal recurrent weights (one DH x DH block
per head and gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._packing import run_per_document
from .state import SLSTMState, empty_slstm_state


def slstm_reference(wx, r, b, state: SLSTMState | None = None, cu_seqlens: tuple[int, ...] | None = None):
    """wx: (B, S, NH, 4, DH) input contributions, gates (i, f, z, o); r: (NH, 4, DH, DH); b: (NH, 4, DH).

    Returns h (B, S, NH, DH) and the final SLSTMState. Inputs must already be in the state dtype.
    cu_seqlens: document boundaries (0, l_1, ..., S) of a packed row (B == 1; ops/_packing.py): each
    document runs alone, from row d of ``state`` (D rows) or the empty state; the final state has D rows.
    """
    if cu_seqlens is not None:
        return run_per_document(lambda x, state: slstm_reference(x, r, b, state), (wx,), 1, state, cu_seqlens)
    B, S, NH, _, DH = wx.shape
    h, c, n, m = state if state is not None else empty_slstm_state(B, NH, DH, dtype=wx.dtype, device=wx.device)
    hs = []
    for t in range(S):
        raw = wx[:, t] + torch.einsum("bhd,hgde->bhge", h, r) + b  # (B, NH, 4, DH)
        i_pre, f_pre, z_pre, o_pre = raw.unbind(dim=2)
        log_f = F.logsigmoid(f_pre)
        m_new = torch.maximum(log_f + m, i_pre)
        i_scaled = torch.exp(i_pre - m_new)
        f_scaled = torch.exp(log_f + m - m_new)
        c = f_scaled * c + i_scaled * torch.tanh(z_pre)
        n = f_scaled * n + i_scaled
        h = torch.sigmoid(o_pre) * c / n
        m = m_new
        hs.append(h)
    return torch.stack(hs, dim=1), SLSTMState(h, c, n, m)
