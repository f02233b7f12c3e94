"""Reading sweep files: the shipped ones, arms, and bad files that fail naming the problem (validate.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from ssm_train.cli import main
from ssm_train.sweeps import SweepError, grid_points, n_trials, propose, read_sweep
from tests.sweep.helpers import DEFAULT, ROOT, SWEEP_FILES, write_sweep


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_shipped_sweep_files_validate(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # their configs are relative to the project root
    sweep = read_sweep(path.relative_to(ROOT))
    assert sweep.spec["command"][-1] == "${args_no_hyphens}" and "fit" in sweep.spec["command"]
    if sweep.method == "grid":
        expected = math.prod(len(p["values"]) for p in sweep.parameters.values())
        points = grid_points(sweep)
        assert len(points) == expected == n_trials(sweep, None)
        assert len({json.dumps(p, sort_keys=True) for p in points}) == expected  # all distinct
    else:
        assert sweep.spec.get("run_cap")
        params = propose(sweep, 0, [])
        for key, p in sweep.parameters.items():
            assert p["min"] <= params[key] <= p["max"]


def test_shipped_set_covers_the_questions() -> None:
    swept = {p.stem: set(yaml.safe_load(p.read_text())["parameters"]) for p in SWEEP_FILES}
    assert {"model.init.r_min", "model.init.r_max"} <= swept["ring_radius"]
    assert "model.init.max_phase" in swept["phase_range"]
    assert {"model", "model.d_state"} <= swept["real_vs_complex"]
    assert "model.init.name" in swept["init_family"]
    assert yaml.safe_load((ROOT / "configs/sweeps/lr_ring.yaml").read_text())["method"] in ("random", "bayes")


def test_real_vs_complex_arms_resolve_to_matching_kind_and_init(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    sweep = read_sweep("configs/sweeps/real_vs_complex.yaml")
    seen = set()
    for i, params in enumerate(grid_points(sweep)):
        cfg = sweep.config(sweep.trial_overrides(i, params))
        seen.add((cfg.model.kind, cfg.model.init.name, cfg.model.d_state))
        assert cfg.name == f"real_vs_complex-{i:03d}"
    assert {(k, i) for k, i, _ in seen} == {("lru", "ring"), ("real", "real")}
    assert len(seen) == 8  # 2 arms x 4 state sizes, each for 3 seeds


BAD = {
    "unknown-key": ({"model.init.r_mn": {"values": [0.1]}}, {},
                    r"parameter 'model.init.r_mn': unknown config key; valid keys under 'model.init': .*r_min"),
    "unknown-section": ({"modle.d_state": {"values": [4]}}, {}, r"parameter 'modle.d_state': unknown config key"),
    "section-not-value": ({"model.init": {"values": [1]}}, {}, r"'model.init' is a section, not a value"),
    "unknown-in-arm": ({"model": {"values": [{"kind": "lru", "d_stat": 4}]}}, {},
                       r"parameter 'model.d_stat': unknown config key"),
    "nested": ({"model": {"parameters": {"d_state": {"values": [4, 8]}}}}, {},
               r"parameter 'model': nested 'parameters' blocks are not supported.*'model.d_state'"),
    "method": ({"seed": {"values": [0]}}, {"method": "grdi"}, r"key 'method': must be one of grid, random, bayes"),
    "schema": ({"seed": {"valuez": [0]}}, {}, r"not a valid W&B sweep config"),
    "top-level": ({"seed": {"values": [0]}}, {"learning": 1}, r"'learning' was unexpected"),
    "bad-value": ({"model.init.r_min": {"values": [0.5, 0.999]}, "model.init.r_max": {"values": [0.99]}}, {},
                  r"trial 1 \(model.init.r_max=0.99 model.init.r_min=0.999\): key 'model.init.r_min': "
                  r"must be <= model.init.r_max"),
    "bad-type": ({"model.d_state": {"values": ["many"]}}, {}, r"model.d_state=many.*model.d_state"),
    "bad-range": ({"model.init.r_max": {"min": 0.9, "max": 1.5}}, {"method": "random"}, r"model.init.r_max"),
    "no-macro": ({"seed": {"values": [0]}}, {"command": ["ssm-train", "fit", "-c", DEFAULT]},
                 r"key 'command': must run 'fit' and end with \$\{args_no_hyphens\}"),
    "stray-word": ({"seed": {"values": [0]}}, {"command": ["ssm-train", "fit", DEFAULT, "${args_no_hyphens}"]},
                   r"unexpected word"),
    "bayes-no-metric": ({"optim.lr": {"min": 0.001, "max": 0.01}}, {"method": "bayes", "metric": None},
                        r"method bayes needs metric"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sweep_files_fail_naming_the_problem(tmp_path, capsys, case) -> None:
    params, extra, message = BAD[case]
    path = write_sweep(tmp_path, params)
    spec = yaml.safe_load(path.read_text())
    for k, v in extra.items():
        if v is None:
            spec.pop(k)
        else:
            spec[k] = v
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SweepError, match=message):
        read_sweep(path)
    assert main(["sweep", str(path), "--local", "--dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssm-train sweep: error: ") and str(path) in err
    assert not (tmp_path / "s").exists()  # nothing ran


def test_yaml_errors_name_the_line(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("method: grid\nparameters:\n  seed: {values: [0, 1]\ncommand: [${env}]\n")
    with pytest.raises(SweepError, match=r"s.yaml: line 4, column 1: not valid YAML: expected ',' or '}'.*"
                       r"\(while parsing a flow mapping at line 3, column 9\)"):
        read_sweep(path)
    with pytest.raises(SweepError, match="sweep file not found"):
        read_sweep(tmp_path / "missing.yaml")


def test_overriding_a_swept_key_is_refused(tmp_path) -> None:
    path = write_sweep(tmp_path, {"model": {"values": [{"kind": "lru"}]}, "seed": {"values": [0]}})
    for override in ("seed=3", "model.kind=real", "model=x"):
        with pytest.raises(SweepError, match=f"override '{override}'.*is swept by"):
            read_sweep(path, [override])
    read_sweep(path, ["optim.lr=0.01"])  # not swept: fine
