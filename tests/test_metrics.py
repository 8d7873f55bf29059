"""medai.metrics agrees with scikit-learn and degrades to None (with reasons) on degenerate data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from medai import metrics, resampling


def _data(seed: int, n: int = 400, ties: bool = False, prevalence: float = 0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.int8)
    scores = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    if ties:
        scores = np.round(scores, 1)  # few distinct values: many tied scores across classes
    return y, scores.astype(np.float32)


CASES = [(seed, ties) for seed in range(4) for ties in (False, True)]


@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_ranking_metrics_match_sklearn(seed: int, ties: bool) -> None:
    y, scores = _data(seed, ties=ties)
    assert metrics.roc_auc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
    assert metrics.average_precision(y, scores) == pytest.approx(
        skm.average_precision_score(y, scores), abs=1e-12
    )
    # sklearn squares float32 scores in float32; ours works in float64.
    assert metrics.brier_score(y, scores) == pytest.approx(
        skm.brier_score_loss(y, scores), abs=1e-6
    )


@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_roc_curve_and_youden_match_sklearn(seed: int, ties: bool) -> None:
    y, scores = _data(seed, ties=ties)
    curve = metrics.roc_curve(y, scores)
    fpr, tpr, thresholds = skm.roc_curve(y, scores)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_array_equal(curve.thresholds, thresholds)
    fpr, tpr, thresholds = skm.roc_curve(y, scores, drop_intermediate=False)
    assert metrics.youden_threshold(y, scores) == thresholds[np.argmax(tpr - fpr)]


@pytest.mark.parametrize("threshold", [0.2, 0.45, 0.5, 0.8])
def test_threshold_metrics_match_sklearn(threshold: float) -> None:
    y, scores = _data(7, ties=True)
    values, reasons = metrics.threshold_metrics(y, scores, threshold)
    called = (scores >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, called, labels=[0, 1]).ravel()
    assert (values["tp"], values["fp"], values["tn"], values["fn"]) == (tp, fp, tn, fn)
    assert values["sensitivity"] == pytest.approx(skm.recall_score(y, called))
    assert values["specificity"] == pytest.approx(skm.recall_score(y, called, pos_label=0))
    assert values["ppv"] == pytest.approx(skm.precision_score(y, called))
    assert values["npv"] == pytest.approx(skm.precision_score(y, called, pos_label=0))
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(y, called))
    assert values["f1"] == pytest.approx(skm.f1_score(y, called))
    assert values["threshold"] == threshold
    assert reasons == []


def test_threshold_metrics_zero_denominators_are_none_with_reasons() -> None:
    y = np.zeros(5, dtype=np.int8)
    values, reasons = metrics.threshold_metrics(y, np.full(5, 0.1), 0.5)
    assert values["sensitivity"] is None and values["ppv"] is None and values["f1"] is None
    assert values["specificity"] == 1.0 and values["npv"] == 1.0 and values["tn"] == 5
    assert any(r.startswith("sensitivity") for r in reasons)
    assert any(r.startswith("ppv") for r in reasons)

    values, reasons = metrics.threshold_metrics(np.array([]), np.array([]), 0.5)
    assert values["accuracy"] is None and values["tp"] == 0
    assert any("no labelled predictions" in r for r in reasons)

    values, reasons = metrics.threshold_metrics(y, np.full(5, 0.1), None)
    assert all(value is None for value in values.values())
    assert reasons == ["no threshold available"]


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        (np.array([], dtype=np.int8), "no labelled predictions"),
        (np.ones(6, dtype=np.int8), "only one class present (6 positive, 0 negative)"),
        (np.zeros(3, dtype=np.int8), "only one class present (0 positive, 3 negative)"),
    ],
)
def test_degenerate_data_gives_none(y: np.ndarray, expected: str) -> None:
    scores = np.linspace(0, 1, y.size)
    assert metrics.class_reason(y) == expected
    assert metrics.roc_auc(y, scores) is None
    assert metrics.roc_curve(y, scores) is None
    assert metrics.youden_threshold(y, scores) is None
    assert resampling.auc_ci(y, scores, 1000, 0) is None
    result, reasons = resampling.paired_auc_difference(y, scores, scores, 1000, 0)
    assert all(value is None for value in result.values())
    assert reasons == [f"AUC comparison undefined: {expected}"]
    if y.size == 0:
        assert metrics.brier_score(y, scores) is None
    if not y.any():
        assert metrics.average_precision(y, scores) is None


def test_average_precision_with_only_positives_is_one() -> None:
    assert metrics.average_precision(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0


def test_bootstrap_resamples_equal_sklearn_on_the_resampled_data() -> None:
    """Each bootstrap AUC is exactly the AUC of an explicit stratified resample."""
    y, scores = _data(3, n=60, ties=True)
    seed, n_boot = 11, 25
    boot = resampling.bootstrap_aucs(y, [scores], n_boot, seed)[:, 0]
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    # Small data fits one chunk: the draws are all positives, then all negatives.
    rng = np.random.default_rng(seed)
    pick_pos = positives[rng.integers(0, positives.size, size=(n_boot, positives.size))]
    pick_neg = negatives[rng.integers(0, negatives.size, size=(n_boot, negatives.size))]
    for row in range(n_boot):
        index = np.r_[pick_pos[row], pick_neg[row]]
        assert boot[row] == pytest.approx(skm.roc_auc_score(y[index], scores[index]), abs=1e-12)


def test_auc_ci_is_seeded_and_brackets_the_auc() -> None:
    y, scores = _data(5, n=2000)
    first = resampling.auc_ci(y, scores, 1000, seed=1)
    assert first == resampling.auc_ci(y, scores, 1000, seed=1)
    assert first != resampling.auc_ci(y, scores, 1000, seed=2)
    low, high = first
    assert low < metrics.roc_auc(y, scores) < high
    assert 0.01 < high - low < 0.1
    assert resampling.auc_ci(y, scores, 0, seed=1) is None


def test_bootstrap_fills_every_resample_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    y, scores = _data(2, n=500)
    auc = metrics.roc_auc(y, scores)
    monkeypatch.setattr(resampling, "_CHUNK_ELEMENTS", 500 * 7)  # 7 resamples a chunk, last partial
    chunked = resampling.bootstrap_aucs(y, [scores, 1 - scores], 40, seed=3)
    assert chunked.shape == (40, 2)
    assert np.all(np.abs(chunked[:, 0] - auc) < 0.1)
    np.testing.assert_allclose(chunked[:, 1], 1 - chunked[:, 0])
    np.testing.assert_array_equal(
        chunked, resampling.bootstrap_aucs(y, [scores, 1 - scores], 40, 3)
    )


def test_paired_difference_of_identical_scores_is_zero() -> None:
    y, scores = _data(4)
    result, reasons = resampling.paired_auc_difference(y, scores, scores, 1000, 0)
    assert reasons == []
    assert result["auc_difference"] == 0.0
    assert result["auc_difference_ci95"] == [0.0, 0.0]


def test_paired_difference_detects_the_better_model() -> None:
    rng = np.random.default_rng(0)
    y, good = _data(6, n=3000)
    noisy = np.clip(good + rng.normal(0, 0.3, y.size), 0, 1)
    result, _ = resampling.paired_auc_difference(y, good, noisy, 1000, 0)
    assert result["auc_a"] == pytest.approx(skm.roc_auc_score(y, good))
    assert result["auc_b"] == pytest.approx(skm.roc_auc_score(y, noisy))
    low, high = result["auc_difference_ci95"]
    assert 0 < low < result["auc_difference"] < high


@pytest.mark.parametrize("seed", range(3))
def test_calibration_bins_match_sklearn(seed: int) -> None:
    y, scores = _data(seed, ties=seed == 2)
    bins = metrics.calibration_bins(y, scores)
    fraction, predicted = calibration_curve(y, scores, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(bins["fraction_positive"], fraction)
    np.testing.assert_allclose(bins["mean_predicted"], predicted, rtol=1e-6)
    assert sum(bins["count"]) == y.size
    assert metrics.calibration_bins([], []) == {
        "mean_predicted": [],
        "fraction_positive": [],
        "count": [],
    }


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        metrics.roc_auc([0, 1], [0.5])


def test_subgroup_bootstrap_equals_sklearn_on_each_resampled_subgroup() -> None:
    """Within a subgroup, each resample's AUC is sklearn's on the resampled subgroup members."""
    y, scores = _data(8, n=80, ties=True)
    codes = np.random.default_rng(1).integers(-1, 3, y.size)  # 3 subgroups, some unknown
    seed, n_boot = 4, 15
    boot = resampling.bootstrap(y, [scores], n_boot, seed, strata=[codes], ece_bins=10)
    # The same resamples as the plain AUC bootstrap (one chunk: positives then negatives).
    np.testing.assert_array_equal(boot.aucs, resampling.bootstrap_aucs(y, [scores], n_boot, seed))
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    pick_pos = positives[rng.integers(0, positives.size, size=(n_boot, positives.size))]
    pick_neg = negatives[rng.integers(0, negatives.size, size=(n_boot, negatives.size))]
    [within] = boot.strata
    assert within.shape == (n_boot, 3)
    for row in range(n_boot):
        index = np.r_[pick_pos[row], pick_neg[row]]
        assert boot.ece[row] == pytest.approx(
            metrics.expected_calibration_error(y[index], scores[index]), abs=1e-12
        )
        for code in range(3):
            member = index[codes[index] == code]
            if len(set(y[member])) < 2:
                assert np.isnan(within[row, code])
                continue
            expected = skm.roc_auc_score(y[member], scores[member])
            assert within[row, code] == pytest.approx(expected, abs=1e-12)


def test_ece_ci_brackets_the_ece_and_is_seeded() -> None:
    y, scores = _data(9, n=3000)
    ece = metrics.expected_calibration_error(y, scores)
    low, high = resampling.ece_ci(y, scores, 500, seed=2)
    assert low < ece < high
    assert resampling.ece_ci(y, scores, 500, seed=2) == [low, high]
    assert resampling.ece_ci(y, scores, 0, seed=2) is None
    assert resampling.ece_ci(y, scores * 2, 500, seed=2) is None  # not probabilities


def test_percentile_interval_refuses_mostly_undefined_resamples() -> None:
    values = np.r_[np.full(20, np.nan), np.linspace(0.6, 0.8, 80)]
    assert metrics.percentile_interval(values) is None
    assert metrics.percentile_interval(values[15:]) == metrics.percentile_bounds(values[20:])
