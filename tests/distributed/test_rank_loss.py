"""A DDP rank lost mid-step (kill -9, or stopped): the other rank exits soon, naming it; a rerun resumes.

Two CPU ranks (gloo) through the CLI. The rank to lose is killed by itself, by a callback this
file adds when it runs as the CLI's entry point (``python test_rank_loss.py fit ...``; Lightning
re-runs the same command line for rank 1): at step ``STEP``, after the forward pass and before the
gradient all-reduce, it sends itself SIGKILL (a kill -9 from outside, at a known step) or SIGSTOP
(a rank that hangs without closing its sockets). The survivor must exit with status 1 within a
bounded time and print ``rank R (host H, pid P) was lost at step S; rerun to resume from
<checkpoint> (step C)``; the rerun must resume from that checkpoint and end where an uninterrupted
run does.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import torch

STEP = 4  # the step the rank is lost in; last.ckpt is saved every 3 steps, so the rerun starts at 3
TWO = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.log_every_n_steps=1"]
ENTRY = [sys.executable, str(Path(__file__).resolve())]
PR_SET_CHILD_SUBREAPER = 36
EXIT_BOUND_S = 30.0  # measured: ~1.5 s after a kill, ~5 s + 10 s (the timeout, then the stopped rank is ended)


def lose(rank: int, how: str = "SIGKILL", step: int = STEP) -> dict[str, str]:
    return {"SSM_TEST_LOSE": f"{rank}:{step}:{how}"}


@contextmanager
def subreaper() -> Iterator[None]:
    """Orphans of this process's children become its children (Linux): rank 1 outlives rank zero,
    its parent, when rank zero is the one lost, and its exit status is read here with waitpid."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not sys.platform.startswith("linux") or libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("needs prctl(PR_SET_CHILD_SUBREAPER) (Linux)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def wait_pid(pid: int, timeout: float) -> int:
    """Exit status of an adopted orphan (as Popen.returncode: -N for signal N)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"pid {pid} still running after {timeout} s")


def ranks(run: Path) -> dict[int, int]:
    """rank -> pid, from the run's ranks.json."""
    return {r["rank"]: r["pid"] for r in json.loads((run / "ranks.json").read_text())}


def logged_steps(run: Path) -> list[int]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def lost_at(out: str, err: str) -> tuple[float, float]:
    """(time the rank was lost, time the test saw every rank gone) from the entry point's line."""
    m = re.search(r"SSM_TEST lost rank \d+ at ([0-9.]+)", out)
    assert m, f"the rank was never lost; stderr ends:\n{err[-3000:]}"
    return float(m.group(1)), time.time()


@pytest.fixture(scope="module")
def reference(runs) -> dict:
    return runs.get("reference", *TWO)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("lost", [1, 0], ids=["rank1-lost", "rank0-lost"])
def test_a_killed_rank_is_named_by_the_survivor_and_a_rerun_resumes(runs, reference, lost: int) -> None:
    name = f"kill{lost}"
    survivor = 1 - lost
    with subreaper():
        proc = runs.start(name, *TWO, entry=ENTRY, env=lose(lost))
        out, err = proc.communicate(timeout=180)  # EOF: every rank has exited (both write to the pipes)
        killed_at, gone_at = lost_at(out, err)
        pids = ranks(runs.dir / name)
        # rank zero's status from Popen; rank 1's from waitpid when it is the (adopted) survivor, else
        # rank zero (its parent) reaps it and says how it ended in the message.
        status = {0: proc.returncode, **({1: wait_pid(pids[1], timeout=60)} if lost == 0 else {})}
    host = socket.gethostname()
    assert status[survivor] == 1 and status.get(lost, -signal.SIGKILL) == -signal.SIGKILL, (status, err[-3000:])
    print(f"survivor exited {gone_at - killed_at:.2f} s after the kill")
    assert gone_at - killed_at < EXIT_BOUND_S
    message = (f"ssm-train fit: rank {lost} (host {host}, pid {pids[lost]}{', killed by SIGKILL' if lost else ''}) "
               f"was lost at step {STEP}; rerun to resume from {name}/checkpoints/last.ckpt (step 3)")
    assert message in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]  # the message instead of gloo's traceback
    # The rerun (the same command) resumes from that checkpoint and ends where an uninterrupted run does.
    again = runs.run(name, *TWO)
    assert f"resuming from {runs.dir / name}/checkpoints/last.ckpt" in again.stdout
    got = runs.ckpt(name)
    assert got["global_step"] == reference["global_step"] == 6
    for k, v in reference["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), k
    assert logged_steps(runs.dir / name) == list(range(6))  # each step once: rows up to 3 were flushed at the save


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_fsdp_rank_is_named_too(runs) -> None:
    """FSDP2 is launched the same way (ReportsLostRanks): rank 1 killed, rank zero names it."""
    fsdp = ["trainer.devices=2", "trainer.strategy=fsdp", "trainer.log_every_n_steps=1"]
    proc = runs.start("fsdp-kill1", *fsdp, entry=ENTRY, env=lose(1))
    out, err = proc.communicate(timeout=150)
    killed_at, gone_at = lost_at(out, err)
    pid = ranks(runs.dir / "fsdp-kill1")[1]
    assert proc.returncode == 1 and gone_at - killed_at < EXIT_BOUND_S, err[-3000:]
    assert (f"ssm-train fit: rank 1 (host {socket.gethostname()}, pid {pid}, killed by SIGKILL) was lost at "
            f"step {STEP}; rerun to resume from fsdp-kill1/checkpoints/last.ckpt (step 3)") in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_stopped_rank_times_out_the_collective_and_is_ended(runs) -> None:
    started = time.time()
    proc = runs.start("stopped", *TWO, entry=ENTRY, env={**lose(1, "SIGSTOP"),
                                                             "SSM_TRAIN_COLLECTIVE_TIMEOUT": "5"})
    out, err = proc.communicate(timeout=150)
    stopped_at, gone_at = lost_at(out, err)
    pid = ranks(runs.dir / "stopped")[1]
    print(f"rank 0 exited {gone_at - stopped_at:.2f} s after rank 1 stopped (run took {gone_at - started:.0f} s)")
    assert proc.returncode == 1, err[-3000:]
    assert 5 <= gone_at - stopped_at < EXIT_BOUND_S
    assert re.search(rf"ssm-train fit: a collective failed at step {STEP} \(.*Timed out.*\); rank 1 \(host "
                     rf"{re.escape(socket.gethostname())}, pid {pid}\) is stopped .*; rerun to resume from "
                     r"stopped/checkpoints/last\.ckpt \(step 3\)", err), err[-3000:]
    assert not Path(f"/proc/{pid}").exists(), "the stopped rank outlived the run"


def test_the_collective_timeout_comes_from_the_environment(monkeypatch) -> None:
    from ssm_train.config import ConfigError, load_config
    from ssm_train.distributed import build_strategy
    from ssm_train.faults import ReportingDDPStrategy

    cfg = load_config([Path(__file__).resolve().parents[2] / "configs/experiment/default.yaml"],
                      ["trainer.strategy=ddp", "trainer.accelerator=cpu"])
    monkeypatch.delenv("SSM_TRAIN_COLLECTIVE_TIMEOUT", raising=False)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, ReportingDDPStrategy) and strategy._timeout.total_seconds() == 600
    monkeypatch.setenv("SSM_TRAIN_COLLECTIVE_TIMEOUT", "42")
    assert build_strategy(cfg)._timeout.total_seconds() == 42
    monkeypatch.setenv("SSM_TRAIN_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="SSM_TRAIN_COLLECTIVE_TIMEOUT"):
        build_strategy(cfg)


def _join_late(rank: int, port: int, results) -> None:
    """Rank 1 joins 3 s after rank zero, longer than the 1 s collective timeout; then rank 1 is 4 s late
    to an all_reduce, which must time out on rank zero after about 1 s."""
    import torch.distributed as dist

    from ssm_train.faults import ReportingDDPStrategy

    strategy = ReportingDDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=1))
    time.sleep(3.0 * rank)
    strategy._join(lambda: dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                                    world_size=2, timeout=strategy._timeout))
    joined = strategy._timeout.total_seconds()
    time.sleep(4.0 * rank)
    started = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
        outcome = "completed"
    except RuntimeError as e:
        outcome = f"failed: {e}"
    results.put((rank, joined, outcome, time.monotonic() - started))


@pytest.mark.timeout(60)
def test_ranks_join_however_short_the_collective_timeout_and_collectives_then_keep_it() -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = ctx.Queue()
    procs = [ctx.Process(target=_join_late, args=(r, port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = {}
    for _ in procs:
        rank, joined, outcome, took = results.get(timeout=50)
        got[rank] = (joined, outcome, took)
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    assert got[0][0] == got[1][0] == 1.0, got  # the strategy's collective timeout is back after joining
    assert got[0][1].startswith("failed") and "timed out" in got[0][1].lower(), got
    assert got[0][2] < 3.5, got  # the collective's 1 s, not the rendezvous's 30 min


# ------------------------------------------------------------------ the CLI, losing a rank


def _cli_losing_a_rank() -> int:
    """``ssm-train`` with a callback that makes rank R send itself a signal mid-step S (SSM_TEST_LOSE=R:S:SIG)."""
    import lightning as L

    import ssm_train.run as run
    from ssm_train.cli import main

    rank, step, how = os.environ["SSM_TEST_LOSE"].split(":")

    class LoseAt(L.Callback):
        def on_before_backward(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_rank == int(rank) and trainer.global_step == int(step):
                print(f"SSM_TEST lost rank {rank} at {time.time():.3f}", flush=True)
                os.kill(os.getpid(), getattr(signal, how))

    fit = run.fit
    run.fit = lambda cfg, callbacks=(): fit(cfg, [*callbacks, LoseAt()])
    return main()


if __name__ == "__main__":
    raise SystemExit(_cli_losing_a_rank())
