"""Autoregressive generation for any model of the library: greedy or sampled, with a carried state.

xLSTM paper (Beck et al., NeurIPS 2024), Sec. 2.3: the recurrent form of the mLSTM makes decoding
cost O(1) time and memory per token; xLSTM 7B (Beck et al., 2025), inference experiments: prefill the
prompt in one parallel/chunkwise call, then decode token by token from the state. ``generate`` does exactly that for any model with the surface

    logits, state = model(input_ids, state=None)        input_ids (B, S) -> logits (B, S, V)

One prefill call over the prompt, then one call per new token that feeds only that token and the
state: nothing here grows with the number of new tokens except the output ids themselves.

Prompts of unequal length, given as a list of prompts (no padding at all) or left-padded with an
``attention_mask``: a recurrent state would absorb pad tokens, so pad tokens are never fed.

- Models with ``supports_packed_states`` (the xLSTM models) prefill all prompts in ONE call, packed
  back to back in one row with ``cu_seqlens`` (xlstm_torch/ops/_packing.py): every prompt runs as if
  alone and the model returns one state row per prompt, which is the batch that decodes.
- Other models: rows are grouped by their prompt length and each group is prefilled on its own. If the
  groups' states can be joined along the batch dimension (every tensor in the state has the group's
  batch size as dim 0 and equal other dims), they are concatenated and decoding runs as one batch;
  otherwise (for example Transformer caches of different lengths) the groups are decoded in lockstep,
  one call per group and step.

Either way each row gets the tokens it would get alone (greedy), and sampling draws for the whole
batch at once, so a seed fixes the result whatever the prefill.
"""

from __future__ import annotations

import dataclasses
import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .nn import decode

__all__ = ["generate", "stream_generate", "filter_logits"]


def generate(model, input_ids: torch.Tensor | Sequence[Sequence[int] | torch.Tensor], max_new_tokens: int,
             **options) -> torch.Tensor | list[torch.Tensor]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; the options are those of ``stream_generate``.

    input_ids: (B, S) int64 prompts (left-padded where ``attention_mask`` (B, S) has leading zeros),
    or a list of B prompts of any lengths, each a list of token ids or a 1-D int64 tensor.
    Returns for a tensor (B, S + N) int64: the prompts followed by N <= max_new_tokens new tokens; for
    a list, a list of B 1-D int64 tensors, prompt b followed by its N new tokens. N is smaller only
    when every row has produced one of ``eos_token_id``.
    """
    new_tokens = list(stream_generate(model, input_ids, max_new_tokens, **options))
    if not isinstance(input_ids, torch.Tensor):
        device = new_tokens[0].device if new_tokens else None
        continuation = torch.stack(new_tokens, dim=1) if new_tokens else None  # (B, N)
        return [torch.cat([prompt, continuation[b]]) if continuation is not None else prompt
                for b, prompt in enumerate(_as_prompts(input_ids, None, device))]
    prompt = input_ids.to(new_tokens[0].device) if new_tokens else input_ids
    return torch.cat([prompt.long(), *(t[:, None] for t in new_tokens)], dim=1)  # (B, S + N)


def stream_generate(
    model,
    input_ids: torch.Tensor | Sequence[Sequence[int] | torch.Tensor],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    streamer: Callable[[torch.Tensor], Any] | Any | None = None,
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """Decode step by step: an iterator over the (B,) int64 new tokens of each step.

    input_ids (B, S) int64 prompts (left-padded where ``attention_mask`` (B, S) has leading zeros), or a
    list of B prompts of any lengths (lists of token ids or 1-D int64 tensors; no attention_mask).
    At most ``max_new_tokens`` steps; fewer when every row has produced one of ``eos_token_id``.
    A row that has finished continues with ``pad_token_id`` (default: the first eos id).

    Greedy (argmax) when ``temperature == 0`` or ``do_sample=False``; otherwise samples from
    softmax(logits / temperature) restricted by ``top_k`` and ``top_p`` (nucleus). ``seed`` (or an
    explicit ``generator``) makes sampling reproducible. ``streamer`` is called with the (B,) new
    tokens of every step, or, if it has ``put``/``end`` methods, ``put`` per step and ``end`` at the end.
    The arguments are checked when this is called, not at the first ``next``.

    ``compile=True`` runs the one-token steps through ``torch.compile`` (inductor; the prompts still run
    eagerly, their lengths vary): the first step compiles (tens of seconds on a CPU), later calls on the same
    model reuse it. It pays where a step is many small ops (a CPU at batch 1: benchmarks/bench_decode.py).
    """
    _check_int("max_new_tokens", max_new_tokens, minimum=0)
    prompts = _as_prompts(input_ids, attention_mask, device=None)
    greedy = _resolve_greedy(temperature, do_sample)
    if top_k is not None:
        _check_int("top_k", top_k, minimum=1)
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    eos_ids = _eos_list(eos_token_id)
    if pad_token_id is not None:
        _check_int("pad_token_id", pad_token_id, minimum=0)
    elif eos_ids:
        pad_token_id = eos_ids[0]
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        _check_int("seed", seed, minimum=0)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be a bool, got {type(compile).__name__}")
    if streamer is not None and not (callable(streamer) or hasattr(streamer, "put")):
        raise TypeError(f"streamer must be callable or have a put method, got {type(streamer).__name__}")

    device = _model_device(model, prompts[0].device)
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    steps = _decode(model, [p.to(device) for p in prompts], max_new_tokens, greedy=greedy, temperature=float(temperature), top_k=top_k, top_p=top_p,
                    eos_ids=eos_ids, pad_token_id=pad_token_id, generator=generator, streamer=streamer,
                    one_token=CompiledSteps(model) if compile else model)
    return steps


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus; logits (B, V).

    top-p keeps the smallest set of most likely tokens whose probabilities sum to at least top_p
    (always at least the most likely token). Applied after top-k, as in the usual sampling recipe.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        drop_sorted = mass_before >= top_p  # the nucleus already holds top_p without this token
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


# --- the decoding loop -------------------------------------------------------------------------------------------


class _Group:
    """Rows decoded together: their indices in the batch and their model state."""

    def __init__(self, rows: torch.Tensor, state: Any) -> None:
        self.rows, self.state = rows, state


def compiled_step(model):
    """``torch.compile(model)`` for one-token decoding calls, made once per model and kept in the model's
    ``__dict__`` (not as a submodule: no state_dict entries; the reference cycle goes with the model). A copy of
    the model gets its own. The parameters are inputs of the compiled graph (not constants), so training or
    loading weights later is seen.

    On a CPU inductor writes the graph's host code in C++ (``cpp_wrapper``): a step of the xLSTM 7B architecture
    at D 256 runs its kernels in ~0.3 ms, and the Python wrapper around them cost another ~0.1 ms; in C++ the
    step is 1.08-1.10x faster (benchmarks/RESULTS.md), for ~7 s more compile time on the first call."""
    compiled = model.__dict__.get("_compiled_decode_step")
    if compiled is None or compiled._orig_mod is not model:
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        compiled = torch.compile(model, options={"cpp_wrapper": True} if on_cpu else None)
        object.__setattr__(model, "_compiled_decode_step", compiled)
    return compiled


def _has_skip_guard_eval() -> bool:
    """Whether this torch has ``torch.compiler.set_stance(skip_guard_eval_unsafe=...)`` (recent versions only)."""
    try:
        return "skip_guard_eval_unsafe" in inspect.signature(torch.compiler.set_stance).parameters
    except (AttributeError, TypeError, ValueError):
        return False


class CompiledSteps:
    """One-token calls through ``compiled_step(model)`` with the derived weights as graph inputs.

    The step paths read tensors derived from the parameters (concatenated or re-laid-out weights,
    ``nn/decode.py``). Eagerly they are cached and checked against the parameters' versions at every
    call; a traced graph cannot check versions and would rebuild them at every token. So the first call,
    and every call after a parameter changed (in place, by ``load_state_dict``, or moved), runs eagerly,
    which brings every cache up to date; the others run compiled inside ``decode.weights_fixed()``, reading
    the caches. The check per call compares each parameter's storage and version counter (a parameter
    replaced by another object while the loop runs is not seen; the next ``generate`` is).

    After two compiled calls that passed dynamo's guards, a call whose state is the one the previous call
    returned, with token ids of the previous call's shape, dtype and layout, skips the guard evaluation
    (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``; ~0.1 ms per token on a CPU): its inputs
    match the previous call's, so the guards would pass. The first two calls of such a chain are guarded
    because the first one's state comes from elsewhere (an eager call, a copy), whose layouts may differ
    from a compiled call's. Any eager call starts every chain again.
    """

    GUARDED_CALLS = 2
    CAN_SKIP_GUARDS = _has_skip_guard_eval()  # older torch versions evaluate the guards at every call

    def __init__(self, model) -> None:
        self.model, self.compiled = model, compiled_step(model)
        self.params = [p for p in model.parameters() if not p.is_inference()]  # others have no version
        self.checked: list | None = None  # the parameters' (storage, version) when the caches were brought up to date
        self.chains: dict[int, tuple] = {}  # id(returned state) -> (weak ref to it, guarded calls, input signature)

    def __call__(self, input_ids: torch.Tensor, state: Any = None):
        now = [(p.data_ptr(), p._version) for p in self.params]
        if now != self.checked:
            out = self.model(input_ids, state=state)  # eager: rebuilds any cache a change made stale
            self.checked, self.chains = now, {}
            return out
        signature = (input_ids.shape, input_ids.dtype, input_ids.device, input_ids.stride())
        link = self.chains.pop(id(state), None)
        guarded = link[1] if link is not None and link[0]() is state and link[2] == signature else 0
        with decode.weights_fixed():
            if guarded < self.GUARDED_CALLS or not self.CAN_SKIP_GUARDS:
                logits, state = self.compiled(input_ids, state=state)
                guarded += 1
            else:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    logits, state = self.compiled(input_ids, state=state)
        try:
            self.chains[id(state)] = (weakref.ref(state), guarded, signature)
        except TypeError:  # a state without weak references is never trusted to continue a chain
            pass
        return logits, state


def _decode(model, prompts: list[torch.Tensor], max_new_tokens, *, greedy, temperature, top_k, top_p, eos_ids,
            pad_token_id, generator, streamer, one_token) -> Iterator[torch.Tensor]:
    B, device = len(prompts), prompts[0].device
    if max_new_tokens == 0:
        return
    with torch.no_grad():
        next_logits, groups = _prefill(model, prompts)

    eos = torch.tensor(eos_ids, device=device, dtype=torch.long)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        for step in range(max_new_tokens):
            with torch.no_grad():
                tokens = _pick(next_logits, greedy, temperature, top_k, top_p, generator)  # (B,)
            if eos_ids:
                tokens = torch.where(finished, pad_token_id, tokens)
                finished = finished | torch.isin(tokens, eos)
            if streamer is not None:
                (streamer.put if hasattr(streamer, "put") else streamer)(tokens)
            yield tokens
            if step == max_new_tokens - 1 or (eos_ids and bool(finished.all())):
                break
            for group in groups:
                with torch.no_grad():
                    logits, group.state = one_token(tokens[group.rows, None], state=group.state)  # (G, 1, V)
                next_logits[group.rows] = logits[:, -1].float()
    finally:
        if streamer is not None and hasattr(streamer, "end"):
            streamer.end()


def _prefill(model, prompts: list[torch.Tensor]) -> tuple[torch.Tensor, list[_Group]]:
    """Run every prompt (1-D int64) through the model once; return the logits of each prompt's next
    token (B, V) in float32 and the groups of rows that decode together (module docstring). The head runs at
    each prompt's last position only (``logits_to_keep``): at a 50k vocabulary the logits of a whole
    4,096-token prompt would take 0.8 GB in float32."""
    B, lengths = len(prompts), [len(p) for p in prompts]
    rows = torch.arange(B, device=prompts[0].device)
    if len(set(lengths)) == 1:  # one plain batch
        logits, state = model(torch.stack(prompts), state=None, logits_to_keep=1)  # (B, 1, V)
        return logits[:, -1].float(), [_Group(rows, state)]
    if getattr(model, "supports_packed_states", False):  # one packed row, one state row per prompt
        cu_seqlens = torch.tensor([0, *lengths], device=prompts[0].device).cumsum(0)
        last = torch.zeros(1, int(cu_seqlens[-1]), dtype=torch.bool, device=cu_seqlens.device)
        last[0, cu_seqlens[1:] - 1] = True  # each prompt's last position
        logits, state = model(torch.cat(prompts)[None], state=None, cu_seqlens=cu_seqlens, logits_to_keep=last)
        return logits.float(), [_Group(rows, state)]  # (B, V)
    next_logits: torch.Tensor | None = None  # (B, V)
    groups = []
    by_length = torch.tensor(lengths, device=rows.device)
    for length in sorted(set(lengths), reverse=True):  # one call per distinct prompt length
        group = (by_length == length).nonzero().flatten()
        logits, state = model(torch.stack([prompts[b] for b in group.tolist()]), state=None,
                               logits_to_keep=1)  # (G, 1, V)
        if next_logits is None:
            next_logits = torch.empty(B, logits.shape[-1], device=logits.device, dtype=torch.float32)
        next_logits[group] = logits[:, -1].float()
        groups.append(_Group(group, state))
    return next_logits, _merge_groups(groups)


def _pick(logits, greedy, temperature, top_k, top_p, generator) -> torch.Tensor:
    """The next token of every row from its logits (B, V): argmax, or a draw from the filtered softmax."""
    if greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)


class _Unjoinable(Exception):
    """Raised inside ``_concat_states`` when the states cannot be joined along the batch dimension."""


def _merge_groups(groups: list[_Group]) -> list[_Group]:
    """Join all groups into one batch if their states allow it; else keep them apart."""
    if len(groups) == 1:
        return groups
    try:
        state = _concat_states([g.state for g in groups], [len(g.rows) for g in groups])
    except _Unjoinable:
        return groups
    return [_Group(torch.cat([g.rows for g in groups]), state)]


def _concat_states(states: list, batch_sizes: list[int]):
    """Concatenate like-structured states along dim 0 of every tensor (tuples, NamedTuples, lists,
    dicts and dataclasses are walked). Any tensor whose dim 0 is not its group's batch size, or whose
    other dims differ between groups, makes the states unjoinable."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        for s, b in zip(states, batch_sizes):
            if not isinstance(s, torch.Tensor) or s.ndim == 0 or s.shape[0] != b or s.shape[1:] != first.shape[1:]:
                raise _Unjoinable
        return torch.cat(states, dim=0)
    if any(type(s) is not type(first) for s in states):
        raise _Unjoinable
    if first is None or isinstance(first, (bool, int, float, str)):
        if any(s != first for s in states):
            raise _Unjoinable
        return first
    if isinstance(first, (tuple, list)):
        if any(len(s) != len(first) for s in states):
            raise _Unjoinable
        parts = [_concat_states(list(items), batch_sizes) for items in zip(*states)]
        return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)
    if isinstance(first, dict):
        if any(s.keys() != first.keys() for s in states):
            raise _Unjoinable
        return {key: _concat_states([s[key] for s in states], batch_sizes) for key in first}
    if dataclasses.is_dataclass(first):
        joined = {f.name: _concat_states([getattr(s, f.name) for s in states], batch_sizes)
                  for f in dataclasses.fields(first) if f.init}
        return dataclasses.replace(first, **joined)
    raise _Unjoinable


# --- argument checks ---------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _as_prompts(input_ids, attention_mask, device) -> list[torch.Tensor]:
    """Check the prompts; return them as B 1-D int64 tensors without padding (on ``device``, or where
    they are when None)."""
    if isinstance(input_ids, torch.Tensor):
        _check_prompt(input_ids, attention_mask)
        lengths = [input_ids.shape[1]] * input_ids.shape[0] if attention_mask is None else attention_mask.sum(1).tolist()
        prompts = [row[row.shape[0] - n:].long() for row, n in zip(input_ids, lengths)]
        return prompts if device is None else [p.to(device) for p in prompts]
    if not isinstance(input_ids, (list, tuple)) or not input_ids:
        raise TypeError("input_ids must be an int64 tensor of shape (B, S) or a non-empty list of prompts, got "
                        f"{type(input_ids).__name__}" + (" (empty)" if isinstance(input_ids, (list, tuple)) else ""))
    if attention_mask is not None:
        raise ValueError("attention_mask is for a left-padded (B, S) tensor; a list of prompts needs no padding")
    prompts = []
    for b, prompt in enumerate(input_ids):
        if isinstance(prompt, torch.Tensor):
            if prompt.dtype not in (torch.int64, torch.int32) or prompt.ndim != 1:
                raise TypeError(f"input_ids[{b}] must be a 1-D int64 tensor or a list of ints, got a {prompt.ndim}-D "
                                f"{prompt.dtype} tensor")
        elif not isinstance(prompt, (list, tuple)) or any(isinstance(t, bool) or not isinstance(t, int) for t in prompt):
            raise TypeError(f"input_ids[{b}] must be a list of ints or a 1-D int64 tensor, got {prompt!r:.60}")
        prompt = torch.as_tensor(prompt, dtype=torch.long, device=device)
        if prompt.numel() == 0 or bool((prompt < 0).any()):
            raise ValueError(f"input_ids[{b}] must hold at least one token id, all >= 0")
        prompts.append(prompt)
    return prompts


def _check_prompt(input_ids, attention_mask) -> None:
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an int64 tensor of shape (B, S), got {input_ids.dtype}")
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (B, S) with B, S >= 1, got {tuple(input_ids.shape)}")
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    mask = attention_mask.long()
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError("attention_mask must describe left padding (zeros, then ones, in every row); "
                         "right-padded prompts are not supported")
    if (mask.sum(1) == 0).any():
        raise ValueError("attention_mask has a row with no tokens; every prompt needs at least one")


def _resolve_greedy(temperature, do_sample) -> bool:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool or None, got {do_sample!r}")
    if do_sample and temperature == 0:
        raise ValueError("do_sample=True needs temperature > 0 (temperature 0 means greedy)")
    return do_sample is False or temperature == 0


def _eos_list(eos_token_id) -> list[int]:
    if eos_token_id is None:
        return []
    ids = [eos_token_id] if isinstance(eos_token_id, int) and not isinstance(eos_token_id, bool) else eos_token_id
    if not isinstance(ids, (list, tuple)) or not ids or any(
            isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"eos_token_id must be a non-negative int or a non-empty list of them, got {eos_token_id!r}")
    return list(ids)


def _model_device(model, fallback: torch.device) -> torch.device:
    for param in model.parameters():
        return param.device
    return fallback
