"""The Triton selective-scan kernels (ssm_train/ops/selective_scan_triton.py) against the float64 loop,
on CPU through Triton's interpreter (TRITON_INTERPRET=1, set in tests/conftest.py before Triton
loads), and compiled for sm_80/sm_90 with Triton's real compiler (no GPU needed).

The interpreter runs every kernel instruction as NumPy calls, once per step, so the chunk is cut
from 64 to 8 steps here (the loops then cover several chunks in few steps) and sizes stay small."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'ssm-train[gpu]' or triton)")

import ssm_train.ops.selective_scan as selective_module  # noqa: E402
from ssm_train.ops import selective_scan_triton  # noqa: E402
from ssm_train.ops.selective_scan import reference_selective_scan, select_selective_backend, selective_scan  # noqa: E402
from tests.nn.scan_checks import compiled_resource_usage  # noqa: E402
from tests.ops.test_selective_scan import NAMES, inputs, relative_error, value_and_grads  # noqa: E402

pytestmark = pytest.mark.skipif(
    not selective_scan_triton.INTERPRET,
    reason="Triton was imported before TRITON_INTERPRET=1 was set; run this file in its own process",
)


@pytest.fixture(autouse=True)
def _short_chunks(monkeypatch):
    monkeypatch.setattr(selective_module, "CHUNK", 8)


def triton_scan(*ins):
    return selective_scan(*ins, backend="triton")


@pytest.mark.parametrize(("Bsz", "L", "E", "N"), [
    (2, 21, 37, 5),  # 3 chunks, the last partial; a full and a partial block of 32 channels; N < 8
    (1, 16, 32, 16),  # whole chunks, one whole block, N a power of two
    pytest.param(1, 1, 1, 1, id="one-step"),
])
def test_triton_equals_the_loop_in_float64(Bsz, L, E, N):
    ins = inputs(Bsz, L, E, N, seed=L)
    g = torch.randn(Bsz, L, E, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    y, grads = value_and_grads(triton_scan, ins, g)
    y_ref, grads_ref = value_and_grads(reference_selective_scan, ins, g)
    for name, a, b in zip(NAMES, (y, *grads), (y_ref, *grads_ref)):
        assert relative_error(a, b) < 1e-12, name


def test_triton_in_float32_near_a_equal_one():
    """a = exp(ΔA) ≥ 0.9999 over 200 steps, float32 kernels against the float64 loop."""
    ins = inputs(1, 200, 9, 4, seed=3, dt_max=1e-4, a_min=0.5, a_max=1.0)
    g = torch.randn(1, 200, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y, grads = value_and_grads(triton_scan, tuple(t.float() for t in ins), g)
    y_ref, grads_ref = value_and_grads(reference_selective_scan, ins, g)
    for name, a, b in zip(NAMES, (y, *grads), (y_ref, *grads_ref)):
        assert a.dtype == torch.float32
        assert relative_error(a, b) < 2e-5, (name, relative_error(a, b))


def test_triton_is_opt_in(monkeypatch):
    x = torch.zeros(1, 2, 3)
    assert select_selective_backend(x, "triton") == "triton"
    assert select_selective_backend(x) == "cpp"  # CPU; and "scan" on CUDA until GPU timings exist
    monkeypatch.setenv("SSM_TRAIN_SELECTIVE_BACKEND", "triton")
    assert select_selective_backend(x) == "triton"


def test_kernels_refuse_other_dtypes():
    ins = [t.half() for t in inputs(1, 4, 3, 2, seed=0)]
    with pytest.raises(TypeError, match="float32 or float64"):
        selective_scan_triton.forward(*ins, 8)


_COMPILE = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ssm_train.ops import selective_scan_triton as st

capability = int(sys.argv[1])
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
ints = {"L", "E", "N", "n_chunks", "n_blocks"}
out = {}
for name, fn in (("forward", st._forward_kernel), ("backward", st._backward_kernel)):
    consts = dict(BLOCK_E=st.BLOCK_E, BLOCK_N=16, CHUNK=64)
    sig = {n: "constexpr" if n in consts else "i32" if n in ints else "*fp32" for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    out[name] = {"regs": int(re.search(r"REG:(\d+)", usage).group(1)), "stack": int(re.search(r"STACK:(\d+)", usage).group(1))}
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_without_spills(capability):
    """Compile both kernels for an A100 and an H100 (no GPU needed) and read their register use."""
    usage = compiled_resource_usage(_COMPILE, capability, timeout=300)
    for name, u in usage.items():
        assert u["stack"] == 0, f"sm_{capability} {name} spills: {u}"
        assert u["regs"] <= 128, f"sm_{capability} {name} needs {u['regs']} registers"  # measured 40-96
