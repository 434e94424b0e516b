"""Where ``mlstm(backend=None)`` should switch from the parallel to the chunkwise form on the CPU.

The chunkwise form (xLSTM paper App. A.3, TFLA Sec. 3) is linear in S, but every chunk carries a
DK x DV state: S·DK·DV work per head forward, and its recomputation plus elementwise passes over the
states in the backward, even when S fits in one chunk. The parallel form (Sec. 2.3) has no state and
costs S²·(DK + DV) per head. This script times both over a grid of head dims D (= DK = DV) and
lengths S at many rows (B·NH, the shape of training on short strings: formal languages, MQAR) and
prints one Markdown table per mode with the backend ``select_backend`` picks and its time relative
to the fastest form measured:

    python benchmarks/bench_backend_choice.py                  # fwd+bwd, 64 rows, D 32..256, S 32..256
    python benchmarks/bench_backend_choice.py --mode fwd       # under torch.no_grad()

Timing: per cell the forms take turns (A B C D A B C D ...) for ``--repeats`` rounds after one warm-up
each and the median is kept, so the machine's noise falls on all of them alike. Gates: input gates
N(0, 1), forget gates N(3, 1) (mostly open, as after training; with forget gates near 0 the chunks'
stabiliser spread sends long chunks to their exact L x L fallback, which is not the trained regime).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_ops next to this file
from bench_ops import time_calls  # noqa: E402

from xlstm_torch.allocator import tune_cpu_allocator  # noqa: E402
from xlstm_torch.ops import mlstm  # noqa: E402
from xlstm_torch.ops.mlstm_cell import DEFAULT_CHUNK_SIZE, select_backend  # noqa: E402

FORMS = (("parallel", None), ("chunkwise", 16), ("chunkwise", 32), ("chunkwise", 64))


def _label(name: str, chunk: int | None) -> str:
    return name if chunk is None else f"{name} L={chunk}"


def time_cell(rows: int, S: int, D: int, mode: str, repeats: int) -> dict[str, float]:
    """Median milliseconds of each form at (rows, 1, S, D)."""
    g = torch.Generator().manual_seed(0)
    grad = mode == "fwd+bwd"
    q, k, v = (torch.randn(rows, 1, S, D, generator=g).requires_grad_(grad) for _ in range(3))
    i = torch.randn(rows, 1, S, generator=g).requires_grad_(grad)
    f = (torch.randn(rows, 1, S, generator=g) + 3.0).requires_grad_(grad)
    cotangent = torch.randn(rows, 1, S, D, generator=g)

    def call(name, chunk):
        kwargs = {} if chunk is None else {"chunk_size": chunk}
        with torch.set_grad_enabled(grad):
            h = mlstm(q, k, v, i, f, backend=name, **kwargs)
            if grad:
                h.backward(cotangent)

    calls = {_label(*form): (lambda form=form: call(*form)) for form in FORMS}
    return {label: 1e3 * seconds for label, seconds in time_calls(calls, repeats).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["fwd", "fwd+bwd"], default="fwd+bwd")
    p.add_argument("--rows", type=int, default=64, help="B·NH (default 64: batch 64, one head)")
    p.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--seq-lens", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    labels = [_label(*form) for form in FORMS]
    print(f"mLSTM {args.mode}, float32, rows (B·NH) {args.rows}, {args.threads} thread(s), torch {torch.__version__}; "
          f"median ms of {args.repeats} alternating calls\n")
    print("| D | S | " + " | ".join(labels) + " | fastest | backend=None picks | picked / fastest |")
    print("|---" * (len(labels) + 5) + "|")
    for D in args.head_dims:
        for S in args.seq_lens:
            ms = time_cell(args.rows, S, D, args.mode, args.repeats)
            pick = select_backend(S, torch.device("cpu"), args.mode == "fwd+bwd", D, D)
            picked = ms[_label("parallel", None) if pick == "parallel" else _label("chunkwise", DEFAULT_CHUNK_SIZE)]
            fastest = min(ms, key=ms.get)
            print(f"| {D} | {S} | " + " | ".join(f"{ms[k]:.1f}" for k in labels)
                  + f" | {fastest} | {pick} | {picked / ms[fastest]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
