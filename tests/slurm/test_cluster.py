"""slurm/train.sh on the local cluster, driving tests/slurm/stub_cli.py instead of the real CLI.

What is checked is the shell side: resources read from SLURM, one rank per task, the run name that
survives a requeue, sweep lines per array task, errors that reach the log and the exit status,
SIGUSR1 reaching every rank, and the restart cap.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # fixtures (slurm_cluster, slurm_workdir, stub_env) come from conftest.py
    from conftest import SlurmCluster

TRAIN_SH = Path(__file__).resolve().parents[2] / "slurm" / "train.sh"


def stub_records(log: str) -> list[dict]:
    return [json.loads(line.removeprefix("STUB ")) for line in log.splitlines() if line.startswith("STUB {")]


def write_config(d: Path, name: str = "tiny.yaml") -> str:
    (d / name).write_text("name: ignored-by-the-stub\n")
    return name


def test_train_sh_outside_slurm_says_how_to_submit(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(TRAIN_SH), "c.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not inside a SLURM job" in proc.stderr and "sbatch" in proc.stderr


@pytest.mark.slurm
@pytest.mark.slow
def test_cluster_is_up_with_an_idle_node(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.node_state() in {"idle", "mixed", "allocated"}
    cpus = int(slurm_cluster.run("sinfo", "-h", "-N", "-o", "%c").stdout)
    assert cpus >= 3, "the node must advertise enough CPUs for a 3-task array and 2-task jobs"
    assert "JobRequeue=1" in slurm_cluster.run("scontrol", "show", "config").stdout.replace(" ", "")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("tasks", ["--ntasks-per-node=2", "--ntasks=2"])
def test_two_tasks_get_one_rank_each_and_a_stable_run_name(
    slurm_cluster: SlurmCluster, slurm_workdir: Path, stub_env: dict[str, str], tasks: str
) -> None:
    cfg = write_config(slurm_workdir)
    job = slurm_cluster.sbatch([tasks, TRAIN_SH, cfg, "model.n_layers=2"],
                               cwd=slurm_workdir, env=stub_env, sbatch_wait=True)
    log = job.log()
    assert job.returncode == 0, log
    recs = sorted(stub_records(log), key=lambda r: r["rank"])
    assert [r["rank"] for r in recs] == [0, 1], log
    assert {r["local_rank"] for r in recs} == {0, 1}
    for r in recs:
        assert r["ntasks"] == 2 and r["ntasks_per_node"] == "2" and r["job_id"] == job.id
        assert r["configs"] == [cfg] and r["unbuffered"] == "1" and r["restart"] == 0
        assert r["overrides"] == {"name": f"ssm-train-{job.id}", "checkpoint.resume": "auto",
                                  "model.n_layers": "2"}
    assert job.log_paths() == [slurm_workdir / "logs" / f"ssm-train-{job.id}.out"]
    assert "srun exited with status 0" in log


@pytest.mark.slurm
@pytest.mark.slow
def test_array_runs_one_sweep_line_per_task(
    slurm_cluster: SlurmCluster, slurm_workdir: Path, stub_env: dict[str, str]
) -> None:
    cfg = write_config(slurm_workdir)
    lines = ["optim.lr=0.1", "optim.lr=0.01 'note=two words'", "optim.lr=0.001 model.n_layers=4"]
    (slurm_workdir / "sweep.txt").write_text("\n".join(lines) + "\n")
    job = slurm_cluster.sbatch(["--array=0-2", TRAIN_SH, cfg, "trainer.max_steps=5"], cwd=slurm_workdir,
                               env={**stub_env, "SWEEP_FILE": "sweep.txt", "RUN_NAME": "sw"}, sbatch_wait=True)
    assert job.returncode == 0, job.log()
    tasks = job.tasks()
    assert [t["ArrayTaskId"] for t in tasks] == ["0", "1", "2"]
    expected = [{"optim.lr": "0.1"}, {"optim.lr": "0.01", "note": "two words"},
                {"optim.lr": "0.001", "model.n_layers": "4"}]
    for i, (path, want) in enumerate(zip(job.log_paths(), expected, strict=True)):
        recs = stub_records(path.read_text())
        assert len(recs) == 1, path.read_text()  # each task ran once, its own line only
        assert recs[0]["overrides"] == {"name": f"sw_{i}", "checkpoint.resume": "auto",
                                        "trainer.max_steps": "5", **want}


@pytest.mark.slurm
@pytest.mark.slow
def test_array_task_without_a_sweep_line_fails_naming_the_range(
    slurm_cluster: SlurmCluster, slurm_workdir: Path, stub_env: dict[str, str]
) -> None:
    cfg = write_config(slurm_workdir)
    (slurm_workdir / "sweep.txt").write_text("a=1\nb=2\n")
    job = slurm_cluster.sbatch(["--array=2", TRAIN_SH, cfg], cwd=slurm_workdir,
                               env={**stub_env, "SWEEP_FILE": "sweep.txt"})
    assert job.returncode == 2
    assert "array task 2 has no line in sweep.txt (2 lines: use --array=0-1)" in job.log()
    assert not stub_records(job.log())


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/experiment/missing.yaml", "experiment/missing"])
def test_missing_config_fails_with_the_error_in_the_log(
    slurm_cluster: SlurmCluster, slurm_workdir: Path, stub_env: dict[str, str], config: str
) -> None:
    """A `.yaml` path is checked here before any rank starts; any other name reaches the CLI (exit 2)."""
    job = slurm_cluster.sbatch([TRAIN_SH, config], cwd=slurm_workdir, env=stub_env, sbatch_wait=True)
    assert job.returncode == 2, job.log()
    assert f"config file not found: '{config}'" in job.log()
    assert slurm_cluster.states(job) == ["FAILED"]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize(("env", "status", "message"), [
    ({"SSM_TRAIN_CMD": "/nonexistent/ssm-train"}, 127, "SSM_TRAIN_CMD: '/nonexistent/ssm-train' not found on PATH"),
    ({"SSM_TRAIN_VENV": "/nonexistent"}, 2, "SSM_TRAIN_VENV=/nonexistent has no bin/activate"),
    ({"SWEEP_FILE": "sweep.txt"}, 2, "SWEEP_FILE=sweep.txt is set but this is not an array job"),
    ({"MAX_RESTARTS": "many"}, 2, "MAX_RESTARTS must be a non-negative integer, got 'many'"),
], ids=["cmd", "venv", "sweep-without-array", "max-restarts"])
def test_bad_environment_fails_before_any_rank_starts(
    slurm_cluster: SlurmCluster, slurm_workdir: Path, stub_env: dict[str, str],
    env: dict[str, str], status: int, message: str,
) -> None:
    cfg = write_config(slurm_workdir)
    job = slurm_cluster.sbatch([TRAIN_SH, cfg], cwd=slurm_workdir, env={**stub_env, **env})
    assert job.returncode == status, job.log()
    assert f"train.sh: error: {message}" in job.log()
    assert not stub_records(job.log())


@pytest.mark.slurm
@pytest.mark.slow
def test_one_failing_rank_fails_the_job_with_its_status(
    slurm_cluster: SlurmCluster, slurm_workdir: Path, stub_env: dict[str, str]
) -> None:
    cfg = write_config(slurm_workdir)
    job = slurm_cluster.sbatch(["--ntasks-per-node=2", TRAIN_SH, cfg, "stub.exit=7", "stub.exit_rank=1"],
                               cwd=slurm_workdir, env=stub_env, sbatch_wait=True)
    assert job.returncode == 7, job.log()
    assert slurm_cluster.exit_status(job) == 7  # the polling helper reads what sbatch --wait returns
    assert "srun exited with status 7" in job.log()


@pytest.mark.slurm
@pytest.mark.slow
def test_usr1_reaches_every_rank_and_the_requeued_job_resumes_its_run(
    slurm_cluster: SlurmCluster, slurm_workdir: Path, stub_env: dict[str, str]
) -> None:
    cfg = write_config(slurm_workdir)
    job = slurm_cluster.sbatch(["--ntasks-per-node=2", TRAIN_SH, cfg, "stub.sleep=120", "stub.requeue_on_usr1=1"],
                               cwd=slurm_workdir, env=stub_env, wait=False)
    slurm_cluster.wait_for_log(job, r"STUB \{", count=2)  # both ranks are up and have set their handler
    slurm_cluster.signal(job, "USR1")
    assert slurm_cluster.wait_until_done(job, timeout=90) == ["COMPLETED"], job.log()
    log = job.log()
    assert sorted(re.findall(r"STUB-USR1 rank=(\d)", log)) == ["0", "1"], log
    first, second = (sorted((r for r in stub_records(log) if r["restart"] == k), key=lambda r: r["rank"])
                     for k in (0, 1))
    assert len(first) == len(second) == 2, log
    name = f"ssm-train-{job.id}"
    assert all(r["overrides"]["name"] == name and r["resumed_from"] is None for r in first)
    assert all(r["overrides"]["name"] == name and r["resumed_from"] == {"job_id": job.id, "restart": 0}
               for r in second)
    assert "restart 1/3" in log  # --open-mode=append: both runs in one log


@pytest.mark.slurm
@pytest.mark.slow
def test_restart_cap_stops_a_job_that_requeues_forever(
    slurm_cluster: SlurmCluster, slurm_workdir: Path, stub_env: dict[str, str]
) -> None:
    cfg = write_config(slurm_workdir)
    job = slurm_cluster.sbatch([TRAIN_SH, cfg, "stub.requeue=1"], cwd=slurm_workdir,
                               env={**stub_env, "MAX_RESTARTS": "1"}, timeout=120)
    log = job.log()
    assert job.returncode == 3, log
    assert [r["restart"] for r in stub_records(log)] == [0, 1], log
    assert f"job {job.id} has been requeued 2 times, more than MAX_RESTARTS=1" in log
    assert slurm_cluster.states(job) == ["FAILED"]
