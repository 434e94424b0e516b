"""benchmarks/bench_train.py: the table's shape, the FLOP count, the models' configs and the memory probe
(not timing values)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules["bench_train"] = bench  # dataclasses look their module up while the file executes
SPEC.loader.exec_module(bench)

EXPECTED_COLUMNS = ["blocks", "implementation", "params", "tok/s", "GFLOP/s (% mm)", "step peak MiB",
                    "process peak MiB", "ours/peer tok/s", "peer/ours step peak", "note"]
PEERS_INSTALLED = all(importlib.util.find_spec(name) is not None for name in ("xlstm", "einops"))
TINY = ["--quick", "--repeats", "1", "--embedding-dim", "32", "--num-blocks", "2", "--seq-len", "16",
        "--batch-size", "1", "--vocab-size", "32"]
TINY_SETUP = dict(embedding_dim=32, num_blocks=2, vocab_size=32, num_heads=4, batch_size=1, seq_len=16)


def parse_table(report: str) -> list[dict[str, str]]:
    lines = [line for line in report.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    assert header == EXPECTED_COLUMNS
    assert set(lines[1]) <= set("|-"), lines[1]
    return [dict(zip(header, split(line), strict=True)) for line in lines[2:]]


def assert_timed(row):
    assert float(row["tok/s"].replace(",", "")) > 0, row
    gflops, pct = row["GFLOP/s (% mm)"].split(" ")
    assert float(gflops) >= 0 and pct.startswith("(") and pct.endswith("%)"), row
    assert int(row["params"].replace(",", "")) > 0, row


def test_no_peers_leaves_only_our_rows():
    report = bench.main(TINY + ["--no-peers"])
    rows = parse_table(report)
    assert [(r["blocks"], r["implementation"]) for r in rows] == [
        ("mLSTM only", "ours (xlstm_torch XLSTMLanguageModel)"), ("one sLSTM", "ours (xlstm_torch XLSTMLanguageModel)")]
    for row in rows:
        assert_timed(row)
        assert row["step peak MiB"] == "—"  # --quick measures no memory
    assert "Peer rows skipped: peers switched off (--no-peers)" in report
    assert "training step, CPU float32" in report and "GFLOP/s (median of" in report


@pytest.mark.skipif(not PEERS_INSTALLED, reason="peers not installed: pip install --no-deps -r "
                                                "benchmarks/requirements-peers.txt")
def test_peer_rows_and_ratios():
    report = bench.main(TINY + ["--peer-mlstm", "parallel,chunkwise", "--seq-len", "128"])
    rows = parse_table(report)
    assert len(rows) == 6
    for row in rows:
        assert_timed(row)
    for label in ("mLSTM only", "one sLSTM"):
        ours, *peers = [r for r in rows if r["blocks"] == label]
        assert ours["implementation"].startswith("ours") and len(peers) == 2
        for peer in peers:
            assert peer["ours/peer tok/s"].endswith("×")
            assert peer["note"] == "params equal to ours", peer  # the configs match
    assert "logits match" in report and "DIFFER" not in report
    assert report.count("**Target,") == 2


def test_compile_adds_compiled_rows_compared_like_with_like(monkeypatch):
    """--compile: a compiled row per named owner, its ratio against ours compiled (the models are stand-ins:
    compiling is tested in tests/ops/test_compile.py and tests/training)."""
    impls = bench.implementations(["parallel"], ("ours", "xlstm"))
    assert [i.key for i in impls] == ["ours", "peer:parallel", "ours:compiled", "peer:parallel:compiled"]
    assert [i.key for i in bench.implementations(["parallel"], ("ours",))] == ["ours", "peer:parallel",
                                                                               "ours:compiled"]
    monkeypatch.setattr(bench, "peer_available", lambda: None)
    monkeypatch.setattr(bench, "implementations", lambda variants, compiled: impls)
    seconds = {"ours": 1.0, "peer:parallel": 3.0, "ours:compiled": 0.5, "peer:parallel:compiled": 2.0}
    monkeypatch.setattr(bench, "time_group", lambda impls, setup, repeats, mm: (
        seconds, {i.key: 10 for i in impls}, {i.key: 1.0 for i in impls}))
    rows = parse_table(bench.main(TINY + ["--compile", "ours", "xlstm"]))
    ratios = {r["implementation"]: r["ours/peer tok/s"] for r in rows[:4]}
    assert list(ratios.values()) == ["", "3.00×", "", "4.00×"]  # eager vs eager, compiled vs compiled


@pytest.mark.skipif(not PEERS_INSTALLED, reason="xlstm not installed")
@pytest.mark.parametrize("slstm_at", [(), (1,)], ids=["mlstm-only", "one-slstm"])
def test_peer_config_matches_ours(slstm_at):
    """Same parameter count, and the peer runs float32 on the CPU with its pure-PyTorch sLSTM."""
    import torch

    setup = bench.Setup(slstm_at=slstm_at, **TINY_SETUP)
    ours, peer = bench.build_ours(setup), bench.build_peer(setup)
    assert bench.num_params(ours) == bench.num_params(peer)
    assert {p.dtype for p in peer.parameters()} == {torch.float32}
    cells = [m for m in peer.modules() if type(m).__name__ == "sLSTMCell_vanilla"]
    assert len(cells) == len(slstm_at)
    logits = peer(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape == (1, 8, 32) and logits.dtype == torch.float32


def test_flop_count():
    setup = bench.Setup(embedding_dim=256, num_blocks=4, vocab_size=256, num_heads=4, slstm_at=(1,), batch_size=8,
                        seq_len=512)
    DK = 512 // 4
    cell = 3 * 4 * (2 * 64 * (DK + DK) + 4 * DK * DK)  # forward + backward, per token, one mLSTM block
    assert bench.flops_per_token(setup, params=1000) == 6 * 1000 + 3 * cell


def test_step_trains():
    """The timed step is a real training step: the loss on the fixed batch goes down."""
    setup = bench.Setup(slstm_at=(1,), **TINY_SETUP)
    step = bench.make_step(bench.build_ours(setup), setup)
    losses = [step() for _ in range(5)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses


def test_memory_probe_sees_the_activations():
    """A fresh process measures two training steps; at this size activations alone are tens of MiB."""
    setup = bench.Setup(embedding_dim=128, num_blocks=2, vocab_size=64, num_heads=4, slstm_at=(), batch_size=4,
                        seq_len=512)  # one (B, S, Di) float32 tensor is 2 MiB; a layer saves dozens
    result = bench.measure_memory("ours", setup, [])
    assert isinstance(result, dict), result
    assert result["step_mib"] >= 10 and result["process_mib"] > result["step_mib"], result


@pytest.mark.parametrize("argv", [["--seq-len", "0"], ["--embedding-dim", "a"], ["--repeats", "0"],
                                  ["--slstm-at", "4"], ["--peer-mlstm", "recurrent"], ["--threads", "0"],
                                  ["--num-heads", "3"]],
                         ids=["zero-S", "non-int-D", "zero-repeats", "slstm-out-of-range", "unknown-peer",
                              "zero-threads", "heads-not-dividing"])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
