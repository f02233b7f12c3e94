"""Synthetic sequence-to-sequence tasks for the universality questions, generated on the fly.

Sample ``k`` of a stream is a pure function of ``(seed, k)``, so data are deterministic by seed,
infinite, identical whatever the number of ranks and workers, and a resumed run continues exactly
(the stream's state is just how many samples it has handed out).

Tasks (``data.kind``), inputs ``u`` white Gaussian noise ``[L, d_input]`` unless said otherwise:

- ``copy`` (memorisation / reconstruction): ``y_t = (u_{t-lag}, ..., u_{t-lag-window+1})`` — recover
  the input at lag ``k`` (``window=1``) or a whole past window from the recurrent state
  (zero before the sequence starts).
- ``nonlinear``: ``y_t = f(u_{t-l_1}, ..., u_{t-l_4})`` with lags ``l = 0, lag/3, 2lag/3, lag`` and
  ``f`` a fixed random two-layer tanh network (drawn once from the task seed): a non-linear causal
  map with finite memory.
- ``ode``: ``y_t = x(t)`` of the forced Duffing oscillator ``x'' + 0.3 x' + x + x^3 = u(t)``
  (RK4, step 0.1, ``u`` held constant over a step): a non-linear causal map with fading memory.
- ``recall``: multi-query associative recall (Arora et al., Zoology 2023): ``n_pairs`` key-value
  pairs, then queries of keys seen earlier; the target at a query is its value, elsewhere ignored.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Callable

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ssm_train.data.base import DataSpec
from ssm_train.data.config import DataConfig
from ssm_train.data.stream import resolve_rank
from ssm_train.errors import DataError

Sample = dict[str, torch.Tensor]
IGNORE = -100
VAL_INDEX_OFFSET = 1 << 40  # validation samples: indices training never reaches, same seed (same task)


def _rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


# ---------------------------------------------------------------------------------------- tasks

SampleFn = Callable[[DataConfig, int, int], Sample]

# data.kind -> the generator of sample ``index`` (named apart from ssm_train.tasks.TASKS, the
# LightningModules: this table is of data, that one of training objectives)
SYNTHETIC_TASKS: dict[str, SampleFn] = {}
_SUMMARIES: dict[str, str] = {}  # kind -> one line, for the data registry


def synthetic_task(kind: str, summary: str) -> Callable[[SampleFn], SampleFn]:
    """Make ``fn(cfg, seed, index) -> Sample`` the generator of ``data.kind=<kind>``.

    One decorator per task, so that a new task is one function: every task in the table is
    registered as a data kind served by ``SyntheticDataModule`` at the end of this module.
    """
    def add(fn: SampleFn) -> SampleFn:
        SYNTHETIC_TASKS[kind], _SUMMARIES[kind] = fn, summary
        return fn

    return add


@synthetic_task("copy", "recover the input at a lag (or a past window) from the state (regression)")
def copy_sample(cfg: DataConfig, seed: int, index: int) -> Sample:
    u = _rng(seed, index).standard_normal((cfg.seq_len, cfg.d_input), dtype=np.float32)
    padded = np.concatenate([np.zeros((cfg.lag + cfg.window - 1, cfg.d_input), np.float32), u])
    start = cfg.window - 1  # padded[start + t] == u[t - lag]
    y = np.concatenate([padded[start - j: start - j + cfg.seq_len] for j in range(cfg.window)], axis=1)
    return {"inputs": torch.from_numpy(u), "targets": torch.from_numpy(y)}


def nonlinear_lags(lag: int) -> list[int]:
    return sorted({round(lag * i / 3) for i in range(4)})


@functools.lru_cache(maxsize=8)
def _random_map(d_input: int, lag: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """The fixed random f of the ``nonlinear`` task (same for every sample of a seed)."""
    rng = _rng(seed, 0, stream=1)
    d_in, hidden = d_input * len(nonlinear_lags(lag)), 64
    w1 = rng.standard_normal((d_in, hidden)) * (2.0 / math.sqrt(d_in))
    b1 = rng.standard_normal(hidden) * 0.5
    w2 = rng.standard_normal((hidden, d_input)) / math.sqrt(hidden)
    return lambda z: (np.tanh(z @ w1 + b1) @ w2).astype(np.float32)


@synthetic_task("nonlinear", "a fixed random non-linear map of lagged inputs (regression)")
def nonlinear_sample(cfg: DataConfig, seed: int, index: int) -> Sample:
    u = _rng(seed, index).standard_normal((cfg.seq_len, cfg.d_input), dtype=np.float32)
    lags = nonlinear_lags(cfg.lag)
    padded = np.concatenate([np.zeros((max(lags), cfg.d_input), np.float32), u])
    z = np.concatenate([padded[max(lags) - l: max(lags) - l + cfg.seq_len] for l in lags], axis=1)
    return {"inputs": torch.from_numpy(u), "targets": torch.from_numpy(_random_map(cfg.d_input, cfg.lag, seed)(z))}


def duffing(u: np.ndarray, dt: float = 0.1) -> np.ndarray:
    """x'' + 0.3 x' + x + x^3 = u, from rest, RK4 with u held over each step. u: [L, d] -> x: [L, d].

    Scalar Python floats per channel: for one short trajectory that is ~30x faster than numpy.
    """
    out = np.empty(u.shape, np.float32)
    for c in range(u.shape[1]):
        x = v = 0.0
        xs = []
        for force in u[:, c].tolist():
            def accel(x: float, v: float) -> float:
                return force - 0.3 * v - x - x * x * x

            k1x, k1v = v, accel(x, v)
            k2x, k2v = v + dt / 2 * k1v, accel(x + dt / 2 * k1x, v + dt / 2 * k1v)
            k3x, k3v = v + dt / 2 * k2v, accel(x + dt / 2 * k2x, v + dt / 2 * k2v)
            k4x, k4v = v + dt * k3v, accel(x + dt * k3x, v + dt * k3v)
            x += dt / 6 * (k1x + 2 * k2x + 2 * k3x + k4x)
            v += dt / 6 * (k1v + 2 * k2v + 2 * k3v + k4v)
            xs.append(x)
        out[:, c] = xs
    return out


@synthetic_task("ode", "the forced Duffing oscillator's response (regression)")
def ode_sample(cfg: DataConfig, seed: int, index: int) -> Sample:
    u = _rng(seed, index).standard_normal((cfg.seq_len, cfg.d_input), dtype=np.float32)
    return {"inputs": torch.from_numpy(u), "targets": torch.from_numpy(duffing(u))}


@synthetic_task("recall", "multi-query associative recall of key-value pairs (LM)")
def recall_sample(cfg: DataConfig, seed: int, index: int) -> Sample:
    """Tokens: 0 filler, keys 1..V, values V+1..2V. Pairs first, queries spread over the rest."""
    rng, V, L = _rng(seed, index), cfg.vocab_size, cfg.seq_len
    keys = rng.choice(V, cfg.n_pairs, replace=False) + 1
    values = rng.integers(0, V, cfg.n_pairs) + V + 1
    inputs = np.zeros(L, np.int64)
    targets = np.full(L, IGNORE, np.int64)
    inputs[0: 2 * cfg.n_pairs: 2], inputs[1: 2 * cfg.n_pairs: 2] = keys, values
    slots = rng.choice(np.arange(2 * cfg.n_pairs, L), cfg.n_queries, replace=False)
    asked = rng.integers(0, cfg.n_pairs, cfg.n_queries)
    inputs[slots], targets[slots] = keys[asked], values[asked]
    return {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets)}


def synthetic_spec(cfg: DataConfig) -> DataSpec:
    if cfg.kind == "recall":
        return DataSpec(task="lm", vocab_size=2 * cfg.vocab_size + 1, ignore_index=IGNORE)
    d_output = cfg.d_input * (cfg.window if cfg.kind == "copy" else 1)
    return DataSpec(task="regress", d_input=cfg.d_input, d_output=d_output)


def check_synthetic(cfg: DataConfig) -> None:
    """Raise a DataError naming the ``data.*`` key when the task cannot be built (exit 2, not a bug)."""
    if cfg.kind == "recall":
        if cfg.n_pairs > cfg.vocab_size:
            raise DataError(f"data.n_pairs={cfg.n_pairs} must be <= data.vocab_size={cfg.vocab_size} "
                            "(keys are distinct)")
        if 2 * cfg.n_pairs + cfg.n_queries > cfg.seq_len:
            raise DataError(f"data.seq_len={cfg.seq_len} must hold 2*n_pairs + n_queries = "
                            f"{2 * cfg.n_pairs + cfg.n_queries} tokens")
    for key in ("d_input", "window", "n_pairs", "n_queries", "vocab_size", "val_batches"):
        if getattr(cfg, key) <= 0:
            raise DataError(f"data.{key} must be positive, got {getattr(cfg, key)}")
    if cfg.lag < 0:
        raise DataError(f"data.lag must be >= 0, got {cfg.lag}")
    if cfg.kind in ("copy", "nonlinear") and cfg.lag + cfg.window > cfg.seq_len:
        raise DataError(f"data.lag={cfg.lag} (+ window {cfg.window}) must fit in data.seq_len={cfg.seq_len}, "
                        "or every target is the zero padding")


# --------------------------------------------------------------------------------------- stream


class SyntheticStream(IterableDataset):
    """Samples ``0, 1, ...`` (or the first ``n``), split across ranks and dataloader workers.

    Rank ``r`` of ``world`` takes samples ``k`` with ``k % world == r``; within a rank, its workers
    deal those out round-robin. ``state_dict`` records how many samples this rank has consumed and
    the world size, which is all a resumed run needs (``StatefulDataLoader`` keeps one state per
    worker). Resumed on another world size, the count is rescaled so the run continues at the same
    global sample (exact when the old world's count divides evenly; else it repeats < world samples,
    never skips). A finite stream (validation) starts again from its first sample on every pass.
    """

    def __init__(self, cfg: DataConfig, seed: int, n: int | None = None,
                 rank: int | None = None, world_size: int | None = None, offset: int = 0):
        self.cfg, self.seed, self.n, self.offset = cfg, seed, n, offset
        self._rank_world = (rank, world_size)  # resolved at iteration: DDP starts after construction
        self.sample = SYNTHETIC_TASKS[cfg.kind]
        self.consumed = 0  # samples of this rank (this worker's share, inside a worker) handed out
        self.world_size: int | None = None  # of the run that consumed them

    def __iter__(self) -> Iterator[Sample]:
        rank, world = resolve_rank(*self._rank_world)
        if self.world_size not in (None, world):  # resumed from a run with another number of ranks
            self.consumed = self.consumed * self.world_size // world
        self.world_size = world
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        per_rank = None if self.n is None else self.n // world  # ranks stay in step
        j = self.consumed * n_workers + worker
        while per_rank is None or j < per_rank:
            self.consumed += 1  # before the yield: the loader snapshots state between samples
            yield self.sample(self.cfg, self.seed, self.offset + j * world + rank)
            j += n_workers
        self.consumed = 0  # a finite stream was read to its end: the next pass starts afresh

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
        self.world_size = state.get("world_size")


# ---------------------------------------------------------------------------------- data module

import lightning as L  # noqa: E402  (training layer: the generators above stay Lightning-free)
from ssm_train.data.loader import ResumableDataLoader  # noqa: E402
from ssm_train.data.registry import register_data  # noqa: E402


class SyntheticDataModule(L.LightningDataModule):
    """Infinite fresh training samples; a fixed validation/test set of ``val_batches`` batches."""

    def __init__(self, cfg: DataConfig, seed: int, *, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__()
        check_synthetic(cfg)
        self.cfg, self.seed = cfg, seed + cfg.seed_offset
        self.rank, self.world_size = rank, world_size  # None: resolved when a stream is iterated
        self.spec = synthetic_spec(cfg)

    def set_data_parallel(self, rank: int, world_size: int) -> None:
        """Shard over these data-parallel replicas instead of the global ranks (as the corpus modules)."""
        self.rank, self.world_size = resolve_rank(rank, world_size)

    def _loader(self, stream: SyntheticStream) -> ResumableDataLoader:
        return ResumableDataLoader(stream, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers)

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(SyntheticStream(self.cfg, self.seed, rank=self.rank, world_size=self.world_size))

    def val_dataloader(self) -> ResumableDataLoader:
        n = self.cfg.val_batches * self.cfg.batch_size
        world = resolve_rank(self.rank, self.world_size)[1]
        if n < world:  # every rank would get n // world = 0 samples and no metric could be computed
            raise DataError(f"keys 'data.val_batches' x 'data.batch_size': {self.cfg.val_batches} x "
                            f"{self.cfg.batch_size} = {n} validation samples cannot be split over {world} ranks; "
                            f"make data.val_batches at least {-(-world // self.cfg.batch_size)}")
        return self._loader(SyntheticStream(self.cfg, self.seed, n=n, rank=self.rank, world_size=self.world_size,
                                            offset=VAL_INDEX_OFFSET))

    test_dataloader = val_dataloader


for _kind, _summary in _SUMMARIES.items():  # every task is served by the one module, keyed by cfg.kind
    register_data(_kind, SyntheticDataModule, summary=_summary)
