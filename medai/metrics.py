"""Binary-classifier metrics: the decision rule, thresholds, ROC/AUC, calibration, bootstrap CIs.

The one metrics module of medai: training (validation AUC, Youden and 90%-sensitivity
thresholds, AUC from histograms gathered across workers), scoring and prediction (the decision
rule :func:`is_positive`) and the report all use it.

Point estimates come from scikit-learn where it has the function (``roc_auc_score``,
``average_precision_score``, ``brier_score_loss``, ``calibration_curve``). The bootstrap is
NumPy, written to agree with scikit-learn on each resample (the tests check it) while staying
fast at archive scale: AUC is the Mann-Whitney statistic over tied score groups, so one
resample costs one ``bincount`` and one ``cumsum`` instead of a sort, and one set of resamples
serves the AUC CI, the ECE CI and every subgroup's AUC CI. Paired AUCs are also compared with
DeLong's test (:func:`delong_test`).

Conventions: ``y`` holds 0/1 labels, ``scores`` the predicted probability of the positive
class, and an image is called positive when ``score >= threshold`` compared in float32
(:func:`is_positive`, the rule of Parquet's ``predicted`` column; on float32
scores it is also the rule of the thresholds of :func:`sklearn.metrics.roc_curve`). A metric
that is undefined on the data (one class only, no rows, a zero denominator) is ``None``, and
the functions that build metric blocks add a human-readable entry to a ``reasons`` list saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "THRESHOLD_KEYS",
    "is_positive",
    "sensitivity_threshold",
    "auc_from_histograms",
    "Curve",
    "roc_auc",
    "average_precision",
    "brier_score",
    "roc_curve",
    "youden_threshold",
    "confusion_counts",
    "threshold_metrics",
    "bootstrap_aucs",
    "auc_ci",
    "Bootstrap",
    "bootstrap",
    "delong_test",
    "ece_ci",
    "paired_auc_difference",
    "percentile_interval",
    "calibration_bins",
    "expected_calibration_error",
    "class_reason",
]

THRESHOLD_KEYS = (
    "threshold",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "accuracy",
    "f1",
    "tp",
    "fp",
    "tn",
    "fn",
)
# Resamples are drawn in chunks so that the (resamples x score groups) arrays stay ~30 MB.
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Curve:
    """Points of a ROC curve, from the highest threshold down.

    Attributes:
        fpr: False-positive rate at each point, starting at 0.
        tpr: True-positive rate at each point, starting at 0.
        thresholds: Score cut-off of each point (``inf`` for the first, nothing predicted).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def _as_arrays(y, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int8, copy=False).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {scores.size}")
    return y, scores


def is_positive(scores, threshold: float) -> np.ndarray:
    """The one decision rule: ``score >= threshold``, compared in float32.

    Scores are stored as float32 (Parquet) and thresholds as JSON numbers; comparing both in
    float32 everywhere (Parquet's ``predicted``, the report, ``medai predict``) means a score
    exactly at the threshold is positive in all of them.

    Args:
        scores: Probabilities (any float dtype; NaN compares False).
        threshold: The operating threshold.

    Returns:
        A boolean array of the scores' shape.
    """
    return np.asarray(scores, dtype=np.float32) >= np.float32(threshold)


def sensitivity_threshold(
    labels: np.ndarray, scores: np.ndarray, target: float = 0.9
) -> float | None:
    """Highest threshold whose sensitivity reaches ``target``; ``None`` without positives."""
    labels = np.asarray(labels).astype(bool)
    positives = np.sort(np.asarray(scores, dtype=np.float64)[labels])[::-1]
    if positives.size == 0:
        return None
    needed = int(np.ceil(target * positives.size))
    return float(positives[needed - 1])


def auc_from_histograms(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """ROC AUC from score histograms of positives and negatives over the same bins.

    Pairs within one bin count as ties (half), so with fine bins this matches the exact AUC
    to within the bin width. Used where predictions live on several workers and only their
    summed histograms are gathered.
    """
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    n_pos, n_neg = positive.sum(), negative.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    negatives_below = np.concatenate([[0.0], np.cumsum(negative)[:-1]])
    wins = (positive * negatives_below).sum() + 0.5 * (positive * negative).sum()
    return float(wins / (n_pos * n_neg))


def class_reason(y) -> str | None:
    """Why ranking metrics are undefined on ``y``, or ``None`` when both classes are present."""
    y = np.asarray(y)
    positives = int(np.count_nonzero(y == 1))
    negatives = int(y.size - positives)
    if y.size == 0:
        return "no labelled predictions"
    if positives == 0 or negatives == 0:
        return f"only one class present ({positives} positive, {negatives} negative)"
    return None


def _dense_groups(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Rank of each score among the distinct scores (ties share a rank), and the rank count."""
    distinct, inverse = np.unique(scores, return_inverse=True)
    return inverse.ravel(), int(distinct.size)


def _class_runs(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Like :func:`_dense_groups`, but consecutive distinct scores of one class share a group.

    Negatives between two neighbouring positive scores rank alike against every positive (and
    vice versa), so merging such runs leaves every resample's AUC exact while the per-resample
    count arrays shrink from one entry per distinct score to about two per positive run.
    """
    dense, size = _dense_groups(scores)
    has_pos = np.bincount(dense[y == 1], minlength=size) > 0
    has_neg = np.bincount(dense[y == 0], minlength=size) > 0
    kind = has_pos.astype(np.int8) + 2 * has_neg.astype(np.int8)  # 1 pos, 2 neg, 3 tied both
    starts = np.r_[True, (kind[1:] != kind[:-1]) | (kind[1:] == 3)]
    run = np.cumsum(starts) - 1
    return run[dense], int(run[-1]) + 1 if size else 0


def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC from per-score-group positive and negative counts (last axis)."""
    below = np.cumsum(neg, axis=-1) - neg
    wins = np.einsum("...g,...g->...", pos, below + 0.5 * neg)
    return wins / (pos.sum(axis=-1) * neg.sum(axis=-1))


def roc_auc(y, scores) -> float | None:
    """Area under the ROC curve (:func:`sklearn.metrics.roc_auc_score`), ``None`` for one class."""
    from sklearn.metrics import roc_auc_score

    y, scores = _as_arrays(y, scores)
    if class_reason(y):
        return None
    return float(roc_auc_score(y, scores))


def _descending_counts(y: np.ndarray, scores: np.ndarray):
    """Cumulative true/false positives at each distinct score, highest score first."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked, labels = scores[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tps = np.cumsum(labels)[last_of_tie].astype(np.float64)
    fps = 1.0 + last_of_tie - tps
    return tps, fps, ranked[last_of_tie]


def average_precision(y, scores) -> float | None:
    """Average precision (step-wise area under precision-recall), ``None`` without positives."""
    from sklearn.metrics import average_precision_score

    y, scores = _as_arrays(y, scores)
    if not np.any(y == 1):
        return None
    return float(average_precision_score(y, scores))


def brier_score(y, scores) -> float | None:
    """Mean squared error of the scores as probabilities, ``None`` without rows."""
    from sklearn.metrics import brier_score_loss

    y, scores = _as_arrays(y, scores)
    if y.size == 0:
        return None
    # labels=[0, 1]: one-class data is still a valid Brier score.
    return float(brier_score_loss(y, scores, labels=[0, 1]))


def roc_curve(y, scores) -> Curve | None:
    """ROC curve at every distinct score, ``None`` with only one class.

    Points between which the curve is a straight line are dropped (like sklearn's
    ``drop_intermediate``) so that a curve over 100k images stays cheap to plot.
    """
    y, scores = _as_arrays(y, scores)
    if class_reason(y):
        return None
    tps, fps, thresholds = _descending_counts(y, scores)
    if tps.size > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps, thresholds = tps[corner], fps[corner], thresholds[corner]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    return Curve(fpr=fps / fps[-1], tpr=tps / tps[-1], thresholds=thresholds)


def youden_threshold(y, scores) -> float | None:
    """The score cut-off maximising sensitivity + specificity - 1 on this data.

    Ties go to the highest cut-off, as ``argmax`` over sklearn's ``roc_curve`` would.
    Returns ``None`` with only one class.
    """
    y, scores = _as_arrays(y, scores)
    if class_reason(y):
        return None
    tps, fps, thresholds = _descending_counts(y, scores)
    youden = tps / tps[-1] - fps / fps[-1]
    return float(thresholds[int(np.argmax(youden))])


def confusion_counts(y, scores, threshold: float) -> dict[str, int]:
    """True/false positives/negatives when ``score >= threshold`` is called positive."""
    y, scores = _as_arrays(y, scores)
    called = is_positive(scores, threshold)  # the one rule: float32 >=, as Parquet's predicted
    truth = y == 1
    return {
        "tp": int(np.count_nonzero(called & truth)),
        "fp": int(np.count_nonzero(called & ~truth)),
        "tn": int(np.count_nonzero(~called & ~truth)),
        "fn": int(np.count_nonzero(~called & truth)),
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def threshold_metrics(y, scores, threshold: float | None) -> tuple[dict, list[str]]:
    """Sensitivity, specificity, PPV, NPV, accuracy, F1 and the confusion counts at a cut-off.

    Args:
        y: 0/1 labels.
        scores: Predicted probabilities.
        threshold: The cut-off; ``None`` makes every value ``None``.

    Returns:
        ``(metrics, reasons)``: a dict with the keys of :data:`THRESHOLD_KEYS`, and why any
        value is ``None``.
    """
    if threshold is None:
        return dict.fromkeys(THRESHOLD_KEYS), ["no threshold available"]
    counts = confusion_counts(y, scores, threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    values = {
        "threshold": float(threshold),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        **counts,
    }
    why = {
        "sensitivity": "no positive images",
        "specificity": "no negative images",
        "ppv": "no image called positive",
        "npv": "no image called negative",
        "accuracy": "no labelled predictions",
        "f1": "no positive images and none called positive",
    }
    reasons = [f"{key} undefined: {text}" for key, text in why.items() if values[key] is None]
    return values, reasons


def _stratified_draws(y: np.ndarray, n_boot: int, seed: int, width: int):
    """Yield ``(start, rows, pick_pos, pick_neg)`` chunks of stratified bootstrap resamples.

    Positives and negatives are drawn separately (with replacement, keeping their counts),
    so every resample has both classes. ``width`` is the widest per-resample count array the
    caller builds; chunks keep ``rows x width`` near :data:`_CHUNK_ELEMENTS`. The draws depend
    only on ``y``, ``n_boot``, ``seed`` and ``width``.
    """
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(width, y.size)))
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        pick_pos = positives[rng.integers(0, positives.size, size=(rows, positives.size))]
        pick_neg = negatives[rng.integers(0, negatives.size, size=(rows, negatives.size))]
        yield start, rows, pick_pos, pick_neg


def _resampled_counts(keys: np.ndarray, picks: np.ndarray, size: int) -> np.ndarray:
    """Per resample (row of ``picks``), how many picked items fall on each key in [0, size)."""
    rows = picks.shape[0]
    offsets = (np.arange(rows, dtype=np.int64) * size)[:, None]
    counts = np.bincount((keys[picks] + offsets).ravel(), minlength=rows * size)
    return counts.reshape(rows, size).astype(np.float64)


def bootstrap_aucs(y, score_sets: Sequence, n_boot: int, seed: int) -> np.ndarray:
    """AUCs of one or more scorings of the same images over stratified bootstrap resamples.

    Positives and negatives are resampled separately (with replacement, keeping their
    counts), so every resample has both classes; all scorings share each resample, which
    makes differences between them paired. Each resample is a count per group of scores (runs
    of one class merged, see :func:`_class_runs`), so the cost is linear in the number of
    images.

    Args:
        y: 0/1 labels with both classes present.
        score_sets: One score array per scoring, each aligned with ``y``.
        n_boot: Number of resamples.
        seed: Seed of :func:`numpy.random.default_rng`; equal seeds give equal results.

    Returns:
        Array of shape ``(n_boot, len(score_sets))``.
    """
    return bootstrap(y, score_sets, n_boot, seed).aucs


@dataclass(frozen=True)
class Bootstrap:
    """Statistics of stratified bootstrap resamples (one row per resample).

    Attributes:
        aucs: ``(n_boot, scorings)`` AUC of each scoring.
        ece: ``(n_boot,)`` expected calibration error of the first scoring, or ``None``.
        strata: Per strata array passed in, ``(n_boot, n_values)`` AUC of the first scoring
            within each value; NaN where a resample holds one class of that value.
    """

    aucs: np.ndarray
    ece: np.ndarray | None = None
    strata: tuple[np.ndarray, ...] = ()


def bootstrap(
    y,
    score_sets: Sequence,
    n_boot: int,
    seed: int,
    *,
    strata: Sequence[np.ndarray] = (),
    ece_bins: int | None = None,
    strata_boot: int | None = None,
) -> Bootstrap:
    """One stratified bootstrap of a finding: AUCs, ECE and AUCs within subgroups.

    Every statistic is computed on the same resamples of the whole population (see
    :func:`bootstrap_aucs` for the resampling), so one draw of random numbers serves them all.
    A subgroup's AUC on a resample is the AUC of the resampled images in that subgroup: the
    class-run groups of the whole population stay exact within any subset (no image of the
    other class lies between two members of a run), so each is one more ``bincount``.

    Args:
        y: 0/1 labels with both classes present.
        score_sets: One score array per scoring, each aligned with ``y``.
        n_boot: Number of resamples.
        seed: Seed of :func:`numpy.random.default_rng`.
        strata: Integer arrays aligned with ``y``: a subgroup code per image in
            ``[0, n_values)``, -1 for an image in no subgroup of that attribute.
        ece_bins: Bins of the first scoring's ECE per resample (scores must lie in [0, 1]);
            ``None`` skips it.
        strata_boot: Subgroup AUCs on only the first this many resamples (``None``: all).
            Subgroups cost one ``bincount`` per attribute per resample, four times the overall
            AUC's cost with four attributes, so at archive scale they get fewer resamples.

    Returns:
        A :class:`Bootstrap`.
    """
    y = np.asarray(y).astype(np.int8, copy=False).ravel()
    if class_reason(y):
        raise ValueError(f"bootstrap AUC needs both classes: {class_reason(y)}")
    runs = []
    for scores in score_sets:
        runs.append(_class_runs(y, _as_arrays(y, scores)[1]))
    first_runs, first_size = runs[0]
    strata_keys = []
    for codes in strata:
        codes = np.asarray(codes, dtype=np.int64)
        values = int(codes.max(initial=-1)) + 1
        # Images in no subgroup go to an extra slot that is dropped.
        slot = np.where(codes < 0, values, codes)
        strata_keys.append((slot * first_size + first_runs, values))
    # Chunks are sized by the scorings alone, so the resamples (and the AUC CI) of a finding
    # are the same with or without subgroups.
    widths = [size for _, size in runs]
    aucs = np.empty((n_boot, len(runs)), dtype=np.float64)
    strata_rows = n_boot if strata_boot is None else min(n_boot, strata_boot)
    within = [np.empty((strata_rows, values), dtype=np.float64) for _, values in strata_keys]
    ece = None
    if ece_bins is not None:
        scores = _as_arrays(y, score_sets[0])[1]
        bins = np.searchsorted(np.linspace(0.0, 1.0, ece_bins + 1)[1:-1], scores)
        ece = np.empty(n_boot, dtype=np.float64)
    for start, rows, pick_pos, pick_neg in _stratified_draws(y, n_boot, seed, max(widths)):
        done = slice(start, start + rows)
        for column, (keys, size) in enumerate(runs):
            pos = _resampled_counts(keys, pick_pos, size)
            neg = _resampled_counts(keys, pick_neg, size)
            aucs[done, column] = _auc_from_counts(pos, neg)
        kept = max(0, min(rows, strata_rows - start))
        for out, (keys, values) in zip(within, strata_keys, strict=True):
            if not kept:
                break
            shape = (kept, values + 1, first_size)
            pos = _resampled_counts(keys, pick_pos[:kept], shape[1] * shape[2]).reshape(shape)
            neg = _resampled_counts(keys, pick_neg[:kept], shape[1] * shape[2]).reshape(shape)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start : start + kept] = _auc_from_counts(pos[:, :values], neg[:, :values])
        if ece is not None:
            ece[done] = _resampled_ece(bins, scores, pick_pos, pick_neg, ece_bins)
    return Bootstrap(aucs, ece, tuple(within))


def _resampled_ece(
    bins: np.ndarray, scores: np.ndarray, pick_pos: np.ndarray, pick_neg: np.ndarray, n_bins: int
) -> np.ndarray:
    """ECE of each resample from its per-bin sums of scores and of positives.

    A bin's share of the ECE is ``count * |mean score - fraction positive| / n``, which is
    ``|sum of scores - positives| / n``: the counts cancel.
    """
    rows = pick_pos.shape[0]
    picks = np.concatenate([pick_pos, pick_neg], axis=1)
    offsets = (np.arange(rows, dtype=np.int64) * n_bins)[:, None]
    keys = (bins[picks] + offsets).ravel()
    length = rows * n_bins
    total = np.bincount(keys, weights=scores[picks].ravel(), minlength=length)
    hits = np.bincount((bins[pick_pos] + offsets).ravel(), minlength=length)
    gap = np.abs(total.reshape(rows, n_bins) - hits.reshape(rows, n_bins))
    return gap.sum(axis=1) / picks.shape[1]


def _percentile_interval(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def percentile_interval(values: np.ndarray, min_defined: float = 0.9) -> list[float] | None:
    """Percentile 95% interval of bootstrap values, ignoring NaN (undefined resamples).

    Returns ``None`` when fewer than ``min_defined`` of the resamples are defined: the
    interval would describe only the resamples that happened to hold both classes.
    """
    values = np.asarray(values, dtype=np.float64)
    defined = values[np.isfinite(values)]
    if values.size == 0 or defined.size < min_defined * values.size:
        return None
    return _percentile_interval(defined)


def ece_ci(y, scores, n_boot: int, seed: int, n_bins: int = 10) -> list[float] | None:
    """Percentile 95% CI of the ECE over stratified bootstrap resamples; ``None`` if undefined.

    The resamples are those of :func:`auc_ci` with the same seed.
    """
    y, scores = _as_arrays(y, scores)
    if n_boot <= 0 or class_reason(y) or scores.min() < 0 or scores.max() > 1:
        return None
    return _percentile_interval(bootstrap(y, [scores], n_boot, seed, ece_bins=n_bins).ece)


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` along the last axis, 1-based, ties sharing their mean rank."""
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def delong_test(y, scores_a, scores_b) -> dict:
    """DeLong's test of two correlated AUCs (the same images scored by two models).

    The fast midrank algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21:1389):
    the structural components of DeLong, DeLong & Clarke-Pearson (1988) from three ranking
    passes per scoring instead of an ``n_positive x n_negative`` comparison.

    Args:
        y: 0/1 labels with both classes present.
        scores_a: Scores of model A.
        scores_b: Scores of model B, aligned with ``y``.

    Returns:
        ``auc_a``, ``auc_b``, ``z`` and the two-sided ``p_value``; identical rankings give
        ``z = 0`` and ``p_value = 1``.
    """
    from scipy.stats import norm

    y, scores_a = _as_arrays(y, scores_a)
    scores_b = _as_arrays(y, scores_b)[1]
    if class_reason(y):
        raise ValueError(f"DeLong's test needs both classes: {class_reason(y)}")
    scores = np.vstack([scores_a, scores_b])
    positive, negative = scores[:, y == 1], scores[:, y == 0]
    m, n = positive.shape[1], negative.shape[1]
    rank_pos = _midranks(positive)
    rank_neg = _midranks(negative)
    rank_all = _midranks(np.hstack([positive, negative]))
    aucs = (rank_all[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v01 = (rank_all[:, :m] - rank_pos) / n  # per positive: share of negatives below it
    v10 = 1 - (rank_all[:, m:] - rank_neg) / m  # per negative: share of positives above it
    covariance = np.cov(v01) / m + np.cov(v10) / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = float(aucs[0] - aucs[1])
    result = {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "z": None, "p_value": None}
    if variance > 1e-15:
        z = difference / float(np.sqrt(variance))
        result["z"], result["p_value"] = z, float(2 * norm.sf(abs(z)))
    elif abs(difference) < 1e-12:  # the same ranking of every pair: no evidence of a difference
        result["z"], result["p_value"] = 0.0, 1.0
    return result


def auc_ci(y, scores, n_boot: int, seed: int) -> list[float] | None:
    """Percentile 95% CI of the AUC from a stratified bootstrap; ``None`` if undefined."""
    y, scores = _as_arrays(y, scores)
    if n_boot <= 0 or class_reason(y):
        return None
    return _percentile_interval(bootstrap_aucs(y, [scores], n_boot, seed)[:, 0])


def paired_auc_difference(y, scores_a, scores_b, n_boot: int, seed: int) -> tuple[dict, list[str]]:
    """AUC of A minus AUC of B on the same images, with a paired bootstrap 95% CI.

    Returns:
        ``(result, reasons)`` where result has ``auc_a``, ``auc_b``, ``auc_difference``,
        ``auc_difference_ci95`` (``[low, high]``) and ``delong_p_value`` (two-sided, from
        :func:`delong_test`), each ``None`` when undefined.
    """
    y, scores_a = _as_arrays(y, scores_a)
    scores_b = _as_arrays(y, scores_b)[1]
    keys = ("auc_a", "auc_b", "auc_difference", "auc_difference_ci95", "delong_p_value")
    result: dict = dict.fromkeys(keys)
    reason = class_reason(y)
    if reason:
        return result, [f"AUC comparison undefined: {reason}"]
    result["auc_a"], result["auc_b"] = roc_auc(y, scores_a), roc_auc(y, scores_b)
    result["auc_difference"] = result["auc_a"] - result["auc_b"]
    reasons = []
    result["delong_p_value"] = delong_test(y, scores_a, scores_b)["p_value"]
    if result["delong_p_value"] is None:
        reasons.append("delong_p_value undefined: the AUC difference has zero variance")
    if n_boot <= 0:
        reasons.append("auc_difference_ci95 undefined: bootstrap disabled (--bootstrap 0)")
        return result, reasons
    resampled = bootstrap_aucs(y, [scores_a, scores_b], n_boot, seed)
    result["auc_difference_ci95"] = _percentile_interval(resampled[:, 0] - resampled[:, 1])
    return result, reasons


def calibration_bins(y, scores, n_bins: int = 10) -> dict[str, list]:
    """Reliability-curve points over equal-width score bins on [0, 1], empty bins left out.

    Matches :func:`sklearn.calibration.calibration_curve` with ``strategy="uniform"``.

    Returns:
        Dict of lists: ``mean_predicted``, ``fraction_positive`` and ``count`` per bin.
    """
    from sklearn.calibration import calibration_curve

    y, scores = _as_arrays(y, scores)
    if y.size == 0:
        return {"mean_predicted": [], "fraction_positive": [], "count": []}
    fraction, predicted = calibration_curve(y, scores, n_bins=n_bins, strategy="uniform")
    # calibration_curve's bins (uniform edges, right-closed via searchsorted), for the counts.
    count = np.bincount(np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], scores))
    return {
        "mean_predicted": predicted.tolist(),
        "fraction_positive": fraction.tolist(),
        "count": count[count > 0].astype(int).tolist(),
    }


def expected_calibration_error(y, scores, n_bins: int = 10) -> float | None:
    """Expected calibration error over equal-width score bins on [0, 1].

    The count-weighted mean of ``|mean predicted - fraction positive|`` over the bins of
    :func:`calibration_bins`; ``None`` without rows.
    """
    y, scores = _as_arrays(y, scores)
    if y.size == 0:
        return None
    bins = calibration_bins(y, scores, n_bins)
    gaps = np.abs(np.asarray(bins["mean_predicted"]) - np.asarray(bins["fraction_positive"]))
    return float(np.sum(gaps * np.asarray(bins["count"])) / y.size)
