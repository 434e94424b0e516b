"""mLSTM op: every backend against the step-by-step reference (MATH.md), states, gradients, extremes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import assert_close
from xlstm_torch.ops import MLSTMState, mlstm, mlstm_step
from xlstm_torch.ops.mlstm_cell import BACKENDS, select_backend

FAST = ["parallel", "chunkwise", "recurrent"]
# Relative tolerance per input dtype, for errors measured against a float64 reference.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def make_inputs(B=2, NH=3, S=65, DK=8, DV=5, *, dtype=torch.float64, gate_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, NH, S, DK, generator=g, dtype=torch.float64)
    k = torch.randn(B, NH, S, DK, generator=g, dtype=torch.float64)
    v = torch.randn(B, NH, S, DV, generator=g, dtype=torch.float64)
    i = torch.randn(B, NH, S, generator=g, dtype=torch.float64) * gate_scale
    f = torch.randn(B, NH, S, generator=g, dtype=torch.float64) * gate_scale + 2.0
    return [x.to(dtype).requires_grad_(True) for x in (q, k, v, i, f)]


def make_state(B=2, NH=3, DK=8, DV=5, *, seed=1):
    g = torch.Generator().manual_seed(seed)
    return MLSTMState(
        torch.randn(B, NH, DK, DV, generator=g, dtype=torch.float64).requires_grad_(True),
        torch.randn(B, NH, DK, generator=g, dtype=torch.float64).requires_grad_(True),
        torch.randn(B, NH, generator=g, dtype=torch.float64).requires_grad_(True),
    )


def run(inputs, backend, state=None, chunk_size=16, eps=1e-6):
    """Outputs, final state and gradients of a loss that uses h and every part of the final state."""
    kwargs = {"chunk_size": chunk_size} if backend == "chunkwise" else {}
    h, final = mlstm(*inputs, state=state, return_state=True, backend=backend, eps=eps, **kwargs)
    loss = (h.double() * torch.cos(h.double())).sum() + (final.C**2).sum() + (1.3 * final.n).sum() + (0.7 * final.m).sum()
    leaves = list(inputs) + (list(state) if state is not None else [])
    grads = torch.autograd.grad(loss, leaves)
    return h, final, grads


def extreme_gate_inputs(S: int, dtype):
    """Inputs whose gate pre-activations span [-1e4, 1e4], with saturated runs of each sign."""
    g = torch.Generator().manual_seed(3)
    inputs = make_inputs(S=S, dtype=dtype)
    with torch.no_grad():
        inputs[3].copy_((torch.rand(inputs[3].shape, generator=g) * 2 - 1) * 1e4)
        inputs[4].copy_((torch.rand(inputs[4].shape, generator=g) * 2 - 1) * 1e4)
        inputs[3][0, 0, :10] = 1e4
        inputs[4][0, 1, :] = -1e4
        inputs[3][1, 0, :] = -1e4
    return inputs


NAMES = ["h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]


def compare(actual, expected, rtol):
    h, st, g = actual
    he, ste, ge = expected
    # Gradients that vanish analytically come out as differences of O(max gradient) terms.
    atol = rtol * 1e-3 * max(x.abs().max().item() for x in ge)
    for name, a, e in zip(NAMES, [h, *st, *g], [he, *ste, *ge]):
        assert_close(a, e, rtol, name, atol=atol)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("S", [1, 2, 63, 65, 200])
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_float64_matches_reference(backend, S, with_state):
    inputs = make_inputs(S=S)
    state = make_state() if with_state else None
    expected = run(inputs, "reference", state, eps=0.0)
    compare(run(inputs, backend, state, eps=0.0), expected, 1e-10)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("B", [1, 2])
def test_strided_cotangent_matches_reference(backend, B):
    """Inputs and the gradient of h as transposed views, as from a layer that works in (B, S, NH, ...):
    with B = 1 and S a multiple of the chunk size they reshape to views that cannot be flattened."""
    inputs = [x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
              for x in make_inputs(B=B, S=32)]  # the same values with (B, S, NH, ...) memory
    cotangent = torch.randn(B, 32, 3, 5, dtype=torch.float64).transpose(1, 2)  # (B, NH, S, DV), strided
    grads = {}
    for name in ("reference", backend):
        kwargs = {"chunk_size": 16} if name == "chunkwise" else {}
        h = mlstm(*inputs, backend=name, **kwargs)
        grads[name] = torch.autograd.grad(h, inputs, cotangent)
    for name, a, e in zip(NAMES[4:], grads[backend], grads["reference"]):
        assert_close(a, e, 1e-10, name)


@pytest.mark.parametrize("backend", FAST)
def test_eps_path_matches_reference(backend):
    """With eps > 0 the stabiliser m enters h; its gradient path must match autograd of the reference."""
    inputs, state = make_inputs(S=40), make_state()
    compare(run(inputs, backend, state, eps=1e-2), run(inputs, "reference", state, eps=1e-2), 1e-10)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 64, 1000])
@pytest.mark.parametrize("S", [1, 63, 65])
def test_chunkwise_any_chunk_size(chunk_size, S):
    inputs = make_inputs(S=S, DK=4, DV=6)
    compare(run(inputs, "chunkwise", chunk_size=chunk_size), run(inputs, "reference"), 1e-10)


@pytest.mark.slow
def test_chunkwise_long_sequence_chunk_64():
    inputs = make_inputs(B=1, NH=2, S=1000, DK=16, DV=8)
    compare(run(inputs, "chunkwise", chunk_size=64), run(inputs, "reference"), 1e-10)


@pytest.mark.parametrize("gate_scale", [30.0, 300.0], ids=["gates-x30", "gates-x300"])
def test_chunkwise_wild_gates_take_unfactorised_path(gate_scale):
    """Gates swinging by hundreds within a chunk force the L x L log-weight path; still exact."""
    inputs = make_inputs(S=100, gate_scale=gate_scale)
    compare(run(inputs, "chunkwise", make_state(), eps=0.0), run(inputs, "reference", make_state(), eps=0.0), 1e-9)


@pytest.mark.parametrize("fused", [False, True], ids=["batched-products", "products-in-the-step"])
@pytest.mark.parametrize("S, chunk_size", [(65, 16), (100, 7)])
def test_chunkwise_state_scans_both_ways(monkeypatch, fused, S, chunk_size):
    """The state scans take the chunks' products up front for small states and inside each step for large ones
    (``chunkwise.FUSED_SCAN_MIN``); both ways are exact: forced here on a small state, with eps > 0 so that the
    stabiliser's gradient path runs too."""
    from xlstm_torch.ops.mlstm_cell import chunkwise

    monkeypatch.setattr(chunkwise, "FUSED_SCAN_MIN", 0 if fused else 1 << 62)
    inputs, state = make_inputs(S=S, DK=6, DV=5), make_state(DK=6, DV=5)
    compare(run(inputs, "chunkwise", state, chunk_size=chunk_size, eps=1e-2),
            run(inputs, "reference", state, eps=1e-2), 1e-10)


def test_chunkwise_large_state_takes_the_in_step_products():
    """DK = 128, DV = 256 takes the in-step products by default (``FUSED_SCAN_MIN``), with a state in and out."""
    from xlstm_torch.ops.mlstm_cell import chunkwise

    assert 128 * 257 >= chunkwise.FUSED_SCAN_MIN > 128 * 129
    inputs, state = make_inputs(B=1, NH=1, S=130, DK=128, DV=256), make_state(B=1, NH=1, DK=128, DV=256)
    compare(run(inputs, "chunkwise", state, chunk_size=64), run(inputs, "reference", state), 1e-10)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_against_float64_reference(backend, dtype):
    inputs = make_inputs(S=65, DK=16, DV=8, dtype=dtype)
    expected = run([x.detach().double().requires_grad_(True) for x in inputs], "reference")
    h, st, g = run(inputs, backend)
    assert h.dtype == dtype
    assert st.C.dtype == torch.float32
    rtol = RTOL[dtype]
    # Inputs were rounded to `dtype`, so compare against the reference on the same rounded inputs.
    compare((h, st, g), expected, rtol)


def test_gradcheck_chunkwise():
    inputs = make_inputs(B=1, NH=1, S=7, DK=3, DV=2)
    state = make_state(B=1, NH=1, DK=3, DV=2)

    def fn(q, k, v, i, f, C, n, m):
        h, st = mlstm(q, k, v, i, f, state=MLSTMState(C, n, m), return_state=True, backend="chunkwise",
                      chunk_size=3, eps=1e-3)
        return h, st.C, st.n, st.m

    assert torch.autograd.gradcheck(fn, (*inputs, *state))


@pytest.mark.parametrize("backend", ["parallel", "recurrent"])
def test_gradcheck_other_forms(backend):
    inputs = make_inputs(B=1, NH=1, S=5, DK=3, DV=2)
    assert torch.autograd.gradcheck(lambda *x: mlstm(*x, backend=backend), inputs)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("splits", [[1], [17, 5], [30, 1, 1, 20]], ids=lambda s: "-".join(map(str, s)))
def test_state_passing_equals_one_call(backend, splits):
    inputs = [x.detach() for x in make_inputs(S=65)]
    h_full, st_full = mlstm(*inputs, return_state=True, backend=backend)
    bounds = [0, *torch.tensor(splits).cumsum(0).tolist(), 65]
    state, pieces = None, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        piece = [x[:, :, a:b] for x in inputs]
        h, state = mlstm(*piece, state=state, return_state=True, backend=backend)
        pieces.append(h)
    assert_close(torch.cat(pieces, dim=2), h_full, 1e-10, "h")
    for name, a, e in zip("Cnm", state, st_full):
        assert_close(a, e, 1e-10, name)


def test_token_by_token_step_equals_one_call():
    q, k, v, i, f = [x.detach() for x in make_inputs(S=33)]
    h_full, st_full = mlstm(q, k, v, i, f, return_state=True)
    state, hs = None, []
    for t in range(33):
        h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], state)
        hs.append(h)
    assert_close(torch.stack(hs, dim=2), h_full, 1e-10, "h")
    for name, a, e in zip("Cnm", state, st_full):
        assert_close(a, e, 1e-10, name)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_extreme_gates_finite(backend, dtype):
    """Gate pre-activations anywhere in [-1e4, 1e4]: finite outputs, states and gradients."""
    inputs = extreme_gate_inputs(130, dtype)
    h, st, grads = run(inputs, backend, make_state())
    for name, t in zip(NAMES, [h, *st, *grads]):
        assert torch.isfinite(t).all(), f"{backend}: non-finite {name}"


@pytest.mark.slow
def test_long_sequence_16k_finite():
    inputs = make_inputs(B=1, NH=2, S=16384, DK=8, DV=8, dtype=torch.float32, gate_scale=5.0)
    h, st, grads = run(inputs, "chunkwise", chunk_size=64)
    for name, t in zip(NAMES, [h, *st, *grads]):
        assert torch.isfinite(t).all(), f"non-finite {name}"


def test_backend_none_choice():
    assert select_backend(1, torch.device("cpu"), False) == "recurrent"
    assert select_backend(2, torch.device("cpu"), True) == "chunkwise"
    assert select_backend(5000, torch.device("cpu"), False) == "chunkwise"
    cpu = torch.device("cpu")
    # short sequences relative to the head dims run the parallel form: S (DK + DV) <= 2 DK DV
    assert select_backend(40, cpu, True, 160, 160) == "parallel"
    assert select_backend(64, cpu, False, 64, 64) == "parallel"
    assert select_backend(65, cpu, True, 64, 64) == "chunkwise"
    assert select_backend(42, cpu, True, 32, 64) == "parallel"
    assert select_backend(43, cpu, True, 32, 64) == "chunkwise"
    assert select_backend(600, cpu, True, 1024, 1024) == "chunkwise"  # S x S matrices capped at PARALLEL_MAX_S
    inputs = [x.detach() for x in make_inputs(S=20)]
    assert_close(mlstm(*inputs), mlstm(*inputs, backend="reference"), 1e-10, "h")


@pytest.mark.parametrize("S, DK, DV, expected", [(24, 32, 32, "parallel"), (40, 16, 16, "chunkwise")])
def test_backend_none_runs_its_choice(S, DK, DV, expected):
    """mlstm(backend=None) gives bit for bit what the backend select_backend names gives, state included."""
    q, k, v, i, f = (x.detach() for x in make_inputs(B=2, NH=2, S=S, DK=DK, DV=DV, dtype=torch.float32))
    h, state = mlstm(q, k, v, i, f, return_state=True)
    h_named, state_named = mlstm(q, k, v, i, f, return_state=True, backend=expected)
    assert torch.equal(h, h_named)
    for a, b in zip(state, state_named):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.update(q=a["q"][0]), ValueError, "q must have 4 dimensions"),
        (lambda a: a.update(k=a["k"][:, :, :-1]), ValueError, "k must have shape"),
        (lambda a: a.update(v=a["v"][:, :1]), ValueError, "v must have shape"),
        (lambda a: a.update(i=a["i"][..., None]), ValueError, "i must have 3 dimensions"),
        (lambda a: a.update(f=a["f"][:, :, :-1]), ValueError, "f must have shape"),
        (lambda a: a.update(k=a["k"].float()), TypeError, "k has dtype"),
        (lambda a: a.update(q=a["q"].long()), TypeError, "q must be a floating tensor"),
        (lambda a: a.update(v=a["v"].tolist()), TypeError, "v must be a torch.Tensor"),
        (lambda a: a.update(backend="cuda-magic"), ValueError, "unknown backend"),
        (lambda a: a.update(chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (lambda a: a.update(chunk_size=-4), ValueError, "chunk_size must be a positive int"),
        (lambda a: a.update(eps=-1.0), ValueError, "eps must be"),
        (lambda a: a.update(state=(torch.zeros(2, 3, 8, 5),)), ValueError, "state must be a tuple of 3"),
        (lambda a: a.update(state=MLSTMState(torch.zeros(2, 3, 5, 8), torch.zeros(2, 3, 8), torch.zeros(2, 3))),
         ValueError, "state.C must have shape"),
        (lambda a: a.update(state=MLSTMState(torch.zeros(2, 3, 8, 5), torch.zeros(2, 3, 8), torch.zeros(3))),
         ValueError, "state.m must have 2 dimensions"),
    ],
    ids=["q-rank", "k-shape", "v-shape", "i-rank", "f-shape", "k-dtype", "q-int", "v-list", "backend",
         "chunk-zero", "chunk-negative", "eps", "state-len", "state-C-shape", "state-m-rank"],
)
def test_bad_input_names_the_argument(mutate, exc, match):
    q, k, v, i, f = [x.detach() for x in make_inputs(S=10)]
    args = dict(q=q, k=k, v=v, i=i, f=f)
    mutate(args)
    with pytest.raises(exc, match=match):
        mlstm(**args)


def test_reference_registry_complete():
    assert set(BACKENDS) == {"reference", "parallel", "chunkwise", "recurrent", "triton"}
    assert math.isfinite(RTOL[torch.float32])
