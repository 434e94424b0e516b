"""The sLSTM time loops as Triton kernels (xLSTM paper Sec. 2.2, eqs. 8-17; MATH.md "sLSTM").

Imported only by triton_recurrent.py, and only when a kernel is first needed: the package works
without Triton. One program runs one head for a block of BLOCK_B batch rows through all S steps;
its recurrent blocks R[h] (4 gates x DH x DH) are loaded once before the time loop when they fit
on chip (RESIDENT) and reloaded every step (from L2) otherwise. All gate math and states are in
the compute dtype CDT: float64 for float64 inputs, float32 otherwise (bf16/fp16 inputs are read as
they are and upcast on load). Every tl.dot asks for IEEE precision: no TF32 rounding.

Layouts (all contiguous): wx and the stored raw gates (B, S, NH, 4, DH); h and its gradient
(B, S, NH, DH); the stored [c̄, n̄, m] after every step (B, S, NH, 3, DH); states (4, B, NH, DH)
as [h, c̄, n̄, m]; r (NH, 4, DH, DH); b (NH, 4, DH). Rows of a block past B and units past DH are
masked: loads give finite fill values (m = 0, so n̄ > 0 there) and h is zeroed there before it
meets R, so the padding never reaches a real unit.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _log_sigmoid(x):
    # logσ(x) = min(x, 0) - log(1 + e^{-|x|}); the log1p is written out (plain tl has none):
    # log(1 + u)·u / ((1 + u) - 1) is accurate to rounding for small u, and u itself where 1 + u == 1.
    u = tl.exp(-tl.abs(x))
    one_u = 1.0 + u
    exact = one_u == 1.0
    log1p = tl.where(exact, u, tl.log(one_u) * u / tl.where(exact, 1.0, one_u - 1.0))
    return tl.minimum(x, 0.0) - log1p


@triton.jit
def _tanh(x):
    # tanh(x) = sign(x)·(1 - e^{-2|x|}) / (1 + e^{-2|x|}): no overflow for any x.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _sigmoid(x):
    # σ(x) from e^{-|x|} <= 1: no overflow for any x.
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _r_block(r_ptr, hd, g, DH, TRANSPOSE: tl.constexpr, BLOCK_DH: tl.constexpr):
    """R[hd, g] (or its transpose) as a (BLOCK_DH, BLOCK_DH) tile, padded with zeros, in r's dtype."""
    rows = tl.arange(0, BLOCK_DH)
    cols = tl.arange(0, BLOCK_DH)
    mask = (rows[:, None] < DH) & (cols[None, :] < DH)
    if TRANSPOSE:  # tile[e, d] = R[d, e]
        off = cols[None, :] * DH + rows[:, None]
    else:  # tile[d, e] = R[d, e]
        off = rows[:, None] * DH + cols[None, :]
    return tl.load(r_ptr + (hd.to(tl.int64) * 4 + g) * DH * DH + off, mask=mask, other=0.0)


@triton.jit
def _times_r(x, r_block):
    """x @ r_block in x's dtype, IEEE precision (no TF32)."""
    return tl.dot(x, r_block.to(x.dtype), input_precision="ieee")


@triton.jit
def _program_rows(lengths_ptr, B, NH, DH, BLOCK_B: tl.constexpr, BLOCK_DH: tl.constexpr):
    """This program's head, its rows (int64), units, (BB, BD) mask, each row's last step, and the
    (BB, BD) offsets of its units in a (B, NH, DH) state plane."""
    hd = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BB,)
    cols = tl.arange(0, BLOCK_DH)  # (BD,)
    mask = (rows[:, None] < B) & (cols[None, :] < DH)  # (BB, BD)
    last = tl.load(lengths_ptr + rows, mask=rows < B, other=0) - 1  # (BB,): the step of the final state
    rows64 = rows.to(tl.int64)
    st = (rows64[:, None] * NH + hd) * DH + cols[None, :]  # (BB, BD)
    return hd, rows64, cols, mask, last, st


@triton.jit
def _load_state(ptr, st, plane, mask):
    """[h, c̄, n̄, m] of a (4, B, NH, DH) state at offsets st; masked units read 0."""
    h = tl.load(ptr + st, mask=mask, other=0.0)
    c = tl.load(ptr + plane + st, mask=mask, other=0.0)
    n = tl.load(ptr + 2 * plane + st, mask=mask, other=0.0)
    m = tl.load(ptr + 3 * plane + st, mask=mask, other=0.0)
    return h, c, n, m


@triton.jit
def _store_state(ptr, st, plane, mask, h, c, n, m):
    tl.store(ptr + st, h, mask=mask)
    tl.store(ptr + plane + st, c, mask=mask)
    tl.store(ptr + 2 * plane + st, n, mask=mask)
    tl.store(ptr + 3 * plane + st, m, mask=mask)


@triton.jit
def slstm_forward_kernel(
    wx_ptr, r_ptr, b_ptr, state0_ptr, lengths_ptr,  # inputs
    h_ptr, final_ptr, gates_ptr, cnm_ptr,  # outputs; gates and cnm only when STORE
    B, S, NH, DH,
    BLOCK_B: tl.constexpr, BLOCK_DH: tl.constexpr, STORE: tl.constexpr, RESIDENT: tl.constexpr,
):
    """Grid (NH, cdiv(B, BLOCK_B)). Writes h_t (B, S, NH, DH) for every step, the state after step
    lengths[b] - 1 of every row into final (4, B, NH, DH), and with STORE the raw gates and
    [c̄, n̄, m] of every step for the backward."""
    CDT: tl.constexpr = state0_ptr.dtype.element_ty
    hd, rows64, cols, mask, last, st = _program_rows(lengths_ptr, B, NH, DH, BLOCK_B, BLOCK_DH)
    plane = B * NH * DH
    h, c, n, m = _load_state(state0_ptr, st, plane, mask)

    b_off = hd * 4 * DH + cols
    b_i = tl.load(b_ptr + b_off, mask=cols < DH, other=0.0).to(CDT)[None, :]
    b_f = tl.load(b_ptr + b_off + DH, mask=cols < DH, other=0.0).to(CDT)[None, :]
    b_z = tl.load(b_ptr + b_off + 2 * DH, mask=cols < DH, other=0.0).to(CDT)[None, :]
    b_o = tl.load(b_ptr + b_off + 3 * DH, mask=cols < DH, other=0.0).to(CDT)[None, :]
    if RESIDENT:  # R[hd] stays on chip across all steps
        r_i = _r_block(r_ptr, hd, 0, DH, False, BLOCK_DH).to(CDT)
        r_f = _r_block(r_ptr, hd, 1, DH, False, BLOCK_DH).to(CDT)
        r_z = _r_block(r_ptr, hd, 2, DH, False, BLOCK_DH).to(CDT)
        r_o = _r_block(r_ptr, hd, 3, DH, False, BLOCK_DH).to(CDT)

    for t in range(0, S):
        g_off = ((rows64[:, None] * S + t) * NH + hd) * 4 * DH + cols[None, :]  # (BB, BD) in (B, S, NH, 4, DH)
        h = tl.where(mask, h, 0.0)
        # raw gates = wx_t + h_{t-1} R + b, each (BB, BD)
        i_raw = tl.load(wx_ptr + g_off, mask=mask, other=0.0).to(CDT) + b_i
        f_raw = tl.load(wx_ptr + g_off + DH, mask=mask, other=0.0).to(CDT) + b_f
        z_raw = tl.load(wx_ptr + g_off + 2 * DH, mask=mask, other=0.0).to(CDT) + b_z
        o_raw = tl.load(wx_ptr + g_off + 3 * DH, mask=mask, other=0.0).to(CDT) + b_o
        if RESIDENT:
            i_raw += _times_r(h, r_i)
            f_raw += _times_r(h, r_f)
            z_raw += _times_r(h, r_z)
            o_raw += _times_r(h, r_o)
        else:  # one gate's block at a time from memory (L2): on chip holds one block, not four
            i_raw += _times_r(h, _r_block(r_ptr, hd, 0, DH, False, BLOCK_DH))
            f_raw += _times_r(h, _r_block(r_ptr, hd, 1, DH, False, BLOCK_DH))
            z_raw += _times_r(h, _r_block(r_ptr, hd, 2, DH, False, BLOCK_DH))
            o_raw += _times_r(h, _r_block(r_ptr, hd, 3, DH, False, BLOCK_DH))

        a = _log_sigmoid(f_raw) + m
        m = tl.maximum(a, i_raw)
        i_s = tl.exp(i_raw - m)  # i' <= 1
        f_s = tl.exp(a - m)  # f' <= 1
        c = f_s * c + i_s * _tanh(z_raw)
        n = f_s * n + i_s
        h = _sigmoid(o_raw) * c / n

        h_off = ((rows64[:, None] * S + t) * NH + hd) * DH + cols[None, :]  # (BB, BD) in (B, S, NH, DH)
        tl.store(h_ptr + h_off, h, mask=mask)
        if STORE:
            tl.store(gates_ptr + g_off, i_raw, mask=mask)
            tl.store(gates_ptr + g_off + DH, f_raw, mask=mask)
            tl.store(gates_ptr + g_off + 2 * DH, z_raw, mask=mask)
            tl.store(gates_ptr + g_off + 3 * DH, o_raw, mask=mask)
            s_off = ((rows64[:, None] * S + t) * NH + hd) * 3 * DH + cols[None, :]  # in (B, S, NH, 3, DH)
            tl.store(cnm_ptr + s_off, c, mask=mask)
            tl.store(cnm_ptr + s_off + DH, n, mask=mask)
            tl.store(cnm_ptr + s_off + 2 * DH, m, mask=mask)
        done = mask & (last == t)[:, None]  # rows whose sequence ends at this step
        _store_state(final_ptr, st, plane, done, h, c, n, m)


@triton.jit
def slstm_backward_kernel(
    r_ptr, state0_ptr, lengths_ptr, gates_ptr, cnm_ptr, grad_h_ptr, grad_final_ptr,  # inputs
    draw_ptr, grad_state0_ptr,  # outputs
    B, S, NH, DH,
    BLOCK_B: tl.constexpr, BLOCK_DH: tl.constexpr, RESIDENT: tl.constexpr,
):
    """Grid (NH, cdiv(B, BLOCK_B)). Reverse-time loop of the exact gradient of the forward above,
    stabiliser included. Carries [dh, dc̄, dn̄, dm] of the state after step t; at step t adds the
    output gradient grad_h[t] and, at t = lengths[b] - 1, the gradient on the final state. Writes
    the raw-gate gradients draw (B, S, NH, 4, DH) of every step and the gradient on the initial
    state into grad_state0 (4, B, NH, DH)."""
    CDT: tl.constexpr = state0_ptr.dtype.element_ty
    hd, rows64, cols, mask, last, st = _program_rows(lengths_ptr, B, NH, DH, BLOCK_B, BLOCK_DH)
    plane = B * NH * DH
    gh_final, gc_final, gn_final, gm_final = _load_state(grad_final_ptr, st, plane, mask)
    dh = tl.zeros((BLOCK_B, BLOCK_DH), dtype=CDT)
    dc = tl.zeros((BLOCK_B, BLOCK_DH), dtype=CDT)
    dn = tl.zeros((BLOCK_B, BLOCK_DH), dtype=CDT)
    dm = tl.zeros((BLOCK_B, BLOCK_DH), dtype=CDT)
    if RESIDENT:  # Rᵀ[hd] stays on chip across all steps
        rt_i = _r_block(r_ptr, hd, 0, DH, True, BLOCK_DH).to(CDT)
        rt_f = _r_block(r_ptr, hd, 1, DH, True, BLOCK_DH).to(CDT)
        rt_z = _r_block(r_ptr, hd, 2, DH, True, BLOCK_DH).to(CDT)
        rt_o = _r_block(r_ptr, hd, 3, DH, True, BLOCK_DH).to(CDT)

    for k in range(0, S):
        t = S - 1 - k
        ends = (last == t)[:, None]
        dh += tl.where(ends, gh_final, 0.0)
        dc += tl.where(ends, gc_final, 0.0)
        dn += tl.where(ends, gn_final, 0.0)
        dm += tl.where(ends, gm_final, 0.0)
        h_off = ((rows64[:, None] * S + t) * NH + hd) * DH + cols[None, :]
        dh += tl.load(grad_h_ptr + h_off, mask=mask, other=0.0)

        g_off = ((rows64[:, None] * S + t) * NH + hd) * 4 * DH + cols[None, :]
        i_raw = tl.load(gates_ptr + g_off, mask=mask, other=0.0)
        f_raw = tl.load(gates_ptr + g_off + DH, mask=mask, other=0.0)
        z_raw = tl.load(gates_ptr + g_off + 2 * DH, mask=mask, other=0.0)
        o_raw = tl.load(gates_ptr + g_off + 3 * DH, mask=mask, other=0.0)
        s_off = ((rows64[:, None] * S + t) * NH + hd) * 3 * DH + cols[None, :]
        c = tl.load(cnm_ptr + s_off, mask=mask, other=0.0)
        n = tl.load(cnm_ptr + s_off + DH, mask=mask, other=1.0)
        m = tl.load(cnm_ptr + s_off + 2 * DH, mask=mask, other=0.0)
        # the state before step t: stored for t > 0, the initial state at t = 0
        stored = mask & ((last * 0 + t) > 0)[:, None]  # (BB, BD) tensor masks, t being a scalar
        first = mask & ((last * 0 + t) == 0)[:, None]
        p_off = s_off - 3 * NH * DH
        c_p = tl.load(cnm_ptr + p_off, mask=stored, other=0.0) + tl.load(state0_ptr + plane + st, mask=first, other=0.0)
        n_p = tl.load(cnm_ptr + p_off + DH, mask=stored, other=0.0) + tl.load(
            state0_ptr + 2 * plane + st, mask=first, other=0.0)
        m_p = tl.load(cnm_ptr + p_off + 2 * DH, mask=stored, other=0.0) + tl.load(
            state0_ptr + 3 * plane + st, mask=first, other=0.0)

        # the forward step again, from the stored raw gates
        a = _log_sigmoid(f_raw) + m_p
        i_s = tl.exp(i_raw - m)
        f_s = tl.exp(a - m)
        z = _tanh(z_raw)
        o = _sigmoid(o_raw)
        ratio = c / n
        # h = o·c̄/n̄
        d_o_raw = dh * ratio * o * (1.0 - o)
        dc += dh * o / n
        dn -= dh * o * ratio / n
        # c̄ = f'·c̄_p + i'·z,  n̄ = f'·n̄_p + i'
        d_f_s = dc * c_p + dn * n_p
        d_i_s = dc * z + dn
        d_z_raw = dc * i_s * (1.0 - z * z)
        # i' = exp(ĩ - m), f' = exp(a - m): the exponentials' gradients, and what they take from m
        d_i = d_i_s * i_s
        d_a = d_f_s * f_s
        dm = dm - d_i - d_a
        # m = max(a, ĩ): the gradient goes to the larger one, split in half on a tie (as torch.maximum)
        to_a = tl.where(a > i_raw, 1.0, tl.where(a == i_raw, 0.5, 0.0))
        d_a += dm * to_a
        d_i += dm * (1.0 - to_a)
        # a = logσ(f̃) + m_p
        d_f_raw = d_a * _sigmoid(-f_raw)

        d_i = tl.where(mask, d_i, 0.0)
        d_f_raw = tl.where(mask, d_f_raw, 0.0)
        d_z_raw = tl.where(mask, d_z_raw, 0.0)
        d_o_raw = tl.where(mask, d_o_raw, 0.0)
        tl.store(draw_ptr + g_off, d_i, mask=mask)
        tl.store(draw_ptr + g_off + DH, d_f_raw, mask=mask)
        tl.store(draw_ptr + g_off + 2 * DH, d_z_raw, mask=mask)
        tl.store(draw_ptr + g_off + 3 * DH, d_o_raw, mask=mask)

        # the state before step t: dh_{t-1} = Σ_g draw_g R_gᵀ (its output gradient is added next step)
        if RESIDENT:
            dh = _times_r(d_i, rt_i) + _times_r(d_f_raw, rt_f) + _times_r(d_z_raw, rt_z) + _times_r(d_o_raw, rt_o)
        else:
            dh = _times_r(d_i, _r_block(r_ptr, hd, 0, DH, True, BLOCK_DH))
            dh += _times_r(d_f_raw, _r_block(r_ptr, hd, 1, DH, True, BLOCK_DH))
            dh += _times_r(d_z_raw, _r_block(r_ptr, hd, 2, DH, True, BLOCK_DH))
            dh += _times_r(d_o_raw, _r_block(r_ptr, hd, 3, DH, True, BLOCK_DH))
        dc = dc * f_s
        dn = dn * f_s
        dm = tl.where(mask, d_a, 0.0)

    _store_state(grad_state0_ptr, st, plane, mask, dh, dc, dn, dm)
