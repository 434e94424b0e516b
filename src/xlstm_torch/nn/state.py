"""The recurrent state one layer (and so one block) hands to its next call.

A block's state is a ``LayerState``: the causal-conv buffer (the last K-1 inputs of the conv, or
None for layers without a conv, e.g. the xLSTM 7B mLSTM layer) and the cell state
(``xlstm_torch.ops.MLSTMState`` or ``SLSTMState``). Its size does not depend on how many tokens were
seen: this is what makes decoding O(1) per token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from xlstm_torch.ops import MLSTMState, SLSTMState


class LayerState(NamedTuple):
    """conv: (B, K-1, D_conv) or None; cell: MLSTMState (C̄ (B,NH,DK,DV), n̄ (B,NH,DK), m (B,NH))
    or SLSTMState (h, c̄, n̄, m each (B, NH, DH))."""

    conv: torch.Tensor | None
    cell: MLSTMState | SLSTMState
