"""ssm-train: train deep linear diagonal recurrences followed by position-wise MLPs."""

import os

# Large CPU tensors on transparent huge pages: glibc maps fresh 4 KB pages for every allocation
# of 32 MB or more, and a long sequence's activations are such allocations, written once per
# step; page faults then made an LRU token at L=65536 cost 1.8x one at L=1024 (1.2x with this,
# on an idle 2-core machine, 2026-12-03; benchmarks/long_context.py). PyTorch's CPU allocator reads the variable at allocation time,
# so setting it here is in time even after `import torch`; a user's own value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
