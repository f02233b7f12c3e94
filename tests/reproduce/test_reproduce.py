"""``ssm-train reproduce``: Vandermonde conditioning, reconstruction from the state, trained models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ssm_train.run
from ssm_train.analysis import trained
from ssm_train.analysis.reconstruction import final_state, memory_curves, reconstruction_errors
from ssm_train.analysis.spectra import SPECTRA, spectrum
from ssm_train.analysis.vandermonde import condition_number, condition_numbers, vandermonde
from ssm_train.cli import main
from ssm_train.reproduce import write_section

SIZES = [8, 16, 32, 64, 128]


# ------------------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("name", list(SPECTRA))
def test_spectra_have_the_stated_support(name: str) -> None:
    lam = spectrum(name, 64, seed=3)
    assert lam.dtype == np.complex128 and lam.shape == (64,)
    r = np.abs(lam)
    lo, hi = {"real_0_1": (0, 1), "real_0.9_1": (0.9, 1), "ring_0.9_1": (0.9, 1), "ring_0_1": (0, 1),
              "roots_of_unity": (1 - 1e-12, 1 + 1e-12)}[name]
    assert np.all((lo <= r) & (r <= hi))
    assert np.all(lam.imag == 0) == name.startswith("real")
    if name.startswith("ring"):  # full phase: every quadrant is hit
        assert len({(np.sign(z.real), np.sign(z.imag)) for z in lam}) == 4
    assert np.array_equal(lam, spectrum(name, 64, seed=3))  # deterministic by seed


# --------------------------------------------------------------------------------- vandermonde


@settings(max_examples=30, deadline=None)
@given(st.lists(st.complex_numbers(max_magnitude=1.0, allow_nan=False), min_size=1, max_size=6),
       st.integers(1, 9))
def test_vandermonde_entries_are_powers(lam: list[complex], L: int) -> None:
    V = vandermonde(np.array(lam), L)
    ref = np.ones((len(lam), L), dtype=np.complex128)  # by repeated multiplication
    for j in range(1, L):
        ref[:, j] = ref[:, j - 1] * np.array(lam)
    np.testing.assert_allclose(V, ref, rtol=1e-12, atol=1e-300)


def test_roots_of_unity_give_condition_number_one() -> None:
    rows = condition_numbers(SIZES, seeds=[0], spectra=["roots_of_unity"])
    assert [r["N"] for r in rows] == SIZES
    for r in rows:
        assert abs(r["cond"] - 1) < 1e-4 and not r["saturated"] and abs(r["cond_real_system"] - 1) < 1e-4


def test_real_condition_number_grows_with_n_and_dwarfs_the_ring() -> None:
    sizes = [2, 4, 6, 8, 10]
    rows = condition_numbers(sizes, seeds=list(range(9)), spectra=["real_0_1", "ring_0.9_1"])

    def median(name: str, n: int) -> float:
        return float(np.median([r["cond"] for r in rows if r["spectrum"] == name and r["N"] == n]))

    real = [median("real_0_1", n) for n in sizes]
    assert all(b > 3 * a for a, b in zip(real, real[1:])), real  # exponential growth
    assert real[-1] > 1e4 * median("ring_0.9_1", 10)
    saturated = condition_numbers([64], seeds=[0], spectra=["real_0_1"])[0]
    assert saturated["saturated"] and saturated["cond"] > 1 / (64 * np.finfo(float).eps)


@pytest.mark.parametrize("L", [16, 128])
def test_half_shifted_roots_read_real_inputs_perfectly_at_equal_real_state_size(L: int) -> None:
    """N = L/2 complex eigenvalues exp(2πi(k + 1/2)/L), no two conjugate: the real system of L
    equations for L real inputs is a scaled orthogonal matrix (the claim in docs/RESULTS.md)."""
    from ssm_train.analysis.vandermonde import real_system

    lam = np.exp(2j * np.pi * (np.arange(L // 2) + 0.5) / L)
    cond, _ = condition_number(real_system(vandermonde(lam, L)))
    assert abs(cond - 1) < 1e-8


def test_condition_number_of_a_known_matrix() -> None:
    assert condition_number(np.diag([4.0, 2.0, 0.5])) == (8.0, False)
    assert condition_number(np.array([[1.0, 1.0], [1.0, 1.0]]))[1]  # singular: saturated


# ------------------------------------------------------------------------------ reconstruction


def test_final_state_is_the_vandermonde_map_of_the_reversed_inputs() -> None:
    rng = np.random.default_rng(0)
    lam, u = spectrum("ring_0.9_1", 12, 1), rng.standard_normal((20, 3))
    np.testing.assert_allclose(final_state(lam, u), vandermonde(lam, 20) @ u[::-1], rtol=1e-12)


@pytest.mark.parametrize("n", [8, 32, 128])
def test_roots_of_unity_without_noise_recover_the_inputs_to_float32_precision(n: int) -> None:
    rel, by_lag = reconstruction_errors(spectrum("roots_of_unity", n), n, 0.0, 8, np.random.default_rng(n))
    assert rel.max() < np.finfo(np.float32).eps and by_lag.shape == (n, 8)


def test_state_noise_is_amplified_by_the_conditioning() -> None:
    rng = np.random.default_rng(0)
    roots, _ = reconstruction_errors(spectrum("roots_of_unity", 32), 32, 1e-6, 16, rng)
    assert 1e-7 < roots.mean() < 3e-6  # κ = 1: the error is the noise
    real, _ = reconstruction_errors(spectrum("real_0.9_1", 32), 32, 1e-6, 16, rng)
    assert real.mean() > 1.0  # worse than answering zero
    clean, _ = reconstruction_errors(spectrum("real_0.9_1", 32), 32, 0.0, 16, rng)
    assert clean.mean() > 0.1  # even rounding alone is fatal at N = 32


def test_memory_curve_of_the_roots_of_unity_is_aliasing() -> None:
    """With N < L, λ^N = 1 makes lags k and k + N indistinguishable: the minimum-norm solution
    averages the L/N aliases, so every lag has error sqrt(1 - N/L)."""
    (row,) = memory_curves(8, 32, [0.0], [0], draws=256, spectra=["roots_of_unity"])
    assert len(row["err_by_lag"]) == 32
    assert np.mean(row["err_by_lag"]) == pytest.approx(np.sqrt(1 - 8 / 32), rel=0.05)


def test_glorot_ring_remembers_recent_inputs_first() -> None:
    (row,) = memory_curves(32, 128, [0.0], [0], draws=64, spectra=["ring_0_1"])
    err = np.array(row["err_by_lag"])
    assert err[:8].max() < 1e-3 and err[-32:].mean() > 0.5


# ----------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("name", ["vandermonde", "reconstruction"])
def test_reproduce_writes_json_png_and_one_report_section(tmp_path, name: str) -> None:
    for _ in range(2):  # a second run replaces its section
        assert main(["reproduce", name, "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["meta"]["name"] == name and data["meta"]["quick"] is True
    keys = {"vandermonde": {"spectrum", "N", "L", "cond", "seed"},
            "reconstruction": {"spectrum", "N", "L", "noise", "rel_err", "seed"}}[name]
    assert all(keys <= set(r) for r in data["rows"]) and {r["spectrum"] for r in data["rows"]} == set(SPECTRA)
    assert (tmp_path / f"{name}.png").stat().st_size > 5000
    report = (tmp_path / "report.md").read_text()
    assert report.count(f"## {name}") == 1 and f"![{name}]({name}.png)" in report
    assert f"ssm-train reproduce {name} --quick" in report and "`roots_of_unity`" in report
    if name == "vandermonde":  # quartiles next to the median, for the random spectra
        assert "[first, third quartile]" in report and "| `ring_0.9_1` | " in report
        assert all(" [" in cell for cell in report.split("| `ring_0_1` | ")[1].split("\n")[0].split(" | ")[:3])
    else:  # both readouts, in the rows, the tables and the memory table
        assert {r["readout"] for r in data["rows"]} == {"lstsq", "tsvd"}
        assert {r["readout"] for r in data["memory"]} == {"lstsq", "tsvd"}
        assert "| 1e-06 | tsvd |" in report and "noise 1e-06, tsvd |" in report


def test_report_sections_are_replaced_in_place(tmp_path) -> None:
    report = tmp_path / "report.md"
    write_section(report, "a", "## a\nfirst\n")
    write_section(report, "b", "## b\nsecond\n")
    write_section(report, "a", "## a\nthird\n")
    text = report.read_text()
    assert text.index("third") < text.index("second") and "first" not in text and text.count("## a") == 1


def test_reproduce_trained_fits_both_arms_and_reuses_finished_runs(tmp_path, monkeypatch) -> None:
    tiny = trained.Setting(sizes=(2,), seeds=(0,), steps=4, seq_len=16, lag=4, d_model=8, batch_size=4,
                           tasks=("copy",))
    monkeypatch.setattr(trained, "QUICK", tiny)
    assert main(["reproduce", "trained", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "trained.json").read_text())["rows"]
    assert sorted(r["arm"] for r in rows) == ["complex", "real"]
    for r in rows:
        assert r["task"] == "copy" and r["N"] == 2 and r["steps"] == 4 and 0 < r["rel_err"] < 10
        # copy has no random map: held-out samples and the validation batches measure the same thing
        assert r["held_out_rel_err"] == pytest.approx(r["rel_err"], rel=0.25)
        cfg = (tmp_path / "runs" / trained.run_name("copy", r["arm"], 2, 0) / "config.yaml").read_text()
        assert ("kind: real" in cfg) == (r["arm"] == "real") and "d_state: 2" in cfg
    assert "| 2 |" in (tmp_path / "report.md").read_text() and (tmp_path / "trained.png").is_file()

    def no_training(cfg):
        raise AssertionError(f"{cfg.name} was trained again")

    monkeypatch.setattr(ssm_train.run, "fit", no_training)
    assert main(["reproduce", "trained", "--quick", "--out", str(tmp_path)]) == 0


def test_unknown_result_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["reproduce", "vandermond", "--out", str(tmp_path)]) == 2
    assert "unknown result 'vandermond'; valid: vandermonde, reconstruction, trained" in capsys.readouterr().err


# ------------------------------------------------------- regularised readout, spread over seeds


def test_tsvd_cut_is_the_noise_per_singular_direction() -> None:
    from ssm_train.analysis.reconstruction import tsvd_cut

    A = np.diag([4.0, 2.0, 0.5])
    s = np.array([4.0, 2.0, 0.5])
    assert tsvd_cut(A, s, 0.1) == pytest.approx(0.1 * np.sqrt(16 + 4 + 0.25) / np.sqrt(3))
    assert tsvd_cut(A, s, 0.0) == pytest.approx(3 * np.finfo(float).eps * 4)  # lstsq's own cut


def test_tsvd_readout_tames_noise_for_the_real_spectrum_and_leaves_the_roots_alone() -> None:
    lam = spectrum("real_0_1", 16, 0)
    lstsq, _ = reconstruction_errors(lam, 16, 1e-6, 16, np.random.default_rng(0), "lstsq")
    tsvd, _ = reconstruction_errors(lam, 16, 1e-6, 16, np.random.default_rng(0), "tsvd")
    assert lstsq.mean() > 1e3 and tsvd.mean() < 1 and tsvd.mean() < 1e-4 * lstsq.mean()
    roots = spectrum("roots_of_unity", 16)
    a, _ = reconstruction_errors(roots, 16, 1e-6, 16, np.random.default_rng(0), "lstsq")
    b, _ = reconstruction_errors(roots, 16, 1e-6, 16, np.random.default_rng(0), "tsvd")
    np.testing.assert_allclose(a, b, rtol=1e-8)  # κ = 1: nothing is below the cut
    with pytest.raises(ValueError, match="unknown readout"):
        reconstruction_errors(roots, 16, 0.0, 2, np.random.default_rng(0), "pinv")


def test_tsvd_recovers_more_lags_of_the_glorot_disk_under_noise() -> None:
    from ssm_train.analysis.reconstruction import first_lost_lag

    rows = memory_curves(32, 128, [1e-6], [0], draws=64, spectra=["ring_0_1", "real_0_1"], readouts=("lstsq", "tsvd"))
    lag = {(r["spectrum"], r["readout"]): first_lost_lag(r["err_by_lag"]) for r in rows}
    assert lag["ring_0_1", "tsvd"] > lag["ring_0_1", "lstsq"] + 10
    assert lag["real_0_1", "lstsq"] == 0 < lag["real_0_1", "tsvd"]


def test_condition_number_quartiles_show_the_spread_of_random_rings() -> None:
    from ssm_train.analysis.vandermonde import quartile_table

    rows = condition_numbers([32], seeds=list(range(10)), spectra=["ring_0.9_1", "roots_of_unity"])
    q1, q2, q3 = quartile_table(rows, "cond")["ring_0.9_1", 32]
    conds = sorted(r["cond"] for r in rows if r["spectrum"] == "ring_0.9_1")
    assert conds[0] <= q1 < q2 < q3 <= conds[-1] and q2 == pytest.approx(np.median(conds))
    assert q3 > 3 * q1  # seeds move a random ring's κ by far more than a median suggests
    r1, _, r3 = quartile_table(rows, "cond")["roots_of_unity", 32]
    assert r3 == pytest.approx(r1)
