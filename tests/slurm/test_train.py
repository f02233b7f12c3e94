"""slurm/train.sh with the real CLI on the local cluster: 2-rank DDP on CPU, pre-emption, arrays, failure.

Each job trains a tiny model; the ranks come from SLURM (``--ntasks-per-node=2``), never from the
command line. The pre-emption test signals a running job as ``--signal=USR1@90`` would, and checks
that the requeued job ends where an uninterrupted one does: same step, same parameters (bit for
bit), and every step's loss logged exactly once (``csv/metrics.csv`` spans both segments).
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from tests.paths import ROOT

if TYPE_CHECKING:  # fixtures (slurm_cluster) come from conftest.py
    from conftest import Job, SlurmCluster

TRAIN_SH = ROOT / "slurm" / "train.sh"
STEPS = 200
# Constant learning rate, a clip that acts, a log row every step, checkpoints every 50 steps.
TINY = f"""include: [{ROOT / "configs/experiment/default.yaml"}]
model: {{d_model: 8, n_layers: 2, d_state: 4}}
data: {{seq_len: 16, lag: 4, batch_size: 2, val_batches: 1}}
optim: {{lr: 0.01, warmup_steps: 0, min_lr_ratio: 1.0}}
trainer: {{accelerator: cpu, strategy: ddp, max_steps: {STEPS}, val_check_interval: 100, limit_val_batches: 1,
          log_every_n_steps: 1, enable_progress_bar: false, gradient_clip_val: 0.05}}
checkpoint: {{every_n_steps: 50}}
logger: {{mode: disabled}}
"""


def submit_dir(d: Path) -> Path:
    (d / "logs").mkdir(exist_ok=True)
    (d / "tiny.yaml").write_text(TINY)
    return d


def cli_env(**extra: str) -> dict[str, str]:
    return {"SSM_TRAIN_CMD": f"{sys.executable} -m ssm_train", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
            **extra}


def run_dir(job: Job, name: str | None = None) -> Path:
    return job.cwd / "runs" / (name or f"ssm-train-{job.id}")


def assert_same_end(run: Path, reference: Path) -> None:
    """The same end as without the interruption: the step, every parameter, every logged loss."""
    ref, got = last(reference), last(run)
    assert got["global_step"] == ref["global_step"] == STEPS
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    for k, v in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), k
    losses = logged_losses(run)
    assert [s for s, _ in losses] == list(range(STEPS)), "a step logged twice or missing"
    assert losses == logged_losses(reference)


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def logged_losses(run: Path) -> list[tuple[int, str]]:
    """(step, train/loss) of every row that has a training loss, in file order."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster: SlurmCluster, tmp_path_factory) -> Job:
    """A 2-task DDP job run to the end with `sbatch --wait` (also the reference for pre-emption)."""
    d = submit_dir(tmp_path_factory.mktemp("uninterrupted"))
    return slurm_cluster.sbatch(["--ntasks-per-node=2", TRAIN_SH, "tiny.yaml"], cwd=d, env=cli_env(),
                                sbatch_wait=True, timeout=300)


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_ddp_job_completes_with_a_checkpoint_and_a_log(slurm_cluster: SlurmCluster, uninterrupted: Job):
    log = uninterrupted.log()
    assert uninterrupted.returncode == 0, log
    assert "1 node(s) x 2 task(s)" in log and "All distributed processes registered. Starting with 2 processes" in log
    assert {int(r) for r in re.findall(r"GLOBAL_RANK: (\d), MEMBER: \d/2", log)} == {0, 1}  # ranks from SLURM
    run = run_dir(uninterrupted)
    assert re.search(rf"final val/rel_err=[0-9.e+-]+ at step {STEPS} \(run dir runs/{run.name}\)", log), log
    assert last(run)["global_step"] == STEPS and (run / "config.yaml").is_file()
    assert [s for s, _ in logged_losses(run)] == list(range(STEPS))
    assert slurm_cluster.states(uninterrupted) == ["COMPLETED"]


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_job_requeues_and_ends_where_an_uninterrupted_one_does(
    slurm_cluster: SlurmCluster, uninterrupted: Job, tmp_path: Path
) -> None:
    assert uninterrupted.returncode == 0, uninterrupted.log()
    job = slurm_cluster.sbatch(["--ntasks-per-node=2", TRAIN_SH, "tiny.yaml"], cwd=submit_dir(tmp_path),
                               env=cli_env(), wait=False)
    run = run_dir(job)
    # Signal once training is under way (the first checkpoint, step 50), as --signal=USR1@90 would:
    # every task gets SIGUSR1, wherever it is in its step.
    slurm_cluster.wait_until("the first checkpoint", (run / "checkpoints" / "last.ckpt").is_file, 180, job)
    slurm_cluster.signal(job, "USR1")
    slurm_cluster.wait_until_done(job, timeout=300)
    log = job.log()
    assert slurm_cluster.exit_status(job) == 0, log
    # Both ranks took part in the checkpoint, at the same step, before the requeue.
    saved = re.findall(r"rank (\d): pre-emption signal: saved hpc_ckpt_1\.ckpt at step (\d+)", log)
    assert sorted(r for r, _ in saved) == ["0", "1"] and len({s for _, s in saved}) == 1, log
    step = int(saved[0][1])
    assert 0 < step < STEPS
    assert f"scontrol requeue {job.id}: done" in log
    assert "restart 1/3" in log and f"resuming from runs/{run.name}/hpc_ckpt_1.ckpt" in log
    assert slurm_cluster.show_job(job.id)[0]["Restarts"] == "1"
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == step
    assert_same_end(run, run_dir(uninterrupted))


@pytest.mark.slurm
@pytest.mark.slow
def test_array_of_three_tasks_runs_three_configurations(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    d = submit_dir(tmp_path)
    lines = ["model.d_state=2", "model.d_state=6 optim.lr=0.003", "model.kind=s4d"]
    (d / "sweep.txt").write_text("\n".join(lines) + "\n")
    job = slurm_cluster.sbatch(["--array=0-2", TRAIN_SH, "tiny.yaml", "trainer.strategy=auto", "trainer.max_steps=10"],
                               cwd=d, env=cli_env(SWEEP_FILE="sweep.txt", RUN_NAME="sw"), timeout=300)
    assert job.returncode == 0, job.log()
    expected = [{"d_state": 2, "kind": "lru", "lr": 0.01}, {"d_state": 6, "kind": "lru", "lr": 0.003},
                {"d_state": 4, "kind": "s4d", "lr": 0.01}]
    for i, want in enumerate(expected):
        ckpt = last(d / "runs" / f"sw_{i}")
        config = ckpt["hyper_parameters"]["config"]
        assert ckpt["global_step"] == 10 and config["name"] == f"sw_{i}"
        assert {"d_state": config["model"]["d_state"], "kind": config["model"]["kind"],
                "lr": config["optim"]["lr"]} == want
    assert slurm_cluster.states(job) == ["COMPLETED"] * 3


@pytest.mark.slurm
@pytest.mark.slow
def test_a_failing_job_fails_with_the_error_in_its_log_and_is_not_requeued(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    job = slurm_cluster.sbatch(["--ntasks-per-node=2", TRAIN_SH, "tiny.yaml", "optim.lr=1e30"],
                               cwd=submit_dir(tmp_path), env=cli_env(), sbatch_wait=True, timeout=240)
    log = job.log()
    # Every rank stops with status 1; srun reports 1, or 143 when --kill-on-bad-exit terminates a rank
    # that was still on its way out after the first one exited.
    assert job.returncode in (1, 143), log
    assert "ssm-train fit: training stopped: non-finite training loss (nan) at step 1" in log
    assert re.search(r"srun exited with status (1|143)$", log, re.M), log
    record = slurm_cluster.show_job(job.id)[0]
    assert record["JobState"] == "FAILED" and record["Restarts"] == "0"
    assert log.count("train.sh: run ") == 1  # started once
