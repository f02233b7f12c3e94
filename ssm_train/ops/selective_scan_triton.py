"""Triton kernels for the fused selective scan on GPU (the same contract as csrc/selective_scan_cpu.cpp):

    h_t,cn = k_t exp(Δ_tc A_cn) h_{t-1},cn + Δ_tc B_tn x_tc,   h_{-1} = h0,     y_tc = Σ_n C_tn h_t,cn

x, Δ: [Bt, L, E]; A: [E, N]; B, C: [Bt, L, N]; h0: [Bt, E, N] (zero if None); k_t = 0 where
resets[b, t] (a document starts at t), else 1. The forward also returns h_last = h_{L-1}. One program owns one batch row and BLOCK_E channels
and walks time with its [BLOCK_E, BLOCK_N] states in registers, as Mamba's kernel does: per step it
reads BLOCK_E values of x and Δ and N of B and C, and writes BLOCK_E of y. The [Bt, L, E, N] tensors
a, b and h of the materialised path (each N times the size of x) are never formed; B·E/BLOCK_E
programs (512 at B = 8, E = 2048) fill the GPU. The forward stores the state entering every chunk
of CHUNK steps (the first is h0) and, at the end, the last state.

Backward, per program and chunk in reverse: the chunk's states are recomputed from the stored one
into a per-program scratch tile ([CHUNK, BLOCK_E, BLOCK_N], written and read back within the chunk,
so mostly served by L2), then the reverse loop runs δh_t = C_t g_t + a_{t+1} δh_{t+1} (with
a_t = k_t exp(Δ_t A), 0 at a reset; δ entering the last step is ∂ℓ/∂h_last, zero if None) and forms
∂x, ∂Δ, ∂A, ∂B, ∂C as the C++ kernel does (sums over channels per channel block, over time and
batch per batch row; the caller adds them up), and ∂h0 = a_0 δh_0.

Steps past L (the last chunk's tail) load x = Δ = 0 and no reset (a = 1, nothing added: the state
and δh pass through unchanged) and are not stored;
channels past E and states past N are masked likewise. float32 or float64 (the accumulator is the
input's type). Tested on CPU through Triton's interpreter (TRITON_INTERPRET=1 set before this
module is imported); compiled for sm_80/sm_90 in tests; never yet timed on a GPU, so it is not
selective_scan's default on CUDA (``backend="triton"`` or SSM_TRAIN_SELECTIVE_BACKEND=triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssm_train.ops.scan_triton import INTERPRET, check_device

__all__ = ["forward", "backward", "INTERPRET", "check_device", "BLOCK_E"]

BLOCK_E = 32  # channels per program: a [32, 16] state tile is 4 registers per thread at 4 warps


@triton.jit
def _step_inputs(x_ptr, dt_ptr, B_ptr, C_ptr, b, t, L, E, N, e, e_ok, n, n_ok):
    """x_t, Δ_t over the program's channels and B_t, C_t over the states; zeros past L."""
    row = (b * L + t).to(tl.int64)
    x = tl.load(x_ptr + row * E + e, mask=_mask_lt(e_ok, t, L), other=0.0)
    dt = tl.load(dt_ptr + row * E + e, mask=_mask_lt(e_ok, t, L), other=0.0)
    Bt = tl.load(B_ptr + row * N + n, mask=_mask_lt(n_ok, t, L), other=0.0)
    Ct = tl.load(C_ptr + row * N + n, mask=_mask_lt(n_ok, t, L), other=0.0)
    return x, dt, Bt, Ct


@triton.jit
def _mask_lt(ok, i, j):
    """The mask `ok` and the scalar condition i < j, as one tensor (a scalar mask trips the interpreter)."""
    return ok & ((ok.to(tl.int32) * 0 + i) < j)


@triton.jit
def _decay(dt, A, resets_ptr, b, t, L, e_ok, HAS_RESETS: tl.constexpr):
    """a_t = exp(Δ_t A) over the tile, 0 on every lane where a document starts at t."""
    a = tl.exp(dt[:, None] * A)
    if HAS_RESETS:  # the one flag of row b at t, loaded on every channel lane (no scalar masks)
        cut = tl.load(resets_ptr + (b * L + t).to(tl.int64) + 0 * e_ok.to(tl.int32), mask=_mask_lt(e_ok, t, L), other=0)
        a = tl.where(cut[:, None] != 0, 0.0, a)
    return a


@triton.jit
def _forward_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, resets_ptr, y_ptr, hc_ptr, hlast_ptr, L, E, N,
                    n_chunks, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                    HAS_H0: tl.constexpr, HAS_RESETS: tl.constexpr):
    b = tl.program_id(0)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok, n_ok = e < E, n < N
    tile_ok = e_ok[:, None] & n_ok[None, :]
    tile = e[:, None] * N + n[None, :]
    A = tl.load(A_ptr + tile, mask=tile_ok, other=0.0)
    state = b.to(tl.int64) * E * N + tile  # this program's tile of a [Bt, E, N] state
    if HAS_H0:
        h = tl.load(h0_ptr + state, mask=tile_ok, other=0.0)
    else:
        h = tl.zeros([BLOCK_E, BLOCK_N], A.dtype)
    for c in range(n_chunks):
        tl.store(hc_ptr + (b * n_chunks + c).to(tl.int64) * E * N + tile, h, mask=tile_ok)
        for s in range(CHUNK):
            t = c * CHUNK + s
            x, dt, Bt, Ct = _step_inputs(x_ptr, dt_ptr, B_ptr, C_ptr, b, t, L, E, N, e, e_ok, n, n_ok)
            h = _decay(dt, A, resets_ptr, b, t, L, e_ok, HAS_RESETS) * h + (dt * x)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
            tl.store(y_ptr + (b * L + t).to(tl.int64) * E + e, y, mask=_mask_lt(e_ok, t, L))
    tl.store(hlast_ptr + state, h, mask=tile_ok)  # the tail past L left it at h_{L-1}


@triton.jit
def _backward_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, resets_ptr, hc_ptr, g_ptr, glast_ptr, scratch_ptr,
                     dx_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dh0_ptr, L, E, N, n_chunks, n_blocks,
                     BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                     HAS_RESETS: tl.constexpr, HAS_GLAST: tl.constexpr):
    b = tl.program_id(0)
    blk = tl.program_id(1)
    e = blk * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok, n_ok = e < E, n < N
    tile_ok = e_ok[:, None] & n_ok[None, :]
    tile = e[:, None] * N + n[None, :]
    local = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]  # a scratch tile, all lanes
    scratch = scratch_ptr + (b * n_blocks + blk).to(tl.int64) * CHUNK * BLOCK_E * BLOCK_N
    A = tl.load(A_ptr + tile, mask=tile_ok, other=0.0)
    state = b.to(tl.int64) * E * N + tile
    if HAS_GLAST:  # δh carried into the last step: ∂ℓ/∂h_last
        dh = tl.load(glast_ptr + state, mask=tile_ok, other=0.0)
    else:
        dh = tl.zeros([BLOCK_E, BLOCK_N], A.dtype)
    dA = tl.zeros([BLOCK_E, BLOCK_N], A.dtype)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        h0 = tl.load(hc_ptr + (b * n_chunks + c).to(tl.int64) * E * N + tile, mask=tile_ok, other=0.0)
        h = h0
        for s in range(CHUNK):  # recompute the chunk: scratch[s] = h after step c·CHUNK + s
            t = c * CHUNK + s
            x, dt, Bt, Ct = _step_inputs(x_ptr, dt_ptr, B_ptr, C_ptr, b, t, L, E, N, e, e_ok, n, n_ok)
            h = _decay(dt, A, resets_ptr, b, t, L, e_ok, HAS_RESETS) * h + (dt * x)[:, None] * Bt[None, :]
            tl.store(scratch + s * BLOCK_E * BLOCK_N + local, h)
        tl.debug_barrier()  # the scratch written by every thread is read back by others
        for r in range(CHUNK):
            s = CHUNK - 1 - r
            t = c * CHUNK + s
            x, dt, Bt, Ct = _step_inputs(x_ptr, dt_ptr, B_ptr, C_ptr, b, t, L, E, N, e, e_ok, n, n_ok)
            g = tl.load(g_ptr + (b * L + t).to(tl.int64) * E + e, mask=_mask_lt(e_ok, t, L), other=0.0)
            h_t = tl.load(scratch + s * BLOCK_E * BLOCK_N + local)
            h_prev = tl.load(scratch + (s - 1) * BLOCK_E * BLOCK_N + local, mask=_mask_lt(tile_ok, 0, s), other=0.0)
            h_prev = tl.where(_mask_lt(tile_ok, 0, s), h_prev, h0)  # s > 0: the step before; else h0
            a = _decay(dt, A, resets_ptr, b, t, L, e_ok, HAS_RESETS)  # 0 at a reset: no h_{t-1} terms
            d = dh + Ct[None, :] * g[:, None]  # δh_t: the carried a_{t+1} δh_{t+1}, plus C_t g_t
            row = (b * L + t).to(tl.int64)
            part = (row * n_blocks + blk) * N + n  # this channel block's share of ∂B_t, ∂C_t
            tl.store(dC_ptr + part, tl.sum(g[:, None] * h_t, axis=0), mask=_mask_lt(n_ok, t, L))
            tl.store(dB_ptr + part, tl.sum(d * (dt * x)[:, None], axis=0), mask=_mask_lt(n_ok, t, L))
            dx = tl.sum(d * Bt[None, :], axis=1) * dt
            da = d * a * h_prev  # ∂ℓ/∂(Δ A) at this step
            ddt = tl.sum(da * A + d * Bt[None, :] * x[:, None], axis=1)
            tl.store(dx_ptr + row * E + e, dx, mask=_mask_lt(e_ok, t, L))
            tl.store(ddt_ptr + row * E + e, ddt, mask=_mask_lt(e_ok, t, L))
            dA += da * dt[:, None]
            dh = a * d
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(dA_ptr + state, dA, mask=tile_ok)
    tl.store(dh0_ptr + state, dh, mask=tile_ok)  # a_0 δh_0


def _geometry(x: Tensor, A: Tensor, chunk: int) -> tuple[int, int, int, int, int, int]:
    Bt, L, E = x.shape
    N = A.shape[1]
    return Bt, L, E, N, triton.cdiv(L, chunk), triton.cdiv(E, BLOCK_E)


def _check(*ts: Tensor | None) -> None:
    why = check_device(ts[0])
    if why is not None:
        raise RuntimeError(f"selective_scan(backend='triton'): {why}")
    for t in ts:
        if t is None:
            continue
        if t.dtype not in (torch.float32, torch.float64) or t.dtype != ts[0].dtype or not t.is_contiguous():
            raise TypeError("selective_scan (triton): contiguous float32 or float64 inputs of one dtype")


def _state(t: Tensor | None, Bt: int, E: int, N: int, name: str) -> None:
    if t is not None and t.shape != (Bt, E, N):
        raise ValueError(f"selective_scan (triton): {name} must be [B, E, N] = {[Bt, E, N]}, got {list(t.shape)}")


def _resets(resets: Tensor | None, Bt: int, L: int, like: Tensor) -> Tensor:
    """resets as uint8 (Triton loads no bool pointers), or a one-element stand-in never read."""
    if resets is None:
        return torch.zeros(1, dtype=torch.uint8, device=like.device)
    if resets.shape != (Bt, L) or resets.dtype != torch.bool:
        raise ValueError(f"selective_scan (triton): resets must be bool [B, L] = {[Bt, L]}, got "
                         f"{resets.dtype} {list(resets.shape)}")
    return resets.contiguous().view(torch.uint8)


def forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None, resets: Tensor | None,
            chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """(y, h_chunks, h_last): y [Bt, L, E], the state entering each chunk [Bt, ceil(L/chunk), E, N]
    (the first is h0, or zero), and h_{L-1} [Bt, E, N] (h0 or zero when L = 0)."""
    _check(x, dt, A, B, C, h0)
    Bt, L, E, N, n_chunks, n_blocks = _geometry(x, A, chunk)
    _state(h0, Bt, E, N, "h0")
    y = torch.empty_like(x)
    hc = torch.empty(Bt, n_chunks, E, N, dtype=x.dtype, device=x.device)
    h_last = torch.empty(Bt, E, N, dtype=x.dtype, device=x.device)
    if x.numel():
        _forward_kernel[(Bt, n_blocks)](x, dt, A, B, C, x if h0 is None else h0, _resets(resets, Bt, L, x), y, hc,
                                        h_last, L, E, N, n_chunks, BLOCK_E=BLOCK_E, BLOCK_N=triton.next_power_of_2(N),
                                        CHUNK=chunk, HAS_H0=h0 is not None, HAS_RESETS=resets is not None,
                                        num_warps=4)
    else:
        h_last = torch.zeros_like(h_last) if h0 is None else h0.clone()
    return y, hc, h_last


def backward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, resets: Tensor | None, hc: Tensor, g: Tensor,
             g_last: Tensor | None, chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(∂x, ∂Δ, ∂A per batch row [Bt, E, N], ∂B and ∂C per channel block [Bt, L, n_blocks, N],
    ∂h0 [Bt, E, N]); g_last = ∂ℓ/∂h_last or None (zero)."""
    _check(x, dt, A, B, C, hc, g, g_last)
    Bt, L, E, N, n_chunks, n_blocks = _geometry(x, A, chunk)
    _state(g_last, Bt, E, N, "g_last")
    block_n = triton.next_power_of_2(N)
    dx, ddt = torch.empty_like(x), torch.empty_like(x)
    dA = torch.empty(Bt, E, N, dtype=x.dtype, device=x.device)  # every element is stored once
    dB = torch.empty(Bt, L, n_blocks, N, dtype=x.dtype, device=x.device)
    dC = torch.empty(Bt, L, n_blocks, N, dtype=x.dtype, device=x.device)
    dh0 = torch.empty(Bt, E, N, dtype=x.dtype, device=x.device)
    if x.numel():
        scratch = torch.empty(Bt * n_blocks * chunk * BLOCK_E * block_n, dtype=x.dtype, device=x.device)
        _backward_kernel[(Bt, n_blocks)](x, dt, A, B, C, _resets(resets, Bt, L, x), hc, g,
                                         dh0 if g_last is None else g_last, scratch, dx, ddt, dA, dB, dC, dh0, L, E,
                                         N, n_chunks, n_blocks, BLOCK_E=BLOCK_E, BLOCK_N=block_n, CHUNK=chunk,
                                         HAS_RESETS=resets is not None, HAS_GLAST=g_last is not None, num_warps=4)
    else:
        dA.zero_()
        dh0 = torch.zeros_like(dh0) if g_last is None else g_last.clone()
    return dx, ddt, dA, dB, dC, dh0
