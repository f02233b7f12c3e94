"""Trial proposals from the ``sweeps`` package (W&B's own search engine), offline.

Grid and random depend on the trial index only (random draws are seeded by ``(name, index)``), so
a restarted sweep proposes the same trials; bayes fits the trial records given to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import warnings
from collections.abc import Iterator
from typing import Any

from ssm_train.sweeps.spec import Sweep, SweepError, plain
from ssm_train.sweeps.trials import FAILED, FINISHED, SUBMITTED

# how the bayes engine sees our trials: submitted ones are points already taken (not re-proposed)
_BAYES_STATE = {FINISHED: "finished", FAILED: "failed", SUBMITTED: "pending"}


def sweeps_package():
    """The ``sweeps`` package, imported without pydantic's notice about the package's own model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every grid point, in the order of W&B's grid search (parameters sorted by name)."""
    runs = sweeps_package().next_runs(sweep.spec, [], n=10**7)
    return [_params(r.config) for r in runs if r is not None]


def n_trials(sweep: Sweep, count: int | None) -> int:
    """Trials in the sweep: ``--count`` (grid: at most every point, default all; random/bayes:
    default the file's ``run_cap``, which they need one way or the other)."""
    if count is not None and count < 1:
        raise SweepError(f"--count: must be >= 1, got {count}")
    if sweep.method == "grid":
        n = len(grid_points(sweep))
        return n if count is None else min(count, n)
    count = count or sweep.spec.get("run_cap")
    if not count:
        raise SweepError(f"{sweep.path}: method {sweep.method} needs a number of trials: --count N "
                         "(or run_cap: N in the file)")
    return int(count)


def propose(sweep: Sweep, index: int, history: list[dict]) -> dict[str, Any]:
    """Trial ``index``'s parameters; bayes fits the ``history`` records (finished ones as data,
    submitted ones as points already taken)."""
    if sweep.method == "grid":
        return grid_points(sweep)[index]
    sweeps = sweeps_package()
    with _seeded(f"{sweep.name}/{index}"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="sklearn")  # GP fit notices on a handful of points
        if sweep.method == "random":
            return _params(sweeps.next_run(sweep.spec, []).config)
        runs = [sweeps.SweepRun(name=r["name"], config={k: {"value": v} for k, v in r["params"].items()},
                                state=_BAYES_STATE[r["status"]], summary_metrics=r.get("metrics") or {})
                for r in history]
        return _params(sweeps.next_run(sweep.spec, runs).config)


@contextlib.contextmanager
def _seeded(key: str) -> Iterator[None]:
    """The sweeps package draws from the global `random` and `numpy.random`; seed both, then restore."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    random.seed(key)
    np.random.seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little"))
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _params(run_config: dict) -> dict[str, Any]:
    return {k: plain(v["value"]) for k, v in sorted(run_config.items())}
