"""Presets: parameter counts of every preset, built on the meta device (no memory)."""

import pytest
import torch

import xlstm_torch
from xlstm_torch.models import PRESETS, XLSTMLanguageModel, XLSTMLargeLanguageModel, preset_config

# Nominal sizes: xLSTM paper App. D (300B-token models) and the xLSTM 7B release.
NOMINAL = {"125m": 125e6, "350m": 350e6, "760m": 760e6, "1.3b": 1.3e9}


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_builds_on_meta(name):
    with torch.device("meta"):
        model = xlstm_torch.from_preset(name)
    assert all(p.is_meta for p in model.parameters())
    n = count(model)
    size = name.split("-")[1] if name.startswith("xlstm-") else None
    if size in NOMINAL:
        assert abs(n / NOMINAL[size] - 1) < 0.03, f"{name}: {n:,} parameters"
    elif name == "xlstm-7b":
        assert isinstance(model, XLSTMLargeLanguageModel)
        assert 6.8e9 < n < 7.0e9, f"{n:,}"
    else:
        assert n < 300_000  # the debug presets stay tiny


def test_xlstm_7b_shapes():
    with torch.device("meta"):
        model = xlstm_torch.from_preset("xlstm-7b")
    layer = model.blocks[0].mlstm_layer
    assert layer.q.weight.shape == (2048, 4096) and layer.v.weight.shape == (4096, 4096)
    assert (layer.num_heads, layer.qk_dim // layer.num_heads, layer.v_dim // layer.num_heads) == (8, 256, 512)
    assert model.blocks[0].ffn.proj_up.weight.shape == (10944, 4096)
    assert model.lm_head.weight is not model.embedding.weight
    assert len(model.blocks) == 32 and model.embedding.weight.shape == (50304, 4096)


def test_paper_7_1_preset_puts_slstm_blocks_at_the_ratio_positions():
    with torch.device("meta"):
        model = xlstm_torch.from_preset("xlstm-125m-7:1")
    kinds = [type(b).__name__ for b in model.blocks]
    assert [j for j, k in enumerate(kinds) if k == "SLSTMBlock"] == [7, 15, 23]
    assert isinstance(model, XLSTMLanguageModel) and model.lm_head.weight is model.embedding.weight


def test_from_preset_overrides_and_errors():
    model = xlstm_torch.from_preset("debug", num_blocks=2, slstm_at=(0,))
    assert model.config.block_types == ("slstm", "mlstm")
    with pytest.raises(ValueError, match="unknown preset"):
        xlstm_torch.from_preset("xlstm-9000b")
    with pytest.raises(ValueError, match="unknown XLSTMConfig fields: hidden"):
        preset_config("debug", hidden=3)
