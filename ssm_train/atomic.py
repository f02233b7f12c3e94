"""Atomic file writes: a reader sees the old file or the new one, never a part of either.

The temp file is written beside its target (so the final ``os.replace`` stays on one filesystem,
where it is atomic), flushed and fsynced; the folder is fsynced after the rename so that a crash
cannot bring the old entry back. Imports nothing heavy: the CLI's start-up uses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it and rename it over ``path``.

    The temp file is on the target's filesystem, so the rename is atomic there; on any failure it
    is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash right after must not bring the old entry back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)
