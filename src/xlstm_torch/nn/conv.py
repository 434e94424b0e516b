"""Causal depthwise convolution over time (xLSTM paper Sec. 2.4 and its block figures: the "Conv4"
with Swish activation in front of the q/k projections of the mLSTM block and the i/f gates of
the sLSTM block).

Each channel has its own kernel of K taps; the output at step t sees inputs t-K+1 .. t only.
The carried state is the last K-1 inputs, so a sequence fed in pieces (or one step at a time)
gives the same output as one call. Packed documents (``cu_seqlens``, xlstm_torch/ops/_packing.py)
each start from their own state: no output sees an input of another document.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_torch.ops._packing import check_cu_seqlens, document_ids, host_to_device

from .lean import causal_conv, causal_conv_silu, needs_grad


class CausalConv1d(nn.Module):
    """Depthwise causal conv1d: y[:, t, d] = bias[d] + sum_j weight[d, j] * x[:, t - (K-1) + j, d].

    weight: (D, K), the last tap multiplies the current input. Inputs before the first step are
    zero unless a state is passed.
    """

    def __init__(self, dim: int, kernel_size: int = 4, bias: bool = True):
        super().__init__()
        if dim <= 0 or kernel_size <= 0:
            raise ValueError(f"dim and kernel_size must be positive, got dim={dim}, kernel_size={kernel_size}")
        self.dim, self.kernel_size = dim, kernel_size
        self.weight = nn.Parameter(torch.empty(dim, kernel_size))
        self.bias = nn.Parameter(torch.empty(dim)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # torch's Conv1d default (the paper keeps it): U(-1/sqrt(K), 1/sqrt(K)), fan-in K per channel.
        bound = 1.0 / math.sqrt(self.kernel_size)
        self.weight.uniform_(-bound, bound)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, S, D); state: (B, K-1, D) the inputs just before x, or None for zeros.

        Returns y (B, S, D) and the new state (B, K-1, D): the last K-1 inputs seen.
        cu_seqlens: optional (ND + 1,) int64 boundaries of ND documents packed in one row (B == 1);
        then state rows are documents: (ND, K-1, D) in (None: zeros) and out.
        """
        B, S, D = x.shape
        if cu_seqlens is not None:
            return self._packed(x, state, check_cu_seqlens(cu_seqlens, S, B))
        window = torch.cat([self._state_or_zeros(x, state), x], dim=1)  # (B, K-1+S, D)
        return self._conv(window), window[:, S:]  # (B, S, D), (B, K-1, D)

    def forward_silu(self, x: torch.Tensor, state: torch.Tensor | None = None,
                     cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """SiLU of ``forward``'s output and the new state: the blocks' "Conv4 + Swish".

        In training on unpacked rows it runs ``causal_conv_silu`` (nn/lean.py), which keeps x and the
        state for the backward instead of the padded window and the pre-activation.
        """
        if cu_seqlens is not None or not needs_grad(x, state, self.weight, self.bias):
            y, state = self(x, state, cu_seqlens)
            return F.silu(y), state
        S, K1 = x.shape[1], self.kernel_size - 1
        state = self._state_or_zeros(x, state)
        y = causal_conv_silu(x, state, self.weight, self.bias)  # (B, S, D)
        return y, (x[:, S - K1:] if S >= K1 else torch.cat([state, x], dim=1)[:, S:])  # the last K-1 inputs

    def _state_or_zeros(self, x: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """The K-1 inputs before x (B, S, D) in x's dtype: ``state``, or zeros when None."""
        if state is None:
            return x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[2])
        return state.to(x.dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step: x (B, D) and state (B, K-1, D) or None -> y (B, D), state (B, K-1, D).

        ``forward`` on (B, 1, D) written as the K products and their sum: for one window a
        convolution call costs tens of times more than its 2·K·D flops (equal to rounding).
        """
        if state is None:
            state = x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[1])
        window = torch.cat([state.to(x.dtype), x[:, None]], dim=1)  # (B, K, D)
        y = (window * self.weight.t()).sum(1)  # (B, D)
        return (y if self.bias is None else y + self.bias), window[:, 1:]

    def _conv(self, window: torch.Tensor) -> torch.Tensor:
        """(B, K-1+S, D) inputs -> (B, S, D) outputs, one per full window of K."""
        return causal_conv(window, self.weight, self.bias)

    def _packed(self, x: torch.Tensor, state: torch.Tensor | None, cu_seqlens: tuple[int, ...]):
        """Each document gets K-1 slots of its own state in front of it (zeros when None), then one
        convolution runs over the whole row: every window of K then lies inside one document."""
        _, S, D = x.shape
        K1, ND = self.kernel_size - 1, len(cu_seqlens) - 1
        doc = document_ids(cu_seqlens, x.device)  # (S,)
        slot = torch.arange(S, device=x.device) + (doc + 1) * K1  # (S,) where each token sits in the window
        starts = host_to_device(cu_seqlens, x.device)
        offsets = torch.arange(ND, device=x.device) * K1
        prefix = ((starts[:-1] + offsets)[:, None] + torch.arange(K1, device=x.device)).flatten()  # (ND·(K-1),)
        window = x.new_zeros(1, S + ND * K1, D).index_copy(1, slot, x)  # (1, S + ND·(K-1), D)
        if state is not None:
            window = window.index_copy(1, prefix, state.to(x.dtype).reshape(1, ND * K1, D))
        y = self._conv(window)[:, slot - K1]  # (1, S, D)
        suffix = prefix + (starts[1:] - starts[:-1]).repeat_interleave(K1)  # the last K-1 slots of each document
        return y, window[0, suffix].view(ND, K1, D)  # (1, S, D), (ND, K-1, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, bias={self.bias is not None}"
