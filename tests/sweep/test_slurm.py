"""``--slurm``: SWEEP_FILE lines and the array command, collecting, resubmitting (slurm.py)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

from ssm_train.cli import main
from ssm_train.sweeps import collect, final_metrics, plan_slurm, read_sweep
from tests.sweep.helpers import DEFAULT, ROOT, write_sweep


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
    from ssm_train.sweeps.trials import SUBMITTED, TrialStore, new_record

    store = TrialStore(out / "sl")
    for i, params in sub.trials:
        store.save(new_record(sweep, i, params, SUBMITTED, tmp_path / "runs" / sweep.trial_name(i)))
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


def test_submitted_trials_are_recorded_with_their_array_task(tmp_path, monkeypatch) -> None:
    """A stand-in sbatch (prints a job id like ``--parsable``): each trial's record names its task."""
    from ssm_train.sweeps import submit_slurm

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\necho \"$SWEEP_FILE\" > \"$0.file\"\necho 4711\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)  # sbatch's logs/ goes here
    sweep = read_sweep(write_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 1e-2]}}, name="sb"))
    sub = submit_slurm(sweep, None, tmp_path / "s")
    assert sub.job_id == "4711" and (tmp_path / "bin" / "sbatch.file").read_text().strip() == str(sub.sweep_file)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "s" / "sb" / "trials").glob("*.json"))]
    assert [(r["status"], r["job"]) for r in records] == [("submitted", "4711_0"), ("submitted", "4711_1")]
    assert submit_slurm(sweep, None, tmp_path / "s").job_id == "4711"  # still submitted: submitted again
