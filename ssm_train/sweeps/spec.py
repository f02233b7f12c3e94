"""A sweep: the validated sweep file plus the command line's overrides, and how it names trials.

Only the type and small value helpers live here (``validate.py`` builds a :class:`Sweep`), so that
every other module can import it without pulling in the validation or the ``sweeps`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssm_train.config import Config, load_config
from ssm_train.errors import ConfigError

ARGS_MACRO = "${args_no_hyphens}"
METHODS = ("grid", "random", "bayes")
DEFAULT_DIR = "sweeps"


class SweepError(ConfigError):
    """A bad sweep file or sweep invocation; the message names the file and key (exit status 2)."""


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
        return [*self.base_overrides(), *(f"{k}={plain(v)}" for k, v in params.items()),
                f"name={self.trial_name(index)}"]

    def config(self, overrides: list[str]) -> Config:
        return load_config(list(self.configs), overrides)


def plain(v: Any) -> Any:
    """numpy scalars -> Python scalars (so that `f"{k}={v}"` reads like the agent's)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        return v.item()
    return v


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{a: {b: 1}}`` -> ``{"a.b": 1}``: an arm's dotted config keys (empty dicts stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe(params: dict[str, Any]) -> str:
    """A trial's parameters as one line, for messages."""
    return " ".join(f"{k}={v}" for k, v in params.items())
