"""benchmarks/bench_decode.py runs end to end and prints its table (tiny sizes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py"


def test_bench_decode_prints_one_markdown_table(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_decode", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_decode", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.main(["--contexts", "64", "128", "--new-tokens", "2", "--repeats", "1", "--models", "transformer"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| transformer |")]
    assert [row.split("|")[2].strip() for row in rows] == ["64", "128"]
    # the key/value cache grows with the context: 4 blocks x 2 x 256 x 4 bytes per token
    state_mib = [float(row.split("|")[6]) for row in rows]
    assert state_mib == [64 * 4 * 2 * 256 * 4 / 2**20, 128 * 4 * 2 * 256 * 4 / 2**20] == [0.5, 1.0]
