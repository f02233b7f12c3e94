"""The LRU's fused projections (one input and one output matmul over interleaved (re, im) pairs,
γ folded into the input weight) against the paper's equations written with complex tensors and
the reference loop: values and every parameter's gradient, in float64, on hard inputs."""

import math

import pytest
import torch

from ssm_train.nn import LRU
from ssm_train.ops.scan import reference_scan


def equations(layer: LRU, u: torch.Tensor) -> torch.Tensor:
    """x_k = Λ x_{k-1} + γ ⊙ B u_k,  y_k = Re(C x_k) + D ⊙ u_k, term by term."""
    nu = torch.exp(layer.nu_log)
    if layer.complex:
        lam = torch.exp(torch.complex(-nu, torch.exp(layer.theta_log)))
        Bm, Cm = torch.complex(layer.B_re, layer.B_im), torch.complex(layer.C_re, layer.C_im)
    else:
        lam, Bm, Cm = torch.exp(-nu), layer.B_re, layer.C_re
        if layer.init == "real_signed":
            lam = lam * layer.lam_sign
    bu = u.to(Bm.dtype) @ Bm.T
    if layer.normalize:
        bu = bu * torch.exp(layer.gamma_log)
    x = reference_scan(lam, bu, reverse=layer.reverse)
    y = x @ Cm.T
    return (y.real if y.is_complex() else y) + layer.D * u


CASES = {
    # |λ| = 0.9999 with phases up to 2π, over 2048 steps: the state remembers nearly all of it
    "ring_0.9999": dict(init_params={"r_min": 0.9999, "r_max": 0.9999, "max_phase": 2 * math.pi}),
    "ring_wide": dict(init_params={"r_min": 0.0, "r_max": 0.999, "max_phase": math.pi}),
    "unnormalised": dict(normalize=False, init_params={"r_min": 0.99, "r_max": 0.9999}),
    "reverse": dict(reverse=True, init_params={"r_min": 0.999, "r_max": 0.9999}),
    "real": dict(complex=False, init_params={"r_min": 0.99, "r_max": 0.9999}),
    "real_signed": dict(complex=False, init="real_signed", init_params={"r_min": 0.99, "r_max": 0.9999}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_projections_equal_the_equations(case):
    H, N, B, L = 5, 7, 2, 2048
    torch.manual_seed(0)
    layer = LRU(H, N, **CASES[case]).double()
    u = torch.randn(B, L, H, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, L, H, dtype=torch.float64)
    params = [u, *layer.parameters()]
    got = torch.autograd.grad((layer(u) * g).sum(), params)
    want = torch.autograd.grad((equations(layer, u) * g).sum(), params)
    with torch.no_grad():
        torch.testing.assert_close(layer(u), equations(layer, u), rtol=1e-10, atol=1e-10)
    names = ["u"] + [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"∂/∂{n}: {m}")


def test_weights_interleave_real_and_imaginary_parts():
    """Row 2n of W_in is γ_n B_re[n], row 2n+1 is γ_n B_im[n]; W_out reads (re, im) as (C_re, -C_im):
    the layout that lets u @ W_in.T be viewed as complex without a copy."""
    layer = LRU(3, 4).double()
    w_in, w_out = layer.input_weight(), layer.output_weight()
    gamma = torch.exp(layer.gamma_log)[:, None]
    torch.testing.assert_close(w_in[0::2], gamma * layer.B_re)
    torch.testing.assert_close(w_in[1::2], gamma * layer.B_im)
    torch.testing.assert_close(w_out[:, 0::2], layer.C_re)
    torch.testing.assert_close(w_out[:, 1::2], -layer.C_im)
    b = layer._input(torch.randn(2, 3, dtype=torch.float64))
    assert b.is_complex() and b.shape == (2, 4)
