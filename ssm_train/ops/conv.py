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

from ssm_train.ops.backend import at_least_float32, autocast_off

__all__ = ["vandermonde_kernel", "fft_conv"]


def _powers(z: Tensor, n: int) -> Tensor:
    """[..., n] = z^0, z^1, ..., z^(n-1) by a cumulative product (exact at z = 0, no logarithm)."""
    steps = torch.cat([torch.ones_like(z)[..., None], z[..., None].expand(*z.shape, n - 1)], dim=-1)
    return steps.cumprod(dim=-1)


def vandermonde_kernel(lam: Tensor, W: Tensor, L: int) -> Tensor:
    """K [H, L] with K_hl = 2 Re Σ_n W_hn λ_hn^l, for λ, W complex [H, N].

    Each l = pT + q (T = ⌈√L⌉) factors as λ^l = (λ^T)^p λ^q: the powers are two cumulative
    products of length ~√L in float64 ([H, N, T] and [H, N, P]), exact to float64 rounding even
    at |λ| = 0.9999 and L = 10⁵, and the sum over n is one batched matmul [H, P, N] @ [H, N, T] in
    the working precision. The [H, N, L] Vandermonde matrix is never formed.
    """
    H, N = lam.shape
    if L == 0:
        return lam.real.new_zeros(H, 0)
    T = math.isqrt(L - 1) + 1  # ⌈√L⌉
    P = -(-L // T)
    lam64 = lam.to(torch.complex128)
    near = _powers(lam64, T)  # λ^q, q < T
    far = _powers(near[..., -1] * lam64, P)  # λ^(pT), p < P
    near, far = near.to(lam.dtype), far.to(lam.dtype)
    K = torch.bmm((W[..., None] * far).transpose(1, 2), near)  # [H, P, T]: l = pT + q
    return 2 * K.real.reshape(H, P * T)[:, :L]


def fft_conv(u: Tensor, K: Tensor, *, reverse: bool = False) -> Tensor:
    """y_k = Σ_{j≤k} K_{k-j} u_j, or Σ_{j≥k} K_{j-k} u_j if ``reverse``; u [B, L, H], K [H, L].

    Zero-padded to n ≥ 2L - 1, so the FFT's circular convolution is the linear one. The reverse
    (anti-causal) sum is the circular cross-correlation, i.e. the product with conj(K̂). Runs in
    float32 or wider with autocast off: the FFT of a long kernel in half precision loses the tail.
    """
    B, L, H = u.shape
    if L == 0:
        return u.new_zeros(B, 0, H)
    n = 1 << (2 * L - 1).bit_length()  # a power of two ≥ 2L - 1
    with autocast_off(u.device.type):
        u = at_least_float32(u)
        K_hat = torch.fft.rfft(K.to(u.dtype), n=n)
        if reverse:
            K_hat = K_hat.conj()
        u_hat = torch.fft.rfft(u.transpose(1, 2), n=n)  # [B, H, n/2+1]
        y = torch.fft.irfft(u_hat * K_hat, n=n)[..., :L]
    return y.transpose(1, 2)
