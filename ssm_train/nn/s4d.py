"""Diagonal continuous-time SSM, S4D (Gu et al. 2022, "On the parameterization and initialization
of diagonal state space models"), run as a recurrence.

Per channel h = 1..H, with N complex modes n (each standing for a conjugate pair):

    A_hn = -exp(A_log_re_hn) + i A_im_hn        Δ_h = exp(log_dt_h)
    ZOH:      λ = exp(ΔA),                 B̄ = (λ - 1)/A · B
    bilinear: λ = (1 + ΔA/2)/(1 - ΔA/2),   B̄ = Δ/(1 - ΔA/2) · B
    x_k = λ ⊙ x_{k-1} + B̄ u_k               (x_k ∈ C^{H×N}, u_k ∈ R^H)
    y_k = 2 Re(Σ_n C_hn x_k,hn) + D_h u_k,h  (the conjugate mode's contribution folds into 2·Re)

So `d_state=N` is the number of complex modes per channel: a real state of size 2N, i.e. the S4D
paper's N=64 is d_state=32 here.

Two ways to compute a sequence (`mode`), equal up to rounding:
    conv (default): y = K * u + D ⊙ u with K_l = 2 Re Σ_n C_hn B̄_hn λ_hn^l, by FFT (ops/conv.py);
                    O(H·N·L + B·H·L log L), the S4 papers' convolutional mode;
    scan:           the recurrence over H·N channels with a constant a = λ (ops/scan.py);
                    O(B·L·H·N) time and memory, as the LRU's, for comparison and checking.
`step` is always the recurrence.
B defaults to 1 (as in S4D-Lin/Inv) and is learnable; C ~ CN(0, 1) as in the paper's code.
Any registered init works: the S4D ones give A directly; a discrete one (ring, ...) is mapped back
to continuous time with `undiscretize` at the drawn Δ, so that eigenvalues() equals its λ at init.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssm_train.nn.init import (
    CONTINUOUS_A,
    check_discretization,
    discretize,
    init_eigenvalues,
    init_problems,
    sample_dt,
    undiscretize,
)
from ssm_train.nn.registry import LayerConfig, LayerContext, register_layer
from ssm_train.nn.state import last_state, zero_rows
from ssm_train.ops.backend import at_least_float32, autocast_off
from ssm_train.ops.conv import fft_conv, vandermonde_kernel, vandermonde_powers, vandermonde_state
from ssm_train.nn.context import active, refuse_state, sequence_scan
from ssm_train.ops.context import combine_over_ranks, decay_product
from ssm_train.ops.scan import linear_scan

MODES = ("conv", "scan")


class S4D(nn.Module):
    """S4D (Gu et al. 2022): diagonal continuous-time A, ZOH or bilinear, FFT convolution or scan"""

    recurrent_params = ("log_dt", "A_log_re", "A_im", "B_re", "B_im")
    context_parallel = True  # splits a sequence over ranks (nn/context.py); self.context set there
    context = None

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        *,
        init: str = "s4d_lin",
        init_params: dict | None = None,
        discretization: str = "zoh",
        mode: str = "conv",
        reverse: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        H, N = d_model, d_state
        if H < 1 or N < 1:
            raise ValueError(f"d_model and d_state must be >= 1, got d_model={H}, d_state={N}")
        check_discretization(discretization)
        if mode not in MODES:
            raise ValueError(f"S4D mode must be one of {MODES}, got mode={mode!r}")
        self.d_model, self.d_state = H, N
        self.init, self.discretization, self.mode, self.reverse = init, discretization, mode, reverse

        params = dict(init_params or {})
        if "discretization" in params:
            raise ValueError("pass discretization to S4D(discretization=...), not in init_params")
        dt_range = {k: params.pop(k) for k in ("dt_min", "dt_max") if k in params}
        dt = sample_dt((H,), **dt_range, generator=generator, dtype=torch.float64)
        if init in CONTINUOUS_A:
            if params:
                raise ValueError(f"init {init!r} got unknown parameter(s) {sorted(params)}; valid: dt_min, dt_max")
            A = CONTINUOUS_A[init](N, torch.float64).expand(H, N)
        else:  # a discrete-time init: map λ back to continuous time at the drawn Δ
            lam = init_eigenvalues(init, (H, N), params, generator=generator).to(torch.complex128)
            r = lam.abs().clamp(1e-8, 1 - 1e-7)
            A = undiscretize(torch.polar(r, lam.angle()), dt[:, None], discretization)

        self.log_dt = nn.Parameter(torch.log(dt).float())
        self.A_log_re = nn.Parameter(torch.log(-A.real).float())
        self.A_im = nn.Parameter(A.imag.float().clone())
        self.B_re = nn.Parameter(torch.ones(H, N))
        self.B_im = nn.Parameter(torch.zeros(H, N))
        self.C_re = nn.Parameter(torch.randn(H, N, generator=generator) * math.sqrt(0.5))
        self.C_im = nn.Parameter(torch.randn(H, N, generator=generator) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(H, generator=generator))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, init={self.init!r}, "
            f"discretization={self.discretization!r}, mode={self.mode!r}, reverse={self.reverse}"
        )

    # -- discretisation ---------------------------------------------------------------------------

    def A(self) -> Tensor:
        return torch.complex(-torch.exp(at_least_float32(self.A_log_re)), at_least_float32(self.A_im))

    def discrete(self) -> tuple[Tensor, Tensor]:
        """(λ, B̄), both complex [H, N], at least complex64."""
        A = self.A()
        dt = torch.exp(at_least_float32(self.log_dt))[:, None]
        B = torch.complex(at_least_float32(self.B_re), at_least_float32(self.B_im))
        lam = discretize(A, dt, self.discretization)
        if self.discretization == "zoh":
            B_bar = (lam - 1) / A * B
        else:
            B_bar = dt / (1 - dt * A / 2) * B
        return lam, B_bar

    def eigenvalues(self) -> Tensor:
        """The discrete-time diagonal λ as a complex tensor [H, N], at the current log_dt."""
        return self.discrete()[0]

    def C(self) -> Tensor:
        return torch.complex(at_least_float32(self.C_re), at_least_float32(self.C_im))

    def kernel(self, L: int) -> Tensor:
        """The convolution kernel K [H, L]: K_l = 2 Re Σ_n C_hn B̄_hn λ_hn^l."""
        lam, B_bar = self.discrete()
        return vandermonde_kernel(lam, self.C() * B_bar, L)

    def _output(self, x: Tensor, u: Tensor) -> Tensor:
        """2 Re(Σ_n C_hn x_hn) + D ⊙ u; x: [..., H, N], u: [..., H]."""
        return 2 * (x * self.C()).real.sum(-1) + self.D * u

    # -- sequence and step ---------------------------------------------------------------------------

    def forward(self, u: Tensor, resets: Tensor | None = None, state: Tensor | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """u: [B, L, H] -> y: [B, L, H]; with ``return_state`` also the last state x [B, H, N].

        ``state`` is x before the first step (None = zeros); ``resets`` [B, L] bool zeroes the
        state before each step t where it is True. The convolution cannot cut a kernel at a
        document boundary inside a window, so a batch with one runs the recurrence instead
        (equal outputs; the cost is in docs/RESULTS.md); a carried state adds its free response
        2 Re Σ_n C λ^(t+1) x₀ to the convolution, and the last state is a Vandermonde sum.
        """
        refuse_state(self, state, return_state)
        if resets is not None and state is not None:
            state = zero_rows(state, resets[:, 0])
        inner = resets is not None and bool(resets[:, 1:].any())
        if active(self) is not None:  # this rank holds a slice of the sequence
            if self.mode == "conv" and not inner and not self.reverse:
                return self._context_conv(u, resets)
            return self._scan(u, resets, None, False)
        if self.mode == "conv" and not inner and not (self.reverse and (state is not None or return_state)):
            return self._conv(u, state, return_state)
        return self._scan(u, resets, state, return_state)

    def _conv(self, u: Tensor, state: Tensor | None, return_state: bool,
              powers: tuple[Tensor, Tensor] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        Bsz, L, H = u.shape
        with autocast_off(u.device.type):
            lam, B_bar = self.discrete()
            if powers is None:  # one pair for the kernel, the free response and the state
                powers = vandermonde_powers(lam, L)
            y = fft_conv(u, vandermonde_kernel(lam, self.C() * B_bar, L, powers), reverse=self.reverse) + self.D * u
            if state is not None:
                y = y + self._free_response(lam, state, L, powers)
            if not return_state:
                return y
            x_last = B_bar * vandermonde_state(lam, at_least_float32(u), powers)
            if state is not None:
                x_last = x_last + lam ** L * state.to(lam.dtype)
            return y, x_last

    def _free_response(self, lam: Tensor, x0: Tensor, L: int, powers: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """[B, L, H]: the output of a state x₀ [B, H, N] with no input, y_t = 2 Re Σ_n C λ^(t+1) x₀."""
        W = self.C() * lam * x0.to(lam.dtype)  # [B, H, N]: one weighting of λ's powers per row
        return vandermonde_kernel(lam, W, L, powers).transpose(1, 2)

    def _context_conv(self, u: Tensor, resets: Tensor | None) -> Tensor:
        """The convolution on this rank's slice: the local convolution from zero, plus the free
        response of the state s_r entering the slice, from the slices' final states from zero
        (f_r = B̄ ⊙ Σ_j λ^(L_r-1-j) u_j) and decay products λ^(L_r), combined over the ranks."""
        Bsz, L, H = u.shape
        with autocast_off(u.device.type):
            lam, _ = self.discrete()
            powers = vandermonde_powers(lam, L)  # one pair for the local convolution and the carry's response
            y, f = self._conv(u, None, True, powers)
            P = decay_product(lam.reshape(-1), L, resets)
            s = combine_over_ranks(f.reshape(Bsz, -1), P, None, self.context).view(Bsz, H, -1)
            if resets is not None:  # a document starting at the slice's first step reads no carry
                s = zero_rows(s, resets[:, 0])
            return y + self._free_response(lam, s, L, powers)

    def _scan(self, u: Tensor, resets: Tensor | None, state: Tensor | None,
              return_state: bool) -> Tensor | tuple[Tensor, Tensor]:
        Bsz, L, H = u.shape
        N = self.d_state
        lam, B_bar = self.discrete()
        b = B_bar * at_least_float32(u)[..., None]  # [B, L, H, N]
        h0 = None if state is None else state.reshape(Bsz, H * N)
        scan = sequence_scan(self, linear_scan)
        x = scan(lam.reshape(-1), b.reshape(Bsz, L, H * N), h0, reverse=self.reverse, resets=resets)
        y = self._output(x.view(Bsz, L, H, N), u)
        return (y, last_state(x, h0, self.reverse).view(Bsz, H, N)) if return_state else y

    def step(self, u_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step: u_t [B, H], state x_{t-1} [B, H, N] (None = zeros) -> (y_t [B, H], x_t)."""
        if self.reverse:
            raise RuntimeError("S4D(reverse=True) runs backwards in time and has no causal step()")
        lam, B_bar = self.discrete()
        b = B_bar * at_least_float32(u_t)[..., None]
        x = b if state is None else lam * state + b
        return self._output(x, u_t), x


# -- registration: model.kind = s4d ----------------------------------------------------------------


@dataclass
class S4DConfig(LayerConfig):
    """model.s4d.*"""

    discretization: str = "zoh"  # zoh | bilinear
    mode: str = "conv"  # conv (FFT convolution) | scan (the recurrence); same outputs, conv is faster

    def problems(self, ctx: LayerContext) -> Iterator[tuple[str, str]]:
        yield from init_problems({"discretization": self.discretization}, prefix=f"{ctx.kind}.")
        if self.mode not in MODES:
            yield f"{ctx.kind}.mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}"


register_layer("s4d", S4D, S4DConfig)
