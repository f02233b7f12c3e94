"""SLURM: topology from the job, Lightning's cluster environment, and pre-emption at a step boundary.

``slurm/train.sh`` starts one rank per task with ``--signal=USR1@90 --requeue``; everything the
Python side needs to know about the job is read here from SLURM's environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment

from ssm_train.config import Config

if TYPE_CHECKING:
    import lightning as L



def slurm_topology() -> tuple[int, int] | None:
    """(nodes, tasks per node) of the SLURM job this process runs in, or None outside SLURM.

    ``slurm/train.sh`` starts one rank per task and never repeats the counts on the command line:
    they are read here, so Lightning's check that they match the job always passes.
    """
    if not SLURMEnvironment.detect():
        return None
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]  # "2(x3)" -> 2
    return int(os.environ.get("SLURM_NNODES", "1")), int(per_node)


def build_plugins(cfg: Config) -> list:
    """Under SLURM: Lightning's environment (ranks, world size, master address from SLURM).

    Its own auto-requeue stays off: Lightning's handler checkpoints from inside the signal handler,
    wherever each rank happens to be, and its barrier can pair with a gradient all-reduce of a rank
    that is a step behind. :class:`RequeueOnSignal` does the same work at a step boundary.
    """
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def slurm_callbacks(cfg: Config) -> list:
    """Under SLURM (unless SSM_TRAIN_NO_REQUEUE=1): :class:`RequeueOnSignal` on SIGUSR1."""
    if SLURMEnvironment.detect() and os.environ.get("SSM_TRAIN_NO_REQUEUE") != "1":
        return [RequeueOnSignal(signal.SIGUSR1)]
    return []


class Requeued(SystemExit):
    """The job has been requeued with a checkpoint; this process ends (status 0) before SLURM ends it."""


class RequeueOnSignal(Callback):
    """SLURM pre-emption: on the signal, every rank checkpoints at the same step; then requeue and exit.

    The signal handler only records that the signal came (``--signal=USR1@90`` or ``scancel
    --signal=USR1`` reach every rank, at slightly different points of a step). After each training
    step the ranks agree whether any of them has it (one all-reduce of a flag) and, if so, all save
    ``<run dir>/hpc_ckpt_<n>.ckpt`` together at that step boundary, where the model, optimizer,
    schedule, data position and step counter agree (the point where ModelCheckpoint saves). The
    step's metrics are logged by Lightning after this hook, so the requeue and the exit wait for the
    next hook (the next step's start, or validation), after the loggers are flushed. Rank zero
    runs ``scontrol requeue``; the job comes back with the same id and run directory and resumes
    from the newest checkpoint (``checkpoint.resume=auto``). A signal at the last step is ignored:
    the run is finishing anyway. Older hpc checkpoints are removed once the new one is written.
    """

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum = signum
        self.received = False
        self.saved: Path | None = None
        signal.signal(signum, self._on_signal)  # now, in the main thread: a signal before fit must not kill us

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = True  # nothing more here: a collective in a signal handler can pair with a step's

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.saved is not None or not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        if trainer.global_step >= trainer.max_steps > 0:
            return  # the last step: the run completes normally
        run_dir = Path(trainer.default_root_dir)
        n = 1 + max((int(p.stem.removeprefix("hpc_ckpt_")) for p in run_dir.glob("hpc_ckpt_*.ckpt")
                     if p.stem.removeprefix("hpc_ckpt_").isdigit()), default=0)
        path = trainer.strategy.broadcast(run_dir / f"hpc_ckpt_{n}.ckpt")
        trainer.save_checkpoint(path)  # collective: every rank is here, at the same step
        self.saved = path
        print(f"rank {trainer.global_rank}: pre-emption signal: saved {path.name} at step {trainer.global_step}",
              flush=True)
        if trainer.is_global_zero:
            for old in run_dir.glob("hpc_ckpt_*.ckpt"):
                if old != path:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self._requeue(trainer)

    def on_validation_start(self, trainer: L.Trainer, *args: object) -> None:
        self._requeue(trainer)

    def _requeue(self, trainer: L.Trainer) -> None:
        if self.saved is None:
            return
        for logger in trainer.loggers:  # rows up to the checkpoint's step; later ones are dropped on resume
            logger.save()
        ok = True
        if trainer.is_global_zero:
            job = os.environ.get("SLURM_JOB_ID", "")
            if "SLURM_ARRAY_JOB_ID" in os.environ:  # an array task is requeued by its own id
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            ok = proc.returncode == 0
            print(f"scontrol requeue {job}: " + ("done" if ok else f"failed ({proc.returncode}): "
                                                  f"{proc.stderr.strip()}; training goes on"), flush=True)
        if trainer.strategy.broadcast(ok):
            raise Requeued(0)
        self.saved, self.received = None, False
