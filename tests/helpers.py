"""Shared test helpers: a tolerance check that fails on NaN/Inf and compares relative error."""

from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str = "tensor", atol: float = 0.0) -> None:
    """max|actual - expected| <= rtol * max|expected| + atol; NaN or Inf anywhere fails.

    ``atol`` is for tensors whose exact value is (near) zero, e.g. a gate gradient that vanishes
    analytically but is computed as a difference of equal terms: pass rtol times the scale of the
    quantities that cancel.
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    assert torch.isfinite(expected).all(), f"{name}: non-finite values in the expected tensor"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= rtol * scale + atol + 1e-300, f"{name}: max abs error {err:.3e} > {rtol:.1e} x max|expected| {scale:.3e}"


def cu_seqlens_of(lengths) -> torch.Tensor:
    """[0, l_1, l_1 + l_2, ..., S] for documents of these lengths (int64)."""
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])


def document_spans(lengths) -> list[tuple[int, int]]:
    bounds = cu_seqlens_of(lengths).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def select_rows(state, d: int):
    """Row d (kept as a batch of one) of every tensor in a nested state; None stays None."""
    return torch.utils._pytree.tree_map(lambda t: None if t is None else t[d : d + 1], state)


def cat_rows(states):
    """Like-structured nested states joined along dim 0 of every tensor."""
    leaves = [torch.utils._pytree.tree_flatten(s)[0] for s in states]
    spec = torch.utils._pytree.tree_flatten(states[0])[1]
    return torch.utils._pytree.tree_unflatten([None if xs[0] is None else torch.cat(xs) for xs in zip(*leaves)], spec)
