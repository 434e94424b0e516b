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


def _pad_time(x: torch.Tensor, total: int, value: float) -> torch.Tensor:
    """Pad dim 1 of (BH, S, ...) up to ``total`` with ``value``."""
    pad = total - x.shape[1]
    if pad == 0:
        return x
    return torch.cat([x, x.new_full((x.shape[0], pad, *x.shape[2:]), value)], dim=1)


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


def _stabiliser_graph(i64, f64, m0, L: int):
    """The per-step and final stabilisers as a differentiable function of (i, f, m0)."""
    st = _gate_stats(i64, f64, m0, L)
    return st["m_step"], st["m_chunk"][:, -1]


def _intra_log_weights(q, k, v, u, M):
    """Unfactorised causal block for chunks whose gates swing too far to factorise.

    q, k: (N, L, DK) (k already divided by sqrt(DK)); v: (N, L, DV); u, M: (N, L) float64.
    Returns num (N, L, DV) and den (N, L), both already scaled by exp(-M_j).
    """
    L = q.shape[1]
    log_w = u[:, None, :] - M[:, :, None]  # (N, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    w = torch.exp(log_w.masked_fill(~causal, float("-inf"))).to(q.dtype)
    scores = (q @ k.transpose(-1, -2)) * w  # (N, L, L)
    return scores @ v, scores.sum(-1)


class ChunkwiseMLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, chunk_size: int, eps: float):
        B, NH, S, DK = q.shape
        DV = v.shape[-1]
        BH, L = B * NH, chunk_size
        nc = -(-S // L)
        S_pad = nc * L
        dtype = q.dtype
        i64 = _pad_time(i.reshape(BH, S).double(), S_pad, float("-inf"))
        f64 = _pad_time(f.reshape(BH, S).double(), S_pad, float("inf"))
        m0_64 = m0.reshape(BH).double()
        st = _gate_stats(i64, f64, m0_64, L)
        qc = _pad_time(q.reshape(BH, S, DK), S_pad, 0.0).view(BH, nc, L, DK)
        kc = _pad_time(k.reshape(BH, S, DK) / math.sqrt(DK), S_pad, 0.0).view(BH, nc, L, DK)
        vc = _pad_time(v.reshape(BH, S, DV), S_pad, 0.0).view(BH, nc, L, DV)

        fwd = _forward_core(qc, kc, vc, st, C0.reshape(BH, DK, DV), n0.reshape(BH, DK), eps)
        h = fwd["h"].reshape(BH, S_pad, DV)[:, :S].reshape(B, NH, S, DV)
        C_last = fwd["C_all"][:, -1].reshape(B, NH, DK, DV)
        n_last = fwd["n_all"][:, -1].reshape(B, NH, DK)
        m_last = st["m_chunk"][:, -1].to(dtype).reshape(B, NH)
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, fwd["h"], fwd["den"], fwd["Q"])
        ctx.chunk_size, ctx.eps = chunk_size, eps
        return h, C_last, n_last, m_last

    @staticmethod
    def backward(ctx, dh, dC_last, dn_last, dm_last):
        q, k, v, i, f, C0, n0, m0, h_pad, den, Q = ctx.saved_tensors
        L, eps = ctx.chunk_size, ctx.eps
        B, NH, S, DK = q.shape
        DV = v.shape[-1]
        BH = B * NH
        nc = -(-S // L)
        S_pad = nc * L
        dtype = q.dtype
        i64 = _pad_time(i.reshape(BH, S).double(), S_pad, float("-inf"))
        f64 = _pad_time(f.reshape(BH, S).double(), S_pad, float("inf"))
        m0_64 = m0.reshape(BH).double()
        st = _gate_stats(i64, f64, m0_64, L)
        qc = _pad_time(q.reshape(BH, S, DK), S_pad, 0.0).view(BH, nc, L, DK)
        kc = _pad_time(k.reshape(BH, S, DK) / math.sqrt(DK), S_pad, 0.0).view(BH, nc, L, DK)
        vc = _pad_time(v.reshape(BH, S, DV), S_pad, 0.0).view(BH, nc, L, DV)
        C0, n0 = C0.reshape(BH, DK, DV), n0.reshape(BH, DK)
        if dh is None:
            dh = torch.zeros_like(h_pad)
        dh = _pad_time(dh.reshape(BH, S, DV), S_pad, 0.0).view(BH, nc, L, DV)
        dC_last = torch.zeros(BH, DK, DV, dtype=dtype, device=q.device) if dC_last is None else dC_last.reshape(BH, DK, DV)
        dn_last = torch.zeros(BH, DK, dtype=dtype, device=q.device) if dn_last is None else dn_last.reshape(BH, DK)

        grads = _backward_core(qc, kc, vc, st, C0, n0, h_pad.view(BH, nc, L, DV), den, Q, dh, dC_last, dn_last)

        # Gate gradients in float64: dℓ_j (ℓ_j = b_j - m_j), du_l (u_l = ĩ_l - b_l), dg (g = b_L).
        du, dl, dg = grads["du"].double(), grads["dl"].double(), grads["dg"].double()
        db = dl - du
        db[..., -1] += dg
        dlog_f = torch.flip(torch.cumsum(torch.flip(db, [-1]), -1), [-1])  # (BH, nc, L) reverse cumsum
        di = du.reshape(BH, S_pad)
        df = dlog_f.reshape(BH, S_pad) * torch.sigmoid(-f64)

        # Stabiliser path: h_j depends on m_j through eps; the returned m is an output itself and the
        # returned C̄, n̄ carry exp(-m). dm0 also collects the initial state's own scale exp(m0).
        C_last, n_last = grads["C_last"], grads["n_last"]
        dC0, dn0 = grads["dC0"], grads["dn0"]
        dm_step = (-eps * (dh * h_pad.view(BH, nc, L, DV)).sum(-1) / Q.view(BH, nc, L)).double()
        dm_final = -(dC_last * C_last).sum((-1, -2)) - (dn_last * n_last).sum(-1)
        if dm_last is not None:
            dm_final = dm_final + dm_last.reshape(BH)
        dm0 = ((dC0 * C0).sum((-1, -2)) + (dn0 * n0).sum(-1)).double()
        dm0 = torch.where(torch.isfinite(m0_64), dm0, torch.zeros_like(dm0))
        if eps != 0.0 or bool((dm_final != 0).any()):
            with torch.enable_grad():
                i_leaf = i64[:, :S].detach().requires_grad_(True)
                f_leaf = f64[:, :S].detach().requires_grad_(True)
                m0_leaf = m0_64.detach().requires_grad_(True)
                i_all = _pad_time(i_leaf, S_pad, float("-inf"))
                f_all = _pad_time(f_leaf, S_pad, float("inf"))
                m_step, m_fin = _stabiliser_graph(i_all, f_all, m0_leaf, L)
                gi, gf, gm0 = torch.autograd.grad(
                    (m_step, m_fin), (i_leaf, f_leaf, m0_leaf), (dm_step, dm_final.double()), allow_unused=True
                )
            di[:, :S] += gi
            df[:, :S] += gf
            if gm0 is not None:
                dm0 = dm0 + gm0

        dq = grads["dq"].reshape(BH, S_pad, DK)[:, :S].reshape(B, NH, S, DK)
        dk = (grads["dk"].reshape(BH, S_pad, DK)[:, :S] / math.sqrt(DK)).reshape(B, NH, S, DK)
        dv = grads["dv"].reshape(BH, S_pad, DV)[:, :S].reshape(B, NH, S, DV)
        di = di[:, :S].reshape(B, NH, S).to(dtype)
        df = df[:, :S].reshape(B, NH, S).to(dtype)
        return (dq, dk, dv, di, df, dC0.reshape(B, NH, DK, DV), dn0.reshape(B, NH, DK),
                dm0.to(dtype).reshape(B, NH), None, None)


def _exp(x64, dtype):
    return torch.exp(x64).to(dtype)


def _chunk_factors(st, dtype):
    """exp-factors of the chunkwise form in the compute dtype (all <= 1 except the row factor)."""
    c, M, g = st["c"], st["M"], st["g"]
    row_exponent = c[..., None] - M  # (BH, nc, L)
    unsafe = row_exponent.amax(-1) > SAFE_EXPONENT  # (BH, nc)
    return dict(
        w=_exp(st["u"] - c[..., None], dtype),  # (BH, nc, L) column factor exp(u_l - c)
        row=_exp(row_exponent.clamp(max=SAFE_EXPONENT), dtype),  # exp(c - M_j)
        carry=_exp(st["m_prev"][..., None] - M, dtype),  # exp(m_{k-1} - M_j)
        decay=_exp(g + st["m_prev"] - st["m_chunk"], dtype),  # (BH, nc) state decay γ_k
        inflow=_exp(g + c - st["m_chunk"], dtype),  # (BH, nc) weight η_k of the chunk's own update
        unsafe=unsafe.flatten().nonzero().squeeze(1) if bool(unsafe.any()) else None,
    )


def _scan_states(kw, vc, fac, C0, n0):
    """Chunk-entry states: C_all[:, k] is C̄ entering chunk k, C_all[:, nc] the final state."""
    BH, nc = kw.shape[:2]
    dC = (kw.transpose(-1, -2) @ vc) * fac["inflow"][..., None, None]  # (BH, nc, DK, DV)
    dn = kw.sum(-2) * fac["inflow"][..., None]  # (BH, nc, DK)
    C_all = C0.new_empty(BH, nc + 1, *C0.shape[1:])
    n_all = n0.new_empty(BH, nc + 1, n0.shape[1])
    C_all[:, 0], n_all[:, 0] = C0, n0
    decay = fac["decay"]
    for kk in range(nc):
        torch.addcmul(dC[:, kk], C_all[:, kk], decay[:, kk, None, None], out=C_all[:, kk + 1])
        torch.addcmul(dn[:, kk], n_all[:, kk], decay[:, kk, None], out=n_all[:, kk + 1])
    return C_all, n_all


def _forward_core(qc, kc, vc, st, C0, n0, eps):
    """qc, kc: (BH, nc, L, DK); vc: (BH, nc, L, DV). Returns h (BH, nc, L, DV), den, Q (BH, S_pad), states."""
    BH, nc, L, DK = qc.shape
    DV = vc.shape[-1]
    fac = _chunk_factors(st, qc.dtype)
    kw = kc * fac["w"][..., None]  # (BH, nc, L, DK)  k_l exp(u_l - c)
    C_all, n_all = _scan_states(kw, vc, fac, C0, n0)

    # Causal intra-chunk part, factorised: rows scaled by exp(c - M_j) afterwards.
    scores = (qc @ kw.transpose(-1, -2)).tril_()  # (BH, nc, L, L)
    num = scores @ vc  # (BH, nc, L, DV)
    den = (qc * torch.cumsum(kw, dim=-2)).sum(-1)  # (BH, nc, L)
    num *= fac["row"][..., None]
    den *= fac["row"]
    if fac["unsafe"] is not None:
        sel = fac["unsafe"]
        num_u, den_u = _intra_log_weights(
            qc.reshape(-1, L, DK)[sel], kc.reshape(-1, L, DK)[sel], vc.reshape(-1, L, DV)[sel],
            st["u"].reshape(-1, L)[sel], st["M"].reshape(-1, L)[sel])
        num.view(-1, L, DV)[sel] = num_u
        den.view(-1, L)[sel] = den_u
    # Carried state: rows scaled by exp(m_{k-1} - M_j).
    carry = fac["carry"]
    num += (qc @ C_all[:, :-1]) * carry[..., None]
    den += (qc * n_all[:, :-1, None, :]).sum(-1) * carry
    Q = torch.maximum(den.abs(), normaliser_floor(st["m_step"], qc.dtype)) + eps  # (BH, nc, L)
    return dict(h=num / Q[..., None], den=den.reshape(BH, nc * L), Q=Q.reshape(BH, nc * L), C_all=C_all, n_all=n_all)


def _backward_core(qc, kc, vc, st, C0, n0, h, den, Q, dh, dC_last, dn_last):
    """Gradients at fixed stabilisers (the function is invariant to them; see the module docstring)."""
    BH, nc, L, DK = qc.shape
    DV = vc.shape[-1]
    dtype = qc.dtype
    fac = _chunk_factors(st, dtype)
    w = fac["w"]
    kw = kc * w[..., None]
    C_all, n_all = _scan_states(kw, vc, fac, C0, n0)
    den, Q = den.view(BH, nc, L), Q.view(BH, nc, L)
    floor = normaliser_floor(st["m_step"], dtype)

    # h_j = num_j / Q_j with Q_j = max(|den_j|, exp(-m_j)) + eps.
    dh_dot_h = (dh * h).sum(-1)  # (BH, nc, L)
    dnum = dh / Q[..., None]  # (BH, nc, L, DV)
    dden = -dh_dot_h / Q * torch.sign(den) * (den.abs() > floor).to(dtype)
    dl = dh_dot_h + dden * den  # dℓ_j: num_j and den_j are both proportional to exp(ℓ_j)

    # Carried state.
    carry = fac["carry"]
    dnum_c, dden_c = dnum * carry[..., None], dden * carry
    dq = dnum_c @ C_all[:, :-1].transpose(-1, -2) + dden_c[..., None] * n_all[:, :-1, None, :]
    into_state_C = qc.transpose(-1, -2) @ dnum_c  # (BH, nc, DK, DV) gradient on C̄ entering chunk k
    into_state_n = (qc * dden_c[..., None]).sum(-2)  # (BH, nc, DK)
    dC_all = torch.empty_like(C_all)
    dn_all = torch.empty_like(n_all)
    dC_all[:, nc], dn_all[:, nc] = dC_last, dn_last
    decay = fac["decay"]
    for kk in range(nc - 1, -1, -1):
        torch.addcmul(into_state_C[:, kk], dC_all[:, kk + 1], decay[:, kk, None, None], out=dC_all[:, kk])
        torch.addcmul(into_state_n[:, kk], dn_all[:, kk + 1], decay[:, kk, None], out=dn_all[:, kk])
    dC_end, dn_end = dC_all[:, 1:], dn_all[:, 1:]  # gradient on the state leaving chunk k
    dg = (dC_end * C_all[:, 1:]).sum((-1, -2)) + (dn_end * n_all[:, 1:]).sum(-1)  # (BH, nc)

    # Intra-chunk part, factorised.
    row = fac["row"]
    dnum_r, dden_r = dnum * row[..., None], dden * row
    dscores = (dnum_r @ vc.transpose(-1, -2)).tril_()  # (BH, nc, L, L)
    dq_intra = dscores @ kw + dden_r[..., None] * torch.cumsum(kw, dim=-2)
    dkw = dscores.transpose(-1, -2) @ qc + torch.flip(torch.cumsum(torch.flip(dden_r[..., None] * qc, [2]), 2), [2])
    scores = (qc @ kw.transpose(-1, -2)).tril_()
    dv = scores.transpose(-1, -2) @ dnum_r
    extra_dk = extra_du = None
    if fac["unsafe"] is not None:
        sel = fac["unsafe"]
        for t, width in ((dq_intra, DK), (dkw, DK), (dv, DV)):
            t.view(-1, L, width)[sel] = 0.0
        with torch.enable_grad():
            q_s = qc.reshape(-1, L, DK)[sel].detach().requires_grad_(True)
            k_s = kc.reshape(-1, L, DK)[sel].detach().requires_grad_(True)
            v_s = vc.reshape(-1, L, DV)[sel].detach().requires_grad_(True)
            u_s = st["u"].reshape(-1, L)[sel].detach().requires_grad_(True)
            num_u, den_u = _intra_log_weights(q_s, k_s, v_s, u_s, st["M"].reshape(-1, L)[sel])
            gq, gk, gv, gu = torch.autograd.grad(
                (num_u, den_u), (q_s, k_s, v_s, u_s), (dnum.reshape(-1, L, DV)[sel], dden.reshape(-1, L)[sel]))
        dq_intra.view(-1, L, DK)[sel] = gq
        dv.view(-1, L, DV)[sel] = gv
        extra_dk = torch.zeros_like(kc).view(-1, L, DK)
        extra_dk[sel] = gk
        extra_du = torch.zeros_like(st["u"]).view(-1, L)
        extra_du[sel] = gu
    dq = dq + dq_intra

    # The chunk's own contribution to the state it leaves: inflow * kwᵀ v.
    inflow = fac["inflow"][..., None, None]
    dkw = dkw + (vc @ dC_end.transpose(-1, -2)) * inflow + dn_end[:, :, None, :] * inflow
    dv = dv + (kw @ dC_end) * inflow
    dk = dkw * w[..., None]
    du = (dkw * kw).sum(-1)  # kw_l = k_l exp(u_l - c)
    if extra_dk is not None:
        dk = dk + extra_dk.view_as(dk)
        du = du.double() + extra_du.view_as(du)
    return dict(dq=dq, dk=dk, dv=dv, du=du, dl=dl, dg=dg, dC0=dC_all[:, 0], dn0=dn_all[:, 0],
                C_last=C_all[:, -1], n_last=n_all[:, -1])


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
