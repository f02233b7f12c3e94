"""The ``data`` section of the run config (one flat dataclass; ``kind`` picks the data module)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    # synthetic tasks: copy | nonlinear | ode | recall; corpora: text | fasta | labelled
    kind: str = "copy"
    path: list[str] = field(default_factory=list)  # files or globs (corpora only)
    seq_len: int = 128
    batch_size: int = 32
    num_workers: int = 0
    seed_offset: int = 0  # added to the run seed for data order (shuffle buffer, synthetic draws)

    # --- synthetic tasks (generated on the fly, deterministic by seed) ---
    d_input: int = 1  # channels of the input signal (copy, nonlinear, ode)
    lag: int = 16  # copy: recover u_{t-lag}; nonlinear: the lags used
    window: int = 1  # copy: recover the whole window u_{t-lag-window+1..t-lag}
    vocab_size: int = 16  # recall: key/value alphabet
    n_pairs: int = 8  # recall: key-value pairs per sequence
    n_queries: int = 8  # recall: queries per sequence
    val_batches: int = 8  # synthetic: fixed validation batches

    # --- corpora (encoded once into a cache, then streamed from memmaps; docs/data.md) ---
    tokenizer: str = "byte"  # byte | char | char:<saved .json> | nucleotide | hf:<path to tokenizer.json>
    kmer: int = 1  # nucleotide tokenizer: k-mer size
    text_field: str = "text"  # JSONL / CSV / parquet field holding the text
    label_field: str = "label"  # labelled data: field holding the label
    seq_field: str = "seq"  # labelled DNA (tokenizer=nucleotide): field holding the sequence
    val_fraction: float = 0.05  # held-out fraction of documents / rows / each FASTA record's tail
    val_path: list[str] = field(default_factory=list)  # explicit validation files instead
    # training order: 0 = in file order; any other value = a full pseudo-random permutation of each
    # epoch keyed by (seed, epoch) (windows are index-addressed, so no finite buffer is needed)
    shuffle_buffer: int = 1024
    n_policy: str = "keep"  # FASTA: keep (IUPAC codes read as N) | skip (windows above max_n_fraction)
    max_n_fraction: float = 0.1
    reverse_complement: bool = False  # FASTA: augment training windows (each with probability 1/2)
    cache_dir: str = ""  # encoded corpora; "" = $SSM_TRAIN_CACHE or ~/.cache/ssm_train/data
    text_document: str = "paragraph"  # what one document of a .txt file is: paragraph | line | file
    # training windows: random (FASTA: uniform starts) | tiled (FASTA: stride seq_len) | contiguous
    # (text, FASTA: each batch row reads one section of the corpus, window after window, so a model can
    # carry its state from batch to batch; validation too). text reads random and tiled alike.
    window_sampling: str = "random"
    # text / FASTA batches carry resets [B, seq_len] (the model zeroes its state before a True step):
    # True at column 0 of a window that continues no other, and, when this is on, at document starts
    # (each <eos> input; the first token of a FASTA record a window crosses into). False: column 0 only
    reset_at_documents: bool = True
    val_records: list[str] = field(default_factory=list)  # FASTA: hold these records out whole
    header_label: str = ""  # labelled FASTA: regex whose group 1 is the label ("" = last header word)
    class_names: list[str] = field(default_factory=list)  # labelled: fixed label map ([] = sorted train labels)


CHOICES: dict[str, tuple[str, ...]] = {
    "n_policy": ("keep", "skip"),
    "window_sampling": ("random", "tiled", "contiguous"),
    "text_document": ("paragraph", "line", "file"),
}
CONTIGUOUS_KINDS = ("text", "fasta")
TOKENIZERS = "byte | char | char:<saved .json> | nucleotide | hf:<path to tokenizer.json>"


def data_problems(cfg: DataConfig) -> list[tuple[str, str]]:
    """(key under ``data.``, what is wrong) for values no data module could use; checked when the
    config is loaded, so that ``ssm-train config`` reports them too, not only a started run."""
    problems = [(key, f"must be one of {', '.join(valid)}, got {getattr(cfg, key)!r}")
                for key, valid in CHOICES.items() if getattr(cfg, key) not in valid]
    tok = cfg.tokenizer
    if tok not in ("byte", "char", "nucleotide") and not tok.startswith(("char:", "hf:")):
        problems.append(("tokenizer", f"must be {TOKENIZERS}, got {tok!r}"))
    if not 0 <= cfg.val_fraction < 1:
        problems.append(("val_fraction", f"must be in [0, 1) (the held-out fraction), got {cfg.val_fraction}"))
    if not 0 <= cfg.max_n_fraction <= 1:
        problems.append(("max_n_fraction", f"must be a fraction in [0, 1], got {cfg.max_n_fraction}"))
    if not 1 <= cfg.kmer <= 8:
        problems.append(("kmer", f"must be in 1..8 (the nucleotide tokenizer's k-mer size), got {cfg.kmer}"))
    if cfg.shuffle_buffer < 0:
        problems.append(("shuffle_buffer", f"must be >= 0 (0 = file order), got {cfg.shuffle_buffer}"))
    if cfg.window_sampling == "contiguous":
        if cfg.kind not in CONTIGUOUS_KINDS:
            problems.append(("window_sampling", f"contiguous is for data.kind {' | '.join(CONTIGUOUS_KINDS)} "
                                                f"(one long stream per batch row), got data.kind={cfg.kind!r}"))
        elif cfg.kind == "fasta" and cfg.n_policy != "keep":
            problems.append(("n_policy", "must be keep with window_sampling=contiguous (a stream cannot skip "
                                         f"windows), got {cfg.n_policy!r}"))
        elif cfg.kind == "fasta" and cfg.reverse_complement:
            problems.append(("reverse_complement", "must be false with window_sampling=contiguous (flipping "
                                                   "single windows breaks the stream)"))
    return problems
