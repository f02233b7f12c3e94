"""``ssm-train sweep``: sweep files, offline proposals, local trials, restarts, SLURM arrays, errors."""

from __future__ import annotations

import csv
import json
import math
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

import ssm_train.run
from ssm_train.cli import main
from ssm_train.run import FitResult
from ssm_train.sweep import (
    SweepError,
    collect,
    final_metrics,
    grid_points,
    n_trials,
    plan_slurm,
    propose,
    read_sweep,
    run_local,
)

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
DEFAULT = str(ROOT / "configs" / "experiment" / "default.yaml")
TINY = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.seq_len=16", "data.lag=4",
        "data.batch_size=4", "data.val_batches=2", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "checkpoint.every_n_steps=2", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
        "logger.mode=disabled", "trainer.accelerator=cpu", "trainer.devices=1"]


def write_sweep(d: Path, parameters: dict, method: str = "grid", name: str = "tiny", **extra) -> Path:
    spec = {"name": name, "method": method, "metric": {"name": "val/rel_err", "goal": "minimize"},
            "parameters": parameters, **extra,
            "command": ["${env}", "ssm-train", "fit", "-c", DEFAULT, f"runs_dir={d / 'runs'}", *TINY,
                        "${args_no_hyphens}"]}
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class FakeFit:
    """Stands in for ssm_train.run.fit: a metric that is a known function of the config."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.names: list[str] = []
        self.fail_at = fail_at

    def __call__(self, cfg) -> FitResult:
        if self.fail_at is not None and len(self.names) == self.fail_at:
            raise KeyboardInterrupt  # the sweep is killed during this trial
        self.names.append(cfg.name)
        value = (math.log10(cfg.optim.lr) + 2.5) ** 2 + cfg.model.init.r_min
        return FitResult("val/rel_err", value, cfg.trainer.max_steps, cfg.run_dir,
                         {"val/rel_err": value, "val/mse": value**2})


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- shipped sweep files


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_shipped_sweep_files_validate(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # their configs are relative to the project root
    sweep = read_sweep(path.relative_to(ROOT))
    assert sweep.spec["command"][-1] == "${args_no_hyphens}" and "fit" in sweep.spec["command"]
    if sweep.method == "grid":
        expected = math.prod(len(p["values"]) for p in sweep.parameters.values())
        points = grid_points(sweep)
        assert len(points) == expected == n_trials(sweep, None)
        assert len({json.dumps(p, sort_keys=True) for p in points}) == expected  # all distinct
    else:
        assert sweep.spec.get("run_cap")
        params = propose(sweep, 0, [])
        for key, p in sweep.parameters.items():
            assert p["min"] <= params[key] <= p["max"]


def test_shipped_set_covers_the_questions() -> None:
    swept = {p.stem: set(yaml.safe_load(p.read_text())["parameters"]) for p in SWEEP_FILES}
    assert {"model.init.r_min", "model.init.r_max"} <= swept["ring_radius"]
    assert "model.init.max_phase" in swept["phase_range"]
    assert {"model", "model.d_state"} <= swept["real_vs_complex"]
    assert "model.init.name" in swept["init_family"]
    assert yaml.safe_load((ROOT / "configs/sweeps/lr_ring.yaml").read_text())["method"] in ("random", "bayes")


def test_real_vs_complex_arms_resolve_to_matching_kind_and_init(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    sweep = read_sweep("configs/sweeps/real_vs_complex.yaml")
    seen = set()
    for i, params in enumerate(grid_points(sweep)):
        cfg = sweep.config(sweep.trial_overrides(i, params))
        seen.add((cfg.model.kind, cfg.model.init.name, cfg.model.d_state))
        assert cfg.name == f"real_vs_complex-{i:03d}"
    assert {(k, i) for k, i, _ in seen} == {("lru", "ring"), ("real", "real")}
    assert len(seen) == 8  # 2 arms x 4 state sizes, each for 3 seeds


# ---------------------------------------------------------------------------------------- --local


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


# ---------------------------------------------------------------------------------------- --slurm


def test_slurm_dry_run_writes_one_line_per_trial_and_the_array_command(tmp_path, capsys) -> None:
    arms = [{"kind": "lru", "init": {"name": "ring"}}, {"kind": "real", "init": {"name": "real"}}]
    path = write_sweep(tmp_path, {"model": {"values": arms}, "seed": {"values": [0, 1]}}, name="rc")
    sweep = read_sweep(path, ["model.d_model=12"])
    sub = plan_slurm(sweep, None, tmp_path / "s", ["--time=0:10:00"])
    assert main(["sweep", str(path), "--slurm", "--dry-run", "--dir", str(tmp_path / "s"),
                 "--sbatch=--time=0:10:00", "model.d_model=12"]) == 0
    printed = capsys.readouterr().out
    sweep_file = tmp_path / "s" / "rc" / "slurm-0.txt"
    assert f"SWEEP_FILE={sweep_file} {shlex.join(sub.command)}" in printed
    written = sweep_file.read_text().splitlines()
    assert written == sub.lines and len(written) == 4
    # train.sh splits a line with xargs: the words must come back exactly
    for i, line in enumerate(written):
        words = subprocess.run(["xargs", "printf", "%s\\0"], input=line, capture_output=True, text=True,
                               check=True).stdout.split("\0")[:-1]
        assert words == shlex.split(line)
        assert words[-1] == f"name=rc-{i:03d}"
        cfg = sweep.config([*sweep.base_overrides(), *words])
        assert (cfg.model.kind, cfg.model.init.name) in {("lru", "ring"), ("real", "real")}
        assert cfg.model.d_model == 12 and cfg.seed in (0, 1) and cfg.name == f"rc-{i:03d}"
    cmd = sub.command
    assert cmd[:5] == ["sbatch", "--parsable", "--array=0-3", "--job-name=rc", "--time=0:10:00"]
    assert cmd[5] == str(ROOT / "slurm" / "train.sh") and cmd[6] == DEFAULT
    assert cmd[-1] == "model.d_model=12" and "logger.mode=disabled" in cmd
    assert sub.env == {"SWEEP_FILE": str(sweep_file)}
    assert not list((tmp_path / "s" / "rc" / "trials").glob("*.json"))  # nothing submitted


def test_slurm_collects_finished_trials_and_skips_them_when_resubmitting(tmp_path) -> None:
    path = write_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 1e-2]}}, name="sl")
    sweep = read_sweep(path)
    out = tmp_path / "s"
    sub = plan_slurm(sweep, None, out)
    assert [i for i, _ in sub.trials] == [0, 1]
    # pretend the array ran: trial 0 finished (fit's final validation row), trial 1 still running
    from ssm_train.sweep import SUBMITTED, TrialStore, _record

    store = TrialStore(out / "sl")
    for i, params in sub.trials:
        store.save(_record(sweep, i, params, SUBMITTED, tmp_path / "runs" / sweep.trial_name(i)))
    metrics = tmp_path / "runs" / "sl-000" / "csv" / "metrics.csv"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("epoch,step,train/loss,val/mse,val/rel_err\n0,1,0.9,,\n0,2,,0.5,0.7\n1,4,,0.25,0.5\n")
    records = collect(sweep, out)
    assert [r["status"] for r in records] == ["finished", "submitted"]
    assert records[0]["metrics"] == {"val/mse": 0.25, "val/rel_err": 0.5}
    assert [i for i, _ in plan_slurm(sweep, None, out).trials] == [1]


def test_final_metrics_waits_for_the_validation_after_training(tmp_path) -> None:
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,val/rel_err\n0,2,0.9\n")
    assert final_metrics(tmp_path, max_steps=4) is None
    assert final_metrics(tmp_path, max_steps=2) == {"val/rel_err": 0.9}
    assert final_metrics(tmp_path / "missing", max_steps=2) is None


# ------------------------------------------------------------------------------------ bad files

BAD = {
    "unknown-key": ({"model.init.r_mn": {"values": [0.1]}}, {},
                    r"parameter 'model.init.r_mn': unknown config key; valid keys under 'model.init': .*r_min"),
    "unknown-section": ({"modle.d_state": {"values": [4]}}, {}, r"parameter 'modle.d_state': unknown config key"),
    "section-not-value": ({"model.init": {"values": [1]}}, {}, r"'model.init' is a section, not a value"),
    "unknown-in-arm": ({"model": {"values": [{"kind": "lru", "d_stat": 4}]}}, {},
                       r"parameter 'model.d_stat': unknown config key"),
    "nested": ({"model": {"parameters": {"d_state": {"values": [4, 8]}}}}, {},
               r"parameter 'model': nested 'parameters' blocks are not supported.*'model.d_state'"),
    "method": ({"seed": {"values": [0]}}, {"method": "grdi"}, r"key 'method': must be one of grid, random, bayes"),
    "schema": ({"seed": {"valuez": [0]}}, {}, r"not a valid W&B sweep config"),
    "top-level": ({"seed": {"values": [0]}}, {"learning": 1}, r"'learning' was unexpected"),
    "bad-value": ({"model.init.r_min": {"values": [0.5, 0.999]}, "model.init.r_max": {"values": [0.99]}}, {},
                  r"trial 1 \(model.init.r_max=0.99 model.init.r_min=0.999\): key 'model.init.r_min': "
                  r"must be <= model.init.r_max"),
    "bad-type": ({"model.d_state": {"values": ["many"]}}, {}, r"model.d_state=many.*model.d_state"),
    "bad-range": ({"model.init.r_max": {"min": 0.9, "max": 1.5}}, {"method": "random"}, r"model.init.r_max"),
    "no-macro": ({"seed": {"values": [0]}}, {"command": ["ssm-train", "fit", "-c", DEFAULT]},
                 r"key 'command': must run 'fit' and end with \$\{args_no_hyphens\}"),
    "stray-word": ({"seed": {"values": [0]}}, {"command": ["ssm-train", "fit", DEFAULT, "${args_no_hyphens}"]},
                   r"unexpected word"),
    "bayes-no-metric": ({"optim.lr": {"min": 0.001, "max": 0.01}}, {"method": "bayes", "metric": None},
                        r"method bayes needs metric"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sweep_files_fail_naming_the_problem(tmp_path, capsys, case) -> None:
    params, extra, message = BAD[case]
    path = write_sweep(tmp_path, params)
    spec = yaml.safe_load(path.read_text())
    for k, v in extra.items():
        if v is None:
            spec.pop(k)
        else:
            spec[k] = v
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=message):
        read_sweep(path)
    assert main(["sweep", str(path), "--local", "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssm-train sweep: error: ") and str(path) in err
    assert not (tmp_path / "s").exists()  # nothing ran


def test_yaml_errors_name_the_line(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("method: grid\nparameters:\n  seed: {values: [0, 1]\ncommand: [${env}]\n")
    with pytest.raises(SweepError, match=r"s.yaml: line 4, column 1: not valid YAML: expected ',' or '}'.*"
                       r"\(while parsing a flow mapping at line 3, column 9\)"):
        read_sweep(path)
    with pytest.raises(SweepError, match="sweep file not found"):
        read_sweep(tmp_path / "missing.yaml")


def test_overriding_a_swept_key_is_refused(tmp_path) -> None:
    path = write_sweep(tmp_path, {"model": {"values": [{"kind": "lru"}]}, "seed": {"values": [0]}})
    for override in ("seed=3", "model.kind=real", "model=x"):
        with pytest.raises(SweepError, match=f"override '{override}'.*is swept by"):
            read_sweep(path, [override])
    read_sweep(path, ["optim.lr=0.01"])  # not swept: fine
