"""Reading the inputs back from the state: least-squares reconstruction and the memory curve.

One channel of x_k = λ ⊙ x_{k-1} + u_k (x_0 = 0) is driven by L Gaussian inputs u_0..u_{L-1}; its
final state is x = V ũ (``vandermonde.py``; ũ_k = u_{L-1-k}, lag k = 0 the most recent). Optionally
state noise of relative size σ is added, x̃ = x + σ |x| ξ/|ξ| (ξ Gaussian, real for a real state,
complex for a complex one), standing for any perturbation of the state (rounding, other channels).
The inputs are recovered by least squares over real ũ: the complex equations are split into real
and imaginary parts, [Re V; Im V] ũ = [Re x̃; Im x̃] (a complex state of size N holds 2N reals), and
solved with numpy's SVD-based ``lstsq`` (float64, cut-off eps·max(2N, L)), i.e. the minimum-norm
solution when N is too small. Reported:

* the relative error |û - u| / |u| against N and L, per spectrum, with and without noise;
* the memory curve for N < L: the root-mean-square error of û_k at each lag k (E u_k² = 1), i.e.
  how far back the state still remembers individual inputs.
"""

from __future__ import annotations

import numpy as np

from ssm_train.analysis.spectra import SPECTRA, is_real, spectrum
from ssm_train.analysis.vandermonde import real_system, vandermonde


def final_state(lam: np.ndarray, u: np.ndarray) -> np.ndarray:
    """x_L of x_k = λ x_{k-1} + u_k from x_0 = 0, by the recurrence itself. u: [L, ...] -> [N, ...]."""
    x = np.zeros((len(lam),) + u.shape[1:], dtype=np.complex128)
    lam = lam.reshape((-1,) + (1,) * (u.ndim - 1))
    for u_k in u:
        x = lam * x + u_k
    return x


def add_state_noise(x: np.ndarray, rel: float, real: bool, rng: np.random.Generator) -> np.ndarray:
    """x + rel·|x|·ξ/|ξ| per column (each column one state)."""
    if rel == 0:
        return x
    xi = rng.standard_normal(x.shape) + (0 if real else 1j * rng.standard_normal(x.shape))
    return x + rel * np.linalg.norm(x, axis=0) * xi / np.linalg.norm(xi, axis=0)


def reconstruct(lam: np.ndarray, x: np.ndarray, L: int) -> np.ndarray:
    """Least-squares real inputs ũ (most recent first) from states x [N, ...]: [L, ...]."""
    A = real_system(vandermonde(lam, L))
    b = x.real if len(A) == len(x) else np.concatenate([x.real, x.imag])
    return np.linalg.lstsq(A, b, rcond=None)[0]


def reconstruction_errors(lam: np.ndarray, L: int, noise: float, draws: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For ``draws`` Gaussian input sequences: (relative errors [draws], errors [L, draws] by lag)."""
    u = rng.standard_normal((L, draws))  # u[t], t = 0..L-1, one column per draw
    x = add_state_noise(final_state(lam, u), noise, is_real(lam), rng)
    u_hat = reconstruct(lam, x, L)[::-1]  # back to time order
    err = u_hat - u
    return np.linalg.norm(err, axis=0) / np.linalg.norm(u, axis=0), err[::-1]  # by lag: k = 0 most recent


def error_table(sizes: list[int], lengths: list[int], noises: list[float], seeds: list[int],
                draws: int = 16, spectra: list[str] | None = None) -> list[dict]:
    """Rows ``{"spectrum", "N", "L", "noise", "rel_err", "seed"}``: mean relative error over draws."""
    rows = []
    for name in spectra or list(SPECTRA):
        for n in sizes:
            for seed in seeds:
                lam = spectrum(name, n, seed)
                for L in lengths:
                    for noise in noises:
                        rng = np.random.default_rng([seed, n, L, int(noise * 1e12)])
                        rel, _ = reconstruction_errors(lam, L, noise, draws, rng)
                        rows.append({"spectrum": name, "N": n, "L": L, "noise": noise,
                                     "rel_err": float(rel.mean()), "seed": seed})
    return rows


def memory_curves(n: int, L: int, noises: list[float], seeds: list[int], draws: int = 64,
                  spectra: list[str] | None = None) -> list[dict]:
    """Rows ``{"spectrum", "N", "L", "noise", "seed", "err_by_lag"}``: RMS error of û_k, k = 0..L-1."""
    rows = []
    for name in spectra or list(SPECTRA):
        for seed in seeds:
            lam = spectrum(name, n, seed)
            for noise in noises:
                rng = np.random.default_rng([seed, n, L, int(noise * 1e12), 1])
                _, err = reconstruction_errors(lam, L, noise, draws, rng)
                rows.append({"spectrum": name, "N": n, "L": L, "noise": noise, "seed": seed,
                             "err_by_lag": np.sqrt((err**2).mean(axis=1)).tolist()})
    return rows
