"""Checkpoints on disk: how they are written (atomically, beside their target), found and checked.

Everything ssm-train knows about the checkpoint *format* lives here:

- A checkpoint is a file written by ``torch.save`` (strategies auto, ddp, fsdp, hsdp: the full
  state, gathered on rank zero) or a DeepSpeed folder (``<path>/latest`` names the tag,
  ``<path>/<tag>/*_states.pt`` are the shards). Files are read with ``weights_only=True``.
- **Writes are atomic on the target's own filesystem.** Lightning's writer serialises into a temp
  file from ``tempfile.mkstemp()`` (``$TMPDIR``, usually node-local ``/tmp``) and ``shutil.move``s
  it; across filesystems that move is a copy that first truncates the target, so a save that hits
  a full disk destroys the previous good checkpoint. :class:`AtomicCheckpointIO` writes
  ``.<name>.<pid>.tmp`` beside the target, fsyncs it, ``os.replace``s it, then fsyncs the folder:
  a reader sees the old file or the new one, never a part. A DeepSpeed folder is written under a
  new name and switched in by replacing a symlink (:func:`switch_folder`), which is atomic too.
- **Resume never picks an unreadable checkpoint**: :func:`unreadable` says why a checkpoint cannot
  be read (cheaply: ``torch.load(mmap=True)`` parses the archive and the pickle without reading the
  tensors), and :func:`newest_readable` skips those with one line each.
- **Damaged or foreign checkpoints are a** :class:`CheckpointError` (a ConfigError: exit 2) naming
  the file and what is wrong: not a checkpoint, truncated, refused unsafe content, not ssm-train's,
  or made for another model (the mismatched keys and shapes, :func:`check_fits`).
"""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from ssm_train.atomic import atomic_write, fsync_dir
from ssm_train.errors import CheckpointWriteError, ConfigError

LATEST = "latest"  # the file of a DeepSpeed checkpoint folder that names its tag


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


# ------------------------------------------------------------------------------------ writing


class _RecordingFile:
    """A file whose write errors are kept: torch.save's C++ writer turns them into a RuntimeError
    ("unexpected pos ...") that no longer says the disk was full."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_file(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically; a failed write raises CheckpointWriteError."""
    import torch

    path = Path(path)
    recording: list[_RecordingFile] = []

    def write(f: Any) -> None:
        recording.append(_RecordingFile(f))
        torch.save(obj, recording[0])

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as e:
        raise CheckpointWriteError(_write_failure(path, e)) from e
    except RuntimeError as e:
        if recording and recording[0].error is not None:
            raise CheckpointWriteError(_write_failure(path, recording[0].error)) from e
        raise


def _write_failure(path: Path, e: OSError) -> str:
    kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was there before"
    return f"cannot write checkpoint {path}: {e.strerror or e} ({kept})"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, saving through :func:`save_file` (temp file beside the target)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        save_file(checkpoint, path)


def switch_folder(staging: Path, target: Path) -> None:
    """Make ``target`` name the complete folder ``staging``, atomically.

    ``target`` becomes a symlink to ``.<name>.v<n>``; the symlink is replaced by ``os.replace``, so
    ``target`` names the old complete folder or the new one at every instant. A real folder left at
    ``target`` (a checkpoint from before this scheme) is moved aside first and removed afterwards.
    """
    versions = [int(p.name.rsplit(".v", 1)[1]) for p in target.parent.glob(f".{target.name}.v*")
                if p.name.rsplit(".v", 1)[1].isdigit()]
    final = target.with_name(f".{target.name}.v{max(versions, default=0) + 1}")
    os.replace(staging, final)
    old = target.resolve() if target.is_symlink() else None
    if target.exists() and not target.is_symlink():  # legacy real folder
        aside = target.with_name(f".{target.name}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        old = aside
    link = target.with_name(f".{target.name}.link.{os.getpid()}")
    link.unlink(missing_ok=True)
    link.symlink_to(final.name)  # relative: the run directory may be moved or mounted elsewhere
    os.replace(link, target)
    fsync_dir(target.parent)
    if old is not None and old != final.resolve():
        shutil.rmtree(old, ignore_errors=True)


def atomic_deepspeed_strategy(**kwargs: Any):
    """Lightning's DeepSpeedStrategy whose checkpoint folders are written aside and switched in."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
        def save_checkpoint(self, checkpoint: dict, filepath: str | Path, storage_options: Any = None) -> None:
            target = Path(self.broadcast(str(filepath)))
            staging = target.with_name(f".{target.name}.partial")
            if self.is_global_zero:
                shutil.rmtree(staging, ignore_errors=True)  # a save that died half-way
            self.barrier("checkpoint_staging")
            super().save_checkpoint(checkpoint, staging, storage_options)  # every rank writes its shards
            self.barrier("checkpoint_written")
            if self.is_global_zero:
                switch_folder(staging, target)
            self.barrier("checkpoint_switched")

    return AtomicDeepSpeedStrategy(**kwargs)


# ------------------------------------------------------------------------------------ reading


def checkpoint_mtime(path: str | Path) -> float | None:
    """When the checkpoint at ``path`` was last written; None if there is none.

    A file, or a DeepSpeed folder whose ``latest`` file every save rewrites (the folder's own mtime
    changes only when an entry is added).
    """
    path = Path(path)
    if path.is_file():
        return path.stat().st_mtime
    if (path / LATEST).is_file():
        return (path / LATEST).stat().st_mtime
    return None


def unreadable(path: str | Path) -> str | None:
    """None if ``path`` reads as a checkpoint, else what is wrong (a short phrase).

    A file is parsed with ``torch.load(weights_only=True, mmap=True)``: the archive's directory and
    the pickle are read, the tensors are mapped but not read, so this is cheap for large files.
    """
    path = Path(path)
    if path.is_dir():
        return _unreadable_folder(path)
    return _read(path, mmap=True)[1]


def _read(path: Path, mmap: bool) -> tuple[dict | None, str | None]:
    """(the checkpoint, None) or (None, what is wrong): one parse, the cheap checks first."""
    if not path.is_file():
        return None, "no such file"
    if path.stat().st_size == 0:
        return None, "an empty file (a save that never finished?)"
    if not zipfile.is_zipfile(path):
        return None, _not_zip(path)
    try:
        state = _load(path, mmap=mmap)
    except Exception as e:  # noqa: BLE001  (every way torch.load fails is a reason to refuse it)
        return None, _load_failure(e)
    if not isinstance(state, dict) or "state_dict" not in state:
        return None, "not a Lightning checkpoint (no 'state_dict')"
    return state, None


def _not_zip(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # a zip whose end (the central directory) is missing
        return "truncated: the archive's end is missing (a save cut short, or a full disk)"
    return "not a checkpoint (not a file written by torch.save)"


def _load_failure(e: Exception) -> str:
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "weights_only" in text.lower():
        first = next((line.strip() for line in text.splitlines() if "Unsupported" in line or "GLOBAL" in line),
                     text.splitlines()[0])
        return f"refused unsafe content (weights_only=True loads tensors and plain types only): {first}"
    if "central directory" in text or "zip archive" in text or "EOF" in text or "truncated" in text.lower():
        return f"truncated or damaged: {text.splitlines()[0]}"
    return f"cannot be read ({type(e).__name__}: {text.splitlines()[0] if text else ''})"


def _unreadable_folder(path: Path) -> str | None:
    latest = path / LATEST
    if not latest.is_file():
        return f"a folder without a '{LATEST}' file (not a DeepSpeed checkpoint, or an unfinished one)"
    tag = latest.read_text().strip()
    if not list((path / tag).glob("*model_states.pt")):
        return f"DeepSpeed folder whose tag '{tag}' has no *model_states.pt (an unfinished save?)"
    return None


def _load(path: Path, mmap: bool = False) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load(path: str | Path, mmap: bool = False) -> dict:
    """A checkpoint file as a dict (safely loaded), or CheckpointError saying what is wrong.

    ``mmap=True`` maps the tensors instead of reading them (enough to check keys and shapes)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder (a DeepSpeed checkpoint?); give a checkpoint file, "
                              f"or consolidate it first with 'ssm-train export {path} OUT'")
    state, reason = _read(path, mmap=mmap)
    if reason:
        raise CheckpointError(f"{path}: {reason}")
    return state


def hyper_parameters(state: Mapping, path: str | Path) -> dict:
    """The ``{config, spec}`` an ssm-train checkpoint carries, or CheckpointError."""
    hp = state.get("hyper_parameters") or {}
    if "config" not in hp or "spec" not in hp:
        raise CheckpointError(f"{path}: not an ssm-train checkpoint (no hyper_parameters.config/spec)")
    return hp


def check_fits(path: str | Path, weights: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """CheckpointError unless ``weights`` has exactly ``expected``'s keys and shapes.

    Names up to five missing, unexpected and mis-shaped keys, so that "made for another model"
    says which part differs (d_model, n_layers, a vocabulary, another model kind).
    """
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(expected[k].shape)}"
              for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if not (missing or extra or shapes):
        return
    parts = [f"{label} {_few(items)}" for label, items in
             (("shape mismatches:", shapes), ("missing keys:", missing), ("unexpected keys:", extra)) if items]
    raise CheckpointError(f"{path}: made for another model (its config differs from this run's): "
                          + "; ".join(parts))


def _few(items: list[str], n: int = 5) -> str:
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def newest_readable(paths: Iterable[Path], say: Callable[[str], None] = print) -> Path | None:
    """The newest (by :func:`checkpoint_mtime`) of ``paths`` that reads; one line per one skipped."""
    found = sorted(((t, p) for p in paths if (t := checkpoint_mtime(p)) is not None), reverse=True)
    for _, path in found:
        reason = unreadable(path)
        if reason is None:
            return path
        say(f"skipping checkpoint {path}: {reason}")
    return None


def newest_resumable(run_dir: Path, checkpoint_dirs: Iterable[Path], say: Callable[[str], None] = print) -> Path | None:
    """What ``checkpoint.resume=auto`` resumes from: the newest readable of last.ckpt and SLURM's
    hpc_ckpt_*, else of the best-* checkpoints (saved at validation, a step that may be older)."""
    checkpoint_dirs = list(checkpoint_dirs)
    latest = [*(d / "last.ckpt" for d in checkpoint_dirs), *Path(run_dir).glob("hpc_ckpt_*.ckpt")]
    best = [p for d in checkpoint_dirs for p in d.glob("best-*.ckpt")]
    return newest_readable(latest, say) or newest_readable(best, say)
