"""``ssm-train sweep FILE [--count N] [--local | --slurm | --collect | --check] [key=value ...]``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ssm_train.sweeps.agent import run_online
from ssm_train.sweeps.local import run_local
from ssm_train.sweeps.propose import n_trials, propose
from ssm_train.sweeps.report import best_trial
from ssm_train.sweeps.slurm import collect, submit_slurm
from ssm_train.sweeps.spec import DEFAULT_DIR, Sweep, describe
from ssm_train.sweeps.trials import FINISHED
from ssm_train.sweeps.validate import read_sweep


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ssm_train import sweeps  # its docstring: initialised by the time the CLI builds its parser

    s = sub.add_parser("sweep", help="run a W&B-format sweep: online, --local or --slurm",
                       description=sweeps.__doc__.split("\n\n")[0])
    s.add_argument("file", metavar="FILE", help="sweep file (configs/sweeps/*.yaml)")
    s.add_argument("--count", type=int, help="trials in the sweep (grid: default all; random/bayes: "
                   "default the file's run_cap)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run the trials here, one after another")
    mode.add_argument("--slurm", action="store_true", help="submit the trials as a SLURM job array")
    mode.add_argument("--collect", action="store_true", help="gather finished SLURM trials into results")
    mode.add_argument("--check", action="store_true", help="validate the file and print the trials")
    s.add_argument("--dir", default=DEFAULT_DIR, help="where <name>/results.csv goes [sweeps]")
    s.add_argument("--sbatch", default="", metavar="ARGS", help="extra sbatch options, e.g. '--time=1:00:00'")
    s.add_argument("--dry-run", action="store_true", help="--slurm: write the SWEEP_FILE, print sbatch, submit nothing")
    s.add_argument("--wait", action="store_true", help="--slurm: wait for the array (sbatch --wait), then collect")
    s.add_argument("--print-only", action="store_true", help="online: create the sweep, print the agent line")
    s.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides for every trial")


def cmd_sweep(args: argparse.Namespace) -> int:
    sweep = read_sweep(args.file, args.overrides)
    out = Path(args.dir)
    if args.check:
        return _check(sweep, args.count)
    if args.local:
        records = run_local(sweep, args.count, out)
    elif args.slurm:
        sub = submit_slurm(sweep, args.count, out, shlex.split(args.sbatch), args.dry_run, args.wait)
        if not (args.wait and sub.job_id):
            return 0
        records = collect(sweep, out)
    elif args.collect:
        records = collect(sweep, out)
    else:
        records = run_online(sweep, args.count, args.print_only, out)
        if records is None:
            return 0
    _summary(sweep, records, out)
    return 0


def _check(sweep: Sweep, count: int | None) -> int:
    """``--check``: the file is valid (read_sweep did that); list the trials grid and random would
    run (bayes proposals depend on results, so none are listed)."""
    n = n_trials(sweep, count) if sweep.method == "grid" or count or sweep.spec.get("run_cap") else 0
    print(f"{sweep.path}: valid; sweep {sweep.name}, method {sweep.method}, configs {list(sweep.configs)}")
    for i in range(n if sweep.method != "bayes" else 0):
        print(f"  {sweep.trial_name(i)}: {describe(propose(sweep, i, []))}")
    return 0


def _summary(sweep: Sweep, records: list[dict], out: Path) -> None:
    """The last lines: how many trials finished, where the table is, and the best trial."""
    done = [r for r in records if r["status"] == FINISHED]
    print(f"sweep {sweep.name}: {len(done)}/{len(records)} trials finished; {out / sweep.name / 'results.csv'}",
          flush=True)
    best = best_trial(sweep, done)
    if best:
        print(f"sweep {sweep.name}: best {best['name']} {sweep.metric}={best['metrics'][sweep.metric]:.6g} "
              f"({describe(best['params'])})", flush=True)
