"""The config schema: merging order, overrides, and a clear error for every bad input."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

import ssm_train.config as config_module
from ssm_train.config import Config, ConfigError, estimate_memory, from_dict, load_config, to_dict, to_yaml
from tests.paths import SHARED_DATA


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_files_then_overrides_in_order(tmp_path):
    a = write(tmp_path, "a.yaml", "model:\n  d_model: 32\n  n_layers: 3\nseed: 5\n")
    b = write(tmp_path, "b.yaml", "model:\n  n_layers: 7\n")
    cfg = load_config([a, b], ["seed=9", "model.init.r_min=0.5"])
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.seed) == (32, 7, 9)
    assert cfg.model.init.r_min == 0.5 and cfg.model.init.r_max == Config().model.init.r_max


def test_include_is_merged_before_the_file(tmp_path):
    (tmp_path / "model").mkdir()
    write(tmp_path, "model/m.yaml", "model:\n  d_model: 16\n  n_layers: 5\n")
    exp = write(tmp_path, "exp.yaml", "include: [model/m.yaml]\nmodel:\n  n_layers: 1\n")
    cfg = load_config([exp])
    assert (cfg.model.d_model, cfg.model.n_layers) == (16, 1)


def test_round_trip_through_plain_dict():
    cfg = load_config([], ["model.kind=s4d", "optim.lr=0.01"])
    d = to_dict(cfg)
    assert type(d) is dict and type(d["model"]) is dict  # plain types: weights_only loading accepts them
    assert from_dict(d) == cfg


@pytest.mark.parametrize("overrides, key, words", [
    (["model.n_layer=3"], "model.n_layer", "did you mean 'model.n_layers'"),
    (["model.init.rmax=0.9"], "model.init.rmax", "did you mean 'model.init.r_max'"),
    (["modl.kind=lru"], "modl", "did you mean 'model'"),
    (["model.n_layers=four"], "model.n_layers", "could not be converted"),
    (["model.init.r_min=0.99", "model.init.r_max=0.9"], "model.init.r_min", "r_max"),
    (["model.init.r_max=1.0001"], "model.init.r_max", "<= 1"),
    (["model.kind=s4d", "model.s4d.mode=fft"], "model.s4d.mode", "conv, scan"),
    (["model.kind=s4d", "model.s4d.discretization=euler"], "model.s4d.discretization", "zoh, bilinear"),
    (["model.s4d_mode=scan"], "model.s4d_mode", "valid keys here"),
    (["model.kind=selective", "model.init.name=mamba", "model.selective.expand=0"], "model.selective.expand", ">= 1"),
    (["model.kind=selective", "model.init.name=ring"], "model.init.name", "mamba"),
    (["model.init.max_phase=7"], "model.init.max_phase", "[0, 2π]"),
    (["model.init.r_min=-0.1"], "model.init.r_min", ">= 0"),
    (["model.d_model=-4"], "model.d_model", "positive"),
    (["model.d_state=0"], "model.d_state", "positive"),
    (["data.batch_size=0"], "data.batch_size", "positive"),
    (["model.kind=gru"], "model.kind", "lru"),
    (["data.path=[/no/such/file.txt]"], "data.path", "does not exist"),
    (["checkpoint.resume=/no/such.ckpt"], "checkpoint.resume", "not a file"),
    (["name=a/b"], "name", "directory name"),
    (["model.carry_state=true"], "model.carry_state", "window_sampling=contiguous"),
    (["model.carry_state=true", "model.bidirectional=true"], "model.carry_state", "bidirectional"),
    (["model.carry_state=true", "model.kind=transformer"], "model.carry_state", "no finite state"),
    (["trainer.activation_checkpointing=layer"], "trainer.activation_checkpointing", "none, block, chunk"),
    (["trainer.activation_checkpointing=chunk", "model.bidirectional=true"], "trainer.activation_checkpointing",
     "causal recurrent"),
    (["trainer.checkpoint_chunk=0"], "trainer.checkpoint_chunk", "positive"),
    (["trainer.context_parallel=0"], "trainer.context_parallel", "positive"),
    (["trainer.context_parallel=2", "model.kind=transformer"], "trainer.context_parallel",
     "cannot split a sequence over ranks; use one of lru, real, s4d, selective, rglru"),
    (["trainer.context_parallel=2", "model.kind=selective", "model.init.name=mamba", "model.bidirectional=true"],
     "trainer.context_parallel", "flipping its slice"),
    (["trainer.context_parallel=3", "data.seq_len=16"], "trainer.context_parallel", "data.seq_len=16"),
    (["trainer.context_parallel=2", "trainer.devices=3"], "trainer.context_parallel", "3 x 1 = 3"),
    (["trainer.context_parallel=2", "trainer.activation_checkpointing=chunk"], "trainer.context_parallel", "use block"),
    (["trainer.context_parallel=2", "trainer.strategy=hsdp"], "trainer.context_parallel", "auto, ddp or fsdp"),
    (["trainer.context_parallel=2", "task.kind=classify"], "trainer.context_parallel", "loss per position"),
    (["trainer.context_parallel=2", "model.carry_state=true", "data.window_sampling=contiguous", "data.kind=text",
      f"data.path=[{SHARED_DATA / 'text/austen.txt.gz'}]", "data.tokenizer=char"],
     "trainer.context_parallel", "model.carry_state"),
])
def test_bad_values_name_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as e:
        load_config([], overrides)
    assert f"'{key}'" in str(e.value) and words in str(e.value)


def test_bad_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config([tmp_path / "nope.yaml"])
    bad = write(tmp_path, "bad.yaml", "model:\n  d_model: [1,\n")
    with pytest.raises(ConfigError, match=r"(?s)bad.yaml: not valid YAML.*line 3"):
        load_config([bad])
    unknown = write(tmp_path, "unknown.yaml", "trainer:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: unknown key 'trainer.max_step': did you mean 'trainer.max_steps'"):
        load_config([unknown])
    listy = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config([listy])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        load_config([], ["model.n_layers"])


def test_logger_mode_shorthand():
    assert load_config([], ["logger.mode=disabled"]).logger.wandb.mode == "disabled"


def test_default_max_phase_is_full_circle():
    assert Config().model.init.max_phase == pytest.approx(2 * math.pi)


def test_transformer_head_dimension_is_checked():
    load_config([], ["model.kind=transformer", "model.d_model=64", "model.d_state=16"])
    with pytest.raises(ConfigError, match="'model.d_state'.*head dimension"):
        load_config([], ["model.kind=transformer", "model.d_model=64", "model.d_state=24"])


def test_the_papers_ring_to_the_unit_circle_is_valid():
    """ring_0.9_1 (|λ| in [0.9, 1]): nn/init.py's rule, |λ| <= 1, is the config's."""
    cfg = load_config([], ["model.init.r_min=0.9", "model.init.r_max=1.0"])
    assert cfg.model.init.r_max == 1.0


def test_every_registered_kind_has_its_section_and_is_a_choice():
    from ssm_train.nn import LAYERS

    assert config_module.CHOICES["model.kind"] == tuple(LAYERS)
    for kind, spec in LAYERS.items():
        assert isinstance(getattr(Config().model, kind), spec.config_cls)
    cfg = load_config([], ["model.kind=s4d", "model.s4d.mode=scan", "model.selective.dt_rank=3"])
    assert (cfg.model.s4d.mode, cfg.model.selective.dt_rank) == ("scan", 3)


def test_stored_configs_with_the_old_flat_model_keys_upgrade():
    old = {"model": {"kind": "real", "normalize": False, "discretization": "bilinear", "s4d_mode": "scan"}}
    cfg = from_dict(config_module.upgrade_model_keys(old))
    assert (cfg.model.real.normalize, cfg.model.s4d.discretization, cfg.model.s4d.mode) == (False, "bilinear", "scan")
    assert config_module.upgrade_model_keys({"seed": 1}) == {"seed": 1}


def test_real_arm_needs_a_real_init():
    with pytest.raises(ConfigError, match="'model.init.name'.*kind=real needs a real init"):
        load_config([], ["model.kind=real", "model.init.name=ring"])
    assert load_config([], ["model.kind=real", "model.init.name=real"]).model.kind == "real"


# --- shapes: a single value for a list, a mapping for a section ------------------------------------


def test_a_list_key_takes_a_single_value_in_yaml_and_on_the_command_line(tmp_path):
    corpus = write(tmp_path, "corpus.txt", "some text\n")
    assert load_config([], ["data.kind=text", f"data.path={corpus}"]).data.path == [str(corpus)]
    one = write(tmp_path, "one.yaml", f"data:\n  kind: text\n  path: {corpus}\n  val_path: {corpus}\n")
    cfg = load_config([one], ["logger.wandb.tags=solo"])
    assert (cfg.data.path, cfg.data.val_path, cfg.logger.wandb.tags) == ([str(corpus)], [str(corpus)], ["solo"])
    assert load_config([], ["data.val_records=null"]).data.val_records == []
    included = write(tmp_path, "inc.yaml", f"include: one.yaml\ndata:\n  path: {corpus}\n")
    assert load_config([included]).data.path == [str(corpus)]


def test_valid_edge_values_stay_accepted():
    for devices in ("auto", "1", "-1", "[0,1]", "'0,1'", "2"):
        load_config([], [f"trainer.devices={devices}"])
    cfg = load_config([], ["trainer.gradient_clip_val=0", "trainer.limit_val_batches=0", "checkpoint.keep=-1"])
    assert cfg.trainer.gradient_clip_val == 0  # 0 = no clipping


@pytest.mark.parametrize("devices", ["0", "-2", "[]", "[0,0]", "[-1]", "true", "'0,0'", "gpus"])
def test_bad_devices_name_the_key(devices):
    with pytest.raises(ConfigError, match="'trainer.devices'"):
        load_config([], [f"trainer.devices={devices}"])


def float_keys(node=Config(), prefix="") -> list[str]:
    """Every float-valued key of the schema (so that a new one is checked without a new test row)."""
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys += float_keys(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            keys.append(prefix + f.name)
    return keys


@pytest.mark.parametrize("key", float_keys())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_must_be_finite(key, value):
    with pytest.raises(ConfigError, match=rf"key '{re.escape(key)}': must be a finite number"):
        load_config([], [f"{key}={value}"])


# --- values from the environment: used by the run, never written out ------------------------------

SECRET = "wandb-s3cr3t-0123456789abcdef"


@pytest.fixture
def secret_config(tmp_path, monkeypatch):
    monkeypatch.setenv("SSM_TRAIN_TEST_SECRET", SECRET)
    monkeypatch.setenv("SSM_TRAIN_TEST_SCRATCH", str(tmp_path))
    path = write(tmp_path, "secret.yaml", "\n".join([
        "name: run-${oc.env:SSM_TRAIN_TEST_SECRET}",
        "runs_dir: ${oc.env:SSM_TRAIN_TEST_SCRATCH}/runs",
        "logger:",
        "  wandb:",
        "    entity: ${oc.env:SSM_TRAIN_TEST_SECRET}",
        "    group: g-${logger.wandb.entity}",  # reaches the environment through another key
        "    tags: ['${oc.env:SSM_TRAIN_TEST_SECRET}', plain]",
        "data:",
        "  cache_dir: ${oc.env:SSM_TRAIN_TEST_UNSET,/tmp/fallback}",
        "",
    ]))
    return load_config([path], ["model.d_model=8", "model.n_layers=1", "model.d_state=4"])


def test_environment_values_are_used_but_not_written_out(secret_config):
    cfg = secret_config
    assert (cfg.logger.wandb.entity, cfg.name, cfg.logger.wandb.group) == (SECRET, f"run-{SECRET}", f"g-{SECRET}")
    assert cfg.logger.wandb.tags == [SECRET, "plain"] and cfg.data.cache_dir == "/tmp/fallback"
    d, text = to_dict(cfg), to_yaml(cfg)
    assert SECRET not in repr(d) and SECRET not in text
    assert d["logger"]["wandb"]["entity"] == "${oc.env:SSM_TRAIN_TEST_SECRET}"
    assert d["logger"]["wandb"]["group"] == "g-${oc.env:SSM_TRAIN_TEST_SECRET}"
    assert d["name"] == "run-${oc.env:SSM_TRAIN_TEST_SECRET}" and d["model"]["d_model"] == 8
    assert d["data"]["cache_dir"] == "${oc.env:SSM_TRAIN_TEST_UNSET,/tmp/fallback}"  # the default is kept
    assert from_dict(d) == cfg and SECRET not in repr(to_dict(from_dict(d)))  # read back, and written again
    cfg.name = f"{cfg.name}-abc123"  # code changing a value (a sweep trial's name) keeps it hidden
    assert to_dict(cfg)["name"] == "run-${oc.env:SSM_TRAIN_TEST_SECRET}-abc123"


def test_no_file_of_a_run_holds_an_environment_secret(tmp_path, monkeypatch):
    """The keys carrying the secret are ones the copy task does not use, so that only the written-out
    config could leak it (a value the run uses, say as a W&B group, W&B itself records)."""
    from ssm_train.cli import main

    monkeypatch.setenv("SSM_TRAIN_TEST_SECRET", SECRET)
    path = write(tmp_path, "secret.yaml", "data:\n  text_field: ${oc.env:SSM_TRAIN_TEST_SECRET}\n"
                                          "  label_field: pre-${data.text_field}\n")
    tiny = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "checkpoint.every_n_steps=2", "trainer.limit_val_batches=1",
            "data.batch_size=2", "data.seq_len=16", "data.val_batches=1", "data.lag=4", "logger.mode=offline",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", f"runs_dir={tmp_path}", "name=s"]
    assert main(["fit", "-c", str(path), *tiny]) == 0
    assert "text_field: ${oc.env:SSM_TRAIN_TEST_SECRET}" in (tmp_path / "s" / "config.yaml").read_text()
    files = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    holding_the_config = [p for p in files if b"text_field" in p.read_bytes()]
    assert any(p.suffix == ".ckpt" for p in holding_the_config)
    assert any(p.suffix == ".wandb" for p in holding_the_config)  # W&B's run record, with its config
    assert not [str(p) for p in files if SECRET.encode() in p.read_bytes()]  # checkpoints, CSV hparams, W&B config


def test_a_stored_environment_value_needs_its_variable(monkeypatch):
    monkeypatch.delenv("SSM_TRAIN_TEST_GONE", raising=False)
    with pytest.raises(ConfigError, match="key 'logger.wandb.entity': environment variable SSM_TRAIN_TEST_GONE"):
        from_dict({"logger": {"wandb": {"entity": "${oc.env:SSM_TRAIN_TEST_GONE}"}}})


# --- memory: a model that cannot fit is a message, not an allocator error -------------------------


def test_memory_estimate_counts_what_is_certain():
    cfg = load_config([], ["model.d_model=64", "model.n_layers=2", "model.d_state=32", "model.mlp=glu",
                           "model.mlp_ratio=2", "data.kind=recall", "data.vocab_size=16", "data.seq_len=64",
                           "data.batch_size=8", "trainer.accelerator=cpu", "trainer.devices=1"])
    e = estimate_memory(cfg)
    assert e.params == 2 * (3 * 64 * 128 + 64 * 32) + 2 * 16 * 64 and e.embedding_params == 2 * 16 * 64
    assert e.activation_bytes == 4 * 8 * 64 * 2 * (128 + 64)
    assert e.total == 16 * e.params + e.activation_bytes
    gpu = estimate_memory(load_config([], ["trainer.accelerator=gpu", "model.d_model=64"]))
    assert gpu.total == 4 * gpu.params  # on a GPU only the model built on the host counts


@pytest.mark.parametrize("overrides, key", [
    (["model.d_model=4096", "model.n_layers=8"], "model.d_model"),
    (["data.batch_size=4096", "data.seq_len=4096", "trainer.accelerator=cpu"], "data.batch_size"),
    (["data.kind=recall", "data.vocab_size=10000000", "data.n_pairs=4", "data.n_queries=4",
      "model.d_model=256"], "data.vocab_size"),
])
def test_too_large_for_this_machine_names_the_key(monkeypatch, overrides, key):
    monkeypatch.setattr(config_module, "available_memory", lambda: 2 * 1024**3)  # a 2 GiB machine
    with pytest.raises(ConfigError, match=rf"key '{key}': this run needs at least .* GiB .* 2 GiB is available"):
        load_config([], ["trainer.accelerator=cpu", *overrides])
    load_config([], [])  # the default experiment fits in 2 GiB
