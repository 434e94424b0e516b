"""benchmarks/bench_backend_choice.py: the table's shape and the pick column (not timing values)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_table_rows_and_picks():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_backend_choice.py"), "--rows", "2",
                          "--head-dims", "8", "32", "--seq-lens", "8", "24", "--repeats", "1", "--mode", "fwd"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["D", "S"] and header[-2:] == ["backend=None picks", "picked / fastest"]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    assert [(r["D"], r["S"]) for r in rows] == [("8", "8"), ("8", "24"), ("32", "8"), ("32", "24")]
    # S <= D: parallel; S > D: chunkwise (select_backend's rule at DK = DV = D)
    assert [r["backend=None picks"] for r in rows] == ["parallel", "chunkwise", "parallel", "parallel"]
    for r in rows:
        times = [float(r[k]) for k in ("parallel", "chunkwise L=16", "chunkwise L=32", "chunkwise L=64")]
        assert all(t > 0 for t in times)
        assert float(r["picked / fastest"]) >= 1.0
