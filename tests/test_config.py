"""The config schema: merging order, overrides, and a clear error for every bad input."""

from __future__ import annotations

import math

import pytest

from ssm_train.config import Config, ConfigError, from_dict, load_config, to_dict


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
    (["model.init.r_max=1.0"], "model.init.r_max", "< 1"),
    (["model.init.r_min=-0.1"], "model.init.r_min", ">= 0"),
    (["model.d_model=-4"], "model.d_model", "positive"),
    (["model.d_state=0"], "model.d_state", "positive"),
    (["data.batch_size=0"], "data.batch_size", "positive"),
    (["model.kind=gru"], "model.kind", "lru"),
    (["data.path=[/no/such/file.txt]"], "data.path", "does not exist"),
    (["checkpoint.resume=/no/such.ckpt"], "checkpoint.resume", "not a file"),
    (["name=a/b"], "name", "directory name"),
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


def test_real_arm_needs_a_real_init():
    with pytest.raises(ConfigError, match="'model.init.name'.*kind=real needs a real init"):
        load_config([], ["model.kind=real", "model.init.name=ring"])
    assert load_config([], ["model.kind=real", "model.init.name=real"]).model.kind == "real"
