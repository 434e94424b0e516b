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
                                  ["--chunk-sizes", "a"], ["--tokens", "0"]],
                         ids=["zero-S", "bad-mode", "short-decode-shape", "non-int-chunk", "zero-tokens"])
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
