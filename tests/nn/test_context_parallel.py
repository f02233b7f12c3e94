"""Whole models with each sequence split over 2 and 4 gloo ranks (trainer.context_parallel)
equal one process on the whole sequence: outputs and every parameter's gradient, for every
kind that supports it, with document resets (one at a slice boundary, one inside the conv halo),
bidirectional LRU/S4D and block checkpointing (float64 1e-10, float32 1e-5 relative)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssm_train.nn import Backbone, mixer_factory
from ssm_train.ops.context import ContextGroup

sys.path.insert(0, str(Path(__file__).parent))
import context_parallel_worker as worker  # noqa: E402

WORKER = Path(worker.__file__)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"{n}ranks")
def world(request, tmp_path_factory):
    n = request.param
    out = tmp_path_factory.mktemp(f"cp{n}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(WORKER), str(out), str(n)], cwd=out, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{n} ranks exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return n, torch.load(out / f"models{n}.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(worker.CASES))
def test_split_model_equals_one_process(world, name):
    n, results = world
    case = worker.CASES[name]
    got, want = results[name], worker.run_case(case, None)
    tol = 1e-10 if case.get("dtype", torch.float64) == torch.float64 else 1e-5
    assert got.keys() == want.keys()
    for key in want:
        scale = float(want[key].abs().max())
        err = float((got[key].double() - want[key].double()).abs().max())
        assert err <= tol * max(scale, 1.0), f"{name} on {n} ranks: {key} differs by {err:.3g} (scale {scale:.3g})"
    assert any(float(want[k].abs().max()) > 1e-3 for k in want if "mixer" in k), "guard: mixer gradients are zero"


@pytest.mark.slow
def test_without_the_carry_the_split_model_differs(world):
    """Guard: ranks that each scan their slice alone (no exchange) give other outputs."""
    n, results = world
    case = worker.CASES["lru"]
    alone = worker.build(case)
    x, _, _ = worker.data(case)
    k = worker.L // n
    y = torch.cat([alone(x[:, r * k:(r + 1) * k]) for r in range(n)], 1)
    assert not torch.allclose(y.detach(), results["lru"]["y"], atol=1e-6)


def test_layers_that_cannot_split_a_sequence_are_refused():
    one = ContextGroup(None, 0, 1)
    with pytest.raises(ValueError, match="cannot split a sequence"):
        Backbone(vocab_size=5, d_model=8, n_layers=1, mixer=mixer_factory("transformer", 4)).set_context_parallel(one)
    with pytest.raises(ValueError, match="flipping its slice"):
        Backbone(vocab_size=5, d_model=8, n_layers=1, bidirectional=True,
                 mixer=mixer_factory("selective", 4, init="mamba")).set_context_parallel(one)
    with pytest.raises(ValueError, match="checkpointing='block'"):
        Backbone(vocab_size=5, d_model=8, n_layers=1, checkpointing="chunk").set_context_parallel(one)
