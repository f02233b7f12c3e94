"""Online: the W&B agent's trials go through the shared trial loop (agent.py), with wandb faked.

No network here: ``wandb.sweep``/``agent``/``init`` are stand-ins that propose fixed parameters, so
what is tested is our side: the server's spec, numbering, records, results.csv, --print-only.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import wandb

from ssm_train.cli import main
from ssm_train.sweeps import SweepError, read_sweep, run_online
from tests.sweep.helpers import FakeFit, read_csv, write_sweep


class FakeServer:
    """Proposes ``proposals`` in order; the agent calls the trial function once per proposal."""

    def __init__(self, proposals: list[dict]) -> None:
        self.proposals = proposals
        self.spec: dict | None = None
        self.agents = 0

    def sweep(self, spec, entity=None, project=None) -> str:
        self.spec = spec
        return "abc123"

    def agent(self, sweep_id, function=None, entity=None, project=None, count=None) -> None:
        self.agents += 1
        for config in self.proposals[:count]:
            self.config = config
            function()

    def init(self):
        return SimpleNamespace(config=self.config)


@pytest.fixture
def server(monkeypatch) -> FakeServer:
    fake = FakeServer([{"optim.lr": 1e-3, "_wandb": {}}, {"optim.lr": 1e-2}])
    for name in ("sweep", "agent", "init"):
        monkeypatch.setattr(wandb, name, getattr(fake, name))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    return fake


def test_agent_trials_are_recorded_and_numbered_after_earlier_ones(tmp_path, server, capsys) -> None:
    path = write_sweep(tmp_path, {"optim.lr": {"values": [1e-3, 1e-2]}})
    sweep = read_sweep(path, ["model.d_state=8"])
    fake = FakeFit()
    records = run_online(sweep, None, False, tmp_path / "s", fit=fake)
    assert "wandb agent ssm-train/abc123\n" in capsys.readouterr().out  # entity/project/id
    command = server.spec["command"]
    assert command[-2:] == ["model.d_state=8", "${args_no_hyphens}"]  # overrides before the agent's
    assert fake.names == ["tiny-000", "tiny-001"]
    assert [(r["status"], r["params"]) for r in records] == [("finished", {"optim.lr": 1e-3}),
                                                            ("finished", {"optim.lr": 1e-2})]
    assert [r["name"] for r in read_csv(tmp_path / "s" / "tiny" / "results.csv")] == ["tiny-000", "tiny-001"]
    again = FakeFit()
    run_online(sweep, 1, False, tmp_path / "s", fit=again)  # a new server sweep, same folder
    assert again.names == ["tiny-002"]


def test_print_only_creates_the_sweep_and_runs_nothing(tmp_path, server, capsys) -> None:
    path = write_sweep(tmp_path, {"optim.lr": {"values": [1e-3]}})
    assert main(["sweep", str(path), "--print-only", "--count", "3", "--dir", str(tmp_path / "s")]) == 0
    assert "wandb agent --count 3 ssm-train/abc123\n" in capsys.readouterr().out
    assert server.agents == 0 and not (tmp_path / "s").exists()


def test_online_without_credentials_says_so(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SweepError, match="W&B online needs credentials"):
        run_online(read_sweep(write_sweep(tmp_path, {"seed": {"values": [0]}})), None, True, tmp_path / "s")
