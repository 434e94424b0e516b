"""Training-step throughput, FLOP rate and peak memory of the xLSTM language model on the CPU (float32),
side by side with the ``xlstm`` package's ``xLSTMLMModel`` trained by the same loop.

The model is the paper's xLSTM[a:b] (Beck et al. 2024, Sec. 2.4): mLSTM blocks only, and the same
stack with one sLSTM block. One training step is what a trainer does per batch:

    logits = model(input_ids); loss = cross_entropy(logits, targets); loss.backward();
    optimizer.step(); optimizer.zero_grad(set_to_none=True)        # AdamW, lr 1e-3

    python benchmarks/bench_train.py            # D 256, 4 blocks, vocab 256, B 8 x S 512 (minutes)
    python benchmarks/bench_train.py --quick    # tiny shapes, seconds

Configurations. Ours is ``XLSTMLanguageModel(XLSTMConfig(...))`` with the peer's sizes: same
embedding dim, blocks, vocab, heads (4 mLSTM, 4 sLSTM), up-projection factor 2, conv kernel 4 in
both block types, q/k/v blocks of 4, FFN factor 1.3, untied head, sLSTM at the same block index.
The peer is built from ``xLSTMLMModelConfig`` with its pure-PyTorch code paths in float32: the
sLSTM cell with ``backend="vanilla", dtype="float32"`` (its default is the CUDA kernel in
bfloat16). Its mLSTM layer has no backend setting: the cell calls ``parallel_stabilized_simple``
(the quadratic parallel form). ``--peer-mlstm chunkwise`` additionally times the same peer model
with the package's native chunkwise function (``chunkwise_simple``, chunk 64) put in its place;
that row is checked against the default row's output first. Parameter counts are printed per row.

Timing. Each model gets its own AdamW and the same token batch (one seed); one warm-up step each
(it also creates the optimizer state), then the models take turns (A B A B ...) for ``--repeats``
rounds and each keeps its median step time: turns spread a shared machine's noise over all of them
alike. Every round also times one fp32 n x n @ n x n matrix product (n = --matmul-size, 2048);
its median is the "% mm" reference measured in the same run.

FLOP rate = tokens/s x (6 x parameters + the mLSTM cells' own work per token), counted identically
for every row. 6 x parameters is the usual forward + backward cost of the weight products (every
parameter counted, the embedding table included); the mLSTM cell adds, per mLSTM block,
3 x NH (2 L (DK + DV) + 4 DK DV) with L = 64 (the chunkwise FLOP model of bench_ops.py, forward +
backward), whatever chunk size a row actually runs.

``--compile ours xlstm`` adds rows for the named models under ``torch.compile`` (inductor, default mode),
built and warmed up like the others (the warm-up step compiles; minutes on 2 cores). A compiled peer row's
ratio is against ours compiled, like with like; compiled rows get no memory figures (a fresh process
would count the compiler's own memory).

Peak memory, measured per model in a fresh Python process (nothing earlier in the run inflates
it): build the model, optimizer and batch, then reset the kernel's resident-set high-water mark to
the current RSS (write 5 to /proc/self/clear_refs), run two training steps (the first allocates
AdamW's moments, the second is a steady-state step) and read the mark (VmHWM). "step peak MiB" is
the growth, i.e. the activations, gradients, optimizer state and allocator slack of training;
"process peak MiB" is the whole process's high-water mark (VmHWM before the reset and after the
steps, the larger: interpreter, torch, weights and all), the number a user sees. (Not ru_maxrss: Linux
carries that over from the parent process through fork and exec.) Where the mark cannot be reset the step column falls
back to ru_maxrss minus the RSS before the steps, an upper bound shown as "≤N".
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_ops next to this file
from bench_ops import (PEER_INSTALL, MatmulReference, _cpu_name, _seconds, _status_kib, add_malloc_argument,  # noqa: E402
                       apply_malloc, child_env, reset_peak_rss)

from xlstm_torch.models import XLSTMConfig, XLSTMLanguageModel  # noqa: E402

COLUMNS = ["blocks", "implementation", "params", "tok/s", "GFLOP/s (% mm)", "step peak MiB", "process peak MiB",
           "ours/peer tok/s", "peer/ours step peak", "note"]
FLOP_CHUNK = 64  # L of the mLSTM FLOP model, the same for every row
PEER_VARIANTS = ("parallel", "chunkwise")
TARGETS = {"mLSTM only": 3.0, "one sLSTM": 5.0}  # issue 4: ours/peer tokens/s


@dataclass(frozen=True)
class Setup:
    """One model size and batch: D, blocks, vocab, heads, sLSTM block indices; B x S tokens per step."""

    embedding_dim: int
    num_blocks: int
    vocab_size: int
    num_heads: int
    slstm_at: tuple[int, ...]
    batch_size: int
    seq_len: int
    chunk_size: int | None = None  # ours; None: the config's default

    @property
    def label(self) -> str:
        return "mLSTM only" if not self.slstm_at else ("one sLSTM" if len(self.slstm_at) == 1 else "sLSTM")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


# --------------------------------------------------------------------------------------------------
# The models

def build_ours(setup: Setup) -> torch.nn.Module:
    kwargs = {} if setup.chunk_size is None else {"chunk_size": setup.chunk_size}
    config = XLSTMConfig(vocab_size=setup.vocab_size, embedding_dim=setup.embedding_dim,
                         num_blocks=setup.num_blocks, slstm_at=setup.slstm_at, num_heads=setup.num_heads,
                         slstm_num_heads=setup.num_heads, conv_kernel_size=4, slstm_conv_kernel_size=4,
                         qkv_block_size=4, mlstm_proj_factor=2.0, ffn_proj_factor=1.3, tie_weights=False,
                         context_length=setup.seq_len, **kwargs)
    return XLSTMLanguageModel(config)


def _peer_chunkwise_backend(queries, keys, values, igate_preact, fgate_preact, **_):
    """Adapter: the peer cell's call (gates (B, NH, S, 1)) onto the package's chunkwise function."""
    from xlstm.blocks.mlstm.backends import chunkwise_simple  # lazy: a peer

    S = queries.shape[2]
    return chunkwise_simple(queries, keys, values, igate_preact.squeeze(-1), fgate_preact.squeeze(-1),
                            chunk_size=min(FLOP_CHUNK, S))


def build_peer(setup: Setup, mlstm_variant: str = "parallel") -> torch.nn.Module:
    """xlstm.xLSTMLMModel at ``setup``, pure PyTorch, float32 (see the module docstring)."""
    from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig,  # lazy: a peer
                       sLSTMLayerConfig, xLSTMLMModel, xLSTMLMModelConfig)

    config = xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4,
                                                            num_heads=setup.num_heads, proj_factor=2.0)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=setup.num_heads, conv1d_kernel_size=4,
                                   bias_init="powerlaw_blockdependent", dtype="float32"),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        context_length=setup.seq_len, num_blocks=setup.num_blocks, embedding_dim=setup.embedding_dim,
        slstm_at=list(setup.slstm_at), vocab_size=setup.vocab_size, tie_weights=False)
    model = xLSTMLMModel(config)
    model.reset_parameters()
    if mlstm_variant == "chunkwise":
        for module in model.modules():
            if hasattr(module, "backend_fn"):
                module.backend_fn = _peer_chunkwise_backend
    return model


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    owner: str  # "ours" or "xlstm"
    build: Callable[[Setup], torch.nn.Module]


def implementations(peer_variants: list[str], compiled: tuple[str, ...] = ()) -> list[Impl]:
    """Our model and the peer's variants; with ``compiled`` (owners "ours", "xlstm") also those owners' models
    under ``torch.compile`` (inductor), as rows of their own whose keys end in ":compiled"."""
    impls = [Impl("ours", "ours (xlstm_torch XLSTMLanguageModel)", "ours", build_ours)]
    for variant in peer_variants:
        impls.append(Impl(f"peer:{variant}", f"xlstm xLSTMLMModel, mLSTM {variant}"
                          + (" (its default)" if variant == "parallel" else " (swapped in)"), "xlstm",
                          lambda setup, v=variant: build_peer(setup, v)))
    return impls + [Impl(f"{i.key}:compiled", f"{i.label}, torch.compile", i.owner,
                         lambda setup, build=i.build: torch.compile(build(setup))) for i in impls if i.owner in compiled]


def peer_available() -> str | None:
    try:
        import xlstm  # noqa: F401
        import xlstm.blocks.slstm.cell  # noqa: F401
    except ImportError as err:
        return f"xlstm not installed ({err}); {PEER_INSTALL}"
    return None


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter, counted once


def flops_per_token(setup: Setup, params: int) -> float:
    """6 x parameters + the mLSTM cells' forward + backward work per token (module docstring)."""
    inner = 2 * setup.embedding_dim  # Di: up-projection factor 2 (a multiple of 64 at these sizes)
    DK = DV = inner // setup.num_heads
    cell = 3 * setup.num_heads * (2 * FLOP_CHUNK * (DK + DV) + 4 * DK * DV)
    return 6 * params + cell * (setup.num_blocks - len(setup.slstm_at))


# --------------------------------------------------------------------------------------------------
# The training step

def make_step(model: torch.nn.Module, setup: Setup) -> Callable[[], float]:
    """A zero-argument training step on one fixed batch; returns the loss."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, setup.vocab_size, (setup.batch_size, setup.seq_len + 1), generator=g)
    input_ids, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step() -> float:
        out = model(input_ids)
        logits = out[0] if isinstance(out, tuple) else out  # ours returns (logits, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def check_peer_chunkwise(setup: Setup) -> tuple[bool, str]:
    """The swapped-in chunkwise peer must compute the default peer's function (same weights)."""
    small = Setup(**{**asdict(setup), "batch_size": 2, "seq_len": 2 * FLOP_CHUNK})
    torch.manual_seed(0)
    default = build_peer(small, "parallel")
    swapped = build_peer(small, "chunkwise")
    swapped.load_state_dict(default.state_dict())
    ids = torch.randint(0, small.vocab_size, (small.batch_size, small.seq_len), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = default(ids), swapped(ids)
    rel = ((got - want).abs().max() / want.abs().max()).item()
    ok = rel < 1e-4  # False for NaN too
    return ok, (f"peer chunkwise vs its default parallel mLSTM, same weights, {small.label}: logits "
                f"{'match' if ok else 'DIFFER'} (max |Δ| / max |logit| = {rel:.1e})")


def time_group(impls: list[Impl], setup: Setup, repeats: int, mm: MatmulReference) -> tuple[dict, dict, dict]:
    """Median step seconds, parameter count and last loss per implementation; turns A B A B ..."""
    steps, params, losses = {}, {}, {}
    for impl in impls:
        torch.manual_seed(0)
        model = impl.build(setup)
        params[impl.key] = num_params(model)
        steps[impl.key] = make_step(model, setup)
        losses[impl.key] = steps[impl.key]()  # warm-up; creates AdamW's state
    samples: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        mm.sample()
        for key, step in steps.items():
            samples[key].append(_seconds(step))
    del steps
    gc.collect()
    return {key: statistics.median(s) for key, s in samples.items()}, params, losses


def memory_child(key: str, setup: Setup, peer_variants: list[str]) -> dict:
    """Runs in a fresh process: peak RSS growth over two training steps (module docstring)."""
    impl = next(i for i in implementations(peer_variants) if i.key == key)
    torch.manual_seed(0)
    step = make_step(impl.build(setup), setup)
    gc.collect()
    # The peak of the set-up, from this process's own memory map. ru_maxrss would not do: Linux carries
    # it over from the parent through fork and exec, so every child would report the parent's peak.
    setup_peak_kib = _status_kib("VmHWM")
    exact = reset_peak_rss()
    before_kib = _status_kib("VmRSS")
    before_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    step()
    step()
    if exact:
        peak_kib = _status_kib("VmHWM")
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        exact = peak_kib > before_peak_kib
    return {"step_mib": (peak_kib - before_kib) / 1024, "process_mib": max(peak_kib, setup_peak_kib) / 1024,
            "upper_bound": not exact}


def measure_memory(key: str, setup: Setup, peer_variants: list[str]) -> dict | str:
    """Peak memory of one model's training steps in a fresh process; a dict, or the failure reason."""
    spec = {"key": key, "setup": asdict(setup), "peer_variants": peer_variants, "threads": torch.get_num_threads()}
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed ({tail[:60]})"
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# The report

@dataclass
class Row:
    impl: Impl
    setup: Setup
    seconds: float
    params: int
    loss: float
    memory: dict | str | None = None
    ratio: float | None = None  # ours tok/s / this peer's (peer rows)
    memory_ratio: float | None = None  # this peer's step peak / ours (peer rows)
    note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.setup.tokens / self.seconds

    def gflops(self) -> float:
        return self.tokens_per_s * flops_per_token(self.setup, self.params) / 1e9


def _memory_cells(memory) -> list[str]:
    if memory is None:
        return ["—", "—"]
    if isinstance(memory, str):
        return [memory, "—"]
    return [("≤" if memory["upper_bound"] else "") + f"{memory['step_mib']:,.0f}", f"{memory['process_mib']:,.0f}"]


def format_table(rows: list[Row], mm_gflops: float) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        gflops = row.gflops()
        cells = [row.setup.label, row.impl.label, f"{row.params:,}", f"{row.tokens_per_s:,.0f}",
                 f"{gflops:.1f} ({100 * gflops / mm_gflops:.0f}%)", *_memory_cells(row.memory),
                 f"{row.ratio:.2f}×" if row.ratio else "", f"{row.memory_ratio:.2f}×" if row.memory_ratio else "",
                 row.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _target_lines(rows: list[Row], mm_gflops: float) -> list[str]:
    """Issue 4's targets for each of our rows (eager, and compiled with --compile), against the faster peer row
    of each configuration (its compiled row too, when there is one)."""
    lines = []
    for label, want in TARGETS.items():
        peers = [r for r in rows if r.setup.label == label and r.impl.owner != "ours"]
        for ours in (r for r in rows if r.setup.label == label and r.impl.owner == "ours"):
            pct = 100 * ours.gflops() / mm_gflops
            line = f"FLOP rate {pct:.0f}% of the matmul rate (target ≥ 40%: {'met' if pct >= 40 else 'NOT met'})"
            if peers:
                fast = max(peers, key=lambda r: r.tokens_per_s)
                ratio = ours.tokens_per_s / fast.tokens_per_s
                line += (f"; ours/peer tok/s {ratio:.2f}× vs the faster peer row ({fast.impl.label}) "
                         f"(target ≥ {want:g}×: {'met' if ratio >= want else 'NOT met'})")
                if isinstance(ours.memory, dict) and isinstance(fast.memory, dict):
                    for what in ("step", "process"):
                        share = ours.memory[f"{what}_mib"] / fast.memory[f"{what}_mib"]
                        line += (f"; {what} peak ours/peer {share:.2f} "
                                 f"(target ≤ 0.5: {'met' if share <= 0.5 else 'NOT met'})")
            which = ", compiled" if ours.impl.key.endswith(":compiled") else ""
            lines.append(f"**Target, {label}{which}: {line}.**")
    return lines


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


_positive_int, _index = _int_at_least(1), _int_at_least(0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny model and batch, 2 repeats, no memory subprocesses: a smoke run in seconds")
    p.add_argument("--embedding-dim", type=_positive_int, help="D (default 256)")
    p.add_argument("--num-blocks", type=_positive_int, help="blocks (default 4)")
    p.add_argument("--vocab-size", type=_positive_int, help="vocabulary (default 256)")
    p.add_argument("--num-heads", type=_positive_int, default=4, help="heads of both cells (default 4)")
    p.add_argument("--batch-size", type=_positive_int, help="B (default 8)")
    p.add_argument("--seq-len", type=_positive_int, help="S (default 512)")
    p.add_argument("--slstm-at", type=_index, default=1,
                   help="index of the sLSTM block in the second configuration (default 1)")
    p.add_argument("--chunk-size", type=_positive_int, help="our mLSTM chunk size (default: the config's)")
    p.add_argument("--repeats", type=_positive_int, help="timed steps per model after one warm-up (default 5)")
    p.add_argument("--matmul-size", type=_positive_int, help="n of the n x n reference product (default 2048)")
    p.add_argument("--peer-mlstm", default="parallel",
                   help="comma-separated peer mLSTM variants: parallel (the package's), chunkwise (default parallel)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak memory in fresh processes (default: on, off with --quick)")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="time the xlstm package when installed")
    p.add_argument("--compile", nargs="*", choices=["ours", "xlstm"], default=[],
                   help="also time these models under torch.compile (inductor), as extra rows: ours, xlstm (the "
                        "peer). Ratios of compiled rows are against ours compiled; no memory for them. Compiling "
                        "takes minutes on 2 cores")
    add_malloc_argument(p)
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(embedding_dim=32 if quick else 256, num_blocks=2 if quick else 4, vocab_size=64 if quick else 256,
                    batch_size=2 if quick else 8, seq_len=32 if quick else 512, repeats=2 if quick else 5,
                    matmul_size=256 if quick else 2048, memory=not quick)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.peer_mlstm = [v.strip() for v in args.peer_mlstm.split(",") if v.strip()]
    bad = [v for v in args.peer_mlstm if v not in PEER_VARIANTS]
    if bad or not args.peer_mlstm:
        p.error(f"--peer-mlstm takes {' and/or '.join(PEER_VARIANTS)}, got {args.peer_mlstm}")
    if args.slstm_at >= args.num_blocks:
        p.error(f"--slstm-at {args.slstm_at} is out of range for --num-blocks {args.num_blocks}")
    if (2 * args.embedding_dim) % (4 * args.num_heads) or args.embedding_dim % args.num_heads:
        p.error(f"--num-heads {args.num_heads} must divide --embedding-dim {args.embedding_dim} "
                "(and twice it into blocks of 4)")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    missing = peer_available() if args.peers else "peers switched off (--no-peers)"
    notes = [f"Peer rows skipped: {missing}."] if missing else []
    impls = implementations([] if missing else args.peer_mlstm, tuple(args.compile))
    setups = [Setup(args.embedding_dim, args.num_blocks, args.vocab_size, args.num_heads, slstm_at, args.batch_size,
                    args.seq_len, args.chunk_size) for slstm_at in ((), (args.slstm_at,))]
    if not missing and "chunkwise" in args.peer_mlstm:
        ok, message = check_peer_chunkwise(setups[0])
        notes.append("Peer check: " + message + ".")
        if not ok:
            impls = [i for i in impls if i.key != "peer:chunkwise"]
            notes.append("The peer chunkwise rows are left out: their output differs.")

    mm = MatmulReference(args.matmul_size)
    rows: list[Row] = []
    for setup in setups:
        _progress(f"[bench_train] {setup.label}: {', '.join(i.key for i in impls)}")
        seconds, params, losses = time_group(impls, setup, args.repeats, mm)
        group = [Row(i, setup, seconds[i.key], params[i.key], losses[i.key]) for i in impls]
        if args.memory:
            for row in group:
                if row.impl.key.endswith(":compiled"):
                    continue  # compiling in the child would count the compiler's own memory
                _progress(f"[bench_train] {setup.label}: peak memory of {row.impl.key}")
                row.memory = measure_memory(row.impl.key, setup, args.peer_mlstm)
        ours = group[0]
        ours_compiled = next((r for r in group if r.impl.key == "ours:compiled"), ours)
        for row in group[1:]:
            if row.impl.owner == "ours":
                continue
            mine = ours_compiled if row.impl.key.endswith(":compiled") else ours  # like with like
            row.ratio = mine.tokens_per_s / row.tokens_per_s
            if isinstance(row.memory, dict) and isinstance(mine.memory, dict):
                row.memory_ratio = row.memory["step_mib"] / mine.memory["step_mib"]
            same = row.params == ours.params
            row.note = ("params equal to ours" if same else
                        f"params differ from ours by {100 * (row.params - ours.params) / ours.params:+.1f}%")
        rows.extend(group)
    mm.sample()

    mm_gflops = mm.gflops()
    header = [
        "## xLSTM language model training step, CPU float32",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {_cpu_name()}, Python {platform.python_version()}. "
        f"D={args.embedding_dim}, {args.num_blocks} blocks, vocab {args.vocab_size}, {args.num_heads} heads, "
        f"B={args.batch_size} × S={args.seq_len}; the sLSTM configuration puts it at block {args.slstm_at}. "
        f"Step = forward, cross-entropy, backward, AdamW step, zero_grad. "
        f"Reference fp32 matmul {args.matmul_size}³: {mm_gflops:.1f} GFLOP/s (median of {len(mm.samples)}, "
        f"interleaved with the steps; samples span {mm.gflops(max(mm.samples)):.0f}–{mm.gflops(min(mm.samples)):.0f}; "
        f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end). "
        f"Median of {args.repeats} steps after one warm-up, models taking turns; {args.malloc_note}. tok/s = B·S / seconds per step; "
        f"GFLOP/s counts 6·params + the mLSTM cells' work (L={FLOP_CHUNK}) per token; ours/peer tok/s > 1: ours "
        f"faster; peer/ours step peak > 1: ours uses less memory.",
        "",
        "",
    ]
    losses = ", ".join(f"{r.impl.key} {r.setup.label} {r.loss:.3f}" for r in rows)
    notes.append(f"Loss of the warm-up step (same batch; ≈ ln(vocab) = "
                 f"{torch.log(torch.tensor(float(args.vocab_size))).item():.2f} at init): {losses}.")
    footer = [""] + [f"- {n}" for n in notes] + [f"- {line}" for line in _target_lines(rows, mm_gflops)]
    return "\n".join(header) + format_table(rows, mm_gflops) + "\n" + "\n".join(footer) + "\n"


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    args.malloc_note = apply_malloc(args.malloc)
    if args.memory_child:
        spec = json.loads(args.memory_child)
        torch.set_num_threads(spec["threads"])
        setup = Setup(**{**spec["setup"], "slstm_at": tuple(spec["setup"]["slstm_at"])})
        print(json.dumps(memory_child(spec["key"], setup, spec["peer_variants"])))
        return ""
    report = run(args)
    print(report, end="")
    return report


if __name__ == "__main__":
    main()
