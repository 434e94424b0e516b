"""Model configs: frozen dataclasses, validated once on construction, derived sizes as properties.

``XLSTMConfig`` describes the paper's language models xLSTM[a:b] (Beck et al. 2024, Sec. 2.4 and
training details); ``XLSTMLargeConfig`` the xLSTM 7B architecture (Beck et al. 2025). Both turn into
plain dicts and JSON and back; ``config_from_dict`` picks the class from the ``model_type`` key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from xlstm_torch.nn.functional import round_up


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Config:
    """Shared behaviour of the config dataclasses: checks, dict and JSON conversion."""

    model_type: ClassVar[str]

    # -- checks used by __post_init__; every message names the field -------------------------------
    def _check_positive_ints(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    def _check_positive_numbers(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    def _check_bools(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def _check_divides(self, width_name: str, width: int, heads_name: str) -> None:
        heads = getattr(self, heads_name)
        if width % heads:
            raise ValueError(f"{heads_name}={heads} must divide {width_name}={width}")

    # -- conversion -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields plus ``model_type``; tuples become lists (JSON-ready)."""
        d: dict[str, Any] = {"model_type": self.model_type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Inverse of ``to_dict``. Unknown keys and a wrong ``model_type`` raise ValueError."""
        if not isinstance(d, dict):
            raise TypeError(f"d must be a dict, got {type(d).__name__}")
        d = dict(d)
        model_type = d.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"model_type {model_type!r} does not match {cls.__name__} ({cls.model_type!r})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def replace(self, **changes):
        """A copy with some fields changed (validated again). Unknown names raise ValueError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} fields: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class XLSTMConfig(_Config):
    """The paper's xLSTM language model: embedding, L residual blocks (mLSTM or sLSTM), LayerNorm, head.

    Block types: ``slstm_at`` is either the explicit sLSTM block indices, e.g. (1, 3), or a ratio
    "a:b" (xLSTM[a:b], a mLSTM blocks per b sLSTM blocks): the blocks are cut into groups of a+b,
    and in every group the first a are mLSTM and the last b sLSTM ("7:1" with 24 blocks gives
    sLSTM at 7, 15, 23; "1:0" is mLSTM only).
    """

    model_type: ClassVar[str] = "xlstm"

    vocab_size: int = 50304  # V (GPT-2 tokenizer, padded to a multiple of 64)
    embedding_dim: int = 768  # D, the residual-stream width
    num_blocks: int = 24  # L
    slstm_at: tuple[int, ...] | str = ()  # sLSTM block indices, or a ratio "a:b"
    num_heads: int = 4  # NH of the mLSTM cell (head dim Di / NH)
    slstm_num_heads: int = 4  # NH of the sLSTM cell (head dim D / NH)
    conv_kernel_size: int = 4  # causal conv of the mLSTM block
    slstm_conv_kernel_size: int = 4  # causal conv of the sLSTM block; 0 = none
    qkv_block_size: int = 4  # block size of the head-wise q/k/v projections
    mlstm_proj_factor: float = 2.0  # Di = factor * D (pre up-projection), rounded up
    ffn_proj_factor: float = 4 / 3  # sLSTM block's gated FFN width = factor * D, rounded up
    round_up_to_multiple_of: int = 64
    chunk_size: int = 64  # chunk length of the chunkwise mLSTM form
    tie_weights: bool = True  # lm_head shares the embedding matrix
    dropout: float = 0.0
    bias: bool = False  # biases of the up/down projections and the FFN
    norm_eps: float = 1e-5
    context_length: int = 2048  # training context; the model itself takes any length

    def __post_init__(self):
        self._check_positive_ints("vocab_size", "embedding_dim", "num_blocks", "num_heads", "slstm_num_heads",
                                  "conv_kernel_size", "qkv_block_size", "round_up_to_multiple_of", "chunk_size",
                                  "context_length")
        if not _is_int(self.slstm_conv_kernel_size) or self.slstm_conv_kernel_size < 0:
            raise ValueError(f"slstm_conv_kernel_size must be an int >= 0 (0: no conv), got {self.slstm_conv_kernel_size!r}")
        self._check_positive_numbers("mlstm_proj_factor", "ffn_proj_factor", "norm_eps")
        self._check_bools("tie_weights", "bias")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if isinstance(self.slstm_at, list):  # the one normalisation: lists (from JSON) become tuples
            object.__setattr__(self, "slstm_at", tuple(self.slstm_at))
        positions = self.slstm_positions  # parses and checks slstm_at
        self._check_divides("the mLSTM inner width", self.inner_dim, "num_heads")
        self._check_divides("the mLSTM inner width", self.inner_dim, "qkv_block_size")
        if positions:
            self._check_divides("embedding_dim", self.embedding_dim, "slstm_num_heads")

    # -- derived sizes ----------------------------------------------------------------------------
    @property
    def slstm_positions(self) -> tuple[int, ...]:
        """Sorted indices of the sLSTM blocks."""
        L = self.num_blocks
        if isinstance(self.slstm_at, str):
            parts = self.slstm_at.split(":")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f"slstm_at must be a ratio 'a:b' of two non-negative ints or a tuple of "
                                 f"block indices, got {self.slstm_at!r}")
            a, b = (int(p) for p in parts)
            if a + b == 0 or L % (a + b):
                raise ValueError(f"slstm_at ratio {self.slstm_at!r} needs a+b > 0 dividing num_blocks={L}")
            return tuple(j for j in range(L) if j % (a + b) >= a)
        if not isinstance(self.slstm_at, tuple) or not all(_is_int(j) for j in self.slstm_at):
            raise ValueError(f"slstm_at must be a tuple of block indices or a ratio 'a:b', got {self.slstm_at!r}")
        bad = [j for j in self.slstm_at if not 0 <= j < L]
        if bad:
            raise ValueError(f"slstm_at positions {bad} are out of range for num_blocks={L} (0..{L - 1})")
        if len(set(self.slstm_at)) != len(self.slstm_at):
            raise ValueError(f"slstm_at has repeated positions: {self.slstm_at}")
        return tuple(sorted(self.slstm_at))

    @property
    def block_types(self) -> tuple[str, ...]:
        """'mlstm' or 'slstm' for each block, in order."""
        positions = set(self.slstm_positions)
        return tuple("slstm" if j in positions else "mlstm" for j in range(self.num_blocks))

    @property
    def inner_dim(self) -> int:
        """Di: the mLSTM block's up-projected width."""
        return round_up(self.mlstm_proj_factor * self.embedding_dim, self.round_up_to_multiple_of)

    @property
    def mlstm_head_dim(self) -> int:
        return self.inner_dim // self.num_heads

    @property
    def slstm_head_dim(self) -> int:
        return self.embedding_dim // self.slstm_num_heads

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the sLSTM block's gated FFN."""
        return round_up(self.ffn_proj_factor * self.embedding_dim, self.round_up_to_multiple_of)


@dataclass(frozen=True)
class XLSTMLargeConfig(_Config):
    """The xLSTM 7B architecture: mLSTM blocks with SwiGLU FFNs, RMSNorm, soft-capped gates and logits.

    Defaults are the released xLSTM 7B (D 4096, 32 blocks, 8 heads: qk head dim 256, v head dim 512,
    FFN 10944, vocab 50304).
    """

    model_type: ClassVar[str] = "xlstm-large"

    vocab_size: int = 50304  # V
    embedding_dim: int = 4096  # D
    num_blocks: int = 32  # L
    num_heads: int = 8  # NH
    qk_dim_factor: float = 0.5  # q/k width = factor * D
    v_dim_factor: float = 1.0  # v width = factor * D
    ffn_proj_factor: float = 2.667  # SwiGLU width = factor * D, rounded up
    round_up_to_multiple_of: int = 64
    gate_soft_cap: float = 15.0  # i, f pre-activations -> cap * tanh(x / cap)
    output_logit_soft_cap: float = 30.0
    chunk_size: int = 64
    bias: bool = False
    norm_eps: float = 1e-6
    context_length: int = 8192  # training context; the model itself takes any length

    def __post_init__(self):
        self._check_positive_ints("vocab_size", "embedding_dim", "num_blocks", "num_heads", "round_up_to_multiple_of",
                                  "chunk_size", "context_length")
        self._check_positive_numbers("qk_dim_factor", "v_dim_factor", "ffn_proj_factor", "gate_soft_cap",
                                     "output_logit_soft_cap", "norm_eps")
        self._check_bools("bias")
        for name in ("qk_dim_factor", "v_dim_factor"):
            width = getattr(self, name) * self.embedding_dim
            if width != int(width):
                raise ValueError(f"{name}={getattr(self, name)} times embedding_dim={self.embedding_dim} "
                                 f"must be a whole number, got {width}")
        self._check_divides("the q/k width", self.qk_dim, "num_heads")
        self._check_divides("the v width", self.v_dim, "num_heads")

    @property
    def qk_dim(self) -> int:
        return int(self.qk_dim_factor * self.embedding_dim)

    @property
    def v_dim(self) -> int:
        return int(self.v_dim_factor * self.embedding_dim)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return round_up(self.ffn_proj_factor * self.embedding_dim, self.round_up_to_multiple_of)


CONFIG_CLASSES: dict[str, type[_Config]] = {c.model_type: c for c in (XLSTMConfig, XLSTMLargeConfig)}


def config_from_dict(d: dict[str, Any]):
    """Build the config named by ``d["model_type"]`` from a ``to_dict()`` dict."""
    if not isinstance(d, dict) or "model_type" not in d:
        raise ValueError("d must be a dict with a 'model_type' key")
    if d["model_type"] not in CONFIG_CLASSES:
        raise ValueError(f"unknown model_type {d['model_type']!r}; known: {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[d["model_type"]].from_dict(d)


def config_from_json(text: str):
    return config_from_dict(json.loads(text))
