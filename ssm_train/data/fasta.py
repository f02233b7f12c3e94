"""Genomes for pretraining: FASTA(.gz) → nucleotide codes on disk → windows of ``seq_len + 1`` tokens.

Encoding. Each FASTA file (one or many records, any line width) is streamed once, in 4 MiB
blocks, through a 256-entry look-up table into uint8 codes A=0, C=1, G=2, T=3, N=4, and written to
``<cache_dir>/fasta-<key>/codes.bin`` with a table of records (name, header, first line, offset,
length); the key is the file's absolute path, size and mtime. Soft-masked lower case is
upper-cased, U is read as T, and the IUPAC ambiguity codes R Y S W K M B D H V become N; any other
character is an error naming its line and column. Training then cuts windows out of a memmap of
that array, so no chromosome ever becomes a Python string.

Windows. With the nucleotide tokenizer's k-mer size ``k``, a window spans ``(seq_len + 1)·k``
bases and yields ``seq_len + 1`` tokens; ``tiled`` and ``random`` windows never cross a record
boundary, and records shorter than one window are skipped (their count is logged).

- ``tiled``: windows at stride ``seq_len·k`` from the start of each record (consecutive windows
  share one token, as in text packing), so each record contributes in proportion to its length;
- ``random`` (training only): each window starts at a position drawn uniformly from all valid
  starts of all records (hence records in proportion to their length), by a hash of
  (seed, epoch, item) so that a resumed run draws the same windows; an epoch has as many windows
  as the tiling.

- ``contiguous`` (``FastaStreams``): the regions' tokens are concatenated into one stream, each
  batch row reads one section of it window after window (truncated BPTT), and windows do cross
  from one record into the next: ``resets`` is True at the first token of the new record.

Every sample has ``resets`` (bool ``[seq_len]``): column 0 for ``tiled`` / ``random`` windows (they
never cross a record), record starts and section starts for ``contiguous``.

``n_policy``: ``keep`` reads every IUPAC ambiguity code as N and keeps all windows; ``skip`` drops
windows whose fraction of N exceeds ``max_n_fraction`` (tiled: from the table of windows, so every
rank agrees on the count; random: the draw is repeated). ``reverse_complement`` flips each training
window with probability 1/2 (again by hash). Validation is the last ``val_fraction`` of every
record, or whole records (``val_records``), or the files in ``val_path``, always tiled. When no
record's tail holds one window (many short records, e.g. 2 kb upstream regions with a 5% tail
of 100 bases), whole records are held out instead, evenly spread in file order, until they hold
at least ``val_fraction`` of the bases (logged in one line), so an experiment runs unchanged on
another corpus.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssm_train.data.cache import ArrayWriter, LazyMemmap, cache_root, cached_dir, fingerprint, read_json, write_json
from ssm_train.data.files import open_bytes, reading
from ssm_train.data.stream import ContiguousStream, ShardedStream, combine, mix64, uniform
from ssm_train.data.text import shifted_pairs
from ssm_train.data.tokenizers import BAD, BASE_CODES, NucleotideTokenizer, reverse_complement
from ssm_train.errors import DataError

log = logging.getLogger(__name__)

N_CODE = 4
SKIP = 254  # line ends and blanks inside sequence lines
FASTA_CODES = BASE_CODES.copy()
FASTA_CODES[list(b"\n\r \t")] = SKIP
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".frn", ".fas", ".seq")
_HEADER = re.compile(rb"^>[^\n]*\n", re.MULTILINE)
_BLOCK = 1 << 22
NL = b"\n"

# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def encode_fasta(path: Path, writer: ArrayWriter) -> list[dict[str, Any]]:
    """Stream ``path`` into ``writer`` as codes; return its records (name, header, line, offset, length)."""
    records: list[dict[str, Any]] = []
    lines_before = 0  # lines wholly inside earlier blocks
    n_bytes = 0

    def sequence(seg: bytes, first_line: int) -> None:
        if not seg:
            return
        codes = FASTA_CODES[np.frombuffer(seg, dtype=np.uint8)]
        real = np.flatnonzero(codes != SKIP)
        if not len(real):
            return
        if not records:
            i = int(real[0])
            raise DataError(
                f"{path}:{first_line + seg.count(NL, 0, i)}: FASTA without a header: "
                f"sequence data before the first '>' line (starts {seg[i : i + 20]!r})"
            )
        bad = np.flatnonzero(codes == BAD)
        if len(bad):
            i = int(bad[0])
            column = i - seg.rfind(NL, 0, i)
            raise DataError(
                f"{path}:{first_line + seg.count(NL, 0, i)}: character {chr(seg[i])!r} at column {column} "
                "is not a nucleotide (valid: A C G T U N and IUPAC codes R Y S W K M B D H V, either case)"
            )
        kept = codes[real]
        writer.add(kept)
        records[-1]["length"] += len(kept)

    def block(buf: bytes) -> None:
        """Complete lines starting at line ``lines_before + 1``."""
        pos, line = 0, lines_before + 1
        for m in _HEADER.finditer(buf):
            sequence(buf[pos : m.start()], line)
            line += buf.count(b"\n", pos, m.start())
            header = m.group()[1:].decode("utf-8", errors="replace").strip()
            name = header.split(maxsplit=1)[0] if header else ""
            records.append({"name": name, "header": header, "line": line, "offset": len(writer), "length": 0})
            line += 1
            pos = m.end()
        sequence(buf[pos:], line)

    carry = b""
    with open_bytes(path) as f, reading(path, lambda: f" after line {lines_before}"):
        while True:
            chunk = f.read(_BLOCK)
            n_bytes += len(chunk)
            if not chunk:
                if carry:
                    block(carry + b"\n")
                break
            buf = carry + chunk
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                carry = buf
                continue
            block(buf[:cut])
            lines_before += buf.count(b"\n", 0, cut)
            carry = buf[cut:]
    if n_bytes == 0:
        raise DataError(f"{path}: empty file")
    if not records:
        raise DataError(f"{path}: no FASTA record (no line starting with '>')")
    return records


@dataclass
class FastaFile:
    """One encoded FASTA file in the cache: its codes (memmap) and its records."""

    path: Path
    codes: LazyMemmap
    records: list[dict[str, Any]]


def load_fasta(path: str | Path, cache_dir: str = "") -> FastaFile:
    """The encoded file, encoding it into the cache first if needed."""
    path = Path(path)

    def build(out: Path) -> None:
        writer = ArrayWriter(out / "codes.bin", np.dtype(np.uint8))
        try:
            records = encode_fasta(path, writer)
        finally:
            writer.close()
        write_json(out / "meta.json", {"path": str(path), "length": len(writer), "records": records})

    directory = cached_dir(cache_root(cache_dir), "fasta", fingerprint(path), build)
    meta = read_json(directory / "meta.json")
    return FastaFile(path, LazyMemmap(directory / "codes.bin", "uint8", meta["length"]), meta["records"])


# ---------------------------------------------------------------------------------------------
# Regions: the parts of the records that a split may cut windows from
# ---------------------------------------------------------------------------------------------


@dataclass
class Regions:
    """Parallel arrays: which file, where it starts in that file's codes, how long, which record."""

    file: np.ndarray
    start: np.ndarray
    length: np.ndarray
    name: list[str]
    # a tail split made before the window length was known: FastaWindows calls it with the span,
    # and it gives these regions, or whole records if no tail holds a window (split_regions)
    settle: Callable[[int], Regions] | None = None

    @classmethod
    def build(cls, rows: list[tuple[int, int, int, str]]) -> Regions:
        f, s, n, names = zip(*rows) if rows else ((), (), (), ())
        return cls(np.array(f, np.int64), np.array(s, np.int64), np.array(n, np.int64), list(names))

    def __len__(self) -> int:
        return len(self.name)


def split_regions(
    files: Sequence[FastaFile],
    *,
    val_fraction: float,
    val_records: Sequence[str] = (),
    span: int | None = None,
) -> tuple[Regions, Regions]:
    """(train, validation): whole records named in ``val_records``, else each record's tail.

    The tail split needs some record's validation tail to hold a window of ``span`` bases; where none
    does, whole records are held out instead (:func:`hold_out_records`). Without ``span`` the
    decision is left to :class:`FastaWindows`, which knows the window (``Regions.settle``)."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"data.val_fraction={val_fraction}; expected 0 <= val_fraction < 1")
    names = {r["name"] for f in files for r in f.records}
    missing = [n for n in val_records if n not in names]
    if missing:
        shown = ", ".join(sorted(names)[:10])
        raise DataError(f"data.val_records: no record named {', '.join(map(repr, missing))} (records: {shown})")
    if val_records:
        rows = [(i, r["offset"], r["length"], r["name"]) for i, f in enumerate(files) for r in f.records]
        return (Regions.build([row for row in rows if row[3] not in val_records]),
                Regions.build([row for row in rows if row[3] in val_records]))
    if span is not None:
        return _settled(files, val_fraction, span, quiet=False)
    train, val = _tail_split(files, val_fraction)
    train.settle = functools.partial(_settle, files, val_fraction, role=0)
    val.settle = functools.partial(_settle, files, val_fraction, role=1)
    return train, val


def _tail_split(files: Sequence[FastaFile], val_fraction: float) -> tuple[Regions, Regions]:
    train, val = [], []
    for i, f in enumerate(files):
        for r in f.records:
            off, n, name = r["offset"], r["length"], r["name"]
            cut = n - int(round(n * val_fraction))
            train.append((i, off, cut, name))
            val.append((i, off + cut, n - cut, name))
    return Regions.build(train), Regions.build(val)


def _settle(files: Sequence[FastaFile], val_fraction: float, span: int, role: int) -> Regions:
    """One side (0 train, 1 validation) of the split for windows of ``span`` bases; FastaWindows
    settles both sides alike, and only the validation side logs a hold-out, so it is said once."""
    return _settled(files, val_fraction, span, quiet=role == 0)[role]


def _settled(files: Sequence[FastaFile], val_fraction: float, span: int, quiet: bool) -> tuple[Regions, Regions]:
    train, val = _tail_split(files, val_fraction)
    if val_fraction == 0 or (len(val) and int(val.length.max()) >= span):
        return train, val
    return hold_out_records(files, val_fraction=val_fraction, span=span, quiet=quiet)


def hold_out_records(
    files: Sequence[FastaFile], *, val_fraction: float, span: int, quiet: bool = False
) -> tuple[Regions, Regions]:
    """(train, validation) of whole records: the records holding a window, taken evenly spread in
    file order (one whenever validation falls half a record behind its share of the bases seen so
    far), then the last ones, until validation holds at least ``val_fraction`` of their bases.

    Deterministic (no seed: every rank and every restart agree) and independent of record names.
    At least one such record stays in training; records shorter than a window stay there too
    (FastaWindows skips them)."""
    rows = [(i, r["offset"], r["length"], r["name"]) for i, f in enumerate(files) for r in f.records]
    usable = [j for j, row in enumerate(rows) if row[2] >= span]
    longest_tail = max((int(round(n * val_fraction)) for _, _, n, _ in rows), default=0)
    if len(usable) < 2:
        raise DataError(
            f"data.val_fraction={val_fraction}: no record's tail holds a window of {span} bases (longest "
            f"tail: {longest_tail}) in {', '.join(str(f.path) for f in files)}, and {len(usable)} record(s) "
            "hold a window, too few to hold one out whole; "
            "use a shorter data.seq_len, give data.val_path or data.val_records, or set data.val_fraction=0"
        )
    total = sum(rows[j][2] for j in usable)
    held: set[int] = set()
    held_bases = seen = 0
    for j in usable:
        seen += rows[j][2]
        if held_bases + rows[j][2] / 2 <= val_fraction * seen and len(held) < len(usable) - 1:
            held.add(j)
            held_bases += rows[j][2]
    for j in reversed(usable):  # top up from the end until the share is reached
        if held_bases >= val_fraction * total or len(held) >= len(usable) - 1:
            break
        if j not in held:
            held.add(j)
            held_bases += rows[j][2]
    if len(held) == 0:
        held.add(usable[-1])
        held_bases += rows[usable[-1]][2]
    if not quiet:
        log.warning(
            "fasta: no record's tail (data.val_fraction=%g of each) holds a window of %d bases (longest tail: "
            "%d); validation holds out %d of %d whole records instead (%.1f%% of their bases, spread evenly "
            "in file order; data.val_records names the records to hold out)",
            val_fraction, span, longest_tail, len(held), len(usable), 100 * held_bases / total,
        )
    return (Regions.build([row for j, row in enumerate(rows) if j not in held]),
            Regions.build([row for j, row in enumerate(rows) if j in held]))


def whole_records(files: Sequence[FastaFile]) -> Regions:
    return Regions.build([(i, r["offset"], r["length"], r["name"]) for i, f in enumerate(files) for r in f.records])


# ---------------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------------

N_POLICIES = ("keep", "skip")
SAMPLINGS = ("random", "tiled")  # FastaWindows; "contiguous" is FastaStreams


def gather(arrays: Sequence[LazyMemmap], file: np.ndarray, start: np.ndarray, span: int) -> np.ndarray:
    """``codes[file[i]][start[i] : start[i] + span]`` for every i, as one [n, span] uint8 array."""
    out = np.empty((len(start), span), dtype=np.uint8)
    offsets = np.arange(span)
    for f in np.unique(file).tolist():
        rows = np.flatnonzero(file == f)
        out[rows] = arrays[f].array[start[rows, None] + offsets]
    return out


class FastaWindows(ShardedStream):
    """Windows of ``seq_len + 1`` nucleotide tokens as ``{"inputs": w[:-1], "targets": w[1:]}``."""

    max_draws = 64  # random windows: draws allowed to find one within max_n_fraction

    def __init__(
        self,
        files: Sequence[FastaFile],
        regions: Regions,
        *,
        seq_len: int,
        tokenizer: NucleotideTokenizer,
        sampling: str = "tiled",
        n_policy: str = "keep",
        max_n_fraction: float = 0.1,
        reverse_complement: bool = False,
        name: str = "fasta",
        **stream: Any,
    ):
        if sampling not in SAMPLINGS:
            raise DataError(f"data.window_sampling={sampling!r}; valid: {' | '.join(SAMPLINGS)}")
        if n_policy not in N_POLICIES:
            raise DataError(f"data.n_policy={n_policy!r}; valid: {' | '.join(N_POLICIES)}")
        if not 0 <= max_n_fraction <= 1:
            raise DataError(f"data.max_n_fraction={max_n_fraction}; expected a fraction in [0, 1]")
        if seq_len < 1:
            raise DataError(f"data.seq_len={seq_len}; expected >= 1")
        self.arrays = [f.codes for f in files]
        self.tokenizer, self.seq_len, self.sampling = tokenizer, seq_len, sampling
        self.k = tokenizer.k
        self.span, self.stride = (seq_len + 1) * self.k, seq_len * self.k
        self.max_n = int(np.floor(max_n_fraction * self.span + 1e-9)) if n_policy == "skip" else self.span
        self.reverse_complement = reverse_complement
        if regions.settle is not None:  # a tail split: its tails, or whole records if none holds a window
            regions = regions.settle(self.span)

        fits = regions.length >= self.span
        if not fits.any():
            longest = int(regions.length.max()) if len(regions) else 0
            raise DataError(
                f"{name}: no sequence is as long as one window of (seq_len + 1)·kmer = {self.span} bases "
                f"(longest: {longest}) in {', '.join(str(f.path) for f in files)}; use a shorter seq_len"
            )
        if (~fits).any():
            log.warning(
                "%s: %d of %d record region(s) shorter than a window (%d bases) skipped",
                name,
                int((~fits).sum()),
                len(regions),
                self.span,
            )
        self.regions = Regions(
            regions.file[fits],
            regions.start[fits],
            regions.length[fits],
            [n for n, ok in zip(regions.name, fits) if ok],
        )
        self.tile_file, self.tile_start = self._tiles(n_policy, name)
        # random starts: record i owns draws [cum[i], cum[i+1]), one per valid start
        self.cum_starts = np.concatenate([[0], np.cumsum(self.regions.length - self.span + 1)])
        super().__init__(len(self.tile_start), name=name, **stream)

    def _tiles(self, n_policy: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        r = self.regions
        counts = (r.length - self.span) // self.stride + 1
        file = np.repeat(r.file, counts)
        start = np.repeat(r.start, counts) + self.stride * (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        if n_policy == "skip":
            keep = np.ones(len(start), dtype=bool)
            for b in range(0, len(start), 4096):
                rows = slice(b, b + 4096)
                keep[rows] = self._n_count(gather(self.arrays, file[rows], start[rows], self.span)) <= self.max_n
            if not keep.any():
                raise DataError(f"{name}: every window has more than max_n_fraction N; raise it or use n_policy=keep")
            log.info("%s: %d of %d windows skipped (N above max_n_fraction)", name, int((~keep).sum()), len(keep))
            file, start = file[keep], start[keep]
        return file, start

    @staticmethod
    def _n_count(codes: np.ndarray) -> np.ndarray:
        return np.count_nonzero(codes == N_CODE, axis=-1)

    def _draw(self, key: int, items: np.ndarray, attempt: int) -> tuple[np.ndarray, np.ndarray]:
        u = mix64(items.astype(np.uint64), combine(key, attempt)) % np.uint64(self.cum_starts[-1])
        u = u.astype(np.int64)
        region = np.searchsorted(self.cum_starts, u, side="right") - 1
        return self.regions.file[region], self.regions.start[region] + (u - self.cum_starts[region])

    def starts(self, epoch: int, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(file, start, codes) of the windows of ``items`` in ``epoch``."""
        if self.sampling == "tiled":
            file, start = self.tile_file[items], self.tile_start[items]
            return file, start, gather(self.arrays, file, start, self.span)
        key = combine(self.seed, epoch, 1)
        file, start = self._draw(key, items, 0)
        codes = gather(self.arrays, file, start, self.span)
        redo = np.flatnonzero(self._n_count(codes) > self.max_n)
        for attempt in range(1, self.max_draws + 1):
            if not len(redo):
                break
            f, s = self._draw(key, items[redo], attempt)
            file[redo], start[redo] = f, s
            codes[redo] = gather(self.arrays, f, s, self.span)
            redo = redo[self._n_count(codes[redo]) > self.max_n]
        if len(redo):
            raise DataError(f"{self.name}: no window within max_n_fraction after {self.max_draws} draws")
        return file, start, codes

    def make_samples(self, epoch: int, items: np.ndarray) -> list[dict[str, torch.Tensor]]:
        _, _, codes = self.starts(epoch, items)
        if self.reverse_complement:
            flip = uniform(items.astype(np.uint64), combine(self.seed, epoch, 2)) < 0.5
            codes[flip] = reverse_complement(codes[flip])
        ids = self.tokenizer.ids_from_codes(codes)
        resets = np.zeros((len(ids), self.seq_len), dtype=bool)
        resets[:, 0] = True  # a window lies inside one record and continues no other window
        return shifted_pairs(ids, resets)


class FastaStreams(ContiguousStream):
    """``data.window_sampling=contiguous``: the regions' tokens concatenated into one stream, of which
    each batch row reads one section, window after window (``stream.ContiguousStream``).

    Region ``i`` contributes its first ``⌊length_i / k⌋`` k-mers (a tail shorter than ``k`` is
    dropped, so no k-mer straddles two records), and windows cross from one region to the next:
    with ``reset_at_documents``, ``resets`` is True at the first token of every region (record)."""

    def __init__(
        self,
        files: Sequence[FastaFile],
        regions: Regions,
        *,
        seq_len: int,
        tokenizer: NucleotideTokenizer,
        batch_size: int,
        reset_at_documents: bool = True,
        n_policy: str = "keep",
        reverse_complement: bool = False,
        name: str = "fasta",
        **stream: Any,
    ):
        if n_policy != "keep":
            raise DataError(
                f"data.n_policy={n_policy!r} skips windows, which a contiguous stream cannot "
                "(data.window_sampling=contiguous): use n_policy=keep"
            )
        if reverse_complement:
            raise DataError(
                "data.reverse_complement flips single windows, which would break a contiguous stream "
                "(data.window_sampling=contiguous): set it to false"
            )
        self.arrays = [f.codes for f in files]
        self.tokenizer, self.k, self.reset_at_documents = tokenizer, tokenizer.k, reset_at_documents
        if regions.settle is not None:  # the same settlement as the windows' (so train and val agree)
            regions = regions.settle((seq_len + 1) * self.k)
        tokens = regions.length // self.k
        keep = tokens > 0
        if not keep.any():
            raise DataError(f"{name}: no sequence of at least one {self.k}-mer in "
                            f"{', '.join(str(f.path) for f in files)}")
        self.regions = Regions(regions.file[keep], regions.start[keep], regions.length[keep],
                               [n for n, ok in zip(regions.name, keep) if ok])
        # region i holds stream tokens [cum[i], cum[i + 1])
        self.cum = np.concatenate([[0], np.cumsum(tokens[keep])]).astype(np.int64)
        super().__init__(int(self.cum[-1]), seq_len, batch_size, name=name, **stream)

    def make_windows(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = starts[:, None] + np.arange(self.seq_len + 1)  # stream positions of the tokens
        region = np.searchsorted(self.cum, g, side="right") - 1
        first = self.cum[region]
        file = self.regions.file[region]
        bases = (self.regions.start[region] + (g - first) * self.k)[..., None] + np.arange(self.k)
        codes = np.empty(bases.shape, dtype=np.uint8)
        for f in np.unique(file).tolist():
            rows = file == f
            codes[rows] = self.arrays[f].array[bases[rows]]
        ids = self.tokenizer.ids_from_codes(codes.reshape(len(starts), -1))
        if self.reset_at_documents:
            documents = (first == g)[:, :-1]
        else:
            documents = np.zeros((len(starts), self.seq_len), dtype=bool)
        return ids, documents
