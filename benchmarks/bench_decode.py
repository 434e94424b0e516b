"""Decoding cost against context length: our xLSTM, the Transformer baseline, and HF transformers' xLSTM.

xLSTM 7B (Beck et al., 2025), inference experiments: a recurrent model decodes each token in constant time
and memory whatever the context, while a Transformer's per-token cost and key/value cache grow with
it. This script measures that on small models of one shape (D 256, 4 blocks, 4 heads, vocab 256,
float32 by default) so it runs on a CPU:

    python benchmarks/bench_decode.py                   # contexts 128 .. 16384
    python benchmarks/bench_decode.py --quick           # contexts 128 and 512, seconds

Per model and context length L: one prefill call over L random tokens (prefill tokens/s), then
``--new-tokens`` greedy decoding steps of one token each, each step feeding the previous step's
argmax and the carried state (decode tokens/s and ms per token; the best of ``--repeats`` runs
from the same prefill state). "state MiB" is the size of the state after the prefill (for the
Transformer: its key/value cache). "prefill peak MiB" is the growth of the process's peak resident
memory during the prefill, "decode peak MiB" its growth during the decoding over the memory held
after the prefill (on CUDA: peak allocated memory). The peak is reset before each part through
/proc/self/clear_refs, after handing freed heap back to the OS (malloc_trim), where the system allows.

Models. "xlstm[1:1]" is the paper's xLSTM with alternating mLSTM and sLSTM blocks
(``xlstm_torch.models.xlstm``), "xlstm-large" the xLSTM 7B architecture (``models/large.py``),
"transformer" the Llama-style baseline (``models/transformer.py``), all ours, and "hf-xlstm" is
``transformers.xLSTMForCausalLM``, the same architecture as "xlstm-large" at the same sizes, measured only when ``transformers`` is installed (``pip install --no-deps transformers``
plus regex, pyyaml, tqdm, huggingface_hub, tokenizers); the library never imports it. With the
``xlstm`` package installed, transformers runs its layers from that package; ``--hf-builtin`` makes it
run its own PyTorch layers (the row says which).

One-token calls of our xLSTM models run the blocks' step paths (``xlstm_torch/nn/decode.py``). On a
shared CPU use ``--threads 1``: with two threads every small op waits at a barrier for a core that
another process may hold (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

D_MODEL, NUM_BLOCKS, NUM_HEADS, VOCAB = 256, 4, 4, 256


@dataclass
class Runner:
    """One model behind two calls: prefill(ids (B, L)) -> (last logits (B, V), state) and
    step(token (B, 1), state) -> (logits (B, V), state)."""

    name: str
    prefill: Callable[[torch.Tensor], tuple[torch.Tensor, Any]]
    step: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
    state_bytes: Callable[[Any], int]
    copy_state: Callable[[Any], Any]
    model: Any = None  # the module behind the calls, where there is one
    make_step: Callable[[Any], Callable] | None = None  # the step function over another callable (a compiled model)


def tensor_bytes(obj) -> int:
    """Bytes held by all tensors inside nested tuples, lists, dicts and objects with __dict__."""
    seen: set[int] = set()

    def walk(x) -> int:
        if isinstance(x, torch.Tensor):
            return 0 if id(x) in seen or seen.add(id(x)) else x.numel() * x.element_size()
        if isinstance(x, (tuple, list)):
            return sum(walk(v) for v in x)
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        if hasattr(x, "__dict__") and not isinstance(x, torch.nn.Module):
            return sum(walk(v) for v in vars(x).values())
        if hasattr(x, "__dataclass_fields__"):
            return sum(walk(getattr(x, f)) for f in x.__dataclass_fields__)
        return 0

    return walk(obj)


def clone_tree(obj):
    """A deep copy of the tensors of a state (so every repeat decodes from the same prefill state)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(clone_tree(v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(clone_tree(v) for v in obj)
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.replace(obj, **{f.name: clone_tree(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def library_runner(name: str, model) -> Runner:
    def prefill(ids):
        logits, state = model(ids)
        return logits[:, -1], state

    def make_step(call):
        def step(token, state):
            logits, state = call(token, state)
            return logits[:, -1], state
        return step

    return Runner(name, prefill, make_step(model), tensor_bytes, clone_tree, model, make_step)


def compiled(runner: Runner, ours: bool) -> Runner:
    """``runner`` with its one-token steps through ``torch.compile``; the prompt stays eager. For ours what
    ``generate(..., compile=True)`` runs (``generation.CompiledSteps``: derived weights as graph inputs, guard
    evaluation skipped inside a chain of steps), for others ``torch.compile(model)``."""
    from xlstm_torch.generation import CompiledSteps, compiled_step

    if ours:
        steps = CompiledSteps(runner.model)
        step = runner.make_step(lambda token, state: steps(token, state=state))
    else:
        step = runner.make_step(compiled_step(runner.model))
    return Runner(f"{runner.name} (torch.compile)", runner.prefill, step, runner.state_bytes, runner.copy_state,
                  runner.model, runner.make_step)


def our_xlstm(device, dtype) -> Runner | str:
    """xLSTM[1:1] of the paper (mLSTM and sLSTM blocks alternating)."""
    try:
        from xlstm_torch.models import XLSTMConfig, XLSTMLanguageModel
    except ImportError as err:
        return f"not available ({err})"
    config = XLSTMConfig(vocab_size=VOCAB, embedding_dim=D_MODEL, num_blocks=NUM_BLOCKS, num_heads=NUM_HEADS,
                         slstm_at="1:1")
    return library_runner("xlstm[1:1]", XLSTMLanguageModel(config).to(device, dtype).eval())


def our_xlstm_large(device, dtype) -> Runner | str:
    """The xLSTM 7B architecture at the benchmark's size: the same model as hf-xlstm."""
    try:
        from xlstm_torch.models import XLSTMLargeConfig, XLSTMLargeLanguageModel
    except ImportError as err:
        return f"not available ({err})"
    config = XLSTMLargeConfig(vocab_size=VOCAB, embedding_dim=D_MODEL, num_blocks=NUM_BLOCKS, num_heads=NUM_HEADS)
    return library_runner("xlstm-large", XLSTMLargeLanguageModel(config).to(device, dtype).eval())


def our_transformer(device, dtype) -> Runner:
    from xlstm_torch.models.transformer import Transformer, TransformerConfig

    config = TransformerConfig(vocab_size=VOCAB, d_model=D_MODEL, num_blocks=NUM_BLOCKS, num_heads=NUM_HEADS)
    return library_runner("transformer", Transformer(config).to(device, dtype).eval())


HF_BUILTIN = False  # --hf-builtin: transformers' own PyTorch layers even where the xlstm package is installed


def hf_xlstm(device, dtype) -> Runner | str:
    try:
        if HF_BUILTIN:  # transformers picks its layers when modeling_xlstm is first imported
            import transformers.utils

            if "transformers.models.xlstm.modeling_xlstm" in sys.modules:
                return "--hf-builtin needs a fresh process (modeling_xlstm already imported)"
            transformers.utils.is_xlstm_available = lambda: False
        from transformers import xLSTMConfig, xLSTMForCausalLM
        from transformers.models.xlstm import modeling_xlstm
    except ImportError as err:
        return f"not installed ({err.__class__.__name__}: {err})"
    dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    config = xLSTMConfig(vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=NUM_BLOCKS, num_heads=NUM_HEADS,
                         autocast_kernel_dtype=dtype_name, inference_state_dtype="float32")
    model = xLSTMForCausalLM(config).to(device, dtype).eval()
    backend = "xlstm package" if getattr(modeling_xlstm, "external_xlstm", modeling_xlstm.is_xlstm_available()) else "built-in"

    def prefill(ids):
        out = model(ids, use_cache=True)
        return out.logits[:, -1], out.cache

    def make_step(call):
        def step(token, cache):
            out = call(token, cache=cache, use_cache=True)  # the cache is updated in place
            return out.logits[:, -1], out.cache
        return step

    def copy_cache(cache):
        import copy

        fresh = copy.copy(cache)
        fresh.rnn_state = clone_tree(cache.rnn_state)
        fresh.seqlen_offset = cache.seqlen_offset.clone()
        return fresh

    return Runner(f"hf-xlstm ({backend})", prefill, make_step(model), lambda c: tensor_bytes(c.rnn_state), copy_cache,
                  model, make_step)


BUILDERS = {"xlstm": our_xlstm, "xlstm-large": our_xlstm_large, "transformer": our_transformer, "hf-xlstm": hf_xlstm}


# --- measuring ----------------------------------------------------------------------------------------------------


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device) -> int:
    """Start a peak-memory window; returns the baseline in bytes."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
    except OSError:
        pass
    return _proc_status_kib("VmRSS") * 1024


def _release_free_heap() -> None:
    """Hand memory freed by earlier cases back to the OS (glibc keeps it otherwise), so that this
    case's allocations raise the resident set again and show in the peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_since(device, baseline: int) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() - baseline
    return _proc_status_kib("VmHWM") * 1024 - baseline


def _proc_status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@torch.no_grad()
def measure(runner: Runner, context: int, new_tokens: int, batch: int, repeats: int, device) -> dict:
    g = torch.Generator().manual_seed(context)
    ids = torch.randint(0, VOCAB, (batch, context), generator=g).to(device)
    baseline = reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    logits, state = runner.prefill(ids)
    sync(device)
    prefill_s = time.perf_counter() - t0
    state_bytes = runner.state_bytes(state)
    prefill_peak = peak_since(device, baseline)
    del ids
    best, decode_peak = float("inf"), 0
    for repeat in range(repeats):
        if repeat == 0:  # the decoding's own peak, on top of the state it starts from
            baseline = reset_peak(device)
        best = min(best, timed_decode(runner, logits, state, new_tokens, device))
        if repeat == 0:
            decode_peak = peak_since(device, baseline)
    return dict(prefill_tps=batch * context / prefill_s, decode_tps=batch * new_tokens / best,
                ms_per_token=1000 * best / new_tokens, state_mib=state_bytes / 2**20,
                prefill_peak_mib=prefill_peak / 2**20, decode_peak_mib=decode_peak / 2**20)


def timed_decode(runner: Runner, logits: torch.Tensor, state, new_tokens: int, device) -> float:
    """Seconds for ``new_tokens`` greedy one-token steps from a copy of ``state``, the first token the argmax
    of the prefill's ``logits`` (B, V)."""
    run_state, token = runner.copy_state(state), logits.argmax(-1, keepdim=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        step_logits, run_state = runner.step(token, run_state)
        token = step_logits.argmax(-1, keepdim=True)  # (B, 1)
    sync(device)
    return time.perf_counter() - t0


def warm_up(runner: Runner, device) -> None:
    ids = torch.randint(0, VOCAB, (1, 64)).to(device)
    with torch.no_grad():
        logits, state = runner.prefill(ids)
        for _ in range(3):
            logits, state = runner.step(logits.argmax(-1, keepdim=True), state)


def report_side_by_side(runners: list[Runner], args, device, notes: list[str]) -> int:
    """Every runner decodes in turn, ``args.side_by_side`` rounds; prints median ms per token and each
    runner's speed relative to every hf-xlstm row (HF's ms ÷ this one's)."""
    import statistics

    context = args.contexts[0]
    ids = torch.randint(0, VOCAB, (args.batch, context), generator=torch.Generator().manual_seed(context)).to(device)
    starts = []
    with torch.no_grad():
        for runner in runners:
            warm_up(runner, device)  # a compiled runner compiles here
            starts.append(runner.prefill(ids))
        times: list[list[float]] = [[] for _ in runners]
        for _ in range(args.side_by_side):
            for j, (runner, (logits, state)) in enumerate(zip(runners, starts)):
                times[j].append(1000 * timed_decode(runner, logits, state, args.new_tokens, device) / args.new_tokens)
    medians = [statistics.median(t) for t in times]
    hf = [(r.name, m) for r, m in zip(runners, medians) if r.name.startswith("hf-xlstm")]
    print(f"Decode side by side: D {D_MODEL}, {NUM_BLOCKS} blocks, {NUM_HEADS} heads, vocab {VOCAB}, batch "
          f"{args.batch}, {args.dtype}, context {context}, {args.side_by_side} rounds x {args.new_tokens} tokens, "
          f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__})\n")
    print("| model | median ms/token | min | max |" + "".join(f" {name} ÷ this |" for name, _ in hf))
    print("|---|---:|---:|---:|" + "---:|" * len(hf))
    for runner, median, t in zip(runners, medians, times):
        print(f"| {runner.name} | {median:.3f} | {min(t):.3f} | {max(t):.3f} |"
              + "".join(f" {m / median:.2f}x |" for _, m in hf))
    if notes:
        print("\nNot measured:\n" + "\n".join(notes))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048, 8192, 16384])
    parser.add_argument("--quick", action="store_true", help="contexts 128 and 512, 8 new tokens")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--compile", action="store_true",
                        help="also every model with its one-token steps through torch.compile "
                             "(ours: xlstm_torch.generation.CompiledSteps, what generate(compile=True) runs), "
                             "as rows of their own")
    parser.add_argument("--side-by-side", type=int, default=0, metavar="ROUNDS",
                        help="instead of the table: every model prefills the first context, then ROUNDS rounds in "
                             "which each decodes --new-tokens tokens from a copy of its state, in turn (medians; "
                             "on a noisy machine the only fair comparison)")
    parser.add_argument("--hf-builtin", action="store_true",
                        help="hf-xlstm on transformers' built-in PyTorch layers, also where the xlstm package is installed")
    args = parser.parse_args(argv)
    global HF_BUILTIN
    HF_BUILTIN = args.hf_builtin
    if args.quick:
        args.contexts, args.new_tokens = [128, 512], 8
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)

    rows, notes, side_by_side_runners = [], [], []
    for name in args.models:
        runner = BUILDERS[name](device, dtype)
        if isinstance(runner, str):
            notes.append(f"- {name}: {runner}")
            continue
        runners = [runner] + ([compiled(runner, ours=name != "hf-xlstm")]
                              if args.compile and runner.make_step is not None else [])
        if args.side_by_side:
            side_by_side_runners += runners
            continue
        for runner in runners:
            warm_up(runner, device)  # the compiled runner compiles here
            for context in args.contexts:
                r = measure(runner, context, args.new_tokens, args.batch, args.repeats, device)
                rows.append((runner.name, context, r))
                print(f"{runner.name} L={context}: {r}", file=sys.stderr, flush=True)

    if args.side_by_side:
        return report_side_by_side(side_by_side_runners, args, device, notes)
    print(f"Decode benchmark: D {D_MODEL}, {NUM_BLOCKS} blocks, {NUM_HEADS} heads, vocab {VOCAB}, batch {args.batch}, "
          f"{args.dtype}, {args.new_tokens} new tokens, device {device} "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})\n")
    print("| model | context | prefill tok/s | decode tok/s | ms/token | state MiB | prefill peak MiB "
          "| decode peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, context, r in rows:
        print(f"| {name} | {context} | {r['prefill_tps']:,.0f} | {r['decode_tps']:,.1f} | {r['ms_per_token']:.2f} "
              f"| {r['state_mib']:.2f} | {r['prefill_peak_mib']:.0f} | {r['decode_peak_mib']:.1f} |")
    if notes:
        print("\nNot measured:\n" + "\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
