"""The diagonal linear recurrence  h_t = a_t ⊙ h_{t-1} + b_t,  h_{-1} = h0.

One call, `linear_scan(a, b, h0, reverse=...)`, for every recurrent layer:

* ``b``: ``[B, L, D]`` inputs, ``a``: ``[D]`` (constant in time: LRU, S4D) or ``[B, L, D]``
  (time varying: selective SSMs), ``h0``: ``[B, D]`` or None (zero). Real or complex.
* ``reverse=True`` runs from the end: h_t = a_t ⊙ h_{t+1} + b_t, h_L = h0.
* ``resets``: ``[B, L]`` bool, True where a document starts. Forward, the state is zero before
  such a step (h_t = b_t, also dropping h0 at t = 0). Reverse, the cut falls at the step before a
  document start, i.e. at each document's last step, so a bidirectional layer never reads the
  next document; h0 (the state after the window) is never dropped in reverse.

Resets are folded into a time-varying decay, a_t ← 0 at each cut, before the kernels run: every
backend then handles them forward and backward with no kernel of its own, and autograd maps the
gradient of the folded decay back to ``a``. Cuts at the first step only touch h0 and are applied
to h0 instead, so a window whose only boundary is at its start costs nothing extra; a window with
an interior boundary and a constant ``a`` pays one [B, L, D] decay tensor (and its gradient).

Gradients come from a custom autograd Function. The backward of a linear recurrence is the
reverse recurrence with conj(a) shifted by one step (PyTorch's conjugate-Wirtinger convention):

    δ_t = g_t + conj(a_{t+1}) δ_{t+1},  ∂ℓ/∂b_t = δ_t,  ∂ℓ/∂a_t = conj(h_{t-1}) δ_t,  ∂ℓ/∂h0 = conj(a_0) δ_0

so forward and backward each cost one pass over O(B·L·D) memory.

Backends (``backend=`` argument, or the ``SSM_TRAIN_SCAN_BACKEND`` environment variable when
the argument is "auto"):

* ``cpp``: fused C++ loops (csrc/scan_cpu.cpp), compiled on first use with
  torch.utils.cpp_extension (backend.py, cpp_build.py); CPU only. The default on CPU.
* ``torch``: a loop over time in torch ops, with the same custom backward; any device. The
  default elsewhere, and the fallback (with a warning) when the C++ build fails.
* ``triton``: chunked Triton kernels (scan_triton.py); CUDA tensors, or CPU tensors under
  Triton's interpreter (TRITON_INTERPRET=1, for tests). The default on CUDA when triton imports.
* ``reference``: `reference_scan` with autograd through the loop; slow, obviously right.

The recurrence always runs in float32 or wider: float16/bfloat16 inputs are upcast and autocast
is switched off inside the call.
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from ssm_train.ops.backend import UPCAST_DTYPES, autocast_off, load_cpp, requested_backend, triton_error, triton_scan_module

__all__ = ["linear_scan", "reference_scan", "flip_resets", "cuts", "select_backend", "BACKENDS", "ENV_BACKEND"]

Backend = Literal["auto", "cpp", "torch", "triton", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "cpp", "torch", "triton", "reference")
ENV_BACKEND = "SSM_TRAIN_SCAN_BACKEND"

_SCAN_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_UPCAST_DTYPES = UPCAST_DTYPES


# ---------------------------------------------------------------------------------------------
# Reference


def reference_scan(
    a: Tensor, b: Tensor, h0: Tensor | None = None, *, reverse: bool = False, resets: Tensor | None = None
) -> Tensor:
    """Obviously-right loop over time. a: [D] or [B, L, D]; b: [B, L, D]; h0: [B, D] or None;
    resets: [B, L] bool or None (see the module docstring for where the state is cut).

    Computes in the promoted dtype of the inputs (pass float64/complex128 for a high-precision
    reference). Differentiable by plain autograd; iterates over ``unbind`` views so that the
    backward stays O(L) (indexing ``b[:, t]`` would make it O(L²)).
    """
    _check_shapes(a, b, h0)
    _check_resets(resets, b)
    B, L, D = b.shape
    dtype = _result_dtype(a, b, h0)
    h = torch.zeros(B, D, dtype=dtype, device=b.device) if h0 is None else h0.to(dtype)
    a_steps = [a.to(dtype)] * L if a.dim() == 1 else list(a.to(dtype).unbind(1))
    b_steps = list(b.to(dtype).unbind(1))
    cut = None if resets is None else cuts(resets, reverse).unbind(1)
    out: list[Tensor] = [h] * L
    for t in reversed(range(L)) if reverse else range(L):
        if cut is not None:
            h = torch.where(cut[t].unsqueeze(-1), torch.zeros_like(h), h)
        h = a_steps[t] * h + b_steps[t]
        out[t] = h
    if L == 0:
        return b.new_zeros(B, 0, D, dtype=dtype)
    return torch.stack(out, dim=1)


def flip_resets(resets: Tensor) -> Tensor:
    """The resets of the time-reversed window: a document starting at t' in ``x.flip(1)`` is one
    ending at L - t' in ``x``, so columns 1.. are reversed and column 0 (the window start) stays."""
    return torch.cat([resets[:, :1], resets[:, 1:].flip(1)], dim=1)


def cuts(resets: Tensor, reverse: bool = False) -> Tensor:
    """cut[:, t] True: the state entering step t is dropped. Forward that is resets[:, t]; reverse,
    where step t reads h_{t+1}, it is resets[:, t+1] (False at the last step: h0 is kept)."""
    if not reverse:
        return resets
    return torch.cat([resets[:, 1:], resets.new_zeros(resets.shape[0], 1)], dim=1)


# ---------------------------------------------------------------------------------------------
# Validation


def _result_dtype(a: Tensor, b: Tensor, h0: Tensor | None) -> torch.dtype:
    dtype = torch.promote_types(a.dtype, b.dtype)
    if h0 is not None:
        dtype = torch.promote_types(dtype, h0.dtype)
    return dtype


def _check_shapes(a: Tensor, b: Tensor, h0: Tensor | None) -> None:
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if x is not None and not isinstance(x, Tensor):
            raise TypeError(f"linear_scan: {name} must be a torch.Tensor, got {type(x).__name__}")
    if b.dim() != 3:
        raise ValueError(f"linear_scan: b must have shape [B, L, D], got {tuple(b.shape)}")
    B, L, D = b.shape
    if not (a.shape == (D,) or a.shape == b.shape):
        raise ValueError(
            f"linear_scan: a must have shape [D] = [{D}] (constant in time) or [B, L, D] = "
            f"{list(b.shape)} (time varying), got {list(a.shape)}"
        )
    if h0 is not None and h0.shape != (B, D):
        raise ValueError(f"linear_scan: h0 must have shape [B, D] = [{B}, {D}], got {list(h0.shape)}")
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if x is None:
            continue
        if x.dtype not in _SCAN_DTYPES + _UPCAST_DTYPES:
            raise TypeError(
                f"linear_scan: {name} has dtype {x.dtype}; expected float32, float64, complex64 or "
                "complex128 (float16/bfloat16 are upcast to float32)"
            )
        if x.device != b.device:
            raise ValueError(f"linear_scan: {name} is on {x.device} but b is on {b.device}; move them together")


def _check_resets(resets: Tensor | None, b: Tensor) -> None:
    if resets is None:
        return
    if not isinstance(resets, Tensor) or resets.dtype != torch.bool:
        what = type(resets).__name__ if not isinstance(resets, Tensor) else f"dtype {resets.dtype}"
        raise TypeError(f"linear_scan: resets must be a bool tensor [B, L] (True where a document starts), got {what}")
    if resets.shape != b.shape[:2]:
        raise ValueError(f"linear_scan: resets must have shape [B, L] = {list(b.shape[:2])}, got {list(resets.shape)}")
    if resets.device != b.device:
        raise ValueError(f"linear_scan: resets is on {resets.device} but b is on {b.device}; move them together")


def _fold_resets(
    a: Tensor, b: Tensor, h0: Tensor | None, resets: Tensor, reverse: bool
) -> tuple[Tensor, Tensor | None]:
    """(a, h0) with the cuts folded in: h0 rows cut at the first step zeroed, a_t = 0 at the
    other cuts (a becomes time varying only if there is one)."""
    cut = cuts(resets, reverse)
    if h0 is not None and not reverse:
        h0 = torch.where(cut[:, 0, None], torch.zeros_like(h0), h0)
    inner = cut if reverse else cut[:, 1:]
    if not bool(inner.any()):
        return a, h0
    if not reverse:
        cut = torch.cat([torch.zeros_like(cut[:, :1]), cut[:, 1:]], dim=1)
    a = torch.where(cut.unsqueeze(-1), torch.zeros((), dtype=a.dtype, device=a.device), a.expand_as(b))
    return a.contiguous(), h0


def _prepare(a: Tensor, b: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Upcast half precisions to float32, promote to one dtype, make contiguous."""
    _check_shapes(a, b, h0)
    a, b = (x.float() if x.dtype in _UPCAST_DTYPES else x for x in (a, b))
    if h0 is not None and h0.dtype in _UPCAST_DTYPES:
        h0 = h0.float()
    dtype = _result_dtype(a, b, h0)
    # Casts stay outside the autograd Function, so autograd maps gradients back (e.g. the real
    # part for a real `a` scanned against a complex `b`).
    a, b = a.to(dtype).contiguous(), b.to(dtype).contiguous()
    h0 = None if h0 is None else h0.to(dtype).contiguous()
    return a, b, h0


# ---------------------------------------------------------------------------------------------
# Kernels: forward(a, b, h0, reverse) -> h;  backward(a, h, h0, g, reverse, need_a) -> grads.
# For constant a the backward returns per-batch-row partial sums of ∂ℓ/∂a, shape [B, D].


class _Kernels(NamedTuple):
    forward: Callable[[Tensor, Tensor, Tensor | None, bool], Tensor]
    backward: Callable[..., tuple[Tensor | None, Tensor, Tensor | None]]


def _torch_forward(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    h_all = torch.empty_like(b)
    a_steps = a.unbind(1) if a.dim() == 3 else None
    h = h0
    for t in reversed(range(b.shape[1])) if reverse else range(b.shape[1]):
        out = h_all.select(1, t)
        a_t = a if a_steps is None else a_steps[t]
        if h is None:
            out.copy_(b.select(1, t))
        else:
            torch.addcmul(b.select(1, t), a_t, h, out=out)
        h = out
    return h_all


def _torch_backward(
    a: Tensor, h: Tensor, h0: Tensor | None, g: Tensor, reverse: bool, need_a: bool
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    B, L, D = h.shape
    a_conj = a.conj()
    order = range(L) if reverse else reversed(range(L))
    step = -1 if reverse else 1  # forward recurrence: h_t from h_{t-step}
    delta = torch.empty_like(g)
    d: Tensor | None = None
    for t in order:
        out = delta.select(1, t)
        if d is None:
            out.copy_(g.select(1, t))
        else:
            coef = a_conj if a.dim() == 1 else a_conj.select(1, t + step)
            torch.addcmul(g.select(1, t), coef, d, out=out)
        d = out
    grad_a = grad_h0 = None
    t_first = L - 1 if reverse else 0
    if need_a:
        # conj(h_{t-step}) δ_t; the first step pairs with h0 (zero when absent).
        h_prev, delta_rest = (h[:, 1:], delta[:, :-1]) if reverse else (h[:, :-1], delta[:, 1:])
        if a.dim() == 3:
            grad_a = torch.zeros_like(h)
            target = grad_a[:, :-1] if reverse else grad_a[:, 1:]
            torch.mul(h_prev.conj(), delta_rest, out=target)
            if h0 is not None and L > 0:
                grad_a[:, t_first] = h0.conj() * delta[:, t_first]
        else:
            grad_a = (h_prev.conj() * delta_rest).sum(1)
            if h0 is not None and L > 0:
                grad_a = grad_a + h0.conj() * delta[:, t_first]
    if h0 is not None:
        if L == 0:
            grad_h0 = torch.zeros_like(h0)
        else:
            a_first = a_conj if a.dim() == 1 else a_conj[:, t_first]
            grad_h0 = a_first * delta[:, t_first]
    return grad_a, delta, grad_h0


_TORCH_KERNELS = _Kernels(_torch_forward, _torch_backward)


def _cpp_backward(
    a: Tensor, h: Tensor, h0: Tensor | None, g: Tensor, reverse: bool, need_a: bool
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    grad_a, grad_b, grad_h0 = torch.ops.ssm_train_scan.backward(a, h, h0, g, reverse, need_a)
    return (grad_a if need_a else None), grad_b, (grad_h0 if h0 is not None else None)


def _cpp_forward(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    return torch.ops.ssm_train_scan.forward(a, b, h0, reverse)


_CPP_KERNELS = _Kernels(_cpp_forward, _cpp_backward)


class _LinearScan(torch.autograd.Function):
    """h = scan(a, b, h0); inputs already promoted to one scan dtype and contiguous."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool, kernels: _Kernels) -> Tensor:
        h = kernels.forward(a, b, h0, reverse)
        ctx.save_for_backward(a, h, h0)
        ctx.reverse, ctx.kernels = reverse, kernels
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        a, h, h0 = ctx.saved_tensors
        need_a, _, need_h0 = ctx.needs_input_grad[:3]
        grad_a, grad_b, grad_h0 = ctx.kernels.backward(
            a, h, h0, g.contiguous().to(h.dtype), ctx.reverse, need_a
        )
        if grad_a is not None and a.dim() == 1:
            grad_a = grad_a.sum(0)  # partial sums over batch rows
        return grad_a, grad_b, (grad_h0 if need_h0 else None), None, None


# ---------------------------------------------------------------------------------------------
# Backend selection (the C++ library and Triton's import live in backend.py, shared with the
# selective scan)


def _triton_kernels() -> _Kernels:
    module = triton_scan_module()  # imported by select_backend's triton_error check
    return _Kernels(module.forward, module.backward)


_warned_fallback = False


def select_backend(b: Tensor, backend: Backend = "auto") -> str:
    """The backend `linear_scan(..., backend=backend)` uses for tensors like ``b``.

    An explicit argument wins; "auto" defers to $SSM_TRAIN_SCAN_BACKEND, then picks "cpp" on CPU
    (falling back to "torch" with one warning if the extension cannot be built), "triton" on CUDA
    when triton imports, and "torch" elsewhere.
    """
    global _warned_fallback
    backend, forced = requested_backend("linear_scan", backend, ENV_BACKEND, BACKENDS)  # type: ignore[assignment]
    if backend in ("torch", "reference"):
        return backend
    if backend == "triton":
        error = triton_error(b)
        if error is not None:
            raise RuntimeError(f"linear_scan: backend 'triton' requested but {error}")
        return "triton"
    if b.device.type != "cpu":
        if forced:
            raise ValueError(f"linear_scan: backend 'cpp' runs on CPU only; b is on {b.device}")
        return "triton" if b.device.type == "cuda" and triton_error(b) is None else "torch"
    error = load_cpp()
    if error is None:
        return "cpp"
    if forced:
        raise RuntimeError(f"linear_scan: backend 'cpp' requested but the C++ extension failed: {error}")
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"ssm_train: C++ scan extension unavailable ({error}); using the slower torch loop",
            RuntimeWarning,
            stacklevel=3,
        )
    return "torch"


# ---------------------------------------------------------------------------------------------
# Entry point


def linear_scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    *,
    reverse: bool = False,
    resets: Tensor | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """h_t = a_t ⊙ h_{t-1} + b_t over the time axis of ``b`` (or h_t = a_t ⊙ h_{t+1} + b_t if
    ``reverse``), starting from ``h0`` (zero if None), with the state zeroed at document starts
    given by ``resets`` (see the module docstring).

    a: [D] or [B, L, D]; b: [B, L, D]; h0: [B, D]; resets: [B, L] bool. Returns [B, L, D] in the
    promoted dtype of the inputs, float32 at least (half precisions are upcast; autocast is
    disabled inside).
    """
    a, b, h0 = _prepare(a, b, h0)
    _check_resets(resets, b)
    name = select_backend(b, backend)
    with autocast_off(b.device.type):
        if name == "reference":
            return reference_scan(a, b, h0, reverse=reverse, resets=resets)
        if resets is not None:
            a, h0 = _fold_resets(a, b, h0, resets, reverse)
        kernels = _CPP_KERNELS if name == "cpp" else _TORCH_KERNELS if name == "torch" else _triton_kernels()
        return _LinearScan.apply(a, b, h0, reverse, kernels)

