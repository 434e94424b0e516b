"""generate / stream_generate: greedy and sampled decoding, stop tokens, streaming, left padding."""

from __future__ import annotations

import pytest
import torch

from tests.dummy_models import CallRecorder, CountingModel, FixedLogitsModel, TinyRNN, TinyRNNConfig
from xlstm_torch.generation import filter_logits, generate, stream_generate
from xlstm_torch.models import from_preset
from xlstm_torch.models.transformer import Transformer, TransformerConfig


def transformer(seed=0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig.debug(vocab_size=32)).eval()


def rnn(seed=0) -> TinyRNN:
    torch.manual_seed(seed)
    model = TinyRNN(TinyRNNConfig())
    with torch.no_grad():
        model.head.weight.mul_(4)  # peaked logits: sampled runs differ from greedy ones visibly
    return model.eval()


def xlstm(seed=0):
    torch.manual_seed(seed)
    return from_preset("debug", vocab_size=32).eval()  # xLSTM[1:1]: conv buffers, mLSTM and sLSTM states


def xlstm_large(seed=0):
    torch.manual_seed(seed)
    return from_preset("debug-large", vocab_size=32).eval()


MODELS = {"transformer": transformer, "rnn": rnn, "xlstm": xlstm, "xlstm-large": xlstm_large}


def manual_greedy(model, ids, n):
    """Argmax decoding the slow way: the whole sequence through the model at every step."""
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(ids)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("name", MODELS)
def test_greedy_equals_manual_argmax_loop(name):
    model = MODELS[name]()
    prompt = torch.randint(0, 32, (3, 7))
    out = generate(model, prompt, 12, temperature=0)
    assert out.shape == (3, 19) and out.dtype == torch.int64
    assert torch.equal(out, manual_greedy(model, prompt, 12))
    assert torch.equal(generate(model, prompt, 12, do_sample=False), out)


def test_prefill_once_then_one_token_per_call():
    model = CallRecorder(rnn())
    generate(model, torch.randint(0, 32, (2, 9)), 5, temperature=0)
    assert model.calls == [(2, 9)] + [(2, 1)] * 4  # the 5th token needs no further call
    assert model.logits_shapes == [(2, 1, 32)] * 5  # the prefill's head runs at the last position only


def test_zero_new_tokens_returns_the_prompt():
    prompt = torch.randint(0, 32, (2, 4))
    assert torch.equal(generate(rnn(), prompt, 0), prompt)


@pytest.mark.parametrize("name", MODELS)
def test_seed_reproducible(name):
    model = MODELS[name]()
    prompt = torch.randint(0, 32, (2, 5))
    a = generate(model, prompt, 16, seed=123)
    b = generate(model, prompt, 16, seed=123)
    c = generate(model, prompt, 16, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, generate(model, prompt, 16, temperature=0))
    gen = torch.Generator().manual_seed(123)
    assert torch.equal(generate(model, prompt, 16, generator=gen), a)


def test_top_k_mask():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=3))
    assert kept.tolist() == [[False, True, True, True, False]]
    assert torch.equal(filter_logits(logits, top_k=5), logits)
    assert torch.equal(filter_logits(logits, top_k=99), logits)


@pytest.mark.parametrize("top_p, kept", [
    (0.5, [True, False, False, False]),     # the top token alone already holds 0.5
    (0.7, [True, True, False, False]),      # 0.5 < 0.7 <= 0.8
    (0.79, [True, True, False, False]),
    (0.81, [True, True, True, False]),
    (1.0, [True, True, True, True]),
    (0.01, [True, False, False, False]),    # never empty
])
def test_top_p_mask(top_p, kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    order = torch.tensor([2, 0, 3, 1])  # shuffled vocabulary positions
    logits = torch.empty(1, 4, dtype=torch.float64)
    logits[0, order] = probs.log()
    expected = torch.zeros(1, 4, dtype=torch.bool)
    expected[0, order] = torch.tensor(kept)
    assert torch.equal(torch.isfinite(filter_logits(logits, top_p=top_p)), expected)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.7), dict(temperature=1.3, top_k=3),
                                    dict(temperature=1.0, top_p=0.6)], ids=str)
def test_sampling_frequencies_follow_the_filtered_softmax(kwargs):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    batch = 20000
    out = generate(FixedLogitsModel(logits), torch.zeros(batch, 1, dtype=torch.long), 1, seed=0, **kwargs)
    freq = torch.bincount(out[:, 1], minlength=5).double() / batch
    expected = filter_logits(logits[None] / kwargs["temperature"], kwargs.get("top_k"),
                             kwargs.get("top_p")).softmax(-1)[0].double()
    assert (freq[expected == 0] == 0).all()
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.015)  # ~4 standard errors at 20k draws


def test_top_k_one_is_greedy():
    model = transformer()
    prompt = torch.randint(0, 32, (2, 5))
    assert torch.equal(generate(model, prompt, 10, top_k=1, seed=3), generate(model, prompt, 10, temperature=0))


def test_eos_stops_each_row_and_pads_finished_ones():
    prompt = torch.tensor([[0, 1], [5, 6], [2, 3]])  # the counting model continues 2,3,... 7,8,... 4,5,...
    out = generate(CountingModel(10), prompt, 6, eos_token_id=[5, 9], pad_token_id=0)
    # every row has met an eos id after 4 steps: decoding stops there, short of 6
    assert out.tolist() == [[0, 1, 2, 3, 4, 5],
                            [5, 6, 7, 8, 9, 0],
                            [2, 3, 4, 5, 0, 0]]
    out = generate(CountingModel(10), prompt, 3, eos_token_id=[5, 9], pad_token_id=0)
    assert out.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [2, 3, 4, 5, 0]]  # max_new_tokens first


def test_eos_early_stop_shortens_the_output():
    prompt = torch.tensor([[5, 6], [6, 7]])
    out = generate(CountingModel(10), prompt, 10, eos_token_id=9)
    assert out.tolist() == [[5, 6, 7, 8, 9], [6, 7, 8, 9, 9]]  # row 2 stopped first and is padded with 9


@pytest.mark.parametrize("name", MODELS)
def test_streaming_equals_generate(name):
    model = MODELS[name]()
    prompt = torch.randint(0, 32, (2, 4))
    kwargs = dict(seed=7, top_k=10, top_p=0.9, temperature=0.8)
    steps = list(stream_generate(model, prompt, 9, **kwargs))
    assert len(steps) == 9 and all(s.shape == (2,) for s in steps)
    out = generate(model, prompt, 9, **kwargs)
    assert torch.equal(torch.cat([prompt, torch.stack(steps, 1)], 1), out)
    seen = []
    generate(model, prompt, 9, streamer=seen.append, **kwargs)
    assert torch.equal(torch.stack(seen, 1), out[:, 4:])


def test_streamer_object_gets_put_and_end():
    class Streamer:
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, tokens):
            self.tokens.append(tokens)

        def end(self):
            self.ended = True

    streamer = Streamer()
    out = generate(CountingModel(10), torch.tensor([[1]]), 3, streamer=streamer)
    assert streamer.ended and torch.equal(torch.stack(streamer.tokens, 1), out[:, 1:])


def test_stream_generate_checks_arguments_eagerly_and_keeps_grad_mode():
    with pytest.raises(ValueError, match="max_new_tokens"):
        stream_generate(rnn(), torch.zeros(1, 2, dtype=torch.long), -1)  # no next() needed
    steps = stream_generate(rnn(), torch.zeros(1, 2, dtype=torch.long), 3)
    next(steps)
    assert torch.is_grad_enabled()  # the suspended generator does not leak no_grad to the caller


# --- left-padded prompts ----------------------------------------------------------------------------------------


def left_pad(rows, pad_id):
    S = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (S - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (S - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("name", MODELS)
def test_left_padded_batch_equals_each_row_alone(name):
    model = MODELS[name]()
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(0, 32, (n,), generator=g).tolist() for n in (6, 2, 9, 6, 1)]
    ids, mask = left_pad(rows, pad_id=0)
    out = generate(model, ids, 8, temperature=0, attention_mask=mask)
    assert out.shape == (5, 9 + 8)
    for i, row in enumerate(rows):
        alone = generate(model, torch.tensor([row]), 8, temperature=0)
        assert torch.equal(out[i, 9:], alone[0, len(row):]), f"row {i}"
        assert torch.equal(out[i, :9], ids[i])
    # the pad tokens' values cannot matter
    ids_other_pad, _ = left_pad(rows, pad_id=31)
    assert torch.equal(generate(model, ids_other_pad, 8, temperature=0, attention_mask=mask)[:, 9:], out[:, 9:])


def test_left_padding_joins_fixed_size_states_into_one_batch():
    model = CallRecorder(rnn())
    ids, mask = left_pad([[1, 2, 3], [4], [5, 6, 7], [8, 9]], pad_id=0)
    generate(model, ids, 4, temperature=0, attention_mask=mask)
    # one prefill per distinct length (longest first), then the whole batch one token at a time
    assert model.calls == [(2, 3), (1, 2), (1, 1)] + [(4, 1)] * 3


def test_left_padding_with_growing_caches_decodes_groups_in_lockstep():
    model = CallRecorder(transformer())
    ids, mask = left_pad([[1, 2, 3], [4], [5, 6, 7]], pad_id=0)
    generate(model, ids, 3, temperature=0, attention_mask=mask)
    assert model.calls == [(2, 3), (1, 1)] + [(2, 1), (1, 1)] * 2


def test_left_padding_sampling_reproducible():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    a = generate(rnn(), ids, 10, seed=1, attention_mask=mask)
    assert torch.equal(a, generate(rnn(), ids, 10, seed=1, attention_mask=mask))


# --- prompts of different lengths as a list: packed prefill ---------------------------------------------------


def random_prompts(lengths, seed=5) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 32, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("name", MODELS)
def test_list_of_prompts_equals_each_prompt_alone(name):
    model = MODELS[name]()
    prompts = random_prompts([6, 1, 20, 2, 6])
    prompts[3] = torch.tensor(prompts[3])  # tensors and lists mix
    out = generate(model, prompts, 8, temperature=0)
    assert isinstance(out, list) and len(out) == len(prompts)
    for b, prompt in enumerate(prompts):
        alone = generate(model, torch.as_tensor(prompt)[None], 8, temperature=0)[0]
        assert out[b].dtype == torch.int64 and torch.equal(out[b], alone), f"prompt {b}"


@pytest.mark.parametrize("name", ["xlstm", "xlstm-large"])
def test_xlstm_prefills_all_prompts_in_one_packed_call(name):
    model = CallRecorder(MODELS[name]())
    prompts = random_prompts([3, 1, 5])
    generate(model, prompts, 4, temperature=0)
    assert model.calls == [(1, 9)] + [(3, 1)] * 3  # one packed prefill, then the batch token by token
    assert model.logits_shapes[0] == (3, 32)  # the head at each prompt's last position only
    model.calls.clear()
    ids, mask = left_pad(prompts, pad_id=0)  # left padding: the same, the padding never fed
    generate(model, ids, 4, temperature=0, attention_mask=mask)
    assert model.calls == [(1, 9)] + [(3, 1)] * 3


def test_prompts_of_one_length_stay_one_plain_batch():
    model = CallRecorder(xlstm())
    generate(model, random_prompts([4, 4]), 2, temperature=0)
    assert model.calls == [(2, 4), (2, 1)]


def test_list_of_prompts_sampling_matches_left_padding_and_is_reproducible():
    prompts = random_prompts([3, 7, 1])
    ids, mask = left_pad(prompts, pad_id=0)
    for name in ("xlstm", "rnn"):
        model = MODELS[name]()
        out = generate(model, prompts, 6, seed=3)
        padded = generate(model, ids, 6, seed=3, attention_mask=mask)
        assert all(torch.equal(o[-6:], p[-6:]) for o, p in zip(out, padded)), name
        assert all(torch.equal(a, b) for a, b in zip(out, generate(model, prompts, 6, seed=3))), name


def test_list_of_prompts_stream_and_zero_tokens():
    model = xlstm()
    prompts = random_prompts([2, 5])
    steps = list(stream_generate(model, prompts, 3, temperature=0))
    assert len(steps) == 3 and all(t.shape == (2,) for t in steps)
    out = generate(model, prompts, 3, temperature=0)
    assert all(torch.equal(o[len(p):], torch.stack(steps)[:, b]) for b, (o, p) in enumerate(zip(out, prompts)))
    assert [o.tolist() for o in generate(model, prompts, 0)] == prompts


@pytest.mark.parametrize("prompts, kwargs, exc, match", [
    ([], {}, TypeError, "non-empty list of prompts"),
    ("abc", {}, TypeError, "input_ids"),
    ([[1, 2], []], {}, ValueError, r"input_ids\[1\] must hold at least one token"),
    ([[1, -2]], {}, ValueError, r"input_ids\[0\]"),
    ([[1, 2.5]], {}, TypeError, r"input_ids\[0\] must be a list of ints"),
    ([torch.zeros(2, 2, dtype=torch.long)], {}, TypeError, r"input_ids\[0\] must be a 1-D int64 tensor"),
    ([torch.zeros(2)], {}, TypeError, r"input_ids\[0\] must be a 1-D int64 tensor"),
    ([[1, 2], [3]], dict(attention_mask=torch.ones(2, 2)), ValueError, "attention_mask"),
], ids=["empty", "string", "empty-prompt", "negative-id", "float-id", "2-D", "float-tensor", "mask"])
def test_list_of_prompts_errors_name_the_argument(prompts, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        generate(rnn(), prompts, 2, **kwargs)


# --- argument checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=2.5), ValueError, "max_new_tokens"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(eos_token_id=[]), ValueError, "eos_token_id"),
    (dict(eos_token_id=-2), ValueError, "eos_token_id"),
    (dict(eos_token_id="x"), ValueError, "eos_token_id"),
    (dict(pad_token_id=-1), ValueError, "pad_token_id"),
    (dict(seed=1, generator=torch.Generator()), ValueError, "generator or seed"),
    (dict(generator=3), TypeError, "generator"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(do_sample="yes"), TypeError, "do_sample"),
    (dict(do_sample=True, temperature=0), ValueError, "do_sample"),
    (dict(streamer=3), TypeError, "streamer"),
    (dict(compile="yes"), TypeError, "compile"),
    (dict(input_ids=torch.zeros(2, 3)), TypeError, "input_ids"),
    (dict(input_ids=torch.zeros(3, dtype=torch.long)), ValueError, "input_ids"),
    (dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), ValueError, "input_ids"),
    (dict(attention_mask=torch.ones(2, 2)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]])), ValueError, "left padding"),
    (dict(attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]])), ValueError, "attention_mask"),
    (dict(attention_mask=torch.tensor([[2, 1, 1], [1, 1, 1]])), ValueError, "attention_mask"),
    (dict(attention_mask=[[1, 1, 1], [1, 1, 1]]), TypeError, "attention_mask"),
], ids=lambda v: str(v)[:40])
def test_argument_errors_name_the_argument(kwargs, exc, match):
    args = dict(input_ids=torch.zeros(2, 3, dtype=torch.long), max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        generate(rnn(), args.pop("input_ids"), args.pop("max_new_tokens"), **args)


def test_model_method_forwards_to_generate():
    model = transformer()
    prompt = torch.randint(0, 32, (1, 3))
    assert torch.equal(model.generate(prompt, 4, temperature=0), generate(model, prompt, 4, temperature=0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xlstm", "xlstm-large"])
def test_compiled_decoding_equals_eager(name):
    """``compile=True``: the one-token steps through torch.compile (inductor) give the eager tokens, greedy and
    sampled; a weight changed afterwards reaches the compiled steps (parameters are graph inputs)."""
    from xlstm_torch.generation import compiled_step

    model = MODELS[name]()
    prompt = torch.randint(0, 32, (2, 7))
    torch._dynamo.reset()
    for options in (dict(temperature=0), dict(seed=3, top_k=8)):
        assert torch.equal(generate(model, prompt, 10, compile=True, **options), generate(model, prompt, 10, **options))
    assert compiled_step(model) is compiled_step(model)  # made once per model
    assert not any("_compiled_decode_step" in k for k in model.state_dict())  # not a submodule
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(-1) if hasattr(model, "get_output_embeddings") else \
            next(model.parameters()).mul_(-1)
    assert torch.equal(generate(model, prompt, 10, compile=True, temperature=0),
                       generate(model, prompt, 10, temperature=0))


def test_compiled_step_writes_its_host_code_in_cpp_on_a_cpu(monkeypatch):
    """On a CPU the decode graph's host code is C++ (``cpp_wrapper``, ~1.1x per token, benchmarks/RESULTS.md);
    elsewhere torch.compile's defaults."""
    from xlstm_torch.generation import compiled_step

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or torch.nn.Identity())
    model = rnn()
    compiled_step(model)
    assert calls == [{"options": {"cpp_wrapper": True}}]
    meta = rnn().to("meta")  # parameters off the CPU
    compiled_step(meta)
    assert calls[-1] == {"options": None}


def _halve_weights_(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xlstm", "xlstm-large"])
def test_compiled_steps_read_the_caches_and_refresh_them(name):
    """``CompiledSteps``: the derived weights are graph inputs, read from the caches. Called directly inside
    ``weights_fixed`` after an in-place change, the graph sees the stale caches (so they are inputs, not
    rebuilt); through ``CompiledSteps`` the change is seen (an eager call refreshes them), and the compiled
    calls after it agree with eager ones (so they are inputs, not constants baked into the graph)."""
    from xlstm_torch.generation import CompiledSteps
    from xlstm_torch.nn import decode

    model = MODELS[name]()
    steps = CompiledSteps(model)
    torch._dynamo.reset()
    with torch.no_grad():
        logits, state = model(torch.randint(0, 32, (2, 6)))
        token = logits[:, -1:].argmax(-1)
        for _ in range(3):
            steps(token, state)  # eager, then compiled
        _halve_weights_(model)
        with decode.weights_fixed():
            stale, _ = steps.compiled(token, state=state)
        refreshed, _ = steps(token, state)  # sees the change: runs eagerly
        compiled, _ = steps(token, state)
        eager, _ = model(token, state)
    assert not torch.allclose(stale, eager, rtol=1e-3, atol=1e-3)
    assert torch.equal(refreshed, eager)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xlstm", "xlstm-large"])
def test_decoding_step_with_fixed_weights_is_one_graph(name):
    """Inside ``weights_fixed`` (what ``CompiledSteps`` runs) a one-token step traces as one graph, the cached
    tensors read without a break."""
    from xlstm_torch.nn import decode

    model = MODELS[name]()
    with torch.no_grad():
        logits, state = model(torch.randint(0, 32, (1, 4)))
        token = logits[:, -1:].argmax(-1)
        model(token, state)  # eager: fills the caches
        torch._dynamo.reset()
        with decode.weights_fixed():
            explained = torch._dynamo.explain(lambda t, s: model(t, state=s)[0])(token, state)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_compiled_steps_skip_guards_only_inside_a_chain(monkeypatch):
    """Guard evaluation is skipped only for a call whose state the previous compiled call returned, after
    two guarded calls of that chain; a copied state, other token ids or an eager call start a new chain."""
    import xlstm_torch.generation as generation

    skipped = []
    real = torch.compiler.set_stance

    def recording(*args, skip_guard_eval_unsafe=False, **kwargs):
        skipped.append(skip_guard_eval_unsafe)
        return real(*args, skip_guard_eval_unsafe=skip_guard_eval_unsafe, **kwargs)

    monkeypatch.setattr(torch.compiler, "set_stance", recording)
    model = xlstm()
    steps = generation.CompiledSteps(model)
    with torch.no_grad():
        logits, state = model(torch.randint(0, 32, (1, 5)))
        token = logits[:, -1:].argmax(-1)
        chain = state
        for _ in range(6):  # eager, guarded, guarded, 3 skipped
            logits, chain = steps(token, chain)
        assert skipped == [True] * 3
        copied = chain.map(torch.clone)
        _, after_copy = steps(token, copied)
        _, after_copy = steps(token, after_copy)  # the copy's chain: guarded twice
        _, fork = steps(token.int(), chain)  # the chain's state, other token ids (int32): guarded
        assert skipped == [True] * 3
        _, chain = steps(token, chain)  # the chain again (its entry was taken by the fork): guarded
        _, after_copy = steps(token, after_copy)  # third call of the copy's chain
        assert skipped == [True] * 4
        _halve_weights_(model)
        _, after_copy = steps(token, after_copy)  # eager: every chain starts again
        _, after_copy = steps(token, after_copy)
        assert skipped == [True] * 4
        monkeypatch.setattr(generation.CompiledSteps, "CAN_SKIP_GUARDS", False)  # a torch without the stance
        for _ in range(3):
            _, after_copy = steps(token, after_copy)
        assert skipped == [True] * 4


@pytest.mark.slow
def test_compiled_generation_sees_changes_between_steps():
    """Weights changed while a compiled ``stream_generate`` runs (between two tokens) and prompts of unequal
    lengths (groups of rows): the tokens of the eager run with the same changes."""
    prompts = [torch.randint(0, 32, (n,)) for n in (3, 5, 5, 7)]

    def run(compile):
        model = xlstm()
        tokens = []
        for j, step in enumerate(stream_generate(model, prompts, 8, temperature=0, compile=compile)):
            tokens.append(step)
            if j == 4:
                _halve_weights_(model)
        return torch.stack(tokens)

    assert torch.equal(run(True), run(False))


def test_a_compiled_step_does_not_keep_its_model_alive():
    import gc
    import weakref

    from xlstm_torch.generation import compiled_step

    model = rnn()
    alive = weakref.ref(model)
    compiled_step(model)  # wraps only: nothing compiles before the first call
    del model
    gc.collect()
    assert alive() is None
