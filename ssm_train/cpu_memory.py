"""How CPU memory behaves under a long sequence's activations: two settings of the C allocators
that PyTorch's CPU tensors come from. Each yields to a value the user set in the environment.

- ``import ssm_train`` (its ``__init__``) sets ``THP_MEM_ALLOC_ENABLE=1``: PyTorch puts
  tensors of 2 MB or more on transparent huge pages. glibc maps fresh 4 KB pages for every
  allocation of 32 MB or more, and a long sequence's activations are such allocations, written
  once per step; page faults then made an LRU token at L=65536 cost 1.8x one at L=1024 (1.2x with
  this, on an idle 2-core machine, 2026-12-03; benchmarks/long_context.py). PyTorch reads the
  variable at allocation time, so setting it is in time even after ``import torch``.
- :func:`return_freed_blocks` (by ``fit`` and the benchmark under chunk checkpointing, when a
  sequence holds more than one chunk): glibc's
  mmap threshold fixed at :data:`CHUNK_MMAP_THRESHOLD`, as ``MALLOC_MMAP_THRESHOLD_`` would fix it.
  By default glibc raises the threshold to the size of every mapped block it frees (up to 32 MB),
  after which blocks up to that size come from its heap and stay resident once freed, wherever a
  live block sits above them. Chunk checkpointing allocates and frees such blocks chunk after
  chunk: at L=65536 (LRU, d_model 256, 4096-step chunks) that held the peak resident memory of a
  step at 1145 MB, 633 MB with the threshold fixed (no checkpointing: 2782 MB), for 1.04x the
  time that morning; later the same day the fresh pages cost more (L=16384: LRU 1.4x, S4D 1.6x
  the time of glibc's default; docs/RESULTS.md). Not for every run: mapping each block afresh
  costs page faults where the heap would have reused it (1-MB chunks took 2.2x the time, and a
  1024-token sequence, one chunk, 2.3x).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
CHUNK_MMAP_THRESHOLD = 256 << 10  # bytes: blocks of 256 KB or more are mapped, and unmapped when freed


def return_freed_blocks(nbytes: int = CHUNK_MMAP_THRESHOLD) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, nbytes)`` unless ``$MALLOC_MMAP_THRESHOLD_`` is set; True if it
    was applied (glibc only: False on musl or macOS)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


def for_checkpointing(policy: str, seq_len: int, checkpoint_chunk: int) -> bool:
    """`return_freed_blocks` where it pays: chunk checkpointing of sequences longer than one chunk
    (the rule of the module docstring, for `fit` and the benchmark alike); True if applied."""
    return policy == "chunk" and seq_len > checkpoint_chunk and return_freed_blocks()
