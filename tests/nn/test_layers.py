"""The recurrent layers (every registered recurrent kind: LRU, real LRU, S4D, SelectiveSSM, RG-LRU,
...): step = forward, causality, reversal, precision under autocast, real parameters, gradients;
LRU and S4D against their convolution kernels; the LRU normalisation (Prop. 3)."""

import math
import sys

import pytest
import torch

from ssm_train.nn import LAYERS as REGISTRY
from ssm_train.nn import LRU, S4D, SelectiveSSM
from ssm_train.ops.scan import linear_scan, reference_scan
from ssm_train.ops.selective_scan import selective_scan
from tests.nn.scan_checks import run_steps

H, N, B, L = 6, 5, 2, 12
RECURRENT_KINDS = [kind for kind, spec in REGISTRY.items() if spec.recurrent]

LAYERS = {
    "lru": lambda **kw: LRU(d_model=H, d_state=N, **kw),
    "lru_unnormalized": lambda **kw: LRU(d_model=H, d_state=N, normalize=False, init_params={"max_phase": 0.3}, **kw),
    "real": lambda **kw: LRU(d_model=H, d_state=N, complex=False, **kw),
    "s4d": lambda **kw: S4D(d_model=H, d_state=N, **kw),
    "s4d_zoh_scan": lambda **kw: S4D(d_model=H, d_state=N, mode="scan", **kw),
    "s4d_bilinear": lambda **kw: S4D(d_model=H, d_state=N, init="s4d_inv", discretization="bilinear", **kw),
    "s4d_ring": lambda **kw: S4D(d_model=H, d_state=N, init="ring", init_params={"r_min": 0.5, "r_max": 0.95}, **kw),
    "s4d_real": lambda **kw: S4D(
        d_model=H, d_state=N, init="s4d_real", init_params={"dt_min": 0.1, "dt_max": 0.5}, **kw
    ),
    "selective": lambda **kw: SelectiveSSM(d_model=H, d_state=N, **kw),
}
for _kind in RECURRENT_KINDS:  # every registered recurrence at its defaults: a new layer file joins these tests
    LAYERS.setdefault(_kind, lambda _spec=REGISTRY[_kind], **kw: _spec.build(H, N, **kw))
kinds = pytest.mark.parametrize("kind", list(LAYERS))


def make(kind: str, seed: int = 0, dtype=torch.float64, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return LAYERS[kind](**kw).to(dtype).eval()


def inputs(seed: int = 1, dtype=torch.float64, length: int = L) -> torch.Tensor:
    return torch.randn(B, length, H, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def convolves(layer) -> bool:
    """S4D's conv mode (FFT): causal in exact arithmetic, but every output's rounding sees every input."""
    return getattr(layer, "mode", None) == "conv"



def test_each_layer_builds_from_d_model_and_d_state_alone():
    for kind in RECURRENT_KINDS:
        layer = REGISTRY[kind].layer_cls(d_model=H, d_state=N)
        assert layer(torch.randn(B, L, H)).shape == (B, L, H)


@kinds
def test_shapes(kind):
    layer = make(kind, dtype=torch.float32)
    u = inputs(dtype=torch.float32)
    assert layer(u).shape == (B, L, H)
    y_t, state = layer.step(u[:, 0], None)
    assert y_t.shape == (B, H)
    assert layer.step(u[:, 1], state)[0].shape == (B, H)


@kinds
def test_step_equals_forward(kind):
    layer, u = make(kind), inputs()
    with torch.no_grad():
        torch.testing.assert_close(run_steps(layer, u), layer(u), rtol=1e-10, atol=1e-10)


@kinds
def test_step_equals_forward_float32(kind):
    layer, u = make(kind, dtype=torch.float32), inputs(dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(run_steps(layer, u), layer(u), rtol=1e-4, atol=1e-5)


@kinds
@pytest.mark.parametrize("t", [0, 5, L - 2])
def test_causal(kind, t):
    layer, u = make(kind), inputs()
    v = u.clone()
    v[:, t + 1 :] = torch.randn_like(v[:, t + 1 :])
    with torch.no_grad():
        y, z = layer(u), layer(v)
    atol = 1e-13 if convolves(layer) else 0  # float64 rounding; a leak of the future would be O(1)
    torch.testing.assert_close(y[:, : t + 1], z[:, : t + 1], rtol=0, atol=atol)
    assert not torch.allclose(y[:, t + 1 :], z[:, t + 1 :])


@kinds
def test_reverse_is_forward_on_the_flipped_sequence(kind):
    backward = make(kind, reverse=True)
    forward = make(kind, seed=99)
    forward.load_state_dict(backward.state_dict())
    u = inputs()
    with torch.no_grad():
        torch.testing.assert_close(backward(u), forward(u.flip(1)).flip(1), rtol=1e-10, atol=1e-10)
        v = u.clone()
        v[:, :4] += 1.0  # anti-causal: inputs before t do not reach outputs from t on
        atol = 1e-13 if convolves(backward) else 0
        torch.testing.assert_close(backward(v)[:, 4:], backward(u)[:, 4:], rtol=0, atol=atol)
    with pytest.raises(RuntimeError, match="no causal step"):
        backward.step(u[:, 0], None)


@pytest.fixture
def scan_dtypes(monkeypatch):
    """Record the dtypes every layer hands to linear_scan (SelectiveSSM: to selective_scan), in
    every registered layer's module."""
    seen, seen_a = [], []

    def spy(a, b, h0=None, **kw):
        seen.append((a.dtype, b.dtype))
        seen_a.append(a.detach())
        return linear_scan(a, b, h0, **kw)

    def selective_spy(x, dt, A, B, C, **kw):  # the fused scan forms a = exp(Δ A) inside: record Δ A's a
        seen.append((x.dtype, dt.dtype, A.dtype, B.dtype, C.dtype))
        seen_a.append(torch.exp(dt[..., None] * A).flatten(2).detach())
        return selective_scan(x, dt, A, B, C, **kw)

    for spec in REGISTRY.values():
        module = sys.modules[spec.module]
        if hasattr(module, "linear_scan"):
            monkeypatch.setattr(module, "linear_scan", spy)
        if hasattr(module, "selective_scan"):
            monkeypatch.setattr(module, "selective_scan", selective_spy)
    return seen, seen_a


@kinds
@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16])
def test_recurrence_runs_in_float32_under_autocast(kind, weights, scan_dtypes):
    layer, u = make(kind, dtype=weights), inputs(dtype=torch.float32)
    if convolves(layer):
        pytest.skip("conv mode does not scan; tests/ops/test_conv.py checks its precision under autocast")
    wide = {torch.float32, torch.complex64}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(u)
        assert y.shape == (B, L, H) and torch.isfinite(y).all()
        _, state = layer.step(u[:, 0], None)
        _, state = layer.step(u[:, 1], state)
    dtypes, _ = scan_dtypes
    assert len(dtypes) == 1 and set(dtypes[0]) <= wide, dtypes
    h = state[1] if isinstance(state, tuple) else state
    assert h.dtype in wide


@kinds
def test_decay_is_not_rounded_to_bfloat16_under_autocast(kind, scan_dtypes):
    """a (the decay, set by Λ or by Δ) must be computed in float32, not merely cast up afterwards."""
    layer, u = make(kind, dtype=torch.float32), inputs(dtype=torch.float32)
    if convolves(layer):
        pytest.skip("conv mode does not scan; tests/ops/test_conv.py checks its kernel under autocast")
    # input-dependent decays (selective: Δ = softplus(W δ + bias)): zero the weights that make a
    # depend on the input (the layer's `selection_params`), so a does not depend on bf16 projections
    with torch.no_grad():
        for name in getattr(layer, "selection_params", ()):
            layer.get_parameter(name).zero_()
    layer(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(u)
    _, (a_fp32, a_autocast) = scan_dtypes
    torch.testing.assert_close(a_autocast, a_fp32, rtol=1e-6, atol=1e-7)
    a = a_autocast if a_autocast.dim() == 1 else a_autocast[0, 0]  # input-dependent: same a at every step here
    a = a if a.is_complex() else torch.complex(a, torch.zeros_like(a))
    torch.testing.assert_close(a, layer.eigenvalues().detach().reshape(-1), rtol=1e-6, atol=1e-7)


@kinds
def test_all_parameters_are_real(kind):
    layer = LAYERS[kind]()
    for name, p in layer.named_parameters():
        assert p.dtype == torch.float32 and not p.is_complex(), name


@kinds
def test_gradient_reaches_every_parameter(kind):
    layer, u = make(kind, dtype=torch.float32).train(), inputs(dtype=torch.float32)
    with torch.no_grad():  # move off special points (e.g. real S4D: Im x = 0 so C_im gets exactly 0)
        for p in layer.parameters():
            p.add_(0.01 * torch.randn_like(p))
    y = layer(u)
    (y * torch.randn_like(y)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@kinds
def test_eigenvalues_are_stable_and_complex(kind):
    lam = LAYERS[kind]().eigenvalues()
    assert lam.is_complex() and lam.abs().max() < 1


# -- the same layers written as convolutions with their kernels ------------------------------------


def causal_conv(K: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{j<=t} K_j u_{t-j}, channelwise; K: [L, H], u: [B, L, H]."""
    Lk = u.shape[1]
    return torch.stack([sum(K[j] * u[:, t - j] for j in range(t + 1)) for t in range(Lk)], 1)


@pytest.mark.parametrize("complex_", [True, False])
def test_lru_equals_its_kernel(complex_):
    layer, u = make("lru" if complex_ else "real"), inputs()
    lam = layer.eigenvalues().detach()
    Bm = torch.complex(layer.B_re, layer.B_im) if complex_ else layer.B_re.to(torch.complex128)
    Cm = torch.complex(layer.C_re, layer.C_im) if complex_ else layer.C_re.to(torch.complex128)
    gamma = torch.exp(layer.gamma_log).to(torch.complex128)
    # y_t = Σ_j Re(C Λ^j γ B) u_{t-j} + D u_t: a full [H, H] matrix kernel
    K = [(Cm @ torch.diag(lam**j * gamma) @ Bm).real for j in range(L)]
    y = torch.stack([sum(u[:, t - j] @ K[j].T for j in range(t + 1)) for t in range(L)], 1) + layer.D * u
    with torch.no_grad():
        torch.testing.assert_close(layer(u), y.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["s4d", "s4d_bilinear"])
def test_s4d_equals_its_kernel(kind):
    """S4D paper: K_j = 2 Re Σ_n C_n B̄_n λ_n^j, with B̄ from the ZOH / bilinear rule written out here."""
    layer, u = make(kind), inputs()
    A = torch.complex(-torch.exp(layer.A_log_re), layer.A_im).detach()
    dt = torch.exp(layer.log_dt).detach()[:, None]
    Bc = torch.complex(layer.B_re, layer.B_im).detach()
    if layer.discretization == "zoh":
        lam, B_bar = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A * Bc
    else:
        lam, B_bar = (2 + dt * A) / (2 - dt * A), 2 * dt / (2 - dt * A) * Bc
    C = torch.complex(layer.C_re, layer.C_im).detach()
    K = torch.stack([2 * (C * B_bar * lam**j).real.sum(-1) for j in range(L)])  # [L, H]
    with torch.no_grad():
        torch.testing.assert_close(layer(u), causal_conv(K, u) + layer.D * u, rtol=1e-10, atol=1e-10)


# -- LRU normalisation (Orvieto et al. 2023, Prop. 3) ----------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
def test_lru_normalisation_keeps_state_energy(normalize):
    """White noise u: E|x|² = E|γ ⊙ Bu|² / (1 - |λ|²) per mode. With γ = sqrt(1 - |λ|²) the state has
    the energy of Bu; without it the ratio is the mean of 1/(1 - ρ) over ρ = |λ|² ~ U[a, b],
    i.e. log((1 - a)/(1 - b)) / (b - a)."""
    r_min, r_max, H_, N_, B_, L_, burn_in = 0.5, 0.9, 16, 256, 8, 1200, 200
    torch.manual_seed(0)
    layer = LRU(d_model=H_, d_state=N_, normalize=normalize, init_params={"r_min": r_min, "r_max": r_max}).double()
    u = torch.randn(B_, L_, H_, dtype=torch.float64)
    with torch.no_grad():
        lam = torch.exp(torch.complex(-torch.exp(layer.nu_log), torch.exp(layer.theta_log)))
        bu = u.to(torch.complex128) @ torch.complex(layer.B_re, layer.B_im).T
        gamma = torch.exp(layer.gamma_log) if normalize else torch.ones(N_, dtype=torch.float64)
        x = reference_scan(lam, gamma * bu)
    ratio = (x[:, burn_in:].abs() ** 2).mean() / (bu.abs() ** 2).mean()
    a, b = r_min**2, r_max**2
    expected = 1.0 if normalize else math.log((1 - a) / (1 - b)) / (b - a)
    assert abs(ratio.item() / expected - 1) < 0.1, (ratio.item(), expected)
    if normalize:  # γ is what the layer applies to its input
        torch.testing.assert_close(layer._input(u), gamma * bu)
