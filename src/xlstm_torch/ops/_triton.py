"""When the Triton kernels can run (the GPU path, ``backend="triton"``).

The kernels run on CUDA tensors, or anywhere under Triton's interpreter (``TRITON_INTERPRET=1``,
set before the kernels' module is first imported): that is how the test suite checks them on a
CPU. The kernel modules import Triton lazily, so the library works without it installed.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels in its (CPU) interpreter instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(device: torch.device) -> bool:
    """Whether ``backend="triton"`` can run on tensors of ``device``."""
    return triton_installed() and (device.type == "cuda" or interpreting())


def require_triton(device: torch.device) -> None:
    """Raise a clear error when ``backend="triton"`` cannot run on ``device``."""
    if not triton_installed():
        raise RuntimeError('backend="triton" needs the triton package: pip install "xlstm-torch[triton]"')
    if not triton_runs_on(device):
        raise RuntimeError(f'backend="triton" runs on CUDA tensors (or under TRITON_INTERPRET=1), got device {device}')
