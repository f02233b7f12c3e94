"""Where on the ring, and with how much phase, should the eigenvalues start? Error against lag.

The two sweeps that ship in ``configs/sweeps/`` run here as they would with ``ssm-train sweep
--local``, once per lag k of the copy task y_t = u_{t-k} (``configs/experiment/default.yaml``:
an LRU + GLU stack, 2 × 64, N = 64):

    ring_radius.yaml   |λ|² ~ U[r_min², r_max²], arg λ ~ U[0, 2π]:  r_min × r_max grid
    phase_range.yaml   |λ| ∈ [0.9, 0.999], arg λ ~ U[0, max_phase]:  max_phase grid × 2 seeds

with ``data.lag=k`` and ``data.seq_len=max(128, 2k)`` added to every trial (so that at least half
of each window has a target). Reported: the final ``val/rel_err`` of every trial, as heatmaps of
error against (r_min, lag) for each r_max, and (max_phase, lag) averaged over seeds.

The memory a ring affords is |λ|^k: with r_min = 0 most eigenvalues forget a lag of 256 at once
(0.9^256 = 2e-12), while r_max = 0.9999 keeps 97% of it. The phase sets which frequencies the
state resolves: with max_phase = 0 the eigenvalues start real (B and C stay complex), the case
sections 2-3 of docs/RESULTS.md show cannot isolate one lagged input at init.

Each sweep is an ordinary sweep directory under ``<out>/ring_phase[_quick]/lag<k>/`` (its
``results.csv``, ``results.png`` and trial records); finished trials are not trained again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm_train.analysis.report import Result, project_root, pyplot, quiet_lightning, torch_threads

SWEEPS = ("ring_radius", "phase_range")


@dataclass(frozen=True)
class Setting:
    lags: tuple[int, ...]
    steps: int
    model: tuple[str, ...] = ()  # model overrides on top of configs/experiment/default.yaml
    threads: int = 1

    def seq_len(self, lag: int) -> int:
        return max(128, 2 * lag)

    def overrides(self, lag: int, runs: Path) -> list[str]:
        return [f"data.lag={lag}", f"data.seq_len={self.seq_len(lag)}", f"trainer.max_steps={self.steps}",
                f"trainer.val_check_interval={self.steps}", f"checkpoint.every_n_steps={self.steps}",
                "trainer.enable_progress_bar=false", "logger.mode=disabled", f"runs_dir={runs}",
                "checkpoint.resume=auto", *self.model]


QUICK = Setting(lags=(16, 64), steps=150, model=("model.d_model=32", "model.n_layers=1", "model.d_state=32"))
FULL = Setting(lags=(16, 64, 256), steps=300)  # the sweep files suggest 300 steps for a local run


def sweep_path(name: str) -> Path:
    """configs/sweeps/<name>.yaml of this checkout (the sweeps' commands name configs relative to it)."""
    return project_root() / "configs" / "sweeps" / f"{name}.yaml"


def run_sweeps(root: Path, setting: Setting, sweeps: dict[str, Path] | None = None) -> list[dict]:
    """Every trial of each sweep (name -> file; default: the shipped ``SWEEPS``) at each lag: rows
    ``{"sweep", "lag", "params", "status", "rel_err", "run_dir"}``."""
    from ssm_train.sweeps.local import run_local
    from ssm_train.sweeps.validate import read_sweep

    rows = []
    with torch_threads(setting.threads):
        for lag in setting.lags:
            out = root / f"lag{lag}"
            for name, path in (sweeps or {s: sweep_path(s) for s in SWEEPS}).items():
                # the sweeps' commands name their configs relative to the checkout, as the CLI reads them
                with contextlib.chdir(project_root()), quiet_lightning():
                    sweep = read_sweep(path, setting.overrides(lag, (out / "runs").resolve()))
                    records = run_local(sweep, None, out.resolve())
                for r in records:
                    rows.append({"sweep": name, "lag": lag, "params": r["params"], "status": r["status"],
                                 "rel_err": r.get("metrics", {}).get("val/rel_err", float("nan")),
                                 "run_dir": r["run_dir"]})
    return rows


def radius_grid(rows: list[dict], lags: tuple[int, ...]) -> tuple[list, list, np.ndarray]:
    """(r_mins, r_maxs, err[r_max, r_min, lag]) of the ring_radius trials."""
    sel = [r for r in rows if r["sweep"] == "ring_radius"]
    r_mins = sorted({r["params"]["model.init.r_min"] for r in sel})
    r_maxs = sorted({r["params"]["model.init.r_max"] for r in sel})
    err = np.full((len(r_maxs), len(r_mins), len(lags)), np.nan)
    for r in sel:
        err[r_maxs.index(r["params"]["model.init.r_max"]), r_mins.index(r["params"]["model.init.r_min"]),
            lags.index(r["lag"])] = r["rel_err"]
    return r_mins, r_maxs, err


def phase_grid(rows: list[dict], lags: tuple[int, ...]) -> tuple[list, np.ndarray, np.ndarray]:
    """(max_phases, mean err[phase, lag] over seeds, its spread max - min)."""
    sel = [r for r in rows if r["sweep"] == "phase_range"]
    phases = sorted({r["params"]["model.init.max_phase"] for r in sel})
    vals: dict[tuple[int, int], list[float]] = {}
    for r in sel:
        vals.setdefault((phases.index(r["params"]["model.init.max_phase"]), lags.index(r["lag"])), []).append(
            r["rel_err"])
    mean = np.full((len(phases), len(lags)), np.nan)
    spread = np.full_like(mean, np.nan)
    for (i, j), v in vals.items():
        mean[i, j], spread[i, j] = np.mean(v), np.max(v) - np.min(v)
    return phases, mean, spread


# ------------------------------------------------------------------------ ssm-train reproduce ring_phase


def reproduce(quick: bool, out: Path) -> Result:
    setting = QUICK if quick else FULL
    rows = run_sweeps(out / ("ring_phase_quick" if quick else "ring_phase"), setting)
    lags = setting.lags
    meta = {"lags": list(lags), "steps": setting.steps, "seq_len": [setting.seq_len(k) for k in lags],
            "model_overrides": list(setting.model), "base": "configs/experiment/default.yaml",
            "sweeps": [f"configs/sweeps/{s}.yaml" for s in SWEEPS]}
    r_mins, r_maxs, err = radius_grid(rows, lags)
    model = "default.yaml's model" + (f" with {', '.join(setting.model)}" if setting.model else "")
    md = [f"Final `val/rel_err` on the copy task y_t = u_(t−lag), {model}, {setting.steps} steps, "
          f"seq_len max(128, 2·lag). `configs/sweeps/ring_radius.yaml` (arg λ ~ U[0, 2π]):", "",
          "| r_max | r_min | " + " | ".join(f"lag {k}" for k in lags) + " |",
          "|---|---" + "|---" * len(lags) + "|"]
    for a, r_max in enumerate(r_maxs):
        for b, r_min in enumerate(r_mins):
            md.append(f"| {r_max:g} | {r_min:g} | " + " | ".join(f"{e:.3f}" for e in err[a, b]) + " |")
    phases, mean, spread = phase_grid(rows, lags)
    md += ["", "`configs/sweeps/phase_range.yaml` (|λ| ∈ [0.9, 0.999]; mean over seeds 0, 1, in parentheses "
           "max − min):", "", "| max_phase | " + " | ".join(f"lag {k}" for k in lags) + " |",
           "|---" * (len(lags) + 1) + "|"]
    for i, p in enumerate(phases):
        md.append(f"| {p:.4g} | " + " | ".join(f"{m:.3f} ({s:.3f})" for m, s in zip(mean[i], spread[i])) + " |")
    return {"meta": meta, "rows": rows}, lambda p: plot(rows, lags, p), "\n".join(md)


def plot(rows: list[dict], lags: tuple[int, ...], path: Path) -> None:
    plt = pyplot()
    r_mins, r_maxs, err = radius_grid(rows, lags)
    phases, mean, _ = phase_grid(rows, lags)
    panels = [(err[a], [f"{r:g}" for r in r_mins], "r_min", f"ring_radius, r_max = {r_max:g}")
              for a, r_max in enumerate(r_maxs)]
    panels.append((mean, [f"{p:.3g}" for p in phases], "max_phase", "phase_range, |λ| ∈ [0.9, 0.999]"))
    logs = np.log10(np.clip(np.concatenate([g.ravel() for g, *_ in panels]), 1e-4, None))
    vmin, vmax = float(np.nanmin(logs)), max(float(np.nanmax(logs)), float(np.nanmin(logs)) + 0.1)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 1.0 * len(lags) * len(panels), 3.4),
                             layout="constrained", squeeze=False)
    for k, (ax, (grid, labels, ylabel, title)) in enumerate(zip(axes.flat, panels)):
        im = ax.imshow(np.log10(np.clip(grid, 1e-4, None)), vmin=vmin, vmax=vmax, cmap="viridis_r",
                       aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            dark = np.log10(max(v, 1e-4)) > (vmin + vmax) / 2
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if dark else "k")
        ax.set_xticks(range(len(lags)), [str(k) for k in lags])
        ax.set_yticks(range(len(labels)), labels if k in (0, len(panels) - 1) else [""] * len(labels))
        ax.set_xlabel("lag")
        if k in (0, len(panels) - 1):
            ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="log10 val/rel_err", shrink=0.9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
