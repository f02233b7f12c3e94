"""The fused selective scan (ssm_train/ops/selective_scan.py, csrc/selective_scan_cpu.cpp) against
the loop over time in float64: values and the gradients of all five inputs, across chunk and
channel-block boundaries, near a = 1 and a = 0, and what the backward keeps in memory; then with an
initial state h0, document resets and the returned final state h_last (every backend against the
loop with resets and against the loop run per document, gradients of all six inputs for a loss on
both y and h_last, finite differences, and two windows chained through the state)."""

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
    if b.numel() == 0:
        return 0.0
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


# ---------------------------------------------------------------------------------------------
# Initial state h0, document resets, the returned final state h_last


STATE_NAMES = ("y", "h_last", "dx", "ddt", "dA", "dB", "dC", "dh0")


def state_inputs(Bsz: int, L: int, E: int, N: int, seed: int, dtype=torch.float64, **kw) -> tuple[torch.Tensor, ...]:
    """x, Δ, A, B, C as `inputs`, and an h0 of the size a state reaches."""
    h0 = torch.randn(Bsz, E, N, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    return (*inputs(Bsz, L, E, N, seed, dtype, **kw), h0.to(dtype))


def scan_fn(backend: str):
    """(x, Δ, A, B, C, h0, resets) -> (y, h_last) through one backend (the loop for "reference")."""
    def fn(x, dt, A, B, C, h0, resets):
        if backend == "loop":
            return reference_selective_scan(x, dt, A, B, C, h0, resets, return_state=True)
        return selective_scan(x, dt, A, B, C, h0=h0, resets=resets, return_state=True, backend=backend)
    return fn


def segmented_oracle(x, dt, A, B, C, h0, resets):
    """The resets' meaning, without the resets path: each row cut into its documents, each run by the
    loop alone (the first from h0, or zero if the row resets at 0, the others from zero), concatenated."""
    ys, lasts = [], []
    for b in range(x.shape[0]):
        starts = [0] + [t for t in range(1, x.shape[1]) if resets is not None and bool(resets[b, t])]
        ends = starts[1:] + [x.shape[1]]
        first = None if h0 is None or (x.shape[1] and resets is not None and bool(resets[b, 0])) else h0[b:b + 1]
        y_parts, h = [], first
        for s, e in zip(starts, ends):
            y_seg, h = reference_selective_scan(x[b:b + 1, s:e], dt[b:b + 1, s:e], A, B[b:b + 1, s:e], C[b:b + 1, s:e],
                                                first if s == 0 else None, return_state=True)
            y_parts.append(y_seg)
        ys.append(torch.cat(y_parts, 1))
        lasts.append(h)
    return torch.cat(ys, 0), torch.cat(lasts, 0)


def state_value_and_grads(fn, ins: tuple[torch.Tensor | None, ...], resets, gy, gh, on=("y", "h_last")):
    """(y, h_last, ∂x, ∂Δ, ∂A, ∂B, ∂C, ∂h0) for ℓ = Σ gy·y + Σ gh·h_last (or only the terms in ``on``);
    ∂h0 is None when h0 is."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in ins]
    y, h = fn(*leaves, resets)
    loss = sum((out * grad.to(out.dtype)).sum() for name, out, grad in (("y", y, gy), ("h_last", h, gh)) if name in on)
    wrt = [t for t in leaves if t is not None]
    if loss.requires_grad:
        grads = list(torch.autograd.grad(loss, wrt, allow_unused=True))
    else:  # L = 0 and no h0: nothing reaches the loss
        grads = [None] * len(wrt)
    grads = [torch.zeros_like(t) if d is None else d for t, d in zip(wrt, grads)]
    if ins[5] is None:
        grads.append(None)
    return (y.detach(), h.detach(), *grads)


def assert_close_all(got, want, tol: float, names=STATE_NAMES, context=""):
    for name, a, b in zip(names, got, want):
        assert (a is None) == (b is None), (context, name)
        if a is not None:
            assert a.shape == b.shape, (context, name, a.shape, b.shape)
            assert relative_error(a, b) <= tol, (context, name, relative_error(a, b))


def reset_mask(Bsz: int, L: int, case: str) -> torch.Tensor | None:
    r = torch.zeros(Bsz, L, dtype=torch.bool)
    if case == "none":
        return None
    if case == "all_false":
        return r
    if case == "all_true":
        return ~r
    if case == "at_0":
        r[0, 0] = True  # row 0 drops h0, row 1 keeps it
    elif case == "at_last":
        r[:, L - 1] = True
    elif case == "adjacent":
        r[0, 10:13] = True
        r[-1, L - 2:] = True
    elif case == "chunk_boundaries":  # at a chunk's first step, its last, and both sides of the next
        r[0, [CHUNK, 2 * CHUNK - 1, 2 * CHUNK]] = True
        r[-1, [CHUNK - 1, 2 * CHUNK]] = True
    elif case == "random":
        r = torch.rand(Bsz, L, generator=torch.Generator().manual_seed(L)) < 0.05
    return r


RESET_CASES = ("none", "all_false", "all_true", "at_0", "at_last", "adjacent", "chunk_boundaries", "random")


@pytest.mark.parametrize("backend", ["cpp", "scan"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("case", RESET_CASES)
def test_state_and_resets_equal_the_loop_in_float64(backend, with_h0, case):
    """L = 2·64 + 27: three chunks, the last partial; E = 19: a full and a partial channel block.
    Values and the gradients of all six inputs for a loss on both y and h_last, against the loop
    with resets and against the loop run per document (segmented_oracle)."""
    Bsz, L, E, N = 2, 2 * CHUNK + 27, 19, 5
    x, dt, A, B, C, h0 = state_inputs(Bsz, L, E, N, seed=11)
    ins = (x, dt, A, B, C, h0 if with_h0 else None)
    resets = reset_mask(Bsz, L, case)
    gen = torch.Generator().manual_seed(12)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    got = state_value_and_grads(scan_fn(backend), ins, resets, gy, gh)
    assert_close_all(got, state_value_and_grads(scan_fn("loop"), ins, resets, gy, gh), 1e-10, context="loop")
    assert_close_all(got, state_value_and_grads(segmented_oracle, ins, resets, gy, gh), 1e-10, context="oracle")
    if case == "all_false":  # an all-False mask is no mask
        assert_close_all(got, state_value_and_grads(scan_fn(backend), ins, None, gy, gh), 0.0)
    if with_h0 and case == "at_0":
        assert got[-1][0].abs().max() == 0 and got[-1][1].abs().max() > 0  # ∂h0 = 0 exactly where row 0 resets


def test_resets_equal_the_loop_near_a_equal_one():
    """a = exp(ΔA) ≥ 0.9999: the state and δh carry across whole chunks, so each reset is all that
    stops them; L = 3·64 exactly, resets at chunk boundaries and inside."""
    Bsz, L, E, N = 2, 3 * CHUNK, 18, 4
    x, dt, A, B, C, h0 = state_inputs(Bsz, L, E, N, seed=21, dt_max=1e-4, a_min=0.5, a_max=1.0)
    resets = torch.zeros(Bsz, L, dtype=torch.bool)
    resets[0, [CHUNK, 2 * CHUNK, 100]] = True
    resets[1, [1, 2 * CHUNK - 1]] = True
    gen = torch.Generator().manual_seed(22)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    ins = (x, dt, A, B, C, h0)
    want = state_value_and_grads(segmented_oracle, ins, resets, gy, gh)
    for backend in ("cpp", "scan", "loop"):
        assert_close_all(state_value_and_grads(scan_fn(backend), ins, resets, gy, gh), want, 1e-10, context=backend)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), Bsz=st.integers(1, 3), L=st.integers(0, 2 * CHUNK + 5), E=st.integers(1, 20),
       N=st.integers(1, 9), with_h0=st.booleans(), backend=st.sampled_from(["cpp", "scan"]),
       seed=st.integers(0, 2**16))
def test_random_reset_masks_equal_the_segmented_loop(data, Bsz, L, E, N, with_h0, backend, seed):
    """Any mask: runs, dense or sparse, at 0, at L-1, at chunk boundaries (drawn per position)."""
    density = data.draw(st.sampled_from([0.0, 0.02, 0.2, 0.7, 1.0]), label="density")
    flags = data.draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=Bsz * L, max_size=Bsz * L), label="u")
    resets = (torch.tensor(flags, dtype=torch.float64) < density).reshape(Bsz, L)
    x, dt, A, B, C, h0 = state_inputs(Bsz, L, E, N, seed)
    ins = (x, dt, A, B, C, h0 if with_h0 else None)
    gen = torch.Generator().manual_seed(seed + 1)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    got = state_value_and_grads(scan_fn(backend), ins, resets, gy, gh)
    assert_close_all(got, state_value_and_grads(segmented_oracle, ins, resets, gy, gh), 1e-10)


@pytest.mark.parametrize("backend", ["cpp", "scan"])
def test_gradcheck_through_h0_and_h_last(backend):
    """Finite differences of both outputs (y and h_last) in all six inputs, h0 included, with
    resets: a chunk boundary crossed (L = 70), a reset inside, one at t = 0 on row 1."""
    x, dt, A, B, C, h0 = (t.requires_grad_() for t in state_inputs(2, 70, 3, 2, seed=31))
    resets = torch.zeros(2, 70, dtype=torch.bool)
    resets[0, 40] = resets[1, 0] = resets[1, CHUNK] = True
    fn = scan_fn(backend)
    assert torch.autograd.gradcheck(lambda *t: fn(*t, resets), (x, dt, A, B, C, h0))


@pytest.mark.parametrize("backend", ["cpp", "scan"])
@pytest.mark.parametrize("on", [("h_last",), ("y",), ("y", "h_last")], ids=["h_last_only", "y_only", "both"])
def test_gradient_arriving_on_h_last_or_y_alone(backend, on):
    """A loss on h_last alone (the next window's h0 under context parallelism: no gradient on y) or
    on y alone (h_last returned but unused): the other output's gradient is taken as zero."""
    Bsz, L, E, N = 2, CHUNK + 9, 17, 3
    ins = state_inputs(Bsz, L, E, N, seed=41)
    resets = reset_mask(Bsz, L, "random")
    gen = torch.Generator().manual_seed(42)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    got = state_value_and_grads(scan_fn(backend), ins, resets, gy, gh, on=on)
    assert_close_all(got, state_value_and_grads(scan_fn("loop"), ins, resets, gy, gh, on=on), 1e-10)


@pytest.mark.parametrize("backend", ["cpp", "scan", "loop"])
@pytest.mark.parametrize("L1", [0, 1, 37, CHUNK, 100], ids=lambda v: f"L1={v}")
@pytest.mark.parametrize("with_resets", [False, True], ids=["no_resets", "resets"])
def test_chaining_windows_equals_one_scan(backend, L1, with_resets):
    """scan [0, L1) with return_state, then [L1, L) from h0 = that state: y and h_last of one scan
    over [0, L), and the same gradients for all inputs (through both windows and the state between
    them). With resets, one falls exactly at L1 (the second window drops the carried state)."""
    Bsz, L, E, N = 2, 150, 18, 4
    x, dt, A, B, C, h0 = state_inputs(Bsz, L, E, N, seed=51)
    resets = reset_mask(Bsz, L, "random") if with_resets else None
    if with_resets and L1 > 0:
        resets[0, L1] = True
    gen = torch.Generator().manual_seed(52)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    fn = scan_fn(backend)

    def chained(x, dt, A, B, C, h0, resets):
        def cut(t):
            return t[:, :L1], t[:, L1:]

        r1, r2 = (None, None) if resets is None else cut(resets)
        y1, h1 = fn(*(cut(t)[0] for t in (x, dt)), A, *(cut(t)[0] for t in (B, C)), h0, r1)
        y2, h2 = fn(*(cut(t)[1] for t in (x, dt)), A, *(cut(t)[1] for t in (B, C)), h1, r2)
        return torch.cat([y1, y2], 1), h2

    ins = (x, dt, A, B, C, h0)
    want = state_value_and_grads(fn, ins, resets, gy, gh)
    assert_close_all(state_value_and_grads(chained, ins, resets, gy, gh), want, 1e-10)


@pytest.mark.parametrize("case", ["generic", "near_one"])
def test_state_and_resets_in_float32_against_the_float64_loop(case):
    kw = {"generic": {}, "near_one": dict(dt_max=1e-4, a_min=0.5, a_max=1.0)}[case]
    Bsz, L, E, N = 2, 600, 20, 16
    ins = state_inputs(Bsz, L, E, N, seed=61, **kw)
    resets = torch.zeros(Bsz, L, dtype=torch.bool)
    resets[0, [0, 64, 65, 300]] = True
    resets[1, [127, 599]] = True
    gen = torch.Generator().manual_seed(62)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    got = state_value_and_grads(scan_fn("cpp"), tuple(t.float() for t in ins), resets, gy, gh)
    want = state_value_and_grads(scan_fn("loop"), ins, resets, gy, gh)
    for name, a in zip(STATE_NAMES, got):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
    assert_close_all(got, want, 2e-5)


@pytest.mark.parametrize("backend", ["cpp", "scan", "reference"])
@pytest.mark.parametrize("L", [0, 1])
def test_degenerate_lengths_with_state(backend, L):
    """L = 0: h_last is h0 (or zeros); L = 1 with a reset: h_last = Δ B x alone."""
    x, dt, A, B, C, h0 = state_inputs(2, L, 5, 3, seed=71)
    for h_start in (h0, None):
        y, h = selective_scan(x, dt, A, B, C, h0=h_start, return_state=True, backend=backend)
        y_ref, h_ref = reference_selective_scan(x, dt, A, B, C, h_start, return_state=True)
        assert y.shape == (2, L, 5) and h.shape == (2, 5, 3)
        torch.testing.assert_close((y, h), (y_ref, h_ref), rtol=0, atol=1e-15)
    if L == 0:
        torch.testing.assert_close(h, torch.zeros(2, 5, 3, dtype=torch.float64), rtol=0, atol=0)
        return
    y, h = selective_scan(x, dt, A, B, C, h0=h0, resets=torch.ones(2, 1, dtype=torch.bool), return_state=True,
                          backend=backend)
    torch.testing.assert_close(h, (dt * x)[:, 0, :, None] * B[:, 0, None, :], rtol=0, atol=1e-15)


def test_return_state_false_returns_y_alone():
    x, dt, A, B, C, h0 = state_inputs(1, 9, 4, 3, seed=0)
    for backend in ("cpp", "scan", "reference"):
        y = selective_scan(x, dt, A, B, C, h0=h0, backend=backend)
        assert isinstance(y, torch.Tensor) and y.shape == (1, 9, 4)


def test_h0_dtype_is_promoted_like_the_inputs():
    x, dt, A, B, C, h0 = state_inputs(1, 9, 4, 3, seed=0, dtype=torch.float32)
    y, h = selective_scan(x, dt, A, B, C, h0=h0.bfloat16(), return_state=True, backend="cpp")
    assert y.dtype == h.dtype == torch.float32
    y, h = selective_scan(x, dt, A, B, C, h0=h0.double(), return_state=True, backend="cpp")
    assert y.dtype == h.dtype == torch.float64


def test_the_backward_keeps_no_per_step_state_with_h0_and_resets():
    """h0 is the first saved chunk state, so it costs nothing extra; resets add their [B, L] bools."""
    Bsz, L, E, N = 2, 512, 32, 16
    x, dt, A, B, C, h0 = (t.requires_grad_() for t in state_inputs(Bsz, L, E, N, seed=1, dtype=torch.float32))
    resets = torch.rand(Bsz, L) < 0.1
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan(x, dt, A, B, C, h0=h0, resets=resets, return_state=True, backend="cpp")
    inputs_bytes = sum(t.numel() * 4 for t in (x, dt, A, B, C))
    assert total == inputs_bytes + Bsz * (L // CHUNK) * E * N * 4 + Bsz * L


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda h0, r: (h0[:, :-1], r), ValueError, r"h0 must be \[B, E, N\] = \[2, 4, 3\], got \[2, 3, 3\]"),
    (lambda h0, r: (h0[0], r), ValueError, r"h0 must be \[B, E, N\]"),
    (lambda h0, r: (h0.to("meta"), r), ValueError, "h0 must be on x's device"),
    (lambda h0, r: (h0, r[:, :-1]), ValueError, r"resets must be \[B, L\] = \[2, 6\], got \[2, 5\]"),
    (lambda h0, r: (h0, r[0]), ValueError, r"resets must be \[B, L\]"),
    (lambda h0, r: (h0, r.float()), TypeError, "resets must be a bool"),
    (lambda h0, r: (h0, r.to("meta")), ValueError, "resets must be on x's device"),
])
@pytest.mark.parametrize("backend", ["cpp", "scan", "reference"])
def test_bad_h0_and_resets_are_named(change, error, message, backend):
    x, dt, A, B, C, h0 = state_inputs(2, 6, 4, 3, seed=0)
    h0, resets = change(h0, torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(error, match=message):
        selective_scan(x, dt, A, B, C, h0=h0, resets=resets, backend=backend)
