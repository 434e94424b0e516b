"""xlstm-torch: xLSTM (Beck et al., NeurIPS 2024; xLSTM 7B, 2025) in PyTorch.

Layers of the library (each imports only the ones above it):
    ops      the mLSTM and sLSTM cells as pure functions (``xlstm_torch.ops.mlstm``/``.slstm``)
"""

__version__ = "0.1.0"

from xlstm_torch import ops  # noqa: E402,F401

__all__ = ["ops", "load_pretrained", "__version__"]


def __getattr__(name: str):
    # Lazy: checkpoint I/O imports safetensors and every model module, which `import xlstm_torch` should not.
    if name == "load_pretrained":
        from xlstm_torch.checkpoint import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'xlstm_torch' has no attribute {name!r}")
