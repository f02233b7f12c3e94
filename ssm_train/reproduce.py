"""``ssm-train reproduce NAME [--quick] [--out DIR]``: regenerate one of the paper's results.

    vandermonde     κ(V) = σ_max/σ_min of V[i, j] = λ_i^j (N = L) per spectrum   (analysis/vandermonde.py)
    reconstruction  least-squares recovery of the last L inputs from the state    (analysis/reconstruction.py)
    trained         linear recurrence + MLP, real vs complex, error against N     (analysis/trained.py)

Each writes ``DIR/NAME.json`` (the numbers: ``{"meta": {...}, "rows": [...]}``), ``DIR/NAME.png``
(the figure) and its section of ``DIR/report.md`` (replaced when run again, so the report always
holds the latest numbers of every result). ``--quick`` uses fewer sizes and seeds (and for
``trained`` a shorter budget: minutes on two CPU cores); the full runs are what docs/RESULTS.md
reports.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ssm_train.analysis.spectra import SPECTRA
from ssm_train.errors import ConfigError

DEFAULT_OUT = "results"


# ------------------------------------------------------------------------------------ results


def reproduce_vandermonde(quick: bool) -> tuple[dict, Callable[[Path], None], str]:
    from ssm_train.analysis.vandermonde import EPS, condition_numbers

    sizes, seeds = [8, 16, 32, 64, 128], list(range(3 if quick else 10))
    rows = condition_numbers(sizes, seeds)
    meta = {"sizes": sizes, "seeds": seeds, "saturation": "cond > 1/(N*eps): float64 cannot resolve σ_min",
            "eps": EPS}
    med = _median_table(rows, "cond")
    med_real = _median_table(rows, "cond_real_system")
    sat = {(r["spectrum"], r["N"]) for r in rows if r["saturated"]}
    md = [f"Median over {len(seeds)} seeds of κ(V) = σ_max/σ_min, V[i, j] = λ_i^j, N = L "
          "(`*`: float64 cannot resolve σ_min, κ > 1/(N·eps); the value is what float64 gives). "
          "In parentheses: κ of the real system [Re V; Im V] used to read real inputs.", "",
          "| spectrum | " + " | ".join(f"N = {n}" for n in sizes) + " |",
          "|---" * (len(sizes) + 1) + "|"]
    for name in SPECTRA:
        cells = [f"{med[name, n]:.2g}{'*' if (name, n) in sat else ''} ({med_real[name, n]:.2g})" for n in sizes]
        md.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return {"meta": meta, "rows": rows}, lambda p: _plot_vandermonde(rows, sizes, EPS, p), "\n".join(md)


def reproduce_reconstruction(quick: bool) -> tuple[dict, Callable[[Path], None], str]:
    from ssm_train.analysis.reconstruction import error_table, memory_curves

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
            cells = [_median([r["rel_err"] for r in rows if r["spectrum"] == name and r["N"] == n == r["L"]
                              and r["noise"] == noise]) for n in sizes]
            md.append(f"| `{name}` | {noise:g} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    md += ["", "At equal *real* state size (a complex state of size N holds 2N reals): complex spectra "
           "with N = L/2 against real ones with N = L:", "",
           "| spectrum | N | noise | " + " | ".join(f"L = {L}" for L in sizes[1:]) + " |",
           "|---|---|---" + "|---" * (len(sizes) - 1) + "|"]
    for name in SPECTRA:
        real = name.startswith("real")
        for noise in noises:
            cells = [_median([r["rel_err"] for r in rows if r["spectrum"] == name and r["L"] == L
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
                         f"{_median([mem_l if k is None else k for k in lags]):.0f}")
        md.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return ({"meta": meta, "rows": rows, "memory": memory},
            lambda p: _plot_reconstruction(rows, memory, sizes, mem_n, mem_l, p), "\n".join(md))


def reproduce_trained(quick: bool, out: Path) -> tuple[dict, Callable[[Path], None], str]:
    from ssm_train.analysis import trained

    setting = trained.QUICK if quick else trained.FULL
    rows = trained.train_all(out, setting, progress=lambda s: print(s, flush=True))
    meta = {"setting": setting.__dict__, "overrides": setting.overrides(), "arms": trained.ARMS,
            "tasks": trained.TASKS, "train_runtime_s": round(sum(r["runtime_s"] for r in rows), 1)}
    md = [f"Relative error of the trained model on held-out samples of its training stream (mean ± std over "
          f"seeds {list(setting.seeds)}; in parentheses the framework's final `val/rel_err`, mean), "
          f"{setting.n_layers} layer(s), d_model {setting.d_model}, {setting.steps} steps, seq_len "
          f"{setting.seq_len}, lag {setting.lag}, radii [0.9, 0.999]:", ""]
    for task in setting.tasks:
        md += [f"**{task}**", "", "| N (d_state) | complex (ring) | real |", "|---|---|---|"]
        for n in setting.sizes:
            cells = []
            for arm in trained.ARMS:
                sel = [r for r in rows if r["task"] == task and r["arm"] == arm and r["N"] == n]
                held, val = [r["held_out_rel_err"] for r in sel], [r["rel_err"] for r in sel]
                cells.append(f"{np.mean(held):.3f} ± {np.std(held):.3f} ({np.mean(val):.3f})")
            md.append(f"| {n} | " + " | ".join(cells) + " |")
        md.append("")
    return ({"meta": meta, "rows": rows}, lambda p: _plot_trained(rows, setting, p), "\n".join(md))


RESULTS = ("vandermonde", "reconstruction", "trained")


def reproduce(name: str, quick: bool, out: Path) -> dict:
    """Compute result ``name``; write ``out/name.json``, ``out/name.png`` and its report section."""
    if name not in RESULTS:
        raise ConfigError(f"reproduce: unknown result '{name}'; valid: {', '.join(RESULTS)}")
    out.mkdir(parents=True, exist_ok=True)
    command = f"ssm-train reproduce {name}{' --quick' if quick else ''} --out {out}"
    t0 = time.perf_counter()
    if name == "trained":
        data, plot, md = reproduce_trained(quick, out)
    else:
        data, plot, md = {"vandermonde": reproduce_vandermonde, "reconstruction": reproduce_reconstruction}[name](quick)
    runtime = time.perf_counter() - t0
    data["meta"] = {"name": name, "command": command, "quick": quick, "runtime_s": round(runtime, 1), **data["meta"]}
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    plot(out / f"{name}.png")
    trained_s = data["meta"].get("train_runtime_s")  # runs reused from an earlier call keep their time
    timing = f"{runtime:.0f} s" + (f"; training time of its runs {trained_s:.0f} s" if trained_s else "")
    section = f"## {name}\n\n`{command}` ({timing})\n\n![{name}]({name}.png)\n\n{md}\n"
    write_section(out / "report.md", name, section)
    return data


def write_section(report: Path, name: str, text: str) -> None:
    """Replace the section of ``name`` in the report (between its markers), or append it."""
    begin, end = f"<!-- reproduce:{name} -->", f"<!-- /reproduce:{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = report.read_text() if report.is_file() else "# Reproduced results\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + block
    report.write_text(new)


# ---------------------------------------------------------------------------------------- plots


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def _median_table(rows: list[dict], key: str) -> dict[tuple[str, int], float]:
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        groups[r["spectrum"], r["N"]].append(r[key])
    return {k: _median(v) for k, v in groups.items()}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_vandermonde(rows: list[dict], sizes: list[int], eps: float, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "cond", "κ(V), V[i,j] = λ_i^j, N = L"),
                           (axes[1], "cond_real_system", "κ([Re V; Im V]) (real inputs)")):
        med = _median_table(rows, key)
        for name in SPECTRA:
            ys = [med[name, n] for n in sizes]
            sat = [any(r["saturated"] for r in rows if r["spectrum"] == name and r["N"] == n) for n in sizes]
            line, = ax.plot(sizes, ys, "-", label=name)
            ax.scatter(sizes, ys, c=[line.get_color() if not s else "none" for s in sat],
                       edgecolors=line.get_color(), s=22, zorder=3)
        ax.axhline(1 / eps, color="k", ls=":", lw=0.8)
        ax.text(sizes[0], 1 / eps * 3, "1/eps (float64)", fontsize=6)
        ax.set(xscale="log", yscale="log", xlabel="N = L", title=title)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("condition number (median over seeds)")
    axes[0].legend(fontsize=7)
    fig.text(0.01, 0.01, "hollow: saturated (float64 cannot resolve σ_min)", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reconstruction(rows: list[dict], memory: list[dict], sizes: list[int], mem_n: int, mem_l: int,
                         path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    fixed_n = sizes[len(sizes) // 2]
    for name in SPECTRA:
        color = None
        for noise, style in ((0.0, "-"), (1e-6, "--")):
            ys = [_median([r["rel_err"] for r in rows if r["spectrum"] == name and r["N"] == n == r["L"]
                           and r["noise"] == noise]) for n in sizes]
            line, = axes[0].plot(sizes, ys, style, marker="o", ms=3, color=color,
                                 label=name if noise == 0 else None)
            color = line.get_color()
            ys = [_median([r["rel_err"] for r in rows if r["spectrum"] == name and r["N"] == fixed_n
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


def _plot_trained(rows: list[dict], setting, path: Path) -> None:
    plt = _pyplot()
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
        ax.set_xticks(setting.sizes, [str(n) for n in setting.sizes])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reproduce", help="regenerate a result of the paper (JSON, PNG, report section)",
                       description=__doc__.split("\n\n")[0])
    r.add_argument("name", metavar="NAME", help=f"one of: {', '.join(RESULTS)}")
    r.add_argument("--quick", action="store_true", help="fewer sizes, seeds and steps (minutes on a CPU)")
    r.add_argument("--out", default=DEFAULT_OUT, help=f"output directory [{DEFAULT_OUT}]")


def cmd_reproduce(args: argparse.Namespace) -> int:
    data = reproduce(args.name, args.quick, Path(args.out))
    out = Path(args.out)
    print(f"reproduce {args.name}: {len(data['rows'])} rows in {out / (args.name + '.json')}, figure "
          f"{out / (args.name + '.png')}, report {out / 'report.md'} ({data['meta']['runtime_s']} s)",
          file=sys.stdout, flush=True)
    return 0
