"""S4D's convolutional mode (ssm_train/ops/conv.py) against obviously-right references: the kernel
against λ^l summed in float64, the FFT convolution against the sum over j written out, and the
whole layer against its own recurrence (mode="scan") with the float64 reference scan."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_train.nn import S4D
from ssm_train.ops.conv import (
    causal_depthwise_conv,
    fft_conv,
    vandermonde_kernel,
    vandermonde_powers,
    vandermonde_state,
)
from ssm_train.ops.scan import reference_scan
from tests.nn.scan_checks import run_steps


def reference_kernel(lam: torch.Tensor, W: torch.Tensor, L: int) -> torch.Tensor:
    """K_hl = 2 Re Σ_n W_hn λ_hn^l, each power taken directly in complex128."""
    lam, W = lam.to(torch.complex128), W.to(torch.complex128)
    return torch.stack([2 * (W * lam**l).real.sum(-1) for l in range(L)], -1) if L else lam.real.new_zeros(len(lam), 0)


def reference_conv(u: torch.Tensor, K: torch.Tensor, reverse: bool) -> torch.Tensor:
    """y_k = Σ_{j≤k} K_{k-j} u_j (or Σ_{j≥k} K_{j-k} u_j), a loop in float64; u [B, L, H], K [H, L]."""
    u, K = u.double(), K.double()
    L = u.shape[1]
    ys = [u[:, :0].sum(1)] if L == 0 else []  # a [B, H] placeholder, sliced away below
    for k in range(L):
        js = range(k, L) if reverse else range(k + 1)
        ys.append(sum((K[:, abs(j - k)] * u[:, j] for j in js), torch.zeros_like(u[:, 0])))
    return torch.stack(ys, 1)[:, :L]


def random_spectrum(H: int, N: int, r_min: float, r_max: float, seed: int, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    r = r_min + (r_max - r_min) * torch.rand(H, N, generator=g, dtype=torch.float64)
    theta = 2 * math.pi * torch.rand(H, N, generator=g, dtype=torch.float64)
    W = torch.randn(H, N, generator=g, dtype=torch.complex128)
    return torch.polar(r, theta).to(dtype), W.to(dtype)


# -- the kernel ------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(H=st.integers(1, 4), N=st.integers(1, 6), L=st.integers(0, 150), r_max=st.sampled_from([0.5, 0.99, 1.0]),
       seed=st.integers(0, 2**16))
def test_kernel_equals_the_sum_of_powers(H, N, L, r_max, seed):
    lam, W = random_spectrum(H, N, 0.0, r_max, seed)
    K = vandermonde_kernel(lam, W, L)
    assert K.shape == (H, L) and K.dtype == torch.float64
    torch.testing.assert_close(K, reference_kernel(lam, W, L), rtol=1e-12, atol=1e-12)


def test_kernel_at_zero_and_on_the_unit_circle():
    lam = torch.tensor([[0.0, 1.0, -1.0, 1j]], dtype=torch.complex128)
    W = torch.ones_like(lam)
    K = vandermonde_kernel(lam, W, 5)
    # l=0: 2(1+1+1+1); then 0 + 1 + (-1)^l + Re(i^l), doubled
    expect = torch.tensor([[8.0, 2 * (1 - 1 + 0), 2 * (1 + 1 - 1), 2 * (1 - 1 + 0), 2 * (1 + 1 + 1)]], dtype=torch.float64)
    torch.testing.assert_close(K, expect, rtol=0, atol=1e-15)


@pytest.mark.parametrize("L", [1, 2, 17, 64, 300])
def test_powers_and_their_written_out_derivative(L):
    """near_q = λ^q and far_p = λ^(pT) exactly, and the backward's l λ^(l-1) is the derivative
    (gradcheck on complex λ, |λ| up to 1, with λ = 0 and λ = 1 among them)."""
    lam, _ = random_spectrum(2, 3, 0.5, 0.9999, seed=L)
    lam[0, 0], lam[1, 0] = 0, 1
    near, far = vandermonde_powers(lam, L)
    T, P = near.shape[-1], far.shape[-1]
    assert T * P >= L and (T - 1) * P < L + T  # T = ⌈√L⌉, P = ⌈L/T⌉
    torch.testing.assert_close(near, torch.stack([lam**q for q in range(T)], -1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(far, torch.stack([lam ** (p * T) for p in range(P)], -1), rtol=1e-12, atol=1e-14)
    lam.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: vandermonde_powers(z, L), (lam,))
    assert torch.autograd.gradcheck(lambda z: vandermonde_powers(z, L)[1], (lam,))  # one output unused


def test_kernel_weightings_share_one_pair_of_powers():
    """W [B, H, N]: one kernel per weighting, each equal to its own call; powers for a longer
    length serve a shorter one, powers for a shorter one are refused."""
    lam, _ = random_spectrum(3, 4, 0.0, 0.999, seed=5)
    W = torch.randn(2, 3, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(6))
    K = vandermonde_kernel(lam, W, 50, vandermonde_powers(lam, 60))
    assert K.shape == (2, 3, 50)
    for b in range(2):
        torch.testing.assert_close(K[b], reference_kernel(lam, W[b], 50), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="vandermonde_powers"):
        vandermonde_kernel(lam, W[0], 50, vandermonde_powers(lam, 30))
    with pytest.raises(ValueError, match="vandermonde_powers"):
        vandermonde_state(lam, torch.randn(1, 50, 3, dtype=torch.float64), vandermonde_powers(lam, 30))


@pytest.mark.parametrize("L", [16384, pytest.param(65536, marks=pytest.mark.slow)])
def test_kernel_near_the_unit_circle_in_complex64(L):
    """|λ| = 0.9999 with phases all round the circle: λ^l must not drift (the powers are float64)."""
    lam, W = random_spectrum(4, 16, 0.9999, 0.9999, seed=3, dtype=torch.complex64)
    K = vandermonde_kernel(lam, W, L)
    lam, W = lam.to(torch.complex128), W.to(torch.complex128)  # the same (rounded) λ and W, exactly
    assert K.dtype == torch.float32
    ls = torch.arange(L, dtype=torch.float64)
    exact = 2 * (W[..., None] * torch.exp(torch.log(lam)[..., None] * ls)).real.sum(1)  # float64 at every l
    scale = 2 * W.abs().sum(-1, keepdim=True)  # |K_l| ≤ 2 Σ|W| |λ|^l
    err = ((K.double() - exact) / scale).abs().max().item()
    assert err < 1e-6, err  # measured 7.9e-8 at both lengths


# -- the convolution -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(0, 70), H=st.integers(1, 4), reverse=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fft_conv_equals_the_sum(B, L, H, reverse, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    K = torch.randn(H, L, generator=g, dtype=torch.float64)
    y = fft_conv(u, K, reverse=reverse)
    assert y.shape == (B, L, H) and y.dtype == torch.float64
    torch.testing.assert_close(y, reference_conv(u, K, reverse), rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 40), H=st.integers(1, 3), reverse=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fft_conv_gradients_equal_those_of_the_sum(B, L, H, reverse, seed):
    """The written-out backward (two more FFT convolutions) against autograd through the loop."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, L, H, generator=g, dtype=torch.float64, requires_grad=True)
    K = torch.randn(H, L, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((fft_conv(u, K, reverse=reverse) * w).sum(), (u, K))
    want = torch.autograd.grad((reference_conv(u, K, reverse) * w).sum(), (u, K))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
def test_fft_conv_in_channel_blocks_equals_the_sum(monkeypatch, reverse):
    """37 channels in blocks of 16 (the last one short): values and gradients as the loop's."""
    import ssm_train.ops.conv as conv

    monkeypatch.setattr(conv, "_BLOCK_BYTES", 1)
    B, L, H = 2, 30, 37
    assert [c.stop - c.start for c in conv._channel_blocks(torch.empty(B, L, H, dtype=torch.float64), 64)] == [16, 16, 5]
    g = torch.Generator().manual_seed(3)
    u = torch.randn(B, L, H, generator=g, dtype=torch.float64, requires_grad=True)
    K = torch.randn(H, L, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    y = fft_conv(u, K, reverse=reverse)
    y_ref = reference_conv(u, K, reverse)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad((y * w).sum(), (u, K)), torch.autograd.grad((y_ref * w).sum(), (u, K))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
def test_fft_conv_gradcheck(reverse):
    u = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    K = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, K: fft_conv(u, K, reverse=reverse), (u, K))
    # only one input differentiable: the other gradient is not computed, the one asked for is right
    assert torch.autograd.gradcheck(lambda u: fft_conv(u, K.detach(), reverse=reverse), (u,))


def test_fft_conv_runs_half_precision_inputs_in_float32():
    u = torch.randn(2, 40, 3)
    K = torch.randn(3, 40)
    y = fft_conv(u.bfloat16(), K)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference_conv(u.bfloat16().float(), K, False).float(), rtol=1e-4, atol=1e-4)


# -- the layer: conv mode equals the recurrence ------------------------------------------------------


def pair(seed: int = 0, dtype=torch.float64, **kw) -> tuple[S4D, S4D]:
    """(conv, scan) S4D layers with the same parameters."""
    torch.manual_seed(seed)
    conv = S4D(mode="conv", **kw).to(dtype)
    scan = S4D(mode="scan", **kw).to(dtype)
    scan.load_state_dict(conv.state_dict())
    return conv, scan


LAYERS = {
    "zoh": dict(d_model=5, d_state=4),
    "bilinear": dict(d_model=5, d_state=4, init="s4d_inv", discretization="bilinear"),
    "ring": dict(d_model=5, d_state=4, init="ring", init_params={"r_min": 0.99, "r_max": 0.9999}),
    "reverse": dict(d_model=5, d_state=4, reverse=True),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_conv_mode_equals_the_recurrence_and_its_gradients(kind):
    conv, scan = pair(**LAYERS[kind])
    with torch.no_grad():  # move B, C, D off their init so every parameter matters
        for p in conv.parameters():
            p.add_(0.05 * torch.randn_like(p))
    scan.load_state_dict(conv.state_dict())
    u = torch.randn(3, 57, 5, dtype=torch.float64)
    g = torch.randn(3, 57, 5, dtype=torch.float64)
    y_conv, y_scan = conv(u), scan(u)
    torch.testing.assert_close(y_conv, y_scan, rtol=1e-10, atol=1e-10)
    (y_conv * g).sum().backward()
    (y_scan * g).sum().backward()
    for (name, p), q in zip(conv.named_parameters(), scan.parameters(), strict=True):
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_conv_mode_gradcheck():
    conv, _ = pair(d_model=3, d_state=2)
    u = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (u,))
    params = tuple(conv.parameters())

    def of_params(*ps):
        return torch.func.functional_call(conv, dict(zip([n for n, _ in conv.named_parameters()], ps)), (u.detach(),))

    assert torch.autograd.gradcheck(of_params, params)


def test_conv_mode_in_float32_matches_the_float64_recurrence_near_the_unit_circle():
    """|λ| in [0.999, 0.9999] over 16384 steps: the float32 FFT path against the float64 loop."""
    conv, _ = pair(d_model=4, d_state=8, init="ring", init_params={"r_min": 0.999, "r_max": 0.9999}, dtype=torch.float32)
    u = torch.randn(1, 16384, 4)
    with torch.no_grad():
        y = conv(u).double()
        lam, B_bar = (t.to(torch.complex128) for t in conv.discrete())
        x = reference_scan(lam.reshape(-1), (B_bar * u.double()[..., None]).reshape(1, 16384, -1))
        C = conv.C().to(torch.complex128)
        exact = 2 * (x.view(1, 16384, 4, 8) * C).real.sum(-1) + conv.D.double() * u.double()
    err = ((y - exact).abs().max() / exact.abs().max()).item()
    assert err < 1e-5, err  # measured 2.8e-7


def test_conv_mode_step_equals_forward():
    conv, _ = pair(d_model=5, d_state=4)
    u = torch.randn(2, 30, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(run_steps(conv, u), conv(u), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16])
def test_conv_mode_runs_in_float32_under_autocast(weights):
    """The kernel's powers and the FFT are float32 (or wider) under bf16 autocast; with float32
    weights the result is the one without autocast."""
    torch.manual_seed(0)
    layer = S4D(d_model=6, d_state=5, init="ring", init_params={"r_min": 0.99, "r_max": 0.999}).to(weights)
    u = torch.randn(2, 300, 6)
    with torch.no_grad():
        plain = layer(u)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            K = layer.kernel(300)
            y = layer(u)
    assert K.dtype == torch.float32 and y.dtype == torch.float32 and torch.isfinite(y).all()
    if weights == torch.float32:
        torch.testing.assert_close(y, plain, rtol=1e-6, atol=1e-6)


def test_empty_and_single_step_sequences():
    conv, scan = pair(d_model=3, d_state=2)
    for L in (0, 1):
        u = torch.randn(2, L, 3, dtype=torch.float64)
        torch.testing.assert_close(conv(u), scan(u), rtol=1e-12, atol=1e-12)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        S4D(4, 2, mode="fft")


# ---------------------------------------------------------------------------------------------
# Carried state and document resets


def test_vandermonde_state_is_the_final_state_of_the_recurrence():
    g = torch.Generator().manual_seed(0)
    lam = torch.polar(torch.full((3, 5), 0.9999, dtype=torch.float64),
                      torch.rand(3, 5, generator=g, dtype=torch.float64) * 6).to(torch.complex128)
    for L in (1, 2, 7, 64, 333):
        u = torch.randn(2, L, 3, generator=g, dtype=torch.float64)
        x = torch.zeros(2, 3, 5, dtype=torch.complex128)
        for t in range(L):
            x = lam * x + u[:, t, :, None]
        torch.testing.assert_close(vandermonde_state(lam, u), x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_tail", [False, True])
def test_causal_depthwise_conv_never_reads_across_documents(with_tail):
    g = torch.Generator().manual_seed(1)
    E, K, L = 3, 4, 12
    w = torch.randn(E, 1, K, generator=g, dtype=torch.float64)
    bias = torch.randn(E, generator=g, dtype=torch.float64)
    x = torch.randn(1, L, E, generator=g, dtype=torch.float64)
    tail = torch.randn(1, E, K - 1, generator=g, dtype=torch.float64) if with_tail else None
    resets = torch.zeros(1, L, dtype=torch.bool)
    resets[0, [2, 8, 9]] = True
    y, new_tail = causal_depthwise_conv(x, w, bias, tail=tail, resets=resets)
    starts = [0, 2, 8, 9, L]
    for s, e in zip(starts[:-1], starts[1:]):  # each document alone, from zeros (the first: from the tail)
        y_doc, t_doc = causal_depthwise_conv(x[:, s:e], w, bias, tail=tail if s == 0 else None)
        torch.testing.assert_close(y[:, s:e], y_doc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new_tail, t_doc, rtol=0, atol=0)  # the last document's inputs, zero-padded
    y_free, _ = causal_depthwise_conv(x, w, bias, tail=tail)
    assert not torch.allclose(y_free, y), "guard: without resets the documents must mix"


def test_causal_depthwise_conv_carries_its_tail():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    x = torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    whole, _ = causal_depthwise_conv(x, w, None)
    first, tail = causal_depthwise_conv(x[:, :6], w, None)
    second, _ = causal_depthwise_conv(x[:, 6:], w, None, tail=tail)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-12, atol=1e-12)
