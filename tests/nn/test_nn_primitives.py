"""CausalConv1d, HeadwiseLinear, the norms and the gated FFN against plain restatements."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from xlstm_torch.nn import CausalConv1d, GatedFeedForward, HeadwiseLinear, LayerNorm, MultiHeadNorm, RMSNorm, round_up
from xlstm_torch.nn.linear import headwise_linear_reference


def conv_by_loop(conv: CausalConv1d, x: torch.Tensor) -> torch.Tensor:
    """y_t = b + sum_j w[:, j] x_{t-K+1+j}, zeros before the start."""
    K = conv.kernel_size
    padded = F.pad(x, (0, 0, K - 1, 0))  # (B, K-1+S, D)
    return sum(padded[:, j:j + x.shape[1]] * conv.weight[:, j] for j in range(K)) + conv.bias


@pytest.mark.parametrize("K", [1, 2, 4])
def test_conv_matches_loop_pieces_and_steps(K):
    torch.manual_seed(0)
    conv = CausalConv1d(6, K).double()
    x = torch.randn(3, 11, 6, dtype=torch.float64)
    y, state = conv(x)
    torch.testing.assert_close(y, conv_by_loop(conv, x), rtol=1e-12, atol=1e-12)
    assert state.shape == (3, K - 1, 6)
    torch.testing.assert_close(state, x[:, x.shape[1] - (K - 1):], rtol=0, atol=0)

    y1, s = conv(x[:, :5])
    y2, s = conv(x[:, 5:], s)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-12, atol=1e-12)
    s, steps = None, []
    for t in range(x.shape[1]):
        y_t, s = conv(x[:, t:t + 1], s)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, 1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, state, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("K", [2, 4])
def test_conv_gradients_match_loop(K, dtype, tol):
    """The conv against the shifted-sum definition: output, input/weight/bias/state grads."""
    torch.manual_seed(0)
    conv = CausalConv1d(40, K).to(dtype)
    x = torch.randn(3, 33, 40, dtype=dtype, requires_grad=True)
    state = torch.randn(3, K - 1, 40, dtype=dtype, requires_grad=True)
    cotangent = torch.randn(3, 33, 40, dtype=dtype)
    leaves = [x, state, conv.weight, conv.bias]
    got, _ = conv(x, state)
    want = conv_by_loop(conv, torch.cat([state, x], 1))[:, K - 1:]  # the state is the inputs before x
    assert_close(got, want, tol, "y")
    for name, a, b in zip(("x", "state", "weight", "bias"), torch.autograd.grad(got, leaves, cotangent),
                          torch.autograd.grad(want, leaves, cotangent)):
        assert_close(a, b, tol, f"d{name}")


def test_conv_short_piece_keeps_older_inputs_in_state():
    # A piece shorter than K-1 must shift the buffer, not replace it.
    conv = CausalConv1d(2, 4).double()
    x = torch.randn(1, 5, 2, dtype=torch.float64)
    _, s = conv(x[:, :4])
    _, s = conv(x[:, 4:5], s)
    torch.testing.assert_close(s, x[:, 2:5], rtol=0, atol=0)


def test_headwise_linear_equals_dense_block_diagonal():
    torch.manual_seed(0)
    layer = HeadwiseLinear(12, 8, num_heads=4, bias=True).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    dense = torch.block_diag(*layer.weight)  # (8, 12)
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias, rtol=1e-12, atol=1e-12)
    assert layer.weight.shape == (4, 2, 3)


HEADWISE_SHAPES = {  # (in, out, NH): merged groups of several blocks, one group, no merging, in != out
    "512-in-128-blocks": (512, 512, 128),
    "24-to-36-in-6-blocks": (24, 36, 6),
    "12-in-3-blocks": (12, 12, 3),
    "256-in-4-blocks": (256, 256, 4),
    "40-to-20-in-10-blocks": (40, 20, 10),
}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", HEADWISE_SHAPES)
def test_headwise_linear_grouped_equals_reference(shape, dtype, tol):
    """The merged-group forward against the per-block definition: outputs and all gradients."""
    in_features, out_features, num_heads = HEADWISE_SHAPES[shape]
    torch.manual_seed(0)
    layer = HeadwiseLinear(in_features, out_features, num_heads, bias=True).to(dtype)
    x = torch.randn(3, 7, in_features, dtype=dtype, requires_grad=True)
    cotangent = torch.randn(3, 7, out_features, dtype=dtype)
    leaves = [x, layer.weight, layer.bias]
    got = layer(x)
    want = headwise_linear_reference(x, layer.weight, layer.bias)
    assert_close(got, want, tol, "output")
    for name, a, b in zip(("x", "weight", "bias"), torch.autograd.grad(got, leaves, cotangent),
                          torch.autograd.grad(want, leaves, cotangent)):
        assert_close(a, b, tol, f"d{name}")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", HEADWISE_SHAPES)
def test_headwise_linear_without_autograd_equals_reference(shape, dtype, tol):
    """Inference (nothing recorded: the product into strided views of y) against the per-block definition, on an
    input that is a column slice of a wider tensor (as x_in is of proj_up's output), in forward and step."""
    in_features, out_features, num_heads = HEADWISE_SHAPES[shape]
    torch.manual_seed(0)
    layer = HeadwiseLinear(in_features, out_features, num_heads, bias=True).to(dtype)
    x = torch.randn(3, 7, 2 * in_features, dtype=dtype)[..., in_features:]  # rows 2·in apart
    want = headwise_linear_reference(x, layer.weight, layer.bias)
    with torch.no_grad():
        got, rows = layer(x), layer.step(x.reshape(21, in_features))
    assert_close(got, want, tol, "forward")
    assert_close(rows, want.reshape(21, out_features), tol, "step")


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_headwise_linear_under_autocast(grad):
    """Under bfloat16 autocast the products run in bfloat16 (as autocast's bmm does) and the gradients come back
    in the parameters' and input's own dtypes: within bfloat16's precision of the float32 layer."""
    torch.manual_seed(0)
    layer = HeadwiseLinear(64, 64, 16)  # 4 x 4 blocks merged into groups; no bias, as in the layers (a float32
    # bias added outside autocast's casts would promote the output back to float32)
    x = torch.randn(2, 5, 64, requires_grad=grad)
    want = layer(x)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.bfloat16
    assert_close(got.float(), want, 2 ** -7, "output")
    if grad:
        cot = torch.randn(want.shape)
        for name, a, b in zip(("x", "weight"), torch.autograd.grad(got, [x, layer.weight], cot),
                              torch.autograd.grad(want, [x, layer.weight], cot)):
            assert a.dtype == torch.float32, name
            assert_close(a, b, 2 ** -6, f"d{name}")


def test_headwise_linear_under_torch_func():
    """torch.func transforms (vmap, jvp) of the inference path: the products without a strided out=."""
    torch.manual_seed(0)
    layer = HeadwiseLinear(24, 36, 6).double()
    x, t = torch.randn(4, 3, 24, dtype=torch.float64), torch.randn(4, 3, 24, dtype=torch.float64)
    ref = lambda z: headwise_linear_reference(z, layer.weight, layer.bias)  # noqa: E731
    with torch.no_grad():
        assert_close(torch.vmap(layer)(x), ref(x), 1e-12, "vmap")
        out, tangent = torch.func.jvp(layer, (x,), (t,))
        assert_close(out, ref(x), 1e-12, "jvp primal")
        assert_close(tangent, headwise_linear_reference(t, layer.weight, None), 1e-12, "jvp tangent")


def test_headwise_linear_groups():
    assert HeadwiseLinear(512, 512, 128).heads_per_group == 8  # 4 x 4 blocks merged into 32 x 32 groups
    assert HeadwiseLinear(256, 256, 4).heads_per_group == 1  # 64 x 64 blocks stay as they are
    assert HeadwiseLinear(24, 36, 6).heads_per_group == 3  # widest merged side 18 <= 32


def test_headwise_linear_rejects_widths_not_divisible_by_heads():
    with pytest.raises(ValueError, match="in_features"):
        HeadwiseLinear(10, 8, num_heads=4)
    with pytest.raises(ValueError, match="out_features"):
        HeadwiseLinear(8, 10, num_heads=4)


def test_multihead_norm_equals_group_norm_without_bias():
    torch.manual_seed(0)
    norm = MultiHeadNorm(num_heads=3, head_dim=5, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 7, 3, 5, dtype=torch.float64) * 3 + 1
    expected = F.group_norm(x.reshape(14, 15), 3, norm.weight, None, eps=1e-5).reshape(2, 7, 3, 5)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="num_heads, head_dim"):
        norm(torch.randn(2, 7, 15, dtype=torch.float64))


def test_layer_norm_and_rms_norm_match_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(4, 9, 16, dtype=torch.float64) * 2 + 0.5
    ln, rms = LayerNorm(16, eps=1e-5).double(), RMSNorm(16, eps=1e-6).double()
    with torch.no_grad():
        ln.weight.normal_()
        rms.weight.normal_()
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mu) / torch.sqrt(var + 1e-5) * ln.weight, rtol=1e-12, atol=1e-12)
    ms = (x * x).mean(-1, keepdim=True)
    torch.testing.assert_close(rms(x), x / torch.sqrt(ms + 1e-6) * rms.weight, rtol=1e-12, atol=1e-12)
    assert not any("bias" in name for name, _ in ln.named_parameters())


@pytest.mark.parametrize("norm", [LayerNorm(32), RMSNorm(32)], ids=["layer_norm", "rms_norm"])
def test_norms_keep_bfloat16_and_reduce_in_float32(norm):
    x = torch.randn(3, 32) * 100
    y = norm.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), norm.float()(x.to(torch.bfloat16).float()), rtol=1e-2, atol=1e-2)


def test_round_up_of_decimal_factors():
    assert round_up(4 / 3 * 768, 64) == 1024  # 1023.9999999999999 in floating point
    assert round_up(1.3 * 768, 64) == 1024
    assert round_up(2.667 * 4096, 64) == 10944  # the xLSTM 7B FFN width
    assert round_up(2.0 * 768, 64) == 1536


@pytest.mark.parametrize("activation,act", [("gelu", F.gelu), ("silu", F.silu)])
def test_gated_feed_forward_formula(activation, act):
    torch.manual_seed(0)
    ffn = GatedFeedForward(16, 4 / 3, activation, round_up_to_multiple_of=8).double()
    assert ffn.hidden_dim == 24  # 21.33 rounded up to a multiple of 8
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    gate, up, down = ffn.proj_up_gate.weight, ffn.proj_up.weight, ffn.proj_down.weight
    torch.testing.assert_close(ffn(x), (act(x @ gate.T) * (x @ up.T)) @ down.T, rtol=1e-12, atol=1e-12)


def test_gated_feed_forward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        GatedFeedForward(16, 2.0, "relu6")
