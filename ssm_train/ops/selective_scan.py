"""Mamba's selective scan with the discretisation and the read-out fused in:

    h_t,cn = exp(Δ_tc A_cn) h_{t-1},cn + Δ_tc B_tn x_tc,   h_{-1} = 0
    y_tc   = Σ_n C_tn h_t,cn

x, Δ: [B, L, E]; A: [E, N]; B, C: [B, L, N]; y: [B, L, E] (SelectiveSSM adds D ⊙ x itself).

Backends (``backend=`` argument, or $SSM_TRAIN_SELECTIVE_BACKEND when the argument is "auto"):

* ``cpp``: fused C++ loops (csrc/selective_scan_cpu.cpp); CPU, float32/float64. The state
  [B, L, E, N] is never written to memory: each work item keeps a block of channels' states in
  cache, the forward saves them every ``chunk`` steps, and the backward recomputes each chunk
  from there. Memory O(B·L·(E + N)) instead of O(B·L·E·N). The default on CPU.
* ``triton``: the same fused design as Triton kernels (selective_scan_triton.py), one program per
  batch row × 32 channels with the states in registers; CUDA, or CPU under TRITON_INTERPRET=1.
  Tested through the interpreter and compiled for sm_80/sm_90, but never yet timed on a GPU, so
  opt-in: ``backend="triton"`` or SSM_TRAIN_SELECTIVE_BACKEND=triton.
* ``scan``: materialise a = exp(ΔA) and b = Δ B x as [B, L, E·N] and call `linear_scan` (Triton on
  CUDA, the C++ scan on CPU). The default off CPU.
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


def reference_selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The equations above as a loop over time, in the promoted dtype of the inputs."""
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        h = torch.exp(dt_t[..., None] * A) * h + (dt_t * x_t)[..., None] * B_t[:, None, :]
        ys.append((h * C_t[:, None, :]).sum(-1))
    return torch.stack(ys, 1) if ys else x.new_zeros(x.shape)


def _materialised_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    Bsz, L, E = x.shape
    N = A.shape[1]
    a = torch.exp(dt[..., None] * A)  # [B, L, E, N]
    b = (dt * x)[..., None] * B[:, :, None, :]
    h = linear_scan(a.reshape(Bsz, L, E * N), b.reshape(Bsz, L, E * N)).view(Bsz, L, E, N)
    return (h * C[:, :, None, :]).sum(-1)


class _Kernels(NamedTuple):
    forward: Callable[..., tuple[Tensor, Tensor]]
    backward: Callable[..., tuple[Tensor, ...]]


class _FusedSelectiveScan(torch.autograd.Function):
    """y = selective_scan(x, Δ, A, B, C) through a fused kernel pair (C++ or Triton): the forward
    keeps the state every CHUNK steps, the backward recomputes from there."""

    @staticmethod
    def forward(ctx, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, kernels: _Kernels) -> Tensor:
        y, h_chunks = kernels.forward(x, dt, A, B, C, CHUNK)
        ctx.save_for_backward(x, dt, A, B, C, h_chunks)
        ctx.kernels = kernels
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        x, dt, A, B, C, h_chunks = ctx.saved_tensors
        dx, ddt, dA_rows, dB_blocks, dC_blocks = ctx.kernels.backward(
            x, dt, A, B, C, h_chunks, g.contiguous().to(x.dtype), CHUNK)
        return dx, ddt, dA_rows.sum(0), dB_blocks.sum(2), dC_blocks.sum(2), None


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


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if x.dim() != 3 or dt.shape != x.shape:
        raise ValueError(f"selective_scan: x and dt must be [B, L, E] alike, got {list(x.shape)} and {list(dt.shape)}")
    Bsz, L, E = x.shape
    if A.dim() != 2 or A.shape[0] != E:
        raise ValueError(f"selective_scan: A must be [E, N] with E = {E}, got {list(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.shape != (Bsz, L, A.shape[1]):
            raise ValueError(f"selective_scan: {name} must be [B, L, N] = {[Bsz, L, A.shape[1]]}, got {list(t.shape)}")


def selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *,
                   backend: SelectiveBackend = "auto") -> Tensor:
    """y_tc = Σ_n C_tn h_t,cn with h_t,cn = exp(Δ_tc A_cn) h_{t-1},cn + Δ_tc B_tn x_tc (see the module)."""
    _check(x, dt, A, B, C)
    name = select_selective_backend(x, backend)
    with autocast_off(x.device.type):
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in (x, dt, A, B, C)))
        dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        x, dt, A, B, C = (t.to(dtype).contiguous() for t in (x, dt, A, B, C))
        if name == "reference":
            return reference_selective_scan(x, dt, A, B, C)
        if name == "scan" or x.shape[1] == 0:
            return _materialised_scan(x, dt, A, B, C)
        return _FusedSelectiveScan.apply(x, dt, A, B, C, _kernels(name))
