"""Checkpoints: atomic on their own filesystem (a full disk keeps the previous one), found by resume
only when they read, DeepSpeed folders switched in whole, damage diagnosed (ssm_train/checkpoint.py)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from ssm_train import checkpoint, run
from ssm_train.atomic import atomic_write
from ssm_train.checkpoint import (AtomicCheckpointIO, CheckpointError, check_fits,
                                  checkpoint_mtime, newest_readable, switch_folder, unreadable)
from ssm_train.cli import main
from ssm_train.config import load_config
from ssm_train.errors import CheckpointWriteError
from tests.disk import fill_disk, mount_tmpfs
from tests.paths import ROOT

SMALL = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.seq_len=16", "data.lag=4",
         "data.batch_size=4", "data.val_batches=1", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
         "trainer.enable_progress_bar=false", "logger.mode=disabled", "trainer.accelerator=cpu",
         "trainer.devices=1", "checkpoint.every_n_steps=2", "trainer.max_steps=6"]


def config(runs_dir: Path, name: str, *extra: str):
    return load_config([ROOT / "configs/experiment/default.yaml"],
                       [f"runs_dir={runs_dir}", f"name={name}", *SMALL, *extra])


def cli_fit(runs_dir: Path, name: str, *extra: str) -> int:
    return main(["fit", "-c", str(ROOT / "configs/experiment/default.yaml"), f"runs_dir={runs_dir}",
                 f"name={name}", *SMALL, *extra])


# ---------------------------------------------------------------------------------- writing


def test_atomic_write_leaves_the_target_untouched_when_the_writer_fails(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"good")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"good"
    assert list(tmp_path.iterdir()) == [target]  # the temp file is gone too


def test_checkpoint_io_writes_beside_the_target_not_in_tmpdir(tmp_path, monkeypatch):
    import tempfile

    def no_tmpdir(*args, **kwargs):
        raise AssertionError("a checkpoint went through $TMPDIR")

    monkeypatch.setattr(tempfile, "mkstemp", no_tmpdir)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_tmpdir)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "sub" / "a.ckpt")
    assert torch.equal(torch.load(tmp_path / "sub/a.ckpt", weights_only=True)["state_dict"]["w"], torch.ones(2))


class FillDiskAt(L.Callback):
    """Fill the run directory's filesystem once training reaches ``step`` (after a checkpoint), and
    make later checkpoints 256 KiB larger, so that a new one cannot fit even in the space an
    overwritten old one frees (as when the optimizer state or a model grows)."""

    def __init__(self, folder: Path, step: int) -> None:
        self.folder, self.step = folder, step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            fill_disk(self.folder, leave_bytes=4096)

    def on_save_checkpoint(self, trainer, pl_module, ckpt: dict) -> None:
        if trainer.global_step > self.step:
            ckpt["padding"] = torch.zeros(64 << 10)


def _train_into_a_disk_that_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lightning_io: bool) -> Path:
    runs = mount_tmpfs(tmp_path / "shared", 4096)  # another filesystem than /tmp, as on a cluster
    if lightning_io:
        monkeypatch.setattr(run, "checkpoint_plugins", lambda cfg: [])
    cfg = config(runs, "full", "checkpoint.keep=0")
    with pytest.raises(Exception) as failure:
        run.fit(cfg, callbacks=[FillDiskAt(runs, 3)])
    last = runs / "full/checkpoints/last.ckpt"
    assert last.exists(), failure.value
    if not lightning_io:
        assert isinstance(failure.value, CheckpointWriteError), failure.value
        assert "No space left on device" in str(failure.value) and "intact" in str(failure.value)
    return last


def test_a_full_disk_across_filesystems_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    last = _train_into_a_disk_that_fills(tmp_path, monkeypatch, lightning_io=False)
    assert unreadable(last) is None
    assert torch.load(last, weights_only=True)["global_step"] == 2  # the save at step 4 failed, step 2's is whole
    assert not list(last.parent.glob(".*.tmp"))


def test_lightning_default_writer_destroys_the_previous_checkpoint_there(tmp_path, monkeypatch):
    """Why AtomicCheckpointIO exists: with Lightning's own writer (a temp file in /tmp, then a move that
    is a copy across filesystems) the same full disk leaves last.ckpt truncated. If this starts to fail,
    Lightning's writer has become safe; ours stays right."""
    last = _train_into_a_disk_that_fills(tmp_path, monkeypatch, lightning_io=True)
    assert unreadable(last) is not None


def test_switch_folder_replaces_a_deepspeed_folder_whole(tmp_path):
    target = tmp_path / "last.ckpt"
    target.mkdir()  # a folder from before: moved aside, then removed
    (target / "latest").write_text("old")
    for n in (1, 2):
        staging = tmp_path / ".last.ckpt.partial"
        (staging / "checkpoint").mkdir(parents=True)
        (staging / "latest").write_text(f"v{n}")
        switch_folder(staging, target)
        assert target.is_symlink() and (target / "latest").read_text() == f"v{n}"
        assert not staging.exists()
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name != "last.ckpt")
    assert hidden == [".last.ckpt.v2"]  # the old versions are gone


def test_deepspeed_strategy_writes_aside_and_switches(tmp_path, monkeypatch):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    seen = []

    def fake_save(self, ckpt, filepath, storage_options=None):  # what DeepSpeed writes: a folder
        seen.append(Path(filepath))
        (Path(filepath) / "checkpoint").mkdir(parents=True)
        torch.save({}, Path(filepath) / "checkpoint/mp_rank_00_model_states.pt")
        (Path(filepath) / "latest").write_text("checkpoint")

    monkeypatch.setattr(DeepSpeedStrategy, "save_checkpoint", fake_save)
    monkeypatch.setattr(DeepSpeedStrategy, "broadcast", lambda self, obj, src=0: obj)
    monkeypatch.setattr(DeepSpeedStrategy, "barrier", lambda self, name=None: None)
    monkeypatch.setattr(DeepSpeedStrategy, "is_global_zero", property(lambda self: True))
    strategy = checkpoint.atomic_deepspeed_strategy(config={"zero_optimization": {"stage": 2}})
    target = tmp_path / "last.ckpt"
    strategy.save_checkpoint({}, target)
    assert seen == [tmp_path / ".last.ckpt.partial"]  # never into the live folder
    assert unreadable(target) is None and checkpoint_mtime(target) is not None


# ---------------------------------------------------------------------------------- reading


def test_checkpoint_mtime_reads_files_and_deepspeed_folders(tmp_path):
    (tmp_path / "plain.ckpt").write_bytes(b"x")
    os.utime(tmp_path / "plain.ckpt", (100, 100))
    (tmp_path / "zero.ckpt/checkpoint").mkdir(parents=True)
    (tmp_path / "zero.ckpt/latest").write_text("checkpoint")
    os.utime(tmp_path / "zero.ckpt/latest", (200, 200))
    (tmp_path / "empty.ckpt").mkdir()
    assert checkpoint_mtime(tmp_path / "plain.ckpt") == 100
    assert checkpoint_mtime(tmp_path / "zero.ckpt") == 200
    assert checkpoint_mtime(tmp_path / "empty.ckpt") is None  # a folder without 'latest' is no checkpoint
    assert checkpoint_mtime(tmp_path / "missing.ckpt") is None


class Payload:
    """Not loadable with weights_only=True."""


def test_unreadable_says_what_is_wrong(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    data = good.read_bytes()
    cases = {"truncated": data[: len(data) - 100], "random": os.urandom(512), "empty": b""}
    for name, content in cases.items():
        (tmp_path / f"{name}.ckpt").write_bytes(content)
    torch.save({"state_dict": {}, "x": Payload()}, tmp_path / "unsafe.ckpt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "foreign.ckpt")
    (tmp_path / "folder.ckpt").mkdir()
    assert unreadable(good) is None
    expected = {"truncated": "truncated", "random": "not a checkpoint", "empty": "empty file",
                "unsafe": "refused unsafe content", "foreign": "not a Lightning checkpoint",
                "folder": "without a 'latest' file", "missing": "no such file"}
    for name, words in expected.items():
        reason = unreadable(tmp_path / f"{name}.ckpt")
        assert reason and words in reason, (name, reason)


def test_newest_readable_skips_damaged_ones_and_says_so(tmp_path):
    old, new = tmp_path / "old.ckpt", tmp_path / "new.ckpt"
    torch.save({"state_dict": {}}, old)
    new.write_bytes(b"PK\x03\x04 cut short")
    os.utime(old, (100, 100))
    said = []
    assert newest_readable([new, old, tmp_path / "none.ckpt"], said.append) == old
    assert said == [f"skipping checkpoint {new}: truncated: the archive's end is missing (a save cut short, "
                    "or a full disk)"]
    assert newest_readable([new], said.append) is None


def test_check_fits_names_the_mismatched_keys_and_shapes():
    model = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    check_fits("x.ckpt", dict(model), model)
    with pytest.raises(CheckpointError) as e:
        check_fits("x.ckpt", {"a": torch.zeros(3, 3), "b": torch.zeros(4), "d": torch.zeros(1)}, model)
    message = str(e.value)
    assert "x.ckpt: made for another model" in message
    assert "a: checkpoint (3, 3), model (2, 3)" in message and "missing keys: c" in message
    assert "unexpected keys: d" in message and "b:" not in message


# ----------------------------------------------------------------------------------- resume


def test_resume_auto_skips_a_damaged_last_checkpoint_for_the_newest_readable_one(tmp_path, capsys):
    assert cli_fit(tmp_path, "r", "trainer.max_steps=4") == 0
    last = tmp_path / "r/checkpoints/last.ckpt"
    best = sorted(last.parent.glob("best-*.ckpt"))
    assert best, list(last.parent.iterdir())
    last.write_bytes(last.read_bytes()[:1000])  # as a save that died half-way would leave it
    capsys.readouterr()
    assert cli_fit(tmp_path, "r", "trainer.max_steps=6") == 0
    out = capsys.readouterr().out
    assert f"skipping checkpoint {last}: truncated" in out
    assert f"resuming from {best[-1]}" in out
    assert "at step 6" in out.strip().splitlines()[-1]
    assert torch.load(last, weights_only=True)["global_step"] == 6  # and last.ckpt is whole again


def test_resume_auto_of_a_changed_model_is_a_clear_error(tmp_path, capsys):
    assert cli_fit(tmp_path, "m", "trainer.max_steps=2") == 0
    capsys.readouterr()
    assert cli_fit(tmp_path, "m", "trainer.max_steps=4", "model.d_model=16") == 2
    err = capsys.readouterr().err
    assert "last.ckpt: made for another model" in err and "checkpoint (8, 1), model (16, 1)" in err


# ---------------------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize("every", [1, 100])
def test_non_finite_loss_names_the_checkpoint_kept_or_says_there_is_none(tmp_path, capsys, every):
    # a learning rate this large overflows the weights at the first update: the loss is NaN at step 2
    status = cli_fit(tmp_path, "nan", "optim.lr=1e30", "optim.warmup_steps=0", "trainer.gradient_clip_val=0",
                     f"checkpoint.every_n_steps={every}", "trainer.val_check_interval=100")
    err = capsys.readouterr().err
    assert status == 1 and "training stopped: non-finite training loss" in err, err
    if every == 1:
        assert f"the last good checkpoint, {tmp_path / 'nan/checkpoints/last.ckpt'}, is kept" in err
    else:
        assert "no checkpoint was written before it" in err and "checkpoint.every_n_steps=100" in err
