"""mLSTM: matrix memory with a covariance update (xLSTM paper Sec. 2.3). See README.md here.

``mlstm`` is the op contract of MATH.md; the formulations live one per file:
reference.py (the spec), parallel.py, chunkwise.py, recurrent.py, and the GPU kernels in
triton_chunkwise.py (``backend="triton"``). ``mlstm_step`` (one decoding step) runs the torch step
of recurrent.py or its fused twin in triton_step.py.
"""

from __future__ import annotations

import torch

from .._checks import check_choice, check_positive_int, check_state, check_tensor, state_dtype
from .._packing import check_cu_seqlens
from .._triton import require_triton, triton_runs_on
from .chunkwise import mlstm_chunkwise
from .parallel import mlstm_parallel
from .recurrent import mlstm_recurrent
from .recurrent import mlstm_step as mlstm_step_torch
from .reference import mlstm_reference
from .state import MLSTMState, empty_mlstm_state
from .triton_chunkwise import mlstm_triton

BACKENDS = {
    "reference": mlstm_reference,
    "parallel": mlstm_parallel,
    "chunkwise": mlstm_chunkwise,
    "recurrent": mlstm_recurrent,
    "triton": mlstm_triton,
}
DEFAULT_CHUNK_SIZE = 64
TRITON_CHUNK_SIZE = 128  # fastest of 64/128/256 on an H200 at 2k-64k context (benchmarks/RESULTS.md)
STEP_BACKENDS = ("recurrent", "triton")  # what mlstm_step runs: the torch step, or the fused kernel


PARALLEL_MAX_S = 512  # the parallel form holds (B, NH, S, S) float64 decay matrices: never above this


def select_backend(S: int, device: torch.device, requires_grad: bool, DK: int | None = None,
                   DV: int | None = None) -> str:
    """What ``backend=None`` runs (measured in benchmarks/bench_ops.py, bench_backend_choice.py and
    bench_triton.py).

    - CUDA tensors with Triton installed: the Triton kernels.
    - S == 1: the recurrent step (decoding; O(1) per token).
    - short sequences relative to the head dims, S (DK + DV) <= 2 DK DV (S <= D for DK = DV = D), given
      DK and DV: the parallel form. Its cost is S² (DK + DV) per head; the chunkwise form's is dominated
      by the chunk states, S DK DV per head forward plus their recomputation and elementwise passes in
      the backward, and it pays them even for a single chunk. Measured on the CPU, fwd+bwd, 64 rows:
      parallel 3-5x faster at S 32-64 with D 128-256, equal at S = D, chunkwise faster above.
    - otherwise: chunkwise (linear in S in time and memory).
    ``requires_grad`` does not change the choice on the CPU (the same crossover holds without a gradient).
    """
    if device.type == "cuda" and triton_runs_on(device):
        return "triton"
    if S == 1:
        return "recurrent"
    if DK is not None and DV is not None and S <= PARALLEL_MAX_S and S * (DK + DV) <= 2 * DK * DV:
        return "parallel"
    return "chunkwise"


def mlstm_step(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6, *, backend: str | None = None):
    """One decoding step. q, k: (B, NH, DK); v: (B, NH, DV); i, f: (B, NH). Returns h (B, NH, DV), MLSTMState.

    backend: "recurrent" (the torch step, differentiable), "triton" (one fused kernel, no
    backward; triton_step.py) or None: "triton" for CUDA tensors when Triton is installed and no
    gradient is needed, else "recurrent".
    """
    check_choice("backend", backend, STEP_BACKENDS + (None,))
    if backend is None:
        requires_grad = torch.is_grad_enabled() and any(
            x.requires_grad for x in (q, k, v, i, f, *(state or ())))
        use_triton = q.device.type == "cuda" and triton_runs_on(q.device) and not requires_grad
        backend = "triton" if use_triton else "recurrent"
    if backend == "triton":
        require_triton(q.device)
        from .triton_step import mlstm_step_triton  # imports Triton: only when asked for

        return mlstm_step_triton(q, k, v, i, f, state, eps)
    return mlstm_step_torch(q, k, v, i, f, state, eps)


def mlstm(q, k, v, i, f, *, state=None, return_state: bool = False, backend: str | None = None,
          chunk_size: int | None = None, eps: float = 1e-6, cu_seqlens: torch.Tensor | None = None):
    """The mLSTM cell over a sequence (MATH.md "The op-level contract").

    q, k: (B, NH, S, DK)   v: (B, NH, S, DV)   i, f: (B, NH, S) input/forget gate pre-activations
    state: optional MLSTMState (C̄ (B, NH, DK, DV), n̄ (B, NH, DK), m (B, NH)) to start from.
    Returns h (B, NH, S, DV) in q's dtype, and with ``return_state`` also the final MLSTMState
    (float32, or float64 for float64 inputs).

    cu_seqlens: optional (D + 1,) int64 [0, l_1, l_1 + l_2, ..., S] for D documents packed back to
    back in one row (B == 1; ops/_packing.py). Every backend then gives exactly what each document
    run alone gives: each starts from the empty state, or from row d of a ``state`` with D rows
    (C̄ (D, NH, DK, DV), n̄ (D, NH, DK), m (D, NH)); the final state has D rows, one per document.
    """
    check_tensor("q", q, 4)
    B, NH, S, DK = q.shape
    dtype, device = q.dtype, q.device
    check_tensor("k", k, 4, dtype=dtype, device=device, shape=(B, NH, S, DK))
    check_tensor("v", v, 4, dtype=dtype, device=device)
    if tuple(v.shape[:3]) != (B, NH, S):
        raise ValueError(f"v must have shape (B, NH, S, DV) = ({B}, {NH}, {S}, DV), got {tuple(v.shape)}")
    DV = v.shape[-1]
    check_tensor("i", i, 3, dtype=dtype, device=device, shape=(B, NH, S))
    check_tensor("f", f, 3, dtype=dtype, device=device, shape=(B, NH, S))
    if S == 0 or DK == 0 or DV == 0:
        raise ValueError(f"q and v need S >= 1, DK >= 1 and DV >= 1, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    check_choice("backend", backend, list(BACKENDS) + [None])
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    rows = B  # rows of the state: batch rows, or documents when packed
    if cu_seqlens is not None:
        cu_seqlens = check_cu_seqlens(cu_seqlens, S, B)
        rows = len(cu_seqlens) - 1
    sdtype = state_dtype(dtype)
    if state is not None:
        state = check_state("state", state, {"C": (rows, NH, DK, DV), "n": (rows, NH, DK), "m": (rows, NH)}, device)
        state = MLSTMState(*(x.to(sdtype) for x in state))

    requires_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (q, k, v, i, f, *(state or ())))
    name = backend or select_backend(S, device, requires_grad, DK, DV)
    if name == "triton":  # the kernels read bf16/fp16 inputs as they are and keep fp32 states themselves
        h, final = mlstm_triton(q, k, v, i, f, state=state, eps=float(eps),
                                chunk_size=chunk_size or TRITON_CHUNK_SIZE, cu_seqlens=cu_seqlens)
        return (h, final) if return_state else h
    args = [x.to(sdtype) for x in (q, k, v, i, f)]
    if name == "chunkwise":
        h, final = mlstm_chunkwise(*args, state=state, eps=float(eps), chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                                   cu_seqlens=cu_seqlens)
    else:
        h, final = BACKENDS[name](*args, state=state, eps=float(eps), cu_seqlens=cu_seqlens)
    h = h.to(dtype)
    return (h, final) if return_state else h


__all__ = ["mlstm", "mlstm_step", "MLSTMState", "empty_mlstm_state", "BACKENDS", "select_backend",
           "mlstm_reference", "mlstm_parallel", "mlstm_chunkwise", "mlstm_recurrent", "mlstm_triton"]
