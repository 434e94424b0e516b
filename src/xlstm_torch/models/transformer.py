"""A Llama-style Transformer language model: the baseline the xLSTM paper compares against.

xLSTM paper (Beck et al., NeurIPS 2024), language-modelling experiments: the "Llama" baseline is a
pre-norm decoder-only Transformer with rotary position embeddings (RoPE), RMSNorm and a SwiGLU feed-forward.
It sits behind the same surface as the xLSTM models (``models/base.py``):

    logits, state = model(input_ids, state=None)        input_ids (B, S) -> logits (B, S, V)

Its state is the key/value cache (``TransformerState``): feeding a sequence in pieces, each call
continuing from the previous state, gives the same logits as one call. Unlike the recurrent xLSTM
state, the cache grows by one key and one value per block and token, so decoding a token costs time
and memory linear in the context length.

Packed documents (``model(input_ids (1, S), cu_seqlens=...)``, xlstm_torch/ops/_packing.py) train
like the xLSTM models: attention is block-diagonal causal (a token sees only earlier tokens of its
own document) and rotary positions restart at every document, so each document gets the logits it
gets alone. No cache is taken or returned then: the documents' caches differ in length and would
not form a batch.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_torch.models.base import LanguageModel, keep_positions, register_model
from xlstm_torch.ops._packing import check_cu_seqlens, document_ids, positions_in_document


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the Transformer baseline. Derived sizes are properties, computed in one place.

    vocab_size     V, the number of token ids.
    d_model        D, the width of the residual stream.
    num_blocks     L, the number of (attention + feed-forward) blocks.
    num_heads      NH, attention heads; the head dimension is D / NH (even, for RoPE).
    ffn_dim        width of the SwiGLU hidden layer; None: 8/3 D rounded up to a multiple of 64
                   (keeps the parameter count of a 4 D GeLU feed-forward).
    rope_base      base of the RoPE frequencies, theta_j = rope_base^(-2j / DH).
    norm_eps       epsilon of every RMSNorm.
    tie_embeddings whether the output head shares the token-embedding matrix.
    init_std       standard deviation of the weight initialisation; the output projections of each
                   block use init_std / sqrt(2 L) so the residual stream does not grow with depth.
    """

    model_type: ClassVar[str] = "transformer"  # build_model and the trainer pick the class by it

    vocab_size: int
    d_model: int
    num_blocks: int
    num_heads: int
    ffn_dim: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_blocks", "num_heads"):
            _check_positive_int(name, getattr(self, name))
        if self.ffn_dim is not None:
            _check_positive_int("ffn_dim", self.ffn_dim)
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"d_model / num_heads = {self.head_dim} must be even for rotary embeddings "
                             "(check d_model and num_heads)")
        for name in ("rope_base", "norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be a bool, got {self.tie_embeddings!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ffn_hidden_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else _round_up(8 / 3 * self.d_model, 64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerConfig":
        """Build a config from ``to_dict()`` output; unknown keys are an error that names them."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown TransformerConfig field(s): {', '.join(hints)}; known fields: {known}")
        return cls(**data)

    @classmethod
    def debug(cls, **overrides) -> "TransformerConfig":
        """A tiny config that runs on a CPU in milliseconds (byte vocabulary, D 64, 2 blocks)."""
        sizes = dict(vocab_size=256, d_model=64, num_blocks=2, num_heads=4)
        sizes.update(overrides)
        return cls(**sizes)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class KVCache(NamedTuple):
    """Keys and values of one block for every token seen so far: each (B, NH, T, DH)."""

    keys: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True)
class TransformerState:
    """The model state: one ``KVCache`` per block. All blocks hold the same number of tokens T."""

    blocks: tuple[KVCache, ...]

    @property
    def seq_len(self) -> int:
        """T, the number of tokens the cache holds (the position of the next token)."""
        return self.blocks[0].keys.shape[2]

    def to(self, device) -> "TransformerState":
        return TransformerState(tuple(KVCache(c.keys.to(device), c.values.to(device)) for c in self.blocks))

    def detach(self) -> "TransformerState":
        return TransformerState(tuple(KVCache(c.keys.detach(), c.values.detach()) for c in self.blocks))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Reductions and rotations run in float32 for low-precision inputs, in float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rope_angles(positions: torch.Tensor, head_dim: int, base: float,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles position * base^(-2j / DH), each (S, DH / 2) in ``dtype``.

    The angles are formed in float64: at position 10^4 a float32 angle is already off by ~1e-3 rad.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim
    inv_freq = base ** -exponents  # (DH/2,)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (S, DH/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (j, j + DH/2) of x (B, NH, S, DH) by the angles in cos/sin (S, DH/2).

    Done in cos's dtype (float32 or float64) so low-precision inputs see the same rotation;
    returns x's dtype.
    """
    first, second = x.to(cos.dtype).chunk(2, dim=-1)  # (B, NH, S, DH/2) each
    rotated = torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)  # (B, NH, S, DH)
    return rotated.to(x.dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dimension, reduced in float32 (float64)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(_compute_dtype(x.dtype))
        normed = wide * torch.rsqrt(wide.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE and a key/value cache."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.rope_base = config.num_heads, config.head_dim, config.rope_base
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.k_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.v_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        return x.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, NH, S, DH)

    def forward(self, x: torch.Tensor, cache: KVCache | None,
                cu_seqlens: tuple[int, ...] | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """x (B, S, D) -> (B, S, D) and the cache grown from T to T + S tokens.

        cu_seqlens: checked boundaries of documents packed in one row (no cache in or out).
        """
        B, S, D = x.shape
        past = 0 if cache is None else cache.keys.shape[2]
        if cu_seqlens is not None:
            positions = positions_in_document(cu_seqlens, x.device)  # (S,) restarting at every document
        else:
            positions = torch.arange(past, past + S, device=x.device)
        cos, sin = rope_angles(positions, self.head_dim, self.rope_base, _compute_dtype(x.dtype))  # (S, DH/2)
        q = apply_rope(self._heads(self.q_proj(x)), cos, sin)  # (B, NH, S, DH)
        k = apply_rope(self._heads(self.k_proj(x)), cos, sin)  # (B, NH, S, DH)
        v = self._heads(self.v_proj(x))  # (B, NH, S, DH)
        if cu_seqlens is not None:
            doc = document_ids(cu_seqlens, x.device)  # (S,)
            allowed = torch.ones(S, S, dtype=torch.bool, device=x.device).tril() & (doc[:, None] == doc[None, :])
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, NH, S, DH) block-diagonal
            return self.out_proj(out.transpose(1, 2).reshape(B, S, D)), None
        if cache is not None:
            k = torch.cat((cache.keys, k), dim=2)  # (B, NH, T + S, DH)
            v = torch.cat((cache.values, v), dim=2)
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif S == 1:
            out = F.scaled_dot_product_attention(q, k, v)  # the newest token sees the whole cache
        else:
            # is_causal aligns the mask top-left; with a cache, query i sits at position past + i.
            allowed = torch.ones(S, past + S, dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, NH, S, DH)
        out = out.transpose(1, 2).reshape(B, S, D)  # (B, S, D)
        return self.out_proj(out), KVCache(k, v)


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) * up(x)), D -> ffn_hidden_dim -> D."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.ffn_hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_hidden_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = SwiGLU(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None,
                cu_seqlens: tuple[int, ...] | None = None) -> tuple[torch.Tensor, KVCache | None]:
        attn_out, cache = self.attn(self.attn_norm(x), cache, cu_seqlens)
        x = x + attn_out
        return x + self.ffn(self.ffn_norm(x)), cache


@register_model
class Transformer(LanguageModel):
    """Token embedding -> L pre-norm blocks -> RMSNorm -> output head (tied or not)."""

    model_type = "transformer"
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_blocks))
        self.out_norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def reset_parameters(self) -> None:
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.num_blocks)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(param)
            elif name.endswith(("out_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, std=residual_std)
            else:
                nn.init.normal_(param, std=std)

    def forward(
        self, input_ids: torch.Tensor, state: TransformerState | None = None, cu_seqlens: torch.Tensor | None = None,
        *, return_state: bool = True, logits_to_keep: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, TransformerState | None]:
        """input_ids (B, S) integer -> logits (B, S, V) and the cache holding T + S tokens.

        With ``cu_seqlens`` (documents packed in input_ids (1, S); module docstring): logits only,
        the state returned is None and none may be passed. return_state=False: None for the state too
        (the same surface as the xLSTM models; the cache is built either way).
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an int64 (or int32) tensor, got "
                            f"{input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (B, S) with S >= 1, got {tuple(input_ids.shape)}")
        if state is not None:
            if not isinstance(state, TransformerState) or len(state.blocks) != len(self.blocks):
                raise ValueError(f"state must be the TransformerState this model returned "
                                 f"({len(self.blocks)} blocks), got {type(state).__name__}")
            if state.blocks[0].keys.shape[0] != input_ids.shape[0]:
                raise ValueError(f"state holds batch {state.blocks[0].keys.shape[0]} but input_ids has "
                                 f"batch {input_ids.shape[0]}")
        if cu_seqlens is not None:
            cu_seqlens = check_cu_seqlens(cu_seqlens, input_ids.shape[1], input_ids.shape[0])
            if state is not None:
                raise ValueError("state cannot be passed with cu_seqlens: packed documents start from an empty "
                                 "cache and return none")
        x = self.embedding(input_ids)  # (B, S, D)
        caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, None if state is None else state.blocks[i], cu_seqlens)
            caches.append(cache)
        logits = self.lm_head(self.out_norm(keep_positions(x, logits_to_keep)))  # (B, S, V) or as kept
        return logits, (None if cu_seqlens is not None or not return_state else TransformerState(tuple(caches)))
