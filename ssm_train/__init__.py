"""ssm-train: train deep linear diagonal recurrences followed by position-wise MLPs."""

import os

# Large CPU tensors on transparent huge pages (why and what it measured: ssm_train/cpu_memory.py).
# Set here rather than by importing that module, so that importing the package loads nothing else.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
