"""xlstm-torch: xLSTM (Beck et al., NeurIPS 2024; xLSTM 7B, 2025) in PyTorch.

Layers of the library (each imports only the ones above it):
    ops      the mLSTM and sLSTM cells as pure functions (``xlstm_torch.ops.mlstm``/``.slstm``)
    nn       layers and blocks (conv, head-wise linear, norms, FFN, mLSTM/sLSTM/7B blocks)
    models   configs, presets and the language models (``xlstm_torch.from_preset``)
"""

__version__ = "0.1.0"

from xlstm_torch import ops  # noqa: E402,F401

# Lazy: ``import xlstm_torch`` stays light; the models and checkpoint I/O (safetensors) load on first use.
_LAZY_EXPORTS = {"from_preset": "xlstm_torch.models", "load_pretrained": "xlstm_torch.checkpoint",
                 "tune_cpu_allocator": "xlstm_torch.allocator"}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'xlstm_torch' has no attribute {name!r}")


__all__ = ["ops", "from_preset", "load_pretrained", "tune_cpu_allocator", "__version__"]
