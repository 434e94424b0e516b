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
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= rtol * scale + atol + 1e-300, f"{name}: max abs error {err:.3e} > {rtol:.1e} x max|expected| {scale:.3e}"
