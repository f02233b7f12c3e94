"""linear_scan: every backend against the float64 reference loop, gradients, errors, autocast.

Error bounds. One step h_t = a_t h_{t-1} + b_t in a float format with unit roundoff u adds at
most ~4u|h_t| of rounding error (2 roundings real, ~4 complex), and |a| <= 1 carries old errors
forward without growth, so after L steps |error| <= 4·u·L·max|h|. The tests use that bound (it
is the worst case; typical errors are ~u·sqrt(L)).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_train.ops import backend
from ssm_train.ops import scan as scan_mod
from ssm_train.ops.backend import cpp_available
from ssm_train.ops.scan import linear_scan, reference_scan, select_backend
from tests.nn.scan_checks import assert_close_to

CPP_OK = cpp_available()
needs_cpp = pytest.mark.skipif(not CPP_OK, reason=f"C++ scan extension did not build: {backend.load_cpp()}")
FAST_BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp)]
ALL_BACKENDS = ["reference", *FAST_BACKENDS]
DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


def wide(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def random_inputs(
    B: int, L: int, D: int, dtype: torch.dtype, varying: bool, with_h0: bool, seed: int, kind: str = "disk"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """a inside the closed unit disk ("disk"), on it ("unit"), or zero ("zero"); b, h0 normal."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, L, D) if varying else (D,)
    w = wide(dtype)
    radius = {
        "disk": torch.rand(shape, generator=g, dtype=torch.float64),
        "unit": torch.ones(shape, dtype=torch.float64),
        "zero": torch.zeros(shape, dtype=torch.float64),
    }[kind]
    if dtype.is_complex:
        a = torch.polar(radius.sqrt(), 2 * math.pi * torch.rand(shape, generator=g, dtype=torch.float64))
    else:
        a = radius * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
    b = torch.randn(B, L, D, generator=g, dtype=w)
    h0 = torch.randn(B, D, generator=g, dtype=w) if with_h0 else None
    return a.to(dtype), b.to(dtype), None if h0 is None else h0.to(dtype)


def run_with_grads(fn, a, b, h0, grad_out):
    """h = fn(a, b, h0) and the gradients of <h, grad_out> for a, b, h0 (leaves copied)."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in (a, b, h0)]
    h = fn(*leaves)
    inputs = [x for x in leaves if x is not None]
    grads = torch.autograd.grad(h, inputs, grad_out.to(h.dtype), allow_unused=True) if h.numel() else [
        torch.zeros_like(x) for x in inputs
    ]
    return h.detach(), grads


# ---------------------------------------------------------------------------------------------
# Values and gradients against the float64 reference


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3),
    L=st.integers(0, 40),
    D=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    varying=st.booleans(),
    reverse=st.booleans(),
    with_h0=st.booleans(),
    kind=st.sampled_from(["disk", "disk", "unit", "zero"]),
    seed=st.integers(0, 2**31 - 1),
)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_matches_float64_reference(backend, B, L, D, dtype, varying, reverse, with_h0, kind, seed):
    a, b, h0 = random_inputs(B, L, D, dtype, varying, with_h0, seed, kind)
    grad_out = torch.randn(B, L, D, dtype=wide(dtype), generator=torch.Generator().manual_seed(seed + 1))
    h, grads = run_with_grads(lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse, backend=backend), a, b, h0, grad_out)
    up = [None if x is None else x.to(wide(dtype)) for x in (a, b, h0)]
    ref, ref_grads = run_with_grads(lambda a, b, h0: reference_scan(a, b, h0, reverse=reverse), *up, grad_out)

    assert h.dtype == dtype
    u = unit_roundoff(dtype)
    tol = 4 * u * max(L, 1)
    assert_close_to(h, ref, tol, "h")
    names = ["grad a", "grad b", "grad h0"]
    for name, g, r in zip(names, grads, ref_grads):
        assert g.dtype == dtype and g.shape == r.shape, name
        # Constant a: the gradient also sums B·L terms, each carrying the same relative error.
        bound = tol * (B * max(L, 1) if name == "grad a" and not varying else 1)
        assert_close_to(g, r, bound + 4 * u, name)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("varying", [False, True])
def test_near_unit_circle_long_sequence(backend, dtype, varying):
    """|a| = 0.9999 with random phases (signs for real a), L = 16384, against float64 on the same
    float32-rounded inputs. Rounding errors of a random walk decaying at rate |a| add up to about
    u·|h|/sqrt(2(1-|a|)) ≈ 6e-8·70 ≈ 4e-6 of max|h| (measured: 2e-6 to 6e-6); the bound 3e-5 leaves
    a factor 5. (The coherent worst case u/(1-|a|) = 6e-4 needs adversarial b.) The
    larger figures of the notes (6e-5, 1.4e-4) include rounding a itself to float32."""
    B, L, D = 1, 16384, 40
    g = torch.Generator().manual_seed(0)
    shape = (B, L, D) if varying else (D,)
    phase = 2 * math.pi * torch.rand(shape, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        a = torch.polar(torch.full(shape, 0.9999, dtype=torch.float64), phase).to(dtype)
    else:
        a = (0.9999 * torch.where(phase < math.pi, 1.0, -1.0)).to(dtype)
    b = torch.randn(B, L, D, generator=g, dtype=wide(dtype)).to(dtype)
    h = linear_scan(a, b, backend=backend)
    ref = reference_scan(a.to(wide(dtype)), b.to(wide(dtype)))
    rel = (h.to(ref.dtype) - ref).abs().max().item() / ref.abs().max().item()
    assert rel < 3e-5, f"relative error {rel:.2e}"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_fast_gradients_match_reference_at_scale(backend, dtype, varying, reverse):
    """Gradients at a training-like length (and D = 72: SIMD body plus scalar tail)."""
    B, L, D = 2, 2048, 72
    a, b, h0 = random_inputs(B, L, D, dtype, varying, True, seed=3)
    a = a * 0.999  # keep far from the unit circle's worst case; accuracy there is tested above
    grad_out = torch.randn(B, L, D, dtype=wide(dtype), generator=torch.Generator().manual_seed(4))
    h, grads = run_with_grads(lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse, backend=backend), a, b, h0, grad_out)
    up = [x.to(wide(dtype)) for x in (a, b, h0)]
    ref, ref_grads = run_with_grads(lambda a, b, h0: reference_scan(a, b, h0, reverse=reverse), *up, grad_out)
    # Decay 0.999 forgets after ~1000 steps: a random-walk error ~u·sqrt(1000·B) of the scale.
    tol = 1e-5 if dtype == torch.float32 else 2e-5
    assert_close_to(h, ref, tol, "h")
    for name, g, r in zip(["grad a", "grad b", "grad h0"], grads, ref_grads):
        assert_close_to(g, r, tol * (10 if name == "grad a" and not varying else 1), name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(backend, dtype, varying, reverse):
    a, b, h0 = random_inputs(2, 5, 3, dtype, varying, True, seed=7)
    inputs = tuple(x.requires_grad_() for x in (a, b, h0))
    fn = lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    fn_no_h0 = lambda a, b: linear_scan(a, b, reverse=reverse, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn_no_h0, inputs[:2])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("varying", [False, True])
def test_real_a_with_complex_b(backend, varying):
    """Real decay with complex inputs: the result is complex and ∂ℓ/∂a is real (its real part)."""
    a, _, _ = random_inputs(2, 6, 4, torch.float64, varying, False, seed=11)
    _, b, h0 = random_inputs(2, 6, 4, torch.complex128, varying, True, seed=12)
    inputs = (a.requires_grad_(), b.requires_grad_(), h0.requires_grad_())
    h = linear_scan(*inputs, backend=backend)
    assert h.dtype == torch.complex128
    assert_close_to(h, reference_scan(a.to(h.dtype), b, h0), 1e-13, "h")
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan(a, b, h0, backend=backend), inputs)
    (grad_a,) = torch.autograd.grad(h.abs().sum(), a)
    assert grad_a.dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Laws


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(2, 30),
    split=st.integers(1, 29),
    dtype=st.sampled_from([torch.float32, torch.complex64]),
    varying=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_split_and_reverse_laws(backend, L, split, dtype, varying, seed):
    """Scanning [0, L) equals scanning [0, k) then [k, L) from the last state; reverse=True
    equals the forward scan of the time-flipped sequence, flipped back."""
    k = min(split, L - 1)
    a, b, h0 = random_inputs(2, L, 70, dtype, varying, True, seed)
    whole = linear_scan(a, b, h0, backend=backend)
    a1, a2 = (a[:, :k], a[:, k:]) if varying else (a, a)
    first = linear_scan(a1, b[:, :k], h0, backend=backend)
    second = linear_scan(a2, b[:, k:], first[:, -1], backend=backend)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    flip = lambda x: x.flip(1) if x.dim() == 3 else x  # noqa: E731
    torch.testing.assert_close(linear_scan(a, b, h0, reverse=True, backend=backend), flip(linear_scan(flip(a), flip(b), h0, backend=backend)))


@needs_cpp
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("varying", [False, True])
def test_cpp_large_outputs(dtype, varying):
    """Outputs of 16 MiB and more take the non-temporal-store path of the kernels (about 2 s
    each: the float64 reference at L = 4096 dominates)."""
    B, L, D = (4 if dtype == torch.float32 else 2), 4096, 256
    a, b, h0 = random_inputs(B, L, D, dtype, varying, True, seed=21)
    a = a * 0.99
    grad_out = torch.randn(B, L, D, dtype=wide(dtype), generator=torch.Generator().manual_seed(22))
    assert b.numel() * b.element_size() >= 16 << 20
    for reverse in (False, True):
        h, grads = run_with_grads(lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse, backend="cpp"), a, b, h0, grad_out)
        up = [x.to(wide(dtype)) for x in (a, b, h0)]
        ref, ref_grads = run_with_grads(lambda a, b, h0: reference_scan(a, b, h0, reverse=reverse), *up, grad_out)
        assert_close_to(h, ref, 1e-5, "h")
        for name, g, r in zip(["grad a", "grad b", "grad h0"], grads, ref_grads):
            assert_close_to(g, r, 1e-5 * (10 if name == "grad a" and not varying else 1), name)


@needs_cpp
def test_cpp_threads_agree():
    """Two threads split batch rows (and, for B = 1, rows of lanes) between them."""
    for B in (1, 3):
        a, b, h0 = random_inputs(B, 50, 300, torch.complex64, True, True, seed=B)
        grad_out = torch.randn(B, 50, 300, dtype=torch.complex64, generator=torch.Generator().manual_seed(B))
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(run_with_grads(lambda a, b, h0: linear_scan(a, b, h0, backend="cpp"), a, b, h0, grad_out))
        (h1, g1), (h2, g2) = results
        torch.testing.assert_close(h1, h2)
        for x, y in zip(g1, g2):
            torch.testing.assert_close(x, y)


@needs_cpp
def test_cpp_buffer_pool_reuses_and_overwrites():
    """A freed output's buffer is handed to the next output of the same size, fully rewritten."""
    stats = torch.ops.ssm_train_scan.pool_stats
    a, b, _ = random_inputs(2, 1024, 256, torch.float32, False, False, seed=1)  # 2 MiB output
    h = linear_scan(a, b, backend="cpp")
    del h
    hits = stats()[2]
    b2 = torch.randn(b.shape, generator=torch.Generator().manual_seed(2))
    h2 = linear_scan(a, b2, backend="cpp")
    assert stats()[2] == hits + 1
    assert_close_to(h2, reference_scan(a.double(), b2.double()), 4 * unit_roundoff(torch.float32) * 1024, "h")
    backend.empty_cache()
    assert stats()[0] == 0


# ---------------------------------------------------------------------------------------------
# Backend choice, fallback, errors, autocast


def test_backend_selection(monkeypatch):
    monkeypatch.delenv(scan_mod.ENV_BACKEND, raising=False)
    b = torch.zeros(1, 2, 3)
    assert select_backend(b) == ("cpp" if CPP_OK else "torch")
    assert select_backend(b, "reference") == "reference"
    monkeypatch.setenv(scan_mod.ENV_BACKEND, "torch")
    assert select_backend(b) == "torch"
    assert select_backend(b, "reference") == "reference"  # an explicit argument wins
    monkeypatch.setenv(scan_mod.ENV_BACKEND, "fast")
    with pytest.raises(ValueError, match="SSM_TRAIN_SCAN_BACKEND='fast' is not a backend"):
        select_backend(b)
    with pytest.raises(ValueError, match="backend must be one of"):
        select_backend(b, "numba")  # type: ignore[arg-type]


def test_forced_torch_backend_runs(monkeypatch):
    monkeypatch.setenv(scan_mod.ENV_BACKEND, "torch")
    a, b, h0 = random_inputs(2, 9, 5, torch.complex64, True, True, seed=5)
    ref = reference_scan(a.to(torch.complex128), b.to(torch.complex128), h0.to(torch.complex128))
    assert_close_to(linear_scan(a, b, h0), ref, 1e-5, "h")


def test_fallback_when_extension_fails(monkeypatch):
    monkeypatch.delenv(scan_mod.ENV_BACKEND, raising=False)
    monkeypatch.setattr(backend, "_cpp_state", {"ok": False, "error": "OSError: no compiler"})
    monkeypatch.setattr(scan_mod, "_warned_fallback", False)
    a, b, _ = random_inputs(2, 9, 5, torch.float32, False, False, seed=6)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ scan extension unavailable .*no compiler.*torch loop"):
        h = linear_scan(a, b)
    assert_close_to(h, reference_scan(a.double(), b.double()), 1e-5, "h")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not per call
        linear_scan(a, b)
    with pytest.raises(RuntimeError, match="backend 'cpp' requested but the C\\+\\+ extension failed"):
        linear_scan(a, b, backend="cpp")


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "h0_shape", "message"),
    [
        ((5,), (2, 9), None, r"b must have shape \[B, L, D\], got \(2, 9\)"),
        ((4,), (2, 9, 5), None, r"a must have shape \[D\] = \[5\] .* or \[B, L, D\] = \[2, 9, 5\] .* got \[4\]"),
        ((2, 8, 5), (2, 9, 5), None, r"a must have shape .* got \[2, 8, 5\]"),
        ((5,), (2, 9, 5), (5,), r"h0 must have shape \[B, D\] = \[2, 5\], got \[5\]"),
    ],
)
def test_bad_shapes(a_shape, b_shape, h0_shape, message):
    h0 = None if h0_shape is None else torch.zeros(h0_shape)
    with pytest.raises(ValueError, match=message):
        linear_scan(torch.zeros(a_shape), torch.zeros(b_shape), h0)


def test_bad_dtype_and_device():
    with pytest.raises(TypeError, match=r"a has dtype torch.int64; expected float32, float64, complex64 or complex128"):
        linear_scan(torch.zeros(3, dtype=torch.long), torch.zeros(1, 2, 3))
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got list"):
        linear_scan(torch.zeros(3), [[[0.0] * 3]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a is on meta but b is on cpu"):
        linear_scan(torch.zeros(3, device="meta"), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="backend 'cpp' runs on CPU only; b is on meta"):
        linear_scan(torch.zeros(3, device="meta"), torch.zeros(1, 2, 3, device="meta"), backend="cpp")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bf16_autocast_keeps_float32(backend):
    """Projections run in bf16 under autocast; the recurrence upcasts and returns float32."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 16)
    x = torch.randn(2, 33, 8)
    a = torch.rand(16) * 0.99
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b = proj(x)
        assert b.dtype == torch.bfloat16
        h = linear_scan(a, b, backend=backend)
        h.sum().backward()
    assert h.dtype == torch.float32
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()
    assert_close_to(h, reference_scan(a.double(), b.double()), 1e-5, "h")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h16 = linear_scan(a.bfloat16(), b, torch.zeros(2, 16, dtype=torch.bfloat16), backend=backend)
    assert h16.dtype == torch.float32
