"""``data.kind`` -> the data module that serves it: one registry, filled by the data modules.

Each data module registers its kind(s) in its own file, beside its class::

    register_data("text", TextDataModule, summary="byte/char/HF tokens of documents (LM)")

and ``data_kinds()``, ``build_datamodule()`` and the config's check of ``data.kind`` read this
table, so there is no list of kinds to keep in step anywhere else. This module imports no data
module (they import it, to register): that is what keeps the import graph acyclic. The built-in
kinds are registered by importing ``ssm_train.data.kinds``, which is what callers import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ssm_train.data.config import DataConfig
from ssm_train.errors import DataError

if TYPE_CHECKING:  # Lightning is only needed by the modules themselves, not to look one up
    import lightning as L

DataModuleFactory = Callable[..., "L.LightningDataModule"]
"""``factory(cfg: DataConfig, seed: int, **kw) -> LightningDataModule`` with a ``.spec`` (a
DataSpec) once built; a module class is such a factory. ``kw`` are test hooks (rank, world_size)."""


@dataclass(frozen=True)
class DataKind:
    """One registered ``data.kind``: what builds it, and one line saying what it serves."""

    kind: str
    factory: DataModuleFactory
    summary: str = ""


_KINDS: dict[str, DataKind] = {}  # in registration order: data_kinds() lists them so


def register_data(
    kind: str, factory: DataModuleFactory | None = None, *, summary: str = ""
) -> Any:
    """Make ``data.kind=<kind>`` build ``factory(cfg, seed, **kw)``.

    Called directly (``register_data("fasta", FastaDataModule)``) it returns the factory; without
    a factory it is a class or function decorator (``@register_data("mine")``). Registering a kind
    twice is a programming error (two modules claiming one name), hence a ValueError, not a
    DataError: no config can cause or fix it.
    """
    if factory is None:
        return lambda f: register_data(kind, f, summary=summary)
    if not kind or not kind.isidentifier():
        raise ValueError(f"data kind {kind!r}: expected a short identifier (it is typed as data.kind=...)")
    if kind in _KINDS:
        raise ValueError(f"data kind {kind!r} is already registered (by {_KINDS[kind].factory!r})")
    _KINDS[kind] = DataKind(kind, factory, summary)
    return factory


def data_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order (the order error messages list them in)."""
    return tuple(_KINDS)


def data_kind(kind: str) -> DataKind:
    """The registration of ``kind``; a DataError naming ``data.kind`` and the valid kinds."""
    try:
        return _KINDS[kind]
    except KeyError:
        raise DataError(f"data.kind={kind!r} is not one of {', '.join(data_kinds())}") from None


def build_datamodule(cfg: DataConfig, seed: int, **kw: Any) -> L.LightningDataModule:
    """The data module for ``cfg.kind``; it exposes ``.spec`` (a DataSpec) once built.

    Construction reads (or encodes) the data, so a bad file or setting is a DataError here,
    before any training starts.
    """
    return data_kind(cfg.kind).factory(cfg, seed, **kw)
