"""mLSTM chunkwise form: linear in S, matrix products inside chunks, a scan over chunk states.

MATH.md "Chunkwise form"; xLSTM paper App. A.3 and the TFLA paper (Beck et al. 2025) Sec. 3.
Split S into chunks of L. Inside chunk k let b_j be the local cumulative log forget gate,
g = b_L, u_l = ĩ_l - b_l. With the stabiliser m_j of step j write M_j = m_j - b_j; then

    intra weight of step l on step j (l <= j):  exp(b_j - b_l + ĩ_l - m_j) = exp(u_l - M_j)
    weight of the carried state on step j:      exp(b_j + m_{k-1} - m_j)   = exp(m_{k-1} - M_j)

The intra weight factorises: exp(u_l - c) * exp(c - M_j) with c = max_l u_l, so the causal block is
tril(q (k * exp(u - c))ᵀ) with rows scaled by exp(c - M_j): two matrix products and one mask, no
L x L exponentials. The row factor is at most exp(SAFE_EXPONENT) in every chunk whose gates do not
swing wildly; the few chunks that do take the unfactorised L x L path (``_intra_log_weights``).

Every gate and stabiliser quantity (O(S) numbers) is computed in float64: cumulative sums of log
forget gates lose precision in float32 on long sequences with saturated gates. Matrix work runs in
the state dtype (float32, or float64 for float64 inputs).

Backward (``ChunkwiseMLSTM.backward``) recomputes the chunk states with one scan instead of storing
them, and returns the exact gradient of the definition, including the small terms through the
stabiliser: m_j enters h through eps, and the returned state's m is an output in its own right.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .state import MLSTMState, normaliser_floor

SAFE_EXPONENT = 40.0  # exp(40) ~ 2e17: row factors stay far from overflow; lost terms are < e^-47


def _gate_stats(i64, f64, m0, L: int):
    """Stabilisers and log-weights of the chunkwise form, all float64.

    i64, f64: (BH, S_pad) gate pre-activations (padding: i = -inf, f = +inf, i.e. a no-op step)
    m0: (BH,) log-scale of the initial state (-inf when empty)
    Returns a dict of (BH, nc, L) and (BH, nc) tensors named as in the module docstring.
    """
    BH, S_pad = i64.shape
    nc = S_pad // L
    log_f = F.logsigmoid(f64).view(BH, nc, L)
    b = torch.cumsum(log_f, dim=-1)  # (BH, nc, L)
    g = b[..., -1]  # (BH, nc)
    u = i64.view(BH, nc, L) - b  # (BH, nc, L)
    u_cummax = torch.cummax(u, dim=-1).values  # (BH, nc, L)
    c = u_cummax[..., -1]  # (BH, nc)
    # m_k = g_k + max(m_{k-1}, c_k), solved in closed form over chunks: with G_k = g_1 + ... + g_k,
    # m_k - G_k = max(m0, max_{r<=k} (c_r - G_{r-1})).
    G = torch.cumsum(g, dim=-1)
    m_chunk = G + torch.maximum(m0[:, None], torch.cummax(c - (G - g), dim=-1).values)  # (BH, nc)
    m_prev = torch.cat([m0[:, None], m_chunk[:, :-1]], dim=1)  # (BH, nc) state entering chunk k
    M = torch.maximum(m_prev[..., None], u_cummax)  # (BH, nc, L)  M_j = m_j - b_j
    return dict(b=b, g=g, u=u, c=c, M=M, m_prev=m_prev, m_chunk=m_chunk, m_step=b + M)


def _intra_log_weights(q, k, v, u, M, DK: int):
    """Unfactorised causal block for chunks whose gates swing too far to factorise.

    q, k: (N, L, DK); v: (N, L, DV+1) with the ones column; u, M: (N, L) float64.
    Returns the intra-chunk numerator and denominator (N, L, DV+1), scaled by exp(-M_j).
    """
    L = q.shape[1]
    log_w = u[:, None, :] - M[:, :, None] - 0.5 * math.log(DK)  # (N, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    w = torch.exp(log_w.masked_fill(~causal, float("-inf"))).to(q.dtype)
    return ((q @ k.transpose(-1, -2)) * w) @ v


def _chunks(x: torch.Tensor, nc: int, L: int, *, ones_column: bool = False) -> torch.Tensor:
    """(BH, S, D) -> (BH, nc, L, D) zero-padded in time; with ``ones_column`` -> (BH, nc, L, D + 1).

    The column of ones turns the normaliser into one more value column: every product that makes
    the numerator then makes the denominator in the same matrix multiply (n̄ rides along with C̄).
    """
    BH, S, D = x.shape
    if not ones_column and S == nc * L:
        return x.reshape(BH, nc, L, D)
    out = x.new_empty(BH, nc * L, D + ones_column)
    out[:, :S, :D] = x
    out[:, S:, :D] = 0.0
    if ones_column:
        out[:, :, D] = 1.0
    return out.view(BH, nc, L, D + ones_column)


class ChunkwiseMLSTM(torch.autograd.Function):
    """The chunkwise form with a hand-written backward; states carry n̄ as column DV of C̄."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, chunk_size: int, eps: float):
        B, NH, S, DK = q.shape
        DV = v.shape[-1]
        BH, L = B * NH, chunk_size
        nc = -(-S // L)
        st = _gate_stats(*_padded_gates(i, f, BH, nc * L), m0.reshape(BH).double(), L)
        qc = _chunks(q.reshape(BH, S, DK), nc, L)
        kc = _chunks(k.reshape(BH, S, DK), nc, L)
        vc = _chunks(v.reshape(BH, S, DV), nc, L, ones_column=True)
        C0 = torch.cat([C0.reshape(BH, DK, DV), n0.reshape(BH, DK, 1)], dim=-1)  # (BH, DK, DV + 1)

        fac = _chunk_factors(st, q.dtype, DK)
        kw = kc * fac["w"][..., None]  # (BH, nc, L, DK)  k_l exp(u_l - c) / sqrt(DK)
        C_in, C_last = _scan_states(kw, vc, fac, C0)
        q_row = qc * fac["row"][..., None]
        scores = _flat(q_row @ kw.transpose(-1, -2)).tril_()  # (BH nc, L, L)
        if fac["unsafe"] is not None:
            scores[fac["unsafe"]] = 0.0
        num = torch.baddbmm(_flat(qc * fac["carry"][..., None]) @ _flat(C_in), scores, _flat(vc))  # (BH nc, L, DV+1)
        if fac["unsafe"] is not None:
            num[fac["unsafe"]] += _intra_unsafe(qc, kc, vc, st, fac["unsafe"])
        den = num[..., DV]  # (BH nc, L)
        Q = torch.maximum(den.abs(), normaliser_floor(st["m_step"], q.dtype).view_as(den)) + eps
        h_pad = num[..., :DV] / Q[..., None]  # (BH nc, L, DV)
        h = h_pad.view(BH, nc * L, DV)[:, :S].reshape(B, NH, S, DV)
        ctx.save_for_backward(q, k, v, i, f, C0, m0, h_pad, den.contiguous(), Q)
        ctx.chunk_size, ctx.eps = chunk_size, eps
        C_last, n_last = C_last.split([DV, 1], dim=-1)
        return h, C_last.reshape(B, NH, DK, DV), n_last.reshape(B, NH, DK), st["m_chunk"][:, -1].to(q.dtype).reshape(B, NH)

    @staticmethod
    def backward(ctx, dh, dC_last, dn_last, dm_last):
        q, k, v, i, f, C0, m0, h_pad, den, Q = ctx.saved_tensors
        L, eps = ctx.chunk_size, ctx.eps
        B, NH, S, DK = q.shape
        DV = v.shape[-1]
        BH, dtype = B * NH, q.dtype
        nc = -(-S // L)
        i64, f64 = _padded_gates(i, f, BH, nc * L)
        m0_64 = m0.reshape(BH).double()
        st = _gate_stats(i64, f64, m0_64, L)
        qc = _chunks(q.reshape(BH, S, DK), nc, L)
        kc = _chunks(k.reshape(BH, S, DK), nc, L)
        vc = _chunks(v.reshape(BH, S, DV), nc, L, ones_column=True)
        fac = _chunk_factors(st, dtype, DK)
        kw = kc * fac["w"][..., None]
        C_in, C_last = _scan_states(kw, vc, fac, C0)

        # h_j = num_j / Q_j with Q_j = max(|den_j|, exp(-m_j)) + eps; num_j, den_j ∝ exp(ℓ_j).
        dh = torch.zeros_like(h_pad) if dh is None else _chunks(dh.reshape(BH, S, DV), nc, L).reshape_as(h_pad)
        dh_dot_h = (dh * h_pad).sum(-1)  # (BH nc, L)
        floor = normaliser_floor(st["m_step"], dtype).view_as(den)
        dden = -dh_dot_h / Q * torch.sign(den) * (den.abs() > floor).to(dtype)
        dnum = dh.new_empty(BH * nc, L, DV + 1)  # (BH nc, L, DV+1): numerator and normaliser columns
        torch.div(dh, Q[..., None], out=dnum[..., :DV])
        dnum[..., DV] = dden
        dl = dh_dot_h + dden * den  # dℓ_j

        # Carried state: num += (q exp(m_{k-1} - M_j)) C̄_in.
        dnum_carry = dnum * fac["carry"].view(-1, L, 1)
        dq = dnum_carry @ _flat(C_in).transpose(-1, -2)  # (BH nc, L, DK)
        into_state = _flat(qc).transpose(-1, -2) @ dnum_carry  # (BH nc, DK, DV+1)
        dC_last = torch.cat([
            torch.zeros(BH, DK, DV, dtype=dtype, device=q.device) if dC_last is None else dC_last.reshape(BH, DK, DV),
            torch.zeros(BH, DK, 1, dtype=dtype, device=q.device) if dn_last is None else dn_last.reshape(BH, DK, 1),
        ], dim=-1)
        dC_end, dC_inflow, dC0 = _scan_state_grads(into_state.view(BH, nc, DK, DV + 1), dC_last, fac)
        # dg_k = <dC̄_end_k, C̄_end_k>: both parts of the state leaving chunk k are ∝ exp(g_k).
        dg = torch.empty(BH, nc, dtype=dtype, device=q.device)
        dg[:, :-1] = _dot(dC_end[:, :-1], C_in[:, 1:])
        dg[:, -1] = _dot(dC_end[:, -1], C_last)

        # Intra-chunk part: num += tril((q exp(c - M_j)) kwᵀ) v.
        dnum_row = dnum * fac["row"].view(-1, L, 1)
        dscores = (dnum_row @ _flat(vc).transpose(-1, -2)).tril_()  # (BH nc, L, L)
        scores = (_flat(qc) @ _flat(kw).transpose(-1, -2)).tril_()
        if fac["unsafe"] is not None:
            dscores[fac["unsafe"]] = 0.0
            scores[fac["unsafe"]] = 0.0
        dq = torch.baddbmm(dq, dscores, _flat(kw))
        # The chunk's own inflow to the state it leaves: inflow_k kwᵀ v.
        dC_inflow = _flat(dC_inflow)  # (BH nc, DK, DV+1) gradient on the chunk's unweighted update kwᵀ v
        dkw = torch.baddbmm(dscores.transpose(-1, -2) @ _flat(qc), _flat(vc), dC_inflow.transpose(-1, -2))
        dv = torch.baddbmm(scores.transpose(-1, -2) @ dnum_row, _flat(kw), dC_inflow)[..., :DV]
        dk = dkw * fac["w"].view(-1, L, 1)
        du = (dkw * _flat(kw)).sum(-1)  # (BH nc, L)  kw_l ∝ exp(u_l)
        if fac["unsafe"] is not None:
            sel = fac["unsafe"]
            with torch.enable_grad():
                leaves = [_flat(x)[sel].detach().requires_grad_(True) for x in (qc, kc, vc, st["u"])]
                num_u = _intra_log_weights(*leaves, st["M"].reshape(-1, L)[sel], DK)
                gq, gk, gv, gu = torch.autograd.grad(num_u, leaves, dnum[sel])
            dq[sel] += gq
            dk[sel] += gk
            dv[sel] += gv[..., :DV]
            du[sel] += gu.to(dtype)

        # Gate gradients in float64: ℓ_j = b_j - m_j, u_l = ĩ_l - b_l, g = b_L, b = cumsum(logσ(f̃)).
        db = (dl - du).double().view(BH, nc, L)
        db[..., -1] += dg.double()
        dlog_f = torch.flip(torch.cumsum(torch.flip(db, [-1]), -1), [-1]).reshape(BH, nc * L)
        di = du.double().reshape(BH, nc * L)
        df = dlog_f * torch.sigmoid(-f64)

        # Stabiliser path (module docstring): h_j depends on m_j through eps; the returned m is an
        # output and the returned C̄, n̄ carry exp(-m); dm0 also collects the initial state's scale.
        dm_step = (-eps * dh_dot_h / Q).double().view(BH, nc, L)
        dm_final = -_dot(dC_last, C_last)
        if dm_last is not None:
            dm_final = dm_final + dm_last.reshape(BH)
        dm0 = _dot(dC0, C0).double()
        if eps != 0.0 or bool((dm_final != 0).any()):
            gi, gf, gm0 = _stabiliser_grads(i64, f64, m0_64, S, L, dm_step, dm_final.double())
            di[:, :S] += gi
            df[:, :S] += gf
            dm0 = dm0 + gm0

        dC0, dn0 = dC0.split([DV, 1], dim=-1)
        return (
            dq.view(BH, nc * L, DK)[:, :S].reshape(B, NH, S, DK),
            dk.view(BH, nc * L, DK)[:, :S].reshape(B, NH, S, DK),
            dv.reshape(BH, nc * L, DV)[:, :S].reshape(B, NH, S, DV),
            di[:, :S].reshape(B, NH, S).to(dtype),
            df[:, :S].reshape(B, NH, S).to(dtype),
            dC0.reshape(B, NH, DK, DV),
            dn0.reshape(B, NH, DK),
            dm0.to(dtype).reshape(B, NH),
            None,
            None,
        )


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(BH, nc, ...) -> (BH nc, ...): batched matrix products run over all chunks at once."""
    return x.reshape(-1, *x.shape[2:])


def _padded_gates(i, f, BH: int, S_pad: int):
    """Gates in float64, padded with a no-op step (ĩ = -inf: nothing written; f̃ = +inf: nothing forgotten)."""
    S = i.shape[-1]
    i64 = torch.full((BH, S_pad), float("-inf"), dtype=torch.float64, device=i.device)
    f64 = torch.full((BH, S_pad), float("inf"), dtype=torch.float64, device=i.device)
    i64[:, :S] = i.reshape(BH, S)
    f64[:, :S] = f.reshape(BH, S)
    return i64, f64


def _stabiliser_grads(i64, f64, m0_64, S: int, L: int, dm_step, dm_final):
    """Backpropagate gradients on the stabilisers (per-step m and final m) to (ĩ, f̃, m0)."""
    with torch.enable_grad():
        i_leaf = i64[:, :S].detach().requires_grad_(True)
        f_leaf = f64[:, :S].detach().requires_grad_(True)
        m0_leaf = m0_64.detach().requires_grad_(True)
        i_all = torch.cat([i_leaf, i64[:, S:]], dim=1)
        f_all = torch.cat([f_leaf, f64[:, S:]], dim=1)
        st = _gate_stats(i_all, f_all, m0_leaf, L)
        return torch.autograd.grad((st["m_step"], st["m_chunk"][:, -1]), (i_leaf, f_leaf, m0_leaf), (dm_step, dm_final))


def _exp(x64, dtype):
    return torch.exp(x64).to(dtype)


def _chunk_factors(st, dtype, DK: int):
    """exp-factors of the chunkwise form in the compute dtype (all <= 1 except the row factor)."""
    c, M, g = st["c"], st["M"], st["g"]
    row_exponent = c[..., None] - M  # (BH, nc, L)
    unsafe = row_exponent.amax(-1) > SAFE_EXPONENT  # (BH, nc)
    return dict(
        w=_exp(st["u"] - c[..., None] - 0.5 * math.log(DK), dtype),  # (BH, nc, L) exp(u_l - c) / sqrt(DK)
        row=_exp(row_exponent.clamp(max=SAFE_EXPONENT), dtype),  # exp(c - M_j)
        carry=_exp(st["m_prev"][..., None] - M, dtype),  # exp(m_{k-1} - M_j)
        decay=_exp(g + st["m_prev"] - st["m_chunk"], dtype),  # (BH, nc) state decay γ_k
        inflow=_exp(g + c - st["m_chunk"], dtype),  # (BH, nc) weight η_k of the chunk's own update
        unsafe=unsafe.flatten().nonzero().squeeze(1) if bool(unsafe.any()) else None,
    )


def _intra_unsafe(qc, kc, vc, st, sel):
    L, DK = qc.shape[2], qc.shape[3]
    return _intra_log_weights(_flat(qc)[sel], _flat(kc)[sel], _flat(vc)[sel], _flat(st["u"])[sel],
                              _flat(st["M"])[sel], DK)


def _dot(a, b):
    """Inner product over the last two dimensions (one pass, no temporary)."""
    return torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))


def _scan_states(kw, vc, fac, C0):
    """C_in[:, k] is the state entering chunk k; C_last the state after the last chunk.

    kw: (BH, nc, L, DK); vc: (BH, nc, L, DV+1); C0: (BH, DK, DV+1).
    C̄_{k+1} = decay_k C̄_k + inflow_k kw_kᵀ v_k, the per-chunk weights applied inside the scan.
    """
    BH, nc = kw.shape[:2]
    update = kw.transpose(-1, -2) @ vc  # (BH, nc, DK, DV+1)
    C_in = C0.new_empty(BH, nc, *C0.shape[1:])
    C_in[:, 0] = C0
    decay, inflow = fac["decay"][..., None, None], fac["inflow"][..., None, None]
    for kk in range(nc - 1):
        torch.mul(C_in[:, kk], decay[:, kk], out=C_in[:, kk + 1]).addcmul_(update[:, kk], inflow[:, kk])
    return C_in, torch.addcmul(C_in[:, -1] * decay[:, -1], update[:, -1], inflow[:, -1])


def _scan_state_grads(into_state, dC_last, fac):
    """Reverse of ``_scan_states``.

    Returns the gradient on the state leaving each chunk (BH, nc, DK, DV+1), the same times the
    chunk's inflow weight (the gradient on its update kwᵀ v), and the gradient on C0.
    """
    BH, nc = into_state.shape[:2]
    decay, inflow = fac["decay"][..., None, None], fac["inflow"][..., None, None]
    dC_end = torch.empty_like(into_state)
    dC_inflow = torch.empty_like(into_state)
    dC_end[:, -1] = dC_last
    for kk in range(nc - 1, 0, -1):
        torch.mul(dC_end[:, kk], inflow[:, kk], out=dC_inflow[:, kk])
        torch.addcmul(into_state[:, kk], dC_end[:, kk], decay[:, kk], out=dC_end[:, kk - 1])
    torch.mul(dC_end[:, 0], inflow[:, 0], out=dC_inflow[:, 0])
    return dC_end, dC_inflow, torch.addcmul(into_state[:, 0], dC_end[:, 0], decay[:, 0])


def mlstm_chunkwise(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6, chunk_size: int = 64):
    """Same contract as ``mlstm_reference``: returns (h (B, NH, S, DV), final MLSTMState)."""
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    L = min(chunk_size, S)
    if state is None:
        C0 = q.new_zeros(B, NH, DK, DV)
        n0 = q.new_zeros(B, NH, DK)
        m0 = q.new_full((B, NH), float("-inf"))
    else:
        C0, n0, m0 = state
    h, C, n, m = ChunkwiseMLSTM.apply(q, k, v, i, f, C0, n0, m0, L, eps)
    return h, MLSTMState(C, n, m)
