"""sLSTM recurrent backend: a hand-written time loop forward and a hand-written reverse-time loop backward.

xLSTM paper Sec. 2.2 (eqs. 8-17) with the stabiliser of MATH.md "sLSTM"; the same function as
reference.py, in pure PyTorch. Per step the tensors are tiny (NH x B x DH), so the time goes to
per-op overhead and to first touches of fresh memory, not to arithmetic. Hence:

- Per-step quantities live in (S, slot, NH, B, DH) buffers: step t is one contiguous block and every
  slot a contiguous (NH, B, DH) block (elementwise ops on contiguous tensors are several times
  cheaper than on strided ones). Per-step views are made by one ``unbind`` per buffer and chunk.
- The recurrent product is one batched matmul over (gate, head). h is written once per gate by the
  op that computes it, so the matmul needs no copy.
- Activations are computed in place over the pre-activations, so the forward keeps only five
  slots per step for backward ([f', i', f̃, o, z]) plus the scaled state [c̄, n̄]. Without gradients
  nothing is stored: a chunk-sized ring replaces the per-step buffers.
- Backward runs in chunks of CHUNK steps, last chunk first: the coefficients of the reverse loop
  are computed for a whole chunk at once into a small reused workspace, the loop runs over the
  chunk, then dwx, db and dR (one batched matmul per chunk) are formed from the chunk's gate
  gradients.
- The loops run in inference mode, which skips autograd bookkeeping on every view and op, and on
  one thread: ops this small gain nothing from a second thread, and on a busy machine each
  thread barrier can cost a hundred microseconds (measured: 5x slower with 2 threads under load).

Gradient of the stabiliser. With c̄ = c·e^{-m}, n̄ = n·e^{-m}, every h_t = o·c̄/n̄ is the same for any
sequence m, so inside the loop m is a constant. Two m-paths remain: the returned state
(c̄_S, n̄_S, m_S) carries e^{-m_S}, so m_S gets g = dm_S - <dc̄_S, c̄_S> - <dn̄_S, n̄_S>, which flows
back along the argmax chain of m_t = max(logσ(f̃_t) + m_{t-1}, ĩ_t) (ties split in half, as
torch.maximum does); and the initial m0 scales the initial state, c_0 = c̄_0·e^{m0}, so it gets
<dc̄_0, c̄_0> + <dn̄_0, n̄_0> plus what the chain brings back to it. The argmax is read off the stored
gates: f' = exp(a - m_t) is exactly 1 where a = logσ(f̃_t) + m_{t-1} is the max, i' likewise.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.autograd.function import once_differentiable

from .state import SLSTMState

CHUNK = 64  # steps per chunk of the backward (and of the forward's pre-activation fill)

# Per-step forward slots. Before step t: [a, ĩ, f̃, õ, z̃], a = logσ(f̃) + m_{t-1}; the raw gates
# [ĩ, f̃, õ, z̃] (slots 1:5) are one (4·NH, B, DH) matmul output. After step t, in place:
# [f', i', f̃, o, z] with f' = exp(a - m_t), i' = exp(ĩ - m_t), o = σ(õ), z = tanh(z̃).
F_ACT, I_ACT, F_RAW, O_ACT, Z_ACT = 0, 1, 2, 3, 4
N_SLOTS = 5
# RAW_GATES[k] is the contract gate (i, f, z, o) = (0, 1, 2, 3) in raw slot 1 + k.
RAW_GATES = (0, 1, 3, 2)

# Backward workspace slots, per step (see _coefficients).
W_CN, W_HC, W_KC, W_KN, W_BACK, W_DH_OUT, W_CHAIN = 0, 2, 4, 6, 8, 12, 13
N_WORK = 15


@contextmanager
def _one_thread():
    """Run the enclosed ops on one intra-op thread, restoring the caller's setting afterwards."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _steps(x: torch.Tensor) -> tuple:
    """Per-step views of a (S, ...) buffer, made in one call."""
    return x.unbind(0)


def _fill_pre(gates, wx, b, t0: int, t1: int) -> None:
    """gates[:, 1:5] = wx + b for steps t0..t1-1 in raw slot order."""
    for k, g in enumerate(RAW_GATES):
        torch.add(wx[:, t0:t1, :, g].permute(1, 2, 0, 3), b[:, g, None, :], out=gates[:, 1 + k])  # (L, NH, B, DH)


def _forward(wx, r, b, h0, c0, n0, m0, h_out, store: bool):
    """Run the recurrence, writing h into h_out (B, S, NH, DH).

    Returns gates (S, N_SLOTS, NH, B, DH) and cn (S + 1, 2, NH, B, DH) = [c̄, n̄] when ``store``
    (else None, None), the final (h, c̄, n̄, m) each (NH, B, DH), and R4 (4·NH, DH, DH): the
    recurrent blocks batched over (gate, head) in raw slot order.
    """
    B, S, NH, _, DH = wx.shape
    new = wx.new_empty
    L = S if store else min(S, CHUNK)
    gates = new(L, N_SLOTS, NH, B, DH)
    cn = new(L + 1, 2, NH, B, DH)
    h4 = new(2, 4, NH, B, DH)  # h_{t-1} and h_t, once per gate
    m = new(2, 1, NH, B, DH)  # m_{t-1} and m_t
    R4 = new(4 * NH, DH, DH)
    ratio = new(1, NH, B, DH)  # c̄/n̄ of the current step
    with torch.inference_mode(), _one_thread():
        R4.view(4, NH, DH, DH).copy_(r[:, list(RAW_GATES)].transpose(0, 1))
        if h0 is None:
            h4[0].zero_()
            cn[0].zero_()
            m[0].fill_(float("-inf"))
        else:
            h4[0].copy_(h0.transpose(0, 1).expand(4, NH, B, DH))
            cn[0, 0].copy_(c0.transpose(0, 1))
            cn[0, 1].copy_(n0.transpose(0, 1))
            m[0, 0].copy_(m0.transpose(0, 1))
        h_mat, h4_s, h_first, m_s = _steps(h4.view(2, 4 * NH, B, DH)), _steps(h4), _steps(h4[:, 0]), _steps(m)
        ratio4 = ratio.expand(4, NH, B, DH)
        h_out_s = _steps(h_out.permute(1, 2, 0, 3))  # (NH, B, DH) views
        log_sigmoid, maximum, exp, tanh, sigmoid, mul, div = (
            torch._C._nn.log_sigmoid, torch.maximum, torch.exp, torch.tanh, torch.sigmoid, torch.mul, torch.div)
        for t0 in range(0, S, CHUNK):
            t1 = min(t0 + CHUNK, S)
            if store:
                g, s = gates[t0:t1], cn[t0 : t1 + 1]
            else:
                g, s = gates[: t1 - t0], cn[: t1 - t0 + 1]
                if t0 > 0:
                    s[0].copy_(cn[L])
            _fill_pre(g, wx, b, t0, t1)
            raw = _steps(g[:, 1:].reshape(t1 - t0, 4 * NH, B, DH))
            a_s, i_raw, f_raw = _steps(g[:, 0:1]), _steps(g[:, 1:2]), _steps(g[:, F_RAW : F_RAW + 1])
            ai, o_s, z_s = _steps(g[:, 0:2]), _steps(g[:, O_ACT : O_ACT + 1]), _steps(g[:, Z_ACT : Z_ACT + 1])
            o4 = _steps(g[:, O_ACT : O_ACT + 1].expand(t1 - t0, 4, NH, B, DH))
            f_act, i_act = a_s, i_raw  # the same slots after the exp
            cn_s, c_s, n_s = _steps(s), _steps(s[:, 0:1]), _steps(s[:, 1:2])
            for j in range(t1 - t0):
                t = t0 + j
                prev, cur = t % 2, (t + 1) % 2
                raw[j].baddbmm_(h_mat[prev], R4)  # raw gates (4·NH, B, DH)
                log_sigmoid(f_raw[j], out=a_s[j])
                a_s[j].add_(m_s[prev])
                maximum(a_s[j], i_raw[j], out=m_s[cur])
                ai[j].sub_(m_s[cur])
                exp(ai[j], out=ai[j])  # [f', i'], both <= 1
                tanh(z_s[j], out=z_s[j])
                sigmoid(o_s[j], out=o_s[j])
                mul(cn_s[j], f_act[j], out=cn_s[j + 1])
                c_s[j + 1].addcmul_(z_s[j], i_act[j])
                n_s[j + 1].add_(i_act[j])  # [c̄, n̄] = f'·[c̄, n̄] + i'·[z, 1]
                div(c_s[j + 1], n_s[j + 1], out=ratio)
                mul(ratio4, o4[j], out=h4_s[cur])  # h = o·c̄/n̄, once per gate
                h_out_s[t].copy_(h_first[cur])
        last = cn[S] if store else cn[S - (S - 1) // CHUNK * CHUNK]
        final = (h4[S % 2, 0], last[0], last[1], m[S % 2, 0])
    return (gates, cn) if store else (None, None), final, R4


def _coefficients(work, gates, cn, h):
    """Coefficients of the reverse loop for one chunk of L steps, all steps at once.

    gates (L, N_SLOTS, NH, B, DH), cn (L + 1, 2, NH, B, DH) = [c̄, n̄]_{t-1..t}, h (L, NH, B, DH).
    With the loop's gradient D = [dh, dc̄, dn̄] of step t, work[:L] receives
      W_CN:  [o/n̄, -h/n̄]               [dc̄, dn̄] += dh·W_CN
      W_HC:  [h(1 - o), i'(1 - z²)]     [dõ, dz̃] = [dh, dc̄]·W_HC
      W_KC:  [i'z, f'σ(-f̃)c̄_{t-1}]      [dĩ, df̃] = W_KC·dc̄ + W_KN·dn̄
      W_KN:  [i', f'σ(-f̃)n̄_{t-1}]
    """
    L = gates.shape[0]
    w = work[:L]
    f_act, i_act, o, z = (gates[:, k] for k in (F_ACT, I_ACT, O_ACT, Z_ACT))
    n = cn[1:, 1]
    torch.div(o, n, out=w[:, W_CN])
    torch.div(h, n, out=w[:, W_CN + 1]).neg_()
    torch.addcmul(h, h, o, value=-1, out=w[:, W_HC])
    torch.mul(i_act, z, out=w[:, W_KC])
    torch.addcmul(i_act, w[:, W_KC], z, value=-1, out=w[:, W_HC + 1])
    w[:, W_KN].copy_(i_act)
    sig_neg_f = torch.sigmoid(-gates[:, F_RAW])  # dlogσ(f̃)/df̃
    torch.mul(cn[:-1], (sig_neg_f * f_act)[:, None], out=w[:, W_KC + 1 : W_KN + 2 : 2])  # df'/df̃ = f'σ(-f̃)
    return sig_neg_f


def _chain_chunk(work, gates, sig_neg_f, g_m, reach_after):
    """The stabiliser chain over one chunk of L steps: its [dĩ, df̃] into work[:L, W_CHAIN:W_CHAIN + 2].

    reach_after: the share of g = dm_S that reaches m_t at the chunk's last step (1 for the last
    chunk). Returns the share that reaches m_{t0 - 1}, the state before the chunk.
    """
    L = gates.shape[0]
    f_won = (gates[:, F_ACT] == 1).to(gates.dtype)  # (L, NH, B, DH)
    tie = (gates[:, I_ACT] == 1).to(gates.dtype)
    passed = f_won.mul_(tie.mul_(-0.5).add_(1))  # share of dm_t passed on to m_{t-1}
    reach_prev = passed.flip(0).cumprod(0).flip(0).mul_(reach_after)  # share of g reaching m_{t-1}
    reach = torch.cat([reach_prev[1:], reach_after[None]])  # share of g reaching m_t
    torch.mul(reach - reach_prev, g_m, out=work[:L, W_CHAIN])  # dĩ
    torch.mul(reach_prev * g_m, sig_neg_f, out=work[:L, W_CHAIN + 1])  # df̃ through logσ(f̃)
    return reach_prev[0]


class _SLSTMRecurrentFunction(torch.autograd.Function):
    """Inputs wx, r, b and the initial state (h0, c0, n0, m0, or four Nones); outputs h (B, S, NH, DH)
    and the final (h, c̄, n̄, m), each (B, NH, DH). Backward is not itself differentiable."""

    @staticmethod
    def forward(ctx, wx, r, b, h0, c0, n0, m0):
        B, S, NH, _, DH = wx.shape
        store = any(ctx.needs_input_grad)
        h = wx.new_empty(B, S, NH, DH)
        (gates, cn), final, R4 = _forward(wx, r, b, h0, c0, n0, m0, h, store)
        outs = [wx.new_empty(B, NH, DH) for _ in range(4)]
        with torch.inference_mode():
            for x, y in zip(outs, final):
                x.copy_(y.transpose(0, 1))
        ctx.set_materialize_grads(False)
        ctx.has_state = h0 is not None
        if store:
            ctx.save_for_backward(gates, cn, R4, h, h0)
        return (h, *outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_hS, grad_cS, grad_nS, grad_mS):
        gates, cn, R4, h, h0 = ctx.saved_tensors
        S, _, NH, B, DH = gates.shape
        new = gates.new_empty
        d_wx, d_r, d_b = new(B, S, NH, 4, DH), new(NH, 4, DH, DH), new(NH, 4, DH)
        d_state = [new(B, NH, DH) for _ in range(4)] if ctx.has_state else [None] * 4
        with torch.inference_mode(), _one_thread():
            d_state_t = _backward(gates, cn, R4, h, h0, grad_h, grad_hS, grad_cS, grad_nS, grad_mS, d_wx, d_r, d_b)
            if ctx.has_state:
                for x, y in zip(d_state, d_state_t):
                    x.copy_(y.transpose(0, 1))
        return d_wx, d_r, d_b, *d_state


def _backward(gates, cn, R4, h, h0, grad_h, grad_hS, grad_cS, grad_nS, grad_mS, d_wx, d_r, d_b):
    """Fill d_wx, d_r, d_b; return the initial-state gradients (dh0, dc̄0, dn̄0, dm0), each (NH, B, DH)."""
    S, _, NH, B, DH = gates.shape
    new = gates.new_empty
    # g = dm_S - <dc̄_S, c̄_S> - <dn̄_S, n̄_S> (module docstring); skip the chain when it is zero.
    g_m = grad_mS.transpose(0, 1).clone() if grad_mS is not None else torch.zeros_like(cn[S, 0])
    for grad, value in ((grad_cS, cn[S, 0]), (grad_nS, cn[S, 1])):
        if grad is not None:
            g_m.addcmul_(grad.transpose(0, 1), value, value=-1)
    chain = bool(g_m.any())
    reach = torch.ones_like(g_m)

    L = min(S, CHUNK)
    work = new(L, N_WORK, NH, B, DH)
    draw = new(L, 4, NH, B, DH)  # raw-gate gradients of a chunk, raw slot order (i, f, o, z)
    h_prev = new(L, NH, B, DH)
    d_r4 = torch.zeros(4, NH, DH, DH, dtype=gates.dtype, device=gates.device)
    d_b.zero_()
    D = torch.zeros(3, NH, B, DH, dtype=gates.dtype, device=gates.device)  # [dh, dc̄, dn̄] of the current step
    for k, grad in ((0, grad_hS), (1, grad_cS), (2, grad_nS)):
        if grad is not None:
            D[k].copy_(grad.transpose(0, 1))
    if grad_h is not None:
        D[0].add_(grad_h[:, S - 1].transpose(0, 1))
    D_hc, D_cn, D_h, D_c, D_n, D_h_flat = D[0:2], D[1:3], D[0:1], D[1:2], D[2:3], D[0]
    R4T = R4.transpose(1, 2).contiguous()
    h_steps = h.permute(1, 2, 0, 3)  # (S, NH, B, DH)
    mul, bmm, sum_ = torch.mul, torch.bmm, torch.sum

    for t0 in reversed(range(0, S, CHUNK)):
        t1 = min(t0 + CHUNK, S)
        Lc = t1 - t0
        g = gates[t0:t1]
        sig_neg_f = _coefficients(work, g, cn[t0 : t1 + 1], h_steps[t0:t1])
        w = work[:Lc]
        # dh_out_{t-1} sits after the four slots that receive draw_t R4ᵀ: their sum is dh_{t-1}.
        if grad_h is not None and t0 > 0:
            w[:, W_DH_OUT].copy_(grad_h[:, t0 - 1 : t1 - 1].permute(1, 2, 0, 3))
        elif grad_h is not None:
            w[0, W_DH_OUT].zero_()
            w[1:, W_DH_OUT].copy_(grad_h[:, 0 : t1 - 1].permute(1, 2, 0, 3))
        else:
            w[:, W_DH_OUT].zero_()
        if chain:
            reach = _chain_chunk(work, g, sig_neg_f, g_m, reach)
        w_cn, w_hc, w_kc, w_kn = (_steps(w[:, k : k + 2]) for k in (W_CN, W_HC, W_KC, W_KN))
        f_s = _steps(g[:, F_ACT : F_ACT + 1])
        back_mat, back = _steps(w[:, W_BACK : W_BACK + 4].reshape(Lc, 4 * NH, B, DH)), _steps(w[:, W_BACK : W_DH_OUT + 1])
        d_if, d_oz, d_mat = _steps(draw[:Lc, 0:2]), _steps(draw[:Lc, 2:4]), _steps(draw[:Lc].view(Lc, 4 * NH, B, DH))
        chain_s = _steps(w[:, W_CHAIN : W_CHAIN + 2]) if chain else None
        for j in range(Lc - 1, -1, -1):
            D_cn.addcmul_(D_h, w_cn[j])  # [dc̄, dn̄]_t complete
            mul(D_hc, w_hc[j], out=d_oz[j])
            mul(w_kc[j], D_c, out=d_if[j])
            d_if[j].addcmul_(w_kn[j], D_n)
            if chain:
                d_if[j].add_(chain_s[j])
            D_cn.mul_(f_s[j])  # the part of [dc̄, dn̄]_{t-1} that flows through step t
            bmm(d_mat[j], R4T, out=back_mat[j])
            sum_(back[j], 0, out=D_h_flat)  # dh_{t-1}

        dr = draw[:Lc]
        for k, gate in enumerate(RAW_GATES):
            d_wx[:, t0:t1, :, gate].copy_(dr[:, k].permute(2, 0, 1, 3))  # (B, L, NH, DH)
            d_b[:, gate].add_(dr[:, k].sum((0, 2)))
        hp = h_prev[:Lc]
        hp[1:].copy_(h_steps[t0 : t1 - 1])
        if t0 > 0:
            hp[0].copy_(h_steps[t0 - 1])
        elif h0 is not None:
            hp[0].copy_(h0.transpose(0, 1))
        else:
            hp[0].zero_()
        d_r4.add_(torch.einsum("snbd,sknbe->knde", hp, dr))  # Σ_t h_{t-1}ᵀ draw_t per (gate, head)

    d_r.copy_(d_r4[[RAW_GATES.index(g) for g in range(4)]].transpose(0, 1))
    d_m0 = (D_cn * cn[0]).sum(0)  # c_0 = c̄_0·e^{m0}, n_0 likewise
    if chain:
        d_m0.addcmul_(reach, g_m)
    return D[0], D[1], D[2], d_m0


def slstm_recurrent(wx, r, b, state: SLSTMState | None = None):
    """Same contract as ``slstm_reference``: wx (B, S, NH, 4, DH), r (NH, 4, DH, DH), b (NH, 4, DH),
    state (h, c̄, n̄, m) each (B, NH, DH), all already in the state dtype (float32 or float64).

    Returns h (B, S, NH, DH) and the final SLSTMState.
    """
    h, *final = _SLSTMRecurrentFunction.apply(wx, r, b, *(state if state is not None else (None,) * 4))
    return h, SLSTMState(*final)
