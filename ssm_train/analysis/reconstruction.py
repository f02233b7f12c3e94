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

from pathlib import Path

import numpy as np

from ssm_train.analysis.report import Result, median, pyplot

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


# ----------------------------------------------------------------- ssm-train reproduce reconstruction


def reproduce(quick: bool, out: Path) -> Result:
    sizes = [8, 16, 32, 64] if quick else [8, 16, 32, 64, 128]
    seeds, draws = ([0, 1], 8) if quick else (list(range(5)), 32)
    noises = [0.0, 1e-6]
    mem_n, mem_l = (16, 64) if quick else (32, 128)
    rows = error_table(sizes, sizes, noises, seeds, draws)
    memory = memory_curves(mem_n, mem_l, noises, seeds, draws=4 * draws)
    meta = {"sizes": sizes, "lengths": sizes, "noises": noises, "seeds": seeds, "draws": draws,
            "memory_N": mem_n, "memory_L": mem_l,
            "solver": "numpy.linalg.lstsq on [Re V; Im V] (float64, rcond=eps*max shape)"}
    md = [f"Mean relative error |û - u|/|u| of the last L Gaussian inputs recovered from the state by "
          f"least squares (median over {len(seeds)} seeds, {draws} input draws each), N = L:", "",
          "| spectrum | noise | " + " | ".join(f"N = L = {n}" for n in sizes) + " |",
          "|---|---" + "|---" * len(sizes) + "|"]
    for name in SPECTRA:
        for noise in noises:
            cells = [median([r["rel_err"] for r in rows if r["spectrum"] == name and r["N"] == n == r["L"]
                              and r["noise"] == noise]) for n in sizes]
            md.append(f"| `{name}` | {noise:g} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    md += ["", "At equal *real* state size (a complex state of size N holds 2N reals): complex spectra "
           "with N = L/2 against real ones with N = L:", "",
           "| spectrum | N | noise | " + " | ".join(f"L = {L}" for L in sizes[1:]) + " |",
           "|---|---|---" + "|---" * (len(sizes) - 1) + "|"]
    for name in SPECTRA:
        real = name.startswith("real")
        for noise in noises:
            cells = [median([r["rel_err"] for r in rows if r["spectrum"] == name and r["L"] == L
                              and r["N"] == (L if real else L // 2) and r["noise"] == noise]) for L in sizes[1:]]
            md.append(f"| `{name}` | {'L' if real else 'L/2'} | {noise:g} | "
                      + " | ".join(f"{c:.1e}" for c in cells) + " |")
    md += ["", f"Memory (N = {mem_n} < L = {mem_l}): the first lag k at which the RMS error of û_k "
           "exceeds 0.5 (median over seeds; `-` = never):", "",
           "| spectrum | noise 0 | noise 1e-6 |", "|---|---|---|"]
    for name in SPECTRA:
        cells = []
        for noise in noises:
            lags = [next((k for k, e in enumerate(r["err_by_lag"]) if e > 0.5), None) for r in memory
                    if r["spectrum"] == name and r["noise"] == noise]
            cells.append("-" if all(k is None for k in lags) else
                         f"{median([mem_l if k is None else k for k in lags]):.0f}")
        md.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return ({"meta": meta, "rows": rows, "memory": memory},
            lambda p: plot(rows, memory, sizes, mem_n, mem_l, p), "\n".join(md))


def plot(rows: list[dict], memory: list[dict], sizes: list[int], mem_n: int, mem_l: int,
                         path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    fixed_n = sizes[len(sizes) // 2]
    for name in SPECTRA:
        color = None
        for noise, style in ((0.0, "-"), (1e-6, "--")):
            ys = [median([r["rel_err"] for r in rows if r["spectrum"] == name and r["N"] == n == r["L"]
                           and r["noise"] == noise]) for n in sizes]
            line, = axes[0].plot(sizes, ys, style, marker="o", ms=3, color=color,
                                 label=name if noise == 0 else None)
            color = line.get_color()
            ys = [median([r["rel_err"] for r in rows if r["spectrum"] == name and r["N"] == fixed_n
                           and r["L"] == L and r["noise"] == noise]) for L in sizes]
            axes[1].plot(sizes, ys, style, marker="o", ms=3, color=color)
            curves = np.array([r["err_by_lag"] for r in memory if r["spectrum"] == name and r["noise"] == noise])
            axes[2].plot(np.arange(mem_l), np.median(curves, axis=0), style, color=color, lw=1)
    axes[0].set(title="N = L (solid: no noise, dashed: 1e-6)", xlabel="N = L", ylabel="relative error |û-u|/|u|")
    axes[1].set(title=f"N = {fixed_n}, against L", xlabel="L (inputs to recover)")
    axes[2].set(title=f"memory curve, N = {mem_n}, L = {mem_l}", xlabel="lag k (0 = most recent)",
                ylabel="RMS error of û_k")
    for ax in axes:
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", ls=":", lw=0.8)
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_locator(plt.NullLocator())
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
