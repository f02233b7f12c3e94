"""Labelled sequences for classification: one (sequence or text, label) per row.

Sources (each optionally ``.gz``):

- ``.jsonl``: one object per line; the input is ``seq_field`` when the tokenizer is ``nucleotide``
  and ``text_field`` otherwise, the label is ``label_field``;
- ``.csv`` / ``.tsv``: a header row naming the same fields;
- FASTA (``.fa``, ``.fasta``, ``.fna``, ...; nucleotide tokenizer only): one record per row, its
  label read from the header by the regex ``header_label`` (group 1), by default the header's last
  word after whitespace or ``|`` (``>chr1:100-300 Oct4``, ``>seq7|MafK``).

A row without a label, without its input field, or with an empty input is an error naming the file
and line. The rows are tokenized once into the cache (``tokens.bin`` + ``offsets.bin`` +
``labels.bin`` per split). The class map is ``class_names`` from the config if given, else the
sorted labels of the training rows; it travels with the checkpoint in ``DataSpec.class_names``, and
a validation label outside it is an error. Sequences longer than ``seq_len`` are truncated to their
first ``seq_len`` tokens (the count is logged); a batch is padded to its longest row:
``{"inputs": [B, L] int64 (pad id beyond each row), "mask": [B, L] bool, "targets": [B] int64}``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssm_train.data.cache import ArrayWriter, LazyMemmap, cache_root, cached_dir, fingerprint, read_json, write_json
from ssm_train.data.fasta import FASTA_SUFFIXES, load_fasta
from ssm_train.data.files import iter_lines, open_bytes, reading, strip_gz
from ssm_train.data.stream import ShardedStream
from ssm_train.data.text import in_validation, json_field, json_object, token_dtype
from ssm_train.data.tokenizers import (
    CharTokenizer,
    NucleotideTokenizer,
    Tokenizer,
    build_tokenizer,
    tokenizer_from_state,
)
from ssm_train.errors import DataError

log = logging.getLogger(__name__)

LABELLED_SUFFIXES = (".jsonl", ".csv", ".tsv", *FASTA_SUFFIXES)
_LAST_WORD = r"[\s|]([^\s|]+)\s*$"
_LETTERS = np.frombuffer(b"ACGTN", dtype=np.uint8)

# ---------------------------------------------------------------------------------------------
# Rows: (place, input text, label)
# ---------------------------------------------------------------------------------------------


def iter_rows(
    path: Path, *, input_field: str, label_field: str, header_label: str = "", cache_dir: str = ""
) -> Iterator[tuple[int, str, str]]:
    """``(line, input, label)`` for every row of a labelled file."""
    suffix = strip_gz(path)
    if suffix == ".jsonl":
        yield from _jsonl_rows(path, input_field, label_field)
    elif suffix in (".csv", ".tsv"):
        yield from _table_rows(path, input_field, label_field, "\t" if suffix == ".tsv" else ",")
    elif suffix in FASTA_SUFFIXES:
        yield from _fasta_rows(path, header_label, cache_dir)
    else:
        raise DataError(f"{path}: unsupported labelled file type; expected {', '.join(LABELLED_SUFFIXES)} (or .gz)")


def _label(value: Any, path: Path, line: int, field: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}:{line}: row without a label (field {field!r} is missing or empty)")
    return str(value).strip()


def _input(value: str, path: Path, line: int, field: str) -> str:
    if not value:
        raise DataError(f"{path}:{line}: empty input (field {field!r})")
    return value


def _jsonl_rows(path: Path, input_field: str, label_field: str) -> Iterator[tuple[int, str, str]]:
    n = 0
    for lineno, raw in iter_lines(path):
        if not raw.strip():
            continue
        row = json_object(raw, path, lineno)
        text = json_field(row, input_field, path, lineno, "data.seq_field / data.text_field")
        try:
            label = json_field(row, label_field, path, lineno, "data.label_field")
        except DataError as e:
            raise DataError(f"{e} (a row without a label)") from e
        n += 1
        yield lineno, _input(text, path, lineno, input_field), _label(label, path, lineno, label_field)
    if n == 0:
        raise DataError(f"{path}: no rows")


def _table_rows(path: Path, input_field: str, label_field: str, delimiter: str) -> Iterator[tuple[int, str, str]]:
    n, line = 0, 0
    with open_bytes(path) as raw, reading(path, lambda: f" after line {line}"):
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        reader = csv.DictReader(text, delimiter=delimiter)
        try:
            fields = reader.fieldnames
            if fields is None:
                raise DataError(f"{path}: empty file")
            for name in (input_field, label_field):
                if name not in fields:
                    raise DataError(f"{path}:1: no column {name!r} in the header (columns: {', '.join(fields)})")
            for row in reader:
                line = reader.line_num
                if not any(v for v in row.values() if isinstance(v, str) and v.strip()):
                    continue
                n += 1
                yield (
                    line,
                    _input(row[input_field] or "", path, line, input_field),
                    _label(row[label_field], path, line, label_field),
                )
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{line + 1}: not valid UTF-8 ({e.reason})") from e
        except csv.Error as e:
            raise DataError(
                f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({e})"
            ) from e
    if n == 0:
        raise DataError(f"{path}: no rows")


def _fasta_rows(path: Path, header_label: str, cache_dir: str) -> Iterator[tuple[int, str, str]]:
    """FASTA records as rows (sequence re-spelt as "ACGTN" from the cached codes, label from the header)."""
    try:
        pattern = re.compile(header_label or _LAST_WORD)
    except re.error as e:
        raise DataError(f"data.header_label={header_label!r} is not a regular expression ({e})") from e
    if pattern.groups < 1:
        raise DataError(f"data.header_label={header_label!r} needs a group capturing the label, e.g. 'label=(\\w+)'")
    fasta = load_fasta(path, cache_dir)
    codes = fasta.codes.array
    for r in fasta.records:
        m = pattern.search(r["header"])
        if m is None or not m.group(1):
            raise DataError(
                f"{path}:{r['line']}: row without a label: header {r['header']!r} does not match {pattern.pattern!r}"
            )
        if r["length"] == 0:
            raise DataError(f"{path}:{r['line']}: record {r['name']!r} has an empty sequence")
        seq = np.asarray(codes[r["offset"] : r["offset"] + r["length"]])
        yield r["line"], _LETTERS[seq].tobytes().decode("ascii"), m.group(1)


def encode_rows(tok: Tokenizer, rows: list[tuple[Path, int, str]]) -> list[np.ndarray]:
    """Token ids of each row's text; a DataError naming the row's file:line if one cannot be encoded."""
    try:
        ids = tok.encode_batch([text for *_, text in rows])
    except DataError:  # a bad row; any other error is a bug and keeps its traceback
        for path, line, text in rows:  # find the culprit
            try:
                tok.encode(text)
            except DataError as e:
                raise DataError(f"{path}:{line}: {e}") from e
        raise
    for (path, line, _), x in zip(rows, ids):
        if len(x) == 0:
            raise DataError(f"{path}:{line}: input shorter than one token ({getattr(tok, 'k', 1)} bases)")
    return ids


# ---------------------------------------------------------------------------------------------
# The tokenized, cached set
# ---------------------------------------------------------------------------------------------


@dataclass
class LabelledSplit:
    tokens: LazyMemmap
    offsets: LazyMemmap  # row i is tokens[offsets[i] : offsets[i + 1]]
    labels: np.ndarray  # class index per row
    n_rows: int


@dataclass
class LabelledSet:
    tokenizer: Tokenizer
    class_names: list[str]
    train: LabelledSplit
    val: LabelledSplit
    meta: dict[str, Any]


def encode_labelled(
    train_files: Sequence[Path],
    val_files: Sequence[Path] = (),
    *,
    tokenizer: str = "byte",
    kmer: int = 1,
    text_field: str = "text",
    seq_field: str = "seq",
    label_field: str = "label",
    header_label: str = "",
    val_fraction: float = 0.05,
    class_names: Sequence[str] = (),
    cache_dir: str = "",
) -> LabelledSet:
    """Tokenize the rows into the cache (once) and map their labels to class indices."""
    train_files, val_files = [Path(p) for p in train_files], [Path(p) for p in val_files]
    if not 0 <= val_fraction < 1:
        raise DataError(f"data.val_fraction={val_fraction}; expected 0 <= val_fraction < 1")
    fixed = None if tokenizer == "char" else build_tokenizer(tokenizer, kmer=kmer)
    input_field = seq_field if isinstance(fixed, NucleotideTokenizer) else text_field
    for p in [*train_files, *val_files]:
        if strip_gz(p) in FASTA_SUFFIXES and not isinstance(fixed, NucleotideTokenizer):
            raise DataError(f"{p}: a labelled FASTA file needs data.tokenizer=nucleotide, not {tokenizer!r}")
    key = {
        "train": [fingerprint(p) for p in train_files],
        "val": [fingerprint(p) for p in val_files],
        "tokenizer": "char" if fixed is None else fixed.state_dict(),
        "input_field": input_field,
        "label_field": label_field,
        "header_label": header_label,
        "val_fraction": 0.0 if val_files else val_fraction,
    }

    def rows(files: Sequence[Path]) -> Iterator[tuple[Path, int, int, str, str]]:
        for path in files:
            for index, (line, text, label) in enumerate(
                iter_rows(
                    path,
                    input_field=input_field,
                    label_field=label_field,
                    header_label=header_label,
                    cache_dir=cache_dir,
                )
            ):
                yield path, index, line, text, label

    def build(out: Path) -> None:
        tok = fixed or CharTokenizer.from_texts(t for *_, t, _ in rows([*train_files, *val_files]))
        dtype = token_dtype(tok.vocab_size)
        splits = ("train", "val")
        tokens = {s: ArrayWriter(out / f"{s}_tokens.bin", np.dtype(dtype)) for s in splits}
        offsets = {s: ArrayWriter(out / f"{s}_offsets.bin", np.dtype(np.int64)) for s in splits}
        labels: dict[str, list[str]] = {s: [] for s in splits}
        first_seen: dict[str, dict[str, str]] = {s: {} for s in splits}
        pending: dict[str, list[tuple[Path, int, str]]] = {s: [] for s in splits}
        for s in splits:
            offsets[s].add(np.zeros(1, np.int64))

        def flush(split: str) -> None:
            batch = pending[split]
            if not batch:
                return
            ids = encode_rows(tok, batch)
            lengths = np.array([len(x) for x in ids])
            offsets[split].add(len(tokens[split]) + np.cumsum(lengths))
            tokens[split].add(np.concatenate(ids))
            batch.clear()

        sources = [("train", train_files), ("val", val_files)] if val_files else [("train", train_files)]
        for default_split, files in sources:
            for path, index, line, text, label in rows(files):
                split = default_split
                if not val_files and in_validation(path.name, index, val_fraction):
                    split = "val"
                if isinstance(tok, NucleotideTokenizer):  # whole k-mers only: drop a ragged tail
                    text = text[: len(text) - len(text) % tok.k]
                pending[split].append((path, line, text))
                labels[split].append(label)
                first_seen[split].setdefault(label, f"{path}:{line}")
                if len(pending[split]) >= 1024:
                    flush(split)
        for s in splits:
            flush(s)
        seen = sorted(set(labels["train"]) | set(labels["val"]))
        index = {name: i for i, name in enumerate(seen)}
        for s in splits:
            tokens[s].close()
            offsets[s].close()
            np.array([index[lb] for lb in labels[s]], dtype=np.int32).tofile(out / f"{s}_labels.bin")
        tok.save(out / "tokenizer.json")
        write_json(
            out / "meta.json",
            {
                "tokenizer": tok.state_dict(),
                "dtype": dtype,
                "labels": seen,
                "first_seen": first_seen,
                "rows": {s: len(labels[s]) for s in splits},
                "tokens": {s: len(tokens[s]) for s in splits},
            },
        )

    directory = cached_dir(cache_root(cache_dir), "labelled", key, build)
    meta = read_json(directory / "meta.json")
    if meta["rows"]["train"] == 0:
        raise DataError(f"data.path: every row went to validation; lower val_fraction ({val_fraction})")
    names = list(class_names) or sorted(meta["first_seen"]["train"])
    if len(set(names)) != len(names):
        raise DataError(f"data.class_names has repeats: {names}")
    class_of = {n: i for i, n in enumerate(names)}
    for s in ("train", "val"):
        for label, place in meta["first_seen"][s].items():
            if label not in class_of:
                raise DataError(f"{place}: label {label!r} is not a known class ({', '.join(names[:50])})")
    lut = np.array([class_of[n] for n in meta["labels"]], dtype=np.int64)

    def split(s: str) -> LabelledSplit:
        n = meta["rows"][s]
        raw = np.fromfile(directory / f"{s}_labels.bin", dtype=np.int32) if n else np.zeros(0, np.int32)
        return LabelledSplit(
            tokens=LazyMemmap(directory / f"{s}_tokens.bin", meta["dtype"], meta["tokens"][s]),
            offsets=LazyMemmap(directory / f"{s}_offsets.bin", "int64", n + 1),
            labels=lut[raw],
            n_rows=n,
        )

    return LabelledSet(tokenizer_from_state(meta["tokenizer"]), names, split("train"), split("val"), meta)


# ---------------------------------------------------------------------------------------------
# Stream and batches
# ---------------------------------------------------------------------------------------------


class LabelledRows(ShardedStream):
    """Rows as ``{"inputs": ids[:seq_len] (int64), "targets": class (int64 scalar)}``."""

    def __init__(self, split: LabelledSplit, seq_len: int, *, name: str = "labelled", **stream: Any):
        if seq_len < 1:
            raise DataError(f"data.seq_len={seq_len}; expected >= 1")
        self.split, self.seq_len = split, seq_len
        lengths = np.diff(split.offsets.array)
        if (lengths > seq_len).any():
            log.warning(
                "%s: %d of %d rows longer than seq_len=%d are truncated (longest: %d)",
                name,
                int((lengths > seq_len).sum()),
                len(lengths),
                seq_len,
                int(lengths.max()),
            )
        super().__init__(split.n_rows, name=name, **stream)

    def make_samples(self, epoch: int, items: np.ndarray) -> list[dict[str, torch.Tensor]]:
        offsets, tokens = self.split.offsets.array, self.split.tokens.array
        out = []
        for i in items.tolist():
            a, b = int(offsets[i]), int(offsets[i + 1])
            ids = np.asarray(tokens[a : min(b, a + self.seq_len)], dtype=np.int64)
            out.append({"inputs": torch.from_numpy(ids), "targets": torch.tensor(int(self.split.labels[i]))})
        return out


class PadCollate:
    """Stack rows of different lengths: pad ``inputs`` with ``pad_id`` and mark real tokens in ``mask``."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(s["inputs"]) for s in samples)
        inputs = torch.full((len(samples), length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(samples), length), dtype=torch.bool)
        for i, s in enumerate(samples):
            n = len(s["inputs"])
            inputs[i, :n] = s["inputs"]
            mask[i, :n] = True
        batch = {"inputs": inputs, "mask": mask}
        for key in samples[0]:
            if key != "inputs":
                batch[key] = torch.stack([s[key] for s in samples])
        return batch
