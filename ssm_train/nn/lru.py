"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting recurrent neural networks").

    x_k = Λ x_{k-1} + γ ⊙ (B u_k)          Λ = diag(exp(-exp(nu_log) + i exp(theta_log)))
    y_k = Re(C x_k) + D ⊙ u_k               γ = exp(gamma_log), gamma_log = log sqrt(1 - |λ|²) at init

u_k ∈ R^H, x_k ∈ C^N. The exponential parameterisation keeps |λ| < 1 for any nu_log, and γ
normalises the state so that E|x|² = E|Bu|² at init for white-noise input (Prop. 3). All
parameters are real tensors; B and C are stored as real and imaginary parts (B_re, B_im, C_re,
C_im). With `complex=False` the phase is fixed (no theta_log) and B, C are real (B_re, C_re): the
paper's real diagonal arm, λ = s · exp(-exp(nu_log)) with a fixed sign s = +1, or s = ±1 per state
for the signed init (``real_signed``: λ ∈ (-1, 1); s is the buffer ``lam_sign``, not trained, as
the complex arm's phase would have to cross |λ| = 0 to change it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssm_train.nn.init import init_eigenvalues
from ssm_train.nn.registry import LayerConfig, LayerContext, register_layer
from ssm_train.ops.backend import at_least_float32
from ssm_train.nn.state import last_state
from ssm_train.nn.context import refuse_state, sequence_scan
from ssm_train.ops.scan import linear_scan

# Defaults of the init when LRU is built without init_params (merged under the user's params).
# r in [0.9, 0.999] is the paper's long-range setting; max_phase = 2π (the paper uses π/10 on
# some LRA tasks, pass init_params={"max_phase": math.pi / 10} for that).
LRU_INIT_DEFAULTS: dict[str, dict] = {
    "ring": {"r_min": 0.9, "r_max": 0.999, "max_phase": 2 * math.pi},
    "real": {"r_min": 0.9, "r_max": 0.999},
    "real_signed": {"r_min": 0.9, "r_max": 0.999},
}

_TINY = 1e-8  # floor for |λ| and arg λ so that their logs stay finite at init


REAL_INITS = ("real", "s4d_real", "mamba", "real_signed")  # real λ (the first three positive)
SIGNED_INITS = ("real_signed",)  # real λ of either sign: the real arm keeps the signs in `lam_sign`


class LRU(nn.Module):
    """Linear Recurrent Unit: complex diagonal Λ = exp(-exp(nu_log) + i exp(theta_log)), γ-normalised input."""

    recurrent_params = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im")
    context_parallel = True  # splits a sequence over ranks (nn/context.py); self.context set there
    context = None

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        *,
        init: str | None = None,
        init_params: dict | None = None,
        complex: bool = True,
        normalize: bool = True,
        reverse: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        H, N = d_model, d_state
        if H < 1 or N < 1:
            raise ValueError(f"d_model and d_state must be >= 1, got d_model={H}, d_state={N}")
        self.d_model, self.d_state = H, N
        self.complex, self.normalize, self.reverse = complex, normalize, reverse
        self.init = init if init is not None else ("ring" if complex else "real")
        params = {**LRU_INIT_DEFAULTS.get(self.init, {}), **(init_params or {})}
        lam = init_eigenvalues(self.init, (N,), params, generator=generator).to(torch.complex128)
        signed = not complex and self.init in SIGNED_INITS
        if not complex and (lam.imag.abs().max() > 1e-6 or (not signed and lam.real.min() <= 0)):
            raise ValueError(
                f"LRU(complex=False) needs real eigenvalues (positive unless the init is signed), but "
                f"init={self.init!r} gives complex or negative ones; use init='real', 's4d_real', "
                "'mamba' (ZOH) or 'real_signed'"
            )
        if signed:  # a fixed ±1 per state; float32 like nu_log, so that .double() moves it too
            self.register_buffer("lam_sign", torch.where(lam.real < 0, -1.0, 1.0).float())
        r = lam.abs().clamp(_TINY, 1 - 1e-7)
        # λ = exp(-exp(nu_log) + i exp(theta_log)): nu_log = log(-log|λ|), theta_log = log(arg λ)
        self.nu_log = nn.Parameter(torch.log(-torch.log(r)).float())
        if complex:
            theta = torch.remainder(lam.angle(), 2 * math.pi).clamp_min(_TINY)
            self.theta_log = nn.Parameter(torch.log(theta).float())
        if normalize:
            self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - r**2)).float())

        # Glorot-style, as in the paper: complex B with E|B_ij|² = 1/H, C with E|C_ij|² = 2/N
        # (real arm: B_ij ~ N(0, 1/H), C_ij ~ N(0, 1/N)).
        b_scale = math.sqrt(2 * H) if complex else math.sqrt(H)
        self.B_re = nn.Parameter(torch.randn(N, H, generator=generator) / b_scale)
        self.C_re = nn.Parameter(torch.randn(H, N, generator=generator) / math.sqrt(N))
        if complex:
            self.B_im = nn.Parameter(torch.randn(N, H, generator=generator) / b_scale)
            self.C_im = nn.Parameter(torch.randn(H, N, generator=generator) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(H, generator=generator))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, init={self.init!r}, complex={self.complex}, "
            f"normalize={self.normalize}, reverse={self.reverse}"
        )

    # -- the diagonal Λ and the input/output maps -------------------------------------------------

    def lam(self) -> Tensor:
        """Λ as a [N] tensor: complex when `complex`, else real; at least float32."""
        nu = at_least_float32(self.nu_log)
        if not self.complex:
            lam = torch.exp(-torch.exp(nu))
            return lam * self.lam_sign.to(lam.dtype) if hasattr(self, "lam_sign") else lam
        return torch.exp(torch.complex(-torch.exp(nu), torch.exp(at_least_float32(self.theta_log))))

    def eigenvalues(self) -> Tensor:
        """The discrete-time diagonal of Λ as a complex tensor [N]."""
        lam = self.lam()
        return lam if lam.is_complex() else torch.complex(lam, torch.zeros_like(lam))

    # Each map is one real matmul. The rows of W_in interleave (re, im) per state n and carry γ,
    # so that u @ W_in.T is γ ⊙ (B u) laid out as a complex [..., N] tensor (a view, no copy);
    # W_out reads the state's (re, im) pairs the same way, Re(C x) = C_re x_re - C_im x_im. Two
    # matmuls over 2N instead of four over N, and no complex construction, γ product or
    # .real/.imag copy passes through autograd on the [B, L, ·] tensors (benchmarks/step.py).

    def input_weight(self) -> Tensor:
        """W_in [2N, H] (complex) or [N, H] (real): u @ W_in.T = γ ⊙ (B u), (re, im) interleaved."""
        w = torch.stack([self.B_re, self.B_im], dim=1) if self.complex else self.B_re  # [N, 2, H] or [N, H]
        if self.normalize:
            gamma = torch.exp(self.gamma_log)
            w = w * (gamma[:, None, None] if self.complex else gamma[:, None])
        return w.flatten(0, 1) if self.complex else w

    def output_weight(self) -> Tensor:
        """W_out [H, 2N] (complex) or [H, N] (real): x_(re, im interleaved) @ W_out.T = Re(C x)."""
        if not self.complex:
            return self.C_re
        return torch.stack([self.C_re, -self.C_im], dim=-1).flatten(1, 2)

    def _input(self, u: Tensor) -> Tensor:
        """γ ⊙ (B u), upcast to at least float32 ([..., H] -> [..., N], complex when `complex`)."""
        bu = at_least_float32(u @ self.input_weight().T)  # the projection may run in low precision
        return torch.view_as_complex(bu.unflatten(-1, (self.d_state, 2))) if self.complex else bu

    def _output(self, x: Tensor, u: Tensor) -> Tensor:
        """Re(C x) + D ⊙ u ([..., N] -> [..., H])."""
        x = torch.view_as_real(x).flatten(-2) if self.complex else x
        return x @ self.output_weight().T.to(x.dtype) + self.D * u

    # -- sequence and step ---------------------------------------------------------------------------

    def forward(self, u: Tensor, resets: Tensor | None = None, state: Tensor | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """u: [B, L, H] -> y: [B, L, H]; with ``return_state`` also the last state x [B, N].

        ``state`` is x before the first step (None = zeros), as in `step`; ``resets`` [B, L] bool
        zeroes the state before each step t where it is True (a document starts at t).
        """
        refuse_state(self, state, return_state)
        x = sequence_scan(self, linear_scan)(self.lam(), self._input(u), state, reverse=self.reverse, resets=resets)
        y = self._output(x, u)
        return (y, last_state(x, state, self.reverse)) if return_state else y

    def step(self, u_t: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step: u_t [B, H], state x_{t-1} [B, N] (None = zeros) -> (y_t [B, H], x_t)."""
        if self.reverse:
            raise RuntimeError("LRU(reverse=True) runs backwards in time and has no causal step()")
        b = self._input(u_t)
        x = b if state is None else self.lam() * state + b
        return self._output(x, u_t), x


# -- registration: model.kind = lru (complex) and real (the paper's real arm) ----------------------


@dataclass
class LRUConfig(LayerConfig):
    """model.lru.* (model.real.* for kind=real)."""

    normalize: bool = True  # input normalisation γ = exp(gamma_log) (Prop. 3)


@dataclass
class RealLRUConfig(LRUConfig):
    def problems(self, ctx: LayerContext) -> Iterator[tuple[str, str]]:
        if ctx.init not in REAL_INITS:  # the phase is fixed: the init must give real λ
            yield "init.name", f"kind=real needs a real init ({', '.join(REAL_INITS)}), got '{ctx.init}'"


register_layer("lru", LRU, LRUConfig, doc="LRU (Orvieto et al. 2023): complex diagonal Λ, γ-normalised input")
register_layer("real", functools.partial(LRU, complex=False), RealLRUConfig,
               doc="the LRU with real Λ and real B, C (the paper's real arm; λ < 0 too with init real_signed)")
