"""How well does the state of a diagonal linear recurrence remember its inputs? The Vandermonde view.

One channel of x_k = Λ x_{k-1} + u_k (B = 1, x_0 = 0) holds, after L inputs,

    x_L = Σ_{j=0}^{L-1} Λ^j u_{L-1-j} = V ũ,    V[i, j] = λ_i^j  (i = 1..N, j = 0..L-1),

with ũ the inputs, most recent first. The last L inputs can be read back from x_L exactly when V
has full column rank, and stably only when it is well conditioned: the condition number
κ(V) = σ_max / σ_min bounds how much a relative error in the state is amplified in the inputs.

For N = L the roots of unity make V a scaled DFT matrix (V^H V = N I, κ = 1). Real nodes give the
classical real Vandermonde matrix, whose κ grows exponentially in N; nodes spread over a ring in
the complex plane sit in between. Computed with numpy's SVD in float64/complex128: float64
resolves σ_min only down to about N·eps·σ_max, so a κ above 1/(N·eps) is reported as what float64
gives and flagged ``saturated`` (the true value is at least that large, usually far larger).

Reading real inputs from a complex state uses the real system [Re V; Im V] (2N equations, see
``reconstruction.py``); its condition number ``cond_real_system`` is reported next to κ(V). For a
real spectrum the two coincide; for a complex one the real system is overdetermined 2:1 at N = L
and can be far better conditioned than V itself.
"""

from __future__ import annotations

import numpy as np

from ssm_train.analysis.spectra import SPECTRA, spectrum

EPS = float(np.finfo(np.float64).eps)


def vandermonde(lam: np.ndarray, L: int) -> np.ndarray:
    """V[i, j] = λ_i^j for j = 0..L-1: [N, L], complex128."""
    lam = np.asarray(lam, dtype=np.complex128)
    if lam.ndim != 1:
        raise ValueError(f"lam must be a 1-d array of eigenvalues, got shape {lam.shape}")
    return lam[:, None] ** np.arange(L)[None, :]


def real_system(V: np.ndarray) -> np.ndarray:
    """[Re V; Im V]: the real equations for real inputs; a real V gives back V."""
    return V.real if not np.any(V.imag) else np.concatenate([V.real, V.imag])


def condition_number(V: np.ndarray) -> tuple[float, bool]:
    """(σ_max / σ_min, saturated): saturated when float64 cannot resolve σ_min (κ > 1/(n·eps))."""
    s = np.linalg.svd(V, compute_uv=False)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    return cond, cond > 1.0 / (max(V.shape) * EPS)


def condition_numbers(sizes: list[int], seeds: list[int], spectra: list[str] | None = None) -> list[dict]:
    """One row per (spectrum, N = L, seed): ``{"spectrum", "N", "L", "cond", "saturated", "seed",
    "cond_real_system"}``."""
    rows = []
    for name in spectra or list(SPECTRA):
        for n in sizes:
            for seed in seeds:
                V = vandermonde(spectrum(name, n, seed), n)
                cond, saturated = condition_number(V)
                cond_real, _ = condition_number(real_system(V))
                rows.append({"spectrum": name, "N": n, "L": n, "cond": cond, "saturated": saturated,
                             "seed": seed, "cond_real_system": cond_real})
    return rows
