"""Binary-classifier metrics: thresholds, ROC/AUC, average precision, calibration.

The one metrics module of medai: training (validation AUC, Youden and 90%-sensitivity
thresholds, AUC from histograms gathered across workers) and the report use it. The decision
rule, :func:`medai.card.is_positive`, lives with the card (scoring and prediction import it
from there); it is re-exported here.

Bootstrap confidence intervals and DeLong's test are :mod:`medai.resampling`'s, built on the
group counts of this module (:func:`class_runs`, :func:`auc_from_counts`).

Point estimates come from scikit-learn where it has the function (``roc_auc_score``,
``average_precision_score``, ``brier_score_loss``, ``calibration_curve``).

Conventions: ``y`` holds 0/1 labels, ``scores`` the predicted probability of the positive
class, and an image is called positive when ``score >= threshold`` compared in float32
(:func:`is_positive`, the rule of Parquet's ``predicted`` column; on float32
scores it is also the rule of the thresholds of :func:`sklearn.metrics.roc_curve`). A metric
that is undefined on the data (one class only, no rows, a zero denominator) is ``None``, and
the functions that build metric blocks add a human-readable entry to a ``reasons`` list saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medai.card import is_positive  # the decision rule lives with the card's thresholds

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
    "calibration_bins",
    "expected_calibration_error",
    "class_reason",
    "percentile_bounds",
    "percentile_interval",
    "as_arrays",
    "class_runs",
    "auc_from_counts",
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


def as_arrays(y, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int8, copy=False).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {scores.size}")
    return y, scores


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


def class_runs(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, int]:
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


def auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC from per-score-group positive and negative counts (last axis)."""
    below = np.cumsum(neg, axis=-1) - neg
    wins = np.einsum("...g,...g->...", pos, below + 0.5 * neg)
    return wins / (pos.sum(axis=-1) * neg.sum(axis=-1))


def roc_auc(y, scores) -> float | None:
    """Area under the ROC curve (:func:`sklearn.metrics.roc_auc_score`), ``None`` for one class."""
    from sklearn.metrics import roc_auc_score

    y, scores = as_arrays(y, scores)
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

    y, scores = as_arrays(y, scores)
    if not np.any(y == 1):
        return None
    return float(average_precision_score(y, scores))


def brier_score(y, scores) -> float | None:
    """Mean squared error of the scores as probabilities, ``None`` without rows."""
    from sklearn.metrics import brier_score_loss

    y, scores = as_arrays(y, scores)
    if y.size == 0:
        return None
    # labels=[0, 1]: one-class data is still a valid Brier score.
    return float(brier_score_loss(y, scores, labels=[0, 1]))


def roc_curve(y, scores) -> Curve | None:
    """ROC curve at every distinct score, ``None`` with only one class.

    Points between which the curve is a straight line are dropped (like sklearn's
    ``drop_intermediate``) so that a curve over 100k images stays cheap to plot.
    """
    y, scores = as_arrays(y, scores)
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
    y, scores = as_arrays(y, scores)
    if class_reason(y):
        return None
    tps, fps, thresholds = _descending_counts(y, scores)
    youden = tps / tps[-1] - fps / fps[-1]
    return float(thresholds[int(np.argmax(youden))])


def confusion_counts(y, scores, threshold: float) -> dict[str, int]:
    """True/false positives/negatives when ``score >= threshold`` is called positive."""
    y, scores = as_arrays(y, scores)
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


def percentile_bounds(values: np.ndarray) -> list[float]:
    """The 95% percentile interval ``[2.5th, 97.5th]`` of resampled values."""
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
    return percentile_bounds(defined)


def calibration_bins(y, scores, n_bins: int = 10) -> dict[str, list]:
    """Reliability-curve points over equal-width score bins on [0, 1], empty bins left out.

    Matches :func:`sklearn.calibration.calibration_curve` with ``strategy="uniform"``.

    Returns:
        Dict of lists: ``mean_predicted``, ``fraction_positive`` and ``count`` per bin.
    """
    from sklearn.calibration import calibration_curve

    y, scores = as_arrays(y, scores)
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
    y, scores = as_arrays(y, scores)
    if y.size == 0:
        return None
    bins = calibration_bins(y, scores, n_bins)
    gaps = np.abs(np.asarray(bins["mean_predicted"]) - np.asarray(bins["fraction_positive"]))
    return float(np.sum(gaps * np.asarray(bins["count"])) / y.size)
