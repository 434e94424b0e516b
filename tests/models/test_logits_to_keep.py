"""``model(..., logits_to_keep=...)`` on every language model: the head applied at the kept positions only gives
exactly the logits of the full call at those positions, the same state, and the same parameter gradients as a loss
on the full call's logits restricted to them; bad values name the argument."""

import pytest
import torch

import xlstm_torch
from tests.helpers import assert_close, cu_seqlens_of
from xlstm_torch.experiments import zoo

V, B, S = 37, 3, 11
NAMES = ["xlstm-1:1", "transformer", "mamba", "lstm", "debug-large"]


def model_for(name: str):
    torch.manual_seed(0)
    if name == "debug-large":
        model = xlstm_torch.from_preset(name)
    else:
        model = zoo.build(name, V, 16, num_heads=1)
    return model.double()


def ids_for(model, shape, seed=1):
    return torch.randint(0, model.embedding.num_embeddings, shape, generator=torch.Generator().manual_seed(seed))


def grads(model, logits):
    loss = (logits * torch.cos(logits)).sum()
    return torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)


def state_leaves(state):
    return [t for t in torch.utils._pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", NAMES)
def test_kept_logits_state_and_gradients_match_the_full_call(name):
    model = model_for(name)
    ids = ids_for(model, (B, S))
    mask = torch.rand(B, S, generator=torch.Generator().manual_seed(2)) < 0.3
    mask[0, 0] = mask[2, -1] = True
    for keep, select in ((mask, lambda t: t[mask]), (1, lambda t: t[:, -1:]), (4, lambda t: t[:, -4:]),
                         (S, lambda t: t)):
        full, state_full = model(ids)  # (B, S, V)
        expected = select(full)
        kept, state = model(ids, logits_to_keep=keep)
        assert_close(kept, expected, 1e-12, f"{name} logits, logits_to_keep={'mask' if keep is mask else keep}")
        for a, b in zip(state_leaves(state), state_leaves(state_full), strict=True):
            assert_close(a, b, 1e-12, f"{name} state")
        for g, g_ref in zip(grads(model, kept), grads(model, expected), strict=True):
            if g_ref is None:
                assert g is None
            else:
                assert_close(g, g_ref, 1e-10, f"{name} gradient")


@pytest.mark.parametrize("name", ["xlstm-1:1", "lstm", "transformer"])
def test_kept_logits_of_packed_documents(name):
    """The last position of each packed document: the next-token logits of every prompt in one call."""
    model = model_for(name)
    lengths = [4, 1, 7]
    ids = ids_for(model, (1, sum(lengths)))
    cu = cu_seqlens_of(lengths)
    mask = torch.zeros(1, sum(lengths), dtype=torch.bool)
    mask[0, cu[1:] - 1] = True
    full, _ = model(ids, cu_seqlens=cu)
    kept, _ = model(ids, cu_seqlens=cu, logits_to_keep=mask)
    assert_close(kept, full[0, cu[1:] - 1], 1e-12, f"{name} packed logits")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [0, S + 1, -1, True, 2.0, "last", torch.ones(B, S, dtype=torch.long),
                                 torch.ones(B, S + 1, dtype=torch.bool)])
def test_bad_logits_to_keep_names_the_argument(name, bad):
    model = model_for(name)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids_for(model, (B, S)), logits_to_keep=bad)
