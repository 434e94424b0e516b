"""save_pretrained / load_pretrained: round trips, tied weights, atomic writes, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import xlstm_torch
from tests.dummy_models import TinyRNN, TinyRNNConfig
from xlstm_torch.checkpoint import load_pretrained, save_pretrained
from xlstm_torch.models import from_preset
from xlstm_torch.models.transformer import Transformer, TransformerConfig


def transformer(seed=0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig.debug(**overrides)).eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids)[0]


def preset(name):
    def make():
        torch.manual_seed(0)
        return from_preset(name, vocab_size=32).eval()

    return make


@pytest.mark.parametrize("make", [transformer, lambda: transformer(tie_embeddings=True),
                                  lambda: TinyRNN(TinyRNNConfig()).eval(), preset("debug"), preset("debug-large")],
                         ids=["transformer", "transformer-tied", "rnn-with-nonpersistent-buffer", "xlstm-tied",
                              "xlstm-large"])
def test_round_trip_gives_identical_logits(tmp_path, make):
    model = make()
    save_pretrained(model, tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    ids = torch.randint(0, 32, (2, 7))
    assert torch.equal(logits_of(loaded, ids), logits_of(model, ids))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_config_json_and_tied_weights_stored_once(tmp_path):
    model = transformer(tie_embeddings=True)
    model.save_pretrained(tmp_path / "ckpt")  # the LanguageModel method forwards here
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config == {"model_type": "transformer", **model.config.to_dict()}
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "embedding.weight" in names and "lm_head.weight" not in names
    loaded = xlstm_torch.load_pretrained(tmp_path / "ckpt")  # the lazy package-level export
    assert loaded.lm_head.weight is loaded.embedding.weight  # still tied after loading


def test_dtype_and_device(tmp_path):
    model = transformer()
    save_pretrained(model, tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt", device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in loaded.parameters())
    ids = torch.randint(0, 256, (1, 5))
    torch.testing.assert_close(logits_of(loaded, ids).float(), logits_of(model, ids), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="dtype"):
        load_pretrained(tmp_path / "ckpt", dtype="float64")


def test_sharded_weights_with_index(tmp_path):
    model = transformer()
    save_pretrained(model, tmp_path / "src")
    tensors = load_file(str(tmp_path / "src" / "model.safetensors"))
    names = sorted(tensors)
    ckpt = tmp_path / "sharded"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(ckpt / file))
        weight_map.update({n: file for n in part})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = torch.randint(0, 256, (1, 6))
    assert torch.equal(logits_of(load_pretrained(ckpt), ids), logits_of(model, ids))


# --- overwriting and atomicity ---------------------------------------------------------------------------------


def test_saving_the_same_model_again_is_a_no_op(tmp_path):
    model = transformer()
    save_pretrained(model, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").stat().st_mtime_ns
    save_pretrained(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging left behind


def test_refuses_to_overwrite_a_different_checkpoint(tmp_path):
    save_pretrained(transformer(seed=0), tmp_path / "ckpt")
    original = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(transformer(seed=1), tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_overwrite_replaces_and_keeps_other_files(tmp_path):
    save_pretrained(transformer(seed=0), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    new = transformer(seed=1)
    save_pretrained(new, tmp_path / "ckpt", overwrite=True)
    ids = torch.randint(0, 256, (1, 4))
    assert torch.equal(logits_of(load_pretrained(tmp_path / "ckpt"), ids), logits_of(new, ids))
    assert (tmp_path / "ckpt" / "tokenizer.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import safetensors.torch

    save_pretrained(transformer(seed=0), tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}

    def half_written_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(transformer(seed=1), tmp_path / "ckpt", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(OSError):
        save_pretrained(transformer(seed=1), tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_refuses_a_non_checkpoint_directory_or_file(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(FileExistsError, match="config.json"):
        save_pretrained(transformer(), tmp_path / "notes", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        save_pretrained(transformer(), tmp_path / "file")
    (tmp_path / "empty").mkdir()
    save_pretrained(transformer(), tmp_path / "empty")  # an empty directory is fine
    assert (tmp_path / "empty" / "config.json").is_file()


# --- errors on loading ------------------------------------------------------------------------------------------


@pytest.fixture
def ckpt(tmp_path):
    save_pretrained(transformer(), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def edit_config(ckpt, **changes):
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    (ckpt / "config.json").write_text(json.dumps(config))


def rewrite_tensors(ckpt, edit):
    tensors = load_file(str(ckpt / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(ckpt / "model.safetensors"))


def test_missing_directory_and_files(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(ckpt)


def test_unknown_model_type(ckpt):
    edit_config(ckpt, model_type="rwkv")
    with pytest.raises(ValueError, match="unknown model_type 'rwkv'.*transformer"):
        load_pretrained(ckpt)


def test_misspelt_config_key(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["norm_epsilon"] = config.pop("norm_eps")
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'norm_epsilon' \\(did you mean 'norm_eps'\\?\\)"):
        load_pretrained(ckpt)


def test_invalid_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pretrained(ckpt)


def test_missing_unexpected_and_misshaped_tensors_are_listed(ckpt):
    def edit(t):
        del t["blocks.1.attn.q_proj.weight"]
        del t["out_norm.weight"]
        t["blocks.7.extra"] = torch.zeros(3)
        t["blocks.0.ffn.up_proj.weight"] = torch.zeros(5, 64)

    rewrite_tensors(ckpt, edit)
    with pytest.raises(ValueError) as err:
        load_pretrained(ckpt)
    message = str(err.value)
    assert "missing tensors: ['blocks.1.attn.q_proj.weight', 'out_norm.weight']" in message
    assert "unexpected tensors: ['blocks.7.extra']" in message
    assert "blocks.0.ffn.up_proj.weight: stored (5, 64), model wants (192, 64)" in message


def test_config_that_does_not_fit_the_weights(ckpt):
    edit_config(ckpt, d_model=128)
    with pytest.raises(ValueError, match="wrong shape.*embedding.weight"):
        load_pretrained(ckpt)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_file(ckpt, damage):
    file = ckpt / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\x01garbage" * 100, "empty": b""}[damage])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_pretrained(ckpt)


def test_bad_index(tmp_path, ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"embedding.weight":
                                                                                   "model-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="model-00002"):
        load_pretrained(ckpt)
    (ckpt / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="weight_map"):
        load_pretrained(ckpt)
