"""Text corpora for language modelling: documents → one token stream → windows of ``seq_len + 1``.

Inputs are ``.txt``, ``.jsonl`` (either optionally ``.gz``) and ``.parquet`` (needs pyarrow).
What a document is:

- ``.txt``: set by ``text_document``: ``paragraph`` (default: a run of non-blank lines, ended by a
  blank line; its lines are joined by ``\\n``), ``line`` (each non-blank line) or ``file``;
- ``.jsonl``: one JSON object per line, the document being its ``text_field``;
- ``.parquet``: one row, the document being its ``text_field`` column.

The corpus is read line by line (memory does not grow with its size), tokenized once, and written
into a cache directory as two flat token arrays, ``train.bin`` and ``val.bin``, each the
documents' tokens with ``<eos>`` after every document::

    d₁ <eos> d₂ <eos> d₃ <eos> ...

Window ``i`` is ``tokens[i·L : i·L + L + 1]`` (``L = seq_len``): consecutive windows share one
token, so each token is a target exactly once, and a batch is ``inputs = w[:-1]``,
``targets = w[1:]``, with ``resets`` True at column 0 and at every ``<eos>`` input (the
separator opens the next document). With ``data.window_sampling=contiguous`` (``TextStreams``),
each batch row instead reads one section of the array window after window, for truncated BPTT
(``stream.ContiguousStream``). The train/validation split is either the files in ``val_path``, or a
deterministic ``val_fraction`` of the documents, chosen by a hash of (file name, document index):
the same on every machine and for every seed.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssm_train.data.cache import ArrayWriter, LazyMemmap, cache_root, cached_dir, fingerprint, read_json, write_json
from ssm_train.data.files import decode_utf8, iter_lines, strip_gz
from ssm_train.data.stream import ContiguousStream, ShardedStream, combine
from ssm_train.data.tokenizers import CharTokenizer, Tokenizer, build_tokenizer, tokenizer_from_state
from ssm_train.errors import DataError

log = logging.getLogger(__name__)

DOCUMENT_KINDS = ("paragraph", "line", "file")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")

# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


def iter_documents(path: Path, *, document: str = "paragraph", text_field: str = "text") -> Iterator[tuple[int, str]]:
    """``(line or row where the document starts, its text)`` for every non-empty document."""
    suffix = strip_gz(path)
    if suffix == ".txt":
        if document not in DOCUMENT_KINDS:
            raise DataError(f"data.text_document={document!r}; valid: {' | '.join(DOCUMENT_KINDS)}")
        docs = _txt_documents(path, document)
    elif suffix == ".jsonl":
        docs = _jsonl_documents(path, text_field)
    elif suffix == ".parquet" and not path.name.lower().endswith(".gz"):
        docs = _parquet_documents(path, text_field)
    else:
        raise DataError(f"{path}: unsupported text file type; expected one of {', '.join(TEXT_SUFFIXES)}")
    n = 0
    for n, doc in enumerate(docs, 1):
        yield doc
    if n == 0:
        raise DataError(f"{path}: no documents (the file holds only blank lines or empty texts)")


def _txt_documents(path: Path, document: str) -> Iterator[tuple[int, str]]:
    lines: list[str] = []
    start = 0
    for lineno, raw in iter_lines(path):
        text = decode_utf8(raw, path, lineno)
        blank = not text.strip()
        if document == "line":
            if not blank:
                yield lineno, text
        elif document == "file" or not blank:
            if not lines:
                start = lineno
            lines.append(text)
        elif lines:  # a blank line ends a paragraph
            yield start, "\n".join(lines)
            lines = []
    if lines and "\n".join(lines).strip():
        yield start, "\n".join(lines)


def _jsonl_documents(path: Path, field: str) -> Iterator[tuple[int, str]]:
    for lineno, raw in iter_lines(path):
        if not raw.strip():
            continue
        value = json_field(json_object(raw, path, lineno), field, path, lineno, "data.text_field")
        if value:
            yield lineno, value


def json_object(raw: bytes, path: Path, lineno: int) -> dict[str, Any]:
    """The JSON object on one line, or a DataError naming file:line."""
    try:
        row = json.loads(raw)
    except UnicodeDecodeError:
        decode_utf8(raw, path, lineno)  # raises with the column
        raise
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def json_field(row: dict[str, Any], field: str, path: Path, lineno: int, option: str) -> str:
    """The string (or number) ``field`` of a JSON row; "" for null; a DataError if absent."""
    if field not in row:
        raise DataError(f"{path}:{lineno}: no field {field!r} (fields: {', '.join(row) or 'none'}); set {option}")
    value = row[field]
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DataError(f"{path}:{lineno}: field {field!r} holds a {type(value).__name__}, expected a string")
    return str(value)


def _parquet_documents(path: Path, field: str) -> Iterator[tuple[int, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from e
    pf = pq.ParquetFile(path)
    if field not in pf.schema_arrow.names:
        raise DataError(
            f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); set data.text_field"
        )
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            row += 1
            if text:
                yield row, str(text)


def in_validation(file_name: str, index: int, fraction: float) -> bool:
    """Whether document/row ``index`` of the file called ``file_name`` is held out.

    Keyed by the file's *name* (not its directory), so the split is the same on every machine.
    """
    if fraction <= 0:
        return False
    u = combine(zlib.crc32(file_name.encode()), index) / 2.0**64
    return u < fraction


# ---------------------------------------------------------------------------------------------
# Encoded corpus
# ---------------------------------------------------------------------------------------------


@dataclass
class TextCorpus:
    """The tokenized corpus in the cache: ``train`` / ``val`` token arrays and their tokenizer."""

    directory: Path
    tokenizer: Tokenizer
    train: LazyMemmap
    val: LazyMemmap
    meta: dict[str, Any]


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def encode_text_corpus(
    train_files: Sequence[Path],
    val_files: Sequence[Path] = (),
    *,
    tokenizer: str = "byte",
    document: str = "paragraph",
    text_field: str = "text",
    val_fraction: float = 0.05,
    cache_dir: str = "",
) -> TextCorpus:
    """Tokenize the corpus into the cache (once; later calls reuse it) and open it."""
    train_files, val_files = [Path(p) for p in train_files], [Path(p) for p in val_files]
    if not 0 <= val_fraction < 1:
        raise DataError(f"data.val_fraction={val_fraction}; expected 0 <= val_fraction < 1")
    fixed = None if tokenizer == "char" else build_tokenizer(tokenizer)
    key = {
        "train": [fingerprint(p) for p in train_files],
        "val": [fingerprint(p) for p in val_files],
        "tokenizer": "char" if fixed is None else fixed.state_dict(),
        "document": document,
        "text_field": text_field,
        "val_fraction": 0.0 if val_files else val_fraction,
    }

    def build(out: Path) -> None:
        def documents(files: Sequence[Path]) -> Iterator[tuple[Path, int, int, str]]:
            for path in files:
                for index, (lineno, text) in enumerate(iter_documents(path, document=document, text_field=text_field)):
                    yield path, index, lineno, text

        tok = fixed
        if tok is None:  # a character vocabulary: one extra pass over the whole corpus
            tok = CharTokenizer.from_texts(text for *_, text in documents([*train_files, *val_files]))
            log.info(
                "built a %d-character vocabulary from %d file(s)", len(tok.chars), len(train_files) + len(val_files)
            )
        dtype = token_dtype(tok.vocab_size)
        writers = {s: ArrayWriter(out / f"{s}.bin", np.dtype(dtype)) for s in ("train", "val")}
        docs = {"train": 0, "val": 0}
        unknown: list[Any] = [0, None]  # count, first place

        def flush(split: str, batch: list[tuple[Path, int, str]]) -> None:
            if not batch:
                return
            ids = tok.encode_batch([t for *_, t in batch])
            eos = np.array([tok.eos_id])
            tokens = np.concatenate([part for x in ids for part in (x, eos)])
            if isinstance(tok, CharTokenizer) and (n_unk := int(np.count_nonzero(tokens == tok.unk_id))):
                if unknown[1] is None:
                    path, lineno, _ = next(b for b, x in zip(batch, ids) if (x == tok.unk_id).any())
                    unknown[1] = f"{path}:{lineno}"
                unknown[0] += n_unk
            writers[split].add(tokens)
            docs[split] += len(batch)
            batch.clear()

        batches: dict[str, list[tuple[Path, int, str]]] = {"train": [], "val": []}
        sources = [("train", train_files), ("val", val_files)] if val_files else [("train", train_files)]
        for default_split, files in sources:
            for path, index, lineno, text in documents(files):
                split = default_split
                if not val_files and in_validation(path.name, index, val_fraction):
                    split = "val"
                batches[split].append((path, lineno, text))
                if len(batches[split]) >= 1024:
                    flush(split, batches[split])
        for split in batches:
            flush(split, batches[split])
            writers[split].close()
        if unknown[0]:
            log.warning("%d character(s) outside the saved vocabulary were encoded as <unk> (first at %s)", *unknown)
        meta = {
            "tokenizer": tok.state_dict(),
            "dtype": dtype,
            "train_tokens": len(writers["train"]),
            "val_tokens": len(writers["val"]),
            "train_docs": docs["train"],
            "val_docs": docs["val"],
            "unknown_chars": unknown[0],
            "files": {"train": [str(p) for p in train_files], "val": [str(p) for p in val_files]},
        }
        tok.save(out / "tokenizer.json")
        write_json(out / "meta.json", meta)

    directory = cached_dir(cache_root(cache_dir), "text", key, build)
    meta = read_json(directory / "meta.json")
    if meta["train_docs"] == 0:
        raise DataError(f"data.path: every document went to validation; lower val_fraction ({val_fraction})")
    if meta["unknown_chars"]:
        log.warning("%s: %d character(s) outside the vocabulary are <unk>", directory.name, meta["unknown_chars"])
    return TextCorpus(
        directory=directory,
        tokenizer=tokenizer_from_state(meta["tokenizer"]),
        train=LazyMemmap(directory / "train.bin", meta["dtype"], meta["train_tokens"]),
        val=LazyMemmap(directory / "val.bin", meta["dtype"], meta["val_tokens"]),
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------


def n_windows(n_tokens: int, seq_len: int) -> int:
    """Windows of ``seq_len + 1`` tokens at stride ``seq_len`` in ``n_tokens`` tokens."""
    return max(0, (n_tokens - 1) // seq_len)


class TextWindows(ShardedStream):
    """Windows ``tokens[i·L : i·L + L + 1]`` as ``{"inputs": w[:-1], "targets": w[1:], "resets"}``.

    ``resets`` (bool ``[L]``) is True at column 0 (a window never continues another) and, given
    ``eos_id``, wherever the input is ``<eos>``: the separator acts as the first token of the next
    document, so the model predicts that document's first token from a state that saw only ``<eos>``.
    """

    def __init__(self, tokens: LazyMemmap, seq_len: int, *, eos_id: int | None = None, name: str = "text",
                 **stream: Any):
        if seq_len < 1:
            raise DataError(f"data.seq_len={seq_len}; expected >= 1")
        n = n_windows(len(tokens), seq_len)
        if n < 1:
            raise DataError(
                f"{name}: {len(tokens)} tokens are shorter than one window of seq_len + 1 = {seq_len + 1}; "
                "use a shorter seq_len or more data"
            )
        self.tokens, self.seq_len, self.eos_id = tokens, seq_len, eos_id
        super().__init__(n, name=name, **stream)

    def windows(self, items: np.ndarray) -> np.ndarray:
        offsets = items[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        return self.tokens.array[offsets].astype(np.int64)

    def make_samples(self, epoch: int, items: np.ndarray) -> list[dict[str, torch.Tensor]]:
        w = self.windows(items)
        resets = document_starts(w, self.eos_id)
        resets[:, 0] = True
        return shifted_pairs(w, resets)


class TextStreams(ContiguousStream):
    """``data.window_sampling=contiguous``: each batch row reads one section of the token array,
    window after window (``stream.ContiguousStream``); ``resets`` at the ``<eos>`` inputs (given
    ``eos_id``) and at column 0 of a section's first window."""

    def __init__(self, tokens: LazyMemmap, seq_len: int, batch_size: int, *, eos_id: int | None = None,
                 name: str = "text", **stream: Any):
        self.tokens, self.eos_id = tokens, eos_id
        super().__init__(len(tokens), seq_len, batch_size, name=name, **stream)

    def make_windows(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self.tokens.array[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int64)
        return w, document_starts(w, self.eos_id)


def document_starts(windows: np.ndarray, eos_id: int | None) -> np.ndarray:
    """bool ``[n, L]``: where an input (``windows[:, :-1]``) is ``eos_id``; all False without one."""
    if eos_id is None:
        return np.zeros((windows.shape[0], windows.shape[1] - 1), dtype=bool)
    return windows[:, :-1] == eos_id


def shifted_pairs(windows: np.ndarray, resets: np.ndarray | None = None) -> list[dict[str, torch.Tensor]]:
    """``{"inputs": w[:-1], "targets": w[1:]}`` per row ``w`` (views, made in two C calls), with
    ``"resets"`` (bool ``[n, L]``, one row per window) when given."""
    w = torch.from_numpy(windows)
    pairs = [{"inputs": x, "targets": y} for x, y in zip(w[:, :-1].unbind(0), w[:, 1:].unbind(0))]
    if resets is not None:
        for pair, r in zip(pairs, torch.from_numpy(np.ascontiguousarray(resets)).unbind(0)):
            pair["resets"] = r
    return pairs
