"""mLSTM decoding step as one fused Triton kernel (the GPU twin of ``recurrent.mlstm_step``).

MATH.md "Stabilised recurrent form" (xLSTM paper Sec. 2.3, Eqs. 19-27, with the max-stabiliser of
App. A.2): per head, with the stabiliser m and the scaled state C̄ = C·exp(-m), n̄ = n·exp(-m),

    m'  = max(log σ(f̃) + m, ĩ)
    C̄'  = exp(log σ(f̃) + m - m')·C̄ + exp(ĩ - m')·(k/√DK) vᵀ       (DK, DV)
    n̄'  = exp(log σ(f̃) + m - m')·n̄ + exp(ĩ - m')·(k/√DK)           (DK,)
    h   = C̄'ᵀ q / (max(|n̄'ᵀ q|, exp(-m')) + eps)                    (DV,)

The torch step runs this as a dozen kernels that each stream the (DK, DV) memory; here one kernel
reads each tile of C̄ once, writes its update and reduces it against q in the same pass, so a step
costs one read and one write of the state (decoding is memory-bound). No autograd: decoding only.

This module imports Triton at import time; ``ops.mlstm_cell.mlstm_step`` imports it lazily, so
the package works without Triton installed.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._checks import check_state, check_tensor, state_dtype
from .._triton import require_triton
from .state import MLSTMState, empty_mlstm_state

MAX_BLOCK = 64  # tile edge along DK and DV: a 64 x 64 float32 tile is 32 registers a thread at 4 warps


@triton.jit
def _mlstm_step_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, f_ptr,  # q, k (B, NH, DK); v (B, NH, DV); i, f (B, NH); any strides
    C_ptr, n_ptr, m_ptr,  # the state before the step, contiguous: (B*NH, DK, DV), (B*NH, DK), (B*NH,)
    h_ptr, C_new_ptr, n_new_ptr, m_new_ptr,  # outputs, contiguous: h (B*NH, DV) and the state after
    NH, DK, DV,
    s_qb, s_qh, s_qd, s_kb, s_kh, s_kd, s_vb, s_vh, s_vd, s_ib, s_ih, s_fb, s_fh,
    eps, log_floor_min, log_floor_max,
    BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One program: head ``program_id(0)`` (of B*NH), value columns ``program_id(1)`` (a DV tile)."""
    bh = tl.program_id(0).to(tl.int64)  # int64 offsets: B·NH·DK·DV can pass 2³¹
    tile_v = tl.program_id(1)
    b = bh // NH
    hd = bh % NH
    sdtype = C_new_ptr.dtype.element_ty  # float32, or float64 for float64 inputs

    # Gate scalars in float64, as the torch step computes them: with |m| ~ 10 a float32 stabiliser
    # would cost ~1e-6 relative a step, which a long decode accumulates. Every DV tile recomputes
    # them (three loads and a few flops) instead of waiting on another program.
    i_pre = tl.load(i_ptr + b * s_ib + hd * s_ih).to(tl.float64)
    f_pre = tl.load(f_ptr + b * s_fb + hd * s_fh).to(tl.float64)
    m_old = tl.load(m_ptr + bh).to(tl.float64)
    log_sigmoid_f = tl.minimum(f_pre, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f_pre)))  # overflow-free log σ(f̃)
    log_f_plus_m = log_sigmoid_f + m_old  # -inf for an empty state, whose m is -inf
    m_new64 = tl.maximum(log_f_plus_m, i_pre)
    f_scale = tl.exp(log_f_plus_m - m_new64).to(sdtype)
    k_scale = (tl.exp(i_pre - m_new64) / tl.sqrt(tl.cast(DK, tl.float64))).to(sdtype)  # exp(ĩ - m') / √DK
    m_new = m_new64.to(sdtype)

    offs_v = tile_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    mask_v = offs_v < DV
    v = tl.load(v_ptr + b * s_vb + hd * s_vh + offs_v * s_vd, mask=mask_v, other=0.0).to(sdtype)  # (BLOCK_DV,)
    num = tl.zeros([BLOCK_DV], dtype=sdtype)  # C̄'ᵀ q for this tile's columns
    den = tl.zeros([BLOCK_DK], dtype=sdtype)  # n̄' * q, summed over DK after the loop
    writes_n = tile_v == 0  # every tile computes n̄' (it needs n̄'ᵀ q); the first one stores it
    for k0 in range(0, DK, BLOCK_DK):
        offs_k = k0 + tl.arange(0, BLOCK_DK)
        mask_k = offs_k < DK
        k = tl.load(k_ptr + b * s_kb + hd * s_kh + offs_k * s_kd, mask=mask_k, other=0.0).to(sdtype) * k_scale
        q = tl.load(q_ptr + b * s_qb + hd * s_qh + offs_k * s_qd, mask=mask_k, other=0.0).to(sdtype)
        n_old = tl.load(n_ptr + bh * DK + offs_k, mask=mask_k, other=0.0)
        n_new = n_old * f_scale + k  # (BLOCK_DK,)
        if writes_n:
            tl.store(n_new_ptr + bh * DK + offs_k, n_new, mask=mask_k)
        tile = bh * DK * DV + offs_k[:, None] * DV + offs_v[None, :]  # (BLOCK_DK, BLOCK_DV) offsets
        mask = mask_k[:, None] & mask_v[None, :]
        C_old = tl.load(C_ptr + tile, mask=mask, other=0.0)
        C_new = C_old * f_scale + k[:, None] * v[None, :]
        tl.store(C_new_ptr + tile, C_new, mask=mask)
        num += tl.sum(q[:, None] * C_new, axis=0)
        den += q * n_new

    # The normaliser floor exp(-m') with the exponent clamped as in state.normaliser_floor, of the
    # rounded m' as there; in float64 because Triton's float32 exp is the approximate ex2 (~1e-5 off at |m'| ~ 80).
    floor = tl.exp(tl.minimum(tl.maximum(-m_new.to(tl.float64), log_floor_min), log_floor_max)).to(sdtype)
    h = num / (tl.maximum(tl.abs(tl.sum(den, axis=0)), floor) + eps)
    tl.store(h_ptr + bh * DV + offs_v, h.to(h_ptr.dtype.element_ty), mask=mask_v)
    if writes_n:
        tl.store(m_new_ptr + bh, m_new)


def mlstm_step_triton(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6):
    """One decoding step in one kernel; same contract as ``recurrent.mlstm_step``.

    q, k: (B, NH, DK)   v: (B, NH, DV)   i, f: (B, NH) gate pre-activations, all one dtype
    state: MLSTMState (C̄ (B, NH, DK, DV), n̄ (B, NH, DK), m (B, NH)) or None for the empty state.
    Returns h (B, NH, DV) in q's dtype and the new MLSTMState (float32, or float64 for float64
    inputs; new tensors, the given state is left as it was). No backward: raises if a gradient
    is required (use ``backend="recurrent"``).
    """
    check_tensor("q", q, 3)
    B, NH, DK = q.shape
    dtype, device = q.dtype, q.device
    check_tensor("k", k, 3, dtype=dtype, device=device, shape=(B, NH, DK))
    check_tensor("v", v, 3, dtype=dtype, device=device)
    if tuple(v.shape[:2]) != (B, NH):
        raise ValueError(f"v must have shape (B, NH, DV) = ({B}, {NH}, DV), got {tuple(v.shape)}")
    DV = v.shape[-1]
    check_tensor("i", i, 2, dtype=dtype, device=device, shape=(B, NH))
    check_tensor("f", f, 2, dtype=dtype, device=device, shape=(B, NH))
    if DK == 0 or DV == 0:
        raise ValueError(f"q and v need DK >= 1 and DV >= 1, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    require_triton(device)
    sdtype = state_dtype(dtype)
    if state is None:
        state = empty_mlstm_state(B, NH, DK, DV, dtype=sdtype, device=device)
    else:
        state = check_state("state", state, {"C": (B, NH, DK, DV), "n": (B, NH, DK), "m": (B, NH)}, device)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, i, f, *state)):
        raise RuntimeError('mlstm_step backend="triton" has no backward (it is for decoding): run it under '
                           'torch.no_grad(), or use backend="recurrent" to differentiate through the step')
    C, n, m = (x.to(sdtype).contiguous() for x in state)

    h = torch.empty(B, NH, DV, dtype=dtype, device=device)
    C_new, n_new, m_new = torch.empty_like(C), torch.empty_like(n), torch.empty_like(m)
    info = torch.finfo(sdtype)
    block_dk = min(triton.next_power_of_2(DK), MAX_BLOCK)
    block_dv = min(triton.next_power_of_2(DV), MAX_BLOCK)
    grid = (B * NH, triton.cdiv(DV, block_dv))
    _mlstm_step_kernel[grid](
        q, k, v, i, f, C, n, m, h, C_new, n_new, m_new,
        NH, DK, DV,
        *q.stride(), *k.stride(), *v.stride(), *i.stride(), *f.stride(),
        float(eps), math.log(info.tiny), math.log(info.max) - 8.0,
        BLOCK_DK=block_dk, BLOCK_DV=block_dv,
    )
    return h, MLSTMState(C_new, n_new, m_new)
