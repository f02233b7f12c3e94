"""Context parallelism for linear recurrences: one sequence split over time across ranks.

A sequence [B, L, ...] is cut along time into N equal contiguous slices held by the N ranks of a
process group, in group order: rank r holds steps [r·L/N, (r+1)·L/N). For the recurrence

    h_t = a_t ⊙ h_{t-1} + b_t,   h_{-1} = h0     (a: [D] constant or [B, L, D]; real or complex)

the state entering slice r, s_r, is a linear function of the slices before it. With f_r the state
slice r ends in when it starts from zero and P_r = Π_{t∈slice r} a_t its decay product (a^{L_r} for
a constant a; 0 for rows with a reset in the slice), the final state of slice r is f_r + P_r s_r, so

    s_0 = h0 (zero if None),   s_r = P_{r-1} ⊙ s_{r-1} + f_{r-1}                       (1)

— a scan over ranks of length N. `cp_linear_scan` runs it in three steps: (i) every rank computes
(f_r, P_r) of its slice; (ii) one all_gather of (f, P) and each rank evaluates (1) up to its own
index (N steps of [B, D] work, `combine_over_ranks`); (iii) every rank rescans its slice from
h0 = s_r with `linear_scan`. ``reverse=True`` mirrors everything: the carry flows from the last
rank to the first, f_r is the state at the slice's first step, h0 is the state after the
sequence's end and is read on the last rank.

Step (iii): rescan, not correct. The alternative, h_t = h_t^loc + (Π_{τ≤t} a_τ) s_r, reuses the
zero-state scan of step (i) but needs the cumulative decay (a second scan of ones, [B, L, D] for a
time-varying a or with resets) and a [B, L, D] multiply-add, whose backward is two more reductions
over [B, L, D]; the rescan is one pass of the same kernel forward and one backward, reads no extra
tensor, and passes resets and h0 straight to `linear_scan`. Measured on CPU (2 cores) for B=1,
L=65536, D=512 complex64, constant a, forward + backward, one thread per process
(``python tests/ops/context_worker.py bench OUT N [carry]``): one process 0.88-0.94 s, maxrss
2.0 GB; 2 ranks rescan 0.73-0.83 s, 1.13 GB per rank; 2 ranks correct 1.50-1.53 s, 1.13 and
1.65 GB. With N = 2 the ranks wait on each other (the carry into rank 1 needs all of rank 0's
scan, rank 0's backward needs rank 1's), so N ranks run about N/2 times faster at best; what
context parallelism buys is the memory of a slice per rank. The selective
scan has no choice: its fused kernels never materialise the state, so the correction would need the
[B, L, E, N] tensor they avoid. The first rank needs no step (i) (its s_0 = h0 is known: one scan
from h0 gives both its outputs and the final state it sends) and the last rank's f is never read
(it sends zeros), so with N = 2 no step is computed twice.

Gradients. (1) is differentiable: the gradient w.r.t. s_r flows back to f_q, P_q of ranks q < r
(and to h0 on the first rank) through the backward of the all_gather, `all_gather` below, which
all_reduces the gradient of the gathered [N, ...] tensor and keeps this rank's row (gloo has no
reduce_scatter; torch.distributed.nn.functional.all_gather does compute right gradients on the
default group with gloo, by N scatters, but its backward fails on a subgroup — it passes group
ranks where global ranks are expected — and is deprecated). The backward is collective: every
rank must call backward on a loss that depends on its outputs (as with DDP), in the same order of
layers. So that a rank whose own inputs need no gradient still joins the backward, each collective
here sends a "needs gradient" flag along with its data and makes its output differentiable on
every rank as soon as one rank needs it.

Other layers reuse the pieces: a selective SSM (`cp_selective_scan`: its fused kernel returns its
final state and takes h0), an FFT-convolution layer (`combine_over_ranks` with its own final state
from zero and decay product), a causal depthwise convolution (`halo`: the K-1 steps before the
slice). Pure torch + torch.distributed; with no process group (size 1) everything runs locally.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ssm_train.ops.backend import UPCAST_DTYPES
from ssm_train.ops.scan import Backend, linear_scan

__all__ = [
    "ContextGroup",
    "all_gather",
    "combine_over_ranks",
    "cp_linear_scan",
    "cp_selective_scan",
    "decay_product",
    "gather_sequence",
    "halo",
    "split_sequence",
]


# ---------------------------------------------------------------------------------------------
# The group


@dataclass(frozen=True)
class ContextGroup:
    """The ranks one sequence is split over: ``group`` (None = the default group), this rank's
    index in it and its size. ``ContextGroup.of(x)`` accepts a ContextGroup, a ProcessGroup or
    None; without an initialised process group, None gives the local group of size 1."""

    group: dist.ProcessGroup | None
    rank: int
    size: int

    @classmethod
    def of(cls, group: ContextGroup | dist.ProcessGroup | None = None) -> ContextGroup:
        if isinstance(group, ContextGroup):
            return group
        if not (dist.is_available() and dist.is_initialized()):
            if group is not None:
                raise RuntimeError("ContextGroup: a process group was given but torch.distributed is not initialised")
            return cls(None, 0, 1)
        return cls(group, dist.get_rank(group), dist.get_world_size(group))

    def global_rank(self, rank: int) -> int:
        """The global rank of this group's ``rank`` (point-to-point calls take global ranks)."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def first(self, reverse: bool = False) -> int:
        """The rank where a scan starts (where h0 lives): 0, or the last rank if ``reverse``."""
        return self.size - 1 if reverse else 0


GroupLike = ContextGroup | dist.ProcessGroup | None


# ---------------------------------------------------------------------------------------------
# Differentiable collectives


def _real_view(x: Tensor) -> Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def _flat_real(x: Tensor) -> Tensor:
    return _real_view(x.contiguous()).reshape(-1)


def _from_flat_real(flat: Tensor, like: Tensor, lead: tuple[int, ...] = ()) -> Tensor:
    if like.is_complex():
        return torch.view_as_complex(flat.reshape(*lead, *like.shape, 2))
    return flat.reshape(*lead, *like.shape)


def _anchor() -> Tensor | None:
    """A dummy input that lets a collective's output require grad on a rank whose own input does
    not (so that the rank joins the backward collective); None outside grad mode."""
    return torch.zeros((), requires_grad=True) if torch.is_grad_enabled() else None


class _AllGather(torch.autograd.Function):
    """[N, *x.shape] = the x of every rank; backward: all_reduce(g)[rank] (gloo has no
    reduce_scatter). The payload carries one flag per rank, "x needs a gradient here"; the output
    is differentiable iff some rank's is."""

    @staticmethod
    def forward(ctx, x: Tensor, anchor: Tensor | None, cg: ContextGroup) -> Tensor:
        flat = _flat_real(x)
        flag = flat.new_full((1,), float(ctx.needs_input_grad[0]))
        payload = torch.cat([flat, flag])
        parts = [torch.empty_like(payload) for _ in range(cg.size)]
        dist.all_gather(parts, payload, group=cg.group)
        gathered = torch.stack(parts)
        ctx.cg = cg
        out = _from_flat_real(gathered[:, :-1].contiguous(), x, (cg.size,))
        if not bool((gathered[:, -1] > 0).any()):
            ctx.mark_non_differentiable(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        cg: ContextGroup = ctx.cg
        g = g.clone(memory_format=torch.contiguous_format)  # all_reduce writes in place
        dist.all_reduce(_real_view(g), group=cg.group)
        return (g[cg.rank] if ctx.needs_input_grad[0] else None), None, None


def all_gather(x: Tensor, group: GroupLike = None) -> Tensor:
    """Differentiable all_gather: [N, *x.shape], row q = rank q's x (the same shape and dtype on
    every rank). The gradient of x is the sum over ranks of the gradient of row ``rank``:
    ∂ℓ/∂x_r = Σ_q ∂ℓ_q/∂X_q[r], an all_reduce of the gathered gradient of which this rank keeps
    its row. Every rank must run the backward when any rank's x requires grad."""
    cg = ContextGroup.of(group)
    if cg.size == 1:
        return x.unsqueeze(0)
    return _AllGather.apply(x, _anchor(), cg)


class _Tie(torch.autograd.Function):
    """x, made to depend on ``other``: the backward gives ``other`` a zero gradient, so that the
    graph behind ``other`` (a collective) runs its backward on this rank too."""

    @staticmethod
    def forward(ctx, x: Tensor, other: Tensor) -> Tensor:
        ctx.other = (other.shape, other.dtype, other.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        shape, dtype, device = ctx.other
        return g, torch.zeros(shape, dtype=dtype, device=device)


def _tie(x: Tensor, other: Tensor) -> Tensor:
    return _Tie.apply(x, other) if other.requires_grad and torch.is_grad_enabled() else x


class _Halo(torch.autograd.Function):
    """The last ``width`` steps of the previous rank's slice (the first ``width`` of the next if
    ``reverse``), zeros on the first (last) rank. Point-to-point: rank r sends its edge to r ± 1
    and receives from r ∓ 1; the backward sends the halo's gradient back. Each message carries a
    "needs gradient" flag, so each side knows whether the backward exchanges a gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, anchor: Tensor | None, width: int, cg: ContextGroup, reverse: bool) -> Tensor:
        L = x.shape[1]
        step = -1 if reverse else 1  # data flows from rank r to r + step
        src, dst = cg.rank - step, cg.rank + step
        has_src, has_dst = 0 <= src < cg.size, 0 <= dst < cg.size
        edge = x[:, :width] if reverse else x[:, L - width:]
        own_flag = float(ctx.needs_input_grad[0])
        send = torch.cat([_flat_real(edge), _flat_real(edge).new_full((1,), own_flag)])
        recv = torch.zeros_like(send)
        ops = []
        if has_dst:
            ops.append(dist.P2POp(dist.isend, send, cg.global_rank(dst), cg.group))
        if has_src:
            ops.append(dist.P2POp(dist.irecv, recv, cg.global_rank(src), cg.group))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        src_flag = has_src and bool(recv[-1] > 0)
        out = _from_flat_real(recv[:-1].contiguous(), edge)
        ctx.cg, ctx.width, ctx.reverse, ctx.shape = cg, width, reverse, x.shape
        ctx.send_grad = src_flag  # the source rank's x needs the gradient of our output
        ctx.recv_grad = has_dst and bool(ctx.needs_input_grad[0])  # the next rank's output is differentiable
        if not (src_flag or ctx.needs_input_grad[0]):
            ctx.mark_non_differentiable(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        cg: ContextGroup = ctx.cg
        step = -1 if ctx.reverse else 1
        src, dst = cg.rank - step, cg.rank + step
        gx = g.new_zeros(ctx.shape)
        L = ctx.shape[1]
        edge = gx[:, :ctx.width] if ctx.reverse else gx[:, L - ctx.width:]
        send = _flat_real(g)
        recv = torch.zeros_like(_flat_real(edge))
        ops = []
        if ctx.send_grad:
            ops.append(dist.P2POp(dist.isend, send, cg.global_rank(src), cg.group))
        if ctx.recv_grad:
            ops.append(dist.P2POp(dist.irecv, recv, cg.global_rank(dst), cg.group))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        if ctx.recv_grad:
            edge.copy_(_from_flat_real(recv, edge))
        return (gx if ctx.needs_input_grad[0] else None), None, None, None, None


def halo(x: Tensor, width: int, group: GroupLike = None, *, reverse: bool = False) -> Tensor:
    """[B, width, ...]: x[:, L-width:] of the previous rank (zeros on rank 0), for x [B, L, ...]
    this rank's slice. ``reverse``: x[:, :width] of the next rank (zeros on the last rank).

    Differentiable: the halo's gradient goes back to the rank it came from. A causal depthwise
    convolution of width K over the whole sequence is, per slice, the convolution of
    cat([halo(x, K-1), x], dim=1) (e.g. ``causal_depthwise_conv(x, w, b, tail=halo(x, K-1).mT)``).
    Needs width <= L (one hop).
    """
    cg = ContextGroup.of(group)
    if x.dim() < 2:
        raise ValueError(f"halo: x must be [B, L, ...], got {list(x.shape)}")
    if not 0 <= width <= x.shape[1]:
        raise ValueError(f"halo: width must be in [0, L] = [0, {x.shape[1]}] (one hop), got {width}")
    if cg.size == 1 or width == 0:
        return x.new_zeros(x.shape[0], width, *x.shape[2:])
    return _Halo.apply(x, _anchor(), width, cg, reverse)


# ---------------------------------------------------------------------------------------------
# Splitting a sequence


def split_sequence(x: Tensor, group: GroupLike = None, dim: int = 1) -> Tensor:
    """This rank's slice of x along ``dim`` (time): steps [r·L/N, (r+1)·L/N). L must divide by N."""
    cg = ContextGroup.of(group)
    L = x.shape[dim]
    if L % cg.size:
        raise ValueError(f"split_sequence: length {L} (dim {dim}) does not divide by the group size {cg.size}")
    n = L // cg.size
    return x.narrow(dim, cg.rank * n, n)


def gather_sequence(x: Tensor, group: GroupLike = None, dim: int = 1) -> Tensor:
    """The whole sequence from every rank's slice (the inverse of `split_sequence`), on every rank.
    Differentiable through `all_gather`: the gradient of a slice is the sum over ranks of the
    gradient each rank's loss puts on it."""
    cg = ContextGroup.of(group)
    parts = all_gather(x, cg)  # [N, ...]
    return torch.cat(parts.unbind(0), dim=dim)


# ---------------------------------------------------------------------------------------------
# The scan over ranks


def combine_over_ranks(f: Tensor, P: Tensor, h0: Tensor | None = None, group: GroupLike = None, *,
                       reverse: bool = False) -> Tensor:
    """s_r, the state entering this rank's slice (same shape as f), differentiable.

    f: this slice's final state from a zero state (any shape, e.g. [B, D] or [B, E, N]; for
    ``reverse`` its state at the slice's first step); P: its decay product, broadcastable to f
    (Π_t a_t over the slice; zero where a reset cuts the slice); h0: the sequence's initial state,
    read on the first rank only (rank 0, or the last rank if ``reverse``). Computes (1),

        s_first = h0,   s_r = P_{r∓1} ⊙ s_{r∓1} + f_{r∓1}

    with one all_gather of (f, P): on the first rank f + P·h0 is sent, so no other rank needs h0.
    Every rank must use its s_r in the loss (on the first rank it is h0, or zeros tied to the
    collective so that the backward still reaches it) and call backward. f and P must have the
    same shapes and dtypes on every rank; P is cast to f's dtype.
    """
    cg = ContextGroup.of(group)
    first = cg.first(reverse)
    if h0 is not None:
        if h0.shape != f.shape:
            raise ValueError(f"combine_over_ranks: h0 must have f's shape {list(f.shape)}, got {list(h0.shape)}")
        if torch.promote_types(f.dtype, h0.dtype) != f.dtype:
            raise TypeError(f"combine_over_ranks: h0 ({h0.dtype}) would widen the state's dtype {f.dtype} on "
                            "one rank only; pass a, b in the wider dtype")
        h0 = h0.to(f.dtype)
    P = P.to(f.dtype)
    if cg.size == 1:
        return torch.zeros_like(f) if h0 is None else h0
    out = f if h0 is None or cg.rank != first else f + P * h0
    nf = out.numel()
    packed = torch.cat([out.reshape(-1), P.reshape(-1)])
    gathered = all_gather(packed, cg)  # [N, nf + nP]
    fs = gathered[:, :nf].reshape(cg.size, *f.shape)
    Ps = gathered[:, nf:].reshape(cg.size, *P.shape)
    if cg.rank == first:
        return _tie(torch.zeros_like(f) if h0 is None else h0, gathered)
    order = range(first, cg.rank) if not reverse else range(first, cg.rank, -1)
    s = None
    for q in order:
        s = fs[q] if s is None else torch.addcmul(fs[q], Ps[q], s)
    return s


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def decay_product(a: Tensor, length: int, resets: Tensor | None = None) -> Tensor:
    """P = Π_t a_t over a slice of ``length`` steps: a^length for a constant a [D] (computed in
    float64/complex128: exp(length·log a) in float32 would lose ~length·eps of phase), the product
    over time for a [B, L, D]; with resets [B, L], zero for rows with any reset in the slice.
    Returns [D] or [B, D]."""
    if a.dim() == 1:
        wide = torch.complex128 if a.is_complex() else torch.float64
        P = (a.to(wide) ** length).to(a.dtype)
    else:
        P = a.prod(1)
    if resets is not None:
        keep = ~resets.any(1)  # [B]
        P = P * keep[:, None].to(_real_dtype(P.dtype))  # [B, D] also for a constant a
    return P


# ---------------------------------------------------------------------------------------------
# The linear recurrence


def _scan(a: Tensor, b: Tensor, h0: Tensor | None, resets: Tensor | None, reverse: bool, backend: Backend) -> Tensor:
    return linear_scan(a, b, h0, reverse=reverse, resets=resets, backend=backend)


def _scan_dtype(*xs: Tensor) -> torch.dtype:
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in xs))
    return torch.float32 if dtype in UPCAST_DTYPES else dtype


def cp_linear_scan(a: Tensor, b: Tensor, h0: Tensor | None = None, *, resets: Tensor | None = None,
                   reverse: bool = False, group: GroupLike = None, backend: Backend = "auto",
                   carry: str = "rescan") -> Tensor:
    """This rank's slice of h = linear_scan(a, b, h0, resets=, reverse=) of the whole sequence.

    a: [D] or this rank's [B, Lr, D]; b: [B, Lr, D]; resets: [B, Lr] bool (True at t: the state
    is zero before step t; in reverse, before step t from t + 1, so a reset at a slice's first
    step cuts the carry into the previous rank); h0: [B, D], read on the first rank only (rank 0,
    the last rank if ``reverse``; others may pass it or None and get no gradient for it). Per
    rank, with s_r from (1) (`combine_over_ranks`):

        f_r = scan(a, b, 0)[last],  P_r = Π_t a_t (0 in rows with a reset),  h = scan(a, b, s_r)

    ``carry="correct"`` computes h = h^loc + (Π_{τ≤t} a_τ) ⊙ s_r from the zero-state scan instead
    (kept for the measurement in the module docstring; "rescan" is the default and the faster).
    Gradients of a, b, h0 are those of the whole-sequence scan; a constant a gets this rank's
    share (sum it over the group, as data parallelism sums over data: DDP does). Every rank calls
    backward. The same dtypes on every rank; h0 must not widen promote(a, b).
    """
    cg = ContextGroup.of(group)
    if carry not in ("rescan", "correct"):
        raise ValueError(f"cp_linear_scan: carry must be 'rescan' or 'correct', got {carry!r}")
    if cg.size == 1:
        return _scan(a, b, h0, resets, reverse, backend)
    if b.dim() != 3 or b.shape[1] == 0:
        raise ValueError(f"cp_linear_scan: b must be a non-empty slice [B, Lr, D], got {list(b.shape)}")
    Bsz, L, D = b.shape
    first, last = cg.first(reverse), cg.first(not reverse)
    end = 0 if reverse else -1  # the step a slice ends on, in the scan's direction
    dtype = _scan_dtype(a, b)
    h0 = h0 if cg.rank == first else None
    if h0 is not None and torch.promote_types(dtype, h0.dtype) != dtype:
        raise TypeError(f"cp_linear_scan: h0 ({h0.dtype}) would widen the scan's dtype {dtype} on one rank only")
    # in reverse, a reset at a slice's first step cuts what the slice sends to the previous rank
    cut = None if resets is None or not reverse else (~resets[:, 0])[:, None].to(_real_dtype(dtype))
    P_shape = (D,) if a.dim() == 1 and resets is None else (Bsz, D)

    if cg.rank == first:
        # s_first = h0 is known: one scan gives the outputs and the state sent on
        h = _scan(a, b, h0, resets, reverse, backend)
        f = h[:, end]
        f = f if cut is None else f * cut
        s = combine_over_ranks(f, torch.zeros(P_shape, dtype=dtype, device=b.device), None, cg, reverse=reverse)
        return _tie(h, s)
    if cg.rank == last and carry == "rescan":
        f = torch.zeros(Bsz, D, dtype=dtype, device=b.device)  # nobody reads the last rank's state
        P = torch.zeros(P_shape, dtype=dtype, device=b.device)
        s = combine_over_ranks(f, P, None, cg, reverse=reverse)
        return _scan(a, b, s, resets, reverse, backend)
    h_loc = _scan(a, b, None, resets, reverse, backend)
    f = h_loc[:, end]
    f = f if cut is None else f * cut
    P = decay_product(a, L, resets)
    s = combine_over_ranks(f, P, None, cg, reverse=reverse)
    if carry == "rescan":
        return _scan(a, b, s, resets, reverse, backend)
    # carry == "correct": h_t = h_t^loc + (Π a over the steps up to t) ⊙ s
    ones = torch.ones(Bsz if a.dim() == 3 or resets is not None else 1, D, dtype=dtype, device=b.device)
    cum = _scan(a, torch.zeros(ones.shape[0], L, D, dtype=dtype, device=b.device), ones, resets, reverse, backend)
    return torch.addcmul(h_loc, cum, s[:, None])


# ---------------------------------------------------------------------------------------------
# The selective scan


def cp_selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, h0: Tensor | None = None,
                      resets: Tensor | None = None, return_state: bool = False, group: GroupLike = None,
                      backend: str = "auto") -> Tensor | tuple[Tensor, Tensor]:
    """This rank's slice of y = selective_scan(x, Δ, A, B, C, h0=, resets=) of the whole sequence:

        h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t,   y_t = Σ_n C_tn h_t,n

    x, Δ: [B, Lr, E]; A: [E, N] (the same on every rank: its gradient here is this rank's share);
    B, C: [B, Lr, N]; resets: [B, Lr]; h0: [B, E, N] on rank 0. The decay product of a slice is

        P_r = exp(A ⊗ Σ_t Δ_t)   ([B, E, N]; zero in rows with a reset in the slice)

    and f_r the fused kernel's final state from zero (``return_state=True``); s_r from (1), then
    the slice is rescanned from h0 = s_r (the fused kernels never hold the [B, L, E, N] states a
    correction would need). ``return_state``: also return this slice's true final state.
    """
    from ssm_train.ops.selective_scan import selective_scan

    cg = ContextGroup.of(group)
    run = functools.partial(selective_scan, resets=resets, return_state=True, backend=backend)
    if cg.size == 1:
        y, h_last = run(x, dt, A, B, C, h0=h0)
        return (y, h_last) if return_state else y
    Bsz, L, E = x.shape
    N = A.shape[1]
    dtype = _scan_dtype(x, dt, A, B, C)
    h0 = h0 if cg.rank == 0 else None
    if h0 is not None and torch.promote_types(dtype, h0.dtype) != dtype:
        raise TypeError(f"cp_selective_scan: h0 ({h0.dtype}) would widen the scan's dtype {dtype} on one rank only")
    zeros = functools.partial(torch.zeros, Bsz, E, N, dtype=dtype, device=x.device)
    if cg.rank == 0:
        y, h_last = run(x, dt, A, B, C, h0=h0)
        s = combine_over_ranks(h_last, zeros(), None, cg)
        y = _tie(y, s)
        return (y, h_last) if return_state else y
    if cg.rank == cg.size - 1:
        f, P = zeros(), zeros()  # nobody reads the last rank's state
    else:
        _, f = run(x, dt, A, B, C, h0=None)
        P = torch.exp(A.to(dtype) * dt.to(dtype).sum(1)[..., None])  # [B, E, N]
        if resets is not None:
            P = P * (~resets.any(1)).to(_real_dtype(dtype))[:, None, None]
    s = combine_over_ranks(f, P, None, cg)
    y, h_last = run(x, dt, A, B, C, h0=s)
    return (y, h_last) if return_state else y
