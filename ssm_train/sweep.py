"""Sweeps in W&B's sweep format, run by a W&B agent, here one trial after another, or as a SLURM array.

A sweep file (``configs/sweeps/*.yaml``) is a plain W&B sweep config::

    name: ring-radius
    method: grid                                   # grid | random | bayes
    metric: {name: val/rel_err, goal: minimize}
    parameters:
      model.init.r_min: {values: [0.0, 0.5, 0.9]}  # dotted keys of our config schema
    command: [${env}, ssm-train, fit, -c, configs/experiment/default.yaml, ${args_no_hyphens}]

A stock ``wandb agent`` runs ``command``; ``${args_no_hyphens}`` becomes ``model.init.r_min=0.5``,
a dotted override of the CLI. A parameter may also take whole sub-configs as values (an *arm*),
``model: {values: [{kind: lru, init: {name: ring}}, {kind: real, init: {name: real}}]}``: the agent
passes ``model={'kind': 'real', ...}``, which the CLI merges like any override. That is how keys
that must change together (``model.kind`` with ``model.init.name``) are swept, since W&B has no
conditional parameters. W&B's nested ``parameters:`` blocks are refused: the agent would pass them
as one dict and the ``sweeps`` package's own validation silently drops them.

The same file drives ``ssm-train sweep FILE [--count N] [--local | --slurm] [key=value ...]``:

* (default) W&B online: create the sweep on the server and run an agent (``--print-only`` just
  prints the ``wandb agent`` line);
* ``--local``: the ``sweeps`` package (W&B's engine, offline) proposes trial ``i`` (grid: the i-th
  grid point; random: a draw seeded by ``(name, i)``; bayes: a GP fit to the finished trials) and
  ``ssm_train.run.fit`` trains it as the run ``<name>-<iii>``, one trial after another;
* ``--slurm``: the proposals go into a ``SWEEP_FILE`` (one line of overrides per trial) submitted
  as ``sbatch --array=0-(N-1) slurm/train.sh`` (``--collect`` afterwards, or ``--wait``).

Every mode first checks the file against W&B's schema and every parameter name (and every grid
point's config) against our config schema: a bad file is a :class:`SweepError` naming the file and
key (exit status 2), before anything runs. Results go to ``<dir>/<name>/`` (``--dir``, default
``sweeps``)::

    trials/<iii>.json   one record per trial: parameters, overrides, status, metrics, run directory;
                        a finished (or diverged) trial is skipped when the sweep is started again
    results.csv         one row per trial: its parameters, final metrics, run directory
    results.png         the sweep metric against each swept parameter
    slurm-<k>.txt       SWEEP_FILEs submitted

Command-line overrides apply to every trial (before its parameters; overriding a swept key is an
error). A trial's record stores its full override list, so a sweep restarted with other settings
is refused rather than silently mixed with the old trials.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import random
import re
import shlex
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssm_train.atomic import atomic_write_text
from ssm_train.config import Config, ConfigError, load_config

ARGS_MACRO = "${args_no_hyphens}"
METHODS = ("grid", "random", "bayes")
DEFAULT_DIR = "sweeps"
FINISHED, FAILED, SUBMITTED = "finished", "failed", "submitted"
DONE = (FINISHED, FAILED)  # a diverged trial is done too: running it again diverges again
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepError(ConfigError):
    """A bad sweep file or sweep invocation; the message names the file and key (exit status 2)."""


# ------------------------------------------------------------------------------------ the sweep


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file plus the overrides given on the command line."""

    path: Path
    name: str
    spec: dict  # the W&B sweep config, as read
    configs: tuple[str, ...]  # the -c files of `command`
    fixed: tuple[str, ...]  # the key=value words of `command`
    overrides: tuple[str, ...] = ()  # from our command line, for every trial

    @property
    def method(self) -> str:
        return self.spec["method"]

    @property
    def parameters(self) -> dict[str, dict]:
        return self.spec["parameters"]

    @property
    def metric(self) -> str | None:
        return (self.spec.get("metric") or {}).get("name")

    @property
    def goal(self) -> str:
        return (self.spec.get("metric") or {}).get("goal", "minimize")

    def base_overrides(self) -> list[str]:
        return [*self.fixed, *self.overrides]

    def trial_name(self, index: int) -> str:
        return f"{self.name}-{index:03d}"

    def trial_overrides(self, index: int, params: dict[str, Any]) -> list[str]:
        """What trial ``index`` runs with: base overrides, then its parameters as the agent formats
        them (``key=value``), then its run name."""
        return [*self.base_overrides(), *(f"{k}={_plain(v)}" for k, v in params.items()),
                f"name={self.trial_name(index)}"]

    def config(self, overrides: list[str]) -> Config:
        return load_config(list(self.configs), overrides)


def read_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read and validate a sweep file (W&B schema, our config schema, every grid point)."""
    path = Path(path)
    spec = _read_yaml(path)
    _check_wandb_schema(path, spec)
    name = str(spec.get("name") or path.stem)
    if not _SAFE_NAME.match(name):
        raise SweepError(f"{path}: key 'name': '{name}' must be a directory name of letters, digits, '.', '_', '-'")
    configs, fixed = _parse_command(path, spec.get("command"))
    sweep = Sweep(path, name, spec, tuple(configs), tuple(fixed), tuple(overrides))
    for key in _flat_parameter_names(path, sweep.parameters):
        _check_key(path, key)
    swept = set(_flat_parameter_names(path, sweep.parameters))
    for o in overrides:
        key = o.split("=", 1)[0].removeprefix("--")
        if key in swept or any(key.startswith(s + ".") or s.startswith(key + ".") for s in swept):
            raise SweepError(f"override '{o}': '{key}' is swept by {path}; remove it from the command line")
    try:
        sweep.config(sweep.base_overrides())
    except ConfigError as e:
        raise SweepError(f"{path}: the command's configs and overrides: {e}") from None
    _check_values(sweep)
    return sweep


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        def at(mark) -> str:
            return f"line {mark.line + 1}, column {mark.column + 1}"

        problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        where = f" {at(mark)}:" if mark else ""
        detail = f" ({context} at {at(context_mark)})" if context and context_mark else ""
        raise SweepError(f"{path}:{where} not valid YAML: {problem or e}{detail}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: the top level must be a mapping (a W&B sweep config), got {type(spec).__name__}")
    return spec


def _sweeps_package():
    with warnings.catch_warnings():  # pydantic's deprecation notice about the package's own model
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def _check_wandb_schema(path: Path, spec: dict) -> None:
    """W&B's JSON schema, via the ``sweeps`` package (without its ``validate=True`` path, which
    drops nested ``parameters`` blocks), plus what the offline modes need."""
    if spec.get("method") not in METHODS:
        raise SweepError(f"{path}: key 'method': must be one of {', '.join(METHODS)}, got {spec.get('method')!r}")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{path}: key 'parameters': must be a non-empty mapping of parameter names to "
                         "{values: [...]}, {value: ...} or {min: ..., max: ...}")
    for key, p in params.items():
        if not isinstance(p, dict):
            raise SweepError(f"{path}: parameter '{key}': must be a mapping such as {{values: [...]}}, got {p!r}")
        if "parameters" in p:
            raise SweepError(
                f"{path}: parameter '{key}': nested 'parameters' blocks are not supported (the agent would "
                f"pass '{key}' as one dict, and the sweeps package drops them silently); write dotted "
                f"names instead, e.g. '{key}.{next(iter(p['parameters'] or {'x': 0}))}'")
    try:
        problems = _sweeps_package().schema_violations_from_proposed_config(spec)
    except ValueError as e:
        problems = [str(e)]
    if problems:
        raise SweepError(f"{path}: not a valid W&B sweep config:\n  " + "\n  ".join(dict.fromkeys(problems)))
    if spec["method"] == "bayes" and not spec.get("metric", {}).get("name"):
        raise SweepError(f"{path}: key 'metric': method bayes needs metric: {{name: val/rel_err, goal: minimize}}")


def _parse_command(path: Path, command: Any) -> tuple[list[str], list[str]]:
    """``[${env}, ssm-train, fit, -c A.yaml, key=value, ..., ${args_no_hyphens}]`` -> (configs, fixed)."""
    example = f"[${{env}}, ssm-train, fit, -c, configs/experiment/default.yaml, {ARGS_MACRO}]"
    if not isinstance(command, list) or not all(isinstance(w, str) for w in command):
        raise SweepError(f"{path}: key 'command': must be a list of words such as {example}")
    if "fit" not in command or ARGS_MACRO not in command:
        raise SweepError(f"{path}: key 'command': must run 'fit' and end with {ARGS_MACRO} "
                         f"(the agent's key=value overrides), e.g. {example}")
    words = command[command.index("fit") + 1:]
    words.remove(ARGS_MACRO)
    configs, fixed = [], []
    it = iter(words)
    for w in it:
        if w in ("-c", "--config"):
            f = next(it, None)
            if f is None:
                raise SweepError(f"{path}: key 'command': '{w}' needs a file after it")
            configs.append(f)
        elif w.startswith("${"):
            raise SweepError(f"{path}: key 'command': only {ARGS_MACRO} is supported after 'fit', got {w}")
        elif "=" in w:
            fixed.append(w)
        else:
            raise SweepError(f"{path}: key 'command': unexpected word '{w}' after 'fit' "
                             "(give configs as -c FILE and overrides as key=value)")
    return configs, fixed


def _flat_parameter_names(path: Path, params: dict[str, dict]) -> list[str]:
    """Dotted config keys a sweep sets; an arm (dict values) sets every key inside its dicts."""
    keys = []
    for name, p in params.items():
        values = p.get("values", [p["value"]] if "value" in p else [])
        dicts = [v for v in values if isinstance(v, dict)]
        if dicts and len(dicts) != len(values):
            raise SweepError(f"{path}: parameter '{name}': values must be all mappings (arms) or none")
        keys += [f"{name}.{k}" for d in dicts for k in _flatten(d)] if dicts else [name]
    return list(dict.fromkeys(keys))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_key(path: Path, key: str) -> None:
    """``key`` must be a leaf of the config schema; else name it and list what is valid there."""
    from omegaconf import DictConfig, OmegaConf

    node: Any = OmegaConf.structured(Config)
    done = []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(done)
            valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
            hint = f"valid keys under '{where or '(top level)'}': {', '.join(valid)}" if valid \
                else f"'{where}' is a value, not a section"
            raise SweepError(f"{path}: parameter '{key}': unknown config key; {hint}")
        node = node[part]
        done.append(part)
    if isinstance(node, DictConfig):
        raise SweepError(f"{path}: parameter '{key}' is a section, not a value; sweep one of its keys "
                         f"({', '.join(f'{key}.{k}' for k in node.keys())}) or give mappings as values")


def _check_values(sweep: Sweep) -> None:
    """Build the config of every grid point, or of each parameter's extreme values (random/bayes)."""
    if sweep.method == "grid":
        for i, params in enumerate(grid_points(sweep)):
            _try_config(sweep, i, params)
        return
    from sweeps.params import HyperParameter

    for name, p in sweep.parameters.items():
        hp = HyperParameter(name, p)
        values = p["values"] if "values" in p else [hp.ppf(q) for q in (0.0, 0.5, 1.0 - 1e-9)]
        for v in values:
            _try_config(sweep, None, {name: _plain(v)})


def _try_config(sweep: Sweep, index: int | None, params: dict[str, Any]) -> None:
    try:
        sweep.config(sweep.trial_overrides(index or 0, params))
    except ConfigError as e:
        what = f"trial {index} ({_describe(params)})" if index is not None else _describe(params)
        raise SweepError(f"{sweep.path}: {what}: {e}") from None


# ---------------------------------------------------------------------------------- proposals


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every grid point, in the order of W&B's grid search (parameters sorted by name)."""
    runs = _sweeps_package().next_runs(sweep.spec, [], n=10**7)
    return [_params(r.config) for r in runs if r is not None]


def n_trials(sweep: Sweep, count: int | None) -> int:
    if count is not None and count < 1:
        raise SweepError(f"--count: must be >= 1, got {count}")
    if sweep.method == "grid":
        n = len(grid_points(sweep))
        return n if count is None else min(count, n)
    count = count or sweep.spec.get("run_cap")
    if not count:
        raise SweepError(f"{sweep.path}: method {sweep.method} needs a number of trials: --count N "
                         "(or run_cap: N in the file)")
    return int(count)


def propose(sweep: Sweep, index: int, history: list[dict]) -> dict[str, Any]:
    """Trial ``index``'s parameters. Grid and random depend on the index only (random draws are
    seeded by (name, index)), so a restarted sweep proposes the same trials; bayes fits the
    ``history`` records (finished ones as data, submitted ones as points already taken)."""
    if sweep.method == "grid":
        return grid_points(sweep)[index]
    sweeps = _sweeps_package()
    with _seeded(f"{sweep.name}/{index}"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="sklearn")  # GP fit notices on a handful of points
        if sweep.method == "random":
            return _params(sweeps.next_run(sweep.spec, []).config)
        runs = [sweeps.SweepRun(name=r["name"], config={k: {"value": v} for k, v in r["params"].items()},
                                state=_BAYES_STATE[r["status"]], summary_metrics=r.get("metrics") or {})
                for r in history]
        return _params(sweeps.next_run(sweep.spec, runs).config)


# how the bayes engine sees our trials: submitted ones are points already taken (not re-proposed)
_BAYES_STATE = {FINISHED: "finished", FAILED: "failed", SUBMITTED: "pending"}


@contextlib.contextmanager
def _seeded(key: str) -> Iterator[None]:
    """The sweeps package draws from the global `random` and `numpy.random`; seed both, then restore."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    random.seed(key)
    np.random.seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little"))
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _params(run_config: dict) -> dict[str, Any]:
    return {k: _plain(v["value"]) for k, v in sorted(run_config.items())}


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars (so that `f"{k}={v}"` reads like the agent's)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        return v.item()
    return v


def _describe(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


# ------------------------------------------------------------------------------- trial records


@dataclass
class TrialStore:
    """``<dir>/<name>/trials/<iii>.json``, written atomically, one file per trial."""

    root: Path

    def __post_init__(self) -> None:
        (self.root / "trials").mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.root / "trials" / f"{index:03d}.json"

    def load(self, index: int) -> dict | None:
        p = self.path(index)
        return json.loads(p.read_text()) if p.is_file() else None

    def all(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "trials").glob("*.json"))]

    def save(self, record: dict) -> None:
        atomic_write_text(self.path(record["index"]), json.dumps(record, indent=1, sort_keys=True))


def _record(sweep: Sweep, index: int, params: dict, status: str, run_dir: Path, **extra: Any) -> dict:
    return {"index": index, "name": sweep.trial_name(index), "params": params,
            "overrides": sweep.trial_overrides(index, params), "status": status,
            "run_dir": str(run_dir.resolve()), "metrics": {}, **extra}


def _check_same_trial(sweep: Sweep, store: TrialStore, old: dict, params: dict | None) -> None:
    """A record from an earlier start must describe the same trial (same settings, same proposal)."""
    expected = sweep.trial_overrides(old["index"], old["params"] if params is None else params)
    if old["overrides"] != expected:
        raise SweepError(
            f"{store.path(old['index'])}: trial {old['index']} was run with {old['overrides']}, but this "
            f"sweep now gives {expected}; the sweep file or the overrides changed. Use another --dir, "
            f"or remove {store.root} to start afresh")


# ------------------------------------------------------------------------------------- --local


FitFn = Callable[[Config], Any]  # ssm_train.run.fit, or a stand-in in tests


def run_local(sweep: Sweep, count: int | None, out_dir: Path, fit: FitFn | None = None) -> list[dict]:
    """Trials one after another, each a normal run; finished ones (by their record) are skipped."""
    if fit is None:
        from ssm_train.run import fit
    from ssm_train.tasks.base import NonFiniteLossError

    store = TrialStore(out_dir / sweep.name)
    n = n_trials(sweep, count)
    for i in range(n):
        old = store.load(i)
        params = old["params"] if old and sweep.method == "bayes" else propose(sweep, i, store.all())
        if old:
            _check_same_trial(sweep, store, old, params)
            if old["status"] in DONE:
                print(f"sweep {sweep.name}: trial {i + 1}/{n} {old['name']} already {old['status']}, skipped",
                      flush=True)
                continue
        cfg = sweep.config(sweep.trial_overrides(i, params))
        print(f"sweep {sweep.name}: trial {i + 1}/{n} {sweep.trial_name(i)}: {_describe(params)}", flush=True)
        try:
            result = fit(cfg)
        except NonFiniteLossError as e:
            store.save(_record(sweep, i, params, FAILED, cfg.run_dir, error=str(e)))
            print(f"sweep {sweep.name}: trial {sweep.trial_name(i)} failed: {e}", flush=True)
            continue
        store.save(_record(sweep, i, params, FINISHED, Path(result.run_dir), metric=result.metric,
                           metrics=dict(result.metrics)))
        print(f"sweep {sweep.name}: trial {sweep.trial_name(i)}: {result.metric}={result.value:.6g}", flush=True)
    return write_results(sweep, out_dir)


# ------------------------------------------------------------------------------------- --slurm


@dataclass
class SlurmSubmission:
    """An array job: task ``t`` runs trial ``trials[t]`` with the overrides on line ``t``."""

    sweep_file: Path
    command: list[str]  # the sbatch command line; SWEEP_FILE goes in its environment
    trials: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (index, params) per task
    lines: list[str] = field(default_factory=list)
    job_id: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"SWEEP_FILE": str(self.sweep_file)}


def train_sh() -> Path:
    """``slurm/train.sh`` of the working directory, else of the source checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "slurm" / "train.sh").is_file():
            return root / "slurm" / "train.sh"
    raise SweepError("slurm/train.sh not found (run from the project root)")


def plan_slurm(sweep: Sweep, count: int | None, out_dir: Path, sbatch_args: list[str] = ()) -> SlurmSubmission:
    """The trials not yet done (grid: every point, or the first N; random/bayes: N new proposals,
    bayes from the trials collected so far), one SWEEP_FILE line each, and the sbatch command.

    A line holds the trial's own words (its parameters and ``name=<sweep>-<iii>``, which wins over
    the name train.sh sets); the configs and the common overrides go once on the sbatch line.
    """
    store = TrialStore(out_dir / sweep.name)
    history = store.all()
    n = n_trials(sweep, count)
    start = 0 if sweep.method == "grid" else max((r["index"] for r in history), default=-1) + 1
    trials: list[tuple[int, dict]] = []
    for i in range(start, start + n):
        old = store.load(i)
        params = propose(sweep, i, history)
        if old:
            _check_same_trial(sweep, store, old, params)
            if old["status"] in DONE:
                continue
        trials.append((i, params))
        history.append({"index": i, "name": sweep.trial_name(i), "params": params, "status": SUBMITTED})
    n_common = len(sweep.base_overrides())
    lines = [shlex.join(sweep.trial_overrides(i, p)[n_common:]) for i, p in trials]
    k = len(list((out_dir / sweep.name).glob("slurm-*.txt")))
    sweep_file = (out_dir / sweep.name / f"slurm-{k}.txt").resolve()
    command = ["sbatch", "--parsable", f"--array=0-{len(lines) - 1}", f"--job-name={sweep.name}", *sbatch_args,
               str(train_sh()), *sweep.configs, *sweep.base_overrides()]
    return SlurmSubmission(sweep_file, command, trials, lines)


def submit_slurm(sweep: Sweep, count: int | None, out_dir: Path, sbatch_args: list[str] = (),
                 dry_run: bool = False, wait: bool = False) -> SlurmSubmission:
    """Write the SWEEP_FILE and run sbatch (unless ``dry_run``); record the trials as submitted."""
    sub = plan_slurm(sweep, count, out_dir, [*(["--wait"] if wait else []), *sbatch_args])
    if not sub.trials:
        print(f"sweep {sweep.name}: every trial is done; nothing to submit", flush=True)
        return sub
    sub.sweep_file.write_text("\n".join(sub.lines) + "\n")
    print(f"sweep {sweep.name}: {len(sub.trials)} trial(s) in {sub.sweep_file}", flush=True)
    print(f"SWEEP_FILE={shlex.quote(str(sub.sweep_file))} {shlex.join(sub.command)}", flush=True)
    if dry_run:
        return sub
    Path("logs").mkdir(exist_ok=True)  # sbatch opens logs/%x-%j.out before the job starts
    store = TrialStore(out_dir / sweep.name)
    proc = subprocess.Popen(sub.command, env={**os.environ, **sub.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()  # --parsable: "<job id>[;cluster]" once submitted
    if not re.match(r"^\d+", first):
        raise SweepError(f"sbatch failed: {first} {proc.communicate()[1].strip()}")
    sub.job_id = first.split(";")[0]
    for task, (i, params) in enumerate(sub.trials):
        run_dir = sweep.config(sweep.trial_overrides(i, params)).run_dir
        store.save(_record(sweep, i, params, SUBMITTED, run_dir, job=f"{sub.job_id}_{task}"))
    print(f"sweep {sweep.name}: submitted array job {sub.job_id}", flush=True)
    if wait:
        proc.communicate()  # sbatch --wait returns when every task has ended
    else:
        proc.wait()
        print(f"when it has finished: ssm-train sweep {shlex.quote(str(sweep.path))} --collect"
              f"{''.join(' ' + shlex.quote(o) for o in sweep.overrides)}", flush=True)
    return sub


def collect(sweep: Sweep, out_dir: Path) -> list[dict]:
    """Submitted trials whose run directory holds the final validation become finished."""
    store = TrialStore(out_dir / sweep.name)
    for r in store.all():
        if r["status"] != SUBMITTED:
            continue
        cfg = sweep.config(r["overrides"])
        metrics = final_metrics(Path(r["run_dir"]), cfg.trainer.max_steps)
        if metrics is not None:
            store.save({**r, "status": FINISHED, "metrics": metrics})
    return write_results(sweep, out_dir)


def final_metrics(run_dir: Path, max_steps: int) -> dict[str, float] | None:
    """The validation metrics that ``fit`` logs after training (the last ``val/*`` row of
    ``csv/metrics.csv``, at step >= max_steps), or None while the run is not finished."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if any(k.startswith("val/") and v for k, v in r.items())]
    if not rows or int(float(rows[-1]["step"])) < max_steps:
        return None
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


# ------------------------------------------------------------------------------- W&B online


def run_online(sweep: Sweep, count: int | None, print_only: bool) -> int:
    """Create the sweep on the W&B server and run a stock agent on it (needs network and a key)."""
    import netrc

    import wandb

    has_key = bool(os.environ.get("WANDB_API_KEY"))
    with contextlib.suppress(FileNotFoundError, netrc.NetrcParseError):
        has_key = has_key or bool(netrc.netrc().authenticators("api.wandb.ai"))
    if not has_key:
        raise SweepError("W&B online needs credentials (`wandb login` or WANDB_API_KEY); "
                         "without a server use --local or --slurm")
    spec = dict(sweep.spec)
    command = list(spec["command"])
    at = command.index(ARGS_MACRO)
    spec["command"] = command[:at] + list(sweep.overrides) + command[at:]
    w = sweep.config(sweep.base_overrides()).logger.wandb
    sweep_id = wandb.sweep(spec, entity=w.entity, project=w.project)
    target = "/".join(x for x in (w.entity, w.project, sweep_id) if x)
    print(f"wandb agent {f'--count {count} ' if count else ''}{target}", flush=True)
    if not print_only:
        wandb.agent(sweep_id, entity=w.entity, project=w.project, count=count)
    return 0


# ------------------------------------------------------------------------------------- results


def write_results(sweep: Sweep, out_dir: Path) -> list[dict]:
    """``results.csv`` (one row per trial) and ``results.png`` (metric against each parameter)."""
    root = out_dir / sweep.name
    records = TrialStore(root).all()
    flat = [{k: v for name, value in r["params"].items() for k, v in _flat_param(name, value).items()}
            for r in records]
    param_cols = list(dict.fromkeys(k for f in flat for k in f))
    metric_cols = sorted({k for r in records for k in r.get("metrics", {})})
    with (root / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "name", "status", *param_cols, *metric_cols, "run_dir"])
        for r, fp in zip(records, flat):
            w.writerow([r["index"], r["name"], r["status"], *(fp.get(c, "") for c in param_cols),
                        *(r.get("metrics", {}).get(c, "") for c in metric_cols), r["run_dir"]])
    metric = sweep.metric or next((r["metric"] for r in records if r.get("metric")), None)
    if metric:
        plot_results(sweep, records, metric, root / "results.png")
    return records


def _flat_param(name: str, value: Any) -> dict[str, Any]:
    return {f"{name}.{k}": v for k, v in _flatten(value).items()} if isinstance(value, dict) else {name: value}


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in _flatten(value).items())
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
        values = [r["params"].get(name) for r in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        order = sorted(set(map(_label, values)), key=lambda s: float(s) if numeric else s)
        xs = [v if numeric else order.index(_label(v)) for v in values]
        others = [k for k in names if k != name]
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
    fig.suptitle(f"sweep {sweep.name} ({sweep.method}, {len(done)} finished trials)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- CLI


class _IntermixedParser(argparse.ArgumentParser):
    """Overrides may come before or after options (``FILE --local k=v``): plain argparse stops
    filling a ``nargs="*"`` positional at the first option and rejects the words after it."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_inner", False):  # parse_known_intermixed_args calls back into this
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="run a W&B-format sweep: online, --local or --slurm",
                       description=__doc__.split("\n\n")[0])
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
    s.__class__ = _IntermixedParser


def cmd_sweep(args: argparse.Namespace) -> int:
    sweep = read_sweep(args.file, args.overrides)
    out = Path(args.dir)
    if args.check:
        n = n_trials(sweep, args.count) if sweep.method == "grid" or args.count or sweep.spec.get("run_cap") else 0
        print(f"{sweep.path}: valid; sweep {sweep.name}, method {sweep.method}, configs {list(sweep.configs)}")
        for i in range(n if sweep.method != "bayes" else 0):
            print(f"  {sweep.trial_name(i)}: {_describe(propose(sweep, i, []))}")
        return 0
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
        return run_online(sweep, args.count, args.print_only)
    done = [r for r in records if r["status"] == FINISHED]
    print(f"sweep {sweep.name}: {len(done)}/{len(records)} trials finished; {out / sweep.name / 'results.csv'}",
          flush=True)
    best = best_trial(sweep, done)
    if best:
        print(f"sweep {sweep.name}: best {best['name']} {sweep.metric}={best['metrics'][sweep.metric]:.6g} "
              f"({_describe(best['params'])})", flush=True)
    return 0


def best_trial(sweep: Sweep, records: list[dict]) -> dict | None:
    """The finished trial with the best sweep metric (per the file's ``metric.goal``)."""
    scored = [r for r in records if r["status"] == FINISHED and sweep.metric in r.get("metrics", {})]
    if not scored:
        return None
    pick = max if sweep.goal == "maximize" else min
    return pick(scored, key=lambda r: r["metrics"][sweep.metric])


__all__ = ["Sweep", "SweepError", "read_sweep", "grid_points", "propose", "run_local", "plan_slurm",
           "submit_slurm", "collect", "final_metrics", "write_results", "best_trial", "add_parser", "cmd_sweep"]
