"""Block and Backbone: shapes per head, step = forward, causality, bidirectional, norms, pooling."""

import sys

import pytest
import torch

from ssm_train.nn import LAYERS, Backbone, Block, mixer_factory
from ssm_train.ops.conv import fft_conv
from ssm_train.ops.scan import linear_scan
from ssm_train.ops.selective_scan import selective_scan
from tests.nn.scan_checks import run_steps

V, D_IN, H, N, B, L = 11, 3, 8, 4, 2, 7
KINDS = [kind for kind, spec in LAYERS.items() if spec.recurrent]  # lru, real, s4d, selective, ... (registered)
HEADS = {"lm": {}, "classify": {"d_output": 5}, "regress": {"d_output": 2}}
SMALL = dict(d_model=H, n_layers=2)


def model(kind="lru", head="lm", tokens=True, dtype=torch.float64, seed=0, **kw) -> Backbone:
    torch.manual_seed(seed)
    inp = {"vocab_size": V} if tokens else {"d_input": D_IN}
    return Backbone(**inp, **SMALL, mixer=mixer_factory(kind, N), head=head, **HEADS[head], **kw).to(dtype).eval()


def data(tokens=True, dtype=torch.float64, seed=1, length=L) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if tokens:
        return torch.randint(0, V, (B, length), generator=g)
    return torch.randn(B, length, D_IN, generator=g, dtype=dtype)



def test_mixer_registry_has_the_four_kinds():
    assert {"lru", "real", "s4d", "selective"} <= set(KINDS)
    with pytest.raises(ValueError, match="lru, real, s4d, selective"):
        mixer_factory("transfomer")


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_step_equals_forward(kind, head):
    tokens = head == "lm"
    m, x = model(kind, head, tokens), data(tokens)
    with torch.no_grad():
        y = m(x)
        steps = run_steps(m, x)
    if head == "classify":  # step t classifies the prefix x[:, :t+1]
        assert y.shape == (B, 5)
        prefix = torch.stack([m(x[:, : t + 1]) for t in range(L)], 1)
        torch.testing.assert_close(steps, prefix.detach(), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(steps[:, -1], y, rtol=1e-9, atol=1e-10)
    else:
        assert y.shape == (B, L, V if head == "lm" else 2)
        torch.testing.assert_close(steps, y, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("head", ["lm", "regress"])
@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind, head):
    tokens = head == "lm"
    m, x = model(kind, head, tokens), data(tokens)
    x2 = x.clone()
    x2[:, 4:] = data(tokens, seed=7)[:, 4:]
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    atol = 1e-12 if kind == "s4d" else 0  # S4D convolves by FFT: exactly causal up to float64 rounding
    torch.testing.assert_close(y[:, :4], y2[:, :4], rtol=0, atol=atol)
    assert not torch.allclose(y[:, 4:], y2[:, 4:])


@pytest.mark.parametrize("merge", ["sum", "concat"])
@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional_sees_both_ways_and_has_no_step(kind, merge):
    m, x = model(kind, "regress", tokens=False, bidirectional=True, merge=merge), data(False)
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    assert y.shape == (B, L, 2)
    assert not torch.allclose(y[:, 0], y2[:, 0])  # the first output sees the last input
    with pytest.raises(RuntimeError, match="bidirectional"):
        m.step(x[:, 0], None)
    assert len(m.eigenvalues()) == 2 * 2  # forward and backward mixer per layer


def test_bidirectional_sum_is_forward_plus_reversed_mixer():
    torch.manual_seed(0)
    block = Block(H, mixer_factory("lru", N), bidirectional=True).double()
    x = torch.randn(B, L, H, dtype=torch.float64)
    with torch.no_grad():
        u = block.norm1(x)
        mixed = block.mixer(u) + block.mixer_bwd.forward(u)
        torch.testing.assert_close(block.mix(u), mixed)
        # the backward mixer is the forward recurrence on the flipped sequence
        fwd = LAYERS["lru"].layer_cls(d_model=H, d_state=N).double()
        fwd.load_state_dict(block.mixer_bwd.state_dict())
        torch.testing.assert_close(block.mixer_bwd(u), fwd(u.flip(1)).flip(1))


@pytest.mark.parametrize("mlp", ["mlp", "glu"])
@pytest.mark.parametrize("norm", ["layer", "rms", "batch"])
def test_norms_and_mlps_step_equals_forward_in_eval(norm, mlp):
    m, x = model("lru", "regress", tokens=False, norm=norm, mlp=mlp), data(False)
    if norm == "batch":  # move the running statistics away from (0, 1) first
        m.train()
        with torch.no_grad():
            m(3.0 * x + 1.0)
        m.eval()
        assert not torch.allclose(m.blocks[0].norm1.running_mean, torch.zeros(H, dtype=torch.float64))
    with torch.no_grad():
        torch.testing.assert_close(run_steps(m, x), m(x), rtol=1e-9, atol=1e-10)


def test_batchnorm_normalises_over_channels():
    m = model("lru", "regress", tokens=False, norm="batch").train()
    bn = m.blocks[0].norm1
    x = 5.0 + 3.0 * torch.randn(4, 50, H, dtype=torch.float64)
    y = bn(x)
    torch.testing.assert_close(y.mean((0, 1)), torch.zeros(H, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.var((0, 1), unbiased=False), torch.ones(H, dtype=torch.float64), atol=1e-3, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_masked_pooling_equals_the_unpadded_sequence(pooling):
    m, x = model("lru", "classify", tokens=True, pooling=pooling), data(True)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, :3], mask[1, :6] = True, True
    with torch.no_grad():
        y = m(x, mask=mask)
        for i, k in enumerate((3, 6)):
            torch.testing.assert_close(y[i], m(x[i : i + 1, :k])[0])
    with pytest.raises(ValueError, match="mask"):
        m(x, mask=mask[:, :3])


def test_tied_weights_share_the_embedding():
    m = model(tie_weights=True)
    assert m.head.weight is m.encoder.weight
    assert sum(p is m.encoder.weight for p in m.parameters()) == 1
    with pytest.raises(ValueError, match="tie_weights"):
        Backbone(d_input=3, head="regress", d_output=3, tie_weights=True)


def test_embedding_init_is_small():
    m = Backbone(vocab_size=1000, d_model=64, n_layers=1)
    assert abs(m.encoder.weight.std().item() - 0.02) < 0.002


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({}, "exactly one"),
        ({"vocab_size": V, "d_input": 3}, "exactly one"),
        ({"d_input": 3}, "vocab_size"),  # head lm needs tokens
        ({"vocab_size": V, "head": "classify"}, "d_output"),
        ({"vocab_size": V, "head": "sequence"}, "head"),
        ({"vocab_size": V, "norm": "group"}, "norm"),
        ({"vocab_size": V, "mlp": "moe"}, "mlp"),
        ({"vocab_size": V, "pooling": "max"}, "pooling"),
    ],
)
def test_bad_arguments_raise_clearly(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Backbone(**kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_eigenvalues_per_recurrent_layer(kind):
    eig = model(kind, dtype=torch.float32).eigenvalues()
    assert list(eig) == ["blocks.0.mixer", "blocks.1.mixer"]
    assert all(lam.is_complex() and lam.abs().max() < 1 for lam in eig.values())


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_runs_recurrences_in_float32(kind, monkeypatch):
    seen = []

    def spy(a, b, h0=None, **kw):
        seen.append({a.dtype, b.dtype})
        return linear_scan(a, b, h0, **kw)

    def conv_spy(u, K, *, reverse=False):  # S4D's conv mode: the FFT and its kernel
        y = fft_conv(u, K, reverse=reverse)
        seen.append({u.dtype, K.dtype, y.dtype})
        return y

    def selective_spy(x, dt, A, B, C, **kw):  # SelectiveSSM's fused scan
        seen.append({x.dtype, dt.dtype, A.dtype, B.dtype, C.dtype})
        return selective_scan(x, dt, A, B, C, **kw)

    for spec in LAYERS.values():  # every registered layer's module: the kernels it calls
        module = sys.modules[spec.module]
        for name, replacement in (("linear_scan", spy), ("fft_conv", conv_spy), ("selective_scan", selective_spy)):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, replacement)
    m, x = model(kind, dtype=torch.float32), data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.shape == (B, L, V) and torch.isfinite(y).all()
    assert len(seen) == 2 and all(s <= {torch.float32, torch.complex64} for s in seen)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_every_parameter(kind):
    m, x = model(kind, "regress", tokens=False, dtype=torch.float32, dropout=0.1).train(), data(False, torch.float32)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        assert p.dtype == torch.float32, name
