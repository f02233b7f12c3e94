"""SelectiveSSM against a plain per-timestep loop written from the Mamba (S6) equations."""

import math

import pytest
import torch

from ssm_train.nn import SelectiveSSM


def silu(v):
    return v * torch.sigmoid(v)


def softplus(v):
    return torch.log1p(torch.exp(v))


def selective_loop(m: SelectiveSSM, u: torch.Tensor) -> torch.Tensor:
    """out_k = W_out (y_k ⊙ SiLU(z_k)) with y_k = C_k h_k + D x_k and
    h_k = exp(Δ_k A) h_{k-1} + Δ_k B_k x_k; x_k = SiLU(conv(x)_k); Δ_k = softplus(W_dt δ_k + b_dt)."""
    Bsz, L, _ = u.shape
    E, N, R, K = m.d_inner, m.d_state, m.dt_rank, m.d_conv
    W_in, W_x, W_out = m.in_proj.weight, m.x_proj.weight, m.out_proj.weight
    w_conv, b_conv = m.conv1d.weight[:, 0, :], m.conv1d.bias  # [E, K], [E]
    A = -torch.exp(m.A_log)  # [E, N]
    x_all = u @ W_in[:E].T  # [B, L, E]
    z_all = u @ W_in[E:].T
    h = torch.zeros(Bsz, E, N, dtype=u.dtype)
    out = []
    for t in range(L):
        # depthwise causal conv: the newest input meets the last tap w[:, K-1]
        xc = b_conv.expand(Bsz, E).clone()
        for j in range(K):
            if t - j >= 0:
                xc = xc + w_conv[:, K - 1 - j] * x_all[:, t - j]
        x = silu(xc)
        proj = x @ W_x.T
        delta, B_t, C_t = proj[:, :R], proj[:, R : R + N], proj[:, R + N :]
        dt = softplus(delta @ m.dt_proj.weight.T + m.dt_proj.bias)  # [B, E]
        for c in range(E):  # one channel at a time, as in the equations
            h[:, c] = torch.exp(dt[:, c, None] * A[c]) * h[:, c] + dt[:, c, None] * B_t * x[:, c, None]
        y = (h * C_t[:, None, :]).sum(-1) + m.D * x
        out.append((y * silu(z_all[:, t])) @ W_out.T)
    return torch.stack(out, 1)


@pytest.mark.parametrize("d_model, d_state, L", [(4, 3, 9), (20, 5, 7)])
def test_selective_equals_the_slow_loop(d_model, d_state, L):
    torch.manual_seed(0)
    m = SelectiveSSM(d_model=d_model, d_state=d_state).double().eval()
    with torch.no_grad():  # make the selection matter: larger Δ, nonzero conv taps everywhere
        m.dt_proj.bias.add_(2.0)
        m.D.normal_()
    u = torch.randn(2, L, d_model, dtype=torch.float64)
    with torch.no_grad():
        expected = selective_loop(m, u)
        torch.testing.assert_close(m(u), expected, rtol=1e-10, atol=1e-12)
        state, ys = None, []
        for u_t in u.unbind(1):
            y_t, state = m.step(u_t, state)
            ys.append(y_t)
        torch.testing.assert_close(torch.stack(ys, 1), expected, rtol=1e-10, atol=1e-12)
    conv_window, h = state
    assert conv_window.shape == (2, m.d_inner, m.d_conv - 1) and h.shape == (2, m.d_inner, d_state)


def test_step_state_carries_the_last_conv_inputs():
    torch.manual_seed(1)
    m = SelectiveSSM(d_model=4, d_state=3).double()
    u = torch.randn(2, 5, 4, dtype=torch.float64)
    state = None
    for u_t in u.unbind(1):
        _, state = m.step(u_t, state)
    x = (u @ m.in_proj.weight.T)[..., : m.d_inner]  # the conv's inputs
    torch.testing.assert_close(state[0], x[:, -3:].transpose(1, 2))


def test_mamba_initialisation():
    H, N = 40, 6
    m = SelectiveSSM(d_model=H, d_state=N, init_params={"dt_min": 2e-3, "dt_max": 5e-2})
    assert m.d_inner == 2 * H and m.dt_rank == math.ceil(H / 16) == 3
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, N + 1)).expand(2 * H, N))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 2e-3 * (1 - 1e-5) and dt.max() <= 5e-2 * (1 + 1e-5)
    assert m.conv1d.kernel_size == (4,) and m.conv1d.groups == m.d_inner
    assert m.x_proj.out_features == m.dt_rank + 2 * N
    torch.testing.assert_close(m.D, torch.ones(2 * H))
