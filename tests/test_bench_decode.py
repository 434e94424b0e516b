"""benchmarks/bench_decode.py runs end to end and prints its table (tiny sizes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py"


def load_bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_decode", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_decode", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def test_bench_decode_prints_one_markdown_table(capsys, monkeypatch):
    bench = load_bench(monkeypatch)
    assert bench.main(["--contexts", "64", "128", "--new-tokens", "2", "--repeats", "1", "--models", "transformer"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| transformer |")]
    assert [row.split("|")[2].strip() for row in rows] == ["64", "128"]
    # the key/value cache grows with the context: 4 blocks x 2 x 256 x 4 bytes per token
    state_mib = [float(row.split("|")[6]) for row in rows]
    assert state_mib == [64 * 4 * 2 * 256 * 4 / 2**20, 128 * 4 * 2 * 256 * 4 / 2**20] == [0.5, 1.0]


def test_bench_decode_side_by_side(capsys, monkeypatch):
    """``--side-by-side``: one row per model (eager and compiled), medians over the rounds."""
    bench = load_bench(monkeypatch)
    assert bench.main(["--contexts", "16", "--new-tokens", "2", "--side-by-side", "2", "--compile",
                       "--models", "xlstm", "transformer"]) == 0
    out = capsys.readouterr().out
    names = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert names[1:] == ["xlstm[1:1]", "xlstm[1:1] (torch.compile)", "transformer", "transformer (torch.compile)"]
    medians = [float(line.split("|")[2]) for line in out.splitlines() if line.startswith("| xlstm")]
    assert all(m > 0 for m in medians)
