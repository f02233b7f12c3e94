"""The ``ssm-train`` command end to end, in process: fit, resume, validate, test, generate, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from ssm_train.cli import main, parse_args
from tests.paths import ROOT

EXPERIMENTS = sorted((ROOT / "configs" / "experiment").glob("*.yaml"))
TINY = ["model.d_model=8", "model.n_layers=1", "model.d_state=4", "data.seq_len=16", "data.lag=4", "data.n_pairs=4", "data.n_queries=4", "data.batch_size=4",
        "data.val_batches=2", "trainer.max_steps=6", "trainer.val_check_interval=3",
        "checkpoint.every_n_steps=3", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
        "logger.mode=disabled", "trainer.accelerator=cpu", "trainer.devices=1"]


def fit(tmp_path: Path, *overrides: str, config: Path = ROOT / "configs/experiment/default.yaml") -> int:
    return main(["fit", "-c", str(config), f"runs_dir={tmp_path}", *TINY, *overrides])


def final_line(out: str) -> str:
    lines = [l for l in out.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("final "), f"last line is not the final metric: {lines[-1]!r}"
    return lines[-1]


def test_fit_writes_run_dir_checkpoint_plot_and_wandb_offline(tmp_path, capsys):
    assert fit(tmp_path, "name=run1", "logger.mode=offline") == 0
    line = final_line(capsys.readouterr().out)
    match = re.search(r"final val/rel_err=([0-9.e+-]+) at step 6 ", line)
    assert match, line
    value = float(match.group(1))
    assert 0 < value < 10
    run = tmp_path / "run1"
    assert (run / "config.yaml").read_text().startswith("name: run1")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # plain types only
    assert ckpt["global_step"] == 6 and ckpt["hyper_parameters"]["config"]["name"] == "run1"
    assert list((run / "plots").glob("spectrum_step*.png"))
    assert list((run / "wandb").glob("offline-run-*")) and (run / "wandb_id").read_text().strip()
    assert "val/rel_err" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_resume_auto_continues_from_last_checkpoint(tmp_path, capsys):
    assert fit(tmp_path, "name=r") == 0
    capsys.readouterr()
    assert fit(tmp_path, "name=r", "trainer.max_steps=9") == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'r' / 'checkpoints' / 'last.ckpt'}" in out
    assert "at step 9" in final_line(out)
    assert torch.load(tmp_path / "r/checkpoints/last.ckpt", weights_only=True)["global_step"] == 9


def test_resume_none_starts_afresh(tmp_path, capsys):
    assert fit(tmp_path, "name=n") == 0
    assert fit(tmp_path, "name=n", "checkpoint.resume=none") == 0
    assert "resuming" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["validate", "test"])
def test_validate_and_test_a_checkpoint(tmp_path, capsys, command):
    assert fit(tmp_path, "name=v") == 0
    capsys.readouterr()
    args = [command, "-c", str(ROOT / "configs/experiment/default.yaml"), f"runs_dir={tmp_path}", "name=v", *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    stage = "val" if command == "validate" else "test"
    assert re.search(rf"^{stage}/rel_err=[0-9.e+-]+$", out, re.M), out


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_runs_at_tiny_size(tmp_path, capsys, experiment):
    assert fit(tmp_path, "trainer.max_steps=3", config=experiment) == 0
    assert re.search(r"at step 3 ", final_line(capsys.readouterr().out))


@pytest.mark.parametrize("override, key", [
    ("model.n_layer=2", "model.n_layer"), ("model.init.r_min=0.9995", "model.init.r_min"),
    ("model.init.r_max=1.5", "model.init.r_max"), ("model.d_model=-1", "model.d_model"),
    ("data.path=[/does/not/exist.txt]", "data.path"), ("model.init.name=spiral", "model.init.name"),
    ("data.kind=imagenet", "data.kind"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, override, key):
    assert fit(tmp_path, override) == 2
    err = capsys.readouterr().err
    assert f"'{key}'" in err and "error" in err
    assert not (tmp_path / "default").exists()  # nothing started


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["fit", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err


def test_config_prints_resolved_yaml(capsys):
    assert main(["config", "model.n_layers=3"]) == 0
    assert "n_layers: 3" in capsys.readouterr().out


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    code = fit(tmp_path, "name=nan", "optim.lr=1e30", "optim.warmup_steps=0", "trainer.gradient_clip_val=0",
               "checkpoint.every_n_steps=1", "trainer.max_steps=50")
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite training loss" in err
    step = int(re.search(r"at step (\d+)", err).group(1))
    ckpt = torch.load(tmp_path / "nan/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == step  # the checkpoint after the last finite step, never the NaN one
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_generate_samples_with_the_step_path(tmp_path, capsys):
    config = ROOT / "configs/experiment/recall_selective.yaml"
    assert fit(tmp_path, "name=g", "data.seq_len=32", config=config) == 0
    capsys.readouterr()
    ckpt = tmp_path / "g/checkpoints/last.ckpt"
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "1 40 2 33", "--max-new-tokens", "5"]) == 0
    ids = [int(t) for t in capsys.readouterr().out.split()]
    assert len(ids) == 5 and all(0 <= i < 2 * 32 + 1 for i in ids)
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "not ids"]) == 2


def test_generate_rejects_non_lm_checkpoint(tmp_path, capsys):
    assert fit(tmp_path, "name=c") == 0
    assert main(["generate", "--ckpt", str(tmp_path / "c/checkpoints/last.ckpt"), "--prompt", "1"]) == 2
    assert "generate needs a language model" in capsys.readouterr().err


def test_language_model_metrics_are_consistent(tmp_path, capsys):
    config = ROOT / "configs/experiment/recall_selective.yaml"
    assert fit(tmp_path, "name=lm", "data.seq_len=32", config=config) == 0
    capsys.readouterr()
    assert main(["validate", "-c", str(config), f"runs_dir={tmp_path}", "name=lm", *TINY, "data.seq_len=32"]) == 0
    m = dict(line.split("=") for line in capsys.readouterr().out.split())
    loss, bpt, ppl, acc = (float(m[f"val/{k}"]) for k in ("loss", "bpt", "ppl", "acc"))
    assert bpt == pytest.approx(loss / math.log(2), rel=1e-4) and ppl == pytest.approx(math.exp(loss), rel=1e-4)
    assert 0 <= acc <= 1 and loss > 0


def test_resumed_run_continues_the_same_wandb_run(tmp_path, capsys):
    assert fit(tmp_path, "name=w", "logger.mode=offline") == 0
    assert fit(tmp_path, "name=w", "logger.mode=offline", "trainer.max_steps=9") == 0
    run_id = (tmp_path / "w" / "wandb_id").read_text().strip()
    runs = sorted((tmp_path / "w" / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, with "-1" appended by W&B when both started in the same second
    assert len(runs) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", p.name) for p in runs)


@pytest.mark.slow
def test_generate_decodes_text_with_the_training_tokenizer(tmp_path, capsys):
    config = ROOT / "configs/experiment/text_austen.yaml"
    assert fit(tmp_path, "name=t", "data.seq_len=32", "trainer.max_steps=4", config=config) == 0
    capsys.readouterr()
    ckpt = tmp_path / "t/checkpoints/last.ckpt"
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "It is a truth", "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    assert out.startswith("It is a truth") and len(out) >= len("It is a truth") + 1
    alphabet = set(torch.load(ckpt, weights_only=True)["hyper_parameters"]["spec"]["tokenizer"]["chars"])
    assert set(out[len("It is a truth"):]) <= alphabet | {"\n"}


def test_each_wandb_sweep_agent_trial_gets_its_own_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "trial7")
    assert fit(tmp_path, "name=sw", "trainer.max_steps=3") == 0
    assert (tmp_path / "sw-trial7" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("argv, overrides, ckpt", [
    (["test", "a=1", "--ckpt", "x.ckpt", "b=2"], ["a=1", "b=2"], "x.ckpt"),
    (["test", "--ckpt", "x.ckpt", "a=1", "b=2"], ["a=1", "b=2"], "x.ckpt"),
    (["test", "a=1", "-c", "f.yaml", "b=2", "a=3"], ["a=1", "b=2", "a=3"], None),
])
def test_overrides_may_follow_options_and_keep_their_order(argv, overrides, ckpt):
    args = parse_args(argv)
    assert args.overrides == overrides
    assert args.ckpt == ckpt


@pytest.mark.parametrize("argv", [["fit", "--ckpt", "x.ckpt"], ["fit", "a=1", "--nope"]])
def test_stray_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_an_override_after_an_option_reaches_the_config(capsys):
    assert main(["config", "-c", "configs/experiment/default.yaml", "seed=1", "-c",
                 "configs/experiment/default.yaml", "seed=7"]) == 0
    assert "\nseed: 7\n" in "\n" + capsys.readouterr().out


_RELEASE = r"""
import socket, sys
import torch.distributed as dist
from ssm_train.cli import main

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
code = main(["fit", *sys.argv[1:]])
print("initialized after the command:", dist.is_initialized())
sys.exit(code)
"""


def test_the_process_group_is_released_when_the_command_ends(tmp_path):
    """A rank that exits with its gloo process group alive can abort at exit (SIGABRT; srun then fails
    the job); the CLI destroys the group it trained with. Here a one-rank group set up as a launcher
    would, in a subprocess: Lightning's DDP writes MASTER_PORT, WORLD_SIZE, LOCAL_RANK into the
    environment, and later multi-rank tests in this process would take them as theirs."""
    import subprocess
    import sys

    args = ["-c", str(ROOT / "configs/experiment/default.yaml"), f"runs_dir={tmp_path}", *TINY,
            "trainer.strategy=ddp", "trainer.devices=1", "trainer.max_steps=2"]
    proc = subprocess.run([sys.executable, "-c", _RELEASE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "initialized after the command: False" in proc.stdout
