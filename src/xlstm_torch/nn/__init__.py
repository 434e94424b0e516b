"""Layers and blocks of the xLSTM models (xLSTM paper Sec. 2.4; the xLSTM 7B paper's architecture section).

Every layer and block takes an optional ``LayerState`` and returns the next one, so a sequence fed
in pieces gives the same output as one call (ARCHITECTURE.md "Inference state").
"""

from . import decode
from .conv import CausalConv1d
from .feedforward import GatedFeedForward
from .functional import round_up, soft_cap
from .large import LargeMLSTMBlock, LargeMLSTMLayer
from .linear import HeadwiseLinear
from .mlstm import MLSTMBlock, MLSTMLayer, multihead_mlstm
from .norm import LayerNorm, MultiHeadNorm, RMSNorm
from .slstm import SLSTMBlock, SLSTMLayer, powerlaw_forget_bias
from .state import LayerState

__all__ = [
    "CausalConv1d", "HeadwiseLinear", "LayerNorm", "RMSNorm", "MultiHeadNorm", "GatedFeedForward",
    "MLSTMLayer", "MLSTMBlock", "SLSTMLayer", "SLSTMBlock", "LargeMLSTMLayer", "LargeMLSTMBlock",
    "LayerState", "multihead_mlstm", "powerlaw_forget_bias", "soft_cap", "round_up",
]
