"""The models of the comparison, built by name at a common parameter budget.

Names: ``xlstm-a:b`` (xLSTM[a:b] of the paper, Sec. 2.4), ``transformer`` (Llama-style, models/transformer.py),
``mamba`` (models/mamba.py), ``lstm`` (models/lstm.py). ``build(name, vocab_size, width)`` gives the model at
width D; ``build_matched(name, vocab_size, budget)`` picks the width whose parameter count is closest to
``budget`` so that every model of a table has (about) the same number of parameters.

xLSTM[7:1] needs 8 blocks to hold one sLSTM block per 7 mLSTM blocks: with fewer blocks the ratio rule would place
no sLSTM block at all (it would be [1:0]), so ``xlstm-7:1`` always has max(num_blocks, 8) blocks, sLSTM last in
each group of 8, and its width is matched to the same budget.
"""

from __future__ import annotations

import torch

from xlstm_torch.models.base import LanguageModel
from xlstm_torch.models.config import XLSTMConfig
from xlstm_torch.models.presets import build_model

__all__ = ["MODEL_NAMES", "model_config", "build", "build_matched", "count_parameters"]

MODEL_NAMES = ("xlstm-1:0", "xlstm-0:1", "xlstm-1:1", "xlstm-7:1", "transformer", "mamba", "lstm")


def _check_name(name: str) -> None:
    if name in MODEL_NAMES:
        return
    if isinstance(name, str) and name.startswith("xlstm-") and ":" in name:
        a, _, b = name[6:].partition(":")
        if a.isdigit() and b.isdigit() and int(a) + int(b) > 0:
            return
    raise ValueError(f"model must be one of {list(MODEL_NAMES)} (or xlstm-a:b), got {name!r}")


def model_config(name: str, vocab_size: int, width: int, *, num_blocks: int = 2, num_heads: int = 4,
                 slstm_num_heads: int = 4, context_length: int = 512):
    """The config of model ``name`` at width ``width`` (D): the same D, blocks and heads for every family,
    each in its own block layout."""
    _check_name(name)
    if name.startswith("xlstm-"):
        ratio = name[6:]
        blocks = max(num_blocks, 8) if ratio == "7:1" else num_blocks
        return XLSTMConfig(vocab_size=vocab_size, embedding_dim=width, num_blocks=blocks, slstm_at=ratio,
                           num_heads=num_heads, slstm_num_heads=slstm_num_heads, chunk_size=16,
                           context_length=context_length, round_up_to_multiple_of=16)
    if name == "transformer":
        from xlstm_torch.models.transformer import TransformerConfig

        return TransformerConfig(vocab_size=vocab_size, d_model=width, num_blocks=num_blocks, num_heads=num_heads)
    if name == "mamba":
        from xlstm_torch.models.mamba import MambaConfig

        # chunk_size 1 = the scan step by step (the same recurrence): on one CPU thread at these sizes it is the
        # fastest (MQAR, B 64, S 64, D 64: 0.43 s/step vs 4.1 s/step at the default chunk of 64, whose parallel
        # scan materialises (B, 64, E, N) tensors log2(64) times)
        return MambaConfig(vocab_size=vocab_size, d_model=width, num_blocks=num_blocks, chunk_size=1)
    from xlstm_torch.models.lstm import LSTMConfig

    return LSTMConfig(vocab_size=vocab_size, hidden_size=width, num_layers=num_blocks)


def build(name: str, vocab_size: int, width: int, **kwargs) -> LanguageModel:
    return build_model(model_config(name, vocab_size, width, **kwargs))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are listed once


def _width_step(name: str, num_heads: int, slstm_num_heads: int) -> int:
    if name.startswith("xlstm-"):
        return 4 * max(num_heads, slstm_num_heads)  # head dims and the qkv blocks of 4 must divide
    if name == "transformer":
        return 2 * num_heads  # even head dim (RoPE)
    return 4


def build_matched(name: str, vocab_size: int, budget: int, **kwargs) -> tuple[LanguageModel, int]:
    """The model of ``name`` whose parameter count is closest to ``budget``, and its width."""
    step = _width_step(name, kwargs.get("num_heads", 4), kwargs.get("slstm_num_heads", 4))

    def size(width: int) -> int:
        with torch.device("meta"):
            return count_parameters(build(name, vocab_size, width, **kwargs))

    lo, hi = step, step
    while size(hi) < budget:  # parameter counts grow with the width: bracket, then bisect on the step grid
        lo, hi = hi, hi * 2
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        lo, hi = (mid, hi) if size(mid) < budget else (lo, mid)
    width = min((lo, hi), key=lambda w: abs(size(w) - budget))
    return build(name, vocab_size, width, **kwargs), width
