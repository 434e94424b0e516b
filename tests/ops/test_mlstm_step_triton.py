"""The fused Triton decoding step (ops/mlstm_cell/triton_step.py) against the torch step and the sequence op.

Runs compiled on CUDA, else in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from tests.helpers import assert_close  # noqa: E402
from xlstm_torch.ops import MLSTMState, mlstm, mlstm_step  # noqa: E402
from xlstm_torch.ops.mlstm_cell import mlstm_step_torch  # noqa: E402
from xlstm_torch.ops.mlstm_cell.triton_step import mlstm_step_triton  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
# Against the torch step at the same state precision: the two differ only in the order of
# float32/float64 roundings; bfloat16 h is additionally rounded once to 8 bits.
RTOL_STATE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5}
RTOL_H = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 8e-3}
# (DK, DV): square, DK != DV, odd sizes below one tile, and sizes over the 64-wide tile (DK loop, DV tiles).
SHAPES = [(16, 16), (8, 24), (12, 20), (80, 130)]


def make_step_inputs(B=2, NH=3, DK=12, DV=20, *, dtype=torch.float32, gate_scale=1.0, seed=0):
    """q, k (B, NH, DK), v (B, NH, DV), i, f (B, NH) on DEVICE; f biased open as in a trained model."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, NH, DK, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, NH, DV, generator=g, dtype=torch.float64)
    i = torch.randn(B, NH, generator=g, dtype=torch.float64) * gate_scale
    f = torch.randn(B, NH, generator=g, dtype=torch.float64) * gate_scale + 2.0
    return [x.to(dtype=dtype, device=DEVICE) for x in (q, k, v, i, f)]


def make_state(B=2, NH=3, DK=12, DV=20, *, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(B, NH, DK, DV, generator=g, dtype=torch.float64)
    n = torch.randn(B, NH, DK, generator=g, dtype=torch.float64)
    m = torch.randn(B, NH, generator=g, dtype=torch.float64) * 3
    return MLSTMState(*(x.to(dtype=dtype, device=DEVICE) for x in (C, n, m)))


def torch_step(inputs, state, dtype):
    """The torch step as the model calls it: inputs in the state dtype, h back in the input dtype."""
    sdtype = torch.float64 if dtype == torch.float64 else torch.float32
    h, new = mlstm_step_torch(*(x.to(sdtype) for x in inputs), state, 1e-6)
    return h.to(dtype), new


def compare_step(actual, expected, dtype):
    (h, st), (he, ste) = actual, expected
    assert h.dtype == dtype and all(x.dtype == ste.C.dtype for x in st)
    assert_close(h, he, RTOL_H[dtype], "h")
    for name, a, e in zip("Cnm", st, ste):
        assert_close(a, e, RTOL_STATE[dtype], name)


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
@pytest.mark.parametrize("DK,DV", SHAPES, ids=[f"DK{a}-DV{b}" for a, b in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_step(dtype, DK, DV, with_state):
    inputs = make_step_inputs(DK=DK, DV=DV, dtype=dtype)
    sdtype = torch.float64 if dtype == torch.float64 else torch.float32
    state = make_state(DK=DK, DV=DV, dtype=sdtype) if with_state else None
    expected = torch_step(inputs, state, dtype)
    compare_step(mlstm_step_triton(*inputs, state), expected, dtype)


def test_strided_inputs_and_state_left_unchanged():
    """Inputs sliced out of (B, NH, S, D) sequences (as nn/mlstm.py passes them); the old state is not written."""
    seq = make_step_inputs(B=2, NH=3, DK=12 * 4, DV=20, dtype=torch.float32)
    q, k = (x.reshape(2, 3, 4, 12)[:, :, 1] for x in seq[:2])  # (B, NH, DK), strides (144, 48, 1)
    v, i, f = seq[2], seq[3].T.contiguous().T, seq[4]  # i: a transposed (B, NH) view
    assert not q.is_contiguous() and not i.is_contiguous()
    state = make_state()
    before = [x.clone() for x in state]
    actual = mlstm_step_triton(q, k, v, i, f, state)
    compare_step(actual, torch_step([x.contiguous() for x in (q, k, v, i, f)], state, torch.float32), torch.float32)
    for name, a, b in zip("Cnm", state, before):
        assert torch.equal(a, b), f"state.{name} was modified"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_chained_steps_match_sequence_op(dtype):
    """S steps from a given state equal one ``ops.mlstm`` call over the sequence (float64 reference)."""
    B, NH, S, DK, DV = 2, 3, 24, 12, 20
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(B, NH, S, DK, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g, dtype=torch.float64)
    i = torch.randn(B, NH, S, generator=g, dtype=torch.float64) * 3
    f = torch.randn(B, NH, S, generator=g, dtype=torch.float64) * 3 + 2.0
    state0 = make_state(B, NH, DK, DV, dtype=torch.float64)
    h_ref, st_ref = mlstm(q, k, v, i, f, state=state0, return_state=True, backend="reference")
    q, k, v, i, f = (x.to(dtype=dtype, device=DEVICE) for x in (q, k, v, i, f))
    state, hs = MLSTMState(*(x.to(dtype=dtype, device=DEVICE) for x in state0)), []
    for t in range(S):
        h, state = mlstm_step_triton(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state)
        hs.append(h)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close(torch.stack(hs, dim=2).cpu(), h_ref, rtol, "h")
    for name, a, e in zip("Cnm", state, st_ref):
        assert_close(a.cpu(), e, rtol, name)


def test_large_gates_finite_and_match():
    """Gate pre-activations up to ±1e4 (exp would overflow unstabilised): finite, and equal to the torch step."""
    inputs = make_step_inputs(B=4, NH=2, DK=12, DV=20, gate_scale=1e4)
    inputs[3][0, 0], inputs[4][0, 1], inputs[3][1, 0] = 1e4, -1e4, -1e4
    inputs[4][2, :], inputs[3][3, :] = 1e4, 1e4
    state = make_state(B=4, NH=2)
    for _ in range(3):  # chain a few steps: the stabiliser m moves by up to 1e4 a step
        expected = torch_step(inputs, state, torch.float32)
        actual = mlstm_step_triton(*inputs, state)
        for name, a in zip(["h", "C", "n", "m"], [actual[0], *actual[1]]):
            assert torch.isfinite(a).all(), f"non-finite {name}"
        compare_step(actual, expected, torch.float32)
        state = actual[1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_normaliser_floor(dtype):
    """A state with m = -10 and a closed input gate: max(|n̄ᵀq|, exp(-m)) takes the floor exp(-m) ~ 2e4."""
    inputs = make_step_inputs(dtype=dtype)
    inputs[3].fill_(-20.0)
    state = make_state(dtype=dtype)
    state.m.fill_(-10.0)
    expected = torch_step(inputs, state, dtype)
    assert ((inputs[0] * expected[1].n).sum(-1).abs() < torch.exp(-expected[1].m)).all()  # the floor is what divides
    compare_step(mlstm_step_triton(*inputs, state), expected, dtype)


def test_dispatch():
    inputs = make_step_inputs()
    state = make_state()
    h_triton, st_triton = mlstm_step(*inputs, state, backend="triton")
    h_expected, st_expected = mlstm_step_triton(*inputs, state)
    assert torch.equal(h_triton, h_expected) and all(torch.equal(a, b) for a, b in zip(st_triton, st_expected))
    h_torch, _ = mlstm_step(*inputs, state, backend="recurrent")
    assert torch.equal(h_torch, mlstm_step_torch(*inputs, state)[0])
    h_default, _ = mlstm_step(*inputs, state)  # CUDA: the kernel; otherwise the torch step
    assert torch.equal(h_default, h_triton if DEVICE.type == "cuda" else h_torch)
    with pytest.raises(ValueError, match="backend"):
        mlstm_step(*inputs, state, backend="chunkwise")


def test_default_differentiates_through_the_torch_step():
    inputs = [x.requires_grad_(True) for x in make_step_inputs()]
    h, _ = mlstm_step(*inputs, make_state())  # backend=None must not pick the kernel: it has no backward
    h.sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in inputs)


def test_requires_grad_raises_clearly():
    inputs = [x.requires_grad_(True) for x in make_step_inputs()]
    with pytest.raises(RuntimeError, match="no backward"):
        mlstm_step_triton(*inputs, make_state())
    with torch.no_grad():
        mlstm_step_triton(*inputs, make_state())


@pytest.mark.parametrize("position,bad,match", [
    (1, lambda x: x[..., :-1], "k must have shape"),
    (2, lambda x: x[0], "v must have 3 dimensions"),
    (3, lambda x: x.double(), "i has dtype"),
    (4, lambda x: x[:1], "f must have shape"),
    (0, lambda x: x.int(), "q must be a floating tensor"),
], ids=["k-shape", "v-ndim", "i-dtype", "f-shape", "q-int"])
def test_bad_inputs_name_the_argument(position, bad, match):
    inputs = make_step_inputs()
    inputs[position] = bad(inputs[position])
    with pytest.raises((TypeError, ValueError), match=match):
        mlstm_step_triton(*inputs)


def test_bad_state_names_the_field():
    state = make_state()
    with pytest.raises(ValueError, match="state.C must have shape"):
        mlstm_step_triton(*make_step_inputs(), MLSTMState(state.C[..., :-1], state.n, state.m))
    with pytest.raises(ValueError, match="eps"):
        mlstm_step_triton(*make_step_inputs(), state, eps=-1.0)
