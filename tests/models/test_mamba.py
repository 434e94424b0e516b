"""Mamba baseline: the chunked parallel scan against the step-by-step reference (outputs, states, gradients),
state continuation, config round trip and registration."""

import pytest
import torch

from xlstm_torch.models.base import MODEL_REGISTRY
from xlstm_torch.models.mamba import (MambaConfig, MambaLanguageModel, selective_scan, selective_scan_reference)


def _inputs(Bt=2, S=37, E=6, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = dict(dtype=torch.float64)
    x = torch.randn(Bt, S, E, generator=g, **f)
    dt = torch.rand(Bt, S, E, generator=g, **f) * 2  # large steps: strong decays
    A = -torch.rand(E, N, generator=g, **f) * 4
    B = torch.randn(Bt, S, N, generator=g, **f)
    C = torch.randn(Bt, S, N, generator=g, **f)
    D = torch.randn(E, generator=g, **f)
    h0 = torch.randn(Bt, E, N, generator=g, **f)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D, h0)]


@pytest.mark.parametrize("S,chunk", [(37, 8), (37, 64), (1, 4), (16, 16), (23, 5)])
def test_scan_matches_reference_outputs_states_gradients(S, chunk):
    inputs = _inputs(S=S)
    y_ref, h_ref = selective_scan_reference(*inputs)
    y, h = selective_scan(*inputs, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(y)
    grads_ref = torch.autograd.grad((y_ref * w).sum() + h_ref.sum(), inputs)
    grads = torch.autograd.grad((y * w).sum() + h.sum(), inputs)
    for name, a, b in zip("x dt A B C D h0".split(), grads, grads_ref):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_scan_bad_shapes_named():
    x, dt, A, B, C, D, h0 = _inputs()
    with pytest.raises(ValueError, match="dt"):
        selective_scan(x, dt[:, :3], A, B, C, D)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(x, dt, A, B, C, D, chunk_size=0)


def test_model_state_continuation_and_packed_rejected():
    torch.manual_seed(0)
    model = MambaLanguageModel(MambaConfig(vocab_size=11, d_model=16, chunk_size=4)).double()
    with torch.no_grad():  # logits of a fresh model are tiny (std 0.02): scale the head so differences show
        model.embedding.weight.mul_(50)
    ids = torch.randint(0, 11, (2, 13))
    full, _ = model(ids)
    first, state = model(ids[:, :6])
    second, _ = model(ids[:, 6:], state=state)
    assert full.abs().max() > 1e-2
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(ids[:1], cu_seqlens=torch.tensor([0, 5, 13]))
    assert model(ids, return_state=False)[1] is None


def test_config_round_trip_and_registry():
    c = MambaConfig(vocab_size=32, d_model=24, num_blocks=3)
    assert MambaConfig.from_dict(c.to_dict()) == c and c.to_dict()["model_type"] == "mamba"
    assert MODEL_REGISTRY["mamba"] is MambaLanguageModel
    with pytest.raises(ValueError, match="d_state"):
        MambaConfig(d_state=0)
