"""Offline proposals: random draws seeded by trial, bayes fitted to the finished trials (propose.py)."""

from __future__ import annotations

import math

import pytest

from ssm_train.sweeps import SweepError, n_trials, propose, read_sweep, run_local
from tests.sweep.helpers import FakeFit, write_sweep


def test_random_proposals_are_seeded_by_trial_and_in_range(tmp_path) -> None:
    params = {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
              "model.init.r_min": {"min": 0.0, "max": 0.9},
              "model.n_layers": {"values": [1, 2]}}
    sweep = read_sweep(write_sweep(tmp_path, params, method="random"))
    draws = [propose(sweep, i, []) for i in range(6)]
    assert draws == [propose(sweep, i, []) for i in range(6)]  # the same again (a restart)
    assert len({d["optim.lr"] for d in draws}) == 6
    for d in draws:
        assert 1e-4 <= d["optim.lr"] <= 1e-2 and 0 <= d["model.init.r_min"] <= 0.9 and d["model.n_layers"] in (1, 2)
        assert isinstance(d["optim.lr"], float) and isinstance(d["model.n_layers"], int)
    with pytest.raises(SweepError, match="--count"):
        n_trials(sweep, None)


def test_bayes_runs_offline_on_the_finished_trials(tmp_path) -> None:
    params = {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
              "model.init.r_min": {"min": 0.0, "max": 0.5}}
    sweep = read_sweep(write_sweep(tmp_path, params, method="bayes"))
    fake = FakeFit()
    records = run_local(sweep, 5, tmp_path / "s", fit=fake)
    assert len(fake.names) == 5 and [r["status"] for r in records] == ["finished"] * 5
    for r in records:
        assert 1e-4 <= r["params"]["optim.lr"] <= 1e-1
        assert r["metrics"]["val/rel_err"] == pytest.approx(
            (math.log10(r["params"]["optim.lr"]) + 2.5) ** 2 + r["params"]["model.init.r_min"])
    assert len({r["params"]["optim.lr"] for r in records}) == 5
    more = FakeFit()
    run_local(sweep, 6, tmp_path / "s", fit=more)  # one more trial, fitted to the five
    assert more.names == ["tiny-005"]
