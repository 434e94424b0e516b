"""The memory-lean training functions (nn/lean.py) against their plain compositions: outputs and every
gradient, gradcheck in float64, and that they really keep less for the backward."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from xlstm_torch.nn import CausalConv1d, MLSTMLayer, SLSTMLayer
from xlstm_torch.nn import lean
from xlstm_torch.nn.lean import CausalConvFunction, _conv_window, causal_conv_silu, mlstm_output_gate
from xlstm_torch.nn.linear import HeadwiseLinearFunction, headwise_linear_reference


def output_gate_reference(h, weight, x_conv, skip, z, eps):
    """The layer's plain composition: MultiHeadNorm (as its forward computes it), the skip, then the SiLU gate."""
    B, S, NH, DH = h.shape
    hn = F.layer_norm(h, (DH,), None, None, eps) * weight.view(NH, DH)
    return (hn.reshape(B, S, -1) + skip * x_conv) * F.silu(z)


def output_gate_inputs(dtype, B=2, S=7, NH=3, DH=5, transposed_h=True):
    g = torch.Generator().manual_seed(0)
    # h as the cell returns it: a (B, NH, S, DH) tensor transposed, not contiguous
    h = torch.randn(B, NH, S, DH, generator=g, dtype=dtype).transpose(1, 2) if transposed_h else \
        torch.randn(B, S, NH, DH, generator=g, dtype=dtype)
    weight = 1 + 0.3 * torch.randn(NH * DH, generator=g, dtype=dtype)
    x_conv = torch.randn(B, S, NH * DH, generator=g, dtype=dtype)
    skip = 1 + 0.3 * torch.randn(NH * DH, generator=g, dtype=dtype)
    z = torch.randn(B, S, 2 * NH * DH, generator=g, dtype=dtype)[..., NH * DH:]  # a view, like proj_up's chunk
    return [t.detach().requires_grad_() for t in (h, weight, x_conv, skip, z)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("transposed_h", [True, False], ids=["strided-h", "contiguous-h"])
def test_output_gate_matches_composition(dtype, tol, transposed_h):
    inputs = output_gate_inputs(dtype, transposed_h=transposed_h)
    got = mlstm_output_gate(*inputs, 1e-5)
    want = output_gate_reference(*inputs, 1e-5)
    assert_close(got, want, tol, "y")
    cot = torch.randn_like(want)
    names = ["h", "weight", "x_conv", "skip", "z"]
    for n, a, b in zip(names, torch.autograd.grad(got, inputs, cot), torch.autograd.grad(want, inputs, cot)):
        assert_close(a, b, tol, f"d{n}")


def test_output_gate_gradcheck():
    inputs = output_gate_inputs(torch.float64, B=1, S=3, NH=2, DH=3)
    assert torch.autograd.gradcheck(lambda *t: mlstm_output_gate(*t, 1e-5), inputs)


def test_output_gate_partial_requires_grad():
    """Inputs that need no gradient get None, and the others are still right."""
    h, weight, x_conv, skip, z = output_gate_inputs(torch.float64)
    weight, skip = weight.detach(), skip.detach()
    got = torch.autograd.grad(mlstm_output_gate(h, weight, x_conv, skip, z, 1e-5).sum(), [h, x_conv, z])
    want = torch.autograd.grad(output_gate_reference(h, weight, x_conv, skip, z, 1e-5).sum(), [h, x_conv, z])
    for a, b in zip(got, want):
        assert_close(a, b, 1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_headwise_function_matches_einsum(dtype, tol):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 12, generator=g, dtype=dtype, requires_grad=True)  # (..., G·I), G 4, I 3
    w = torch.randn(4, 2, 3, generator=g, dtype=dtype, requires_grad=True)  # O 2 != I 3
    got, want = HeadwiseLinearFunction.apply(x, w), headwise_linear_reference(x, w, None)
    assert_close(got, want, tol, "y")
    cot = torch.randn_like(want)
    for n, a, b in zip("xw", torch.autograd.grad(got, [x, w], cot), torch.autograd.grad(want, [x, w], cot)):
        assert_close(a, b, tol, f"d{n}")


def test_headwise_function_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(HeadwiseLinearFunction.apply, (x, w))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("S,K", [(9, 4), (2, 4), (5, 1)], ids=["S9-K4", "S2<K-1", "K1"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_conv_silu_matches_composition(dtype, tol, S, K, bias):
    """``forward_silu`` in training (the lean function) against SiLU of ``forward``: output, new state and the
    gradients of x, the incoming state and the weights."""
    torch.manual_seed(0)
    conv = CausalConv1d(6, K, bias=bias).to(dtype)
    x = torch.randn(3, S, 6, dtype=dtype, requires_grad=True)
    state = torch.randn(3, K - 1, 6, dtype=dtype, requires_grad=True)
    y, new_state = conv.forward_silu(x, state)
    y_ref, state_ref = conv(x, state)
    y_ref = F.silu(y_ref)
    assert_close(y, y_ref, tol, "y")
    assert_close(new_state, state_ref, 0.0, "state")
    params = [x, state, *conv.parameters()]
    cot = torch.randn_like(y)
    for n, a, b in zip(["x", "state", "weight", "bias"], torch.autograd.grad(y, params, cot),
                       torch.autograd.grad(y_ref, params, cot)):
        assert_close(a, b, tol, f"d{n}")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("K", [1, 2, 4])
def test_conv_backward_matches_conv1d(dtype, tol, K):
    """``CausalConvFunction``'s backward (on a CPU in float32/float64: the window's gradient as a padded convolution
    with the taps reversed) against autograd through ``_conv_window`` (conv2d's own backward)."""
    g = torch.Generator().manual_seed(4)
    window = torch.randn(3, K - 1 + 10, 5, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(5, K, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=dtype, requires_grad=True)
    got, want = CausalConvFunction.apply(window, w, b), _conv_window(window, w, b)
    assert_close(got, want, 0.0, "y")  # the same forward
    cot = torch.randn(want.shape, generator=g, dtype=dtype)
    for n, a, c in zip(["window", "weight", "bias"], torch.autograd.grad(got, [window, w, b], cot),
                       torch.autograd.grad(want, [window, w, b], cot)):
        assert_close(a, c, tol, f"d{n}")
    window64 = window.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(CausalConvFunction.apply, (window64, w.detach().double().requires_grad_(), None))


@pytest.mark.parametrize("pad", [0, 3])
def test_conv_channels_last_and_channels_first_paths_agree(monkeypatch, pad):
    """``_conv_window``'s CPU form (channels-last 2-d convolution) against its 1-d form (taken on other devices,
    forced here): output and the gradients of the window, weight and bias, float64, through the lean backward
    and through autograd."""
    g = torch.Generator().manual_seed(8)
    window = torch.randn(3, 3 + 11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)

    def run():
        y_plain = _conv_window(window, w, b, pad)
        cot = torch.randn(y_plain.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        grads = torch.autograd.grad(y_plain, [window, w, b], cot)
        if pad == 0:  # the lean function's own backward (d_window as a padded convolution on a CPU)
            grads += torch.autograd.grad(CausalConvFunction.apply(window, w, b), [window, w, b], cot)
        return y_plain, grads

    y_last, grads_last = run()
    monkeypatch.setattr(lean, "_channels_last_conv", lambda x: False)
    y_first, grads_first = run()
    assert y_last.shape == (3, 11 + 2 * pad, 5) and y_last.is_contiguous()
    assert_close(y_last, y_first, 1e-12, "y")
    assert len(grads_last) == len(grads_first) == (6 if pad == 0 else 3)
    for n, a, c in zip(["window", "weight", "bias"] * 2, grads_last, grads_first):
        assert_close(a, c, 1e-12, f"d{n}")


def test_conv_backward_bfloat16_within_its_precision():
    """bfloat16: the shift-and-add backward against the float64 gradient, as close as conv1d's own."""
    g = torch.Generator().manual_seed(6)
    window, w = torch.randn(2, 3 + 16, 8, generator=g), torch.randn(8, 4, generator=g)
    cot = torch.randn(2, 16, 8, generator=g)
    w64 = window.double().requires_grad_()
    exact = torch.autograd.grad(_conv_window(w64, w.double(), None), w64, cot.double())[0]
    wb = window.bfloat16().requires_grad_()
    got = torch.autograd.grad(CausalConvFunction.apply(wb, w.bfloat16(), None), wb, cot.bfloat16())[0]
    assert got.dtype == torch.bfloat16
    assert_close(got, exact, 2 ** -7, "d_window")  # bfloat16's 8 significant bits


def test_conv_silu_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    state = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    w, b = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(causal_conv_silu, [t.requires_grad_() for t in (x, state, w, b)])


def test_conv_silu_without_state_and_packed():
    """No state: zeros in front (the lean path); packed rows (cu_seqlens) take the plain composition."""
    torch.manual_seed(0)
    conv = CausalConv1d(4, 3)
    x = torch.randn(1, 7, 4, requires_grad=True)
    y, _ = conv.forward_silu(x)
    assert_close(y, F.silu(conv(x)[0]), 1e-6)
    cu = torch.tensor([0, 3, 7])
    y_packed, state = conv.forward_silu(x, cu_seqlens=cu)
    y_ref, state_ref = conv(x, cu_seqlens=cu)
    assert_close(y_packed, F.silu(y_ref), 0.0)
    assert_close(state, state_ref, 0.0)


def _layer_step(layer, x):
    """Output and every gradient of one forward/backward, and the bytes of the distinct storages that
    autograd saved for the backward."""
    storages, alive = {}, []

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        alive.append(t)  # held until the count is taken: a freed storage's address can be reused by another
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = layer(x, return_state=False)
    cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))  # not ones: their gradients cancel
    grads = torch.autograd.grad(y, [x, *layer.parameters()], cotangent)
    return y, grads, sum(storages.values())


@pytest.mark.parametrize("kind,fewer", [("mlstm", 5), ("slstm", 2)])
def test_layer_lean_equals_plain_and_saves_less(monkeypatch, kind, fewer):
    """The layers' training path (lean functions) against the same layer with them switched off: equal
    outputs and gradients, and at least ``fewer`` (B, S, width) tensors fewer kept for the backward
    (mLSTM: einsum's head-major copies of q/k/v's inputs, the norm's output, the gate's SiLU and sum,
    the conv's window and pre-activation; sLSTM: the conv's window and pre-activation), less the small tensors
    the lean functions keep instead (per-row statistics, the (B, K-1, width) conv state: under 1/8 of one tensor
    here). Measured: 4.98 and 1.98 tensors. (Before the conv ran channels-last the plain path also kept
    transposed copies, 3 more for the mLSTM and 1 more for the sLSTM.)"""
    torch.manual_seed(0)
    if kind == "mlstm":
        layer = MLSTMLayer(32, num_heads=2, chunk_size=8)  # Di 64, q/k/v blocks of 4 merged into groups
        width = layer.inner_dim
    else:
        layer, width = SLSTMLayer(32, num_heads=2), 32
    x = torch.randn(2, 24, 32, requires_grad=True)
    y_lean, g_lean, saved_lean = _layer_step(layer, x)
    for module in ("xlstm_torch.nn.linear", "xlstm_torch.nn.mlstm", "xlstm_torch.nn.conv"):
        monkeypatch.setattr(f"{module}.needs_grad", lambda *t: False)
    # the head-wise products as their plain composition, the einsum (its twin)
    monkeypatch.setattr("xlstm_torch.nn.linear.grouped_products", lambda x, w: headwise_linear_reference(x, w, None))
    y_plain, g_plain, saved_plain = _layer_step(layer, x)
    assert_close(y_lean, y_plain, 1e-6, "y")
    names = ["x", *(n for n, _ in layer.named_parameters())]
    for n, a, b in zip(names, g_lean, g_plain):
        assert_close(a, b, 1e-5, f"d{n}")
    one = 2 * 24 * width * 4  # bytes of one (B, S, width) float32 tensor
    assert saved_plain - saved_lean >= fewer * one - one // 8, (saved_plain, saved_lean)


def test_needs_grad():
    a = torch.zeros(2, requires_grad=True)
    assert lean.needs_grad(None, a) and not lean.needs_grad(torch.zeros(2), None)
    with torch.no_grad():
        assert not lean.needs_grad(a)
