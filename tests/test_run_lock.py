"""One run per run directory (ssm_train/run_lock.py): a second run with the same name is refused while
the first lives; a killed owner leaves nothing stale; a requeued SLURM job may take over its own lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ssm_train.run_lock import LOCK_NAME, RunDirInUse, hold_run_dir
from tests.distributed.conftest import cli_env
from tests.paths import ROOT

TINY = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.seq_len=16", "data.lag=4",
        "data.batch_size=4", "data.val_batches=1", "trainer.val_check_interval=50", "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false", "logger.mode=disabled", "trainer.accelerator=cpu",
        "trainer.devices=1", "checkpoint.every_n_steps=10"]


def start_fit(runs: Path, name: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ssm_train", "fit", "-c", str(ROOT / "configs/experiment/default.yaml"),
           f"runs_dir={runs}", f"name={name}", *TINY, *extra]
    return subprocess.Popen(cmd, cwd=runs, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_owner(run_dir: Path, pid: int, timeout: float = 120) -> dict:
    """The lock file's owner record, once the process ``pid`` has written it (it holds the lock then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            owner = json.loads((run_dir / LOCK_NAME).read_text())
            if owner.get("pid") == pid:
                return owner
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"pid {pid} never took {run_dir / LOCK_NAME}")


@pytest.mark.slow
def test_two_runs_with_one_name_at_once_the_second_exits_2_and_the_first_is_untouched(tmp_path):
    first = start_fit(tmp_path, "same", "trainer.max_steps=3000", "seed=1")  # ~30 s: outlives the second
    try:
        wait_for_owner(tmp_path / "same", first.pid)
        second = start_fit(tmp_path, "same", "trainer.max_steps=3000", "seed=2")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err[-3000:]
        assert f"run directory {tmp_path / 'same'} is in use by another run (pid {first.pid} on" in err
        assert "Traceback" not in err
        assert first.poll() is None  # the first run goes on
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    last = torch.load(tmp_path / "same/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 3000 and last["hyper_parameters"]["config"]["seed"] == 1


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    first = start_fit(tmp_path, "k", "trainer.max_steps=100000")
    wait_for_owner(tmp_path / "k", first.pid)
    deadline = time.monotonic() + 120
    while not (tmp_path / "k/checkpoints/last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    reached = torch.load(tmp_path / "k/checkpoints/last.ckpt", weights_only=True)["global_step"]
    second = start_fit(tmp_path, "k", f"trainer.max_steps={reached + 10}")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert "resuming from" in out and f"at step {reached + 10}" in out.strip().splitlines()[-1]


HOLDER = textwrap.dedent("""
    import fcntl, json, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": "h", "slurm_job": sys.argv[2]}).encode(), 0)
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
""")


def hold(run_dir: Path, job: str, seconds: float) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir / LOCK_NAME), job, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_another_job_is_refused_and_the_message_names_the_owner(tmp_path, monkeypatch):
    holder = hold(tmp_path / "r", "77", 60)
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "78")
        with pytest.raises(RunDirInUse) as e:
            with hold_run_dir(tmp_path / "r", wait_same_job=1):
                pass
        assert f"pid {holder.pid} on h, SLURM job 77" in str(e.value)
    finally:
        holder.kill()


def test_the_same_slurm_job_requeued_waits_for_its_previous_incarnation(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    holder = hold(tmp_path / "r", "77", 1.5)  # the previous run still ending (or a lease not yet expired)
    started = time.monotonic()
    with hold_run_dir(tmp_path / "r", wait_same_job=60):
        waited = time.monotonic() - started
        assert json.loads((tmp_path / "r" / LOCK_NAME).read_text())["pid"] == os.getpid()
    holder.wait()
    assert 0.5 < waited < 30
    assert "still locked by this SLURM job's previous run" in capsys.readouterr().out


def test_the_same_job_goes_on_after_the_bounded_wait(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    holder = hold(tmp_path / "r", "77", 60)
    try:
        with hold_run_dir(tmp_path / "r", wait_same_job=1):
            pass
    finally:
        holder.kill()
    assert "lock not released after 1 s; going on" in capsys.readouterr().out


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    with hold_run_dir(tmp_path):
        with pytest.raises(RunDirInUse):  # a second holder, even in the same process, is refused
            with hold_run_dir(tmp_path):
                pass
    with hold_run_dir(tmp_path):  # free again
        pass
