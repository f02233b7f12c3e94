"""The sharded, shuffled, resumable stream base, path handling and the cache."""

from __future__ import annotations

import gzip
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdata.stateful_dataloader import StatefulDataLoader

from ssm_train.data.cache import cached_dir, write_json
from ssm_train.data.files import expand_paths, iter_lines
from ssm_train.data.stream import Permutation, ShardedStream, combine, mix64, mix_int, resolve_rank
from ssm_train.errors import DataError


class Items(ShardedStream):
    """Item i is the sample {"x": i}; with_index adds "index" and "epoch"."""

    def make_samples(self, epoch, items):
        return [{"x": torch.tensor(i)} for i in items.tolist()]


def items(n, **kw):
    kw = {"seed": 0, "shuffle": True, "infinite": False, "with_index": True, **kw}
    return Items(n, **kw)


def batches(stream, workers, n_batches=None, batch_size=4, loader=None):
    if loader is None:
        loader = StatefulDataLoader(stream, batch_size=batch_size, num_workers=workers)
    it = iter(loader)
    out = []
    for b in itertools.islice(it, n_batches):
        out.append(list(zip(b["epoch"].tolist(), b["index"].tolist())))
    return out, loader


# --- randomness --------------------------------------------------------------------------------


def test_mix64_matches_the_scalar_reference():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**63, size=200, dtype=np.uint64)
    for key in (0, 1, 2**64 - 1, combine(3, 4)):
        assert mix64(x, key).tolist() == [mix_int(int(v) ^ key) for v in x]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), key=st.integers(0, 2**64 - 1))
def test_permutation_is_a_bijection(n, key):
    perm = Permutation(n, key)(np.arange(n))
    assert sorted(perm.tolist()) == list(range(n))


def test_permutation_depends_on_the_key_and_mixes():
    a = Permutation(1000, combine(0, 0))(np.arange(1000))
    b = Permutation(1000, combine(0, 1))(np.arange(1000))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, np.arange(1000))
    # a permutation that mixes: consecutive positions are not consecutive items
    assert np.mean(np.abs(np.diff(a)) == 1) < 0.05
    # and it is the same function whether evaluated at once or piecewise
    p = Permutation(1000, 7)
    assert np.array_equal(p(np.arange(1000)), np.concatenate([p(np.arange(0, 300)), p(np.arange(300, 1000))]))


# --- sharding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_each_item_once_across_ranks_and_workers(ranks, workers, shuffle):
    n = 103  # leaves a remainder for 2 and 3 ranks
    per_rank = []
    for r in range(ranks):
        got, _ = batches(items(n, shuffle=shuffle, rank=r, world_size=ranks), workers)
        per_rank.append(got)
    # every rank yields the same number of batches (DDP stays in step)
    assert len({len(b) for b in per_rank}) == 1
    seen = [i for rank in per_rank for b in rank for _, i in b]
    assert len(seen) == len(set(seen)) == (n // ranks) * ranks  # once each; the remainder < ranks dropped
    assert set(seen) <= set(range(n))
    if not shuffle:
        assert set(seen) == set(range((n // ranks) * ranks))  # the dropped ones are the last positions


def test_training_streams_loop_over_epochs_and_reshuffle():
    n, ranks = 30, 2
    epochs = {}
    for r in range(ranks):
        got, _ = batches(items(n, infinite=True, rank=r, world_size=ranks), 2, n_batches=3 * 15 // 4 + 4)
        for e, i in (x for b in got for x in b):
            epochs.setdefault(e, []).append(i)
    for e in (0, 1, 2):
        assert sorted(epochs[e]) == list(range(n))  # each epoch: every item once over all ranks
    assert epochs[0] != epochs[1]  # a new order per epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_validation_order_is_fixed_and_repeatable(workers):
    s = items(50, shuffle=False)
    first, loader = batches(s, workers)
    assert sorted(i for b in first for _, i in b) == list(range(50))
    if workers == 0:
        assert [i for b in first for _, i in b] == list(range(50))
    abandoned, _ = batches(None, workers, n_batches=3, loader=loader)  # e.g. limit_val_batches
    again, _ = batches(None, workers, loader=loader)
    assert abandoned == first[:3] and again == first


def test_more_workers_than_items_does_not_hang():
    got, _ = batches(items(3, infinite=True), 2, n_batches=4, batch_size=1)
    assert len(got) == 4


def test_fewer_items_than_ranks_is_an_error():
    with pytest.raises(DataError, match="cannot be split over 4 rank"):
        items(3, rank=0, world_size=4)


def test_shard_copies_with_a_fresh_state():
    s = items(20, infinite=True)
    s.load_state_dict({"epoch": 3, "position": 5})
    t = s.shard(1, 2)
    assert (t.rank, t.world_size) == (1, 2) and t.state_dict() == {"epoch": 0, "position": 0}
    assert (s.rank, s.world_size) == (0, 1) and s.state_dict() == {"epoch": 3, "position": 5}


# --- resume ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", [7, 12, 13])  # mid-epoch, at an epoch's last batch, just after
def test_resume_continues_with_the_next_unseen_item(workers, stop):
    n, total = 48, 40  # 48 items / batch 4 = 12 batches per epoch, run over 3+ epochs
    whole, _ = batches(items(n, infinite=True), workers, n_batches=total)
    head, loader = batches(items(n, infinite=True), workers, n_batches=stop)
    state = loader.state_dict()
    del loader
    resumed = StatefulDataLoader(items(n, infinite=True), batch_size=4, num_workers=workers)
    resumed.load_state_dict(state)
    tail, _ = batches(None, workers, n_batches=total - stop, loader=resumed)
    assert head + tail == whole


def test_state_is_plain():
    s = items(10, infinite=True)
    it = iter(s)
    for _ in range(13):
        next(it)
    assert s.state_dict() == {"epoch": 1, "position": 3}
    with pytest.raises(DataError):
        s.load_state_dict({"epoch": -1, "position": 0})


# --- rank, paths, files, cache ------------------------------------------------------------------


def test_resolve_rank(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_rank() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (2, 4)
    assert resolve_rank(1, 3) == (1, 3)
    with pytest.raises(DataError, match="rank=3, world_size=3"):
        resolve_rank(3, 3)


def test_expand_paths(tmp_path):
    for name in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / name).write_text("x")
    got = expand_paths([str(tmp_path / "*.txt"), str(tmp_path / "c.jsonl"), str(tmp_path / "a.txt")])
    assert [p.name for p in got] == ["a.txt", "b.txt", "c.jsonl"]  # globs sorted, repeats dropped
    with pytest.raises(DataError, match="no such file.*missing.txt"):
        expand_paths([str(tmp_path / "missing.txt")])
    with pytest.raises(DataError, match="matches no file"):
        expand_paths([str(tmp_path / "*.parquet")])
    with pytest.raises(DataError, match="is a directory"):
        expand_paths([str(tmp_path)])
    with pytest.raises(DataError, match="is empty"):
        expand_paths([])


def test_iter_lines_reads_gzip_and_names_truncation(tmp_path):
    text = "".join(f"line {i}\n" for i in range(20000))
    good = tmp_path / "good.txt.gz"
    good.write_bytes(gzip.compress(text.encode()))
    assert [raw.decode() for _, raw in iter_lines(good)] == text.splitlines()
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"bad\.txt\.gz after line \d+: truncated or corrupt"):
        list(iter_lines(bad))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt: empty file"):
        list(iter_lines(empty))


def test_cache_builds_once_and_never_half(tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        (out / "x.bin").write_bytes(b"123")
        write_json(out / "meta.json", {"ok": True})

    a = cached_dir(tmp_path, "t", {"k": 1}, build)
    b = cached_dir(tmp_path, "t", {"k": 1}, build)
    assert a == b and len(calls) == 1 and (a / "x.bin").read_bytes() == b"123"
    assert cached_dir(tmp_path, "t", {"k": 2}, build) != a and len(calls) == 2

    def broken(out):
        (out / "x.bin").write_bytes(b"partial")
        raise DataError("boom")

    with pytest.raises(DataError, match="boom"):
        cached_dir(tmp_path, "t", {"k": 3}, broken)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [a.name, cached_dir(tmp_path, "t", {"k": 2}, build).name]
    )
