"""xlstm-torch: xLSTM (Beck et al., NeurIPS 2024; xLSTM 7B, 2025) in PyTorch.

Layers of the library (each imports only the ones above it):
    ops      the mLSTM and sLSTM cells as pure functions (``xlstm_torch.ops.mlstm``/``.slstm``)
"""

__version__ = "0.1.0"

from xlstm_torch import ops  # noqa: E402,F401

__all__ = ["ops", "__version__"]
