"""The local one-node SLURM cluster as a pytest fixture, and helpers to drive jobs on it.

`slurm_cluster` (session) starts `slurm/local-cluster.sh` (skipping when not root or when SLURM
cannot be installed) and stops it at the end, unless it was already running, or
SSM_SLURM_KEEP=1. Tests submit from their own directory (`slurm_workdir`, with `logs/`), e.g.

    job = slurm_cluster.sbatch(["--ntasks-per-node=2", TRAIN_SH, "c.yaml"], cwd=d, env=env)
    assert job.returncode == 0, job.log()

or without waiting: `job = slurm_cluster.sbatch(..., wait=False)`, then `slurm_cluster.wait_for_log`,
`slurm_cluster.signal(job, "USR1")` or `slurm_cluster.requeue(job)`, `slurm_cluster.wait_until_done(job)`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = REPO / "slurm" / "local-cluster.sh"
TRAIN_SH = REPO / "slurm" / "train.sh"
STUB_CLI = Path(__file__).resolve().parent / "stub_cli.py"
EX_UNAVAILABLE = 69  # local-cluster.sh: SLURM absent and not installable here
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


def parse_scontrol_records(text: str) -> list[dict[str, str]]:
    """`scontrol -o show job` prints one record per line of `Key=Value` pairs; values may hold spaces."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = re.split(r"\s+(?=[A-Za-z][A-Za-z0-9_:/]*=)", line.strip())
        records.append(dict(p.split("=", 1) for p in parts if "=" in p))
    return records


@dataclass
class Job:
    """A submitted job: its id, where it was submitted from, and (after --wait) sbatch's status."""

    id: str
    cwd: Path
    cluster: SlurmCluster
    returncode: int | None = None
    sbatch_output: str = ""
    records: list[dict[str, str]] = field(default_factory=list)

    def tasks(self) -> list[dict[str, str]]:
        """`scontrol show job` records: one, or one per array task (ordered by task id)."""
        recs = self.cluster.show_job(self.id)
        # a still-pending rest of an array is one record with a range ("0-2", "1-2"): sort by its first id
        return sorted(recs, key=lambda r: int(re.match(r"\d*", r.get("ArrayTaskId", "")).group() or 0))

    def log_paths(self) -> list[Path]:
        return [Path(r["StdOut"]) for r in self.tasks()]

    def log(self) -> str:
        """The job's log(s), concatenated (array tasks in task order)."""
        return "\n".join(p.read_text() if p.is_file() else f"<no log {p}>" for p in self.log_paths())


class SlurmCluster:
    """Submit, watch and signal jobs on the local cluster (all calls use its SLURM_CONF)."""

    def __init__(self, slurm_conf: str) -> None:
        self.slurm_conf = slurm_conf

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for sbatch: ours without stray SLURM_* job variables, plus `extra`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        env.pop("WANDB_SERVICE", None)  # set by this process's own W&B runs; train.sh unsets it as well
        env["SLURM_CONF"] = self.slurm_conf
        env.update(extra or {})
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env(), capture_output=True, text=True,
                              check=check, timeout=timeout)

    def sbatch(self, args: Sequence[str | Path], *, cwd: Path, env: Mapping[str, str] | None = None,
               wait: bool = True, sbatch_wait: bool = False, timeout: float = 180) -> Job:
        """Submits `sbatch args` from `cwd`; with `wait`, returns after every task has ended.

        `returncode` is then the job's exit status: sbatch's own with `sbatch_wait` (`sbatch --wait`,
        which polls at 2, 4, 8, ... s), else read from `scontrol show job` by polling at 0.2 s
        (the same status, seconds sooner for jobs that are requeued).
        """
        cmd = ["sbatch", "--parsable", *(["--wait"] if sbatch_wait else []), *map(str, args)]
        proc = subprocess.Popen(cmd, cwd=cwd, env=self.env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # --parsable: "<id>[;cluster]" as soon as it is submitted
        m = re.match(r"(\d+)", first.strip())
        if not m:
            rest = proc.communicate(timeout=10)[0]
            raise AssertionError(f"sbatch failed: {shlex.join(cmd)}\n{first}{rest}")
        job = Job(id=m.group(1), cwd=cwd, cluster=self)
        try:
            job.sbatch_output = first + proc.communicate(timeout=timeout if sbatch_wait else 30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            self.run("scancel", job.id, check=False)
            raise AssertionError(f"job {job.id} still running after {timeout} s; cancelled.\n{job.log()}")
        if sbatch_wait:
            job.returncode = proc.returncode
        elif wait:
            self.wait_until_done(job, timeout)
            job.returncode = self.exit_status(job)
        return job

    def show_job(self, job_id: str) -> list[dict[str, str]]:
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return parse_scontrol_records(out.stdout)

    def states(self, job: Job) -> list[str]:
        return [r.get("JobState", "?") for r in job.tasks()]

    def wait_until(self, what: str, predicate, timeout: float, job: Job | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                detail = f"\nstates {self.states(job)}\n{job.log()}" if job else ""
                raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
            time.sleep(0.2)

    def wait_until_running(self, job: Job, timeout: float = 60) -> None:
        self.wait_until(f"job {job.id} to run", lambda: self.states(job) and
                        all(s == "RUNNING" for s in self.states(job)), timeout, job)

    def wait_until_done(self, job: Job, timeout: float = 120) -> list[str]:
        """Waits until every task has ended: terminal states and gone from squeue (a requeued job
        passes through PENDING again)."""

        def done() -> bool:
            states = self.states(job)
            queued = self.run("squeue", "-h", "-j", job.id, "-o", "%i", check=False).stdout.strip()
            return bool(states) and all(s in TERMINAL for s in states) and not queued

        try:
            self.wait_until(f"job {job.id} to finish", done, timeout, job)
        except AssertionError:
            self.run("scancel", job.id, check=False)
            raise
        return self.states(job)

    def exit_status(self, job: Job) -> int:
        """As `sbatch --wait` reports it: the highest task status, 128+N for a task killed by signal N."""
        codes = []
        for r in job.tasks():
            status, sig = (int(x) for x in r["ExitCode"].split(":"))
            codes.append(128 + sig if sig else status)
        return max(codes)

    def wait_for_log(self, job: Job, pattern: str, count: int = 1, timeout: float = 60) -> str:
        """Waits until `pattern` (a regex) matches at least `count` times in the job's log."""
        self.wait_until(f"{count} x {pattern!r} in the log of job {job.id}",
                        lambda: len(re.findall(pattern, job.log())) >= count, timeout, job)
        return job.log()

    def signal(self, job: Job, sig: str = "USR1", *, batch_shell: bool = False) -> None:
        """Sends `sig` to every task of the job's steps (as --signal=USR1@N does), or to the batch shell."""
        self.run("scancel", f"--signal={sig}", *(["--batch"] if batch_shell else []), job.id)

    def requeue(self, job: Job) -> None:
        """`scontrol requeue`, as an administrator or a pre-empting scheduler would: no signal of ours
        first; SLURM sends SIGTERM to every task, then SIGKILL after KillWait, and queues the job again."""
        self.run("scontrol", "requeue", job.id)

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip()


def _local_cluster(cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LOCAL_CLUSTER), cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (slurmd and munged are started here)")
    was_running = _local_cluster("status").returncode == 0
    started = _local_cluster("start")
    if started.returncode == EX_UNAVAILABLE:
        pytest.skip(f"SLURM unavailable: {started.stderr.strip().splitlines()[-1]}")
    if started.returncode != 0:
        pytest.fail(f"slurm/local-cluster.sh start failed ({started.returncode}):\n{started.stderr}")
    conf = _local_cluster("env").stdout.strip().removeprefix("export SLURM_CONF=")
    yield SlurmCluster(conf)
    if not was_running and os.environ.get("SSM_SLURM_KEEP") != "1":
        _local_cluster("stop", timeout=60)


@pytest.fixture
def slurm_workdir(tmp_path: Path) -> Path:
    """A submit directory: jobs run here; `logs/` exists (sbatch opens logs/%x-%j.out before the job)."""
    (tmp_path / "logs").mkdir()
    return tmp_path


@pytest.fixture
def stub_env() -> dict[str, str]:
    """Points train.sh at the stub CLI (tests/slurm/stub_cli.py) instead of `python -m ssm_train`."""
    return {"SSM_TRAIN_CMD": f"{sys.executable} {STUB_CLI}"}
