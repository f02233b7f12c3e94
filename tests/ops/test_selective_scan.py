"""The fused selective scan (ssm_train/ops/selective_scan.py, csrc/selective_scan_cpu.cpp) against
the loop over time in float64: values and the gradients of all five inputs, across chunk and
channel-block boundaries, near a = 1 and a = 0, and what the backward keeps in memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_train.ops.backend import cpp_available
from ssm_train.ops.selective_scan import CHUNK, reference_selective_scan, select_selective_backend, selective_scan

pytestmark = pytest.mark.skipif(not cpp_available(), reason="the C++ kernels did not build here")


def inputs(Bsz: int, L: int, E: int, N: int, seed: int, dtype=torch.float64, dt_max: float = 0.2,
           a_min: float = 0.5, a_max: float = 4.0) -> tuple[torch.Tensor, ...]:
    """x, Δ > 0, A < 0 (so exp(ΔA) is a decay, as in Mamba), B, C."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, L, E, generator=g, dtype=torch.float64)
    dt = dt_max * torch.rand(Bsz, L, E, generator=g, dtype=torch.float64)
    A = -(a_min + (a_max - a_min) * torch.rand(E, N, generator=g, dtype=torch.float64))
    B = torch.randn(Bsz, L, N, generator=g, dtype=torch.float64)
    C = torch.randn(Bsz, L, N, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (x, dt, A, B, C))


def value_and_grads(fn, ins: tuple[torch.Tensor, ...], g: torch.Tensor):
    ins = [t.detach().clone().requires_grad_() for t in ins]
    y = fn(*ins)
    return y.detach(), torch.autograd.grad((y * g.to(y.dtype)).sum(), ins)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


NAMES = ("y", "dx", "ddt", "dA", "dB", "dC")


@settings(max_examples=30, deadline=None)
@given(Bsz=st.integers(1, 2), L=st.integers(1, 2 * CHUNK + 5), E=st.integers(1, 35), N=st.integers(1, 17),
       seed=st.integers(0, 2**16))
def test_fused_equals_the_loop_in_float64(Bsz, L, E, N, seed):
    """Chunk boundaries (L up to 2·64 + 5) and partial channel blocks (E not a multiple of 16)."""
    ins = inputs(Bsz, L, E, N, seed)
    g = torch.randn(Bsz, L, E, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    y, grads = value_and_grads(lambda *t: selective_scan(*t, backend="cpp"), ins, g)
    y_ref, grads_ref = value_and_grads(reference_selective_scan, ins, g)
    for name, a, b in zip(NAMES, (y, *grads), (y_ref, *grads_ref)):
        assert relative_error(a, b) < 1e-12, name


@pytest.mark.parametrize("case", ["generic", "near_one", "near_zero"])
def test_fused_float32_against_the_float64_loop(case):
    """near_one: a = exp(ΔA) ≥ 0.9999 over 4096 steps (long memory, the state grows large);
    near_zero: ΔA down to -400, where a underflows to 0 (the fast exp is clamped, never NaN)."""
    L = 4096 if case == "near_one" else 300
    kw = {"generic": {}, "near_one": dict(dt_max=1e-4, a_min=0.5, a_max=1.0),
          "near_zero": dict(dt_max=100.0, a_min=1.0, a_max=4.0)}[case]
    ins = inputs(2, L, 20, 16, seed=5, **kw)
    g = torch.randn(2, L, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    y, grads = value_and_grads(lambda *t: selective_scan(*t, backend="cpp"), tuple(t.float() for t in ins), g)
    y_ref, grads_ref = value_and_grads(reference_selective_scan, ins, g)
    for name, a, b in zip(NAMES, (y, *grads), (y_ref, *grads_ref)):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
        assert relative_error(a, b) < 2e-5, (name, relative_error(a, b))  # measured 9e-8 to 3.1e-6


def test_fused_equals_the_materialised_scan():
    ins = inputs(2, 100, 24, 8, seed=2, dtype=torch.float32)
    g = torch.randn(2, 100, 24)
    y, grads = value_and_grads(lambda *t: selective_scan(*t, backend="cpp"), ins, g)
    y_scan, grads_scan = value_and_grads(lambda *t: selective_scan(*t, backend="scan"), ins, g)
    for name, a, b in zip(NAMES, (y, *grads), (y_scan, *grads_scan)):
        assert relative_error(a, b) < 1e-5, name


def test_gradcheck():
    ins = [t.requires_grad_() for t in inputs(1, 70, 3, 2, seed=9)]  # crosses one chunk boundary
    assert torch.autograd.gradcheck(lambda *t: selective_scan(*t, backend="cpp"), ins)


def test_the_backward_keeps_no_per_step_state():
    """What autograd saves: the inputs and one state per 64 steps, not the [B, L, E, N] states the
    materialised scan keeps (a and h, each N times the size of x)."""
    Bsz, L, E, N = 2, 512, 32, 16
    ins = [t.requires_grad_() for t in inputs(Bsz, L, E, N, seed=1, dtype=torch.float32)]

    def saved_bytes(backend: str) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            selective_scan(*ins, backend=backend)
        return total

    inputs_bytes = sum(t.numel() * 4 for t in ins)
    chunk_states = Bsz * (L // CHUNK) * E * N * 4
    assert saved_bytes("cpp") == inputs_bytes + chunk_states
    assert saved_bytes("scan") > 2 * Bsz * L * E * N * 4


def test_half_precision_and_autocast_compute_in_float32():
    ins = inputs(1, 40, 8, 4, seed=3, dtype=torch.float32)
    exact = selective_scan(*ins, backend="cpp")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan(*ins)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, exact, rtol=0, atol=0)
    y_bf16 = selective_scan(*(t.bfloat16() for t in ins))
    assert y_bf16.dtype == torch.float32


def test_auto_picks_the_fused_kernel_on_cpu(monkeypatch):
    x = torch.zeros(1, 2, 3)
    assert select_selective_backend(x) == "cpp"
    assert select_selective_backend(x, "scan") == "scan"
    monkeypatch.setenv("SSM_TRAIN_SELECTIVE_BACKEND", "scan")
    assert select_selective_backend(x) == "scan"
    assert select_selective_backend(x, "cpp") == "cpp"  # the argument wins
    monkeypatch.setenv("SSM_TRAIN_SELECTIVE_BACKEND", "fast")
    with pytest.raises(ValueError, match="SSM_TRAIN_SELECTIVE_BACKEND='fast' is not a backend"):
        select_selective_backend(x)
    with pytest.raises(ValueError, match="runs on CPU only"):
        select_selective_backend(torch.zeros(1, 2, 3, device="meta"), "cpp")


@pytest.mark.parametrize("L", [0, 1])
def test_degenerate_lengths(L):
    ins = inputs(2, L, 5, 3, seed=0)
    torch.testing.assert_close(selective_scan(*ins, backend="cpp"), reference_selective_scan(*ins), rtol=0, atol=1e-15)


@pytest.mark.parametrize(("change", "message"), [
    (lambda x, dt, A, B, C: (x, dt[:, :-1], A, B, C), "x and dt must be"),
    (lambda x, dt, A, B, C: (x, dt, A[:-1], B, C), "A must be"),
    (lambda x, dt, A, B, C: (x, dt, A, B[..., :-1], C), "B must be"),
])
def test_bad_shapes_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        selective_scan(*change(*inputs(1, 6, 4, 3, seed=0)))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(*inputs(1, 6, 4, 3, seed=0), backend="cuda")
