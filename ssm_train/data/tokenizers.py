"""Tokenizers: text → int ids and back, with their whole state as a plain (JSON-able) dict.

All tokenizers share one interface:

- ``encode(text) -> np.ndarray`` (int64 ids, no special tokens added) and ``encode_batch``;
- ``decode(ids, skip_special=False) -> str`` (special ids render as ``<eos>``, ``<pad>``, ...);
- ``vocab_size``, ``eos_id`` (the separator packed between documents), ``pad_id``, ``specials``;
- ``state_dict() -> dict`` of plain Python types, so it can travel inside a Lightning checkpoint
  read with ``torch.load(weights_only=True)``; ``tokenizer_from_state(d)`` rebuilds the tokenizer
  and ``save(path)`` / ``load_tokenizer(path)`` write / read the same dict as JSON.

Ordinary symbols take the ids ``0..n-1`` and the specials come after them, so that a byte's id is
the byte itself and a nucleotide's id is its code (A=0, C=1, G=2, T=3, N=4). Byte, character and
nucleotide encoding are numpy table look-ups (tens to hundreds of M tokens/s), never a Python
loop over characters.

``build_tokenizer(spec)`` reads the config string: ``byte`` | ``nucleotide`` | ``hf:<tokenizer.json>``
| ``char:<saved tokenizer .json>``. A fresh character vocabulary (plain ``char``) is built from the
corpus by the data module with ``CharTokenizer.from_texts``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssm_train.errors import DataError

# ---------------------------------------------------------------------------------------------


class Tokenizer:
    kind: str = ""
    vocab_size: int
    specials: dict[str, int]  # name -> id, e.g. {"<eos>": 256, "<pad>": 257}

    @property
    def eos_id(self) -> int:
        return self.specials["<eos>"]

    @property
    def pad_id(self) -> int:
        return self.specials["<pad>"]

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Any, skip_special: bool = False) -> str:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state_dict(), ensure_ascii=False))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.state_dict() == other.state_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _as_ids(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach"):  # a torch tensor
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def _decode_runs(ids: np.ndarray, n_plain: int, plain: Any, names: dict[int, str], skip: bool) -> str:
    """Decode runs of ordinary ids with ``plain(run) -> str``, specials by name (or not at all)."""
    special = ids >= n_plain
    if not special.any():
        return plain(ids)
    out, start = [], 0
    for i in np.flatnonzero(special).tolist():
        if i > start:
            out.append(plain(ids[start:i]))
        if not skip:
            out.append(names.get(int(ids[i]), f"<{int(ids[i])}>"))
        start = i + 1
    if start < len(ids):
        out.append(plain(ids[start:]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: ids 0..255 are the bytes themselves, then ``<eos>`` = 256, ``<pad>`` = 257."""

    kind = "byte"

    def __init__(self) -> None:
        self.specials = {"<eos>": 256, "<pad>": 257}
        self.vocab_size = 258

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Any, skip_special: bool = False) -> str:
        names = {v: k for k, v in self.specials.items()}
        # a model may emit a split multi-byte character: replace it rather than fail
        plain = lambda run: run.astype(np.uint8).tobytes().decode("utf-8", errors="replace")  # noqa: E731
        return _decode_runs(_as_ids(ids), 256, plain, names, skip_special)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "byte"}


# ---------------------------------------------------------------------------------------------


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as uint32 (a lone surrogate passes through as itself)."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


def char_vocabulary(texts: Iterable[str], chunk_chars: int = 1 << 20) -> list[str]:
    """The sorted set of characters in ``texts`` (``np.unique`` over ~1M-character chunks)."""
    seen = np.zeros(0, dtype=np.uint32)
    buf: list[str] = []
    size = 0
    for t in texts:
        buf.append(t)
        size += len(t)
        if size >= chunk_chars:
            seen = np.union1d(seen, np.unique(codepoints("".join(buf))))
            buf, size = [], 0
    if buf:
        seen = np.union1d(seen, np.unique(codepoints("".join(buf))))
    return [chr(c) for c in seen.tolist()]


class CharTokenizer(Tokenizer):
    """Characters of a fixed vocabulary: ids 0..n-1 in code-point order, then ``<eos>``,
    ``<pad>``, ``<unk>``. Characters outside the vocabulary encode to ``<unk>``."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars or any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise DataError("char tokenizer: 'chars' must be a non-empty list of distinct single characters")
        self.chars = sorted(chars)
        n = len(self.chars)
        self.specials = {"<eos>": n, "<pad>": n + 1, "<unk>": n + 2}
        self.vocab_size = n + 3
        cps = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._lut = np.full(int(cps.max()) + 1, self.unk_id, dtype=np.int64)
        self._lut[cps] = np.arange(n)
        self._table = np.array(self.chars, dtype=object)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        return cls(char_vocabulary(texts))

    @property
    def unk_id(self) -> int:
        return self.specials["<unk>"]

    def encode(self, text: str) -> np.ndarray:
        cp = codepoints(text).astype(np.int64)
        inside = cp < len(self._lut)
        if inside.all():
            return self._lut[cp]
        return np.where(inside, self._lut[np.where(inside, cp, 0)], self.unk_id)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        # one look-up over the joined texts, split back by length (len(str) counts code points)
        return np.split(self.encode("".join(texts)), np.cumsum([len(t) for t in texts])[:-1])

    def decode(self, ids: Any, skip_special: bool = False) -> str:
        names = {v: k for k, v in self.specials.items()}
        plain = lambda run: "".join(self._table[run].tolist())  # noqa: E731
        return _decode_runs(_as_ids(ids), len(self.chars), plain, names, skip_special)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": list(self.chars)}


# ---------------------------------------------------------------------------------------------

NUCLEOTIDES = "ACGTN"
BAD = 255  # code of a byte that is no nucleotide symbol


def _base_codes() -> np.ndarray:
    """uint8[256]: A,C,G,T (U read as T) → 0..3; IUPAC ambiguity codes and N → 4; else BAD.
    Lower case (soft-masked repeats) maps like upper case."""
    lut = np.full(256, BAD, dtype=np.uint8)
    for code, letters in enumerate(["A", "C", "G", "TU", "NRYSWKMBDHV"]):
        for ch in letters:
            lut[ord(ch)] = lut[ord(ch.lower())] = code
    return lut


BASE_CODES = _base_codes()
COMPLEMENT = np.array([3, 2, 1, 0, 4], dtype=np.uint8)  # A↔T, C↔G, N↔N on codes


def reverse_complement(codes: np.ndarray) -> np.ndarray:
    """Reverse complement of code arrays along the last axis."""
    return COMPLEMENT[codes[..., ::-1]]


def _not_nucleotide(text: str, i: int) -> DataError:
    """A user's text (a row, a --prompt) is at fault, so a DataError; the caller knows the file:line."""
    return DataError(
        f"character {text[i]!r} at position {i + 1} is not a nucleotide "
        "(valid: A C G T U N and IUPAC codes R Y S W K M B D H V, either case)"
    )


class NucleotideTokenizer(Tokenizer):
    """Nucleotides A, C, G, T, N (``k = 1``: ids 0..4) or non-overlapping k-mers over that
    alphabet (id = base-5 number of the k codes, ``5**k`` ids), then ``<eos>``, ``<pad>``.

    Soft-masked lower case is upper-cased, U is read as T and the IUPAC ambiguity codes
    (R, Y, S, W, K, M, B, D, H, V) become N. Any other character is an error.
    """

    kind = "nucleotide"

    def __init__(self, k: int = 1):
        if not 1 <= int(k) <= 8:
            raise DataError(f"nucleotide tokenizer: kmer must be in 1..8, got {k}")
        self.k = int(k)
        n = 5**self.k
        self.specials = {"<eos>": n, "<pad>": n + 1}
        self.vocab_size = n + 2
        self._powers = 5 ** np.arange(self.k - 1, -1, -1, dtype=np.int64)
        if self.k == 1:
            self._table = np.array(list(NUCLEOTIDES), dtype=object)
        else:
            digits = (np.arange(n)[:, None] // self._powers[None, :]) % 5
            self._table = np.array(["".join(NUCLEOTIDES[d] for d in row) for row in digits], dtype=object)

    def codes(self, text: str) -> np.ndarray:
        """uint8 codes 0..4 of ``text``; a DataError naming the first invalid character."""
        if not text.isascii():
            raise _not_nucleotide(text, next(i for i, c in enumerate(text) if not c.isascii()))
        codes = BASE_CODES[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        bad = np.flatnonzero(codes == BAD)
        if len(bad):
            raise _not_nucleotide(text, int(bad[0]))
        return codes

    def ids_from_codes(self, codes: np.ndarray) -> np.ndarray:
        """k-mer ids from codes along the last axis, whose length must be a multiple of k."""
        if self.k == 1:
            return codes.astype(np.int64)
        if codes.shape[-1] % self.k:
            raise ValueError(f"{codes.shape[-1]} bases is not a whole number of {self.k}-mers")
        grouped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // self.k, self.k).astype(np.int64)
        return grouped @ self._powers

    def encode(self, text: str) -> np.ndarray:
        """Ids of a user's text: its length is checked here (a DataError), so that the ValueError of
        ``ids_from_codes`` is left to mean a bug in code that cuts windows."""
        codes = self.codes(text)
        if len(codes) % self.k:
            raise DataError(f"{len(codes)} bases is not a whole number of {self.k}-mers")
        return self.ids_from_codes(codes)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        if any(len(t) % self.k for t in texts):
            raise DataError(f"a text is not a whole number of {self.k}-mers")
        # whole k-mers never straddle two joined texts, so one look-up serves them all
        ids = self.encode("".join(texts))
        return np.split(ids, np.cumsum([len(t) // self.k for t in texts])[:-1])

    def decode(self, ids: Any, skip_special: bool = False) -> str:
        names = {v: k for k, v in self.specials.items()}
        plain = lambda run: "".join(self._table[run].tolist())  # noqa: E731
        return _decode_runs(_as_ids(ids), 5**self.k, plain, names, skip_special)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "nucleotide", "k": self.k}


# ---------------------------------------------------------------------------------------------

_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` model (a ``tokenizer.json``). Its own end-of-text token
    (``<|endoftext|>``, ``</s>``, ``<eos>``, ``[SEP]``) is the separator, and its pad token
    the padding; a missing one is added as a special token (so ``vocab_size`` grows by one)."""

    kind = "hf"

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer as _HF

        try:
            self._tok = _HF.from_str(tokenizer_json)
        except Exception as e:  # the library raises a bare Exception on malformed JSON
            raise DataError(f"hf tokenizer: cannot parse tokenizer JSON ({e})") from e
        vocab = self._tok.get_vocab(with_added_tokens=True)
        eos = next((t for t in _EOS_NAMES if t in vocab), None)
        pad = next((t for t in _PAD_NAMES if t in vocab), None)
        added = [t for t, present in (("<|endoftext|>", eos), ("<pad>", pad)) if present is None]
        if added:
            self._tok.add_special_tokens(added)
            vocab = self._tok.get_vocab(with_added_tokens=True)
        self.specials = {"<eos>": vocab[eos or "<|endoftext|>"], "<pad>": vocab[pad or "<pad>"]}
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._json = self._tok.to_str()

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"hf tokenizer: no such file {str(path)!r} (expected a tokenizer.json)")
        return cls(path.read_text())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Any, skip_special: bool = False) -> str:
        ids = _as_ids(ids)
        if skip_special:
            ids = ids[~np.isin(ids, list(self.specials.values()))]
        return self._tok.decode(ids.tolist(), skip_special_tokens=False)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "hf", "json": self._json}


# ---------------------------------------------------------------------------------------------


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its ``state_dict()``."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(state["chars"])
    if kind == "nucleotide":
        return NucleotideTokenizer(state.get("k", 1))
    if kind == "hf":
        return HFTokenizer(state["json"])
    raise DataError(f"unknown tokenizer state kind {kind!r}; expected byte | char | nucleotide | hf")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer saved by ``Tokenizer.save`` (its state dict as JSON)."""
    path = Path(path).expanduser()
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"tokenizer file not found: {str(path)!r}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not a saved tokenizer (invalid JSON: {e})") from e
    return tokenizer_from_state(state)


TOKENIZER_SPECS = "byte | char | char:<saved .json> | nucleotide | hf:<tokenizer.json>"


def build_tokenizer(spec: str, *, kmer: int = 1) -> Tokenizer:
    """The tokenizer named by a config string (a plain ``char`` needs the corpus: see text.py)."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "nucleotide":
        return NucleotideTokenizer(kmer)
    if spec.startswith("hf:"):
        return HFTokenizer.from_file(spec[3:])
    if spec.startswith("char:"):
        tok = load_tokenizer(spec[5:])
        if not isinstance(tok, CharTokenizer):
            raise DataError(f"data.tokenizer={spec!r}: the file holds a {tok.kind!r} tokenizer, not 'char'")
        return tok
    if spec == "char":
        raise DataError("data.tokenizer='char' builds its vocabulary from the corpus; use a data module")
    raise DataError(f"data.tokenizer={spec!r} is not a tokenizer; valid: {TOKENIZER_SPECS}")
