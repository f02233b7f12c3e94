"""One run per run directory: ``fit`` holds ``<run dir>/.lock`` while it trains.

Two runs with one name would otherwise mix silently (the second resumes the first one's
in-progress checkpoint under its own seed and overwrites its final one). The lock is an ``flock``
on that file, taken by rank zero only (the other ranks of a run share its directory):

- **A dead owner cannot leave it stale**: the kernel drops an flock when its holder dies, kill -9
  included; the file itself stays and only says who held it last.
- **Across nodes**: on NFS, Linux maps flock onto the server's byte-range locks, so a run on
  another node of a shared filesystem sees it; the server drops a dead node's locks when its
  lease runs out (about 90 s on NFSv4).
- **The same SLURM job requeued** may find its previous incarnation's lock still held for that
  long (a node lost, not yet expired): it waits up to ``SSM_TRAIN_LOCK_WAIT`` seconds (default 180)
  for it, then goes on with a warning, since SLURM runs one incarnation of a job at a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ssm_train.errors import ConfigError

LOCK_NAME = ".lock"


class RunDirInUse(ConfigError):
    """Another live run holds this run directory."""


def slurm_job() -> str | None:
    """This process's SLURM job as ``scontrol`` names it (an array task by its array id)."""
    if "SLURM_ARRAY_JOB_ID" in os.environ and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _describe(owner: dict) -> str:
    job = f", SLURM job {owner['slurm_job']}" if owner.get("slurm_job") else ""
    return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{job}, since {owner.get('started', '?')}")


def _read_owner(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def hold_run_dir(run_dir: Path, wait_same_job: float | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; RunDirInUse if another live run holds it.

    Rank zero only: call it where only rank zero runs, or guard the call.
    """
    if wait_same_job is None:
        wait_same_job = float(os.environ.get("SSM_TRAIN_LOCK_WAIT", "180"))
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        locked = _try_lock(fd)
        if not locked:
            owner = _read_owner(fd)
            mine = slurm_job()
            if not (mine and owner.get("slurm_job") == mine):
                raise RunDirInUse(
                    f"run directory {run_dir} is in use by another run ({_describe(owner)}); "
                    f"give this run another name=..., or wait for that one to end")
            locked = _wait(fd, wait_same_job, run_dir, owner)
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_owner()) + "\n").encode(), 0)
            os.fsync(fd)
        yield
    finally:
        os.close(fd)  # releases the flock


def _wait(fd: int, seconds: float, run_dir: Path, owner: dict) -> bool:
    """Requeued SLURM job: wait for the previous incarnation's lock; False if it never came free."""
    print(f"run directory {run_dir}: still locked by this SLURM job's previous run ({_describe(owner)}); "
          f"waiting up to {seconds:.0f} s for it", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _try_lock(fd):
            return True
        time.sleep(1.0)
    print(f"run directory {run_dir}: lock not released after {seconds:.0f} s; going on, since SLURM runs "
          "one incarnation of a job at a time", flush=True)
    return False
