"""Whole-process tests (slow): SIGKILL at random moments then resume, and torchrun with 2 gloo processes."""

import csv
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import xlstm_torch
from xlstm_torch.training.checkpointing import list_checkpoints, load_checkpoint

from .conftest import fast_overrides

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _cmd(corpus, tmp_path, out, *extra, resume=False, nproc=1):
    launcher = [sys.executable, "-m", "xlstm_torch.cli"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "xlstm_torch.cli"]
    overrides = fast_overrides(corpus, tmp_path / "cache", threads=1, **dict(e.split("=", 1) for e in extra))
    return launcher + ["train", "--preset", "debug", "--out", str(tmp_path / out)] + \
        (["--resume"] if resume else []) + overrides


def _run(cmd):
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _rows(run_dir, column="loss"):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r[column]) for r in csv.DictReader(f) if r[column]]


def test_killed_at_random_moments_and_resumed_ends_bit_identical(corpus, tmp_path):
    shape = ["max_steps=60", "save_every=3", "seq_len=64", "batch_size=8", "eval_every=30"]
    _run(_cmd(corpus, tmp_path, "straight", *shape))
    rng = random.Random(1234)
    targets = sorted(rng.sample(range(2, 58), 5))  # kill once the run has logged these steps (+ a random delay)
    metrics = tmp_path / "killed" / "metrics.csv"
    kills = 0
    for target in targets + [None]:
        resume = (tmp_path / "killed" / "train_config.json").is_file()
        proc = subprocess.Popen(_cmd(corpus, tmp_path, "killed", *shape, resume=resume), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if target is None:  # the last start runs to the end
            assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
            break
        while proc.poll() is None and not (metrics.is_file() and len(metrics.read_text().splitlines()) > target):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))  # anywhere in the next step, evaluation or save
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        for ckpt in list_checkpoints(tmp_path / "killed"):  # every checkpoint left behind is whole
            load_checkpoint(ckpt)
            xlstm_torch.load_pretrained(ckpt)
        if (tmp_path / "killed" / "model.safetensors").is_file():  # and so are the published weights
            xlstm_torch.load_pretrained(tmp_path / "killed")
    assert kills == 5
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "straight")
    assert (tmp_path / "killed" / "model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_and_checkpoints_move_between_world_sizes(corpus, tmp_path, strategy):
    # The same recipe (4 rows per step): 1 process x 4 rows, or 2 processes x 2 rows.
    _run(_cmd(corpus, tmp_path, "one"))
    _run(_cmd(corpus, tmp_path, "two", f"distributed={strategy}", nproc=2))
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == len(two) == 12
    assert max(abs(a - b) / abs(a) for a, b in zip(one, two)) < 1e-5
    val_one, val_two = _rows(tmp_path / "one", "val_loss"), _rows(tmp_path / "two", "val_loss")
    assert max(abs(a - b) / abs(a) for a, b in zip(val_one, val_two)) < 1e-5
    # 2 -> 1 and 1 -> 2: each run's checkpoint continues on the other world size, and they still agree
    _run(_cmd(corpus, tmp_path, "two", "max_steps=16", resume=True))
    _run(_cmd(corpus, tmp_path, "one", f"distributed={strategy}", "max_steps=16", resume=True, nproc=2))
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == len(two) == 16
    assert max(abs(a - b) / abs(a) for a, b in zip(one, two)) < 1e-5
