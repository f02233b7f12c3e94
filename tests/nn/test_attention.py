"""The Transformer baseline: rotary positions, attention against an explicit softmax, KV-cache step
= forward, causality, the anti-causal (reverse) half, Block/Backbone integration, config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_train.nn import LAYERS, Backbone, Block, mixer_factory
from ssm_train.nn.attention import CausalSelfAttention, rotary
from ssm_train.nn.params import param_groups
from tests.nn.scan_checks import run_steps

H, HD, B, L, V = 16, 4, 2, 9, 13  # 4 heads of dimension 4
ROOT = Path(__file__).resolve().parents[2]


def attention(reverse=False, seed=0, **kw) -> CausalSelfAttention:
    torch.manual_seed(seed)
    return CausalSelfAttention(H, HD, reverse=reverse, **kw).double()


def inputs(seed=1, length=L) -> torch.Tensor:
    return torch.randn(B, length, H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def explicit_attention(m: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d + mask) v written out, with RoPE as complex rotation of (x_i + i x_{i+d/2})."""
    Bx, T, _ = x.shape
    q, k, v = m.qkv(x).view(Bx, T, 3, m.n_heads, m.head_dim).permute(2, 0, 3, 1, 4)
    half = m.head_dim // 2
    theta = m.rope_base ** (-torch.arange(half, dtype=torch.float64) * 2 / m.head_dim)
    turn = torch.polar(torch.ones(T, half, dtype=torch.float64), torch.arange(T, dtype=torch.float64)[:, None] * theta)

    def rope(z):
        c = torch.complex(z[..., :half], z[..., half:]) * turn
        return torch.cat([c.real, c.imag], -1)

    scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(m.head_dim)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = scores.masked_fill(future, -math.inf).softmax(-1)
    return m.out((weights @ v).transpose(1, 2).reshape(Bx, T, H))



# ---------------------------------------------------------------------------------------------
# Rotary positions


@settings(max_examples=30, deadline=None)
@given(s=st.integers(0, 5000), t=st.integers(0, 5000), shift=st.integers(-5000, 5000), seed=st.integers(0, 10**6))
def test_rotary_scores_depend_on_relative_position_only(s, t, shift, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 8, generator=g, dtype=torch.float64)
    shift = max(shift, -min(s, t))  # positions stay >= 0
    pos = lambda p: torch.tensor([p])  # noqa: E731
    score = (rotary(q[None], pos(s)) * rotary(k[None], pos(t))).sum()
    shifted = (rotary(q[None], pos(s + shift)) * rotary(k[None], pos(t + shift))).sum()
    assert torch.allclose(score, shifted, rtol=1e-9, atol=1e-9)
    assert torch.allclose(rotary(q[None], pos(s)).norm(), q.norm())  # a rotation


def test_rotary_at_position_zero_is_identity_and_moves_otherwise():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(rotary(x, torch.zeros(5, dtype=torch.long)), x)
    assert not torch.allclose(rotary(x, torch.arange(5)), x)


# ---------------------------------------------------------------------------------------------
# The mixer


@pytest.mark.parametrize("bias", [False, True])
def test_forward_equals_explicit_softmax_attention(bias):
    m, x = attention(bias=bias), inputs()
    with torch.no_grad():
        torch.testing.assert_close(m(x), explicit_attention(m, x), rtol=1e-10, atol=1e-12)


def test_step_with_kv_cache_equals_forward():
    m, x = attention(), inputs(length=12)
    with torch.no_grad():
        steps = run_steps(m, x)
        torch.testing.assert_close(steps, m(x), rtol=1e-10, atol=1e-12)
        _, (keys, values) = m.step(x[:, 0], None)
    assert keys.shape == values.shape == (B, H // HD, 1, HD)


def test_causal_and_reverse_is_anticausal():
    m, x = attention(), inputs()
    x2 = x.clone()
    x2[:, 5:] = inputs(seed=9)[:, 5:]
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :5], y2[:, :5], rtol=0, atol=0)
    assert not torch.allclose(y[:, 5:], y2[:, 5:])
    r = attention(reverse=True)
    x3 = x.clone()
    x3[:, :5] = inputs(seed=9)[:, :5]
    with torch.no_grad():
        y, y3 = r(x), r(x3)
    torch.testing.assert_close(y[:, 5:], y3[:, 5:], rtol=0, atol=0)  # t sees t..L-1 only
    assert not torch.allclose(y[:, :5], y3[:, :5])
    with torch.no_grad():  # anti-causal = causal on the flipped sequence (same weights)
        f = attention()
        f.load_state_dict(r.state_dict())
        torch.testing.assert_close(r(x), f(x.flip(1)).flip(1))
    with pytest.raises(RuntimeError, match="has no step"):
        r.step(x[:, 0])


@pytest.mark.parametrize(("d_model", "d_state"), [(16, 5), (16, 3), (12, 0), (6, 12)])
def test_head_dimension_must_be_even_and_divide(d_model, d_state):
    with pytest.raises(ValueError, match=f"d_state as the head dimension.*d_model={d_model}, d_state={d_state}"):
        CausalSelfAttention(d_model, d_state)


def test_accepts_the_common_layer_arguments():
    """build_backbone hands every mixer init/init_params; attention ignores them."""
    m = CausalSelfAttention(H, HD, init="ring", init_params={"r_min": 0.5})
    assert m.n_heads == 4 and not hasattr(m, "eigenvalues")


def test_autocast_bf16_runs():
    m, x = CausalSelfAttention(H, HD), torch.randn(B, L, H)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.shape == (B, L, H) and torch.isfinite(y.float()).all()


# ---------------------------------------------------------------------------------------------
# In Block and Backbone


def backbone(**kw) -> Backbone:
    torch.manual_seed(0)
    return Backbone(vocab_size=V, d_model=H, n_layers=2, mixer=mixer_factory("transformer", HD), **kw).double().eval()


def test_registered_and_backbone_step_equals_forward():
    assert LAYERS["transformer"].layer_cls is CausalSelfAttention
    m = backbone()
    x = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(run_steps(m, x), m(x), rtol=1e-10, atol=1e-12)
    assert m.eigenvalues() == {}
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % V
    with torch.no_grad():
        torch.testing.assert_close(m(x)[:, :6], m(x2)[:, :6], rtol=0, atol=0)


def test_bidirectional_block_sees_the_whole_sequence():
    torch.manual_seed(0)
    block = Block(H, mixer_factory("transformer", HD), bidirectional=True).double()
    x = inputs()
    x2 = x.clone()
    x2[:, -1] = inputs(seed=9)[:, -1]  # (a constant shift would vanish in the LayerNorm)
    with torch.no_grad():
        y, y2 = block(x), block(x2)
    assert not torch.allclose(y[:, 0], y2[:, 0])  # the first output sees the last input
    with pytest.raises(RuntimeError, match="bidirectional"):
        block.step(x[:, 0])


def test_every_parameter_gets_a_gradient_and_none_is_recurrent():
    m = backbone().train()
    x = torch.randint(0, V, (B, L))
    m(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    groups = param_groups(m, lr=1e-3, weight_decay=0.1, recurrent_lr_factor=0.5)
    assert "recurrent" not in [g["name"] for g in groups]


def test_experiment_config_builds_a_matched_size_transformer():
    from ssm_train.config import load_config
    from ssm_train.tasks.base import build_backbone

    spec = {"task": "regress", "vocab_size": None, "d_input": 1, "d_output": 1}
    cfg = load_config([ROOT / "configs/experiment/default_transformer.yaml"])
    assert cfg.model.kind == "transformer"
    transformer = build_backbone(cfg, spec)
    assert isinstance(transformer.blocks[0].mixer, CausalSelfAttention)
    lru = build_backbone(load_config([ROOT / "configs/experiment/default.yaml"]), spec)
    n_t, n_l = (sum(p.numel() for p in m.parameters()) for m in (transformer, lru))
    assert abs(n_t - n_l) / n_l < 0.05, f"transformer {n_t} vs LRU {n_l} parameters"
