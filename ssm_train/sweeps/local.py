"""``--local``: the trials here, one after another, each an ordinary ``ssm_train.run.fit``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ssm_train.config import Config
from ssm_train.sweeps.propose import n_trials, propose
from ssm_train.sweeps.report import write_results
from ssm_train.sweeps.spec import Sweep, describe
from ssm_train.sweeps.trials import FAILED, FINISHED, RunTrials, Trial, TrialStore, new_record, run_trials

FitFn = Callable[[Config], Any]  # ssm_train.run.fit, or a stand-in in tests


def run_local(sweep: Sweep, count: int | None, out_dir: Path, fit: FitFn | None = None) -> list[dict]:
    """Trials ``0 .. n-1`` one after another; finished ones (by their record) are skipped."""
    n = n_trials(sweep, count)
    run_trials(sweep, TrialStore(out_dir / sweep.name), range(n), fit_trials(sweep, fit, n), propose)
    return write_results(sweep, out_dir)


def fit_trials(sweep: Sweep, fit: FitFn | None = None, n: int | None = None) -> RunTrials:
    """A runner that trains each trial in this process; a diverged trial is recorded ``failed``.

    ``fit`` defaults to ``ssm_train.run.fit`` as it is when the runner is made (not when this module
    is imported): tests replace it, and the CLI starts without importing torch and Lightning."""
    if fit is None:
        from ssm_train.run import fit

    def run(trials: list[Trial]) -> Iterator[dict]:
        for index, params in trials:
            of = f"/{n}" if n else ""
            print(f"sweep {sweep.name}: trial {index + 1}{of} {sweep.trial_name(index)}: {describe(params)}",
                  flush=True)
            yield _fit_one(sweep, fit, index, params)

    return run


def _fit_one(sweep: Sweep, fit: FitFn, index: int, params: dict[str, Any]) -> dict:
    from ssm_train.errors import NonFiniteLossError

    cfg = sweep.config(sweep.trial_overrides(index, params))
    try:
        result = fit(cfg)
    except NonFiniteLossError as e:
        print(f"sweep {sweep.name}: trial {sweep.trial_name(index)} failed: {e}", flush=True)
        return new_record(sweep, index, params, FAILED, cfg.run_dir, error=str(e))
    print(f"sweep {sweep.name}: trial {sweep.trial_name(index)}: {result.metric}={result.value:.6g}", flush=True)
    return new_record(sweep, index, params, FINISHED, Path(result.run_dir), metric=result.metric,
                      metrics=dict(result.metrics))
