"""A time-invariant diagonal recurrence as one long convolution (the convolutional mode of S4).

With λ, B̄ and C fixed in time, x_k = λ ⊙ x_{k-1} + B̄ u_k unrolls to x_k = Σ_{j≤k} λ^{k-j} B̄ u_j,
so the output y_k = 2 Re Σ_n C_n x_{k,n} of each channel is a causal convolution with the kernel

    K_l = 2 Re Σ_n W_n λ_n^l,   W = C ⊙ B̄,   l = 0, ..., L-1     (S4D: Gu et al. 2022, §2)

K is a Vandermonde product: O(H·N·L) once per call, whatever the batch size. y = K * u then costs
O(B·H·L log L) by FFT, where the scan materialises the whole state, O(B·L·H·N) in time and memory.
Training uses this; generation keeps the recurrence (`step`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ssm_train.ops.backend import at_least_float32, autocast_off

__all__ = ["vandermonde_kernel", "vandermonde_powers", "vandermonde_state", "fft_conv"]


def _powers(z: Tensor, n: int) -> Tensor:
    """[..., n] = z^0, z^1, ..., z^(n-1) by a cumulative product (exact at z = 0, no logarithm)."""
    steps = torch.cat([torch.ones_like(z)[..., None], z[..., None].expand(*z.shape, n - 1)], dim=-1)
    return steps.cumprod(dim=-1)


class _VandermondePowers(torch.autograd.Function):
    """near = (λ^q)_{q<T}, far = (λ^(pT))_{p<P} by cumulative products in double precision, with
    the derivative d λ^l / dλ = l λ^(l-1) written out in the backward: autograd through the
    cumulative products (a reversed cumsum, a division and copies per product) took 5x the
    forward, most of an S4D chunk's time under chunk checkpointing. For complex λ the gradient is
    PyTorch's conjugate one, Σ_l g_l · conj(l λ^(l-1)); λ^(l-1) is a saved power (no division by λ)."""

    @staticmethod
    def forward(ctx, lam: Tensor, T: int, P: int) -> tuple[Tensor, Tensor]:
        wide = torch.complex128 if lam.is_complex() else torch.float64
        lam64 = lam.to(wide)
        near = _powers(lam64, T)
        far = _powers(near[..., -1] * lam64, P)
        ctx.save_for_backward(near, far)
        ctx.dtype = lam.dtype
        return near.to(lam.dtype), far.to(lam.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_near: Tensor | None, g_far: Tensor | None) -> tuple[Tensor | None, None, None]:
        near, far = ctx.saved_tensors
        T, P = near.shape[-1], far.shape[-1]
        real = near.real.dtype
        grad = torch.zeros_like(near[..., 0])
        if g_near is not None and T > 1:  # near_q = λ^q: q λ^(q-1) = q near_(q-1)
            q = torch.arange(1, T, dtype=real, device=near.device)
            grad = grad + (g_near[..., 1:].to(near.dtype) * (q * near[..., :-1]).conj()).sum(-1)
        if g_far is not None and P > 1:  # far_p = λ^(pT): pT λ^(pT-1) = pT far_(p-1) near_(T-1)
            pT = T * torch.arange(1, P, dtype=real, device=near.device)
            grad = grad + (g_far[..., 1:].to(near.dtype) * (pT * far[..., :-1] * near[..., -1:]).conj()).sum(-1)
        return grad.to(ctx.dtype), None, None


def vandermonde_powers(lam: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """(near [H, N, T] = λ^q for q < T, far [H, N, P] = λ^(pT) for p < P), T = ⌈√L⌉, P = ⌈L/T⌉:
    every λ^l with l < L is a product far_p · near_q (l = pT + q). Two cumulative products of
    length ~√L in float64, exact to float64 rounding even at |λ| = 0.9999 and L = 10⁵, returned
    in λ's dtype (first derivatives only). One pair serves every Vandermonde product of one window
    (`vandermonde_kernel`, `vandermonde_state`)."""
    T = math.isqrt(max(L, 1) - 1) + 1  # ⌈√L⌉
    P = -(-max(L, 1) // T)
    return _VandermondePowers.apply(lam, T, P)


def _powers_for(lam: Tensor, L: int, powers: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """``powers`` if given (refused if too short for L), else `vandermonde_powers(lam, L)`."""
    if powers is None:
        return vandermonde_powers(lam, L)
    near, far = powers
    if near.shape[-1] * far.shape[-1] < L:
        raise ValueError(f"powers for lengths up to {near.shape[-1] * far.shape[-1]} cannot give λ^l for l < {L}: "
                         f"use vandermonde_powers(lam, {L})")
    return near, far


def vandermonde_kernel(lam: Tensor, W: Tensor, L: int, powers: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """K [..., H, L] with K_hl = 2 Re Σ_n W_hn λ_hn^l, for λ complex [H, N] and W complex [..., H, N]
    (leading dimensions: several weightings of the same λ, e.g. one per batch row).

    With λ^l = far_p near_q (`vandermonde_powers`, given or computed), the sum over n is one
    batched real matmul [..., H, P, 2N] @ [H, 2N, T] in the working precision; the [H, N, L]
    Vandermonde matrix is never formed.
    """
    if L == 0:
        return lam.real.new_zeros(*W.shape[:-1], 0)
    near, far = _powers_for(lam, L, powers)
    P, T = far.shape[-1], near.shape[-1]
    Wf = W[..., None] * far  # [..., H, N, P]
    # Re(Σ_n Wf_np near_nq) as one real matmul over 2N: half the work of the complex product
    # (autocast off: in bf16 the kernel's long tail would be lost, as the FFT's would)
    with autocast_off(lam.device.type):
        K = torch.matmul(torch.cat([Wf.real, -Wf.imag], -2).transpose(-1, -2),
                         torch.cat([near.real, near.imag], -2))  # [..., H, P, T]: l = pT + q
    return 2 * K.reshape(*W.shape[:-1], P * T)[..., :L]


# One block of channels' spectra on the CPU: small enough to stay in the L2/L3 caches (4 MB was
# faster than whole spectra at B=16, L=1024 and at B=1, L=16384-65536 on this 2-core machine's
# 32 MB L3: one S4D layer's forward + backward, docs/RESULTS.md). A GPU transforms every channel
# at once.
_BLOCK_BYTES = 4 << 20


# Transforms run along the time axis of [..., L, h] blocks where they lie (channels last): FFT
# libraries vectorise across the contiguous channels, where transposing each block first cost a
# strided copy (the rffts of a [1, 16384, 512] input in 32-channel blocks: 89 against 125 ms).


def _rfft(x: Tensor, n: int) -> Tensor:
    return torch.fft.rfft(x, n=n, dim=-2)


def _irfft(x: Tensor, n: int, L: int) -> Tensor:
    return torch.fft.irfft(x, n=n, dim=-2)[..., :L, :]


def _channel_blocks(u: Tensor, n: int) -> list[slice]:
    """Slices of u's [B, L, H] channels whose spectra [B, n/2+1, h] (complex) fit `_BLOCK_BYTES`
    on the CPU, at least 16 channels (whole cache lines); one slice elsewhere."""
    B, _, H = u.shape
    if u.device.type != "cpu":
        return [slice(0, H)]
    h = max(16, _BLOCK_BYTES // (B * (n // 2 + 1) * 2 * u.element_size()) // 16 * 16)
    return [slice(i, min(i + h, H)) for i in range(0, H, h)]


class _FFTConv(torch.autograd.Function):
    """y = irfft(rfft(u) · K̂)[:L] (K̂ = rfft(K), or conj(K̂) when reversed) on u [B, L, H], one
    block of channels at a time, with the backward written as two more convolutions:

        ∂ℓ/∂u = irfft(Ĝ · conj(K̂))[:L]           (the correlation with K: the reverse direction)
        ∂ℓ/∂K = irfft(Σ_b Ĝ_b · conj(Û_b))[:L]     (reverse: Σ_b Û_b · conj(Ĝ_b))

    exact for n ≥ 2L - 1 (no wrap-around, as in the forward). Channels are independent, so each
    block's spectra (a few MB) stay in the caches from rfft to irfft instead of passing through
    memory at full size; the backward recomputes Û and K̂ (one more rfft of u) rather than
    keeping them, so the layer saves only u and K. Autograd's own backward of the rffts ran a
    full-length complex FFT per input and kept the batch axis of ∂ℓ/∂K̂ until a sum."""

    @staticmethod
    def forward(ctx, u: Tensor, K: Tensor, n: int, reverse: bool) -> Tensor:
        L = u.shape[1]
        y = torch.empty_like(u)
        for c in _channel_blocks(u, n):
            K_hat = _rfft(K[c].T, n)
            y[:, :, c] = _irfft(_rfft(u[:, :, c], n) * (K_hat.conj() if reverse else K_hat), n, L)
        ctx.save_for_backward(u, K)
        ctx.n, ctx.reverse = n, reverse
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        u, K = ctx.saved_tensors
        n, reverse, L = ctx.n, ctx.reverse, u.shape[1]
        need_u, need_K = ctx.needs_input_grad[:2]
        grad_u = torch.empty_like(u) if need_u else None
        grad_K = torch.empty_like(K) if need_K else None
        for c in _channel_blocks(u, n):
            g_hat = _rfft(g[:, :, c], n)
            if need_u:
                K_hat = _rfft(K[c].T, n)
                grad_u[:, :, c] = _irfft(g_hat * (K_hat if reverse else K_hat.conj()), n, L)
            if need_K:
                u_hat = _rfft(u[:, :, c], n)
                cross = (u_hat * g_hat.conj()) if reverse else (g_hat * u_hat.conj())
                grad_K[c] = _irfft(cross.sum(0), n, L).T
        return grad_u, grad_K, None, None


def fft_conv(u: Tensor, K: Tensor, *, reverse: bool = False) -> Tensor:
    """y_k = Σ_{j≤k} K_{k-j} u_j, or Σ_{j≥k} K_{j-k} u_j if ``reverse``; u [B, L, H], K [H, L].

    Zero-padded to n ≥ 2L - 1, so the FFT's circular convolution is the linear one. The reverse
    (anti-causal) sum is the circular cross-correlation, i.e. the product with conj(K̂). Runs in
    float32 or wider with autocast off: the FFT of a long kernel in half precision loses the tail.
    First derivatives only (`_FFTConv`).
    """
    B, L, H = u.shape
    if L == 0:
        return u.new_zeros(B, 0, H)
    n = 1 << (2 * L - 1).bit_length()  # a power of two ≥ 2L - 1
    with autocast_off(u.device.type):
        u = at_least_float32(u)
        return _FFTConv.apply(u, K.to(u.dtype), n, reverse)


def vandermonde_state(lam: Tensor, u: Tensor, powers: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """S [B, H, N] with S_bhn = Σ_j λ_hn^(L-1-j) u_bjh: the final state of x_k = λ x_{k-1} + u_k
    (before B̄) from a zero state, for λ complex [H, N] and u real [B, L, H].

    The same √L factoring as `vandermonde_kernel` (l = L-1-j = pT + q, the same ``powers``): one
    batched real matmul over q ([H, B·P, T] @ [H, T, 2N]) and a sum over p, so the [H, N, L] power
    matrix is never formed and the cost is that of one pass over u per mode, as in the
    recurrence, but in matmuls.
    """
    Bsz, L, H = u.shape
    N = lam.shape[1]
    if L == 0:
        return torch.zeros(Bsz, H, N, dtype=lam.dtype, device=u.device)
    near, far = _powers_for(lam, L, powers)
    P, T = far.shape[-1], near.shape[-1]
    v = u.flip(1).transpose(1, 2).to(lam.real.dtype).contiguous()  # [B, H, L]: v_l = u_{L-1-l}
    # (contiguous: a zero pad returns its input, and bmm copies a strided one matrix by matrix)
    v = torch.nn.functional.pad(v, (0, P * T - L)).view(Bsz, H, P, T)
    # [B, H, P, 2N] = Σ_q v_pq (Re λ^q, Im λ^q): one real bmm over the H channels
    planes = torch.cat([near.real, near.imag], -2).transpose(-1, -2)  # [H, T, 2N]
    with autocast_off(u.device.type):
        inner = torch.bmm(v.transpose(0, 1).reshape(H, Bsz * P, T), planes).view(H, Bsz, P, 2 * N).transpose(0, 1)
    inner = torch.complex(inner[..., :N], inner[..., N:])
    return (inner * far.transpose(-1, -2)).sum(-2)  # Σ_p inner_pn λ^(pT)


def same_segment(resets: Tensor, shift: int) -> Tensor:
    """[B, L] bool: positions t and t - shift lie in one document (no reset in (t - shift, t]);
    False where t - shift < 0 (the caller decides about carried inputs)."""
    seg = resets.to(torch.int64).cumsum(1)
    out = torch.zeros_like(resets, dtype=torch.bool)
    if shift < resets.shape[1]:
        out[:, shift:] = seg[:, shift:] == seg[:, : resets.shape[1] - shift]
    return out


def causal_depthwise_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    tail: Tensor | None = None,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """y_t = bias + Σ_{k<K} w_{K-1-k} x_{t-k} per channel, over one document only; x [B, L, E],
    weight [E, 1, K] (an nn.Conv1d with groups=E), tail [B, E, K-1] the K-1 inputs before x
    (None = zeros: the start of a sequence). Returns (y [B, L, E], new tail [B, E, K-1]).

    ``resets[:, t]`` True (a document starts at t) drops every x_{t'} with t' < t from y_t, the
    tail included. The new tail keeps only the inputs of the last document, so that a window
    that continues it never reads an earlier one.
    """
    Bsz, L, E = x.shape
    K = weight.shape[-1]
    prev = x.new_zeros(Bsz, E, K - 1) if tail is None else tail.to(x.dtype)
    seq = torch.cat([prev, x.transpose(1, 2)], dim=-1)  # [B, E, K-1+L]
    if resets is None:
        y = torch.nn.functional.conv1d(seq, weight, bias, groups=E).transpose(1, 2)
    else:
        # seg over the extended sequence: the tail belongs to the document before position 0
        ext = torch.cat([resets.new_zeros(Bsz, K - 1), resets], dim=1)
        y = x.new_zeros(Bsz, L, E) if bias is None else bias.to(x.dtype).expand(Bsz, L, E).clone()
        for k in range(K):  # tap k reads x_{t-k}
            keep = same_segment(ext, k)[:, K - 1:, None]
            y = y + keep * weight[:, 0, K - 1 - k] * seq[..., K - 1 - k: K - 1 - k + L].transpose(1, 2)
    new_tail = seq[..., seq.shape[-1] - (K - 1):]
    if resets is not None and K > 1:
        ext = torch.cat([resets.new_zeros(Bsz, K - 1), resets], dim=1)
        # tail position i (of K-1) holds extended index L+i; keep it if it is in the last document
        seg = ext.to(torch.int64).cumsum(1)
        keep = seg[:, -(K - 1):] == seg[:, -1:]
        new_tail = new_tail * keep[:, None, :]
    return y, new_tail
