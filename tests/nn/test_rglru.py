"""RG-LRU (Griffin/Hawk) against a per-step loop written from the paper's equations, its Λ init, its
config section, and a few training steps through model.kind=rglru. The shared layer tests (step =
forward, causality, reversal, autocast, gradients) run on it from the registry: tests/nn/test_layers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssm_train.config import ConfigError, load_config
from ssm_train.nn.rglru import RGLRU

ROOT = Path(__file__).resolve().parents[2]


def hawk_loop(m: RGLRU, u: torch.Tensor) -> torch.Tensor:
    """out_k = W_o (h_k ⊙ GeLU(g_k)) with x = conv(W_x u), r_k = σ(W_a x_k + b_a), i_k = σ(W_i x_k + b_i),
    a_k = σ(Λ)^(c r_k), h_k = a_k h_{k-1} + sqrt(1 - a_k²) (i_k x_k): the equations, not the code."""
    Bsz, L, _ = u.shape
    E, K = m.d_rnn, m.conv_width
    W_in, b_in = m.in_proj.weight, m.in_proj.bias
    x_all, g_all = (u @ W_in[:E].T + b_in[:E]), (u @ W_in[E:].T + b_in[E:])
    w, b_conv = m.conv1d.weight[:, 0, :], m.conv1d.bias  # [E, K]
    a_base = torch.sigmoid(m.Lambda)
    h = torch.zeros(Bsz, E, dtype=u.dtype)
    out = []
    for k in range(L):
        x = b_conv + sum(w[:, K - 1 - j] * x_all[:, k - j] for j in range(K) if k - j >= 0)
        r = torch.sigmoid(x @ m.gate_a.weight.T + m.gate_a.bias)
        i = torch.sigmoid(x @ m.gate_x.weight.T + m.gate_x.bias)
        a = a_base ** (m.c * r)
        h = a * h + torch.sqrt(1 - a**2) * (i * x)
        out.append((h * F.gelu(g_all[:, k])) @ m.out_proj.weight.T + m.out_proj.bias)
    return torch.stack(out, 1)


def test_equals_the_equations_in_float64():
    torch.manual_seed(0)
    m = RGLRU(d_model=6, d_rnn=7).double()
    with torch.no_grad():  # off the init's special values: nonzero biases everywhere
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 11, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(u), hawk_loop(m, u), rtol=1e-10, atol=1e-12)


def test_lambda_init_gives_a_to_the_c_uniform_in_the_papers_range():
    m = RGLRU(d_model=4, d_rnn=20_000, generator=torch.Generator().manual_seed(1))
    a_c = torch.sigmoid(m.Lambda.double()) ** m.c
    assert a_c.min() >= 0.9 - 1e-6 and a_c.max() <= 0.999 + 1e-6
    assert abs(a_c.mean().item() - (0.9 + 0.999) / 2) < 2e-3  # uniform in value, not in area
    assert abs(a_c.std().item() - 0.099 / 12**0.5) < 2e-3
    edge = RGLRU(d_model=4, d_rnn=64, a_min=0.0, a_max=1.0)
    assert torch.isfinite(edge.Lambda).all()  # a^c = 0 and 1 are clamped: Λ stays finite


def test_decay_is_a_to_the_c_r_and_the_gradient_is_bounded_as_r_vanishes():
    m = RGLRU(d_model=4, d_rnn=5).double()
    with torch.no_grad():
        m.gate_a.weight.zero_()
        m.gate_a.bias.fill_(-200.0)  # r = σ(-200) ≈ 1e-87: a = 1 - O(1e-87), sqrt(1 - a²) -> 0
    u = torch.randn(1, 6, 4, dtype=torch.float64)
    m(u).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    torch.testing.assert_close(m.eigenvalues().real, torch.sigmoid(m.Lambda) ** (m.c * torch.sigmoid(m.gate_a.bias)))


def test_config_section_and_its_validation():
    cfg = load_config([ROOT / "configs/model/rglru.yaml"], ["model.rglru.d_rnn=12"])
    assert cfg.model.kind == "rglru" and cfg.model.rglru.d_rnn == 12 and cfg.model.rglru.c == 8.0
    for override, key in (("model.rglru.a_max=1.5", "model.rglru.a_max"), ("model.rglru.conv_width=0",
                          "model.rglru.conv_width"), ("model.rglru.c=0", "model.rglru.c")):
        with pytest.raises(ConfigError, match=rf"key '{key}'"):
            load_config([ROOT / "configs/model/rglru.yaml"], [override])


def test_trains_through_model_kind_rglru():
    from ssm_train.tasks.base import build_backbone

    cfg = load_config([ROOT / "configs/model/rglru.yaml"], ["model.d_model=16"])
    model = build_backbone(cfg, {"task": "lm", "vocab_size": 7, "d_input": None, "d_output": None})
    assert all(isinstance(b.mixer, RGLRU) for b in model.blocks) and model.blocks[0].mixer.d_rnn == 21
    torch.manual_seed(0)
    x = torch.randint(0, 7, (8, 24))
    x[:, 1::2] = x[:, 0::2]  # every odd token repeats the previous one: learnable
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, 7), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
