"""Worker for tests/nn/test_context_parallel.py: whole models on N gloo ranks, each holding a
slice of every sequence. ``python tests/nn/context_parallel_worker.py OUT N`` spawns N ranks;
rank 0 writes OUT/models{N}.pt with, per case, the gathered outputs and every parameter's
gradient summed over the ranks (what DDP's all-reduce forms, up to its 1/world)."""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ssm_train.nn import Backbone, mixer_factory  # noqa: E402
from ssm_train.nn.registry import get_layer  # noqa: E402
from ssm_train.ops.context import ContextGroup, gather_sequence, split_sequence  # noqa: E402

V, H, N, B, L = 11, 8, 4, 2, 48
# document starts per row: inside the last 3 steps of a slice (the conv halo) on 2 ranks (22) and
# on 4 (11), two steps after a boundary (26), at a slice boundary of 4 ranks (36)
DOCS = [[0, 22, 26], [0, 11, 36]]
CASES = {
    "lru": dict(kind="lru"),
    "s4d": dict(kind="s4d"),
    "s4d_scan": dict(kind="s4d", fields={"mode": "scan"}),
    "selective": dict(kind="selective", init="mamba"),
    "rglru": dict(kind="rglru"),
    "lru_bidirectional": dict(kind="lru", bidirectional=True),
    "s4d_bidirectional": dict(kind="s4d", bidirectional=True),
    "lru_resets": dict(kind="lru", resets=True),
    "s4d_resets_slice_start": dict(kind="s4d", resets="boundary"),
    "s4d_resets": dict(kind="s4d", resets=True),
    "selective_resets": dict(kind="selective", init="mamba", resets=True),
    "rglru_resets": dict(kind="rglru", resets=True),
    "lru_bidirectional_resets": dict(kind="lru", bidirectional=True, resets=True),
    "lru_block_checkpointing": dict(kind="lru", checkpointing="block"),
    "selective_block_checkpointing": dict(kind="selective", init="mamba", checkpointing="block"),
    "lru_float32": dict(kind="lru", dtype=torch.float32),
    "selective_float32": dict(kind="selective", init="mamba", dtype=torch.float32),
}


def build(case: dict) -> Backbone:
    fields = case.get("fields")
    config = get_layer(case["kind"]).config_cls(**fields) if fields else None
    torch.manual_seed(0)
    init = case.get("init")
    m = Backbone(vocab_size=V, d_model=H, n_layers=2, bidirectional=case.get("bidirectional", False),
                 mixer=mixer_factory(case["kind"], N, config, init=init),
                 checkpointing=case.get("checkpointing", "none"))
    return m.to(case.get("dtype", torch.float64)).train()


def data(case: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (B, L), generator=g)
    w = torch.randn(B, L, V, generator=g, dtype=torch.float64).to(case.get("dtype", torch.float64))
    resets = None
    if case.get("resets"):
        resets = torch.zeros(B, L, dtype=torch.bool)
        starts = [[0, 24], [0, 12]] if case["resets"] == "boundary" else DOCS
        for i, row in enumerate(starts):
            resets[i, row] = True
    return x, resets, w


def run_case(case: dict, cg: ContextGroup | None) -> dict[str, torch.Tensor]:
    """Outputs [B, L, V] and parameter gradients of loss = Σ w ⊙ logits, on one process (cg None)
    or split over cg's ranks."""
    m = build(case)
    x, resets, w = data(case)
    if cg is not None:
        m.set_context_parallel(cg)
        x, w = split_sequence(x, cg), split_sequence(w, cg)
        resets = None if resets is None else split_sequence(resets, cg)
    y = m(x, resets=resets)
    (y * w).sum().backward()
    grads = {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in m.named_parameters()}
    if cg is not None:
        for g in grads.values():
            dist.all_reduce(g)
        y = gather_sequence(y.detach(), cg)
    return {"y": y.detach(), **{f"grad:{k}": v for k, v in grads.items()}}


def run(rank: int, world: int, out: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / f'rendezvous{world}'}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    cg = ContextGroup.of(None)
    results = {name: run_case(case, cg) for name, case in CASES.items()}
    if rank == 0:
        torch.save(results, out / f"models{world}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    out, world = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(run, args=(world, out), nprocs=world)
