"""AdamW parameter groups and the warm-up + cosine schedule."""

import math

import pytest

import xlstm_torch
from xlstm_torch.training.optim import lr_at, param_groups


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    kw = dict(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)  # past the end: stays at the floor
    rates = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert lr_at(0, lr=1.0, warmup_steps=0, max_steps=5, min_lr_ratio=0.0) == pytest.approx(1.0)
    assert math.isfinite(lr_at(3, lr=1.0, warmup_steps=5, max_steps=5, min_lr_ratio=0.0))


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_groups_cover_every_parameter_once_and_exclude_norms_biases_embeddings(decay_embeddings):
    model = xlstm_torch.from_preset("debug", bias=True)
    decay, no_decay = param_groups(model, 0.1, decay_embeddings=decay_embeddings)
    ids = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # tied embedding/head counted once
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim < 2 or p is model.embedding.weight for p in no_decay["params"])
    assert any(p is model.embedding.weight for p in decay["params"]) == decay_embeddings
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
