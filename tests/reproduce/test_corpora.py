"""``reproduce corpora``: each real-corpus experiment trained with the complex LRU and two real arms."""

from __future__ import annotations

import json

import pytest
import torch

from ssm_train.analysis import corpora
from ssm_train.generate import load_backbone
from ssm_train.nn import LRU

TINY = corpora.Setting(experiments=("splice",), steps=5, limit_val_batches=2)


@pytest.mark.slow
def test_the_arms_differ_only_in_the_recurrence_and_its_state_size(tmp_path, monkeypatch):
    runs = tmp_path / "corpora_quick"  # where reproduce(quick=True) keeps them
    rows = corpora.train_all(runs, TINY, progress=lambda s: None)
    by_arm = {r["arm"]: r for r in rows}
    assert list(by_arm) == list(corpora.ARMS) and all(r["metric"] == "val/acc" and r["steps"] == 5 for r in rows)
    assert [by_arm[a]["d_state"] for a in corpora.ARMS] == [64, 64, 128]  # splice.yaml: N = 64
    lams = {}
    for arm in corpora.ARMS:
        model, config, _ = load_backbone(runs / "runs" / f"splice-{arm}" / "checkpoints" / "last.ckpt")
        assert config["model"]["init"]["r_min"] == 0.5 and config["optim"]["lr"] == 0.003  # the experiment's own
        lams[arm] = torch.cat([m.eigenvalues() for m in model.modules() if isinstance(m, LRU)])
    assert lams["complex"].imag.abs().max() > 0.1
    for arm in ("real_N", "real_2N"):
        assert torch.all(lams[arm].imag == 0) and torch.all(lams[arm].real > 0)
        assert lams[arm].abs().min() >= 0.5 - 1e-6 and lams[arm].abs().max() <= 0.99 + 1e-6
    # real B, C: half the recurrent parameters at N, the same count as the complex arm at 2N (+ D, ν, γ)
    assert by_arm["real_N"]["params"] < by_arm["complex"]["params"]
    assert abs(by_arm["real_2N"]["params"] - by_arm["complex"]["params"]) < 0.01 * by_arm["complex"]["params"]

    # a second call reuses the stored runs (nothing is trained again) and reproduce writes the table
    monkeypatch.setattr("ssm_train.run.fit", lambda cfg: pytest.fail("a finished run was trained again"))
    assert corpora.train_all(runs, TINY, progress=lambda s: None) == rows
    monkeypatch.setattr(corpora, "QUICK", TINY)
    from ssm_train.reproduce import reproduce

    data = reproduce("corpora", True, tmp_path)
    assert json.loads((tmp_path / "corpora.json").read_text())["rows"] == data["rows"] == rows
    report = (tmp_path / "report.md").read_text()
    assert "| `splice` (N = 64) | val/acc |" in report and (tmp_path / "corpora.png").stat().st_size > 5000
