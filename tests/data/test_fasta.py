"""FASTA encoding against a naive parser, the real genomes, windows, N policy, splits, bad input."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdata.stateful_dataloader import StatefulDataLoader

import ssm_train.data.fasta as fasta
from ssm_train.data.fasta import FastaWindows, Regions, hold_out_records, load_fasta, split_regions, whole_records
from ssm_train.data.cache import ArrayWriter
from ssm_train.data.tokenizers import NucleotideTokenizer, reverse_complement
from ssm_train.errors import DataError

IUPAC = "RYSWKMBDHVN"


def reference_fasta(text: str) -> list[tuple[str, str]]:
    """Obviously right: line by line, one character at a time."""
    records: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(">"):
            words = line[1:].split()
            records.append((words[0] if words else "", []))
        elif line.strip():
            records[-1][1].append("".join(line.split()))
    code = lambda c: "ACGT"["ACGT".index(c)] if c in "ACGT" else ("T" if c == "U" else "N")  # noqa: E731
    return [(name, "".join(code(c) for c in "".join(parts).upper())) for name, parts in records]


def encode_text(text: str, gz: bool = False) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("x.fa.gz" if gz else "x.fa")
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
        writer = ArrayWriter(Path(d) / "codes.bin", np.dtype(np.uint8))
        records = fasta.encode_fasta(path, writer)
        writer.close()
        codes = np.fromfile(Path(d) / "codes.bin", dtype=np.uint8)
    spell = np.frombuffer(b"ACGTN", dtype=np.uint8)
    return [(r["name"], spell[codes[r["offset"] : r["offset"] + r["length"]]].tobytes().decode()) for r in records]


record = st.tuples(
    st.text(alphabet="abcXYZ019_:-", min_size=0, max_size=8),
    st.text(alphabet="ACGTU" + IUPAC + "acgtu" + IUPAC.lower(), max_size=200),
    st.integers(1, 80),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(record, min_size=1, max_size=5), st.sampled_from([5, 64, 1 << 22]), st.booleans(), st.booleans())
def test_encoding_matches_the_naive_parser(records, block, crlf, gz):
    eol = "\r\n" if crlf else "\n"
    parts = []
    for name, seq, width in records:
        parts.append(f">{name} some description{eol}")
        parts += [seq[i : i + width] + eol for i in range(0, len(seq), width)]
        parts.append(eol)  # blank lines are harmless
    text = "".join(parts).rstrip("\r\n")  # and so is a missing final newline
    old, fasta._BLOCK = fasta._BLOCK, block  # small blocks exercise lines split across reads
    try:
        assert encode_text(text, gz) == reference_fasta(text)
    finally:
        fasta._BLOCK = old


# --- the real genomes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ecoli(shared_data, cache_dir):
    return load_fasta(shared_data / "genomics" / "ecoli_k12_mg1655.fa.gz", cache_dir)


def test_ecoli_genome(ecoli, shared_data):
    lines = gzip.open(shared_data / "genomics" / "ecoli_k12_mg1655.fa.gz", "rt").read().splitlines()
    ref = "".join(line.strip() for line in lines if not line.startswith(">"))
    assert [r["name"] for r in ecoli.records] == ["K-12-MG1655"]
    assert ecoli.records[0]["length"] == len(ref) and round(len(ref) / 1e6, 2) == 4.64  # the README's 4.64 Mbp
    spell = np.frombuffer(b"ACGTN", dtype=np.uint8)
    assert spell[ecoli.codes.array].tobytes() == ref.encode()


def test_celegans_chromosome_length(shared_data, cache_dir):
    chrx = load_fasta(shared_data / "genomics" / "celegans_ce2_chrX.fa.gz", cache_dir)
    assert [(r["name"], r["length"]) for r in chrx.records] == [("chrX", 17_718_849)]  # the README's count


def test_cache_is_reused(ecoli, shared_data, cache_dir):
    again = load_fasta(shared_data / "genomics" / "ecoli_k12_mg1655.fa.gz", cache_dir)
    assert again.codes.path == ecoli.codes.path


# --- windows ------------------------------------------------------------------------------------


def windows(files, regions, **kw):
    kw = {
        "seq_len": 32,
        "tokenizer": NucleotideTokenizer(),
        "seed": 0,
        "shuffle": True,
        "infinite": False,
        "with_index": True,
        **kw,
    }
    return FastaWindows(files, regions, **kw)


def test_tiled_windows_are_shifted_slices(ecoli):
    for k in (1, 3):
        tok = NucleotideTokenizer(k)
        s = windows([ecoli], whole_records([ecoli]), tokenizer=tok, sampling="tiled")
        span, stride = 33 * k, 32 * k
        assert s.n_items == (ecoli.records[0]["length"] - span) // stride + 1
        codes = np.asarray(ecoli.codes.array)
        for sample, _ in zip(iter(s), range(40)):
            i = int(sample["index"])
            w = tok.ids_from_codes(codes[i * stride : i * stride + span])
            assert sample["inputs"].tolist() == w[:-1].tolist() and sample["targets"].tolist() == w[1:].tolist()


@pytest.fixture
def two_records(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    a = "".join(rng.choice(list("ACGT"), 3000))
    b = "".join(rng.choice(list("ACGT"), 1000))
    (tmp_path / "two.fa").write_text(f">a\n{a}\n>b\n{b}\n>tiny\nACGT\n")
    return load_fasta(tmp_path / "two.fa", cache_dir), a, b


def test_random_windows_stay_inside_records_in_proportion(two_records, caplog):
    f, a, b = two_records
    s = windows([f], whole_records([f]), sampling="random", infinite=True)
    assert "1 of 3 record region(s) shorter than a window" in caplog.text  # 'tiny' is skipped, and said so
    tok = NucleotideTokenizer()
    counts = {"a": 0, "b": 0}
    for sample, _ in zip(iter(s), range(2000)):
        seq = tok.decode(sample["inputs"]) + tok.decode(sample["targets"][-1:])
        found = [name for name, rec in (("a", a), ("b", b)) if seq in rec]
        assert len(found) == 1  # a real substring of exactly one record: never across a boundary
        counts[found[0]] += 1
    assert 2.4 < counts["a"] / counts["b"] < 3.8  # valid starts 2968 : 968 ≈ 3.07


def test_tiled_and_random_windows_reset_at_column_0_only(two_records):
    """They never cross a record (above), so no record starts inside one; windows that cross records
    (data.window_sampling=contiguous) are tested in test_contiguous.py."""
    f, _, _ = two_records
    for sampling in ("tiled", "random"):
        for sample, _ in zip(iter(windows([f], whole_records([f]), sampling=sampling)), range(200)):
            assert sample["resets"].dtype == torch.bool and sample["resets"].shape == (32,)
            assert sample["resets"][0] and not sample["resets"][1:].any()


def test_reverse_complement_augmentation(two_records):
    f, a, _ = two_records
    regions = Regions.build([(0, 0, 3000, "a")])
    plain = windows([f], regions, sampling="tiled", shuffle=False)
    flipped = windows([f], regions, sampling="tiled", shuffle=False, reverse_complement=True)
    n_flipped = 0
    for x, y in zip(iter(plain), iter(flipped)):
        fwd = np.concatenate([x["inputs"].numpy(), x["targets"].numpy()[-1:]])
        got = np.concatenate([y["inputs"].numpy(), y["targets"].numpy()[-1:]])
        rc = reverse_complement(fwd.astype(np.uint8)).astype(np.int64)
        assert np.array_equal(got, fwd) or np.array_equal(got, rc)
        n_flipped += not np.array_equal(got, fwd)
    assert 0.25 < n_flipped / plain.n_items < 0.75


def test_n_policy(tmp_path, cache_dir):
    # 200 clean bases, 100 ambiguity codes (read as N), 200 clean bases
    rng = np.random.default_rng(1)
    clean = lambda n: "".join(rng.choice(list("acgt"), n))  # noqa: E731  (soft-masked: lower case)
    (tmp_path / "n.fa").write_text(f">n\n{clean(200)}\n{''.join(rng.choice(list(IUPAC), 100))}\n{clean(200)}\n")
    f = load_fasta(tmp_path / "n.fa", cache_dir)
    codes = np.asarray(f.codes.array)
    assert (codes[200:300] == 4).all() and (codes[:200] < 4).all()
    keep = windows([f], whole_records([f]), sampling="tiled", n_policy="keep")
    skip = windows([f], whole_records([f]), sampling="tiled", n_policy="skip", max_n_fraction=0.1)
    span, stride = 33, 32
    starts = np.arange(0, 500 - span + 1, stride)
    n_frac = np.array([(codes[s : s + span] == 4).mean() for s in starts])
    assert keep.n_items == len(starts)
    assert skip.n_items == int((n_frac <= 0.1).sum()) < len(starts)
    for s in (
        iter(skip),
        iter(windows([f], whole_records([f]), sampling="random", n_policy="skip", max_n_fraction=0.1)),
    ):
        for sample, _ in zip(s, range(200)):
            assert (sample["inputs"] == 4).float().mean() <= 0.1 + 1e-9
    with pytest.raises(DataError, match="n_policy='drop'"):
        windows([f], whole_records([f]), n_policy="drop")
    with pytest.raises(DataError, match="more than max_n_fraction"):
        windows([f], Regions.build([(0, 200, 100, "n")]), seq_len=20, sampling="tiled", n_policy="skip")


def test_validation_is_each_records_tail_or_named_records(two_records):
    f, a, b = two_records
    train, val = split_regions([f], val_fraction=0.1)
    assert list(zip(val.name, val.start.tolist(), val.length.tolist())) == [
        ("a", 2700, 300),
        ("b", 3900, 100),
        ("tiny", 4004, 0),
    ]
    assert train.length.tolist() == [2700, 900, 4]
    tok = NucleotideTokenizer()
    v = windows([f], val, sampling="tiled", shuffle=False)
    first = next(iter(v))
    assert tok.decode(first["inputs"]) == a[2700 : 2700 + 32]
    train, val = split_regions([f], val_fraction=0.1, val_records=["b"])
    assert (train.name, val.name) == (["a", "tiny"], ["b"])
    assert val.length.tolist() == [1000]
    with pytest.raises(DataError, match="no record named 'chrZ'"):
        split_regions([f], val_fraction=0.1, val_records=["chrZ"])


@pytest.fixture
def upstream_regions(tmp_path, cache_dir):
    """Many short records (2 kb upstream regions, a few shorter ones): a 5% tail is 100 bases."""
    rng = np.random.default_rng(1)
    lengths = [2000] * 37 + [300, 2500, 1800]
    text = "".join(f">up{i} upstream\n{''.join(rng.choice(list('ACGT'), n))}\n" for i, n in enumerate(lengths))
    (tmp_path / "upstream.fa").write_text(text)
    return load_fasta(tmp_path / "upstream.fa", cache_dir), lengths


def test_short_records_hold_out_whole_records(upstream_regions, caplog):
    f, lengths = upstream_regions
    span = 513  # seq_len 512: longer than any 5% tail
    train, val = split_regions([f], val_fraction=0.05, span=span)
    assert "validation holds out 2 of 39 whole records instead" in caplog.text
    names = [r["name"] for r in f.records]
    assert set(train.name).isdisjoint(val.name) and sorted(train.name + val.name) == sorted(names)
    assert all(n >= span for n in val.length.tolist())  # only records that hold a window
    usable = sum(n for n in lengths if n >= span)
    assert val.length.sum() >= 0.05 * usable and len(val) < 0.1 * len(lengths)
    assert val.name == ["up9", "up29"]  # spread in file order, the same on every rank and restart
    assert train.length.tolist() == [n for n, name in zip(lengths, names) if name not in val.name]
    again = hold_out_records([f], val_fraction=0.05, span=span, quiet=True)
    assert again[1].name == val.name and "up9" not in again[0].name


def test_windows_settle_a_tail_split_on_whole_records_once(upstream_regions, caplog):
    f, _ = upstream_regions
    train, val = split_regions([f], val_fraction=0.05)  # as the data module calls it: no window yet
    assert val.length.max() == 125  # the tails: none holds a window of 513 bases
    t = windows([f], train, seq_len=512, sampling="tiled")
    v = windows([f], val, seq_len=512, sampling="tiled", shuffle=False)
    assert v.regions.name == ["up9", "up29"] and not set(t.regions.name) & {"up9", "up29"}
    assert caplog.text.count("whole records instead") == 1  # said once, by the validation side
    assert v.n_items == 3 + 3  # tiles of two 2000-base records at stride 512
    short = windows([f], split_regions([f], val_fraction=0.05)[1], seq_len=64, sampling="tiled", shuffle=False)
    assert short.regions.name[:2] == ["up0", "up1"] and short.regions.length[0] == 100  # tails hold windows


def test_an_experiment_runs_unchanged_on_many_short_records(upstream_regions, tmp_path, capsys):
    from ssm_train.cli import main

    f, _ = upstream_regions
    experiment = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "dna_ecoli.yaml"
    tiny = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.batch_size=2", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "checkpoint.every_n_steps=2", "trainer.limit_val_batches=1",
            "logger.mode=disabled", "trainer.enable_progress_bar=false", f"runs_dir={tmp_path / 'runs'}"]
    code = main(["fit", "-c", str(experiment), f"data.path={f.path}", f"data.cache_dir={tmp_path / 'c'}", *tiny])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "final val/" in out and "at step 2 " in out


def test_random_windows_resume_exactly(ecoli):
    def make():
        return windows([ecoli], whole_records([ecoli]), sampling="random", reverse_complement=True, infinite=True)

    def take(loader, n):
        it = iter(loader)
        return [next(it)["inputs"] for _ in range(n)]

    whole = take(StatefulDataLoader(make(), batch_size=8), 12)
    first = StatefulDataLoader(make(), batch_size=8)
    head = take(first, 5)
    resumed = StatefulDataLoader(make(), batch_size=8)
    resumed.load_state_dict(first.state_dict())
    tail = take(resumed, 7)
    assert all((x == y).all() for x, y in zip(head + tail, whole))


# --- bad input ----------------------------------------------------------------------------------


def test_bad_fasta_inputs(tmp_path, cache_dir, shared_data):
    def load(name, content):
        path = tmp_path / name
        path.write_bytes(content)
        return load_fasta(path, cache_dir)

    with pytest.raises(DataError, match=r"headless\.fa:2: FASTA without a header"):
        load("headless.fa", b"\nACGT\nACGT\n")
    with pytest.raises(DataError, match=r"bad\.fa:3: character 'X' at column 3 is not a nucleotide"):
        load("bad.fa", b">r\nACGT\nACXT\n")
    with pytest.raises(DataError, match=r"later\.fa:5: character '-'"):
        load("later.fa", b">r\nACGT\n>s desc\nAC\nA-\n")
    with pytest.raises(DataError, match=r"empty\.fa: empty file"):
        load("empty.fa", b"")
    with pytest.raises(DataError, match=r"blank\.fa: no FASTA record"):
        load("blank.fa", b"\n\n")
    data = (shared_data / "genomics" / "ecoli_k12_mg1655.fa.gz").read_bytes()
    with pytest.raises(DataError, match=r"cut\.fa\.gz after line \d+: truncated or corrupt"):
        load("cut.fa.gz", data[: len(data) // 3])
    f = load("short.fa", b">s\nACGTACGT\n>t\nACG\n")
    with pytest.raises(
        DataError, match=r"no sequence is as long as one window of \(seq_len \+ 1\)·kmer = 33 bases \(longest: 8\)"
    ):
        windows([f], whole_records([f]))
