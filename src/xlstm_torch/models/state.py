"""The recurrent state of a whole language model (ARCHITECTURE.md "Inference state").

    logits, state = model(input_ids)              # state=None: start from an empty state
    logits, state = model(next_ids, state)        # continue where the last call stopped
    logits, state = model(packed_ids, cu_seqlens=cu_seqlens)   # documents packed in one row (1, S)

With ``cu_seqlens`` (int64 [0, l_1, l_1 + l_2, ..., S], xlstm_torch/ops/_packing.py) every document
runs as if alone, from the empty state (or from row d of a state with one row per document), and
the returned state has one row per document: the documents continue as a batch of that size.

``ModelState.blocks[j]`` is the ``xlstm_torch.nn.LayerState`` of block j: its causal-conv buffer
(or None) and its cell state (``MLSTMState`` or ``SLSTMState``). Cell states are float32 (float64
for a float64 model), conv buffers are in the model's dtype. The size is fixed by the config and
the batch size, not by the number of tokens seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from xlstm_torch.nn.state import LayerState
from xlstm_torch.ops._packing import check_cu_seqlens


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree):
    """Apply ``fn`` to every tensor of nested (named) tuples; None stays None."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if tree is None:
        return None
    if isinstance(tree, tuple):
        mapped = [_map_tensors(fn, x) for x in tree]
        return type(tree)(*mapped) if hasattr(tree, "_fields") else tuple(mapped)
    raise TypeError(f"unexpected {type(tree).__name__} in a model state")


@dataclass(frozen=True)
class ModelState:
    """Per-block recurrent states of a language model, in block order.

    blocks: tuple of LayerState, one per block.
    """

    blocks: tuple[LayerState, ...]

    def __len__(self) -> int:
        return len(self.blocks)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ModelState":
        """A state with ``fn`` applied to every tensor, e.g. ``lambda t: t[keep]`` to select batch rows."""
        return ModelState(_map_tensors(fn, self.blocks))

    def to(self, device: torch.device | str) -> "ModelState":
        """A copy on ``device`` (dtypes kept)."""
        return self.map(lambda t: t.to(device))

    def detach(self) -> "ModelState":
        """The same values cut from the autograd graph (truncated back-propagation through time)."""
        return self.map(torch.Tensor.detach)

    @property
    def batch_size(self) -> int:
        return self.blocks[0].cell[0].shape[0]


def check_inputs(input_ids, state, num_blocks: int, cu_seqlens=None) -> tuple:
    """Check a model's forward arguments; return the per-block states (None entries when empty)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be int64 (or int32) token ids, got {input_ids.dtype}")
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (B, S) with S >= 1, got {tuple(input_ids.shape)}")
    rows = input_ids.shape[0]  # state rows: batch rows, or documents when packed
    if cu_seqlens is not None:
        rows = len(check_cu_seqlens(cu_seqlens, input_ids.shape[1], input_ids.shape[0])) - 1
    if state is None:
        return (None,) * num_blocks
    if not isinstance(state, ModelState):
        raise TypeError(f"state must be a ModelState (as returned by the model) or None, got {type(state).__name__}")
    if len(state.blocks) != num_blocks:
        raise ValueError(f"state has {len(state.blocks)} block states but the model has {num_blocks} blocks")
    if state.batch_size != rows:
        raise ValueError(f"state is for batch size {state.batch_size} but input_ids has "
                         + (f"{rows} packed documents (cu_seqlens)" if cu_seqlens is not None else f"batch size {rows}"))
    return state.blocks


def run_blocks(blocks, x: torch.Tensor, block_states, cu_seqlens=None,
               return_state: bool = True) -> tuple[torch.Tensor, ModelState | None]:
    """Run the residual blocks in order, each with its own state. x: (B, S, D) -> (B, S, D), ModelState.

    cu_seqlens: packed documents (B == 1): every block keeps them apart; state rows are documents.
    return_state=False: no final states are computed (a training step needs none); None in their place.
    """
    new_states = []
    for block, block_state in zip(blocks, block_states):
        x, block_state = block(x, block_state, cu_seqlens, return_state=return_state)  # (B, S, D)
        new_states.append(block_state)
    return x, ModelState(tuple(new_states)) if return_state else None
