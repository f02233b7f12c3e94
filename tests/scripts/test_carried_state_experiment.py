"""scripts/carried_state_experiment.py at toy size: its per-position evaluation against one forward
over the whole stream, its position bookkeeping, and one end-to-end run (two tiny trainings)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from tests.paths import ROOT, SHARED_DATA

spec = importlib.util.spec_from_file_location("carried_state_experiment", ROOT / "scripts/carried_state_experiment.py")
cse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cse)


@pytest.fixture(scope="module")
def shared_data():
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"the real corpora are not at {SHARED_DATA} (expected ../shared/data beside the project root)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cse_cache"))


def random_model(corpus: str, shared_data, cache_dir, tmp_path):
    """An untrained toy model of ``corpus``'s config and its config dict (as a checkpoint holds it)."""
    from ssm_train.config import load_config, to_dict
    from ssm_train.data.kinds import build_datamodule
    from ssm_train.tasks.base import build_backbone, spec_to_dict

    preset = cse.PRESETS["toy"]
    overrides = cse.fit_overrides(corpus, "carried", preset, shared_data, tmp_path, cache_dir)
    cfg = load_config([ROOT / cse.CORPORA[corpus]["config"]], overrides)
    spec = spec_to_dict(build_datamodule(cfg.data, cfg.seed).spec)
    torch.manual_seed(0)
    return build_backbone(cfg, spec).eval(), to_dict(cfg), spec


@pytest.mark.parametrize("corpus", ["ecoli", "austen"])
def test_carried_evaluation_is_one_forward_over_the_stream(corpus, shared_data, cache_dir, tmp_path):
    model, config, spec = random_model(corpus, shared_data, cache_dir, tmp_path)
    L, K = 16, 4
    batches = cse.heldout_batches(config, 6, K)
    assert len(batches) == K and batches[0]["inputs"].shape == (6, L)
    # the windows of one row continue each other: window k+1's first input is window k's last target
    assert torch.equal(batches[1]["inputs"][:, 0], batches[0]["targets"][:, -1])
    bits = {m: cse.stream_bits(model, batches, m, spec["ignore_index"]) for m in cse.MODES}
    whole = cse.concatenated_bits(model, batches, spec["ignore_index"])
    assert bits["carried"].shape == whole.shape == (6, K * L)
    np.testing.assert_allclose(bits["carried"], whole, rtol=0, atol=1e-4)
    # the first window starts from zero in every mode; later ones differ once the state is dropped
    np.testing.assert_array_equal(bits["reset"][:, :L], bits["carried"][:, :L])
    assert np.abs(bits["reset"][:, L:] - bits["carried"][:, L:]).max() > 1e-5
    # warm-up of one window: the carried state at window 1, not at window 2 (it forgets window 0)
    np.testing.assert_allclose(bits["warm1"][:, :2 * L], bits["carried"][:, :2 * L], rtol=0, atol=1e-4)
    assert np.abs(bits["warm1"][:, 2 * L:] - bits["carried"][:, 2 * L:]).max() > 1e-5
    if corpus == "austen":  # paragraphs start inside windows: the evaluation sees document resets
        assert cse.stream_resets(batches)[:, 1:].any()


def test_positions_since_the_last_reset_and_buckets():
    resets = np.zeros((2, 8), bool)
    resets[0, 3] = resets[1, 0] = resets[1, 6] = True
    assert cse.since_reset(resets).tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 1]]
    assert cse.pow2_edges(16) == [0, 1, 2, 4, 8, 16]
    bits = np.arange(16, dtype=float).reshape(2, 8)
    bits[1, 7] = np.nan  # an ignored target counts nowhere
    means, counts = cse.bucket_means(bits, cse.since_reset(resets), [0, 1, 4, 8])
    assert counts == [4, 8, 3]
    assert means == [np.mean([0, 3, 8, 14]), np.mean([1, 2, 4, 5, 6, 9, 10, 11]), np.mean([7, 12, 13])]


@pytest.mark.slow
def test_toy_run_writes_every_number_and_matches_the_trainers_validation(shared_data, cache_dir, tmp_path, capsys):
    out = tmp_path / "out"
    results = cse.main(["--toy", "--corpora", "ecoli", "--out", str(out), "--data-root", str(shared_data),
                        "--cache-dir", cache_dir])
    printed = capsys.readouterr().out
    saved = json.loads((out / "carried_state.json").read_text())
    assert saved["corpora"].keys() == {"ecoli"} and saved["tokens_per_arm"] == 4 * 4 * 16
    assert (out / "carried_state.png").stat().st_size > 10_000
    r = saved["corpora"]["ecoli"]
    preset = cse.PRESETS["toy"]
    L, K = preset["seq_len"], preset["stream_windows"]
    p = r["position"]
    S = p["n_streams"]
    assert S == preset["max_streams"] and (p["seq_len"], p["stream_windows"]) == (L, K)
    for key in ("window_index", "since_reset"):
        assert sum(p[key]["tokens"]) == S * K * L
    assert sum(p["within_window"]["tokens"]) == S * (K - 1) * L  # not the streams' first windows
    for arm in cse.ARMS:
        # the two arms were trained alike but for the carried state
        assert r["train"][arm]["step"] == preset["steps"] and r["train"][arm]["metric"] == "val/bpt"
        for mode in cse.MODES:
            assert math.isfinite(r["heldout"]["bpt"][arm][mode])
            assert len(p["per_position"][arm][mode]) == L and len(p["per_window"][arm][mode]) == K
            assert len(p["within_window"]["bpt"][arm][mode]) == len(p["within_window"]["labels"]) == 5
        # this evaluation of the trainer's own validation windows gives the trainer's val/bpt
        assert r["heldout"]["first_limit_val_batches_bpt"][arm][arm] == pytest.approx(r["train"][arm]["value"],
                                                                                      abs=2e-4)
        assert r["check_carried_minus_concatenated_max_abs_bits"][arm] < 1e-4
    assert results["corpora"]["ecoli"]["heldout"]["bpt"] == r["heldout"]["bpt"]
    assert "| ecoli | carried | **" in printed and "by inputs since the last state reset" in printed
