"""LightningDataModules over real corpora, each built from ``(cfg: DataConfig, seed)`` alone.

Each module registers its ``data.kind`` (``registry.py``) right below its class;
``ssm_train.data.kinds.build_datamodule(cfg, seed)`` picks the module by ``cfg.kind``:

====================  ======================  ======================================================
``kind``              module                  batches
====================  ======================  ======================================================
``text``              ``TextDataModule``      ``inputs``/``targets`` ``[B, seq_len]`` int64 (LM), ``resets``
``fasta``             ``FastaDataModule``     ``inputs``/``targets`` ``[B, seq_len]`` int64 (LM), ``resets``
``labelled``          ``LabelledDataModule``  ``inputs``/``mask`` ``[B, L]``, ``targets`` ``[B]`` int64
====================  ======================  ======================================================

Construction reads (or builds) the encoded corpus in the cache, so ``.spec`` is ready at once and
bad input fails here, before any training. The dataloaders are ``ResumableDataLoader``\\s
(``loader.py``: torchdata's ``StatefulDataLoader``, corrected for Lightning's one-batch prefetch)
over ``IterableDataset``\\s: Lightning then injects no ``DistributedSampler``, saves each worker's
``(epoch, position)`` in the checkpoint's loop state and hands it back on resume. The rank and
world size are read when a dataloader is made (``torch.distributed`` is initialised by then), unless
given explicitly (``rank=``, ``world_size=``, or ``set_data_parallel`` before the first
dataloader): these are the *data-parallel* rank and size, which differ from the trainer's global
ones under context parallelism, where all ranks of a context group must get the same batch.

``resets`` (bool ``[B, seq_len]``, text and FASTA) marks where the model zeroes its recurrent state:
column 0 of a window that continues no other, and with ``data.reset_at_documents`` each document
start (an ``<eos>`` input; the first token of a FASTA record). ``data.window_sampling=contiguous``
deals each batch row one section of the corpus, window after window (``ContiguousStream``), and adds
``offset`` (int64 ``[B]``: the first input's position in its section). Training streams are
infinite (the trainer stops at ``max_steps``); validation streams are finite, unshuffled, and every
rank yields the same number of batches.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torchdata.stateful_dataloader import StatefulDataLoader

from ssm_train.data.base import DataSpec
from ssm_train.data.config import DataConfig
from ssm_train.data.files import expand_paths
from ssm_train.data.fasta import FastaStreams, FastaWindows, load_fasta, split_regions, whole_records
from ssm_train.data.labelled import LabelledRows, PadCollate, encode_labelled
from ssm_train.data.loader import ResumableDataLoader
from ssm_train.data.registry import register_data
from ssm_train.data.stream import ContiguousStream, ShardedStream, resolve_rank
from ssm_train.data.text import TextStreams, TextWindows, encode_text_corpus
from ssm_train.data.tokenizers import NucleotideTokenizer
from ssm_train.errors import DataError


class CorpusDataModule(L.LightningDataModule):
    """Shared plumbing: streams built once at construction (rank 0 of 1), sharded per dataloader."""

    collate: Any = None  # None: torch's default collate (stacks equal-length windows)

    def __init__(
        self,
        cfg: DataConfig,
        seed: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        with_index: bool = False,
    ):
        super().__init__()
        self.cfg, self.seed = cfg, int(seed) + int(cfg.seed_offset)
        self.rank, self.world_size, self.with_index = rank, world_size, with_index
        if cfg.batch_size < 1:
            raise DataError(f"data.batch_size={cfg.batch_size}; expected >= 1")
        if cfg.num_workers < 0:
            raise DataError(f"data.num_workers={cfg.num_workers}; expected >= 0")
        self.train_stream: ShardedStream | ContiguousStream
        self.val_stream: ShardedStream | ContiguousStream | None = None
        self.spec: DataSpec

    @property
    def contiguous(self) -> bool:
        """Whether each batch row continues the previous batch's row (data.window_sampling=contiguous)."""
        return self.cfg.window_sampling == "contiguous"

    def set_data_parallel(self, rank: int, world_size: int) -> None:
        """Shard the data over ``world_size`` data-parallel replicas, this one being ``rank``, instead of
        the global rank and world size (e.g. under context parallelism: ``rank // cp_size`` of
        ``world_size // cp_size``, so every rank of one context group gets the same batches). Takes
        effect for the dataloaders made after it."""
        self.rank, self.world_size = resolve_rank(rank, world_size)

    def stream_options(self, train: bool) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "shuffle": train and self.cfg.shuffle_buffer != 0,
            "infinite": train,
            "rank": 0,
            "world_size": 1,
            "with_index": self.with_index,
        }

    def loader(self, stream: ShardedStream | ContiguousStream) -> StatefulDataLoader:
        return ResumableDataLoader(
            stream.shard(self.rank, self.world_size),
            batch_size=self.cfg.batch_size,
            num_workers=self.cfg.num_workers,
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self.loader(self.train_stream)

    def val_dataloader(self) -> StatefulDataLoader | list:
        return [] if self.val_stream is None else self.loader(self.val_stream)

    test_dataloader = val_dataloader  # the held-out split (data.val_path / val_fraction) is the test set

    # what a checkpoint must agree on: the model's vocabulary and classes
    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.spec.tokenizer.state_dict(), "class_names": self.spec.class_names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in self.state_dict().items():
            if key in state and state[key] != mine:
                raise DataError(
                    f"the checkpoint's {key} differs from the one built from data.path now; the data "
                    f"changed since it was saved (for a char vocabulary, set data.tokenizer=char:<saved json>)"
                )


def _val_files(cfg: DataConfig) -> list:
    return expand_paths(cfg.val_path, what="data.val_path") if cfg.val_path else []


def _no_val_data(what: str, cfg: DataConfig) -> DataError:
    return DataError(
        f"data.val_fraction={cfg.val_fraction} held out no {what}; raise it, give data.val_path, "
        "or set val_fraction=0 to train without validation"
    )


class TextDataModule(CorpusDataModule):
    """Byte / char / Hugging Face tokens of .txt, .jsonl, .parquet documents, packed into windows."""

    def __init__(self, cfg: DataConfig, seed: int, **kw: Any):
        super().__init__(cfg, seed, **kw)
        if cfg.tokenizer == "nucleotide":
            raise DataError("data.kind=text with data.tokenizer=nucleotide: use data.kind=fasta for genomes")
        val_files = _val_files(cfg)
        self.corpus = encode_text_corpus(
            expand_paths(cfg.path),
            val_files,
            tokenizer=cfg.tokenizer,
            document=cfg.text_document,
            text_field=cfg.text_field,
            val_fraction=cfg.val_fraction,
            cache_dir=cfg.cache_dir,
        )
        tok = self.corpus.tokenizer
        eos = tok.eos_id if cfg.reset_at_documents else None

        def stream(tokens: Any, train: bool, name: str) -> ShardedStream | ContiguousStream:
            if self.contiguous:
                return TextStreams(tokens, cfg.seq_len, cfg.batch_size, eos_id=eos, name=name,
                                   **self.stream_options(train))
            return TextWindows(tokens, cfg.seq_len, eos_id=eos, name=name, **self.stream_options(train))

        self.train_stream = stream(self.corpus.train, True, "text train")
        if len(self.corpus.val):
            self.val_stream = stream(self.corpus.val, False, "text validation")
        elif val_files or cfg.val_fraction > 0:
            raise _no_val_data("document", cfg)
        self.spec = DataSpec(task="lm", vocab_size=tok.vocab_size, tokenizer=tok,
                             extra=_extra(self, {**self.corpus.meta, **_stream_extra(self)}))


register_data("text", TextDataModule, summary="byte / char / HF tokens of .txt, .jsonl, .parquet documents (LM)")


class FastaDataModule(CorpusDataModule):
    """Windows of nucleotide (k-mer) tokens cut from FASTA genomes."""

    def __init__(self, cfg: DataConfig, seed: int, **kw: Any):
        super().__init__(cfg, seed, **kw)
        if cfg.tokenizer != "nucleotide":
            raise DataError(f"data.kind=fasta needs data.tokenizer=nucleotide (got {cfg.tokenizer!r})")
        tok = NucleotideTokenizer(cfg.kmer)
        files = [load_fasta(p, cfg.cache_dir) for p in expand_paths(cfg.path)]
        val_files = [load_fasta(p, cfg.cache_dir) for p in _val_files(cfg)]
        if val_files:
            train, val = whole_records(files), whole_records(val_files)
        elif cfg.val_records or cfg.val_fraction > 0:
            train, val = split_regions(files, val_fraction=cfg.val_fraction, val_records=cfg.val_records)
            val_files = files
        else:
            train, val = whole_records(files), None
        if self.contiguous:
            common = dict(seq_len=cfg.seq_len, tokenizer=tok, batch_size=cfg.batch_size, n_policy=cfg.n_policy,
                          reset_at_documents=cfg.reset_at_documents)
            self.train_stream = FastaStreams(files, train, reverse_complement=cfg.reverse_complement,
                                             name="fasta train", **common, **self.stream_options(True))
            if val is not None:
                self.val_stream = FastaStreams(val_files, val, name="fasta validation", **common,
                                               **self.stream_options(False))
        else:
            common = dict(seq_len=cfg.seq_len, tokenizer=tok, n_policy=cfg.n_policy,
                          max_n_fraction=cfg.max_n_fraction)
            self.train_stream = FastaWindows(
                files,
                train,
                sampling=cfg.window_sampling,
                reverse_complement=cfg.reverse_complement,
                name="fasta train",
                **common,
                **self.stream_options(True),
            )
            if val is not None:
                self.val_stream = FastaWindows(
                    val_files, val, sampling="tiled", name="fasta validation", **common,
                    **self.stream_options(False)
                )
        records = [{"file": str(f.path), "name": r["name"], "length": r["length"]} for f in files for r in f.records]
        self.spec = DataSpec(
            task="lm",
            vocab_size=tok.vocab_size,
            tokenizer=tok,
            extra=_extra(self, {"records": records[:1000], "n_records": len(records), **_stream_extra(self)}),
        )


register_data("fasta", FastaDataModule, summary="nucleotide (k-mer) windows of FASTA genomes (LM)")


class LabelledDataModule(CorpusDataModule):
    """Sequence (or text) classification rows from JSONL / CSV / TSV / FASTA-with-labels."""

    def __init__(self, cfg: DataConfig, seed: int, **kw: Any):
        super().__init__(cfg, seed, **kw)
        val_files = _val_files(cfg)
        self.data = encode_labelled(
            expand_paths(cfg.path),
            val_files,
            tokenizer=cfg.tokenizer,
            kmer=cfg.kmer,
            text_field=cfg.text_field,
            seq_field=cfg.seq_field,
            label_field=cfg.label_field,
            header_label=cfg.header_label,
            val_fraction=cfg.val_fraction,
            class_names=cfg.class_names,
            cache_dir=cfg.cache_dir,
        )
        self.collate = PadCollate(self.data.tokenizer.pad_id)
        self.train_stream = LabelledRows(
            self.data.train, cfg.seq_len, name="labelled train", **self.stream_options(True)
        )
        if self.data.val.n_rows:
            self.val_stream = LabelledRows(
                self.data.val, cfg.seq_len, name="labelled validation", **self.stream_options(False)
            )
        elif val_files or cfg.val_fraction > 0:
            raise _no_val_data("row", cfg)
        tok, names = self.data.tokenizer, self.data.class_names
        self.spec = DataSpec(
            task="classify",
            vocab_size=tok.vocab_size,
            d_output=len(names),
            class_names=names,
            tokenizer=tok,
            extra=_extra(self, {"rows": self.data.meta["rows"]}),
        )


register_data("labelled", LabelledDataModule, summary="labelled rows of JSONL / CSV / TSV / FASTA (classification)")


def _extra(module: CorpusDataModule, more: dict[str, Any]) -> dict[str, Any]:
    return {
        "train_items": module.train_stream.n_items,
        "val_items": 0 if module.val_stream is None else module.val_stream.n_items,
        **more,
    }



def _stream_extra(module: CorpusDataModule) -> dict[str, Any]:
    """What the model side reads: batches carry ``resets``; with ``contiguous``, row b of batch k + 1
    continues row b of batch k (and ``offset`` is in the batch)."""
    return {"resets": True, "contiguous": module.contiguous}
