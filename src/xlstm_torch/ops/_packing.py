"""Packed variable-length sequences: several documents back to back on the time axis of one row.

``cu_seqlens`` holds the cumulative document lengths [0, l_1, l_1 + l_2, ..., S] of a batch of one
packed sequence. Every document starts from its own initial state (the empty state, MATH.md:
C̄ = n̄ = 0, m = -inf, unless a state with one row per document is passed) and nothing of one
document reaches another: the packed call equals running each document alone. The final state
has one row per document (its state after its last token), so the documents can continue as a batch.

The public entry points take ``cu_seqlens`` as a tensor and check it (``check_cu_seqlens``); the
backends receive the checked boundaries as a tuple of Python ints under the same name.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch


def check_cu_seqlens(cu_seqlens, S: int, B: int) -> tuple[int, ...]:
    """Check the document boundaries of a packed sequence of length S; return them as Python ints.

    cu_seqlens: (D + 1,) int64 tensor [0, l_1, ..., S], strictly increasing (no empty document);
    the batch must be one packed row (B == 1).
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor of int64, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int64:
        raise TypeError(f"cu_seqlens must be int64, got {cu_seqlens.dtype}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D [0, l_1, ..., S] with at least one document, "
                         f"got shape {tuple(cu_seqlens.shape)}")
    if B != 1:
        raise ValueError(f"cu_seqlens needs the documents packed into one row (batch size 1), got batch size {B}")
    bounds = tuple(cu_seqlens.tolist())
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
    if any(b <= a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cu_seqlens must be strictly increasing (every document non-empty), got {list(bounds)}")
    if bounds[-1] != S:
        raise ValueError(f"cu_seqlens must end at the sequence length S={S}, got {bounds[-1]}")
    return bounds


def host_to_device(values: Sequence[int], device=None, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A small tensor of Python ints on ``device``, without waiting for the GPU.

    A copy from pageable host memory (what ``torch.tensor(values, device="cuda")`` or indexing a
    CUDA tensor with a list makes) first waits for all queued GPU work; the host then idles while
    it could be queueing the next kernels. From pinned memory the copy just joins the stream.
    """
    x = torch.tensor(values, dtype=dtype)
    if torch.device(device or "cpu").type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def document_spans(cu_seqlens: Sequence[int]) -> list[tuple[int, int]]:
    """[(start, end), ...] of each document."""
    return list(zip(cu_seqlens[:-1], cu_seqlens[1:]))


def document_ids(cu_seqlens: Sequence[int], device=None) -> torch.Tensor:
    """(S,) int64: the document index of every token."""
    lengths = host_to_device([b - a for a, b in document_spans(cu_seqlens)], device)
    # output_size: else repeat_interleave reads the total back from the GPU
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths, output_size=cu_seqlens[-1])


def positions_in_document(cu_seqlens: Sequence[int], device=None) -> torch.Tensor:
    """(S,) int64: every token's position counted from the start of its document."""
    starts = host_to_device(cu_seqlens[:-1], device)
    return torch.arange(cu_seqlens[-1], device=device) - starts[document_ids(cu_seqlens, device)]


def documents_as_rows(cu_seqlens: Sequence[int], device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed documents laid out as the rows of a right-padded batch, with nothing read back from the GPU.

    Returns gather (D, longest): the packed position of row d's step t (0, a real token, on padding);
    lengths (D,) int64; unpad (S,): where each packed token sits in the flattened (D·longest) rows, so
    ``rows.flatten(0, 1)[unpad]`` puts the documents back to back. (A boolean mask would read its count back.)
    """
    longest = max(b - a for a, b in document_spans(cu_seqlens))
    starts = host_to_device(cu_seqlens[:-1], device)
    lengths = host_to_device([b - a for a, b in document_spans(cu_seqlens)], device)
    steps = torch.arange(longest, device=device)
    gather = torch.where(steps[None, :] < lengths[:, None], starts[:, None] + steps[None, :], 0)
    doc = document_ids(cu_seqlens, device)
    unpad = doc * longest + torch.arange(cu_seqlens[-1], device=device) - starts[doc]
    return gather, lengths, unpad


def select_rows(state: NamedTuple | None, rows: slice) -> NamedTuple | None:
    """The same state restricted to some rows of its leading (batch/document) dimension."""
    return None if state is None else type(state)(*(x[rows] for x in state))


def concat_rows(states: Sequence[NamedTuple]) -> NamedTuple:
    """States of equal type joined along their leading dimension."""
    return type(states[0])(*(torch.cat(xs, dim=0) for xs in zip(*states)))


def run_per_document(fn: Callable, sequences: Sequence[torch.Tensor], time_dim: int, state, cu_seqlens):
    """Run ``fn(*slices, state=...)`` on each document's slice of ``sequences`` and join the results.

    This is the definition of the packed call: each document alone, from row d of ``state`` (or from
    ``fn``'s empty state). ``fn`` returns (output, final state); outputs are joined along
    ``time_dim``, final states along their leading dimension (one row per document).
    """
    outputs, finals = [], []
    for d, (a, b) in enumerate(document_spans(cu_seqlens)):
        out, final = fn(*(x.narrow(time_dim, a, b - a) for x in sequences), state=select_rows(state, slice(d, d + 1)))
        outputs.append(out)
        finals.append(final)
    return torch.cat(outputs, dim=time_dim), concat_rows(finals)
