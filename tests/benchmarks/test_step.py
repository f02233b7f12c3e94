"""benchmarks/step.py compares like with like: its plain-loop peers compute the function the
ssm-train layers compute (same parameters), and every variant trains (its loss falls). Timings
are not looked at."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.paths import ROOT


@pytest.fixture(scope="module")
def step():
    spec = importlib.util.spec_from_file_location("bench_step", ROOT / "benchmarks" / "step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["lru", "selective"])
def test_the_loop_computes_the_layer(step, kind):
    assert step.check_same_function(kind, L=48) < 1e-5


@pytest.mark.parametrize("kind", ["lru", "selective"])
@pytest.mark.parametrize("variant", ["ssm-train", "loop", "floor"])
def test_every_variant_trains(step, kind, variant):
    model = step.build(kind, variant)
    x = torch.randn(2, 16, step.H, generator=torch.Generator().manual_seed(0))
    loss = lambda: model(x).square().mean().item()  # noqa: E731
    before = loss()
    run = step.stepper(model, 16)
    model.train()
    for _ in range(3):
        run()
    assert loss() < before  # the optimizer moved the parameters that reach the loss, downhill


def test_s4d_work_model(step):
    """Tokens x4 from (2, 4096, 256) to (1, 16384, 512), but the kernel x8 and the FFTs x5.7."""
    w0, w1 = (step.s4d_work(*s) for s in step.S4D_SHAPES)
    assert w1["tokens"] / w0["tokens"] == 4
    assert w1["kernel"] / w0["kernel"] == 8
    assert 5.65 < w1["ffts"] / w0["ffts"] < 5.7
