"""A W&B service that dies mid-run (SLURM's SIGTERM reaches it too) stops W&B logging, not the run."""

from __future__ import annotations

import pytest

from ssm_train.loggers import ResilientWandbLogger


def test_a_lost_wandb_service_stops_wandb_logging_with_one_line(tmp_path, monkeypatch, capsys):
    logger = ResilientWandbLogger(project="p", save_dir=str(tmp_path), mode="offline")
    calls = []

    def dead_service(self, metrics, step=None):
        calls.append(step)
        raise ConnectionResetError("Connection lost")

    monkeypatch.setattr("lightning.pytorch.loggers.WandbLogger.log_metrics", dead_service)
    logger.log_metrics({"train/loss": 1.0}, step=1)  # no exception: the run goes on
    logger.log_metrics({"train/loss": 0.9}, step=2)  # and W&B is not tried again
    assert calls == [1]
    assert "logging to W&B stops here" in capsys.readouterr().err
    assert logger.lost == "ConnectionResetError: Connection lost"


def test_other_errors_still_raise(tmp_path, monkeypatch):
    logger = ResilientWandbLogger(project="p", save_dir=str(tmp_path), mode="offline")

    def bug(self, metrics, step=None):
        raise ValueError("a bug")

    monkeypatch.setattr("lightning.pytorch.loggers.WandbLogger.log_metrics", bug)
    with pytest.raises(ValueError, match="a bug"):
        logger.log_metrics({"x": 1.0}, step=1)
