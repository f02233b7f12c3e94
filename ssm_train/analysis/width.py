"""Width of the MLP readout: error against its width D and the sequence length L, recurrence frozen.

The paper's bound: a linear diagonal recurrence whose state x_L is an injective function of the
last L inputs (N ≥ L), followed by a one-hidden-layer MLP of width D, approximates a regular causal
map to error ε with D = O(L/ε²), i.e. ε ∝ (L/D)^½ — a slope of -½ of log ε against log D. That is
an upper bound, the rate of a constructive (Barron / Maurey-type sampling) approximation; a
trained MLP may do better (a smoother target) or worse (optimisation, a finite budget).

Setting, per length L:

* recurrence frozen at N = L eigenvalues of spectrum ``spectrum`` (default ``roots_of_unity``,
  λ_k = exp(2πik/L): x_L is then the DFT of the window, κ = 1, so the recurrence loses nothing and
  the error is the readout's alone), B = 1, x_0 = 0. Features: the real numbers of x_L (Re and Im of
  each complex λ, only Re of a real one), each divided by its standard deviation under white-noise
  inputs (an exact constant); the roots' conjugate pairs repeat features, harmlessly;
* target: the ``nonlinear`` task's map at the last step, y = f(u_{L-1-l_1}, ..., u_{L-1-l_4}) with
  lags l = ``nonlinear_lags(L - 1)`` = 0, (L-1)/3, 2(L-1)/3, L-1 (so the oldest input matters) and
  f = ``_random_map(1, L - 1, task_seed)``, a fixed random tanh network of 4 inputs and width 64,
  the same f for every L (it depends on the lag only through the number of lags);
* readout: Linear(F, D) → ReLU → Linear(D, 1) (ReLU, not tanh: a tanh MLP of width ≥ 64 could
  represent f exactly and the width question would be moot), float32, trained with AdamW (lr,
  no weight decay: every batch is fresh, there is nothing to regularise), cosine decay to 0 over a
  fixed budget of ``steps`` batches of ``batch`` fresh white-noise windows, seeded;
* error: sqrt(Σ(ŷ - y)² / Σ y²) on ``n_test`` held-out windows (a fixed stream no run trains on).
  Predicting the mean of y scores sqrt(Var y / E y²) (0.87 for task_seed 0), reported alongside.

Reported: the error per (L, D, budget), the least-squares slope of log ε against log D per L and
budget, and a joint fit log ε = a + b log D + c log L, next to the bound's b = -½, c = +½.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm_train.analysis.report import Result, log_xticks, median, pyplot, torch_threads
from ssm_train.analysis.spectra import is_real, spectrum
from ssm_train.analysis.vandermonde import vandermonde

BOUND_SLOPE = -0.5  # ε ∝ (L/D)^½


@dataclass(frozen=True)
class Setting:
    """Sizes and budgets of one reproduction (``QUICK``: minutes on two CPU cores)."""

    lengths: tuple[int, ...] = (8, 16, 32)
    widths: tuple[int, ...] = (8, 16, 32, 128, 512)
    budgets: tuple[int, ...] = (500, 2000)  # optimisation steps; the largest is the headline
    seeds: tuple[int, ...] = (0,)
    spectrum: str = "roots_of_unity"
    batch: int = 256
    lr: float = 1e-2
    n_test: int = 4096
    task_seed: int = 0  # seed of the random map f
    threads: int = 1  # models this small run fastest on one thread (and share a busy machine best)


QUICK = Setting()
FULL = Setting(widths=(8, 16, 32, 64, 128, 256, 512), budgets=(500, 2000, 8000), seeds=(0, 1, 2))


# ------------------------------------------------------------------------------------- the task


def feature_map(lam: np.ndarray, L: int) -> np.ndarray:
    """M [L, F] with features = ũ M (ũ the window, most recent first): the real numbers of
    x_L = V ũ, each scaled to unit variance under white noise (E (Vũ)_i² = |V_i|²); features that
    are identically 0 (Im of a real λ) are dropped."""
    V = vandermonde(lam, L)
    A = V.real if is_real(lam) else np.concatenate([V.real, V.imag])
    norms = np.linalg.norm(A, axis=1)
    keep = norms > 1e-12 * norms.max()
    return (A[keep] / norms[keep, None]).T


def target_fn(L: int, task_seed: int):
    """y = f(u_{L-1-l}, l in nonlinear_lags(L - 1)) for windows u [n, L] (time order): -> [n, 1]."""
    from ssm_train.data.synthetic import _random_map, nonlinear_lags

    cols = [L - 1 - lag for lag in nonlinear_lags(L - 1)]
    f = _random_map(1, L - 1, task_seed)
    return lambda u: f(u[:, cols].astype(np.float32))


def held_out_windows(L: int, st: Setting) -> np.ndarray:
    """The held-out windows of length L [n_test, L], time order: one fixed stream for every run."""
    return np.random.default_rng([10**6, L, st.task_seed]).standard_normal((st.n_test, L))


def mean_baseline(L: int, st: Setting) -> float:
    """Relative error of the constant prediction ŷ = E y on the held-out windows."""
    y = target_fn(L, st.task_seed)(held_out_windows(L, st)).astype(np.float64)
    return float(np.linalg.norm(y - y.mean()) / np.linalg.norm(y))


def train_readout(L: int, D: int, steps: int, seed: int, st: Setting) -> dict:
    """One MLP readout of width D on the frozen state of length-L windows: ``{"L", "D", "steps",
    "seed", "N", "features", "rel_err", "train_rel_err", "runtime_s"}`` (train_rel_err: the last
    100 batches, before the update)."""
    import torch

    M = feature_map(spectrum(st.spectrum, L, seed), L)  # N = L
    target = target_fn(L, st.task_seed)

    def batch(u: np.ndarray) -> tuple:  # u time order; the features read ũ = u[:, ::-1]
        return torch.from_numpy((u[:, ::-1] @ M).astype(np.float32)), torch.from_numpy(target(u))

    X_test, y_test = batch(held_out_windows(L, st))
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(M.shape[1], D), torch.nn.ReLU(), torch.nn.Linear(D, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=st.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = np.random.default_rng([seed, L, D, steps])
    t0, sq, energy = time.perf_counter(), 0.0, 0.0
    for step in range(steps):
        X, y = batch(rng.standard_normal((st.batch, L)))
        err = net(X) - y
        loss = err.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - 100:
            sq, energy = sq + float(err.detach().pow(2).sum()), energy + float(y.pow(2).sum())
    with torch.no_grad():
        rel = float(((net(X_test) - y_test).pow(2).sum() / y_test.pow(2).sum()).sqrt())
    return {"L": L, "D": D, "steps": steps, "seed": seed, "N": L, "features": int(M.shape[1]), "rel_err": rel,
            "train_rel_err": math.sqrt(sq / energy), "runtime_s": round(time.perf_counter() - t0, 2)}


def train_all(st: Setting, progress=print) -> list[dict]:
    combos = [(L, D, s, seed) for s in st.budgets for L in st.lengths for D in st.widths for seed in st.seeds]
    rows = []
    with torch_threads(st.threads):
        for k, (L, D, steps, seed) in enumerate(combos, 1):
            rows.append(train_readout(L, D, steps, seed, st))
            progress(f"width {k}/{len(combos)} L={L} D={D} steps={steps} seed={seed}: "
                     f"rel_err={rows[-1]['rel_err']:.4f} ({rows[-1]['runtime_s']:.1f} s)")
    return rows


# ------------------------------------------------------------------------------------- the fits


def slope(widths: list[int], errors: list[float]) -> float:
    """Least-squares slope of log ε against log D."""
    return float(np.polyfit(np.log(widths), np.log(errors), 1)[0])


def error_grid(rows: list[dict], L: int, steps: int, widths: list[int]) -> list[float]:
    """Median over seeds of the held-out error at each width."""
    return [median([r["rel_err"] for r in rows if r["L"] == L and r["steps"] == steps and r["D"] == D])
            for D in widths]


def joint_fit(rows: list[dict], steps: int) -> tuple[float, float, float]:
    """(a, b, c) of log ε = a + b log D + c log L over every (L, D), medians over seeds."""
    Ls, Ds = sorted({r["L"] for r in rows}), sorted({r["D"] for r in rows})
    pts = [(L, D, e) for L in Ls for D, e in zip(Ds, error_grid(rows, L, steps, Ds))]
    A = np.array([[1.0, math.log(D), math.log(L)] for L, D, _ in pts])
    coef = np.linalg.lstsq(A, np.log([e for *_, e in pts]), rcond=None)[0]
    return float(coef[0]), float(coef[1]), float(coef[2])


# ------------------------------------------------------------------------ ssm-train reproduce width


def reproduce(quick: bool, out: Path) -> Result:
    st = QUICK if quick else FULL
    rows = train_all(st, progress=lambda s: print(s, flush=True))
    widths, top = list(st.widths), max(st.budgets)
    slopes = {(L, s): slope(widths, error_grid(rows, L, s, widths)) for L in st.lengths for s in st.budgets}
    half = [D for D in widths if D <= 64]  # before the floor, where a budget-limited slope is steepest
    slopes_small = {(L, s): slope(half, error_grid(rows, L, s, half)) for L in st.lengths for s in st.budgets}
    fits = {s: joint_fit(rows, s) for s in st.budgets}
    meta = {"setting": st.__dict__, "bound_slope": BOUND_SLOPE,
            "train_runtime_s": round(sum(r["runtime_s"] for r in rows), 1),
            "slopes": [{"L": L, "steps": s, "slope": slopes[L, s], "slope_D_le_64": slopes_small[L, s]}
                       for L in st.lengths for s in st.budgets],
            "joint_fit": [{"steps": s, "a": a, "b_logD": b, "c_logL": c} for s, (a, b, c) in fits.items()],
            "mean_baseline": {L: mean_baseline(L, st) for L in st.lengths},
            "model": "features(x_L) -> Linear(F, D) -> ReLU -> Linear(D, 1), AdamW, cosine lr to 0"}
    md = [f"Relative error on {st.n_test} held-out windows of an MLP readout of width D trained on the frozen "
          f"state of N = L eigenvalues (`{st.spectrum}`), target the `nonlinear` task's f at lags "
          f"nonlinear_lags(L − 1); AdamW lr {st.lr:g}, batch {st.batch} fresh windows per step, {top} steps "
          f"(median over seeds {list(st.seeds)}; `mean`: the error of predicting E y):", "",
          "| L | mean | " + " | ".join(f"D = {D}" for D in widths) + " |", "|---" * (len(widths) + 2) + "|"]
    for L in st.lengths:
        md.append(f"| {L} | {mean_baseline(L, st):.2f} | "
                  + " | ".join(f"{e:.3f}" for e in error_grid(rows, L, top, widths)) + " |")
    md += ["", f"Least-squares slope of log ε against log D (all D; in parentheses D ≤ 64), per budget; the "
           f"bound's rate is {BOUND_SLOPE}:", "",
           "| L | " + " | ".join(f"{s} steps" for s in st.budgets) + " |", "|---" * (len(st.budgets) + 1) + "|"]
    for L in st.lengths:
        md.append(f"| {L} | " + " | ".join(f"{slopes[L, s]:+.2f} ({slopes_small[L, s]:+.2f})" for s in st.budgets)
                  + " |")
    md += ["", "Joint fit log ε = a + b log D + c log L (the bound: b = −0.5, c = +0.5): "
           + "; ".join(f"{s} steps: b = {b:+.2f}, c = {c:+.2f}" for s, (_, b, c) in fits.items()) + "."]
    return {"meta": meta, "rows": rows}, lambda p: plot(rows, st, slopes, p), "\n".join(md)


def plot(rows: list[dict], st: Setting, slopes: dict, path: Path) -> None:
    plt = pyplot()
    widths, top = list(st.widths), max(st.budgets)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    styles = ["--", "-.", "-"][-len(st.budgets):] if len(st.budgets) <= 3 else ["-"] * len(st.budgets)
    for L in st.lengths:
        color = None
        for s, style in zip(st.budgets, styles):
            line, = axes[0].plot(widths, error_grid(rows, L, s, widths), style, marker="o", ms=3, color=color,
                                 label=f"L = {L}, {s} steps (slope {slopes[L, s]:+.2f})")
            color = line.get_color()
        axes[1].plot(widths, [e * math.sqrt(D / L) for D, e in zip(widths, error_grid(rows, L, top, widths))],
                     "-", marker="o", ms=3, color=color, label=f"L = {L}")
    ref = error_grid(rows, st.lengths[0], top, widths)[0]
    axes[0].plot(widths, [ref * (D / widths[0]) ** BOUND_SLOPE for D in widths], ":", color="k", lw=1,
                 label="∝ D^(-1/2) (the bound's rate)")
    axes[0].set(xscale="log", yscale="log", xlabel="MLP width D", ylabel="relative error (held out)",
                title=f"frozen {st.spectrum}, N = L")
    axes[1].set(xscale="log", yscale="log", xlabel="MLP width D", ylabel="ε · (D/L)^½",
                title=f"flat if ε ∝ (L/D)^½ ({top} steps)")
    for ax in axes:
        log_xticks(ax, widths)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
