"""AdamW with the usual exclusions from weight decay, and the warm-up + cosine learning-rate schedule.

xLSTM paper, training details (App. of Beck et al. 2024): AdamW, linear warm-up, cosine decay to 10 % of the peak
rate, gradient clipping at norm 1, weight decay 0.1 except on norms and biases (and, by choice, the embedding).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "lr_at"]


def param_groups(model: nn.Module, weight_decay: float, *, decay_embeddings: bool = False) -> list[dict]:
    """Two groups: matrices decay; vectors (norm scales, biases, gate biases) and, unless
    ``decay_embeddings``, embedding tables do not. Tied parameters appear once (named_parameters dedups)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = id(p) in embedding_ids
        if p.ndim < 2 or (is_embedding and not decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``foreach`` kernels (one op over many tensors) where the device allows."""
    groups = param_groups(model, config.weight_decay, decay_embeddings=config.decay_embeddings)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps)


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear from lr/warmup to lr over ``warmup_steps``,
    then cosine from lr down to ``min_lr_ratio * lr`` at ``max_steps``. A pure function of the step, so a
    resumed run needs no scheduler state."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(max_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    floor = min_lr_ratio * lr
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))
