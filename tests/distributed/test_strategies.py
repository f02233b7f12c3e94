"""trainer.strategy / trainer.precision to Lightning strategies; DeepSpeed JSON configs; which checkpoint resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from ssm_train.config import ConfigError, load_config
from ssm_train.distributed import DEEPSPEED, STRATEGIES, FSDP2Strategy, build_strategy, deepspeed_config
from ssm_train.run import resume_path
from tests.paths import ROOT


def cfg(*overrides: str, runs_dir: Path | None = None):
    extra = [f"runs_dir={runs_dir}"] if runs_dir else []
    return load_config([ROOT / "configs/experiment/default.yaml"], [*extra, *overrides])


def test_auto_ddp_and_fsdp_on_cpu_use_gloo():
    assert build_strategy(cfg("trainer.accelerator=cpu")) == "auto"
    ddp = build_strategy(cfg("trainer.accelerator=cpu", "trainer.strategy=ddp"))
    assert isinstance(ddp, DDPStrategy) and ddp.process_group_backend == "gloo"  # ReportingDDPStrategy (faults.py)
    fsdp = build_strategy(cfg("trainer.accelerator=cpu", "trainer.strategy=fsdp", "trainer.precision=bf16-mixed"))
    assert isinstance(fsdp, FSDP2Strategy) and fsdp.process_group_backend == "gloo" and not fsdp.hybrid
    hsdp = build_strategy(cfg("trainer.accelerator=cpu", "trainer.strategy=hsdp"))
    assert isinstance(hsdp, FSDP2Strategy) and hsdp.process_group_backend == "gloo" and hsdp.hybrid


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.strategy=fsdp1"], "key 'trainer.strategy': 'fsdp1' is not one of auto, ddp, fsdp, hsdp, deepspeed_stage_1"),
    (["trainer.precision=bf16"], "key 'trainer.precision': 'bf16' is not one of 32, 32-true, bf16-mixed, 16-mixed"),
    (["trainer.strategy=fsdp", "trainer.precision=16-mixed"], "16-mixed is not supported with trainer.strategy=fsdp"),
    (["trainer.strategy=deepspeed_stage_2", "trainer.accelerator=cpu"], "'deepspeed_stage_2' needs GPUs"),
])
def test_bad_strategy_or_precision_is_a_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_strategy(cfg(*overrides))


@pytest.mark.parametrize("name", DEEPSPEED)
def test_every_deepspeed_strategy_has_a_config_of_its_stage(name):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    config = deepspeed_config(name)
    assert config["zero_optimization"]["stage"] == int(name.split("_")[2])
    assert ("offload_optimizer" in config["zero_optimization"]) == name.endswith("_offload")
    strategy = build_strategy(cfg("trainer.accelerator=gpu", f"trainer.strategy={name}"))  # built, not started
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.config == config
    assert name in STRATEGIES


@pytest.mark.parametrize(("text", "message"), [
    ('{"zero_optimization": {"stage": 2}, "bf16": {"enabled": true}}', "key 'bf16' is set by the run config"),
    ('{"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4}',
     "key 'gradient_accumulation_steps' is set by the run config \\(trainer.accumulate_grad_batches\\)"),
    ('{"zero_optimization": {"stage": 3}}', "zero_optimization.stage must be 2"),
    ('{"zero_optimization": ', "not valid JSON"),
])
def test_a_deepspeed_json_that_contradicts_the_run_config_is_refused(tmp_path, monkeypatch, text, message):
    (tmp_path / "configs/deepspeed").mkdir(parents=True)
    (tmp_path / "configs/deepspeed/stage_2.json").write_text(text)
    monkeypatch.chdir(tmp_path)  # the working directory's configs/ come first
    with pytest.raises(ConfigError, match=f"configs/deepspeed/stage_2.json: {message}"):
        deepspeed_config("deepspeed_stage_2")


def test_resume_auto_takes_the_newest_checkpoint_file_or_deepspeed_folder(tmp_path):
    c = cfg("name=r", runs_dir=tmp_path)
    assert resume_path(c) is None
    last = tmp_path / "r/checkpoints/last.ckpt"  # DeepSpeed: a folder, rewritten in place
    (last / "checkpoint").mkdir(parents=True)
    (last / "latest").write_text("checkpoint")
    torch.save({"module": {}}, last / "checkpoint/mp_rank_00_model_states.pt")
    hpc = tmp_path / "r/hpc_ckpt_1.ckpt"
    torch.save({"state_dict": {}}, hpc)  # resume takes only checkpoints that read (tests/test_checkpoint.py)
    os.utime(last / "latest", (300, 300))
    os.utime(last, (100, 100))  # the folder itself looks old: its 'latest' decides
    os.utime(hpc, (200, 200))
    assert resume_path(c) == str(last)
    os.utime(hpc, (400, 400))
    assert resume_path(c) == str(hpc)
    assert resume_path(cfg("name=r", "checkpoint.resume=none", runs_dir=tmp_path)) is None


def test_configs_trainer_files_load(tmp_path):
    for path in sorted((ROOT / "configs/trainer").glob("*.yaml")):
        c = load_config([ROOT / "configs/experiment/default.yaml", path], ["trainer.accelerator=cpu"])
        if not c.trainer.strategy.startswith("deepspeed"):
            build_strategy(c)
        else:
            assert json.loads(json.dumps(deepspeed_config(c.trainer.strategy)))
