"""Train one model the same way under torch DDP and DeepSpeed ZeRO stages, on CPU with gloo.

    python -m torch.distributed.run --standalone --nproc-per-node 2 zero_worker.py OUT [stage ...]

Lightning's DeepSpeedStrategy refuses the CPU, so this drives ``deepspeed.initialize`` directly,
as Lightning does on GPU: the engine wraps the LightningModule itself (parameter names
``model.…``), the optimizer and schedule come from its ``configure_optimizers``, clipping and the
ZeRO settings from ``configs/deepspeed/stage_<s>.json``, and checkpoints are saved as Lightning
saves them (``<dir>/latest`` naming the tag ``checkpoint``, the Lightning state as client state).

Every strategy starts from the same initial weights (seeded construction) and sees the same
batches: rank r draws samples k ≡ r (mod world) of the synthetic stream. Rank zero writes
``OUT/losses.json`` ({strategy: [global mean loss per step]}), ``OUT/<strategy>.pt`` (the final
full state dict, gathered) and ``OUT/zero<s>.ckpt/`` (the ZeRO checkpoints).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
CLIP = 0.05  # small enough that clipping acts at every step: the global norm must be the global one
# A small language model on associative recall (generate needs an LM); layer kinds with
# complex eigenvalues (lru) stored as real tensors.
OVERRIDES = ["data.kind=recall", "data.seq_len=24", "data.vocab_size=8", "data.n_pairs=4", "data.n_queries=4",
             "data.batch_size=2", "model.kind=lru", "model.d_model=16", "model.n_layers=2", "model.d_state=8",
             "optim.warmup_steps=2", f"trainer.max_steps={STEPS}", f"trainer.gradient_clip_val={CLIP}",
             "logger.mode=disabled", "trainer.accelerator=cpu"]


def build():
    from ssm_train.config import load_config
    from ssm_train.run import build_data_and_task

    cfg = load_config([ROOT / "configs/experiment/default.yaml"], OVERRIDES)
    datamodule, task = build_data_and_task(cfg)  # seeded: the same initial weights on every rank
    opt_cfg = task.configure_optimizers()
    return task, datamodule.train_dataloader(), opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]


def global_mean(x: torch.Tensor) -> float:
    x = x.detach().clone()
    dist.all_reduce(x)
    return float(x) / dist.get_world_size()


def lm_loss(task, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=task.spec["ignore_index"])


def train_ddp() -> tuple[list[float], dict]:
    task, loader, opt, sched = build()
    ddp = torch.nn.parallel.DistributedDataParallel(task)
    losses = []
    for _, batch in zip(range(STEPS), loader):
        loss = lm_loss(task, ddp(batch["inputs"]), batch["targets"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), CLIP)
        opt.step()
        sched.step()
        losses.append(global_mean(loss))
    return losses, {k: v.clone() for k, v in task.state_dict().items() if k.startswith("model.")}


def train_zero(stage: int, out: Path) -> tuple[list[float], dict]:
    import deepspeed

    task, loader, opt, sched = build()
    ds_config = json.loads((ROOT / f"configs/deepspeed/stage_{stage}.json").read_text())
    if stage == 3:  # partition every parameter, however small (the JSON keeps small ones whole)
        ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    # what Lightning adds from the Trainer (distributed.deepspeed_config forbids these in the JSON)
    ds_config.update(train_micro_batch_size_per_gpu=loader.batch_size, gradient_accumulation_steps=1,
                     gradient_clipping=CLIP)
    engine, *_ = deepspeed.initialize(model=task, optimizer=opt, lr_scheduler=sched, config=ds_config)
    losses = []
    for _, batch in zip(range(STEPS), loader):
        loss = lm_loss(task, engine(batch["inputs"]), batch["targets"])
        engine.backward(loss)
        engine.step()  # clip, optimizer step, schedule step
        losses.append(global_mean(loss))
    client_state = {"epoch": 0, "global_step": STEPS, "pytorch-lightning_version": "2.6",
                    "hparams_name": "kwargs", "hyper_parameters": dict(task.hparams)}
    engine.save_checkpoint(str(out / f"zero{stage}.ckpt"), client_state=client_state, tag="checkpoint")
    with deepspeed.zero.GatheredParameters(list(task.parameters()), modifier_rank=None):
        state = {k: v.detach().clone() for k, v in task.state_dict().items() if k.startswith("model.")}
    return losses, state


def main() -> None:
    out, stages = Path(sys.argv[1]), [int(s) for s in sys.argv[2:]]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    import deepspeed
    import deepspeed.ops

    # DeepSpeed builds a shared-memory all-reduce op for CPU at start-up (a minute of compiling);
    # it serves only inference_all_reduce, never ZeRO training, so it is skipped here.
    deepspeed.ops.__compatible_ops__ = {"deepspeed_shm_comm": False}
    deepspeed.init_distributed(dist_backend="gloo")
    results = {"ddp": train_ddp()}
    for stage in stages:
        results[f"zero{stage}"] = train_zero(stage, out)
    if dist.get_rank() == 0:
        (out / "losses.json").write_text(json.dumps({k: v[0] for k, v in results.items()}))
        for name, (_, state) in results.items():
            torch.save(state, out / f"{name}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/ssm_train/torch_extensions"))
    main()
