"""benchmarks/bench_ops.py: the table's shape, the FLOP model and the memory probe (not timing values)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("bench_ops", ROOT / "benchmarks" / "bench_ops.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules["bench_ops"] = bench  # dataclasses look their module up while the file executes
SPEC.loader.exec_module(bench)

EXPECTED_COLUMNS = ["op", "implementation", "S", "head dim", "B", "NH", "fwd tok/s", "fwd+bwd tok/s",
                    "fwd GFLOP/s (% mm)", "fwd+bwd GFLOP/s (% mm)", "peak MiB fwd", "peak MiB fwd+bwd",
                    "ours/peer fwd", "ours/peer fwd+bwd", "note"]
PEERS_INSTALLED = all(importlib.util.find_spec(name) is not None for name in ("mlstm_kernels", "xlstm", "einops"))
# Tiny shapes; the parallel-form cap (0.03 MiB) lets S=32 run (16 KiB per S x S matrix) and skips S=64.
TINY = ["--quick", "--seq-lens", "32,64", "--head-dims", "16", "--chunk-size", "16", "--repeats", "1",
        "--parallel-max-mib", "0.03", "--slstm-shape", "1,2,8,8", "--slstm-reference-seq-len", "4"]


def parse_table(report: str) -> tuple[list[str], list[dict[str, str]]]:
    lines = [line for line in report.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    assert set(lines[1]) <= set("|-"), lines[1]
    rows = [dict(zip(header, split(line), strict=True)) for line in lines[2:]]
    return header, rows


def find(rows, implementation, S):
    return [r for r in rows if r["implementation"] == implementation and r["S"] == str(S)]


def assert_timed(row):
    for col in ("fwd tok/s", "fwd+bwd tok/s"):
        assert float(row[col].replace(",", "")) > 0, row
    for col in ("fwd GFLOP/s (% mm)", "fwd+bwd GFLOP/s (% mm)"):
        gflops, pct = row[col].split(" ")
        assert float(gflops) >= 0 and pct.startswith("(") and pct.endswith("%)"), row


@pytest.fixture(scope="module")
def quick_report():
    return bench.main(TINY)


def test_quick_table_columns(quick_report):
    header, rows = parse_table(quick_report)
    assert header == EXPECTED_COLUMNS
    assert "CPU float32" in quick_report and "GFLOP/s (median of" in quick_report


def test_quick_table_our_rows(quick_report):
    _, rows = parse_table(quick_report)
    for S in (32, 64):
        [chunkwise] = find(rows, "ours chunkwise", S)
        assert_timed(chunkwise)
        assert (chunkwise["head dim"], chunkwise["B"], chunkwise["NH"]) == ("16", "1", "4")
        assert chunkwise["peak MiB fwd"] == "—"  # --quick measures no memory
    [parallel_short] = find(rows, "ours parallel", 32)
    assert_timed(parallel_short)
    [parallel_long] = find(rows, "ours parallel", 64)
    assert parallel_long["fwd tok/s"] == "—" and parallel_long["note"].startswith("skipped: one S×S fp32 matrix")
    assert len(find(rows, "ours recurrent", 32)) == 1 and not find(rows, "ours recurrent", 64)
    [slstm_default] = find(rows, "ours default (backend=None)", 8)
    [slstm_reference] = find(rows, "ours reference", 4)
    for row in (slstm_default, slstm_reference):
        assert row["op"] == "sLSTM" and (row["B"], row["NH"], row["head dim"]) == ("1", "2", "8")
        assert_timed(row)


@pytest.mark.skipif(not PEERS_INSTALLED, reason="peers not installed: pip install --no-deps -r "
                                                "benchmarks/requirements-peers.txt")
def test_quick_table_peer_rows(quick_report):
    _, rows = parse_table(quick_report)
    for name in ("chunkwise--native_custbw", "chunkwise--native_autograd"):
        [row] = find(rows, f"mlstm_kernels {name}", 32)
        assert_timed(row)
        assert row["ours/peer fwd+bwd"].endswith("×") and row["note"] == "ratio vs ours chunkwise"
    [peer_parallel] = find(rows, "mlstm_kernels parallel--native_custbw", 32)
    assert peer_parallel["note"] == "ratio vs ours parallel"
    assert find(rows, "mlstm_kernels parallel--native_custbw", 64)[0]["note"].startswith("skipped")
    vanilla = [r for r in rows if r["implementation"] == "xlstm sLSTM vanilla"]
    assert [r["S"] for r in vanilla] == ["8", "4"]
    assert [r["note"] for r in vanilla] == ["ratio vs ours default (backend=None)", "ratio vs ours reference"]
    assert quick_report.count("matches our reference") == 4 and "DIFFERS" not in quick_report


def test_no_peers_leaves_only_our_rows():
    report = bench.main(TINY + ["--no-peers", "--seq-lens", "32"])
    _, rows = parse_table(report)
    assert rows and all(r["implementation"].startswith("ours") for r in rows)
    assert "Peer rows skipped: peers switched off (--no-peers)" in report


def test_flop_model():
    shape = bench.Shape(B=1, NH=4, S=4096, D=64, L=64)
    per_head = 2 * 64 * (64 + 64) + 4 * 64 * 64  # intra-chunk blocks + state update and carried output
    assert bench.flops_per_token("mLSTM", shape, "fwd") == 4 * per_head
    assert bench.flops_per_token("mLSTM", shape, "fwd+bwd") == 3 * 4 * per_head
    assert bench.flops_per_token("sLSTM", shape, "fwd") == 2 * 4 * 64 * 4 * 64


def test_memory_probe_sees_the_gradients():
    """A fresh process measures one fwd+bwd call; q, k, v gradients alone are 3 x 4 MiB here."""
    cell = bench.measure_memory("ours:chunkwise", bench.Shape(B=1, NH=4, S=4096, D=64, L=64), "fwd+bwd")
    assert float(cell.lstrip("≤")) >= 12, cell


@pytest.mark.parametrize("argv", [["--seq-lens", "0"], ["--head-dims", "a"], ["--repeats", "0"],
                                  ["--slstm-shape", "1,2,3"], ["--threads", "0"]],
                         ids=["zero-S", "non-int-D", "zero-repeats", "short-slstm-shape", "zero-threads"])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
