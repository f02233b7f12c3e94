"""Strategy and cluster plugins from config: what DDP, FSDP and DeepSpeed need here.

All model parameters are real tensors (complex values are built in ``forward``), which every
strategy handles; on CPU, DDP runs over gloo.
"""

from __future__ import annotations

import os
import signal

from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, Strategy

from ssm_train.config import Config, ConfigError

STRATEGIES = ("auto", "ddp")


def _on_cpu(cfg: Config) -> bool:
    import torch

    return cfg.trainer.accelerator == "cpu" or (cfg.trainer.accelerator == "auto" and not torch.cuda.is_available())


def build_strategy(cfg: Config) -> Strategy | str:
    name = cfg.trainer.strategy
    if name == "auto":
        return "auto"
    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo" if _on_cpu(cfg) else "nccl")
    raise ConfigError(f"key 'trainer.strategy': '{name}' is not one of {', '.join(STRATEGIES)}")


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
    """Under SLURM: Lightning's environment with auto-requeue on SIGUSR1 (``--signal=USR1@90``)."""
    if SLURMEnvironment.detect() and os.environ.get("SSM_TRAIN_NO_REQUEUE") != "1":
        return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)]
    return []
