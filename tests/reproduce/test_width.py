"""``ssm-train reproduce width``: error of the trained MLP readout against its width, recurrence frozen."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssm_train.analysis import width
from ssm_train.analysis.spectra import spectrum
from ssm_train.cli import main
from ssm_train.data.config import DataConfig
from ssm_train.data.synthetic import nonlinear_sample


@pytest.mark.parametrize("name", ["roots_of_unity", "ring_0.9_1", "real_0_1"])
def test_features_are_unit_variance_and_the_roots_keep_the_whole_window(name: str) -> None:
    L = 16
    M = width.feature_map(spectrum(name, L, 0), L)
    assert M.shape[0] == L and np.allclose(np.linalg.norm(M, axis=0), 1)  # unit variance under white noise
    if name == "roots_of_unity":  # the DFT: injective and perfectly conditioned (up to the repeated pairs)
        s = np.linalg.svd(M, compute_uv=False)
        assert s.min() > 0.5 * s.max()


def test_target_is_the_nonlinear_tasks_map_at_the_last_step() -> None:
    L, seed = 12, 3
    sample = nonlinear_sample(DataConfig(kind="nonlinear", seq_len=L, lag=L - 1), seed, 7)
    u = sample["inputs"].numpy().T  # [1, L]
    np.testing.assert_allclose(width.target_fn(L, seed)(u)[0], sample["targets"][-1].numpy(), rtol=1e-6)


def test_fits_recover_a_power_law() -> None:
    widths = [8, 32, 128]
    assert width.slope(widths, [3.0 * D**-0.5 for D in widths]) == pytest.approx(-0.5)
    rows = [{"L": L, "D": D, "steps": 1, "seed": 0, "rel_err": 0.7 * D**-0.3 * L**0.4} for L in (8, 16) for D in widths]
    a, b, c = width.joint_fit(rows, 1)
    assert (b, c) == (pytest.approx(-0.3), pytest.approx(0.4)) and a == pytest.approx(np.log(0.7))


def test_a_wider_readout_has_a_smaller_error() -> None:
    """Fixed seed and budget: D = 256 beats D = 8 clearly (the slope is negative)."""
    st = width.Setting(n_test=1024)
    errs = [width.train_readout(8, D, 300, 0, st)["rel_err"] for D in (8, 256)]
    assert errs[1] < 0.7 * errs[0] < 0.7 * width.mean_baseline(8, st), errs
    assert width.slope([8, 256], errs) < -0.15


def test_reproduce_writes_json_png_and_report_section(tmp_path, monkeypatch) -> None:
    tiny = width.Setting(lengths=(4, 8), widths=(4, 16), budgets=(10, 20), n_test=256, batch=32)
    monkeypatch.setattr(width, "QUICK", tiny)
    assert main(["reproduce", "width", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "width.json").read_text())
    assert data["meta"]["name"] == "width" and len(data["rows"]) == 2 * 2 * 2
    assert {(r["L"], r["D"], r["steps"]) for r in data["rows"]} == {(L, D, s) for L in (4, 8) for D in (4, 16)
                                                                     for s in (10, 20)}
    assert all(0 < r["rel_err"] < 10 and r["N"] == r["L"] for r in data["rows"])
    assert len(data["meta"]["slopes"]) == 4 and len(data["meta"]["joint_fit"]) == 2
    assert (tmp_path / "width.png").stat().st_size > 5000
    report = (tmp_path / "report.md").read_text()
    assert report.count("## width") == 1 and "![width](width.png)" in report and "| 8 |" in report
    assert "b = " in report and "`roots_of_unity`" in report
