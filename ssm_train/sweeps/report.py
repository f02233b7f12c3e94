"""What a sweep leaves for reading: ``results.csv``, ``results.png`` and the best trial.

Everything here is rebuilt from the trial records alone, so any runner (and ``--collect``) can
write it at any time and get the same files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ssm_train.atomic import atomic_write, atomic_write_text
from ssm_train.sweeps.spec import Sweep, flatten
from ssm_train.sweeps.trials import FINISHED, TrialStore


def write_results(sweep: Sweep, out_dir: Path) -> list[dict]:
    """``results.csv`` (one row per trial) and ``results.png`` (metric against each parameter),
    each replaced atomically: a reader (or a sweep killed meanwhile) never sees half a table."""
    root = out_dir / sweep.name
    records = TrialStore(root).all()
    atomic_write_text(root / "results.csv", results_csv(records))
    metric = sweep.metric or next((r["metric"] for r in records if r.get("metric")), None)
    if metric:
        plot_results(sweep, records, metric, root / "results.png")
    return records


def results_csv(records: list[dict]) -> str:
    """One row per trial: index, name, status, its parameters (arms as dotted columns), final
    metrics (empty until finished) and run directory."""
    flat = [{k: v for name, value in r["params"].items() for k, v in _flat_param(name, value).items()}
            for r in records]
    param_cols = list(dict.fromkeys(k for f in flat for k in f))
    metric_cols = sorted({k for r in records for k in r.get("metrics", {})})
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(["trial", "name", "status", *param_cols, *metric_cols, "run_dir"])
    for r, fp in zip(records, flat):
        w.writerow([r["index"], r["name"], r["status"], *(fp.get(c, "") for c in param_cols),
                    *(r.get("metrics", {}).get(c, "") for c in metric_cols), r["run_dir"]])
    return out.getvalue()


def _flat_param(name: str, value: Any) -> dict[str, Any]:
    return {f"{name}.{k}": v for k, v in flatten(value).items()} if isinstance(value, dict) else {name: value}


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in flatten(value).items())
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_results(sweep: Sweep, records: list[dict], metric: str, path: Path) -> Path | None:
    """One panel per swept parameter: the metric of every finished trial against its value; with one
    other parameter of few values, one line per value of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["status"] == FINISHED and metric in r.get("metrics", {})]
    names = [k for k, p in sweep.parameters.items() if "value" not in p]
    if not done or not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes.flat, names):
        _panel(ax, name, [k for k in names if k != name], done, metric)
    fig.suptitle(f"sweep {sweep.name} ({sweep.method}, {len(done)} finished trials)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def _panel(ax, name: str, others: list[str], done: list[dict], metric: str) -> None:
    """The metric against parameter ``name``; one line per value of the other parameter when
    there is exactly one other with at most 8 values (else a scatter, which stays readable)."""
    values = [r["params"].get(name) for r in done]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    order = sorted(set(map(_label, values)), key=lambda s: float(s) if numeric else s)
    xs = [v if numeric else order.index(_label(v)) for v in values]
    groups = {_label(r["params"].get(others[0])) for r in done} if len(others) == 1 else set()
    if groups and len(groups) <= 8:
        for g in sorted(groups):
            pts = sorted((x, r["metrics"][metric]) for x, r in zip(xs, done)
                         if _label(r["params"].get(others[0])) == g)
            ax.plot(*zip(*pts), "o-", ms=4, label=f"{others[0].split('.')[-1]}={g}")
        ax.legend(fontsize=6)
    else:
        ax.scatter(xs, [r["metrics"][metric] for r in done], s=14)
    if not numeric:
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=6)
    elif min(values) > 0 and max(values) / min(values) > 20:
        ax.set_xscale("log")
    if all(r["metrics"][metric] > 0 for r in done):
        ax.set_yscale("log")
    ax.set_xlabel(name, fontsize=8)
    ax.set_ylabel(metric, fontsize=8)
    ax.grid(alpha=0.3)


def best_trial(sweep: Sweep, records: list[dict]) -> dict | None:
    """The finished trial with the best sweep metric (per the file's ``metric.goal``)."""
    scored = [r for r in records if r["status"] == FINISHED and sweep.metric in r.get("metrics", {})]
    if not scored:
        return None
    pick = max if sweep.goal == "maximize" else min
    return pick(scored, key=lambda r: r["metrics"][sweep.metric])
