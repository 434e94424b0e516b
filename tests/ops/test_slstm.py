"""sLSTM op: the recurrent backend against the step-by-step reference (MATH.md), states, gradients,
extremes, errors."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from xlstm_torch.ops import SLSTMState, slstm
from xlstm_torch.ops.slstm_cell import BACKENDS, select_backend
from xlstm_torch.ops.slstm_cell import recurrent as recurrent_module

# Relative tolerance per input dtype, for errors measured against a float64 reference.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
NAMES = ["h", "hS", "cS", "nS", "mS", "dwx", "dr", "db", "dh0", "dc0", "dn0", "dm0"]


def make_inputs(B=2, S=65, NH=3, DH=5, *, dtype=torch.float64, seed=0):
    """wx (B, S, NH, 4, DH), r (NH, 4, DH, DH), b (NH, 4, DH); forget gates biased open as in the models."""
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(B, S, NH, 4, DH, generator=g, dtype=torch.float64)
    r = torch.randn(NH, 4, DH, DH, generator=g, dtype=torch.float64) / DH**0.5
    b = torch.randn(NH, 4, DH, generator=g, dtype=torch.float64)
    b[:, 1] += 2.0
    return [x.to(dtype).requires_grad_(True) for x in (wx, r, b)]


def make_state(B=2, NH=3, DH=5, *, seed=1):
    """A state as a previous call leaves it: |c̄| <= n̄, n̄ >= 1, any m."""
    g = torch.Generator().manual_seed(seed)
    n = 1 + 3 * torch.rand(B, NH, DH, generator=g, dtype=torch.float64)
    c = n * (2 * torch.rand(B, NH, DH, generator=g, dtype=torch.float64) - 1)
    h = torch.tanh(torch.randn(B, NH, DH, generator=g, dtype=torch.float64))
    m = 3 * torch.randn(B, NH, DH, generator=g, dtype=torch.float64)
    return SLSTMState(*(x.requires_grad_(True) for x in (h, c, n, m)))


def run(inputs, backend, state=None, *, use_final=True):
    """Outputs, final state and gradients of a loss on h and (optionally) every part of the final state."""
    h, final = slstm(*inputs, state=state, return_state=True, backend=backend)
    loss = (h.double() * torch.cos(h.double())).sum()
    if use_final:
        loss = loss + (final.h**2).sum() + (1.3 * final.c).sum() + (0.7 * final.n**2).sum() + (0.9 * final.m).sum()
    leaves = list(inputs) + (list(state) if state is not None else [])
    return h, final, torch.autograd.grad(loss, leaves)


def compare(actual, expected, rtol):
    h, st, g = actual
    he, ste, ge = expected
    for name, a, e in zip(NAMES, [h, *st], [he, *ste]):
        assert_close(a, e, rtol, name)
    # A gradient that vanishes analytically (dm0 when every path to m0 is shut) comes out as a
    # difference of terms as large as the other gradients.
    atol = rtol * 1e-3 * max(x.abs().max().item() for x in ge)
    for name, a, e in zip(NAMES[5:], g, ge):
        assert_close(a, e, rtol, name, atol=atol)


SHAPES = [  # (B, S, NH, DH)
    (1, 1, 1, 1),
    (2, 2, 3, 5),
    (3, 63, 2, 5),
    (2, 65, 3, 1),
    (2, 65, 1, 64),
    (2, 130, 2, 5),  # more than two backward chunks of 64, the last one partial
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-S{}-NH{}-DH{}".format(*s))
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_float64_matches_reference(shape, with_state):
    B, S, NH, DH = shape
    inputs = make_inputs(B, S, NH, DH)
    state = make_state(B, NH, DH) if with_state else None
    compare(run(inputs, "recurrent", state), run(inputs, "reference", state), RTOL[torch.float64])


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_loss_on_h_only_and_on_final_state_only(with_state):
    inputs = make_inputs(S=40)
    state = make_state() if with_state else None
    compare(run(inputs, "recurrent", state, use_final=False), run(inputs, "reference", state, use_final=False), 1e-10)

    def final_only(backend):
        h, final = slstm(*inputs, state=state, return_state=True, backend=backend)
        loss = (final.c * final.n).sum() + final.m.sum() - final.h.sum()
        return torch.autograd.grad(loss, list(inputs) + (list(state) if state is not None else []))

    for name, a, e in zip(NAMES[5:], final_only("recurrent"), final_only("reference")):
        assert_close(a, e, 1e-10, name)


def test_stabiliser_tie_splits_gradient_like_torch_maximum():
    """logσ(f̃) + m_{t-1} == ĩ exactly: the m-gradient of the returned state splits in half."""
    B, S, NH, DH = 1, 3, 1, 2
    wx = torch.zeros(B, S, NH, 4, DH, dtype=torch.float64)
    wx[:, :, :, 1] = 1.5
    wx[:, :, :, 0] = torch.nn.functional.logsigmoid(torch.tensor(1.5, dtype=torch.float64))
    wx[:, :, :, 2] = 0.3
    wx.requires_grad_(True)
    r = torch.zeros(NH, 4, DH, DH, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(NH, 4, DH, dtype=torch.float64, requires_grad=True)
    state = SLSTMState(*(torch.full((B, NH, DH), v, dtype=torch.float64, requires_grad=True) for v in (0.1, 0.2, 1.0, 0.0)))
    compare(run([wx, r, b], "recurrent", state), run([wx, r, b], "reference", state), 1e-12)


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_float32_against_float64_reference(with_state):
    inputs = make_inputs(S=65, DH=16, dtype=torch.float32)
    state = make_state(DH=16) if with_state else None
    expected = run([x.detach().double().requires_grad_(True) for x in inputs], "reference", state)
    state32 = SLSTMState(*(x.detach().float().requires_grad_(True) for x in state)) if with_state else None
    h, final, grads = run(inputs, "recurrent", state32)
    assert h.dtype == torch.float32 and final.m.dtype == torch.float32
    compare((h, final, grads), expected, RTOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_inputs(dtype):
    """Inputs rounded to dtype run in float32; h comes back in dtype, the state in float32."""
    inputs = make_inputs(S=65, DH=16, dtype=dtype)
    expected = run([x.detach().double().requires_grad_(True) for x in inputs], "reference")
    h, final, grads = run(inputs, "recurrent")
    assert h.dtype == dtype and final.c.dtype == torch.float32 and grads[0].dtype == dtype
    compare((h, final, grads), expected, RTOL[dtype])


def test_gradcheck():
    inputs = make_inputs(B=2, S=4, NH=1, DH=2)
    state = make_state(B=2, NH=1, DH=2)

    def fn(wx, r, b, h0, c0, n0, m0):
        h, final = slstm(wx, r, b, state=SLSTMState(h0, c0, n0, m0), return_state=True, backend="recurrent")
        return h, *final

    assert torch.autograd.gradcheck(fn, (*inputs, *state))
    assert torch.autograd.gradcheck(lambda *x: slstm(*x, backend="recurrent"), inputs)


@pytest.mark.parametrize("splits", [[1], [17, 5], [30, 1, 1, 20]], ids=lambda s: "-".join(map(str, s)))
def test_state_passing_equals_one_call(splits):
    """Carrying the state across pieces gives the one-call outputs, state and gradients."""
    inputs, state = make_inputs(S=65), make_state()
    expected = run(inputs, "recurrent", state)
    bounds = [0, *torch.tensor(splits).cumsum(0).tolist(), 65]
    wx, r, b = inputs
    carried, pieces = state, []
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        h, carried = slstm(wx[:, t0:t1], r, b, state=carried, return_state=True, backend="recurrent")
        pieces.append(h)
    h = torch.cat(pieces, dim=1)
    loss = (h * torch.cos(h)).sum() + (carried.h**2).sum() + (1.3 * carried.c).sum() + (0.7 * carried.n**2).sum() + (0.9 * carried.m).sum()
    compare((h, carried, torch.autograd.grad(loss, [*inputs, *state])), expected, 1e-10)


def test_token_by_token_equals_one_call():
    wx, r, b = (x.detach() for x in make_inputs(S=33))
    h_full, final_full = slstm(wx, r, b, return_state=True, backend="recurrent")
    state, hs = None, []
    for t in range(33):
        h, state = slstm(wx[:, t : t + 1], r, b, state=state, return_state=True, backend="recurrent")
        hs.append(h)
    assert_close(torch.cat(hs, dim=1), h_full, 1e-12, "h")
    for name, a, e in zip("hcnm", state, final_full):
        assert_close(a, e, 1e-12, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_decoding_step_equals_recurrent_and_reference(with_state, dtype):
    """slstm_step (the decoding step of the layers) token by token: the recurrent backend's numbers
    (the same ops, so equal to rounding) and the reference's."""
    from xlstm_torch.ops.slstm_cell import slstm_step, slstm_step_weights

    wx, r, b = (x.detach().to(dtype) for x in make_inputs(S=20))
    state = SLSTMState(*(x.detach().to(dtype) for x in make_state())) if with_state else None
    h_rec, final_rec = slstm(wx, r, b, state=state, return_state=True, backend="recurrent")
    h_ref, final_ref = slstm(wx, r, b, state=state, return_state=True, backend="reference")
    weights, hs = slstm_step_weights(r, b), []
    with torch.no_grad():
        for t in range(20):
            h, state = slstm_step(wx[:, t], weights, state)  # (B, NH, DH)
            hs.append(h)
    hs = torch.stack(hs, dim=1)
    rtol = 1e-6 if dtype == torch.float32 else 1e-13
    assert_close(hs, h_rec, rtol, "h vs recurrent")
    assert_close(hs, h_ref, RTOL[dtype], "h vs reference")
    for name, a, e, e_ref in zip("hcnm", state, final_rec, final_ref):
        assert a.shape == e.shape and a.dtype == dtype
        assert_close(a, e, rtol, name)
        assert_close(a, e_ref, RTOL[dtype], name)


@pytest.mark.parametrize("S", [1, 64, 65, 200], ids=lambda s: f"S{s}")
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
def test_no_grad_path_matches_reference(S, with_state):
    """Without gradients the forward keeps only a chunk-sized ring of per-step buffers."""
    inputs = [x.detach() for x in make_inputs(S=S)]
    state = SLSTMState(*(x.detach() for x in make_state())) if with_state else None
    with torch.no_grad():
        h, final = slstm(*inputs, state=state, return_state=True, backend="recurrent")
        h_ref, final_ref = slstm(*inputs, state=state, return_state=True, backend="reference")
    assert_close(h, h_ref, 1e-10, "h")
    for name, a, e in zip("hcnm", final, final_ref):
        assert_close(a, e, 1e-10, name)


@pytest.mark.parametrize("leaf", ["wx", "r", "b", "state"])
def test_gradient_of_one_input_only(leaf):
    inputs = [x.detach() for x in make_inputs(S=20)]
    state = SLSTMState(*(x.detach() for x in make_state()))
    if leaf == "state":
        state = SLSTMState(*(x.requires_grad_(True) for x in state))
        leaves = list(state)
    else:
        leaves = [inputs["wx r b".split().index(leaf)].requires_grad_(True)]

    def grads(backend):
        h, final = slstm(*inputs, state=state, return_state=True, backend=backend)
        return torch.autograd.grad((h**2).sum() + final.m.sum() + final.c.sum(), leaves)

    for k, (a, e) in enumerate(zip(grads("recurrent"), grads("reference"))):
        assert_close(a, e, 1e-10, f"d{leaf}[{k}]")


def test_partial_requires_grad_and_retain_graph():
    wx, r, b = make_inputs(S=20)
    r, b = r.detach(), b.detach()
    h = slstm(wx, r, b, backend="recurrent")
    (g1,) = torch.autograd.grad(h.sum(), wx, retain_graph=True)
    (g2,) = torch.autograd.grad(h.sum(), wx)
    (ge,) = torch.autograd.grad(slstm(wx, r, b, backend="reference").sum(), wx)
    assert_close(g1, ge, 1e-10, "dwx")
    assert torch.equal(g1, g2)


def test_workspace_reuses_buffers_but_never_those_of_a_live_graph():
    """A graph kept for a second backward keeps its buffers while other calls run."""
    recurrent_module.release_workspace()
    wx, r, b = make_inputs(S=70)
    h = slstm(wx, r, b, backend="recurrent")
    (g1,) = torch.autograd.grad((h**2).sum(), wx, retain_graph=True)
    for _ in range(2):  # same shapes: would take the kept graph's buffers if they counted as free
        other = slstm(wx * 0.5, r, b, backend="recurrent")
        torch.autograd.grad(other.sum(), wx)
    (g2,) = torch.autograd.grad((h**2).sum(), wx)
    assert torch.equal(g1, g2)
    del h
    kept = recurrent_module._WORKSPACE
    held = kept.free_bytes()
    slstm(wx, r, b, backend="recurrent").sum().backward()
    assert kept.free_bytes() == held  # everything this call needed came from the pool
    recurrent_module.release_workspace()
    assert kept.free_bytes() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_extreme_gates_finite(dtype):
    """Gate pre-activations anywhere in [-1e4, 1e4]: finite outputs, states and gradients."""
    g = torch.Generator().manual_seed(3)
    wx, r, b = make_inputs(S=130, dtype=dtype)
    with torch.no_grad():
        wx.copy_((torch.rand(wx.shape, generator=g) * 2 - 1) * 1e4)
        wx[0, :10, :, 0] = 1e4  # input gate wide open
        wx[0, :, 1, 1] = -1e4  # forget gate shut
        wx[1, :, 0, 0] = -1e4  # input gate shut
        wx[1, :, 2, 1] = 1e4  # forget gate open
    for state in (None, make_state()):
        if state is not None and dtype != torch.float64:
            state = SLSTMState(*(x.detach().to(dtype).requires_grad_(True) for x in state))
        h, final, grads = run([wx, r, b], "recurrent", state)
        for name, t in zip(NAMES, [h, *final, *grads]):
            assert torch.isfinite(t).all(), f"non-finite {name}"
        if dtype == torch.float64:
            compare((h, final, grads), run([wx, r, b], "reference", state), 1e-10)


@pytest.mark.slow
def test_long_sequence_16k_finite():
    inputs = make_inputs(B=2, S=16384, NH=2, DH=4, dtype=torch.float32)
    h, final, grads = run(inputs, "recurrent", use_final=True)
    for name, t in zip(NAMES, [h, *final, *grads]):
        assert torch.isfinite(t).all(), f"non-finite {name}"


def test_one_thread_inside_restores_setting():
    torch.set_num_threads(2)
    seen = []
    original = recurrent_module._coefficients

    def spy(*args):
        seen.append(torch.get_num_threads())
        return original(*args)

    recurrent_module._coefficients = spy
    try:
        wx, r, b = make_inputs(S=3)
        slstm(wx, r, b, backend="recurrent").sum().backward()
    finally:
        recurrent_module._coefficients = original
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
    assert seen == [1]
    assert threads == 2


def test_backend_none_is_recurrent():
    assert "recurrent" in BACKENDS
    assert select_backend(torch.device("cpu")) == "recurrent"
    inputs = [x.detach() for x in make_inputs(S=20)]
    assert_close(slstm(*inputs), slstm(*inputs, backend="reference"), 1e-10, "h")


def _state(B=2, NH=3, DH=5):
    return SLSTMState(*(x.detach() for x in make_state(B, NH, DH)))


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda a: a.update(wx=a["wx"][0]), ValueError, "wx must have 5 dimensions"),
        (lambda a: a.update(wx=a["wx"][:, :, :, :3]), ValueError, r"wx must have shape \(B, S, NH, 4, DH\)"),
        (lambda a: a.update(wx=a["wx"][:, :0]), ValueError, "wx needs S >= 1"),
        (lambda a: a.update(r=a["r"][:, :, :-1]), ValueError, "r must have shape"),
        (lambda a: a.update(r=a["r"][0]), ValueError, "r must have 4 dimensions"),
        (lambda a: a.update(r=a["r"][:2]), ValueError, "r must have shape"),
        (lambda a: a.update(b=a["b"][:, :3]), ValueError, "b must have shape"),
        (lambda a: a.update(b=a["b"][None]), ValueError, "b must have 3 dimensions"),
        (lambda a: a.update(r=a["r"].float()), TypeError, "r has dtype"),
        (lambda a: a.update(b=a["b"].float()), TypeError, "b has dtype"),
        (lambda a: a.update(wx=a["wx"].long()), TypeError, "wx must be a floating tensor"),
        (lambda a: a.update(b=a["b"].tolist()), TypeError, "b must be a torch.Tensor"),
        (lambda a: a.update(backend="cuda-magic"), ValueError, "unknown backend"),
        (lambda a: a.update(state=_state()[:3]), ValueError, "state must be a tuple of 4"),
        (lambda a: a.update(state=_state(B=1)), ValueError, r"state.h must have shape \(2, 3, 5\)"),
        (lambda a: a.update(state=_state()._replace(m=_state().m[..., :2])), ValueError, "state.m must have shape"),
        (lambda a: a.update(state=_state()._replace(c=1.0)), TypeError, "state.c must be a torch.Tensor"),
    ],
    ids=["wx-rank", "gate-dim-3", "empty-sequence", "r-block-shape", "r-rank", "r-heads", "b-gates", "b-rank",
         "r-dtype", "b-dtype", "wx-integer", "b-list", "unknown-backend", "state-length", "state-batch",
         "state-m-shape", "state-c-float"],
)
def test_bad_input_errors_name_the_argument(mutate, exc, match):
    wx, r, b = (x.detach() for x in make_inputs(S=4))
    args = {"wx": wx, "r": r, "b": b}
    mutate(args)
    backend = args.pop("backend", "recurrent")
    with pytest.raises(exc, match=match):
        slstm(**args, backend=backend)
