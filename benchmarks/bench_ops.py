"""Throughput, memory and FLOP rate of the xLSTM ops on the CPU in float32, side by side with peers.

The mLSTM (xLSTM paper Sec. 2.3; chunkwise form App. A.3 and TFLA Sec. 3) and the sLSTM (Sec. 2.2)
as the op contract ``xlstm_torch.ops.mlstm`` / ``xlstm_torch.ops.slstm`` runs them, and, when they
are installed, the pure-PyTorch kernels of the public packages ``mlstm-kernels`` and ``xlstm`` at the
same shapes. Our ops never import those packages; this script imports them lazily and prints a skip
note when they are missing. One command prints one Markdown table:

    python benchmarks/bench_ops.py            # full run (tens of minutes on 2 cores)
    python benchmarks/bench_ops.py --quick    # tiny shapes, seconds

Timing. Every implementation gets its own inputs built from the same seed. Per shape and mode
(forward under ``torch.no_grad()``; forward+backward from a fixed random cotangent) each
implementation runs once to warm up, then the implementations take turns (A B C A B C ...) for
``--repeats`` rounds and the median per implementation is kept: the turns spread the machine's noise
over all of them alike. Each round also times one fp32 2048 x 2048 @ 2048 x 2048 matrix product;
the median of those is the "% mm" reference, measured in the same run as the cases.

FLOP model (counted identically for our rows and the peers', so the rates compare work per token).
mLSTM, per head and chunk of L steps (L = --chunk-size, 64 by default for ours and for
mlstm_kernels):

    forward  = 2·L·L·(DK + DV)      intra-chunk: Q Kᵀ (2·L·L·DK) and weights @ V (2·L·L·DV), full
                                    L x L blocks although only the causal half is needed
             + 4·L·DK·DV            the chunk's state update Kᵀ V (2·L·DK·DV) and the carried-state
                                    output Q C (2·L·DK·DV)
    backward = 2 x forward          every product of the forward has two in the backward

Gates, normaliser and the scan over chunk states are lower order and not counted. The same count
is used for the parallel and recurrent rows: their GFLOP/s is a chunkwise-equivalent rate (tokens/s
times the chunkwise work per token), not the operations they execute (the parallel form does
~S/L times the intra-chunk work; the recurrent form does 4·DK·DV per step but without matrix
products). sLSTM, per token: 2·NH·DH·4·DH (the recurrent product h_{t-1} @ R for the four gates)
forward, 2 x that backward; pointwise gate work is not counted.

Peak memory (columns "peak MiB"): each case runs once more in a fresh Python process, so nothing
earlier in this run inflates it. After building the inputs and warming up on a tiny shape, the
child resets the kernel's resident-set high-water mark to the current RSS (writing 5 to
/proc/self/clear_refs), runs the call once and reads the mark again (VmHWM in /proc/self/status):
the column is the growth, i.e. the peak extra RSS of one call, including the input gradients a
backward allocates. Where the mark cannot be reset the child falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` minus the RSS before the call; when the call did not
set that process-lifetime peak the value is only an upper bound and shows as "≤N".
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

import xlstm_torch
from xlstm_torch.allocator import tune_cpu_allocator
from xlstm_torch.ops import mlstm, slstm
from xlstm_torch.ops.slstm_cell import select_backend as slstm_default_backend

MODES = ("fwd", "fwd+bwd")
PEER_INSTALL = "pip install --no-deps -r benchmarks/requirements-peers.txt"
COLUMNS = ["op", "implementation", "S", "head dim", "B", "NH", "fwd tok/s", "fwd+bwd tok/s",
           "fwd GFLOP/s (% mm)", "fwd+bwd GFLOP/s (% mm)", "peak MiB fwd", "peak MiB fwd+bwd",
           "ours/peer fwd", "ours/peer fwd+bwd", "note"]
TARGET = dict(S=4096, D=64)  # the shape the summary line singles out (B=1, NH=4, fwd+bwd)


@dataclass(frozen=True)
class Shape:
    """One benchmark shape. mLSTM: q, k (B, NH, S, D), v (B, NH, S, D); sLSTM: wx (B, S, NH, 4, D)."""

    B: int
    NH: int
    S: int
    D: int  # DK = DV for the mLSTM, DH for the sLSTM
    L: int  # chunk size of the chunkwise kernels (unused by the sLSTM)


# --------------------------------------------------------------------------------------------------
# FLOP model (see the module docstring)

def mlstm_forward_flops_per_token(shape: Shape) -> float:
    """Chunkwise mLSTM forward work per token, all heads: NH · (2·L·(DK+DV) + 4·DK·DV)."""
    DK = DV = shape.D
    return shape.NH * (2 * shape.L * (DK + DV) + 4 * DK * DV)


def slstm_forward_flops_per_token(shape: Shape) -> float:
    """sLSTM forward work per token, all heads: the recurrent product, 2 · NH · DH · 4·DH."""
    return 2 * shape.NH * shape.D * 4 * shape.D


def flops_per_token(op: str, shape: Shape, mode: str) -> float:
    fwd = mlstm_forward_flops_per_token(shape) if op == "mLSTM" else slstm_forward_flops_per_token(shape)
    return fwd if mode == "fwd" else 3 * fwd  # backward = 2 x forward


# --------------------------------------------------------------------------------------------------
# Implementations. Each builder returns (function of the leaf inputs -> output, leaf inputs, output
# shape); the leaves are built from the same seed for every implementation of an op.

def _mlstm_leaves(shape: Shape) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    B, NH, S, D = shape.B, shape.NH, shape.S, shape.D
    q, k, v = (torch.randn(B, NH, S, D, generator=g) for _ in range(3))
    i = torch.randn(B, NH, S, generator=g)
    f = torch.randn(B, NH, S, generator=g) + 3.0  # forget gates mostly open, as after training
    return [q, k, v, i, f]


def _slstm_leaves(shape: Shape) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    B, NH, S, DH = shape.B, shape.NH, shape.S, shape.D
    wx = torch.randn(B, S, NH, 4, DH, generator=g)
    r = torch.randn(NH, 4, DH, DH, generator=g) / math.sqrt(DH)
    b = torch.randn(NH, 4, DH, generator=g)
    return [wx, r, b]


def _ours_mlstm(backend: str):
    def build(shape: Shape):
        kwargs = {"chunk_size": shape.L} if backend == "chunkwise" else {}
        call = lambda q, k, v, i, f: mlstm(q, k, v, i, f, backend=backend, **kwargs)  # noqa: E731
        return call, _mlstm_leaves(shape), (shape.B, shape.NH, shape.S, shape.D)
    return build


def _ours_slstm(backend: str | None):
    def build(shape: Shape):
        call = lambda wx, r, b: slstm(wx, r, b, backend=backend)  # noqa: E731
        return call, _slstm_leaves(shape), (shape.B, shape.S, shape.NH, shape.D)
    return build


def _peer_mlstm(kernel_name: str):
    def build(shape: Shape):
        from mlstm_kernels.torch import get_mlstm_kernel  # lazy: a peer, never a dependency

        kernel = get_mlstm_kernel(kernel_name)
        kwargs = {"chunk_size": shape.L} if kernel_name.startswith("chunkwise") else {}
        call = lambda q, k, v, i, f: kernel(q, k, v, i, f, **kwargs)  # noqa: E731
        return call, _mlstm_leaves(shape), (shape.B, shape.NH, shape.S, shape.D)
    return build


def _peer_slstm_vanilla(shape: Shape):
    """xlstm's pure-PyTorch sLSTM cell, loaded with our r and b so it computes the same function.

    Its input is (B, S, 4·NH·DH) ordered (gate, head, unit) and its recurrent kernel is stored
    (NH, DH_in, 4, DH_out); the output is (B, NH, S, DH). The weights are the cell's parameters, the
    input a leaf: the same tensors get gradients as in our op.
    """
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig  # lazy: a peer

    B, NH, S, DH = shape.B, shape.NH, shape.S, shape.D
    wx, r, b = _slstm_leaves(shape)
    cell = sLSTMCell(sLSTMCellConfig(hidden_size=NH * DH, num_heads=NH, backend="vanilla", dtype="float32"))
    with torch.no_grad():
        cell._recurrent_kernel_.copy_(cell._recurrent_kernel_ext2int(r.permute(0, 2, 1, 3)))  # (NH, DH, 4, DH)
        cell._bias_.copy_(cell._bias_ext2int(b))
    x = wx.permute(0, 1, 3, 2, 4).reshape(B, S, 4 * NH * DH).contiguous()  # (B, S, 4·NH·DH)
    call = lambda x, *weights: cell(x)[0]  # noqa: E731  (the weights reach it as the cell's parameters)
    return call, [x, cell._recurrent_kernel_, cell._bias_], (B, NH, S, DH)


@dataclass(frozen=True)
class Impl:
    op: str  # "mLSTM" or "sLSTM"
    label: str  # as shown in the table
    owner: str  # "ours" or the peer package's import name
    build: Callable
    compare_to: str | None = None  # key of our implementation a peer row is compared with


IMPLS: dict[str, Impl] = {
    "ours:chunkwise": Impl("mLSTM", "ours chunkwise", "ours", _ours_mlstm("chunkwise")),
    "ours:parallel": Impl("mLSTM", "ours parallel", "ours", _ours_mlstm("parallel")),
    "ours:recurrent": Impl("mLSTM", "ours recurrent", "ours", _ours_mlstm("recurrent")),
    "peer:chunkwise--native_custbw": Impl("mLSTM", "mlstm_kernels chunkwise--native_custbw", "mlstm_kernels",
                                          _peer_mlstm("chunkwise--native_custbw"), "ours:chunkwise"),
    "peer:chunkwise--native_autograd": Impl("mLSTM", "mlstm_kernels chunkwise--native_autograd", "mlstm_kernels",
                                            _peer_mlstm("chunkwise--native_autograd"), "ours:chunkwise"),
    "peer:parallel--native_custbw": Impl("mLSTM", "mlstm_kernels parallel--native_custbw", "mlstm_kernels",
                                         _peer_mlstm("parallel--native_custbw"), "ours:parallel"),
    "ours:slstm-default": Impl("sLSTM", "ours default (backend=None)", "ours", _ours_slstm(None)),
    "ours:slstm-reference": Impl("sLSTM", "ours reference", "ours", _ours_slstm("reference")),
    "peer:slstm-vanilla": Impl("sLSTM", "xlstm sLSTM vanilla", "xlstm", _peer_slstm_vanilla),
}


def peer_available(owner: str) -> str | None:
    """None when the peer package imports, else the reason."""
    try:
        if owner == "mlstm_kernels":
            import mlstm_kernels.torch  # noqa: F401
        elif owner == "xlstm":
            import xlstm.blocks.slstm.cell  # noqa: F401
    except ImportError as err:
        return f"{owner} not installed ({err}); {PEER_INSTALL}"
    return None


def make_call(key: str, shape: Shape, mode: str) -> Callable[[], None]:
    """A zero-argument call running implementation ``key`` once at ``shape`` in ``mode``."""
    fn, leaves, out_shape = IMPLS[key].build(shape)
    if mode == "fwd":
        def call():
            with torch.no_grad():
                fn(*leaves)
        return call
    for x in leaves:
        x.requires_grad_(True)
    cotangent = torch.randn(out_shape, generator=torch.Generator().manual_seed(1))

    def call():
        for x in leaves:
            x.grad = None
        fn(*leaves).backward(cotangent)
    return call


# --------------------------------------------------------------------------------------------------
# Correctness of the peers: they must compute our function, or a ratio would compare different work.

def check_peer(key: str, shape: Shape) -> tuple[bool, str]:
    """Compare a peer's forward output with our reference op at ``shape``; (ok, one-line message)."""
    impl = IMPLS[key]
    fn, leaves, _ = impl.build(shape)
    with torch.no_grad():
        out = fn(*leaves)
        if impl.op == "mLSTM":
            want = mlstm(*_mlstm_leaves(shape), backend="reference")
        else:
            want = slstm(*_slstm_leaves(shape), backend="reference").permute(0, 2, 1, 3)  # (B, NH, S, DH)
    rel = ((out - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()
    ok = out.device.type == "cpu" and out.dtype == torch.float32 and rel < 1e-4  # not NaN either
    where = f"S={shape.S}, head dim {shape.D}, on {out.device.type} {str(out.dtype).replace('torch.', '')}"
    verdict = "matches our reference" if ok else "DIFFERS from our reference"
    return ok, f"{impl.label}: {verdict} (max |Δh| / max |h| = {rel:.1e}, {where})"


# --------------------------------------------------------------------------------------------------
# Timing and memory

def _seconds(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class MatmulReference:
    """fp32 n x n @ n x n product timed between the cases; its median GFLOP/s is the '% mm' base."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(2)
        self.n = n
        self.a, self.b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        self.out = torch.empty(n, n)
        self.samples: list[float] = []
        torch.mm(self.a, self.b, out=self.out)  # warm-up

    def sample(self) -> None:
        self.samples.append(_seconds(lambda: torch.mm(self.a, self.b, out=self.out)))

    def gflops(self, seconds: float | None = None) -> float:
        """The median rate, or the rate of one sample of ``seconds``."""
        return 2 * self.n ** 3 / (seconds or statistics.median(self.samples)) / 1e9


def time_calls(calls: dict[str, Callable[[], None]], repeats: int,
               mm: MatmulReference | None = None) -> dict[str, float]:
    """Median seconds per call; one warm-up each, then turns A B C A B C ... (and one ``mm`` sample per round)."""
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        if mm is not None:
            mm.sample()
        for key, call in calls.items():
            samples[key].append(_seconds(call))
    return {key: statistics.median(s) for key, s in samples.items()}


def time_group(keys: list[str], shape: Shape, mode: str, repeats: int, mm: MatmulReference) -> dict[str, float]:
    """Median seconds per call of each implementation (``time_calls``)."""
    calls = {key: make_call(key, shape, mode) for key in keys}
    medians = time_calls(calls, repeats, mm)
    del calls
    gc.collect()
    return medians


def _status_kib(field: str) -> int:
    """A ``kB`` line of /proc/self/status (VmRSS: resident now, VmHWM: resident high-water mark)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current RSS; False where unsupported."""
    try:  # Linux >= 4.0: "5" resets the high-water mark to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def add_malloc_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                   help="C allocator for every row, ours and the peers' alike: tuned (xlstm_torch.tune_cpu_allocator, "
                        "what the xlstm command line uses) or the C library's defaults (default: tuned)")


def apply_malloc(choice: str) -> str:
    """Set the allocator for this process and (through the environment) its memory children; a header phrase."""
    if choice == "default":
        os.environ["XLSTM_TORCH_MALLOC"] = "default"
    if tune_cpu_allocator():
        return "C allocator tuned (xlstm_torch.tune_cpu_allocator) for every row"
    return "C allocator at the C library's defaults"


def child_env() -> dict[str, str]:
    """Environment for a child process that must import the same xlstm_torch as this one, installed or not."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(xlstm_torch.__file__)), os.environ.get("PYTHONPATH", "")]))


def memory_child(key: str, shape: Shape, mode: str) -> dict:
    """Runs in a fresh process: the peak RSS growth of one call (see the module docstring)."""
    tiny = Shape(B=1, NH=1, S=2 * shape.L, D=min(shape.D, 8), L=shape.L)
    make_call(key, tiny, mode)()  # load lazy libraries and thread pools before measuring
    call = make_call(key, shape, mode)
    gc.collect()
    exact = reset_peak_rss()
    before_kib = _status_kib("VmRSS")
    before_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    call()
    if exact:
        peak_kib = _status_kib("VmHWM")
    else:  # the process-lifetime peak: exact only if this call set it
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        exact = peak_kib > before_peak_kib
    return {"mib": (peak_kib - before_kib) / 1024, "upper_bound": not exact}


def measure_memory(key: str, shape: Shape, mode: str) -> str:
    """Peak MiB of one call, measured in a fresh process; a table cell."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child",
           json.dumps({"key": key, "shape": asdict(shape), "mode": mode, "threads": torch.get_num_threads()})]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed ({tail[:60]})"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return ("≤" if result["upper_bound"] else "") + f"{result['mib']:.0f}"


# --------------------------------------------------------------------------------------------------
# The table

@dataclass
class Row:
    key: str
    shape: Shape
    seconds: dict[str, float] | None = None  # mode -> median seconds per call; None when skipped
    memory: dict[str, str] | None = None
    ratio: dict[str, float] | None = None
    note: str = ""

    def tokens_per_s(self, mode: str) -> float:
        return self.shape.B * self.shape.S / self.seconds[mode]


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def format_table(rows: list[Row], mm_gflops: float) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        impl, s = IMPLS[row.key], row.shape
        cells = [impl.op, impl.label, str(s.S), str(s.D), str(s.B), str(s.NH)]
        if row.seconds is None:
            cells += ["—"] * 6
        else:
            cells += [_fmt_int(row.tokens_per_s(m)) for m in MODES]
            for m in MODES:
                gflops = row.tokens_per_s(m) * flops_per_token(impl.op, s, m) / 1e9
                cells.append(f"{gflops:.1f} ({100 * gflops / mm_gflops:.0f}%)")
            cells += [row.memory[m] if row.memory else "—" for m in MODES]
        cells += [f"{row.ratio[m]:.2f}×" if row.ratio else "" for m in MODES]
        cells.append(row.note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, 2 repeats, no memory subprocesses: a smoke run in seconds")
    p.add_argument("--seq-lens", type=_csv_ints, help="mLSTM S values (default 256,1024,4096,16384)")
    p.add_argument("--head-dims", type=_csv_ints, help="mLSTM DK = DV values (default 64,256)")
    p.add_argument("--repeats", type=int, help="timed calls per case after one warm-up (default 5)")
    p.add_argument("--chunk-size", type=int, help="L of the chunkwise kernels and the FLOP model (default 64)")
    p.add_argument("--mlstm-heads", type=int, default=4, help="NH of the mLSTM rows (B is 1)")
    p.add_argument("--slstm-shape", type=_csv_ints,
                   help="sLSTM B,NH,DH,S for the default-backend rows (default 8,4,64,1024)")
    p.add_argument("--slstm-reference-seq-len", type=int,
                   help="S of the sLSTM reference rows, kept small as the reference is slow (default 128)")
    p.add_argument("--recurrent-max-seq-len", type=int,
                   help="largest S timed for our step-by-step recurrent mLSTM (default 256)")
    p.add_argument("--parallel-max-mib", type=float, default=1024.0,
                   help="skip parallel-form rows when one S x S fp32 matrix over all heads, B·NH·S²·4 "
                        "bytes, exceeds this many MiB (the form keeps several alive; default 1024)")
    p.add_argument("--matmul-size", type=int, help="n of the n x n reference product (default 2048)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak memory in fresh processes (default: on, off with --quick)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: torch's choice). On a machine shared with other "
                        "jobs, 1 thread is steadier: a multi-threaded op waits for every thread's core")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="time mlstm_kernels / xlstm when installed")
    add_malloc_argument(p)
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(seq_lens=[32, 64] if quick else [256, 1024, 4096, 16384],
                    head_dims=[16] if quick else [64, 256],
                    repeats=2 if quick else 5,
                    chunk_size=16 if quick else 64,
                    slstm_shape=[2, 2, 16, 32] if quick else [8, 4, 64, 1024],
                    slstm_reference_seq_len=16 if quick else 128,
                    recurrent_max_seq_len=32 if quick else 256,
                    matmul_size=256 if quick else 2048,
                    memory=not quick)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    for name in ("repeats", "chunk_size", "mlstm_heads", "slstm_reference_seq_len", "recurrent_max_seq_len",
                 "matmul_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if len(args.slstm_shape) != 4:
        p.error(f"--slstm-shape takes B,NH,DH,S, got {args.slstm_shape}")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> str:
    """Run every case and return the report: a header, the table and its notes (Markdown)."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    L = args.chunk_size
    notes: list[str] = []
    missing = {owner: peer_available(owner) if args.peers else "peers switched off (--no-peers)"
               for owner in ("mlstm_kernels", "xlstm")}
    for reason in dict.fromkeys(r for r in missing.values() if r):
        notes.append(f"Peer rows skipped: {reason}.")

    # Which implementation runs at which shape, in table order; a skipped row carries its reason.
    plan: list[tuple[list[Row], str]] = []  # (rows of one group timed together, op)
    for D in args.head_dims:
        for S in args.seq_lens:
            shape = Shape(B=1, NH=args.mlstm_heads, S=S, D=D, L=L)
            parallel_mib = shape.B * shape.NH * S * S * 4 / 2 ** 20
            group = []
            for key in ("ours:chunkwise", "ours:parallel", "ours:recurrent", "peer:chunkwise--native_custbw",
                        "peer:chunkwise--native_autograd", "peer:parallel--native_custbw"):
                impl = IMPLS[key]
                row = Row(key, shape)
                if impl.owner != "ours" and missing[impl.owner]:
                    continue
                if key.endswith("recurrent") and S > args.recurrent_max_seq_len:
                    continue  # listed in the notes: the step loop is too slow for long S
                if "parallel" in key and parallel_mib > args.parallel_max_mib:
                    row.note = (f"skipped: one S×S fp32 matrix is {parallel_mib:,.4g} MiB "
                                f"> --parallel-max-mib {args.parallel_max_mib:g}")
                elif impl.owner != "ours" and S % L and key.startswith("peer:chunkwise"):
                    row.note = f"skipped: mlstm_kernels' chunkwise kernels need S divisible by L={L}"
                group.append(row)
            plan.append((group, "mLSTM"))
    sB, sNH, sDH, sS = args.slstm_shape
    for S, ours in ((sS, "ours:slstm-default"), (args.slstm_reference_seq_len, "ours:slstm-reference")):
        shape = Shape(B=sB, NH=sNH, S=S, D=sDH, L=L)
        group = [Row(ours, shape)] + ([] if missing["xlstm"] else [Row("peer:slstm-vanilla", shape)])
        plan.append((group, "sLSTM"))
    notes.append(f"Our sLSTM default (backend=None) resolves to {slstm_default_backend(torch.device('cpu'))!r} "
                 "in this build.")
    notes.append(f"Our recurrent mLSTM (a step loop) is timed only at S ≤ {args.recurrent_max_seq_len} "
                 "(--recurrent-max-seq-len).")

    # Peers must compute our function before their ratios mean anything.
    bad_peers = set()
    if args.peers:
        check_shapes = {"mLSTM": Shape(B=1, NH=2, S=2 * L, D=min(args.head_dims), L=L),
                        "sLSTM": Shape(B=2, NH=sNH, S=min(16, sS), D=sDH, L=L)}
        for key, impl in IMPLS.items():
            if impl.owner != "ours" and not missing[impl.owner]:
                ok, message = check_peer(key, check_shapes[impl.op])
                notes.append("Peer check: " + message + ".")
                if not ok:
                    bad_peers.add(key)

    mm = MatmulReference(args.matmul_size)
    rows: list[Row] = []
    for group, op in plan:
        active = [row for row in group if not row.note]
        keys = [row.key for row in active]
        shape = group[0].shape
        for row in active:
            row.seconds = {}
        for mode in MODES:
            _progress(f"[bench] {op} S={shape.S} D={shape.D} B={shape.B} NH={shape.NH} {mode}: {', '.join(keys)}")
            for key, sec in time_group(keys, shape, mode, args.repeats, mm).items():
                next(r for r in active if r.key == key).seconds[mode] = sec
            if args.memory:
                for row in active:
                    row.memory = row.memory or {}
                    row.memory[mode] = measure_memory(row.key, shape, mode)
        by_key = {row.key: row for row in active}
        for row in active:
            base = by_key.get(IMPLS[row.key].compare_to or "")
            if base is None and IMPLS[row.key].owner == "xlstm":
                base = next(r for r in active if IMPLS[r.key].owner == "ours")
            if IMPLS[row.key].owner != "ours" and base is not None:
                row.ratio = {m: base.tokens_per_s(m) / row.tokens_per_s(m) for m in MODES}
                row.note = f"ratio vs {IMPLS[base.key].label}"
            if row.key in bad_peers:
                row.note += "; OUTPUT DIFFERS from ours (see notes)"
        rows.extend(group)
        mm.sample()

    mm_gflops = mm.gflops()
    header = [
        "## xLSTM ops, CPU float32",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {_cpu_name()}, Python {platform.python_version()}. "
        f"Reference fp32 matmul {args.matmul_size}×{args.matmul_size}·{args.matmul_size}×{args.matmul_size}: "
        f"{mm_gflops:.1f} GFLOP/s (median of {len(mm.samples)}, interleaved with the cases; the samples span "
        f"{mm.gflops(max(mm.samples)):.0f}–{mm.gflops(min(mm.samples)):.0f}, a gauge of the machine's noise; "
        f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end). "
        f"Median of {args.repeats} calls after one warm-up; chunk size L={L}; {args.malloc_note}. "
        "tok/s = B·S / seconds per call; ours/peer = our tok/s ÷ the peer's (> 1: ours faster).",
        "",
        "",
    ]
    footer = [""] + [f"- {n}" for n in notes]
    target = _target_line(rows)
    if target:
        footer.append(f"- **{target}**")
    return "\n".join(header) + format_table(rows, mm_gflops) + "\n" + "\n".join(footer) + "\n"


def _target_line(rows: list[Row]) -> str | None:
    """The highlighted comparison: our chunkwise fwd+bwd vs the faster mlstm_kernels chunkwise kernel."""
    at = [r for r in rows if r.seconds and r.shape.S == TARGET["S"] and r.shape.D == TARGET["D"]
          and r.shape.B == 1 and r.shape.NH == 4]
    ours = next((r for r in at if r.key == "ours:chunkwise"), None)
    peers = [r for r in at if r.key.startswith("peer:chunkwise")]
    if ours is None or not peers:
        return None
    best = max(peers, key=lambda r: r.tokens_per_s("fwd+bwd"))
    return (f"Target, mLSTM fwd+bwd B=1 NH=4 S={TARGET['S']} DK=DV={TARGET['D']}: ours chunkwise "
            f"{_fmt_int(ours.tokens_per_s('fwd+bwd'))} tok/s vs {IMPLS[best.key].label} (the faster peer) "
            f"{_fmt_int(best.tokens_per_s('fwd+bwd'))} tok/s: ours/peer = "
            f"{ours.tokens_per_s('fwd+bwd') / best.tokens_per_s('fwd+bwd'):.2f}×")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    args.malloc_note = apply_malloc(args.malloc)
    if args.memory_child:
        spec = json.loads(args.memory_child)
        torch.set_num_threads(spec["threads"])
        print(json.dumps(memory_child(spec["key"], Shape(**spec["shape"]), spec["mode"])))
        return ""
    report = run(args)
    print(report, end="")
    return report


if __name__ == "__main__":
    main()
