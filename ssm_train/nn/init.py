"""Eigenvalue initialisations for diagonal linear recurrences, by name.

An init draws the discrete-time diagonal Λ of a recurrence x_k = Λ x_{k-1} + B u_k:

    lam = get_init("ring")((N,), r_min=0.9, r_max=0.999, generator=g)    # complex [N]

Two families:

* Discrete-time, drawn directly in the complex plane (LRU paper, Orvieto et al. 2023, Lemma 2):
    ring      |λ|² ~ U[r_min², r_max²],  arg λ ~ U[0, max_phase]
    glorot    ring with r_min=0, r_max=1, max_phase=2π: the circular-law spectrum of a
              Glorot-initialised dense matrix (eigenvalues uniform on the unit disk)
    real      |λ|² ~ U[r_min², r_max²],  arg λ = 0 (the LRU paper's real arm: λ ∈ (0, 1))
    real_signed  |λ|² ~ U[r_min², r_max²], sign ±1 with equal odds (λ ∈ (-1, 1): the real
              diagonal recurrence of Orvieto et al. 2024, which allows negative eigenvalues)

* Continuous-time A, discretised with a step Δ ~ logU[dt_min, dt_max] (S4D paper, Gu et al. 2022,
  "On the parameterization and initialization of diagonal state space models"; n = 0..N-1):
    s4d_lin   A_n = -1/2 + iπn
    s4d_inv   A_n = -1/2 + i N/π (N/(2n+1) - 1)
    s4d_real  A_n = -(n+1)               (also `mamba`: Gu & Dao 2023 use A = -(1..N))
  ZOH: λ = exp(ΔA); bilinear: λ = (1 + ΔA/2) / (1 - ΔA/2). One Δ is drawn per row (all leading
  axes of the shape), shared by the N modes along the last axis, as S4D does per channel.

Every init is called as `fn(shape, *, generator=None, **params)` and returns a complex tensor of
that shape (complex64, or the complex type of `dtype` when given). New inits go in with
`register_init`. Layers that store continuous-time A (S4D) use `CONTINUOUS_A`, `sample_dt`,
`discretize` and `undiscretize` directly.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import Tensor

InitFn = Callable[..., Tensor]
INITS: dict[str, InitFn] = {}

DISCRETIZATIONS = ("zoh", "bilinear")


def register_init(name: str) -> Callable[[InitFn], InitFn]:
    """Decorator: make `fn(shape, *, generator=None, **params) -> complex Tensor` available by name."""

    def wrap(fn: InitFn) -> InitFn:
        if name in INITS:
            raise ValueError(f"init {name!r} is already registered")
        INITS[name] = fn
        return fn

    return wrap


def get_init(name: str) -> InitFn:
    try:
        return INITS[name]
    except KeyError:
        raise ValueError(f"unknown init {name!r}; valid inits: {', '.join(sorted(INITS))}") from None


def init_eigenvalues(
    name: str, shape: int | tuple[int, ...], params: dict | None = None, *, generator: torch.Generator | None = None
) -> Tensor:
    """Draw Λ with init `name`; unknown keys in `params` are an error that lists the valid ones."""
    fn = get_init(name)
    params = dict(params or {})
    valid = [p for p in inspect.signature(fn).parameters if p not in ("shape", "generator", "dtype")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"init {name!r} got unknown parameter(s) {unknown}; valid parameters: {valid}")
    return fn(shape, generator=generator, **params)


# ---------------------------------------------------------------------------------------------
# Validation: the one place where init parameters are checked. The inits below raise the first
# problem; ssm_train/config.py reports it under the config key (prefix "model.init.").


def radius_problems(r_min: float, r_max: float, *, names: tuple[str, str] = ("r_min", "r_max"),
                    prefix: str = "") -> list[tuple[str, str]]:
    """0 <= r_min <= r_max <= 1. r_max = 1 is allowed: the draws are |λ| < 1 (the layers clamp a
    draw that rounds to 1 at 1 - 1e-7, so nu_log = log(-log|λ|) stays finite), and the LRU paper's
    own ring [0.9, 1] needs it."""
    lo, hi = (prefix + n for n in names)
    if not 0.0 <= r_min:
        return [(lo, f"must be >= 0, got {names[0]}={r_min}")]
    if not r_min <= r_max:
        return [(lo, f"must be <= {hi}, got {names[0]}={r_min} > {names[1]}={r_max}")]
    if not r_max <= 1.0:
        return [(hi, f"must be <= 1 (|λ| <= 1: a stable recurrence), got {names[1]}={r_max}")]
    return []


def init_problems(params: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(key, problem) for the init parameters present in ``params``: r_min/r_max, max_phase,
    dt_min/dt_max, discretization. Messages name the keys with ``prefix`` (config.py: "model.init.")."""
    out: list[tuple[str, str]] = []
    if "r_min" in params or "r_max" in params:
        out += radius_problems(params.get("r_min", 0.0), params.get("r_max", 1.0), prefix=prefix)
    if "max_phase" in params and not 0.0 <= params["max_phase"] <= 2 * math.pi:
        out.append((prefix + "max_phase", f"must be in [0, 2π], got max_phase={params['max_phase']}"))
    if "dt_min" in params or "dt_max" in params:
        dt_min, dt_max = params.get("dt_min", 1e-3), params.get("dt_max", 1e-1)
        if not dt_min > 0:
            out.append((prefix + "dt_min", f"must be > 0, got dt_min={dt_min}"))
        elif not dt_min <= dt_max:
            out.append((prefix + "dt_max", f"must be >= {prefix}dt_min, got dt_min={dt_min} > dt_max={dt_max}"))
    if "discretization" in params and params["discretization"] not in DISCRETIZATIONS:
        out.append((prefix + "discretization",
                    f"must be one of {', '.join(DISCRETIZATIONS)}, got {params['discretization']!r}"))
    return out


def check_init_params(**params) -> None:
    """Raise ValueError("<key> <problem>") for the first invalid parameter (see `init_problems`)."""
    for key, problem in init_problems(params):
        raise ValueError(f"{key} {problem}")


def check_discretization(discretization: str) -> None:
    check_init_params(discretization=discretization)


def _shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be non-empty with positive sizes, got shape={shape}")
    return shape


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


# ---------------------------------------------------------------------------------------------
# Discrete-time inits (LRU paper, Lemma 2)


def _radii(shape, r_min, r_max, generator, dtype) -> Tensor:
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return torch.sqrt(r_min**2 + u * (r_max**2 - r_min**2))  # |λ|² uniform on [r_min², r_max²]


@register_init("ring")
def ring(
    shape: int | tuple[int, ...],
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """|λ|² ~ U[r_min², r_max²], arg λ ~ U[0, max_phase] (Orvieto et al. 2023, Lemma 2).

    Uniform |λ|² makes the eigenvalues uniform in area on the ring r_min <= |λ| <= r_max.
    Defaults give the Glorot / circular-law spectrum. With r_max = 1 a float32 draw can round to
    |λ| = 1; the layers clamp |λ| at 1 - 1e-7 when they store it (nu_log stays finite).
    """
    shape = _shape(shape)
    check_init_params(r_min=r_min, r_max=r_max, max_phase=max_phase)
    r = _radii(shape, r_min, r_max, generator, dtype)
    theta = max_phase * torch.rand(shape, generator=generator, dtype=dtype)
    return torch.polar(r, theta).to(_complex(dtype))


@register_init("glorot")
def glorot(
    shape: int | tuple[int, ...], *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Alias for ring(r_min=0, r_max=1, max_phase=2π): eigenvalues of a Glorot-initialised matrix."""
    return ring(shape, r_min=0.0, r_max=1.0, max_phase=2 * math.pi, generator=generator, dtype=dtype)


@register_init("real")
def real(
    shape: int | tuple[int, ...],
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Positive real λ with λ² ~ U[r_min², r_max²]: the LRU paper's real diagonal recurrence."""
    shape = _shape(shape)
    check_init_params(r_min=r_min, r_max=r_max)
    return _radii(shape, r_min, r_max, generator, dtype).to(_complex(dtype))


@register_init("real_signed")
def real_signed(
    shape: int | tuple[int, ...],
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Real λ = ±|λ|, |λ|² ~ U[r_min², r_max²], each sign with probability 1/2: λ ∈ (-1, 1).

    A negative λ makes the state alternate, x_k = λ^k x_0, i.e. the real line's only frequency
    (phase π) besides 0: the real counterpart of the complex ring's phases."""
    r = real(shape, r_min=r_min, r_max=r_max, generator=generator, dtype=dtype)  # the radii first, as `real`
    sign = torch.where(torch.rand(_shape(shape), generator=generator, dtype=dtype) < 0.5, -1.0, 1.0)
    return sign * r


# ---------------------------------------------------------------------------------------------
# Continuous-time inits (S4D paper) and their discretisation


def s4d_lin_A(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A_n = -1/2 + iπn (S4D-Lin)."""
    k = torch.arange(n, dtype=dtype)
    return torch.complex(torch.full_like(k, -0.5), math.pi * k)


def s4d_inv_A(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A_n = -1/2 + i N/π (N/(2n+1) - 1) (S4D-Inv)."""
    k = torch.arange(n, dtype=dtype)
    return torch.complex(torch.full_like(k, -0.5), n / math.pi * (n / (2 * k + 1) - 1))


def s4d_real_A(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A_n = -(n+1), i.e. A = -(1..N) (S4D-Real; Mamba's S6 init)."""
    k = torch.arange(n, dtype=dtype)
    return torch.complex(-(k + 1), torch.zeros_like(k))


CONTINUOUS_A: dict[str, Callable[..., Tensor]] = {
    "s4d_lin": s4d_lin_A,
    "s4d_inv": s4d_inv_A,
    "s4d_real": s4d_real_A,
    "mamba": s4d_real_A,
}


def sample_dt(
    shape: tuple[int, ...],
    dt_min: float = 1e-3,
    dt_max: float = 1e-1,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Δ ~ logU[dt_min, dt_max]."""
    check_init_params(dt_min=dt_min, dt_max=dt_max)
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return torch.exp(math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min)))


def discretize(A: Tensor, dt: Tensor, discretization: str = "zoh") -> Tensor:
    """Continuous eigenvalues A (Re A < 0) -> discrete λ. ZOH: exp(ΔA); bilinear: (1+ΔA/2)/(1-ΔA/2)."""
    check_discretization(discretization)
    dtA = dt * A
    if discretization == "zoh":
        return torch.exp(dtA)
    return (1 + dtA / 2) / (1 - dtA / 2)


def undiscretize(lam: Tensor, dt: Tensor, discretization: str = "zoh") -> Tensor:
    """Inverse of `discretize` for |λ| < 1: ZOH A = log(λ)/Δ; bilinear A = (2/Δ)(λ-1)/(λ+1)."""
    check_discretization(discretization)
    if discretization == "zoh":
        return torch.log(lam) / dt
    return 2 / dt * (lam - 1) / (lam + 1)


def _continuous_init(name: str) -> InitFn:
    def init(
        shape: int | tuple[int, ...],
        *,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        discretization: str = "zoh",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        shape = _shape(shape)
        check_discretization(discretization)
        A = CONTINUOUS_A[name](shape[-1], dtype)  # [N], the same for every row
        dt = sample_dt(shape[:-1] + (1,), dt_min, dt_max, generator=generator, dtype=dtype)  # one Δ per row
        return discretize(A, dt, discretization)

    init.__name__ = name
    init.__doc__ = f"{CONTINUOUS_A[name].__doc__} Discretised with Δ ~ logU[dt_min, dt_max] (ZOH or bilinear)."
    return init


for _name in CONTINUOUS_A:
    register_init(_name)(_continuous_init(_name))
