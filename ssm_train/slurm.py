"""SLURM: topology from the job, Lightning's cluster environment, and pre-emption at a step boundary.

``slurm/train.sh`` starts one rank per task with ``--signal=USR1@90 --requeue``; everything the
Python side needs to know about the job is read here from SLURM's environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
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
    """Under SLURM (unless SSM_TRAIN_NO_REQUEUE=1): :class:`RequeueOnSignal`: SIGUSR1 requeues,
    SIGTERM stops, both with a checkpoint at a step boundary."""
    if SLURMEnvironment.detect() and os.environ.get("SSM_TRAIN_NO_REQUEUE") != "1":
        return [RequeueOnSignal(signal.SIGUSR1)]
    return []


class Requeued(SystemExit):
    """The job has been requeued with a checkpoint; this process ends (status 0) before SLURM ends it."""


class Terminated(SystemExit):
    """SIGTERM: a checkpoint is saved and this process ends (status 0) before SLURM's SIGKILL.

    SLURM sends SIGTERM when it ends or requeues the job itself (``scancel``, ``scontrol requeue``,
    the time limit, pre-emption without a signal): it records the job's state from what it did,
    and a 0 here keeps ``srun --kill-on-bad-exit`` from cutting another rank's last writes short.
    """


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

    SIGTERM (``terminate_signum``) is SLURM ending the job, or requeueing it, itself: it is handled
    the same way but without ``scontrol requeue`` (SLURM has requeued the job already, or means it
    to end) and exits with :class:`Terminated`; a requeued job resumes from that checkpoint, a
    cancelled one can be resubmitted with ``RUN_NAME`` to. SLURM kills the ranks ``KillWait``
    seconds after SIGTERM (30 by default), so the checkpoint is written at the next step boundary.
    Lightning's own SIGTERM handler is replaced during training: it runs a broadcast inside the
    handler (which can pair with a gradient all-reduce) and exits without a checkpoint.
    """

    def __init__(self, signum: int = signal.SIGUSR1, terminate_signum: int | None = signal.SIGTERM) -> None:
        self.signum = signum
        self.terminate_signum = terminate_signum
        self.received = False  # the requeue signal came
        self.terminated = False  # SIGTERM came
        self.stopping = False  # the ranks agreed on SIGTERM: exit without requeueing
        self.dropped_wandb = False
        self.saved: Path | None = None
        self._trainer: L.Trainer | None = None
        signal.signal(signum, self._on_signal)  # now, in the main thread: a signal before fit must not kill us

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = True  # nothing more here: a collective in a signal handler can pair with a step's

    def _on_terminate(self, signum: int, frame: object) -> None:
        self.terminated = True
        self._drop_wandb()

    def _drop_wandb(self) -> bool:
        """No more logging to W&B after SIGTERM: SLURM signals every process of the job, W&B's service
        process too, which exits, and the next ``wandb.log`` would raise in the middle of the step.
        The CSV log keeps every row; the requeued job continues the W&B run (same id) from the
        checkpoint, without the few steps the service had not written yet."""
        if self._trainer is not None and any(isinstance(lg, WandbLogger) for lg in self._trainer.loggers):
            self._trainer.loggers = [lg for lg in self._trainer.loggers if not isinstance(lg, WandbLogger)]
            self.dropped_wandb = True
            return True
        return False

    def on_train_start(self, trainer: L.Trainer, *args: object) -> None:
        """Ours over Lightning's SIGTERM handler (set just before); Lightning restores the previous
        one at the end of fit."""
        self._trainer = trainer
        if self.terminate_signum is not None:
            signal.signal(self.terminate_signum, self._on_terminate)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.saved is not None or not trainer.strategy.reduce_boolean_decision(
                self.received or self.terminated, all=False):
            return
        # Only here, so one collective per step otherwise; every rank got the same answer above.
        self.stopping = trainer.strategy.reduce_boolean_decision(self.terminated, all=False)
        if trainer.global_step >= trainer.max_steps > 0:
            return  # the last step: the run completes normally
        path = self._save(trainer)
        why = "SIGTERM" if self.stopping else "pre-emption signal"
        print(f"rank {trainer.global_rank}: {why}: saved {path.name} at step {trainer.global_step}", flush=True)

    def _save(self, trainer: L.Trainer) -> Path:
        """``<run dir>/hpc_ckpt_<n+1>.ckpt``, by every rank at this step; older ones are removed."""
        run_dir = Path(trainer.default_root_dir)
        n = 1 + max((int(p.stem.removeprefix("hpc_ckpt_")) for p in run_dir.glob("hpc_ckpt_*.ckpt")
                     if p.stem.removeprefix("hpc_ckpt_").isdigit()), default=0)
        path = trainer.strategy.broadcast(run_dir / f"hpc_ckpt_{n}.ckpt")
        trainer.save_checkpoint(path)  # collective: every rank is here, at the same step
        self.saved = path
        if trainer.is_global_zero:
            for old in run_dir.glob("hpc_ckpt_*.ckpt"):
                if old != path:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
        return path

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self._leave(trainer)

    def on_validation_start(self, trainer: L.Trainer, *args: object) -> None:
        self._leave(trainer)

    def _leave(self, trainer: L.Trainer) -> None:
        """After a save: flush the loggers, then exit (SIGTERM) or requeue and exit (the signal)."""
        if self.saved is None:
            return
        for logger in trainer.loggers:  # rows up to the checkpoint's step; later ones are dropped on resume
            logger.save()
        if self.stopping:
            if self.dropped_wandb:
                _close_wandb()
            trainer.strategy.barrier("ssm-train-sigterm")  # rank zero's flush is done before any rank exits
            if trainer.is_global_zero:
                print(f"SIGTERM: stopped at step {trainer.global_step}; not requeueing (SLURM requeues or "
                      "ends the job itself)", flush=True)
            raise Terminated(0)
        self._requeue(trainer)

    def _requeue(self, trainer: L.Trainer) -> None:
        ok = True
        # SLURM's SIGTERM follows the requeue and ends W&B's service too: finish (flush) the W&B run
        # first; the requeued job continues it under the same id.
        if self._drop_wandb() and trainer.is_global_zero:
            import wandb

            wandb.finish()
        if trainer.is_global_zero:
            job = os.environ.get("SLURM_JOB_ID", "")
            if "SLURM_ARRAY_JOB_ID" in os.environ:  # an array task is requeued by its own id
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            ok = proc.returncode == 0
            print(f"scontrol requeue {job}: " + ("done" if ok else f"failed ({proc.returncode}): "
                                                  f"{proc.stderr.strip()}; training goes on"
                                                  + (" (without W&B)" if self.dropped_wandb else "")), flush=True)
        if trainer.strategy.broadcast(ok):
            raise Requeued(0)
        self.saved, self.received = None, False


def _close_wandb() -> None:
    """Ends this process's W&B connection quietly: its service has usually exited on SIGTERM already,
    and the teardown at exit would print a ConnectionResetError traceback."""
    import wandb

    with contextlib.suppress(Exception):
        wandb.teardown()
