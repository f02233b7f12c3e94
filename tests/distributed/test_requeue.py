"""Pre-emption without a cluster: RequeueOnSignal in one process, and the metrics log across restarts.

The SLURM tests (tests/slurm/test_train.py) do the same with 2 ranks under a real scheduler; these
run everywhere: the signal is sent by the process to itself, ``scontrol`` is a stand-in script.
"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from ssm_train.config import load_config
from ssm_train.loggers import RestartableCSVLogger
from ssm_train.slurm import RequeueOnSignal, Requeued
from ssm_train.run import fit
from tests.paths import ROOT

SMALL = ["model.d_model=8", "model.n_layers=2", "model.d_state=4", "data.seq_len=16", "data.lag=4",
         "data.batch_size=4", "data.val_batches=1", "trainer.limit_val_batches=1", "trainer.val_check_interval=4",
         "checkpoint.every_n_steps=4", "trainer.enable_progress_bar=false", "logger.mode=disabled",
         "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=8", "trainer.log_every_n_steps=1",
         "optim.warmup_steps=0", "optim.min_lr_ratio=1"]


class SignalAt(L.Callback):
    """SIGUSR1 to this process in the middle of a given step, as SLURM would send it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def config(tmp_path: Path, name: str):
    return load_config([ROOT / "configs/experiment/default.yaml"], [f"runs_dir={tmp_path}", f"name={name}", *SMALL])


def losses(run: Path) -> list[tuple[int, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch) -> Path:
    """`scontrol` on PATH that records its arguments; SLURM_JOB_ID for the callback to requeue."""
    calls = tmp_path / "scontrol.calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    return calls


@pytest.mark.slow
def test_signal_checkpoints_at_the_step_boundary_requeues_and_resumes_exactly(tmp_path, fake_scontrol, capsys):
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        fit(config(tmp_path, "straight"))
        with pytest.raises(Requeued):
            fit(config(tmp_path, "pre"), callbacks=[RequeueOnSignal(), SignalAt(step=2)])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert fake_scontrol.read_text() == "requeue 4242\n"
    out = capsys.readouterr().out
    assert "rank 0: pre-emption signal: saved hpc_ckpt_1.ckpt at step 3" in out  # after the signalled step
    hpc = torch.load(tmp_path / "pre" / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["global_step"] == 3
    assert [s for s, _ in losses(tmp_path / "pre")] == [0, 1, 2]  # logged up to the checkpoint, flushed
    fit(config(tmp_path, "pre"))  # the requeued job: checkpoint.resume=auto takes hpc_ckpt_1
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "pre/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for k, v in a["state_dict"].items():
        assert torch.equal(b["state_dict"][k], v), k
    assert losses(tmp_path / "pre") == losses(tmp_path / "straight")  # each step once, same values


def test_a_restarted_csv_log_keeps_the_rows_before_its_first_step_and_drops_the_rest(tmp_path):
    first = RestartableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step in range(6):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.save()
    # A restart from the checkpoint at step 4: steps 4 and 5 are trained (and logged) again.
    second = RestartableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    for step in range(4, 7):
        second.log_metrics({"train/loss": 10.0 + step, "val/loss": 1.0}, step=step)  # a new column too
    second.save()
    second.log_metrics({"train/loss": 20.0}, step=7)
    second.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), float(r["train/loss"])) for r in rows] == [
        (0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0), (6, 16.0), (7, 20.0)]
    assert [r["val/loss"] for r in rows] == [""] * 4 + ["1.0"] * 3 + [""]


def test_signal_before_fit_only_sets_the_flag():
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        cb = RequeueOnSignal()
        os.kill(os.getpid(), signal.SIGUSR1)  # installed at construction: the process is not killed
        assert cb.received
    finally:
        signal.signal(signal.SIGUSR1, previous)
