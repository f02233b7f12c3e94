"""A lost DDP rank: the survivors say which rank was lost, where, at which step, and how to resume.

When one rank dies (kill -9, the OOM killer, a crashed node), the others learn of it from their
next collective: gloo raises ``Connection reset by peer`` at once (the kernel closes a dead
process's sockets), NCCL likewise or at its watchdog's timeout. That traceback names an address,
not a rank, and says nothing about the run. Here:

- :class:`FaultWatch` (a callback) has every rank gather each rank's (host, pid) once the process
  group is up (rank zero also writes them to ``<run dir>/ranks.json`` for whoever looks later),
  and notes the step being trained.
- :func:`lost_rank_exit`, called by the CLI on an exception, looks which peers on this host are
  gone (their pid no longer runs) and prints
  ``rank R (host H, pid P) was lost at step S; rerun to resume from <checkpoint>``; exit status 1.
  Peers on other hosts cannot be checked from here; they are listed as such.
- :func:`collective_timeout`: collectives fail after ``SSM_TRAIN_COLLECTIVE_TIMEOUT`` seconds
  (default 600, NCCL's default; gloo's own is 1800), so that a peer that hangs without closing its
  sockets (stopped, lost network) does not stall the others for half an hour. Joining the process
  group is not a collective: ranks start seconds to minutes apart (rank zero launches the others,
  which import everything again), so the rendezvous waits ``RENDEZVOUS_TIMEOUT`` (30 min) however
  short the collective timeout is.
- :class:`ReportingDDPStrategy`: Lightning's launcher of ``trainer.devices=N`` (rank zero starts
  ranks 1..N-1) also starts a thread that, within 5 s of a rank exiting with an error, SIGKILLs
  rank zero too, so rank zero could die silently before printing anything. Its thread here
  only notes how a rank ended; rank zero reports and ends its other ranks itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.fabric.strategies.launchers.subprocess_script import _set_num_threads_if_needed
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from ssm_train.errors import ConfigError

if TYPE_CHECKING:
    import lightning as L

TIMEOUT_ENV = "SSM_TRAIN_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
RENDEZVOUS_TIMEOUT = timedelta(minutes=30)  # gloo's default; a rank that never joins fails after this
RANKS_FILE = "ranks.json"
GONE_WAIT_S = 2.0  # a killed peer's sockets close a moment before its pid stops running
CHILD_EXIT_WAIT_S = 10.0  # ranks started here get this long to report and exit before they are killed
# Words of the errors a collective raises when a peer is gone or silent (gloo, NCCL, the store).
COLLECTIVE_ERROR_WORDS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out")


@dataclass
class Peer:
    rank: int
    host: str
    pid: int

    def __str__(self) -> str:
        return self.named()

    def named(self, note: str = "") -> str:
        return f"rank {self.rank} (host {self.host}, pid {self.pid}{note})"


@dataclass
class Watch:
    """What this process knows about its run, for the message when a collective fails."""

    rank: int = 0
    peers: list[Peer] = field(default_factory=list)
    step: int | None = None
    validating: bool = False
    run_dir: Path | None = None
    checkpoint_dirs: list[Path] = field(default_factory=list)
    children: dict[int, subprocess.Popen] = field(default_factory=dict)  # rank -> ranks started here


WATCH = Watch()


def collective_timeout() -> timedelta:
    """``$SSM_TRAIN_COLLECTIVE_TIMEOUT`` seconds (default 600): the longest one collective may wait.

    It must exceed the longest time one rank can spend away from the others between two
    collectives (rank zero writing a large checkpoint to a slow filesystem, a first-use kernel
    build); 600 s is what NCCL runs have always had.
    """
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"${TIMEOUT_ENV}={raw!r}: must be a positive number of seconds")
    return timedelta(seconds=seconds)


# ------------------------------------------------------------------------------ registration


class FaultWatch(Callback):
    """Gathers every rank's (host, pid) at setup and notes the step in progress, for :func:`lost_rank_exit`.

    It also flushes the loggers whenever a checkpoint is saved: rank zero buffers the CSV rows
    (Lightning writes them every 100 steps), and a kill -9 of rank zero would lose the rows before
    the checkpoint that the rerun resumes from, which it never logs again.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        WATCH.rank = trainer.global_rank
        WATCH.run_dir = Path(trainer.default_root_dir)
        WATCH.checkpoint_dirs = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if cb.dirpath]
        if trainer.world_size > 1:
            WATCH.peers = gather_peers(trainer)
            if trainer.is_global_zero:
                write_ranks(WATCH.run_dir / RANKS_FILE, WATCH.peers)

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        WATCH.step, WATCH.validating = trainer.global_step, False

    def on_validation_start(self, trainer: L.Trainer, *args: object) -> None:
        WATCH.step, WATCH.validating = trainer.global_step, True

    def on_validation_end(self, trainer: L.Trainer, *args: object) -> None:
        WATCH.validating = False

    def on_save_checkpoint(self, trainer: L.Trainer, *args: object) -> None:
        for logger in trainer.loggers:
            logger.save()


def gather_peers(trainer: L.Trainer) -> list[Peer]:
    """Every rank's (host, pid), in rank order (one all-gather, at setup, where all ranks are)."""
    import torch.distributed as dist

    mine = (socket.gethostname(), os.getpid())
    everyone: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(everyone, mine)
    return [Peer(rank, host, pid) for rank, (host, pid) in enumerate(everyone)]


def write_ranks(path: Path, peers: Sequence[Peer]) -> None:
    from ssm_train.atomic import atomic_write_text

    try:
        atomic_write_text(path, json.dumps([vars(p) for p in peers], indent=1) + "\n")
    except OSError as e:  # only a convenience for people and tests: training goes on without it
        print(f"note: cannot write {path}: {e}", file=sys.stderr)


# ------------------------------------------------------------------------------- the report


def lost_rank_exit(error: BaseException, command: str) -> int | None:
    """After a failed command: print which rank was lost and how to resume, and return 1.

    None (re-raise the error) if this was no multi-rank run, or if no peer is gone and the error
    does not come from a collective. Ranks started by this process (rank zero of
    ``trainer.devices=N``) that have not exited within a few seconds are killed: a peer that hangs
    would otherwise outlive the run.
    """
    if len(WATCH.peers) < 2:
        return None
    others = [p for p in WATCH.peers if p.rank != WATCH.rank]
    collective = is_collective_error(error)
    lost = wait_for_lost(others, GONE_WAIT_S if collective else 0.0)
    if not lost and not collective:
        return None
    if not lost:  # the cause is less clear: keep the collective's own traceback above the summary
        traceback.print_exception(error, file=sys.stderr)
    print(f"ssm-train {command}: {describe(lost, others, error)}", file=sys.stderr, flush=True)
    end_children(CHILD_EXIT_WAIT_S)
    return 1


def is_collective_error(error: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(w in text for w in COLLECTIVE_ERROR_WORDS)


def describe(lost: Sequence[Peer], others: Sequence[Peer], error: BaseException) -> str:
    """``rank R (host H, pid P) was lost at step S; rerun to resume from <checkpoint>``, or, with
    no peer found gone, what is known of each peer and the collective's own first line."""
    where = f"at step {WATCH.step}" if WATCH.step is not None else "before training started"
    if WATCH.validating:
        where += " (in validation)"
    resume = resume_hint()
    if lost:
        names = ", ".join(p.named(exit_note(p)) for p in lost)
        return f"{names} {'was' if len(lost) == 1 else 'were'} lost {where}; {resume}"
    first_line = re.sub(r"^\[[^\]]*\] ", "", (str(error).strip().splitlines() or [type(error).__name__])[0])[:300]
    states = "; ".join(f"{p} {peer_state(p)}" for p in others)
    return f"a collective failed {where} ({first_line}); {states}; {resume}"


def exit_note(peer: Peer) -> str:
    """``, killed by SIGKILL`` / ``, exit status 3`` for a rank started here, else nothing."""
    proc = WATCH.children.get(peer.rank)
    code = proc.poll() if proc else None
    if code is None:
        return ""
    if code < 0:
        try:
            return f", killed by {signal.Signals(-code).name}"
        except ValueError:
            return f", killed by signal {-code}"
    return f", exit status {code}"


def resume_hint() -> str:
    """``rerun to resume from <newest readable checkpoint> (step N)``, as checkpoint.resume=auto would."""
    from ssm_train import checkpoint

    if WATCH.run_dir is None:
        return "rerun to start again"
    found = checkpoint.newest_resumable(WATCH.run_dir, WATCH.checkpoint_dirs, say=lambda _: None)
    if found is None:
        return "no checkpoint yet: rerun to start again"
    step = ""
    try:
        step = f" (step {checkpoint.load(found, mmap=True)['global_step']})"
    except Exception:  # noqa: BLE001  (the step is a courtesy; the path is what matters)
        pass
    return f"rerun to resume from {relative(found)}{step}"


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------ peer states


def wait_for_lost(peers: Sequence[Peer], within: float) -> list[Peer]:
    """The peers on this host that no longer run, waiting up to ``within`` s for the first one."""
    deadline = time.monotonic() + within
    while True:
        lost = [p for p in peers if peer_state(p) == "is gone"]
        local = [p for p in peers if p.host == socket.gethostname()]
        if lost or not local or time.monotonic() >= deadline:
            return lost
        time.sleep(0.1)


def peer_state(peer: Peer) -> str:
    """``is gone``, ``is stopped``, ``is running`` (on this host), or ``is on another host``."""
    if peer.host != socket.gethostname():
        return "is on another host (not checked from here)"
    proc = WATCH.children.get(peer.rank)
    if proc is not None and proc.pid == peer.pid and proc.poll() is not None:
        return "is gone"
    state = process_state(peer.pid)
    if state is None or state in "ZXx":
        return "is gone"
    return "is stopped (SIGSTOP? a debugger?)" if state in "Tt" else "is running (hung?)"


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat`` (R, S, D, T, Z, ...), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _state_by_signal(pid)
    return stat.rsplit(")", 1)[-1].split()[0]  # the field after "(comm)"; comm may hold spaces


def _state_by_signal(pid: int) -> str | None:
    """Without /proc (macOS): signal 0 says whether the pid exists ("R": it does, state unknown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "R"


def end_children(within: float) -> None:
    """Ranks started by this process get ``within`` s to report and exit; those still there are killed
    (a stopped one at once: it cannot report)."""
    deadline = time.monotonic() + within
    for proc in WATCH.children.values():
        if proc.poll() is None and (process_state(proc.pid) or "") in ("T", "t"):
            proc.kill()
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------- the launcher's observer


class ReportsLostRanks:
    """Mixin for a strategy that Lightning's subprocess launcher starts (``trainer.devices=N``): its
    observer thread leaves the reporting to the ranks (see the module doc). DDP and FSDP2 use it."""

    _timeout: timedelta | None

    def _configure_launcher(self) -> None:
        super()._configure_launcher()  # type: ignore[misc]
        if type(self._launcher) is _SubprocessScriptLauncher:
            self._launcher = ReportingLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def setup_distributed(self) -> None:  # DDPStrategy's
        self._join(super().setup_distributed)  # type: ignore[misc]

    def _setup_distributed(self) -> None:  # ModelParallelStrategy's
        self._join(super()._setup_distributed)  # type: ignore[misc]

    def _join(self, init: Callable[[], None]) -> None:
        """Joins the process group with :data:`RENDEZVOUS_TIMEOUT`, then sets the collective timeout on it."""
        import torch.distributed as dist

        collective = self._timeout or collective_timeout()
        self._timeout = max(collective, RENDEZVOUS_TIMEOUT)
        try:
            init()
        finally:
            self._timeout = collective
        dist.distributed_c10d._set_pg_timeout(collective)  # private, but the one way since torch 2.2


class ReportingDDPStrategy(ReportsLostRanks, DDPStrategy):
    """DDP whose lost ranks are reported by name."""


class ReportingLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher (rank zero re-runs the command line for ranks 1..N-1), observed by
    :class:`ChildObserver` instead of Lightning's thread that SIGKILLs rank zero."""

    def launch(self, function: Callable, *args: Any, trainer: L.Trainer | None = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            WATCH.children = {rank: proc for rank, proc in enumerate(self.procs, start=1)}
            ChildObserver(self.procs, grace_s=collective_timeout().total_seconds() + 60).start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)


class ChildObserver(threading.Thread):
    """The last resort when a started rank failed and rank zero never noticed (it hangs outside any
    collective): after ``grace_s``, rank zero reports and ends every rank, as Lightning's would at once.

    Rank zero normally notices within a step (its next collective fails) and exits first; this
    daemon thread ends with it.
    """

    def __init__(self, procs: Sequence[subprocess.Popen], grace_s: float, period_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="ssm-train-child-observer")
        self.procs, self.grace_s, self.period_s = list(procs), grace_s, period_s

    def run(self) -> None:
        failed_at = None
        while failed_at is None or time.monotonic() - failed_at < self.grace_s:
            time.sleep(self.period_s)
            codes = [p.poll() for p in self.procs]
            if all(c == 0 for c in codes):
                return
            if failed_at is None and any(c for c in codes):
                failed_at = time.monotonic()
        lost = [p for p in WATCH.peers if p.rank != WATCH.rank and peer_state(p) == "is gone"]
        others = [p for p in WATCH.peers if p.rank != WATCH.rank]
        print(f"ssm-train: {describe(lost, others, RuntimeError('no collective noticed it'))} "
              f"(rank {WATCH.rank} hung for {self.grace_s:.0f} s after that; ending every rank)",
              file=sys.stderr, flush=True)
        for p in self.procs:
            p.kill()
        os.kill(os.getpid(), signal.SIGKILL)
