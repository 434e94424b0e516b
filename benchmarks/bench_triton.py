"""GPU throughput of the mLSTM (xLSTM paper Sec. 2.3; chunkwise form App. A.3 and TFLA Sec. 3) in bfloat16.

One command, one Markdown table (issue 6, the GPU path), at a fixed 65,536 tokens per call:

    python benchmarks/bench_triton.py                 # S = 2048 .. 65536, B = 65536 / S; < 6 min on an H100
    python benchmarks/bench_triton.py --quick         # S = 2048, 16384, 65536; shorter timing windows
    python benchmarks/bench_triton.py --out bench.md  # the report to a file as well
    python benchmarks/bench_triton.py --smoke         # tiny float32 shapes (CPU: Triton interpreted): a test

Without CUDA (and without --smoke) it prints why and exits 0. Rows, for NH 16, DK 128, DV 256:

- ours triton L=64, L=128: ``xlstm_torch.ops.mlstm(..., backend="triton", chunk_size=L)`` (--chunk-sizes);
  with ``--triton-variants dot,products,kept`` also the backward's other ways (triton_chunkwise.py:
  ``GATE_GRADIENTS_FROM_PRODUCTS``, ``KEEP_CHUNK_STATES``), rows named "(gate grads from products)" and
  "(… , states kept)".
- mlstm_kernels TFLA L=128, L=256: the ``chunkwise--triton_xl_chunk`` kernel of the public
  ``mlstm-kernels`` package (q, k, v (B, NH, S, D), i, f (B, NH, S) pre-activations, same gate and
  normaliser conventions as ours), when it is importable; the row says so when it is not.
- SDPA causal, head dim 128 and 256: ``torch.nn.functional.scaled_dot_product_attention`` with the
  FlashAttention backend, NH 16, q = k = v width D. D = 256 matches the mLSTM's value width (the
  model width NH·DV = 4096 of a 7B model, what the layer outputs); D = 128 matches its key width.
  Both are shown because attention's cost grows with D while the mLSTM's inner products use DK.
- ours chunkwise eager, and under torch.compile: ``backend="chunkwise"`` (PyTorch, float32 inside,
  its matrix products in TF32 as is usual for float32 training on these GPUs), L=64. Its state scan is a Python loop over chunks, which torch.compile unrolls, so the compiled
  row runs in a child process with a time limit (--compile-timeout-s) and only at --compile-seq-lens;
  a compile error or timeout is recorded in the row.

Each row is timed forward (under torch.no_grad) and forward+backward (torch.autograd.grad of the
output against a fixed random cotangent, gradients of q, k, v, i, f). Timing on CUDA is
``triton.testing.do_bench`` (CUDA events, L2 flushed between calls, median); on the CPU (--smoke)
the median of a few wall-clock calls. Every configuration is guarded: an error or out-of-memory
writes "err" in its cells with the reason in the note, and the run goes on; past --budget-s the
remaining cells are skipped and say so. The first sequence length also checks each mLSTM row's
forward output against ours chunkwise in float32 (note: "rel err").

FLOP model (achieved TFLOP/s = FLOPs per call / median time; "% mm" is that over the card's bf16
matrix-product rate, measured first on an 8192 x 8192 x 8192 product):

    mLSTM, per token and head, chunk size L (the chunkwise algorithm's matrix products, counted as
    in bench_ops.py, with DK and DV apart):
        forward  = 2·L·(DK + DV)   intra-chunk Q Kᵀ and (gate-weighted) scores @ V over full L x L blocks
                 + 4·DK·DV         the chunk state update Kᵀ V and the carried-state output Q C̄
        backward = 2 x forward     (forward+backward = 3 x forward)
    causal attention, per call:
        forward  = 4·S²·D·NH·B / 2  Q Kᵀ and P V over the causal half
        backward = 2.5 x forward    (FlashAttention's count: five S x S products, Q Kᵀ recomputed)

Gates, normaliser and the scan over chunk states are lower order and not counted; the count
depends on L, so compare rows by tokens/s first.

Decode rows: one ``ops.mlstm_step`` per token at B 16, NH 8, DK 256, DV 512 (an xLSTM 7B-like
head), float32 inputs and state as the model calls it: the fused Triton step
(``backend="triton"``) against the torch step (``backend="recurrent"``), microseconds per step and
the state traffic (C̄ read and written once, float32) per second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

# Triton reads TRITON_INTERPRET when it is first imported (importing our ops imports it), so
# --smoke on a machine without CUDA sets it first: the Triton rows then run interpreted on the CPU.
if "--smoke" in sys.argv[1:] and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from xlstm_torch.ops import mlstm, mlstm_step, slstm  # noqa: E402

MODES = ("fwd", "fwd+bwd")
COLUMNS = ["implementation", "S", "B", "NH", "DK / DV", "fwd ms", "fwd+bwd ms", "fwd Mtok/s", "fwd+bwd Mtok/s",
           "fwd TFLOP/s (% mm)", "fwd+bwd TFLOP/s (% mm)", "note"]
DECODE_COLUMNS = ["step", "B", "NH", "DK", "DV", "µs / step", "state GB/s", "note"]
SLSTM_COLUMNS = ["sLSTM backend", "B", "S", "NH", "DH", "fwd ms", "fwd+bwd ms", "fwd+bwd Mtok/s", "note"]


@dataclass(frozen=True)
class Shape:
    """One benchmark shape: q, k (B, NH, S, DK), v (B, NH, S, DV); attention rows use DK = DV = D."""

    B: int
    NH: int
    S: int
    DK: int
    DV: int


@dataclass
class Impl:
    """One row family: ``build(shape, leaves) -> f()`` returns the output to time (and differentiate)."""

    name: str
    kind: str  # "mlstm" or "attention"
    chunk: int | None = None  # mLSTM chunk size L, for the FLOP count
    build: Callable | None = None
    skip: str | None = None  # reason the whole row family is not run
    notes: list = field(default_factory=list)


def mlstm_flops_per_token(NH: int, DK: int, DV: int, L: int) -> float:
    """Forward matrix-product FLOPs of the chunkwise mLSTM per token (all heads), chunk size L."""
    return NH * (2 * L * (DK + DV) + 4 * DK * DV)


def flops_per_call(impl: Impl, shape: Shape, mode: str) -> float:
    tokens = shape.B * shape.S
    if impl.kind == "mlstm":
        fwd = tokens * mlstm_flops_per_token(shape.NH, shape.DK, shape.DV, impl.chunk)
        return fwd * (3 if mode == "fwd+bwd" else 1)
    fwd = 4 * shape.S * shape.S * shape.DK * shape.NH * shape.B / 2
    return fwd * (3.5 if mode == "fwd+bwd" else 1)


# ---------------------------------------------------------------------------------------------- inputs


def mlstm_leaves(shape: Shape, dtype, device, seed=0) -> list[torch.Tensor]:
    """q, k (B, NH, S, DK), v (B, NH, S, DV), i, f (B, NH, S); f biased open as in a trained model."""
    g = torch.Generator(device=device).manual_seed(seed)
    B, NH, S, DK, DV = shape.B, shape.NH, shape.S, shape.DK, shape.DV
    q, k = (torch.randn(B, NH, S, DK, generator=g, device=device, dtype=dtype) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g, device=device, dtype=dtype)
    i = torch.randn(B, NH, S, generator=g, device=device, dtype=dtype)
    f = torch.randn(B, NH, S, generator=g, device=device, dtype=dtype) + 3.0
    return [x.requires_grad_(True) for x in (q, k, v, i, f)]


def attention_leaves(shape: Shape, dtype, device, seed=0) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape.B, shape.NH, shape.S, shape.DK, generator=g, device=device, dtype=dtype)
            .requires_grad_(True) for _ in range(3)]


# --------------------------------------------------------------------------------------- implementations


# --triton-variants: how our Triton backward forms the gate gradients, and whether it keeps the forward's states
TRITON_VARIANTS = {"dot": (False, False, ""), "products": (True, False, " (gate grads from products)"),
                   "kept": (True, True, " (gate grads from products, states kept)")}


@contextlib.contextmanager
def triton_variant(name: str):
    """Our Triton path's backward set to variant ``name`` while the forward runs (it records the choice)."""
    from xlstm_torch.ops.mlstm_cell import triton_chunkwise as tc

    saved = tc.GATE_GRADIENTS_FROM_PRODUCTS, tc.KEEP_CHUNK_STATES
    tc.GATE_GRADIENTS_FROM_PRODUCTS, tc.KEEP_CHUNK_STATES = TRITON_VARIANTS[name][:2]
    try:
        yield
    finally:
        tc.GATE_GRADIENTS_FROM_PRODUCTS, tc.KEEP_CHUNK_STATES = saved


def ours(backend: str, chunk: int, compiled: bool = False, variant: str = "dot") -> Impl:
    label = f"ours {backend}" + (" compiled" if compiled else (" eager" if backend == "chunkwise" else "")) + f" L={chunk}"
    label += TRITON_VARIANTS[variant][2]

    def build(shape, leaves):
        def call(q, k, v, i, f):
            if backend != "triton":
                return mlstm(q, k, v, i, f, backend=backend, chunk_size=chunk)
            with triton_variant(variant):
                return mlstm(q, k, v, i, f, backend=backend, chunk_size=chunk)
        if compiled:
            call = torch.compile(call)
        return lambda: call(*leaves)

    return Impl(label, "mlstm", chunk, build)


def tfla(chunk: int) -> Impl:
    name = f"mlstm_kernels TFLA L={chunk}"
    try:
        from mlstm_kernels.torch import get_mlstm_kernel

        kernel = get_mlstm_kernel("chunkwise--triton_xl_chunk")
    except Exception as e:  # not installed, or installed without Triton
        return Impl(name, "mlstm", chunk, skip=f"not importable: {type(e).__name__}: {e}"[:160])

    def build(shape, leaves):
        return lambda: kernel(*leaves, chunk_size=chunk)

    return Impl(name, "mlstm", chunk, build)


def sdpa(head_dim: int, device: torch.device) -> Impl:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # FlashAttention on CUDA; the CPU (--smoke) has only the math backend.
    backend = SDPBackend.FLASH_ATTENTION if device.type == "cuda" else SDPBackend.MATH

    def build(shape, leaves):
        def call():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(*leaves, is_causal=True)
        return call

    return Impl(f"SDPA causal D={head_dim}", "attention", None, build)


# ------------------------------------------------------------------------------------------------ timing


def median_ms(fn: Callable, device: torch.device, warmup_ms: float, rep_ms: float, cpu_reps: int) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    times = []
    for _ in range(cpu_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def timed_call(make_out: Callable, leaves: list[torch.Tensor], mode: str, seed=1) -> Callable:
    """The callable to time: the forward under no_grad, or forward + backward from a fixed cotangent."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return make_out()
        return fwd
    with torch.no_grad():
        out = make_out()
    cotangent = torch.randn(out.shape, generator=torch.Generator(device=out.device).manual_seed(seed),
                            device=out.device, dtype=out.dtype)
    del out

    def fwd_bwd():
        return torch.autograd.grad(make_out(), leaves, cotangent)
    return fwd_bwd


def matmul_tflops(device: torch.device, dtype, n: int, args) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    ms = median_ms(lambda: a @ b, device, args.warmup_ms, args.rep_ms, args.cpu_reps)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("|", "/").replace("\n", " ")
    return text[:160] + ("…" if len(text) > 160 else "")


def release(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- the table


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def relative_error(impl: Impl, shape: Shape, dtype, device) -> str:
    """Forward h of one batch row against ours chunkwise on the same inputs in float32."""
    one = Shape(1, shape.NH, shape.S, shape.DK, shape.DV)
    leaves = [x.detach() for x in mlstm_leaves(one, dtype, device, seed=7)]
    with torch.no_grad():
        h = impl.build(one, leaves)().float()
        ref = mlstm(*(x.float() for x in leaves), backend="chunkwise")
    err = ((h - ref).abs().max() / ref.abs().max()).item()
    return f"rel err {err:.1e} vs chunkwise fp32"


def run_row(impl: Impl, shape: Shape, dtype, device, args, mm: float, budget: Budget, check: bool) -> dict:
    row = {"implementation": impl.name, "S": shape.S, "B": shape.B, "NH": shape.NH,
           "DK / DV": f"{shape.DK} / {shape.DV}", "note": []}
    if impl.skip:
        row["note"].append(impl.skip)
        return row
    for mode in args.modes:
        if budget.left() <= 0:
            row[mode] = "skipped"
            row["note"].append(f"{mode}: skipped (time budget --budget-s spent)")
            continue
        try:
            make = attention_leaves if impl.kind == "attention" else mlstm_leaves
            leaves = make(shape, dtype, device)
            fn = timed_call(impl.build(shape, leaves), leaves, mode)
            ms = median_ms(fn, device, args.warmup_ms, args.rep_ms, args.cpu_reps)
            row[mode] = ms
            row[f"{mode} tflops"] = flops_per_call(impl, shape, mode) / (ms * 1e-3) / 1e12
        except Exception as e:  # OOM, compile or kernel errors: recorded, the run goes on
            row[mode] = "err"
            row["note"].append(f"{mode}: {short_error(e)}")
        finally:
            leaves = fn = None
            release(device)
        print(f"  {impl.name} S={shape.S} {mode}: {row[mode] if isinstance(row[mode], str) else f'{row[mode]:.3f} ms'}",
              file=sys.stderr, flush=True)
    if check and impl.kind == "mlstm" and isinstance(row.get("fwd"), float):
        try:
            row["note"].append(relative_error(impl, shape, dtype, device))
        except Exception as e:
            row["note"].append(f"check: {short_error(e)}")
    return row


def format_row(row: dict, mm: float) -> list[str]:
    cells = [row["implementation"], str(row["S"]), str(row["B"]), str(row["NH"]), row["DK / DV"]]
    times, rates, flops = [], [], []
    for mode in MODES:
        value = row.get(mode, "—")
        if isinstance(value, float):
            times.append(f"{value:.3f}")
            rates.append(f"{row['B'] * row['S'] / (value * 1e-3) / 1e6:,.2f}")
            tf = row[f"{mode} tflops"]
            flops.append(f"{tf:.1f} ({100 * tf / mm:.0f}%)")
        else:
            times.append(value)
            rates.append(value)
            flops.append(value)
    return cells + times + rates + flops + ["; ".join(row["note"])]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def decode_rows(args, device) -> list[list[str]]:
    B, NH, DK, DV = args.decode_shape
    g = torch.Generator(device=device).manual_seed(3)
    q, k = (torch.randn(B, NH, DK, generator=g, device=device) for _ in range(2))
    v = torch.randn(B, NH, DV, generator=g, device=device)
    i = torch.randn(B, NH, generator=g, device=device)
    f = torch.randn(B, NH, generator=g, device=device) + 3.0
    state = (torch.randn(B, NH, DK, DV, generator=g, device=device), torch.randn(B, NH, DK, generator=g, device=device),
             torch.randn(B, NH, generator=g, device=device))
    state_bytes = 2 * B * NH * DK * DV * 4  # C̄ read once and written once, float32
    outputs, rows = {}, []
    for backend in ("triton", "recurrent"):
        note = []
        try:
            with torch.no_grad():
                step = lambda: mlstm_step(q, k, v, i, f, state, backend=backend)  # noqa: E731
                outputs[backend] = step()[0]
                us = 1e3 * median_ms(step, device, args.warmup_ms, args.rep_ms, args.cpu_reps)
            cells = [f"{us:,.1f}", f"{state_bytes / (us * 1e-6) / 1e9:,.0f}"]
        except Exception as e:
            cells = ["err", "err"]
            note.append(short_error(e))
        if backend == "recurrent" and "triton" in outputs and "recurrent" in outputs:
            ref = outputs["recurrent"]
            err = ((outputs["triton"] - ref).abs().max() / ref.abs().max()).item()
            rows[0][-1] = f"h rel err {err:.1e} vs the torch step"
        label = "triton (fused kernel)" if backend == "triton" else "torch step (recurrent)"
        rows.append([label, str(B), str(NH), str(DK), str(DV), *cells, "; ".join(note)])
        release(device)
    return rows


def slstm_rows(args, device, dtype) -> list[list[str]]:
    """The sLSTM (strictly recurrent, xLSTM paper Sec. 2.2): Triton kernels vs the recurrent PyTorch form."""
    B, S, NH = args.slstm_shape
    rows = []
    for DH in args.slstm_head_dims:
        g = torch.Generator(device=device).manual_seed(4)
        wx = torch.randn(B, S, NH, 4, DH, generator=g, device=device).to(dtype).requires_grad_(True)
        r = (torch.randn(NH, 4, DH, DH, generator=g, device=device) / DH**0.5).to(dtype).requires_grad_(True)
        b = torch.zeros(NH, 4, DH, device=device, dtype=dtype, requires_grad=True)
        outputs = {}
        for backend in ("triton", "recurrent"):
            note, cells = [], []
            try:
                outputs[backend] = slstm(wx, r, b, backend=backend).detach().float()
                fwd = lambda: slstm(wx, r, b, backend=backend)  # noqa: E731
                fwd_bwd = lambda: torch.autograd.grad(slstm(wx, r, b, backend=backend).float().sum(), (wx, r, b))  # noqa: E731
                ms = [median_ms(fn, device, args.warmup_ms, args.rep_ms, args.cpu_reps) for fn in (fwd, fwd_bwd)]
                cells = [f"{ms[0]:.3f}", f"{ms[1]:.3f}", f"{B * S / (ms[1] * 1e-3) / 1e6:.2f}"]
            except Exception as e:
                cells = ["err"] * 3
                note.append(short_error(e))
            if backend == "recurrent" and len(outputs) == 2:
                ref = outputs["recurrent"]
                note.append(f"h rel err {((outputs['triton'] - ref).abs().max() / ref.abs().max()).item():.1e} "
                            "triton vs recurrent")
            rows.append([backend, str(B), str(S), str(NH), str(DH), *cells, "; ".join(note)])
            release(device)
    return rows


# Triton 3.6's bundled LLVM asserts in its SLP vectoriser on some peer kernels (seen with TFLA on an
# H200): a crashed peer row is run again with LLVM's IR optimisation off (DISABLE_LLVM_OPT=1; ptxas
# still optimises), in a cache of its own so no binary built with the optimisation is reused. Our
# kernels are then timed the same way beside it, so that the two rows compare like with like.
LLVM_OPT_OFF = " (LLVM IR opt off)"


def llvm_opt_off_env() -> dict[str, str]:
    import tempfile

    return {"DISABLE_LLVM_OPT": "1", "TRITON_CACHE_DIR": tempfile.mkdtemp(prefix="triton-llvm-opt-off-")}


def row_in_child(spec: str, S: int, args, timeout_s: float, env: dict[str, str] | None = None) -> dict:
    """One row (``spec``: "compiled", "tfla:<L>" or "triton:<L>") at one S, in a child process with a time limit.

    The compiled row can take minutes to compile; a peer's Triton kernel can crash its compiler
    (an LLVM assertion aborts the process): either way the parent records it and goes on; a child
    that died (not timed out) says so with ``crashed``. ``env`` is added to the child's environment.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--child-row", spec, "--child-seq", str(S), "--tokens",
           str(args.tokens), "--heads", str(args.heads), "--dk", str(args.dk), "--dv", str(args.dv), "--modes",
           ",".join(args.modes), "--warmup-ms", str(args.warmup_ms), "--rep-ms", str(args.rep_ms), "--cpu-reps",
           str(args.cpu_reps), "--compile-chunk-size", str(args.compile_chunk_size)] + (["--smoke"] if args.smoke else [])
    cmd += ["--configs", args.configs] if args.configs else []
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s, compile included"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"child exited {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ''}",
                "crashed": True}
    return json.loads(lines[-1])


def peer_rows(impl: Impl, S: int, args, budget: Budget, peer: dict) -> list[dict]:
    """TFLA's row at S, timed in a child process; ``peer`` carries {"env": ...} across calls.

    Once a TFLA child crashed (see LLVM_OPT_OFF), this and every later TFLA row run with LLVM's IR
    optimisation off, each followed by ours at the same L timed the same way.
    """
    def child(spec):
        return row_in_child(spec, S, args, max(30.0, min(120.0, budget.left())), peer.get("env"))

    result = child(f"tfla:{impl.chunk}")
    if result.get("crashed") and "env" not in peer:
        print(f"  {impl.name} S={S}: {result['error']}; again with LLVM's IR optimisation off", file=sys.stderr,
              flush=True)
        peer["env"] = llvm_opt_off_env()
        result = child(f"tfla:{impl.chunk}")
    runs = [(impl.name, result)]
    if "env" in peer and impl.chunk in args.chunk_sizes:
        runs.append((f"ours triton L={impl.chunk}", child(f"triton:{impl.chunk}")))
    rows = []
    for name, result in runs:
        name += LLVM_OPT_OFF if "env" in peer else ""
        base = {"implementation": name, "S": S, "B": max(1, args.tokens // S), "NH": args.heads,
                "DK / DV": f"{args.dk} / {args.dv}"}
        rows.append({**base, "note": [f"err: {result['error']}"]} if "error" in result
                    else {**result, "implementation": name})
        print(f"  {name} S={S}: {result}", file=sys.stderr, flush=True)
    return rows


def compiled_in_child(S: int, args) -> dict:
    return row_in_child("compiled", S, args, args.compile_timeout_s)


def run_child_row(args) -> int:
    """Child side of ``row_in_child``: time one row, print it as one JSON line."""
    device, dtype = setup(args)
    S = args.child_seq
    shape = Shape(max(1, args.tokens // S), args.heads, S, args.dk, args.dv)
    if args.child_row == "compiled":
        impl = ours("chunkwise", args.compile_chunk_size, compiled=True)
    else:
        kind, L = args.child_row.split(":")
        if kind not in ("tfla", "triton"):
            raise SystemExit(f"--child-row: unknown row {args.child_row!r}")
        impl = tfla(int(L)) if kind == "tfla" else ours("triton", int(L))
    row = run_row(impl, shape, dtype, device, args, 1.0, Budget(math.inf), check=False)
    print(json.dumps({k: v for k, v in row.items()}), flush=True)
    return 0


def apply_configs(path: str | None) -> dict:
    """Launch parameters per kernel from a JSON file (benchmarks/tune_triton.py --out) over the defaults."""
    if not path:
        return {}
    from xlstm_torch.ops.mlstm_cell import triton_chunkwise

    with open(path) as fh:
        configs = json.load(fh)
    unknown = set(configs) - set(triton_chunkwise.launch_configs(2, 128, 128, 128))
    if unknown:
        raise SystemExit(f"--configs {path}: unknown kernel names {sorted(unknown)}")
    triton_chunkwise.CONFIG_OVERRIDES.update(configs)
    return configs


def setup(args):
    apply_configs(args.configs)
    if args.smoke:  # without CUDA the Triton rows run only if TRITON_INTERPRET=1 was set before Triton's import
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.float32
    torch.backends.cuda.matmul.allow_tf32 = True  # for the float32 matrix products inside the chunkwise PyTorch path
    return torch.device("cuda"), torch.bfloat16


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.child_row:
        raise SystemExit(run_child_row(args))
    if not args.smoke and not torch.cuda.is_available():
        message = "bench_triton.py measures CUDA kernels and no CUDA device is available: nothing to run (see --smoke)."
        print(message)
        return message
    started = time.monotonic()
    device, dtype = setup(args)
    budget = Budget(args.budget_s)
    mm = matmul_tflops(device, dtype, args.matmul_size, args)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreted)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    configs = f"; Triton launch parameters over the defaults from {args.configs}" if args.configs else ""
    header = (f"{name}, torch {torch.__version__}, triton {triton_version}, {str(dtype).removeprefix('torch.')}; "
              f"matmul {args.matmul_size}³ {str(dtype).removeprefix('torch.')}: {mm:.1f} TFLOP/s (the % mm reference); "
              f"{args.tokens:,} tokens per call; timing: "
              + ("triton.testing.do_bench median" if device.type == "cuda" else f"median of {args.cpu_reps} calls")
              + configs)
    print(header, file=sys.stderr, flush=True)

    impls = [ours("triton", L, variant=variant) for L in args.chunk_sizes for variant in args.triton_variants]
    impls += [tfla(L) for L in args.tfla_chunk_sizes]
    impls += [sdpa(D, device) for D in args.sdpa_head_dims] + [ours("chunkwise", args.compile_chunk_size)]
    rows, peer = [], {}
    for n, S in enumerate(args.seq_lens):
        B = max(1, args.tokens // S)
        for impl in impls:
            D = impl.name.rsplit("=", 1)[-1] if impl.kind == "attention" else None
            shape = Shape(B, args.heads, S, int(D) if D else args.dk, int(D) if D else args.dv)
            if impl.name.startswith("mlstm_kernels") and not impl.skip and budget.left() > 0:
                rows += peer_rows(impl, S, args, budget, peer)
                continue
            rows.append(run_row(impl, shape, dtype, device, args, mm, budget, check=(n == 0)))
        if args.out:  # the rows so far, in case the run is cut off (a timeout kills before the final write)
            write(args.out, header + "\n\n" + markdown(COLUMNS, [format_row(r, mm) for r in rows]) + "\n\n(partial)\n")
    if args.compile:
        for S in args.compile_seq_lens:
            name_c = f"ours chunkwise compiled L={args.compile_chunk_size}"
            base = {"implementation": name_c, "S": S, "B": max(1, args.tokens // S), "NH": args.heads,
                    "DK / DV": f"{args.dk} / {args.dv}"}
            if budget.left() <= 0:
                rows.append({**base, "note": ["skipped (time budget --budget-s spent)"]})
                continue
            result = compiled_in_child(S, args)
            rows.append({**base, "note": [f"err: {result['error']}"]} if "error" in result else result)
            print(f"  {name_c} S={S}: {result}", file=sys.stderr, flush=True)
    else:
        rows.append({"implementation": f"ours chunkwise compiled L={args.compile_chunk_size}", "S": "—", "B": "—",
                     "NH": args.heads, "DK / DV": f"{args.dk} / {args.dv}", "note": ["switched off (--no-compile)"]})
    table = markdown(COLUMNS, [format_row(r, mm) for r in rows])
    decode = markdown(DECODE_COLUMNS, decode_rows(args, device))
    recurrent = markdown(SLSTM_COLUMNS, slstm_rows(args, device, dtype))
    report = "\n\n".join([header, table, "Decoding, one mlstm_step per token (float32 inputs and state):", decode,
                           f"sLSTM, {str(dtype).removeprefix('torch.')}:", recurrent,
                          f"Wall time {time.monotonic() - started:.0f} s."]) + "\n"
    print(report)
    if args.out:
        write(args.out, report)
    return report


def write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def variant_list(text: str) -> list[str]:
    variants = [v for v in text.split(",") if v]
    if not variants or any(v not in TRITON_VARIANTS for v in variants):
        raise argparse.ArgumentTypeError(f"variants are {', '.join(TRITON_VARIANTS)}; got {text!r}")
    return variants


def mode_list(text: str) -> list[str]:
    modes = [m for m in text.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return modes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int_list, default=[2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--tokens", type=int, default=65536, help="B·S per call; B = tokens // S")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dk", type=int, default=128)
    p.add_argument("--dv", type=int, default=256)
    p.add_argument("--chunk-sizes", type=int_list, default=[64, 128], help='ours backend="triton"')
    p.add_argument("--triton-variants", type=variant_list, default=["dot"],
                   help=f"ours triton backward variants, of {','.join(TRITON_VARIANTS)} (default dot)")
    p.add_argument("--tfla-chunk-sizes", type=int_list, default=[128, 256])
    p.add_argument("--sdpa-head-dims", type=int_list, default=[128, 256])
    p.add_argument("--modes", type=mode_list, default=list(MODES))
    p.add_argument("--compile-seq-lens", type=int_list, default=[2048, 8192],
                   help="where to time the torch.compile'd chunkwise path (its compile unrolls S/L chunks)")
    p.add_argument("--compile-chunk-size", type=int, default=64)
    p.add_argument("--compile-timeout-s", type=float, default=60.0)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--decode-shape", type=int_list, default=[16, 8, 256, 512], help="B,NH,DK,DV of the decode rows")
    p.add_argument("--slstm-shape", type=int_list, default=[16, 1024, 4], help="B,S,NH of the sLSTM rows")
    p.add_argument("--slstm-head-dims", type=int_list, default=[64, 128])
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--cpu-reps", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=200.0,
                   help="after this many seconds the remaining cells are skipped (the compiled rows add up to "
                        "len(--compile-seq-lens) x --compile-timeout-s)")
    p.add_argument("--quick", action="store_true", help="S = 2048, 16384, 65536; shorter timing windows")
    p.add_argument("--smoke", action="store_true", help="tiny float32 shapes; without CUDA on the CPU, Triton interpreted")
    p.add_argument("--out", help="also write the report here")
    p.add_argument("--configs", help="JSON of launch parameters per Triton kernel over the defaults "
                                     "(benchmarks/tune_triton.py --out); the header names the file")
    p.add_argument("--child-row", help=argparse.SUPPRESS)
    p.add_argument("--child-seq", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.seq_lens, args.warmup_ms, args.rep_ms = [2048, 16384, 65536], 10.0, 40.0
        args.compile_seq_lens = [2048]
    if args.smoke and args.child_row is None:
        args.seq_lens, args.tokens, args.heads, args.dk, args.dv = [16, 32], 64, 2, 8, 16
        args.chunk_sizes, args.tfla_chunk_sizes, args.sdpa_head_dims = [16], [16], [8]
        args.compile_chunk_size, args.compile_seq_lens = 16, [32]
        args.decode_shape, args.matmul_size, args.cpu_reps = [2, 2, 8, 16], 128, 2
        args.slstm_shape, args.slstm_head_dims = [2, 8, 2], [8]
    if len(args.decode_shape) != 4:
        p.error(f"--decode-shape takes B,NH,DK,DV, got {args.decode_shape}")
    if len(args.slstm_shape) != 3:
        p.error(f"--slstm-shape takes B,S,NH, got {args.slstm_shape}")
    for name in ("tokens", "heads", "dk", "dv", "compile_chunk_size", "matmul_size", "cpu_reps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


if __name__ == "__main__":
    main()
