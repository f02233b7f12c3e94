"""Trial records and the one trial loop every runner (local, SLURM array, W&B agent) goes through.

A record per trial (``<dir>/<name>/trials/<iii>.json``, written atomically) is what makes a sweep
restartable: :func:`run_trials` skips trials whose record says they are done, refuses a record
made with other settings, and hands the rest to the runner's "run these trials" callable, saving
each record that callable gives back as soon as it does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ssm_train.atomic import atomic_write_text
from ssm_train.sweeps.spec import Sweep, SweepError

FINISHED, FAILED, SUBMITTED = "finished", "failed", "submitted"
DONE = (FINISHED, FAILED)  # a diverged trial is done too: running it again diverges again


class Trial(NamedTuple):
    """A trial to run: its index in the sweep and its parameters."""

    index: int
    params: dict[str, Any]


Propose = Callable[[Sweep, int, list[dict]], dict[str, Any]]  # (sweep, index, records so far) -> params
RunTrials = Callable[[list[Trial]], Iterable[dict]]  # run or submit these; yield a record for each


@dataclass
class TrialStore:
    """``<dir>/<name>/trials/<iii>.json``, written atomically, one file per trial."""

    root: Path

    def __post_init__(self) -> None:
        (self.root / "trials").mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.root / "trials" / f"{index:03d}.json"

    def load(self, index: int) -> dict | None:
        p = self.path(index)
        return json.loads(p.read_text()) if p.is_file() else None

    def all(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "trials").glob("*.json"))]

    def next_index(self) -> int:
        """The first index after every recorded trial (where new proposals go)."""
        return max((r["index"] for r in self.all()), default=-1) + 1

    def save(self, record: dict) -> None:
        atomic_write_text(self.path(record["index"]), json.dumps(record, indent=1, sort_keys=True))


def new_record(sweep: Sweep, index: int, params: dict, status: str, run_dir: Path, **extra: Any) -> dict:
    """A trial's record; ``overrides`` is its full override list, so a restart can tell whether the
    sweep file or the command line changed since."""
    return {"index": index, "name": sweep.trial_name(index), "params": params,
            "overrides": sweep.trial_overrides(index, params), "status": status,
            "run_dir": str(Path(run_dir).resolve()), "metrics": {}, **extra}


def run_trials(sweep: Sweep, store: TrialStore, indices: Sequence[int], run: RunTrials, propose: Propose,
               batch: bool = False) -> list[dict]:
    """Decide for each index whether it is done (skipped), changed (refused) or to run; hand the
    ones to run to ``run`` and save every record it yields. Returns every record in the store.

    ``batch=False`` runs each trial as soon as it is decided, so that a bayes proposal sees the
    trial before it; ``batch=True`` hands all of them over at once (an array job), each proposal
    seeing the earlier ones of the batch as taken."""
    todo: list[Trial] = []
    for position, index in enumerate(indices):
        trial = _decide(sweep, store, index, propose, lambda: _history(sweep, store, todo),
                        f"{position + 1}/{len(indices)}")
        if trial is None:
            continue
        todo.append(trial)
        if not batch:
            _save(store, run(todo))
            todo = []
    if todo:
        _save(store, run(todo))
    return store.all()


def _decide(sweep: Sweep, store: TrialStore, index: int, propose: Propose, history: Callable[[], list[dict]],
            position: str) -> Trial | None:
    """Trial ``index`` to run, or None when its record says it is done."""
    old = store.load(index)
    params = old["params"] if old and sweep.method == "bayes" else propose(sweep, index, history())
    if old:
        check_same_trial(sweep, store, old, params)
        if old["status"] in DONE:
            print(f"sweep {sweep.name}: trial {position} {old['name']} already {old['status']}, skipped", flush=True)
            return None
    return Trial(index, params)


def _history(sweep: Sweep, store: TrialStore, todo: list[Trial]) -> list[dict]:
    """What a bayes proposal fits: the records, plus this batch's trials as points already taken
    (grid and random ignore it, so they skip reading the store once per trial)."""
    if sweep.method != "bayes":
        return []
    taken = [{"index": t.index, "name": sweep.trial_name(t.index), "params": t.params, "status": SUBMITTED}
             for t in todo]
    return [*store.all(), *taken]


def _save(store: TrialStore, records: Iterable[dict]) -> None:
    for record in records:  # one at a time: a record is on disk before the runner goes on
        store.save(record)


def check_same_trial(sweep: Sweep, store: TrialStore, old: dict, params: dict) -> None:
    """A record from an earlier start must describe the same trial (same settings, same proposal)."""
    expected = sweep.trial_overrides(old["index"], params)
    if old["overrides"] != expected:
        raise SweepError(
            f"{store.path(old['index'])}: trial {old['index']} was run with {old['overrides']}, but this "
            f"sweep now gives {expected}; the sweep file or the overrides changed. Use another --dir, "
            f"or remove {store.root} to start afresh")
