"""The layer registry: every kind builds through it, counts at least its lower bound, is documented;
registration refuses what the rest of the project could not use."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from ssm_train.nn import LAYERS, Backbone, get_layer, mixer_factory, register_layer
from ssm_train.nn.registry import LayerConfig

ROOT = Path(__file__).resolve().parents[2]
D_STATE = {"transformer": 4}  # the head dimension must divide d_model


@pytest.mark.parametrize("kind", list(LAYERS))
def test_every_kind_builds_from_its_default_config_and_counts_at_least_its_bound(kind):
    spec = get_layer(kind)
    config = spec.config_cls()
    for d_model in (8, 24):
        n = D_STATE.get(kind, 6)
        layer = spec.build(d_model, n, config)
        assert sum(p.numel() for p in layer.parameters()) >= config.min_params(d_model, n)
        y = layer(torch.randn(2, 5, d_model))
        assert y.shape == (2, 5, d_model)
    assert list(config.problems(dataclasses.replace(_ctx(kind), d_state=D_STATE.get(kind, 6)))) == []


def _ctx(kind):
    from ssm_train.nn.registry import LayerContext

    init = {"real": "real", "selective": "mamba"}.get(kind, "ring")
    return LayerContext(kind=kind, d_model=8, d_state=4, init=init)


def test_the_factory_passes_config_fields_init_and_direction():
    from ssm_train.nn.s4d import S4DConfig

    make = mixer_factory("s4d", 3, S4DConfig(discretization="bilinear", mode="scan"), init="s4d_inv",
                         init_params={"dt_min": 0.01, "dt_max": 0.02})
    fwd, bwd = make(4), make(4, reverse=True)
    assert (fwd.d_state, fwd.discretization, fwd.mode, fwd.init, fwd.reverse) == (3, "bilinear", "scan", "s4d_inv", False)
    assert bwd.reverse and torch.exp(fwd.log_dt).max() <= 0.02 * (1 + 1e-6)
    m = Backbone(vocab_size=5, d_model=4, n_layers=2, mixer=make, bidirectional=True)
    assert all(b.mixer_bwd.reverse and not b.mixer.reverse for b in m.blocks)
    with pytest.raises(TypeError, match="S4DConfig"):
        mixer_factory("lru", 3, S4DConfig())(4)


def test_registration_refuses_duplicates_and_unusable_layers(monkeypatch):
    monkeypatch.setattr("ssm_train.nn.registry.LAYERS", dict(LAYERS))

    @dataclass
    class NoConfig(LayerConfig):
        pass

    class NoDeclaration(nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_layer("lru", get_layer("lru").layer_cls, get_layer("lru").config_cls)
    with pytest.raises(TypeError, match="recurrent_params"):
        register_layer("nodecl", NoDeclaration, NoConfig)

    @dataclass
    class Required(LayerConfig):
        width: int

    class Fine(nn.Module):
        recurrent_params = ()

    with pytest.raises(TypeError, match="needs a default"):
        register_layer("required", Fine, Required)
    with pytest.raises(TypeError, match="LayerConfig dataclass"):
        register_layer("plain", Fine, dict)  # type: ignore[arg-type]


def test_the_docs_key_table_is_the_registry():
    table = subprocess.run([sys.executable, str(ROOT / "scripts/layer_table.py")], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert table in (ROOT / "docs/models.md").read_text(), "docs/models.md: re-run scripts/layer_table.py"
    for kind in LAYERS:
        assert f"| `{kind}` |" in table
