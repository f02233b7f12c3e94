"""``reproduce ring_phase``: the shipped radius and phase sweeps run at several lags of the copy task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssm_train.analysis import ring_phase

TINY = ring_phase.Setting(lags=(48,), steps=80, model=(
    "model.d_model=16", "model.n_layers=1", "model.d_state=32", "data.val_batches=4", "trainer.limit_val_batches=4"))


def small_sweeps(tmp: Path) -> dict[str, Path]:
    """The shipped sweep files with their grids cut to the two ends (same commands, same base config)."""
    grids = {"ring_radius": {"model.init.r_min": {"values": [0.0, 0.99]}, "model.init.r_max": {"values": [0.999]}},
             "phase_range": {"model.init.max_phase": {"values": [0.0, 6.283185]}, "seed": {"values": [0]}}}
    paths = {}
    for name, grid in grids.items():
        spec = yaml.safe_load(ring_phase.sweep_path(name).read_text())
        assert set(spec["parameters"]) == set(grid)  # the cut keeps the shipped sweep's parameters
        spec["parameters"] = grid
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(spec))
    return paths


@pytest.mark.slow
def test_radius_near_one_and_full_phase_beat_the_grid_ends_at_a_long_lag(tmp_path, monkeypatch):
    """At lag 48, r_min = 0.99 learns the copy far better than r_min = 0 (0.99^48 = 0.62 against
    eigenvalues spread to 0), and the full phase far better than real starting eigenvalues."""
    rows = ring_phase.run_sweeps(tmp_path / "out", TINY, small_sweeps(tmp_path))
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows)
    err = {(r["sweep"], tuple(sorted(r["params"].items()))): r["rel_err"] for r in rows}
    radius = {dict(k)["model.init.r_min"]: v for (s, k), v in err.items() if s == "ring_radius"}
    phase = {dict(k)["model.init.max_phase"]: v for (s, k), v in err.items() if s == "phase_range"}
    assert radius[0.99] < radius[0.0] - 0.1, radius
    assert phase[6.283185] < phase[0.0] - 0.03, phase

    # the rows make the tables and heatmaps; reproduce writes them (the same rows, not trained again)
    lags = TINY.lags
    r_mins, r_maxs, grid = ring_phase.radius_grid(rows, lags)
    assert r_mins == [0.0, 0.99] and r_maxs == [0.999] and grid.shape == (1, 2, 1)
    phases, mean, spread = ring_phase.phase_grid(rows, lags)
    assert np.allclose(mean[:, 0], [phase[0.0], phase[6.283185]]) and np.all(spread == 0)
    monkeypatch.setattr(ring_phase, "QUICK", TINY)
    monkeypatch.setattr(ring_phase, "run_sweeps", lambda root, setting: rows)
    from ssm_train.reproduce import reproduce

    data = reproduce("ring_phase", True, tmp_path / "res")
    assert json.loads((tmp_path / "res" / "ring_phase.json").read_text())["rows"] == data["rows"]
    assert (tmp_path / "res" / "ring_phase.png").stat().st_size > 10_000
    report = (tmp_path / "res" / "report.md").read_text()
    assert "<!-- reproduce:ring_phase -->" in report and "| 0.999 | 0.99 |" in report
