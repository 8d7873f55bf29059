"""Operating thresholds and binned ROC statistics, shared by training and reporting."""

from __future__ import annotations

import numpy as np

__all__ = [
    "is_positive",
    "youden_threshold",
    "sensitivity_threshold",
    "auc_from_histograms",
    "safe_auc",
]


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


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Threshold maximising Youden's J (sensitivity + specificity - 1); ``None`` for one class."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels)
    if labels.min(initial=0) == labels.max(initial=0):
        return None
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


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


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or ``None`` when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


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
