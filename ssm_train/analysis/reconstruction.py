"""Reading the inputs back from the state: least-squares reconstruction and the memory curve.

One channel of x_k = λ ⊙ x_{k-1} + u_k (x_0 = 0) is driven by L Gaussian inputs u_0..u_{L-1}; its
final state is x = V ũ (``vandermonde.py``; ũ_k = u_{L-1-k}, lag k = 0 the most recent). Optionally
state noise of relative size σ is added, x̃ = x + σ |x| ξ/|ξ| (ξ Gaussian, real for a real state,
complex for a complex one), standing for any perturbation of the state (rounding, other channels).
The inputs are recovered over real ũ: the complex equations are split into real and imaginary
parts, A ũ = b with A = [Re V; Im V] (m × L, m = 2N; m = N for a real spectrum) and
b = [Re x̃; Im x̃] (a complex state of size N holds 2N reals). Two readouts, both from the SVD
A = Σ_i s_i a_i v_iᵀ, û = Σ_{s_i > τ} v_i (a_iᵀ b) / s_i:

    lstsq   τ = eps·max(m, L)·s_1: numpy's ``lstsq`` (float64), the minimum-norm solution; it only
            drops what float64 cannot resolve, so state noise is amplified by up to κ(A).
    tsvd    τ = max(ν, eps·max(m, L)·s_1),  ν = σ·‖A‖_F/√m.

The tsvd cut is the known noise level per singular direction: the noise σ|x| ξ/|ξ| is isotropic in
the m real coordinates and E|x|² = ‖A‖_F² (E ũũᵀ = I), so along any a_i it has RMS ν, while the
signal a_iᵀ A ũ = s_i (v_iᵀ ũ) has RMS s_i. Keeping direction i costs an expected (ν/s_i)² in
|û - u|², dropping it costs 1: keep it iff s_i > ν (the hard-threshold form of the Wiener filter).
Without noise (σ = 0) the two readouts are the same. Reported:

* the relative error |û - u| / |u| against N and L, per spectrum, readout, with and without noise;
* the memory curve for N < L: the root-mean-square error of û_k at each lag k (E u_k² = 1), i.e.
  how far back the state still remembers individual inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssm_train.analysis.report import Result, log_xticks, median, pyplot

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


READOUTS = ("lstsq", "tsvd")
EPS = float(np.finfo(np.float64).eps)


def tsvd_cut(A: np.ndarray, s: np.ndarray, noise: float) -> float:
    """τ = max(σ·‖A‖_F/√m, eps·max(m, L)·s_1): the noise per singular direction, floored at what
    float64 resolves (see the module docstring). ``s``: the singular values of A, descending."""
    return max(noise * float(np.linalg.norm(A)) / np.sqrt(len(A)), EPS * max(A.shape) * float(s[0]))


def reconstruct(lam: np.ndarray, x: np.ndarray, L: int, readout: str = "lstsq", noise: float = 0.0) -> np.ndarray:
    """Real inputs ũ (most recent first) from states x [N, ...]: [L, ...]. ``readout``: "lstsq"
    (minimum-norm least squares) or "tsvd" (singular values below ``tsvd_cut`` at state noise
    ``noise`` dropped)."""
    A = real_system(vandermonde(lam, L))
    b = x.real if len(A) == len(x) else np.concatenate([x.real, x.imag])
    if readout == "lstsq":
        return np.linalg.lstsq(A, b, rcond=None)[0]
    if readout != "tsvd":
        raise ValueError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
    a, s, vt = np.linalg.svd(A, full_matrices=False)
    keep = s > tsvd_cut(A, s, noise)
    return vt[keep].T @ ((a[:, keep].T @ b) / s[keep].reshape((-1,) + (1,) * (b.ndim - 1)))


def reconstruction_errors(lam: np.ndarray, L: int, noise: float, draws: int, rng: np.random.Generator,
                          readout: str = "lstsq") -> tuple[np.ndarray, np.ndarray]:
    """For ``draws`` Gaussian input sequences: (relative errors [draws], errors [L, draws] by lag)."""
    u = rng.standard_normal((L, draws))  # u[t], t = 0..L-1, one column per draw
    x = add_state_noise(final_state(lam, u), noise, is_real(lam), rng)
    u_hat = reconstruct(lam, x, L, readout, noise)[::-1]  # back to time order
    err = u_hat - u
    return np.linalg.norm(err, axis=0) / np.linalg.norm(u, axis=0), err[::-1]  # by lag: k = 0 most recent


def error_table(sizes: list[int], lengths: list[int], noises: list[float], seeds: list[int],
                draws: int = 16, spectra: list[str] | None = None,
                readouts: tuple[str, ...] = ("lstsq",)) -> list[dict]:
    """Rows ``{"spectrum", "N", "L", "noise", "readout", "rel_err", "seed"}``: mean relative error
    over draws. The readouts see the same inputs and noise (the generator is reseeded for each)."""
    rows = []
    for name in spectra or list(SPECTRA):
        for n in sizes:
            for seed in seeds:
                lam = spectrum(name, n, seed)
                for L in lengths:
                    for noise in noises:
                        for readout in readouts:
                            rng = np.random.default_rng([seed, n, L, int(noise * 1e12)])
                            rel, _ = reconstruction_errors(lam, L, noise, draws, rng, readout)
                            rows.append({"spectrum": name, "N": n, "L": L, "noise": noise, "readout": readout,
                                         "rel_err": float(rel.mean()), "seed": seed})
    return rows


def memory_curves(n: int, L: int, noises: list[float], seeds: list[int], draws: int = 64,
                  spectra: list[str] | None = None, readouts: tuple[str, ...] = ("lstsq",)) -> list[dict]:
    """Rows ``{"spectrum", "N", "L", "noise", "readout", "seed", "err_by_lag"}``: RMS error of û_k,
    k = 0..L-1 (the readouts on the same inputs and noise)."""
    rows = []
    for name in spectra or list(SPECTRA):
        for seed in seeds:
            lam = spectrum(name, n, seed)
            for noise in noises:
                for readout in readouts:
                    rng = np.random.default_rng([seed, n, L, int(noise * 1e12), 1])
                    _, err = reconstruction_errors(lam, L, noise, draws, rng, readout)
                    rows.append({"spectrum": name, "N": n, "L": L, "noise": noise, "readout": readout,
                                 "seed": seed, "err_by_lag": np.sqrt((err**2).mean(axis=1)).tolist()})
    return rows


def first_lost_lag(err_by_lag: list[float], threshold: float = 0.5) -> int | None:
    """The first lag k whose RMS error exceeds ``threshold`` (None: every lag is remembered)."""
    return next((k for k, e in enumerate(err_by_lag) if e > threshold), None)


# ----------------------------------------------------------------- ssm-train reproduce reconstruction


# (noise, readout) reported; at noise 0 the tsvd cut is lstsq's, so that case is not repeated
CASES: tuple[tuple[float, str], ...] = ((0.0, "lstsq"), (1e-6, "lstsq"), (1e-6, "tsvd"))
STYLES = {(0.0, "lstsq"): "-", (1e-6, "lstsq"): "--", (1e-6, "tsvd"): ":"}


def _case(noise: float, readout: str, sep: str = " | ") -> str:
    return f"0{sep}lstsq = tsvd" if noise == 0 else f"{noise:g}{sep}{readout}"


def reproduce(quick: bool, out: Path) -> Result:
    sizes = [8, 16, 32, 64] if quick else [8, 16, 32, 64, 128]
    seeds, draws = ([0, 1], 8) if quick else (list(range(5)), 32)
    mem_n, mem_l = (16, 64) if quick else (32, 128)
    rows, memory = [], []
    for readout in READOUTS:
        noises = sorted({noise for noise, r in CASES if r == readout})
        rows += error_table(sizes, sizes, noises, seeds, draws, readouts=(readout,))
        memory += memory_curves(mem_n, mem_l, noises, seeds, draws=4 * draws, readouts=(readout,))
    meta = {"sizes": sizes, "lengths": sizes, "noises": sorted({n for n, _ in CASES}), "seeds": seeds,
            "draws": draws, "memory_N": mem_n, "memory_L": mem_l, "cases": [list(c) for c in CASES],
            "solver": {"lstsq": "numpy.linalg.lstsq on [Re V; Im V] (float64, rcond=eps*max shape)",
                       "tsvd": "SVD of A = [Re V; Im V] (m x L), singular values <= "
                               "max(noise*|A|_F/sqrt(m), eps*max(m, L)*s_1) dropped"}}

    def med(name: str, noise: float, readout: str, n: int, L: int) -> float:
        return median([r["rel_err"] for r in rows if r["spectrum"] == name and r["N"] == n and r["L"] == L
                       and r["noise"] == noise and r["readout"] == readout])

    md = [f"Mean relative error |û - u|/|u| of the last L Gaussian inputs recovered from the state "
          f"(median over {len(seeds)} seeds, {draws} input draws each), N = L. Readouts: `lstsq` = "
          "minimum-norm least squares (float64); `tsvd` = singular values of A = [Re V; Im V] "
          "(m × L) below ν = noise·‖A‖_F/√m (the noise per singular direction) dropped; without "
          "noise the two cuts are the same (eps·max(m, L)·s_1):", "",
          "| spectrum | noise | readout | " + " | ".join(f"N = L = {n}" for n in sizes) + " |",
          "|---|---|---" + "|---" * len(sizes) + "|"]
    for name in SPECTRA:
        for noise, readout in CASES:
            cells = [med(name, noise, readout, n, n) for n in sizes]
            md.append(f"| `{name}` | {_case(noise, readout)} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    md += ["", "At equal *real* state size (a complex state of size N holds 2N reals): complex spectra "
           "with N = L/2 against real ones with N = L:", "",
           "| spectrum | N | noise | readout | " + " | ".join(f"L = {L}" for L in sizes[1:]) + " |",
           "|---|---|---|---" + "|---" * (len(sizes) - 1) + "|"]
    for name in SPECTRA:
        real = name.startswith("real")
        for noise, readout in CASES:
            cells = [med(name, noise, readout, L if real else L // 2, L) for L in sizes[1:]]
            md.append(f"| `{name}` | {'L' if real else 'L/2'} | {_case(noise, readout)} | "
                      + " | ".join(f"{c:.1e}" for c in cells) + " |")
    md += ["", f"Memory (N = {mem_n} < L = {mem_l}): the first lag k at which the RMS error of û_k "
           f"exceeds 0.5, median over seeds (min–max; `-` = never, counted as L = {mem_l}):", "",
           "| spectrum | " + " | ".join(f"noise {_case(*c, sep=', ')}" for c in CASES) + " |",
           "|---" * (len(CASES) + 1) + "|"]
    for name in SPECTRA:
        cells = []
        for noise, readout in CASES:
            lags = [first_lost_lag(r["err_by_lag"]) for r in memory if r["spectrum"] == name
                    and r["noise"] == noise and r["readout"] == readout]
            ks = [mem_l if k is None else k for k in lags]
            cells.append("-" if all(k is None for k in lags) else f"{median(ks):.0f} ({min(ks)}–{max(ks)})")
        md.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return ({"meta": meta, "rows": rows, "memory": memory},
            lambda p: plot(rows, memory, sizes, mem_n, mem_l, p), "\n".join(md))


def plot(rows: list[dict], memory: list[dict], sizes: list[int], mem_n: int, mem_l: int, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    fixed_n = sizes[len(sizes) // 2]
    for name in SPECTRA:
        color = None
        for noise, readout in CASES:
            style = STYLES[noise, readout]

            def select(r: dict) -> bool:
                return r["spectrum"] == name and r["noise"] == noise and r["readout"] == readout

            ys = [median([r["rel_err"] for r in rows if select(r) and r["N"] == n == r["L"]]) for n in sizes]
            line, = axes[0].plot(sizes, ys, style, marker="o", ms=3, color=color,
                                 label=name if noise == 0 else None)
            color = line.get_color()
            ys = [median([r["rel_err"] for r in rows if select(r) and r["N"] == fixed_n and r["L"] == L])
                  for L in sizes]
            axes[1].plot(sizes, ys, style, marker="o", ms=3, color=color)
            curves = np.array([r["err_by_lag"] for r in memory if select(r)])
            axes[2].plot(np.arange(mem_l), np.median(curves, axis=0), style, color=color, lw=1)
    axes[0].set(title="N = L (solid: no noise; 1e-6: dashed lstsq, dotted tsvd)", xlabel="N = L",
                ylabel="relative error |û-u|/|u|")
    axes[1].set(title=f"N = {fixed_n}, against L", xlabel="L (inputs to recover)")
    axes[2].set(title=f"memory curve, N = {mem_n}, L = {mem_l}", xlabel="lag k (0 = most recent)",
                ylabel="RMS error of û_k")
    for ax in axes:
        ax.set_yscale("log")
        ax.axhline(1.0, color="0.4", lw=0.6)  # the error of answering û = 0
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_xscale("log")
        log_xticks(ax, sizes)
    axes[0].legend(fontsize=6, loc="center right")
    axes[0].title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
