"""Metrics that torchmetrics does not ship, written as torchmetrics so they sync under DDP."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class RelativeError(Metric):
    """Relative L2 error ``sqrt(Σ|ŷ - y|^2 / Σ|y|^2)`` over everything seen (all ranks)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("err", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ref", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.err += (preds.double() - target.double()).pow(2).sum()
        self.ref += target.double().pow(2).sum()

    def compute(self) -> torch.Tensor:
        return (self.err / self.ref.clamp_min(torch.finfo(torch.float64).tiny)).sqrt().float()
