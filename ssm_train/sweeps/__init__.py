"""Sweeps in W&B's sweep format, run by a W&B agent, here one trial after another, or as a SLURM array.

A sweep file (``configs/sweeps/*.yaml``) is a plain W&B sweep config; ``docs/sweeps.md`` describes
the format, the modes and what a sweep writes. The modules, one concept each:

* ``spec``     the :class:`Sweep` (file + command-line overrides) and how it names its trials;
* ``validate`` :func:`read_sweep`: W&B's schema, our config schema, every grid point;
* ``propose``  trial parameters from the ``sweeps`` package (W&B's engine), offline;
* ``trials``   trial records and :func:`run_trials`, the loop every runner shares;
* ``local``, ``slurm``, ``agent``  the runners: here, as an array job, under a W&B agent;
* ``report``   ``results.csv``, ``results.png``, the best trial;
* ``cli``      ``ssm-train sweep`` (:func:`add_parser`, :func:`cmd_sweep`).
"""

from __future__ import annotations

from ssm_train.sweeps.agent import run_online
from ssm_train.sweeps.cli import add_parser, cmd_sweep
from ssm_train.sweeps.local import run_local
from ssm_train.sweeps.propose import grid_points, n_trials, propose
from ssm_train.sweeps.report import best_trial, write_results
from ssm_train.sweeps.slurm import collect, final_metrics, plan_slurm, submit_slurm
from ssm_train.sweeps.spec import Sweep, SweepError
from ssm_train.sweeps.trials import run_trials
from ssm_train.sweeps.validate import read_sweep

__all__ = ["Sweep", "SweepError", "read_sweep", "grid_points", "n_trials", "propose", "run_trials", "run_local",
           "plan_slurm", "submit_slurm", "collect", "final_metrics", "run_online", "write_results", "best_trial",
           "add_parser", "cmd_sweep"]
