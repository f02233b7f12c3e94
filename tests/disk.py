"""Small filesystems for disk faults: a full or read-only run directory on another filesystem than
/tmp, as on a cluster (node-local /tmp, runs on shared storage)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

_mounted: list[Path] = []


def mount_tmpfs(path: Path, size_kib: int, read_only: bool = False) -> Path:
    """Mount a tmpfs of ``size_kib`` at ``path``; skip the test where mounting is not permitted
    (it needs root: CI and the developers' machines have it). Unmounted after the test."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    _mounted.append(path)
    return path


def fill_disk(folder: Path, leave_bytes: int = 0) -> None:
    """Fill ``folder``'s filesystem until ``leave_bytes`` or less are free."""
    with open(folder / "filler", "wb") as f:
        while (free := shutil.disk_usage(folder).free - leave_bytes) > 0:
            try:
                f.write(b"\0" * min(free, 1 << 16))
                f.flush()
            except OSError:
                break


def unmount_all() -> None:
    while _mounted:
        subprocess.run(["umount", "-l", str(_mounted.pop())], capture_output=True)
