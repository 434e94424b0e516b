"""mLSTM Triton kernels (backend="triton") against the float64 reference: outputs, states, gradients.

Without a GPU they run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so the
shapes are small; on a CUDA machine the same tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import assert_close, cu_seqlens_of
from tests.ops.test_mlstm import NAMES, RTOL, compare, extreme_gate_inputs, make_inputs, make_state, run
from xlstm_torch.ops import MLSTMState, mlstm
from xlstm_torch.ops.mlstm_cell import select_backend, triton_chunkwise

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the Triton kernels need a CUDA GPU or TRITON_INTERPRET=1")
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture(params=[(False, False), (True, False), (True, True)],
                ids=["gate-dot", "gate-products", "gate-products-kept-states"])
def gate_paths(request, monkeypatch):
    """Both ways the backward forms the chunk gate gradients (``GATE_GRADIENTS_FROM_PRODUCTS``), the
    second also with the forward's chunk states kept (``KEEP_CHUNK_STATES``)."""
    products, kept = request.param
    monkeypatch.setattr(triton_chunkwise, "GATE_GRADIENTS_FROM_PRODUCTS", products)
    monkeypatch.setattr(triton_chunkwise, "KEEP_CHUNK_STATES", kept)
    return request.param


def on_device(xs):
    """Leaves on the kernels' device (CUDA when present), with the same values."""
    return None if xs is None else [x.detach().to(DEVICE).requires_grad_(True) for x in xs]


def run_triton(inputs, state=None, chunk_size=16, eps=1e-6):
    h, st, g = run(on_device(inputs), "triton", on_device(state) and MLSTMState(*on_device(state)),
                   chunk_size=chunk_size, eps=eps)
    cpu = lambda x: x.cpu()  # noqa: E731
    return cpu(h), MLSTMState(*map(cpu, st)), [cpu(x) for x in g]


def reference(inputs, state=None, eps=1e-6):
    return run([x.detach().double().requires_grad_(True) for x in inputs], "reference", state, eps=eps)


@pytest.mark.parametrize("S", [1, 63, 130])
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
@pytest.mark.usefixtures("gate_paths")
def test_float64_matches_reference(S, with_state):
    inputs = make_inputs(S=S)
    state = make_state() if with_state else None
    compare(run_triton(inputs, state, eps=0.0), reference(inputs, state, eps=0.0), 1e-10)


@pytest.mark.usefixtures("gate_paths")
def test_eps_path_matches_reference():
    """With eps > 0 the stabiliser m enters h; its gradient path must match autograd of the reference."""
    inputs, state = make_inputs(S=40), make_state()
    compare(run_triton(inputs, state, eps=1e-2), reference(inputs, state, eps=1e-2), 1e-10)


@pytest.mark.parametrize("chunk_size", [1, 20, 1000])
def test_any_chunk_size(chunk_size):
    """The chunk size is independent of the tiles: any L, including L < 16 and L not a power of two."""
    inputs = make_inputs(S=65, DK=4, DV=6)
    compare(run_triton(inputs, chunk_size=chunk_size), reference(inputs), 1e-10)


def test_head_dims_above_one_tile():
    """DK and DV larger than one on-chip tile (128) loop over tiles."""
    inputs = make_inputs(B=1, NH=1, S=20, DK=136, DV=130)
    compare(run_triton(inputs, make_state(B=1, NH=1, DK=136, DV=130), chunk_size=16), reference(
        inputs, make_state(B=1, NH=1, DK=136, DV=130)), 1e-10)


@pytest.mark.parametrize("gate_scale", [30.0, 300.0], ids=["gates-x30", "gates-x300"])
@pytest.mark.usefixtures("gate_paths")
def test_wild_gates(gate_scale):
    inputs = make_inputs(S=100, gate_scale=gate_scale)
    compare(run_triton(inputs, make_state(), eps=0.0), reference(inputs, make_state(), eps=0.0), 1e-9)


def run_linear(inputs, backend, state=None, chunk_size=32):
    """Outputs, final state and gradients of a loss linear in h and the state (fixed random cotangents).

    For low-precision inputs: the curved loss of ``run`` turns h's rounding to the dtype (0.4% in
    bf16) into cotangent errors of the same size times |h|, which would swamp what the test is for,
    the error of the kernels' own arithmetic (their bf16 matrix operands, fp32 accumulation).
    """
    h, st = mlstm(*inputs, state=state, return_state=True, backend=backend,
                  **({"chunk_size": chunk_size} if backend == "triton" else {}))
    g = torch.Generator().manual_seed(5)
    loss = sum((x.double() * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.device)).sum()
               for x in (h, *st))
    grads = torch.autograd.grad(loss, list(inputs) + (list(state) if state is not None else []))
    return h.cpu(), MLSTMState(*(x.cpu() for x in st)), [x.cpu() for x in grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
@pytest.mark.usefixtures("gate_paths")
def test_low_precision_against_float64_reference(dtype, with_state):
    inputs = make_inputs(S=65, DK=16, DV=8, dtype=dtype, seed=int(with_state))
    state = make_state(DK=16, DV=8) if with_state else None
    expected = run_linear([x.detach().double().requires_grad_(True) for x in inputs], "reference", state)
    h, st, g = run_linear(on_device(inputs), "triton", state and MLSTMState(*on_device([x.float() for x in state])),
                          chunk_size=32)
    assert h.dtype == dtype and all(x.dtype == dtype for x in g[:5])
    assert st.C.dtype == torch.float32
    compare((h, st, g), expected, RTOL[dtype])


@pytest.mark.skipif(not CUDA, reason="the launch parameters of large head dims matter only compiled on a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("DK, DV", [(128, 256), (256, 512)], ids=["benchmark", "xlstm-7b"])
@pytest.mark.usefixtures("gate_paths")
def test_benchmark_shape_in_16_bit(dtype, DK, DV):
    """At the GPU benchmark's head dims and chunk (DK 128, DV 256, L 128) the kernels take their widest
    tiles and most warps, which the small shapes above never reach. One such launch configuration was
    once compiled wrong by Triton (see launch_configs): this shape is where it showed. xLSTM 7B's head
    dims (256, 512) loop over several such tiles."""
    inputs = make_inputs(B=1, NH=2, S=600, DK=DK, DV=DV, dtype=dtype)
    state = make_state(B=1, NH=2, DK=DK, DV=DV)
    expected = run_linear([x.detach().double().requires_grad_(True) for x in inputs], "reference", state)
    got = run_linear(on_device(inputs), "triton", MLSTMState(*on_device([x.float() for x in state])),
                     chunk_size=128)
    compare(got, expected, RTOL[dtype])


@pytest.mark.parametrize("splits", [[17, 5], [30, 1, 1, 20]], ids=lambda s: "-".join(map(str, s)))
def test_state_passing_equals_one_call(splits):
    inputs = [x.detach().to(DEVICE) for x in make_inputs(S=65)]
    h_full, st_full = mlstm(*inputs, return_state=True, backend="triton", chunk_size=16)
    bounds = [0, *torch.tensor(splits).cumsum(0).tolist(), 65]
    state, pieces = None, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        h, state = mlstm(*[x[:, :, a:b] for x in inputs], state=state, return_state=True, backend="triton",
                         chunk_size=16)
        pieces.append(h)
    assert_close(torch.cat(pieces, dim=2), h_full, 1e-10, "h")
    for name, a, e in zip("Cnm", state, st_full):
        assert_close(a, e, 1e-10, name)


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
@pytest.mark.usefixtures("gate_paths")
def test_packed_documents_match_reference(with_state):
    """cu_seqlens: each document from its own state, aligned to chunks; outputs, per-document states, gradients."""
    lengths = [5, 21, 1, 38]
    inputs = make_inputs(B=1, S=sum(lengths))
    state = make_state(B=len(lengths)) if with_state else None
    cu = cu_seqlens_of(lengths)

    def packed(xs, st, backend):
        h, final = mlstm(*xs, state=st, return_state=True, backend=backend, cu_seqlens=cu.to(xs[0].device),
                         **({"chunk_size": 16} if backend == "triton" else {}))
        loss = (h.double() * torch.cos(h.double())).sum() + (final.C**2).sum() + (1.3 * final.n).sum() + (0.7 * final.m).sum()
        return h, final, torch.autograd.grad(loss, list(xs) + (list(st) if st is not None else []))

    h, st, g = packed(on_device(inputs), on_device(state) and MLSTMState(*on_device(state)), "triton")
    expected = packed(inputs, state, "reference")
    compare((h.cpu(), MLSTMState(*(x.cpu() for x in st)), [x.cpu() for x in g]), expected, 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.usefixtures("gate_paths")
def test_extreme_gates_finite(dtype):
    """Gate pre-activations anywhere in [-1e4, 1e4]: finite outputs, states and gradients."""
    inputs = extreme_gate_inputs(70, dtype)
    state = make_state()
    h, st, grads = run_triton(inputs, MLSTMState(*(x.to(dtype) for x in state)))
    for name, t in zip(NAMES, [h, *st, *grads]):
        assert torch.isfinite(t).all(), f"non-finite {name}"


def test_no_grad_forward_only():
    inputs = [x.detach().to(DEVICE) for x in make_inputs(S=33)]
    with torch.no_grad():
        h = mlstm(*inputs, backend="triton", chunk_size=16)
    assert_close(h.cpu(), mlstm(*[x.cpu() for x in inputs], backend="reference"), 1e-10, "h")


@pytest.mark.skipif(CUDA, reason="checks the CPU refusal")
def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="triton"):
        mlstm(*[x.detach() for x in make_inputs(S=4)], backend="triton")


def test_backend_none_picks_triton_on_cuda_only():
    assert select_backend(100, torch.device("cuda"), True) == "triton"
    assert select_backend(100, torch.device("cpu"), True) == "chunkwise"


@pytest.mark.skipif(not CUDA, reason="host-device synchronisation exists only with a GPU")
@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
@pytest.mark.usefixtures("gate_paths")
def test_forward_and_backward_never_wait_for_the_gpu(packed):
    """No step of the Triton path reads back from the GPU or copies from pageable memory (each would
    stall the host until the queued kernels finish, leaving the GPU idle while it catches up)."""
    inputs = on_device(make_inputs(B=1 if packed else 2, S=70))
    cu_seqlens = torch.tensor([0, 30, 31, 70]) if packed else None
    # the entry check reads cu_seqlens (a CPU tensor here) once; everything after it stays on the GPU
    mlstm(*inputs, backend="triton", chunk_size=16, cu_seqlens=cu_seqlens)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        h, state = mlstm(*inputs, backend="triton", chunk_size=16, cu_seqlens=cu_seqlens, return_state=True)
        torch.autograd.grad((h.sum() + state.C.sum() + state.m.sum()), inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
