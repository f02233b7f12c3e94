"""Helpers shared by the tests of ssm_train.nn: comparisons, step-by-step decoding, Triton compilation."""

from __future__ import annotations

import torch


def run_steps(model, x: torch.Tensor) -> torch.Tensor:
    """Outputs of ``model.step`` fed x[:, 0], x[:, 1], ... from no state, stacked over time."""
    state, ys = None, []
    for x_t in x.unbind(1):
        y_t, state = model.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1)


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """max|actual - expected| <= tol · (1 + max|expected|), with the numbers in the message."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    err = (actual.to(expected.dtype) - expected).abs().max().item()
    scale = 1 + expected.abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.1e} x {scale:.3g}"


def compiled_resource_usage(script: str, capability: int, timeout: float = 500) -> dict[str, dict[str, int]]:
    """Run `script` (which compiles Triton kernels for sm_<capability> and prints one JSON line of
    {kernel: {"regs": .., "stack": ..}}) in a process without TRITON_INTERPRET; skip the calling
    test if this triton build cannot compile for CUDA here."""
    import json
    import os
    import subprocess
    import sys

    import pytest

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", script, str(capability)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode and "nvidia" in proc.stderr and ("No module" in proc.stderr or "not found" in proc.stderr):
        pytest.skip(f"this triton build cannot compile for CUDA here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
