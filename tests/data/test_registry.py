"""One registry of data kinds; a bad data setting is exit 2 with a message, a bug in a data module a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssm_train.cli import main
from ssm_train.data import registry
from ssm_train.data.config import DataConfig
from ssm_train.data.kinds import build_datamodule, data_kind, data_kinds, register_data
from ssm_train.data.modules import FastaDataModule, LabelledDataModule, TextDataModule
from ssm_train.data.synthetic import SYNTHETIC_TASKS, SyntheticDataModule
from ssm_train.errors import ConfigError, DataError

FIT = ["fit", "logger.mode=disabled", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "trainer.max_steps=1", "model.d_model=8", "model.n_layers=1", "model.d_state=4"]


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kinds registered by a test vanish after it (a copy of the table stands in for the real one)."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))


def test_every_built_in_kind_is_registered_by_its_module() -> None:
    assert data_kinds() == (*SYNTHETIC_TASKS, "text", "fasta", "labelled")
    assert all(data_kind(k).factory is SyntheticDataModule for k in SYNTHETIC_TASKS)
    assert [data_kind(k).factory for k in ("text", "fasta", "labelled")] == [
        TextDataModule, FastaDataModule, LabelledDataModule]
    assert all(data_kind(k).summary for k in data_kinds())


def test_the_registry_builds_a_synthetic_kind_too() -> None:
    module = build_datamodule(DataConfig(kind="recall", seq_len=32), seed=0)
    assert isinstance(module, SyntheticDataModule) and module.spec.task == "lm"


def test_register_data_directly_and_as_a_decorator(scratch_registry: None) -> None:
    built = []

    @register_data("probe", summary="for this test")
    def probe(cfg: DataConfig, seed: int, **kw: object) -> str:
        built.append((cfg.kind, seed, kw))
        return "a module"

    assert register_data("probe2", probe) is probe
    assert data_kinds()[-2:] == ("probe", "probe2") and data_kind("probe").summary == "for this test"
    assert build_datamodule(DataConfig(kind="probe"), 3, rank=1) == "a module"
    assert built == [("probe", 3, {"rank": 1})]


def test_registering_a_kind_twice_or_a_bad_name_is_a_programming_error(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="'text' is already registered") as e:
        register_data("text", TextDataModule)
    assert not isinstance(e.value, ConfigError)  # no config causes it, so it must not exit 2
    with pytest.raises(ValueError, match="short identifier"):
        register_data("my kind", TextDataModule)


def test_an_unknown_kind_is_a_data_error_listing_the_registered_ones() -> None:
    with pytest.raises(DataError, match=r"data.kind='nope' is not one of copy, nonlinear, ode, recall, text"):
        build_datamodule(DataConfig(kind="nope"), seed=0)


def test_a_data_error_is_a_config_error() -> None:
    assert issubclass(DataError, ConfigError) and issubclass(ConfigError, ValueError)
    from ssm_train import checkpoint, config, export

    assert config.ConfigError is ConfigError  # still importable from where it used to live
    assert issubclass(checkpoint.CheckpointError, ConfigError) and issubclass(export.ExportError, ConfigError)


def test_unknown_kind_in_the_config_names_the_key(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "data.kind=nope"]) == 2
    assert "key 'data.kind': must be one of copy, nonlinear, ode, recall, text, fasta, labelled" in capsys.readouterr().err


def test_a_bad_data_file_is_exit_2_and_a_bug_in_a_data_module_a_traceback(
    scratch_registry: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """build_data_and_task used to turn any ValueError into a config error; now only DataError is one."""

    def bad_file(cfg: DataConfig, seed: int) -> None:
        raise DataError("corpus.txt:3: not valid UTF-8")

    def buggy(cfg: DataConfig, seed: int) -> None:
        raise ValueError("an index computed wrongly")  # what a bug looks like: must not pose as bad input

    register_data("bad_file", bad_file)
    register_data("buggy", buggy)
    runs = f"runs_dir={tmp_path}"
    assert main([*FIT, runs, "data.kind=bad_file"]) == 2
    assert capsys.readouterr().err == "ssm-train fit: error: corpus.txt:3: not valid UTF-8\n"
    with pytest.raises(ValueError, match="an index computed wrongly") as e:
        main([*FIT, runs, "data.kind=buggy"])
    assert not isinstance(e.value, ConfigError)
