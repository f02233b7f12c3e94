"""From a resolved config to Lightning objects: run directory, data, task, loggers, callbacks, Trainer.

The run directory ``<runs_dir>/<name>/`` holds everything of one run::

    .lock              held by the run that is training here (ssm_train/run_lock.py)
    config.yaml        the resolved config (also stored inside every checkpoint, as a plain dict)
    checkpoints/       last.ckpt (every checkpoint.every_n_steps and at the end), best-*.ckpt
    hpc_ckpt_*.ckpt    written at a step boundary on SLURM's pre-emption signal (distributed.py)
    wandb/ wandb_id    the W&B files; the id makes a resumed run continue the same W&B run
    csv/metrics.csv    every logged metric, appended across restarts
    plots/             eigenvalue spectra
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ssm_train import checkpoint, cpu_memory
from ssm_train.callbacks import SpectrumPlot
from ssm_train.atomic import atomic_write_text
from ssm_train.checkpoint import AtomicCheckpointIO, CheckpointError, checkpoint_mtime
from ssm_train.config import Config, to_dict, to_yaml
from ssm_train.data.kinds import build_datamodule
from ssm_train.distributed import DEEPSPEED, build_strategy
from ssm_train.errors import ConfigError
from ssm_train.faults import FaultWatch
from ssm_train.loggers import ResilientWandbLogger, RestartableCSVLogger
from ssm_train.run_lock import hold_run_dir
from ssm_train.slurm import build_plugins, slurm_callbacks, slurm_topology
from ssm_train.tasks import TASKS, SequenceTask
from ssm_train.tasks.base import spec_to_dict


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run directory and write its config.yaml; exit 2 (ConfigError) if it cannot be written."""
    run_dir = cfg.run_dir
    try:
        for sub in ("checkpoints", "plots"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        checkpoint_dir(cfg).mkdir(parents=True, exist_ok=True)
        if is_rank_zero():
            atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    except OSError as e:
        key = "checkpoint.dir" if cfg.checkpoint.dir and Path(e.filename or "").is_relative_to(
            Path(cfg.checkpoint.dir)) else "runs_dir"
        raise ConfigError(f"key '{key}': cannot write to {e.filename or run_dir}: {e.strerror or e} "
                          "(a read-only or full filesystem?); give a writable runs_dir") from None
    return run_dir


def check_free_space(cfg: Config, task: SequenceTask) -> None:
    """Refuse to start when the checkpoint folder cannot hold the checkpoints this run will write.

    A checkpoint holds the weights and AdamW's two moments (3x the parameter bytes); the folder
    holds last.ckpt, ``checkpoint.keep`` best ones, and during a save one temp file beside them.
    """
    per_checkpoint = 3 * sum(p.numel() * p.element_size() for p in task.parameters()) + (256 << 10)
    folder = checkpoint_dir(cfg)
    existing = sum(p.stat().st_size for p in folder.glob("*.ckpt") if p.is_file())
    need = (cfg.checkpoint.keep + 2) * per_checkpoint - existing
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ConfigError(f"key 'runs_dir': {folder} has {free / 2**20:.1f} MiB free, but this run's checkpoints "
                          f"need about {need / 2**20:.1f} MiB ({cfg.checkpoint.keep + 2} x "
                          f"{per_checkpoint / 2**20:.1f} MiB); free some space or give another runs_dir")


def checkpoint_dir(cfg: Config) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else cfg.run_dir / "checkpoints"


def build_data_and_task(cfg: Config) -> tuple[L.LightningDataModule, SequenceTask]:
    """The data module and the task it feeds.

    Bad data settings or files raise a DataError (a ConfigError: exit 2, one message) while the
    module is built, before training; nothing is caught here, so that any other exception from a
    data module (a bug) keeps its traceback and exits 1 instead of posing as the user's mistake.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same initial weights on every rank
    datamodule = build_datamodule(cfg.data, cfg.seed)
    spec = spec_to_dict(datamodule.spec)
    kind = spec["task"] if cfg.task.kind == "auto" else cfg.task.kind
    if kind != spec["task"]:
        raise ConfigError(f"key 'task.kind': '{kind}' does not fit data.kind='{cfg.data.kind}', "
                          f"which serves '{spec['task']}' (use task.kind=auto)")
    return datamodule, TASKS[kind](to_dict(cfg), spec)


def resume_path(cfg: Config) -> str | None:
    """``checkpoint.resume``: none, a path, or auto = the newest readable checkpoint of this run.

    auto looks at last.ckpt and SLURM's hpc_ckpt_* first, then at the best-* checkpoints; an
    unreadable one (a damaged file, an unfinished save) is skipped with one line saying why. A path
    given explicitly must read, or the run stops with exit 2 saying what is wrong with it.
    """
    resume = cfg.checkpoint.resume
    if resume == "none":
        return None
    if resume != "auto":
        if reason := checkpoint.unreadable(resume):
            raise CheckpointError(f"key 'checkpoint.resume': {resume}: {reason}")
        return resume
    say = print if is_rank_zero() else (lambda _: None)
    found = checkpoint.newest_resumable(cfg.run_dir, [checkpoint_dir(cfg)], say)
    return str(found) if found else None


def check_resume_fits(path: str | None, task: SequenceTask) -> None:
    """A checkpoint file must hold this run's model (same keys and shapes); else exit 2 naming them."""
    if path is None or Path(path).is_dir():  # DeepSpeed folders are checked by DeepSpeed itself
        return
    state = checkpoint.load(path, mmap=True)
    checkpoint.check_fits(path, state["state_dict"], task.state_dict())


def build_loggers(cfg: Config, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    w = cfg.logger.wandb
    mode = w.mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode != "disabled":
        loggers.append(ResilientWandbLogger(
            project=w.project, entity=w.entity, name=cfg.name, id=_wandb_id(run_dir), resume="allow",
            save_dir=str(run_dir), mode=mode, tags=list(w.tags), group=w.group, config=to_dict(cfg)))
    if cfg.logger.csv:
        loggers.append(RestartableCSVLogger(save_dir=str(run_dir), name="csv", version=""))
    return loggers


def _wandb_id(run_dir: Path) -> str | None:
    """The W&B run id, kept in the run directory so that a resumed run continues the same W&B run.

    Only rank zero talks to W&B (Lightning's ``rank_zero_experiment``); other ranks need no id.
    Under a W&B sweep agent the agent's run id is used, so the trial reports to the sweep.
    """
    path = run_dir / "wandb_id"
    if not is_rank_zero():
        return None
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    if not path.exists():
        atomic_write_text(path, uuid.uuid4().hex[:12])
    return path.read_text().strip()


def build_callbacks(cfg: Config, run_dir: Path, task: SequenceTask) -> list[L.Callback]:
    ckpt_dir = checkpoint_dir(cfg)
    last = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=cfg.checkpoint.every_n_steps,
                           save_top_k=0, save_last=True)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best-step{step:07d}", auto_insert_metric_name=False,
                           monitor=task.primary_metric, mode=task.primary_mode, save_top_k=cfg.checkpoint.keep)
    tokens = (lambda b: b["inputs"].shape[0] * b["inputs"].shape[1])
    return [last, best, LearningRateMonitor(logging_interval="step"), SpectrumPlot(run_dir / "plots"),
            ThroughputMonitor(batch_size_fn=lambda b: b["inputs"].shape[0], length_fn=tokens,
                              window_size=10)]


def build_trainer(cfg: Config, run_dir: Path, task: SequenceTask,
                  extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    t = cfg.trainer
    num_nodes, devices = slurm_topology() or (t.num_nodes, t.devices)
    return L.Trainer(
        default_root_dir=str(run_dir), max_steps=t.max_steps, precision=t.precision,
        accelerator=t.accelerator, devices=devices, num_nodes=num_nodes,
        strategy=build_strategy(cfg), plugins=[*build_plugins(cfg), *checkpoint_plugins(cfg)],
        gradient_clip_val=t.gradient_clip_val or None, accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.val_check_interval, check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, logger=build_loggers(cfg, run_dir),
        callbacks=[*build_callbacks(cfg, run_dir, task), FaultWatch(), *slurm_callbacks(cfg), *extra_callbacks],
        num_sanity_val_steps=0,
    )


def checkpoint_plugins(cfg: Config) -> list:
    """Atomic checkpoint files under every strategy that writes one file (DeepSpeed writes folders,
    switched in atomically by its own strategy class; ssm_train/checkpoint.py)."""
    return [] if cfg.trainer.strategy in DEEPSPEED else [AtomicCheckpointIO()]


def is_rank_zero() -> bool:
    """Lightning's rank (from RANK / LOCAL_RANK / SLURM_PROCID until a strategy sets it)."""
    return rank_zero_only.rank == 0


@dataclass
class FitResult:
    metric: str  # the task's primary metric, e.g. val/rel_err
    value: float
    step: int
    run_dir: Path
    metrics: dict[str, float]


def sweep_agent_name(cfg: Config) -> None:
    """Under a stock ``wandb agent`` every trial would get the config's name and share (and resume)
    one run directory: give each trial ``<name>-<W&B run id>`` instead."""
    run_id = os.environ.get("WANDB_RUN_ID")
    if os.environ.get("WANDB_SWEEP_ID") and run_id and not cfg.name.endswith(f"-{run_id}"):
        cfg.name = f"{cfg.name}-{run_id}"


def fit(cfg: Config, callbacks: Sequence[L.Callback] = ()) -> FitResult:
    """Train (resuming per ``checkpoint.resume``), save last.ckpt, validate; the final metrics."""
    sweep_agent_name(cfg)
    # what one chunk frees leaves the resident set before the next
    cpu_memory.for_checkpointing(cfg.trainer.activation_checkpointing, cfg.data.seq_len, cfg.trainer.checkpoint_chunk)
    datamodule, task = build_data_and_task(cfg)
    explicit = cfg.checkpoint.resume not in ("auto", "none")
    if explicit:  # a checkpoint named by the user is checked before anything is written
        ckpt = resume_path(cfg)
        check_resume_fits(ckpt, task)
    run_dir = prepare_run_dir(cfg)
    with hold_run_dir(run_dir) if is_rank_zero() else nullcontext():
        check_free_space(cfg, task)
        if not explicit:  # under the lock: no other run is writing these checkpoints now
            ckpt = resume_path(cfg)
            check_resume_fits(ckpt, task)
        trainer = build_trainer(cfg, run_dir, task, callbacks)
        if trainer.is_global_zero:
            print(to_yaml(cfg) + (f"resuming from {ckpt}\n" if ckpt else ""), end="", flush=True)
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        trainer.save_checkpoint(checkpoint_dir(cfg) / "last.ckpt", weights_only=False)  # full state
        metrics = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
        _finish_loggers(trainer)
    return FitResult(task.primary_metric, float(metrics[task.primary_metric]), trainer.global_step, run_dir,
                     {k: float(v) for k, v in metrics.items()})


def evaluate(cfg: Config, stage: str, ckpt: str | None = None) -> dict[str, float]:
    """Metrics of a checkpoint (default: the run's last.ckpt) on the validation or test data."""
    ckpt = ckpt or str(checkpoint_dir(cfg) / "last.ckpt")
    if checkpoint_mtime(Path(ckpt)) is None:
        raise ConfigError(f"--ckpt: '{ckpt}' is not a checkpoint (train first, or give --ckpt PATH)")
    if reason := checkpoint.unreadable(ckpt):
        raise CheckpointError(f"--ckpt: {ckpt}: {reason}")
    datamodule, task = build_data_and_task(cfg)
    check_resume_fits(ckpt, task)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)  # evaluating never rewrites the run's config.yaml
    trainer = build_trainer(cfg, cfg.run_dir, task)
    run = trainer.validate if stage == "validate" else trainer.test
    metrics = run(task, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)[0]
    _finish_loggers(trainer)
    return {k: float(v) for k, v in metrics.items()}


def _finish_loggers(trainer: L.Trainer) -> None:
    """Close W&B now, so that its sync hints print before our final line, not after it."""
    for logger in trainer.loggers:
        logger.finalize("success")
    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers) and trainer.is_global_zero:
        import wandb

        wandb.finish()
