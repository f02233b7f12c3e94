"""A table of bad inputs: each one is exit status 2 and one message naming the key, never a traceback.

To add a case, append a ``Row`` to ``ROWS``: the command line after ``ssm-train <command>``
(``args``), a YAML file's text (``yaml``: written to ``tmp_path/config.yaml`` and passed as
``-c``), the words stderr must contain, and, if files are needed, ``setup(tmp_path)``, which
creates them and returns more arguments. ``fit`` rows run with the CPU, no logger and
``runs_dir`` in ``tmp_path``, and must fail before a run directory exists.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ssm_train.cli import main
from tests.disk import fill_disk, mount_tmpfs
from tests.paths import ROOT


FIT_DEFAULTS = ["logger.mode=disabled", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


@dataclass(frozen=True)
class Row:
    id: str
    words: tuple[str, ...]  # each must appear in stderr
    args: tuple[str, ...] = ()  # overrides and options, after the command
    yaml: str | None = None  # a config file's text, passed as -c
    command: str = "config"  # config | fit (config: load and validate only)
    status: int = 2
    setup: Callable[[Path], list[str]] | None = None  # creates files in tmp_path, returns extra args
    usage: bool = False  # argparse's own error: its usage line comes before the message


def short_records_fasta(tmp_path: Path) -> list[str]:
    """One record, too short for a window of data.seq_len=64 and too few to hold one out whole."""
    path = tmp_path / "one.fa"
    path.write_text(">only\n" + "ACGT" * 10 + "\n")
    return ["data.kind=fasta", "data.tokenizer=nucleotide", f"data.path={path}", "data.seq_len=64",
            "data.window_sampling=tiled", f"data.cache_dir={tmp_path / 'cache'}"]


# --- checkpoints: trained once per session, then damaged copies (project issue 17) ---
SMALL = ("model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.seq_len=16", "data.lag=4",
         "data.batch_size=4", "data.val_batches=1", "trainer.max_steps=2", "trainer.val_check_interval=2",
         "trainer.limit_val_batches=1", "checkpoint.every_n_steps=2")
LM = (str(ROOT / "configs/experiment/recall_selective.yaml"), "data.seq_len=32", *SMALL[:3], *SMALL[5:])
_trained: dict[str, Path] = {}
_scratch = tempfile.TemporaryDirectory(prefix="bad-checkpoints-")


def trained(kind: str) -> Path:
    """last.ckpt of a tiny run: 'copy' (the default experiment), 'wide' (d_model=16) or 'lm'."""
    if kind not in _trained:
        runs = Path(_scratch.name)
        args = {"copy": ["-c", str(ROOT / "configs/experiment/default.yaml"), *SMALL],
                "wide": ["-c", str(ROOT / "configs/experiment/default.yaml"), *SMALL, "model.d_model=16"],
                "lm": ["-c", *LM]}[kind]
        assert main(["fit", *args, *FIT_DEFAULTS, f"runs_dir={runs}", f"name={kind}"]) == 0
        _trained[kind] = runs / kind / "checkpoints" / "last.ckpt"
    return _trained[kind]


class Unsafe:
    """Not a tensor nor a plain type: ``torch.load(weights_only=True)`` refuses to rebuild it."""


def damaged(tmp_path: Path, how: str, kind: str = "copy") -> Path:
    """A copy of a trained checkpoint, damaged in one of the ways a user meets."""
    good, path = trained(kind), tmp_path / f"{how}.ckpt"
    data = good.read_bytes()
    if how == "truncated":  # a save cut short: the archive's end is missing
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(os.urandom(4096))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "unsafe":
        torch.save({**torch.load(good, weights_only=True), "callbacks": Unsafe()}, path)
    elif how == "foreign":  # a torch file, but not a Lightning checkpoint
        torch.save({"weights": torch.zeros(3)}, path)
    elif how == "wide":  # another model size
        path.write_bytes(trained("wide").read_bytes())
    elif how == "mislabelled":  # weights of d_model=16 under a config that says d_model=8
        state = torch.load(trained("wide"), weights_only=True)
        state["hyper_parameters"] = torch.load(good, weights_only=True)["hyper_parameters"]
        torch.save(state, path)
    return path


def resume_from(how: str) -> Callable[[Path], list[str]]:
    def setup(tmp_path: Path) -> list[str]:
        return ["-c", str(ROOT / "configs/experiment/default.yaml"), *SMALL,
                f"checkpoint.resume={damaged(tmp_path, how)}"]
    return setup


def evaluate_with(how: str) -> Callable[[Path], list[str]]:
    def setup(tmp_path: Path) -> list[str]:
        return ["-c", str(ROOT / "configs/experiment/default.yaml"), *SMALL, *FIT_DEFAULTS,
                f"runs_dir={tmp_path / 'eval'}", "--ckpt", str(damaged(tmp_path, how))]
    return setup


def generate_with(how: str, *more: str) -> Callable[[Path], list[str]]:
    def setup(tmp_path: Path) -> list[str]:
        ckpt = trained("lm") if how == "good" else damaged(tmp_path, how, "lm")
        return ["--ckpt", str(ckpt), *more]
    return setup


def read_only_runs_dir(tmp_path: Path) -> list[str]:
    runs = mount_tmpfs(tmp_path / "ro", 1024, read_only=True)
    return ["-c", str(ROOT / "configs/experiment/default.yaml"), *SMALL, f"runs_dir={runs}"]


def full_runs_dir(tmp_path: Path) -> list[str]:
    runs = mount_tmpfs(tmp_path / "full", 256)
    fill_disk(runs, leave_bytes=64 << 10)  # room for config.yaml, not for one checkpoint
    return ["-c", str(ROOT / "configs/experiment/default.yaml"), *SMALL, f"runs_dir={runs}"]


CHECKPOINT_PROBLEMS = {  # how it is damaged -> words the message must contain
    "truncated": ("truncated",), "random": ("not a checkpoint",), "empty": ("empty file",),
    "unsafe": ("refused unsafe content", "weights_only"), "wide": ("made for another model", "shape mismatches",
                                                                    "model.encoder.weight: checkpoint (16, 1), model (8, 1)"),
}


def checkpoint_rows() -> list[Row]:
    rows = []
    for how, words in CHECKPOINT_PROBLEMS.items():
        rows.append(Row(f"fit_resume_{how}", (f"{how}.ckpt", *words), command="fit", setup=resume_from(how)))
        for command in ("validate", "test"):
            rows.append(Row(f"{command}_{how}", (f"{how}.ckpt", *words), command=command,
                            setup=evaluate_with(how)))
    lm_problems = {**{k: v for k, v in CHECKPOINT_PROBLEMS.items() if k != "wide"},
                   "foreign": ("not a Lightning checkpoint",), "mislabelled": ("made for another model",)}
    for how, words in lm_problems.items():
        rows.append(Row(f"generate_{how}", (f"{how}.ckpt", *words), command="generate",
                        setup=generate_with(how, "--prompt", "1 2")))
    return rows


ROWS: list[Row] = [
    # --- the cases (project issue 12) ---
    Row("negative_gradient_clip", ("'trainer.gradient_clip_val'", ">= 0", "0 = no clipping", "-1"),
        args=("trainer.gradient_clip_val=-1",)),
    Row("negative_gradient_clip_fit", ("'trainer.gradient_clip_val'", ">= 0"),
        args=("trainer.gradient_clip_val=-1",), command="fit"),
    Row("section_given_a_list", ("config.yaml", "'model'", "must be a mapping of keys", "d_model", "got a list"),
        yaml="model: [1, 2, 3]\n"),
    Row("section_given_a_scalar", ("config.yaml", "'trainer'", "must be a mapping of keys", "got the value 3"),
        yaml="trainer: 3\n"),
    Row("nested_section_given_a_list", ("'model.init'", "must be a mapping", "r_min"),
        args=("model.init=[1,2]",)),
    Row("negative_eps", ("'optim.eps'", "positive", "-1"), args=("optim.eps=-1",)),
    Row("zero_devices", ("'trainer.devices'", "positive count", "got 0"), args=("trainer.devices=0",)),
    Row("zero_devices_fit", ("'trainer.devices'",), args=("trainer.devices=0",), command="fit"),
    Row("duplicate_device_indices", ("'trainer.devices'", "distinct"), args=("trainer.devices=[0,0]",)),
    Row("negative_limit_val_batches", ("'trainer.limit_val_batches'", ">= 0", "-3"),
        args=("trainer.limit_val_batches=-3",)),
    Row("absurd_d_model", ("'model.d_model'", "GiB", "available on this machine", "model.d_model=100000000"),
        args=("model.d_model=100000000",), command="fit"),
    Row("absurd_batch", ("'data.batch_size'", "GiB of activations", "data.seq_len"),
        args=("data.batch_size=100000000", "trainer.accelerator=cpu")),
    Row("infinite_lr", ("'optim.lr'", "finite", "inf"), args=("optim.lr=inf",)),
    Row("nan_lr", ("'optim.lr'", "finite", "nan"), args=("optim.lr=nan",)),
    Row("nan_beta", ("'optim.betas'", "finite"), args=("optim.betas=[0.9,nan]",)),
    Row("infinite_r_max_in_yaml", ("'model.init.r_max'", "finite"), yaml="model:\n  init:\n    r_max: .inf\n"),
    Row("single_missing_path", ("'data.path'", "'corpus.txt' does not exist", "working directory"),
        args=("data.kind=text", "data.path=corpus.txt")),
    Row("single_missing_path_in_yaml", ("'data.path'", "'corpus.txt' does not exist"),
        yaml="data:\n  kind: text\n  path: corpus.txt\n"),
    Row("single_missing_val_path", ("'data.val_path'", "'held_out.txt' does not exist"),
        args=("data.val_path=held_out.txt",)),
    Row("list_key_given_a_mapping", ("'data.path'", "must be a list"), yaml="data:\n  path: {a: 1}\n"),
    Row("fasta_too_short_to_hold_out", ("data.val_fraction", "too few to hold one out whole", "data.seq_len"),
        command="fit", setup=short_records_fasta),
    Row("missing_environment_variable", ("'logger.wandb.entity'", "SSM_TRAIN_TEST_UNSET_VARIABLE", "not found"),
        args=("logger.wandb.entity=${oc.env:SSM_TRAIN_TEST_UNSET_VARIABLE}",)),
    # --- values Lightning or a data module would reject mid-start (traceback, or exit 1) ---
    Row("precision_typo", ("'trainer.precision'", "bf16-mixed"), args=("trainer.precision=bf61-mixed",)),
    Row("accelerator_typo", ("'trainer.accelerator'", "cpu"), args=("trainer.accelerator=gpuu",)),
    Row("val_fraction_one", ("'data.val_fraction'", "[0, 1)"), args=("data.val_fraction=1.0",)),
    Row("kmer_too_large", ("'data.kmer'", "1..8"), args=("data.kmer=12",)),
    Row("tokenizer_typo", ("'data.tokenizer'", "nucleotide"), args=("data.tokenizer=bytes",)),
    Row("include_not_a_list", ("config.yaml", "'include'", "list of file names"), yaml="include: 3\n"),
    Row("negative_keep", ("'checkpoint.keep'", ">= -1"), args=("checkpoint.keep=-2",)),
    # --- generate's arguments (project issue 17) ---
    Row("generate_empty_prompt", ("--prompt", "empty"), command="generate", setup=generate_with("good", "--prompt", "")),
    Row("generate_prompt_out_of_vocabulary", ("--prompt", "token ids 0.."), command="generate",
        setup=generate_with("good", "--prompt", "1 99999")),
    Row("generate_negative_max_new_tokens", ("--max-new-tokens", "must be >= 1, got -4"), command="generate",
        setup=generate_with("good", "--prompt", "1", "--max-new-tokens", "-4"), usage=True),
    Row("generate_negative_top_k", ("--top-k", "must be >= 0"), command="generate",
        setup=generate_with("good", "--prompt", "1", "--top-k", "-1"), usage=True),
    Row("generate_missing_checkpoint", ("--ckpt", "does not exist"), command="generate",
        args=("--ckpt", "no/such.ckpt", "--prompt", "1")),
    *checkpoint_rows(),
    # --- the run directory (project issues 12 and 17); these fit rows write config.yaml at most ---
    Row("read_only_runs_dir", ("'runs_dir'", "cannot write", "/ro/", "Read-only file system"), command="fit",
        setup=read_only_runs_dir),
    Row("full_runs_dir", ("'runs_dir'", "MiB free", "checkpoints need about"), command="fit", setup=full_runs_dir),
    # --- existing checks, kept working ---
    Row("unknown_key_with_suggestion", ("unknown key 'model.n_layer'", "did you mean 'model.n_layers'"),
        args=("model.n_layer=3",)),
    Row("wrong_type", ("'model.n_layers'", "could not be converted"), args=("model.n_layers=four",)),
    Row("r_min_above_r_max", ("'model.init.r_min'", "r_max"), args=("model.init.r_min=0.99", "model.init.r_max=0.9")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_a_message_naming_the_key(row: Row, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [row.command]
    if row.yaml is not None:
        (tmp_path / "config.yaml").write_text(row.yaml)
        argv += ["-c", str(tmp_path / "config.yaml")]
    if row.command == "fit":
        argv += [*FIT_DEFAULTS, f"runs_dir={tmp_path / 'runs'}"]
    if row.setup is not None:
        argv += row.setup(tmp_path)
        capsys.readouterr()  # what training a checkpoint for the row printed
    argv += row.args
    try:
        status = main(argv)  # an uncaught exception fails the test with its traceback
    except SystemExit as e:  # argparse exits by itself
        status = e.code
    out, err = capsys.readouterr()
    assert status == row.status, f"exit {status}, stderr: {err!r}"
    if row.usage:
        assert err.startswith("usage: ssm-train") and f"ssm-train {row.command}: error: " in err, err
    else:
        assert err.startswith(f"ssm-train {row.command}: error: "), err
    assert "Traceback" not in err + out
    missing = [w for w in row.words if w not in err]
    assert not missing, f"{missing} not in stderr: {err!r}"
    if row.command == "fit":
        assert not (tmp_path / "runs").exists()  # nothing started


def test_row_ids_are_unique() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))
