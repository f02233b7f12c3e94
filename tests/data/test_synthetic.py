"""Synthetic tasks: the targets are what their docstrings say, the streams shard and resume exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torchdata.stateful_dataloader import StatefulDataLoader

from ssm_train.data.config import DataConfig
from ssm_train.data.synthetic import (IGNORE, SyntheticDataModule, SyntheticStream, SYNTHETIC_TASKS, check_synthetic,
                                      _random_map, duffing, nonlinear_lags)


@given(lag=st.integers(0, 20), window=st.integers(1, 4), d=st.integers(1, 3), index=st.integers(0, 10**6))
@settings(max_examples=30, deadline=None)
def test_copy_targets_are_lagged_inputs(lag, window, d, index):
    cfg = DataConfig(kind="copy", seq_len=32, lag=lag, window=window, d_input=d)
    s = SYNTHETIC_TASKS["copy"](cfg, 7, index)
    u, y = s["inputs"].numpy(), s["targets"].numpy()
    assert y.shape == (32, d * window)
    for t in range(32):
        for j in range(window):
            expected = u[t - lag - j] if t - lag - j >= 0 else np.zeros(d)
            np.testing.assert_array_equal(y[t, j * d:(j + 1) * d], expected)


def test_nonlinear_target_is_the_fixed_map_of_lagged_inputs():
    cfg = DataConfig(kind="nonlinear", seq_len=64, lag=12, d_input=2)
    lags = nonlinear_lags(12)
    assert lags == [0, 4, 8, 12]
    f = _random_map(2, 12, 3)  # one function per seed, shared by every sample
    for index in (0, 1):
        s = SYNTHETIC_TASKS["nonlinear"](cfg, 3, index)
        u, y = s["inputs"].numpy(), s["targets"].numpy()
        for t in (0, 5, 12, 40, 63):
            z = np.concatenate([u[t - l] if t - l >= 0 else np.zeros(2, np.float32) for l in lags])
            np.testing.assert_allclose(y[t], f(z[None])[0], rtol=1e-5, atol=1e-6)
    assert y.std() > 0.1  # not a degenerate constant map


def test_duffing_matches_a_tight_ode_solver():
    from scipy.integrate import solve_ivp

    u = np.random.default_rng(0).standard_normal((60, 2)).astype(np.float32)
    x = duffing(u)
    for c in range(2):
        state, ref = np.zeros(2), []
        for force in u[:, c].astype(np.float64):
            sol = solve_ivp(lambda _, s: [s[1], force - 0.3 * s[1] - s[0] - s[0] ** 3], (0, 0.1), state,
                            rtol=1e-10, atol=1e-12)
            state = sol.y[:, -1]
            ref.append(state[0])
        np.testing.assert_allclose(x[:, c], ref, atol=1e-4)


def test_recall_queries_ask_for_stored_values():
    cfg = DataConfig(kind="recall", seq_len=64, vocab_size=16, n_pairs=6, n_queries=5)
    for index in range(20):
        s = SYNTHETIC_TASKS["recall"](cfg, 0, index)
        x, y = s["inputs"].numpy(), s["targets"].numpy()
        pairs = dict(zip(x[0:12:2], x[1:12:2]))
        assert len(pairs) == 6 and all(1 <= k <= 16 for k in pairs) and all(17 <= v <= 32 for v in pairs.values())
        queries = np.flatnonzero(y != IGNORE)
        assert len(queries) == 5 and queries.min() >= 12
        for q in queries:
            assert y[q] == pairs[x[q]]


@pytest.mark.parametrize("bad, key", [({"kind": "recall", "n_pairs": 20, "vocab_size": 8}, "data.n_pairs"),
                                      ({"kind": "recall", "seq_len": 8}, "data.seq_len"),
                                      ({"kind": "copy", "window": 0}, "data.window"),
                                      ({"kind": "copy", "lag": -1}, "data.lag"),
                                      ({"kind": "copy", "lag": 40, "seq_len": 32}, "data.lag")])
def test_bad_task_settings_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key):
        check_synthetic(DataConfig(**bad))


def _indices(stream_kwargs: dict, workers: int, n: int) -> list[float]:
    """The first input value of each sample a (rank, workers) loader yields: a sample fingerprint."""
    loader = StatefulDataLoader(SyntheticStream(DataConfig(kind="copy", seq_len=4), 0, n=n, **stream_kwargs),
                                batch_size=None, num_workers=workers)
    return [float(s["inputs"][0, 0]) for s in loader]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_exactly_once_across_ranks_and_workers(world, workers):
    n = 30
    reference = _indices({"rank": 0, "world_size": 1}, 0, n)
    seen = sum((_indices({"rank": r, "world_size": world}, workers, n) for r in range(world)), [])
    assert sorted(seen) == sorted(reference) and len(set(seen)) == len(seen)


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_loader_continues_with_the_next_sample(workers):
    cfg = DataConfig(kind="copy", seq_len=4, batch_size=3, num_workers=workers)

    def loader():
        return StatefulDataLoader(SyntheticStream(cfg, 0), batch_size=3, num_workers=workers)

    full = [b["inputs"] for _, b in zip(range(8), loader())]
    first = loader()
    it = iter(first)
    head = [next(it)["inputs"] for _ in range(3)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [b["inputs"] for _, b in zip(range(5), resumed)]
    for a, b in zip(full, head + tail):
        assert torch.equal(a, b)


def test_datamodule_spec_and_batches():
    dm = SyntheticDataModule(DataConfig(kind="copy", seq_len=16, lag=4, batch_size=4, window=2, d_input=3), seed=1)
    assert (dm.spec.task, dm.spec.d_input, dm.spec.d_output) == ("regress", 3, 6)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 16, 3) and batch["targets"].shape == (4, 16, 6)
    val = list(dm.val_dataloader())
    assert len(val) == DataConfig().val_batches
    assert not torch.equal(val[0]["inputs"], batch["inputs"])  # validation draws are disjoint


def test_a_validation_set_smaller_than_the_world_is_a_config_error(monkeypatch):
    from ssm_train.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    small = SyntheticDataModule(DataConfig(kind="copy", seq_len=8, lag=2, batch_size=1, val_batches=1), seed=0)
    with pytest.raises(ConfigError, match=r"'data.val_batches' x 'data.batch_size': 1 x 1 = 1 validation samples "
                                          r"cannot be split over 4 ranks; make data.val_batches at least 4"):
        small.val_dataloader()
    enough = SyntheticDataModule(DataConfig(kind="copy", seq_len=8, lag=2, batch_size=1, val_batches=4), seed=0)
    assert len(list(enough.val_dataloader())) == 1  # rank 3's one sample of four


@pytest.mark.parametrize("workers", [0, 2])
def test_validation_yields_the_same_batches_on_every_pass(workers):
    dm = SyntheticDataModule(DataConfig(kind="copy", seq_len=8, lag=2, batch_size=2, val_batches=3,
                                        num_workers=workers), seed=0)
    loader = dm.val_dataloader()
    first, second = (torch.cat([b["inputs"] for b in loader]) for _ in range(2))
    assert len(first) == 6  # every sample, also when workers split the batches differently
    assert torch.equal(first, second)


def test_validation_scores_the_same_nonlinear_map_as_training():
    cfg = DataConfig(kind="nonlinear", seq_len=32, lag=6, batch_size=4, val_batches=1)
    dm = SyntheticDataModule(cfg, seed=5)
    f, lags = _random_map(1, 6, 5), nonlinear_lags(6)
    for batch in (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))):
        u, y = batch["inputs"][0].numpy(), batch["targets"][0].numpy()
        z = np.concatenate([u[20 - l] for l in lags])
        np.testing.assert_allclose(y[20], f(z[None])[0], rtol=1e-5, atol=1e-6)
