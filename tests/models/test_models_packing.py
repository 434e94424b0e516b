"""Packed documents through whole language models: ``model(input_ids (1, S), cu_seqlens=...)`` equals the
per-document loop (logits, per-document states, parameter gradients), and the per-document states
continue decoding as a batch. The Transformer baseline packs with block-diagonal attention."""

import pytest
import torch

import xlstm_torch
from tests.helpers import assert_close, cat_rows, cu_seqlens_of, document_spans, select_rows
from xlstm_torch.models import ModelState
from xlstm_torch.models.transformer import Transformer, TransformerConfig

# One-token documents, documents shorter than the conv state (3), longer than the chunk (16).
LENGTHS = [5, 1, 23, 2, 40]
PRESET_NAMES = ["debug", "debug-large"]


def model_for(name: str, dtype=torch.float64):
    torch.manual_seed(0)
    if name == "transformer":
        return Transformer(TransformerConfig.debug()).to(dtype)
    model = xlstm_torch.from_preset(name).to(dtype)
    with torch.no_grad():  # the paper init zeros the gate weights and the sLSTM R: make every path count
        for pname, p in model.named_parameters():
            if "preact.weight" in pname or "recurrent_kernel" in pname:
                p.normal_(0.0, 0.1)
    return model


def token_ids(model, lengths, seed=1):
    return torch.randint(0, 256, (1, sum(lengths)), generator=torch.Generator().manual_seed(seed)) % (
        model.embedding.num_embeddings)


def state_tensors(state) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(state.blocks) if t is not None]


def loss_and_grads(model, logits, state):
    loss = (logits * torch.cos(logits)).sum()
    if state is not None:
        loss = loss + sum((0.1 + 0.01 * j) * t.sin().sum() for j, t in enumerate(state_tensors(state)))
    return torch.autograd.grad(loss, list(model.parameters()))


def per_document(model, ids, lengths, state=None):
    logits, states = [], []
    for d, (a, b) in enumerate(document_spans(lengths)):
        out, s = model(ids[:, a:b], None if state is None else ModelState(select_rows(state.blocks, d)))
        logits.append(out)
        states.append(s)
    # Only models with per-document states return one for a packed call (the Transformer returns None).
    joined = ModelState(cat_rows([s.blocks for s in states])) if model.supports_packed_states else None
    return torch.cat(logits, dim=1), joined


def compare(packed, alone, model, rtol):
    (logits, state), (logits_ref, state_ref) = packed, alone
    assert_close(logits, logits_ref, rtol, "logits")
    assert (state is None) == (state_ref is None)
    if state_ref is not None:
        assert state.batch_size == len(LENGTHS)
        for j, (a, b) in enumerate(zip(state_tensors(state), state_tensors(state_ref))):
            assert_close(a, b, rtol, f"state tensor {j}")
    grads, grads_ref = loss_and_grads(model, logits, state), loss_and_grads(model, logits_ref, state_ref)
    atol = rtol * 1e-3 * max(g.abs().max().item() for g in grads_ref)
    for (name, _), a, b in zip(model.named_parameters(), grads, grads_ref):
        assert_close(a, b, rtol, f"d{name}", atol=atol)


# float32: parameter gradients sum over all tokens, in another order packed than document by document,
# so they differ by ~1e-6 relative through the whole model (the ops themselves hold 1e-6: tests/ops).
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", [*PRESET_NAMES, "transformer"])
def test_packed_equals_per_document_loop(name, dtype, tol):
    model = model_for(name, dtype)
    ids = token_ids(model, LENGTHS)
    packed = model(ids, cu_seqlens=cu_seqlens_of(LENGTHS))
    compare(packed, per_document(model, ids, LENGTHS), model, tol)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_packed_from_per_document_states(name):
    """A state with one row per document: each document continues from its own row."""
    model = model_for(name)
    prefix_lengths = [3, 7, 1, 2, 5]
    with torch.no_grad():
        _, state = model(token_ids(model, prefix_lengths, seed=2), cu_seqlens=cu_seqlens_of(prefix_lengths))
    ids = token_ids(model, LENGTHS)
    packed = model(ids, state, cu_seqlens=cu_seqlens_of(LENGTHS))
    compare(packed, per_document(model, ids, LENGTHS, state), model, 1e-10)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_packed_states_continue_decoding_as_a_batch(name):
    model = model_for(name).eval()
    ids = token_ids(model, LENGTHS)
    nxt = torch.arange(len(LENGTHS))[:, None] + 7  # (D, 1) one next token per document
    with torch.no_grad():
        _, state = model(ids, cu_seqlens=cu_seqlens_of(LENGTHS))
        logits, _ = model(nxt, state)  # (D, 1, V)
        for d, (a, b) in enumerate(document_spans(LENGTHS)):
            _, alone = model(ids[:, a:b])
            expected, _ = model(nxt[d : d + 1], alone)
            assert_close(logits[d : d + 1], expected, 1e-10, f"document {d}")


def test_packed_argument_errors():
    model = model_for("debug")
    with pytest.raises(ValueError, match="cu_seqlens needs the documents packed into one row"):
        model(torch.zeros(2, 5, dtype=torch.long), cu_seqlens=cu_seqlens_of([2, 3]))
    with pytest.raises(TypeError, match="cu_seqlens must be int64"):
        model(torch.zeros(1, 5, dtype=torch.long), cu_seqlens=cu_seqlens_of([2, 3]).int())
    _, state = model(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="2 packed documents"):
        model(torch.zeros(1, 5, dtype=torch.long), state, cu_seqlens=cu_seqlens_of([2, 3]))
    transformer = model_for("transformer")
    _, cache = transformer(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="state cannot be passed with cu_seqlens"):
        transformer(torch.zeros(1, 5, dtype=torch.long), cache, cu_seqlens=cu_seqlens_of([2, 3]))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        transformer(torch.zeros(1, 5, dtype=torch.long), cu_seqlens=torch.tensor([1, 5]))


@pytest.mark.parametrize("name", [*PRESET_NAMES, "transformer"])
@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_without_state_the_logits_and_gradients_are_the_same(name, packed):
    """return_state=False (training) skips the final states (and may run packed documents as batch rows)."""
    model = model_for(name)
    ids = token_ids(model, LENGTHS)
    kwargs = {"cu_seqlens": cu_seqlens_of(LENGTHS)} if packed else {}
    if not packed:
        ids = ids[:, :60].reshape(2, 30)
    logits, state = model(ids, **kwargs)
    logits_only, no_state = model(ids, return_state=False, **kwargs)
    assert no_state is None
    assert_close(logits_only, logits, 1e-12, "logits")
    for (pname, _), a, b in zip(model.named_parameters(), loss_and_grads(model, logits_only, None),
                                loss_and_grads(model, logits, None)):
        assert_close(a, b, 1e-10, f"d{pname}", atol=1e-14)
