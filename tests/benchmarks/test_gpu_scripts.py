"""The GPU benchmark scripts run end to end on CPU (--dry-run: tiny sizes, Triton's interpreter), so
that a session lent a GPU for a few minutes does not spend them on a broken script. Their
correctness checks are real; their timings are not looked at."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed")
from tests.paths import ROOT


@pytest.mark.parametrize(("script", "last"), [
    ("benchmarks/scan_gpu.py", "worst_fwd_bwd_x_floor="),
    ("benchmarks/selective_gpu.py", "triton_vs_scan_speedup_L32="),
])
def test_dry_run_passes_its_checks_and_prints_its_summary(script, last):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, script, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "FAILED" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith(last)
