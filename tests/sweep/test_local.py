"""``--local``: trials one after another; restarts skip done trials and refuse changed ones (local.py,
the shared loop in trials.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import ssm_train.run
from ssm_train.cli import main
from ssm_train.sweeps import SweepError, read_sweep, run_local
from tests.sweep.helpers import FakeFit, read_csv, write_sweep


def test_local_grid_runs_two_trials_writes_results_and_restart_skips_them(tmp_path, monkeypatch, capsys) -> None:
    path = write_sweep(tmp_path, {"model.init.r_min": {"values": [0.0, 0.9]}})
    out = tmp_path / "sweeps"
    assert main(["sweep", str(path), "--local", "--dir", str(out)]) == 0
    rows = read_csv(out / "tiny" / "results.csv")
    assert [r["name"] for r in rows] == ["tiny-000", "tiny-001"]
    assert [float(r["model.init.r_min"]) for r in rows] == [0.0, 0.9]
    for r in rows:
        assert r["status"] == "finished" and 0 < float(r["val/rel_err"]) < 10 and float(r["val/mse"]) > 0
        run_dir = Path(r["run_dir"])
        assert run_dir == tmp_path / "runs" / r["name"] and (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init"]["r_min"] == \
            float(r["model.init.r_min"])
    assert (out / "tiny" / "results.png").stat().st_size > 1000
    best = min(rows, key=lambda r: float(r["val/rel_err"]))
    assert f"best {best['name']} val/rel_err=" in capsys.readouterr().out

    def no_training(cfg):
        raise AssertionError(f"trial {cfg.name} was trained again")

    monkeypatch.setattr(ssm_train.run, "fit", no_training)
    assert main(["sweep", str(path), "--local", "--dir", str(out)]) == 0
    assert capsys.readouterr().out.count("already finished, skipped") == 2
    assert read_csv(out / "tiny" / "results.csv") == rows


def test_interrupted_sweep_continues_with_the_unfinished_trials(tmp_path) -> None:
    sweep = read_sweep(write_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 3e-3, 1e-2]}}))
    first = FakeFit(fail_at=1)
    with pytest.raises(KeyboardInterrupt):
        run_local(sweep, None, tmp_path / "s", fit=first)
    assert first.names == ["tiny-000"]
    second = FakeFit()
    records = run_local(sweep, None, tmp_path / "s", fit=second)
    assert second.names == ["tiny-001", "tiny-002"]
    assert [r["status"] for r in records] == ["finished"] * 3
    assert [r["params"]["optim.lr"] for r in records] == [1e-3, 3e-3, 1e-2]


def test_diverged_trial_is_recorded_failed_and_not_rerun(tmp_path) -> None:
    from ssm_train.tasks.base import NonFiniteLossError

    sweep = read_sweep(write_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 1e-2]}}))
    calls = []

    def diverging(cfg):
        calls.append(cfg.name)
        if cfg.optim.lr > 5e-3:
            raise NonFiniteLossError("non-finite training loss (nan) at step 3")
        return FakeFit()(cfg)

    records = run_local(sweep, None, tmp_path / "s", fit=diverging)
    assert [r["status"] for r in records] == ["finished", "failed"] and "nan" in records[1]["error"]
    run_local(sweep, None, tmp_path / "s", fit=diverging)
    assert calls == ["tiny-000", "tiny-001"]
    rows = read_csv(tmp_path / "s" / "tiny" / "results.csv")
    assert rows[1]["status"] == "failed" and rows[1]["val/rel_err"] == ""


def test_restart_with_other_settings_is_refused(tmp_path) -> None:
    path = write_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 1e-2]}})
    run_local(read_sweep(path), None, tmp_path / "s", fit=FakeFit())
    changed = read_sweep(path, ["model.d_state=8"])
    with pytest.raises(SweepError, match=r"trial 0 was run with .* the sweep file or the overrides changed"):
        run_local(changed, None, tmp_path / "s", fit=FakeFit())
