"""Checkpoints are written atomically and hold only what ``torch.load(weights_only=True)`` accepts."""

from __future__ import annotations

import torch

from ssm_train.cli import main
from ssm_train.callbacks import plot_spectra

TINY = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.seq_len=16", "data.lag=4",
        "data.batch_size=4", "data.val_batches=1", "trainer.limit_val_batches=1", "trainer.val_check_interval=3",
        "checkpoint.every_n_steps=3", "trainer.enable_progress_bar=false", "logger.mode=disabled"]


def test_kill_mid_write_never_corrupts_last_ckpt(tmp_path, monkeypatch):
    args = ["fit", f"runs_dir={tmp_path}", "name=atomic", *TINY]
    assert main([*args, "trainer.max_steps=3"]) == 0
    last = tmp_path / "atomic/checkpoints/last.ckpt"
    before = last.read_bytes()

    from ssm_train import checkpoint

    real_write = checkpoint._RecordingFile.write

    def dying_write(self, data):  # the process "dies" half-way through writing the next checkpoint
        real_write(self, bytes(data)[: len(data) // 2])
        raise OSError("killed mid-write")

    monkeypatch.setattr(checkpoint._RecordingFile, "write", dying_write)
    assert main([*args, "trainer.max_steps=6"]) == 1  # "training stopped: cannot write checkpoint ..."
    monkeypatch.undo()
    assert last.read_bytes() == before  # the old file is untouched, not half-overwritten
    assert torch.load(last, weights_only=True)["global_step"] == 3
    assert not [p for p in last.parent.iterdir() if p.name not in ("last.ckpt",) and not p.name.startswith("best")]


def test_spectrum_plot_is_a_png_per_call(tmp_path):
    spectra = {"a": torch.polar(torch.rand(16), torch.rand(16) * 6.28), "b": torch.rand(8).to(torch.complex64)}
    path = plot_spectra(spectra, tmp_path / "plots/s.png", "t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
