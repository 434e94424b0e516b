"""Packed fixed-length batches: content, document starts, determinism, epochs, ranks, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xlstm_torch.training.data import IGNORE_INDEX, Batch, DataError, PackedBatches, TokenDataset


def stream(num_tokens, doc_lengths=None):
    """A dataset whose token at place p is p itself (uint32), so every window names where it came from."""
    doc_lengths = doc_lengths or [num_tokens]
    assert sum(doc_lengths) == num_tokens
    offsets = np.concatenate([[0], np.cumsum(doc_lengths)]).astype(np.int64)
    return TokenDataset(tokens=np.arange(num_tokens, dtype=np.uint32), doc_offsets=offsets,
                        vocab_size=2**20, num_bytes=num_tokens)


def first_places(batch: Batch) -> list[int]:
    return batch.input_ids[:, 0].tolist()


def test_sequences_are_windows_of_the_stream():
    S = 8
    data = stream(100)
    packed = PackedBatches(data, S, 4, shuffle=False)
    assert packed.num_sequences == (100 - 1) // S == 12
    batch = packed.batch(0)
    assert batch.input_ids.shape == batch.labels.shape == batch.doc_starts.shape == (4, S)
    assert batch.input_ids.dtype == batch.labels.dtype == torch.int64 and batch.doc_starts.dtype == torch.bool
    for row in range(4):
        assert batch.input_ids[row].tolist() == list(range(row * S, row * S + S))
        assert batch.labels[row].tolist() == list(range(row * S + 1, row * S + S + 1))
    assert batch.doc_starts.tolist() == [[True] + [False] * 7] + [[False] * 8] * 3
    # The last sequence ends with the stream's last usable token: 12 * 8 + 1 = 97 <= 100 tokens.
    assert packed.batch(2).labels[-1, -1].item() == 96
    # Exactly S + 1 tokens make one sequence.
    assert PackedBatches(stream(9), 8, 1).num_sequences == 1


def test_document_starts_labels_and_cu_seqlens():
    S = 6
    # Documents begin at 0, 4, 6, 12 (a row start), 13 and 18 (the label of 17, the last input of row 2).
    data = stream(30, [4, 2, 6, 1, 5, 12])
    batch = PackedBatches(data, S, 4, shuffle=False).batch(0)
    starts = {0, 4, 6, 12, 13, 18}
    for row in range(4):
        for t in range(S):
            place = row * S + t
            assert batch.doc_starts[row, t].item() == (place in starts), place
            expected_label = IGNORE_INDEX if place + 1 in starts else place + 1
            assert batch.labels[row, t].item() == expected_label, place
    assert batch.labels[2, -1].item() == IGNORE_INDEX  # 17 is a document's last token
    # Packed (1, 24) view: every row start and every document start is a boundary.
    assert batch.cu_seqlens().tolist() == [0, 4, 6, 12, 13, 18, 24]
    assert batch.cu_seqlens().dtype == torch.int64
    no_docs = Batch(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long),
                    torch.zeros(3, 5, dtype=torch.bool))
    assert no_docs.cu_seqlens().tolist() == [0, 5, 10, 15]
    mid_row = no_docs.doc_starts.clone()
    mid_row[1, 2] = True
    assert Batch(no_docs.input_ids, no_docs.labels, mid_row).cu_seqlens().tolist() == [0, 5, 7, 10, 15]


def test_empty_documents_do_not_break_the_starts():
    data = stream(20, [5, 0, 0, 5, 10])  # two empty documents share the start at 5
    batch = PackedBatches(data, 19, 1, shuffle=False).batch(0)
    assert torch.nonzero(batch.doc_starts[0]).reshape(-1).tolist() == [0, 5, 10]
    assert torch.nonzero(batch.labels[0] == IGNORE_INDEX).reshape(-1).tolist() == [4, 9]


def test_batches_are_a_pure_function_of_seed_and_step():
    data = stream(2000)
    a = PackedBatches(data, 16, 5, seed=3)
    b = PackedBatches(data, 16, 5, seed=3)
    steps = [7, 0, 3, 7, 100, 3]
    for step in steps:  # any order, repeated, fresh object: the same rows
        assert torch.equal(a.batch(step).input_ids, b.batch(step).input_ids)
    assert torch.equal(a.batch(5).input_ids, PackedBatches(data, 16, 5, seed=3).batch(5).input_ids)
    other_seed = PackedBatches(data, 16, 5, seed=4)
    assert not torch.equal(a.batch(0).input_ids, other_seed.batch(0).input_ids)
    in_order = PackedBatches(data, 16, 5, shuffle=False)
    assert first_places(in_order.batch(1)) == [80, 96, 112, 128, 144]


def test_each_epoch_reads_every_sequence_once_in_a_new_order_and_batches_span_epochs():
    S, B = 4, 3
    data = stream(41)  # 10 sequences
    packed = PackedBatches(data, S, B, seed=0)
    assert packed.num_sequences == 10 and packed.global_batch_size == 3
    read = [p // S for step in range(10) for p in first_places(packed.batch(step))]  # 30 sequences = 3 epochs
    epochs = [read[0:10], read[10:20], read[20:30]]
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))
    assert epochs[0] != epochs[1] != epochs[2]
    # Step 3 reads stream places 9, 10, 11: the last of epoch 0 and the first two of epoch 1.
    assert read[9:12] == [epochs[0][9], epochs[1][0], epochs[1][1]]
    assert packed.epoch(10) == 3.0
    # A global batch larger than the data wraps through several epochs and stays well defined.
    big = PackedBatches(data, S, 25, seed=0)
    assert sorted(p // S for p in first_places(big.batch(0))[:20]) == sorted(list(range(10)) * 2)


@pytest.mark.parametrize("world_size, grad_accum", [(2, 1), (3, 2), (4, 3)])
def test_ranks_read_disjoint_rows_whose_union_is_the_one_process_batch(world_size, grad_accum):
    data = stream(8 * 500 + 1, [1000, 1, 2999, 1])
    B, S = 2, 8
    ranks = [PackedBatches(data, S, B, seed=1, rank=r, world_size=world_size, grad_accum=grad_accum)
             for r in range(world_size)]
    one_micro = PackedBatches(data, S, B * world_size, seed=1, grad_accum=grad_accum)  # same micro-batches
    one_step = PackedBatches(data, S, B * world_size * grad_accum, seed=1)  # the whole step at once
    for step in (0, 1, 57):
        micro_batches = []
        for micro in range(grad_accum):
            parts = [r.batch(step, micro) for r in ranks]
            union = torch.cat([p.input_ids for p in parts])
            assert torch.equal(union, one_micro.batch(step, micro).input_ids)
            assert torch.equal(torch.cat([p.labels for p in parts]), one_micro.batch(step, micro).labels)
            assert torch.equal(torch.cat([p.doc_starts for p in parts]), one_micro.batch(step, micro).doc_starts)
            micro_batches.append(union)
        whole = torch.cat(micro_batches)
        assert torch.equal(whole, one_step.batch(step).input_ids)
        assert len(set(whole[:, 0].tolist())) == whole.shape[0]  # no sequence read twice in a step


def test_eval_batches_in_order_with_the_last_partial_batch_kept():
    data = stream(11 * 4 + 1)  # 11 sequences of 4
    packed = PackedBatches(data, 4, 3, shuffle=True, seed=9)  # eval ignores the shuffle
    batches = list(packed.eval_batches())
    assert [b.input_ids.shape[0] for b in batches] == [3, 3, 3, 2]
    assert [p // 4 for b in batches for p in first_places(b)] == list(range(11))
    assert len(list(packed.eval_batches(max_batches=2))) == 2
    assert list(packed.eval_batches(max_batches=0)) == []
    assert [first_places(b) for b in packed.eval_batches()] == [first_places(b) for b in batches]  # repeatable


@pytest.mark.parametrize("num_sequences", [11, 12, 13, 17])
def test_eval_batches_over_ranks_cover_the_one_process_evaluation(num_sequences):
    data = stream(num_sequences * 4 + 1)
    world, B = 3, 2
    ranks = [list(PackedBatches(data, 4, B, rank=r, world_size=world).eval_batches()) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # the same number of forward passes on every rank
    labelled = sorted(p // 4 for batches in ranks for b in batches
                      for p, lab in zip(first_places(b), b.labels) if (lab != IGNORE_INDEX).any())
    one = [p // 4 for b in PackedBatches(data, 4, B * world).eval_batches() for p in first_places(b)]
    assert labelled == one == list(range(num_sequences))
    for batches in ranks:  # a rank with nothing left gets one row with every label ignored
        for b in batches:
            if not (b.labels != IGNORE_INDEX).any():
                assert b.input_ids.shape == (1, 4)
    limited = [list(PackedBatches(data, 4, B, rank=r, world_size=world).eval_batches(max_batches=1)) for r in range(3)]
    assert sorted(p // 4 for batches in limited for b in batches for p in first_places(b)) == list(range(6))


def test_too_short_data_names_the_split_and_sizes():
    with pytest.raises(DataError, match="validation data is too short: 8 tokens .* seq_len 8 .*needs 9 tokens"):
        PackedBatches(stream(8), 8, 2, split="validation")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(seq_len=0), ValueError, "seq_len must be >= 1"),
    (dict(batch_size=-1), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=2.0), TypeError, "batch_size must be an int"),
    (dict(world_size=2, rank=2), ValueError, r"rank must be < world_size \(2\)"),
    (dict(rank=-1), ValueError, "rank must be >= 0"),
    (dict(grad_accum=0), ValueError, "grad_accum must be >= 1"),
    (dict(seed=True), TypeError, "seed must be an int"),
    (dict(data=np.arange(10)), TypeError, "data must be a TokenDataset"),
])
def test_bad_arguments_name_themselves(kwargs, error, match):
    args = dict(data=stream(100), seq_len=8, batch_size=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        PackedBatches(**args)


def test_bad_batch_arguments():
    packed = PackedBatches(stream(100), 8, 2, grad_accum=2)
    with pytest.raises(ValueError, match=r"micro must be < grad_accum \(2\)"):
        packed.batch(0, micro=2)
    with pytest.raises(ValueError, match="step must be >= 0"):
        packed.batch(-1)
    with pytest.raises(ValueError, match="max_batches must be >= 0"):
        list(packed.eval_batches(max_batches=-1))


def test_memory_mapped_tokens_and_device_move(tmp_path):
    from xlstm_torch.tokenizers import ByteTokenizer
    from xlstm_torch.training.data import Document, TokenCache

    data = TokenCache.build([Document("a", "abcdefgh" * 10), Document("b", "xyz" * 10)], ByteTokenizer(), tmp_path)
    batch = PackedBatches(data, 16, 2, shuffle=False).batch(0).to("cpu")
    assert bytes(batch.input_ids[0].tolist()) == b"abcdefghabcdefgh"
    row = PackedBatches(data, 16, 1, shuffle=False).batch(4)  # places 64..80 cross into document "b" at 80
    assert bytes(row.input_ids[0].tolist()) == b"abcdefghabcdefgh" and row.labels[0, -1].item() == IGNORE_INDEX
