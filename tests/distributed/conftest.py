"""Multi-process runs for the strategy tests: the CLI in a subprocess, and a cache of finished runs.

Lightning starts the extra ranks of ``trainer.devices=2`` by re-running the command line, so
multi-rank runs go through ``python -m ssm_train`` in a subprocess, never through ``main()`` in
the pytest process (whose command line is pytest's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.paths import ROOT

DEFAULT = ROOT / "configs/experiment/default.yaml"
# A tiny copy task. Constant learning rate (no warm-up, no decay): the schedule does not depend on
# trainer.max_steps, so a run stopped at step 6 and resumed to 9 is comparable with one run to 9.
# The clip is small enough to act at every step, so a wrongly reduced gradient norm would show.
TINY = ["model.d_model=8", "model.n_layers=2", "model.d_state=4", "data.seq_len=16", "data.lag=4",
        "data.val_batches=1", "trainer.val_check_interval=3", "checkpoint.every_n_steps=3",
        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "logger.mode=disabled",
        "trainer.accelerator=cpu", "optim.lr=0.01", "optim.warmup_steps=0", "optim.min_lr_ratio=1",
        "trainer.gradient_clip_val=0.05", "trainer.max_steps=6"]


def cli_env() -> dict[str, str]:
    """Our environment without SLURM's job variables (Lightning would take them for a SLURM job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "WANDB_SERVICE"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    return env


def run_cli(runs_dir: Path, name: str, *overrides: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ssm_train", "fit", "-c", str(DEFAULT), f"runs_dir={runs_dir}", f"name={name}",
           *TINY, *overrides]
    proc = subprocess.run(cmd, cwd=runs_dir, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(cmd)}\nexit {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def start_cli(runs_dir: Path, name: str, *overrides: str, entry: list[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``run_cli`` without waiting: the process of rank zero, its stdout and stderr piped (rank 1,
    started by Lightning, writes to the same pipes, so they reach EOF when every rank has exited).
    ``entry`` replaces ``python -m ssm_train`` (Lightning re-runs it for rank 1 too)."""
    cmd = [*(entry or [sys.executable, "-m", "ssm_train"]), "fit", "-c", str(DEFAULT), f"runs_dir={runs_dir}",
           f"name={name}", *TINY, *overrides]
    return subprocess.Popen(cmd, cwd=runs_dir, env={**cli_env(), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def last_ckpt(runs_dir: Path, name: str) -> dict:
    return torch.load(runs_dir / name / "checkpoints" / "last.ckpt", weights_only=True)


class Runs:
    """CLI runs under one directory; ``get`` trains a run once per module and returns its last.ckpt."""

    def __init__(self, runs_dir: Path) -> None:
        self.dir = runs_dir
        self._done: dict[str, dict] = {}

    def run(self, name: str, *overrides: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.dir, name, *overrides)

    def start(self, name: str, *overrides: str, entry: list[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return start_cli(self.dir, name, *overrides, entry=entry, env=env)

    def ckpt(self, name: str) -> dict:
        return last_ckpt(self.dir, name)

    def get(self, name: str, *overrides: str) -> dict:
        if name not in self._done:
            self.run(name, *overrides)
            self._done[name] = self.ckpt(name)
        return self._done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"))
