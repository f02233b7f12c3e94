"""``data.kind`` -> the data module that serves it."""

from __future__ import annotations

import lightning as L

from ssm_train.data.config import DataConfig
from ssm_train.data.synthetic import TASKS as SYNTHETIC_TASKS, SyntheticDataModule

CORPUS_KINDS = ("text", "fasta", "labelled")


def data_kinds() -> tuple[str, ...]:
    return tuple(SYNTHETIC_TASKS) + CORPUS_KINDS


def build_datamodule(cfg: DataConfig, seed: int) -> L.LightningDataModule:
    """The data module for ``cfg.kind``; it exposes ``.spec`` (a DataSpec) once built."""
    if cfg.kind in SYNTHETIC_TASKS:
        return SyntheticDataModule(cfg, seed)
    if cfg.kind in CORPUS_KINDS:
        from ssm_train.data.modules import build_datamodule as build_corpus

        return build_corpus(cfg, seed)
    raise ValueError(f"data.kind='{cfg.kind}' is not one of {', '.join(data_kinds())}")
