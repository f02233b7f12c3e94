"""Reading a sweep file and checking it before anything runs: W&B's schema, our config schema.

Every mode (``--local``, ``--slurm``, online) goes through :func:`read_sweep`, so a bad file is one
:class:`SweepError` naming the file and key (exit status 2) wherever it would have been run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ssm_train.config import Config
from ssm_train.errors import ConfigError
from ssm_train.sweeps.propose import grid_points, sweeps_package
from ssm_train.sweeps.spec import ARGS_MACRO, METHODS, Sweep, SweepError, describe, flatten, plain

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    swept = _flat_parameter_names(path, sweep.parameters)
    for key in swept:
        _check_key(path, key)
    _check_overrides(path, swept, overrides)
    try:
        sweep.config(sweep.base_overrides())
    except ConfigError as e:
        raise SweepError(f"{path}: the command's configs and overrides: {e}") from None
    _check_values(sweep)
    return sweep


def _check_overrides(path: Path, swept: list[str], overrides: list[str] | tuple[str, ...]) -> None:
    """A command-line override of a swept key (or of a section above or below one) would be
    silently lost or would silently win over the trial's value: refuse it."""
    for o in overrides:
        key = o.split("=", 1)[0].removeprefix("--")
        if key in swept or any(key.startswith(s + ".") or s.startswith(key + ".") for s in swept):
            raise SweepError(f"override '{o}': '{key}' is swept by {path}; remove it from the command line")


def _read_yaml(path: Path) -> dict:
    """The file as a mapping; a YAML error names the line and column (PyYAML's own message does
    not start with the file)."""
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
        problems = sweeps_package().schema_violations_from_proposed_config(spec)
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
        keys += [f"{name}.{k}" for d in dicts for k in flatten(d)] if dicts else [name]
    return list(dict.fromkeys(keys))


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
            _try_config(sweep, None, {name: plain(v)})


def _try_config(sweep: Sweep, index: int | None, params: dict[str, Any]) -> None:
    try:
        sweep.config(sweep.trial_overrides(index or 0, params))
    except ConfigError as e:
        what = f"trial {index} ({describe(params)})" if index is not None else describe(params)
        raise SweepError(f"{sweep.path}: {what}: {e}") from None
