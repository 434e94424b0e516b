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


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; for a plain ``nn.Linear`` the functional call, without the module-call overhead.
    Any other module (a wrapper, a quantised or adapted projection) runs its own forward."""
    if type(module) is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x)


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
