"""Data throughput per worker (one process, one thread): tokenizers and window streams.

    .venv/bin/python benchmarks/data.py [--repeats 5] [--shared ../shared/data]

Prints, as medians over repeats, tokens (or bases) per second for

- tokenisation: byte / char of Austen, nucleotide of the E. coli genome, each in 1 MiB pieces,
  against a per-character Python look-up measured in the same run (the baseline of the ratio);
- encoding a FASTA.gz into the cache (gzip + parse + look-up + write);
- the streams a dataloader worker runs: shuffled text windows and random, reverse-complemented
  FASTA windows, batched by a ``StatefulDataLoader`` with ``num_workers=0`` (the work of one worker).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from ssm_train.data.fasta import FastaWindows, load_fasta, whole_records
from ssm_train.data.text import TextWindows, encode_text_corpus
from ssm_train.data.tokenizers import ByteTokenizer, CharTokenizer, NucleotideTokenizer

PIECE = 1 << 20


def median_rate(fn, n_units: int, repeats: int) -> float:
    """Median of ``n_units / seconds`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_units / statistics.median(times)


def pieces(text: str) -> list[str]:
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)]


def python_lookup(text: str, table: dict[str, int]) -> list[int]:
    """The baseline: one dict look-up per character."""
    return [table[c] for c in text]


def stream_rate(stream, batch_size: int, n_batches: int, repeats: int) -> float:
    def run():
        loader = StatefulDataLoader(stream, batch_size=batch_size, num_workers=0)
        for batch in itertools.islice(loader, n_batches):
            assert batch["inputs"].dtype == torch.int64

    seq_len = stream.seq_len
    return median_rate(run, n_batches * batch_size * seq_len, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    austen_path = args.shared / "text" / "austen.txt.gz"
    ecoli_path = args.shared / "genomics" / "ecoli_k12_mg1655.fa.gz"
    austen = gzip.open(austen_path, "rt", encoding="utf-8").read()
    lines = gzip.open(ecoli_path, "rt").read().splitlines()
    ecoli = "".join(line.strip() for line in lines if not line.startswith(">"))
    rows: list[tuple[str, float, float | None]] = []

    byte, char, nuc = ByteTokenizer(), CharTokenizer.from_texts([austen]), NucleotideTokenizer()
    sample = austen[:200_000]
    byte_table = {c: c.encode()[0] for c in set(sample) if len(c.encode()) == 1}
    sample = "".join(c for c in sample if c in byte_table)
    char_table = {c: i for i, c in enumerate(char.chars)}
    nuc_table = {c: "ACGTN".index(c) for c in "ACGTN"}
    baseline = {
        "byte": median_rate(lambda: python_lookup(sample, byte_table), len(sample), args.repeats),
        "char": median_rate(lambda: python_lookup(sample, char_table), len(sample), args.repeats),
        "nucleotide": median_rate(lambda: python_lookup(ecoli[:200_000], nuc_table), 200_000, args.repeats),
    }
    for name, tok, text in (("byte", byte, austen), ("char", char, austen), ("nucleotide", nuc, ecoli)):
        parts = pieces(text)
        n = sum(len(tok.encode(p)) for p in parts)
        rate = median_rate(lambda: [tok.encode(p) for p in parts], n, args.repeats)
        corpus = "austen" if name != "nucleotide" else "ecoli"
        rows.append((f"tokenize {name} ({corpus}, 1 MiB pieces)", rate, rate / baseline[name]))

    with tempfile.TemporaryDirectory() as cache:

        def encode_fasta():
            for p in Path(cache).iterdir():
                if p.is_dir():
                    for f in p.iterdir():
                        f.unlink()
                    p.rmdir()
            load_fasta(ecoli_path, cache)

        rows.append(
            ("encode ecoli.fa.gz into the cache (bases/s)", median_rate(encode_fasta, len(ecoli), args.repeats), None)
        )

        corpus = encode_text_corpus([austen_path], tokenizer="byte", cache_dir=cache)
        genome = load_fasta(ecoli_path, cache)
        for seq_len, n_batches in ((128, 200), (1024, 50)):
            text = TextWindows(corpus.train, seq_len, seed=0, shuffle=True, infinite=True)
            rate = stream_rate(text, 32, n_batches, args.repeats)
            rows.append((f"stream text windows, byte, seq_len={seq_len}, batch 32", rate, None))
            dna = FastaWindows(
                [genome],
                whole_records([genome]),
                seq_len=seq_len,
                tokenizer=nuc,
                sampling="random",
                reverse_complement=True,
                seed=0,
                shuffle=True,
                infinite=True,
            )
            rate = stream_rate(dna, 32, n_batches, args.repeats)
            rows.append((f"stream FASTA windows, random + rc, seq_len={seq_len}, batch 32", rate, None))

    width = max(len(r[0]) for r in rows)
    print(f"one process, one thread, median of {args.repeats}; baseline = per-character Python dict look-up\n")
    print(f"{'what':<{width}}  {'M tokens/s':>10}  {'x baseline':>10}")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 10}")
    for what, rate, ratio in rows:
        print(f"{what:<{width}}  {rate / 1e6:>10.1f}  {'' if ratio is None else f'{ratio:.0f}':>10}")
    print("\n(baseline look-up rates, M chars/s: " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in baseline.items()) + ")")


if __name__ == "__main__":
    main()
