"""Recipes: every shipped one loads, and every kind of bad key or value is an error that names it."""

import pytest

from xlstm_torch.training.config import RecipeError, TrainConfig, build_model_config, list_recipes, load_recipe


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads_and_builds_its_model_config(name):
    config = load_recipe(preset=name)
    model_config = build_model_config(config, vocab_size=256)
    assert model_config.vocab_size >= 256
    assert config.seq_len > 0 and config.max_steps > 0


def test_the_default_and_debug_recipes_are_shipped():
    assert {"default", "debug"} <= set(list_recipes())


def test_overrides_apply_in_order_with_yaml_values():
    config = load_recipe(preset="debug", overrides=["lr=1e-3", "model.num_blocks=3", "data=[a, b]", "threads=null",
                                                    "compile=true"])
    assert config.lr == 1e-3 and config.model["num_blocks"] == 3 and config.data == ["a", "b"]
    assert config.threads is None and config.compile is True
    assert load_recipe(preset="debug", overrides=["sample_prompt=def f(x):"]).sample_prompt == "def f(x):"


@pytest.mark.parametrize("override, words", [
    ("lrr=1", ["'lrr'", "did you mean 'lr'"]),
    ("lr=abc", ["lr must be float"]),
    ("batch_size=0", ["batch_size must be > 0"]),
    ("packing=zip", ["packing must be one of"]),
    ("val_fraction=1.5", ["val_fraction"]),
    ("compile=3", ["compile must be bool"]),
    ("seq_len=2.5", ["seq_len must be int"]),
    ("lr", ["key=value"]),
    ("max_steps.x=1", ["only model.<field>"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(RecipeError) as err:
        load_recipe(preset="debug", overrides=[override])
    for word in words:
        assert word in str(err.value)


def test_misspelt_key_in_a_yaml_file_is_an_error(tmp_path):
    file = tmp_path / "r.yaml"
    file.write_text("seq_len: 32\nwarmup_step: 3\n")
    with pytest.raises(RecipeError, match="unknown key 'warmup_step'.*did you mean 'warmup_steps'"):
        load_recipe(config_file=file)


def test_bad_files_and_presets(tmp_path):
    with pytest.raises(RecipeError, match="unknown preset 'nope'.*debug"):
        load_recipe(preset="nope")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(config_file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seq_len: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(config_file=bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(config_file=listed)
    with pytest.raises(RecipeError, match="only one"):
        load_recipe(preset="debug", config_file=bad)


def test_model_fields_are_checked_by_the_model_config():
    config = load_recipe(preset="debug", overrides=["model.embedding_dimm=64"])
    with pytest.raises(RecipeError, match="embedding_dimm"):
        build_model_config(config, vocab_size=256)
    small_vocab = load_recipe(preset="debug", overrides=["model.vocab_size=100"])
    with pytest.raises(RecipeError, match="vocab_size=100 is smaller"):
        build_model_config(small_vocab, vocab_size=256)


def test_a_model_without_preset_needs_its_type_and_may_be_the_transformer():
    with pytest.raises(RecipeError, match="model_type"):
        TrainConfig(model_preset=None, model={})
    config = TrainConfig(model_preset=None, model={"model_type": "transformer", "d_model": 32, "num_blocks": 1,
                                                   "num_heads": 2})
    assert build_model_config(config, vocab_size=256).vocab_size == 256
    assert build_model_config(config, vocab_size=1000).vocab_size == 1024  # padded to a multiple of 64


def test_round_trip_through_a_dict():
    config = load_recipe(preset="default")
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert load_recipe(base=config.to_dict(), overrides=["max_steps=7"]).max_steps == 7
