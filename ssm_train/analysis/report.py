"""What every ``ssm-train reproduce`` result shares: its return type, medians, and matplotlib.

A result is a function ``reproduce(quick: bool, out: Path) -> Result`` in its own module under
``ssm_train/analysis/`` and one line in ``ssm_train.reproduce.RESULTS``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
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
