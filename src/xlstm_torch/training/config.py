"""The training recipe: one flat, validated dataclass, read from YAML, presets and ``key=value`` overrides.

    config = load_recipe(preset="default", overrides=["lr=3e-3", "model.embedding_dim=128"])

Sources are applied in order: the dataclass defaults, a shipped recipe (``--preset NAME``, the YAML files in
``training/recipes/``) or a user's YAML file (``--config FILE``), then the command-line overrides. A key that
is not a field (``lr`` spelt ``lrr``) is an error naming it and the closest field, never ignored. Model fields
are nested under ``model:`` (YAML) or ``model.<field>=`` (command line) and checked by the model's own config
class when the model is built (``build_model_config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "RecipeError", "load_recipe", "list_recipes", "recipe_path", "build_model_config",
           "parse_override", "RECIPES_DIR"]

RECIPES_DIR = Path(__file__).with_name("recipes")


class RecipeError(ValueError):
    """An invalid recipe: unknown key, wrong type or value. The message names the key."""


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data files; saved as ``train_config.json`` in the run folder.

    Batch sizes: ``batch_size`` rows of ``seq_len`` tokens per micro-step over all processes (each of N processes
    takes batch_size / N of them); one optimizer step sees ``batch_size * grad_accum`` rows. The numbers of a run
    therefore do not depend on how many processes run it, and a checkpoint moves between world sizes.
    """

    # --- model: a preset of xlstm_torch.models.presets (or None) and field overrides / a full field dict
    model_preset: str | None = "debug"
    model: dict = field(default_factory=dict)
    # --- data
    data: list | None = None  # files/folders/JSONL/HF dataset folders; None = the embedded stdlib corpus
    text_field: str = "text"  # JSONL / dataset column holding the text
    tokenizer: str | None = None  # None or "byte": UTF-8 bytes; else a tokenizer.json path
    val_fraction: float = 0.05
    cache_dir: str | None = None  # token cache; None = $XLSTM_CACHE or ~/.cache/xlstm-torch/tokens
    seq_len: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    packing: str = "reset"  # "reset": documents packed back to back, state reset at each start; "concat": no reset
    # --- optimisation (AdamW, linear warm-up then cosine to min_lr_ratio * lr)
    max_steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # weight decay on the embedding (never on norms and biases)
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    nonfinite: str = "stop"  # a NaN/Inf loss or gradient: "stop" the run, or "skip" the step
    # --- runtime
    seed: int = 0
    device: str = "auto"  # "auto" = cuda if available else cpu
    precision: str = "auto"  # "auto" = fp32 on CPU, bf16 autocast on GPU; or "fp32" / "bf16"
    compile: bool = False
    threads: int | None = None  # torch intra-op threads on CPU; None = torch's default
    distributed: str = "ddp"  # under torchrun: "ddp" or "fsdp" (FSDP2 fully_shard per block)
    # --- evaluation, logging, checkpoints
    eval_every: int = 200
    eval_batches: int = 16  # validation batches per evaluation; 0 = the whole validation split
    log_every: int = 10
    save_every: int = 200
    keep_last: int = 2
    tensorboard: bool = True  # also log to TensorBoard when the package is installed
    sample_prompt: str = "def "
    sample_tokens: int = 200
    sample_temperature: float = 0.8

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check types and ranges of every field; raise RecipeError naming the first bad one."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _FIELD_TYPES[f.name])
        positive = ["seq_len", "batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "save_every",
                    "keep_last"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise RecipeError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ["warmup_steps", "eval_batches", "sample_tokens", "weight_decay", "grad_clip"]:
            if getattr(self, name) < 0:
                raise RecipeError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise RecipeError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecipeError(f"lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise RecipeError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ["beta1", "beta2"]:
            if not 0 <= getattr(self, name) < 1:
                raise RecipeError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.adam_eps <= 0:
            raise RecipeError(f"adam_eps must be > 0, got {self.adam_eps}")
        if self.sample_temperature < 0:
            raise RecipeError(f"sample_temperature must be >= 0, got {self.sample_temperature}")
        if self.threads is not None and self.threads <= 0:
            raise RecipeError(f"threads must be a positive int or null, got {self.threads}")
        _check_choice("packing", self.packing, ("reset", "concat"))
        _check_choice("nonfinite", self.nonfinite, ("stop", "skip"))
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16"))
        _check_choice("distributed", self.distributed, ("ddp", "fsdp"))
        if self.data is not None:
            if not self.data or not all(isinstance(p, str) and p for p in self.data):
                raise RecipeError(f"data must be null or a non-empty list of paths, got {self.data!r}")
        if self.model_preset is None and "model_type" not in self.model:
            raise RecipeError("model: without model_preset, the model section must give model_type and its fields")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "recipe") -> "TrainConfig":
        if not isinstance(d, dict):
            raise RecipeError(f"{source}: expected a mapping of keys to values, got {type(d).__name__}")
        _check_known(d.keys(), source)
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        _check_known(changes.keys(), "override")
        return dataclasses.replace(self, **changes)

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step, over all processes."""
        return self.batch_size * self.grad_accum * self.seq_len


_FIELD_TYPES: dict[str, Any] = {
    "model_preset": (str, type(None)), "model": dict, "data": (list, type(None)), "text_field": str,
    "tokenizer": (str, type(None)), "val_fraction": float, "cache_dir": (str, type(None)), "seq_len": int,
    "batch_size": int, "grad_accum": int, "packing": str, "max_steps": int, "lr": float, "min_lr_ratio": float,
    "warmup_steps": int, "weight_decay": float, "decay_embeddings": bool, "beta1": float, "beta2": float,
    "adam_eps": float, "grad_clip": float, "nonfinite": str, "seed": int, "device": str, "precision": str,
    "compile": bool, "threads": (int, type(None)), "distributed": str, "eval_every": int, "eval_batches": int,
    "log_every": int, "save_every": int, "keep_last": int, "tensorboard": bool, "sample_prompt": str,
    "sample_tokens": int, "sample_temperature": float,
}


def _check_type(name: str, value, expected) -> None:
    expected = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in expected:
        raise RecipeError(f"{name} must be {_type_names(expected)}, got {value!r}")
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        return  # 1 is a fine learning-rate ratio
    if not isinstance(value, expected):
        raise RecipeError(f"{name} must be {_type_names(expected)}, got {value!r} ({type(value).__name__})")


def _type_names(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RecipeError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_known(keys, source: str) -> None:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"{source}: unknown key {key!r}{hint}")


# --- recipes, files and overrides --------------------------------------------------------------------------------


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``training/recipes/*.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"unknown preset {name!r}; shipped recipes: {', '.join(list_recipes())}")
    return path


def _yaml_loader():
    """PyYAML's safe loader, also reading ``1e-3`` (no dot, as people write learning rates) as a float."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def _yaml_load(text: str):
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506  (a SafeLoader subclass)


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"config file {str(path)!r} does not exist")
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value); the value is read as YAML (numbers, true/false, null, lists)."""
    import yaml

    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: empty key")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_recipe(preset: str | None = None, config_file: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = (), *, base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- shipped recipe ``preset``, YAML ``config_file`` or a ``base`` dict <- ``key=value`` overrides."""
    if sum(x is not None for x in (preset, config_file, base)) > 1:
        raise RecipeError("give only one of a preset, a config file or a base recipe")
    d: dict[str, Any] = {}
    if base is not None:
        d, source = dict(base), "saved recipe"
    elif preset is not None:
        d = read_yaml(recipe_path(preset))
        source = f"preset {preset!r}"
    elif config_file is not None:
        d = read_yaml(config_file)
        source = f"config file {str(config_file)!r}"
    elif base is None:
        source = "defaults"
    _check_known(d.keys(), source)
    d = json.loads(json.dumps(d))  # a deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        _check_known([path[0]], f"override {text!r}")
        if path[0] == "model" and len(path) > 1:
            d.setdefault("model", {})
            target = d["model"]
            for part in path[1:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
        elif len(path) > 1:
            raise RecipeError(f"override {text!r}: only model.<field> takes a dotted key")
        else:
            expected = _FIELD_TYPES[path[0]]
            if expected is str and not isinstance(value, str):  # "sample_prompt=def f(x):" is text, not YAML
                value = text.split("=", 1)[1]
            d[path[0]] = value
    if "data" in d and isinstance(d["data"], str):
        d["data"] = [d["data"]]
    return TrainConfig.from_dict(d, source=source)


def build_model_config(config: TrainConfig, vocab_size: int):
    """The model config of the recipe. ``vocab_size`` (the tokenizer's) is used unless the recipe sets one;
    a recipe vocabulary smaller than the tokenizer's is an error."""
    from xlstm_torch.models.base import MODEL_REGISTRY
    from xlstm_torch.models.presets import preset_config
    from xlstm_torch.nn.functional import round_up

    fields_ = dict(config.model)
    if config.model_preset is not None:
        fields_.pop("model_type", None)
        fields_.setdefault("vocab_size", round_up(vocab_size, 64) if vocab_size > 256 else vocab_size)
        try:
            model_config = preset_config(config.model_preset, **fields_)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"model: {err}") from None
    else:
        model_type = fields_.pop("model_type")
        from xlstm_torch.checkpoint import _import_model_modules

        _import_model_modules()  # registers every model class, the baselines included

        if model_type not in MODEL_REGISTRY:
            raise RecipeError(f"model.model_type {model_type!r} is unknown; known: {sorted(MODEL_REGISTRY)}")
        fields_.setdefault("vocab_size", round_up(vocab_size, 64) if vocab_size > 256 else vocab_size)
        try:
            model_config = MODEL_REGISTRY[model_type].config_class.from_dict(fields_)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"model: {err}") from None
    if model_config.vocab_size < vocab_size:
        raise RecipeError(f"model.vocab_size={model_config.vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({vocab_size})")
    return model_config
