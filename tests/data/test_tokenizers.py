"""Tokenizers: fast numpy paths against per-character references, round trips, plain state."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_train.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    NucleotideTokenizer,
    build_tokenizer,
    load_tokenizer,
    reverse_complement,
    tokenizer_from_state,
)
from ssm_train.errors import DataError

IUPAC = "RYSWKMBDHVN"
DNA = "ACGTU" + IUPAC
DNA_TEXT = st.text(alphabet=DNA + DNA.lower(), max_size=300)


def _reference_code(ch: str) -> int:
    """Obviously right: one character at a time."""
    c = ch.upper()
    return {"A": 0, "C": 1, "G": 2, "T": 3, "U": 3}.get(c, 4 if c in IUPAC else -1)


def roundtrip_state(tok):
    """The state survives JSON and a weights_only torch checkpoint unchanged."""
    state = tok.state_dict()
    buf = io.BytesIO()
    torch.save({"tokenizer": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["tokenizer"]
    assert loaded == state == json.loads(json.dumps(state))
    return tokenizer_from_state(loaded)


# --- byte ---------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_byte_encode_is_utf8_and_round_trips(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int64
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_specials_and_state():
    tok = ByteTokenizer()
    assert tok.vocab_size == 258 and (tok.eos_id, tok.pad_id) == (256, 257)
    ids = np.concatenate([tok.encode("ab"), [tok.eos_id], tok.encode("é")])
    assert tok.decode(ids) == "ab<eos>é"
    assert tok.decode(torch.tensor(ids), skip_special=True) == "abé"
    assert tok.decode([0xC3]) == "\ufffd"  # a split character from a model does not raise
    assert roundtrip_state(tok) == tok


# --- char ---------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=50), min_size=1, max_size=5), st.text(max_size=50))
def test_char_matches_reference(texts, other):
    tok = CharTokenizer.from_texts(texts)
    vocab = sorted(set("".join(texts)))
    assert tok.chars == vocab
    for t in texts:
        assert tok.encode(t).tolist() == [vocab.index(c) for c in t]
        assert tok.decode(tok.encode(t)) == t
    assert [x.tolist() for x in tok.encode_batch(texts)] == [tok.encode(t).tolist() for t in texts]
    assert tok.encode(other).tolist() == [vocab.index(c) if c in vocab else tok.unk_id for c in other]


def test_char_specials_state_and_save(tmp_path):
    tok = CharTokenizer.from_texts(["hello world", "£"])
    n = len(tok.chars)
    assert tok.specials == {"<eos>": n, "<pad>": n + 1, "<unk>": n + 2} and tok.vocab_size == n + 3
    assert tok.decode([*tok.encode("he"), tok.eos_id, tok.encode("z")[0]]) == "he<eos><unk>"
    assert roundtrip_state(tok) == tok
    tok.save(tmp_path / "tok.json")
    assert build_tokenizer(f"char:{tmp_path / 'tok.json'}") == tok
    ByteTokenizer().save(tmp_path / "byte.json")
    with pytest.raises(DataError, match="holds a 'byte' tokenizer"):
        build_tokenizer(f"char:{tmp_path / 'byte.json'}")
    with pytest.raises(DataError, match="distinct single characters"):
        CharTokenizer(["ab"])


# --- nucleotide ---------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(DNA_TEXT)
def test_nucleotide_codes_match_reference(text):
    tok = NucleotideTokenizer()
    assert tok.encode(text).tolist() == [_reference_code(c) for c in text]
    expected = "".join("ACGTN"[_reference_code(c)] for c in text)
    assert tok.decode(tok.encode(text)) == expected


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), DNA_TEXT)
def test_kmers_match_reference(k, text):
    text = text[: len(text) - len(text) % k]
    tok = NucleotideTokenizer(k)
    ref = [int("".join(str(_reference_code(c)) for c in text[i : i + k]), 5) for i in range(0, len(text), k)]
    assert tok.encode(text).tolist() == ref
    assert tok.vocab_size == 5**k + 2
    assert tok.decode(tok.encode(text)) == "".join("ACGTN"[_reference_code(c)] for c in text)
    assert [x.tolist() for x in tok.encode_batch([text, text[:k]])] == [ref, ref[:1]]


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="ACGTN", max_size=100))
def test_reverse_complement_matches_reference(text):
    tok = NucleotideTokenizer()
    ref = text[::-1].translate(str.maketrans("ACGTN", "TGCAN"))
    assert tok.decode(reverse_complement(tok.encode(text).astype(np.uint8))) == ref


def test_nucleotide_rejects_other_characters():
    tok = NucleotideTokenizer()
    with pytest.raises(ValueError, match=r"'X' at position 3"):
        tok.encode("ACXGT")
    with pytest.raises(ValueError, match=r"'é' at position 2"):
        tok.encode("Aé")
    with pytest.raises(ValueError, match="whole number of 3-mers"):
        NucleotideTokenizer(3).encode("ACGT")
    with pytest.raises(DataError, match="kmer must be in 1..8"):
        NucleotideTokenizer(0)
    assert roundtrip_state(NucleotideTokenizer(3)) == NucleotideTokenizer(3)


# --- Hugging Face -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_json(tmp_path_factory, shared_data):
    """A small byte-level BPE trained here on Austen (no download)."""
    import gzip

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = gzip.open(shared_data / "text" / "austen.txt.gz", "rt").read(200_000)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"], show_progress=False))
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_tokenizer(bpe_json):
    tok = build_tokenizer(f"hf:{bpe_json}")
    assert isinstance(tok, HFTokenizer)
    text = "It is a truth universally acknowledged, that a single man"
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and 0 < len(ids) < len(text)
    assert tok.decode(ids) == text
    assert tok.eos_id == tok._tok.token_to_id("</s>")  # its own end-of-text token is the separator
    assert tok.pad_id == tok.vocab_size - 1  # a pad token was added
    assert [x.tolist() for x in tok.encode_batch([text, "Emma"])] == [ids.tolist(), tok.encode("Emma").tolist()]
    assert tok.decode([*ids, tok.eos_id], skip_special=True) == text
    assert roundtrip_state(tok) == tok


def test_build_tokenizer_errors(tmp_path):
    assert build_tokenizer("byte") == ByteTokenizer()
    assert build_tokenizer("nucleotide", kmer=2) == NucleotideTokenizer(2)
    with pytest.raises(DataError, match="'bpe' is not a tokenizer; valid: byte"):
        build_tokenizer("bpe")
    with pytest.raises(DataError, match="builds its vocabulary from the corpus"):
        build_tokenizer("char")
    with pytest.raises(DataError, match="no such file"):
        build_tokenizer(f"hf:{tmp_path / 'missing.json'}")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot parse"):
        build_tokenizer(f"hf:{tmp_path / 'bad.json'}")
    with pytest.raises(DataError, match="not a saved tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(DataError, match="unknown tokenizer state kind"):
        tokenizer_from_state({"kind": "wordpiece"})
