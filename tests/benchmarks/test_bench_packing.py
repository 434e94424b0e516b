"""benchmarks/bench_packing.py: the padded layout keeps exactly the labelled tokens of the packed batch."""

import importlib.util
from pathlib import Path

import torch

from xlstm_torch.training.data import Batch

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("bench_packing", ROOT / "benchmarks" / "bench_packing.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_padded_rows_hold_each_document_piece_alone():
    ids = torch.arange(20).reshape(2, 10)
    labels = ids + 100
    labels[0, 3] = -100  # a document's last token
    starts = torch.zeros(2, 10, dtype=torch.bool)
    starts[0, 4] = True
    starts[1, 0] = True
    rows, row_labels = bench.padded_rows(Batch(ids, labels, starts), 10)
    assert rows.shape == (3, 10)
    assert rows[0, :4].tolist() == [0, 1, 2, 3] and rows[1, :6].tolist() == [4, 5, 6, 7, 8, 9]
    assert (row_labels[0, 4:] == -100).all() and (row_labels[1, 6:] == -100).all()
    assert sorted(row_labels[row_labels != -100].tolist()) == sorted(labels[labels != -100].tolist())
