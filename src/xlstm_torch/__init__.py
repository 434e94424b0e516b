"""xlstm-torch: xLSTM (Beck et al., NeurIPS 2024; xLSTM 7B, 2025) in PyTorch.

Layers of the library (each imports only the ones above it):
    ops      the mLSTM and sLSTM cells as pure functions (``xlstm_torch.ops.mlstm``/``.slstm``)
    nn       layers and blocks (conv, head-wise linear, norms, FFN, mLSTM/sLSTM/7B blocks)
    models   configs, presets and the language models (``xlstm_torch.from_preset``)
"""

__version__ = "0.1.0"

from xlstm_torch import ops  # noqa: E402,F401


def __getattr__(name):
    # Lazy: ``import xlstm_torch`` stays light; the models load on first use.
    if name == "from_preset":
        from xlstm_torch.models import from_preset

        return from_preset
    raise AttributeError(f"module 'xlstm_torch' has no attribute {name!r}")


__all__ = ["ops", "from_preset", "__version__"]
