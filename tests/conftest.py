"""Shared test settings: no network for W&B, one thread per test process, the shared data path."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see ssm_train/cli.py: spinning threads stall a shared CPU
# No test has a GPU: Triton kernels run in its interpreter. Triton reads this when it is first
# imported (DeepSpeed imports it early), so it is set here, before any test module loads.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _unmount_tmpfs():
    """Unmount what a test mounted with tests.disk.mount_tmpfs."""
    yield
    from tests.disk import unmount_all

    unmount_all()
