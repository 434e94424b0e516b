"""What every language model of the library shares: the call surface, generation and checkpoints.

A model maps ``input_ids`` (B, S) int64 to ``logits`` (B, S, V) and carries a recurrent state:

    logits, state = model(input_ids, state=None)
    logits, state = model(packed_ids (1, S), cu_seqlens=cu_seqlens)   # documents packed in one row

With ``cu_seqlens`` (int64 [0, l_1, ..., S], xlstm_torch/ops/_packing.py) each document gets the
logits it gets alone. Models with ``supports_packed_states`` also return one state row per document
(a batch that can continue decoding); the others return None for the state.

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


class LanguageModel(nn.Module):
    """Base class: subclasses set ``model_type``, ``config_class`` and implement ``forward``."""

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    supports_packed_states: ClassVar[bool] = False

    def forward(self, input_ids: torch.Tensor, state: Any = None, cu_seqlens: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        """``xlstm_torch.generation.generate``: input_ids (B, S) or a list of prompts of any lengths."""
        from xlstm_torch.generation import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    def save_pretrained(self, path) -> None:
        from xlstm_torch.checkpoint import save_pretrained

        save_pretrained(self, path)
