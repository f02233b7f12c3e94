"""Eigenvalue initialisations: distributions, formulas, validation, and the layers built from them."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ssm_train.nn import INITS, LRU, S4D, SelectiveSSM, get_init, register_init
from ssm_train.nn.init import discretize, init_eigenvalues, undiscretize


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- ring / glorot / real ------------------------------------------------------------------------


def test_ring_radius_squared_is_uniform_and_phase_is_uniform():
    r_min, r_max, max_phase = 0.4, 0.95, 1.7
    lam = get_init("ring")(20_000, r_min=r_min, r_max=r_max, max_phase=max_phase, generator=gen(1), dtype=torch.float64)
    r, phase = lam.abs().numpy(), np.mod(lam.angle().numpy(), 2 * np.pi)
    assert lam.dtype == torch.complex128 and lam.shape == (20_000,)
    assert r.min() >= r_min - 1e-12 and r.max() <= r_max + 1e-12
    assert phase.min() >= 0 and phase.max() <= max_phase + 1e-12
    assert stats.kstest(r**2, stats.uniform(loc=r_min**2, scale=r_max**2 - r_min**2).cdf).pvalue > 1e-3
    assert stats.kstest(phase, stats.uniform(loc=0, scale=max_phase).cdf).pvalue > 1e-3
    # and |λ| itself is NOT uniform (the test can tell the two apart)
    assert stats.kstest(r, stats.uniform(loc=r_min, scale=r_max - r_min).cdf).pvalue < 1e-3


def test_glorot_is_ring_on_the_unit_disk():
    a = get_init("glorot")((50, 40), generator=gen(3))
    b = get_init("ring")((50, 40), r_min=0.0, r_max=1.0, max_phase=2 * math.pi, generator=gen(3))
    torch.testing.assert_close(a, b)
    assert a.abs().max() < 1
    # circular law: the fraction inside radius 1/2 is the area fraction 1/4
    assert abs((a.abs() < 0.5).float().mean().item() - 0.25) < 0.02


def test_real_has_zero_phase_and_ring_radii():
    lam = get_init("real")(10_000, r_min=0.2, r_max=0.9, generator=gen(2), dtype=torch.float64)
    assert torch.all(lam.imag == 0) and torch.all(lam.real > 0)
    r = lam.real.numpy()
    assert r.min() >= 0.2 and r.max() <= 0.9
    assert stats.kstest(r**2, stats.uniform(loc=0.04, scale=0.81 - 0.04).cdf).pvalue > 1e-3


def test_real_signed_has_both_signs_and_ring_radii():
    lam = get_init("real_signed")(10_000, r_min=0.2, r_max=0.9, generator=gen(2), dtype=torch.float64)
    assert torch.all(lam.imag == 0)
    assert abs((lam.real < 0).double().mean().item() - 0.5) < 0.02  # each sign with odds 1/2
    r = lam.real.abs().numpy()
    assert r.min() >= 0.2 and r.max() <= 0.9
    assert stats.kstest(r**2, stats.uniform(loc=0.04, scale=0.81 - 0.04).cdf).pvalue > 1e-3


@settings(max_examples=30, deadline=None)
@given(
    r=st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
    max_phase=st.floats(0, 2 * math.pi),
    seed=st.integers(0, 2**31),
)
def test_ring_samples_stay_in_the_ring(r, max_phase, seed):
    r_min, r_max = r
    lam = get_init("ring")(64, r_min=r_min, r_max=r_max, max_phase=max_phase, generator=gen(seed), dtype=torch.float64)
    assert torch.all(lam.abs() >= r_min - 1e-9) and torch.all(lam.abs() <= r_max + 1e-9)
    phase = torch.remainder(lam[lam.abs() > 0].angle(), 2 * math.pi)  # arg 0 is undefined (±0 -> 0 or π)
    assert torch.all((phase <= max_phase + 1e-9) | (phase >= 2 * math.pi - 1e-9))


# -- continuous-time inits ------------------------------------------------------------------------

FORMULAS = {  # A_n written out from the S4D paper, n = 0..N-1
    "s4d_lin": lambda n, N: -0.5 + 1j * np.pi * n,
    "s4d_inv": lambda n, N: -0.5 + 1j * N / np.pi * (N / (2 * n + 1) - 1),
    "s4d_real": lambda n, N: -(n + 1.0) + 0j,
    "mamba": lambda n, N: -(n + 1.0) + 0j,
}


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_s4d_inits_match_their_formulas(name, discretization):
    rows, N, dt_min, dt_max = 400, 7, 1e-3, 1e-1
    lam = get_init(name)(
        (rows, N), dt_min=dt_min, dt_max=dt_max, discretization=discretization, generator=gen(4), dtype=torch.float64
    ).numpy()
    A = FORMULAS[name](np.arange(N), N)
    # recover each row's Δ from its first eigenvalue, then every other eigenvalue must follow
    if discretization == "zoh":
        dt = np.log(np.abs(lam[:, 0])) / A[0].real
        expected = np.exp(dt[:, None] * A)
    else:
        dt = (2 * (lam[:, 0] - 1) / (lam[:, 0] + 1) / A[0]).real
        expected = (1 + dt[:, None] * A / 2) / (1 - dt[:, None] * A / 2)
    np.testing.assert_allclose(lam, expected, rtol=1e-9, atol=1e-12)
    assert dt.min() >= dt_min * (1 - 1e-9) and dt.max() <= dt_max * (1 + 1e-9)
    assert stats.kstest(np.log(dt), stats.uniform(loc=np.log(dt_min), scale=np.log(dt_max / dt_min)).cdf).pvalue > 1e-3
    assert np.abs(lam).max() < 1


@settings(max_examples=40, deadline=None)
@given(
    re=st.floats(-50, -1e-3),
    im=st.floats(-100, 100),
    dt=st.floats(1e-4, 1.0),
    method=st.sampled_from(["zoh", "bilinear"]),
)
def test_undiscretize_inverts_discretize(re, im, dt, method):
    A = torch.tensor(complex(re, im), dtype=torch.complex128)
    if method == "zoh" and abs(dt * im) >= math.pi:  # exp wraps the phase: only invertible on the principal branch
        return
    lam = discretize(A, torch.tensor(dt, dtype=torch.float64), method)
    assert lam.abs() < 1
    if lam.abs() < 1e-12:
        return
    back = undiscretize(lam, torch.tensor(dt, dtype=torch.float64), method)
    torch.testing.assert_close(back, A, rtol=1e-6, atol=1e-6)


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params, word",
    [
        ("ring", {"r_min": -0.1}, "r_min"),
        ("ring", {"r_min": 0.8, "r_max": 0.5}, "r_max"),
        ("ring", {"r_max": 1.5}, "r_max"),
        ("ring", {"max_phase": 7.0}, "max_phase"),
        ("real", {"r_min": -1.0}, "r_min"),
        ("s4d_lin", {"dt_min": 0.0}, "dt_min"),
        ("s4d_inv", {"dt_min": 0.1, "dt_max": 0.01}, "dt_max"),
        ("s4d_real", {"discretization": "euler"}, "discretization"),
        ("ring", {"dt_min": 0.1}, "unknown parameter"),
        ("glorot", {"r_min": 0.1}, "unknown parameter"),
    ],
)
def test_bad_parameters_raise_naming_them(name, params, word):
    with pytest.raises(ValueError, match=word):
        init_eigenvalues(name, (4,), params)


def test_unknown_init_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ring.*") as info:
        get_init("rnig")
    for name in ("ring", "real", "glorot", "s4d_lin", "s4d_inv", "s4d_real", "mamba"):
        assert name in str(info.value)


def test_register_init_adds_a_usable_init(monkeypatch):
    monkeypatch.setattr("ssm_train.nn.init.INITS", dict(INITS))

    @register_init("half")
    def half(shape, *, generator=None, dtype=torch.float32):
        return torch.full(shape if isinstance(shape, tuple) else (shape,), 0.5, dtype=dtype).to(torch.complex64) * 1j

    layer = LRU(d_model=3, d_state=5, init="half")
    torch.testing.assert_close(layer.eigenvalues(), torch.full((5,), 0.5j))
    with pytest.raises(ValueError, match="already registered"):
        register_init("half")(half)


# -- layers expose the init's eigenvalues --------------------------------------------------------


@pytest.mark.parametrize("name, params", [("ring", {"r_min": 0.3, "r_max": 0.99, "max_phase": 3.0}), ("glorot", {})])
def test_lru_eigenvalues_are_the_inits(name, params):
    layer = LRU(d_model=4, d_state=32, init=name, init_params=params, generator=gen(5))
    expected = init_eigenvalues(name, (32,), params, generator=gen(5))
    torch.testing.assert_close(layer.eigenvalues(), expected, rtol=1e-4, atol=1e-5)


def test_lru_defaults_are_documented_ring():
    lam = LRU(d_model=4, d_state=2000, generator=gen(6)).eigenvalues()
    assert lam.abs().min() >= 0.9 - 1e-6 and lam.abs().max() <= 0.999 + 1e-6
    assert torch.remainder(lam.angle(), 2 * math.pi).max() > 6.0  # phases span [0, 2π]
    real = LRU(d_model=4, d_state=100, complex=False, generator=gen(6)).eigenvalues()
    assert torch.all(real.imag == 0) and real.real.min() >= 0.9 - 1e-6


def test_real_lru_keeps_the_signed_inits_eigenvalues_as_a_fixed_buffer():
    params = {"r_min": 0.5, "r_max": 0.99}
    layer = LRU(d_model=4, d_state=64, complex=False, init="real_signed", init_params=params, generator=gen(5))
    expected = init_eigenvalues("real_signed", (64,), params, generator=gen(5))
    torch.testing.assert_close(layer.eigenvalues(), expected, rtol=1e-4, atol=1e-5)
    assert (layer.lam() < 0).any() and (layer.lam() > 0).any()
    assert "lam_sign" in dict(layer.named_buffers()) and "lam_sign" not in dict(layer.named_parameters())
    with pytest.raises(ValueError, match="positive unless the init is signed"):  # real init: no sign
        LRU(d_model=4, d_state=4, complex=False, init="s4d_lin")


def test_real_lru_refuses_complex_eigenvalues():
    with pytest.raises(ValueError, match="complex=False"):
        LRU(d_model=4, d_state=4, complex=False, init="ring")


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["s4d_lin", "s4d_inv", "s4d_real"])
def test_s4d_eigenvalues_follow_log_dt(init, discretization):
    dt_range = {"dt_min": 0.01, "dt_max": 0.2}
    layer = S4D(d_model=5, d_state=6, init=init, discretization=discretization, init_params=dt_range)
    dt = layer.log_dt.exp().double()
    assert dt.min() >= 0.01 * (1 - 1e-6) and dt.max() <= 0.2 * (1 + 1e-6)
    A = torch.tensor(FORMULAS[init](np.arange(6), 6), dtype=torch.complex128)
    lam = layer.eigenvalues().to(torch.complex128)
    torch.testing.assert_close(lam, discretize(A, dt[:, None], discretization), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # eigenvalues() reads the current log_dt
        layer.log_dt.add_(1.0)
    lam = layer.eigenvalues().to(torch.complex128)
    torch.testing.assert_close(lam, discretize(A, math.e * dt[:, None], discretization), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_with_a_discrete_init_starts_at_its_eigenvalues(discretization):
    ring = {"r_min": 0.5, "r_max": 0.9}
    layer = S4D(d_model=3, d_state=8, init="ring", init_params=ring, discretization=discretization, generator=gen(7))
    g = gen(7)
    torch.rand((3,), generator=g, dtype=torch.float64)  # S4D draws its Δ first (in float64)
    expected = get_init("ring")((3, 8), r_min=0.5, r_max=0.9, generator=g)
    torch.testing.assert_close(layer.eigenvalues(), expected, rtol=1e-4, atol=1e-5)


def test_selective_eigenvalues_at_the_dt_bias():
    layer = SelectiveSSM(d_model=8, d_state=5, init_params={"dt_min": 0.01, "dt_max": 0.05})
    lam = layer.eigenvalues()
    assert lam.shape == (16, 5) and lam.is_complex() and torch.all(lam.imag == 0)
    dt = -torch.log(lam.real[:, 0])  # A_0 = -1
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    torch.testing.assert_close(lam.real, torch.exp(-dt[:, None] * torch.arange(1, 6)))
    with pytest.raises(ValueError, match="init must be one of"):
        SelectiveSSM(d_model=8, d_state=5, init="ring")
    with pytest.raises(ValueError, match="dt_mn"):
        SelectiveSSM(d_model=8, d_state=5, init_params={"dt_mn": 0.1})


@pytest.mark.parametrize("name, params", [("ring", {"r_min": 0.9, "r_max": 1.0}), ("real", {"r_min": 0.9, "r_max": 1.0})])
def test_the_ring_to_the_unit_circle_is_stable_in_every_layer(name, params):
    """r_max = 1 (the LRU paper's ring_0.9_1): float32 draws can round to |λ| = 1; the layers clamp
    at 1 - 1e-7, so nu_log, gamma_log and S4D's A stay finite and every |λ| < 1."""
    draws = get_init(name)(200_000, **params, generator=gen(11))
    assert draws.abs().max() <= 1.0
    complex_ = name == "ring"
    lru = LRU(d_model=2, d_state=200_000, init=name, init_params=params, complex=complex_, generator=gen(11))
    for p in (lru.nu_log, lru.gamma_log):
        assert torch.isfinite(p).all()
    assert lru.eigenvalues().abs().max() < 1
    s4d = S4D(d_model=4, d_state=2000, init=name, init_params=params, generator=gen(12))
    assert torch.isfinite(s4d.A_log_re).all() and torch.isfinite(s4d.A_im).all()
    assert s4d.eigenvalues().abs().max() < 1
    u = torch.randn(1, 64, 2)
    assert torch.isfinite(lru(u)).all()


def test_one_rule_for_the_radii_in_the_inits_and_the_config():
    from ssm_train.nn.init import init_problems

    assert init_problems({"r_min": 0.9, "r_max": 1.0}) == []
    assert init_problems({"r_max": 1.01}, prefix="model.init.") == [
        ("model.init.r_max", "must be <= 1 (|λ| <= 1: a stable recurrence), got r_max=1.01")]
    with pytest.raises(ValueError, match="r_max must be <= 1"):
        init_eigenvalues("ring", (3,), {"r_max": 1.01})
