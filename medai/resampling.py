"""Resampled uncertainty: stratified bootstrap CIs (AUC, ECE, subgroups) and DeLong's test.

The bootstrap is NumPy, written to agree with scikit-learn on each resample (the tests check
it) while staying fast at archive scale: AUC is the Mann-Whitney statistic over tied score
groups (:func:`medai.metrics.class_runs`), so one resample costs one ``bincount`` and one
``cumsum`` instead of a sort, and one set of resamples serves the AUC CI, the ECE CI and every
subgroup's AUC CI. Paired AUCs are also compared with DeLong's test (:func:`delong_test`).
A statistic that is undefined on the data is ``None``, with a reason where a block is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medai.metrics import (
    as_arrays,
    auc_from_counts,
    class_reason,
    class_runs,
    percentile_bounds,
    roc_auc,
)

__all__ = [
    "Bootstrap",
    "auc_ci",
    "bootstrap",
    "bootstrap_aucs",
    "delong_test",
    "ece_ci",
    "paired_auc_difference",
]

_CHUNK_ELEMENTS = 4_000_000


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
    of one class merged, see :func:`class_runs`), so the cost is linear in the number of
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
    :func:`bootstrap_aucs`). A subgroup's AUC on a resample is the AUC of the resampled images
    in that subgroup: the whole population's class runs stay exact within any subset (no image
    of the other class lies between two members of a run), so each is one more ``bincount``.

    Args:
        y: 0/1 labels with both classes present.
        score_sets: One score array per scoring, each aligned with ``y``.
        n_boot: Number of resamples.
        seed: Seed of :func:`numpy.random.default_rng`.
        strata: Integer arrays aligned with ``y``: a subgroup code per image in
            ``[0, n_values)``, -1 for an image in no subgroup of that attribute.
        ece_bins: Bins of the first scoring's ECE per resample (scores must lie in [0, 1]);
            ``None`` skips it.
        strata_boot: Subgroup AUCs on only the first this many resamples (``None``: all):
            each attribute costs one ``bincount`` per resample, as much as the overall AUC.

    Returns:
        A :class:`Bootstrap`.
    """
    y = np.asarray(y).astype(np.int8, copy=False).ravel()
    if reason := class_reason(y):
        raise ValueError(f"bootstrap AUC needs both classes: {reason}")
    runs = [class_runs(y, as_arrays(y, scores)[1]) for scores in score_sets]
    first_runs, first_size = runs[0]
    strata_keys = _strata_keys(strata, first_runs, first_size)
    # Chunks are sized by the scorings alone: a finding's resamples (and AUC CI) are the same
    # with or without subgroups.
    widths = [size for _, size in runs]
    aucs = np.empty((n_boot, len(runs)), dtype=np.float64)
    strata_rows = n_boot if strata_boot is None else min(n_boot, strata_boot)
    within = [np.empty((strata_rows, values), dtype=np.float64) for _, values in strata_keys]
    ece = None if ece_bins is None else np.empty(n_boot, dtype=np.float64)
    scores, bins = _ece_bins(y, score_sets[0], ece_bins)
    for start, rows, pick_pos, pick_neg in _stratified_draws(y, n_boot, seed, max(widths)):
        done = slice(start, start + rows)
        for column, (keys, size) in enumerate(runs):
            counts = (_resampled_counts(keys, pick, size) for pick in (pick_pos, pick_neg))
            aucs[done, column] = auc_from_counts(*counts)
        kept = max(0, min(rows, strata_rows - start))
        for out, (keys, values) in zip(within, strata_keys, strict=True):
            if kept:
                picks = (pick_pos[:kept], pick_neg[:kept])
                out[start : start + kept] = _subgroup_aucs(keys, values, first_size, picks)
        if ece is not None:
            ece[done] = _resampled_ece(bins, scores, pick_pos, pick_neg, ece_bins)
    return Bootstrap(aucs, ece, tuple(within))


def _ece_bins(y: np.ndarray, scores, ece_bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first scoring's scores and each image's ECE bin (none without ``ece_bins``)."""
    scores = as_arrays(y, scores)[1]
    if ece_bins is None:
        return scores, None
    return scores, np.searchsorted(np.linspace(0.0, 1.0, ece_bins + 1)[1:-1], scores)


def _strata_keys(strata: Sequence[np.ndarray], runs: np.ndarray, size: int) -> list[tuple]:
    """Per attribute, each image's (subgroup, class run) key and the attribute's value count."""
    keys = []
    for codes in strata:
        codes = np.asarray(codes, dtype=np.int64)
        values = int(codes.max(initial=-1)) + 1
        # Images in no subgroup go to an extra slot that is dropped.
        slot = np.where(codes < 0, values, codes)
        keys.append((slot * size + runs, values))
    return keys


def _subgroup_aucs(keys: np.ndarray, values: int, size: int, picks: tuple) -> np.ndarray:
    """``(rows, values)`` AUCs within each subgroup on the resamples of ``picks``."""
    pick_pos, pick_neg = picks
    shape = (len(pick_pos), values + 1, size)
    pos = _resampled_counts(keys, pick_pos, shape[1] * shape[2]).reshape(shape)
    neg = _resampled_counts(keys, pick_neg, shape[1] * shape[2]).reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return auc_from_counts(pos[:, :values], neg[:, :values])


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


def ece_ci(y, scores, n_boot: int, seed: int, n_bins: int = 10) -> list[float] | None:
    """Percentile 95% CI of the ECE over stratified bootstrap resamples; ``None`` if undefined.

    The resamples are those of :func:`auc_ci` with the same seed.
    """
    y, scores = as_arrays(y, scores)
    if n_boot <= 0 or class_reason(y) or scores.min() < 0 or scores.max() > 1:
        return None
    return percentile_bounds(bootstrap(y, [scores], n_boot, seed, ece_bins=n_bins).ece)


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

    y, scores_a = as_arrays(y, scores_a)
    scores_b = as_arrays(y, scores_b)[1]
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
    y, scores = as_arrays(y, scores)
    if n_boot <= 0 or class_reason(y):
        return None
    return percentile_bounds(bootstrap_aucs(y, [scores], n_boot, seed)[:, 0])


def paired_auc_difference(y, scores_a, scores_b, n_boot: int, seed: int) -> tuple[dict, list[str]]:
    """AUC of A minus AUC of B on the same images, with a paired bootstrap 95% CI.

    Returns:
        ``(result, reasons)`` where result has ``auc_a``, ``auc_b``, ``auc_difference``,
        ``auc_difference_ci95`` (``[low, high]``) and ``delong_p_value`` (two-sided, from
        :func:`delong_test`), each ``None`` when undefined.
    """
    y, scores_a = as_arrays(y, scores_a)
    scores_b = as_arrays(y, scores_b)[1]
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
    result["auc_difference_ci95"] = percentile_bounds(resampled[:, 0] - resampled[:, 1])
    return result, reasons
