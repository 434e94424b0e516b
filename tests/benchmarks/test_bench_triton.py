"""benchmarks/bench_triton.py: the --smoke table's rows, the FLOP model, the guards (not timing values).

--smoke runs tiny float32 shapes: without a GPU on the CPU with the Triton rows interpreted
(tests/conftest.py sets TRITON_INTERPRET=1), else on CUDA; the real run is benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("bench_triton", ROOT / "benchmarks" / "bench_triton.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules["bench_triton"] = bench  # dataclasses look their module up while the file executes
SPEC.loader.exec_module(bench)


def parse(report: str, columns) -> list[dict[str, str]]:
    lines = [line for line in report.splitlines() if line.startswith("| " + columns[0] + " |")]
    assert lines, report
    start = report.splitlines().index(lines[0])
    block = []
    for line in report.splitlines()[start:]:
        if not line.startswith("|"):
            break
        block.append(line)
    split = lambda line: [cell.strip() for cell in line.strip("|").split("|")]  # noqa: E731
    assert split(block[0]) == columns
    return [dict(zip(columns, split(line), strict=True)) for line in block[2:]]


@pytest.fixture(scope="module")
def smoke_report():
    return bench.main(["--smoke", "--no-compile"])


def test_smoke_rows(smoke_report):
    rows = parse(smoke_report, bench.COLUMNS)
    names = {r["implementation"] for r in rows}
    assert names == {"ours triton L=16", "mlstm_kernels TFLA L=16", "SDPA causal D=8", "ours chunkwise eager L=16",
                     "ours chunkwise compiled L=16"}
    for r in rows:
        if r["implementation"] in ("SDPA causal D=8", "ours chunkwise eager L=16"):
            assert float(r["fwd ms"]) > 0 and float(r["fwd+bwd ms"]) > 0, r
            assert r["fwd TFLOP/s (% mm)"].endswith("%)"), r
        elif r["implementation"] == "ours chunkwise compiled L=16":
            assert r["note"] == "switched off (--no-compile)"
        elif r["implementation"].startswith("mlstm_kernels") and "not importable" in r["note"]:
            assert r["fwd ms"] == r["fwd+bwd ms"] == "—", r  # the optional peer is not installed (CI)
        else:  # Triton rows: timed, or "err" with the reason (the interpreter cannot run every kernel)
            for mode in bench.MODES:
                assert r[f"{mode} ms"] == "err" and f"{mode}: " in r["note"] or float(r[f"{mode} ms"]) > 0, r
    [first_eager] = [r for r in rows if r["implementation"] == "ours chunkwise eager L=16" and r["S"] == "16"]
    assert first_eager["note"].startswith("rel err") and (first_eager["B"], first_eager["NH"]) == ("4", "2")
    assert "matmul 128³ float32" in smoke_report


def test_smoke_decode_rows(smoke_report):
    triton_row, torch_row = parse(smoke_report, bench.DECODE_COLUMNS)
    assert triton_row["step"].startswith("triton") and torch_row["step"].startswith("torch")
    assert float(triton_row["µs / step"].replace(",", "")) > 0 and float(torch_row["µs / step"].replace(",", "")) > 0
    assert float(triton_row["note"].split()[3]) < 1e-5, triton_row  # "h rel err X vs the torch step"


def test_smoke_slstm_rows(smoke_report):
    triton_row, torch_row = parse(smoke_report, bench.SLSTM_COLUMNS)
    assert (triton_row["sLSTM backend"], torch_row["sLSTM backend"]) == ("triton", "recurrent")
    for row in (triton_row, torch_row):
        assert float(row["fwd ms"]) > 0 and float(row["fwd+bwd ms"]) > 0, row
    assert float(torch_row["note"].split()[3]) < 1e-5, torch_row  # "h rel err X triton vs recurrent"


def test_flop_model():
    assert bench.mlstm_flops_per_token(16, 128, 256, 64) == 16 * (2 * 64 * (128 + 256) + 4 * 128 * 256)
    shape = bench.Shape(B=2, NH=16, S=4096, DK=128, DV=256)
    mlstm_row = bench.Impl("x", "mlstm", chunk=128)
    assert bench.flops_per_call(mlstm_row, shape, "fwd+bwd") == 3 * 2 * 4096 * bench.mlstm_flops_per_token(16, 128, 256, 128)
    attention = bench.Impl("y", "attention")
    causal = bench.Shape(B=2, NH=16, S=4096, DK=256, DV=256)
    assert bench.flops_per_call(attention, causal, "fwd") == 2 * 4096**2 * 256 * 16 * 2
    assert bench.flops_per_call(attention, causal, "fwd+bwd") == 3.5 * bench.flops_per_call(attention, causal, "fwd")


def test_compiled_row_timeout_is_recorded():
    args = bench.parse_args(["--smoke", "--compile-timeout-s", "0.05"])
    assert "timed out after" in bench.compiled_in_child(32, args)["error"]


def test_errors_become_cells():
    def broken(shape, leaves):
        raise RuntimeError("CUDA out of memory (simulated)")
    args = bench.parse_args(["--smoke"])
    impl = bench.Impl("broken", "mlstm", 16, broken)
    row = bench.run_row(impl, bench.Shape(1, 2, 16, 8, 16), torch.float32, torch.device("cpu"), args, 1.0,
                        bench.Budget(60), check=True)
    assert row["fwd"] == row["fwd+bwd"] == "err" and "out of memory" in row["note"][0]
    spent = bench.run_row(bench.Impl("late", "mlstm", 16, broken), bench.Shape(1, 2, 16, 8, 16), torch.float32,
                          torch.device("cpu"), args, 1.0, bench.Budget(-1), check=False)
    assert spent["fwd"] == "skipped" and "time budget" in spent["note"][0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message is for machines without CUDA")
def test_without_cuda_says_so_and_returns(capsys):
    message = bench.main([])
    assert "no CUDA device" in message and "no CUDA device" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--seq-lens", "0"], ["--modes", "bwd"], ["--decode-shape", "1,2"],
                                  ["--chunk-sizes", "a"], ["--tokens", "0"], ["--triton-variants", "fast"]],
                         ids=["zero-S", "bad-mode", "short-decode-shape", "non-int-chunk", "zero-tokens",
                              "unknown-variant"])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


def test_crashed_child_is_marked():
    args = bench.parse_args(["--smoke"])
    result = bench.row_in_child("bogus:16", 32, args, timeout_s=60)
    assert result["crashed"] and "child exited 1" in result["error"]


def test_peer_crash_reruns_with_llvm_opt_off_and_ours_beside(monkeypatch):
    calls = []

    def fake_child(spec, S, args, timeout_s, env=None):
        calls.append((spec, env))
        if env is None:
            return {"error": "child exited -6: Assertion failed (SLPVectorizer)", "crashed": True}
        return {"implementation": spec, "S": S, "B": 2, "NH": 2, "DK / DV": "8 / 16", "fwd": 1.0, "fwd tflops": 1.0,
                "note": []}

    monkeypatch.setattr(bench, "row_in_child", fake_child)
    args = bench.parse_args(["--smoke"])
    peer = {}
    rows = bench.peer_rows(bench.Impl("mlstm_kernels TFLA L=16", "mlstm", 16), 32, args, bench.Budget(60), peer)
    assert [r["implementation"] for r in rows] == ["mlstm_kernels TFLA L=16 (LLVM IR opt off)",
                                                   "ours triton L=16 (LLVM IR opt off)"]
    assert [spec for spec, _ in calls] == ["tfla:16", "tfla:16", "triton:16"]
    env = calls[1][1]
    assert env["DISABLE_LLVM_OPT"] == "1" and "llvm-opt-off" in env["TRITON_CACHE_DIR"] and calls[2][1] is env
    calls.clear()  # a later row goes straight to the switched-off compile
    bench.peer_rows(bench.Impl("mlstm_kernels TFLA L=32", "mlstm", 32), 64, args, bench.Budget(60), peer)
    assert calls == [("tfla:32", env)]  # L=32 is not one of ours (--chunk-sizes): no row beside it


def test_configs_file(tmp_path):
    from xlstm_torch.ops.mlstm_cell import triton_chunkwise

    good = tmp_path / "good.json"
    good.write_text('{"bwd_dv": {"num_warps": 4}}')
    try:
        assert bench.apply_configs(str(good)) == {"bwd_dv": {"num_warps": 4}}
        assert triton_chunkwise.launch_configs(2, 128, 256, 128)["bwd_dv"]["num_warps"] == 4
    finally:
        triton_chunkwise.CONFIG_OVERRIDES.clear()
    bad = tmp_path / "bad.json"
    bad.write_text('{"bwd_dz": {"num_warps": 4}}')
    with pytest.raises(SystemExit, match="bwd_dz"):
        bench.apply_configs(str(bad))


def test_triton_variant_rows_set_the_backward_and_agree():
    """--triton-variants: each row runs our Triton path with its backward variant (the flags are set while
    the forward runs and restored after) and computes the same gradients."""
    pytest.importorskip("triton")
    from xlstm_torch.ops.mlstm_cell import triton_chunkwise as tc

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = bench.Shape(1, 2, 40, 8, 8)
    grads = {}
    for variant in bench.TRITON_VARIANTS:
        impl = bench.ours("triton", 16, variant=variant)
        assert impl.name.startswith("ours triton L=16") and impl.name.endswith(bench.TRITON_VARIANTS[variant][2])
        leaves = bench.mlstm_leaves(shape, torch.float32, device, seed=3)
        grads[variant] = torch.autograd.grad(impl.build(shape, leaves)().sum(), leaves)
        assert (tc.GATE_GRADIENTS_FROM_PRODUCTS, tc.KEEP_CHUNK_STATES) == (False, False)
    with bench.triton_variant("kept"):
        assert (tc.GATE_GRADIENTS_FROM_PRODUCTS, tc.KEEP_CHUNK_STATES) == (True, True)
    for variant in ("products", "kept"):
        for a, b in zip(grads[variant], grads["dot"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    assert bench.parse_args(["--triton-variants", "dot,kept"]).triton_variants == ["dot", "kept"]
