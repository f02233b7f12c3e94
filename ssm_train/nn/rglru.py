"""Real-Gated Linear Recurrent Unit in Hawk's recurrent block (De, Smith et al. 2024, "Griffin:
mixing gated linear recurrences with local attention for efficient language models"), run on
`linear_scan` with a time-varying real decay.

The block (Hawk's temporal mixing; E = d_rnn channels, Griffin's D_RNN = 4H/3 by default):

    x, g = in_proj(u)                                  (u_k ∈ R^H -> x_k, g_k ∈ R^E)
    x    = causal depthwise conv1d(x)                  (width conv_width = 4, with bias)
    y    = RG-LRU(x)
    out  = out_proj(y ⊙ GeLU(g))

The RG-LRU, per channel, with a = σ(Λ) and c = 8:

    r_k = σ(W_a x_k + b_a)                              recurrence gate
    i_k = σ(W_x x_k + b_x)                              input gate
    log a_k = -c · r_k · softplus(-Λ)                   (= c · r_k · log σ(Λ): a_k = a^{c r_k}, in log space)
    h_k = a_k ⊙ h_{k-1} + sqrt(1 - a_k²) ⊙ (i_k ⊙ x_k)
    y_k = h_k

sqrt(1 - a_k²) = sqrt(-expm1(2 log a_k)) is exact for a_k near 1; its derivative is capped at
1000 (as recurrentgemma's SqrtBoundDerivative), since it diverges as r_k -> 0. Λ starts so that
a^c ~ U[a_min, a_max] = U[0.9, 0.999] (the paper; recurrentgemma's code draws a² uniform in
[0.81, 0.998] instead), clamped to [1e-8, 1 - 1e-7] so Λ stays finite at a_max = 1. W_a, W_x are
dense E × E here (recurrentgemma: block-diagonal per head); biases and the other weights keep
PyTorch's default init. The gates' biases, Λ and the recurrence run in float32 or wider.

`eigenvalues()` is the decay with no input contribution (W_a x = 0): a^{c σ(b_a)}, as
SelectiveSSM's is exp(ΔA) at Δ = softplus(bias). d_state is not used (the state is the E
channels); init/init_params are accepted, as every layer's, and ignored (Λ has its own init).
`reverse=True` runs the whole layer (conv included) backwards in time. `step(u_t, state)` carries
(the last conv_width - 1 conv inputs, h).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_train.nn.init import radius_problems
from ssm_train.nn.registry import LayerConfig, LayerContext, register_layer
from ssm_train.nn.context import active, refuse_state, sequence_scan, slice_tail
from ssm_train.nn.state import last_state
from ssm_train.ops.backend import at_least_float32
from ssm_train.ops.conv import causal_depthwise_conv
from ssm_train.ops.scan import flip_resets, linear_scan

RGLRUState = tuple[Tensor, Tensor]  # (conv window [B, E, conv_width - 1], h [B, E])

MAX_SQRT_GRADIENT = 1000.0


class _SqrtBoundDerivative(torch.autograd.Function):
    """sqrt(x), with the derivative 1/(2 sqrt(x)) capped at MAX_SQRT_GRADIENT."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g / torch.sqrt(torch.clamp_min(4 * x, 1 / MAX_SQRT_GRADIENT**2))


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0: x = y + log(1 - exp(-y))."""
    return y + torch.log(-torch.expm1(-y))


def rglru_lambda_init(E: int, a_min: float, a_max: float, c: float, generator: torch.Generator | None = None) -> Tensor:
    """Λ [E] with σ(Λ)^c ~ U[a_min, a_max]: softplus(-Λ) = -log(a^c)/c, so Λ = -softplus⁻¹(-log(a^c)/c)."""
    u = a_min + (a_max - a_min) * torch.rand(E, generator=generator, dtype=torch.float64)
    u = u.clamp(1e-8, 1 - 1e-7)
    return -inverse_softplus(-torch.log(u) / c)


class RGLRU(nn.Module):
    """Hawk's recurrent block: conv + RG-LRU (real gated decay a^{c r_t}) times a GeLU gate."""

    recurrent_params = ("Lambda",)
    context_parallel = True  # splits a sequence over ranks (nn/context.py); self.context set there
    context = None
    flips_time = True  # reverse=True flips the sequence: not a slice of the reversed sequence
    selection_params = ("gate_a.weight",)  # zeroed, the decay no longer depends on the input

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        *,
        d_rnn: int | None = None,
        conv_width: int = 4,
        c: float = 8.0,
        a_min: float = 0.9,
        a_max: float = 0.999,
        init: str | None = None,
        init_params: dict | None = None,
        reverse: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        H = d_model
        E = d_rnn if d_rnn is not None else max(1, round(4 * H / 3))
        if H < 1 or E < 1 or conv_width < 1 or not c > 0:
            raise ValueError(f"d_model, d_rnn, conv_width must be >= 1 and c > 0, got {d_model=}, {d_rnn=}, "
                             f"{conv_width=}, {c=}")
        for key, problem in radius_problems(a_min, a_max, names=("a_min", "a_max")):
            raise ValueError(f"RGLRU: {key} {problem}")
        self.d_model, self.d_rnn, self.conv_width, self.c, self.reverse = H, E, conv_width, c, reverse
        self.in_proj = nn.Linear(H, 2 * E)  # the recurrent branch x and the gate branch g
        self.conv1d = nn.Conv1d(E, E, conv_width, groups=E, padding=conv_width - 1)
        self.gate_a = nn.Linear(E, E)  # recurrence gate r = σ(W_a x + b_a)
        self.gate_x = nn.Linear(E, E)  # input gate i = σ(W_x x + b_x)
        self.Lambda = nn.Parameter(rglru_lambda_init(E, a_min, a_max, c, generator).float())
        self.out_proj = nn.Linear(E, H)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_rnn={self.d_rnn}, conv_width={self.conv_width}, c={self.c}, reverse={self.reverse}"

    # -- the gates and the decay --------------------------------------------------------------------

    @staticmethod
    def _gate(linear: nn.Linear, x: Tensor) -> Tensor:
        """σ(W x + b) in float32 or wider: the bias is added after the (possibly bf16) product."""
        return torch.sigmoid(at_least_float32(F.linear(x, linear.weight)) + at_least_float32(linear.bias))

    def _log_a(self, r: Tensor) -> Tensor:
        """log a_t = -c · r_t · softplus(-Λ)."""
        return -self.c * r * F.softplus(-at_least_float32(self.Lambda))

    def _rglru_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, sqrt(1 - a_t²) ⊙ i_t ⊙ x_t) for conv outputs x [..., E], at least float32."""
        log_a = self._log_a(self._gate(self.gate_a, x))
        i = self._gate(self.gate_x, x)
        multiplier = _SqrtBoundDerivative.apply(-torch.expm1(2 * log_a))
        return torch.exp(log_a), multiplier * i * at_least_float32(x)

    def eigenvalues(self) -> Tensor:
        """a^{c σ(b_a)}: the decay with no input contribution, as a complex tensor [E]."""
        r = torch.sigmoid(at_least_float32(self.gate_a.bias))
        lam = torch.exp(self._log_a(r))
        return torch.complex(lam, torch.zeros_like(lam))

    # -- sequence and step ---------------------------------------------------------------------------

    def forward(self, u: Tensor, resets: Tensor | None = None, state: RGLRUState | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, RGLRUState]:
        """u: [B, L, H] -> [B, L, H]; with ``return_state`` also `step`'s state after the last
        step; ``resets`` [B, L] bool: a document starts at t (conv and recurrence restart)."""
        if self.reverse:
            if state is not None or return_state:
                raise ValueError("RGLRU(reverse=True) carries no state: it reads the sequence backwards")
            return self._forward(u.flip(1), None if resets is None else flip_resets(resets)).flip(1)
        return self._forward(u, resets, state, return_state)

    def _forward(self, u: Tensor, resets: Tensor | None = None, state: RGLRUState | None = None,
                 return_state: bool = False) -> Tensor | tuple[Tensor, RGLRUState]:
        refuse_state(self, state, return_state)
        cg = active(self)
        tail, h0 = (None, None) if state is None else state
        x, g = self.in_proj(u).chunk(2, dim=-1)
        if cg is not None:  # the conv_width - 1 inputs before this rank's slice
            tail = slice_tail(x, self.conv_width - 1, resets, cg)
        x, tail = causal_depthwise_conv(x, self.conv1d.weight, self.conv1d.bias, tail=tail, resets=resets)
        a, b = self._rglru_inputs(x)
        h = sequence_scan(self, linear_scan)(a, b, h0, resets=resets)
        y = self.out_proj(h * F.gelu(g))
        return (y, (tail, last_state(h, h0))) if return_state else y

    def step(self, u_t: Tensor, state: RGLRUState | None = None) -> tuple[Tensor, RGLRUState]:
        """One step: u_t [B, H]; state = (last conv_width - 1 conv inputs, h) or None for zeros."""
        if self.reverse:
            raise RuntimeError("RGLRU(reverse=True) runs backwards in time and has no causal step()")
        x, g = self.in_proj(u_t).chunk(2, dim=-1)  # [B, E]
        if state is None:
            window, h = x.new_zeros(x.shape[0], self.d_rnn, self.conv_width - 1), None
        else:
            window, h = state
        window = torch.cat([window, x[..., None]], dim=-1)  # [B, E, conv_width]: x_{t-3}, ..., x_t
        x = (window * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias
        a, b = self._rglru_inputs(x)
        h = b if h is None else a * h + b
        return self.out_proj(h * F.gelu(g)), (window[..., 1:], h)


# -- registration: model.kind = rglru --------------------------------------------------------------


@dataclass
class RGLRUConfig(LayerConfig):
    """model.rglru.*"""

    d_rnn: int | None = None  # recurrence width E; null = round(4 d_model / 3), Griffin's D_RNN
    conv_width: int = 4  # causal depthwise temporal convolution before the RG-LRU
    c: float = 8.0  # a_t = a^{c r_t}
    a_min: float = 0.9  # Λ init: a^c ~ U[a_min, a_max]
    a_max: float = 0.999

    def problems(self, ctx: LayerContext) -> Iterator[tuple[str, str]]:
        if self.d_rnn is not None and self.d_rnn < 1:
            yield f"{ctx.kind}.d_rnn", f"must be >= 1 or null (4 d_model / 3), got {self.d_rnn}"
        if self.conv_width < 1:
            yield f"{ctx.kind}.conv_width", f"must be >= 1, got {self.conv_width}"
        if not self.c > 0:
            yield f"{ctx.kind}.c", f"must be > 0, got {self.c}"
        yield from radius_problems(self.a_min, self.a_max, names=("a_min", "a_max"), prefix=f"{ctx.kind}.")

    def min_params(self, d_model: int, d_state: int) -> int:
        E = self.d_rnn if self.d_rnn is not None else max(1, round(4 * d_model / 3))
        return 3 * d_model * E + 2 * E * E  # in_proj, out_proj, the two gates (d_state is not used)


register_layer("rglru", RGLRU, RGLRUConfig,
               doc="RG-LRU in Hawk's block (De et al. 2024): real decay a^{c r_t} gated by the input")
