"""torch.compile and the hand-written cells: the chunkwise mLSTM's two custom ops hold their contract
(``torch.library.opcheck``: schema, fake shapes and strides, dispatch), a compiled call traces through the
cell without a graph break and gives the eager call's outputs, states and gradients, and a compiled
xLSTM language model trains like the eager one (tests/training covers the trainer's ``compile=true``)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close, cu_seqlens_of
from tests.ops.test_mlstm import extreme_gate_inputs, make_inputs, make_state
from xlstm_torch.ops import mlstm
from xlstm_torch.ops.mlstm_cell.chunkwise import _chunks, _Layout


def _op_inputs(S: int, lengths=None, with_state=False, gate_scale=1.0):
    """The forward op's arguments for a float64 problem: chunked q, k, v (chunk 8), gates, initial states."""
    q, k, v, i, f = (x.detach() for x in make_inputs(B=1 if lengths else 2, S=S, gate_scale=gate_scale))
    B, NH, _, DK = q.shape
    DV, L, D = v.shape[-1], 8, len(lengths) if lengths else 1
    bounds = None if lengths is None else [0, *torch.tensor(lengths).cumsum(0).tolist()]
    layout = _Layout(S, L, bounds, q.device)
    qc, kc = (_chunks(x.reshape(B * NH, S, DK), layout) for x in (q, k))
    vc = _chunks(v.reshape(B * NH, S, DV), layout, ones_column=True)
    g = torch.Generator().manual_seed(5)
    if with_state:
        C0 = torch.randn(B * NH, D, DK, DV + 1, generator=g, dtype=torch.float64)
        m0 = torch.randn(B * NH, D, generator=g, dtype=torch.float64)
    else:
        C0 = q.new_zeros(B * NH, D, DK, DV + 1)
        m0 = q.new_full((B * NH, D), float("-inf"))
    return (qc, kc, vc, i, f, C0, m0, S, 1e-6, bounds)


CASES = {
    "batch": dict(S=21),
    "batch-state": dict(S=24, with_state=True),
    "packed": dict(S=30, lengths=[9, 1, 20]),
    "wild-gates": dict(S=21, gate_scale=300.0),  # takes the unfactorised path in both ops
}


@pytest.mark.parametrize("case", CASES)
def test_chunkwise_custom_ops_hold_their_contract(case):
    args = _op_inputs(**CASES[case])
    fwd, bwd = torch.ops.xlstm_torch.mlstm_chunkwise_forward, torch.ops.xlstm_torch.mlstm_chunkwise_backward
    torch.library.opcheck(fwd, args)
    h_pad, C_last, m_last, den, Q = fwd(*args)
    g = torch.Generator().manual_seed(6)
    S, BH = args[7], args[0].shape[0]
    dh = torch.randn(args[3].shape + (args[2].shape[-1] - 1,), generator=g, dtype=torch.float64)
    grads = (dh, torch.randn(C_last.shape, generator=g, dtype=torch.float64),
             torch.randn(m_last.shape, generator=g, dtype=torch.float64))
    assert dh.shape[2] == S and C_last.shape[0] == BH
    torch.library.opcheck(bwd, (*args[:7], h_pad, den, Q, *grads, *args[7:]))
    torch.library.opcheck(bwd, (*args[:7], h_pad, den, Q, None, None, None, *args[7:]))  # unused outputs


def _compiled_matches_eager(inputs, state, cu_seqlens=None, chunk_size=8, fullgraph=True):
    def call(q, k, v, i, f, state):
        h, final = mlstm(q, k, v, i, f, state=state, return_state=True, backend="chunkwise", chunk_size=chunk_size,
                         cu_seqlens=cu_seqlens)
        return (h * torch.cos(h)).sum() + (final.C ** 2).sum() + (1.3 * final.n).sum() + (0.7 * final.m).sum(), h

    torch._dynamo.reset()
    compiled = torch.compile(call, backend="aot_eager", fullgraph=fullgraph)  # fullgraph: a graph break fails
    leaves = list(inputs) + (list(state) if state is not None else [])
    results = []
    for fn in (call, compiled):
        loss, h = fn(*inputs, state)
        results.append((h.detach(), *torch.autograd.grad(loss, leaves)))
    for name, a, e in zip(["h", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"], results[1], results[0]):
        assert_close(a, e, 1e-12, name, atol=1e-12 * max(x.abs().max().item() for x in results[0]))


@pytest.mark.parametrize("with_state", [False, True], ids=["empty-state", "given-state"])
@pytest.mark.parametrize("S", [21, 32])  # a padded last chunk, and none
def test_compiled_chunkwise_equals_eager(S, with_state):
    _compiled_matches_eager(make_inputs(S=S), make_state() if with_state else None)


def test_compiled_chunkwise_wild_gates_equal_eager():
    _compiled_matches_eager(extreme_gate_inputs(21, torch.float64), None)


def test_compiled_chunkwise_packed_equals_eager():
    """Packed documents compile with a graph break: the boundaries are read back to the host
    (``check_cu_seqlens``) and the graph after it is specialised to them, so each new packing compiles
    anew. The trainer runs packed batches eagerly for that reason; the result is still the eager one."""
    lengths = [9, 1, 20]
    _compiled_matches_eager(make_inputs(B=1, S=sum(lengths)), None, cu_seqlens=cu_seqlens_of(lengths),
                            fullgraph=False)


@pytest.mark.parametrize("family", ["xlstm", "xlstm-large"])
def test_mlstm_models_compile_without_graph_breaks(family):
    """The paper's mLSTM language model and the xLSTM 7B architecture are one graph each for torch.compile
    (sLSTM blocks break it on purpose: their recurrence runs eagerly, ``slstm_recurrent``)."""
    from xlstm_torch.models import XLSTMConfig, XLSTMLargeConfig, build_model

    torch.manual_seed(0)
    config = (XLSTMConfig(vocab_size=32, embedding_dim=32, num_blocks=2, num_heads=2, slstm_at=())
              if family == "xlstm" else XLSTMLargeConfig(vocab_size=32, embedding_dim=64, num_blocks=2, num_heads=2))
    model = build_model(config)
    ids = torch.randint(0, 32, (2, 20))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda x: model(x)[0].sum())(ids)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1
