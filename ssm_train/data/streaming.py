"""Sharded, shuffled, resumable streams of index-addressed items (windows or rows).

Every corpus in ``ssm_train.data`` is first encoded once into a flat on-disk array (a memmap:
token ids for text, nucleotide codes for FASTA, tokens + offsets for labelled rows). An epoch is
then a list of ``N`` items addressed by an integer, and this module decides which items a given
rank and dataloader worker yields, in which order, and where a resumed run picks up:

- **order**: position ``p ∈ [0, N)`` of epoch ``e`` holds item ``π_e(p)``, where ``π_e`` is a
  pseudo-random permutation keyed by ``(seed, e)`` (a 4-round Feistel network on the next even
  power of two, cycle-walked back into ``[0, N)``). It is computed position by position, so it
  costs O(1) memory whatever ``N`` is, and mixes the whole epoch, not just a buffer's width;
- **sharding**: rank ``r`` of ``R`` takes positions ``p = r + R·j`` for ``j < M = ⌊N/R⌋``, and
  worker ``w`` of ``W`` takes ``j = w + W·i``. The last ``N mod R < R`` positions of each epoch are
  **dropped** so that every rank yields exactly ``M`` items, hence the same number of batches
  (under DDP a rank that runs out first would hang the others in their all-reduce). Which items
  are dropped changes with the epoch, because they are the permuted ones;
- **resume**: a worker's whole state is ``(epoch, position)``, the number of items it has yielded
  in that epoch; ``load_state_dict`` then seeks in O(1). torchdata's ``StatefulDataLoader`` stores
  one such state per worker and hands it back to the same worker on resume.

Training streams loop over epochs forever (the trainer stops at ``max_steps``); validation streams
run once through a fixed, unshuffled order.

The second half of the module holds the file plumbing shared by the readers: path expansion,
transparent gzip, the cache directory, and ``DataError``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data or data configuration; the message names the file (and line) at fault."""


# ---------------------------------------------------------------------------------------------
# Counter-based randomness: every random choice is a pure function of (seed, epoch, item), so a
# resumed run makes the same choices without storing a generator state.
# ---------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mix_int(x: int) -> int:
    """splitmix64 finaliser on a Python int (a bijection on 64-bit words)."""
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def combine(*values: int) -> int:
    """A 64-bit key from several integers (seed, epoch, ...), order-sensitive."""
    h = 0
    for v in values:
        h = mix_int(h ^ (int(v) & _MASK64))
    return h


def mix64(x: np.ndarray, key: int = 0) -> np.ndarray:
    """splitmix64 of ``x ^ key``, elementwise on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64) ^ np.uint64(key & _MASK64)
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(x: np.ndarray, key: int) -> np.ndarray:
    """A float in [0, 1) per element of ``x``, determined by (key, x)."""
    return (mix64(x, key) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class Permutation:
    """A keyed pseudo-random bijection of ``[0, n)``, evaluated on any array of positions.

    Feistel network: split ``x`` into halves ``(l, r)`` of ``b/2`` bits and apply
    ``(l, r) ← (r, l ⊕ F_k(r))`` for 4 round keys; this is a bijection of ``[0, 2^b)`` whatever
    ``F`` is. With ``2^b ≥ n`` the smallest even power, re-applying it to outputs ``≥ n``
    ("cycle walking") gives a bijection of ``[0, n)`` in fewer than 4 expected rounds.
    """

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError(f"Permutation needs n >= 1, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        self.round_keys = [combine(key, i) for i in range(4)]

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.round_keys:
            left, right = right, left ^ (mix64(right, k) & self.mask)
        return (left << self.half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        x = self._feistel(np.asarray(positions, dtype=np.uint64))
        out = x >= np.uint64(self.n)
        while out.any():
            x[out] = self._feistel(x[out])
            out = x >= np.uint64(self.n)
        return x.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Rank and worker
# ---------------------------------------------------------------------------------------------


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: explicit values, else ``torch.distributed``, else env, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank = int(os.environ.get("RANK", 0)) if rank is None else rank
            world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise DataError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


# ---------------------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------------------


class ShardedStream(IterableDataset):
    """Items ``0..n_items-1`` of each epoch, shuffled by (seed, epoch), sharded, resumable.

    Subclasses implement ``make_samples(epoch, items)`` returning one sample (a dict of tensors)
    per item index, vectorised over a block of items. ``with_index=True`` adds the item index and
    epoch to every sample (``"index"``, ``"epoch"``), for tests and debugging only.
    """

    block = 256  # items materialised at once (amortises the per-call numpy overhead)

    def __init__(
        self,
        n_items: int,
        *,
        seed: int,
        shuffle: bool,
        infinite: bool,
        rank: int = 0,
        world_size: int = 1,
        with_index: bool = False,
        name: str = "stream",
    ):
        super().__init__()
        self.n_items, self.seed, self.shuffle, self.infinite = int(n_items), int(seed), shuffle, infinite
        self.with_index, self.name = with_index, name
        self._set_rank(rank, world_size)

    def _set_rank(self, rank: int | None, world_size: int | None) -> None:
        self.rank, self.world_size = resolve_rank(rank, world_size)
        if self.n_items < self.world_size:
            raise DataError(
                f"{self.name}: {self.n_items} item(s) cannot be split over {self.world_size} rank(s); "
                "use more data, a shorter seq_len, or fewer ranks"
            )
        self._epoch, self._position = 0, 0  # the cursor: items yielded in this epoch
        self._resume: tuple[int, int] | None = None  # a loaded state, for the next __iter__

    def shard(self, rank: int | None = None, world_size: int | None = None) -> ShardedStream:
        """A copy of this stream (sharing its read-only tables) for one rank, at its start."""
        other = copy.copy(self)
        other._set_rank(rank, world_size)
        return other

    # --- what subclasses provide -------------------------------------------------------------
    def make_samples(self, epoch: int, items: np.ndarray) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    # --- order and sharding --------------------------------------------------------------------
    @property
    def items_per_rank(self) -> int:
        return self.n_items // self.world_size

    def items_for_worker(self, worker: int, n_workers: int) -> int:
        return len(range(worker, self.items_per_rank, n_workers))

    def positions(self, worker: int, n_workers: int, local: np.ndarray) -> np.ndarray:
        """Epoch positions of this worker's ``local``-th items: ``p = r + R·(w + W·i)``."""
        return self.rank + self.world_size * (worker + n_workers * local)

    def items_at(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return positions.astype(np.int64)
        return Permutation(self.n_items, combine(self.seed, epoch))(positions)

    # --- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or position < 0:
            raise DataError(f"{self.name}: invalid stream state {state!r}")
        self._epoch, self._position = epoch, position
        self._resume = (epoch, position)

    def _start(self) -> int:
        """Where a new iteration begins: a loaded state, else where a training stream stopped,
        else (a finite stream, even one abandoned half way) its beginning. Returns the epoch."""
        if self._resume is not None:
            self._epoch, self._position = self._resume
            self._resume = None
        elif not self.infinite:
            self._epoch, self._position = 0, 0
        return self._epoch

    # --- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, n_workers = _worker()
        n_local = self.items_for_worker(worker, n_workers)
        if n_local == 0:  # more workers than items on this rank: this worker has nothing to do
            return
        epoch = self._start()
        while True:
            for start in range(self._position, n_local, self.block):
                local = np.arange(start, min(start + self.block, n_local), dtype=np.int64)
                items = self.items_at(epoch, self.positions(worker, n_workers, local))
                samples = self.make_samples(epoch, items)
                for item, sample in zip(items.tolist(), samples):
                    if self.with_index:
                        sample["index"] = torch.tensor(item)
                        sample["epoch"] = torch.tensor(epoch)
                    # the state counts what has been handed out, so update it before the yield
                    self._position += 1
                    yield sample
            if not self.infinite:
                return
            epoch += 1
            self._epoch, self._position = epoch, 0


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

_GLOB_CHARS = set("*?[")


def expand_paths(patterns: Sequence[str] | str, *, what: str = "data.path") -> list[Path]:
    """Files named by paths or globs, in the given order (each glob sorted), without repeats."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [str(patterns)]
    if not patterns:
        raise DataError(f"{what} is empty: give one or more files or globs")
    out: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if _GLOB_CHARS & set(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise DataError(f"{what}: the glob {pattern!r} matches no file")
        else:
            if not os.path.exists(pattern):
                raise DataError(f"{what}: no such file: {pattern!r}")
            if os.path.isdir(pattern):
                raise DataError(f"{what}: {pattern!r} is a directory; give a glob such as '{pattern}/*.txt'")
            matches = [pattern]
        for m in matches:
            p = Path(m).resolve()
            if p not in out:
                out.append(p)
    return out


def strip_gz(path: Path) -> str:
    """The name's meaningful suffix(es), lower case, without a trailing .gz: 'x.jsonl.gz' -> '.jsonl'."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def open_bytes(path: Path) -> IO[bytes]:
    """Open for binary reading, decompressing gzip when the file starts with the gzip magic."""
    f = open(path, "rb")
    magic = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f, mode="rb") if magic == b"\x1f\x8b" else f  # type: ignore[return-value]


_STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


@contextlib.contextmanager
def reading(path: Path, where: Callable[[], str] = lambda: "") -> Iterator[None]:
    """Turn a truncated or corrupt gzip stream into a DataError naming the file and position."""
    try:
        yield
    except _STREAM_ERRORS as e:
        raise DataError(f"{path}{where()}: truncated or corrupt compressed file ({e})") from e


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number from 1, line without its end-of-line)``; errors on an empty file."""
    lineno = 0
    with open_bytes(path) as f, reading(path, lambda: f" after line {lineno}"):
        for raw in f:
            lineno += 1
            yield lineno, raw.rstrip(b"\r\n")
    if lineno == 0:
        raise DataError(f"{path}: empty file")


def decode_utf8(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from e


# ---------------------------------------------------------------------------------------------
# Cache: encoded corpora live in <cache_dir>/<kind>-<key>/, built once, atomically, under a lock
# ---------------------------------------------------------------------------------------------

CACHE_VERSION = 1


def cache_root(cache_dir: str = "") -> Path:
    root = cache_dir or os.environ.get("SSM_TRAIN_CACHE") or os.path.join("~", ".cache", "ssm_train", "data")
    return Path(os.path.expanduser(root))


def fingerprint(path: Path) -> dict[str, Any]:
    """What makes a cached encoding of ``path`` stale: its absolute path, size and mtime."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(obj: Any) -> str:
    blob = json.dumps({"version": CACHE_VERSION, "key": obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_dir(root: Path, kind: str, key: Any, build: Callable[[Path], None]) -> Path:
    """``root/kind-<hash(key)>``, running ``build(tmp_dir)`` first if it does not exist yet.

    Concurrent builders (DDP ranks on one node) serialise on a lock file; the result appears by
    an atomic rename, so a crashed build never leaves a half-written cache behind.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{kind}-{cache_key(key)}"
    if (final / "meta.json").exists():
        return final
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "meta.json").exists():
            return final
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            if not (tmp / "meta.json").exists():
                raise RuntimeError(f"cache builder for {kind} wrote no meta.json")
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class ArrayWriter:
    """Append numpy arrays of one dtype to a raw binary file, buffered; ``len`` = items written."""

    def __init__(self, path: Path, dtype: np.dtype, flush_items: int = 1 << 22):
        self.f = open(path, "wb")
        self.dtype, self.flush_items = np.dtype(dtype), flush_items
        self.parts: list[np.ndarray] = []
        self.pending = 0
        self.n = 0

    def add(self, a: np.ndarray) -> None:
        self.parts.append(np.asarray(a, dtype=self.dtype))
        self.pending += len(a)
        self.n += len(a)
        if self.pending >= self.flush_items:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.f.write(np.concatenate(self.parts).tobytes())
            self.parts, self.pending = [], 0

    def close(self) -> None:
        self.flush()
        self.f.close()

    def __len__(self) -> int:
        return self.n


class LazyMemmap:
    """A read-only memmap opened on first use in each process (pickles as its path, not its data)."""

    def __init__(self, path: Path, dtype: str, length: int):
        self.path, self.dtype, self.length = Path(path), dtype, int(length)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            if self.length == 0:
                self._array = np.zeros(0, dtype=self.dtype)
            else:
                self._array = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.length,))
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype, "length": self.length, "_array": None}

    def __len__(self) -> int:
        return self.length
