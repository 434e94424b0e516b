"""A tiny corpus of real Python text (a few standard-library modules) and a fast recipe for trainer tests."""

import sysconfig
from pathlib import Path

import pytest

_MODULES = ["bisect.py", "colorsys.py", "keyword.py", "heapq.py", "fnmatch.py", "glob.py", "shlex.py", "this.py"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in _MODULES:
        (folder / name.replace(".py", ".txt")).write_text((stdlib / name).read_text(encoding="utf-8"))
    return folder


def fast_overrides(corpus: Path, cache: Path, **extra) -> list[str]:
    """The debug recipe on ``corpus``: 12 steps, evaluation and a checkpoint every 4, no sample."""
    values = {"data": f"[{corpus}]", "cache_dir": str(cache), "max_steps": 12, "eval_every": 4, "save_every": 4,
              "keep_last": 5, "eval_batches": 0, "sample_tokens": 0, "tensorboard": "false", "seq_len": 32,
              "val_fraction": 0.25}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
