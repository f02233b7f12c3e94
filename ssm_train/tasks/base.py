"""What every task shares: the backbone, the optimizer and schedule, exact-resume seeding, NaN stop.

A task is built from two plain dicts, the resolved run config and the data spec, so that its
hyper-parameters round-trip through a checkpoint loaded with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from ssm_train.config import Config, from_dict, layer_config
from ssm_train.data.base import DataSpec
from ssm_train.errors import ConfigError, NonFiniteLossError
from ssm_train.nn import Backbone
from ssm_train.nn.init import get_init
from ssm_train.nn.params import param_groups
from ssm_train.nn.registry import mixer_factory
from ssm_train.nn.state import detach_state, map_state
from ssm_train.ops.context import ContextGroup, split_sequence


def spec_to_dict(spec: DataSpec) -> dict:
    """A DataSpec as plain types; the tokenizer travels as its ``state_dict``."""
    d = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("tokenizer", "extra")}
    d["tokenizer"] = spec.tokenizer.state_dict() if spec.tokenizer is not None else None
    return d


def build_backbone(cfg: Config, spec: dict) -> Backbone:
    """The Backbone of ``cfg.model``: its mixer is the registered ``model.kind`` with its section
    ``model.<kind>`` and the eigenvalue init ``model.init``."""
    m = cfg.model
    mixer = mixer_factory(m.kind, m.d_state, layer_config(m), init=m.init.name, init_params=_init_params(cfg))
    return Backbone(
        vocab_size=spec["vocab_size"], d_input=spec["d_input"], d_model=m.d_model,
        n_layers=m.n_layers, mixer=mixer, norm=m.norm, mlp=m.mlp, mlp_ratio=m.mlp_ratio,
        dropout=m.dropout, bidirectional=m.bidirectional, head=spec["task"], d_output=spec["d_output"],
        pooling=m.pooling, tie_weights=m.tie_weights, checkpointing=cfg.trainer.activation_checkpointing,
        checkpoint_chunk=cfg.trainer.checkpoint_chunk,
    )


def _init_params(cfg: Config) -> dict:
    """The ``model.init`` fields that the named init takes (radii and phase, or the Δ range)."""
    init = cfg.model.init
    accepted = inspect.signature(get_init(init.name)).parameters
    return {k: v for k, v in vars(init).items() if k != "name" and k in accepted}


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SequenceTask(L.LightningModule):
    """Base LightningModule; subclasses define ``loss_and_outputs`` and their metrics."""

    primary_metric: str = "val/loss"  # what the final line reports and "best" checkpoints track
    primary_mode: str = "min"

    def __init__(self, config: dict, spec: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg: Config = from_dict(config)
        self.spec = spec
        self.model = build_backbone(self.cfg, spec)
        self._carried: dict[str, Any] = {}  # stage -> the model's state after the last batch
        self._stage = "train"
        self.context: ContextGroup | None = None  # trainer.context_parallel > 1: this rank's group

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.model(inputs, mask=mask) if mask is not None else self.model(inputs)

    # ----- sequences: document resets and the state carried from window to window
    def run_model(self, batch: dict[str, Tensor], loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
        """The model's outputs on a batch of windows (with ``loss_fn``: the summed loss against
        the batch's targets, chunked with trainer.activation_checkpointing=chunk): with the
        batch's ``resets`` (document starts), and with ``model.carry_state`` from the states the
        previous batch of this stage left (the same rows continue the same streams:
        data.window_sampling=contiguous); those states are detached, so gradients stop at the
        window boundary (truncated BPTT)."""
        kw = {"resets": batch.get("resets")}
        if loss_fn is not None:
            kw |= {"targets": batch["targets"], "loss_fn": loss_fn}
        if not self.cfg.model.carry_state:
            return self.model(batch["inputs"], **kw)
        out, state = self.model(batch["inputs"], state=self._carried.get(self._stage), return_state=True, **kw)
        self._carried[self._stage] = detach_state(state)
        return out

    def on_validation_epoch_start(self) -> None:
        self._carried.pop("val", None)  # every validation reads its streams from their start

    def on_test_epoch_start(self) -> None:
        self._carried.pop("test", None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The training streams' carried states travel in the checkpoint, one per rank (gathered:
        only rank 0 writes), so that a resumed run continues them bit for bit."""
        if not self.cfg.model.carry_state:
            return
        mine = map_state(self._carried.get("train"), lambda t: t.detach().cpu())
        world = self.trainer.world_size
        states = [mine]
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * world
            torch.distributed.all_gather_object(states, mine)
        checkpoint["carried_state"] = {"world_size": world, "states": states}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("carried_state")
        if not self.cfg.model.carry_state or saved is None:
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        if saved["world_size"] != world:
            raise ConfigError(
                f"this checkpoint carries recurrent states for {saved['world_size']} ranks, the run has {world}: "
                "model.carry_state resumes on the same number of ranks (or set model.carry_state=false)")
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self._carried["train"] = map_state(saved["states"][rank], lambda t: t.to(self.device))

    # ----- context parallelism: the ranks of one context group hold the slices of the same sequences
    def setup(self, stage: str) -> None:
        """trainer.context_parallel=N: the group of N consecutive ranks (ssm_train.distributed),
        the model's mixers told to scan their slices over it, and the data sharded over the
        world/N groups instead of the ranks, so that a group's ranks read the same batches."""
        n = self.cfg.trainer.context_parallel
        if n == 1 or self.context is not None:
            return
        from ssm_train.distributed import context_group

        if self.spec["task"] == "classify":
            raise ConfigError("key 'trainer.context_parallel': needs a loss per position (lm or regress); a "
                              "classifier pools over the whole sequence")
        self.context = context_group(n)
        self.model.set_context_parallel(self.context)
        group = self.trainer.global_rank // n
        self.trainer.datamodule.set_data_parallel(group, self.trainer.world_size // n)

    def local_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Under context parallelism: this rank's slice, along time, of every [B, L, ...] tensor."""
        if self.context is None:
            return batch
        L = batch["inputs"].shape[1]
        if L % self.context.size:
            raise ConfigError(f"key 'trainer.context_parallel': a batch of length {L} does not divide into "
                              f"{self.context.size} slices (make data.seq_len a multiple of it)")
        return {k: split_sequence(v, self.context).contiguous() if torch.is_tensor(v) and v.ndim >= 2
                and v.shape[1] == L else v for k, v in batch.items()}

    def loss_weight(self, batch: dict[str, Tensor]) -> Tensor:
        """How many terms this rank's mean loss averages (every target; LM: those not ignored)."""
        return torch.tensor(batch["targets"].numel(), device=batch["targets"].device)

    def _context_mean(self, loss: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(loss to backpropagate, loss to log). Each rank's loss is its slice's mean; weighted by
        N·w_r/Σw over the group, the gradient average that DDP/FSDP take over the N ranks is the
        gradient of the mean over the whole sequence, and the group mean of it is that mean."""
        import torch.distributed as dist

        w = self.loss_weight(batch).to(loss.dtype)
        sums = torch.stack([w, loss.detach() * w])  # one collective: Σw and Σ w_r·loss_r
        dist.all_reduce(sums, group=self.context.group)
        return loss * (w * self.context.size / sums[0]), sums[1] / sums[0]

    # ----- steps
    def loss_and_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update_metrics(self, stage: str, outputs: Tensor, batch: dict[str, Tensor], loss: Tensor) -> None:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self._stage = "train"
        batch = self.local_batch(batch)
        loss, _ = self.loss_and_outputs(batch)
        logged = loss
        if self.context is not None:
            loss, logged = self._context_mean(loss, batch)
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}; {self._kept_checkpoint()}. "
                "Try a lower optim.lr, trainer.gradient_clip_val, or 32-true precision.")
        self.log("train/loss", logged, prog_bar=True, batch_size=batch["inputs"].shape[0])
        return loss

    def _kept_checkpoint(self) -> str:
        """What a stopped run leaves to resume from: the newest checkpoint written, or none yet."""
        from ssm_train.checkpoint import checkpoint_mtime

        folder = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        last = Path(folder) / "last.ckpt" if folder else None
        if last is not None and checkpoint_mtime(last) is not None:
            return f"the last good checkpoint, {last}, is kept"
        return (f"no checkpoint was written before it (the first is due at step "
                f"checkpoint.every_n_steps={self.cfg.checkpoint.every_n_steps})")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        self._stage = stage
        batch = self.local_batch(batch)
        loss, outputs = self.loss_and_outputs(batch)
        self.update_metrics(stage, outputs, batch, loss)

    # ----- exact resume: dropout & co. depend only on (seed, step, rank), never on history
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seq = np.random.SeedSequence([self.cfg.seed, self.global_step, self.global_rank])
        torch.manual_seed(int(seq.generate_state(1, np.uint64)[0]))

    # ----- sharding: trainer.strategy=fsdp or hsdp applies FSDP2 here, once the device mesh exists
    def configure_model(self) -> None:
        from ssm_train.distributed import shard_model

        shard_model(self)

    # ----- optimisation
    def configure_optimizers(self):
        o, t = self.cfg.optim, self.cfg.trainer
        groups = param_groups(self.model, lr=o.lr, weight_decay=o.weight_decay,
                              recurrent_lr_factor=o.recurrent_lr_factor)
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, o.warmup_steps, t.max_steps, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
