"""Hybrid FSDP2 (trainer.strategy=hsdp) on two emulated nodes of two CPU processes each (gloo).

Two `torchrun` launches with --nnodes 2 and node ranks 0 and 1 meet at one rendezvous, as two
machines would: Lightning sees num_nodes=2 × devices=2 (its TorchElasticEnvironment). The model is
sharded within each "node" and replicated across the two, and 4 ranks on batches of B/4 must end
where one process on batches of B does, as DDP and FSDP do (test_lightning_cpu.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest

from tests.distributed.conftest import DEFAULT, TINY, cli_env, last_ckpt
from tests.distributed.test_lightning_cpu import BATCH, ONE, ROUNDING, max_abs_diff, model_state

HSDP = ("trainer.strategy=hsdp", "trainer.num_nodes=2", "trainer.devices=2", f"data.batch_size={BATCH // 4}",
        f"data.val_batches={BATCH}")  # the one-process runs validate on 1 x BATCH samples: the same 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(runs_dir, name: str, *overrides: str, timeout: float = 240) -> str:
    """Both node launches of one run; returns node 0's output."""
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
               f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
               "-m", "ssm_train", "fit", "-c", str(DEFAULT), f"runs_dir={runs_dir}", f"name={name}", *TINY,
               *overrides]
        procs.append(subprocess.Popen(cmd, cwd=runs_dir, env=cli_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for node, (proc, out) in enumerate(zip(procs, outs)):
        assert proc.returncode == 0, f"node {node} exited {proc.returncode}:\n{out[-6000:]}"
    return outs[0]


@pytest.fixture(scope="module")
def hsdp_run(runs):
    out = run_two_nodes(runs.dir, "hsdp", *HSDP)
    return out, runs.ckpt("hsdp")


@pytest.mark.slow
def test_hsdp_shards_within_a_node_and_replicates_across_nodes(runs, hsdp_run):
    out, hsdp = hsdp_run
    assert ("FSDP2: 3 shard groups over the mesh (replicate=2, shard=2), parameters placed "
            "(Replicate(), Shard(dim=0))") in out, out[-3000:]
    one = runs.get("one", *ONE)
    assert hsdp["global_step"] == one["global_step"] == 6
    assert max_abs_diff(model_state(one), model_state(hsdp)) < ROUNDING
    # The checkpoint is one file with the whole state, like those of DDP and FSDP.
    assert {k: v.shape for k, v in model_state(hsdp).items()} == {k: v.shape for k, v in model_state(one).items()}


@pytest.mark.slow
def test_an_hsdp_checkpoint_resumes_on_one_process(runs, hsdp_run):
    _, hsdp = hsdp_run
    shutil.copytree(runs.dir / "hsdp", runs.dir / "hsdp-on-1")
    proc = runs.run("hsdp-on-1", *ONE, "trainer.max_steps=9")
    assert "resuming from" in proc.stdout
    resumed = last_ckpt(runs.dir, "hsdp-on-1")
    straight = runs.get("one-9", *ONE, "trainer.max_steps=9")
    assert resumed["global_step"] == straight["global_step"] == 9
    assert max_abs_diff(model_state(resumed), model_state(straight)) < ROUNDING
