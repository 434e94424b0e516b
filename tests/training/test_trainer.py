"""The trainer end to end on a tiny corpus: outputs, exact resume, non-finite guard, run-folder guards."""

import csv
import io
import json

import pytest
import torch

import xlstm_torch
from xlstm_torch.training.checkpointing import CheckpointError, latest_checkpoint
from xlstm_torch.training.config import load_recipe
from xlstm_torch.training.trainer import RunFolderError, Trainer, TrainingError

from .conftest import fast_overrides


def _train(corpus, tmp_path, out="run", resume=False, **extra):
    config = load_recipe(preset="debug", overrides=fast_overrides(corpus, tmp_path / "cache", **extra))
    trainer = Trainer(config, tmp_path / out, resume=resume, stream=io.StringIO())
    try:
        return trainer, trainer.fit()
    finally:
        trainer.close()


def _losses(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["step"], r["loss"], r["val_loss"]) for r in csv.DictReader(f)]


def test_a_run_writes_everything_and_its_weights_load(corpus, tmp_path):
    trainer, result = _train(corpus, tmp_path, sample_tokens=16)
    out = tmp_path / "run"
    for name in ["config.json", "model.safetensors", "metrics.csv", "train_config.json", "sample.txt"]:
        assert (out / name).is_file(), name
    rows = _losses(out)
    assert [int(r[0]) for r in rows] == list(range(1, 13))
    assert [int(r[0]) for r in rows if r[2]] == [4, 8, 12]  # validation on the evaluation steps
    assert float(rows[-1][1]) < float(rows[0][1])  # it learns
    assert result.val_loss is not None and result.val_bpb == pytest.approx(result.val_loss / 0.6931471805599453)
    assert result.sample.startswith("def ") and len(result.sample) > 4
    model = xlstm_torch.load_pretrained(out)
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(model.get_parameter(name), p.detach(), rtol=0, atol=0)
    assert latest_checkpoint(out).name == "step-00000012"
    pytest.importorskip("matplotlib")
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_run_resumes_bit_identically(corpus, tmp_path, monkeypatch):
    _train(corpus, tmp_path, out="straight")
    real_step = Trainer.train_step

    def dies_at_step_6(self, step):
        if step == 6:
            raise KeyboardInterrupt  # like a kill between the checkpoints of steps 4 and 8
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        _train(corpus, tmp_path, out="resumed")
    monkeypatch.setattr(Trainer, "train_step", real_step)
    trainer, _ = _train(corpus, tmp_path, out="resumed", resume=True)
    assert trainer.start_step == 4
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "model.safetensors").read_bytes()


def test_a_non_finite_loss_stops_before_the_optimizer_step_or_is_skipped(corpus, tmp_path, monkeypatch):
    real = Trainer._loss_sum

    def poisoned(self, model, batch):
        loss_sum, count = real(self, model, batch)
        return (loss_sum * float("nan") if self._poison else loss_sum), count

    monkeypatch.setattr(Trainer, "_loss_sum", poisoned)
    real_step = Trainer.train_step

    def step(self, s):
        self._poison = s == 5
        return real_step(self, s)

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(TrainingError, match="step 5: loss nan.*not finite.*before the optimizer step"):
        _train(corpus, tmp_path, out="stop")
    assert latest_checkpoint(tmp_path / "stop").name == "step-00000004"
    _, result = _train(corpus, tmp_path, out="skip", nonfinite="skip")
    assert result.skipped_steps == 1
    rows = _losses(tmp_path / "skip")
    assert len(rows) == 12 and all(torch.isfinite(torch.tensor(float(r[1]))) for i, r in enumerate(rows) if i != 5)


def test_the_run_folder_is_never_overwritten_and_resume_checks_compatibility(corpus, tmp_path):
    _train(corpus, tmp_path, max_steps=4)
    out = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RunFolderError, match="holds a training run already; pass --resume"):
        _train(corpus, tmp_path)
    with pytest.raises(RunFolderError, match="seq_len: 32 -> 16"):
        _train(corpus, tmp_path, resume=True, seq_len=16)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="non-empty folder"):
        _train(corpus, tmp_path, out="other")
    with pytest.raises(RunFolderError, match="holds no training run"):
        _train(corpus, tmp_path, out="empty", resume=True)
    # a checkpoint of another model in the folder
    ckpt = latest_checkpoint(out)
    config = json.loads((ckpt / "config.json").read_text())
    config["embedding_dim"] = 48
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="another model"):
        _train(corpus, tmp_path, resume=True, max_steps=8)


def test_resuming_with_more_steps_extends_a_finished_run(corpus, tmp_path):
    _train(corpus, tmp_path, max_steps=4)
    trainer, result = _train(corpus, tmp_path, resume=True, max_steps=8)
    assert trainer.start_step == 4 and [int(r[0]) for r in _losses(tmp_path / "run")] == list(range(1, 9))


def test_packed_training_loss_equals_each_document_piece_alone(corpus, tmp_path):
    config = load_recipe(preset="debug", overrides=fast_overrides(corpus, tmp_path / "cache", packing="reset",
                                                                  seq_len=64, batch_size=6))
    trainer = Trainer(config, tmp_path / "run", stream=io.StringIO())
    # the first batch with a document start inside a row; an epoch holds every row once (the train/validation
    # split hashes the files' paths, which lie in a different temporary folder at every run)
    batches = trainer.train_batches
    epoch = -(-batches.num_sequences // batches.batch_size)
    batch = next(b for b in (batches.batch(s) for s in range(epoch)) if b.doc_starts[:, 1:].any())
    with torch.no_grad():
        loss_sum, count = trainer._loss_sum(trainer.model, batch)
        expected, n = 0.0, 0
        for row in range(batch.input_ids.shape[0]):
            cuts = [0, *torch.nonzero(batch.doc_starts[row, 1:]).flatten().add(1).tolist(), batch.input_ids.shape[1]]
            for a, b in zip(cuts[:-1], cuts[1:]):  # every document piece from an empty state
                logits, _ = trainer.model(batch.input_ids[row:row + 1, a:b])
                labels = batch.labels[row, a:b]
                expected += torch.nn.functional.cross_entropy(logits[0].float(), labels, ignore_index=-100,
                                                              reduction="sum").item()
                n += int((labels != -100).sum())
    assert int(count) == n
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)
    trainer.close()
    _, result = _train(corpus, tmp_path, out="packed", packing="reset")
    assert result.val_loss is not None and result.train_loss < 6


@pytest.mark.slow
def test_a_compiled_run_trains_like_the_eager_one(corpus, tmp_path, monkeypatch):
    """``compile=true``: torch.compile (inductor) on the plain batches, packed ones eagerly (a compiled graph is
    specialised to the document boundaries); the losses follow the eager run's within float32 rounding
    (fusion reorders the arithmetic)."""
    from xlstm_torch.training import trainer as trainer_module

    packed_calls = []
    real_batch_logits = trainer_module.batch_logits

    def recording(model, batch, reset_at_documents, device=None, packed_model=None):
        if reset_at_documents and bool(batch.doc_starts[:, 1:].any()):
            packed_calls.append(packed_model)
        return real_batch_logits(model, batch, reset_at_documents, device, packed_model)

    monkeypatch.setattr(trainer_module, "batch_logits", recording)
    extra = dict(packing="reset", seq_len=64, batch_size=8)
    # The split into training and validation hashes the source paths, which hold tmp_path: find the first steps
    # of this corpus with and without a document start inside a row, and train just past both.
    config = load_recipe(preset="debug", overrides=fast_overrides(corpus, tmp_path / "cache", **extra))
    probe = Trainer(config, tmp_path / "probe", stream=io.StringIO())
    packed = [bool(probe.train_batches.batch(s).doc_starts[:, 1:].any()) for s in range(200)]
    probe.close()
    steps = max(packed.index(True), packed.index(False)) + 1
    extra.update(max_steps=steps, eval_every=steps, save_every=steps)
    _train(corpus, tmp_path, out="eager", **extra)
    assert packed_calls  # both kinds of batch ran
    packed_calls.clear()
    torch._dynamo.reset()
    trainer, _ = _train(corpus, tmp_path, out="compiled", compile="true", **extra)
    assert packed_calls and all(m is trainer.wrapped for m in packed_calls)  # the eager model
    for (step, loss, val), (step_c, loss_c, val_c) in zip(_losses(tmp_path / "eager"), _losses(tmp_path / "compiled"),
                                                          strict=True):
        assert step == step_c and float(loss_c) == pytest.approx(float(loss), rel=1e-4)
        assert (val == "") == (val_c == "") and (val == "" or float(val_c) == pytest.approx(float(val), rel=1e-4))
