"""``ssm-train reproduce ode``: ODE-generated inputs need far fewer eigenvalues than white noise."""

from __future__ import annotations

import json
import numpy as np
import pytest

from ssm_train.analysis import ode, trained
from ssm_train.analysis.spectra import SPECTRA
from ssm_train.cli import main
from ssm_train.data.synthetic import duffing

L = 32


def test_the_vectorised_oscillator_is_the_ode_tasks_duffing() -> None:
    force = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    x = ode.oscillator(np.zeros(3), np.zeros(3), force, cubic=1.0)
    np.testing.assert_allclose(x, duffing(force), rtol=0, atol=1e-6)  # duffing rounds to float32


def test_linear_oscillator_windows_span_a_plane() -> None:
    u = ode.windows("linear", L, 200, np.random.default_rng(0))
    s = np.linalg.svd(u, compute_uv=False)
    assert s[2] < 1e-12 * s[0] < s[1]  # rank 2: the window is a function of (x_0, x'_0), linearly
    assert np.linalg.svd(ode.windows("duffing", L, 200, np.random.default_rng(0)), compute_uv=False)[2] > 1e-4 * s[0]


def test_ridge_with_white_noise_is_the_minimum_norm_solution() -> None:
    """E ũũᵀ = I: the readout learned from white-noise windows is the pseudo-inverse again."""
    rows, _ = ode.reconstruction_rows(["white"], ["ring_0.9_1", "real_0_1"], [4, 8], L, [0.0], [0])
    for r in rows:
        assert r["ridge_err"] == pytest.approx(r["lstsq_err"], rel=0.05), r


@pytest.mark.parametrize("name", [*SPECTRA, *ode.EXTRA_SPECTRA])
def test_linear_oscillator_is_read_out_exactly_once_the_state_holds_two_reals(name: str) -> None:
    """The law: windows in a 2-d subspace are recovered to rounding once the state holds 2 real
    numbers — N ≥ 2 for real λ (and the roots of unity, whose N = 1 is λ = 1), N ≥ 1 for a ring."""
    rows, _ = ode.reconstruction_rows(["linear"], [name], [1, 2, 3], L, [0.0], [0], n_train=200, n_val=100,
                                      n_test=100)
    err = {r["N"]: r["ridge_err"] for r in rows}
    one_real = name.startswith("real") or name == "roots_of_unity"
    assert (err[1] > 0.3) if one_real else (err[1] < 1e-10), err
    assert err[2] < 1e-10 and err[3] < 1e-10, err


def test_ode_inputs_need_far_fewer_eigenvalues_than_white_noise() -> None:
    rows, pca = ode.reconstruction_rows(["white", "duffing"], ["ring_0.9_1", "ring_0.9_1_pi/4"], [8], L, [0.0],
                                        [0], n_train=1000, n_val=300, n_test=300)
    err = {(r["input"], r["spectrum"]): r["ridge_err"] for r in rows}
    assert err["white", "ring_0.9_1"] > 0.5  # 16 reals cannot hold 32 independent inputs
    assert err["duffing", "ring_0.9_1"] < 0.3 * err["white", "ring_0.9_1"]
    # eigenvalues in the inputs' band do far better still, near the best linear summary of 16 reals
    assert err["duffing", "ring_0.9_1_pi/4"] < 0.1 * err["duffing", "ring_0.9_1"]
    best16 = {p["input"]: p["pca_err"][16] for p in pca}
    assert err["duffing", "ring_0.9_1_pi/4"] < 20 * best16["duffing"] and best16["white"] > 0.6


def test_pca_errors_of_a_known_law() -> None:
    rng = np.random.default_rng(0)
    train = np.diag([3.0, 2.0, 1.0]) @ rng.standard_normal((3, 20000))
    e = ode.pca_errors(train, train)
    assert e[0] == pytest.approx(1) and e[3] < 1e-12
    assert e[1] == pytest.approx(np.sqrt(5 / 14), rel=0.03) and e[2] == pytest.approx(np.sqrt(1 / 14), rel=0.03)


def test_reproduce_writes_json_png_and_report_section(tmp_path, monkeypatch) -> None:
    tiny = ode.Setting(sizes=(1, 4), L=16, noises=(0.0, 1e-6), n_train=100, n_val=50, n_test=50,
                       inputs=("white", "linear"), spectra=("real_0_1", "ring_0.9_1"),
                       train=trained.Setting(sizes=(2,), seeds=(0,), steps=4, seq_len=16, lag=4, d_model=8,
                                             batch_size=4, tasks=("ode",)))
    monkeypatch.setattr(ode, "QUICK", tiny)
    assert main(["reproduce", "ode", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ode.json").read_text())
    assert data["meta"]["name"] == "ode" and len(data["rows"]) == 2 * 2 * 2 * 2
    assert {r["arm"] for r in data["trained"]} == {"complex", "real"}
    for r in data["trained"]:
        assert r["task"] == "ode" and 0 < r["held_out_rel_err"] < 10
        assert r["held_out_rel_err"] == pytest.approx(r["rel_err"], rel=0.25)  # one map: same seed for both
        assert "kind: ode" in (tmp_path / "runs" / trained.run_name("ode", r["arm"], 2, 0) / "config.yaml").read_text()
    assert (tmp_path / "ode.png").stat().st_size > 5000
    report = (tmp_path / "report.md").read_text()
    assert report.count("## ode") == 1 and "![ode](ode.png)" in report and "| linear | `ring_0.9_1` |" in report
    assert "PCA, r = 2N reals" in report and "| 2 |" in report


def test_settings_are_consistent() -> None:
    for st in (ode.QUICK, ode.FULL):
        assert set(st.inputs) == set(ode.INPUTS) and st.train.tasks == ("ode",) and max(st.sizes) <= st.L
