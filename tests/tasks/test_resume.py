"""A run that crashes at step k and resumes ends with exactly the parameters of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from ssm_train.config import load_config
from ssm_train.run import fit
from tests.paths import ROOT

SMALL = ["model.d_model=16", "model.n_layers=2", "model.d_state=8", "model.dropout=0.2", "data.seq_len=24",
         "data.lag=4", "data.batch_size=4", "data.val_batches=1", "trainer.max_steps=10",
         "trainer.val_check_interval=5", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
         "logger.mode=disabled", "trainer.accelerator=cpu", "trainer.devices=1", "checkpoint.every_n_steps=4"]


class Crash(L.Callback):
    """Simulate a node failure: an exception in the middle of training at a given step."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError(f"simulated crash at step {self.at_step}")


def config(tmp_path: Path, name: str, *extra: str):
    return load_config([ROOT / "configs/experiment/default.yaml"], [f"runs_dir={tmp_path}", f"name={name}",
                                                                   *SMALL, *extra])


def final_state(tmp_path: Path, name: str) -> dict:
    return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_crash_and_resume_matches_uninterrupted_run(tmp_path, workers):
    w = f"data.num_workers={workers}"
    fit(config(tmp_path, "straight", w))
    with pytest.raises(RuntimeError, match="simulated crash at step 7"):
        fit(config(tmp_path, "crashed", w), callbacks=[Crash(7)])
    assert final_state(tmp_path, "crashed")["global_step"] == 4  # steps 5-7 were lost with the crash
    fit(config(tmp_path, "crashed", w))  # checkpoint.resume=auto
    a, b = final_state(tmp_path, "straight"), final_state(tmp_path, "crashed")
    assert a["global_step"] == b["global_step"] == 10
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_is_needed_for_equality(tmp_path):
    """Guard: the comparison above can fail — a fresh restart after the crash ends elsewhere."""
    fit(config(tmp_path, "straight"))
    with pytest.raises(RuntimeError):
        fit(config(tmp_path, "fresh"), callbacks=[Crash(7)])
    fit(config(tmp_path, "fresh", "checkpoint.resume=none", "trainer.max_steps=6"))
    a, b = final_state(tmp_path, "straight"), final_state(tmp_path, "fresh")
    assert not all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


CARRY = ["data.window_sampling=contiguous", "model.carry_state=true", "data.seq_len=32", "data.batch_size=2",
         "model.d_model=16", "model.d_state=8", "model.n_layers=2", "trainer.max_steps=10",
         "trainer.val_check_interval=5", "trainer.limit_val_batches=1", "checkpoint.every_n_steps=4",
         "trainer.enable_progress_bar=false", "logger.mode=disabled", "trainer.accelerator=cpu",
         "trainer.devices=1"]


def austen(tmp_path: Path, name: str, *extra: str):
    return load_config([ROOT / "configs/experiment/text_austen.yaml"],
                       [f"runs_dir={tmp_path}", f"name={name}", *CARRY, *extra])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lru", "selective"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_carried_state_matches_uninterrupted_run(tmp_path, workers, kind):
    """Truncated BPTT over Austen's contiguous streams: the carried states travel in the
    checkpoint, so the resumed run continues every row's stream from the state it had."""
    extra = (f"data.num_workers={workers}", f"model.kind={kind}", *(["model.init.name=mamba"] if kind == "selective" else []))
    fit(austen(tmp_path, "straight", *extra))
    with pytest.raises(RuntimeError, match="simulated crash at step 7"):
        fit(austen(tmp_path, "crashed", *extra), callbacks=[Crash(7)])
    saved = final_state(tmp_path, "crashed")
    assert saved["global_step"] == 4 and saved["carried_state"]["world_size"] == 1
    assert any(t.abs().sum() > 0 for t in _tensors(saved["carried_state"]["states"][0]))
    fit(austen(tmp_path, "crashed", *extra))
    a, b = final_state(tmp_path, "straight"), final_state(tmp_path, "crashed")
    assert a["global_step"] == b["global_step"] == 10
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for sa, sb in zip(_tensors(a["carried_state"]), _tensors(b["carried_state"])):
        assert torch.equal(sa, sb)


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensors(v)]
    return []


@pytest.mark.slow
def test_carried_state_must_travel_in_the_checkpoint(tmp_path, monkeypatch):
    """Guard: resuming without the carried states (each row restarting from zero) ends elsewhere."""
    from ssm_train.tasks.base import SequenceTask

    fit(austen(tmp_path, "straight"))
    with pytest.raises(RuntimeError, match="simulated crash at step 7"):
        fit(austen(tmp_path, "crashed"), callbacks=[Crash(7)])
    monkeypatch.setattr(SequenceTask, "on_load_checkpoint", lambda self, checkpoint: None)
    fit(austen(tmp_path, "crashed"))
    a, b = final_state(tmp_path, "straight"), final_state(tmp_path, "crashed")
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
