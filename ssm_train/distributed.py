"""Strategies from config: what DDP, FSDP2 and DeepSpeed ZeRO need here (SLURM: ssm_train/slurm.py).

``trainer.strategy``:

    auto                      one device (or Lightning's choice)
    ddp                       replicated model, gradients all-reduced (gloo on CPU, NCCL on GPU)
    fsdp                      FSDP2 through Lightning's ModelParallelStrategy: one ``fully_shard``
                              group per residual block, one for the rest (embedding, final norm, head)
    hsdp                      hybrid FSDP2: sharded within a node, replicated across nodes (the
                              parameter all-gathers stay on the node's fast links; gradients are
                              reduce-scattered within the node and all-reduced across nodes)
    deepspeed_stage_{1,2,3}   DeepSpeed ZeRO through Lightning's DeepSpeedStrategy, with the JSON
    deepspeed_stage_{2,3}_offload   config ``configs/deepspeed/<stage>.json`` (GPU only)

Every model parameter is a real float32 tensor (complex values are built inside ``forward``):
ZeRO flattens parameters into one buffer per dtype and FSDP2 one per ``fully_shard`` group, and
both fail on, or silently corrupt, complex64 parameters. Nothing here special-cases the recurrence:
it runs in float32 under any precision because the layers upcast (see ``ssm_train.ops.scan``).

What works where (measured on CPU with gloo, 2 processes; docs/distributed.md):

    ddp                    CPU and GPU
    fsdp, hsdp             CPU and GPU (32-true, bf16-mixed; Lightning refuses 16-mixed)
    deepspeed_*            GPU only: Lightning's DeepSpeedStrategy refuses the CPU. DeepSpeed itself
                           (``deepspeed.initialize``) runs ZeRO 1-3 on CPU; tests/distributed uses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info

from ssm_train.config import Config
from ssm_train.errors import ConfigError
from ssm_train.faults import ReportingDDPStrategy, ReportsLostRanks, collective_timeout
from ssm_train.paths import project_file, search_roots

if TYPE_CHECKING:
    import lightning as L
    from torch import nn
    from torch.distributed.device_mesh import DeviceMesh

    from ssm_train.ops.context import ContextGroup

DEEPSPEED = ("deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
             "deepspeed_stage_3_offload")
STRATEGIES = ("auto", "ddp", "fsdp", "hsdp", *DEEPSPEED)
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")
DEEPSPEED_CONFIG_DIR = Path("configs") / "deepspeed"


def on_cpu(cfg: Config) -> bool:
    import torch

    return cfg.trainer.accelerator == "cpu" or (cfg.trainer.accelerator == "auto" and not torch.cuda.is_available())


def build_strategy(cfg: Config) -> Strategy | str:
    name, precision = cfg.trainer.strategy, cfg.trainer.precision
    if name not in STRATEGIES:
        raise ConfigError(f"key 'trainer.strategy': '{name}' is not one of {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"key 'trainer.precision': '{precision}' is not one of {', '.join(PRECISIONS)}")
    backend = "gloo" if on_cpu(cfg) else "nccl"
    if name == "auto":
        return "auto"
    if name == "ddp":  # a lost rank is reported by the ranks, and a silent one times out (ssm_train/faults.py)
        return ReportingDDPStrategy(process_group_backend=backend, timeout=collective_timeout())
    if name in ("fsdp", "hsdp"):
        if precision == "16-mixed":  # fp16 needs a sharded gradient scaler, which Lightning does not offer
            raise ConfigError(f"key 'trainer.precision': 16-mixed is not supported with trainer.strategy={name}; "
                              "use bf16-mixed or 32-true")
        return FSDP2Strategy(process_group_backend=backend, hybrid=name == "hsdp")
    if on_cpu(cfg):
        raise ConfigError(f"key 'trainer.strategy': '{name}' needs GPUs (Lightning's DeepSpeedStrategy refuses "
                          "the CPU); on CPU use ddp or fsdp")
    from ssm_train.checkpoint import atomic_deepspeed_strategy

    return atomic_deepspeed_strategy(config=deepspeed_config(name), process_group_backend=backend)


# ------------------------------------------------------------------------------------------ FSDP2


class FSDP2Strategy(ReportsLostRanks, ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as pure FSDP2: every rank data-parallel, no tensor parallelism.

    Lightning's default mesh is (nodes) x (devices per node) for FSDP across nodes and tensor
    parallelism within; the data here are split by global rank, so the mesh is (world, 1). The
    sharding itself is :func:`shard_model`, called from the task's ``configure_model`` hook, over
    :attr:`fsdp_mesh`: all ranks (``hybrid=False``), or with ``hybrid=True`` a 2-D mesh
    (replicate = nodes, shard = devices per node), which FSDP2 runs as HSDP.
    Checkpoints are single files (the full state gathered on rank 0), like those of DDP, so that
    ``last.ckpt``, resume and ``ssm-train export`` work the same under every strategy.
    """

    def __init__(self, process_group_backend: str | None = None, hybrid: bool = False) -> None:
        super().__init__(save_distributed_checkpoint=False, process_group_backend=process_group_backend,
                         timeout=collective_timeout())
        self.hybrid = hybrid
        self._hybrid_mesh: DeviceMesh | None = None

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        """The mesh ``fully_shard`` gets: 1-D over every rank, or 2-D (replicate, shard) if hybrid."""
        if not self.hybrid:
            return self.device_mesh["data_parallel"]
        if self._hybrid_mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._hybrid_mesh = init_device_mesh(self.root_device.type, (self.num_nodes, self.num_processes),
                                                 mesh_dim_names=("replicate", "shard"))
        return self._hybrid_mesh


def shard_model(task: L.LightningModule) -> None:
    """FSDP2: ``fully_shard`` each residual block, then the backbone (embedding, final norm, head).

    A no-op without a device mesh (every strategy but fsdp/hsdp) and on a model already sharded
    (Lightning calls ``configure_model`` again for the validation after fit). One group per block
    means one all-gather per block in forward and one reduce-scatter per block in backward, each
    overlapping the neighbouring block's compute; all parameters of a group are float32, which
    FSDP2 needs (one flat buffer per group). Under hsdp the mesh is 2-D and every parameter a
    DTensor placed (Replicate(), Shard(0)).
    """
    if task.device_mesh is None:
        return
    from torch.distributed.fsdp import FSDPModule, fully_shard

    model = task.model
    if isinstance(model, FSDPModule):
        return
    strategy = task.trainer.strategy
    mesh = strategy.fsdp_mesh if isinstance(strategy, FSDP2Strategy) else task.device_mesh["data_parallel"]
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    layout = ", ".join(f"{n}={k}" for n, k in zip(mesh.mesh_dim_names, mesh.shape))
    placements = ", ".join(map(repr, next(model.parameters()).placements))
    rank_zero_info(f"FSDP2: {len(model.blocks) + 1} shard groups over the mesh ({layout}), "
                   f"parameters placed ({placements})")


def context_group(size: int) -> ContextGroup:
    """This rank's context group for ``trainer.context_parallel=size``: ``size`` consecutive global
    ranks (on one node where a node holds a multiple of ``size`` processes, so that the state
    exchanges stay on its fast links); the data-parallel replicas are the groups. Every rank
    creates every group, in the same order, as ``new_group`` requires."""
    import torch.distributed as dist

    from ssm_train.ops.context import ContextGroup

    world, rank = dist.get_world_size(), dist.get_rank()
    if world % size:
        raise ConfigError(f"key 'trainer.context_parallel': {size} does not divide the world size {world} "
                          "(trainer.devices x trainer.num_nodes)")
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)), timeout=collective_timeout())
        if first <= rank < first + size:
            mine = group
    return ContextGroup.of(mine)


@contextmanager
def gathered_parameters(module: nn.Module) -> Iterator[None]:
    """Inside, ``module``'s parameters are whole, plain tensors on every rank (read-only use).

    Under FSDP2 each rank holds a shard (a DTensor) and under ZeRO-3 an empty placeholder outside
    forward; reading the eigenvalues for a plot needs the whole tensors. This is a collective:
    every rank must enter it, even if only rank zero reads. Without sharding it does nothing.
    """
    from torch.distributed.fsdp import FSDPModule

    fsdp = [m for m in module.modules() if isinstance(m, FSDPModule)]
    zero3 = [p for p in module.parameters() if hasattr(p, "ds_id")]  # DeepSpeed partitioned params
    if fsdp:
        for m in fsdp:
            m.unshard()
        try:
            yield
        finally:
            for m in fsdp:
                m.reshard()
    elif zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(zero3, modifier_rank=None):
            yield
    else:
        yield


# -------------------------------------------------------------------------------------- DeepSpeed


def deepspeed_config_path(name: str) -> Path:
    """``configs/deepspeed/<stage>.json`` for ``deepspeed_<stage>``, from the working directory or the
    source checkout (as the CLI finds its default experiment)."""
    if name not in DEEPSPEED:
        raise ConfigError(f"key 'trainer.strategy': '{name}' is not a DeepSpeed strategy ({', '.join(DEEPSPEED)})")
    filename = name.removeprefix("deepspeed_") + ".json"
    path = project_file(DEEPSPEED_CONFIG_DIR / filename)
    if path is None:
        raise ConfigError(f"key 'trainer.strategy': {DEEPSPEED_CONFIG_DIR / filename} not found (in "
                          f"{' or '.join(map(str, search_roots()))})")
    return path


def deepspeed_config(name: str) -> dict:
    """The JSON config of a DeepSpeed strategy, checked for keys that the Trainer sets instead.

    Lightning fills in the micro-batch size (from the data loader), gradient clipping
    (``trainer.gradient_clip_val``), accumulation (``trainer.accumulate_grad_batches``) and the
    fp16/bf16 sections (``trainer.precision``); a config that set them would contradict the run config.
    """
    path = deepspeed_config_path(name)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    owned = {"train_batch_size": "data.batch_size", "train_micro_batch_size_per_gpu": "data.batch_size",
             "gradient_accumulation_steps": "trainer.accumulate_grad_batches",
             "gradient_clipping": "trainer.gradient_clip_val", "fp16": "trainer.precision",
             "bf16": "trainer.precision", "optimizer": "optim.* (configure_optimizers)",
             "scheduler": "optim.* (configure_optimizers)"}
    for key, instead in owned.items():
        if key in config:
            raise ConfigError(f"{path}: key '{key}' is set by the run config ({instead}); remove it from the JSON")
    stage = int(name.split("_")[2])
    if config.get("zero_optimization", {}).get("stage") != stage:
        raise ConfigError(f"{path}: zero_optimization.stage must be {stage} for trainer.strategy={name}")
    return config
