"""A classical LSTM language model (Hochreiter & Schmidhuber 1997): the baseline the xLSTM paper starts from
(Sec. 2.1) and compares against on the synthetic tasks. ``torch.nn.LSTM`` stack, behind the library's surface:

    input_ids (B, S) -> embedding (B, S, D) -> L-layer LSTM (B, S, D) -> LayerNorm -> head -> logits (B, S, V)

The state is ``LSTMState(h, c)``, each (L, B, D); feeding a sequence in pieces continues exactly. Packed documents
(``cu_seqlens``) run each document from a zero state (a packed-sequence batch); no state is returned then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from xlstm_torch.models.base import LanguageModel, keep_positions, register_model
from xlstm_torch.models.config import _Config
from xlstm_torch.ops._packing import check_cu_seqlens

__all__ = ["LSTMConfig", "LSTMLanguageModel", "LSTMState"]


@dataclass(frozen=True)
class LSTMConfig(_Config):
    """vocab_size V, hidden_size D (also the embedding width), num_layers L."""

    model_type: ClassVar[str] = "lstm"

    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    tie_embeddings: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self):
        self._check_positive_ints("vocab_size", "hidden_size", "num_layers")
        self._check_positive_numbers("norm_eps")
        self._check_bools("tie_embeddings")


class LSTMState(NamedTuple):
    h: torch.Tensor  # (L, B, D)
    c: torch.Tensor  # (L, B, D)


@register_model
class LSTMLanguageModel(LanguageModel):
    model_type = "lstm"
    config_class = LSTMConfig

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        if not isinstance(config, LSTMConfig):
            raise TypeError(f"config must be an LSTMConfig, got {type(config).__name__}")
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.lstm = nn.LSTM(c.hidden_size, c.hidden_size, c.num_layers, batch_first=True)
        self.out_norm = nn.LayerNorm(c.hidden_size, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """torch's LSTM init (uniform +-1/sqrt(D)) with forget-gate biases at 1 (Gers et al. 2000), so the
        memory starts out kept rather than halved each step."""
        nn.init.normal_(self.embedding.weight, std=1.0)  # inputs of unit scale reach the gates
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        self.lstm.reset_parameters()
        D = self.config.hidden_size
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_ih"):  # gate order i, f, g, o
                p[D:2 * D].fill_(1.0)
            elif name.startswith("bias_hh"):
                p[D:2 * D].zero_()
        self.out_norm.reset_parameters()

    def forward(self, input_ids: torch.Tensor, state: LSTMState | None = None,
                cu_seqlens: torch.Tensor | None = None, *, return_state: bool = True,
                logits_to_keep: int | torch.Tensor | None = None):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("input_ids must be an int64 (or int32) tensor")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (B, S) with S >= 1, got {tuple(input_ids.shape)}")
        if state is not None and not isinstance(state, LSTMState):
            raise ValueError(f"state must be the LSTMState this model returned, got {type(state).__name__}")
        x = self.embedding(input_ids)  # (B, S, D)
        if cu_seqlens is not None:
            if state is not None:
                raise ValueError("state cannot be passed with cu_seqlens: packed documents start from zero state")
            cu = check_cu_seqlens(cu_seqlens, input_ids.shape[1], input_ids.shape[0])
            docs = [x[0, a:b] for a, b in zip(cu[:-1], cu[1:])]  # each (l_d, D)
            packed = nn.utils.rnn.pack_sequence(docs, enforce_sorted=False)
            out, _ = self.lstm(packed)
            padded, lengths = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)  # (docs, max l, D)
            y = torch.cat([padded[d, :n] for d, n in enumerate(lengths.tolist())])[None]  # (1, S, D)
            return self.lm_head(self.out_norm(keep_positions(y, logits_to_keep))), None
        y, (h, c) = self.lstm(x, None if state is None else (state.h, state.c))  # (B, S, D)
        logits = self.lm_head(self.out_norm(keep_positions(y, logits_to_keep)))  # (B, S, V) or as kept
        return logits, (LSTMState(h, c) if return_state else None)
