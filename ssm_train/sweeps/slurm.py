"""``--slurm``: the trials to run as one array job of ``slurm/train.sh``; ``--collect`` afterwards.

Task ``t`` of the array reads line ``t`` of a ``SWEEP_FILE`` (one trial's overrides, quoted so that
train.sh splits it back exactly). The trials are recorded ``submitted`` once sbatch has the job; a
trial becomes ``finished`` when its run directory holds the validation that ``fit`` logs last.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ssm_train.paths import project_file, search_roots
from ssm_train.sweeps.propose import n_trials, propose
from ssm_train.sweeps.report import write_results
from ssm_train.sweeps.spec import Sweep, SweepError
from ssm_train.sweeps.trials import FINISHED, SUBMITTED, Trial, TrialStore, new_record, run_trials


@dataclass
class SlurmSubmission:
    """An array job: task ``t`` runs trial ``trials[t]`` with the overrides on line ``t``."""

    sweep_file: Path
    command: list[str]  # the sbatch command line; SWEEP_FILE goes in its environment
    trials: list[Trial] = field(default_factory=list)  # (index, params) per task
    lines: list[str] = field(default_factory=list)
    job_id: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"SWEEP_FILE": str(self.sweep_file)}


def train_sh() -> Path:
    """``slurm/train.sh`` of the working directory, else of the source checkout."""
    path = project_file("slurm/train.sh")
    if path is None:
        raise SweepError(f"slurm/train.sh not found (in {' or '.join(map(str, search_roots()))})")
    return path


def slurm_indices(sweep: Sweep, count: int | None, store: TrialStore) -> range:
    """Grid: every point (or the first N), done ones skipped; random/bayes: N new proposals after
    the recorded ones (bayes proposes in rounds, each fitted to the trials collected so far)."""
    n = n_trials(sweep, count)
    start = 0 if sweep.method == "grid" else store.next_index()
    return range(start, start + n)


def plan_slurm(sweep: Sweep, count: int | None, out_dir: Path, sbatch_args: Sequence[str] = ()) -> SlurmSubmission:
    """The trials not yet done and the array job that would run them; writes and submits nothing."""
    planned: list[Trial] = []

    def take(trials: list[Trial]) -> list[dict]:
        planned.extend(trials)
        return []  # nothing to record: nothing was submitted

    store = TrialStore(out_dir / sweep.name)
    run_trials(sweep, store, slurm_indices(sweep, count, store), take, propose, batch=True)
    return _submission(sweep, out_dir, planned, sbatch_args)


def _submission(sweep: Sweep, out_dir: Path, trials: list[Trial], sbatch_args: Sequence[str]) -> SlurmSubmission:
    """A line holds the trial's own words (its parameters and ``name=<sweep>-<iii>``, which wins
    over the name train.sh sets); the configs and the common overrides go once on the sbatch line."""
    n_common = len(sweep.base_overrides())
    lines = [shlex.join(sweep.trial_overrides(i, p)[n_common:]) for i, p in trials]
    k = len(list((out_dir / sweep.name).glob("slurm-*.txt")))
    sweep_file = (out_dir / sweep.name / f"slurm-{k}.txt").resolve()
    command = ["sbatch", "--parsable", f"--array=0-{len(lines) - 1}", f"--job-name={sweep.name}", *sbatch_args,
               str(train_sh()), *sweep.configs, *sweep.base_overrides()]
    return SlurmSubmission(sweep_file, command, list(trials), lines)


def submit_slurm(sweep: Sweep, count: int | None, out_dir: Path, sbatch_args: Sequence[str] = (),
                 dry_run: bool = False, wait: bool = False) -> SlurmSubmission:
    """Write the SWEEP_FILE and run sbatch (unless ``dry_run``); the trials are recorded as
    submitted as soon as sbatch has the job (before ``--wait`` waits for it)."""
    args = [*(["--wait"] if wait else []), *sbatch_args]
    subs: list[SlurmSubmission] = []

    def submit(trials: list[Trial]) -> Iterator[dict]:
        subs.append(_submission(sweep, out_dir, trials, args))
        yield from _sbatch(sweep, subs[0], dry_run, wait)

    store = TrialStore(out_dir / sweep.name)
    run_trials(sweep, store, slurm_indices(sweep, count, store), submit, propose, batch=True)
    if not subs:
        print(f"sweep {sweep.name}: every trial is done; nothing to submit", flush=True)
        return _submission(sweep, out_dir, [], args)
    return subs[0]


def _sbatch(sweep: Sweep, sub: SlurmSubmission, dry_run: bool, wait: bool) -> Iterator[dict]:
    """Submit ``sub``; yield a ``submitted`` record per task, then (``wait``) wait for the array."""
    sub.sweep_file.write_text("\n".join(sub.lines) + "\n")
    print(f"sweep {sweep.name}: {len(sub.trials)} trial(s) in {sub.sweep_file}", flush=True)
    print(f"SWEEP_FILE={shlex.quote(str(sub.sweep_file))} {shlex.join(sub.command)}", flush=True)
    if dry_run:
        return
    Path("logs").mkdir(exist_ok=True)  # sbatch opens logs/%x-%j.out before the job starts
    proc = subprocess.Popen(sub.command, env={**os.environ, **sub.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()  # --parsable: "<job id>[;cluster]" once submitted
    if not re.match(r"^\d+", first):
        raise SweepError(f"sbatch failed: {first} {proc.communicate()[1].strip()}")
    sub.job_id = first.split(";")[0]
    for task, (i, params) in enumerate(sub.trials):
        run_dir = sweep.config(sweep.trial_overrides(i, params)).run_dir
        yield new_record(sweep, i, params, SUBMITTED, run_dir, job=f"{sub.job_id}_{task}")
    print(f"sweep {sweep.name}: submitted array job {sub.job_id}", flush=True)
    if wait:
        proc.communicate()  # sbatch --wait returns when every task has ended
    else:
        proc.wait()
        print(f"when it has finished: ssm-train sweep {shlex.quote(str(sweep.path))} --collect"
              f"{''.join(' ' + shlex.quote(o) for o in sweep.overrides)}", flush=True)


def collect(sweep: Sweep, out_dir: Path) -> list[dict]:
    """Submitted trials whose run directory holds the final validation become finished."""
    store = TrialStore(out_dir / sweep.name)
    for r in store.all():
        if r["status"] != SUBMITTED:
            continue
        cfg = sweep.config(r["overrides"])
        metrics = final_metrics(Path(r["run_dir"]), cfg.trainer.max_steps)
        if metrics is not None:
            store.save({**r, "status": FINISHED, "metrics": metrics})
    return write_results(sweep, out_dir)


def final_metrics(run_dir: Path, max_steps: int) -> dict[str, float] | None:
    """The validation metrics that ``fit`` logs after training (the last ``val/*`` row of
    ``csv/metrics.csv``, at step >= max_steps), or None while the run is not finished."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if any(k.startswith("val/") and v for k, v in r.items())]
    if not rows or int(float(rows[-1]["step"])) < max_steps:
        return None
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}
