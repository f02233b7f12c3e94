"""Loggers of ssm-train: a CSV metrics log that survives restarts (pre-emption, crash and resume)."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
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
