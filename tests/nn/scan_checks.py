"""Comparison helpers shared by the scan tests (CPU backends and Triton kernels)."""

from __future__ import annotations

import torch


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """max|actual - expected| <= tol · (1 + max|expected|), with the numbers in the message."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    err = (actual.to(expected.dtype) - expected).abs().max().item()
    scale = 1 + expected.abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.1e} x {scale:.3g}"
