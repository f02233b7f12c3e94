"""Selective SSM, the S6 layer of Mamba (Gu & Dao 2023, "Mamba: linear-time sequence modeling with
selective state spaces"), run through `selective_scan` (ops/selective_scan.py): on CPU a fused
kernel that never materialises the [B, L, d_inner, N] state, elsewhere `linear_scan` with a
time-varying a.

With E = expand, d_inner = E·H, R = ceil(H/16) and per channel c = 1..d_inner, state n = 1..N:

    x, z   = in_proj(u)                                  (u_k ∈ R^H -> x_k, z_k ∈ R^{d_inner})
    x      = SiLU(causal depthwise conv1d(x))            (width d_conv = 4)
    δ, B, C = x_proj(x)                                  (δ_k ∈ R^R, B_k, C_k ∈ R^N)
    Δ      = softplus(dt_proj(δ))                         (dt_proj has the bias; Δ_k ∈ R^{d_inner})
    A      = -exp(A_log),  A_log = log(1..N) per channel (S4D-Real)
    h_k,cn = exp(Δ_kc A_cn) h_{k-1,cn} + Δ_kc B_kn x_kc   (ZOH for A, Euler for B, as in Mamba)
    y_kc   = Σ_n C_kn h_k,cn + D_c x_kc
    out_k  = out_proj(y_k ⊙ SiLU(z_k))

The bias of dt_proj starts at softplus^{-1}(Δ₀) with Δ₀ ~ logU[dt_min, dt_max] (floored at
dt_init_floor), so Δ starts in that range. `reverse=True` runs the whole layer (conv included)
backwards in time: out = flip(layer(flip(u))).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_train.nn.init import sample_dt
from ssm_train.nn.registry import LayerConfig, LayerContext, register_layer
from ssm_train.ops.backend import at_least_float32
from ssm_train.nn.context import active, refuse_state, slice_tail
from ssm_train.ops.context import cp_selective_scan
from ssm_train.ops.conv import causal_depthwise_conv
from ssm_train.ops.scan import flip_resets
from ssm_train.ops.selective_scan import selective_scan

SELECTIVE_INITS = ("mamba", "s4d_real")  # A must be real and negative: A = -exp(A_log)
SELECTIVE_INIT_PARAMS = {"dt_min": 1e-3, "dt_max": 1e-1, "dt_init_floor": 1e-4}

SelectiveState = tuple[Tensor, Tensor]  # (conv window [B, d_inner, d_conv-1], h [B, d_inner, N])


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0: x = y + log(1 - exp(-y))."""
    return y + torch.log(-torch.expm1(-y))


class SelectiveSSM(nn.Module):
    """Mamba's selective SSM (S6): input-dependent Δ, B, C; A = -exp(A_log) real, per channel"""

    recurrent_params = ("A_log", "dt_proj.bias")
    context_parallel = True  # splits a sequence over ranks (nn/context.py); self.context set there
    context = None
    flips_time = True  # reverse=True flips the sequence: not a slice of the reversed sequence
    selection_params = ("dt_proj.weight",)  # zeroed, the decay no longer depends on the input

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        *,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        init: str = "mamba",
        init_params: dict | None = None,
        reverse: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        H, N = d_model, d_state
        if H < 1 or N < 1 or expand < 1 or d_conv < 1:
            raise ValueError(
                f"d_model, d_state, expand, d_conv must be >= 1, got {d_model=}, {d_state=}, {expand=}, {d_conv=}"
            )
        if init not in SELECTIVE_INITS:
            raise ValueError(f"SelectiveSSM needs real negative A; init must be one of {SELECTIVE_INITS}, got {init!r}")
        unknown = sorted(set(init_params or {}) - set(SELECTIVE_INIT_PARAMS))
        if unknown:
            raise ValueError(f"SelectiveSSM got unknown init_params {unknown}; valid: {list(SELECTIVE_INIT_PARAMS)}")
        p = {**SELECTIVE_INIT_PARAMS, **(init_params or {})}
        self.d_model, self.d_state, self.init, self.reverse = H, N, init, reverse
        self.d_inner = E = expand * H
        self.d_conv = d_conv
        self.dt_rank = R = dt_rank if dt_rank is not None else math.ceil(H / 16)

        self.in_proj = nn.Linear(H, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E)
        self.out_proj = nn.Linear(E, H, bias=False)

        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -(R**-0.5), R**-0.5)  # Mamba's dt_scale = 1
            dt = sample_dt((E,), p["dt_min"], p["dt_max"], generator=generator).clamp_min(p["dt_init_floor"])
            self.dt_proj.bias.copy_(inverse_softplus(dt))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_inner={self.d_inner}, "
            f"dt_rank={self.dt_rank}, reverse={self.reverse}"
        )

    def A(self) -> Tensor:
        return -torch.exp(at_least_float32(self.A_log))  # [d_inner, N]

    def eigenvalues(self) -> Tensor:
        """exp(Δ A) at Δ = softplus(dt bias), i.e. with no input contribution: complex [d_inner, N]."""
        dt = F.softplus(at_least_float32(self.dt_proj.bias))
        lam = torch.exp(dt[:, None] * self.A())
        return torch.complex(lam, torch.zeros_like(lam))

    def _selection(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [..., d_inner] -> Δ [..., d_inner], B [..., N], C [..., N], all at least float32."""
        delta, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # the bias is added in float32: it sets the timescales and bf16 would round them
        dt = at_least_float32(F.linear(delta, self.dt_proj.weight)) + at_least_float32(self.dt_proj.bias)
        return F.softplus(dt), at_least_float32(B), at_least_float32(C)

    # -- sequence ---------------------------------------------------------------------------------

    def forward(self, u: Tensor, resets: Tensor | None = None, state: SelectiveState | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, SelectiveState]:
        """u: [B, L, H] -> [B, L, H]; with ``return_state`` also the state after the last step,
        as `step`'s: (the last d_conv-1 conv inputs, h [B, d_inner, N]).

        ``resets`` [B, L] bool: a document starts at t, so neither the convolution nor the
        recurrence at t reads anything before t (the carried state included).
        """
        if self.reverse:
            if state is not None or return_state:
                raise ValueError("SelectiveSSM(reverse=True) carries no state: it reads the sequence backwards")
            return self._forward(u.flip(1), None if resets is None else flip_resets(resets)).flip(1)
        return self._forward(u, resets, state, return_state)

    def _forward(self, u: Tensor, resets: Tensor | None = None, state: SelectiveState | None = None,
                 return_state: bool = False) -> Tensor | tuple[Tensor, SelectiveState]:
        refuse_state(self, state, return_state)
        cg = active(self)
        tail, h0 = (None, None) if state is None else state
        x, z = self.in_proj(u).chunk(2, dim=-1)
        if cg is not None:  # the d_conv - 1 inputs before this rank's slice
            tail = slice_tail(x, self.d_conv - 1, resets, cg)
        x, tail = causal_depthwise_conv(x, self.conv1d.weight, self.conv1d.bias, tail=tail, resets=resets)
        x = F.silu(x)
        dt, B, C = self._selection(x)
        x = at_least_float32(x)
        scan = selective_scan if cg is None else functools.partial(cp_selective_scan, group=cg)
        out = scan(x, dt, self.A(), B, C, h0=h0, resets=resets, return_state=return_state)
        y, h = out if return_state else (out, None)
        y = self.out_proj((y + self.D * x) * F.silu(z))
        return (y, (tail, h)) if return_state else y

    # -- step ---------------------------------------------------------------------------------------

    def step(self, u_t: Tensor, state: SelectiveState | None = None) -> tuple[Tensor, SelectiveState]:
        """One step: u_t [B, H]; state = (last d_conv-1 conv inputs, h) or None for zeros."""
        if self.reverse:
            raise RuntimeError("SelectiveSSM(reverse=True) runs backwards in time and has no causal step()")
        x, z = self.in_proj(u_t).chunk(2, dim=-1)  # [B, d_inner]
        if state is None:
            window = x.new_zeros(x.shape[0], self.d_inner, self.d_conv - 1)
            h = None
        else:
            window, h = state
        window = torch.cat([window, x[..., None]], dim=-1)  # [B, d_inner, d_conv]: x_{t-3}, ..., x_t
        x = F.silu((window * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias)
        dt, B, C = self._selection(x)
        x = at_least_float32(x)
        b = dt[..., None] * B[:, None, :] * x[..., None]  # [B, d_inner, N]
        h = b if h is None else torch.exp(dt[..., None] * self.A()) * h + b
        y = (h * C[:, None, :]).sum(-1) + self.D * x
        return self.out_proj(y * F.silu(z)), (window[..., 1:], h)


# -- registration: model.kind = selective ----------------------------------------------------------


@dataclass
class SelectiveConfig(LayerConfig):
    """model.selective.*"""

    expand: int = 2  # d_inner = expand · d_model
    d_conv: int = 4  # width of the causal depthwise convolution
    dt_rank: int | None = None  # rank of Δ's projection; null = ceil(d_model / 16)

    def problems(self, ctx: LayerContext) -> Iterator[tuple[str, str]]:
        for key in ("expand", "d_conv"):
            if getattr(self, key) < 1:
                yield f"{ctx.kind}.{key}", f"must be >= 1, got {getattr(self, key)}"
        if self.dt_rank is not None and self.dt_rank < 1:
            yield f"{ctx.kind}.dt_rank", f"must be >= 1 or null (ceil(d_model / 16)), got {self.dt_rank}"
        if ctx.init not in SELECTIVE_INITS:
            yield "init.name", f"kind={ctx.kind} needs real negative A: one of {', '.join(SELECTIVE_INITS)}, got '{ctx.init}'"

    def min_params(self, d_model: int, d_state: int) -> int:
        return self.expand * d_model * d_state  # A_log alone: [d_inner, N]


register_layer("selective", SelectiveSSM, SelectiveConfig)
