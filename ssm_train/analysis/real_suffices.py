"""Real eigenvalues suffice when they are spread out: N = L real nodes, exactly and in finite precision.

The Vandermonde view (``vandermonde.py``): after L inputs the state of x_k = Λ x_{k-1} + u_k is
x_L = V ũ, V[i, j] = λ_i^j. With N = L real nodes V is square and invertible, so in exact
arithmetic the state determines the last L inputs whatever the (distinct) nodes; what real nodes
lose is conditioning, κ(V) = σ_max/σ_min, and how fast κ grows with N depends on how well the nodes
are spread. Node sets compared (N = L; ``nodes``):

    real_0_1        random, λ² ~ U[0, 1]                  (spectra.real_0_1, init ``real``)
    real_signed     random, |λ|² ~ U[0, 1], sign ±1       (init ``real_signed``)
    cheb_0_1        λ_k = (1 + cos((2k+1)π/2N))/2         (Chebyshev nodes on [0, 1])
    cheb_-1_1       λ_k = cos((2k+1)π/2N)                 (Chebyshev nodes on [-1, 1], signed)
    equi_-1_1       λ_k = -1 + (2k+1)/N                   (equispaced midpoints on [-1, 1])
    roots_of_unity  λ_k = exp(2πik/N)                     (complex reference, κ = 1)

Three parts, one row each (``"part"``):

* ``kappa``: the exact κ(V) of the float64 nodes, κ = ‖V‖₂·‖V⁻¹‖₂, with V⁻¹ from the Lagrange
  basis (column i of V⁻¹ holds the coefficients of ℓ_i(z) = Π_{k≠i} (z - λ_k)/(λ_i - λ_k)) in
  mpmath at ``mp.dps = 30 + 2N`` digits and again at twice that (the two must agree: ``rel_diff``).
  ‖V⁻¹‖₂ is then taken in float64 from the rounded V⁻¹: a matrix's largest singular value is
  insensitive to rounding its entries (relative error ~ √N·eps), unlike its smallest. Next to it
  numpy's float64 SVD value, which cannot exceed ~1/(N·eps) (``saturated``).
* ``reconstruction``: the recurrence run in float64 or float32 (nodes and state rounded to the
  dtype; the inputs as well), the L inputs read back in float64 from [Re V; Im V] of the rounded
  nodes (``reconstruction.reconstruct``) by ``lstsq`` (the exact inverse at N = L) or ``tsvd`` at
  noise σ = eps of the dtype (the float32 state's rounding, measured: 0.3-1.7 eps, ``state_err``).
  A readout computed in float64 isolates what the state itself has kept. Rounding the state by
  eps is amplified by up to κ, so it breaks where κ·eps ≈ 1.
* ``copy``: the copy task y_t = u_{t-lag} on the frozen recurrence, sequences of length T = N = L
  from x_0 = 0, one linear readout ŷ_t = w·x_t shared by all positions t >= lag (as a sequence
  model's head is), lags 1, N/2, N-1. Inputs are Gaussian and the state is linear in them, so
  (x_t, u_{t-lag}) are jointly Gaussian and E[u_{t-lag} | x_t] is linear in x_t: no readout, an MLP
  included, beats the best linear one, and the best linear one is the least-squares fit. Readouts,
  fitted on ``train_sequences`` sequences and scored on as many fresh ones (relative error
  sqrt(Σ(ŷ - y)² / Σy²)):

      lstsq   closed-form least squares in the dtype of the states (torch ``gelsd``, cut
              rcond = F·eps of the dtype, F features): the trained optimum, float64 and float32;
      adam    gradient training as a model would get it: float32, w = 0, full-batch Adam on the
              mean squared error, ``adam_steps`` steps, lr ``adam_lr`` with cosine decay. Gradient
              descent on least squares fits the direction of singular value s_i at a rate ∝ s_i²,
              so in any feasible budget it only learns the readout where κ is small.

  A complex state (roots of unity) gives the readout its 2N reals [Re x; Im x].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm_train.analysis.reconstruction import reconstruct
from ssm_train.analysis.report import Result, median, pyplot, torch_threads
from ssm_train.analysis.spectra import spectrum
from ssm_train.analysis.vandermonde import condition_number, vandermonde

NODES: dict[str, str] = {
    "real_0_1": "random, λ² ~ U[0, 1]",
    "real_signed": "random, |λ|² ~ U[0, 1], sign ±1",
    "cheb_0_1": "λ_k = (1 + cos((2k+1)π/2N))/2",
    "cheb_-1_1": "λ_k = cos((2k+1)π/2N)",
    "equi_-1_1": "λ_k = -1 + (2k+1)/N",
    "roots_of_unity": "λ_k = exp(2πik/N)",
}
RANDOM = ("real_0_1", "real_signed")  # drawn per seed; the others are one fixed set per N
DTYPES = ("float64", "float32")
EPS = {d: float(np.finfo(d).eps) for d in DTYPES}
BREAK = 0.1  # a reconstruction "breaks" at the first N whose median relative error exceeds this


def nodes(name: str, n: int, seed: int = 0) -> np.ndarray:
    """λ_1..λ_n of node set ``name`` (module docstring), complex128 [n] like ``spectra.spectrum``."""
    k = np.arange(n)
    if name == "cheb_0_1":
        lam = (1 + np.cos((2 * k + 1) * np.pi / (2 * n))) / 2
    elif name == "cheb_-1_1":
        lam = np.cos((2 * k + 1) * np.pi / (2 * n))
    elif name == "equi_-1_1":
        lam = -1 + (2 * k + 1) / n
    elif name == "real_signed":
        import torch

        from ssm_train.nn.init import get_init

        generator = torch.Generator().manual_seed(seed)
        return get_init("real_signed")((n,), generator=generator, dtype=torch.float64).numpy()
    elif name in ("real_0_1", "roots_of_unity"):
        return spectrum(name, n, seed)
    else:
        raise ValueError(f"unknown node set {name!r}; valid: {', '.join(NODES)}")
    return lam.astype(np.complex128)


def seeds_of(name: str, seeds: tuple[int, ...]) -> tuple[int, ...]:
    return seeds if name in RANDOM else seeds[:1]


# ------------------------------------------------------------------------ exact κ(V) with mpmath


def inverse_vandermonde(lam: np.ndarray, dps: int) -> np.ndarray:
    """V⁻¹ for V[i, j] = λ_i^j (N = L), computed at ``dps`` digits and rounded to complex128.

    (V c)_i = p(λ_i) for p(z) = Σ_j c_j z^j, so V⁻¹ maps values at the nodes to coefficients: its
    column i holds those of ℓ_i(z) = P(z) / ((z - λ_i) P'(λ_i)), P(z) = Π_k (z - λ_k). P/(z - λ_i)
    by synthetic division: O(N²) in all, against O(N³) for a high-precision LU."""
    import mpmath

    n = len(lam)
    with mpmath.workdps(dps):
        z = [mpmath.mpf(float(x.real)) if x.imag == 0 else mpmath.mpc(float(x.real), float(x.imag)) for x in lam]
        P = [mpmath.mpf(1)]  # ascending coefficients of Π (z - λ_k), built one factor at a time
        for zk in z:
            P = [(P[j - 1] if j else 0) - zk * (P[j] if j < len(P) else 0) for j in range(len(P) + 1)]
        inv = np.empty((n, n), dtype=np.complex128)
        for i, zi in enumerate(z):
            q = [mpmath.mpf(0)] * n
            q[n - 1] = P[n]
            for j in range(n - 1, 0, -1):  # P(z) = (z - λ_i) q(z): q_{j-1} = P_j + λ_i q_j
                q[j - 1] = P[j] + zi * q[j]
            d = mpmath.fprod(zi - zk for k, zk in enumerate(z) if k != i)  # P'(λ_i)
            inv[:, i] = [complex(qj / d) for qj in q]
    return inv


def default_dps(n: int) -> int:
    """Digits for V⁻¹: enough for κ (below 10^(1.2 N) for every node set here) and the ~2^N
    cancellation in P's coefficients, with 30 to spare; ``exact_condition_number`` checks it."""
    return 30 + 2 * n


@functools.lru_cache(maxsize=4096)
def _exact(key: bytes, dps: int) -> float:
    lam = np.frombuffer(key, dtype=np.complex128)
    return float(np.linalg.norm(vandermonde(lam, len(lam)), 2) * np.linalg.norm(inverse_vandermonde(lam, dps), 2))


def exact_condition_number(lam: np.ndarray, dps: int | None = None) -> tuple[float, float, int]:
    """(κ(V), |κ_dps - κ_2dps| / κ_2dps, dps): κ = ‖V‖₂·‖V⁻¹‖₂ of these (float64) nodes, V⁻¹ at
    ``dps`` digits (default ``default_dps``) and again at twice as many."""
    lam = np.ascontiguousarray(lam, dtype=np.complex128)
    dps = dps or default_dps(len(lam))
    k1, k2 = _exact(lam.tobytes(), dps), _exact(lam.tobytes(), 2 * dps)
    return k2, abs(k1 - k2) / k2, dps


def kappa_rows(sizes: tuple[int, ...], seeds: tuple[int, ...], names: tuple[str, ...] = tuple(NODES)) -> list[dict]:
    """Rows ``{"part": "kappa", "nodes", "N", "seed", "kappa", "rel_diff", "dps", "kappa_float64",
    "saturated"}``."""
    rows = []
    for name in names:
        for n in sizes:
            for seed in seeds_of(name, seeds):
                lam = nodes(name, n, seed)
                kappa, rel_diff, dps = exact_condition_number(lam)
                k64, saturated = condition_number(vandermonde(lam, n))
                rows.append({"part": "kappa", "nodes": name, "N": n, "seed": seed, "kappa": kappa,
                             "rel_diff": rel_diff, "dps": dps, "kappa_float64": k64, "saturated": saturated})
    return rows


# -------------------------------------------------------------- reconstruction in float64 / float32


def rounded_state(lam: np.ndarray, u: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """x_L of x_k = λ x_{k-1} + u_k run in ``dtype`` (nodes, inputs and state rounded to it).
    u: [L, draws]. Returns (the rounded nodes, x_L [N, draws]), both complex128."""
    real = bool(np.all(lam.imag == 0))
    lam_d = lam.real.astype(dtype) if real else lam.astype(np.result_type(dtype, np.complex64))
    x = np.zeros((len(lam), u.shape[1]), dtype=lam_d.dtype)
    for u_k in u.astype(dtype):
        x = lam_d[:, None] * x + u_k
    return lam_d.astype(np.complex128), x.astype(np.complex128)


def precision_rows(sizes: tuple[int, ...], seeds: tuple[int, ...], draws: int,
                   names: tuple[str, ...] = tuple(NODES), readouts: tuple[str, ...] = ("lstsq", "tsvd")) -> list[dict]:
    """Rows ``{"part": "reconstruction", "nodes", "N", "seed", "dtype", "readout", "rel_err",
    "state_err", "kappa"}``: mean |û - u|/|u| over ``draws`` Gaussian sequences of L = N inputs;
    ``state_err`` the mean relative rounding error of the state, |x_dtype - x|/|x| (x in float64
    from the same rounded nodes and inputs); ``kappa`` the exact κ of the rounded nodes."""
    from ssm_train.analysis.reconstruction import final_state

    rows = []
    for name in names:
        for n in sizes:
            for seed in seeds_of(name, seeds):
                lam = nodes(name, n, seed)
                for dtype in DTYPES:
                    rng = np.random.default_rng([seed, n, 7])  # the same inputs for both dtypes
                    u = rng.standard_normal((n, draws)).astype(dtype).astype(np.float64)
                    lam_d, x = rounded_state(lam, u, dtype)
                    x_exact = final_state(lam_d, u)
                    state_err = float(np.mean(np.linalg.norm(x - x_exact, axis=0) / np.linalg.norm(x_exact, axis=0)))
                    kappa = exact_condition_number(lam_d)[0]
                    for readout in readouts:
                        u_hat = reconstruct(lam_d, x, n, readout, EPS[dtype])[::-1]  # back to time order
                        rel = np.linalg.norm(u_hat - u, axis=0) / np.linalg.norm(u, axis=0)
                        rows.append({"part": "reconstruction", "nodes": name, "N": n, "seed": seed, "dtype": dtype,
                                     "readout": readout, "rel_err": float(rel.mean()), "state_err": state_err,
                                     "kappa": kappa})
    return rows


def breaking_point(rows: list[dict], name: str, dtype: str, readout: str = "lstsq") -> tuple[int | None, int | None]:
    """(the largest N before the first N whose median relative error exceeds ``BREAK``, that first
    N); None where there is none."""
    last, sizes = None, sorted({r["N"] for r in rows})
    for n in sizes:
        errs = [r["rel_err"] for r in rows if r["nodes"] == name and r["dtype"] == dtype
                and r["readout"] == readout and r["N"] == n]
        if errs and median(errs) > BREAK:
            return last, n
        last = n if errs else last
    return last, None


# ------------------------------------------------------------------------------------ copy task


def copy_lags(n: int) -> tuple[int, ...]:
    return (1, n // 2, n - 1)


def copy_features(lam: np.ndarray, u, dtype):
    """States x_t, t = 0..T-1, of the recurrence run in ``dtype`` (torch): u [S, T] -> [S, T, F],
    F = N for real nodes, 2N ([Re x; Im x]) for complex ones."""
    import torch

    real = bool(np.all(lam.imag == 0))
    lam_t = torch.tensor(lam.real if real else lam).to(dtype if real else (
        torch.complex128 if dtype == torch.float64 else torch.complex64))
    x = torch.zeros(u.shape[0], len(lam), dtype=lam_t.dtype)
    states = []
    for t in range(u.shape[1]):
        x = lam_t * x + u[:, t, None]
        states.append(x)
    X = torch.stack(states, 1)
    return X if real else torch.cat([X.real, X.imag], -1)


def copy_targets(u, lags: tuple[int, ...]):
    """Y [S, T, lags] with Y[:, t, i] = u_{t - lag_i}, and the mask [T, lags] of the positions t >= lag_i."""
    import torch

    T = u.shape[1]
    Y = torch.stack([torch.roll(u, lag, 1) for lag in lags], -1)
    mask = torch.stack([torch.arange(T) >= lag for lag in lags], -1).to(u.dtype)
    return Y, mask


def masked_rel_err(X, W, Y, mask) -> list[float]:
    """sqrt(Σ(ŷ - y)² / Σy²) per lag over the masked positions."""
    err = ((X @ W - Y) ** 2 * mask).sum((0, 1))
    return (err / (Y**2 * mask).sum((0, 1))).sqrt().tolist()


def fit_lstsq(X, Y, mask):
    """Per lag, the least-squares w over the positions t >= lag (cut rcond = F·eps of the dtype)."""
    import torch

    F = X.shape[-1]
    rcond = F * torch.finfo(X.dtype).eps
    cols = []
    for i in range(Y.shape[-1]):
        keep = mask[:, i].bool()
        A, b = X[:, keep].reshape(-1, F), Y[:, keep, i].reshape(-1, 1)
        cols.append(torch.linalg.lstsq(A, b, rcond=rcond, driver="gelsd").solution)
    return torch.cat(cols, 1)


def fit_adam(X, Y, mask, steps: int, lr: float):
    """Full-batch Adam from w = 0 on the masked mean squared error, lr with cosine decay. The lags
    are trained together: Adam is elementwise and the loss a sum over lags, so this equals
    separate runs."""
    import torch

    W = torch.zeros(X.shape[-1], Y.shape[-1], dtype=X.dtype, requires_grad=True)
    opt = torch.optim.Adam([W], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    count = mask.sum(0) * X.shape[0]  # positions per lag
    for _ in range(steps):
        opt.zero_grad()
        loss = (((X @ W - Y) ** 2 * mask).sum((0, 1)) / count).sum()
        loss.backward()
        opt.step()
        sched.step()
    return W.detach()


def copy_rows(sizes: tuple[int, ...], seeds: tuple[int, ...], train_sequences: int, adam_steps: int,
              adam_lr: float, names: tuple[str, ...] = tuple(NODES)) -> list[dict]:
    """Rows ``{"part": "copy", "nodes", "N", "seed", "lag", "dtype", "readout", "rel_err"}``, T = N."""
    import torch

    rows = []
    with torch_threads(1):  # tiny matrices: one thread is fastest and shares a busy machine best
        for name in names:
            for n in sizes:
                lags = copy_lags(n)
                for seed in seeds_of(name, seeds):
                    lam = nodes(name, n, seed)
                    generator = torch.Generator().manual_seed(1000 * n + seed)
                    u_train, u_test = torch.randn(2, train_sequences, n, generator=generator, dtype=torch.float64)
                    for dtype_name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
                        ut, us = u_train.to(dtype), u_test.to(dtype)
                        Xt, Xs = copy_features(lam, ut, dtype), copy_features(lam, us, dtype)
                        (Yt, mask), (Ys, _) = copy_targets(ut, lags), copy_targets(us, lags)
                        fits = {"lstsq": fit_lstsq(Xt, Yt, mask)}
                        if dtype_name == "float32":
                            fits["adam"] = fit_adam(Xt, Yt, mask, adam_steps, adam_lr)
                        for readout, W in fits.items():
                            for lag, err in zip(lags, masked_rel_err(Xs, W, Ys, mask)):
                                rows.append({"part": "copy", "nodes": name, "N": n, "seed": seed, "lag": lag,
                                             "dtype": dtype_name, "readout": readout, "rel_err": err})
    return rows


# ------------------------------------------------------------------ ssm-train reproduce real_suffices


@dataclass(frozen=True)
class Setting:
    """Sizes of one reproduction (``QUICK``: about a minute on two CPU cores)."""

    kappa_sizes: tuple[int, ...]
    recon_sizes: tuple[int, ...]
    copy_sizes: tuple[int, ...]
    seeds: tuple[int, ...]  # of the random node sets
    copy_seeds: tuple[int, ...]
    draws: int = 16
    train_sequences: int = 128
    adam_steps: int = 500
    adam_lr: float = 0.1  # 0.1 to 1 reach the same plateau (N = 8, 16): it is κ that limits, not lr
    names: tuple[str, ...] = tuple(NODES)


QUICK = Setting(kappa_sizes=(4, 8, 16, 24, 32), recon_sizes=(4, 8, 12, 16, 20, 24, 32, 40, 48),
                copy_sizes=(4, 8, 16, 32), seeds=(0, 1, 2), copy_seeds=(0,))
FULL = Setting(kappa_sizes=(4, 8, 16, 24, 32, 48, 64), recon_sizes=(4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64),
               copy_sizes=(4, 8, 16, 32, 64), seeds=tuple(range(10)), copy_seeds=(0, 1, 2), draws=32,
               adam_steps=2000)


def _g(x: float) -> str:
    return f"{x:.2g}"


def reproduce(quick: bool, out: Path) -> Result:
    s = QUICK if quick else FULL
    kappa = kappa_rows(s.kappa_sizes, s.seeds, s.names)
    recon = precision_rows(s.recon_sizes, s.seeds, s.draws, s.names)
    copy = copy_rows(s.copy_sizes, s.copy_seeds, s.train_sequences, s.adam_steps, s.adam_lr, s.names)
    rows = kappa + recon + copy
    meta = {"setting": {k: list(v) if isinstance(v, tuple) else v for k, v in s.__dict__.items()},
            "nodes": {k: NODES[k] for k in s.names}, "random": [n for n in s.names if n in RANDOM],
            "eps": EPS, "break": BREAK, "dps": "30 + 2N, checked against 2(30 + 2N)",
            "max_rel_diff": max(r["rel_diff"] for r in kappa)}
    md = kappa_md(kappa, s) + [""] + recon_md(recon, s) + [""] + copy_md(copy, s)
    return {"meta": meta, "rows": rows}, lambda p: plot(rows, s, p), "\n".join(md)


def _q(values: list[float]) -> tuple[float, float, float]:
    return tuple(float(q) for q in np.percentile(values, [25, 50, 75]))


def kappa_md(rows: list[dict], s: Setting) -> list[str]:
    sizes = s.kappa_sizes
    diff = max(r["rel_diff"] for r in rows)
    change = f"{diff:.0e}" if diff else "0, the same float64 number"
    md = [f"Exact κ(V) = ‖V‖₂‖V⁻¹‖₂ of the float64 nodes, V⁻¹ in mpmath at 30 + 2N digits (largest "
          f"relative change at twice the digits: {change}); random sets: "
          f"median [quartiles] over {len(s.seeds)} seeds. In parentheses: numpy's float64 SVD value "
          "(median; `*` saturated, κ > 1/(N·eps)).", "",
          "| nodes | " + " | ".join(f"N = {n}" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name in s.names:
        cells = []
        for n in sizes:
            sel = [r for r in rows if r["nodes"] == name and r["N"] == n]
            q1, q2, q3 = _q([r["kappa"] for r in sel])
            spread = f" [{_g(q1)}, {_g(q3)}]" if len(sel) > 1 else ""
            star = "*" if any(r["saturated"] for r in sel) else ""
            cells.append(f"{_g(q2)}{spread} ({_g(median([r['kappa_float64'] for r in sel]))}{star})")
        md.append(f"| `{name}` | " + " | ".join(cells) + " |")
    by_seed = {(r["N"], r["seed"]): r["kappa"] for r in rows if r["nodes"] == "real_0_1"}
    quoted = [n for n in (16, 32) if (n, 0) in by_seed]
    if quoted:
        md += ["", "`real_0_1`, seed 0: " + ", ".join(f"κ = {by_seed[n, 0]:.3g} at N = {n}" for n in quoted)
               + "; median over seeds: " + ", ".join(
                   f"{median([k for (m, _), k in by_seed.items() if m == n]):.3g} at N = {n}" for n in quoted) + "."]
    return md


def recon_md(rows: list[dict], s: Setting) -> list[str]:
    sizes = s.recon_sizes
    md = [f"Reconstruction at N = L: the recurrence in float64 or float32, the inputs read back in float64 "
          f"(`lstsq`: the exact inverse; `tsvd`: cut at noise = eps of the dtype). Mean |û - u|/|u| over "
          f"{s.draws} draws, median over seeds. Right: the last N before the error first exceeds {BREAK} "
          "(lstsq) and the first N beyond, each with κ·eps there (exact κ of the rounded nodes times "
          "eps of the dtype, median).", "",
          "| nodes | dtype | readout | " + " | ".join(f"N = {n}" for n in sizes)
          + " | works to N (κ·eps) | breaks at N (κ·eps) |",
          "|---|---|---" + "|---" * len(sizes) + "|---|---|"]
    for name in s.names:
        for dtype in DTYPES:
            for readout in ("lstsq", "tsvd"):
                cells = [median([r["rel_err"] for r in rows if r["nodes"] == name and r["N"] == n
                                 and r["dtype"] == dtype and r["readout"] == readout]) for n in sizes]
                line = f"| `{name}` | {dtype} | {readout} | " + " | ".join(f"{c:.0e}" for c in cells)
                if readout == "lstsq":
                    for n in breaking_point(rows, name, dtype):
                        ke = median([r["kappa"] for r in rows if r["nodes"] == name and r["N"] == n
                                     and r["dtype"] == dtype]) * EPS[dtype] if n else None
                        line += f" | {n} ({_g(ke)})" if n else " | -"
                    line += " |"
                else:
                    line += " | | |"
                md.append(line)
    return md


def copy_md(rows: list[dict], s: Setting) -> list[str]:
    sizes = s.copy_sizes
    md = [f"Copy task y_t = u_(t-lag) with T = N = L, one linear readout on the frozen state, relative "
          f"error on fresh sequences for lags 1 / N/2 / N-1 (median over {len(s.copy_seeds)} seeds of the "
          f"random sets). `lstsq`: closed-form least squares (the trained optimum); `adam`: float32, "
          f"{s.adam_steps} full-batch Adam steps, lr {s.adam_lr:g} cosine, on {s.train_sequences} sequences.", "",
          "| nodes | dtype | readout | " + " | ".join(f"N = {n}" for n in sizes) + " |",
          "|---|---|---" + "|---" * len(sizes) + "|"]
    for name in s.names:
        for dtype, readout in (("float64", "lstsq"), ("float32", "lstsq"), ("float32", "adam")):
            cells = []
            for n in sizes:
                errs = [median([r["rel_err"] for r in rows if r["nodes"] == name and r["N"] == n
                                and r["lag"] == lag and r["dtype"] == dtype and r["readout"] == readout])
                        for lag in copy_lags(n)]
                cells.append(" / ".join(f"{e:.0e}" for e in errs))
            md.append(f"| `{name}` | {dtype} | {readout} | " + " | ".join(cells) + " |")
    return md


def plot(rows: list[dict], s: Setting, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (ax_kappa, ax_recon), (ax_rel, ax_copy) = axes
    colors = {name: f"C{i}" for i, name in enumerate(s.names)}

    def med(part: str, name: str, n: int, key: str, **match) -> float:
        return median([r[key] for r in rows if r["part"] == part and r["nodes"] == name and r["N"] == n
                       and all(r[k] == v for k, v in match.items())])

    for name in s.names:
        c = colors[name]
        ax_kappa.plot(s.kappa_sizes, [med("kappa", name, n, "kappa") for n in s.kappa_sizes], "-o", ms=3,
                      color=c, label=name)
        ax_kappa.plot(s.kappa_sizes, [med("kappa", name, n, "kappa_float64") for n in s.kappa_sizes], ":",
                      color=c, lw=1)
        for dtype, style, mk in (("float64", "-", "o"), ("float32", "--", "s")):
            ax_recon.plot(s.recon_sizes, [med("reconstruction", name, n, "rel_err", dtype=dtype, readout="lstsq")
                                          for n in s.recon_sizes], style, marker=mk, ms=3, color=c)
            sel = [r for r in rows if r["part"] == "reconstruction" and r["nodes"] == name
                   and r["dtype"] == dtype and r["readout"] == "lstsq"]
            ax_rel.scatter([r["kappa"] * EPS[dtype] for r in sel], [r["rel_err"] for r in sel], s=10, marker=mk,
                           color=c, alpha=0.6)
            for readout, mk2 in (("lstsq", "o"), ("adam", "x")):
                if dtype == "float64" and readout == "adam":
                    continue
                ax_copy.plot(s.copy_sizes, [med("copy", name, n, "rel_err", dtype=dtype, readout=readout,
                                                lag=n // 2) for n in s.copy_sizes],
                             style if readout == "lstsq" else ":", marker=mk2, ms=4, color=c)
    for dtype, ls in (("float64", "-"), ("float32", "--")):
        ax_kappa.axhline(1 / EPS[dtype], color="k", ls=ls, lw=0.7)
        ax_kappa.text(s.kappa_sizes[0], 2 / EPS[dtype], f"1/eps {dtype}", fontsize=6)
    ke = [r["kappa"] * EPS[r["dtype"]] for r in rows if r["part"] == "reconstruction"]
    lim = np.array([min(ke), 1e6])  # beyond, every readout has long failed
    ax_rel.plot(lim, lim, color="k", lw=0.7)
    ax_rel.text(lim[0], lim[0] * 30, "error = κ·eps", fontsize=7)
    ax_kappa.set(yscale="log", xlabel="N = L", ylabel="κ(V)", title="exact κ(V) (solid; dotted: float64 SVD)")
    ax_recon.set(yscale="log", xlabel="N = L", ylabel="|û - u| / |u|",
                 title="reconstruction, lstsq (solid: float64, dashed: float32)")
    ax_rel.set(xscale="log", yscale="log", xlim=lim, ylim=(1e-17, 1e7), xlabel="κ·eps (exact κ, eps of the dtype)",
               ylabel="|û - u| / |u|", title="reconstruction against κ·eps (o: float64, s: float32; lstsq)")
    ax_copy.set(yscale="log", xlabel="N = L = T", ylabel="relative error at lag N/2",
                title="copy task, lag N/2 (o: lstsq, solid float64, dashed float32; x: Adam float32)")
    for ax in (ax_recon, ax_rel, ax_copy):
        ax.axhline(1.0, color="0.4", lw=0.6)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    ax_kappa.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
