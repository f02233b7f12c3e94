"""The CPU allocator settings for long sequences (ssm_train/cpu_memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ssm_train import cpu_memory

# Frees a mapped 16 MB block (glibc then raises its mmap threshold to 16 MB), allocates 100 blocks
# of 2 MB and frees all but the last: prints the growth of the resident set in MB.
HELD_AFTER_FREE = """
import sys
import ssm_train.cpu_memory
if sys.argv[1] == "1":
    ssm_train.cpu_memory.return_freed_blocks()
import torch
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = rss()
big = torch.ones(4 << 20); del big
blocks = [torch.ones(1 << 19) for _ in range(100)]
last = blocks[-1]; del blocks
print(rss() - before)
"""


def _run(code: str, env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def _env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_")}
    return env | kw


def test_importing_ssm_train_enables_huge_pages_unless_the_user_chose():
    code = "import ssm_train, os; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    assert _run(code, _env()) == "1"
    assert _run(code, _env(THP_MEM_ALLOC_ENABLE="0")) == "0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_go_back_to_the_system_unless_the_user_chose():
    held = {case: float(_run(HELD_AFTER_FREE, env, flag)) for case, env, flag in (
        ("glibc's default", _env(), "0"), ("fixed threshold", _env(), "1"),
        ("user's threshold", _env(MALLOC_MMAP_THRESHOLD_=str(32 << 20)), "1"))}
    assert held["glibc's default"] > 150, held  # 198 MB held for 2 MB alive
    assert held["fixed threshold"] < 20, held
    assert held["user's threshold"] > 150, held


def test_fit_fixes_the_threshold_only_for_sequences_of_several_chunks(tmp_path, monkeypatch):
    from tests.tasks.test_resume import config

    from ssm_train.run import fit

    calls = []
    monkeypatch.setattr(cpu_memory, "return_freed_blocks", lambda *a: calls.append(a) or True)
    for policy, chunk in (("none", 8), ("block", 8), ("chunk", 24), ("chunk", 8)):  # data.seq_len=24
        fit(config(tmp_path, f"{policy}{chunk}", f"trainer.activation_checkpointing={policy}",
                   f"trainer.checkpoint_chunk={chunk}", "trainer.max_steps=2", "model.dropout=0.0"))
    assert calls == [()]
