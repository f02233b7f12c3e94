"""The Triton scan kernels (ssm_train/ops/scan_triton.py) against the float64 reference loop, run on
CPU through Triton's interpreter (no GPU needed).

TRITON_INTERPRET=1 must be set before the kernels are decorated, i.e. before scan_triton is
imported, so it is set at the top of this module and stays set for the process (Triton reads it
again at launch time; restoring it breaks the interpreter). No other CPU test uses Triton.

The interpreter executes `tl.associative_scan` one element at a time; `_vectorised_scan` below
replaces that loop by one over the scanned axis only (the combine is elementwise, so the result
is the same) and makes these tests ~10x faster. Sizes stay small anyway: every kernel
instruction is a NumPy call. The kernels accumulate in float32 for float32/complex64 inputs, so
they are compared with the same rounding-error bounds as the CPU backends (tests/ops/test_scan.py).
"""

from __future__ import annotations

import itertools
import math
import os

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed (pip install 'ssm-train[gpu]' or triton)")

from ssm_train.ops import backend  # noqa: E402
from ssm_train.ops import scan as scan_mod  # noqa: E402
from ssm_train.ops import scan_triton  # noqa: E402
from ssm_train.ops.scan import linear_scan, reference_scan, select_backend  # noqa: E402
from ssm_train.ops.scan_triton import ScanConfig, default_config  # noqa: E402
from tests.nn.scan_checks import assert_close_to, compiled_resource_usage  # noqa: E402

pytestmark = pytest.mark.skipif(
    not scan_triton.INTERPRET,
    reason="scan_triton was imported before TRITON_INTERPRET=1 was set; run this file in its own process",
)

# tiny tiles so that few steps cover several chunks, lane blocks and segments
ONE_SEGMENT = ScanConfig(chunk=8, block_d=8, segments=1)
THREE_SEGMENTS = ScanConfig(chunk=8, block_d=8, segments=3)


@pytest.fixture(autouse=True)
def _vectorised_scan(monkeypatch):
    """Triton's interpreter scans element by element; scan along the axis with whole slices."""
    from triton.runtime import interpreter

    if not hasattr(interpreter, "ScanOps") or not hasattr(interpreter.ScanOps, "generic_scan"):
        return  # another Triton version: keep its own (slower) scan

    def generic_scan(self, inputs):
        data = [x.handle.data for x in inputs]
        outs = [np.empty_like(d) for d in data]
        at = lambda k: (slice(None),) * self.axis + (k,)  # noqa: E731
        acc = None
        for k in range(data[0].shape[self.axis]):
            cur = tuple(self.to_tensor(d[at(k)], x.dtype) for d, x in zip(data, inputs))
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            for o, v in zip(outs, acc):
                o[at(k)] = v.handle.data
        return [self.to_tensor(o, x.dtype) for o, x in zip(outs, inputs)]

    monkeypatch.setattr(interpreter.ScanOps, "generic_scan", generic_scan)


# ---------------------------------------------------------------------------------------------
# Helpers


def wide(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def random_inputs(B, L, D, dtype, varying, with_h0, seed, radius=None):
    """a in the unit disk (|a| = radius if given; random phase, or random sign if real); b, h0 normal."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, L, D) if varying else (D,)
    r = torch.rand(shape, generator=g, dtype=torch.float64) if radius is None else torch.full(shape, radius, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(shape, generator=g, dtype=torch.float64)
    a = torch.polar(r, phase) if dtype.is_complex else r * torch.where(phase < math.pi, 1.0, -1.0)
    b = torch.randn(B, L, D, generator=g, dtype=wide(dtype))
    h0 = torch.randn(B, D, generator=g, dtype=wide(dtype)) if with_h0 else None
    return a.to(dtype), b.to(dtype), None if h0 is None else h0.to(dtype)


def reference_with_grads(a, b, h0, g, reverse):
    """float64 reference h and the gradients of <h, g> for (a, b[, h0])."""
    leaves = [x.to(wide(b.dtype)).requires_grad_() for x in (a, b, h0) if x is not None]
    h = reference_scan(*leaves[:2], leaves[2] if h0 is not None else None, reverse=reverse)
    return h.detach(), torch.autograd.grad(h, leaves, g.to(h.dtype))


def kernel_with_grads(a, b, h0, g, reverse, config):
    """The raw kernel pair, as _LinearScan calls it (constant a: partial sums over batch rows)."""
    h = scan_triton.forward(a, b, h0, reverse, config)
    grad_a, grad_b, grad_h0 = scan_triton.backward(a, h, h0, g.to(h.dtype), reverse, True, config)
    grads = [grad_a.sum(0) if a.dim() == 1 else grad_a, grad_b] + ([grad_h0] if h0 is not None else [])
    return h, grads


# ---------------------------------------------------------------------------------------------
# Values and gradients against the float64 reference


def _flag_cases():
    """All 32 combinations of (dtype, varying, reverse, h0, segments). The 8 with
    h0 = dtype XOR varying and segments = dtype XOR reverse form an orthogonal array of strength 2
    (every pair of flags meets in all four combinations) and run always; the rest are `slow`."""
    cases = []
    for f in itertools.product((0, 1), repeat=5):
        dtype, varying, reverse, h0, seg = f
        fast = h0 == dtype ^ varying and seg == dtype ^ reverse
        name = "-".join(n[v] for n, v in zip(FLAG_NAMES, f))
        values = ([torch.float32, torch.complex64][dtype], bool(varying), bool(reverse), bool(h0),
                  [ONE_SEGMENT, THREE_SEGMENTS][seg])
        cases.append(pytest.param(*values, id=name, marks=() if fast else pytest.mark.slow))
    return cases


FLAG_NAMES = [("f32", "c64"), ("const", "varying"), ("fwd", "rev"), ("zero", "h0"), ("1seg", "3seg")]


@pytest.mark.parametrize(("dtype", "varying", "reverse", "with_h0", "config"), _flag_cases())
def test_kernels_match_float64_reference(dtype, varying, reverse, with_h0, config):
    """B=2, L=37 (4.6 chunks; segments of 16 steps), D=11 (a full and a partial lane block)."""
    B, L, D = 2, 37, 11
    a, b, h0 = random_inputs(B, L, D, dtype, varying, with_h0, seed=hash((varying, reverse, with_h0)) % 1000)
    g = torch.randn(B, L, D, dtype=wide(dtype), generator=torch.Generator().manual_seed(1))
    h, grads = kernel_with_grads(a, b, h0, g, reverse, config)
    ref, ref_grads = reference_with_grads(a, b, h0, g, reverse)
    assert h.dtype == dtype
    tol = 4 * torch.finfo(dtype).eps / 2 * L  # 4uL: the worst-case bound of tests/ops/test_scan.py
    assert_close_to(h, ref, tol, "h")
    for name, got, want in zip(["grad a", "grad b", "grad h0"], grads, ref_grads):
        assert got.dtype == dtype, name
        assert_close_to(got, want, tol * (B * L if name == "grad a" and not varying else 1), name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_backend_autograd(dtype, varying, reverse):
    """The `triton` backend through linear_scan's autograd Function (default launch config),
    with hard inputs mixed in: a = 0 and |a| = 1 lanes."""
    B, L, D = 2, 23, 6
    a, b, h0 = random_inputs(B, L, D, dtype, varying, True, seed=5)
    a = a.clone()
    a[..., 0] = 0  # forgets everything at every step
    a[..., 1] = a[..., 1] / a[..., 1].abs()  # on the unit circle
    g = torch.randn(B, L, D, dtype=wide(dtype), generator=torch.Generator().manual_seed(2))
    leaves = [x.clone().requires_grad_() for x in (a, b, h0)]
    h = linear_scan(*leaves, reverse=reverse, backend="triton")
    grads = torch.autograd.grad(h, leaves, g.to(h.dtype))
    ref, ref_grads = reference_with_grads(a, b, h0, g, reverse)
    tol = 4 * torch.finfo(dtype).eps / 2 * L
    assert_close_to(h.detach(), ref, tol, "h")
    for name, got, want in zip(["grad a", "grad b", "grad h0"], grads, ref_grads):
        assert_close_to(got, want, tol * (B * L if name == "grad a" and not varying else 1), name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_float64_accumulates_in_float64(dtype):
    """float64/complex128 inputs accumulate in float64: agreement to ~1e-15, not ~1e-7."""
    a, b, h0 = random_inputs(2, 29, 5, dtype, True, True, seed=8)
    g = torch.randn(2, 29, 5, dtype=dtype, generator=torch.Generator().manual_seed(3))
    h, grads = kernel_with_grads(a, b, h0, g, False, THREE_SEGMENTS)
    ref, ref_grads = reference_with_grads(a, b, h0, g, False)
    assert_close_to(h, ref, 1e-13, "h")
    for name, got, want in zip(["grad a", "grad b", "grad h0"], grads, ref_grads):
        assert_close_to(got, want, 1e-13, name)


@pytest.mark.parametrize("reverse", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=["f32", "c64"])
@pytest.mark.parametrize("varying", [False, True], ids=["const", "varying"])
def test_near_unit_circle(dtype, varying, reverse):
    """|a| = 0.9999, L = 1024 across 4 segments of 4 chunks: the carries cross segment and chunk
    boundaries with almost no decay. Relative error against float64 on the same float32 inputs
    stays at the random-walk level u·sqrt(L) ≈ 2e-6 (bound 3e-5, as for the CPU backends)."""
    B, L, D = 1, 1024, 4
    a, b, _ = random_inputs(B, L, D, dtype, varying, False, seed=11, radius=0.9999)
    h = scan_triton.forward(a, b, None, reverse, ScanConfig(chunk=64, block_d=8, segments=4))
    ref = reference_scan(a.to(wide(dtype)), b.to(wide(dtype)), reverse=reverse)
    rel = (h.to(ref.dtype) - ref).abs().max().item() / ref.abs().max().item()
    assert rel < 3e-5, f"relative error {rel:.2e}"


def test_half_precision_inputs_and_outputs():
    """bfloat16/float16 in, same type out, float32 inside: the error is the output rounding only."""
    a, b, h0 = random_inputs(2, 21, 9, torch.float32, True, True, seed=13)
    for half in (torch.bfloat16, torch.float16):
        ah, bh, h0h = a.to(half), b.to(half), h0.to(half)
        h = scan_triton.forward(ah, bh, h0h, False, ONE_SEGMENT)
        assert h.dtype == half
        ref = reference_scan(ah.double(), bh.double(), h0h.double())
        assert_close_to(h, ref, 2 * torch.finfo(half).eps, f"h {half}")


def test_degenerate_sizes():
    for B, L, D in [(2, 0, 3), (2, 5, 0), (1, 1, 1)]:
        a, b, h0 = random_inputs(B, L, D, torch.complex64, True, True, seed=1)
        leaves = [x.clone().requires_grad_() for x in (a, b, h0)]
        h = linear_scan(*leaves, backend="triton")
        assert h.shape == (B, L, D)
        assert_close_to(h.detach(), reference_scan(a, b, h0), 1e-6, f"h {(B, L, D)}")
        if h.numel():
            grads = torch.autograd.grad(h.abs().sum(), leaves)
            assert all(torch.isfinite(x).all() for x in grads)


# ---------------------------------------------------------------------------------------------
# Launch configuration, backend choice, errors


def test_default_config_fills_the_gpu_before_splitting_time():
    """Many rows: one segment (a single pass at the memory floor), 64-byte rows; few rows and a
    long sequence: time segments, none shorter than 4 chunks."""
    for is_complex in (False, True):
        wide_batch = default_config(8, 65536, 1024, is_complex, n_sm=132)
        assert wide_batch.segments == 1
        assert wide_batch.block_d * (8 if is_complex else 4) == 64
        assert wide_batch.chunk * wide_batch.block_d == 512
    few_rows = default_config(1, 65536, 64, True, n_sm=132)
    assert few_rows.segments == 2 * 132 // 8
    short = default_config(1, 10, 64, False, n_sm=132)
    assert short.segments == 1 and short.chunk == 16
    assert default_config(2, 100, 3, False, n_sm=132).block_d == 4  # no lanes wasted beyond D


@pytest.mark.parametrize("L", [1, 8, 37, 100])
@pytest.mark.parametrize("segments", [1, 2, 5, 64])
def test_segments_cover_the_sequence(L, segments):
    cfg, seg_len, n_seg = scan_triton._resolve(ScanConfig(chunk=8, block_d=8, segments=segments), 1, L, 4, False, 1)
    assert seg_len % cfg.chunk == 0 and (n_seg - 1) * seg_len < L <= n_seg * seg_len
    assert n_seg <= segments


def test_bad_config():
    with pytest.raises(ValueError, match="ScanConfig.chunk must be a power of two, got 12"):
        ScanConfig(chunk=12)
    with pytest.raises(ValueError, match="segments must be >= 0"):
        ScanConfig(segments=-1)


def test_backend_selection(monkeypatch):
    monkeypatch.delenv(scan_mod.ENV_BACKEND, raising=False)
    b = torch.zeros(1, 2, 3)
    assert select_backend(b) in ("cpp", "torch")  # auto never picks triton on CPU
    assert select_backend(b, "triton") == "triton"  # the interpreter takes CPU tensors
    monkeypatch.setenv(scan_mod.ENV_BACKEND, "triton")
    assert select_backend(b) == "triton"
    calls = []
    real_forward = scan_triton.forward
    monkeypatch.setattr(scan_triton, "forward", lambda *args: calls.append(1) or real_forward(*args))
    a, b, _ = random_inputs(1, 9, 3, torch.float32, False, False, seed=2)
    assert_close_to(linear_scan(a, b), reference_scan(a.double(), b.double()), 1e-5, "h")
    assert calls == [1], "SSM_TRAIN_SCAN_BACKEND=triton did not route linear_scan to the Triton kernels"


def test_errors_name_the_problem(monkeypatch):
    with pytest.raises(RuntimeError, match="backend 'triton' requested but the Triton scan runs on CUDA tensors"):
        select_backend(torch.zeros(1, 2, 3, device="meta"), "triton")
    monkeypatch.setattr(backend, "_triton_state", {"error": "triton is not importable (ImportError: x)"})
    with pytest.raises(RuntimeError, match="backend 'triton' requested but triton is not importable"):
        select_backend(torch.zeros(1, 2, 3), "triton")
    with pytest.raises(TypeError, match="must share one dtype"):
        scan_triton.forward(torch.zeros(3, dtype=torch.float64), torch.zeros(1, 2, 3), None, False)


# ---------------------------------------------------------------------------------------------
# The real compiler: every kernel variant compiles for an A100 (sm_80) and an H100 (sm_90) with no
# GPU here, without spills; the scan kernels also with bf16 inputs and outputs

_COMPILE_KERNELS = r"""
import itertools, json, os, re, subprocess, sys, tempfile
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ssm_train.ops import scan_triton as st

capability = int(sys.argv[1])
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
data = {"a_ptr", "x_ptr", "out_ptr", "h_ptr", "h0_ptr", "grad_a_ptr"}  # in the caller's dtype
state = {"init_re_ptr", "init_im_ptr", "sum_ptr", "h0_re_ptr", "h0_im_ptr", "carry_ptr"}  # float32 always

def compile_(fn, consts, num_warps, io="fp32"):
    sig = {n: "constexpr" if n in consts else f"*{io}" if n in data else "*fp32" if n in state else "i32"
           for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", capability, 32),
                       options={"num_warps": num_warps})
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return {"regs": int(re.search(r"REG:(\d+)", usage).group(1)), "stack": int(re.search(r"STACK:(\d+)", usage).group(1))}

out = {}
for is_complex, varying, bwd in itertools.product([False, True], repeat=3):
    cfg = st.default_config(8, 16384, 1024, is_complex, 132)
    sizes = dict(CHUNK=cfg.chunk, BLOCK_D=cfg.block_d, ACC=tl.float32)
    flags = dict(IS_COMPLEX=is_complex, A_VARYING=varying, REVERSE=bwd, SHIFT_A=bwd, CONJ_A=bwd)
    grad = (1 if varying else 2) if bwd else 0
    name = f"{'complex' if is_complex else 'real'}-{'varying' if varying else 'const'}-{'bwd' if bwd else 'fwd'}"
    scan = dict(**flags, HAS_INIT=True, GRAD_A=grad, HAS_H0=bwd, **sizes)
    out["scan-" + name] = compile_(st._scan_kernel, scan, 4)
    out["scan-bf16-" + name] = compile_(st._scan_kernel, scan, 4, io="bf16")
    out["summary-" + name] = compile_(st._summary_kernel, dict(**flags, **sizes), 4)
out["carry"] = compile_(st._carry_kernel, dict(IS_COMPLEX=True, HAS_H0=True, BLOCK_D=8, ACC=tl.float32), 4)
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_without_spills(capability):
    """The interpreter accepts code the compiler may not (types, layouts, constexpr branches);
    compile every variant for an A100 and an H100 in a process without TRITON_INTERPRET and read the
    cubin's register and stack use (ptxas and cuobjdump ship inside the triton wheel)."""
    usage = compiled_resource_usage(_COMPILE_KERNELS, capability)
    assert len(usage) == 25
    for name, u in usage.items():
        assert u["stack"] == 0, f"sm_{capability} {name} spills: {u}"
        assert u["regs"] <= 128, f"sm_{capability} {name} needs {u['regs']} registers: fewer programs fit on an SM"


@pytest.mark.parametrize("reverse", [False, True])
def test_resets_fold_into_the_triton_kernels(reverse):
    """Resets reach the Triton kernels as a time-varying decay; values and gradients equal the
    reference loop with resets."""
    g = torch.Generator().manual_seed(11)
    a = torch.polar(torch.rand(3, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64) * 6)
    b = torch.randn(2, 40, 3, generator=g, dtype=torch.complex128)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.complex128)
    resets = torch.zeros(2, 40, dtype=torch.bool)
    resets[0, [0, 7, 33]] = True
    resets[1, 20] = True
    w = torch.randn(b.shape, generator=g, dtype=b.dtype)
    grads = []
    for name in ("triton", "reference"):
        xs = [x.clone().requires_grad_(True) for x in (a, b, h0)]
        h = linear_scan(*xs, reverse=reverse, resets=resets, backend=name)
        (h * w.conj()).real.sum().backward()
        grads.append((h.detach(), *[x.grad for x in xs]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
