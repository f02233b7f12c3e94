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

``ContiguousStream`` (``data.window_sampling=contiguous``) is the other addressing: instead of
shuffled items, each batch row reads one section of the token array window after window, the
window of row ``b`` in global batch ``k`` being a function of ``(k, b)`` alone (truncated BPTT).

File reading lives in ``files.py`` and the encoded-corpus cache in ``cache.py``: this module is
only the arithmetic of who reads which item when, so that it can be read (and tested) on its own.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ssm_train.errors import DataError


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
# Contiguous streams: one long stream per batch row (truncated BPTT)
# ---------------------------------------------------------------------------------------------


class ContiguousStream(IterableDataset):
    """Each batch row reads one section of a token array, window after window.

    The array (``n_tokens`` tokens: all documents or records, concatenated) is cut into
    ``S = world_size · batch_size`` sections of ``section_len = ⌊n_tokens / S⌋`` tokens (the
    remainder is dropped); each holds ``n_windows = ⌊(section_len - 1) / L⌋`` windows of ``L + 1``
    tokens at stride ``L``, so window ``j + 1``'s first input is the token after window ``j``'s last
    input. Row ``b`` of rank ``r`` reads section ``s = r·batch_size + b``, and global batch ``k``
    gives it window ``k mod n_windows`` (epoch ``k // n_windows``: a training stream starts its
    sections over; a validation stream stops after ``n_windows`` batches).

    Everything is a function of ``(k, b)``: dataloader worker ``w`` of ``W`` makes batches
    ``k = w, w + W, w + 2W, ...``, each as ``batch_size`` consecutive samples (rows ``0..B-1``),
    which is the order in which ``StatefulDataLoader`` collates and takes them (batch ``k`` from
    worker ``k mod W``). A worker's state is the number of samples it has yielded, ``position``
    (with the section count, checked on resume); the loader keeps one per worker.

    Subclasses implement ``make_windows(starts)`` -> ``(tokens [n, L + 1] int64, documents
    [n, L] bool)``: the windows whose first input is token ``starts[i]``, and where a document (or
    record) starts at an input. Samples are ``inputs``, ``targets``, ``resets`` (documents, and
    column 0 at a section start) and ``offset`` (the window's first input within its section).
    """

    def __init__(
        self,
        n_tokens: int,
        seq_len: int,
        batch_size: int,
        *,
        infinite: bool,
        rank: int = 0,
        world_size: int = 1,
        with_index: bool = False,
        name: str = "stream",
        **_ignored: Any,  # seed, shuffle: a contiguous stream has one fixed order
    ):
        super().__init__()
        if seq_len < 1:
            raise DataError(f"data.seq_len={seq_len}; expected >= 1")
        if batch_size < 1:
            raise DataError(f"data.batch_size={batch_size}; expected >= 1")
        self.n_tokens, self.seq_len, self.batch_size = int(n_tokens), int(seq_len), int(batch_size)
        self.infinite, self.with_index, self.name = infinite, with_index, name
        self._set_rank(rank, world_size)

    def _set_rank(self, rank: int | None, world_size: int | None) -> None:
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.n_sections = self.world_size * self.batch_size
        self.section_len = self.n_tokens // self.n_sections
        self.n_windows = max(0, (self.section_len - 1) // self.seq_len)
        if self.n_windows < 1:
            raise DataError(
                f"{self.name}: data.window_sampling=contiguous cuts the {self.n_tokens} tokens into "
                f"world size {self.world_size} × data.batch_size {self.batch_size} = {self.n_sections} sections "
                f"of {self.section_len} tokens, shorter than one window of seq_len + 1 = {self.seq_len + 1}; "
                "use a smaller data.batch_size, a shorter data.seq_len, fewer ranks or more data"
            )
        self._position = 0  # samples this worker has yielded
        self._resume: int | None = None

    def shard(self, rank: int | None = None, world_size: int | None = None) -> ContiguousStream:
        """A copy of this stream for one rank (its sections laid out for that world size), at its start."""
        other = copy.copy(self)
        other._set_rank(rank, world_size)
        return other

    @property
    def n_items(self) -> int:
        """Windows per epoch over all ranks."""
        return self.n_sections * self.n_windows

    def section_start(self, section: int | np.ndarray) -> int | np.ndarray:
        return section * self.section_len

    # --- what subclasses provide -------------------------------------------------------------
    def make_windows(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # --- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"position": self._position, "sections": self.n_sections}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = int(state["position"])
        if position < 0:
            raise DataError(f"{self.name}: invalid stream state {state!r}")
        sections = int(state.get("sections", self.n_sections))
        if sections != self.n_sections:
            raise DataError(
                f"{self.name}: the saved contiguous stream has {sections} sections, this run "
                f"{self.n_sections} (world size {self.world_size} × data.batch_size {self.batch_size}); "
                "data.window_sampling=contiguous resumes with the same world size × batch size"
            )
        self._position = position
        self._resume = position

    def _start(self) -> None:
        if self._resume is not None:
            self._position, self._resume = self._resume, None
        elif not self.infinite:
            self._position = 0

    # --- batches -----------------------------------------------------------------------------------
    def batch_samples(self, k: int) -> list[dict[str, torch.Tensor]]:
        """The ``batch_size`` samples (rows) of global batch ``k`` on this rank."""
        epoch, j = divmod(k, self.n_windows)
        sections = self.rank * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        offset = j * self.seq_len
        windows, documents = self.make_windows(self.section_start(sections) + offset)
        resets = documents.copy()
        if j == 0:
            resets[:, 0] = True
        w = torch.from_numpy(windows)
        r = torch.from_numpy(resets)
        off = torch.tensor(offset, dtype=torch.int64)
        samples = [
            {"inputs": x, "targets": y, "resets": z, "offset": off}
            for x, y, z in zip(w[:, :-1].unbind(0), w[:, 1:].unbind(0), r.unbind(0))
        ]
        if self.with_index:
            for s, sample in zip(sections.tolist(), samples):
                sample["index"] = torch.tensor(s * self.n_windows + j)
                sample["epoch"] = torch.tensor(epoch)
        return samples

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, n_workers = _worker()
        self._start()
        local, row = divmod(self._position, self.batch_size)
        while True:
            k = worker + n_workers * local
            if not self.infinite and k >= self.n_windows:
                return
            samples = self.batch_samples(k)
            for sample in samples[row:]:
                self._position += 1  # the state counts what has been handed out: update it before the yield
                yield sample
            local, row = local + 1, 0
