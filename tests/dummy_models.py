"""Tiny models behind the LanguageModel surface, for the generation, checkpoint and CLI tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from xlstm_torch.models.base import LanguageModel, keep_positions, register_model


@dataclass(frozen=True)
class TinyRNNConfig:
    vocab_size: int = 32
    d_model: int = 16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TinyRNNConfig":
        unknown = set(data) - {"vocab_size", "d_model"}
        if unknown:
            raise ValueError(f"unknown TinyRNNConfig field(s): {sorted(unknown)}")
        return cls(**data)


class RNNState(NamedTuple):
    h: torch.Tensor  # (B, D)
    steps: torch.Tensor  # (B,) tokens seen: a second leaf, of another shape


@register_model
class TinyRNN(LanguageModel):
    """h_t = tanh(E[x_t] + h_{t-1} U): a fixed-size recurrent state, like the xLSTM models'."""

    model_type = "test-tiny-rnn"
    config_class = TinyRNNConfig

    def __init__(self, config: TinyRNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.recurrent = nn.Linear(config.d_model, config.d_model, bias=False)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        # computed in __init__, not stored in checkpoints: load_pretrained must still get it right
        self.register_buffer("gain", torch.full((config.d_model,), 1.5), persistent=False)

    def forward(self, input_ids, state=None, logits_to_keep=None):
        B, S = input_ids.shape
        h = torch.zeros(B, self.config.d_model) if state is None else state.h
        steps = torch.zeros(B, dtype=torch.long) if state is None else state.steps
        x = self.embedding(input_ids)  # (B, S, D)
        outputs = []
        for t in range(S):
            h = torch.tanh(self.gain * x[:, t] + self.recurrent(h))
            outputs.append(h)
        logits = self.head(keep_positions(torch.stack(outputs, dim=1), logits_to_keep))  # (B, S, V) or as kept
        return logits, RNNState(h, steps + S)


class CountingState(NamedTuple):
    last: torch.Tensor  # (B,)


class CountingModel(LanguageModel):
    """No parameters: predicts token (previous + 1) mod V with certainty. For eos tests."""

    model_type = "test-counting"

    def __init__(self, vocab_size: int = 10) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids, state=None, logits_to_keep=None):
        logits = 10.0 * nn.functional.one_hot((input_ids + 1) % self.vocab_size, self.vocab_size).float()
        return keep_positions(logits, logits_to_keep), CountingState(input_ids[:, -1])


class FixedLogitsModel(LanguageModel):
    """Ignores its input: the same logits (V,) at every position. For sampling-distribution tests."""

    model_type = "test-fixed-logits"

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, state=None, logits_to_keep=None):
        B, S = input_ids.shape
        return keep_positions(self.logits.expand(B, S, -1), logits_to_keep).clone(), None


class CallRecorder(LanguageModel):
    """Wraps a model and records the shape of every input_ids it is called with and of the logits returned."""

    model_type = "test-recorder"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.supports_packed_states = model.supports_packed_states
        self.calls: list[tuple[int, ...]] = []
        self.logits_shapes: list[tuple[int, ...]] = []  # of what each call returned

    def forward(self, input_ids, state=None, **kwargs):
        self.calls.append(tuple(input_ids.shape))
        logits, state = self.model(input_ids, state, **kwargs)
        self.logits_shapes.append(tuple(logits.shape))
        return logits, state
