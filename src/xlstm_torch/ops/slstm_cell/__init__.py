"""sLSTM: scalar memory with memory mixing across a head (xLSTM paper Sec. 2.2).

``slstm`` is the op contract of MATH.md; reference.py holds the spec, recurrent.py the fast CPU
form, triton_recurrent.py the GPU kernels (``backend="triton"``).
"""

from __future__ import annotations

import torch

from .._checks import check_choice, check_state, check_tensor, state_dtype
from .._packing import check_cu_seqlens, documents_as_rows
from .._triton import triton_runs_on
from .recurrent import slstm_recurrent, slstm_step, slstm_step_weights
from .reference import slstm_reference
from .state import SLSTMState, empty_slstm_state
from .triton_recurrent import RESIDENT_MAX_DH
from .triton_recurrent import slstm_triton

BACKENDS = {"reference": slstm_reference, "recurrent": slstm_recurrent, "triton": slstm_triton}


def select_backend(device: torch.device, DH: int | None = None) -> str:
    """What ``backend=None`` runs: the Triton kernels for CUDA tensors with Triton installed and heads
    whose recurrent blocks stay on chip (DH <= RESIDENT_MAX_DH, when DH is given), else the fast
    recurrent form. Measured on an H200 (bf16, B 16, S 1024, NH 4; benchmarks/RESULTS.md): at DH 64
    the kernels are ~20x faster than the recurrent form, at DH 128 (blocks reloaded every step) ~2x slower."""
    if device.type == "cuda" and triton_runs_on(device) and (DH is None or DH <= RESIDENT_MAX_DH):
        return "triton"
    return "recurrent"


def slstm(wx, r, b, *, state=None, return_state: bool = False, backend: str | None = None,
          cu_seqlens: torch.Tensor | None = None):
    """The sLSTM cell over a sequence (MATH.md "The op-level contract").

    wx: (B, S, NH, 4, DH) input contributions W x_t for gates (i, f, z, o)
    r:  (NH, 4, DH, DH) recurrent blocks: raw[:, t, h, g] = wx[:, t, h, g] + h_{t-1}[:, h] @ r[h, g] + b[h, g]
    b:  (NH, 4, DH) biases
    state: optional SLSTMState (h, c̄, n̄, m), each (B, NH, DH).
    Returns h (B, S, NH, DH) in wx's dtype, and with ``return_state`` the final SLSTMState.

    cu_seqlens: optional (D + 1,) int64 [0, l_1, l_1 + l_2, ..., S] for D documents packed back to
    back in one row (B == 1; ops/_packing.py). Every backend then gives exactly what each document
    run alone gives: each starts from the empty state, or from row d of a ``state`` with D rows
    (each (D, NH, DH)); the final state has D rows, one per document.
    """
    check_tensor("wx", wx, 5)
    B, S, NH, G, DH = wx.shape
    if G != 4:
        raise ValueError(f"wx must have shape (B, S, NH, 4, DH) with the 4 gates (i, f, z, o), got {tuple(wx.shape)}")
    if S == 0 or DH == 0:
        raise ValueError(f"wx needs S >= 1 and DH >= 1, got shape {tuple(wx.shape)}")
    dtype, device = wx.dtype, wx.device
    check_tensor("r", r, 4, dtype=dtype, device=device, shape=(NH, 4, DH, DH))
    check_tensor("b", b, 3, dtype=dtype, device=device, shape=(NH, 4, DH))
    check_choice("backend", backend, list(BACKENDS) + [None])
    rows = B  # rows of the state: batch rows, or documents when packed
    if cu_seqlens is not None:
        cu_seqlens = check_cu_seqlens(cu_seqlens, S, B)
        rows = len(cu_seqlens) - 1
    sdtype = state_dtype(dtype)
    if state is not None:
        shape = (rows, NH, DH)
        state = check_state("state", state, {"h": shape, "c": shape, "n": shape, "m": shape}, device)
        state = SLSTMState(*(x.to(sdtype) for x in state))
    name = backend or select_backend(device, DH)
    if name == "triton":  # the kernels read bf16/fp16 inputs as they are and keep float32 states themselves
        h, final = slstm_triton(wx, r, b, state, cu_seqlens=cu_seqlens)
        return (h, final) if return_state else h
    if cu_seqlens is not None and not return_state and name == "recurrent" and _pads_cheaply(cu_seqlens):
        h = _documents_as_batch(BACKENDS[name], wx.to(sdtype), r.to(sdtype), b.to(sdtype), state, cu_seqlens)
        return h.to(dtype)
    h, final = BACKENDS[name](wx.to(sdtype), r.to(sdtype), b.to(sdtype), state, cu_seqlens=cu_seqlens)
    h = h.to(dtype)
    return (h, final) if return_state else h


def _pads_cheaply(cu_seqlens: tuple[int, ...]) -> bool:
    """Documents as rows of a batch cost D x (longest) steps: worth it when that is at most twice the tokens."""
    lengths = [b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])]
    return len(lengths) > 1 and len(lengths) * max(lengths) <= 2 * cu_seqlens[-1]


def _documents_as_batch(backend, wx, r, b, state, cu_seqlens):
    """Packed documents run as the rows of one batch, right-padded to the longest (training: no final state).

    The recurrence is strictly sequential, so one packed row of D documents costs S steps at batch 1; as D rows
    it costs max(l_d) steps at batch D, which is what a training batch of rows split at document starts needs.
    Exact: each row starts from its own initial state, and the padding comes after a document's last token, so
    it reaches neither its outputs (causal) nor, since those padded outputs are dropped, its gradients.
    """
    gather, _, unpad = documents_as_rows(cu_seqlens, wx.device)
    h, _ = backend(wx[0][gather], r, b, state)  # (D, L, NH, DH)
    return h.flatten(0, 1)[unpad].unsqueeze(0)  # (1, S, NH, DH): documents back to back, as packed


__all__ = ["slstm", "slstm_step", "slstm_step_weights", "SLSTMState", "empty_slstm_state", "BACKENDS", "select_backend", "slstm_reference", "slstm_recurrent",
           "slstm_triton"]
