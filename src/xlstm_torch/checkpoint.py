"""Checkpoints as a directory: ``config.json`` plus weights in ``safetensors`` (never pickle).

Our layout, written by ``save_pretrained``:

    config.json          {"model_type": ..., **config.to_dict()}
    model.safetensors    every parameter and persistent buffer, tensors shared by several names
                         (tied embedding and output head) stored once under their first name

``load_pretrained`` reads that layout and also the public Hugging Face ``transformers`` layout of
xLSTM 7B (Beck et al., "xLSTM 7B", 2025): a config.json written by ``transformers`` (it names
``architectures``) and weights in one ``model.safetensors`` or in shards listed by
``model.safetensors.index.json``. The name mapping for that layout is in ``models/hf_xlstm.py``.
"""

from __future__ import annotations

import filecmp
import importlib
import json
import os
import pkgutil
import shutil
import tempfile
from pathlib import Path
import torch

from xlstm_torch.models.base import MODEL_REGISTRY, LanguageModel

__all__ = ["save_pretrained", "load_pretrained", "CONFIG_NAME", "WEIGHTS_NAME", "WEIGHTS_INDEX_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


# --- saving ------------------------------------------------------------------------------------------------------


def save_pretrained(model: LanguageModel, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write ``model`` to the directory ``path`` (config.json + model.safetensors), atomically.

    The files are written into a temporary directory next to ``path`` and moved into place with
    ``os.replace``, so a failure part-way (disk full, interrupt) leaves any previous checkpoint intact.
    An existing checkpoint with the same contents is left as it is; a different one is replaced only
    with ``overwrite=True`` (other files in it, such as a tokenizer.json, are kept).
    """
    from safetensors.torch import save_file

    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"model {type(model).__name__} has no .config with to_dict()")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"path {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_NAME).is_file():
        raise FileExistsError(f"path {str(path)!r} is a non-empty directory without a {CONFIG_NAME}; "
                              "refusing to write a checkpoint into it")
    path.parent.mkdir(parents=True, exist_ok=True)

    config_dict = {"model_type": model.model_type, **config.to_dict()}
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in _unique_tensors(model).items()}
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.saving-", dir=path.parent))
    try:
        (staging / CONFIG_NAME).write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        _fsync_files(staging)
        if path.is_dir() and any(path.iterdir()):
            if _same_checkpoint(staging, path):
                shutil.rmtree(staging)
                return
            if not overwrite:
                raise FileExistsError(f"path {str(path)!r} holds a different checkpoint; "
                                      "pass overwrite=True to replace it")
            _swap_in(staging, path)
        else:
            if path.is_dir():
                path.rmdir()  # empty: os.replace needs the name free (or an empty dir on POSIX)
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _unique_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every tensor that aliases an earlier one (tied weights) left out."""
    aliases = _alias_names(model.state_dict(keep_vars=True))
    return {name: t for name, t in model.state_dict().items() if name not in aliases}


def _alias_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """{alias name: name of the first tensor it shares memory, shape and strides with}."""
    seen: dict[tuple, str] = {}
    aliases = {}
    for name, t in state.items():
        if t.device.type == "meta":
            key = (id(t),)
        else:
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def _fsync_files(directory: Path) -> None:
    for file in directory.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _same_checkpoint(new: Path, old: Path) -> bool:
    return all((old / name).is_file() and filecmp.cmp(new / name, old / name, shallow=False)
               for name in (CONFIG_NAME, WEIGHTS_NAME))


def _swap_in(staging: Path, path: Path) -> None:
    """Replace the checkpoint directory ``path`` by ``staging``, keeping ``path``'s other files.

    Two renames: the old directory moves aside, the new one takes its name, then the old one is
    deleted. At every moment ``path`` is either the complete old or the complete new checkpoint
    (or, between the renames, absent, with the old one next to it).
    """
    ours = {CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME}
    for item in path.iterdir():
        if item.name not in ours and not item.name.endswith(".safetensors"):
            copy = shutil.copytree if item.is_dir() else shutil.copy2
            copy(item, staging / item.name)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, aside / "checkpoint")
    os.replace(staging, path)
    shutil.rmtree(aside, ignore_errors=True)


# --- loading -----------------------------------------------------------------------------------------------------


def load_pretrained(path: str | os.PathLike, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> LanguageModel:
    """Build the model a checkpoint directory describes and load its weights.

    ``device``: where the weights go (default CPU). ``dtype``: cast floating tensors to it (default:
    as stored). Reads our layout and the Hugging Face xLSTM layout (see the module docstring).
    Raises FileNotFoundError for a missing directory or file and ValueError for an unknown model
    type, unknown config keys, missing/unexpected/mis-shaped tensors or a corrupt weights file.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    device = torch.device("cpu" if device is None else device)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(config_file)!r} is missing: not a checkpoint directory")
    try:
        raw_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(config_file)!r} is not valid JSON: {err}") from None
    if not isinstance(raw_config, dict):
        raise ValueError(f"{str(config_file)!r} must hold a JSON object, got {type(raw_config).__name__}")
    weights = _WeightFiles(path)

    _import_model_modules()
    if is_hf_config(raw_config):
        from xlstm_torch.models import hf_xlstm

        model_type, config = hf_xlstm.LARGE_MODEL_TYPE, hf_xlstm.config_from_hf(raw_config)
        model_cls = _model_class(model_type)
        renames = hf_xlstm.HFNameMap(raw_config)
    else:
        raw_config = dict(raw_config)
        model_type = raw_config.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"{str(config_file)!r} has no 'model_type'")
        model_cls = _model_class(model_type)
        config = model_cls.config_class.from_dict(raw_config)
        renames = None

    model = _build(model_cls, config)
    state = model.state_dict(keep_vars=True)
    aliases = _alias_names(state)
    expected = {name: tuple(t.shape) for name, t in state.items() if name not in aliases}
    stored = weights.shapes()  # names and shapes as stored in the files
    if renames is not None:
        stored = renames.map_shapes(stored)
    _check_names_and_shapes(expected, stored, path, renames.stored_name if renames is not None else None)

    tensors = weights.load(device, renames)
    if dtype is not None:
        tensors = {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    for alias, name in aliases.items():  # assign=True replaced the parameters: re-tie the aliases
        _set_tensor(model, alias, _get_tensor(model, name))
    leftover = [n for n, t in model.state_dict(keep_vars=True).items() if t.device.type == "meta"]
    leftover += [n for n, t in model.named_buffers() if t.device.type == "meta"]
    if leftover:
        raise ValueError(f"{type(model).__name__} kept tensors that the checkpoint does not set: {leftover}")
    model.to(device)  # anything created in __init__ but not stored
    return model.eval()


def is_hf_config(config: dict) -> bool:
    """True for a config.json written by Hugging Face ``transformers`` (ours never has these keys)."""
    return "architectures" in config or "transformers_version" in config


def _import_model_modules() -> None:
    """Import every module of ``xlstm_torch.models`` so that each registers its model types."""
    import xlstm_torch.models as models

    for info in pkgutil.iter_modules(models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"xlstm_torch.models.{info.name}")


def _model_class(model_type) -> type[LanguageModel]:
    if model_type not in MODEL_REGISTRY:
        raise ValueError(f"unknown model_type {model_type!r} in config.json; known: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[model_type]


def _build(model_cls: type[LanguageModel], config) -> LanguageModel:
    """The model with its tensors on the meta device: no memory and no random init spent on weights
    that the checkpoint replaces. Tensors the checkpoint does not hold are created for real."""
    with torch.device("meta"):
        model = model_cls(config)
    if any(b.device.type == "meta" for _, b in _non_persistent_buffers(model)):
        model = model_cls(config)  # buffers computed in __init__ must hold real values
    return model


def _non_persistent_buffers(model: torch.nn.Module):
    for module_name, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            yield f"{module_name}.{name}".lstrip("."), module._buffers[name]


def _check_names_and_shapes(expected: dict[str, tuple], stored: dict[str, tuple], path: Path,
                            stored_name=None) -> None:
    """Raise ValueError listing every missing, unexpected and mis-shaped tensor. ``stored_name``
    maps one of our names to the name it has in the files, where the layouts differ."""
    missing = sorted(set(expected) - set(stored))
    if stored_name is not None:
        missing = [f"{n} (stored as {stored_name(n)})" if stored_name(n) != n else n for n in missing]
    unexpected = sorted(set(stored) - set(expected))
    misshaped = sorted(f"{n}: stored {stored[n]}, model wants {expected[n]}"
                       for n in set(expected) & set(stored) if tuple(stored[n]) != tuple(expected[n]))
    problems = []
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if misshaped:
        problems.append(f"tensors with the wrong shape: {misshaped}")
    if problems:
        raise ValueError(f"checkpoint {str(path)!r} does not match its config: " + "; ".join(problems))


def _get_tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    module_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module_name), attr)


def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, value)


class _WeightFiles:
    """The safetensors file(s) of a checkpoint: one ``model.safetensors`` or index-listed shards."""

    def __init__(self, path: Path) -> None:
        single, index = path / WEIGHTS_NAME, path / WEIGHTS_INDEX_NAME
        if single.is_file():
            self.files = {single: None}  # None: every tensor in the file
        elif index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{str(index)!r} is not a safetensors index (needs a 'weight_map'): {err}") from None
            self.files = {}
            for name, file in weight_map.items():
                self.files.setdefault(path / file, []).append(name)
            absent = [str(f) for f in self.files if not f.is_file()]
            if absent:
                raise FileNotFoundError(f"shards listed in {str(index)!r} are missing: {absent}")
        else:
            raise FileNotFoundError(f"{str(single)!r} is missing (and there is no {WEIGHTS_INDEX_NAME})")

    def _open(self, file: Path, device: str):
        from safetensors import safe_open

        try:
            return safe_open(str(file), framework="pt", device=device)
        except Exception as err:  # safetensors raises its own error type for a bad header or size
            raise ValueError(f"weights file {str(file)!r} is truncated or corrupt: {err}") from None

    def _names(self, handle, file: Path, listed) -> list[str]:
        names = list(handle.keys())
        if listed is not None:
            absent = sorted(set(listed) - set(names))
            if absent:
                raise ValueError(f"shard {str(file)!r} lacks tensors its index lists: {absent}")
            names = listed
        return names

    def shapes(self) -> dict[str, tuple]:
        shapes = {}
        for file, listed in self.files.items():
            with self._open(file, "cpu") as handle:
                for name in self._names(handle, file, listed):
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        return shapes

    def load(self, device: torch.device, renames=None) -> dict[str, torch.Tensor]:
        """All tensors, renamed to the model's names; read straight onto ``device`` where possible."""
        where = "cpu" if device.type == "meta" else str(device)
        stored = {}
        for file, listed in self.files.items():
            with self._open(file, where) as handle:
                for name in self._names(handle, file, listed):
                    try:
                        stored[name] = handle.get_tensor(name)
                    except Exception as err:
                        raise ValueError(f"weights file {str(file)!r} is truncated or corrupt "
                                         f"(reading {name!r}): {err}") from None
        return stored if renames is None else renames.map_tensors(stored)

