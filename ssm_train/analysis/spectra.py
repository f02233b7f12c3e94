"""The spectra λ_1..λ_N compared in the reproductions, drawn with the library's own inits.

    real_0_1         real λ, λ² ~ U[0, 1]            init ``real``  (r_min=0,   r_max=1)
    real_0.9_1       real λ, λ² ~ U[0.81, 1]         init ``real``  (r_min=0.9, r_max=1)
    ring_0.9_1       |λ|² ~ U[0.81, 1], arg λ ~ U[0, 2π]   init ``ring`` (r_min=0.9, r_max=1)
    ring_0_1         uniform on the unit disk        init ``glorot`` (circular law of a Glorot matrix)
    roots_of_unity   λ_k = exp(2πik/N), k = 0..N-1   (deterministic; the DFT's nodes)

The inits draw |λ|² uniform (uniform in area on a ring, Orvieto et al. 2023, Lemma 2), so on the
real line the radii have density ∝ r rather than being uniform; the conclusions do not depend on
this. Everything is complex128 so that the linear algebra downstream runs in float64.
"""

from __future__ import annotations

import math

import numpy as np

SPECTRA: dict[str, tuple[str, dict]] = {
    "real_0_1": ("real", {"r_min": 0.0, "r_max": 1.0}),
    "real_0.9_1": ("real", {"r_min": 0.9, "r_max": 1.0}),
    "ring_0.9_1": ("ring", {"r_min": 0.9, "r_max": 1.0, "max_phase": 2 * math.pi}),
    "ring_0_1": ("glorot", {}),
    "roots_of_unity": ("", {}),
}


def spectrum(name: str, n: int, seed: int = 0) -> np.ndarray:
    """λ_1..λ_n of spectrum ``name`` (see the module docstring), complex128 [n]."""
    if name not in SPECTRA:
        raise ValueError(f"unknown spectrum {name!r}; valid: {', '.join(SPECTRA)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if name == "roots_of_unity":
        return np.exp(2j * np.pi * np.arange(n) / n)
    import torch  # here, so that the CLI starts without torch

    from ssm_train.nn.init import get_init

    init, params = SPECTRA[name]
    generator = torch.Generator().manual_seed(seed)
    return get_init(init)((n,), generator=generator, dtype=torch.float64, **params).numpy()


def is_real(lam: np.ndarray) -> bool:
    return bool(np.all(lam.imag == 0))
