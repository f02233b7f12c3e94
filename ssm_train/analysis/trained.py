"""Trained linear recurrence + MLP: real against complex eigenvalues at equal state size.

The model is the framework's own (``ssm_train.run.fit``): a linear encoder of the scalar input,
``n_layers`` pre-norm blocks (diagonal linear recurrence, then a GLU MLP), a linear head. Two arms
differ only in the recurrence, with the same radii |λ| in [0.9, 0.999] at init:

    complex   kind=lru,  init=ring  (arg λ ~ U[0, 2π], complex B and C)
    real      kind=real, init=real  (λ > 0, real B and C: the LRU paper's real arm)

State size N = ``model.d_state`` is equal in both; a complex state holds 2N real numbers, so the
table also lets one compare complex N with real 2N. Tasks (``ssm_train.data.synthetic``), inputs
white Gaussian noise:

    copy        y_t = u_{t-lag}                        (memorisation of one lagged input)
    nonlinear   y_t = f(u_t, u_{t-l1}, u_{t-l2}, u_{t-lag})  (f a fixed random tanh network)

Reported per task, arm, N and seed: the relative error sqrt(Σ|ŷ - y|² / Σ|y|²) of the trained
model, twice:

* ``rel_err``: the framework's final ``val/rel_err`` (its fixed validation batches: samples from
  index 2^40 of the same stream, ``synthetic.VAL_INDEX_OFFSET``, so the same random f);
* ``held_out_rel_err``: on 256 fresh samples of the training stream (sample indices from 10^9, never
  reached in training), computed here from ``last.ckpt``. The training stream is infinite and never
  repeats, so both are test errors of the map the model was trained on, on different samples
  (tests/data/test_synthetic.py checks that validation scores the training stream's f).

Every run is an ordinary run directory under ``<out>/runs/``; a finished run (its ``result.json``)
is not trained again when the command is repeated.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssm_train.analysis.report import Result, log_xticks, pyplot, quiet_lightning, torch_threads

ARMS: dict[str, list[str]] = {
    "complex": ["model.kind=lru", "model.init.name=ring"],
    "real": ["model.kind=real", "model.init.name=real"],
}
TASKS: dict[str, list[str]] = {
    "copy": ["data.kind=copy", "data.window=1"],
    "nonlinear": ["data.kind=nonlinear"],
    "ode": ["data.kind=ode"],  # the forced Duffing response: trained by reproduce ode, not by this result
}


@dataclass(frozen=True)
class Setting:
    """Sizes and budget of one reproduction (``QUICK`` fits in minutes on two CPU cores)."""

    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int
    seq_len: int = 64
    lag: int = 16
    d_model: int = 32
    n_layers: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    tasks: tuple[str, ...] = ("copy", "nonlinear")
    threads: int = 1  # models this small run fastest on one thread (and share a busy machine best)

    def overrides(self) -> list[str]:
        return [
            "model.init.r_min=0.9", "model.init.r_max=0.999", f"model.d_model={self.d_model}",
            f"model.n_layers={self.n_layers}", "model.mlp=glu", f"data.seq_len={self.seq_len}",
            f"data.lag={self.lag}", f"data.batch_size={self.batch_size}", "data.val_batches=8",
            f"optim.lr={self.lr}", "optim.warmup_steps=50", f"trainer.max_steps={self.steps}",
            f"trainer.val_check_interval={self.steps}", "trainer.limit_val_batches=8",
            "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
            f"checkpoint.every_n_steps={self.steps}", "logger.mode=disabled",
        ]


QUICK = Setting(sizes=(4, 8, 16, 32), seeds=(0, 1), steps=400)
FULL = Setting(sizes=(4, 8, 16, 32, 64), seeds=(0, 1, 2), steps=2000)


def run_name(task: str, arm: str, n: int, seed: int) -> str:
    return f"{task}-{arm}-N{n}-s{seed}"


def train_one(out: Path, setting: Setting, task: str, arm: str, n: int, seed: int) -> dict:
    """One run, or its stored result when the settings match: ``{"task", "arm", "N", "seed", "rel_err",
    "held_out_rel_err", "steps", "runtime_s", "setting"}``."""
    from ssm_train.config import load_config
    from ssm_train.run import fit

    runs = out / "runs"
    name = run_name(task, arm, n, seed)
    stored = runs / name / "result.json"
    if stored.is_file():
        row = json.loads(stored.read_text())
        if row.get("setting") == setting.overrides() and "held_out_rel_err" in row:
            return row
    cfg = load_config([], [*setting.overrides(), *TASKS[task], *ARMS[arm], f"model.d_state={n}",
                           f"seed={seed}", f"runs_dir={runs}", f"name={name}", "checkpoint.resume=none"])
    t0 = time.perf_counter()
    (runs / name).mkdir(parents=True, exist_ok=True)
    with (runs / name / "fit.log").open("w") as log, contextlib.redirect_stdout(log), quiet_lightning():
        result = fit(cfg)
    row = {"task": task, "arm": arm, "N": n, "seed": seed, "rel_err": result.value,
           "held_out_rel_err": held_out_error(runs / name), "steps": result.step,
           "runtime_s": round(time.perf_counter() - t0, 2), "setting": setting.overrides()}
    stored.write_text(json.dumps(row, indent=1))
    return row


HELD_OUT_START = 10**9  # first sample index of the held-out set: far beyond steps × batch of any run


def held_out_error(run_dir: Path, samples: int = 256) -> float:
    """sqrt(Σ|ŷ - y|² / Σ|y|²) of the run's last.ckpt on samples HELD_OUT_START.. of its training
    stream (seed = run seed + data.seed_offset, as ``SyntheticDataModule`` draws training data)."""
    import torch

    from ssm_train.config import from_dict
    from ssm_train.data.synthetic import SYNTHETIC_TASKS as SAMPLERS
    from ssm_train.generate import load_backbone

    model, config, _ = load_backbone(run_dir / "checkpoints" / "last.ckpt")
    cfg = from_dict(config)
    seed = cfg.seed + cfg.data.seed_offset
    batch = [SAMPLERS[cfg.data.kind](cfg.data, seed, HELD_OUT_START + i) for i in range(samples)]
    u = torch.stack([b["inputs"] for b in batch])
    y = torch.stack([b["targets"] for b in batch]).double()
    with torch.no_grad():
        err = (model(u).double() - y).pow(2).sum() / y.pow(2).sum()
    return float(err.sqrt())


def train_all(out: Path, setting: Setting, progress=print) -> list[dict]:
    """Every (task, arm, N, seed) of ``setting``, one after another."""
    rows = []
    combos = [(t, a, n, s) for t in setting.tasks for n in setting.sizes for s in setting.seeds for a in ARMS]
    with torch_threads(setting.threads):
        for k, (task, arm, n, seed) in enumerate(combos, 1):
            row = train_one(out, setting, task, arm, n, seed)
            progress(f"trained {k}/{len(combos)} {run_name(task, arm, n, seed)}: val/rel_err={row['rel_err']:.4f} "
                     f"held-out {row['held_out_rel_err']:.4f} ({row['runtime_s']:.1f} s)")
            rows.append(row)
    return rows


# ------------------------------------------------------------------------ ssm-train reproduce trained


def reproduce(quick: bool, out: Path) -> Result:
    setting = QUICK if quick else FULL
    rows = train_all(out, setting, progress=lambda s: print(s, flush=True))
    meta = {"setting": setting.__dict__, "overrides": setting.overrides(), "arms": ARMS,
            "tasks": {t: TASKS[t] for t in setting.tasks}, "train_runtime_s": round(sum(r["runtime_s"] for r in rows), 1)}
    md = [f"Relative error of the trained model on held-out samples of its training stream (mean ± std over "
          f"seeds {list(setting.seeds)}; in parentheses the framework's final `val/rel_err`, mean), "
          f"{setting.n_layers} layer(s), d_model {setting.d_model}, {setting.steps} steps, seq_len "
          f"{setting.seq_len}, lag {setting.lag}, radii [0.9, 0.999]:", ""]
    for task in setting.tasks:
        md += [f"**{task}**", "", "| N (d_state) | complex (ring) | real |", "|---|---|---|"]
        for n in setting.sizes:
            cells = []
            for arm in ARMS:
                sel = [r for r in rows if r["task"] == task and r["arm"] == arm and r["N"] == n]
                held, val = [r["held_out_rel_err"] for r in sel], [r["rel_err"] for r in sel]
                cells.append(f"{np.mean(held):.3f} ± {np.std(held):.3f} ({np.mean(val):.3f})")
            md.append(f"| {n} | " + " | ".join(cells) + " |")
        md.append("")
    return ({"meta": meta, "rows": rows}, lambda p: plot(rows, setting, p), "\n".join(md))


def plot(rows: list[dict], setting, path: Path) -> None:
    plt = pyplot()
    tasks = list(setting.tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for arm, marker in (("complex", "o"), ("real", "s")):
            sel = [[r for r in rows if r["task"] == task and r["arm"] == arm and r["N"] == n] for n in setting.sizes]
            held = [[r["held_out_rel_err"] for r in g] for g in sel]
            mean, std = np.array([np.mean(h) for h in held]), np.array([np.std(h) for h in held])
            bars = ax.errorbar(setting.sizes, mean, yerr=std, marker=marker, ms=4, capsize=2, label=arm)
            ax.plot(setting.sizes, [np.mean([r["rel_err"] for r in g]) for g in sel], ":", lw=1,
                    color=bars[0].get_color(), label=f"{arm}: framework val/rel_err")
        ax.set(xscale="log", yscale="log", xlabel="state size N (d_state)", ylabel="relative error (held out)",
               title=f"{task} (lag {setting.lag}, {setting.steps} steps)")
        log_xticks(ax, setting.sizes)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
