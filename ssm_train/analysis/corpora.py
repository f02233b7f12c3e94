"""Real against complex eigenvalues on the real corpora: the five ``configs/experiment/`` runs, three arms.

Each experiment (``configs/experiment/<name>.yaml``: splice junctions and TF binding sites
classified by a bidirectional LRU, E. coli and Austen modelled by an LRU LM, WordNet glosses
classified byte by byte) is trained as configured, once per arm:

    complex        the experiment as it ships: kind=lru, ring init, N = model.d_state complex states
    real (N)       kind=real, init=real (λ ∈ (0, 1), real B and C), the same N: half the state's reals
    real (2N)      kind=real, init=real, d_state = 2N: as many real numbers of state as the complex arm

with the experiment's own radii (``model.init.r_min``, ``r_max``), optimiser, steps and seed. The
real arm at 2N has about as many recurrent parameters as the complex arm at N (B and C: 2NH reals
each way). Reported per run: the experiment's primary metric on its held-out split (accuracy for
the classifiers, bits per token for the LMs), the parameter count and the wall time.

Every run is an ordinary run directory under ``<out>/corpora[_quick]/runs/<experiment>-<arm>/``; a
finished run (its ``result.json`` with the same overrides) is not trained again.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ssm_train.analysis.report import Result, project_root, pyplot, quiet_lightning, torch_threads

EXPERIMENTS = ("splice", "tfbs", "dna_ecoli", "text_austen", "wordnet")
ARMS = ("complex", "real_N", "real_2N")
ARM_LABELS = {"complex": "complex (N)", "real_N": "real (N)", "real_2N": "real (2N)"}


@dataclass(frozen=True)
class Setting:
    experiments: tuple[str, ...] = EXPERIMENTS
    steps: int | None = None  # None: the experiment's own trainer.max_steps
    limit_val_batches: int | None = None
    threads: int = 2

    def overrides(self) -> list[str]:
        out = ["trainer.enable_progress_bar=false", "logger.mode=disabled", "checkpoint.resume=auto"]
        if self.steps is not None:
            out += [f"trainer.max_steps={self.steps}", f"trainer.val_check_interval={self.steps}",
                    f"checkpoint.every_n_steps={self.steps}"]
        if self.limit_val_batches is not None:
            out.append(f"trainer.limit_val_batches={self.limit_val_batches}")
        return out


QUICK = Setting(steps=60, limit_val_batches=8)
FULL = Setting()


def arm_overrides(arm: str, d_state: int) -> list[str]:
    if arm == "complex":
        return []
    n = d_state if arm == "real_N" else 2 * d_state
    return ["model.kind=real", "model.init.name=real", f"model.d_state={n}"]


def train_one(runs: Path, setting: Setting, experiment: str, arm: str) -> dict:
    """One run, or its stored result: ``{"experiment", "arm", "metric", "value", "metrics", "d_state",
    "params", "runtime_s", "overrides"}``."""
    from ssm_train.config import load_config
    from ssm_train.run import fit

    name = f"{experiment}-{arm}"
    stored = runs / name / "result.json"
    config = f"configs/experiment/{experiment}.yaml"
    with contextlib.chdir(project_root()):
        base = load_config([config], [])
        overrides = [*setting.overrides(), *arm_overrides(arm, base.model.d_state), f"runs_dir={runs}", f"name={name}"]
        if stored.is_file():
            row = json.loads(stored.read_text())
            if row.get("overrides") == overrides:
                return row
        cfg = load_config([config], overrides)
        t0 = time.perf_counter()
        (runs / name).mkdir(parents=True, exist_ok=True)
        with (runs / name / "fit.log").open("w") as log, contextlib.redirect_stdout(log), quiet_lightning():
            result = fit(cfg)
    row = {"experiment": experiment, "arm": arm, "metric": result.metric, "value": result.value,
           "metrics": result.metrics, "d_state": cfg.model.d_state, "params": parameter_count(runs / name),
           "steps": result.step, "runtime_s": round(time.perf_counter() - t0, 1), "overrides": overrides}
    stored.write_text(json.dumps(row, indent=1))
    return row


def parameter_count(run_dir: Path) -> int:
    """Trained parameters of the run's model (its last.ckpt)."""
    from ssm_train.generate import load_backbone

    model, _, _ = load_backbone(run_dir / "checkpoints" / "last.ckpt")
    return sum(p.numel() for p in model.parameters())


def train_all(out: Path, setting: Setting, progress=print) -> list[dict]:
    runs = out.resolve() / "runs"
    rows = []
    with torch_threads(setting.threads):
        for experiment in setting.experiments:
            for arm in ARMS:
                row = train_one(runs, setting, experiment, arm)
                progress(f"corpora {experiment}-{arm}: {row['metric']}={row['value']:.4f} ({row['runtime_s']} s)")
                rows.append(row)
    return rows


def _cell(row: dict) -> str:
    v = row["value"]
    return f"{100 * v:.1f}%" if "acc" in row["metric"] else f"{v:.3f}"


# -------------------------------------------------------------------------- ssm-train reproduce corpora


def reproduce(quick: bool, out: Path) -> Result:
    setting = QUICK if quick else FULL
    rows = train_all(out / ("corpora_quick" if quick else "corpora"), setting,
                     progress=lambda s: print(s, flush=True))
    meta = {"setting": setting.__dict__, "arms": {a: arm_overrides(a, 1) for a in ARMS},
            "train_runtime_s": round(sum(r["runtime_s"] for r in rows), 1)}
    steps = "each experiment's own steps" if setting.steps is None else f"{setting.steps} steps"
    md = [f"Held-out primary metric per experiment and arm ({steps}, seed 0; in parentheses the parameter "
          "count and the wall time). Accuracy: higher is better; bits per token (`bpt`): lower is better.", "",
          "| experiment | metric | " + " | ".join(ARM_LABELS[a] for a in ARMS) + " |",
          "|---|---" + "|---" * len(ARMS) + "|"]
    for e in setting.experiments:
        sel = {r["arm"]: r for r in rows if r["experiment"] == e}
        cells = [f"{_cell(sel[a])} ({sel[a]['params']:,}, {sel[a]['runtime_s']:.0f} s)" for a in ARMS]
        md.append(f"| `{e}` (N = {sel['complex']['d_state']}) | {sel['complex']['metric']} | " + " | ".join(cells) + " |")
    return {"meta": meta, "rows": rows}, lambda p: plot(rows, setting, p), "\n".join(md)


def plot(rows: list[dict], setting: Setting, path: Path) -> None:
    plt = pyplot()
    exps = list(setting.experiments)
    fig, axes = plt.subplots(1, len(exps), figsize=(2.6 * len(exps), 3.0), squeeze=False)
    for ax, e in zip(axes.flat, exps):
        sel = {r["arm"]: r for r in rows if r["experiment"] == e}
        vals = [sel[a]["value"] for a in ARMS]
        ax.bar(range(len(ARMS)), vals, color=["C0", "C1", "C2"])
        ax.set_xticks(range(len(ARMS)), [ARM_LABELS[a] for a in ARMS], rotation=30, fontsize=7)
        lo, hi = min(vals), max(vals)
        ax.set_ylim(max(0.0, lo - 0.6 * (hi - lo + 1e-3)), hi + 0.3 * (hi - lo + 1e-3))
        ax.set_title(f"{e}: {sel[ARMS[0]]['metric']}", fontsize=8)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

