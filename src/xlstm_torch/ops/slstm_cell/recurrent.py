"""sLSTM recurrent backend: a hand-written time loop forward and a hand-written reverse-time loop backward.

xLSTM paper Sec. 2.2 (eqs. 8-17) with the stabiliser of MATH.md "sLSTM"; the same function as
reference.py, in pure PyTorch. Per step the tensors are tiny (NH x B x DH), so the time goes to
per-op overhead and to first touches of fresh memory, not to arithmetic. Hence:

- Per-step quantities live in (S, slot, NH, B, DH) buffers: step t is one contiguous block and every
  slot a contiguous (NH, B, DH) block (elementwise ops on contiguous tensors are several times
  cheaper than on strided ones). Per-step views are made by one ``unbind`` per buffer and chunk.
- The recurrent product is one batched matmul over (gate, head). h is written once per gate by the
  op that computes it, so the matmul needs no copy.
- Activations are computed in place over the pre-activations, so the forward keeps five slots per
  step for backward ([f', i', f̃, z, o]) plus the scaled state [n̄, c̄]. Without gradients nothing
  is stored: chunk-sized buffers are reused instead.
- Backward runs in chunks of CHUNK steps, last chunk first: the coefficients of the reverse loop
  are computed for a whole chunk at once, the loop runs over the chunk, then dwx, db and dR (one
  batched matmul per chunk, Σ_t h_{t-1}ᵀ draw_t) are formed from the chunk's gate gradients.
- Big buffers come from a pool kept between calls (_workspace.py): first touches of fresh pages
  cost about a fifth of the time otherwise.
- Packed documents (``cu_seqlens``): both loops work on runs of at most CHUNK steps that never
  cross a document start, so the resets to a document's initial state (and, backward, the hand-over
  of the gradient to it) happen between runs; the per-step loops are the same as without packing.
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

import torch.nn.functional as F

from .._packing import document_spans
from ._workspace import Workspace
from .state import SLSTMState, empty_slstm_state

CHUNK = 64  # steps per chunk: pre-activation fill, per-step views, backward workspace

# Per-step forward slots. Before step t: [a, ĩ, f̃, z̃, õ] with a = logσ(f̃) + m_{t-1}; the raw gates
# (slots 1:5, contract order i, f, z, o) are one (4·NH, B, DH) matmul output. After step t, in place:
# [f', i', f̃, z, o] with f' = exp(a - m_t), i' = exp(ĩ - m_t), z = tanh(z̃), o = σ(õ).
F_ACT, I_ACT, F_RAW, Z_ACT, O_ACT = 0, 1, 2, 3, 4
N_SLOTS = 5

# Backward workspace slots, per step (see _coefficients).
W_CN, W_CH, W_KN, W_KC, W_BACK, W_DH_OUT, W_CHAIN = 0, 2, 4, 6, 8, 12, 13
N_WORK = 15


# Big per-call buffers are reused across calls: see _workspace.py. release_workspace() frees them.
_WORKSPACE = Workspace()


def release_workspace() -> None:
    """Free the buffers this backend keeps between calls (those of live graphs stay)."""
    _WORKSPACE.clear()


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
    """Per-step views of a (L, ...) buffer, made in one call."""
    return x.unbind(0)


def _pieces(cu_seqlens) -> list[tuple[int, int, int]]:
    """(document, t0, t1) of the runs of at most CHUNK steps the loops work on, in time order.

    No run crosses a document start: resets happen between runs, never inside the per-step loops.
    """
    return [(d, t0, min(t0 + CHUNK, end)) for d, (start, end) in enumerate(document_spans(cu_seqlens))
            for t0 in range(start, end, CHUNK)]


def _state_rows(d: int, t0: int, t1: int) -> slice:
    """Rows of the stored [n̄, c̄] (S + D rows) before and after steps t0 .. t1 - 1 of document d:
    each document has one row more than steps, for its initial state."""
    return slice(t0 + d, t1 + d + 1)


def _forward(wx, r, b, init, cu_seqlens, h_out, store: bool):
    """Run the recurrence, writing h into h_out (B, S, NH, DH).

    init: the initial (h, c̄, n̄, m) of each of the D documents, (4, D, NH, B, DH), or None (empty).
    cu_seqlens: document boundaries (0, ..., S); (0, S) for one document per batch row.
    Returns gates (S, N_SLOTS, NH, B, DH) and cn (S + D, 2, NH, B, DH) when ``store`` (else None,
    None), the final (h, c̄, n̄, m) of each document (4, D, NH, B, DH), and R4 (4·NH, DH, DH): the
    recurrent blocks batched over (gate, head). cn holds [n̄, c̄] before and after every step:
    document d, steps t0 <= t < t1, uses rows t0 + d .. t1 + d (``_state_rows``).
    """
    B, S, NH, _, DH = wx.shape
    new = wx.new_empty
    L = min(S, CHUNK)

    def take(*shape):
        return _WORKSPACE.take(shape, wx.dtype, wx.device)

    gates = take(S if store else L, N_SLOTS, NH, B, DH)
    cn = take(S + len(cu_seqlens) - 1 if store else L + 1, 2, NH, B, DH)
    hs = take(L + 1, 4, NH, B, DH)  # h_{t0-1} .. h_{t1-1} of a run, once per gate: the matmul needs no copy
    m = new(2, 1, NH, B, DH)  # m_{t-1} and m_t
    R4 = new(4 * NH, DH, DH)
    ratio = new(1, NH, B, DH)  # c̄/n̄ of the current step
    final = new(4, len(cu_seqlens) - 1, NH, B, DH)
    with torch.inference_mode(), _one_thread():
        R4.copy_(r.transpose(0, 1).reshape(4 * NH, DH, DH))
        h_mat, h_s, m_s = _steps(hs.view(L + 1, 4 * NH, B, DH)), _steps(hs), _steps(m)
        ratio4 = ratio.expand(4, NH, B, DH)
        # torch._C._nn.log_sigmoid is F.logsigmoid with an out= argument.
        log_sigmoid, maximum, exp, tanh, sigmoid, mul, div = (
            torch._C._nn.log_sigmoid, torch.maximum, torch.exp, torch.tanh, torch.sigmoid, torch.mul, torch.div)
        Lc = 0
        for d, t0, t1 in _pieces(cu_seqlens):
            g, s = (gates[t0:t1], cn[_state_rows(d, t0, t1)]) if store else (gates[: t1 - t0], cn[: t1 - t0 + 1])
            if t0 == cu_seqlens[d]:  # a document starts from its own initial state
                if init is None:
                    hs[0].zero_()
                    s[0].zero_()
                    m_s[t0 % 2].fill_(float("-inf"))
                else:
                    hs[0].copy_(init[0, d].expand(4, NH, B, DH))
                    s[0].copy_(init[[2, 1], d])
                    m_s[t0 % 2][0].copy_(init[3, d])
            else:  # continue from the run before
                hs[0].copy_(hs[Lc])
                if not store:
                    s[0].copy_(cn[Lc])
            Lc = t1 - t0
            torch.add(wx[:, t0:t1].permute(1, 3, 2, 0, 4), b.transpose(0, 1)[:, :, None], out=g[:, 1:])  # wx + b
            raw = _steps(g[:, 1:].reshape(Lc, 4 * NH, B, DH))
            f_act, i_act, f_raw = _steps(g[:, 0:1]), _steps(g[:, 1:2]), _steps(g[:, 2:3])
            fi, z_s, o_s = _steps(g[:, 0:2]), _steps(g[:, Z_ACT : Z_ACT + 1]), _steps(g[:, O_ACT : O_ACT + 1])
            o4 = _steps(g[:, O_ACT : O_ACT + 1].expand(Lc, 4, NH, B, DH))
            cn_s, n_s, c_s = _steps(s), _steps(s[:, 0:1]), _steps(s[:, 1:2])
            for j in range(Lc):
                prev, cur = (t0 + j) % 2, (t0 + j + 1) % 2
                raw[j].baddbmm_(h_mat[j], R4)  # raw gates (4·NH, B, DH)
                log_sigmoid(f_raw[j], out=f_act[j])
                f_act[j].add_(m_s[prev])  # a
                maximum(f_act[j], i_act[j], out=m_s[cur])
                fi[j].sub_(m_s[cur])
                exp(fi[j], out=fi[j])  # [f', i'], both <= 1
                tanh(z_s[j], out=z_s[j])
                sigmoid(o_s[j], out=o_s[j])
                mul(cn_s[j], f_act[j], out=cn_s[j + 1])
                n_s[j + 1].add_(i_act[j])
                c_s[j + 1].addcmul_(z_s[j], i_act[j])  # [n̄, c̄] = f'·[n̄, c̄] + i'·[1, z]
                div(c_s[j + 1], n_s[j + 1], out=ratio)
                mul(ratio4, o4[j], out=h_s[j + 1])  # h = o·c̄/n̄, once per gate
            h_out[:, t0:t1].copy_(hs[1 : Lc + 1, 0].permute(2, 0, 1, 3))
            if t1 == cu_seqlens[d + 1]:  # the document's final state (h, c̄, n̄, m)
                final[0, d].copy_(hs[Lc, 0])
                final[1:3, d].copy_(s[Lc, [1, 0]])
                final[3, d].copy_(m_s[t1 % 2][0])
    _WORKSPACE.give_back(hs)
    if not store:
        _WORKSPACE.give_back(gates, cn)
    return (gates, cn) if store else (None, None), final, R4


def _coefficients(work, gates, cn, h):
    """Coefficients of the reverse loop for one chunk of L steps, all steps at once.

    gates (L, N_SLOTS, NH, B, DH), cn (L + 1, 2, NH, B, DH) = [n̄, c̄]_{t-1..t}, h (L, NH, B, DH).
    With the loop's gradient D = [dn̄, dc̄, dh] of step t, work[:L] receives
      W_CN:  [-h/n̄, o/n̄]                [dn̄, dc̄] += dh·W_CN
      W_CH:  [i'(1 - z²), h(1 - o)]     [dz̃, dõ] = [dc̄, dh]·W_CH
      W_KN:  [i', f'σ(-f̃)n̄_{t-1}]       [dĩ, df̃] = W_KN·dn̄ + W_KC·dc̄
      W_KC:  [i'z, f'σ(-f̃)c̄_{t-1}]
    Returns σ(-f̃) (L, NH, B, DH).
    """
    L = gates.shape[0]
    w = work[:L]
    f_act, i_act, z, o = (gates[:, k] for k in (F_ACT, I_ACT, Z_ACT, O_ACT))
    n = cn[1:, 0]
    torch.div(h, n, out=w[:, W_CN]).neg_()
    torch.div(o, n, out=w[:, W_CN + 1])
    torch.addcmul(h, h, o, value=-1, out=w[:, W_CH + 1])
    torch.mul(i_act, z, out=w[:, W_KC])
    torch.addcmul(i_act, w[:, W_KC], z, value=-1, out=w[:, W_CH])
    w[:, W_KN].copy_(i_act)
    sig_neg_f = torch.sigmoid(-gates[:, F_RAW])  # dlogσ(f̃)/df̃
    torch.mul(cn[:-1], (sig_neg_f * f_act)[:, None], out=w[:, W_KN + 1 : W_KC + 2 : 2])  # df'/df̃ = f'σ(-f̃)
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


def _to_internal(x, D: int):
    """(B·D, NH, DH) contract rows (batch rows, or documents with B = 1) -> (D, NH, B, DH)."""
    return x.view(D, -1, *x.shape[1:]).transpose(1, 2)


def _run_forward(wx, r, b, init, cu_seqlens, store: bool):
    """h (B, S, NH, DH), each document's final (h, c̄, n̄, m) as four (B·D, NH, DH), and what backward needs."""
    B, S, NH, _, DH = wx.shape
    h = wx.new_empty(B, S, NH, DH)
    saved, final, R4 = _forward(wx, r, b, init, cu_seqlens, h, store)
    D = final.shape[1]
    outs = [wx.new_empty(B * D, NH, DH) for _ in range(4)]
    with torch.inference_mode():
        for x, y in zip(outs, final):
            _to_internal(x, D).copy_(y)
    return h, outs, saved, final, R4


class _SLSTMRecurrentFunction(torch.autograd.Function):
    """Inputs wx, r, b, the initial state (h0, c0, n0, m0, or four Nones) and the document
    boundaries; outputs h (B, S, NH, DH) and the final (h, c̄, n̄, m) of every document, each
    (B·D, NH, DH) (batch rows, or documents). Backward is not itself differentiable."""

    @staticmethod
    def forward(ctx, wx, r, b, h0, c0, n0, m0, cu_seqlens):
        D = len(cu_seqlens) - 1
        init = None if h0 is None else torch.stack([_to_internal(x, D) for x in (h0, c0, n0, m0)])
        h, outs, (gates, cn), final, R4 = _run_forward(wx, r, b, init, cu_seqlens, store=True)
        ctx.set_materialize_grads(False)
        ctx.has_state, ctx.cu_seqlens = h0 is not None, cu_seqlens
        ctx.save_for_backward(gates, cn, R4, h, init, final)
        _WORKSPACE.lend(gates, cn)
        return (h, *outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, *grad_final):
        gates, cn, R4, h, init, final = ctx.saved_tensors
        S, _, NH, B, DH = gates.shape
        D = final.shape[1]
        new = gates.new_empty
        need = ctx.needs_input_grad
        d_wx = new(B, S, NH, 4, DH) if need[0] else None
        d_r = new(NH, 4, DH, DH) if need[1] else None
        d_b = new(NH, 4, DH) if need[2] else None
        d_state = [new(B * D, NH, DH) if ctx.has_state and need[3 + k] else None for k in range(4)]
        grad_final = [None if x is None else _to_internal(x, D) for x in grad_final]
        with torch.inference_mode(), _one_thread():
            d_init = _backward(gates, cn, R4, h, init, final, ctx.cu_seqlens, grad_h, grad_final, d_wx, d_r, d_b)
            for x, y in zip(d_state, d_init):
                if x is not None:
                    _to_internal(x, D).copy_(y)
        return d_wx, d_r, d_b, *d_state, None


def _backward(gates, cn, R4, h, init, final, cu_seqlens, grad_h, grad_final, d_wx, d_r, d_b):
    """Fill d_wx, d_r, d_b (each may be None: not needed); return the gradients on each document's
    initial (h, c̄, n̄, m), (4, D, NH, B, DH).

    init, final: each document's initial (or None: empty) and final (h, c̄, n̄, m), (4, D, NH, B, DH);
    grad_final: the gradients on the final ones, four (D, NH, B, DH) or None.
    """
    S, _, NH, B, DH = gates.shape
    grad_hS, grad_cS, grad_nS, grad_mS = grad_final
    # g = dm_S - <dc̄_S, c̄_S> - <dn̄_S, n̄_S> per document (module docstring); skip the chain where it is zero.
    g_m = grad_mS.clone() if grad_mS is not None else torch.zeros_like(final[3])  # (D, NH, B, DH)
    for grad, value in ((grad_nS, final[2]), (grad_cS, final[1])):
        if grad is not None:
            g_m.addcmul_(grad, value, value=-1)
    chains = g_m.flatten(1).any(1).tolist()
    d_init = torch.empty_like(final)

    L = min(S, CHUNK)
    work, draw, draw_rows, h_prev = scratch = [
        _WORKSPACE.take(shape, gates.dtype, gates.device) for shape in (
            (L, N_WORK, NH, B, DH),
            (L, 4, NH, B, DH),  # raw-gate gradients (i, f, z, o) of a run
            (NH, L, B, 4, DH),  # the same, laid out for dR and dwx
            (NH, L, B, DH),  # h_{t-1} of a run, laid out for dR
        )]
    for x in (d_r, d_b):
        if x is not None:
            x.zero_()
    D = torch.zeros(3, NH, B, DH, dtype=gates.dtype, device=gates.device)  # [dn̄, dc̄, dh] of the current step
    D_cn, D_ch, D_n, D_c, D_h, D_h_flat = D[0:2], D[1:3], D[0:1], D[1:2], D[2:3], D[2]
    R4T = R4.transpose(1, 2).contiguous()
    h_steps = h.permute(1, 2, 0, 3)  # (S, NH, B, DH)
    mul, bmm, sum_ = torch.mul, torch.bmm, torch.sum

    for doc, t0, t1 in reversed(_pieces(cu_seqlens)):
        start = cu_seqlens[doc]
        if t1 == cu_seqlens[doc + 1]:  # a document's last step: start from the gradients on its final state
            D.zero_()
            for k, grad in ((0, grad_nS), (1, grad_cS), (2, grad_hS)):
                if grad is not None:
                    D[k].copy_(grad[doc])
            if grad_h is not None:
                D[2].add_(grad_h[:, t1 - 1].transpose(0, 1))
            chain, g_doc, reach = chains[doc], g_m[doc], torch.ones_like(g_m[doc])
        Lc = t1 - t0
        g, w = gates[t0:t1], work[:Lc]
        sig_neg_f = _coefficients(work, g, cn[_state_rows(doc, t0, t1)], h_steps[t0:t1])
        # dh_out_{t-1} sits after the four slots that receive draw_t R4ᵀ: their sum is dh_{t-1}.
        if grad_h is None:
            w[:, W_DH_OUT].zero_()
        elif t0 > start:
            w[:, W_DH_OUT].copy_(grad_h[:, t0 - 1 : t1 - 1].permute(1, 2, 0, 3))
        else:  # before a document's first step is its initial state: no output there
            w[0, W_DH_OUT].zero_()
            w[1:, W_DH_OUT].copy_(grad_h[:, t0 : t1 - 1].permute(1, 2, 0, 3))
        if chain:
            reach = _chain_chunk(work, g, sig_neg_f, g_doc, reach)
        w_cn, w_ch, w_kn, w_kc = (_steps(w[:, k : k + 2]) for k in (W_CN, W_CH, W_KN, W_KC))
        f_s = _steps(g[:, F_ACT : F_ACT + 1])
        back_mat, back = _steps(w[:, W_BACK : W_BACK + 4].reshape(Lc, 4 * NH, B, DH)), _steps(w[:, W_BACK : W_DH_OUT + 1])
        d_if, d_zo, d_mat = _steps(draw[:Lc, 0:2]), _steps(draw[:Lc, 2:4]), _steps(draw[:Lc].view(Lc, 4 * NH, B, DH))
        chain_s = _steps(w[:, W_CHAIN : W_CHAIN + 2]) if chain else None
        for j in range(Lc - 1, -1, -1):
            D_cn.addcmul_(D_h, w_cn[j])  # [dn̄, dc̄]_t complete
            mul(D_ch, w_ch[j], out=d_zo[j])
            mul(w_kn[j], D_n, out=d_if[j])
            d_if[j].addcmul_(w_kc[j], D_c)
            if chain:
                d_if[j].add_(chain_s[j])
            D_cn.mul_(f_s[j])  # the part of [dn̄, dc̄]_{t-1} that flows through step t
            bmm(d_mat[j], R4T, out=back_mat[j])
            sum_(back[j], 0, out=D_h_flat)  # dh_{t-1}

        if t0 == start:  # a document's first step: what is left is the gradient on its initial state
            d_init[0, doc].copy_(D[2])
            d_init[1:3, doc].copy_(D[[1, 0]])
            torch.sum(D_cn * cn[t0 + doc], 0, out=d_init[3, doc])  # c_0 = c̄_0·e^{m0}, n_0 likewise
            if chain:
                d_init[3, doc].addcmul_(reach, g_doc)

        if d_wx is None and d_r is None and d_b is None:
            continue
        rows = draw_rows[:, :Lc]
        rows.copy_(draw[:Lc].permute(2, 0, 3, 1, 4))  # (NH, L, B, 4, DH)
        if d_wx is not None:
            d_wx[:, t0:t1].copy_(rows.permute(2, 1, 0, 3, 4))
        if d_b is not None:
            d_b.add_(rows.sum((1, 2)))
        if d_r is None:
            continue
        hp = h_prev[:, :Lc]
        hp[:, 1:].copy_(h_steps[t0 : t1 - 1].transpose(0, 1))
        if t0 > start:
            hp[:, 0].copy_(h_steps[t0 - 1])
        elif init is not None:
            hp[:, 0].copy_(init[0, doc])
        else:
            hp[:, 0].zero_()
        d_r4 = bmm(hp.reshape(NH, Lc * B, DH).transpose(1, 2), rows.reshape(NH, Lc * B, 4 * DH))  # Σ_t h_{t-1}ᵀ draw_t
        d_r.add_(d_r4.view(NH, DH, 4, DH).transpose(1, 2))

    _WORKSPACE.give_back(*scratch)
    return d_init


# torch.compile traces around this op, not into it: its in-place workspace reuse and thread switch
# are eager-only, and a Python loop of tiny ops gains nothing from tracing.
@torch.compiler.disable
def slstm_recurrent(wx, r, b, state: SLSTMState | None = None, cu_seqlens: tuple[int, ...] | None = None):
    """Same contract as ``slstm_reference``: wx (B, S, NH, 4, DH), r (NH, 4, DH, DH), b (NH, 4, DH),
    state (h, c̄, n̄, m) each (B, NH, DH), all already in the state dtype (float32 or float64).

    Returns h (B, S, NH, DH) and the final SLSTMState. Packed documents (``cu_seqlens``, B == 1):
    the loops reset to each document's initial state (row d of ``state``, or empty) at its start,
    in the forward and in the reverse-time backward; the final state has one row per document.
    """
    cu_seqlens = cu_seqlens or (0, wx.shape[1])
    state = tuple(state) if state is not None else (None,) * 4
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (wx, r, b, *state)):
        h, *final = _SLSTMRecurrentFunction.apply(wx, r, b, *state, cu_seqlens)
    else:  # nothing to differentiate: keep no per-step buffers
        D = len(cu_seqlens) - 1
        init = None if state[0] is None else torch.stack([_to_internal(x, D) for x in state])
        h, final, _, _, _ = _run_forward(wx, r, b, init, cu_seqlens, store=False)
    return h, SLSTMState(*final)


def slstm_step_weights(r: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r (NH, 4, DH, DH), b (NH, 4, DH) in the layout ``slstm_step`` reads: the recurrent blocks batched
    over (gate, head) (4·NH, DH, DH), as the loop above uses them, and the biases (4, NH, 1, DH).
    A decoding layer builds these once and keeps them (nn/decode.py)."""
    NH, _, DH, _ = r.shape
    return r.transpose(0, 1).reshape(4 * NH, DH, DH), b.transpose(0, 1)[:, :, None]


def slstm_step(wx: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor], state: SLSTMState | None = None):
    """One step of the recurrence, for decoding (no gradients): the per-step ops of ``_forward``,
    without its buffers, chunking and thread switch, which cost more than one step's arithmetic.

    wx (B, NH, 4, DH) in the state dtype; weights = ``slstm_step_weights(r, b)``; state (h, c̄, n̄, m)
    each (B, NH, DH) or None (empty). Returns h (B, NH, DH) and the next SLSTMState, whose tensors
    are (B, NH, DH) views of (NH, B, DH) ones (contiguous for B == 1).
    """
    R4, b4 = weights
    B, NH, _, DH = wx.shape
    h, c, n, m = state if state is not None else empty_slstm_state(B, NH, DH, dtype=wx.dtype, device=wx.device)
    if torch.compiler.is_compiling():  # traced, an out= tensor does not keep its layout: the next view would fail
        raw = (wx.permute(2, 1, 0, 3) + b4).contiguous()
    else:  # one op: the sum lands in the (4, NH, B, DH) layout that the batched product reads
        raw = torch.add(wx.permute(2, 1, 0, 3), b4, out=wx.new_empty(4, NH, B, DH))  # wx + b, gates (i, f, z, o)
    h4 = h.transpose(0, 1).expand(4, NH, B, DH).reshape(4 * NH, B, DH)  # h_{t-1} once per gate
    i_raw, f_raw, z_raw, o_raw = torch.baddbmm(raw.view(4 * NH, B, DH), h4, R4).view(4, NH, B, DH)
    a = F.logsigmoid(f_raw) + m.transpose(0, 1)  # (NH, B, DH)
    m_new = torch.maximum(a, i_raw)
    f_act, i_act = torch.exp(torch.stack((a, i_raw)) - m_new)  # f', i', both <= 1
    n_new, c_new = torch.stack((n.transpose(0, 1), c.transpose(0, 1))) * f_act  # (NH, B, DH) each
    n_new.add_(i_act)
    c_new.addcmul_(torch.tanh(z_raw), i_act)  # [n̄, c̄] = f'·[n̄, c̄] + i'·[1, z]
    h_new = (c_new / n_new) * torch.sigmoid(o_raw)  # h = o·c̄/n̄
    h_new, c_new, n_new, m_new = (x.transpose(0, 1) for x in (h_new, c_new, n_new, m_new))  # (B, NH, DH)
    return h_new, SLSTMState(h_new, c_new, n_new, m_new)
