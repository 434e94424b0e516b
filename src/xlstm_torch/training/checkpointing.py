"""Resumable training checkpoints, written so that a kill at any moment never leaves a broken latest one.

Layout of a run folder ``OUT``:

    OUT/config.json, OUT/model.safetensors      the newest weights, loadable by ``xlstm_torch.load_pretrained``
    OUT/train_config.json                       the recipe of the run
    OUT/checkpoints/step-00000200/              one resumable checkpoint:
        config.json, model.safetensors          the weights (same format as above)
        optimizer.safetensors                   AdamW moments and step counts, by parameter name
        trainer_state.json                      step, tokens seen, optimizer hyper-parameters, fingerprints
    OUT/checkpoints/latest                      the name of the newest complete checkpoint

How a save stays atomic: everything is written into a hidden temporary folder, fsynced, and renamed into place
with ``os.replace``; only then is ``latest`` replaced (write-temp-then-rename again), and only then are old
checkpoints beyond ``keep_last`` deleted. A kill between any two of these leaves either the previous or the new
checkpoint as ``latest``, both complete. The state is gathered as *full* (unsharded) tensors by name, so a
checkpoint written by N processes (DDP or FSDP2) resumes on any number of processes.

Randomness needs no saved state: every step seeds its generator from (seed, step, rank) (see trainer.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from xlstm_torch.checkpoint import CONFIG_NAME, WEIGHTS_NAME

__all__ = ["CheckpointError", "save_checkpoint", "latest_checkpoint", "load_checkpoint", "list_checkpoints",
           "atomic_write_text", "atomic_write_bytes", "publish_weights", "OPTIMIZER_NAME", "STATE_NAME"]

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_SEP = "::"  # optimizer tensors are stored as "<parameter name>::<state key>"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, incomplete, or from an incompatible run."""


# --- small atomic file helpers -----------------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so that readers see the old or the new contents, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- saving ------------------------------------------------------------------------------------------------------


def _flatten_optimizer(optim_state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """{"state": {name: {key: tensor}}, "param_groups": [...]} -> flat tensors + JSON-ready groups."""
    tensors = {}
    for name, entry in optim_state["state"].items():
        for key, value in entry.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{name}{_SEP}{key}"] = value.detach().to("cpu").contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim_state["param_groups"]]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for flat, value in tensors.items():
        name, key = flat.rsplit(_SEP, 1)
        state.setdefault(name, {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def save_checkpoint(run_dir: Path, step: int, *, model_config: dict, model_state: dict[str, torch.Tensor],
                    aliases: dict[str, str], optim_state: dict, trainer_state: dict[str, Any],
                    keep_last: int) -> Path:
    """Write checkpoint ``step`` into ``run_dir/checkpoints``, make it ``latest``, publish its weights as
    ``run_dir/{config.json, model.safetensors}`` and prune to the newest ``keep_last``. Returns its folder.

    ``model_state``: full tensors by name; ``aliases``: {tied name: name it shares} (stored once).
    ``optim_state``: a full optimizer state dict keyed by parameter name (``get_state_dict`` format).
    """
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.saving-", dir=root))
    try:
        weights = {n: t.detach().to("cpu").contiguous() for n, t in model_state.items() if n not in aliases}
        config_text = json.dumps(model_config, indent=2, sort_keys=True) + "\n"
        (staging / CONFIG_NAME).write_text(config_text)
        save_file(weights, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        optim_tensors, groups = _flatten_optimizer(optim_state)
        save_file(optim_tensors, str(staging / OPTIMIZER_NAME), metadata={"format": "pt"})
        state = dict(trainer_state, step=step, param_groups=groups)
        (staging / STATE_NAME).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        for file in staging.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # the same step saved before (a resumed run that re-reached it): replace it whole
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=root))
            os.replace(final, aside / "old")
            os.replace(staging, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_weights(run_dir, final)
    atomic_write_text(root / "latest", final.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def publish_weights(run_dir: Path, checkpoint: Path) -> None:
    """Copy a checkpoint's weights to ``run_dir/{config.json, model.safetensors}``, where load_pretrained and
    ``xlstm generate OUT`` find them (each file replaced atomically; a resumed run publishes again, so a kill
    between a checkpoint and its publication is repaired)."""
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        atomic_write_bytes(Path(run_dir) / name, (Path(checkpoint) / name).read_bytes())


# --- finding and loading -----------------------------------------------------------------------------------------


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME, OPTIMIZER_NAME, STATE_NAME))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and _complete(p)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint named by ``latest`` if it is complete, else the newest complete one, else None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if _STEP_DIR.match(named.name) and _complete(named):
            return named
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict, dict[str, Any]]:
    """-> (model config dict, weights by name (aliases not included), optimizer state dict, trainer state)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not _complete(path):
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete (needs {CONFIG_NAME}, {WEIGHTS_NAME}, "
                              f"{OPTIMIZER_NAME}, {STATE_NAME})")
    try:
        model_config = json.loads((path / CONFIG_NAME).read_text())
        state = json.loads((path / STATE_NAME).read_text())
        weights = load_file(str(path / WEIGHTS_NAME))
        optim = _unflatten_optimizer(load_file(str(path / OPTIMIZER_NAME)), state.pop("param_groups"))
    except Exception as err:  # noqa: BLE001  (OSError, JSON errors, and safetensors' own SafetensorError)
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {err}") from None
    return model_config, weights, optim, state
