"""The shared trial loop (trials.py) with a bare runner: what it skips, hands over, and saves when."""

from __future__ import annotations

import pytest

from ssm_train.sweeps import propose, read_sweep, run_trials
from ssm_train.sweeps.trials import FAILED, FINISHED, TrialStore, new_record
from tests.sweep.helpers import write_sweep


def test_batches_skip_done_trials_and_each_record_is_saved_as_it_is_yielded(tmp_path) -> None:
    sweep = read_sweep(write_sweep(tmp_path, {"seed": {"values": [0, 1, 2, 3]}}))
    store = TrialStore(tmp_path / "s" / sweep.name)
    store.save(new_record(sweep, 1, {"seed": 1}, FAILED, tmp_path))
    batches: list[list[int]] = []

    def runner(trials):
        batches.append([t.index for t in trials])
        for index, params in trials:
            if index == 3:
                raise KeyboardInterrupt  # killed during the last trial
            yield new_record(sweep, index, params, FINISHED, tmp_path)

    with pytest.raises(KeyboardInterrupt):
        run_trials(sweep, store, range(4), runner, propose, batch=True)
    assert batches == [[0, 2, 3]]
    assert [(r["index"], r["status"]) for r in store.all()] == [(0, FINISHED), (1, FAILED), (2, FINISHED)]
    batches.clear()
    with pytest.raises(KeyboardInterrupt):
        run_trials(sweep, store, range(4), runner, propose)  # one at a time
    assert batches == [[3]]
