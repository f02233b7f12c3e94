"""data.window_sampling=contiguous: each batch row reads one section of the corpus, window after window.

Every test rebuilds each section from the batches and compares it with the encoded token array, so
"abut exactly", "never overlap", "cover the sections" and "resets/offsets right" are all checked
against the array itself, not against the stream's own arithmetic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ssm_train.data.config import DataConfig, data_problems
from ssm_train.data.fasta import FastaStreams, load_fasta, whole_records
from ssm_train.data.kinds import build_datamodule  # noqa: F401  (first: it registers the kinds in their order)
from ssm_train.data.modules import FastaDataModule, TextDataModule
from ssm_train.data.tokenizers import NucleotideTokenizer
from ssm_train.errors import DataError

SEQ, BATCH = 16, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Short paragraphs of random words: documents of 5 to 80 bytes, so <eos> falls anywhere."""
    d = tmp_path_factory.mktemp("contiguous")
    rng = np.random.default_rng(0)
    words = ["a", "bb", "ccc", "dddd", "the", "river", "ran", "on"]

    def paragraphs(n):
        return "\n\n".join(" ".join(rng.choice(words, rng.integers(1, 16))) for _ in range(n)) + "\n"

    (d / "train.txt").write_text(paragraphs(120))
    (d / "val.txt").write_text(paragraphs(40))
    return d


def text_cfg(corpus, cache_dir, **kw):
    return DataConfig(**{"kind": "text", "path": [str(corpus / "train.txt")], "val_path": [str(corpus / "val.txt")],
                         "seq_len": SEQ, "batch_size": BATCH, "window_sampling": "contiguous",
                         "cache_dir": cache_dir, **kw})


def take(loader, n=None):
    return list(itertools.islice(iter(loader), n))


def check_sections(batches, tokens, stream, rank, eos):
    """Row b of rank r rebuilds section r·B + b of the array exactly, with the resets and offsets
    (``stream``: the rank's, for its section length and window count)."""
    length, n_w = stream.section_len, stream.n_windows
    assert length == len(tokens) // stream.n_sections
    for b in range(BATCH):
        s = rank * BATCH + b
        section = tokens[s * length : (s + 1) * length]
        for k, batch in enumerate(batches):
            j = k % n_w
            w = section[j * SEQ : j * SEQ + SEQ + 1]
            assert batch["inputs"][b].tolist() == w[:-1].tolist() and batch["targets"][b].tolist() == w[1:].tolist()
            assert int(batch["offset"][b]) == j * SEQ
            expected = w[:-1] == eos if eos is not None else np.zeros(SEQ, dtype=bool)
            expected[0] |= j == 0  # a section start, and nowhere else unless a document starts there
            assert batch["resets"][b].tolist() == expected.tolist()
    # consecutive windows abut: window k+1's first input is the token after window k's last input
    for a, c in zip(batches, batches[1:]):
        cont = c["offset"] > 0
        assert torch.equal(c["inputs"][cont, 0], a["targets"][cont, -1])
    return {rank * BATCH + b for b in range(BATCH)}


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rows_read_their_sections_window_after_window(corpus, cache_dir, world):
    module = TextDataModule(text_cfg(corpus, cache_dir), seed=0)
    tokens = np.asarray(module.corpus.train.array).astype(np.int64)
    eos = module.corpus.tokenizer.eos_id
    n_w = module.train_stream.shard(0, world).n_windows
    assert n_w >= 5
    covered = []
    for rank in range(world):
        m = TextDataModule(text_cfg(corpus, cache_dir), seed=0, rank=rank, world_size=world)
        batches = take(m.train_dataloader(), n_w + 3)  # past the end: the sections start over
        for batch in batches:
            assert batch["resets"].dtype == torch.bool and batch["resets"].shape == (BATCH, SEQ)
            assert batch["offset"].dtype == torch.int64 and batch["offset"].shape == (BATCH,)
        assert [int(b["offset"][0]) for b in batches[n_w - 1 : n_w + 2]] == [(n_w - 1) * SEQ, 0, SEQ]
        covered.append(check_sections(batches, tokens, m.train_stream.shard(rank, world), rank, eos))
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(covered, 2))
    assert set().union(*covered) == set(range(world * BATCH))  # together: every section


def test_reset_at_documents_false_keeps_the_section_starts(corpus, cache_dir):
    module = TextDataModule(text_cfg(corpus, cache_dir, reset_at_documents=False), seed=0)
    tokens = np.asarray(module.corpus.train.array).astype(np.int64)
    batches = take(module.train_dataloader(), module.train_stream.n_windows + 1)
    check_sections(batches, tokens, module.train_stream, 0, eos=None)
    assert [bool(b["resets"][:, 0].all()) for b in batches] == [True] + [False] * (len(batches) - 2) + [True]


@pytest.mark.parametrize("world", [1, 2])
def test_workers_give_the_same_batches(corpus, cache_dir, world):
    runs = []
    for workers in (0, 2):
        m = TextDataModule(text_cfg(corpus, cache_dir, num_workers=workers), seed=0, rank=world - 1, world_size=world)
        runs.append(take(m.train_dataloader(), 2 * m.train_stream.shard(0, world).n_windows + 3))
    for a, b in zip(*runs):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("where", ["mid", "end", "after"])  # mid-stream, at a pass's last window, just after
def test_resume_mid_stream_is_exact(corpus, cache_dir, workers, where):
    cfg = text_cfg(corpus, cache_dir, num_workers=workers)
    n_w = TextDataModule(cfg, seed=0).train_stream.n_windows
    stop = {"mid": 5, "end": n_w, "after": n_w + 3}[where]
    total = stop + 9
    whole = take(TextDataModule(cfg, seed=0).train_dataloader(), total)
    loader = TextDataModule(cfg, seed=0).train_dataloader()
    it = iter(loader)
    for _ in range(stop + 1):  # as Lightning does: one batch fetched ahead of the one trained on
        next(it)
    state = loader.state_dict()  # the ResumableDataLoader's: `stop` batches consumed
    del it, loader
    resumed = TextDataModule(cfg, seed=0).train_dataloader()
    resumed.load_state_dict(state)
    tail = take(resumed, total - stop)
    assert len(tail) == total - stop
    for a, b in zip(whole[stop:], tail):
        assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_validation_reads_each_section_once(corpus, cache_dir, workers, world):
    covered = []
    for rank in range(world):
        m = TextDataModule(text_cfg(corpus, cache_dir, num_workers=workers), seed=0, rank=rank, world_size=world)
        val = m.val_dataloader()
        stream = m.val_stream.shard(rank, world)
        tokens = np.asarray(m.corpus.val.array).astype(np.int64)
        first = take(val)
        assert len(first) == stream.n_windows  # finite: each window once, the same count on every rank
        covered.append(check_sections(first, tokens, stream, rank, m.corpus.tokenizer.eos_id))
        assert [int(x["offset"][0]) for x in first] == [j * SEQ for j in range(stream.n_windows)]
        again = take(val)  # every validation pass reads the sections from their start
        assert all(torch.equal(a["inputs"], b["inputs"]) for a, b in zip(first, again)) and len(again) == len(first)
    assert set().union(*covered) == set(range(world * BATCH))


def test_too_short_for_the_sections_names_batch_size_world_and_tokens(corpus, cache_dir):
    with pytest.raises(DataError, match=r"(?s)\d+ tokens.*world size 1 × data.batch_size 400 = 400 sections"):
        TextDataModule(text_cfg(corpus, cache_dir, batch_size=400), seed=0)
    module = TextDataModule(text_cfg(corpus, cache_dir, batch_size=40), seed=0)
    n = len(module.corpus.train)
    with pytest.raises(DataError, match=rf"{n} tokens into world size 8 × data.batch_size 40"):
        module.train_stream.shard(0, 8)
    assert data_problems(DataConfig(kind="text", window_sampling="contigous")) == [
        ("window_sampling", "must be one of random, tiled, contiguous, got 'contigous'")]
    assert [k for k, _ in data_problems(DataConfig(kind="labelled", window_sampling="contiguous"))] == [
        "window_sampling"]
    assert [k for k, _ in data_problems(DataConfig(kind="fasta", window_sampling="contiguous", n_policy="skip"))] == [
        "n_policy"]


def test_resume_on_other_sections_is_an_error(corpus, cache_dir):
    loader = TextDataModule(text_cfg(corpus, cache_dir), seed=0).train_dataloader()
    take(loader, 3)
    state = loader.state_dict()
    other = TextDataModule(text_cfg(corpus, cache_dir, batch_size=3), seed=0).train_dataloader()
    with pytest.raises(DataError, match="same world size × batch size"):
        other.load_state_dict(state)
        take(other, 1)


def test_data_parallel_rank_and_size_can_be_set(corpus, cache_dir):
    explicit = TextDataModule(text_cfg(corpus, cache_dir), seed=0, rank=1, world_size=2)
    later = TextDataModule(text_cfg(corpus, cache_dir), seed=0, rank=0, world_size=4)  # e.g. the global ones
    later.set_data_parallel(1, 2)  # data-parallel replica 1 of 2 (context groups of 2 ranks)
    for a, b in zip(take(explicit.train_dataloader(), 4), take(later.train_dataloader(), 4)):
        assert torch.equal(a["inputs"], b["inputs"])
    with pytest.raises(DataError, match="rank=2, world_size=2"):
        later.set_data_parallel(2, 2)


# --- FASTA ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def records(tmp_path_factory, cache_dir):
    rng = np.random.default_rng(3)
    lengths = [50, 37, 121, 9, 200, 64]
    seqs = ["".join(rng.choice(list("ACGT"), n)) for n in lengths]
    path = tmp_path_factory.mktemp("fasta") / "many.fa"
    path.write_text("".join(f">r{i} rec\n{s}\n" for i, s in enumerate(seqs)))
    return load_fasta(path, cache_dir), seqs


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("world", [1, 2])
def test_fasta_streams_cross_records_with_resets_at_their_starts(records, k, world):
    f, seqs = records
    tok = NucleotideTokenizer(k)
    kept = [s[: len(s) // k * k] for s in seqs]  # a tail shorter than a k-mer is dropped
    stream_ids = tok.encode("".join(kept))
    starts = set(np.cumsum([0] + [len(s) // k for s in kept[:-1]]).tolist())  # token index of each record start
    seq_len = 8
    for rank in range(world):
        s = FastaStreams([f], whole_records([f]), seq_len=seq_len, tokenizer=tok, batch_size=2, infinite=False,
                         rank=rank, world_size=world)
        rows = list(s)
        assert len(rows) == 2 * s.n_windows
        for i, sample in enumerate(rows):
            j, b = divmod(i, 2)
            begin = (rank * 2 + b) * s.section_len + j * seq_len  # where the window is in the stream
            assert sample["inputs"].tolist() == stream_ids[begin : begin + seq_len].tolist()
            assert sample["targets"].tolist() == stream_ids[begin + 1 : begin + seq_len + 1].tolist()
            expected = [begin + t in starts for t in range(seq_len)]
            expected[0] |= j == 0
            assert sample["resets"].tolist() == expected and int(sample["offset"]) == j * seq_len
        crossing = sum(bool(x["resets"][1:].any()) for x in rows)
        assert crossing >= 1  # some windows cross into a new record, and say so where
    off = FastaStreams([f], whole_records([f]), seq_len=seq_len, tokenizer=tok, batch_size=2, infinite=False,
                       reset_at_documents=False)
    assert all(not x["resets"][1:].any() for x in off)


def test_fasta_module_contiguous(records, cache_dir):
    f, _ = records
    cfg = DataConfig(kind="fasta", path=[str(f.path)], tokenizer="nucleotide", seq_len=8, batch_size=2,
                     window_sampling="contiguous", val_fraction=0.2, reverse_complement=False, cache_dir=cache_dir)
    module = FastaDataModule(cfg, seed=0)
    assert module.spec.extra["contiguous"] and module.spec.extra["resets"]
    train = take(module.train_dataloader(), module.train_stream.n_windows + 1)
    assert set(train[0]) == {"inputs", "targets", "resets", "offset"}
    assert train[0]["resets"][:, 0].all() and [int(x) for x in train[1]["offset"]] == [8, 8]
    assert train[-1]["resets"][:, 0].all() and int(train[-1]["offset"][0]) == 0  # started over
    val = take(module.val_dataloader())
    assert len(val) == module.val_stream.n_windows and val[0]["resets"][:, 0].all()
    # the validation tails of consecutive records are separate documents: resets where one begins
    assert sum(int(v["resets"][:, 1:].sum()) for v in val) >= 1
    with pytest.raises(DataError, match="n_policy='skip'"):
        FastaDataModule(DataConfig(**{**cfg.__dict__, "n_policy": "skip"}), seed=0)
    with pytest.raises(DataError, match="reverse_complement"):
        FastaDataModule(DataConfig(**{**cfg.__dict__, "reverse_complement": True}), seed=0)
