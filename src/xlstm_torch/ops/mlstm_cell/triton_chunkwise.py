"""mLSTM chunkwise form as Triton kernels: the GPU path (``backend="triton"``).

The same algorithm as chunkwise.py (MATH.md "Chunkwise form"; TFLA paper, Beck et al. 2025, Sec. 3)
with the matrix work in six kernels (_triton_chunkwise_kernels.py):

    forward   fwd_states  scan over chunks: the state C̄, n̄ entering each chunk (fp32)
              fwd_out     per chunk and query tile: carried state + causal intra-chunk part -> h
    backward  bwd_states  reverse scan: gradient on the state leaving each chunk
              bwd_dq      per query tile: dq
              bwd_dk      per key tile: dk
              bwd_dv      per key tile: dv

The O(S) gate numbers (cumulative log forget gates, stabilisers) are shared with chunkwise.py and
computed there in float64 (``_gate_stats``); the kernels get them as fp32 per-step factors, each
<= 1 or a log-weight relative to its chunk's maximum, so no exponent leaves the float32 range:

    u_l - c   and   M_j - c      intra weight w_jl = exp(u_l - M_j) / sqrt(DK) computed on chip
    carry_j = exp(m_{k-1} - M_j) weight of the carried state on step j
    inw_l   = exp(g + u_l - m_k) / sqrt(DK)   weight of step l in the state leaving chunk k
    decay_k = exp(g + m_{k-1} - m_k)          per chunk

Unlike the factorised CPU form, the kernels exponentiate the L x L log-weights tile by tile, so no
chunk needs a fallback for wildly swinging gates. The backward recomputes the chunk states (one
more forward scan) instead of storing them, and returns the exact gradient of the definition with
the same bookkeeping as chunkwise.py: the normaliser's max and |.|, and the stabiliser paths (eps,
the returned m) included. The gradient on each chunk's total log forget gate comes either from the
states (<dC̄, C̄> in the reverse scan: the default) or, with ``GATE_GRADIENTS_FROM_PRODUCTS``, from the
products q·dq - k·dk of the steps after the chunk (every weight is ∝ exp(F_j - F_l) in the cumulative log
forget gates F), which needs no fp32 state in the backward and so also allows ``KEEP_CHUNK_STATES``
(the forward's states kept in the operand dtype, no recompute); both equal the exact gradient (tests run
all three ways). The chunk size L is independent of the on-chip tiles; any S (the last
chunk padded with no-op steps) and packed documents (``cu_seqlens``, each document from a chunk
start, as in chunkwise.py's ``_Layout``) work.
"""

from __future__ import annotations

import functools
import math

import torch

from .._checks import state_dtype
from .._packing import host_to_device
from .._triton import require_triton
from .chunkwise import _Layout, _gate_stats, _padded_gates, _stabiliser_grads, reverse_cumsum
from .state import MLSTMState, normaliser_floor


@functools.cache
def _kernels():
    from . import _triton_chunkwise_kernels

    return _triton_chunkwise_kernels


def _pow2_tile(n: int, cap: int) -> int:
    """A power-of-two tile of at least 16 (tl.dot's minimum) covering n, at most cap."""
    return min(cap, max(16, 1 << (n - 1).bit_length()))


class _Plan:
    """Everything both passes need: padded inputs, per-step gate factors, document flags, tiles."""

    def __init__(self, q, k, v, i, f, m0, L: int, cu_seqlens):
        B, NH, S, DK = q.shape
        DV = v.shape[-1]
        BH = B * NH
        self.B, self.NH, self.S, self.DK, self.DV, self.BH = B, NH, S, DK, DV, BH
        self.layout = layout = _Layout(S, L, cu_seqlens, q.device)
        self.L, self.nc, self.S_pad = L, layout.nc, layout.S_pad
        self.sdtype = sdtype = state_dtype(q.dtype)
        self.q, self.k, self.v = (layout.pad(x.reshape(BH, S, x.shape[-1])).contiguous() for x in (q, k, v))

        self.i64, self.f64 = _padded_gates(i, f, layout)
        st = _gate_stats(self.i64, self.f64, m0.double(), L, layout.chunk_bounds)
        c = st["c"][..., None]  # (BH, nc, 1)
        half_log_dk = 0.5 * math.log(DK)
        g = st["g"][..., None]

        def flat(x):  # (BH, nc, L) float64 -> (BH, nc·L) in the state dtype
            return x.reshape(BH, -1).to(sdtype).contiguous()

        def two_term(x):  # (BH, nc, L) float64 -> (2, BH, nc·L): hi + lo (see _intra_weights)
            hi = x.to(sdtype)
            return torch.stack([hi, torch.nan_to_num(x - hi.double()).to(sdtype)]).reshape(2, BH, -1).contiguous()

        self.u = two_term(st["u"] - c - half_log_dk)
        self.M = two_term(st["M"] - c)
        self.carry = flat(torch.exp(st["m_prev"][..., None] - st["M"]))
        self.inw = flat(torch.exp(g + st["u"] - st["m_chunk"][..., None] - half_log_dk))
        self.decay = torch.exp(st["g"] + st["m_prev"] - st["m_chunk"]).to(sdtype).contiguous()  # (BH, nc)
        self.floor = normaliser_floor(st["m_step"], sdtype).reshape(BH, -1).contiguous()
        self.m_last = st["m_chunk"][:, layout.last_chunks]  # (BH, D) float64

        first, last = [-1] * self.nc, [-1] * self.nc  # per chunk: the document it starts / ends, else -1
        for d, (k0, k1) in enumerate(zip(layout.chunk_bounds[:-1], layout.chunk_bounds[1:])):
            first[k0], last[k1 - 1] = d, d
        self.first, self.last = (host_to_device(x, q.device, torch.int32) for x in (first, last))
        self.D = len(layout.chunk_bounds) - 1

        # fp32/fp64 inputs: exact products (tf32 would cost ~1e-3 relative); bf16/fp16 products are exact anyway.
        self.precision = "ieee" if sdtype == q.dtype else "tf32"
        self.cfg = launch_configs(q.element_size(), DK, DV, L, large_shared_memory(q.device))

    def launch(self, name: str, *args, **constexprs):
        """Launch kernel ``name`` with its tiles and warps (``launch_configs``) on its grid."""
        cfg = self.cfg[name]
        rows = self.BH if name.endswith("states") else self.BH * self.nc  # scans: one program per (b, h) row
        # fwd_out and dq own query tiles (BQ), dk and dv key tiles (BT)
        tiles_in_chunk = () if name.endswith("states") else (
            triton_cdiv(self.L, cfg["BQ" if name in ("fwd_out", "bwd_dq") else "BT"]),)
        dims = tuple(triton_cdiv(self.DK if t == "BK" else self.DV, cfg[t]) for t in _HEAD_DIM_SPLITS[name])
        getattr(_kernels(), name + "_kernel")[(rows, *tiles_in_chunk, *dims)](*args, **cfg, **constexprs,
                                                                               PRECISION=self.precision)

    def states(self, C0, n0, C_dtype: torch.dtype):
        """Forward scan: C̄, n̄ entering every chunk (BH, nc, DK, DV), (BH, nc, DK), and each document's last.

        C̄ is stored in ``C_dtype``: the input dtype where only matrix products read it (they take their
        operands in that dtype, so rounding at the store gives them the same numbers and halves the
        traffic of bf16/fp16), the state dtype where the reverse scan needs it exactly. The scan itself,
        n̄ and the returned final states stay in the state dtype."""
        BH, nc, DK, DV = self.BH, self.nc, self.DK, self.DV
        Cin = torch.empty(BH, nc, DK, DV, dtype=C_dtype, device=self.q.device)
        nin = torch.empty(BH, nc, DK, dtype=self.sdtype, device=self.q.device)
        Clast, nlast = torch.empty_like(C0), torch.empty_like(n0)
        self.launch("fwd_states", self.k, self.v, self.inw, self.decay, self.first, self.last, C0, n0, Cin, nin,
                    Clast, nlast, nc, self.L, self.D, DK, DV)
        return Cin, nin, Clast, nlast


# Which head dims each kernel's grid splits into tiles (its last grid axes).
_HEAD_DIM_SPLITS = {"fwd_states": ("BK", "BV"), "bwd_states": ("BK", "BV"), "fwd_out": ("BV",), "bwd_dq": ("BK",),
                    "bwd_dk": ("BK",), "bwd_dv": ("BV",)}

# Tuning hook: {kernel name: {launch parameter: value}} applied over the defaults (benchmarks use it).
CONFIG_OVERRIDES: dict[str, dict] = {}

# How the backward forms the gradient on each chunk's total log forget gate g_k (module docstring):
# False: dg_k = <dC̄_end_k, C̄_end_k> in the reverse scan, which reads the recomputed fp32 states (timed on
# an H100 and an H200); True: from Σ (q·dq - k·dk) over the steps after chunk k in its document, per-step
# terms from the dq and dk kernels' fp32 accumulators, summed in float64: the reverse scan reads no state
# and the recomputed C̄ is stored in the operand dtype (tested here; not yet timed on a GPU).
GATE_GRADIENTS_FROM_PRODUCTS = False
# With the above: keep the forward's chunk states for the backward instead of recomputing them (one scan
# less; memory BH·nc·DK·DV in the operand dtype, at DK 128, DV 256, L 128 half of q, k, v's). Not timed yet.
KEEP_CHUNK_STATES = False


@functools.cache
def large_shared_memory(device: torch.device) -> bool:
    """Whether a block may use Hopper-class shared memory (>= 200 KiB; an A100 has 163, most others less)."""
    if device.type != "cuda":
        return False
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", 0) >= 200 * 1024


def launch_configs(element_size: int, DK: int, DV: int, L: int, large_smem: bool = False) -> dict[str, dict]:
    """Tiles and warps per kernel. Tiles shrink with the element size so the operands fit in shared
    memory (fp64: 4x bf16's bytes); the scans take smaller tiles for more programs in parallel.
    With ``large_smem`` (``large_shared_memory``) fwd_out and dv take value tiles of 256 in bf16/fp16."""
    cap = {2: 128, 4: 64, 8: 32}[element_size]
    wide = 256 if large_smem and element_size == 2 else cap

    def tile(n: int, want: int, limit: int = cap) -> int:
        return _pow2_tile(n, min(want, limit))

    # Swept on an H100 in bf16 at NH 16, DK 128, DV 256, L 128, S 8k and 64k (benchmarks/tune_triton.py,
    # RESULTS.md): the scans want narrow DK tiles (more programs), dq narrow DV tiles, dk 64-query
    # tiles, fwd_out and dv all of DV at once where it fits.
    BV_out = tile(DV, 256, wide)
    cfg = {
        "fwd_states": dict(BK=tile(DK, 32), BV=tile(DV, 64), BT=tile(L, 128), num_warps=4, num_stages=2),
        "bwd_states": dict(BK=tile(DK, 64), BV=tile(DV, 64), BT=tile(L, 64), num_warps=4, num_stages=2),
        # fwd_out: one stage. With two, 8 warps and 16-bit carried states, Triton 3.6 compiled it wrong on an
        # H200 (h off by ~50% at DK 128, DV 256; test_benchmark_shape_in_16_bit); one stage is right and faster.
        "fwd_out": dict(BQ=tile(L, 64), BT=tile(L, 64), BK=tile(DK, 128), BV=BV_out, num_warps=8 if BV_out > 128 else 4,
                        num_stages=1),
        "bwd_dq": dict(BQ=tile(L, 128), BT=tile(L, 128), BK=tile(DK, 128), BV=tile(DV, 64), num_warps=8, num_stages=2),
        "bwd_dk": dict(BQ=tile(L, 64), BT=tile(L, 128), BK=tile(DK, 128), BV=tile(DV, 128), num_warps=8, num_stages=2),
        "bwd_dv": dict(BQ=tile(L, 64), BT=tile(L, 64), BK=tile(DK, 128), BV=tile(DV, 256, wide), num_warps=8,
                       num_stages=2),
    }
    for name, override in CONFIG_OVERRIDES.items():
        cfg[name].update(override)
    return cfg


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class TritonChunkwiseMLSTM(torch.autograd.Function):
    """h and the final state from q, k, v (B, NH, S, D), i, f (B, NH, S), and the documents' initial
    states C0 (BH, D, DK, DV), n0 (BH, D, DK), m0 (BH, D); D = 1 unless packed."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, chunk_size: int, eps: float, cu_seqlens):
        plan = _Plan(q, k, v, i, f, m0, chunk_size, cu_seqlens)
        BH, nc, L, DV = plan.BH, plan.nc, plan.L, plan.DV
        Cin, nin, Clast, nlast = plan.states(C0, n0, q.dtype)  # read only by fwd_out's products
        h_pad = torch.empty(BH, plan.S_pad, DV, dtype=q.dtype, device=q.device)
        den = torch.empty(BH, plan.S_pad, dtype=plan.sdtype, device=q.device)
        plan.eps = torch.full((1,), eps, dtype=plan.sdtype, device=q.device)
        plan.launch("fwd_out", plan.q, plan.k, plan.v, plan.u, plan.M, plan.carry, plan.floor, Cin, nin, h_pad, den,
                    plan.eps, nc, L, plan.DK, DV)
        h = plan.layout.unpad(h_pad).reshape(plan.B, plan.NH, plan.S, DV)
        # The backward reuses the O(S) gate numbers and padded inputs. The O(S DK DV / L) chunk states it
        # recomputes (one more scan), unless KEEP_CHUNK_STATES keeps the forward's (in the operand dtype: only
        # with the gate gradients from products, which need no fp32 state).
        plan.from_products = GATE_GRADIENTS_FROM_PRODUCTS
        keep = plan.from_products and KEEP_CHUNK_STATES
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h_pad, den, *((Cin, nin, Clast, nlast) if keep else ()))
        ctx.eps = eps
        ctx.plan = plan if any(ctx.needs_input_grad) else None
        return h, Clast, nlast, plan.m_last.to(plan.sdtype)

    @staticmethod
    def backward(ctx, dh, dC_last, dn_last, dm_last):
        q, k, v, i, f, C0, n0, m0, h_pad, den, *kept = ctx.saved_tensors
        eps, plan = ctx.eps, ctx.plan
        ctx.plan = None
        BH, nc, L, DK, DV, sd = plan.BH, plan.nc, plan.L, plan.DK, plan.DV, plan.sdtype
        layout = plan.layout
        from_products = plan.from_products
        # fp32 C̄ where the reverse scan forms <dC̄, C̄> from it, else only dq's products read it
        Cin, nin, Clast, nlast = kept if kept else plan.states(C0, n0, q.dtype if from_products else sd)

        # h_j = num_j / Q_j with Q_j = max(|den_j|, floor_j) + eps (chunkwise.py, same bookkeeping).
        if dh is None:
            dh = torch.zeros(plan.B, plan.NH, plan.S, DV, dtype=q.dtype, device=q.device)
        dh_pad = layout.pad(dh.reshape(BH, plan.S, DV).to(q.dtype)).contiguous()  # (BH, S_pad, DV)
        rQ, dden, dl, dh_dot_h = (torch.empty(BH, plan.S_pad, dtype=sd, device=q.device) for _ in range(4))
        N = BH * plan.S_pad
        _kernels().bwd_prep_kernel[(triton_cdiv(N, 64),)](dh_pad, h_pad, den, plan.floor, plan.eps, rQ, dden, dl,
                                                         dh_dot_h, N, DV, BR=64, BV=_pow2_tile(DV, 64))

        dC_last_given = dC_last is not None or dn_last is not None  # else m_final gets no gradient
        dC_last = torch.zeros_like(Clast) if dC_last is None else dC_last.contiguous()
        dn_last = torch.zeros_like(nlast) if dn_last is None else dn_last.contiguous()
        # dC̄ leaving each chunk: read only by dk's and dv's products, so stored in their operand dtype.
        dC_end, dn_end = torch.empty(BH, nc, DK, DV, dtype=q.dtype, device=q.device), torch.empty_like(nin)
        dC0, dn0 = torch.empty_like(C0), torch.empty_like(n0)
        scan_tiles = triton_cdiv(DK, plan.cfg["bwd_states"]["BK"]) * triton_cdiv(DV, plan.cfg["bwd_states"]["BV"])
        dg = nin if from_products else torch.empty(scan_tiles, BH, nc, dtype=sd, device=q.device)  # nin: unused
        plan.launch("bwd_states", plan.q, dh_pad, rQ, dden, plan.carry, plan.decay, plan.first, plan.last, dC_last,
                    dn_last, dC_end, dn_end, dC0, dn0, Cin, nin, Clast, nlast, dg, nc, L, plan.D, DK, DV,
                    GATE_DOT=not from_products)
        dq = torch.empty(BH, plan.S_pad, DK, dtype=q.dtype, device=q.device)
        dk = torch.empty_like(dq)
        dv = torch.empty(BH, plan.S_pad, DV, dtype=q.dtype, device=q.device)
        du = torch.empty(triton_cdiv(DK, plan.cfg["bwd_dk"]["BK"]), BH, plan.S_pad, dtype=sd, device=q.device)
        dl_q = (torch.empty(triton_cdiv(DK, plan.cfg["bwd_dq"]["BK"]), BH, plan.S_pad, dtype=sd, device=q.device)
                if from_products else dl)  # dl: unused
        plan.launch("bwd_dq", plan.q, plan.k, plan.v, dh_pad, rQ, dden, plan.u, plan.M, plan.carry, Cin, nin, dq,
                    dl_q, nc, L, DK, DV, STORE_DL=from_products)
        plan.launch("bwd_dk", plan.q, plan.k, plan.v, dh_pad, rQ, dden, plan.u, plan.M, plan.inw, dC_end, dn_end, dk,
                    du, nc, L, DK, DV)
        plan.launch("bwd_dv", plan.q, plan.k, dh_pad, rQ, plan.u, plan.M, plan.inw, dC_end, dv, nc, L, DK, DV)

        # Gate gradients in float64 (chunkwise.py): du_l = dk_l·k_l, dℓ_j = q_j·dq_j and dg_k come from the
        # kernels in parts (one per tile of the head dims).
        du = du.sum(0)  # (BH, S_pad)
        if from_products:
            # Every weight of key l on query j is ∝ exp(F_j - F_l) (F: cumulative log forget gates), so
            # dF_t = q_t·dq_t - k_t·dk_t, and each log forget gate collects dF of the steps from it to its
            # document's end; the returned state, ∝ exp(F) of the document's last step, adds its own term.
            dF = (dl_q.sum(0) - du).double()  # (BH, S_pad)
            if dC_last_given:
                dF[:, layout.last_steps] += _dot(dC_last, Clast, dn_last, nlast).double()
            dlog_f = layout.suffix_sums(dF)
        else:
            dg = dg.sum(0)  # (BH, nc)
            db = (dl - du).double().view(BH, nc, L)
            db[..., -1] += dg.double()
            dlog_f = reverse_cumsum(db).reshape(BH, nc * L)
        di = layout.unpad(du.double())  # (BH, S)
        df = layout.unpad(dlog_f * torch.sigmoid(-plan.f64))

        # Stabiliser path: h_j depends on m_j through eps; the returned m is an output and the returned
        # C̄, n̄ carry exp(-m); dm0 also collects the initial state's scale.
        dm_step = (-eps * dh_dot_h * rQ).double().view(BH, nc, L)
        dm_final = -_dot(dC_last, Clast, dn_last, nlast).double()
        if dm_last is not None:
            dm_final = dm_final + dm_last.double()
        dm0 = _dot(dC0, C0, dn0, n0).double()
        if eps != 0.0 or dC_last_given or dm_last is not None:
            gi, gf, gm0 = _stabiliser_grads(i, f, m0, layout, dm_step, dm_final)
            di = di + gi
            df = df + gf
            dm0 = dm0 + gm0

        def unpad(x, D):
            return layout.unpad(x).reshape(plan.B, plan.NH, plan.S, D)

        return (unpad(dq, DK), unpad(dk, DK), unpad(dv, DV), di.reshape(i.shape).to(i.dtype),
                df.reshape(f.shape).to(f.dtype), dC0, dn0, dm0.to(m0.dtype), None, None, None)


def _dot(C_a, C_b, n_a, n_b):
    """<C_a, C_b> + <n_a, n_b> over the state dims: (..., DK, DV) and (..., DK) -> (...)."""
    return torch.linalg.vecdot(C_a.flatten(-2), C_b.flatten(-2)) + torch.linalg.vecdot(n_a, n_b)


def mlstm_triton(q, k, v, i, f, state: MLSTMState | None = None, eps: float = 1e-6, chunk_size: int = 64,
                 cu_seqlens: tuple[int, ...] | None = None):
    """Same contract as ``mlstm_reference``, inputs in their own dtype (bf16/fp16/fp32/fp64).

    Returns h (B, NH, S, DV) in q's dtype and the final MLSTMState (fp32; fp64 for fp64 inputs).
    With ``cu_seqlens`` (B == 1) state rows are documents, else batch rows.
    """
    require_triton(q.device)
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    longest = S if cu_seqlens is None else max(b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]))
    L = min(chunk_size, longest)
    D = 1 if cu_seqlens is None else len(cu_seqlens) - 1
    sd = state_dtype(q.dtype)
    if state is None:
        C0 = q.new_zeros(B * NH, D, DK, DV, dtype=sd)
        n0 = q.new_zeros(B * NH, D, DK, dtype=sd)
        m0 = q.new_full((B * NH, D), float("-inf"), dtype=sd)
    else:
        # (B·D, NH, ...) -> (BH, D, ...): one of B and D is 1.
        def to_rows(x):
            return x.reshape(B, D, NH, *x.shape[2:]).transpose(1, 2).reshape(B * NH, D, *x.shape[2:]).contiguous()

        C0, n0, m0 = (to_rows(x) for x in state)
    h, C, n, m = TritonChunkwiseMLSTM.apply(q, k, v, i, f, C0, n0, m0, L, float(eps), cu_seqlens)

    def from_rows(x):
        return x.reshape(B, NH, D, *x.shape[2:]).transpose(1, 2).reshape(B * D, NH, *x.shape[2:])

    return h, MLSTMState(from_rows(C), from_rows(n), from_rows(m))
