"""ssm-train: train deep linear diagonal recurrences followed by position-wise MLPs."""

__version__ = "0.1.0"
