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

A random spectrum's κ moves by 10-100x and more between seeds (two close nodes are enough to
make V nearly singular), so the reproduction reports the first and third quartiles over seeds
next to the median. Exact values beyond float64's reach: ``real_suffices.py`` (mpmath).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssm_train.analysis.report import Result, log_xticks, pyplot

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
    "cond_real_system", "saturated_real_system"}``."""
    rows = []
    for name in spectra or list(SPECTRA):
        for n in sizes:
            for seed in seeds:
                V = vandermonde(spectrum(name, n, seed), n)
                cond, saturated = condition_number(V)
                cond_real, saturated_real = condition_number(real_system(V))
                rows.append({"spectrum": name, "N": n, "L": n, "cond": cond, "saturated": saturated,
                             "seed": seed, "cond_real_system": cond_real, "saturated_real_system": saturated_real})
    return rows


def quartile_table(rows: list[dict], key: str) -> dict[tuple[str, int], tuple[float, float, float]]:
    """(spectrum, N) -> (first quartile, median, third quartile) of ``key`` over seeds: random
    spectra's κ moves by 10-100x between seeds, so a median alone hides how far a draw can land."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        groups.setdefault((r["spectrum"], r["N"]), []).append(r[key])
    return {k: tuple(float(q) for q in np.percentile(v, [25, 50, 75])) for k, v in groups.items()}


def _cell(q: tuple[float, float, float], saturated: bool) -> str:
    q1, q2, q3 = q
    star = "*" if saturated else ""
    return f"{q2:.2g}{star}" if q3 <= q1 * 1.01 else f"{q2:.2g}{star} [{q1:.2g}, {q3:.2g}]"


# -------------------------------------------------------------------- ssm-train reproduce vandermonde


def reproduce(quick: bool, out: Path) -> Result:
    sizes, seeds = [8, 16, 32, 64, 128], list(range(3 if quick else 10))
    rows = condition_numbers(sizes, seeds)
    meta = {"sizes": sizes, "seeds": seeds, "saturation": "cond > 1/(N*eps): float64 cannot resolve σ_min",
            "eps": EPS, "spread": "quartiles over seeds (numpy.percentile 25, 50, 75)"}
    md = []
    for key, what in (("cond", "κ(V) = σ_max/σ_min, V[i, j] = λ_i^j, N = L"),
                      ("cond_real_system", "κ of the real system [Re V; Im V] used to read real inputs "
                                           "(= κ(V) for a real spectrum), N = L")):
        q = quartile_table(rows, key)
        sat_key = {(r["spectrum"], r["N"]) for r in rows if r[key.replace("cond", "saturated")]}
        md += [f"{what}: median over {len(seeds)} seeds [first, third quartile] (`*`: for at least one "
               "seed float64 cannot resolve σ_min, κ > 1/(rows·eps); such a value is what float64 gives, "
               "the true κ is larger):", "",
               "| spectrum | " + " | ".join(f"N = {n}" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
        for name in SPECTRA:
            md.append(f"| `{name}` | " + " | ".join(_cell(q[name, n], (name, n) in sat_key) for n in sizes) + " |")
        md.append("")
    return {"meta": meta, "rows": rows}, lambda p: plot(rows, sizes, EPS, p), "\n".join(md).rstrip()


def plot(rows: list[dict], sizes: list[int], eps: float, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "cond", "κ(V), V[i,j] = λ_i^j, N = L"),
                           (axes[1], "cond_real_system", "κ([Re V; Im V]) (real inputs)")):
        q = quartile_table(rows, key)
        for name in SPECTRA:
            q1, ys, q3 = (np.array([q[name, n][i] for n in sizes]) for i in range(3))
            sat = [any(r[key.replace("cond", "saturated")] for r in rows if r["spectrum"] == name and r["N"] == n)
                   for n in sizes]
            line, = ax.plot(sizes, ys, "-", label=name)
            ax.fill_between(sizes, q1, q3, color=line.get_color(), alpha=0.2, lw=0)
            ax.scatter(sizes, ys, c=[line.get_color() if not s else "none" for s in sat],
                       edgecolors=line.get_color(), s=22, zorder=3)
        ax.axhline(1 / eps, color="k", ls=":", lw=0.8)
        ax.text(sizes[0], 1 / eps * 3, "1/eps (float64)", fontsize=6)
        ax.set(xscale="log", yscale="log", xlabel="N = L", title=title)
        log_xticks(ax, sizes)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("condition number (median, band: quartiles)")
    axes[0].legend(fontsize=7)
    fig.text(0.01, 0.01, "hollow: saturated (float64 cannot resolve σ_min); band: first to third quartile "
                         "over seeds", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
