"""Per-step sequence-to-sequence regression: MSE and relative L2 error."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanSquaredError, MetricCollection

from ssm_train.tasks.base import SequenceTask
from ssm_train.tasks.metrics import RelativeError


class RegressionTask(SequenceTask):
    primary_metric = "val/rel_err"

    def __init__(self, config: dict, spec: dict) -> None:
        super().__init__(config, spec)
        self.metrics = {s: MetricCollection({"mse": MeanSquaredError(), "rel_err": RelativeError()},
                                            prefix=f"{s}/") for s in ("val", "test")}
        for s, m in self.metrics.items():
            self.add_module(f"{s}_metrics", m)

    def loss_and_outputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        preds = self.run_model(batch)
        return F.mse_loss(preds.float(), batch["targets"]), preds

    def update_metrics(self, stage: str, preds: Tensor, batch: dict[str, Tensor], loss: Tensor) -> None:
        self.metrics[stage].update(preds.float(), batch["targets"])
        self.log_dict(self.metrics[stage], prog_bar=stage == "val")
