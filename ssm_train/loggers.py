"""Loggers of ssm-train: a CSV metrics log that survives restarts (pre-emption, crash and resume),
and a W&B logger that a dead W&B service cannot crash."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
import sys
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter



class RestartableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, but ``metrics.csv`` survives a restart in the same folder.

    Lightning's deletes the file when its folder exists. Here a resumed run appends, after dropping
    the rows at or past the first step it logs: those came from steps after the checkpoint it
    resumed from, which it trains again. The file then holds each step once, as trained.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._trimmed = False

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's deletes metrics.csv here

    def save(self) -> None:
        if self.metrics and not self._trimmed and self._fs.isfile(self.metrics_file_path):
            first = min(int(m["step"]) for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.DictReader(f)
                header, rows = list(reader.fieldnames or []), list(reader)
            kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) < first]
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept)
            self.metrics_keys = sorted(header)  # new keys extend this header (Lightning rewrites the file)
        self._trimmed = self._trimmed or bool(self.metrics)
        super().save()


class ResilientWandbLogger(WandbLogger):
    """Lightning's WandbLogger, but a lost connection to W&B's service stops W&B logging with one
    line instead of ending the run.

    SLURM's SIGTERM (``scancel``, ``scontrol requeue``, the time limit) reaches every process of the
    job at once, W&B's service too, which exits; a ``wandb.log`` already under way in rank zero then
    raised ConnectionResetError in the middle of the step, before the checkpoint the SIGTERM handler
    was about to write (seen under load in tests/slurm/test_faults.py). The CSV log keeps every row,
    and a resumed run continues the W&B run under the same id.
    """

    lost: str | None = None  # why W&B logging stopped

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._guarded(super().log_metrics, metrics, step)

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        self._guarded(super().log_image, *args, **kwargs)

    def _guarded(self, call: Any, *args: Any, **kwargs: Any) -> None:
        if self.lost is not None:
            return
        try:
            call(*args, **kwargs)
        except (ConnectionError, BrokenPipeError) as e:
            self.lost = f"{type(e).__name__}: {e}"
            print(f"W&B: the connection to its service was lost ({self.lost}); logging to W&B stops here, "
                  "the CSV log (csv/metrics.csv) keeps every row", file=sys.stderr, flush=True)

