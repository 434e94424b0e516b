"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"), pure PyTorch: the
state-space baseline of the xLSTM paper's comparisons (Sec. 4), behind the library's model surface.

One block (pre-norm residual, Mamba paper Fig. 3), x (B, S, D):

    u, z   = in_proj(RMSNorm(x)).split(E)                     (B, S, E) each, E = expand * D
    u      = SiLU(causal depthwise conv(u))
    dt     = softplus(dt_proj(W_dt u) )                         (B, S, E)   the input-dependent step
    Bt, Ct = W_B u, W_C u                                      (B, S, N)
    h_t    = exp(dt_t A) * h_{t-1} + dt_t u_t Bt_t              (B, E, N)   A = -exp(A_log) (E, N), diagonal
    y_t    = h_t Ct_t + Dskip u_t                               (B, S, E)
    x      = x + out_proj(y * SiLU(z))

The recurrence is evaluated by ``selective_scan``: chunks of ``chunk_size`` steps, inside each a parallel
(Hillis-Steele, log2 T doubling steps) scan of the pairs (decay, input), the state carried from chunk to chunk.
``selective_scan_reference`` is the step-by-step twin the tests compare it with (outputs, states, gradients).

State for decoding: ``MambaState`` with one (conv window (B, E, K-1), h (B, E, N)) per block; feeding a sequence
in pieces continues exactly. Packed documents (cu_seqlens) are not supported: train with packing "concat".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_torch.models.base import LanguageModel, keep_positions, register_model
from xlstm_torch.models.config import _Config
from xlstm_torch.models.transformer import RMSNorm

__all__ = ["MambaConfig", "MambaLanguageModel", "MambaState", "selective_scan", "selective_scan_reference"]


@dataclass(frozen=True)
class MambaConfig(_Config):
    """Sizes of the Mamba baseline (defaults of the Mamba paper: N 16, expand 2, conv 4, dt rank ceil(D / 16))."""

    model_type: ClassVar[str] = "mamba"

    vocab_size: int = 256
    d_model: int = 64  # D
    num_blocks: int = 2  # L
    d_state: int = 16  # N
    expand: int = 2  # E = expand * D
    conv_kernel_size: int = 4
    dt_rank: int | None = None  # None: ceil(D / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    chunk_size: int = 64  # scan chunk length
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        self._check_positive_ints("vocab_size", "d_model", "num_blocks", "d_state", "expand", "conv_kernel_size",
                                  "chunk_size")
        if self.dt_rank is not None:
            self._check_positive_ints("dt_rank")
        self._check_positive_numbers("dt_min", "dt_max", "norm_eps", "init_std")
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min ({self.dt_min}) must be <= dt_max ({self.dt_max})")
        self._check_bools("tie_embeddings")

    @property
    def inner_dim(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)


class MambaBlockState(NamedTuple):
    conv: torch.Tensor  # (B, E, K-1) the last K-1 conv inputs
    h: torch.Tensor  # (B, E, N)


class MambaState(NamedTuple):
    blocks: tuple[MambaBlockState, ...]


def _check_scan_inputs(x, dt, A, B, C, D, h0):
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, S, E), got {tuple(x.shape)}")
    Bt, S, E = x.shape
    N = A.shape[-1]
    expected = {"dt": (dt, (Bt, S, E)), "A": (A, (E, N)), "B": (B, (Bt, S, N)), "C": (C, (Bt, S, N)),
                "D": (D, (E,))}
    if h0 is not None:
        expected["h0"] = (h0, (Bt, E, N))
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def selective_scan_reference(x, dt, A, B, C, D, h0=None):
    """Step by step. x, dt (B, S, E); A (E, N); B, C (B, S, N); D (E,); h0 (B, E, N) or None.
    Returns y (B, S, E) and the final state (B, E, N)."""
    _check_scan_inputs(x, dt, A, B, C, D, h0)
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t, :, None] * A)  # (B, E, N)
        h = decay * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))  # (B, E)
    return torch.stack(ys, 1) + D * x, h


def selective_scan(x, dt, A, B, C, D, h0=None, chunk_size: int = 64):
    """The same recurrence as ``selective_scan_reference``, chunk by chunk with a parallel scan inside each
    chunk. Padding the last chunk with dt = 0 and x = 0 leaves the state unchanged (decay 1, input 0)."""
    _check_scan_inputs(x, dt, A, B, C, D, h0)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    Bt, S, E = x.shape
    h = x.new_zeros(Bt, E, A.shape[1]) if h0 is None else h0
    ys = []
    # split, not a slice per chunk: the backward of a slice writes into a zero tensor of the full length (O(S²)
    # work over all chunks; most of a step-by-step scan's time), split's backward concatenates once
    for xc, dtc, Bc, Cc in zip(*(t.split(chunk_size, dim=1) for t in (x, dt, B, C))):
        a = torch.exp(dtc[..., None] * A)  # (B, T, E, N) decays
        b = (dtc * xc)[..., None] * Bc[:, :, None, :]  # (B, T, E, N) inputs
        offset = 1
        while offset < a.shape[1]:  # after this loop: a = prod of decays up to t, b = state at t from h = 0
            b = torch.cat([b[:, :offset], b[:, offset:] + a[:, offset:] * b[:, :-offset]], 1)
            a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], 1)
            offset *= 2
        hs = a * h[:, None] + b  # (B, T, E, N)
        ys.append(torch.einsum("bten,btn->bte", hs, Cc))
        h = hs[:, -1]
    return torch.cat(ys, 1) + D * x, h


class MambaMixer(nn.Module):
    """The selective-SSM token mixer of one block (module docstring)."""

    def __init__(self, c: MambaConfig) -> None:
        super().__init__()
        self.config = c
        E, N, R = c.inner_dim, c.d_state, c.dt_rank_value
        self.in_proj = nn.Linear(c.d_model, 2 * E, bias=False)
        self.conv = nn.Conv1d(E, E, c.conv_kernel_size, groups=E, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, c.d_model, bias=False)

    @torch.no_grad()
    def reset_parameters(self, residual_std: float) -> None:
        """Mamba paper init: A = -(1..N) per channel, D = 1, dt_proj bias = softplus^-1(dt) with dt log-uniform
        in [dt_min, dt_max]; the other matrices normal(0, init_std), the output projection scaled by depth."""
        c = self.config
        for lin in (self.in_proj, self.x_proj):
            nn.init.normal_(lin.weight, std=c.init_std)
        nn.init.normal_(self.out_proj.weight, std=residual_std)
        nn.init.uniform_(self.dt_proj.weight, -c.dt_rank_value ** -0.5, c.dt_rank_value ** -0.5)
        dt = torch.exp(torch.rand(c.inner_dim) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.conv.reset_parameters()
        self.A_log.copy_(torch.log(torch.arange(1, c.d_state + 1, dtype=torch.float32)).repeat(c.inner_dim, 1))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor, state: MambaBlockState | None) -> tuple[torch.Tensor, MambaBlockState]:
        c = self.config
        B_, S, _ = x.shape
        K = c.conv_kernel_size
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, S, E) each
        u = u.transpose(1, 2)  # (B, E, S)
        window = u.new_zeros(B_, c.inner_dim, K - 1) if state is None else state.conv.to(u.dtype)
        u_full = torch.cat([window, u], 2)  # (B, E, K-1+S)
        new_window = u_full[:, :, u_full.shape[2] - (K - 1):]
        u = F.silu(self.conv(u_full)).transpose(1, 2)  # (B, S, E)
        dt_low, Bm, Cm = self.x_proj(u).split([c.dt_rank_value, c.d_state, c.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low))  # (B, S, E)
        A = -torch.exp(self.A_log.float())  # (E, N)
        y, h = selective_scan(u.float(), dt.float(), A, Bm.float(), Cm.float(), self.D.float(),
                              None if state is None else state.h, chunk_size=c.chunk_size)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y), MambaBlockState(new_window, h)


class MambaBlock(nn.Module):
    def __init__(self, c: MambaConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.mixer = MambaMixer(c)

    def forward(self, x, state):
        y, state = self.mixer(self.norm(x), state)
        return x + y, state


@register_model
class MambaLanguageModel(LanguageModel):
    """Embedding -> L Mamba blocks -> RMSNorm -> head. forward(input_ids (B, S), state=None) ->
    logits (B, S, V), MambaState (None with return_state=False)."""

    model_type = "mamba"
    config_class = MambaConfig

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        if not isinstance(config, MambaConfig):
            raise TypeError(f"config must be a MambaConfig, got {type(config).__name__}")
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(MambaBlock(c) for _ in range(c.num_blocks))
        self.out_norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        c = self.config
        nn.init.normal_(self.embedding.weight, std=c.init_std)
        if not c.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=c.init_std)
        for block in self.blocks:
            block.norm.weight.fill_(1.0)
            block.mixer.reset_parameters(c.init_std / math.sqrt(2 * c.num_blocks))
        self.out_norm.weight.fill_(1.0)

    def forward(self, input_ids: torch.Tensor, state: MambaState | None = None,
                cu_seqlens: torch.Tensor | None = None, *, return_state: bool = True,
                logits_to_keep: int | torch.Tensor | None = None):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("input_ids must be an int64 (or int32) tensor")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must have shape (B, S) with S >= 1, got {tuple(input_ids.shape)}")
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens: packed documents are not supported by the Mamba baseline; train with "
                             "packing=concat")
        if state is not None and (not isinstance(state, MambaState) or len(state.blocks) != len(self.blocks)):
            raise ValueError(f"state must be the MambaState this model returned ({len(self.blocks)} blocks)")
        x = self.embedding(input_ids)  # (B, S, D)
        states = []
        for j, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else state.blocks[j])
            states.append(s)
        logits = self.lm_head(self.out_norm(keep_positions(x, logits_to_keep)))  # (B, S, V) or as kept
        return logits, (MambaState(tuple(states)) if return_state else None)
