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
from tests.ops.test_selective_scan import (  # noqa: E402
    NAMES, assert_close_all, inputs, relative_error, scan_fn, segmented_oracle, state_inputs, state_value_and_grads,
    value_and_grads,
)

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


def triton_resets(Bsz: int, L: int, case: str) -> torch.Tensor | None:
    """Masks for CHUNK = 8 and L = 21 (chunks [0, 8), [8, 16), [16, 21))."""
    if case == "none":
        return None
    r = torch.zeros(Bsz, L, dtype=torch.bool)
    if case == "all_true":
        return ~r
    if case == "mixed":  # at 0 on row 0 only (row 1 keeps h0), at both chunk boundaries, adjacent, at L-1
        r[0, [0, 8, 9, 10, L - 1]] = True
        r[1, [7, 16]] = True
    return r


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("case", ["none", "mixed", "all_true"])
def test_triton_state_and_resets_equal_the_loop_in_float64(case, with_h0):
    """Values, h_last and the gradients of all six inputs (a loss on y and h_last) against the loop
    with resets and against the loop run per document; 3 chunks of 8, the last partial."""
    Bsz, L, E, N = 2, 21, 37, 5
    x, dt, A, B, C, h0 = state_inputs(Bsz, L, E, N, seed=81)
    ins = (x, dt, A, B, C, h0 if with_h0 else None)
    resets = triton_resets(Bsz, L, case)
    gen = torch.Generator().manual_seed(82)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    got = state_value_and_grads(scan_fn("triton"), ins, resets, gy, gh)
    assert_close_all(got, state_value_and_grads(scan_fn("loop"), ins, resets, gy, gh), 1e-12, context="loop")
    assert_close_all(got, state_value_and_grads(segmented_oracle, ins, resets, gy, gh), 1e-12, context="oracle")


@pytest.mark.parametrize("on", [("h_last",), ("y",)], ids=["h_last_only", "y_only"])
def test_triton_gradient_arriving_on_h_last_or_y_alone(on):
    Bsz, L, E, N = 2, 13, 9, 3
    ins = state_inputs(Bsz, L, E, N, seed=83)
    resets = torch.zeros(Bsz, L, dtype=torch.bool)
    resets[0, [0, 8]] = resets[1, 5] = True
    gen = torch.Generator().manual_seed(84)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    got = state_value_and_grads(scan_fn("triton"), ins, resets, gy, gh, on=on)
    assert_close_all(got, state_value_and_grads(scan_fn("loop"), ins, resets, gy, gh, on=on), 1e-12)


def test_triton_chaining_windows_equals_one_scan():
    """[0, 11) with return_state, then [11, 20) from its h_last (a reset at 11 on row 0): one scan."""
    Bsz, L, E, N, L1 = 2, 20, 6, 3, 11
    x, dt, A, B, C, h0 = state_inputs(Bsz, L, E, N, seed=85)
    resets = torch.zeros(Bsz, L, dtype=torch.bool)
    resets[0, [3, L1]] = resets[1, 8] = True
    gen = torch.Generator().manual_seed(86)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    fn = scan_fn("triton")

    def chained(x, dt, A, B, C, h0, resets):
        y1, h1 = fn(x[:, :L1], dt[:, :L1], A, B[:, :L1], C[:, :L1], h0, resets[:, :L1])
        y2, h2 = fn(x[:, L1:], dt[:, L1:], A, B[:, L1:], C[:, L1:], h1, resets[:, L1:])
        return torch.cat([y1, y2], 1), h2

    ins = (x, dt, A, B, C, h0)
    want = state_value_and_grads(scan_fn("loop"), ins, resets, gy, gh)
    assert_close_all(state_value_and_grads(chained, ins, resets, gy, gh), want, 1e-12)


def test_triton_state_in_float32_near_a_equal_one():
    """a ≥ 0.9999 over 120 steps with h0 and resets, float32 kernels against the float64 loop."""
    Bsz, L, E, N = 1, 120, 9, 4
    ins = state_inputs(Bsz, L, E, N, seed=87, dt_max=1e-4, a_min=0.5, a_max=1.0)
    resets = torch.zeros(Bsz, L, dtype=torch.bool)
    resets[0, [16, 17, 70]] = True
    gen = torch.Generator().manual_seed(88)
    gy, gh = torch.randn(Bsz, L, E, generator=gen, dtype=torch.float64), torch.randn(Bsz, E, N, generator=gen, dtype=torch.float64)
    got = state_value_and_grads(scan_fn("triton"), tuple(t.float() for t in ins), resets, gy, gh)
    assert all(t.dtype == torch.float32 for t in got)
    assert_close_all(got, state_value_and_grads(scan_fn("loop"), ins, resets, gy, gh), 2e-5)


def test_triton_is_opt_in(monkeypatch):
    x = torch.zeros(1, 2, 3)
    assert select_selective_backend(x, "triton") == "triton"
    assert select_selective_backend(x) == "cpp"  # CPU; and "scan" on CUDA until GPU timings exist
    monkeypatch.setenv("SSM_TRAIN_SELECTIVE_BACKEND", "triton")
    assert select_selective_backend(x) == "triton"


def test_kernels_refuse_other_dtypes():
    ins = [t.half() for t in inputs(1, 4, 3, 2, seed=0)]
    with pytest.raises(TypeError, match="float32 or float64"):
        selective_scan_triton.forward(*ins, None, None, 8)


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
    for flags in (False, True):  # without h0, resets, ∂h_last, and with all of them
        consts = dict(BLOCK_E=st.BLOCK_E, BLOCK_N=16, CHUNK=64)
        consts.update({k: flags for k in ("HAS_H0", "HAS_RESETS", "HAS_GLAST") if k in fn.arg_names})
        sig = {n: "constexpr" if n in consts else "i32" if n in ints else "*u8" if n == "resets_ptr" else "*fp32"
               for n in fn.arg_names}
        k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
        with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        out[name + ("+state" if flags else "")] = {"regs": int(re.search(r"REG:(\d+)", usage).group(1)),
                                                   "stack": int(re.search(r"STACK:(\d+)", usage).group(1))}
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
