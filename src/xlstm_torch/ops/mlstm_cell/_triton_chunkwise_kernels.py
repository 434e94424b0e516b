"""Triton kernels of the chunkwise mLSTM (imported only when ``backend="triton"`` runs).

Notation and algorithm: triton_chunkwise.py. Every kernel works on one (batch, head) row ``bh`` of
tensors laid out (BH, nc·L, D) for tokens, (BH, nc·L) for per-step gate numbers, (BH, nc, DK, DV)
for chunk states. A chunk of L steps is cut into tiles of BQ (queries) or BT (keys/values) steps,
so the chunk size is independent of the on-chip tile (two-level tiling); the head dims are cut
into tiles of BK (DK) and BV (DV). Matrix operands are in the input dtype (bf16/fp16; fp32 and
fp64 inputs use exact fp32/fp64 products), every accumulator and state is fp32 (fp64 for fp64).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton's interpreter multiplies bf16/fp16 operands wrongly (it reads their raw bits); it gets them in
# fp32 instead. Products of bf16/fp16 numbers are exact in fp32, so the numbers are those of the
# GPU's tensor cores with fp32 accumulation, up to the order of the sums.
_UPCAST_OPERANDS: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    if _UPCAST_OPERANDS:
        if a.dtype != tl.float64:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _intra_weights(u_ptr, M_ptr, row0, j, l, L, S_total):
    """(BQ, BT) weights exp(u_l - M_j) of key steps l on query steps j (l <= j < L); u holds the 1/sqrt(DK).

    u and M come as two-term sums (hi at [0, S_total), lo after): their difference is then exact to
    ~1e-12 relative, where single fp32 numbers of size |u| ~ 30 would cost ~2e-6 in every weight.
    """
    u_hi = tl.load(u_ptr + row0 + l, mask=l < L, other=float("-inf"))
    u_lo = tl.load(u_ptr + S_total + row0 + l, mask=l < L, other=0.0)
    M_hi = tl.load(M_ptr + row0 + j, mask=j < L, other=0.0)
    M_lo = tl.load(M_ptr + S_total + row0 + j, mask=j < L, other=0.0)
    causal = (l[None, :] <= j[:, None]) & (l[None, :] < L)
    log_w = (u_hi[None, :] - M_hi[:, None]) + (u_lo[None, :] - M_lo[:, None])
    return tl.exp(tl.where(causal, log_w, float("-inf")))  # masked before exp: no inf outside the triangle


@triton.jit
def _load_state(C_ptr, n_ptr, index, dk, dv, DK, DV):
    """Tile (dk, dv) of state ``index`` of a (N, DK, DV) matrix and its (N, DK) vector."""
    C = tl.load(C_ptr + index * DK * DV + dk[:, None] * DV + dv[None, :], mask=(dk[:, None] < DK) & (dv[None, :] < DV), other=0.0)
    n = tl.load(n_ptr + index * DK + dk, mask=dk < DK, other=0.0)
    return C, n


@triton.jit
def _store_state(C_ptr, n_ptr, index, C, n, dk, dv, DK, DV, write_n):
    tl.store(C_ptr + index * DK * DV + dk[:, None] * DV + dv[None, :], C, mask=(dk[:, None] < DK) & (dv[None, :] < DV))
    if write_n:  # one DV tile writes the vector
        tl.store(n_ptr + index * DK + dk, n, mask=dk < DK)


@triton.jit
def fwd_states_kernel(k_ptr, v_ptr, inw_ptr, decay_ptr, first_ptr, last_ptr,
                      C0_ptr, n0_ptr, Cin_ptr, nin_ptr, Clast_ptr, nlast_ptr,
                      nc, L, D_docs, DK, DV,
                      BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, PRECISION: tl.constexpr):
    """The scan over chunks: C̄ entering every chunk and leaving every document's last chunk.

    C̄_{k+1} = decay_k C̄_k + Σ_l inw_l k_l v_lᵀ (inw holds the 1/sqrt(DK)); n̄ likewise with 1 for v (DV tile 0).
    A chunk that starts document d begins from its initial state C0[d] instead of the carry.
    Grid: (BH, DK tiles, DV tiles).
    """
    bh, pk, pv = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    dk = pk * BK + tl.arange(0, BK)
    dv = pv * BV + tl.arange(0, BV)
    C = tl.zeros((BK, BV), dtype=Cin_ptr.dtype.element_ty)
    n = tl.zeros((BK,), dtype=Cin_ptr.dtype.element_ty)
    S_pad = nc * L
    for c in range(nc):
        d_first = tl.load(first_ptr + c)
        if d_first >= 0:
            C, n = _load_state(C0_ptr, n0_ptr, bh * D_docs + d_first, dk, dv, DK, DV)
        state = bh * nc + c
        _store_state(Cin_ptr, nin_ptr, state, C, n, dk, dv, DK, DV, pv == 0)
        decay = tl.load(decay_ptr + state)
        C = C * decay
        n = n * decay
        row0 = bh * S_pad + c * L
        for t0 in range(0, L, BT):
            t = t0 + tl.arange(0, BT)
            w = tl.load(inw_ptr + row0 + t, mask=t < L, other=0.0)  # (BT,) holds the 1/sqrt(DK)
            kt = tl.load(k_ptr + (row0 + t)[:, None] * DK + dk[None, :], mask=(t[:, None] < L) & (dk[None, :] < DK), other=0.0)
            vt = tl.load(v_ptr + (row0 + t)[:, None] * DV + dv[None, :], mask=(t[:, None] < L) & (dv[None, :] < DV), other=0.0)
            kw = (kt.to(C.dtype) * w[:, None])  # (BT, BK)
            C += _dot(tl.trans(kw.to(kt.dtype)), vt, PRECISION)
            n += tl.sum(kw, axis=0)
        d_last = tl.load(last_ptr + c)
        if d_last >= 0:
            _store_state(Clast_ptr, nlast_ptr, bh * D_docs + d_last, C, n, dk, dv, DK, DV, pv == 0)


@triton.jit
def fwd_out_kernel(q_ptr, k_ptr, v_ptr, u_ptr, M_ptr, carry_ptr, floor_ptr, Cin_ptr, nin_ptr,
                   h_ptr, den_ptr, nc, L, DK, DV, eps,
                   BQ: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Outputs of BQ steps of one chunk for one DV tile: carried state plus the causal intra-chunk part.

    num_j = carry_j q_jᵀ C̄_in + Σ_{l<=j} w_jl (q_j·k_l) v_l,  den_j likewise with n̄_in and 1,
    h_j = num_j / (max(|den_j|, floor_j) + eps). Grid: (BH·nc, query tiles, DV tiles).
    """
    bc, pq, pv = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    bh = bc // nc
    c = bc % nc
    row0 = bh * nc * L + c * L
    j = pq * BQ + tl.arange(0, BQ)
    dv = pv * BV + tl.arange(0, BV)
    jm = j < L
    acc_dtype = Cin_ptr.dtype.element_ty
    num = tl.zeros((BQ, BV), dtype=acc_dtype)
    den = tl.zeros((BQ,), dtype=acc_dtype)
    for k0 in range(0, DK, BK):
        dk = k0 + tl.arange(0, BK)
        qt = tl.load(q_ptr + (row0 + j)[:, None] * DK + dk[None, :], mask=jm[:, None] & (dk[None, :] < DK), other=0.0)
        Ct = tl.load(Cin_ptr + bc * DK * DV + dk[:, None] * DV + dv[None, :], mask=(dk[:, None] < DK) & (dv[None, :] < DV), other=0.0)
        nt = tl.load(nin_ptr + bc * DK + dk, mask=dk < DK, other=0.0)
        num += _dot(qt, Ct.to(qt.dtype), PRECISION)
        den += tl.sum(qt.to(acc_dtype) * nt[None, :], axis=1)
    carry = tl.load(carry_ptr + row0 + j, mask=jm, other=0.0)
    num = num * carry[:, None]
    den = den * carry
    for t0 in range(0, pq * BQ + BQ, BT):
        t = t0 + tl.arange(0, BT)
        s = tl.zeros((BQ, BT), dtype=acc_dtype)
        for k0 in range(0, DK, BK):
            dk = k0 + tl.arange(0, BK)
            qt = tl.load(q_ptr + (row0 + j)[:, None] * DK + dk[None, :], mask=jm[:, None] & (dk[None, :] < DK), other=0.0)
            kt = tl.load(k_ptr + (row0 + t)[:, None] * DK + dk[None, :], mask=(t[:, None] < L) & (dk[None, :] < DK), other=0.0)
            s += _dot(qt, tl.trans(kt), PRECISION)
        p = s * _intra_weights(u_ptr, M_ptr, row0, j, t, L, tl.num_programs(0) * L)  # (BQ, BT)
        den += tl.sum(p, axis=1)
        vt = tl.load(v_ptr + (row0 + t)[:, None] * DV + dv[None, :], mask=(t[:, None] < L) & (dv[None, :] < DV), other=0.0)
        num += _dot(p.to(vt.dtype), vt, PRECISION)
    floor = tl.load(floor_ptr + row0 + j, mask=jm, other=1.0)
    Q = tl.maximum(tl.abs(den), floor) + eps
    h = num / Q[:, None]
    tl.store(h_ptr + (row0 + j)[:, None] * DV + dv[None, :], h.to(h_ptr.dtype.element_ty), mask=jm[:, None] & (dv[None, :] < DV))
    if pv == 0:
        tl.store(den_ptr + row0 + j, den, mask=jm)


@triton.jit
def bwd_states_kernel(q_ptr, dh_ptr, rQ_ptr, dden_ptr, carry_ptr, decay_ptr, first_ptr, last_ptr,
                      dClast_ptr, dnlast_ptr, dCend_ptr, dnend_ptr, dC0_ptr, dn0_ptr,
                      nc, L, D_docs, DK, DV,
                      BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, PRECISION: tl.constexpr):
    """The reverse scan: gradient on the state leaving every chunk (and on each document's C0).

    dC̄_end_{k-1} = Σ_j (carry_j q_j) dnum_jᵀ over chunk k + decay_k dC̄_end_k, with dnum_j = dh_j / Q_j
    (dn̄ likewise with dden_j). Grid: (BH, DK tiles, DV tiles).
    """
    bh, pk, pv = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    dk = pk * BK + tl.arange(0, BK)
    dv = pv * BV + tl.arange(0, BV)
    acc_dtype = dCend_ptr.dtype.element_ty
    dC = tl.zeros((BK, BV), dtype=acc_dtype)
    dn = tl.zeros((BK,), dtype=acc_dtype)
    S_pad = nc * L
    for cc in range(nc):
        c = nc - 1 - cc
        d_last = tl.load(last_ptr + c)
        if d_last >= 0:
            dC, dn = _load_state(dClast_ptr, dnlast_ptr, bh * D_docs + d_last, dk, dv, DK, DV)
        state = bh * nc + c
        _store_state(dCend_ptr, dnend_ptr, state, dC, dn, dk, dv, DK, DV, pv == 0)
        decay = tl.load(decay_ptr + state)
        dC = dC * decay
        dn = dn * decay
        row0 = bh * S_pad + c * L
        for t0 in range(0, L, BT):
            t = t0 + tl.arange(0, BT)
            tm = t < L
            carry = tl.load(carry_ptr + row0 + t, mask=tm, other=0.0)
            qt = tl.load(q_ptr + (row0 + t)[:, None] * DK + dk[None, :], mask=tm[:, None] & (dk[None, :] < DK), other=0.0)
            qc = qt.to(acc_dtype) * carry[:, None]  # (BT, BK)
            rQ = tl.load(rQ_ptr + row0 + t, mask=tm, other=0.0)
            dht = tl.load(dh_ptr + (row0 + t)[:, None] * DV + dv[None, :], mask=tm[:, None] & (dv[None, :] < DV), other=0.0)
            dnum = dht.to(acc_dtype) * rQ[:, None]  # (BT, BV)
            dC += _dot(tl.trans(qc.to(qt.dtype)), dnum.to(qt.dtype), PRECISION)
            dden = tl.load(dden_ptr + row0 + t, mask=tm, other=0.0)
            dn += tl.sum(qc * dden[:, None], axis=0)
        d_first = tl.load(first_ptr + c)
        if d_first >= 0:
            _store_state(dC0_ptr, dn0_ptr, bh * D_docs + d_first, dC, dn, dk, dv, DK, DV, pv == 0)


@triton.jit
def _dP(dh_ptr, rQ_ptr, dden_ptr, v_ptr, row0, j, t, L, DV,
        BQ: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, acc_dtype: tl.constexpr, PRECISION: tl.constexpr):
    """(BQ, BT) gradient on the intra scores: dnum_j · v_l + dden_j (the ones column of v).

    The two terms nearly cancel when h_j is close to a v_l, so dh_j · v_l is formed from the inputs as
    they are (exact products) and scaled by 1 / Q_j afterwards, rather than from a rounded dh_j / Q_j.
    """
    jm = j < L
    dP = tl.zeros((BQ, BT), dtype=acc_dtype)
    for v0 in range(0, DV, BV):
        dv = v0 + tl.arange(0, BV)
        dht = tl.load(dh_ptr + (row0 + j)[:, None] * DV + dv[None, :], mask=jm[:, None] & (dv[None, :] < DV), other=0.0)
        vt = tl.load(v_ptr + (row0 + t)[:, None] * DV + dv[None, :], mask=(t[:, None] < L) & (dv[None, :] < DV), other=0.0)
        dP += _dot(dht.to(vt.dtype), tl.trans(vt), PRECISION)
    rQ = tl.load(rQ_ptr + row0 + j, mask=jm, other=0.0)
    dden = tl.load(dden_ptr + row0 + j, mask=jm, other=0.0)
    return dP * rQ[:, None] + dden[:, None]


@triton.jit
def bwd_dq_kernel(q_ptr, k_ptr, v_ptr, dh_ptr, rQ_ptr, dden_ptr, u_ptr, M_ptr, carry_ptr, Cin_ptr, nin_ptr,
                  dq_ptr, nc, L, DK, DV,
                  BQ: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  PRECISION: tl.constexpr):
    """dq_j = carry_j (dnum_j C̄_inᵀ + dden_j n̄_in) + Σ_{l<=j} w_jl dP_jl k_l. Grid: (BH·nc, query tiles, DK tiles)."""
    bc, pq, pk = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    bh = bc // nc
    c = bc % nc
    row0 = bh * nc * L + c * L
    j = pq * BQ + tl.arange(0, BQ)
    dk = pk * BK + tl.arange(0, BK)
    jm = j < L
    acc_dtype = Cin_ptr.dtype.element_ty
    dot_dtype = q_ptr.dtype.element_ty
    rQ = tl.load(rQ_ptr + row0 + j, mask=jm, other=0.0)
    dq = tl.zeros((BQ, BK), dtype=acc_dtype)
    for v0 in range(0, DV, BV):
        dv = v0 + tl.arange(0, BV)
        dht = tl.load(dh_ptr + (row0 + j)[:, None] * DV + dv[None, :], mask=jm[:, None] & (dv[None, :] < DV), other=0.0)
        Ct = tl.load(Cin_ptr + bc * DK * DV + dk[:, None] * DV + dv[None, :], mask=(dk[:, None] < DK) & (dv[None, :] < DV), other=0.0)
        dq += _dot((dht.to(acc_dtype) * rQ[:, None]).to(dot_dtype), tl.trans(Ct.to(dot_dtype)), PRECISION)
    dden = tl.load(dden_ptr + row0 + j, mask=jm, other=0.0)
    nt = tl.load(nin_ptr + bc * DK + dk, mask=dk < DK, other=0.0)
    carry = tl.load(carry_ptr + row0 + j, mask=jm, other=0.0)
    dq = (dq + dden[:, None] * nt[None, :]) * carry[:, None]
    for t0 in range(0, pq * BQ + BQ, BT):
        t = t0 + tl.arange(0, BT)
        dP = _dP(dh_ptr, rQ_ptr, dden_ptr, v_ptr, row0, j, t, L, DV, BQ, BT, BV, acc_dtype, PRECISION)
        ds = dP * _intra_weights(u_ptr, M_ptr, row0, j, t, L, tl.num_programs(0) * L)
        kt = tl.load(k_ptr + (row0 + t)[:, None] * DK + dk[None, :], mask=(t[:, None] < L) & (dk[None, :] < DK), other=0.0)
        dq += _dot(ds.to(dot_dtype), kt, PRECISION)
    tl.store(dq_ptr + (row0 + j)[:, None] * DK + dk[None, :], dq, mask=jm[:, None] & (dk[None, :] < DK))


@triton.jit
def bwd_dk_kernel(q_ptr, k_ptr, v_ptr, dh_ptr, rQ_ptr, dden_ptr, u_ptr, M_ptr, inw_ptr, dCend_ptr, dnend_ptr,
                  dk_ptr, nc, L, DK, DV,
                  BQ: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """dk_l = Σ_{j>=l} w_jl dP_jl q_j + inw_l (dC̄_end v_l + dn̄_end) for BT key steps of one chunk.

    Grid: (BH·nc, key tiles, DK tiles).
    """
    bc, pt, pk = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    c = bc % nc
    row0 = (bc // nc) * nc * L + c * L
    t = pt * BT + tl.arange(0, BT)
    tm = t < L
    dk = pk * BK + tl.arange(0, BK)
    acc_dtype = dCend_ptr.dtype.element_ty
    dot_dtype = q_ptr.dtype.element_ty
    acc = tl.zeros((BT, BK), dtype=acc_dtype)
    for v0 in range(0, DV, BV):  # state part: v_l dC̄_endᵀ
        dv = v0 + tl.arange(0, BV)
        vt = tl.load(v_ptr + (row0 + t)[:, None] * DV + dv[None, :], mask=tm[:, None] & (dv[None, :] < DV), other=0.0)
        dCt = tl.load(dCend_ptr + bc * DK * DV + dk[:, None] * DV + dv[None, :], mask=(dk[:, None] < DK) & (dv[None, :] < DV), other=0.0)
        acc += _dot(vt, tl.trans(dCt.to(dot_dtype)), PRECISION)
    dnt = tl.load(dnend_ptr + bc * DK + dk, mask=dk < DK, other=0.0)
    inw = tl.load(inw_ptr + row0 + t, mask=tm, other=0.0)
    acc = (acc + dnt[None, :]) * inw[:, None]
    for j0 in range(pt * BT // BQ * BQ, L, BQ):
        j = j0 + tl.arange(0, BQ)
        dP = _dP(dh_ptr, rQ_ptr, dden_ptr, v_ptr, row0, j, t, L, DV, BQ, BT, BV, acc_dtype, PRECISION)
        ds = dP * _intra_weights(u_ptr, M_ptr, row0, j, t, L, tl.num_programs(0) * L)  # (BQ, BT)
        qt = tl.load(q_ptr + (row0 + j)[:, None] * DK + dk[None, :], mask=(j[:, None] < L) & (dk[None, :] < DK), other=0.0)
        acc += _dot(tl.trans(ds.to(dot_dtype)), qt, PRECISION)
    tl.store(dk_ptr + (row0 + t)[:, None] * DK + dk[None, :], acc, mask=tm[:, None] & (dk[None, :] < DK))


@triton.jit
def bwd_dv_kernel(q_ptr, k_ptr, dh_ptr, rQ_ptr, u_ptr, M_ptr, inw_ptr, dCend_ptr,
                  dv_ptr, nc, L, DK, DV,
                  BQ: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """dv_l = Σ_{j>=l} w_jl (q_j·k_l) dnum_j + inw_l dC̄_endᵀ k_l for BT key steps of one chunk.

    Grid: (BH·nc, key tiles, DV tiles).
    """
    bc, pt, pv = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    c = bc % nc
    row0 = (bc // nc) * nc * L + c * L
    t = pt * BT + tl.arange(0, BT)
    tm = t < L
    dv = pv * BV + tl.arange(0, BV)
    acc_dtype = dCend_ptr.dtype.element_ty
    dot_dtype = q_ptr.dtype.element_ty
    acc = tl.zeros((BT, BV), dtype=acc_dtype)
    for k0 in range(0, DK, BK):  # state part: k_l dC̄_end
        dk = k0 + tl.arange(0, BK)
        kt = tl.load(k_ptr + (row0 + t)[:, None] * DK + dk[None, :], mask=tm[:, None] & (dk[None, :] < DK), other=0.0)
        dCt = tl.load(dCend_ptr + bc * DK * DV + dk[:, None] * DV + dv[None, :], mask=(dk[:, None] < DK) & (dv[None, :] < DV), other=0.0)
        acc += _dot(kt, dCt.to(dot_dtype), PRECISION)
    inw = tl.load(inw_ptr + row0 + t, mask=tm, other=0.0)
    acc = acc * inw[:, None]
    for j0 in range(pt * BT // BQ * BQ, L, BQ):
        j = j0 + tl.arange(0, BQ)
        jm = j < L
        s = tl.zeros((BQ, BT), dtype=acc_dtype)
        for k0 in range(0, DK, BK):
            dk = k0 + tl.arange(0, BK)
            qt = tl.load(q_ptr + (row0 + j)[:, None] * DK + dk[None, :], mask=jm[:, None] & (dk[None, :] < DK), other=0.0)
            kt = tl.load(k_ptr + (row0 + t)[:, None] * DK + dk[None, :], mask=tm[:, None] & (dk[None, :] < DK), other=0.0)
            s += _dot(qt, tl.trans(kt), PRECISION)
        p = s * _intra_weights(u_ptr, M_ptr, row0, j, t, L, tl.num_programs(0) * L)  # (BQ, BT)
        rQ = tl.load(rQ_ptr + row0 + j, mask=jm, other=0.0)
        dht = tl.load(dh_ptr + (row0 + j)[:, None] * DV + dv[None, :], mask=jm[:, None] & (dv[None, :] < DV), other=0.0)
        dnum = (dht.to(acc_dtype) * rQ[:, None]).to(dot_dtype)
        acc += _dot(tl.trans(p.to(dot_dtype)), dnum, PRECISION)
    tl.store(dv_ptr + (row0 + t)[:, None] * DV + dv[None, :], acc, mask=tm[:, None] & (dv[None, :] < DV))
