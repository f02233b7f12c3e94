"""Interruptions SLURM makes itself, on the local cluster with the real CLI (2-rank DDP on CPU).

- ``scancel --signal=USR1``: what ``--signal=USR1@90`` sends before a time limit; the ranks
  checkpoint at a step boundary and rank zero requeues the job.
- a bare ``scontrol requeue``: SLURM requeues the job itself and sends SIGTERM, then SIGKILL after
  KillWait; the ranks checkpoint at the next step boundary and exit, without requeueing again.
- a plain ``scancel``: SIGTERM too; the checkpoint is saved and the job stays cancelled.

A requeued job must end as an uninterrupted one does: the same parameters (bit for bit), each
step logged once (``csv/metrics.csv``), the first segment stopped at the step the second resumed
from (nothing trained twice), and one W&B run (offline here) continued under the same id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import pytest
import torch

from ssm_train.config import load_config
from ssm_train.run import fit
from ssm_train.slurm import RequeueOnSignal, Terminated
from tests.paths import ROOT
from tests.slurm.test_train import STEPS, TINY, TRAIN_SH, assert_same_end, last, logged_losses, run_dir

if TYPE_CHECKING:  # fixtures (slurm_cluster) come from conftest.py
    from conftest import Job, SlurmCluster

# test_train.py's tiny job, with W&B logging offline (the run id must survive the requeue).
TINY = TINY.replace("logger: {mode: disabled}", "logger: {wandb: {mode: offline}}")
assert "mode: offline" in TINY
SAVED = r"rank (\d): {why}: saved hpc_ckpt_1\.ckpt at step (\d+)"


def submit(cluster: SlurmCluster, d: Path, wait: bool) -> Job:
    (d / "logs").mkdir(exist_ok=True)
    (d / "tiny.yaml").write_text(TINY)
    env = {"SSM_TRAIN_CMD": f"{sys.executable} -m ssm_train", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    if wait:
        return cluster.sbatch(["--ntasks-per-node=2", TRAIN_SH, "tiny.yaml"], cwd=d, env=env, sbatch_wait=True,
                              timeout=300)
    return cluster.sbatch(["--ntasks-per-node=2", TRAIN_SH, "tiny.yaml"], cwd=d, env=env, wait=False)


def wandb_ids(run: Path) -> list[str]:
    """The run id of each offline W&B run directory (one per segment of the job)."""
    return sorted(re.sub(r"^offline-run-\d{8}_\d{6}-", "", p.name) for p in (run / "wandb").glob("offline-run-*"))


def rank_pids(run: Path) -> list[int]:
    return [r["pid"] for r in json.loads((run / "ranks.json").read_text())]


def first_segment_steps(cluster: SlurmCluster, job: Job) -> list[int]:
    """The steps logged by the first segment, read between the segments: once both of its ranks
    are gone and before the requeued job's ranks start (they rewrite ranks.json)."""
    run = run_dir(job)
    pids = rank_pids(run)
    cluster.wait_until("the first segment's ranks to exit",
                       lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 60, job)
    steps = [s for s, _ in logged_losses(run)]
    assert rank_pids(run) == pids, "the second segment started before the first one's log was read"
    return steps


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster: SlurmCluster, tmp_path_factory) -> Job:
    job = submit(slurm_cluster, tmp_path_factory.mktemp("uninterrupted"), wait=True)
    assert job.returncode == 0, job.log()
    return job


def interrupt(cluster: SlurmCluster, job: Job, how: str) -> None:
    """Once training is under way (the first checkpoint, step 50)."""
    cluster.wait_until("the first checkpoint", (run_dir(job) / "checkpoints" / "last.ckpt").is_file, 180, job)
    if how == "usr1":
        cluster.signal(job, "USR1")
    elif how == "requeue":
        cluster.requeue(job)
    else:
        cluster.run("scancel", job.id)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["usr1", "requeue"], ids=["scancel-signal-usr1", "scontrol-requeue"])
def test_an_interrupted_job_ends_where_an_uninterrupted_one_does(
    slurm_cluster: SlurmCluster, uninterrupted: Job, tmp_path: Path, how: str
) -> None:
    job = submit(slurm_cluster, tmp_path, wait=False)
    run = run_dir(job)
    interrupt(slurm_cluster, job, how)
    segment_one = first_segment_steps(slurm_cluster, job)
    slurm_cluster.wait_until_done(job, timeout=300)
    log = job.log()
    assert slurm_cluster.exit_status(job) == 0, log
    record = slurm_cluster.show_job(job.id)[0]
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", record  # requeued once, not twice
    # Both ranks saved at the same step boundary; rank zero requeued only when SLURM had not.
    why = "pre-emption signal" if how == "usr1" else "SIGTERM"
    saved = re.findall(SAVED.format(why=why), log)
    assert sorted(r for r, _ in saved) == ["0", "1"] and len({s for _, s in saved}) == 1, log
    step = int(saved[0][1])
    assert 50 <= step < STEPS
    if how == "usr1":
        assert f"scontrol requeue {job.id}: done" in log
    else:
        assert "scontrol requeue" not in log and f"SIGTERM: stopped at step {step}; not requeueing" in log
    # Nothing trained twice: the first segment logged the steps before the checkpoint, the second resumed there.
    assert segment_one == list(range(step)), "the first segment trained past its checkpoint"
    assert f"resuming from runs/{run.name}/hpc_ckpt_1.ckpt" in log
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == step
    assert_same_end(run, run_dir(uninterrupted))
    # One W&B run, continued: both segments wrote under the id kept in the run directory.
    wandb_id = (run / "wandb_id").read_text().strip()
    assert wandb_ids(run) == [wandb_id, wandb_id], list((run / "wandb").iterdir())


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_cancelled_job_saves_a_checkpoint_and_is_not_requeued(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = submit(slurm_cluster, tmp_path, wait=False)
    interrupt(slurm_cluster, job, "cancel")
    slurm_cluster.wait_until_done(job, timeout=120)
    log = job.log()
    saved = re.findall(SAVED.format(why="SIGTERM"), log)
    assert sorted(r for r, _ in saved) == ["0", "1"] and len({s for _, s in saved}) == 1, log
    record = slurm_cluster.show_job(job.id)[0]
    assert record["JobState"] == "CANCELLED" and record["Restarts"] == "0", record
    assert "scontrol requeue" not in log
    hpc = torch.load(run_dir(job) / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["global_step"] == int(saved[0][1]) < STEPS  # a resubmission with RUN_NAME resumes from it


# ------------------------------------------------------------- SIGTERM in one process, no cluster

SMALL = ["model.d_model=8", "model.n_layers=2", "model.d_state=4", "data.seq_len=16", "data.lag=4",
         "data.batch_size=4", "data.val_batches=1", "trainer.limit_val_batches=1", "trainer.val_check_interval=4",
         "checkpoint.every_n_steps=4", "trainer.enable_progress_bar=false", "logger.mode=disabled",
         "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=8", "trainer.log_every_n_steps=1",
         "optim.warmup_steps=0", "optim.min_lr_ratio=1"]


class TerminateAt(L.Callback):
    """SIGTERM to this process in the middle of a given step, as SLURM sends it to every task."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_checkpoints_at_the_step_boundary_and_exits_without_requeueing(tmp_path, monkeypatch, capsys):
    calls = tmp_path / "scontrol.calls"  # a stand-in scontrol: it must not be run
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    config = lambda name: load_config([ROOT / "configs/experiment/default.yaml"],  # noqa: E731
                                      [f"runs_dir={tmp_path}", f"name={name}", *SMALL])
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        fit(config("straight"))
        with pytest.raises(Terminated) as stopped:
            fit(config("term"), callbacks=[RequeueOnSignal(), TerminateAt(step=2)])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stopped.value.code == 0
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # ours only while training
    assert not calls.exists()
    out = capsys.readouterr().out
    assert "rank 0: SIGTERM: saved hpc_ckpt_1.ckpt at step 3" in out and "SIGTERM: stopped at step 3" in out
    assert torch.load(tmp_path / "term" / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 3
    assert [s for s, _ in logged_losses(tmp_path / "term")] == [0, 1, 2]  # flushed, nothing past the checkpoint
    fit(config("term"))  # the requeued job: checkpoint.resume=auto takes hpc_ckpt_1
    a, b = last(tmp_path / "straight"), last(tmp_path / "term")
    assert a["global_step"] == b["global_step"] == 8
    for k, v in a["state_dict"].items():
        assert torch.equal(b["state_dict"][k], v), k
    assert logged_losses(tmp_path / "term") == logged_losses(tmp_path / "straight")
