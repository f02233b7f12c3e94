"""Where the project's own files are found: the working directory first, then the source checkout.

A user running from their project folder with its own ``configs/`` gets those; anyone else (an
installed package, a SLURM job started elsewhere) gets the checkout's. One rule, used for the
default experiment, the DeepSpeed JSON configs and ``slurm/train.sh``.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def search_roots() -> tuple[Path, ...]:
    return Path.cwd(), REPO_ROOT


def project_file(relative: str | Path) -> Path | None:
    """``relative`` under the working directory, else under the checkout; None if in neither."""
    for root in search_roots():
        if (root / relative).is_file():
            return root / relative
    return None
