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

Packed documents (``cu_seqlens``): documents are aligned to chunks. Each document starts a chunk
and its last chunk is padded with no-op steps (ĩ = -inf, f̃ = +inf, q = k = v = 0), so no chunk holds
two documents (the waste is < L steps per document). Every chunk-level recursion (the stabilisers,
the state scan and its reverse) then runs per document, from that document's initial state, and
the state leaving a document's last chunk is its final state: nothing crosses a document start,
in the forward or the backward. The unpacked call is the case of one document per batch row.
"""

from __future__ import annotations

import contextlib
import math
from itertools import accumulate
from typing import Optional

import torch
import torch.nn.functional as F

from .._packing import host_to_device
from .state import MLSTMState, normaliser_floor

SAFE_EXPONENT = 40.0  # exp(40) ~ 2e17: row factors stay far from overflow; lost terms are < e^-47
# State entries per head (DK·(DV+1)) from which the scans on a CPU take each chunk's product in the step: measured
# slower at 64 x 65, even at 128 x 129, 1.6x faster at 256 x 257 (benchmarks/RESULTS.md); 128 x 256 and up.
FUSED_SCAN_MIN = 128 * 256


def _gate_stats(i64, f64, m0, L: int, chunk_bounds):
    """Stabilisers and log-weights of the chunkwise form, all float64.

    i64, f64: (BH, S_pad) gate pre-activations (padding: i = -inf, f = +inf, i.e. a no-op step)
    m0: (BH, D) log-scale of each document's initial state (-inf when empty)
    chunk_bounds: (0, ..., nc) the first chunk of each document, then nc
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
    # Per document, m_k = g_k + max(m_{k-1}, c_k), solved in closed form over its chunks: with
    # G_k = g_1 + ... + g_k, m_k - G_k = max(m0, max_{r<=k} (c_r - G_{r-1})).
    m_chunk, m_prev = [], []
    for d, (k0, k1) in enumerate(zip(chunk_bounds[:-1], chunk_bounds[1:])):
        G = torch.cumsum(g[:, k0:k1], dim=-1)
        m_doc = G + torch.maximum(m0[:, d : d + 1], torch.cummax(c[:, k0:k1] - (G - g[:, k0:k1]), dim=-1).values)
        m_chunk.append(m_doc)
        m_prev.extend([m0[:, d : d + 1], m_doc[:, :-1]])
    m_chunk = torch.cat(m_chunk, dim=1)  # (BH, nc)
    m_prev = torch.cat(m_prev, dim=1)  # (BH, nc) state entering chunk k
    M = torch.maximum(m_prev[..., None], u_cummax)  # (BH, nc, L)  M_j = m_j - b_j
    return dict(b=b, g=g, u=u, c=c, M=M, m_prev=m_prev, m_chunk=m_chunk, m_step=b + M)


def reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Sums over the last dim from each position to its end: out[..., t] = Σ_{t' >= t} x[..., t']."""
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1])


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


class _Layout:
    """Where the S tokens sit on the chunked time axis of nc·L steps.

    Unpacked: in order, with a no-op tail in the last chunk. Packed (``cu_seqlens``, module
    docstring): each document from the start of a chunk. ``chunk_bounds`` (0, ..., nc) holds the
    first chunk of each document and then nc; ``last_chunks`` indexes the last chunk of each (a
    slice for one document, else an index tensor on the device: a list index would wait for the GPU).
    """

    def __init__(self, S: int, L: int, cu_seqlens, device):
        self.S, self.L = S, L
        if cu_seqlens is None:
            self.nc = -(-S // L)
            self.chunk_bounds = (0, self.nc)
            self.index = None
        else:
            chunks = [-(-(b - a) // L) for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])]
            self.chunk_bounds = tuple(accumulate(chunks, initial=0))
            self.nc = self.chunk_bounds[-1]
            starts = host_to_device([L * k - a for k, a in zip(self.chunk_bounds, cu_seqlens[:-1])], device)
            lengths = host_to_device([b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])], device)
            # (S,) padded position of each token; output_size: else repeat_interleave reads the total back
            self.index = torch.arange(S, device=device) + starts.repeat_interleave(lengths, output_size=S)
        last = [k - 1 for k in self.chunk_bounds[1:]]
        self.last_chunks = slice(last[0], last[0] + 1) if len(last) == 1 else host_to_device(last, device)
        self.S_pad = self.nc * L
        self.device = device

    @property
    def last_steps(self):
        """Each document's last (padded) step on the nc·L axis, indexed like ``last_chunks``."""
        if isinstance(self.last_chunks, slice):
            return slice(self.S_pad - 1, self.S_pad)
        return host_to_device([end - 1 for end in self._document_ends()], self.device)

    def _document_ends(self) -> list[int]:
        """Where each document's padded steps end on the nc·L axis (exclusive)."""
        return [k * self.L for k in self.chunk_bounds[1:]]

    def suffix_sums(self, x: torch.Tensor) -> torch.Tensor:
        """(BH, nc·L) -> each step's sum of x over the steps from it to its document's end (float64 x)."""
        after = reverse_cumsum(x)  # to the row's end
        if isinstance(self.last_chunks, slice):
            return after
        ends = host_to_device(self._document_ends(), self.device)
        steps = host_to_device([(k1 - k0) * self.L for k0, k1 in zip(self.chunk_bounds[:-1], self.chunk_bounds[1:])],
                               self.device)
        doc = torch.arange(len(self.chunk_bounds) - 1, device=self.device).repeat_interleave(steps,
                                                                                            output_size=self.S_pad)
        return after - F.pad(after, (0, 1))[:, ends][:, doc]  # minus what lies after the step's document

    def pad(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(BH, S, ...) -> (BH, nc·L, ...), the steps that hold no token set to ``fill``. Differentiable."""
        if self.index is None and self.S_pad == self.S:
            return x
        out = x.new_full((x.shape[0], self.S_pad, *x.shape[2:]), fill)
        if self.index is None:
            return torch.cat([x, out[:, self.S :]], dim=1)
        return out.index_copy(1, self.index, x)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(BH, nc·L, ...) -> (BH, S, ...): the steps that hold tokens."""
        return x[:, : self.S] if self.index is None else x.index_select(1, self.index)


def _chunks(x: torch.Tensor, layout: _Layout, *, ones_column: bool = False) -> torch.Tensor:
    """(BH, S, D) -> (BH, nc, L, D) zero-padded in time; with ``ones_column`` -> (BH, nc, L, D + 1).

    The column of ones turns the normaliser into one more value column: every product that makes
    the numerator then makes the denominator in the same matrix multiply (n̄ rides along with C̄).
    """
    BH, S, D = x.shape
    nc, L = layout.nc, layout.L
    if not ones_column:
        return layout.pad(x).reshape(BH, nc, L, D)
    out = x.new_zeros(BH, nc * L, D + 1) if layout.index is not None else x.new_empty(BH, nc * L, D + 1)
    if layout.index is None:
        out[:, :S, :D] = x
        out[:, S:, :D] = 0.0
    else:
        out[:, :, :D].index_copy_(1, layout.index, x)
    out[:, :, D] = 1.0
    return out.view(BH, nc, L, D + 1)


class ChunkwiseMLSTM(torch.autograd.Function):
    """The chunkwise form with a hand-written backward; states carry n̄ as column DV of C̄.

    Inputs q, k (B, NH, S, DK), v (B, NH, S, DV), i, f (B, NH, S); the initial states of the
    documents C0 (BH, D, DK, DV+1) and m0 (BH, D); ``cu_seqlens`` None (D = 1: each batch row is one
    document) or the document boundaries (B = 1). Outputs h (B, NH, S, DV) and the final states
    C_last (BH, D, DK, DV+1), m_last (BH, D).

    The work of each direction is one custom op (``xlstm_torch::mlstm_chunkwise_forward`` and
    ``_backward``): torch.compile keeps each as one opaque node of its graph, so a compiled model
    traces through the cell without a graph break and runs this hand-scheduled code inside it (the
    gate statistics branch on data and the scans write into views, which tracing cannot follow).
    The chunked copies of q, k, v are made out here, where a compiled graph can fuse them with the
    projections that produce q, k, v.
    """

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, m0, chunk_size: int, eps: float, cu_seqlens):
        B, NH, S, DK = q.shape
        DV = v.shape[-1]
        BH = B * NH
        layout = _Layout(S, chunk_size, cu_seqlens, q.device)
        qc = _chunks(q.reshape(BH, S, DK), layout)  # (BH, nc, L, DK): a copy unless q is contiguous and unpadded
        kc = _chunks(k.reshape(BH, S, DK), layout)
        vc = _chunks(v.reshape(BH, S, DV), layout, ones_column=True)  # (BH, nc, L, DV+1)
        bounds = None if cu_seqlens is None else list(cu_seqlens)
        h_pad, C_last, m_last, den, Q = torch.ops.xlstm_torch.mlstm_chunkwise_forward(qc, kc, vc, i, f, C0, m0, S,
                                                                                       eps, bounds)
        h = layout.unpad(h_pad.view(BH, -1, DV)).reshape(B, NH, S, DV)
        # The chunked q, k, v, not the inputs: the backward needs them in this layout, and the layers pass
        # strided views of (B, S, NH, D) tensors that they do not keep, so these copies replace them.
        ctx.save_for_backward(qc, kc, vc, i, f, C0, m0, h_pad, den, Q)
        ctx.eps, ctx.bounds, ctx.S = eps, bounds, S
        return h, C_last, m_last

    @staticmethod
    def backward(ctx, dh, dC_last, dm_last):
        saved, S = ctx.saved_tensors, ctx.S
        qc, vc = saved[0], saved[2]
        dq, dk, dv, di, df, dC0, dm0 = torch.ops.xlstm_torch.mlstm_chunkwise_backward(
            *saved, dh, dC_last, dm_last, S, ctx.eps, ctx.bounds)
        (BH, nc, L, DK), DV = qc.shape, vc.shape[-1] - 1
        B, NH = di.shape[:2]
        layout = _Layout(S, L, ctx.bounds, qc.device)

        def unpad(x, D):  # (BH nc, L, D) -> (B, NH, S, D): a view unless packed
            return layout.unpad(x.reshape(BH, nc * L, D)).reshape(B, NH, S, D)

        return unpad(dq, DK), unpad(dk, DK), unpad(dv[..., :DV], DV), di, df, dC0, dm0, None, None, None


@torch.library.custom_op("xlstm_torch::mlstm_chunkwise_forward", mutates_args=())
def _chunkwise_forward(qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                       C0: torch.Tensor, m0: torch.Tensor, S: int, eps: float, cu_seqlens: Optional[list[int]]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """qc, kc (BH, nc, L, DK), vc (BH, nc, L, DV+1) from ``_chunks``; i, f, C0, m0 as ``ChunkwiseMLSTM``'s.
    Returns h on the chunked axis (BH nc, L, DV), C_last, m_last, and the normaliser's den and Q (BH nc, L)
    that the backward reads. Every output is a new contiguous tensor (what ``_forward_shapes`` promises)."""
    BH, nc, L, DK = qc.shape
    DV = vc.shape[-1] - 1
    fw = _Forward(qc, kc, vc, i, f, C0, m0, _Layout(S, L, cu_seqlens, qc.device))
    st, fac, kw = fw.st, fw.fac, fw.kw
    q_row = qc * fac["row"][..., None]
    scores = _flat(q_row @ kw.transpose(-1, -2)).tril_()  # (BH nc, L, L)
    if fac["unsafe"] is not None:
        scores[fac["unsafe"]] = 0.0
    # In-place accumulation (baddbmm_) throughout: out-of-place baddbmm first copies its addend.
    num = (_flat(qc * fac["carry"][..., None]) @ _flat(fw.C_in)).baddbmm_(scores, _flat(vc))  # (BH nc, L, DV+1)
    if fac["unsafe"] is not None:
        num[fac["unsafe"]] += _intra_unsafe(qc, kc, vc, st, fac["unsafe"])
    den = num[..., DV]  # (BH nc, L)
    Q = torch.maximum(den.abs(), normaliser_floor(st["m_step"], qc.dtype).view_as(den)) + eps
    h_pad = num[..., :DV] / Q[..., None]  # (BH nc, L, DV)
    return h_pad, fw.C_last.contiguous(), st["m_chunk"][:, fw.layout.last_chunks].to(qc.dtype).contiguous(), \
        den.contiguous(), Q


@_chunkwise_forward.register_fake
def _forward_shapes(qc, kc, vc, i, f, C0, m0, S, eps, cu_seqlens):
    BH, nc, L, _ = qc.shape
    rows = qc.new_empty(BH * nc, L)
    return (qc.new_empty(BH * nc, L, vc.shape[-1] - 1), torch.empty_like(C0, memory_format=torch.contiguous_format),
            qc.new_empty(BH, C0.shape[1]), rows, torch.empty_like(rows))


@torch.library.custom_op("xlstm_torch::mlstm_chunkwise_backward", mutates_args=())
def _chunkwise_backward(qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                        C0: torch.Tensor, m0: torch.Tensor, h_pad: torch.Tensor, den: torch.Tensor, Q: torch.Tensor,
                        dh: Optional[torch.Tensor], dC_last: Optional[torch.Tensor], dm_last: Optional[torch.Tensor],
                        S: int, eps: float, cu_seqlens: Optional[list[int]]) -> list[torch.Tensor]:
    """Gradients on (q, k, v, i, f, C0, m0) from those on (h, C_last, m_last) (any may be None), each a new
    contiguous tensor: dq, dk (BH nc, L, DK) and dv (BH nc, L, DV+1, its last column the ones column's) on the
    chunked axis, the others shaped like their inputs. Recomputes the chunk states with one scan (module
    docstring)."""
    B, NH = i.shape[:2]
    BH, nc, L, DK = qc.shape
    DV, dtype = vc.shape[-1] - 1, qc.dtype
    fw = _Forward(qc, kc, vc, i, f, C0, m0, _Layout(S, L, cu_seqlens, qc.device))
    layout, st, fac, kw, C_in, C_last, f64 = fw.layout, fw.st, fw.fac, fw.kw, fw.C_in, fw.C_last, fw.f64
    del fw  # from here on each (BH nc, L, ·) temporary is dropped once used: it sets the step's peak memory

    # h_j = num_j / Q_j with Q_j = max(|den_j|, exp(-m_j)) + eps; num_j, den_j ∝ exp(ℓ_j).
    dh = torch.zeros_like(h_pad) if dh is None else layout.pad(dh.reshape(BH, S, DV)).reshape_as(h_pad)
    dh_dot_h = (dh * h_pad).sum(-1)  # (BH nc, L)
    floor = normaliser_floor(st["m_step"], dtype).view_as(den)
    dden = -dh_dot_h / Q * torch.sign(den) * (den.abs() > floor).to(dtype)
    dnum = dh.new_empty(BH * nc, L, DV + 1)  # (BH nc, L, DV+1): numerator and normaliser columns
    torch.div(dh, Q[..., None], out=dnum[..., :DV])
    dnum[..., DV] = dden
    del dh
    dl = dh_dot_h + dden * den  # dℓ_j

    # Carried state: num += (q exp(m_{k-1} - M_j)) C̄_in.
    dnum_carry = dnum * fac["carry"].view(-1, L, 1)
    dq = dnum_carry @ _flat(C_in).transpose(-1, -2)  # (BH nc, L, DK)
    if dC_last is None:
        dC_last = torch.zeros_like(C_last)
    dg, dC_inflow, dC0 = _scan_state_grads(qc, dnum_carry.view(BH, nc, L, DV + 1), dC_last, fac, C_in, C_last,
                                           layout.chunk_bounds)
    del dnum_carry, C_in

    # Intra-chunk part: num += tril((q exp(c - M_j)) kwᵀ) v.
    dnum_row = dnum * fac["row"].view(-1, L, 1)
    if fac["unsafe"] is None:
        del dnum
    dscores = (dnum_row @ _flat(vc).transpose(-1, -2)).tril_()  # (BH nc, L, L)
    scores = (_flat(qc) @ _flat(kw).transpose(-1, -2)).tril_()
    if fac["unsafe"] is not None:
        dscores[fac["unsafe"]] = 0.0
        scores[fac["unsafe"]] = 0.0
    dq.baddbmm_(dscores, _flat(kw))
    # The chunk's own inflow to the state it leaves: inflow_k kwᵀ v.
    dC_inflow = _flat(dC_inflow)  # (BH nc, DK, DV+1) gradient on the chunk's unweighted update kwᵀ v
    dkw = (dscores.transpose(-1, -2) @ _flat(qc)).baddbmm_(_flat(vc), dC_inflow.transpose(-1, -2))
    del dscores
    dv = (scores.transpose(-1, -2) @ dnum_row).baddbmm_(_flat(kw), dC_inflow)  # (BH nc, L, DV+1)
    del scores, dnum_row, dC_inflow
    dk = dkw * fac["w"].view(-1, L, 1)
    du = (dkw * _flat(kw)).sum(-1)  # (BH nc, L)  kw_l ∝ exp(u_l)
    del dkw
    if fac["unsafe"] is not None:
        sel = fac["unsafe"]
        with _differentiable():
            leaves = [_flat(x)[sel].detach().requires_grad_(True) for x in (qc, kc, vc, st["u"])]
            num_u = _intra_log_weights(*leaves, st["M"].reshape(-1, L)[sel], DK)
            gq, gk, gv, gu = torch.autograd.grad(num_u, leaves, dnum[sel])
        dq[sel] += gq
        dk[sel] += gk
        dv[sel] += gv
        du[sel] += gu.to(dtype)

    # Gate gradients in float64: ℓ_j = b_j - m_j, u_l = ĩ_l - b_l, g = b_L, b = cumsum(logσ(f̃)).
    db = (dl - du).double().view(BH, nc, L)
    db[..., -1] += dg.double()
    dlog_f = reverse_cumsum(db).reshape(BH, nc * L)
    di = layout.unpad(du.double().reshape(BH, nc * L))  # (BH, S)
    df = layout.unpad(dlog_f * torch.sigmoid(-f64))

    # Stabiliser path (module docstring): h_j depends on m_j through eps; the returned m is an
    # output and the returned C̄, n̄ carry exp(-m); dm0 also collects the initial state's scale.
    dm_step = (-eps * dh_dot_h / Q).double().view(BH, nc, L)
    dm_final = -_dot(dC_last, C_last)  # (BH, D)
    if dm_last is not None:
        dm_final = dm_final + dm_last
    dm0 = _dot(dC0, C0).double()  # (BH, D)
    if eps != 0.0 or bool((dm_final != 0).any()):
        gi, gf, gm0 = _stabiliser_grads(i, f, m0, layout, dm_step, dm_final.double())
        di += gi
        df += gf
        dm0 = dm0 + gm0

    return [dq, dk, dv, di.reshape(B, NH, S).to(dtype).contiguous(), df.reshape(B, NH, S).to(dtype).contiguous(),
            dC0.contiguous(), dm0.to(dtype).contiguous()]


@_chunkwise_backward.register_fake
def _backward_shapes(qc, kc, vc, i, f, C0, m0, h_pad, den, Q, dh, dC_last, dm_last, S, eps, cu_seqlens):
    B, NH = i.shape[:2]
    BH, nc, L, DK = qc.shape
    return [qc.new_empty(BH * nc, L, DK), qc.new_empty(BH * nc, L, DK), qc.new_empty(BH * nc, L, vc.shape[-1]),
            qc.new_empty(B, NH, S), qc.new_empty(B, NH, S), torch.empty_like(C0, memory_format=torch.contiguous_format),
            qc.new_empty(m0.shape)]


class _Forward:
    """What the forward and the backward both compute: gate statistics, chunked inputs, chunk states."""

    def __init__(self, qc, kc, vc, i, f, C0, m0, layout: _Layout):
        """qc, kc (BH, nc, L, DK) and vc (BH, nc, L, DV+1) chunked by ``_chunks``; the rest as the op's inputs."""
        self.layout = layout
        self.i64, self.f64 = _padded_gates(i, f, layout)
        self.st = _gate_stats(self.i64, self.f64, m0.double(), layout.L, layout.chunk_bounds)
        self.fac = _chunk_factors(self.st, qc.dtype, qc.shape[-1])
        self.kw = kc * self.fac["w"][..., None]  # (BH, nc, L, DK)  k_l exp(u_l - c) / sqrt(DK)
        self.C_in, self.C_last = _scan_states(kc * self.fac["w_state"][..., None], vc, self.fac, C0,
                                              layout.chunk_bounds)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(BH, nc, ...) -> (BH nc, ...): batched matrix products run over all chunks at once."""
    return x.reshape(-1, *x.shape[2:])


def _padded_gates(i, f, layout: _Layout):
    """Gates (B, NH, S) -> (BH, nc·L) in float64, padded with a no-op step (ĩ = -inf: nothing
    written; f̃ = +inf: nothing forgotten). Differentiable."""
    S = i.shape[-1]
    # contiguous: gates cut from a (B, S, NH) layer output are strided views, which .double() keeps
    # strided; later .view calls on these (B = 1, no padding) would fail.
    i, f = (x.reshape(-1, S).double().contiguous() for x in (i, f))
    return layout.pad(i, float("-inf")), layout.pad(f, float("inf"))


def _stabiliser_grads(i, f, m0, layout: _Layout, dm_step, dm_final):
    """Backpropagate gradients on the stabilisers (per-step m and each document's final m) to
    (ĩ (BH, S), f̃ (BH, S), m0 (BH, D)), in float64."""
    with _differentiable():
        i_leaf, f_leaf, m0_leaf = (x.detach().double().requires_grad_(True) for x in (i, f, m0))
        st = _gate_stats(*_padded_gates(i_leaf, f_leaf, layout), m0_leaf, layout.L, layout.chunk_bounds)
        gi, gf, gm0 = torch.autograd.grad((st["m_step"], st["m_chunk"][:, layout.last_chunks]),
                                          (i_leaf, f_leaf, m0_leaf), (dm_step, dm_final))
    return gi.reshape(-1, layout.S), gf.reshape(-1, layout.S), gm0


@contextlib.contextmanager
def _differentiable():
    """``torch.enable_grad()`` that also works inside a custom op: the dispatcher runs an op's body below
    the autograd keys (they sit in the thread's exclude set there), where tensors record no graph even
    with grad mode on. The backward differentiates two small float64 pieces (the stabilisers, the few
    unfactorised chunks) with autograd, so it lifts that exclusion for them."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.AutogradOther,
                torch._C.DispatchKey.AutogradNestedTensor):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def _exp(x64, dtype):
    return torch.exp(x64).to(dtype)


def _chunk_factors(st, dtype, DK: int):
    """exp-factors of the chunkwise form in the compute dtype (all <= 1 except the row factor)."""
    c, M, g = st["c"], st["M"], st["g"]
    row_exponent = c[..., None] - M  # (BH, nc, L)
    unsafe = row_exponent.amax(-1) > SAFE_EXPONENT  # (BH, nc)
    return dict(
        w=_exp(st["u"] - c[..., None] - 0.5 * math.log(DK), dtype),  # (BH, nc, L) exp(u_l - c) / sqrt(DK)
        # (BH, nc, L) w_l η_k = exp(u_l + g - m_k) / sqrt(DK): weight of step l in the state leaving its chunk
        w_state=_exp(st["u"] + (g - st["m_chunk"])[..., None] - 0.5 * math.log(DK), dtype),
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


def _chunk_products(a, b):
    """The per-chunk products aᵀ b of a (BH, nc, L, X) and b (BH, nc, L, Y) for the scans below, as a function of
    the chunk index that writes its (BH, X, Y) product plus ``addend * scale`` into ``out``.

    Small states (X·Y < ``FUSED_SCAN_MIN``) take every product in one batched call up front: one large call runs
    faster than nc small ones. Large states on a CPU take each product inside the scan step, while the chunk's
    slot of the state is in cache: one (BH, nc, X, Y) tensor less to write and read back, which at DK = DV = 256
    makes the forward's state scan 1.6x as fast (benchmarks/RESULTS.md, "the state scans at large head dims").
    Other devices keep the batched call (one kernel instead of nc; the in-step form is unmeasured there)."""
    if a.device.type != "cpu" or a.shape[-1] * b.shape[-1] < FUSED_SCAN_MIN:
        products = (a.transpose(-1, -2) @ b).unbind(1)  # (BH, X, Y) per chunk

        def step(kk, out, addend, scale):
            torch.addcmul(products[kk], addend, scale, out=out)
    else:
        a_t, b_k = a.transpose(-1, -2).unbind(1), b.unbind(1)

        def step(kk, out, addend, scale):
            torch.mul(addend, scale, out=out)
            out.baddbmm_(a_t[kk], b_k[kk])
    return step


def _scan_states(kw_state, vc, fac, C0, chunk_bounds):
    """C_in[:, k] is the state entering chunk k; C_last[:, d] the state after document d's last chunk.

    kw_state: (BH, nc, L, DK) keys times ``w_state`` (= kw times the chunk's inflow weight η_k: scaling the
    (L, DK) keys costs less than scaling the (DK, DV+1) updates); vc: (BH, nc, L, DV+1); C0: (BH, D, DK, DV+1)
    each document's initial state. C̄_{k+1} = decay_k C̄_k + η_k kw_kᵀ v_k within a document; a document's
    first chunk takes the document's initial state instead. The per-chunk views are taken once (``unbind``),
    so each step of the loop is one or two fused ops: the loop is dispatch-bound at small head dims.
    """
    BH, nc = kw_state.shape[:2]
    step = _chunk_products(kw_state, vc)
    C_in = C0.new_empty(BH, nc, *C0.shape[2:])
    C_last = torch.empty_like(C0)
    states = C_in.unbind(1)
    decay = fac["decay"][..., None, None].unbind(1)
    for d, (k0, k1) in enumerate(zip(chunk_bounds[:-1], chunk_bounds[1:])):
        states[k0].copy_(C0[:, d])
        for kk in range(k0, k1 - 1):
            step(kk, states[kk + 1], states[kk], decay[kk])
        step(k1 - 1, C_last[:, d], states[k1 - 1], decay[k1 - 1])
    return C_in, C_last


def _scan_state_grads(qc, dnum_carry, dC_last, fac, C_in, C_last, chunk_bounds):
    """Reverse of ``_scan_states``; dC_last (BH, D, DK, DV+1) is the gradient on each document's final state.

    qc (BH, nc, L, DK) and dnum_carry (BH, nc, L, DV+1) give each chunk's gradient on the state entering it
    through its carried-state term: into_k = q_kᵀ dnum_carry_k. Walking back over each document's chunks, the
    gradient on the state leaving chunk k is dC̄_end_k = decay_{k+1} dC̄_end_{k+1} + into_{k+1}. Returns, per
    chunk, dg_k = <dC̄_end_k, C̄_end_k> (BH, nc) (both parts of the state leaving chunk k are ∝ exp(g_k); that
    state is the next chunk's input C_in, or for a document's last chunk its final state C_last), dC̄_end_k
    times the chunk's inflow weight (BH, nc, DK, DV+1) (the gradient on its update kwᵀ v), and the gradient on
    C0 (BH, D, DK, DV+1). Each chunk's inner product and scaling run while its dC̄_end was just written (the
    state-sized tensors are the largest of the backward: one pass over them each, not three), and dC̄_end
    itself is never stored whole: its slot becomes the scaled gradient once the next step has read it.
    """
    BH, nc = qc.shape[:2]
    step = _chunk_products(qc, dnum_carry)
    dC_inflow = torch.empty_like(C_in)
    dC0 = torch.empty_like(dC_last)
    dg = [None] * nc  # per chunk (BH,)
    ends, inflow = dC_inflow.unbind(1), fac["inflow"][..., None, None].unbind(1)
    decay = fac["decay"][..., None, None].unbind(1)
    for d, (k0, k1) in enumerate(zip(chunk_bounds[:-1], chunk_bounds[1:])):
        ends[k1 - 1].copy_(dC_last[:, d])
        for kk in range(k1 - 1, k0 - 1, -1):  # ends[kk] holds dC̄_end_k here
            dg[kk] = _dot(ends[kk], C_last[:, d] if kk == k1 - 1 else C_in[:, kk + 1])  # <dC̄_end_k, C̄_end_k>
            before = ends[kk - 1] if kk > k0 else dC0[:, d]  # the gradient on the state entering chunk kk
            step(kk, before, ends[kk], decay[kk])
            ends[kk].mul_(inflow[kk])
    return torch.stack(dg, dim=1), dC_inflow, dC0


def mlstm_chunkwise(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6, chunk_size: int = 64,
                    cu_seqlens: tuple[int, ...] | None = None):
    """Same contract as ``mlstm_reference``: returns (h (B, NH, S, DV), final MLSTMState).

    With ``cu_seqlens`` (B == 1) state rows are documents (module docstring), else batch rows.
    """
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    longest = S if cu_seqlens is None else max(b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]))
    L = min(chunk_size, longest)
    D = 1 if cu_seqlens is None else len(cu_seqlens) - 1
    rows = B * D  # rows of the state: batch rows, or documents
    if state is None:
        C0 = q.new_zeros(B * NH, D, DK, DV + 1)
        m0 = q.new_full((B * NH, D), float("-inf"))
    else:
        # (B·D, NH, ...) -> (BH, D, ...): one of B and D is 1. n̄ rides along as column DV of C̄.
        C0 = torch.cat([state.C, state.n[..., None]], dim=-1).view(B, D, NH, DK, DV + 1).transpose(1, 2)
        C0 = C0.reshape(B * NH, D, DK, DV + 1)
        m0 = state.m.view(B, D, NH).transpose(1, 2).reshape(B * NH, D)
    h, C, m = ChunkwiseMLSTM.apply(q, k, v, i, f, C0, m0, L, eps, cu_seqlens)
    C = C.view(B, NH, D, DK, DV + 1).transpose(1, 2).reshape(rows, NH, DK, DV + 1)
    m = m.view(B, NH, D).transpose(1, 2).reshape(rows, NH)
    return h, MLSTMState(C[..., :DV], C[..., DV], m)
