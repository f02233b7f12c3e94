"""ssm-train: train deep linear diagonal recurrences followed by position-wise MLPs."""

from ssm_train import cpu_memory

cpu_memory.use_huge_pages()  # large CPU tensors on transparent huge pages: see ssm_train/cpu_memory.py

__version__ = "0.1.0"
