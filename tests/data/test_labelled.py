"""Labelled rows: the real benchmark sets, every source format, padding, class maps, bad rows."""

from __future__ import annotations

import collections
import gzip
import json

import numpy as np
import pytest
import torch

from ssm_train.data.labelled import LabelledRows, PadCollate, encode_labelled, iter_rows
from ssm_train.data.tokenizers import NucleotideTokenizer
from ssm_train.errors import DataError


def all_rows(split, tok=None):
    """(decoded input, class) of every row of a split, in order: the obviously right read-back."""
    offsets, tokens = np.asarray(split.offsets.array), np.asarray(split.tokens.array)
    return [(tokens[offsets[i] : offsets[i + 1]], int(split.labels[i])) for i in range(split.n_rows)]


def test_splice_junctions(shared_data, cache_dir):
    path = shared_data / "genomics" / "splice_junctions.jsonl"
    data = encode_labelled([path], tokenizer="nucleotide", cache_dir=cache_dir)
    assert data.class_names == ["ei", "ie", "n"]
    counts = collections.Counter(data.class_names[c] for split in (data.train, data.val) for c in split.labels)
    assert counts == {"ei": 767, "ie": 765, "n": 1654}  # the README's counts
    assert 0.03 < data.val.n_rows / 3186 < 0.07
    # the rows read back as the file's sequences (IUPAC codes as N) with their labels
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    tok = data.tokenizer
    back = sorted(
        (tok.decode(ids), data.class_names[c]) for split in (data.train, data.val) for ids, c in all_rows(split)
    )
    ref = sorted(("".join(ch if ch in "ACGT" else "N" for ch in r["seq"].upper()), r["label"]) for r in rows)
    assert back == ref


def test_tfbs_with_validation_file_and_padded_batches(shared_data, cache_dir):
    g = shared_data / "genomics"
    data = encode_labelled(
        [g / "tfbs_oct4_mafk_train.jsonl"],
        [g / "tfbs_oct4_mafk_test.jsonl"],
        tokenizer="nucleotide",
        kmer=3,
        cache_dir=cache_dir,
    )
    assert data.class_names == ["Mafk", "Oct4"]  # the file spells it Mafk (the README: MafK)
    assert collections.Counter(data.train.labels.tolist()) == {0: 3900, 1: 3897}
    assert (data.train.n_rows, data.val.n_rows) == (7797, 200)
    first = json.loads((g / "tfbs_oct4_mafk_train.jsonl").open().readline())
    ids, c = all_rows(data.train)[0]
    assert data.tokenizer.decode(ids) == first["seq"].upper()[: len(first["seq"]) // 3 * 3]
    assert data.class_names[c] == first["label"]
    stream = LabelledRows(data.train, seq_len=50, seed=0, shuffle=True, infinite=False)
    samples = [s for s, _ in zip(iter(stream), range(8))]
    batch = PadCollate(data.tokenizer.pad_id)(samples)
    assert batch["inputs"].shape == (8, 50) and batch["mask"].all()  # 66 tokens truncated to seq_len=50
    assert batch["targets"].dtype == torch.int64 and batch["targets"].shape == (8,)


def test_pad_collate_matches_reference():
    rng = np.random.default_rng(0)
    samples = [{"inputs": torch.from_numpy(rng.integers(0, 5, n)), "targets": torch.tensor(n % 2)} for n in (3, 7, 1)]
    batch = PadCollate(pad_id=6)(samples)
    for i, s in enumerate(samples):
        n = len(s["inputs"])
        assert batch["inputs"][i].tolist() == s["inputs"].tolist() + [6] * (7 - n)
        assert batch["mask"][i].tolist() == [True] * n + [False] * (7 - n)
    assert batch["targets"].tolist() == [1, 1, 1]


def test_wordnet_glosses(shared_data, cache_dir):
    path = shared_data / "text" / "wordnet_gloss_lexname.jsonl.gz"
    data = encode_labelled([path], tokenizer="byte", cache_dir=cache_dir)
    assert len(data.class_names) == 45 and data.class_names == sorted(data.class_names)  # the README's 45 classes
    assert "noun.artifact" in data.class_names and "verb.motion" in data.class_names
    assert data.train.n_rows + data.val.n_rows == 117_659
    first = json.loads(gzip.open(path, "rt").readline())
    ids, c = all_rows(data.train)[0]
    assert (data.tokenizer.decode(ids), data.class_names[c]) == (first["text"], first["label"])


def test_csv_tsv_and_fasta_sources(tmp_path, cache_dir):
    (tmp_path / "a.csv").write_text('seq,label,note\nACGT,yes,"x, y"\n\nTTGCA,no,z\n')
    (tmp_path / "b.tsv").write_text("label\tseq\nno\tGGG\n")
    (tmp_path / "c.fa").write_text(">r1 some words yes\nAC\nGT\n>r2|no\nCCC\n")
    for name in ("a.csv", "b.tsv", "c.fa"):
        assert [
            (t, lb)
            for _, t, lb in iter_rows(tmp_path / name, input_field="seq", label_field="label", cache_dir=cache_dir)
        ] in (
            [("ACGT", "yes"), ("TTGCA", "no")],
            [("GGG", "no")],
            [("ACGT", "yes"), ("CCC", "no")],
        )
    rows = list(iter_rows(tmp_path / "a.csv", input_field="seq", label_field="label"))
    assert [ln for ln, *_ in rows] == [2, 4]
    custom = list(
        iter_rows(
            tmp_path / "c.fa", input_field="seq", label_field="label", header_label=r"^(r\d)", cache_dir=cache_dir
        )
    )
    assert [lb for *_, lb in custom] == ["r1", "r2"]
    data = encode_labelled(
        [tmp_path / "a.csv", tmp_path / "b.tsv", tmp_path / "c.fa"],
        tokenizer="nucleotide",
        val_fraction=0,
        cache_dir=cache_dir,
    )
    assert data.class_names == ["no", "yes"] and data.train.n_rows == 5


def test_char_tokenizer_and_fixed_class_map(tmp_path, cache_dir):
    (tmp_path / "t.jsonl").write_text(
        "".join(
            json.dumps({"text": t, "label": lb}) + "\n"
            for t, lb in [("good film", "pos"), ("bad", "neg"), ("ok", "pos")]
        )
    )
    data = encode_labelled([tmp_path / "t.jsonl"], tokenizer="char", val_fraction=0, cache_dir=cache_dir)
    assert data.tokenizer.chars == sorted(set("good filmbadok"))
    assert [data.tokenizer.decode(ids) for ids, _ in all_rows(data.train)] == ["good film", "bad", "ok"]
    fixed = encode_labelled(
        [tmp_path / "t.jsonl"],
        tokenizer="char",
        val_fraction=0,
        class_names=["pos", "neg", "neutral"],
        cache_dir=cache_dir,
    )
    assert fixed.class_names == ["pos", "neg", "neutral"] and fixed.train.labels.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match=r"t\.jsonl:2: label 'neg' is not a known class \(pos\)"):
        encode_labelled(
            [tmp_path / "t.jsonl"], tokenizer="char", val_fraction=0, class_names=["pos"], cache_dir=cache_dir
        )


def test_validation_label_outside_training_labels(tmp_path, cache_dir):
    (tmp_path / "tr.jsonl").write_text('{"seq": "ACGT", "label": "a"}\n')
    (tmp_path / "va.jsonl").write_text('{"seq": "ACGT", "label": "a"}\n{"seq": "AC", "label": "b"}\n')
    with pytest.raises(DataError, match=r"va\.jsonl:2: label 'b' is not a known class"):
        encode_labelled([tmp_path / "tr.jsonl"], [tmp_path / "va.jsonl"], tokenizer="nucleotide", cache_dir=cache_dir)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "nolabel.jsonl",
            '{"seq": "ACGT", "label": "a"}\n{"seq": "ACGT"}\n',
            r"nolabel\.jsonl:2: no field 'label'.*without a label",
        ),
        ("emptylabel.jsonl", '{"seq": "ACGT", "label": " "}\n', r"emptylabel\.jsonl:1: row without a label"),
        ("noseq.jsonl", '{"sequence": "ACGT", "label": "a"}\n', r"noseq\.jsonl:1: no field 'seq'"),
        (
            "badchar.jsonl",
            '{"seq": "ACGT", "label": "a"}\n{"seq": "ACZT", "label": "a"}\n',
            r"badchar\.jsonl:2: character 'Z' at position 3",
        ),
        ("empty.jsonl", "", r"empty\.jsonl: empty file"),
        ("emptyseq.jsonl", '{"seq": "", "label": "a"}\n', r"emptyseq\.jsonl:1: empty input"),
        ("nolabel.csv", "seq,label\nACGT,a\nACGT,\n", r"nolabel\.csv:3: row without a label"),
        (
            "nocol.tsv",
            "seq\tclass\nACGT\ta\n",
            r"nocol\.tsv:1: no column 'label' in the header \(columns: seq, class\)",
        ),
        ("nolabel.fa", ">r1 a\nACGT\n>r2\nACGT\n", r"nolabel\.fa:3: row without a label: header 'r2'"),
        ("rows.txt", "ACGT a\n", r"rows\.txt: unsupported labelled file type"),
    ],
)
def test_bad_rows(tmp_path, cache_dir, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        encode_labelled([tmp_path / name], tokenizer="nucleotide", val_fraction=0, cache_dir=cache_dir)


def test_fasta_needs_the_nucleotide_tokenizer(tmp_path, cache_dir):
    (tmp_path / "c.fa").write_text(">r1 yes\nACGT\n")
    with pytest.raises(DataError, match="needs data.tokenizer=nucleotide"):
        encode_labelled([tmp_path / "c.fa"], tokenizer="byte", cache_dir=cache_dir)
    assert NucleotideTokenizer().pad_id == 6
