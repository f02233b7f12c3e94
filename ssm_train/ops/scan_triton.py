"""Triton kernels for `linear_scan` on GPU:  h_t = a_t ⊙ h_{t-1} + b_t  over [B, L, D].

The recurrence is an associative scan over pairs (a, x) with the combine

    (a₁, x₁) ∘ (a₂, x₂) = (a₁a₂, a₂x₁ + x₂)

(apply step 1, then step 2). One program owns one batch row × BLOCK_D lanes × one time segment
and walks its segment in chunks of CHUNK steps, each a [CHUNK, BLOCK_D] tile in registers:

    1. load a, x for the chunk; rows past the end get (a, x) = (1, 0) so the state passes through
    2. tl.associative_scan along time  ->  (A_i, X_i) = cumulative (product of a, state from 0)
    3. fix-up with the carry c entering the chunk:  h_i = X_i + A_i · c;  store h
    4. the new carry is the tile's last row

With one segment (enough batch rows × lane blocks to fill the GPU) this is a single pass that
moves exactly the floor: read a, b, write h. When B·D/BLOCK_D programs cannot fill the chip
the sequence is split into S segments across programs:

    pass 1 (_summary_kernel)  per segment s < S-1: (A_s, X_s) = the segment's product of a and
                              its final state from zero (reads a, b; writes [B, S, D])
    pass 2 (_carry_kernel)    the short scan of segment carries: c_0 = h0, c_{s+1} = A_s c_s + X_s
    pass 3 (_scan_kernel)     every segment again, starting from c_s, storing h

which costs (S-1)/S extra reads of a and b for S times the parallelism.

Complex numbers: Triton has no complex type. Complex tensors are passed through
``torch.view_as_real`` (interleaved (re, im) float pairs) and de-interleaved by the loads (the
real part at offset 2k, the imaginary part at 2k + 1: both loads touch the same cache lines, so
DRAM traffic equals one interleaved read); the scan carries four tiles (re/im of A and X).

Backward (PyTorch's conjugate-Wirtinger convention, see scan.py): δ_t = g_t + conj(a_{t+1}) δ_{t+1}
is the same kernel run in the opposite direction with conj(a) shifted one step (SHIFT_A, CONJ_A),
and fuses ∂ℓ/∂a_t = conj(h_{t-1}) δ_t (h_{-1} = h0 or 0): stored per step for a time-varying a,
summed over the program's steps for a constant a (partial sums [B, S, D], summed by the caller).
Forward+backward therefore moves 8 [B, L, D] arrays for a time-varying a and 5 for a constant
one, as the C++ kernels do.

Precision: loads are converted to the accumulator type ACC (float32, or float64 for
float64/complex128 inputs); stores convert to the output's type, so bfloat16/float16 inputs and
outputs work with float32 accumulation (`linear_scan` itself upcasts half precisions first).

`TRITON_INTERPRET=1` set before this module is imported turns the kernels into Triton's
NumPy interpreter, which runs on CPU tensors (slowly): that is how CI tests them without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["ScanConfig", "default_config", "forward", "backward", "INTERPRET", "check_device"]


# ---------------------------------------------------------------------------------------------
# Device code


@triton.jit
def _combine_real(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _combine_complex(a1_re, a1_im, x1_re, x1_im, a2_re, a2_im, x2_re, x2_im):
    return (
        a1_re * a2_re - a1_im * a2_im,
        a1_re * a2_im + a1_im * a2_re,
        a2_re * x1_re - a2_im * x1_im + x2_re,
        a2_re * x1_im + a2_im * x1_re + x2_im,
    )


@triton.jit
def _offsets(batch, t, d, L, D, IS_COMPLEX: tl.constexpr):
    """Element offsets of rows t (int64 [CHUNK]) and lanes d [BLOCK_D] of batch row `batch`;
    doubled for complex data (view_as_real interleaves re, im)."""
    off = (batch * L + t)[:, None] * D + d[None, :]
    if IS_COMPLEX:
        off = off * 2
    return off


@triton.jit
def _load_and_scan_chunk(
    a_ptr, x_ptr, batch, start, seg_end, d, d_ok, L, D,
    a_re_c, a_im_c,
    IS_COMPLEX: tl.constexpr, A_VARYING: tl.constexpr, REVERSE: tl.constexpr,
    SHIFT_A: tl.constexpr, CONJ_A: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr,
):
    """The chunk of processing steps [start, start + CHUNK): times t, mask, and the chunk's scan
    (A, X) from a zero state (`_scan_chunk` of its (a, x) tiles).

    Processing step i visits time t = i (or L-1-i if REVERSE). With SHIFT_A the coefficient of
    step i is a at the previously processed time (t-1, or t+1 if REVERSE): the backward's conj(a_{t+1}).
    """
    i = start + tl.arange(0, CHUNK)
    valid = i < seg_end
    if REVERSE:
        t = (L - 1 - i).to(tl.int64)
    else:
        t = i.to(tl.int64)
    m = valid[:, None] & d_ok[None, :]
    off = _offsets(batch, t, d, L, D, IS_COMPLEX)
    x_re = tl.load(x_ptr + off, mask=m, other=0.0).to(ACC)
    if IS_COMPLEX:
        x_im = tl.load(x_ptr + off + 1, mask=m, other=0.0).to(ACC)
    else:
        x_im = tl.zeros_like(x_re)
    if A_VARYING:
        if SHIFT_A:
            if REVERSE:
                ta = t + 1
            else:
                ta = t - 1
            ma = m & ((ta >= 0) & (ta < L))[:, None]
            off_a = _offsets(batch, ta, d, L, D, IS_COMPLEX)
        else:
            ma = m
            off_a = off
        a_re = tl.load(a_ptr + off_a, mask=ma, other=0.0).to(ACC)
        if IS_COMPLEX:
            a_im = tl.load(a_ptr + off_a + 1, mask=ma, other=0.0).to(ACC)
        else:
            a_im = tl.zeros_like(a_re)
    else:
        a_re = tl.zeros_like(x_re) + a_re_c[None, :]
        a_im = tl.zeros_like(x_re) + a_im_c[None, :]
    if CONJ_A:
        a_im = -a_im
    # rows past the end (or lanes past D) pass the state through: (a, x) = (1, 0)
    a_re = tl.where(m, a_re, 1.0)
    a_im = tl.where(m, a_im, 0.0)
    A_re, A_im, X_re, X_im = _scan_chunk(a_re, a_im, x_re, x_im, IS_COMPLEX)
    return t, m, A_re, A_im, X_re, X_im


@triton.jit
def _scan_chunk(a_re, a_im, x_re, x_im, IS_COMPLEX: tl.constexpr):
    """Inclusive scan along time (axis 0) of the chunk: cumulative (A, X) from a zero state."""
    if IS_COMPLEX:
        A_re, A_im, X_re, X_im = tl.associative_scan((a_re, a_im, x_re, x_im), 0, _combine_complex)
    else:
        A_re, X_re = tl.associative_scan((a_re, x_re), 0, _combine_real)
        A_im = tl.zeros_like(A_re)
        X_im = tl.zeros_like(X_re)
    return A_re, A_im, X_re, X_im


@triton.jit
def _last_row(v, CHUNK: tl.constexpr):
    rows = tl.arange(0, CHUNK)
    return tl.sum(tl.where((rows == CHUNK - 1)[:, None], v, 0.0), axis=0)


@triton.jit
def _program_lanes(D, BLOCK_D: tl.constexpr):
    """(lane blocks per row, batch row, lanes, lanes < D) of this program: axis 0 of every kernel's
    grid enumerates batch rows × blocks of BLOCK_D lanes."""
    pid = tl.program_id(0)
    n_d = tl.cdiv(D, BLOCK_D)
    d = (pid % n_d) * BLOCK_D + tl.arange(0, BLOCK_D)
    return n_d, (pid // n_d).to(tl.int64), d, d < D


@triton.jit
def _load_constant_a(a_ptr, d, d_ok, A_VARYING: tl.constexpr, IS_COMPLEX: tl.constexpr,
                     BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    if A_VARYING:  # unused placeholders
        a_re_c = tl.zeros([BLOCK_D], ACC)
        a_im_c = tl.zeros([BLOCK_D], ACC)
    elif IS_COMPLEX:
        a_re_c = tl.load(a_ptr + 2 * d, mask=d_ok, other=0.0).to(ACC)
        a_im_c = tl.load(a_ptr + 2 * d + 1, mask=d_ok, other=0.0).to(ACC)
    else:
        a_re_c = tl.load(a_ptr + d, mask=d_ok, other=0.0).to(ACC)
        a_im_c = tl.zeros([BLOCK_D], ACC)
    return a_re_c, a_im_c


@triton.jit
def _scan_kernel(
    a_ptr, x_ptr, out_ptr,
    init_re_ptr, init_im_ptr, stride_init_b, stride_init_s,
    h_ptr, h0_ptr, grad_a_ptr,
    L, D, seg_len, n_seg,
    IS_COMPLEX: tl.constexpr, A_VARYING: tl.constexpr, REVERSE: tl.constexpr,
    SHIFT_A: tl.constexpr, CONJ_A: tl.constexpr, HAS_INIT: tl.constexpr,
    GRAD_A: tl.constexpr, HAS_H0: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """out = scan of (a, x) from the carry init[batch, segment] (zero without HAS_INIT).

    GRAD_A (backward only; out = δ): 1 stores conj(h_prev) δ per step into grad_a [B, L, D],
    2 stores its sum over the segment's steps into grad_a [B, S, D] planar (re, im) partials.
    h_prev = h at the next processed time (the forward's previous step), h0 (HAS_H0) or 0 at the end.
    """
    n_d, batch, d, d_ok = _program_lanes(D, BLOCK_D)
    seg = tl.program_id(1)
    if HAS_INIT:
        init_off = batch * stride_init_b + seg * stride_init_s + d
        c_re = tl.load(init_re_ptr + init_off, mask=d_ok, other=0.0).to(ACC)
        c_im = tl.load(init_im_ptr + init_off, mask=d_ok, other=0.0).to(ACC)
    else:
        c_re = tl.zeros([BLOCK_D], ACC)
        c_im = tl.zeros([BLOCK_D], ACC)
    a_re_c, a_im_c = _load_constant_a(a_ptr, d, d_ok, A_VARYING, IS_COMPLEX, BLOCK_D, ACC)
    if HAS_H0:  # the forward state before the first step, for ∂a at the boundary
        h0_off = batch * D + d
        if IS_COMPLEX:
            h0_re = tl.load(h0_ptr + 2 * h0_off, mask=d_ok, other=0.0).to(ACC)
            h0_im = tl.load(h0_ptr + 2 * h0_off + 1, mask=d_ok, other=0.0).to(ACC)
        else:
            h0_re = tl.load(h0_ptr + h0_off, mask=d_ok, other=0.0).to(ACC)
            h0_im = tl.zeros([BLOCK_D], ACC)
    ga_re = tl.zeros([BLOCK_D], ACC)
    ga_im = tl.zeros([BLOCK_D], ACC)

    seg_start = seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, L)
    for start in range(seg_start, seg_end, CHUNK):
        t, m, A_re, A_im, X_re, X_im = _load_and_scan_chunk(
            a_ptr, x_ptr, batch, start, seg_end, d, d_ok, L, D, a_re_c, a_im_c,
            IS_COMPLEX, A_VARYING, REVERSE, SHIFT_A, CONJ_A, CHUNK, ACC,
        )
        # fix-up with the carry: h = X + A·c
        if IS_COMPLEX:
            h_re = X_re + A_re * c_re[None, :] - A_im * c_im[None, :]
            h_im = X_im + A_re * c_im[None, :] + A_im * c_re[None, :]
        else:
            h_re = X_re + A_re * c_re[None, :]
            h_im = tl.zeros_like(h_re)
        off = _offsets(batch, t, d, L, D, IS_COMPLEX)
        tl.store(out_ptr + off, h_re.to(out_ptr.dtype.element_ty), mask=m)
        if IS_COMPLEX:
            tl.store(out_ptr + off + 1, h_im.to(out_ptr.dtype.element_ty), mask=m)

        if GRAD_A != 0:  # ∂a = conj(h_prev) δ, h_prev at the next processed time
            if REVERSE:
                tp = t - 1
            else:
                tp = t + 1
            inside = (tp >= 0) & (tp < L)
            off_p = _offsets(batch, tp, d, L, D, IS_COMPLEX)
            mp = m & inside[:, None]
            hp_re = tl.load(h_ptr + off_p, mask=mp, other=0.0).to(ACC)
            if IS_COMPLEX:
                hp_im = tl.load(h_ptr + off_p + 1, mask=mp, other=0.0).to(ACC)
            else:
                hp_im = tl.zeros_like(hp_re)
            if HAS_H0:
                hp_re = tl.where(inside[:, None], hp_re, h0_re[None, :])
                hp_im = tl.where(inside[:, None], hp_im, h0_im[None, :])
            g_re = hp_re * h_re + hp_im * h_im
            g_im = hp_re * h_im - hp_im * h_re
            if GRAD_A == 1:
                tl.store(grad_a_ptr + off, g_re.to(grad_a_ptr.dtype.element_ty), mask=m)
                if IS_COMPLEX:
                    tl.store(grad_a_ptr + off + 1, g_im.to(grad_a_ptr.dtype.element_ty), mask=m)
            else:
                ga_re += tl.sum(tl.where(m, g_re, 0.0), axis=0)
                ga_im += tl.sum(tl.where(m, g_im, 0.0), axis=0)

        c_re = _last_row(h_re, CHUNK)
        c_im = _last_row(h_im, CHUNK)

    if GRAD_A == 2:  # planar partial sums [2, B, S, D]
        n_batch = tl.num_programs(0) // n_d
        p_off = (batch * n_seg + seg) * D + d
        tl.store(grad_a_ptr + p_off, ga_re, mask=d_ok)
        tl.store(grad_a_ptr + n_batch * n_seg * D + p_off, ga_im, mask=d_ok)


@triton.jit
def _summary_kernel(
    a_ptr, x_ptr, sum_ptr,
    L, D, seg_len, n_seg,
    IS_COMPLEX: tl.constexpr, A_VARYING: tl.constexpr, REVERSE: tl.constexpr,
    SHIFT_A: tl.constexpr, CONJ_A: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """Pass 1: per segment, (product of a, final state from zero) into sum [4, B, S, D] planar:
    A_re, A_im, X_re, X_im."""
    n_d, batch, d, d_ok = _program_lanes(D, BLOCK_D)
    seg = tl.program_id(1)
    a_re_c, a_im_c = _load_constant_a(a_ptr, d, d_ok, A_VARYING, IS_COMPLEX, BLOCK_D, ACC)
    p_re = tl.full([BLOCK_D], 1.0, ACC)  # product of a over the chunks so far
    p_im = tl.zeros([BLOCK_D], ACC)
    c_re = tl.zeros([BLOCK_D], ACC)
    c_im = tl.zeros([BLOCK_D], ACC)
    seg_start = seg * seg_len
    seg_end = tl.minimum(seg_start + seg_len, L)
    for start in range(seg_start, seg_end, CHUNK):
        t, m, A_re, A_im, X_re, X_im = _load_and_scan_chunk(
            a_ptr, x_ptr, batch, start, seg_end, d, d_ok, L, D, a_re_c, a_im_c,
            IS_COMPLEX, A_VARYING, REVERSE, SHIFT_A, CONJ_A, CHUNK, ACC,
        )
        Al_re = _last_row(A_re, CHUNK)
        Xl_re = _last_row(X_re, CHUNK)
        if IS_COMPLEX:
            Al_im = _last_row(A_im, CHUNK)
            Xl_im = _last_row(X_im, CHUNK)
            c_re, c_im = Xl_re + Al_re * c_re - Al_im * c_im, Xl_im + Al_re * c_im + Al_im * c_re
            p_re, p_im = Al_re * p_re - Al_im * p_im, Al_re * p_im + Al_im * p_re
        else:
            c_re = Xl_re + Al_re * c_re
            p_re = Al_re * p_re
    n_batch = tl.num_programs(0) // n_d
    plane = n_batch * n_seg * D
    s_off = (batch * n_seg + seg) * D + d
    tl.store(sum_ptr + s_off, p_re, mask=d_ok)
    tl.store(sum_ptr + plane + s_off, p_im, mask=d_ok)
    tl.store(sum_ptr + 2 * plane + s_off, c_re, mask=d_ok)
    tl.store(sum_ptr + 3 * plane + s_off, c_im, mask=d_ok)


@triton.jit
def _carry_kernel(
    sum_ptr, h0_re_ptr, h0_im_ptr, carry_ptr,
    D, n_seg,
    IS_COMPLEX: tl.constexpr, HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """Pass 2: carry [2, B, S, D] planar, c_0 = h0 (or 0), c_{s+1} = A_s c_s + X_s."""
    n_d, batch, d, d_ok = _program_lanes(D, BLOCK_D)
    n_batch = tl.num_programs(0) // n_d
    if HAS_H0:
        c_re = tl.load(h0_re_ptr + batch * D + d, mask=d_ok, other=0.0).to(ACC)
        c_im = tl.load(h0_im_ptr + batch * D + d, mask=d_ok, other=0.0).to(ACC)
    else:
        c_re = tl.zeros([BLOCK_D], ACC)
        c_im = tl.zeros([BLOCK_D], ACC)
    plane = n_batch * n_seg * D
    for s in range(0, n_seg - 1):  # the last segment's summary is never needed (nor computed)
        off = (batch * n_seg + s) * D + d
        tl.store(carry_ptr + off, c_re, mask=d_ok)
        tl.store(carry_ptr + plane + off, c_im, mask=d_ok)
        A_re = tl.load(sum_ptr + off, mask=d_ok, other=0.0)
        X_re = tl.load(sum_ptr + 2 * plane + off, mask=d_ok, other=0.0)
        if IS_COMPLEX:
            A_im = tl.load(sum_ptr + plane + off, mask=d_ok, other=0.0)
            X_im = tl.load(sum_ptr + 3 * plane + off, mask=d_ok, other=0.0)
            c_re, c_im = X_re + A_re * c_re - A_im * c_im, X_im + A_re * c_im + A_im * c_re
        else:
            c_re = X_re + A_re * c_re
    off = (batch * n_seg + n_seg - 1) * D + d
    tl.store(carry_ptr + off, c_re, mask=d_ok)
    tl.store(carry_ptr + plane + off, c_im, mask=d_ok)


# The interpreter replaces every kernel when TRITON_INTERPRET=1 was set before this import.
INTERPRET: bool = type(_scan_kernel).__name__ == "InterpretedFunction"


# ---------------------------------------------------------------------------------------------
# Launch configuration


@dataclass(frozen=True)
class ScanConfig:
    """Tile and split sizes. chunk, block_d: powers of two (the [chunk, block_d] register tile);
    segments: time splits across programs (0 = choose from the occupancy)."""

    chunk: int = 32
    block_d: int = 16
    segments: int = 0
    num_warps: int = 4

    def __post_init__(self) -> None:
        for name in ("chunk", "block_d"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"ScanConfig.{name} must be a power of two, got {v}")
        if self.segments < 0 or self.num_warps < 1:
            raise ValueError(f"ScanConfig: segments must be >= 0 and num_warps >= 1, got {self}")


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another


def default_config(B: int, L: int, D: int, is_complex: bool, n_sm: int) -> ScanConfig:
    """A first guess from register counts, not from timings (see docs/gpu.md; replace it with
    what `benchmarks/scan_gpu.py --sweep` measures).

    Rows of 64 bytes (two DRAM sectors: 16 float32 or 8 complex64 lanes) and tiles of 512 elements,
    4 per thread with 4 warps: ptxas (sm_90) then needs 48-80 registers per thread, so 6-8 programs
    fit on an SM to hide memory latency (a 2048-element tile needs 120-240 and fits 1-2). Time is
    split into segments only when batch rows × lane blocks give fewer than 2 programs per SM: a
    segment costs an extra read of a and b."""
    block_d = min(8 if is_complex else 16, triton.next_power_of_2(max(D, 1)))
    chunk = max(16, min(512 // block_d, triton.next_power_of_2(max(L, 1))))
    programs, target = B * triton.cdiv(D, block_d), 2 * n_sm
    segments = 1
    if programs < target:
        segments = max(1, min(triton.cdiv(target, programs), L // (4 * chunk)))
    return ScanConfig(chunk=chunk, block_d=block_d, segments=segments, num_warps=4)


def _resolve(cfg: ScanConfig | None, B: int, L: int, D: int, is_complex: bool, n_sm: int) -> tuple[ScanConfig, int, int]:
    """(config, seg_len, n_seg): seg_len is a multiple of chunk covering L in n_seg pieces."""
    auto = default_config(B, L, D, is_complex, n_sm)
    if cfg is None:
        cfg = auto
    elif cfg.segments == 0:
        cfg = ScanConfig(cfg.chunk, cfg.block_d, auto.segments, cfg.num_warps)
    per = triton.cdiv(L, max(1, cfg.segments))
    seg_len = max(cfg.chunk, triton.cdiv(per, cfg.chunk) * cfg.chunk)
    return cfg, seg_len, triton.cdiv(L, seg_len)


# ---------------------------------------------------------------------------------------------
# Host side

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.complex128)


def check_device(x: Tensor) -> str | None:
    """None if the kernels can run on x's device, else why not."""
    if x.is_cuda:
        return None if not INTERPRET else "TRITON_INTERPRET=1 is set; the interpreter takes CPU tensors"
    if x.device.type == "cpu" and INTERPRET:
        return None
    return (
        f"the Triton scan runs on CUDA tensors (got {x.device}); on CPU only under Triton's "
        "interpreter (TRITON_INTERPRET=1 set before ssm_train.ops.scan_triton is imported)"
    )


def _flat(x: Tensor) -> Tensor:
    """Real data as is, complex data as interleaved (re, im) floats."""
    return torch.view_as_real(x) if x.is_complex() else x


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype in (torch.float64, torch.complex128) else tl.float32


def _planar(x: Tensor, acc_dtype: torch.dtype) -> Tensor:
    """[B, D] real or complex -> [2, B, D] contiguous (re, im) in the accumulator type."""
    if x.is_complex():
        return torch.view_as_real(x).to(acc_dtype).permute(2, 0, 1).contiguous()
    return torch.stack([x.to(acc_dtype), torch.zeros_like(x, dtype=acc_dtype)])


def _check(a: Tensor, x: Tensor, h0: Tensor | None) -> None:
    why = check_device(x)
    if why is not None:
        raise RuntimeError(f"linear_scan(backend='triton'): {why}")
    if x.dim() != 3 or not (a.shape == x.shape[-1:] or a.shape == x.shape):
        raise ValueError(f"triton scan: b must be [B, L, D] and a [D] or [B, L, D], got a {list(a.shape)}, b {list(x.shape)}")
    if x.dtype not in _DTYPES or a.dtype != x.dtype or (h0 is not None and h0.dtype != x.dtype):
        raise TypeError(
            f"triton scan: a, b (and h0) must share one dtype of {_DTYPES}, got a {a.dtype}, b {x.dtype}"
            + ("" if h0 is None else f", h0 {h0.dtype}")
        )
    for name, t in (("a", a), ("b", x), ("h0", h0)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"triton scan: {name} must be contiguous")


def _run(
    a: Tensor, x: Tensor, out: Tensor, init: Tensor | None, *, reverse: bool, shift: bool,
    grad_a: Tensor | None = None, grad_mode: int = 0, h: Tensor | None = None, h0: Tensor | None = None,
    cfg: ScanConfig, seg_len: int, n_seg: int,
) -> None:
    """out = scan over x's time axis in direction `reverse`, from the state `init` ([B, D] or None).
    With `shift` (backward) the coefficients are conj(a) one step back, and ∂a is fused (grad_mode)."""
    B, L, D = x.shape
    is_complex = x.is_complex()
    acc = _acc(x.dtype)
    acc_dtype = torch.float64 if acc is tl.float64 else torch.float32
    flags = dict(IS_COMPLEX=is_complex, A_VARYING=a.dim() == 3, REVERSE=reverse, SHIFT_A=shift, CONJ_A=shift)
    sizes = dict(CHUNK=cfg.chunk, BLOCK_D=cfg.block_d, ACC=acc)
    n_d = triton.cdiv(D, cfg.block_d)
    a_f, x_f, out_f = _flat(a), _flat(x), _flat(out)

    stride_b = stride_s = 0
    init_re = init_im = None
    if n_seg > 1:
        sums = torch.empty(4, B, n_seg, D, dtype=acc_dtype, device=x.device)
        _summary_kernel[(B * n_d, n_seg - 1)](
            a_f, x_f, sums, L, D, seg_len, n_seg, **flags, **sizes, num_warps=cfg.num_warps
        )
        carry = torch.empty(2, B, n_seg, D, dtype=acc_dtype, device=x.device)
        h0_planar = _planar(init, acc_dtype) if init is not None else carry
        _carry_kernel[(B * n_d,)](
            sums, h0_planar[0], h0_planar[1], carry, D, n_seg,
            IS_COMPLEX=is_complex, HAS_H0=init is not None, BLOCK_D=cfg.block_d, ACC=acc, num_warps=cfg.num_warps,
        )
        init_re, init_im, stride_b, stride_s = carry[0], carry[1], n_seg * D, D
    elif init is not None:
        planar = _planar(init, acc_dtype)
        init_re, init_im, stride_b = planar[0], planar[1], D
    has_init = init_re is not None
    dummy = out_f  # never read: the matching flag is off
    _scan_kernel[(B * n_d, n_seg)](
        a_f, x_f, out_f,
        init_re if has_init else dummy, init_im if has_init else dummy, stride_b, stride_s,
        _flat(h) if h is not None else dummy, _flat(h0) if h0 is not None else dummy,
        _flat(grad_a) if grad_a is not None else dummy,
        L, D, seg_len, n_seg,
        **flags, HAS_INIT=has_init, GRAD_A=grad_mode, HAS_H0=h0 is not None, **sizes, num_warps=cfg.num_warps,
    )


def forward(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool, config: ScanConfig | None = None) -> Tensor:
    """h [B, L, D] (b's dtype) with h_t = a_t h_{t∓1} + b_t from h0; a: [D] or [B, L, D]."""
    _check(a, b, h0)
    B, L, D = b.shape
    out = torch.empty_like(b)
    if out.numel() == 0:
        return out
    cfg, seg_len, n_seg = _resolve(config, B, L, D, b.is_complex(), _multiprocessors(b.device))
    _run(a, b, out, h0, reverse=reverse, shift=False, cfg=cfg, seg_len=seg_len, n_seg=n_seg)
    return out


def backward(
    a: Tensor, h: Tensor, h0: Tensor | None, g: Tensor, reverse: bool, need_a: bool,
    config: ScanConfig | None = None,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(∂a, ∂b, ∂h0) from g = ∂ℓ/∂h; ∂a for a constant a is per-batch-row partial sums [B, D]
    (the `_Kernels` contract of scan.py)."""
    _check(a, g, h0)
    B, L, D = g.shape
    delta = torch.empty_like(g)
    constant = a.dim() == 1
    grad_a = None
    if L == 0 or D == 0:
        if need_a:
            grad_a = torch.zeros(B, D, dtype=h.dtype, device=h.device) if constant else torch.zeros_like(h)
        return grad_a, delta, (torch.zeros_like(h0) if h0 is not None else None)
    cfg, seg_len, n_seg = _resolve(config, B, L, D, g.is_complex(), _multiprocessors(g.device))
    grad_mode = 0
    if need_a:
        if constant:
            acc_dtype = torch.float64 if _acc(g.dtype) is tl.float64 else torch.float32
            grad_a, grad_mode = torch.empty(2, B, n_seg, D, dtype=acc_dtype, device=g.device), 2
        else:
            grad_a, grad_mode = torch.empty_like(h), 1
    _run(a, g, delta, None, reverse=not reverse, shift=True, grad_a=grad_a, grad_mode=grad_mode,
         h=h, h0=h0, cfg=cfg, seg_len=seg_len, n_seg=n_seg)
    if grad_mode == 2:
        partial = grad_a.sum(2)  # over segments: [2, B, D]
        grad_a = (torch.complex(partial[0], partial[1]) if h.is_complex() else partial[0]).to(h.dtype)
    grad_h0 = None
    if h0 is not None:
        t_first = L - 1 if reverse else 0
        a_first = a if constant else a[:, t_first]
        grad_h0 = (a_first.conj() * delta[:, t_first]).to(h0.dtype)
    return grad_a, delta, grad_h0

