"""``ssm-train reproduce NAME [--quick] [--out DIR]``: regenerate one of the paper's results.

    vandermonde     κ(V) = σ_max/σ_min of V[i, j] = λ_i^j (N = L) per spectrum   (analysis/vandermonde.py)
    reconstruction  least-squares recovery of the last L inputs from the state    (analysis/reconstruction.py)
    trained         linear recurrence + MLP, real vs complex, error against N     (analysis/trained.py)

A result is one module with ``reproduce(quick, out) -> Result`` (``analysis/report.py``) and one
line in ``RESULTS`` below.

Each writes ``DIR/NAME.json`` (the numbers: ``{"meta": {...}, "rows": [...]}``), ``DIR/NAME.png``
(the figure) and its section of ``DIR/report.md`` (replaced when run again, so the report always
holds the latest numbers of every result). ``--quick`` uses fewer sizes and seeds (and for
``trained`` a shorter budget: minutes on two CPU cores); the full runs are what docs/RESULTS.md
reports.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ssm_train.analysis.report import Result
from ssm_train.errors import ConfigError

DEFAULT_OUT = "results"


# ------------------------------------------------------------------------------------ results


# name -> "module:function", imported only when run (the CLI starts without torch). A new result is
# one module with ``reproduce(quick, out) -> Result`` and one line here.
RESULTS: dict[str, str] = {
    "vandermonde": "ssm_train.analysis.vandermonde:reproduce",
    "reconstruction": "ssm_train.analysis.reconstruction:reproduce",
    "trained": "ssm_train.analysis.trained:reproduce",
    "gradients": "ssm_train.analysis.gradients:reproduce",
    "width": "ssm_train.analysis.width:reproduce",
    "real_suffices": "ssm_train.analysis.real_suffices:reproduce",
    "ode": "ssm_train.analysis.ode:reproduce",
    "ring_phase": "ssm_train.analysis.ring_phase:reproduce",
    "corpora": "ssm_train.analysis.corpora:reproduce",
}


def _result_fn(name: str) -> Callable[[bool, Path], Result]:
    module, fn = RESULTS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def reproduce(name: str, quick: bool, out: Path) -> dict:
    """Compute result ``name``; write ``out/name.json``, ``out/name.png`` and its report section."""
    if name not in RESULTS:
        raise ConfigError(f"reproduce: unknown result '{name}'; valid: {', '.join(RESULTS)}")
    out.mkdir(parents=True, exist_ok=True)
    command = f"ssm-train reproduce {name}{' --quick' if quick else ''} --out {out}"
    t0 = time.perf_counter()
    data, plot, md = _result_fn(name)(quick, out)
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
