"""Packed variable-length sequences (``cu_seqlens``): every backend of both cells against running each
document alone, on outputs, per-document final states and all gradients (ops/_packing.py)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close, cat_rows, cu_seqlens_of, document_spans, select_rows
from tests.ops import test_mlstm, test_slstm
from xlstm_torch.ops import MLSTMState, SLSTMState, mlstm, slstm

MLSTM_BACKENDS = ["reference", "parallel", "chunkwise", "recurrent"]
SLSTM_BACKENDS = ["reference", "recurrent"]
CHUNK = 8  # chunk size of the chunkwise runs: the length mixes below are sized against it


def random_lengths(seed: int, count: int, longest: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, longest + 1, (count,), generator=g).tolist()


# Length-1 documents, documents shorter than a chunk, exactly one chunk, spanning many chunks, and
# totals that are not a multiple of the chunk size.
LENGTHS = {
    "mixed": [1, 5, 8, 17, 40, 3],
    "one-document": [37],
    "length-1-only": [1, 1, 1],
    "long-first": [70, 1, 2],
    "random": random_lengths(0, 7, 30),
}


def each_document_alone(run, sequences, time_dim, lengths, state):
    """The definition of the packed call: ``run(slices, state_row)`` on each document, joined."""
    outputs, finals = [], []
    for d, (a, b) in enumerate(document_spans(lengths)):
        out, final = run([x.narrow(time_dim, a, b - a) for x in sequences], select_rows(state, d))
        outputs.append(out)
        finals.append(final)
    return torch.cat(outputs, dim=time_dim), cat_rows(finals)


def with_grads(out, loss, inputs, state):
    """(h, final state, gradients of ``loss(h, final)`` on the inputs and the initial state)."""
    leaves = list(inputs) + (list(state) if state is not None else [])
    return (*out, torch.autograd.grad(loss(*out), leaves))


def compare(actual, expected, names, rtol):
    """Outputs and states at rtol; gradients at rtol with an atol for those that vanish analytically."""
    (h, final, grads), (he, finale, gradse) = actual, expected
    for name, a, e in zip(["h", *final._fields], [h, *final], [he, *finale]):
        assert_close(a, e, rtol, name)
    atol = rtol * 1e-3 * max(g.abs().max().item() for g in gradse)
    for name, a, e in zip(names, grads, gradse):
        assert_close(a, e, rtol, name, atol=atol)


# --- mLSTM ------------------------------------------------------------------------------------------------------

MLSTM_GRADS = ["dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]


def mlstm_inputs(S, NH=2, DK=4, DV=3, **kwargs):
    return test_mlstm.make_inputs(B=1, NH=NH, S=S, DK=DK, DV=DV, **kwargs)


def mlstm_state(D, NH=2, DK=4, DV=3):
    return test_mlstm.make_state(B=D, NH=NH, DK=DK, DV=DV)


def mlstm_loss(h, final):
    return (h.double() * torch.cos(h.double())).sum() + (final.C**2).sum() + (1.3 * final.n).sum() + (0.7 * final.m).sum()


def mlstm_call(inputs, backend, state, eps, cu_seqlens=None):
    kwargs = {"chunk_size": CHUNK} if backend == "chunkwise" else {}
    return mlstm(*inputs, state=state, return_state=True, backend=backend, eps=eps, cu_seqlens=cu_seqlens, **kwargs)


def mlstm_packed(inputs, lengths, backend, state=None, eps=1e-6):
    return with_grads(mlstm_call(inputs, backend, state, eps, cu_seqlens_of(lengths)), mlstm_loss, inputs, state)


def mlstm_loop(inputs, lengths, backend, state=None, eps=1e-6):
    run = lambda xs, st: mlstm_call(xs, backend, st, eps)  # noqa: E731
    return with_grads(each_document_alone(run, inputs, 2, lengths, state), mlstm_loss, inputs, state)


@pytest.mark.parametrize("backend", MLSTM_BACKENDS)
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_mlstm_packed_stabiliser_paths(backend, eps):
    """eps = 0 (the definition) and a large eps (m enters h): both exact per document."""
    lengths = LENGTHS["mixed"]
    inputs, state = mlstm_inputs(sum(lengths)), mlstm_state(len(lengths))
    compare(mlstm_packed(inputs, lengths, backend, state, eps), mlstm_loop(inputs, lengths, "reference", state, eps),
            MLSTM_GRADS, 1e-10)


def test_mlstm_chunkwise_packed_products_in_the_scan_steps(monkeypatch):
    """The in-step products of the state scans (large states; forced here) restart at every document."""
    from xlstm_torch.ops.mlstm_cell import chunkwise

    monkeypatch.setattr(chunkwise, "FUSED_SCAN_MIN", 0)
    lengths = LENGTHS["mixed"]
    inputs, state = mlstm_inputs(sum(lengths)), mlstm_state(len(lengths))
    compare(mlstm_packed(inputs, lengths, "chunkwise", state, 1e-2),
            mlstm_loop(inputs, lengths, "reference", state, 1e-2), MLSTM_GRADS, 1e-10)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 64])
def test_mlstm_chunkwise_packed_any_chunk_size(chunk_size):
    lengths = LENGTHS["mixed"]
    inputs = mlstm_inputs(sum(lengths))
    h, final = mlstm(*inputs, return_state=True, backend="chunkwise", chunk_size=chunk_size,
                     cu_seqlens=cu_seqlens_of(lengths))
    packed = (h, final, torch.autograd.grad(mlstm_loss(h, final), inputs))
    compare(packed, mlstm_loop(inputs, lengths, "reference"), MLSTM_GRADS, 1e-10)


@pytest.mark.parametrize("backend", MLSTM_BACKENDS)
def test_mlstm_packed_float32_within_1e6_of_the_loop(backend):
    """The issue's target: packed vs the per-document loop in float32, ~1e-6 relative."""
    lengths = random_lengths(1, 9, 40)
    inputs = mlstm_inputs(sum(lengths), DK=16, DV=8, dtype=torch.float32)
    state = mlstm_state(len(lengths), DK=16, DV=8)
    state = MLSTMState(*(x.detach().float().requires_grad_(True) for x in state))
    packed = mlstm_packed(inputs, lengths, backend, state)
    assert packed[0].dtype == torch.float32
    compare(packed, mlstm_loop(inputs, lengths, backend, state), MLSTM_GRADS, 1e-6)


@pytest.mark.parametrize("backend", MLSTM_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_mlstm_packed_low_precision_against_float64_loop(backend, dtype):
    """Half-precision inputs: packed outputs, float32 states and gradients within the op's tolerance
    (tests/ops/test_mlstm.py RTOL) of the float64 reference run document by document."""
    lengths = LENGTHS["mixed"]
    inputs = mlstm_inputs(sum(lengths), DK=16, DV=8, dtype=dtype)
    h, final, grads = mlstm_packed(inputs, lengths, backend)
    assert h.dtype == dtype and final.C.dtype == torch.float32
    expected = mlstm_loop([x.detach().double().requires_grad_(True) for x in inputs], lengths, "reference")
    compare((h, final, grads), expected, MLSTM_GRADS, test_mlstm.RTOL[dtype])


@pytest.mark.parametrize("gate_scale", [30.0, 300.0], ids=["gates-x30", "gates-x300"])
def test_mlstm_chunkwise_packed_wild_gates(gate_scale):
    """Gates swinging by hundreds inside a chunk take the unfactorised path; still exact per document."""
    lengths = LENGTHS["mixed"]
    inputs, state = mlstm_inputs(sum(lengths), gate_scale=gate_scale), mlstm_state(len(lengths))
    compare(mlstm_packed(inputs, lengths, "chunkwise", state, 0.0),
            mlstm_loop(inputs, lengths, "reference", state, 0.0), MLSTM_GRADS, 1e-9)


@pytest.mark.parametrize("backend", MLSTM_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_mlstm_packed_extreme_gates_finite(backend, dtype):
    """Gate pre-activations anywhere in [-1e4, 1e4]: finite outputs, states and gradients."""
    lengths = [1, 30, 2, 61, 9]
    g = torch.Generator().manual_seed(3)
    inputs = mlstm_inputs(sum(lengths), dtype=dtype)
    with torch.no_grad():
        for x in inputs[3:]:
            x.copy_((torch.rand(x.shape, generator=g) * 2 - 1) * 1e4)
        inputs[3][0, 0, :40] = 1e4
        inputs[4][0, 1, :] = -1e4
    h, final, grads = mlstm_packed(inputs, lengths, backend, mlstm_state(len(lengths)))
    for name, t in zip(["h", "C", "n", "m", *MLSTM_GRADS], [h, *final, *grads]):
        assert torch.isfinite(t).all(), f"{backend}: non-finite {name}"


def test_mlstm_chunkwise_packed_gradcheck():
    lengths = [2, 5, 1]
    inputs = mlstm_inputs(sum(lengths), NH=1, DK=3, DV=2)
    state = mlstm_state(len(lengths), NH=1, DK=3, DV=2)
    cu_seqlens = cu_seqlens_of(lengths)

    def fn(q, k, v, i, f, C, n, m):
        h, st = mlstm(q, k, v, i, f, state=MLSTMState(C, n, m), return_state=True, backend="chunkwise",
                      chunk_size=3, eps=1e-3, cu_seqlens=cu_seqlens)
        return h, st.C, st.n, st.m

    assert torch.autograd.gradcheck(fn, (*inputs, *state))


def test_mlstm_packed_documents_do_not_see_each_other():
    """Changing one document changes nothing in the others, whatever the backend."""
    lengths = [6, 11, 4]
    inputs = [x.detach() for x in mlstm_inputs(sum(lengths))]
    changed = [x.clone() for x in inputs]
    for x in changed:
        x[:, :, 6:17] += 1.0  # the middle document only
    for backend in MLSTM_BACKENDS:
        h, final = mlstm_call(inputs, backend, None, 1e-6, cu_seqlens_of(lengths))
        h2, final2 = mlstm_call(changed, backend, None, 1e-6, cu_seqlens_of(lengths))
        keep = torch.tensor([t < 6 or t >= 17 for t in range(sum(lengths))])
        assert torch.equal(h[:, :, keep], h2[:, :, keep]), backend
        assert not torch.equal(h[:, :, ~keep], h2[:, :, ~keep]), backend
        for a, b in zip(final, final2):
            assert torch.equal(a[[0, 2]], b[[0, 2]]), backend


# --- sLSTM ------------------------------------------------------------------------------------------------------

SLSTM_GRADS = ["dwx", "dr", "db", "dh0", "dc0", "dn0", "dm0"]


def slstm_inputs(S, NH=2, DH=3, **kwargs):
    return test_slstm.make_inputs(B=1, S=S, NH=NH, DH=DH, **kwargs)


def slstm_state(D, NH=2, DH=3):
    return test_slstm.make_state(B=D, NH=NH, DH=DH)


def slstm_loss(h, final):
    return ((h.double() * torch.cos(h.double())).sum() + (final.h**2).sum() + (1.3 * final.c).sum()
            + (0.7 * final.n**2).sum() + (0.9 * final.m).sum())


def slstm_packed(inputs, lengths, backend, state=None):
    out = slstm(*inputs, state=state, return_state=True, backend=backend, cu_seqlens=cu_seqlens_of(lengths))
    return with_grads(out, slstm_loss, inputs, state)


def slstm_loop(inputs, lengths, backend, state=None):
    wx, r, b = inputs
    run = lambda xs, st: slstm(xs[0], r, b, state=st, return_state=True, backend=backend)  # noqa: E731
    return with_grads(each_document_alone(run, [wx], 1, lengths, state), slstm_loss, inputs, state)


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-states", "given-states"])
def test_slstm_recurrent_packed_no_grad_path_matches(with_state):
    lengths = ALL_LENGTHS["across-runs"]
    inputs = [x.detach() for x in slstm_inputs(sum(lengths))]
    state = slstm_state(len(lengths)) if with_state else None
    state = None if state is None else SLSTMState(*(x.detach() for x in state))
    with torch.no_grad():
        h, final = slstm(*inputs, state=state, return_state=True, backend="recurrent", cu_seqlens=cu_seqlens_of(lengths))
        h_ref, final_ref = slstm(*inputs, state=state, return_state=True, backend="reference",
                                 cu_seqlens=cu_seqlens_of(lengths))
    for name, a, e in zip(["h", *final._fields], [h, *final], [h_ref, *final_ref]):
        assert_close(a, e, 1e-10, name)


def test_slstm_packed_float32_within_1e6_of_the_loop():
    lengths = random_lengths(2, 9, 80)
    inputs = slstm_inputs(sum(lengths), DH=8, dtype=torch.float32)
    state = SLSTMState(*(x.detach().float().requires_grad_(True) for x in slstm_state(len(lengths), DH=8)))
    compare(slstm_packed(inputs, lengths, "recurrent", state), slstm_loop(inputs, lengths, "recurrent", state),
            SLSTM_GRADS, 1e-6)


@pytest.mark.parametrize("backend", SLSTM_BACKENDS)
def test_slstm_packed_extreme_gates_finite(backend):
    lengths = [1, 30, 2, 70, 9]
    g = torch.Generator().manual_seed(3)
    inputs = slstm_inputs(sum(lengths), dtype=torch.float32)
    with torch.no_grad():
        inputs[0].copy_((torch.rand(inputs[0].shape, generator=g) * 2 - 1) * 1e4)
    state = SLSTMState(*(x.detach().float().requires_grad_(True) for x in slstm_state(len(lengths))))
    h, final, grads = slstm_packed(inputs, lengths, backend, state)
    for name, t in zip(["h", "hS", "cS", "nS", "mS", *SLSTM_GRADS], [h, *final, *grads]):
        assert torch.isfinite(t).all(), f"{backend}: non-finite {name}"


@pytest.mark.parametrize("lengths, batched", [([40, 17, 64, 1, 30, 50, 60], True), ([150, 1, 1, 1], False)],
                         ids=["documents-as-batch-rows", "too-uneven-runs-packed"])
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-states", "given-states"])
def test_slstm_packed_outputs_only_match_the_loop(lengths, batched, with_state, monkeypatch):
    """Without a final state the recurrent backend may run the documents as padded batch rows (training)."""
    import xlstm_torch.ops.slstm_cell as cell

    calls = []
    real = cell._documents_as_batch
    monkeypatch.setattr(cell, "_documents_as_batch", lambda *a: calls.append(1) or real(*a))
    inputs = slstm_inputs(sum(lengths), DH=4)
    state = slstm_state(len(lengths), DH=4) if with_state else None
    h = slstm(*inputs, state=state, backend="recurrent", cu_seqlens=cu_seqlens_of(lengths))
    assert bool(calls) == batched
    wx, r, b = inputs
    run = lambda xs, st: slstm(xs[0], r, b, state=st, return_state=True, backend="reference")  # noqa: E731
    h_loop, _ = each_document_alone(run, [wx], 1, lengths, state)
    leaves = list(inputs) + (list(state) if state is not None else [])
    weights = torch.cos(torch.arange(h.numel(), dtype=h.dtype)).reshape(h.shape)
    grads = torch.autograd.grad((h * weights).sum(), leaves, allow_unused=True)
    grads_loop = torch.autograd.grad((h_loop * weights).sum(), leaves, allow_unused=True)
    assert_close(h, h_loop, 1e-10, "h")
    for name, a, e in zip(SLSTM_GRADS, grads, grads_loop):
        if e is None:  # the initial m does not reach h when the first step's exponent wins
            assert a is None or not a.abs().max() > 0, name
            continue
        assert_close(a if a is not None else torch.zeros_like(e), e, 1e-10, name, atol=1e-13)


# --- both cells -------------------------------------------------------------------------------------------------

CELLS = {
    "mlstm": (mlstm_inputs, mlstm_state, mlstm_packed, mlstm_loop, MLSTM_GRADS),
    "slstm": (slstm_inputs, slstm_state, slstm_packed, slstm_loop, SLSTM_GRADS),
}
# Also documents across the sLSTM recurrent backend's 64-step runs, and runs ending inside a document.
ALL_LENGTHS = dict(LENGTHS, **{"across-runs": [1, 64, 65, 3, 130]})


@pytest.mark.parametrize("cell, backend", [("mlstm", b) for b in MLSTM_BACKENDS] + [("slstm", b) for b in SLSTM_BACKENDS])
@pytest.mark.parametrize("lengths", ALL_LENGTHS.values(), ids=ALL_LENGTHS.keys())
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-states", "given-states"])
def test_packed_equals_each_document_alone_float64(cell, backend, lengths, with_state):
    make_inputs, make_state, packed_call, loop_call, grad_names = CELLS[cell]
    inputs = make_inputs(sum(lengths))
    state = make_state(len(lengths)) if with_state else None
    packed = packed_call(inputs, lengths, backend, state)
    assert packed[1][0].shape[0] == len(lengths)  # one state row per document
    compare(packed, loop_call(inputs, lengths, backend, state), grad_names, 1e-10)
    if backend != "reference":
        compare(packed, loop_call(inputs, lengths, "reference", state), grad_names, 1e-10)


# --- argument checks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cu_seqlens, B, exc, match",
    [
        ([0, 3, 10], 1, TypeError, "cu_seqlens must be a torch.Tensor"),
        (torch.tensor([0, 3, 10], dtype=torch.int32), 1, TypeError, "cu_seqlens must be int64"),
        (torch.tensor([[0, 3, 10]]), 1, ValueError, "cu_seqlens must be 1-D"),
        (torch.tensor([0]), 1, ValueError, "cu_seqlens must be 1-D"),
        (torch.tensor([1, 3, 10]), 1, ValueError, "cu_seqlens must start at 0"),
        (torch.tensor([0, 3, 3, 10]), 1, ValueError, "cu_seqlens must be strictly increasing"),
        (torch.tensor([0, 5, 3, 10]), 1, ValueError, "cu_seqlens must be strictly increasing"),
        (torch.tensor([0, 3, 9]), 1, ValueError, "cu_seqlens must end at the sequence length S=10"),
        (torch.tensor([0, 3, 10]), 2, ValueError, "cu_seqlens needs the documents packed into one row"),
    ],
    ids=["list", "int32", "2-D", "no-document", "start", "empty-document", "decreasing", "end", "batch-2"],
)
@pytest.mark.parametrize("cell", ["mlstm", "slstm"])
def test_bad_cu_seqlens_names_the_argument(cell, cu_seqlens, B, exc, match):
    if cell == "mlstm":
        inputs = [x.detach().expand(B, *x.shape[1:]) for x in mlstm_inputs(10)]
        call = lambda: mlstm(*inputs, cu_seqlens=cu_seqlens)  # noqa: E731
    else:
        wx, r, b = (x.detach() for x in slstm_inputs(10))
        call = lambda: slstm(wx.expand(B, *wx.shape[1:]), r, b, cu_seqlens=cu_seqlens)  # noqa: E731
    with pytest.raises(exc, match=match):
        call()


def test_state_rows_must_be_the_documents():
    cu_seqlens = torch.tensor([0, 3, 10])
    q, k, v, i, f = (x.detach() for x in mlstm_inputs(10))
    with pytest.raises(ValueError, match=r"state.C must have shape \(2, 2, 4, 3\)"):
        mlstm(q, k, v, i, f, state=mlstm_state(1), cu_seqlens=cu_seqlens)
    wx, r, b = (x.detach() for x in slstm_inputs(10))
    with pytest.raises(ValueError, match=r"state.h must have shape \(2, 2, 3\)"):
        slstm(wx, r, b, state=slstm_state(3), cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
def test_documents_as_rows_round_trip(lengths):
    """The padded-rows layout of the sLSTM's packed path: row d holds document d, and unpad puts the
    documents back in packed order (what a boolean mask over the valid steps gives)."""
    from xlstm_torch.ops._packing import documents_as_rows

    cu = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    gather, rows_lengths, unpad = documents_as_rows(cu)
    assert rows_lengths.tolist() == lengths and gather.shape == (len(lengths), max(lengths))
    tokens = torch.arange(100, 100 + cu[-1])
    rows = tokens[gather]  # (D, longest)
    for d, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        assert rows[d, : b - a].tolist() == tokens[a:b].tolist()
        assert (gather[d, b - a :] == 0).all()  # padding reads a real token (finite), never past the end
    valid = torch.arange(max(lengths))[None, :] < rows_lengths[:, None]
    assert rows.flatten(0, 1)[unpad].tolist() == rows[valid].tolist() == tokens.tolist()


def test_host_to_device_values_and_dtype():
    from xlstm_torch.ops._packing import host_to_device

    x = host_to_device([3, -1, 7], "cpu", torch.int32)
    assert x.dtype == torch.int32 and x.tolist() == [3, -1, 7] and x.device.type == "cpu"
