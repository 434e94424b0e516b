"""The mLSTM, sLSTM and xLSTM 7B layers and blocks: wiring against dense restatements with the
step-by-step reference cells, state passing (one call == pieces == token by token), and the
paper initialisation."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from xlstm_torch import ops
from xlstm_torch.nn import (LargeMLSTMBlock, LargeMLSTMLayer, LayerState, MLSTMBlock, MLSTMLayer, SLSTMBlock,
                            SLSTMLayer, powerlaw_forget_bias)


def randomize_(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Non-trivial values everywhere (the paper init zeros the gate weights and the sLSTM R)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return module


def dense(headwise) -> torch.Tensor:
    return torch.block_diag(*headwise.weight)


def causal_conv(conv, x):
    K, S = conv.kernel_size, x.shape[1]
    padded = F.pad(x, (0, 0, K - 1, 0))
    return sum(padded[:, j:j + S] * conv.weight[:, j] for j in range(K)) + conv.bias


def head_norm(norm, h):
    """Group norm with one group per head. h: (B, S, NH, DH) -> (B, S, NH*DH)."""
    B, S, NH, DH = h.shape
    return F.group_norm(h.reshape(B * S, NH * DH), NH, norm.weight, None, norm.eps).reshape(B, S, NH * DH)


def mlstm_layer_reference(layer: MLSTMLayer, x):
    B, S, _ = x.shape
    Di, NH, DH = layer.inner_dim, layer.num_heads, layer.head_dim
    up = x @ layer.proj_up.weight.T
    x_in, z = up[..., :Di], up[..., Di:]
    x_conv = F.silu(causal_conv(layer.conv, x_in))
    q, k, v = x_conv @ dense(layer.q).T, x_conv @ dense(layer.k).T, x_in @ dense(layer.v).T
    qkv = torch.cat([q, k, v], -1)
    i = qkv @ layer.igate_preact.weight.T + layer.igate_preact.bias
    f = qkv @ layer.fgate_preact.weight.T + layer.fgate_preact.bias
    heads = lambda t: t.view(B, S, NH, -1).transpose(1, 2)  # noqa: E731
    h = ops.mlstm(heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2), backend="reference")
    h = head_norm(layer.multihead_norm, h.transpose(1, 2))
    h = (h + layer.learnable_skip * x_conv) * F.silu(z)
    return h @ layer.proj_down.weight.T


def slstm_layer_reference(layer: SLSTMLayer, x):
    """The sLSTM recurrence of the paper without the stabiliser (fine in float64 at these scales)."""
    B, S, D = x.shape
    NH, DH = layer.num_heads, layer.head_dim
    x_conv = F.silu(causal_conv(layer.conv, x)) if layer.conv is not None else x
    wx = [x_conv @ dense(layer.igate_preact).T, x_conv @ dense(layer.fgate_preact).T,
          x @ dense(layer.zgate_preact).T, x @ dense(layer.ogate_preact).T]
    R = [torch.block_diag(*layer.recurrent_kernel[:, g].transpose(-1, -2)) for g in range(4)]  # (D, D): raw = R h
    b = [layer.bias[:, g].reshape(D) for g in range(4)]
    h, c, n = (torch.zeros(B, D, dtype=x.dtype) for _ in range(3))
    out = []
    for t in range(S):
        i_, f_, z_, o_ = (wx[g][:, t] + h @ R[g].T + b[g] for g in range(4))
        c = torch.sigmoid(f_) * c + torch.exp(i_) * torch.tanh(z_)
        n = torch.sigmoid(f_) * n + torch.exp(i_)
        h = torch.sigmoid(o_) * c / n
        out.append(h)
    return head_norm(layer.multihead_norm, torch.stack(out, 1).view(B, S, NH, DH))


def large_layer_reference(layer: LargeMLSTMLayer, x):
    B, S, _ = x.shape
    NH, cap = layer.num_heads, layer.gate_soft_cap
    q, k, v = x @ layer.q.weight.T, x @ layer.k.weight.T, x @ layer.v.weight.T
    o = torch.sigmoid(x @ layer.ogate_preact.weight.T)
    i = cap * torch.tanh((x @ layer.igate_preact.weight.T + layer.igate_preact.bias) / cap)
    f = cap * torch.tanh((x @ layer.fgate_preact.weight.T + layer.fgate_preact.bias) / cap)
    heads = lambda t: t.view(B, S, NH, -1).transpose(1, 2)  # noqa: E731
    h = ops.mlstm(heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2), backend="reference")
    return (o * head_norm(layer.multihead_norm, h.transpose(1, 2))) @ layer.out_proj.weight.T


LAYERS = {
    "mlstm": (lambda: MLSTMLayer(16, num_heads=2, chunk_size=4), mlstm_layer_reference),
    "slstm": (lambda: SLSTMLayer(16, num_heads=4), slstm_layer_reference),
    "slstm_no_conv": (lambda: SLSTMLayer(16, num_heads=2, conv_kernel_size=0), slstm_layer_reference),
    "large": (lambda: LargeMLSTMLayer(16, num_heads=2, chunk_size=4), large_layer_reference),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_matches_dense_restatement(name):
    make, reference = LAYERS[name]
    torch.manual_seed(0)
    layer = randomize_(make().double())
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y, state = layer(x)
    assert y.shape == x.shape and isinstance(state, LayerState)
    torch.testing.assert_close(y, reference(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["mlstm", "slstm", "large"])
def test_layer_gradients_match_dense_restatement(name):
    """Fast paths inside the layers (fused gate products, ...) give the reference's gradients too."""
    make, reference = LAYERS[name]
    torch.manual_seed(0)
    layer = randomize_(make().double())
    x = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(2, 9, 16, dtype=torch.float64)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad(layer(x)[0], params, cotangent)
    want = torch.autograd.grad(reference(layer, x), params, cotangent)
    names = ["x", *(n for n, _ in layer.named_parameters())]
    for n, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=lambda m: f"d{n}: {m}")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_mlstm_gate_preacts_equal_the_concatenated_linears(dtype, tol):
    """MLSTMLayer.gate_preacts (three products, no concatenation) against its definition, values and grads."""
    torch.manual_seed(0)
    layer = randomize_(MLSTMLayer(32, num_heads=4)).to(dtype)
    q, k, v = (torch.randn(2, 7, layer.inner_dim, dtype=dtype, requires_grad=True) for _ in range(3))
    gates = (layer.igate_preact, layer.fgate_preact)
    leaves = [q, k, v, *(p for g in gates for p in (g.weight, g.bias))]
    cotangents = [torch.randn(2, 7, 4, dtype=dtype) for _ in range(2)]
    got = layer.gate_preacts(q, k, v)
    qkv = torch.cat([q, k, v], dim=-1)
    want = tuple(g(qkv) for g in gates)
    for a, b in zip(got, want):
        assert_close(a, b, tol, "gate pre-activation")
    got_grads = torch.autograd.grad(got, leaves, cotangents)
    want_grads = torch.autograd.grad(want, leaves, cotangents)
    for j, (a, b) in enumerate(zip(got_grads, want_grads)):
        assert_close(a, b, tol, f"gradient {j}")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_mlstm_gate_preacts_folded_equal_the_unfolded(dtype, tol, qkv_bias):
    """MLSTMLayer.gate_preacts_folded (the head-wise maps folded into the gate weights) against the gates of
    the projected q, k, v, values and the gradients of the inputs and every weight (with q/k/v biases too)."""
    torch.manual_seed(1)
    layer = randomize_(MLSTMLayer(32, num_heads=4, qkv_block_size=4)).to(dtype)
    if qkv_bias:
        for proj in (layer.q, layer.k, layer.v):
            proj.bias = torch.nn.Parameter(torch.randn(layer.inner_dim, dtype=dtype))
    x_conv, x_in = (torch.randn(2, 7, layer.inner_dim, dtype=dtype, requires_grad=True) for _ in range(2))
    leaves = [x_conv, x_in, *layer.parameters()]
    cotangents = [torch.randn(2, 7, 4, dtype=dtype) for _ in range(2)]
    got = layer.gate_preacts_folded(x_conv, x_in)
    want = layer.gate_preacts(layer.q(x_conv), layer.k(x_conv), layer.v(x_in))
    for a, b in zip(got, want):
        assert_close(a, b, tol, "gate pre-activation")
    got_grads = torch.autograd.grad(got, leaves, cotangents, allow_unused=True, materialize_grads=True)
    want_grads = torch.autograd.grad(want, leaves, cotangents, allow_unused=True, materialize_grads=True)
    for name, a, b in zip(["x_conv", "x_in", *(n for n, _ in layer.named_parameters())], got_grads, want_grads):
        assert_close(a, b, tol, f"d{name}")


BLOCKS = {
    "mlstm": lambda: MLSTMBlock(16, num_heads=2, chunk_size=4, num_blocks=2),
    "slstm": lambda: SLSTMBlock(16, num_heads=4, num_blocks=2, block_index=1),
    "slstm_no_conv": lambda: SLSTMBlock(16, num_heads=2, conv_kernel_size=0),
    "large": lambda: LargeMLSTMBlock(16, num_heads=2, chunk_size=4, num_blocks=2),
}


def run_in_pieces(block, x, cuts):
    outs, state = [], None
    for a, b in zip([0, *cuts], [*cuts, x.shape[1]]):
        y, state = block(x[:, a:b], state)
        outs.append(y)
    return torch.cat(outs, 1), state


def assert_state_close(a: LayerState, b: LayerState, rtol: float):
    for j, (ta, tb) in enumerate(zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b))):
        if tb is not None:
            assert_close(ta, tb, rtol, f"state tensor {j}")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", BLOCKS)
def test_block_one_call_equals_pieces_and_token_by_token(name, dtype, tol):
    torch.manual_seed(0)
    block = randomize_(BLOCKS[name](), std=0.2).to(dtype)
    x = torch.randn(2, 19, 16, dtype=dtype)
    y, state = block(x)
    for cuts in ([1, 2, 9], list(range(1, 19))):  # pieces over chunk edges, then one token at a time
        y_pieces, state_pieces = run_in_pieces(block, x, cuts)
        assert_close(y_pieces, y, tol, f"output in pieces {cuts}")
        assert_state_close(state_pieces, state, tol)


def test_mlstm_layer_one_token_uses_the_recurrent_step(monkeypatch):
    layer = MLSTMLayer(16, num_heads=2).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    _, state = layer(x[:, :4])

    def no_sequence_op(*args, **kwargs):
        raise AssertionError("a one-token call must not run the sequence op")

    calls = []
    step = ops.mlstm_step
    monkeypatch.setattr(ops, "mlstm", no_sequence_op)
    monkeypatch.setattr(ops, "mlstm_step", lambda *a, **k: calls.append(1) or step(*a, **k))
    y, new_state = layer(x[:, 4:5], state)
    assert calls == [1] and y.shape == (2, 1, 16)
    assert new_state.cell.C.shape == state.cell.C.shape


def test_one_token_state_dtype_follows_the_op_contract():
    layer = LargeMLSTMLayer(16, num_heads=2).to(torch.bfloat16)
    y, state = layer(torch.randn(1, 1, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and state.cell.C.dtype == torch.float32


# -- initialisation ---------------------------------------------------------------------------------

def test_mlstm_layer_init():
    layer = MLSTMLayer(256, num_heads=128, num_blocks=4)
    torch.testing.assert_close(layer.fgate_preact.bias.detach(), torch.linspace(3.0, 6.0, 128))
    assert (layer.fgate_preact.weight == 0).all() and (layer.igate_preact.weight == 0).all()
    assert 0.08 < layer.igate_preact.bias.std().item() < 0.12  # N(0, 0.1) over 128 heads
    assert layer.proj_up.weight.std().item() == pytest.approx(math.sqrt(2 / (5 * 256)), rel=0.02)
    assert layer.q.weight.std().item() == pytest.approx(math.sqrt(2 / (5 * 512)), rel=0.05)
    assert layer.proj_down.weight.std().item() == pytest.approx(2 / (4 * math.sqrt(256)), rel=0.02)
    assert (layer.learnable_skip == 1).all() and (layer.multihead_norm.weight == 1).all()


def test_slstm_layer_init():
    layer = SLSTMLayer(64, num_heads=4, block_index=2, num_blocks=5)
    assert (layer.recurrent_kernel == 0).all()
    assert (layer.bias[:, [0, 2, 3]] == 0).all()
    expected = powerlaw_forget_bias(16, 2, 5)
    assert (layer.bias[:, 1] == expected).all()
    assert expected[0] == 5.0 and expected[-1] == pytest.approx(-7.0)
    assert (expected.diff() < 0).all()  # long to short memory across each head
    # deeper blocks put more units at the short end (larger exponent -> smaller biases inside)
    assert (powerlaw_forget_bias(16, 4, 5)[1:-1] > expected[1:-1]).all()
    assert powerlaw_forget_bias(8, 0, 1)[-1] == pytest.approx(-7.0)


def test_large_layer_init():
    layer = LargeMLSTMLayer(64, num_heads=4)
    assert (layer.igate_preact.bias == -10).all()
    torch.testing.assert_close(layer.fgate_preact.bias.detach(), torch.linspace(3.0, 6.0, 4))


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="num_heads"):
        SLSTMLayer(10, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        MLSTMLayer(16, num_heads=5)
    with pytest.raises(ValueError, match="num_heads"):
        LargeMLSTMLayer(16, num_heads=3)
