"""Memory-lean autograd functions for training the xLSTM blocks (xLSTM paper Sec. 2.4, its block figures).

In a training step the activations that autograd keeps for the backward, not the weights, set the peak memory.
Composed from separate torch ops, the mLSTM block keeps several (B, S, Di) tensors that exist only because one
op's output is the next op's saved input: the head-major copies that ``einsum`` makes of the q/k/v projections'
inputs, the SiLU of z, the sum ``h + skip ⊙ x_conv``, the multi-head norm's output, the conv's padded window and
pre-activation (the sLSTM block has the conv too). The functions here compute the same values and keep only
tensors that stay alive anyway (the layer's inputs and views of them) plus per-row statistics; the backward
recomputes the cheap pointwise parts. Each has its reference twin, the plain composition, in the layer code
(``MultiHeadNorm`` then the output gate; ``CausalConv1d.forward`` then SiLU; the head-wise q/k/v projections'
function lives beside its twin as ``linear.HeadwiseLinearFunction``), and tests/nn/test_nn_lean.py holds them
against it for outputs and every gradient. ``CausalConvFunction`` is the
conv alone with a faster backward than autograd's (``_conv_window_backward``), used by the plain path too.

The layers take these paths only when autograd records (``needs_grad``); inference runs the plain ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on ``tensors``: grad mode on and one of them requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class MLSTMOutputGateFunction(torch.autograd.Function):
    """The mLSTM block's output: y = (LayerNorm_per_head(h) ⊙ w + skip ⊙ x_conv) ⊙ SiLU(z).

    h: (B, S, NH, DH) cell output; w: (NH·DH,) norm weight; x_conv, z: (B, S, NH·DH); skip: (NH·DH,).
    Returns y (B, S, NH·DH). Saves h, x_conv, z (alive anyway: h is the cell's output, x_conv feeds
    the skip, z is a view of proj_up's output), the weights, and the per-head mean and 1/std; the
    backward recomputes the normalised h, the sum and SiLU(z). Float32/float64 inputs of one dtype.
    """

    @staticmethod
    def forward(ctx, h, weight, x_conv, skip, z, eps: float):
        NH, DH = h.shape[-2:]
        hhat, mean, rstd = torch.native_layer_norm(h, (DH,), None, None, eps)  # (B, S, NH, DH), (B, S, NH, 1) x2
        hn = (hhat * weight.view(NH, DH)).flatten(-2)  # (B, S, Di)
        ctx.save_for_backward(h, weight, x_conv, skip, z, mean, rstd)
        return torch.addcmul(hn, skip, x_conv).mul_(F.silu(z))

    @staticmethod
    def backward(ctx, grad):
        h, weight, x_conv, skip, z, mean, rstd = ctx.saved_tensors
        NH, DH = h.shape[-2:]
        # One copy of the cell's (strided) output up front: every later pass, the norm's backward
        # included, then runs over memory in the (B, S, Di) order of the other operands.
        h = h.contiguous()
        hhat = torch.addcmul(-mean * rstd, h, rstd).flatten(-2)  # (B, S, Di) the forward's normalised h
        d_sum = grad * F.silu(z)  # dy/d(hn + skip x_conv) = SiLU(z)
        total = torch.addcmul(skip * x_conv, hhat, weight)  # hn + skip x_conv
        dz = torch.ops.aten.silu_backward(total.mul_(grad), z)  # (B, S, Di): grad · total · SiLU'(z)
        del total
        Di = NH * DH
        dskip = (d_sum * x_conv).reshape(-1, Di).sum(0) if ctx.needs_input_grad[3] else None
        dx_conv = d_sum * skip if ctx.needs_input_grad[2] else None
        dweight = (d_sum * hhat).reshape(-1, Di).sum(0) if ctx.needs_input_grad[1] else None
        dh = None
        if ctx.needs_input_grad[0]:
            dh = torch.ops.aten.native_layer_norm_backward(d_sum.mul_(weight).unflatten(-1, (NH, DH)), h, (DH,), mean,
                                                           rstd, None, None, (True, False, False))[0]
        return dh, dweight, dx_conv, dskip, dz, None


def mlstm_output_gate(h: torch.Tensor, weight: torch.Tensor, x_conv: torch.Tensor, skip: torch.Tensor,
                      z: torch.Tensor, eps: float) -> torch.Tensor:
    """(LayerNorm_per_head(h) ⊙ weight + skip ⊙ x_conv) ⊙ SiLU(z), saving only what stays alive (see
    ``MLSTMOutputGateFunction``). h: (B, S, NH, DH); the others (B, S, NH·DH) or (NH·DH,) -> (B, S, NH·DH)."""
    return MLSTMOutputGateFunction.apply(h, weight, x_conv, skip, z, eps)


def _channels_last_conv(x: torch.Tensor) -> bool:
    """Whether the depthwise conv over ``x`` runs as the channels-last 2-d convolution (CPU tensors; see
    ``_conv_window``)."""
    return x.device.type == "cpu"


def _conv_window(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: int = 0) -> torch.Tensor:
    """Depthwise conv over a window: (B, K-1+S, D) inputs, weight (D, K) -> (B, S, D), one output per full
    window of K. ``pad`` zeros on both sides of the window first (without a copy): then (B, S + 2 pad, D) out.

    On a CPU the window is handed to a 2-d convolution as a (B, D, 1, K-1+S) channels-last view of its own
    memory, and the output comes back channels-last, i.e. already in the (B, S, D) order: no copy either
    way. The 1-d call on the transposed window (channels-first) copies the input in, runs a slower kernel
    and leaves a (B, D, S) output that the layers copy back: at B 8, S 512, D 512, K 4 about 19 ms against
    0.5 ms here (2 threads). Elsewhere (unmeasured on GPUs) the 1-d call stays.
    """
    D = weight.shape[0]
    if weight.dtype != window.dtype:  # autocast: float32 weights meet a lower-precision window (as conv1d casts them)
        weight, bias = weight.to(window.dtype), None if bias is None else bias.to(window.dtype)
    if _channels_last_conv(window):
        y = F.conv2d(window.transpose(1, 2)[:, :, None, :], weight[:, None, None, :], bias, padding=(0, pad),
                     groups=D)  # (B, D, 1, S)
        return y[:, :, 0, :].transpose(1, 2)  # (B, S, D), contiguous when the window's rows are
    y = F.conv1d(window.transpose(1, 2), weight[:, None, :], bias, padding=pad, groups=D)  # (B, D, S)
    return y.transpose(1, 2)


def _conv_window_backward(d_out: torch.Tensor, window: torch.Tensor, weight: torch.Tensor, needs: tuple[bool, ...]):
    """Gradients of ``_conv_window`` for d_out (B, S, D): (d_window, d_weight, d_bias), None where not needed.

    d_weight and d_bias as K products summed over (B, S): on a CPU torch's depthwise ``convolution_backward``
    took 32 ms at B 8, S 512, D 512, K 4 (channels-first; 6 ms channels-last), these ~4 ms. d_window as a
    convolution on a CPU in float32/float64, else as K shifted multiply-adds.
    """
    K, S = weight.shape[1], d_out.shape[1]
    d_window = d_weight = d_bias = None
    if needs[0] and _channels_last_conv(d_out) and d_out.dtype in (torch.float32, torch.float64):
        # d_window[u] = Σ_j w_j d_out[u - j]: the same channels-last convolution as ``_conv_window``, over d_out
        # with K-1 zeros on each side and the taps reversed (0.5 ms against ~5 ms for the K multiply-adds, at
        # B 8, S 512, D 512, K 4)
        d_window = _conv_window(d_out, weight.flip(1), None, pad=K - 1)  # (B, K-1+S, D)
    elif needs[0]:
        # K terms per element: summed in float32 for float16/bfloat16, rounded once (as conv1d's backward does)
        acc = torch.float32 if window.dtype in (torch.float16, torch.bfloat16) else window.dtype
        d_window = window.new_zeros(window.shape, dtype=acc)  # (B, K-1+S, D)
        for j in range(K):  # output t reads window t + j with tap j
            d_window[:, j:j + S].addcmul_(d_out, weight[:, j])
        d_window = d_window.to(window.dtype)
    if needs[1]:
        d_weight = torch.stack([(d_out * window[:, j:j + S]).sum((0, 1)) for j in range(K)], dim=1)  # (D, K)
    if needs[2]:
        d_bias = d_out.sum((0, 1))
    return d_window, d_weight, d_bias


class CausalConvFunction(torch.autograd.Function):
    """``_conv_window`` with the backward of ``_conv_window_backward``: the plain conv's saved tensors (the
    window), a faster backward. window (B, K-1+S, D), weight (D, K), bias (D,) or None -> (B, S, D)."""

    @staticmethod
    def forward(ctx, window, weight, bias):
        ctx.save_for_backward(window, weight)
        ctx.has_bias = bias is not None
        return _conv_window(window, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        window, weight = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        return _conv_window_backward(grad, window, weight, needs)


class CausalConvSiLUFunction(torch.autograd.Function):
    """y = SiLU(causal depthwise conv of x with K taps), the inputs before x given by ``state``.

    x: (B, S, D); state: (B, K-1, D); weight: (D, K); bias: (D,) or None -> y (B, S, D). Saves x, state and
    the weights only: the plain composition keeps the window (a copy of x behind the state) for the
    convolution and the convolution's output for the SiLU; the backward rebuilds both (a copy and a
    convolution).
    """

    @staticmethod
    def forward(ctx, x, state, weight, bias):
        ctx.save_for_backward(x, state, weight, bias)
        # On a CPU the conv's output is already in x's (B, S, D) order (``_conv_window``) and contiguous() is
        # free; elsewhere conv1d leaves it (B, D, S) in memory and one blocked copy reorders it, so that the
        # SiLU, the q/k projections and the output gate downstream read contiguous rows.
        pre = _conv_window(torch.cat([state, x], dim=1), weight, bias).contiguous()  # (B, S, D)
        return F.silu(pre, inplace=True)

    @staticmethod
    def backward(ctx, grad):
        x, state, weight, bias = ctx.saved_tensors
        window = torch.cat([state, x], dim=1)  # (B, K-1+S, D)
        pre = _conv_window(window, weight, bias).contiguous()  # (B, S, D), as in the forward
        d_pre = torch.ops.aten.silu_backward(grad, pre)  # grad · SiLU'(pre)
        needs = (ctx.needs_input_grad[0] or ctx.needs_input_grad[1], ctx.needs_input_grad[2],
                 bias is not None and ctx.needs_input_grad[3])
        d_window, d_weight, d_bias = _conv_window_backward(d_pre, window, weight, needs)
        K1 = state.shape[1]
        dstate = d_window[:, :K1] if ctx.needs_input_grad[1] else None
        dx = d_window[:, K1:] if ctx.needs_input_grad[0] else None
        return dx, dstate, d_weight, d_bias


def causal_conv(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The depthwise causal conv over a window (B, K-1+S, D) -> (B, S, D); in training with the faster
    backward of ``CausalConvFunction``."""
    if needs_grad(window, weight, bias):
        return CausalConvFunction.apply(window, weight, bias)
    return _conv_window(window, weight, bias)


def causal_conv_silu(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """SiLU(causal depthwise conv), saving only x, state and the weights (``CausalConvSiLUFunction``).
    x (B, S, D), state (B, K-1, D) -> (B, S, D)."""
    return CausalConvSiLUFunction.apply(x, state, weight, bias)
