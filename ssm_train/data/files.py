"""Reading the files a corpus is made of: path and glob expansion, transparent gzip, lines, UTF-8.

Every reader (text, FASTA, labelled rows) goes through these, so a missing file, a glob that
matches nothing, a truncated ``.gz`` or a byte that is not UTF-8 is the same ``DataError`` naming
the file (and line) whichever kind of corpus it belongs to.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from ssm_train.errors import DataError

_GLOB_CHARS = set("*?[")


def expand_paths(patterns: Sequence[str] | str, *, what: str = "data.path") -> list[Path]:
    """Files named by paths or globs, in the given order (each glob sorted), without repeats."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [str(patterns)]
    if not patterns:
        raise DataError(f"{what} is empty: give one or more files or globs")
    out: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if _GLOB_CHARS & set(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise DataError(f"{what}: the glob {pattern!r} matches no file")
        else:
            if not os.path.exists(pattern):
                raise DataError(f"{what}: no such file: {pattern!r}")
            if os.path.isdir(pattern):
                raise DataError(f"{what}: {pattern!r} is a directory; give a glob such as '{pattern}/*.txt'")
            matches = [pattern]
        for m in matches:
            p = Path(m).resolve()
            if p not in out:
                out.append(p)
    return out


def strip_gz(path: Path) -> str:
    """The name's meaningful suffix(es), lower case, without a trailing .gz: 'x.jsonl.gz' -> '.jsonl'."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def open_bytes(path: Path) -> IO[bytes]:
    """Open for binary reading, decompressing gzip when the file starts with the gzip magic."""
    f = open(path, "rb")
    magic = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f, mode="rb") if magic == b"\x1f\x8b" else f  # type: ignore[return-value]


_STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


@contextlib.contextmanager
def reading(path: Path, where: Callable[[], str] = lambda: "") -> Iterator[None]:
    """Turn a truncated or corrupt gzip stream into a DataError naming the file and position."""
    try:
        yield
    except _STREAM_ERRORS as e:
        raise DataError(f"{path}{where()}: truncated or corrupt compressed file ({e})") from e


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number from 1, line without its end-of-line)``; errors on an empty file."""
    lineno = 0
    with open_bytes(path) as f, reading(path, lambda: f" after line {lineno}"):
        for raw in f:
            lineno += 1
            yield lineno, raw.rstrip(b"\r\n")
    if lineno == 0:
        raise DataError(f"{path}: empty file")


def decode_utf8(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from e
