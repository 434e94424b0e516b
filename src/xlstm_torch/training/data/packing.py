"""Fixed-length training sequences cut from the token stream, with document boundaries recorded.

The documents lie back to back in one stream (``TokenDataset``); sequence j is the window
``tokens[j*S : j*S + S + 1]``: its first S tokens are the inputs, its last S the next-token labels.
Where a document begins inside a window, ``Batch.doc_starts`` marks it, so that a model can reset its
recurrent state there (the mLSTM/sLSTM state of Beck et al., 2024, Sec. 2 carries over otherwise) and
``Batch.cu_seqlens`` gives the segments of the packed view. The label of a document's last token (the
first token of the next, unrelated document) is -100: there is no next token in that document.

Which sequences a step reads is a pure function of (seed, step): sequence order is a permutation per
epoch seeded by (seed, epoch), and the global batch of step t is the next block of that endless stream.
Resuming a run therefore needs only the step counter, and ranks of a distributed run slice the same
global batch, so they read disjoint rows whose union is the one-process batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from xlstm_torch.training.data.cache import TokenDataset
from xlstm_torch.training.data.sources import DataError

__all__ = ["Batch", "PackedBatches", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # label of positions without a target (torch.nn.functional.cross_entropy's default)


@dataclass
class Batch:
    """One micro-batch of one rank.

    input_ids  (B, S) int64   token ids
    labels     (B, S) int64   the next token of each position, ``IGNORE_INDEX`` at a document's last token
    doc_starts (B, S) bool    True at the first token of a document (a packing reset point)
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    doc_starts: torch.Tensor

    def cu_seqlens(self) -> torch.Tensor:
        """Segment boundaries of the packed ``(1, B*S)`` view, int64 ``[0, ..., B*S]``: every row start
        and every document start inside a row begins a segment (each row is its own sequence)."""
        rows, seq_len = self.doc_starts.shape
        starts = self.doc_starts.reshape(-1).clone()  # (B*S,)
        starts[::seq_len] = True
        bounds = torch.nonzero(starts).reshape(-1)
        return torch.cat([bounds, torch.tensor([rows * seq_len], dtype=bounds.dtype)]).to(torch.int64)

    def to(self, device, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.input_ids, self.labels, self.doc_starts)))


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class PackedBatches:
    """Batches of fixed-length sequences from a ``TokenDataset`` for one rank.

    ``batch_size`` is this rank's micro-batch (rows); one optimizer step reads a global batch of
    ``batch_size * world_size * grad_accum`` sequences. Micro-batch ``micro`` of rank ``rank`` holds
    rows ``[(micro * world_size + rank) * batch_size, ... + batch_size)`` of the step's global batch,
    so the ranks' rows of one micro step together equal the one-process micro-batch of
    ``batch_size * world_size`` rows. ``split`` names the data in errors ("train", "validation").
    """

    def __init__(self, data: TokenDataset, seq_len: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1, split: str = "train") -> None:
        self.seq_len = _positive_int("seq_len", seq_len)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.world_size = _positive_int("world_size", world_size)
        self.grad_accum = _positive_int("grad_accum", grad_accum)
        self.rank = _positive_int("rank", rank, minimum=0)
        self.seed = _positive_int("seed", seed, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size ({self.world_size}), got {self.rank}")
        if not isinstance(data, TokenDataset):
            raise TypeError(f"data must be a TokenDataset, got {type(data).__name__}")
        self.data = data
        self.shuffle = bool(shuffle)
        self.split = split
        self.num_sequences = (len(data) - 1) // self.seq_len
        if self.num_sequences < 1:
            raise DataError(f"the {split} data is too short: {len(data)} tokens make no sequence of seq_len "
                            f"{self.seq_len} (that needs {self.seq_len + 1} tokens); use more data or a "
                            "shorter seq_len")
        self.global_batch_size = self.batch_size * self.world_size * self.grad_accum
        self._offsets = np.asarray(data.doc_offsets, dtype=np.int64)
        self._window = np.arange(self.seq_len + 1, dtype=np.int64)  # (S+1,)
        self._orders: dict[int, np.ndarray] = {}

    def epoch(self, step: int) -> float:
        """How many passes over the data the steps before ``step`` have made (for logging)."""
        return step * self.global_batch_size / self.num_sequences

    def _order(self, epoch: int) -> np.ndarray:
        """The sequence indices of ``epoch`` in reading order, (num_sequences,) int64."""
        if epoch not in self._orders:
            if len(self._orders) >= 4:  # a batch spans at most a few epochs; keep only recent ones
                self._orders.pop(min(self._orders))
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            self._orders[epoch] = rng.permutation(self.num_sequences).astype(np.int64)
        return self._orders[epoch]

    def batch(self, step: int, micro: int = 0) -> Batch:
        """Micro-batch ``micro`` of optimizer step ``step`` for this rank: a pure function of its arguments
        and the constructor's, (batch_size, seq_len) tensors."""
        step = _positive_int("step", step, minimum=0)
        micro = _positive_int("micro", micro, minimum=0)
        if micro >= self.grad_accum:
            raise ValueError(f"micro must be < grad_accum ({self.grad_accum}), got {micro}")
        first = step * self.global_batch_size + (micro * self.world_size + self.rank) * self.batch_size
        positions = np.arange(first, first + self.batch_size, dtype=np.int64)  # (B,) places in the epoch stream
        epochs, within = np.divmod(positions, self.num_sequences)
        if self.shuffle:
            indices = np.array([self._order(int(e))[i] for e, i in zip(epochs, within)], dtype=np.int64)
        else:
            indices = within
        return self._rows(indices)

    def eval_batches(self, max_batches: int | None = None) -> Iterator[Batch]:
        """Every sequence once, in order, unshuffled, in global batches of ``batch_size * world_size``
        sequences (at most ``max_batches`` of them); this rank yields its rows of each.

        The last global batch may be partial; its rows are shared out in rank order, so a rank can get
        fewer rows, or none. A rank with none still yields one row whose labels are all ``IGNORE_INDEX``:
        every rank runs the same number of forward passes (sharded models need that), and the labelled
        rows of all ranks together are exactly the sequences of a one-process evaluation.
        """
        if max_batches is not None:
            max_batches = _positive_int("max_batches", max_batches, minimum=0)
        per_global = self.batch_size * self.world_size
        count = -(-self.num_sequences // per_global)
        if max_batches is not None:
            count = min(count, max_batches)
        for g in range(count):
            first = g * per_global + self.rank * self.batch_size
            indices = np.arange(first, min(first + self.batch_size, self.num_sequences), dtype=np.int64)
            if indices.size:
                yield self._rows(indices)
            else:
                filler = self._rows(np.zeros(1, dtype=np.int64))
                filler.labels.fill_(IGNORE_INDEX)
                yield filler

    def _rows(self, indices: np.ndarray) -> Batch:
        """The sequences ``indices`` (B,) as a Batch of (B, S) tensors."""
        positions = indices[:, None] * self.seq_len + self._window  # (B, S+1) places in the token stream
        window = torch.from_numpy(np.asarray(self.data.tokens[positions], dtype=np.int64))  # (B, S+1)
        # A token begins a document iff its place is one of the documents' start offsets.
        starts = self._offsets[:-1]
        found = np.minimum(np.searchsorted(starts, positions), starts.shape[0] - 1)
        begins = torch.from_numpy(starts[found] == positions)  # (B, S+1) bool
        labels = window[:, 1:].clone()  # (B, S)
        labels[begins[:, 1:]] = IGNORE_INDEX
        return Batch(input_ids=window[:, :-1].contiguous(), labels=labels, doc_starts=begins[:, :-1].contiguous())
