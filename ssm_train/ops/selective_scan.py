"""Mamba's selective scan with the discretisation and the read-out fused in:

    h_t,cn = exp(Δ_tc A_cn) h_{t-1},cn + Δ_tc B_tn x_tc,   h_{-1} = h0 (zero if None)
    y_tc   = Σ_n C_tn h_t,cn

x, Δ: [B, L, E]; A: [E, N]; B, C: [B, L, N]; h0: [B, E, N]; y: [B, L, E] (SelectiveSSM adds D ⊙ x
itself).

Documents: ``resets`` [B, L] bool, True at t where a document starts: the state is zero before
step t, h_t = Δ_t B_t x_t (at t = 0 this drops h0 for that row), so nothing before t reaches h_t or
y_t, nor any gradient from them. ``return_state=True`` also returns h_last = h_{L-1} [B, E, N] (h0,
or zeros, when L = 0); the gradient arriving on it flows back into every input and h0, so one
window's final state can be the next window's h0 with both differentiated (context parallelism,
truncated BPTT). In the fused backward the reverse recurrence starts from δ = ∂ℓ/∂h_last instead of
0, ∂ℓ/∂h0 = exp(Δ_0 A) δ_0 (0 for rows reset at t = 0), and a reset at t cuts δ_{t-1} from δ_t and
drops h_{t-1}'s terms in ∂A and ∂Δ at step t (a_t = 0 there).

Backends (``backend=`` argument, or $SSM_TRAIN_SELECTIVE_BACKEND when the argument is "auto"):

* ``cpp``: fused C++ loops (csrc/selective_scan_cpu.cpp); CPU, float32/float64. The state
  [B, L, E, N] is never written to memory: each work item keeps a block of channels' states in
  cache, the forward saves them every ``chunk`` steps, and the backward recomputes each chunk
  from there. Memory O(B·L·(E + N)) instead of O(B·L·E·N). The default on CPU.
* ``triton``: the same fused design as Triton kernels (selective_scan_triton.py), one program per
  batch row × 32 channels with the states in registers; CUDA, or CPU under TRITON_INTERPRET=1.
  Tested through the interpreter and compiled for sm_80/sm_90, but never yet timed on a GPU, so
  opt-in: ``backend="triton"`` or SSM_TRAIN_SELECTIVE_BACKEND=triton.
* ``scan``: materialise a = exp(ΔA)·(1 − reset) and b = Δ B x as [B, L, E·N] and call `linear_scan`
  (Triton on CUDA, the C++ scan on CPU) with h0 as its initial state. The default off CPU.
* ``reference``: a loop over time in torch ops (autograd through it); slow, obviously right.

All compute in float32 or wider with autocast off (half precisions are upcast).
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from ssm_train.ops.backend import autocast_off, load_cpp, requested_backend, triton_error
from ssm_train.ops.scan import linear_scan

__all__ = ["selective_scan", "reference_selective_scan", "SELECTIVE_BACKENDS"]

SelectiveBackend = Literal["auto", "cpp", "triton", "scan", "reference"]
SELECTIVE_BACKENDS: tuple[str, ...] = ("auto", "cpp", "triton", "scan", "reference")
ENV_SELECTIVE_BACKEND = "SSM_TRAIN_SELECTIVE_BACKEND"
CHUNK = 64  # steps between saved states: [B, L/64, E, N] kept for the backward


def reference_selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None,
                             resets: Tensor | None = None, return_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The equations above as a loop over time, in the promoted dtype of the inputs."""
    _check(x, dt, A, B, C, h0, resets)
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1]) if h0 is None else h0
    cuts = [None] * x.shape[1] if resets is None else resets.unbind(1)
    ys = []
    for x_t, dt_t, B_t, C_t, cut in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1), cuts):
        if cut is not None:
            h = torch.where(cut[:, None, None], torch.zeros_like(h), h)
        h = torch.exp(dt_t[..., None] * A) * h + (dt_t * x_t)[..., None] * B_t[:, None, :]
        ys.append((h * C_t[:, None, :]).sum(-1))
    y = torch.stack(ys, 1) if ys else x.new_zeros(x.shape)
    return (y, h) if return_state else y


def _materialised_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
                       resets: Tensor | None) -> tuple[Tensor, Tensor]:
    Bsz, L, E = x.shape
    N = A.shape[1]
    a = torch.exp(dt[..., None] * A)  # [B, L, E, N]
    if resets is not None:  # the state is zero before a reset: a_t = 0 there
        a = a.masked_fill(resets[:, :, None, None], 0.0)
    b = (dt * x)[..., None] * B[:, :, None, :]
    h = linear_scan(a.reshape(Bsz, L, E * N), b.reshape(Bsz, L, E * N),
                    None if h0 is None else h0.reshape(Bsz, E * N)).view(Bsz, L, E, N)
    h_last = h[:, -1] if L else x.new_zeros(Bsz, E, N) if h0 is None else h0  # L = 0: the state it started from
    return (h * C[:, :, None, :]).sum(-1), h_last


class _Kernels(NamedTuple):
    forward: Callable[..., tuple[Tensor, Tensor]]
    backward: Callable[..., tuple[Tensor, ...]]


class _FusedSelectiveScan(torch.autograd.Function):
    """(y, h_last) = selective_scan(x, Δ, A, B, C, h0=, resets=) through a fused kernel pair (C++ or
    Triton): the forward keeps the state every CHUNK steps (the first of them h0), the backward
    recomputes from there, its reverse recurrence starting from the gradient on h_last."""

    @staticmethod
    def forward(ctx, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
                resets: Tensor | None, kernels: _Kernels) -> tuple[Tensor, Tensor]:
        ctx.chunk = CHUNK
        y, h_chunks, h_last = kernels.forward(x, dt, A, B, C, h0, resets, ctx.chunk)
        ctx.save_for_backward(x, dt, A, B, C, h_chunks, resets)
        ctx.kernels = kernels
        ctx.set_materialize_grads(False)  # no gradient on h_last (or y) -> None, not a tensor of zeros
        return y, h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor | None, g_last: Tensor | None):
        x, dt, A, B, C, h_chunks, resets = ctx.saved_tensors
        g = torch.zeros_like(x) if g is None else g.contiguous().to(x.dtype)
        g_last = None if g_last is None else g_last.contiguous().to(x.dtype)
        dx, ddt, dA_rows, dB_blocks, dC_blocks, dh0 = ctx.kernels.backward(
            x, dt, A, B, C, resets, h_chunks, g, g_last, ctx.chunk)
        dh0 = dh0 if ctx.needs_input_grad[5] else None
        return dx, ddt, dA_rows.sum(0), dB_blocks.sum(2), dC_blocks.sum(2), dh0, None, None


def _kernels(name: str) -> _Kernels:
    if name == "cpp":
        return _Kernels(torch.ops.ssm_train_selective.forward, torch.ops.ssm_train_selective.backward)
    from ssm_train.ops import selective_scan_triton

    return _Kernels(selective_scan_triton.forward, selective_scan_triton.backward)


def select_selective_backend(x: Tensor, backend: SelectiveBackend = "auto") -> str:
    """An explicit argument wins; "auto" defers to $SSM_TRAIN_SELECTIVE_BACKEND, then picks "cpp" on
    CPU when the C++ kernels build, else "scan"."""
    backend, _ = requested_backend("selective_scan", backend, ENV_SELECTIVE_BACKEND, SELECTIVE_BACKENDS)  # type: ignore[assignment]
    if backend == "auto":
        return "cpp" if x.device.type == "cpu" and load_cpp() is None else "scan"
    if backend == "triton":  # the same import and device check as linear_scan's Triton kernels
        error = triton_error(x)
        if error is not None:
            raise RuntimeError(f"selective_scan: backend 'triton' requested but {error}")
    if backend == "cpp":
        if x.device.type != "cpu":
            raise ValueError(f"selective_scan: backend 'cpp' runs on CPU only; x is on {x.device}")
        error = load_cpp()
        if error is not None:
            raise RuntimeError(f"selective_scan: the C++ kernels did not build: {error}")
    return backend


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None,
           resets: Tensor | None = None) -> None:
    if x.dim() != 3 or dt.shape != x.shape:
        raise ValueError(f"selective_scan: x and dt must be [B, L, E] alike, got {list(x.shape)} and {list(dt.shape)}")
    Bsz, L, E = x.shape
    if A.dim() != 2 or A.shape[0] != E:
        raise ValueError(f"selective_scan: A must be [E, N] with E = {E}, got {list(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (Bsz, L, N):
            raise ValueError(f"selective_scan: {name} must be [B, L, N] = {[Bsz, L, N]}, got {list(t.shape)}")
    if h0 is not None:
        if not isinstance(h0, Tensor) or h0.shape != (Bsz, E, N):
            shape = list(h0.shape) if isinstance(h0, Tensor) else type(h0).__name__
            raise ValueError(f"selective_scan: h0 must be [B, E, N] = {[Bsz, E, N]}, got {shape}")
        if h0.device != x.device:
            raise ValueError(f"selective_scan: h0 must be on x's device {x.device}, got {h0.device}")
    if resets is not None:
        if not isinstance(resets, Tensor) or resets.shape != (Bsz, L):
            shape = list(resets.shape) if isinstance(resets, Tensor) else type(resets).__name__
            raise ValueError(f"selective_scan: resets must be [B, L] = {[Bsz, L]}, got {shape}")
        if resets.dtype != torch.bool:
            raise TypeError(f"selective_scan: resets must be a bool [B, L] tensor, got dtype {resets.dtype}")
        if resets.device != x.device:
            raise ValueError(f"selective_scan: resets must be on x's device {x.device}, got {resets.device}")


def selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, h0: Tensor | None = None,
                   resets: Tensor | None = None, return_state: bool = False,
                   backend: SelectiveBackend = "auto") -> Tensor | tuple[Tensor, Tensor]:
    """y_tc = Σ_n C_tn h_t,cn with h_t,cn = exp(Δ_tc A_cn) h_{t-1},cn + Δ_tc B_tn x_tc (see the module).

    h0 [B, E, N]: the state before step 0 (None = zero). resets [B, L] bool: the state is zero
    before each step t where True. return_state: return (y, h_last) with h_last = h_{L-1} [B, E, N].
    """
    _check(x, dt, A, B, C, h0, resets)
    name = select_selective_backend(x, backend)
    with autocast_off(x.device.type):
        ins = (x, dt, A, B, C) if h0 is None else (x, dt, A, B, C, h0)
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in ins))
        dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        x, dt, A, B, C = (t.to(dtype).contiguous() for t in (x, dt, A, B, C))
        h0 = None if h0 is None else h0.to(dtype).contiguous()
        resets = None if resets is None else resets.contiguous()
        if name == "reference":
            return reference_selective_scan(x, dt, A, B, C, h0, resets, return_state)
        if name == "scan" or x.shape[1] == 0:
            y, h_last = _materialised_scan(x, dt, A, B, C, h0, resets)
        else:
            y, h_last = _FusedSelectiveScan.apply(x, dt, A, B, C, h0, resets, _kernels(name))
        return (y, h_last) if return_state else y
