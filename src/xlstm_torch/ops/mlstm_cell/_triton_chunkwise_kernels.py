"""Triton kernels of the chunkwise mLSTM (imported only when ``backend="triton"`` runs).

Notation and algorithm: triton_chunkwise.py. Every kernel works on one (batch, head) row ``bh`` of
tensors laid out (BH, nc·L, D) for tokens, (BH, nc·L) for per-step gate numbers, (BH, nc, DK, DV)
for chunk states. A chunk of L steps is cut into tiles of BQ (queries) or BT (keys/values) steps,
so the chunk size is independent of the on-chip tile (two-level tiling); the head dims are cut
into tiles of BK (DK) and BV (DV). Matrix operands are in the input dtype (bf16/fp16; fp32 and
fp64 inputs use exact fp32/fp64 products), every accumulator is fp32 (fp64 for fp64). A chunk state
read only as a product's operand (C̄ for fwd_out, dC̄ for dk and dv) may be stored in that operand
dtype: the kernels then take their accumulator dtype from the fp32 vector state beside it (n̄, dn̄).
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
def _rows(ptr, rows, row_mask, cols, width):
    """Tile (rows, cols) of a row-major (N, width) tensor; zeros where a row is masked or a column past width."""
    return tl.load(ptr + rows[:, None] * width + cols[None, :], mask=row_mask[:, None] & (cols[None, :] < width), other=0.0)


@triton.jit
def _store_rows(ptr, rows, row_mask, cols, width, value):
    """Write ``value`` into tile (rows, cols) of a row-major (N, width) tensor, in the tensor's dtype."""
    tl.store(ptr + rows[:, None] * width + cols[None, :], value.to(ptr.dtype.element_ty),
             mask=row_mask[:, None] & (cols[None, :] < width))


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
    C = _rows(C_ptr + index * DK * DV, dk, dk < DK, dv, DV)
    n = tl.load(n_ptr + index * DK + dk, mask=dk < DK, other=0.0)
    return C, n


@triton.jit
def _store_state(C_ptr, n_ptr, index, C, n, dk, dv, DK, DV, write_n):
    _store_rows(C_ptr + index * DK * DV, dk, dk < DK, dv, DV, C)
    if write_n:  # one DV tile writes the vector
        tl.store(n_ptr + index * DK + dk, n, mask=dk < DK)


@triton.jit
def _kv_tile(k_ptr, v_ptr, inw_ptr, row_base, s, n_sub, total, L, dk, dv, DK, DV, BT: tl.constexpr):
    """Sub-tile s (chunk s // n_sub, steps from (s % n_sub)·BT) of k, v and inw; zeros past the end."""
    t = (s % n_sub) * BT + tl.arange(0, BT)
    s_t = tl.zeros_like(t) + s  # s as a tensor (a plain int s would make a mask of the wrong type)
    valid = (t < L) & (s_t < total) & (s_t >= 0)
    row = row_base + (s // n_sub) * L + t
    w = tl.load(inw_ptr + row, mask=valid, other=0.0)
    kt = _rows(k_ptr, row, valid, dk, DK)
    vt = _rows(v_ptr, row, valid, dv, DV)
    return kt, vt, w


@triton.jit
def fwd_states_kernel(k_ptr, v_ptr, inw_ptr, decay_ptr, first_ptr, last_ptr,
                      C0_ptr, n0_ptr, Cin_ptr, nin_ptr, Clast_ptr, nlast_ptr,
                      nc, L, D_docs, DK, DV,
                      BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, PRECISION: tl.constexpr):
    """The scan over chunks: C̄ entering every chunk and leaving every document's last chunk.

    C̄_{k+1} = decay_k C̄_k + Σ_l inw_l k_l v_lᵀ (inw holds the 1/sqrt(DK)); n̄ likewise with 1 for v (DV tile 0).
    A chunk that starts document d begins from its initial state C0[d] instead of the carry.
    One flat loop over the sub-tiles of all chunks, each one's loads issued before the previous
    one's product (the loop is sequential in C̄, the loads are not). Grid: (BH, DK tiles, DV tiles).
    """
    bh, pk, pv = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    dk = pk * BK + tl.arange(0, BK)
    dv = pv * BV + tl.arange(0, BV)
    C = tl.zeros((BK, BV), dtype=nin_ptr.dtype.element_ty)  # fp32 (fp64); Cin may be stored narrower
    n = tl.zeros((BK,), dtype=nin_ptr.dtype.element_ty)
    n_sub = tl.cdiv(L, BT)
    total = nc * n_sub
    row_base = bh * nc * L
    kt, vt, w = _kv_tile(k_ptr, v_ptr, inw_ptr, row_base, 0, n_sub, total, L, dk, dv, DK, DV, BT)
    for s in range(total):
        c = s // n_sub
        t0 = (s % n_sub) * BT
        if t0 == 0:  # entering chunk c
            d_first = tl.load(first_ptr + c)
            if d_first >= 0:
                C, n = _load_state(C0_ptr, n0_ptr, bh * D_docs + d_first, dk, dv, DK, DV)
            _store_state(Cin_ptr, nin_ptr, bh * nc + c, C, n, dk, dv, DK, DV, pv == 0)
            decay = tl.load(decay_ptr + bh * nc + c)
            C = C * decay
            n = n * decay
        k_next, v_next, w_next = _kv_tile(k_ptr, v_ptr, inw_ptr, row_base, s + 1, n_sub, total, L, dk, dv, DK, DV, BT)
        kw = kt.to(C.dtype) * w[:, None]  # (BT, BK)
        C += _dot(tl.trans(kw.to(kt.dtype)), vt, PRECISION)
        n += tl.sum(kw, axis=0)
        if t0 + BT >= L:  # leaving chunk c
            d_last = tl.load(last_ptr + c)
            if d_last >= 0:
                _store_state(Clast_ptr, nlast_ptr, bh * D_docs + d_last, C, n, dk, dv, DK, DV, pv == 0)
        kt, vt, w = k_next, v_next, w_next


@triton.jit
def fwd_out_kernel(q_ptr, k_ptr, v_ptr, u_ptr, M_ptr, carry_ptr, floor_ptr, Cin_ptr, nin_ptr,
                   h_ptr, den_ptr, eps_ptr, nc, L, DK, DV,
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
    acc_dtype = nin_ptr.dtype.element_ty
    num = tl.zeros((BQ, BV), dtype=acc_dtype)
    den = tl.zeros((BQ,), dtype=acc_dtype)
    for k0 in range(0, DK, BK):
        dk = k0 + tl.arange(0, BK)
        qt = _rows(q_ptr, row0 + j, jm, dk, DK)
        Ct = _rows(Cin_ptr + bc * DK * DV, dk, dk < DK, dv, DV)
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
            qt = _rows(q_ptr, row0 + j, jm, dk, DK)
            kt = _rows(k_ptr, row0 + t, t < L, dk, DK)
            s += _dot(qt, tl.trans(kt), PRECISION)
        p = s * _intra_weights(u_ptr, M_ptr, row0, j, t, L, tl.num_programs(0) * L)  # (BQ, BT)
        den += tl.sum(p, axis=1)
        vt = _rows(v_ptr, row0 + t, t < L, dv, DV)
        num += _dot(p.to(vt.dtype), vt, PRECISION)
    floor = tl.load(floor_ptr + row0 + j, mask=jm, other=1.0)
    Q = tl.maximum(tl.abs(den), floor) + tl.load(eps_ptr)  # eps in the state dtype (a float arg would be fp32)
    h = num / Q[:, None]
    _store_rows(h_ptr, row0 + j, jm, dv, DV, h)
    if pv == 0:
        tl.store(den_ptr + row0 + j, den, mask=jm)


@triton.jit
def _qdh_tile(q_ptr, dh_ptr, rQ_ptr, dden_ptr, carry_ptr, row_base, s, n_sub, L, dk, dv, DK, DV, BT: tl.constexpr):
    """Sub-tile s of q, dh and the per-step carry, 1/Q, dden; zeros before the start."""
    t = (s % n_sub) * BT + tl.arange(0, BT)
    valid = (t < L) & ((tl.zeros_like(t) + s) >= 0)
    row = row_base + (s // n_sub) * L + t
    carry = tl.load(carry_ptr + row, mask=valid, other=0.0)
    rQ = tl.load(rQ_ptr + row, mask=valid, other=0.0)
    dden = tl.load(dden_ptr + row, mask=valid, other=0.0)
    qt = _rows(q_ptr, row, valid, dk, DK)
    dht = _rows(dh_ptr, row, valid, dv, DV)
    return qt, dht, carry, rQ, dden


@triton.jit
def bwd_states_kernel(q_ptr, dh_ptr, rQ_ptr, dden_ptr, carry_ptr, decay_ptr, first_ptr, last_ptr,
                      dClast_ptr, dnlast_ptr, dCend_ptr, dnend_ptr, dC0_ptr, dn0_ptr,
                      Cin_ptr, nin_ptr, Clast_ptr, nlast_ptr, dg_ptr,
                      nc, L, D_docs, DK, DV,
                      BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, PRECISION: tl.constexpr,
                      GATE_DOT: tl.constexpr):
    """The reverse scan: gradient on the state leaving every chunk (and on each document's C0).

    dC̄_end_{k-1} = Σ_j (carry_j q_j) dnum_jᵀ over chunk k + decay_k dC̄_end_k, with dnum_j = dh_j / Q_j
    (dn̄ likewise with dden_j). With GATE_DOT it forms on the way this tile's part of dg_k =
    <dC̄_end_k, C̄_end_k> (+ the n̄ part), the gradient on chunk k's total log forget gate: dg (tiles, BH, nc),
    reading the fp32 states C̄; without, the caller gets the gate gradients from q·dq and k·dk instead.
    One flat loop over the sub-tiles of all chunks, last first, loads one sub-tile ahead.
    Grid: (BH, DK tiles, DV tiles).
    """
    bh, pk, pv = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    dk = pk * BK + tl.arange(0, BK)
    dv = pv * BV + tl.arange(0, BV)
    acc_dtype = dnend_ptr.dtype.element_ty  # fp32 (fp64); dCend may be stored narrower
    dC = tl.zeros((BK, BV), dtype=acc_dtype)
    dn = tl.zeros((BK,), dtype=acc_dtype)
    n_sub = tl.cdiv(L, BT)
    total = nc * n_sub
    row_base = bh * nc * L
    qt, dht, carry, rQ, dden = _qdh_tile(q_ptr, dh_ptr, rQ_ptr, dden_ptr, carry_ptr, row_base, total - 1, n_sub, L,
                                         dk, dv, DK, DV, BT)
    for ss in range(total):
        s = total - 1 - ss
        c = s // n_sub
        t0 = (s % n_sub) * BT
        if t0 + BT >= L:  # (backwards) entering chunk c from its end
            state = bh * nc + c
            d_last = tl.load(last_ptr + c)
            if d_last >= 0:
                dC, dn = _load_state(dClast_ptr, dnlast_ptr, bh * D_docs + d_last, dk, dv, DK, DV)
            _store_state(dCend_ptr, dnend_ptr, state, dC, dn, dk, dv, DK, DV, pv == 0)
            if GATE_DOT:
                if d_last >= 0:  # the state leaving chunk c: the document's final state, or the next chunk's input
                    C_end, n_end = _load_state(Clast_ptr, nlast_ptr, bh * D_docs + d_last, dk, dv, DK, DV)
                else:
                    C_end, n_end = _load_state(Cin_ptr, nin_ptr, state + 1, dk, dv, DK, DV)
                dg = tl.sum(tl.sum(dC * C_end.to(dC.dtype), axis=1), axis=0)
                if pv == 0:
                    dg += tl.sum(dn * n_end, axis=0)
                tl.store(dg_ptr + ((pk * tl.num_programs(2) + pv) * tl.num_programs(0) + bh) * nc + c, dg)
            decay = tl.load(decay_ptr + state)
            dC = dC * decay
            dn = dn * decay
        nxt = _qdh_tile(q_ptr, dh_ptr, rQ_ptr, dden_ptr, carry_ptr, row_base, s - 1, n_sub, L, dk, dv, DK, DV, BT)
        qc = qt.to(acc_dtype) * carry[:, None]  # (BT, BK)
        dnum = dht.to(acc_dtype) * rQ[:, None]  # (BT, BV)
        dC += _dot(tl.trans(qc.to(qt.dtype)), dnum.to(qt.dtype), PRECISION)
        dn += tl.sum(qc * dden[:, None], axis=0)
        if t0 == 0:  # leaving chunk c at its start
            d_first = tl.load(first_ptr + c)
            if d_first >= 0:
                _store_state(dC0_ptr, dn0_ptr, bh * D_docs + d_first, dC, dn, dk, dv, DK, DV, pv == 0)
        qt, dht, carry, rQ, dden = nxt


@triton.jit
def bwd_prep_kernel(dh_ptr, h_ptr, den_ptr, floor_ptr, eps_ptr, rQ_ptr, dden_ptr, dl_ptr, dhh_ptr, N, DV,
                    BR: tl.constexpr, BV: tl.constexpr):
    """Per step: dh·h (fp32, from the stored h), 1/Q, and the gradients on the normaliser and on ℓ_j.

    Q = max(|den|, floor) + eps; dden = -(dh·h)/Q sign(den) [|den| > floor]; dℓ = dh·h + dden den
    (num and den are both ∝ exp(ℓ)). Grid: (cdiv(N, BR),) over the N = BH·S_pad steps.
    """
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    rm = r < N
    dhh = tl.zeros((BR,), dtype=dden_ptr.dtype.element_ty)
    for v0 in range(0, DV, BV):
        dv = v0 + tl.arange(0, BV)
        dht = _rows(dh_ptr, r, rm, dv, DV)
        ht = _rows(h_ptr, r, rm, dv, DV)
        dhh += tl.sum(dht.to(dhh.dtype) * ht.to(dhh.dtype), axis=1)
    den = tl.load(den_ptr + r, mask=rm, other=1.0)
    floor = tl.load(floor_ptr + r, mask=rm, other=1.0)
    Q = tl.maximum(tl.abs(den), floor) + tl.load(eps_ptr)
    sign = tl.where(den > 0, 1.0, tl.where(den < 0, -1.0, 0.0))
    dden = tl.where(tl.abs(den) > floor, -dhh / Q * sign, 0.0)
    tl.store(rQ_ptr + r, 1.0 / Q, mask=rm)
    tl.store(dden_ptr + r, dden, mask=rm)
    tl.store(dl_ptr + r, dhh + dden * den, mask=rm)
    tl.store(dhh_ptr + r, dhh, mask=rm)


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
        dht = _rows(dh_ptr, row0 + j, jm, dv, DV)
        vt = _rows(v_ptr, row0 + t, t < L, dv, DV)
        dP += _dot(dht.to(vt.dtype), tl.trans(vt), PRECISION)
    rQ = tl.load(rQ_ptr + row0 + j, mask=jm, other=0.0)
    dden = tl.load(dden_ptr + row0 + j, mask=jm, other=0.0)
    return dP * rQ[:, None] + dden[:, None]


@triton.jit
def bwd_dq_kernel(q_ptr, k_ptr, v_ptr, dh_ptr, rQ_ptr, dden_ptr, u_ptr, M_ptr, carry_ptr, Cin_ptr, nin_ptr,
                  dq_ptr, dl_ptr, nc, L, DK, DV,
                  BQ: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  PRECISION: tl.constexpr, STORE_DL: tl.constexpr):
    """dq_j = carry_j (dnum_j C̄_inᵀ + dden_j n̄_in) + Σ_{l<=j} w_jl dP_jl k_l. Grid: (BH·nc, query tiles, DK tiles).

    With STORE_DL also this DK tile's part of dℓ_j = q_j·dq_j from the fp32 accumulator (every term of
    step j's numerator and normaliser carries exp(ℓ_j)): dl (DK tiles, BH·S_pad)."""
    bc, pq, pk = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    bh = bc // nc
    c = bc % nc
    row0 = bh * nc * L + c * L
    j = pq * BQ + tl.arange(0, BQ)
    dk = pk * BK + tl.arange(0, BK)
    jm = j < L
    acc_dtype = nin_ptr.dtype.element_ty
    dot_dtype = q_ptr.dtype.element_ty
    rQ = tl.load(rQ_ptr + row0 + j, mask=jm, other=0.0)
    dq = tl.zeros((BQ, BK), dtype=acc_dtype)
    for v0 in range(0, DV, BV):
        dv = v0 + tl.arange(0, BV)
        dht = _rows(dh_ptr, row0 + j, jm, dv, DV)
        Ct = _rows(Cin_ptr + bc * DK * DV, dk, dk < DK, dv, DV)
        dq += _dot((dht.to(acc_dtype) * rQ[:, None]).to(dot_dtype), tl.trans(Ct.to(dot_dtype)), PRECISION)
    dden = tl.load(dden_ptr + row0 + j, mask=jm, other=0.0)
    nt = tl.load(nin_ptr + bc * DK + dk, mask=dk < DK, other=0.0)
    carry = tl.load(carry_ptr + row0 + j, mask=jm, other=0.0)
    dq = (dq + dden[:, None] * nt[None, :]) * carry[:, None]
    for t0 in range(0, pq * BQ + BQ, BT):
        t = t0 + tl.arange(0, BT)
        dP = _dP(dh_ptr, rQ_ptr, dden_ptr, v_ptr, row0, j, t, L, DV, BQ, BT, BV, acc_dtype, PRECISION)
        ds = dP * _intra_weights(u_ptr, M_ptr, row0, j, t, L, tl.num_programs(0) * L)
        kt = _rows(k_ptr, row0 + t, t < L, dk, DK)
        dq += _dot(ds.to(dot_dtype), kt, PRECISION)
    _store_rows(dq_ptr, row0 + j, jm, dk, DK, dq)
    if STORE_DL:
        qt = _rows(q_ptr, row0 + j, jm, dk, DK)
        tl.store(dl_ptr + pk * tl.num_programs(0) * L + row0 + j, tl.sum(dq * qt.to(acc_dtype), axis=1), mask=jm)


@triton.jit
def bwd_dk_kernel(q_ptr, k_ptr, v_ptr, dh_ptr, rQ_ptr, dden_ptr, u_ptr, M_ptr, inw_ptr, dCend_ptr, dnend_ptr,
                  dk_ptr, du_ptr, nc, L, DK, DV,
                  BQ: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """dk_l = Σ_{j>=l} w_jl dP_jl q_j + inw_l (dC̄_end v_l + dn̄_end) for BT key steps of one chunk.

    Also this DK tile's part of du_l = dk_l·k_l (every term of k_l carries exp(u_l)): du (DK tiles, BH·S_pad).
    Grid: (BH·nc, key tiles, DK tiles).
    """
    bc, pt, pk = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    c = bc % nc
    row0 = (bc // nc) * nc * L + c * L
    t = pt * BT + tl.arange(0, BT)
    tm = t < L
    dk = pk * BK + tl.arange(0, BK)
    acc_dtype = dnend_ptr.dtype.element_ty
    dot_dtype = q_ptr.dtype.element_ty
    acc = tl.zeros((BT, BK), dtype=acc_dtype)
    for v0 in range(0, DV, BV):  # state part: v_l dC̄_endᵀ
        dv = v0 + tl.arange(0, BV)
        vt = _rows(v_ptr, row0 + t, tm, dv, DV)
        dCt = _rows(dCend_ptr + bc * DK * DV, dk, dk < DK, dv, DV)
        acc += _dot(vt, tl.trans(dCt.to(dot_dtype)), PRECISION)
    dnt = tl.load(dnend_ptr + bc * DK + dk, mask=dk < DK, other=0.0)
    inw = tl.load(inw_ptr + row0 + t, mask=tm, other=0.0)
    acc = (acc + dnt[None, :]) * inw[:, None]
    for j0 in range(pt * BT // BQ * BQ, L, BQ):
        j = j0 + tl.arange(0, BQ)
        dP = _dP(dh_ptr, rQ_ptr, dden_ptr, v_ptr, row0, j, t, L, DV, BQ, BT, BV, acc_dtype, PRECISION)
        ds = dP * _intra_weights(u_ptr, M_ptr, row0, j, t, L, tl.num_programs(0) * L)  # (BQ, BT)
        qt = _rows(q_ptr, row0 + j, j < L, dk, DK)
        acc += _dot(tl.trans(ds.to(dot_dtype)), qt, PRECISION)
    _store_rows(dk_ptr, row0 + t, tm, dk, DK, acc)
    kt = _rows(k_ptr, row0 + t, tm, dk, DK)
    tl.store(du_ptr + pk * tl.num_programs(0) * L + row0 + t, tl.sum(acc * kt.to(acc_dtype), axis=1), mask=tm)


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
    acc_dtype = inw_ptr.dtype.element_ty
    dot_dtype = q_ptr.dtype.element_ty
    acc = tl.zeros((BT, BV), dtype=acc_dtype)
    for k0 in range(0, DK, BK):  # state part: k_l dC̄_end
        dk = k0 + tl.arange(0, BK)
        kt = _rows(k_ptr, row0 + t, tm, dk, DK)
        dCt = _rows(dCend_ptr + bc * DK * DV, dk, dk < DK, dv, DV)
        acc += _dot(kt, dCt.to(dot_dtype), PRECISION)
    inw = tl.load(inw_ptr + row0 + t, mask=tm, other=0.0)
    acc = acc * inw[:, None]
    for j0 in range(pt * BT // BQ * BQ, L, BQ):
        j = j0 + tl.arange(0, BQ)
        jm = j < L
        s = tl.zeros((BQ, BT), dtype=acc_dtype)
        for k0 in range(0, DK, BK):
            dk = k0 + tl.arange(0, BK)
            qt = _rows(q_ptr, row0 + j, jm, dk, DK)
            kt = _rows(k_ptr, row0 + t, tm, dk, DK)
            s += _dot(qt, tl.trans(kt), PRECISION)
        p = s * _intra_weights(u_ptr, M_ptr, row0, j, t, L, tl.num_programs(0) * L)  # (BQ, BT)
        rQ = tl.load(rQ_ptr + row0 + j, mask=jm, other=0.0)
        dht = _rows(dh_ptr, row0 + j, jm, dv, DV)
        dnum = (dht.to(acc_dtype) * rQ[:, None]).to(dot_dtype)
        acc += _dot(tl.trans(p.to(dot_dtype)), dnum, PRECISION)
    _store_rows(dv_ptr, row0 + t, tm, dv, DV, acc)
