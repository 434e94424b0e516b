"""Config validation, derived sizes, dict/JSON round trips."""

import dataclasses
import json

import pytest

from xlstm_torch.models import PRESETS, XLSTMConfig, XLSTMLargeConfig, config_from_dict, config_from_json


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_json(name):
    config = PRESETS[name]
    text = config.to_json()
    assert json.loads(text)["model_type"] == config.model_type
    assert config_from_json(text) == config
    assert type(config).from_dict(config.to_dict()) == config


def test_explicit_positions_round_trip_as_tuple():
    config = XLSTMConfig(num_blocks=4, slstm_at=[3, 1])
    assert config.slstm_at == (3, 1) and config.slstm_positions == (1, 3)
    assert config.to_dict()["slstm_at"] == [3, 1]
    assert XLSTMConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("slstm_at,positions", [
    ("1:0", ()), ("0:1", (0, 1, 2, 3, 4, 5, 6, 7)), ("1:1", (1, 3, 5, 7)), ("3:1", (3, 7)), ("7:1", (7,)),
    ((0, 5), (0, 5)), ((), ()),
])
def test_block_types_from_positions_or_ratio(slstm_at, positions):
    config = XLSTMConfig(num_blocks=8, slstm_at=slstm_at)
    assert config.slstm_positions == positions
    assert config.block_types == tuple("slstm" if j in positions else "mlstm" for j in range(8))


def test_derived_sizes():
    c = XLSTMConfig(embedding_dim=768)
    assert (c.inner_dim, c.mlstm_head_dim, c.slstm_head_dim, c.ffn_dim) == (1536, 384, 192, 1024)
    big = XLSTMLargeConfig()
    assert (big.qk_dim, big.v_dim, big.qk_head_dim, big.v_head_dim, big.ffn_dim) == (2048, 4096, 256, 512, 10944)


@pytest.mark.parametrize("cls,changes,field", [
    (XLSTMConfig, dict(embedding_dim=0), "embedding_dim"),
    (XLSTMConfig, dict(vocab_size=-3), "vocab_size"),
    (XLSTMConfig, dict(num_blocks=2.0), "num_blocks"),
    (XLSTMConfig, dict(num_heads=True), "num_heads"),
    (XLSTMConfig, dict(chunk_size=0), "chunk_size"),
    (XLSTMConfig, dict(num_heads=5), "num_heads"),  # 5 does not divide Di = 1536
    (XLSTMConfig, dict(qkv_block_size=7), "qkv_block_size"),
    (XLSTMConfig, dict(slstm_at=(1,), slstm_num_heads=5), "slstm_num_heads"),
    (XLSTMConfig, dict(num_blocks=4, slstm_at=(4,)), "slstm_at"),
    (XLSTMConfig, dict(num_blocks=4, slstm_at=(-1,)), "slstm_at"),
    (XLSTMConfig, dict(num_blocks=4, slstm_at=(1, 1)), "slstm_at"),
    (XLSTMConfig, dict(num_blocks=4, slstm_at=("1",)), "slstm_at"),
    (XLSTMConfig, dict(num_blocks=6, slstm_at="7:1"), "slstm_at"),
    (XLSTMConfig, dict(slstm_at="mmsm"), "slstm_at"),
    (XLSTMConfig, dict(slstm_at="0:0"), "slstm_at"),
    (XLSTMConfig, dict(slstm_at={1}), "slstm_at"),
    (XLSTMConfig, dict(slstm_conv_kernel_size=-1), "slstm_conv_kernel_size"),
    (XLSTMConfig, dict(dropout=1.0), "dropout"),
    (XLSTMConfig, dict(mlstm_proj_factor=0), "mlstm_proj_factor"),
    (XLSTMConfig, dict(tie_weights=1), "tie_weights"),
    (XLSTMConfig, dict(norm_eps=-1e-5), "norm_eps"),
    (XLSTMLargeConfig, dict(num_heads=3), "num_heads"),
    (XLSTMLargeConfig, dict(qk_dim_factor=0.3), "qk_dim_factor"),
    (XLSTMLargeConfig, dict(gate_soft_cap=0), "gate_soft_cap"),
    (XLSTMLargeConfig, dict(embedding_dim=-8), "embedding_dim"),
    (XLSTMLargeConfig, dict(bias="no"), "bias"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_invalid_fields_raise_naming_the_field(cls, changes, field):
    with pytest.raises(ValueError, match=field):
        cls(**changes)


def test_from_dict_rejects_unknown_keys_and_wrong_model_type():
    d = XLSTMConfig().to_dict()
    with pytest.raises(ValueError, match="num_layers, rope"):
        XLSTMConfig.from_dict({**d, "num_layers": 3, "rope": True})
    with pytest.raises(ValueError, match="model_type"):
        XLSTMLargeConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown model_type 'gpt'"):
        config_from_dict({**d, "model_type": "gpt"})
    with pytest.raises(ValueError, match="model_type"):
        config_from_dict({"embedding_dim": 8})
    assert isinstance(config_from_dict(XLSTMLargeConfig().to_dict()), XLSTMLargeConfig)


def test_configs_are_frozen_and_replace_validates():
    config = XLSTMConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.embedding_dim = 5
    assert config.replace(num_blocks=8).num_blocks == 8
    with pytest.raises(ValueError, match="unknown XLSTMConfig fields: depth"):
        config.replace(depth=3)
    with pytest.raises(ValueError, match="slstm_at"):
        config.replace(num_blocks=4, slstm_at=(5,))
