"""What every ``ssm-train reproduce`` result shares: its return type, medians, and matplotlib.

A result is a function ``reproduce(quick: bool, out: Path) -> Result`` in its own module under
``ssm_train/analysis/`` and one line in ``ssm_train.reproduce.RESULTS``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

Result = tuple[dict, Callable[[Path], None], str]  # (JSON data {"meta", "rows", ...}, plot(path), markdown)


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def median_table(rows: list[dict], key: str) -> dict[tuple[str, int], float]:
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        groups[r["spectrum"], r["N"]].append(r[key])
    return {k: median(v) for k, v in groups.items()}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_xticks(ax, ticks) -> None:
    """Log x axis labelled exactly at ``ticks`` (the sizes of a result), without minor ticks."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(plt.NullLocator())


def project_root() -> Path:
    """The checkout whose configs/ (and ../shared/data) the experiments name relative to it."""
    return Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside, restored after (small models: one thread is
    fastest and shares a busy machine best)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-run banners (model summary, seed, devices) go nowhere; warnings still show."""
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
