"""benchmarks/tune_triton.py: its candidates start at the defaults, the pick and the report (the sweep needs CUDA)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from xlstm_torch.ops.mlstm_cell import triton_chunkwise

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("tune_triton", ROOT / "benchmarks" / "tune_triton.py")
tune = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tune)


def test_candidate_zero_is_the_default():
    defaults = triton_chunkwise.launch_configs(2, 128, 256, 128, large_smem=True)
    assert set(tune.CANDIDATES) == set(defaults) == set(tune.KERNELS)
    for name, candidates in tune.CANDIDATES.items():
        assert candidates[0] == defaults[name], name
        assert all(set(c) == set(defaults[name]) for c in candidates), name  # the same launch parameters
        assert len({tuple(c.values()) for c in candidates}) == len(candidates), name  # no duplicates


def test_pick_and_report():
    times = {name: [2.0, 1.0, math.inf] + [3.0] * (len(tune.CANDIDATES[name]) - 3) for name in tune.KERNELS}
    errors = {name: [""] * len(tune.CANDIDATES[name]) for name in tune.KERNELS}
    errors["bwd_dv"][2] = "OutOfResources: shared memory"
    assert tune.pick(times) == dict.fromkeys(tune.KERNELS, 1)
    text = tune.report(times, errors, [8192, 65536])
    assert "| fwd_states | 2.000 | 1.000 | 0.50 |" in text
    assert "default 12.000 ms, best 6.000 ms (0.50x)" in text
    assert "failed: bwd_dv #2: OutOfResources" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message is for machines without CUDA")
def test_without_cuda_says_so(capsys):
    assert tune.main([]) == 0 and "no CUDA device" in capsys.readouterr().out


def test_wide_value_tiles_only_with_large_shared_memory():
    small, large = (triton_chunkwise.launch_configs(2, 128, 256, 128, large_smem=x) for x in (False, True))
    assert small["fwd_out"]["BV"] == small["bwd_dv"]["BV"] == 128 and small["fwd_out"]["num_warps"] == 4
    assert large["fwd_out"]["BV"] == large["bwd_dv"]["BV"] == 256 and large["fwd_out"]["num_warps"] == 8
    fp32 = triton_chunkwise.launch_configs(4, 128, 256, 128, large_smem=True)  # 4-byte operands: the cap stays
    assert max(c.get("BV", 0) for c in fp32.values()) == 64
    assert not triton_chunkwise.large_shared_memory(torch.device("cpu"))


def test_wrong_kernels_finds_the_candidate_that_changes_the_results():
    expected = [torch.ones(4, 3), torch.full((2,), -2.0)]
    calls = []

    def outputs(overrides):  # fwd_out's candidate is compiled wrong; dq's only reorders sums
        calls.append(dict(overrides))
        off = 0.3 if overrides.get("fwd_out") == "bad" else 0.0
        return [expected[0] + off, expected[1] * (1 + 1e-3 * ("bwd_dq" in overrides))]

    chosen = {"fwd_out": "bad", "bwd_dq": "reordered"}
    assert tune.wrong_kernels(chosen, outputs, expected) == {"fwd_out": pytest.approx(0.3)}
    assert calls[1:] == [{"fwd_out": "bad"}, {"bwd_dq": "reordered"}]  # each alone once the set is off
    calls.clear()
    assert tune.wrong_kernels({"bwd_dq": "reordered"}, outputs, expected) == {} and len(calls) == 1
    assert tune.max_relative_difference([torch.zeros(2)], [torch.zeros(2)]) == 0.0
