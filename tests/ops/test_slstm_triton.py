"""sLSTM Triton kernels (backend="triton") against the step-by-step reference: outputs, final states
and all gradients (wx, r, b, initial state), by dtype, with packed documents, extremes and errors.

The kernels run on CUDA tensors when a GPU is present; otherwise on CPU tensors in Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), which is slow, so shapes are small. The
reference always runs on the CPU in float64. test_cuda_larger_shapes adds GPU-only sizes.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import assert_close, cu_seqlens_of
from tests.ops.test_slstm import NAMES, RTOL, compare, make_inputs, make_state, run
from xlstm_torch.ops import SLSTMState, slstm
from xlstm_torch.ops.slstm_cell import select_backend, triton_recurrent

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")


def leaves(xs, dtype, device="cpu"):
    return [x.detach().to(device=device, dtype=dtype).requires_grad_(True) for x in xs]


def state_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def on_device(result):
    h, final, grads = result
    return h.cpu(), SLSTMState(*(x.cpu() for x in final)), [x.cpu() for x in grads]


def check(inputs, state=None, rtol=None, *, use_final=True):
    """The kernels on DEVICE in the inputs' dtype against the float64 reference on the CPU.

    inputs: CPU (wx, r, b) in the dtype under test; state: a float64 CPU state or None.
    Returns the kernels' (h, final, grads) on the CPU.
    """
    dtype = inputs[0].dtype
    ref_state = None if state is None else SLSTMState(*leaves(state, torch.float64))
    expected = run(leaves(inputs, torch.float64), "reference", ref_state, use_final=use_final)
    dev_state = None if state is None else SLSTMState(*leaves(state, state_dtype(dtype), DEVICE))
    h, final, grads = on_device(run(leaves(inputs, dtype, DEVICE), "triton", dev_state, use_final=use_final))
    assert h.dtype == dtype and final.c.dtype == state_dtype(dtype)
    compare((h, final, grads), expected, rtol if rtol is not None else RTOL[dtype])
    return h, final, grads


SHAPES = [  # (B, S, NH, DH)
    (1, 1, 1, 8),
    (3, 7, 2, 24),  # DH not a power of two: padded to 32 and masked
    (1, 33, 1, 32),
    (3, 33, 2, 8),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-S{}-NH{}-DH{}".format(*s))
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_float64_matches_reference(shape, with_state):
    """float64 inputs run in float64 (gate math and tl.dot): the tight float64 tolerance."""
    B, S, NH, DH = shape
    check(make_inputs(B, S, NH, DH), make_state(B, NH, DH) if with_state else None)


def test_recurrent_blocks_reloaded_every_step(monkeypatch):
    """The path for large heads (R reloaded from memory each step instead of kept on chip)."""
    monkeypatch.setattr(triton_recurrent, "RESIDENT_MAX_DH", 0)
    assert not triton_recurrent._tiling(24)["RESIDENT"]
    check(make_inputs(3, 7, 2, 24), make_state(3, 2, 24))


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_float32(with_state):
    check(make_inputs(3, 33, 1, 24, dtype=torch.float32), make_state(3, 1, 24) if with_state else None)


@pytest.mark.parametrize("dtype, shape", [(torch.bfloat16, (3, 33, 1, 16)), (torch.float16, (2, 7, 1, 24))], ids=str)
def test_low_precision_inputs_read_as_they_are(dtype, shape):
    """bf16/fp16 inputs go to the kernels uncast; math and states in float32, h, dwx, dr, db in dtype."""
    B, S, NH, DH = shape
    _, _, grads = check(make_inputs(B, S, NH, DH, dtype=dtype))
    assert [g.dtype for g in grads] == [dtype] * 3


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_loss_on_h_only_and_on_final_state_only(with_state):
    """Gradients when only h, or only the final state, reaches the loss (the other arrives as None)."""
    inputs = make_inputs(2, 7, 2, 8)
    state = make_state(2, 2, 8) if with_state else None
    check(inputs, state, use_final=False)

    def final_only(backend, device):
        xs = leaves(inputs, torch.float64, device)
        st = None if state is None else SLSTMState(*leaves(state, torch.float64, device))
        h, final = slstm(*xs, state=st, return_state=True, backend=backend)
        loss = (final.c * final.n).sum() + final.m.sum() - final.h.sum()
        return [g.cpu() for g in torch.autograd.grad(loss, xs + (list(st) if st is not None else []))]

    for name, a, e in zip(NAMES[5:], final_only("triton", DEVICE), final_only("reference", "cpu")):
        assert_close(a, e, 1e-10, name)


def test_stabiliser_tie_splits_gradient_like_torch_maximum():
    """logσ(f̃) + m_{t-1} == ĩ exactly: the m-gradient splits in half, as torch.maximum's does.

    One step, so that the tie is at the last step, where the m-gradient of the final state arrives
    (at earlier steps it is zero: h does not depend on m, and so a wrong split there cannot show).
    f̃ = 800 makes logσ(f̃) exactly 0 in any implementation (e^{-800} underflows), so with m0 = ĩ = 0
    the tie is exact in the kernels too; a tie built from logσ(1.5) would depend on its last bit."""
    B, S, NH, DH = 1, 1, 1, 2
    wx = torch.zeros(B, S, NH, 4, DH, dtype=torch.float64)
    wx[:, :, :, 1] = 800.0
    wx[:, :, :, 2] = 0.3
    r = torch.zeros(NH, 4, DH, DH, dtype=torch.float64)
    b = torch.zeros(NH, 4, DH, dtype=torch.float64)
    state = SLSTMState(*(torch.full((B, NH, DH), v, dtype=torch.float64) for v in (0.1, 0.2, 1.0, 0.0)))
    check([wx, r, b], state, 1e-12)


def test_no_grad_path_matches_reference():
    """Without gradients the forward stores nothing per step."""
    inputs = [x.detach() for x in make_inputs(3, 7, 2, 24)]
    state = SLSTMState(*(x.detach() for x in make_state(3, 2, 24)))
    with torch.no_grad():
        h, final = slstm(*(x.to(DEVICE) for x in inputs), state=SLSTMState(*(x.to(DEVICE) for x in state)),
                         return_state=True, backend="triton")
        h_ref, final_ref = slstm(*inputs, state=state, return_state=True, backend="reference")
    assert_close(h.cpu(), h_ref, 1e-10, "h")
    for name, a, e in zip("hcnm", final, final_ref):
        assert_close(a.cpu(), e, 1e-10, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_extreme_gates_finite(dtype, with_state):
    """Gate pre-activations of ±100s to ±1e4: finite outputs, states and gradients."""
    g = torch.Generator().manual_seed(3)
    wx, r, b = (x.detach() for x in make_inputs(2, 20, 2, 8, dtype=dtype))
    wx = (torch.rand(wx.shape, generator=g, dtype=torch.float64) * 2 - 1).mul_(300).to(dtype)
    wx[0, :5, :, 0] = 1e4  # input gate wide open
    wx[0, :, 1, 1] = -1e4  # forget gate shut
    wx[1, :, 0, 0] = -1e4  # input gate shut
    wx[1, :, 1, 1] = 1e4  # forget gate open
    state = make_state(2, 2, 8) if with_state else None
    if dtype == torch.float64:
        check([wx, r, b], state, 1e-10)
    else:
        dev_state = None if state is None else SLSTMState(*leaves(state, dtype, DEVICE))
        h, final, grads = run(leaves([wx, r, b], dtype, DEVICE), "triton", dev_state)
        for name, t in zip(NAMES, [h, *final, *grads]):
            assert torch.isfinite(t).all(), f"non-finite {name}"


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_packed_documents_equal_each_alone(with_state):
    """cu_seqlens: documents as right-padded rows, each final state taken at its own last step."""
    lengths = [5, 1, 12]
    inputs = make_inputs(1, sum(lengths), 2, 8)
    state = make_state(len(lengths), 2, 8) if with_state else None

    def packed(backend, device):
        xs = leaves(inputs, torch.float64, device)
        st = None if state is None else SLSTMState(*leaves(state, torch.float64, device))
        h, final = slstm(*xs, state=st, return_state=True, backend=backend, cu_seqlens=cu_seqlens_of(lengths).to(device))
        loss = (h * torch.cos(h)).sum() + (final.h**2).sum() + (1.3 * final.c).sum() + (0.7 * final.n**2).sum() + (0.9 * final.m).sum()
        return on_device((h, final, torch.autograd.grad(loss, xs + (list(st) if st is not None else []))))

    compare(packed("triton", DEVICE), packed("reference", "cpu"), 1e-10)


def test_backend_selection():
    assert select_backend(torch.device("cpu")) == "recurrent"  # even under the interpreter
    assert select_backend(torch.device("cuda"), 64) == "triton"
    assert select_backend(torch.device("cuda"), 128) == "recurrent"  # blocks reloaded every step: slower (measured)
    assert select_backend(torch.device("cuda"), 129) == "recurrent"  # beyond the kernels' head size


def test_errors_name_triton(monkeypatch):
    wx, r, b = (x.detach().to(DEVICE) for x in make_inputs(1, 2, 1, 129))
    with pytest.raises(ValueError, match=r'backend="triton" takes head dimensions DH <= 128'):
        slstm(wx, r, b, backend="triton")
    # CPU tensors without the interpreter: a clear error instead of a failed launch
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    wx, r, b = (x.detach() for x in make_inputs(1, 2, 1, 8))
    with pytest.raises(RuntimeError, match="triton"):
        slstm(wx, r, b, backend="triton")


CUDA_CASES = [  # (dtype, (B, S, NH, DH)); DH = 128 reloads R every step
    (torch.float64, (3, 40, 2, 24)),
    (torch.float32, (4, 65, 2, 24)),
    (torch.float32, (3, 40, 2, 64)),
    (torch.float32, (2, 30, 1, 128)),
    (torch.bfloat16, (20, 65, 2, 64)),  # two batch blocks
    (torch.float16, (3, 40, 1, 32)),
]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, shape", CUDA_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_cuda_larger_shapes(dtype, shape, with_state):
    """Sizes too slow for the interpreter, and backend=None picking the kernels on CUDA tensors."""
    B, S, NH, DH = shape
    inputs = make_inputs(B, S, NH, DH, dtype=dtype)
    state = make_state(B, NH, DH) if with_state else None
    expected = run(leaves(inputs, torch.float64), "reference", state)
    dev_state = None if state is None else SLSTMState(*leaves(state, state_dtype(dtype), "cuda"))
    actual = on_device(run(leaves(inputs, dtype, "cuda"), "triton", dev_state))
    compare(actual, expected, RTOL[dtype])
