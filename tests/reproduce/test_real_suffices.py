"""``ssm-train reproduce real_suffices``: exact κ in high precision, float32 against float64, copy task."""

from __future__ import annotations

import json

import mpmath
import numpy as np
import pytest

from ssm_train.analysis import real_suffices as rs
from ssm_train.analysis.vandermonde import condition_number, vandermonde
from ssm_train.cli import main


@pytest.mark.parametrize("name", list(rs.NODES))
def test_node_sets_are_what_they_say(name: str) -> None:
    lam = rs.nodes(name, 16, seed=2)
    assert lam.dtype == np.complex128 and lam.shape == (16,) and len(np.unique(lam)) == 16
    assert np.all(np.abs(lam) <= 1 + 1e-12) and np.all(lam.imag == 0) == (name != "roots_of_unity")
    if name in ("cheb_-1_1", "equi_-1_1", "real_signed"):  # signed: both halves of [-1, 1]
        assert (lam.real < 0).any() and (lam.real > 0).any()
    if name in ("cheb_0_1", "real_0_1"):
        assert np.all(lam.real >= 0)
    assert np.array_equal(lam, rs.nodes(name, 16, seed=2))


@pytest.mark.parametrize("name", ["cheb_-1_1", "roots_of_unity", "real_signed"])
def test_inverse_vandermonde_is_the_inverse(name: str) -> None:
    lam = rs.nodes(name, 12, seed=1)
    V, V_inv = vandermonde(lam, 12), rs.inverse_vandermonde(lam, 60)
    # the product in float64 is only good to ~κ·eps
    kappa = np.linalg.norm(V, 2) * np.linalg.norm(V_inv, 2)
    np.testing.assert_allclose(V_inv @ V, np.eye(12), atol=100 * kappa * np.finfo(float).eps)


def test_exact_kappa_agrees_with_a_high_precision_svd() -> None:
    """The Lagrange-inverse route against mpmath's own SVD of V (independent of numpy)."""
    lam = rs.nodes("real_0_1", 10, seed=0)
    with mpmath.workdps(60):
        V = mpmath.matrix([[mpmath.mpf(float(x.real)) ** j for j in range(10)] for x in lam])
        s = mpmath.svd_r(V, compute_uv=False)
        ref = float(max(s) / min(s))
    kappa, rel_diff, _ = rs.exact_condition_number(lam)
    assert kappa == pytest.approx(ref, rel=1e-10) and rel_diff < 1e-12


@pytest.mark.parametrize("name", list(rs.NODES))
def test_exact_kappa_equals_numpy_where_float64_resolves_it(name: str) -> None:
    checked = 0
    for n in (4, 6, 8):
        lam = rs.nodes(name, n, seed=3)
        kappa, rel_diff, _ = rs.exact_condition_number(lam)
        k64, saturated = condition_number(vandermonde(lam, n))
        if kappa * np.finfo(float).eps < 1e-8:  # numpy's error is ~κ·eps relative
            assert not saturated and k64 == pytest.approx(kappa, rel=1e-6) and rel_diff < 1e-12
            checked += 1
    assert checked >= 2


def test_exact_kappa_goes_far_beyond_float64_saturation() -> None:
    """The values quoted in the issue are seed 0 of real_0_1: 4.6e19 at N = 16, 8.9e38 at N = 32."""
    rows = rs.kappa_rows((16, 32), seeds=(0,), names=("real_0_1",))
    k16, k32 = rows
    assert k16["kappa"] == pytest.approx(4.6e19, rel=0.01) and k32["kappa"] == pytest.approx(8.92e38, rel=0.01)
    assert k32["saturated"] and k32["kappa"] > 1e15 * k32["kappa_float64"]  # float64 stops near 1e18
    assert all(r["rel_diff"] < 1e-12 for r in rows)  # twice the digits: the same number


def test_spread_nodes_are_better_conditioned_and_signs_help() -> None:
    rows = rs.kappa_rows((16,), seeds=tuple(range(5)), names=("real_0_1", "real_signed", "cheb_0_1", "cheb_-1_1"))

    def med(name: str) -> float:
        return float(np.median([r["kappa"] for r in rows if r["nodes"] == name]))

    assert med("cheb_0_1") < 1e-6 * med("real_0_1")  # spread beats random on the same interval
    assert med("cheb_0_1") < 1e-4 * min(r["kappa"] for r in rows if r["nodes"] == "real_0_1")  # every draw
    assert med("cheb_-1_1") < 1e-3 * med("cheb_0_1")  # signed beats positive: ~ the square root
    assert med("real_signed") < 1e-3 * med("real_0_1")
    assert med("cheb_-1_1") < 1e6 < 1 / np.finfo(np.float32).eps  # readable even in float32


def test_float32_breaks_at_smaller_n_than_float64_where_kappa_eps_is_about_one() -> None:
    rows = rs.precision_rows((8, 16, 24, 32, 40, 48), seeds=(0,), draws=8, names=("cheb_-1_1",))
    (ok64, break64), (ok32, break32) = (rs.breaking_point(rows, "cheb_-1_1", d) for d in rs.DTYPES)
    assert break32 is not None and break64 is not None and break32 < break64
    for dtype, ok, broken in (("float64", ok64, break64), ("float32", ok32, break32)):
        kappa_eps = {r["N"]: r["kappa"] * rs.EPS[dtype] for r in rows if r["dtype"] == dtype}
        assert kappa_eps[ok] < 3 and kappa_eps[broken] > 1e-2  # the break sits where κ·eps ≈ 1
    by = {(r["N"], r["dtype"], r["readout"]): r for r in rows}
    assert by[48, "float32", "lstsq"]["rel_err"] > 10 > 1 > by[48, "float32", "tsvd"]["rel_err"]
    assert by[8, "float32", "lstsq"]["state_err"] < 2 * rs.EPS["float32"]  # the tsvd cut's noise level


def test_copy_task_least_squares_works_where_kappa_allows_and_gradient_training_lags() -> None:
    rows = rs.copy_rows((4, 16), seeds=(0,), train_sequences=32, adam_steps=200, adam_lr=3e-2,
                        names=("cheb_-1_1", "roots_of_unity"))

    def err(name: str, n: int, dtype: str, readout: str, lag: int) -> float:
        key = (name, n, dtype, readout, lag)
        (r,) = [r for r in rows if (r["nodes"], r["N"], r["dtype"], r["readout"], r["lag"]) == key]
        return r["rel_err"]

    assert {r["lag"] for r in rows if r["N"] == 16} == {1, 8, 15}
    assert err("cheb_-1_1", 16, "float64", "lstsq", 8) < 1e-8  # κ = 2.8e5: exact in float64
    assert err("cheb_-1_1", 16, "float32", "lstsq", 8) > 1e3 * err("cheb_-1_1", 16, "float64", "lstsq", 8)
    assert err("roots_of_unity", 16, "float32", "adam", 8) < 1e-4  # κ = 1: gradient training finds it
    assert err("cheb_-1_1", 16, "float32", "adam", 8) > 0.1  # κ = 2.8e5: 200 steps do not


def test_reproduce_real_suffices_writes_json_png_and_report(tmp_path, monkeypatch) -> None:
    tiny = rs.Setting(kappa_sizes=(4, 16), recon_sizes=(4, 8, 16), copy_sizes=(4, 8), seeds=(0, 1), copy_seeds=(0,),
                      draws=4, train_sequences=16, adam_steps=20, names=("real_0_1", "cheb_-1_1", "roots_of_unity"))
    monkeypatch.setattr(rs, "QUICK", tiny)
    assert main(["reproduce", "real_suffices", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "real_suffices.json").read_text())
    assert data["meta"]["name"] == "real_suffices" and {r["part"] for r in data["rows"]} == {
        "kappa", "reconstruction", "copy"}
    assert (tmp_path / "real_suffices.png").stat().st_size > 5000
    report = (tmp_path / "report.md").read_text()
    assert "## real_suffices" in report and "`cheb_-1_1`" in report and "seed 0: κ = " in report
