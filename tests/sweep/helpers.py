"""Shared helpers of the sweep tests: a tiny sweep file, a stand-in for ``fit``, reading results."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import yaml

from ssm_train.run import FitResult
from tests.paths import ROOT

SWEEP_FILES = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
DEFAULT = str(ROOT / "configs" / "experiment" / "default.yaml")
TINY = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.seq_len=16", "data.lag=4",
        "data.batch_size=4", "data.val_batches=2", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "checkpoint.every_n_steps=2", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
        "logger.mode=disabled", "trainer.accelerator=cpu", "trainer.devices=1"]


def write_sweep(d: Path, parameters: dict, method: str = "grid", name: str = "tiny", **extra) -> Path:
    spec = {"name": name, "method": method, "metric": {"name": "val/rel_err", "goal": "minimize"},
            "parameters": parameters, **extra,
            "command": ["${env}", "ssm-train", "fit", "-c", DEFAULT, f"runs_dir={d / 'runs'}", *TINY,
                        "${args_no_hyphens}"]}
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class FakeFit:
    """Stands in for ssm_train.run.fit: a metric that is a known function of the config."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.names: list[str] = []
        self.fail_at = fail_at

    def __call__(self, cfg) -> FitResult:
        if self.fail_at is not None and len(self.names) == self.fail_at:
            raise KeyboardInterrupt  # the sweep is killed during this trial
        self.names.append(cfg.name)
        value = (math.log10(cfg.optim.lr) + 2.5) ** 2 + cfg.model.init.r_min
        return FitResult("val/rel_err", value, cfg.trainer.max_steps, cfg.run_dir,
                         {"val/rel_err": value, "val/mse": value**2})


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))
