"""Decode-time helpers: the one-token step paths of the layers (xLSTM 7B, inference experiments:
decoding is a recurrent step of O(1) cost per token).

At batch 1 a decoding step is a few hundred tiny products and pointwise ops, and on a CPU each
costs more in dispatch (module calls, argument checks, views, allocations) than in arithmetic.
The layers' step paths therefore call the functional ops directly on (B, D) rows and, where
several projections read the same input, run them as one product. The concatenated weights are
kept between calls by ``FusedWeights`` and rebuilt when any parameter changes. Under ``torch.compile``
the cached tensors are graph inputs inside ``weights_fixed()`` (how ``generate(..., compile=True)`` runs
its steps) and are rebuilt inside the graph otherwise. Every step path is
taken only when nothing needs a gradient (``decoding``); with gradients the layers run their
sequence paths, which are the step paths' reference twins (tests/nn/test_nn_decode.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

FUSE_MAX_BYTES = 16 * 2**20
"""Largest concatenated weight kept: above it a product costs far more than its dispatch, so
fusing gains nothing and a copy of that size is not worth holding (an xLSTM 7B layer's would be
hundreds of MiB)."""


_weights_fixed = False
"""True inside ``weights_fixed()``: compiled steps take the cached tensors as graph inputs (``WeightCache``)."""


@contextlib.contextmanager
def weights_fixed():
    """Declare that no parameter changes inside the block and that every ``WeightCache`` the steps read was
    checked eagerly since the last change. Compiled one-token steps then read the cached tensors (graph
    inputs, one per cache) instead of rebuilding them inside the graph at every token; ``torch.compile``
    guards on this flag, so a graph traced inside the block is used only inside it.
    ``generation.generate(..., compile=True)`` runs its compiled steps this way (generation.py)."""
    global _weights_fixed
    before, _weights_fixed = _weights_fixed, True
    try:
        yield
    finally:
        _weights_fixed = before


def decoding(x: torch.Tensor, module: torch.nn.Module) -> bool:
    """The step paths' condition: ``module`` is in eval mode (no dropout) and neither ``x`` nor any of
    its parameters needs a gradient."""
    if module.training:
        return False
    if not torch.is_grad_enabled():
        return True
    return not x.requires_grad and not any(p.requires_grad for p in module.parameters())


def linear(module: nn.Module, x: torch.Tensor, *, row_form: bool = True) -> torch.Tensor:
    """``module(x)``; for a plain ``nn.Linear`` the functional call (``row_linear``, or ``F.linear`` with
    ``row_form=False``), without the module-call overhead. Any other module (a wrapper, a quantised or
    adapted projection) runs its own forward."""
    if type(module) is nn.Linear:
        return (row_linear if row_form else F.linear)(x, module.weight, module.bias)
    return module(x)


ROW_PRODUCT_MAX_ROWS = 4
"""Most rows for which a compiled step on a CPU takes ``row_linear``'s reduction form (measured: 3x faster
than the product at 1 row, 1.4x at 2 and 4, even at 8; benchmarks/RESULTS.md)."""


def row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for the few rows of a decoding step: x (..., I), weight (O, I) -> (..., O).

    A step's products have one row per sequence, so they are bound by reading the weight, not by arithmetic.
    Traced by ``torch.compile`` on a CPU, with at most ``ROW_PRODUCT_MAX_ROWS`` rows, they are written as a
    broadcast product summed over the input dim: inductor emits that as one vectorised loop that streams the
    weight once, at up to twice the rate of the library product it would call for a one-row matrix product
    (90 against 34-58 GB/s on one core here), and with nothing to dispatch. Equal up to the summation order;
    eager calls and larger batches run ``F.linear``.

    Inductor inlines a pointwise producer of x into the loop, so it is recomputed once per output; it keeps x
    in a buffer first only when that producer has an exp, log, sigmoid or tanh. An exact GELU (an erf) has
    none: callers whose x is a costly product of that kind pass it to ``F.linear`` instead (the feed-forward's
    down projection, ``linear(..., row_form=False)``: recomputed, it made xLSTM[1:1]'s step 1.15x slower).
    """
    if (torch.compiler.is_compiling() and x.device.type == "cpu"
            and x.numel() <= ROW_PRODUCT_MAX_ROWS * x.shape[-1]):
        y = (x.unsqueeze(-2) * weight).sum(-1)  # (..., O, I) -> (..., O), never materialised once compiled
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class WeightCache:
    """A tensor derived from parameters (a concatenation, a re-laid-out copy), kept between calls.

    ``get(params, build)`` returns ``build()``, built once and reused while every parameter is the
    same tensor, at the same storage, with the same version counter (any in-place change, e.g. an
    optimiser step or ``load_state_dict``, bumps it; ``.to()`` gives new storage). ``build`` runs
    without autograd: for no-grad use only. Inference tensors (made under ``torch.inference_mode``)
    have no version counter: for them ``build`` runs on every call.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value = None

    def get(self, params, build):
        if torch.compiler.is_compiling():
            if _weights_fixed and self._value is not None:
                return self._value  # checked eagerly since the last change (``weights_fixed``): a graph input
        if torch.compiler.is_compiling() or any(p.is_inference() for p in params):
            with torch.no_grad():
                return build()  # traced (rebuilt at every call) or from inference tensors (no version to check)
        key = tuple((p, p.data_ptr(), p._version) for p in params)
        cached = self._key
        if cached is None or len(cached) != len(key) or any(
                a[0] is not b[0] or a[1:] != b[1:] for a, b in zip(cached, key)):
            with torch.no_grad():
                self._value = build()
            self._key = key
        return self._value

    def clear(self) -> None:
        """Drop the cached tensor (it is rebuilt on the next ``get``)."""
        self._key = self._value = None

    def __deepcopy__(self, memo) -> "WeightCache":
        return type(self)()  # a copied module gets its own cache, built from its own parameters

    def __getstate__(self) -> dict:
        return {}  # a pickled module carries no derived tensors: they are rebuilt on first use

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class FusedWeights(WeightCache):
    """The weights and biases of several linear maps of one input, concatenated along the output dim.

    ``get(linears)`` (modules with ``weight`` (out_j, in) and ``bias`` (out_j,) or None) returns
    (weight (Σ out_j, in), bias (Σ out_j,) or None), a missing bias counted as zeros, cached as in
    ``WeightCache``. Returns None when the weight would exceed ``FUSE_MAX_BYTES``; the caller then
    runs the maps one by one.
    """

    def get(self, linears) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if any(type(m) is not nn.Linear for m in linears):
            return None  # a module with a forward of its own is run as itself
        weights = [m.weight for m in linears]
        if sum(w.numel() * w.element_size() for w in weights) > FUSE_MAX_BYTES:
            return None
        params = weights + [m.bias for m in linears if m.bias is not None]
        return super().get(params, lambda: _concatenate(linears))


def _concatenate(linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([m.weight for m in linears])  # (Σ out_j, in)
    if all(m.bias is None for m in linears):
        return weight, None
    bias = torch.cat([m.weight.new_zeros(m.weight.shape[0]) if m.bias is None else m.bias for m in linears])
    return weight, bias
