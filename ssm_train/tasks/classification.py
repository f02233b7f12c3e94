"""Sequence classification: cross-entropy, accuracy and class-balanced (macro) F1."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ssm_train.tasks.base import SequenceTask


class ClassificationTask(SequenceTask):
    primary_metric = "val/acc"
    primary_mode = "max"

    def __init__(self, config: dict, spec: dict) -> None:
        super().__init__(config, spec)
        C = spec["d_output"]
        self.metrics = {s: MetricCollection({"acc": MulticlassAccuracy(C, average="micro"),
                                             "f1": MulticlassF1Score(C, average="macro"),
                                             "loss": MeanMetric()}, prefix=f"{s}/")
                        for s in ("val", "test")}
        for s, m in self.metrics.items():
            self.add_module(f"{s}_metrics", m)

    def loss_and_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self(batch["inputs"], mask=batch.get("mask"))
        return F.cross_entropy(logits.float(), batch["targets"]), logits

    def update_metrics(self, stage: str, logits: Tensor, batch: dict[str, Tensor], loss: Tensor) -> None:
        m = self.metrics[stage]
        m["acc"].update(logits, batch["targets"])
        m["f1"].update(logits, batch["targets"])
        m["loss"].update(loss.detach(), weight=batch["targets"].numel())
        self.log_dict(m, prog_bar=stage == "val")
