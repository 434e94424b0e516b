"""Training checkpoints: round trip, the latest pointer, pruning, and atomicity under a failing save."""

import json

import pytest
import torch

import xlstm_torch
from xlstm_torch.checkpoint import _alias_names
from xlstm_torch.training import checkpointing as ck


def _model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = xlstm_torch.from_preset("debug")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logits, _ = model(torch.randint(0, 512, (2, 24)))
    logits.square().mean().backward()
    optimizer.step()
    return model, optimizer


def _save(run_dir, step, model, optimizer, keep_last=2):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    config = {"model_type": model.model_type, **model.config.to_dict()}
    return ck.save_checkpoint(run_dir, step, model_config=config, model_state=model_state,
                              aliases=_alias_names(model.state_dict(keep_vars=True)), optim_state=optim_state,
                              trainer_state={"tokens_seen": 10 * step}, keep_last=keep_last)


def test_round_trip_restores_weights_and_optimizer_and_publishes_loadable_weights(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = _save(tmp_path, 3, model, optimizer)
    assert path.name == "step-00000003" and ck.latest_checkpoint(tmp_path) == path
    config, weights, optim_state, state = ck.load_checkpoint(path)
    assert state["step"] == 3 and state["tokens_seen"] == 30
    assert "lm_head.weight" not in weights  # tied to the embedding: stored once
    for name, p in model.named_parameters():
        torch.testing.assert_close(weights[name], p.detach(), rtol=0, atol=0)
    step_state = optim_state["state"]["blocks.0.mlstm_layer.learnable_skip"]
    expected = optimizer.state[model.blocks[0].mlstm_layer.learnable_skip]
    torch.testing.assert_close(step_state["exp_avg_sq"], expected["exp_avg_sq"], rtol=0, atol=0)
    assert optim_state["param_groups"][0]["betas"] == (0.9, 0.999)
    loaded = xlstm_torch.load_pretrained(tmp_path)  # the run folder itself holds the newest weights
    torch.testing.assert_close(loaded.embedding.weight, model.embedding.weight.detach(), rtol=0, atol=0)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "xlstm"


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model, optimizer = _model_and_optimizer()
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, optimizer, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]


def test_a_failing_save_leaves_the_previous_checkpoint_latest_and_no_partial_folder(tmp_path, monkeypatch):
    model, optimizer = _model_and_optimizer()
    first = _save(tmp_path, 1, model, optimizer)
    before = (tmp_path / "model.safetensors").read_bytes()
    import safetensors.torch

    real = safetensors.torch.save_file

    def fail_on_optimizer(tensors, filename, metadata=None):
        if filename.endswith(ck.OPTIMIZER_NAME):
            raise OSError("disk full")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fail_on_optimizer)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, model, optimizer)
    assert ck.latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000001"]
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    model, optimizer = _model_and_optimizer()
    _save(tmp_path, 1, model, optimizer)
    second = _save(tmp_path, 2, model, optimizer)
    (tmp_path / "checkpoints" / "latest").write_text("step-00000009\n")  # names a folder that never completed
    assert ck.latest_checkpoint(tmp_path) == second
    (second / ck.OPTIMIZER_NAME).unlink()  # an incomplete folder is never used
    assert ck.latest_checkpoint(tmp_path).name == "step-00000001"
    with pytest.raises(ck.CheckpointError, match="incomplete"):
        ck.load_checkpoint(second)
    (tmp_path / "checkpoints" / "step-00000001" / ck.STATE_NAME).write_text("{broken")
    with pytest.raises(ck.CheckpointError, match="cannot be read"):
        ck.load_checkpoint(tmp_path / "checkpoints" / "step-00000001")
    assert ck.latest_checkpoint(tmp_path / "nothing-here") is None
