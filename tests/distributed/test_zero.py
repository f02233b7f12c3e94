"""DeepSpeed ZeRO 1-3 on 2 CPU processes (gloo) train like DDP, and their checkpoints export to one file.

Lightning's DeepSpeedStrategy refuses the CPU; ``zero_worker.py`` drives ``deepspeed.initialize``
as Lightning does on GPU (see its docstring). One launch trains DDP and every stage from the
same initial weights on the same batches; the tests compare what it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssm_train.cli import main
from ssm_train.generate import load_backbone

WORKER = Path(__file__).resolve().parent / "zero_worker.py"
STAGES = (1, 2, 3)
ROUNDING = 1e-6  # observed: losses equal to 3e-7, final parameters to 6e-8


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero")
    # TRITON_INTERPRET (tests/conftest.py) must not reach DeepSpeed: with it a rank aborts at exit
    # ("terminate called without an active exception")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/ssm_train/torch_extensions"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
           str(out), *map(str, STAGES)]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (f"{' '.join(cmd)}\nexit {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return out


def losses(trained: Path) -> dict[str, list[float]]:
    return json.loads((trained / "losses.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_zero_stage_trains_like_ddp(trained, stage):
    ddp, zero = losses(trained)["ddp"], losses(trained)[f"zero{stage}"]
    assert len(ddp) == len(zero) == 6
    assert max(ddp) - min(ddp) > 0.05, "guard: the loss must move for the comparison to mean anything"
    torch.testing.assert_close(torch.tensor(zero), torch.tensor(ddp), rtol=ROUNDING, atol=ROUNDING)
    final_ddp, final_zero = (torch.load(trained / f"{n}.pt", weights_only=True) for n in ("ddp", f"zero{stage}"))
    assert final_ddp.keys() == final_zero.keys()
    for k in final_ddp:
        torch.testing.assert_close(final_zero[k], final_ddp[k], rtol=0, atol=ROUNDING, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_zero_checkpoint_exports_to_one_file_that_generate_loads(trained, tmp_path, capsys, stage):
    out = tmp_path / f"zero{stage}.pt"
    assert main(["export", str(trained / f"zero{stage}.ckpt"), str(out)]) == 0
    exported = torch.load(out, weights_only=True)  # plain types only
    assert set(exported) >= {"hyper_parameters", "state_dict", "global_step"}
    assert "optimizer_states" not in exported and exported["global_step"] == 6
    assert set(exported["hyper_parameters"]) >= {"config", "spec"}
    # The fp32 weights rebuilt from the shards are those the engine held, gathered, at the end.
    gathered = torch.load(trained / f"zero{stage}.pt", weights_only=True)
    assert exported["state_dict"].keys() == gathered.keys()
    for k, v in gathered.items():
        assert exported["state_dict"][k].dtype == torch.float32
        assert torch.equal(exported["state_dict"][k], v), k
    # One device, no DeepSpeed: the recurrent step path samples from it.
    capsys.readouterr()
    assert main(["generate", "--ckpt", str(out), "--prompt", "1 9 2 10", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    tokens = capsys.readouterr().out.split()
    assert len(tokens) == 5 and all(0 <= int(t) < exported["hyper_parameters"]["spec"]["vocab_size"] for t in tokens)
    model, _, _ = load_backbone(out)
    ddp = {k.removeprefix("model."): v for k, v in torch.load(trained / "ddp.pt", weights_only=True).items()}
    reference = load_backbone(out)[0]
    reference.load_state_dict(ddp)
    x = torch.tensor([[1, 9, 2, 10, 3, 11, 4, 12]])
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
