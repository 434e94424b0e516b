"""What every language model of the library shares: the call surface, generation and checkpoints.

A model maps ``input_ids`` (B, S) int64 to ``logits`` (B, S, V) and carries a recurrent state:

    logits, state = model(input_ids, state=None)
    logits, state = model(packed_ids (1, S), cu_seqlens=cu_seqlens)   # documents packed in one row
    logits, state = model(input_ids, logits_to_keep=1)                # the last position only (B, 1, V)
    logits, state = model(input_ids, logits_to_keep=mask)             # mask (B, S) bool -> (N, V)

With ``cu_seqlens`` (int64 [0, l_1, ..., S], xlstm_torch/ops/_packing.py) each document gets the
logits it gets alone. Models with ``supports_packed_states`` also return one state row per document
(a batch that can continue decoding); the others return None for the state.

``logits_to_keep`` applies the output head only where logits are needed (``keep_positions``): the head of a
large vocabulary is most of a small model's cost and memory when a task scores a few positions (MQAR, the formal
languages) or a prompt needs only its last logits (generation). The logits kept are those of the full call.

Generation and checkpoint I/O live outside the model (``xlstm_torch.generation``,
``xlstm_torch.checkpoint``); these methods only forward to them, so model files hold architecture only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

MODEL_REGISTRY: dict[str, type["LanguageModel"]] = {}


def register_model(cls: type["LanguageModel"]) -> type["LanguageModel"]:
    """Class decorator: make ``cls`` loadable by its config's ``model_type``."""
    MODEL_REGISTRY[cls.model_type] = cls
    return cls


def keep_positions(x: torch.Tensor, logits_to_keep: int | torch.Tensor | None) -> torch.Tensor:
    """The hidden states x (B, S, D) at the positions whose logits a model returns.

    None: all (B, S, D). An int k in 1..S: the last k positions (B, k, D). A bool tensor (B, S): the True
    positions in row-major order (N, D), the rows ``logits[mask]`` would give."""
    if logits_to_keep is None:
        return x
    B, S = x.shape[:2]
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.dtype != torch.bool or tuple(logits_to_keep.shape) != (B, S):
            raise ValueError(f"logits_to_keep must be a bool tensor of shape {(B, S)} (the input's), got "
                             f"{logits_to_keep.dtype} {tuple(logits_to_keep.shape)}")
        return x[logits_to_keep.to(x.device)]
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or not 1 <= logits_to_keep <= S:
        raise ValueError(f"logits_to_keep must be None, an int in 1..{S} (the sequence length) or a bool mask, "
                         f"got {logits_to_keep!r}")
    return x[:, S - logits_to_keep:]


class LanguageModel(nn.Module):
    """Base class: subclasses set ``model_type``, ``config_class`` and implement ``forward``."""

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    supports_packed_states: ClassVar[bool] = False

    def forward(self, input_ids: torch.Tensor, state: Any = None, cu_seqlens: torch.Tensor | None = None, *,
                return_state: bool = True, logits_to_keep: int | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """``xlstm_torch.generation.generate``: input_ids (B, S) or a list of prompts of any lengths."""
        from xlstm_torch.generation import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    def save_pretrained(self, path) -> None:
        from xlstm_torch.checkpoint import save_pretrained

        save_pretrained(self, path)
