"""``ssm-train export CKPT OUT`` on single-file checkpoints, and its errors (ZeRO folders: test_zero.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ssm_train.cli import main
from ssm_train.config import load_config
from ssm_train.export import ExportError, export_checkpoint
from ssm_train.run import build_data_and_task
from tests.paths import ROOT

TINY = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.seq_len=16", "data.lag=4",
        "data.batch_size=4", "data.val_batches=1", "trainer.limit_val_batches=1", "trainer.val_check_interval=3",
        "checkpoint.every_n_steps=3", "trainer.enable_progress_bar=false", "logger.mode=disabled",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_steps=3"]


def fake_checkpoint(path: Path) -> dict:
    """What Lightning writes, without training: state, optimizer state, loops, hyper-parameters."""
    _, task = build_data_and_task(load_config([ROOT / "configs/experiment/default.yaml"], TINY))
    ckpt = {"epoch": 0, "global_step": 3, "pytorch-lightning_version": "2.6", "hparams_name": "kwargs",
            "hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(),
            "optimizer_states": [task.configure_optimizers()["optimizer"].state_dict()],
            "loops": {"fit_loop": {}}, "callbacks": {}, "lr_schedulers": []}
    torch.save(ckpt, path)
    return ckpt


def test_export_keeps_weights_and_hyper_parameters_and_drops_the_training_state(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "last.ckpt")
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "out/model.pt")
    out = torch.load(tmp_path / "out/model.pt", weights_only=True)
    assert set(out) == {"epoch", "global_step", "pytorch-lightning_version", "hparams_name", "hyper_parameters",
                        "state_dict"}
    assert out["hyper_parameters"] == ckpt["hyper_parameters"]
    assert out["state_dict"].keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(out["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    assert not list((tmp_path / "out").glob(".*tmp"))  # written atomically, no leftovers


def not_a_checkpoint(d: Path, kind: str) -> Path:
    if kind == "folder":
        (d / "folder").mkdir()
    elif kind == "json":
        (d / "json").write_text("{}")
    elif kind == "no-state-dict":
        torch.save({"weights": {}}, d / kind)
    elif kind == "no-config":
        torch.save({"state_dict": {}, "hyper_parameters": {}}, d / kind)
    return d / kind


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", "no such file or directory"),
    ("folder", "a directory but not a DeepSpeed checkpoint \\(no 'latest' file"),
    ("json", "not a checkpoint \\(not a file written by torch.save\\)"),
    ("no-state-dict", "not a Lightning checkpoint \\(no 'state_dict'\\)"),
    ("no-config", "not an ssm-train checkpoint \\(no hyper_parameters.config/spec\\)"),
])
def test_export_refuses_what_is_not_an_ssm_train_checkpoint(tmp_path, kind, message):
    path = not_a_checkpoint(tmp_path, kind)
    with pytest.raises(ExportError, match=f"{re.escape(str(path))}: {message}"):
        export_checkpoint(path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_export_refuses_weights_that_do_not_fit_the_model_of_the_config(tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "last.ckpt")
    del ckpt["state_dict"]["model.head.weight"]
    torch.save(ckpt, tmp_path / "broken.ckpt")
    assert main(["export", str(tmp_path / "broken.ckpt"), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert "ssm-train export: error:" in err and "do not fit the model of its own config" in err
    assert "model.head.weight" in err or "head.weight" in err


@pytest.mark.slow
def test_an_exported_checkpoint_validates_like_the_original(tmp_path, capsys):
    base = ["-c", str(ROOT / "configs/experiment/default.yaml"), f"runs_dir={tmp_path}", "name=e", *TINY]
    assert main(["fit", *base]) == 0
    last = tmp_path / "e/checkpoints/last.ckpt"
    assert main(["export", str(last), str(tmp_path / "e.pt")]) == 0
    assert re.search(r"exported .*last.ckpt \(step 3, \d+ model values\) to .*e.pt", capsys.readouterr().out)
    metrics = []
    for ckpt in (last, tmp_path / "e.pt"):
        assert main(["validate", *base, "--ckpt", str(ckpt)]) == 0
        metrics.append(capsys.readouterr().out)
    assert metrics[0] == metrics[1] and "val/rel_err=" in metrics[0]
