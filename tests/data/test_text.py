"""Text corpora: documents, the encoded token stream, windows, the split, and bad input."""

from __future__ import annotations

import gzip
import itertools
import json
import os

import numpy as np
import pytest
import torch

from ssm_train.data.files import expand_paths
from ssm_train.data.text import TextWindows, encode_text_corpus, in_validation, iter_documents
from ssm_train.data.tokenizers import ByteTokenizer
from ssm_train.errors import DataError


def reference_paragraphs(text: str) -> list[str]:
    """Obviously right: runs of non-blank lines, joined by newlines."""
    groups = itertools.groupby(text.split("\n"), key=lambda line: bool(line.strip()))
    return ["\n".join(lines) for nonblank, lines in groups if nonblank]


@pytest.fixture(scope="module")
def austen(shared_data):
    return shared_data / "text" / "austen.txt.gz"


@pytest.fixture(scope="module")
def austen_text(austen):
    return gzip.open(austen, "rt", encoding="utf-8").read()


@pytest.fixture(scope="module")
def austen_bytes(austen, cache_dir):
    return encode_text_corpus([austen], tokenizer="byte", cache_dir=cache_dir)


def stream_documents(tokens: np.ndarray, tok) -> list[str]:
    """Split a decoded token stream back into documents at <eos>."""
    cuts = np.flatnonzero(tokens == tok.eos_id)
    assert cuts[-1] == len(tokens) - 1  # every document, the last included, ends with <eos>
    return [tok.decode(part[:-1]) for part in np.split(tokens, cuts + 1)[:-1]]


# --- documents ----------------------------------------------------------------------------------


def test_document_kinds(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text("  \nOne line\nsame para\n\n\n two \n\t\nlast")
    assert [t for _, t in iter_documents(path)] == ["One line\nsame para", " two ", "last"]
    assert [ln for ln, _ in iter_documents(path)] == [2, 6, 8]  # the line each document starts on
    assert [t for _, t in iter_documents(path, document="line")] == ["One line", "same para", " two ", "last"]
    assert [t for _, t in iter_documents(path, document="file")] == ["  \nOne line\nsame para\n\n\n two \n\t\nlast"]
    with pytest.raises(DataError, match="text_document='chapter'"):
        list(iter_documents(path, document="chapter"))


def test_jsonl_and_gzip(tmp_path):
    rows = [{"body": "first"}, {"body": ""}, {"body": "third", "x": 1}]
    raw = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    (tmp_path / "a.jsonl").write_text(raw)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(raw.encode()))
    for name in ("a.jsonl", "b.jsonl.gz"):
        assert list(iter_documents(tmp_path / name, text_field="body")) == [(1, "first"), (3, "third")]
    with pytest.raises(DataError, match=r"a\.jsonl:1: no field 'text' \(fields: body\); set data.text_field"):
        list(iter_documents(tmp_path / "a.jsonl"))


def test_austen_paragraphs_match_reference(austen, austen_text):
    ours = [t for _, t in iter_documents(austen)]
    assert ours == reference_paragraphs(austen_text)


# --- the encoded corpus -------------------------------------------------------------------------


def test_austen_stream_is_the_documents_split_by_hash(austen, austen_text, austen_bytes):
    tok = austen_bytes.tokenizer
    assert isinstance(tok, ByteTokenizer)
    docs = reference_paragraphs(austen_text)
    held = [in_validation(austen.name, i, 0.05) for i in range(len(docs))]
    assert stream_documents(np.asarray(austen_bytes.train.array), tok) == [d for d, v in zip(docs, held) if not v]
    assert stream_documents(np.asarray(austen_bytes.val.array), tok) == [d for d, v in zip(docs, held) if v]
    assert 0.03 < np.mean(held) < 0.07


def test_char_vocabulary_from_austen(austen, austen_text, cache_dir):
    corpus = encode_text_corpus([austen], tokenizer="char", cache_dir=cache_dir)
    tok = corpus.tokenizer
    assert len(tok.chars) == 81  # the README's count of distinct symbols
    assert tok.chars == sorted(set(austen_text))
    assert corpus.meta["unknown_chars"] == 0
    docs = reference_paragraphs(austen_text)
    held = [in_validation(austen.name, i, 0.05) for i in range(len(docs))]
    assert stream_documents(np.asarray(corpus.train.array), tok) == [d for d, v in zip(docs, held) if not v]
    # the vocabulary is saved beside the cached corpus and reused as char:<path>
    again = encode_text_corpus([austen], tokenizer=f"char:{corpus.directory / 'tokenizer.json'}", cache_dir=cache_dir)
    assert again.tokenizer == tok and np.array_equal(again.train.array, corpus.train.array)


def test_windows_are_shifted_slices(austen_bytes):
    seq_len = 64
    stream = TextWindows(austen_bytes.train, seq_len, seed=0, shuffle=True, infinite=False, with_index=True)
    tokens = np.asarray(austen_bytes.train.array)
    assert stream.n_items == (len(tokens) - 1) // seq_len
    it = iter(stream)
    for _ in range(50):
        s = next(it)
        i = int(s["index"])
        w = tokens[i * seq_len : i * seq_len + seq_len + 1]
        assert s["inputs"].dtype == s["targets"].dtype == torch.int64
        assert s["inputs"].tolist() == w[:-1].tolist() and s["targets"].tolist() == w[1:].tolist()


def test_val_path_and_cache_reuse(tmp_path, cache_dir):
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("alpha beta\n\ngamma\n")
    val.write_text("delta\n")
    c = encode_text_corpus([train], [val], cache_dir=cache_dir)
    tok = c.tokenizer
    assert stream_documents(np.asarray(c.train.array), tok) == ["alpha beta", "gamma"]
    assert stream_documents(np.asarray(c.val.array), tok) == ["delta"]
    again = encode_text_corpus([train], [val], cache_dir=cache_dir)
    assert again.directory == c.directory
    # an edited file gets a fresh encoding
    train.write_text("alpha beta\n\ngamma\n\nepsilon\n")
    os.utime(train, ns=(1, 1))
    changed = encode_text_corpus([train], [val], cache_dir=cache_dir)
    assert changed.directory != c.directory
    assert stream_documents(np.asarray(changed.train.array), tok)[-1] == "epsilon"


def test_hf_tokenizer_corpus(tmp_path, cache_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = "the cat sat on the mat\n\nthe dog sat on the log\n"
    (tmp_path / "c.txt").write_text(text)
    hf = Tokenizer(models.BPE(unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.train_from_iterator([text], trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"], show_progress=False))
    hf.save(str(tmp_path / "tok.json"))
    c = encode_text_corpus(
        [tmp_path / "c.txt"], tokenizer=f"hf:{tmp_path / 'tok.json'}", val_fraction=0, cache_dir=cache_dir
    )
    tok = c.tokenizer
    ids = np.asarray(c.train.array)
    assert ids.tolist() == [
        *tok.encode("the cat sat on the mat"),
        tok.eos_id,
        *tok.encode("the dog sat on the log"),
        tok.eos_id,
    ]


# --- bad input ----------------------------------------------------------------------------------


def test_bad_text_inputs(tmp_path, austen, cache_dir):
    def encode(*paths, **kw):
        return encode_text_corpus([tmp_path / p for p in paths], cache_dir=cache_dir, **kw)

    with pytest.raises(DataError, match="no such file"):
        expand_paths([str(tmp_path / "missing.txt")])
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.txt: empty file"):
        encode("empty.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"blank\.txt: no documents"):
        encode("blank.txt")
    (tmp_path / "cut.txt.gz").write_bytes(austen.read_bytes()[:200_000])
    with pytest.raises(DataError, match=r"cut\.txt\.gz after line \d+: truncated or corrupt"):
        encode("cut.txt.gz")
    (tmp_path / "latin1.txt").write_bytes(b"fine\ncaf\xe9\n")
    for tokenizer in ("char", "byte"):
        with pytest.raises(DataError, match=r"latin1\.txt:2: not valid UTF-8 \(byte 0xe9 at column 4\)"):
            encode("latin1.txt", tokenizer=tokenizer)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        encode("bad.jsonl")
    (tmp_path / "list.jsonl").write_text('{"text": ["a"]}\n')
    with pytest.raises(DataError, match=r"list\.jsonl:1: field 'text' holds a list"):
        encode("list.jsonl")
    (tmp_path / "doc.md").write_text("# title\n")
    with pytest.raises(DataError, match=r"doc\.md: unsupported text file type"):
        encode("doc.md")
    with pytest.raises(DataError, match="val_fraction=1.5"):
        encode("blank.txt", val_fraction=1.5)


def test_corpus_shorter_than_a_window(tmp_path, cache_dir):
    (tmp_path / "short.txt").write_text("just a few words\n")
    c = encode_text_corpus([tmp_path / "short.txt"], val_fraction=0, cache_dir=cache_dir)
    with pytest.raises(DataError, match="17 tokens are shorter than one window of seq_len \\+ 1 = 129"):
        TextWindows(c.train, 128, seed=0, shuffle=True, infinite=True)


def test_parquet_needs_pyarrow(tmp_path, cache_dir):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="needs pyarrow"):
            encode_text_corpus([tmp_path / "t.parquet"], cache_dir=cache_dir)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "two"]}), tmp_path / "t.parquet")
    assert list(iter_documents(tmp_path / "t.parquet")) == [(1, "one"), (3, "two")]


# --- document resets ----------------------------------------------------------------------------


def text_module(tmp_path, cache_dir, **kw):
    from ssm_train.data.config import DataConfig
    from ssm_train.data.modules import TextDataModule

    (tmp_path / "docs.txt").write_text("one two\n\nthree\n\nfour five six\n\nseven\n\neight nine\n")
    (tmp_path / "held.txt").write_text("ten\n\neleven twelve\n\nthirteen\n\nfourteen\n")
    cfg = DataConfig(kind="text", path=[str(tmp_path / "docs.txt")], val_path=[str(tmp_path / "held.txt")],
                     seq_len=5, batch_size=2, shuffle_buffer=0, cache_dir=cache_dir, **kw)
    return TextDataModule(cfg, seed=0, with_index=True)


def test_resets_are_at_the_eos_inputs_and_column_0(tmp_path, cache_dir):
    module = text_module(tmp_path, cache_dir)
    eos = module.corpus.tokenizer.eos_id
    splits = ((module.train_dataloader(), module.corpus.train), (module.val_dataloader(), module.corpus.val))
    for loader, tokens in splits:
        tokens = np.asarray(tokens.array).astype(np.int64)
        n = (len(tokens) - 1) // 5
        seen = []
        for batch in itertools.islice(loader, (n + 1) // 2):  # one pass (in file order: shuffle_buffer=0)
            assert batch["resets"].dtype == torch.bool and batch["resets"].shape == batch["inputs"].shape
            assert "offset" not in batch  # contiguous mode only
            for i, inputs, resets in zip(batch["index"].tolist(), batch["inputs"], batch["resets"]):
                assert inputs.tolist() == tokens[i * 5 : i * 5 + 5].tolist()
                expected = inputs == eos
                expected[0] = True  # no window continues another
                assert torch.equal(resets, expected)
                seen.append(i)
        assert sorted(seen) == list(range(n))
        # <eos> ends each document, so the next one starts from a state that saw only <eos>
        assert int((tokens[: n * 5] == eos).sum()) >= 3
    off = text_module(tmp_path, cache_dir, reset_at_documents=False)
    for batch in itertools.islice(off.train_dataloader(), 3):
        assert batch["resets"][:, 0].all() and not batch["resets"][:, 1:].any()


def test_austen_resets_count_the_eos_inputs(austen, cache_dir):
    from ssm_train.data.config import DataConfig
    from ssm_train.data.modules import TextDataModule

    cfg = DataConfig(kind="text", path=[str(austen)], seq_len=256, batch_size=32, cache_dir=cache_dir)
    module = TextDataModule(cfg, seed=0)
    eos = module.corpus.tokenizer.eos_id
    tokens = np.asarray(module.corpus.val.array)
    n_resets = n_eos = n_windows = 0
    for batch in module.val_dataloader():  # the whole validation split, once
        n_resets += int(batch["resets"][:, 1:].sum())
        n_eos += int((batch["inputs"][:, 1:] == eos).sum())
        n_windows += len(batch["inputs"])
        assert batch["resets"][:, 0].all()
    assert n_windows == (len(tokens) - 1) // 256
    # every <eos> input but those in column 0 (which resets anyway) is a reset, and nothing else is
    inside = tokens[: n_windows * 256].reshape(n_windows, 256)[:, 1:]
    assert n_resets == n_eos == int((inside == eos).sum())
    docs = module.corpus.meta["val_docs"]  # Austen's held-out paragraphs, one <eos> each
    assert int((tokens == eos).sum()) == docs > 400 and n_resets > 0.95 * docs  # a few fall in column 0
