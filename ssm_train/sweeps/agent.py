"""Online: create the sweep on the W&B server and run an agent on it here (needs network and a key).

The server proposes each trial; the agent calls :func:`_agent_trial` once per proposal, which
runs it through the same trial loop as ``--local`` (record, then ``results.csv``). Trials of an
online sweep are numbered after the ones already in ``<dir>/<name>/trials/``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssm_train.sweeps.local import FitFn, fit_trials
from ssm_train.sweeps.report import write_results
from ssm_train.sweeps.spec import ARGS_MACRO, Sweep, SweepError, plain
from ssm_train.sweeps.trials import TrialStore, run_trials


def run_online(sweep: Sweep, count: int | None, print_only: bool, out_dir: Path,
               fit: FitFn | None = None) -> list[dict] | None:
    """Create the sweep and print the ``wandb agent`` line (for more agents elsewhere); unless
    ``print_only``, run an agent here for ``count`` trials (default: until the server stops)."""
    import wandb

    _check_credentials()
    w = sweep.config(sweep.base_overrides()).logger.wandb
    sweep_id = wandb.sweep(server_spec(sweep), entity=w.entity, project=w.project)
    target = "/".join(x for x in (w.entity, w.project, sweep_id) if x)
    print(f"wandb agent {f'--count {count} ' if count else ''}{target}", flush=True)
    if print_only:
        return None
    store = TrialStore(out_dir / sweep.name)
    wandb.agent(sweep_id, function=lambda: _agent_trial(sweep, store, fit), entity=w.entity, project=w.project,
                count=count)
    return write_results(sweep, out_dir)


def server_spec(sweep: Sweep) -> dict:
    """The file's config with the command-line overrides put into ``command`` (before the agent's
    ``${args_no_hyphens}``), so that a stock ``wandb agent`` elsewhere runs the same trials."""
    spec = dict(sweep.spec)
    command = list(spec["command"])
    at = command.index(ARGS_MACRO)
    spec["command"] = command[:at] + list(sweep.overrides) + command[at:]
    return spec


def _check_credentials() -> None:
    import netrc

    has_key = bool(os.environ.get("WANDB_API_KEY"))
    with contextlib.suppress(FileNotFoundError, netrc.NetrcParseError):
        has_key = has_key or bool(netrc.netrc().authenticators("api.wandb.ai"))
    if not has_key:
        raise SweepError("W&B online needs credentials (`wandb login` or WANDB_API_KEY); "
                         "without a server use --local or --slurm")


def _agent_trial(sweep: Sweep, store: TrialStore, fit: FitFn | None) -> None:
    """One server proposal: the next free index, its parameters from the agent's run config.

    ``fit`` then reuses the agent's run (Lightning's W&B logger attaches to ``wandb.run``) and,
    under the agent, names the run directory ``<name>-<iii>-<W&B run id>`` (``ssm_train.run``)."""
    import wandb

    params = server_params(sweep, dict(wandb.init().config))
    run_trials(sweep, store, [store.next_index()], fit_trials(sweep, fit), _given(params))


def server_params(sweep: Sweep, run_config: dict[str, Any]) -> dict[str, Any]:
    """The swept parameters of an agent's run config, sorted by name like the offline proposals."""
    return {k: plain(run_config[k]) for k in sorted(sweep.parameters) if k in run_config}


def _given(params: dict[str, Any]) -> Callable[[Sweep, int, list[dict]], dict[str, Any]]:
    """A proposer that returns what the server proposed."""
    return lambda sweep, index, history: params
