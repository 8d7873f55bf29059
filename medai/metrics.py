"""Binary-classifier metrics for the report: ROC/AUC, precision, calibration and bootstrap CIs.

Pure NumPy, written to agree with :mod:`sklearn.metrics` on the same data (the tests check it)
while staying fast at archive scale: AUC is the Mann-Whitney statistic over tied score groups,
so one bootstrap resample costs one ``bincount`` and one ``cumsum`` instead of a sort.

Conventions: ``y`` holds 0/1 labels, ``scores`` the predicted probability of the positive
class, and an image is called positive when ``score >= threshold`` compared in float32
(:func:`medai.thresholds.is_positive`, the rule of Parquet's ``predicted`` column; on float32
scores it is also the rule of the thresholds of :func:`sklearn.metrics.roc_curve`). A metric
that is undefined on the data (one class only, no rows, a zero denominator) is ``None``, and
the functions that build metric blocks add a human-readable entry to a ``reasons`` list saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medai.thresholds import is_positive

__all__ = [
    "THRESHOLD_KEYS",
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
    "paired_auc_difference",
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
    """Area under the ROC curve (ties count half), or ``None`` with only one class."""
    y, scores = _as_arrays(y, scores)
    if class_reason(y):
        return None
    groups, size = _dense_groups(scores)
    pos = np.bincount(groups[y == 1], minlength=size).astype(np.float64)
    neg = np.bincount(groups[y == 0], minlength=size).astype(np.float64)
    return float(_auc_from_counts(pos, neg))


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
    y, scores = _as_arrays(y, scores)
    if not np.any(y == 1):
        return None
    tps, fps, _ = _descending_counts(y, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def brier_score(y, scores) -> float | None:
    """Mean squared error of the scores as probabilities, ``None`` without rows."""
    y, scores = _as_arrays(y, scores)
    if y.size == 0:
        return None
    return float(np.mean((scores - y) ** 2))


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
    y = np.asarray(y).astype(np.int8, copy=False).ravel()
    if class_reason(y):
        raise ValueError(f"bootstrap AUC needs both classes: {class_reason(y)}")
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    groups = []
    for scores in score_sets:
        runs, size = _class_runs(y, _as_arrays(y, scores)[1])
        groups.append((runs[positives], runs[negatives], size))
    widest = max(size for _, _, size in groups)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(widest, y.size)))
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(groups)), dtype=np.float64)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        pick_pos = rng.integers(0, positives.size, size=(rows, positives.size))
        pick_neg = rng.integers(0, negatives.size, size=(rows, negatives.size))
        for column, (pos_groups, neg_groups, size) in enumerate(groups):
            offsets = (np.arange(rows) * size)[:, None]
            pos = np.bincount((pos_groups[pick_pos] + offsets).ravel(), minlength=rows * size)
            neg = np.bincount((neg_groups[pick_neg] + offsets).ravel(), minlength=rows * size)
            out[start : start + rows, column] = _auc_from_counts(
                pos.reshape(rows, size).astype(np.float64),
                neg.reshape(rows, size).astype(np.float64),
            )
    return out


def _percentile_interval(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def auc_ci(y, scores, n_boot: int, seed: int) -> list[float] | None:
    """Percentile 95% CI of the AUC from a stratified bootstrap; ``None`` if undefined."""
    y, scores = _as_arrays(y, scores)
    if n_boot <= 0 or class_reason(y):
        return None
    return _percentile_interval(bootstrap_aucs(y, [scores], n_boot, seed)[:, 0])


def paired_auc_difference(y, scores_a, scores_b, n_boot: int, seed: int) -> tuple[dict, list[str]]:
    """AUC of A minus AUC of B on the same images, with a paired bootstrap 95% CI.

    Returns:
        ``(result, reasons)`` where result has ``auc_a``, ``auc_b``, ``auc_difference`` and
        ``auc_difference_ci95`` (``[low, high]``), each ``None`` when undefined.
    """
    y, scores_a = _as_arrays(y, scores_a)
    scores_b = _as_arrays(y, scores_b)[1]
    result: dict = dict.fromkeys(("auc_a", "auc_b", "auc_difference", "auc_difference_ci95"))
    reason = class_reason(y)
    if reason:
        return result, [f"AUC comparison undefined: {reason}"]
    result["auc_a"], result["auc_b"] = roc_auc(y, scores_a), roc_auc(y, scores_b)
    result["auc_difference"] = result["auc_a"] - result["auc_b"]
    if n_boot <= 0:
        return result, ["auc_difference_ci95 undefined: bootstrap disabled (--bootstrap 0)"]
    resampled = bootstrap_aucs(y, [scores_a, scores_b], n_boot, seed)
    result["auc_difference_ci95"] = _percentile_interval(resampled[:, 0] - resampled[:, 1])
    return result, []


def calibration_bins(y, scores, n_bins: int = 10) -> dict[str, list]:
    """Reliability-curve points over equal-width score bins on [0, 1], empty bins left out.

    Matches :func:`sklearn.calibration.calibration_curve` with ``strategy="uniform"``.

    Returns:
        Dict of lists: ``mean_predicted``, ``fraction_positive`` and ``count`` per bin.
    """
    y, scores = _as_arrays(y, scores)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], scores)
    count = np.bincount(bins, minlength=n_bins)
    total = np.bincount(bins, weights=scores, minlength=n_bins)
    hits = np.bincount(bins, weights=y.astype(np.float64), minlength=n_bins)
    kept = count > 0
    return {
        "mean_predicted": (total[kept] / count[kept]).tolist(),
        "fraction_positive": (hits[kept] / count[kept]).tolist(),
        "count": count[kept].astype(int).tolist(),
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
