"""Argument checks shared by the op entry points: every error names the argument at fault."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, ndim: int, *, dtype=None, device=None, shape=None) -> None:
    """Raise TypeError/ValueError naming ``name`` if ``x`` is not the tensor the op expects."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the other inputs have {dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the other inputs are on {device}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """States (and internal arithmetic) are float64 for float64 inputs, float32 otherwise (MATH.md)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_state(name: str, state, shapes: dict[str, tuple], device) -> tuple:
    """Check a state tuple field by field; return it as a tuple of tensors."""
    if not isinstance(state, (tuple, list)) or len(state) != len(shapes):
        raise ValueError(f"{name} must be a tuple of {len(shapes)} tensors ({', '.join(shapes)}), got {type(state).__name__}"
                         + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
    for (field, shape), x in zip(shapes.items(), state):
        check_tensor(f"{name}.{field}", x, len(shape), device=device, shape=shape)
    return tuple(state)


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {sorted(c for c in choices if c is not None)} or None")


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
