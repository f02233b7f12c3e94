"""The encoded-corpus cache: ``<cache_dir>/<kind>-<key>/``, built once, atomically, under a lock.

Every corpus is encoded once into flat arrays on disk (``ArrayWriter``) and then read through
memory maps (``LazyMemmap``), so that dataloader workers share the page cache instead of each
holding a copy. A cache entry is keyed by the inputs' ``fingerprint`` (absolute path, size, mtime)
and the encoding settings, so an edited file or another tokenizer is a new entry, never a stale one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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
