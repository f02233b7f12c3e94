"""Language modelling: next-token cross-entropy, perplexity, bits per token, token accuracy."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ssm_train.tasks.base import SequenceTask


class LanguageModelTask(SequenceTask):
    primary_metric = "val/bpt"

    def __init__(self, config: dict, spec: dict) -> None:
        super().__init__(config, spec)
        V, ignore = spec["vocab_size"], spec["ignore_index"]
        self.loss_mean = {s: MeanMetric() for s in ("val", "test")}  # token-weighted, synced under DDP
        self.acc = {s: MulticlassAccuracy(V, average="micro", ignore_index=ignore) for s in ("val", "test")}
        for s in ("val", "test"):  # register as submodules so they move with the model and sync
            self.add_module(f"{s}_loss_mean", self.loss_mean[s])
            self.add_module(f"{s}_acc", self.acc[s])

    def loss_and_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Mean next-token cross-entropy and the logits; in training the loss alone, which the
        model computes in time chunks under chunk checkpointing (the logits are never whole)."""
        if self._stage == "train":
            return self.run_model(batch, loss_fn=self.token_loss) / self.loss_weight(batch).clamp_min(1), None
        logits = self.run_model(batch)
        return self.token_loss(logits, batch["targets"]) / self.loss_weight(batch).clamp_min(1), logits

    def token_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Σ cross-entropy over the targets not ignored (sum, not mean: a context-parallel slice or
        a time chunk may hold none)."""
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=self.spec["ignore_index"], reduction="sum")

    def loss_weight(self, batch: dict[str, Tensor]) -> Tensor:
        return (batch["targets"] != self.spec["ignore_index"]).sum()

    def update_metrics(self, stage: str, logits: Tensor, batch: dict[str, Tensor], loss: Tensor) -> None:
        targets = batch["targets"]
        self.loss_mean[stage].update(loss.detach(), weight=self.loss_weight(batch))
        self.acc[stage].update(logits.flatten(0, 1), targets.flatten())
        self.log(f"{stage}/acc", self.acc[stage], prog_bar=stage == "val")

    def _log_epoch(self, stage: str) -> None:
        loss = self.loss_mean[stage].compute()
        self.loss_mean[stage].reset()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/bpt": loss / math.log(2),
                       f"{stage}/ppl": loss.exp()}, prog_bar=stage == "val", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
