"""The built-in data kinds: importing this module registers every one of them.

``registry.py`` holds the table and knows no data module, so that each module can import it and
register itself without an import cycle; something must still import the modules, and this is
the one place that does. Ask for kinds through here, so that the table is complete::

    from ssm_train.data.kinds import build_datamodule, data_kinds

A new built-in kind is one file that calls ``register_data`` and one import line below. (This is
not ``ssm_train/data/__init__.py`` on purpose: that would load Lightning and every reader whenever
any ``ssm_train.data`` module is imported, e.g. ``data.config`` by ``ssm_train.config``.)
"""

from __future__ import annotations

# Each registers its kinds on import; this order (synthetic tasks, then corpora) is the order in
# which data_kinds() and the error messages list them.
from ssm_train.data import synthetic  # noqa: F401  copy | nonlinear | ode | recall
from ssm_train.data import modules  # noqa: F401  text | fasta | labelled
from ssm_train.data.registry import DataKind, build_datamodule, data_kind, data_kinds, register_data

__all__ = ["DataKind", "build_datamodule", "data_kind", "data_kinds", "register_data"]
