"""ssm_train turns on PyTorch's transparent-huge-page allocation for large CPU tensors."""

from __future__ import annotations

import os
import subprocess
import sys


def _env_after_import(env: dict[str, str]) -> str:
    code = "import ssm_train, os; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_ssm_train_enables_huge_pages_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    assert _env_after_import(env) == "1"
    assert _env_after_import({**env, "THP_MEM_ALLOC_ENABLE": "0"}) == "0"
