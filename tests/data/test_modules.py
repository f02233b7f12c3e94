"""The LightningDataModules: built from DataConfig alone, spec at once, sharded and resumable loaders."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from ssm_train.data.config import DataConfig
from ssm_train.data.kinds import build_datamodule
from ssm_train.data.modules import FastaDataModule, LabelledDataModule, TextDataModule
from ssm_train.errors import DataError


@pytest.fixture(scope="module")
def configs(shared_data, cache_dir):
    t, g = shared_data / "text", shared_data / "genomics"
    return {
        "text": DataConfig(kind="text", path=[str(t / "austen.txt.gz")], seq_len=64, batch_size=8, cache_dir=cache_dir),
        "fasta": DataConfig(
            kind="fasta",
            path=[str(g / "ecoli_k12_mg1655.fa.gz")],
            tokenizer="nucleotide",
            seq_len=64,
            batch_size=8,
            reverse_complement=True,
            cache_dir=cache_dir,
        ),
        "labelled": DataConfig(
            kind="labelled",
            path=[str(g / "splice_junctions.jsonl")],
            tokenizer="nucleotide",
            seq_len=64,
            batch_size=8,
            cache_dir=cache_dir,
        ),
    }


def test_each_kind_builds_with_a_spec(configs):
    expected = {
        "text": (TextDataModule, "lm", 258, None),
        "fasta": (FastaDataModule, "lm", 7, None),
        "labelled": (LabelledDataModule, "classify", 7, ["ei", "ie", "n"]),
    }
    for kind, cfg in configs.items():
        module = build_datamodule(cfg, seed=0)
        cls, task, vocab, classes = expected[kind]
        assert isinstance(module, cls) and module.spec.task == task and module.spec.vocab_size == vocab
        assert module.spec.class_names == classes and module.spec.tokenizer is not None
        assert module.spec.tokenizer.vocab_size == vocab
        train, val = module.train_dataloader(), module.val_dataloader()
        assert isinstance(train, StatefulDataLoader) and isinstance(val, StatefulDataLoader)
        batch = next(iter(train))
        assert batch["inputs"].dtype == batch["targets"].dtype == torch.int64
        if task == "lm":
            assert batch["inputs"].shape == batch["targets"].shape == (8, 64)
            assert torch.equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
            assert batch["resets"].dtype == torch.bool and batch["resets"].shape == (8, 64)
            assert batch["resets"][:, 0].all() and module.spec.extra["resets"]
            assert next(iter(val))["resets"][:, 0].all()  # validation batches have them too
        else:
            assert "resets" not in batch  # one sequence per row: nothing to reset
            assert module.spec.d_output == 3 and batch["targets"].shape == (8,)
            assert batch["inputs"].shape == batch["mask"].shape == (8, 60) and batch["mask"].all()
        assert int(batch["inputs"].max()) < vocab


def test_validation_is_sharded_evenly(configs):
    cfg = configs["fasta"]
    per_rank = []
    for rank in range(3):
        module = FastaDataModule(cfg, seed=0, rank=rank, world_size=3, with_index=True)
        per_rank.append([b["index"].tolist() for b in module.val_dataloader()])
    assert len({len(r) for r in per_rank}) == 1  # the same number of batches on every rank
    seen = [i for r in per_rank for b in r for i in b]
    n = module.val_stream.n_items
    assert len(seen) == len(set(seen)) == n // 3 * 3


def test_seed_changes_the_training_order_only(configs):
    a, b = (TextDataModule(configs["text"], seed=s, with_index=True) for s in (0, 1))
    first = lambda m, f: next(iter(f()))["index"].tolist()  # noqa: E731
    assert first(a, a.train_dataloader) != first(b, b.train_dataloader)
    assert first(a, a.val_dataloader) == first(b, b.val_dataloader)


def test_no_validation_and_bad_configs(configs, tmp_path, cache_dir):
    cfg = DataConfig(**{**configs["text"].__dict__, "val_fraction": 0.0})
    assert TextDataModule(cfg, seed=0).val_dataloader() == []
    (tmp_path / "one.txt").write_text("a single paragraph that is long enough for one window of text\n")
    with pytest.raises(DataError, match="held out no document"):
        TextDataModule(
            DataConfig(kind="text", path=[str(tmp_path / "one.txt")], seq_len=8, cache_dir=cache_dir), seed=0
        )
    with pytest.raises(DataError, match="needs data.tokenizer=nucleotide"):
        FastaDataModule(DataConfig(**{**configs["fasta"].__dict__, "tokenizer": "byte"}), seed=0)
    # one registry serves every kind now, so 'copy' builds; an unregistered kind is the DataError
    with pytest.raises(DataError, match=r"data.kind='chapter' is not one of copy, .*, text, fasta, labelled"):
        build_datamodule(DataConfig(kind="chapter"), seed=0)
    with pytest.raises(DataError, match="no such file"):
        build_datamodule(DataConfig(kind="text", path=[str(tmp_path / "missing.txt")]), seed=0)


def test_checkpoint_state_must_match_the_data(configs):
    module = LabelledDataModule(configs["labelled"], seed=0)
    state = module.state_dict()
    assert state == {"tokenizer": {"kind": "nucleotide", "k": 1}, "class_names": ["ei", "ie", "n"]}
    module.load_state_dict(state)
    with pytest.raises(DataError, match="class_names differs"):
        module.load_state_dict({**state, "class_names": ["a", "b"]})


class Probe(L.LightningModule):
    """Records the training windows it is fed."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return self.w * batch["inputs"].float().mean()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("sampling", ["random", "contiguous"])
@pytest.mark.parametrize("workers", [0, 2])
def test_lightning_resumes_mid_epoch_with_the_next_window(configs, tmp_path, workers, sampling):
    cfg = DataConfig(**{**configs["text"].__dict__, "seq_len": 1024, "batch_size": 64, "num_workers": workers,
                        "window_sampling": sampling})

    def fit(max_steps, ckpt_path=None):
        probe = Probe()
        trainer = L.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            val_check_interval=4,
            check_val_every_n_epoch=None,
            limit_val_batches=2,
            callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1)],
        )
        trainer.fit(probe, datamodule=TextDataModule(cfg, seed=0, with_index=True), ckpt_path=ckpt_path)
        return probe.seen

    whole = fit(8)
    ckpt = tmp_path / "epoch=0-step=4.ckpt"
    state = torch.load(ckpt, weights_only=True)  # the data state is plain
    assert "TextDataModule" in state and state["TextDataModule"]["tokenizer"] == {"kind": "byte"}
    assert fit(8, ckpt_path=ckpt) == whole[4:]  # a plain StatefulDataLoader would skip Lightning's prefetched batch
