"""The two language models: one call == pieces with state == token by token, gradients, the state
object, argument errors."""

import time

import pytest
import torch

import xlstm_torch
from tests.helpers import assert_close
from xlstm_torch.models import MODEL_REGISTRY, ModelState, XLSTMConfig, XLSTMLanguageModel, build_model
from xlstm_torch.nn import LayerState
from xlstm_torch.ops import MLSTMState, SLSTMState

PRESET_NAMES = ["debug", "debug-large"]  # debug: blocks m s m s; debug-large: the xLSTM 7B block


def model_for(name: str, dtype=torch.float32):
    torch.manual_seed(0)
    return xlstm_torch.from_preset(name).to(dtype).eval()


def tensors(state: ModelState) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(state.blocks) if t is not None]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_full_call_equals_pieces_and_token_by_token(name, dtype, tol):
    model = model_for(name, dtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, state = model(ids)
        assert logits.shape == (2, 37, model.config.vocab_size) and logits.dtype == dtype
        pieces, s = [], None
        for a, b in [(0, 5), (5, 6), (6, 23), (23, 37)]:  # over chunk edges (chunk 16), one 1-token piece
            out, s = model(ids[:, a:b], s)
            pieces.append(out)
        assert_close(torch.cat(pieces, 1), logits, tol, "logits in pieces")
        steps, s = [], None
        for t in range(ids.shape[1]):
            out, s = model(ids[:, t:t + 1], s)
            steps.append(out)
    for j, (a, b) in enumerate(zip(tensors(s), tensors(state))):
        assert_close(a, b, tol, f"state tensor {j}")
    steps = torch.cat(steps, 1)
    assert_close(steps, logits, tol, "logits token by token")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_state_layout(name):
    model = model_for(name)
    _, state = model(torch.zeros(3, 4, dtype=torch.long))
    assert isinstance(state, ModelState) and len(state) == len(model.blocks) and state.batch_size == 3
    for kind, block_state in zip(getattr(model.config, "block_types", ["mlstm"] * len(state)), state.blocks):
        assert isinstance(block_state, LayerState)
        assert isinstance(block_state.cell, SLSTMState if kind == "slstm" else MLSTMState)
    if name == "debug":  # conv buffers: last K-1 = 3 inputs of width Di (mLSTM) or D (sLSTM)
        assert state.blocks[0].conv.shape == (3, 3, 128) and state.blocks[1].conv.shape == (3, 3, 64)
    else:
        assert all(block_state.conv is None for block_state in state.blocks)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_backward_gives_finite_gradients_everywhere(name):
    model = model_for(name).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    logits, _ = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    # the gates get a learning signal although their weights start at zero
    assert model.blocks[0].mlstm_layer.fgate_preact.weight.grad.abs().sum() > 0


def test_debug_training_step_is_fast_on_cpu():
    model = model_for("debug").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 512, (4, 64))

    def step():
        logits, _ = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up
    start = time.perf_counter()
    losses = [step() for _ in range(3)]
    per_step = (time.perf_counter() - start) / 3
    assert per_step < 1.0, f"{per_step:.2f} s per step"
    assert losses[-1] < losses[0]


def test_state_detach_and_to():
    model = model_for("debug").train()
    ids = torch.randint(0, 512, (2, 6))
    _, state = model(ids)
    leaves = tensors(state)
    assert any(t.requires_grad for t in leaves)
    detached = state.detach()
    assert isinstance(detached, ModelState)
    assert not any(t.requires_grad for t in tensors(detached))
    assert all(isinstance(b, LayerState) for b in detached.blocks)
    for a, b in zip(tensors(detached), leaves):
        assert torch.equal(a, b)
    moved = state.to("meta")
    assert all(t.is_meta for t in tensors(moved))
    assert type(moved.blocks[1].cell) is SLSTMState
    first_row = state.map(lambda t: t[:1])
    assert first_row.batch_size == 1 and first_row.blocks[0].cell.C.shape[0] == 1
    # truncated BPTT: a detached state feeds the next window without reaching into the old graph
    logits, _ = model(ids, detached)
    logits.sum().backward()


def test_forward_argument_errors():
    model = model_for("debug")
    ids = torch.zeros(2, 3, dtype=torch.long)
    _, state = model(ids)
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0])
    with pytest.raises(TypeError, match="state"):
        model(ids, state.blocks)
    with pytest.raises(ValueError, match="batch size"):
        model(ids[:1], state)
    other = xlstm_torch.from_preset("debug-large")
    with pytest.raises(ValueError, match="block states"):
        other(ids, state)
    with pytest.raises(TypeError, match="config"):
        XLSTMLanguageModel(other.config)


def test_tied_and_untied_heads():
    tied = xlstm_torch.from_preset("debug")
    untied = xlstm_torch.from_preset("debug", tie_weights=False)
    assert tied.lm_head.weight is tied.embedding.weight
    assert untied.lm_head.weight is not untied.embedding.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + 512 * 64


def test_registry_and_build_model():
    assert MODEL_REGISTRY["xlstm"] is XLSTMLanguageModel
    model = build_model(XLSTMConfig(vocab_size=32, embedding_dim=32, num_blocks=1))
    assert model.model_type == "xlstm" and model.config.num_blocks == 1
    with pytest.raises(ValueError, match="model_type"):
        build_model(object())


def test_large_logits_are_soft_capped():
    model = model_for("debug-large")
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)
        logits, _ = model(torch.randint(0, 512, (1, 8)))
    assert logits.abs().max() <= model.config.output_logit_soft_cap
    assert logits.abs().max() > 0.9 * model.config.output_logit_soft_cap


def test_dropout_is_active_in_training_only():
    model = xlstm_torch.from_preset("debug", dropout=0.5)
    ids = torch.randint(0, 512, (1, 8))
    model.eval()
    torch.testing.assert_close(model(ids)[0], model(ids)[0])
    model.train()
    assert not torch.equal(model(ids)[0], model(ids)[0])
