"""metrics/paired.py: the paired candidate-vs-baseline statistic, by hand and against scipy's bootstrap."""
import numpy as np
import pytest

from polypjax.metrics import paired


def record(scores: dict, empty=()):
    return {"id": list(scores), "dice": list(scores.values()), "empty_mask": [i in empty for i in scores]}


def test_hand_computed_case_leaves_empty_masks_out():
    # "c" has an empty ground truth: the candidate predicted nothing there (1.0 under the mDice
    # convention), the baseline a false positive (0.0). Counted, that would be a +1 gain on it.
    cand = {0: record({"a": 0.8, "b": 0.6, "c": 1.0}, "c"), 1: record({"b": 0.5, "a": 0.9, "c": 1.0}, "c")}
    base = {0: record({"a": 0.7, "b": 0.7, "c": 0.0}, "c"), 1: record({"a": 0.6, "b": 0.6, "c": 0.0}, "c")}
    r = paired.paired_difference(cand, base)
    # Seed 0: (+0.1 - 0.1) / 2 = 0; seed 1: (+0.3 - 0.1) / 2 = 0.1.
    assert r["per_seed"] == pytest.approx([0.0, 0.1])
    assert r["mean"] == pytest.approx(0.05) and r["std"] == pytest.approx(np.sqrt(0.005))
    assert (r["num_images"], r["num_empty_excluded"], r["seeds"]) == (2, 1, [0, 1])
    # Seed-averaged differences a: +0.2, b: -0.1. Resampled means of two images are -0.1, +0.05 or
    # +0.2 with probabilities 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % points are the extremes.
    assert r["ci"] == pytest.approx((-0.1, 0.2))
    assert r["verdict"] == "no significant difference"
    assert paired.format_difference(r) == "+0.050 ± 0.071 [-0.100, +0.200] no significant difference"

    better = {s: record({"a": 0.9, "b": 0.8, "c": 1.0}, "c") for s in (0, 1)}
    assert paired.paired_difference(better, base)["verdict"] == "gain"
    assert paired.paired_difference(base, better)["verdict"] == "loss"
    one_seed = paired.paired_difference({0: cand[0]}, {0: base[0]})
    assert one_seed["std"] == 0.0 and one_seed["mean"] == pytest.approx(0.0)


def test_mismatched_runs_are_refused():
    base = {0: record({"a": 0.5, "b": 0.5})}
    with pytest.raises(paired.PairingError, match=r"baseline seed 0 and candidate seed 0 scored different test images: "
                       r"1 id\(s\) only in the first \(b\), 1 only in the second \(x\)"):
        paired.paired_difference({0: record({"a": 0.6, "x": 0.4})}, base)
    with pytest.raises(paired.PairingError, match="seeds differ"):
        paired.paired_difference({1: record({"a": 0.6, "b": 0.4})}, base)
    with pytest.raises(paired.PairingError, match="repeat"):
        paired.paired_difference({0: {"id": ["a", "a"], "dice": [1, 1], "empty_mask": [False] * 2}}, base)
    with pytest.raises(paired.PairingError, match="ground truth of b differs"):
        paired.paired_difference({0: record({"a": 0.6, "b": 0.4}, "b")}, base)
    only_empty = paired.paired_difference({0: record({"a": 1.0}, "a")}, {0: record({"a": 1.0}, "a")})
    assert only_empty["num_images"] == 0 and np.isnan(only_empty["mean"])


def test_interval_agrees_with_scipy_paired_percentile_bootstrap():
    from scipy import stats
    rng = np.random.default_rng(1)
    n, seeds = 60, (0, 1, 2)
    base_scores = rng.uniform(0.5, 0.9, (len(seeds), n))
    cand_scores = np.clip(base_scores + 0.02 + rng.normal(0, 0.05, base_scores.shape), 0, 1)
    ids = [f"img{i:03d}" for i in range(n)]
    as_runs = lambda x: {s: {"id": ids, "dice": x[k].tolist(), "empty_mask": [False] * n} for k, s in enumerate(seeds)}
    r = paired.paired_difference(as_runs(cand_scores), as_runs(base_scores))
    ref = stats.bootstrap((cand_scores.mean(0), base_scores.mean(0)), lambda a, b, axis: np.mean(a - b, axis=axis),
                          paired=True, vectorized=True, method="percentile", n_resamples=paired.NUM_RESAMPLES,
                          confidence_level=0.95, rng=np.random.default_rng(7)).confidence_interval
    diffs = (cand_scores - base_scores).mean(0)
    se = diffs.std(ddof=1) / np.sqrt(n)
    # Two independent 2000-resample estimates of each endpoint differ by ~0.09 standard errors.
    assert r["ci"][0] == pytest.approx(ref.low, abs=0.4 * se)
    assert r["ci"][1] == pytest.approx(ref.high, abs=0.4 * se)
    assert r["mean"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert r["ci"][0] < r["mean"] < r["ci"][1]
    # Fixed resampling seed: the same interval every time.
    assert paired.paired_difference(as_runs(cand_scores), as_runs(base_scores))["ci"] == r["ci"]


def test_augmented_copies_baseline_is_named_like_for_like():
    """An augmented-copies run beside mixed+aug is its own baseline, not the one beside plain mixed
    (the paired table keys baselines by name: the two would overwrite each other)."""
    from polypjax.experiments.report import baseline_name
    assert baseline_name({"generator": "augmented_copies", "regime": "mixed"}) == "augmented_copies"
    assert baseline_name({"generator": "augmented_copies-N50", "regime": "mixed+aug"}) == "augmented_copies+aug"
    assert baseline_name({"generator": "none", "regime": "copy_paste+aug"}) == "copy_paste+aug"
    assert baseline_name({"generator": "joint-inpaint", "regime": "mixed+aug"}) is None


def test_a_config_written_before_generate_paint_keeps_its_fingerprint():
    """generate.paint arrived after sets were generated: at its default it leaves a generate
    stage's fingerprint as it was, so a pipeline resumed with newer code does not regenerate."""
    from polypjax import configlib
    new = configlib.load_config("generate").to_dict()
    old = {k: v for k, v in new.items()}
    old["generate"] = {k: v for k, v in new["generate"].items() if k != "paint"}
    assert configlib.what_it_computes(new) == configlib.what_it_computes(old)
