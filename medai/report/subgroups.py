"""Subgroups: per finding, the metrics within sex, age band, view, follow-up, modality and
manufacturer groups.

The attributes come from the label table's metadata (:func:`medai.labels.load_labels`: NIH
``Patient Gender``, ``Patient Age``, ``View Position`` and ``Follow-up #``, or a generic CSV's
``sex``, ``age``, ``view`` and ``follow_up`` columns), and, where the label table lacks them,
from the DICOM header columns of the prediction rows (:func:`with_header_attributes`), which
also give the acquisition subgroups ``modality`` and ``manufacturer`` (as FDA guidance asks);
an attribute without any known value is left out. Each subgroup gets n, positives, AUC with a
bootstrap CI, sensitivity and specificity at the finding's threshold and ECE. Its AUC CI comes
from the finding's own bootstrap (:func:`medai.metrics.bootstrap`: the same resamples of the
whole population, restricted to the subgroup), so subgroups cost one ``bincount`` per resample
each, not a bootstrap of their own. A subgroup whose CI lies wholly below the finding's overall
AUC is ``flagged``; one with fewer than :data:`MIN_POSITIVES` positives or
:data:`MIN_NEGATIVES` negatives gets ``null`` metrics and a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medai import metrics

__all__ = [
    "AGE_BANDS",
    "ATTRIBUTES",
    "MIN_NEGATIVES",
    "MIN_POSITIVES",
    "Attribute",
    "attributes_of",
    "with_header_attributes",
    "subgroup_entries",
]

ATTRIBUTES = ("sex", "age", "view", "follow_up", "modality", "manufacturer")
# Filled from the prediction rows' DICOM header columns where the label table lacks them.
HEADER_ATTRIBUTES = ("sex", "age", "view", "modality", "manufacturer")
AGE_BANDS = ("<40", "40-59", "60-79", ">=80")
_AGE_EDGES = (40, 60, 80)
_VALUES = {
    "sex": ("F", "M"),
    "age": AGE_BANDS,
    "view": ("PA", "AP"),
    "follow_up": ("first", "later"),
}
MIN_POSITIVES = 10
MIN_NEGATIVES = 10


@dataclass(frozen=True)
class Attribute:
    """One subgroup attribute of the label table.

    Attributes:
        name: One of :data:`ATTRIBUTES`.
        values: The subgroup names, indexed by code.
        codes: Per label-table row, the subgroup code, -1 when unknown (or another value,
            e.g. a lateral view).
    """

    name: str
    values: tuple[str, ...]
    codes: np.ndarray


def _values(name: str, column: pd.Series) -> tuple[str, ...]:
    """The subgroups of an attribute: fixed ones, or the values seen (acquisition groups)."""
    if name in _VALUES:
        return _VALUES[name]
    return tuple(sorted(set(column.dropna().astype(str).str.strip().str.upper()) - {""}))


def _codes(name: str, column: pd.Series, values: tuple[str, ...]) -> np.ndarray:
    if name in ("age", "follow_up"):
        numbers = pd.to_numeric(column, errors="coerce").astype("Float64")
        known = numbers.notna().to_numpy()
        values = numbers.fillna(0).to_numpy(dtype=np.float64)
        # Follow-up 0 is the first image of a patient.
        code = np.digitize(values, _AGE_EDGES) if name == "age" else (values > 0).astype(int)
        return np.where(known, code, -1).astype(np.int64)
    text = column.astype("string").str.strip().str.upper()
    code = pd.Categorical(text, categories=values).codes
    return np.asarray(code, dtype=np.int64)


def attributes_of(labels: pd.DataFrame) -> list[Attribute]:
    """The subgroup attributes the label table has (in :data:`ATTRIBUTES` order)."""
    found = []
    for name in ATTRIBUTES:
        if name not in labels:
            continue
        values = _values(name, labels[name])
        codes = _codes(name, labels[name], values)
        if np.any(codes >= 0):
            found.append(Attribute(name, values, codes))
    return found


def with_header_attributes(labels: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The label table with the attributes it lacks taken from the DICOM header columns of
    the prediction rows (``sex``, ``age``, ``view``, ``modality``, ``manufacturer``).

    An attribute the label file has is kept as it is; a header value fills only images whose
    label row has none.
    """
    labels = labels.copy()
    for name in HEADER_ATTRIBUTES:
        if name not in predictions or predictions[name].isna().all():
            continue
        known = predictions.dropna(subset=[name]).drop_duplicates("image_id")
        header = labels["image_id"].map(dict(zip(known["image_id"], known[name], strict=True)))
        labels[name] = labels[name].fillna(header) if name in labels else header
    return labels


def _point(y: np.ndarray, scores: np.ndarray, threshold: float | None, ece_ok: bool) -> dict:
    at, _ = metrics.threshold_metrics(y, scores, threshold)
    return {
        "auc": metrics.roc_auc(y, scores),
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "ece": metrics.expected_calibration_error(y, scores) if ece_ok else None,
    }


def subgroup_entries(
    finding: str,
    y: np.ndarray,
    scores: np.ndarray,
    codes: Sequence[np.ndarray],
    attributes: Sequence[Attribute],
    resampled: Sequence[np.ndarray] | None,
    overall_auc: float | None,
    threshold: float | None,
) -> list[dict]:
    """The metrics.json ``subgroups`` entries of one finding.

    Args:
        finding: The finding's name.
        y: The finding's 0/1 labels.
        scores: Its scores, aligned with ``y``.
        codes: Per attribute, the subgroup code of each row (-1 unknown).
        attributes: The attributes, aligned with ``codes``.
        resampled: Per attribute, ``(n_boot, values)`` bootstrap AUCs from
            :func:`medai.metrics.bootstrap`; ``None`` when the bootstrap did not run.
        overall_auc: The finding's AUC on all its images (the flag's reference).
        threshold: The finding's operating threshold.

    Returns:
        One dict per attribute value: ``finding``, ``attribute``, ``value``, ``n``,
        ``n_positive``, ``auc``, ``auc_ci95``, ``sensitivity``, ``specificity``, ``ece``,
        ``flagged`` and ``reasons``.
    """
    ece_ok = bool(scores.size) and scores.min() >= 0 and scores.max() <= 1
    entries = []
    for index, attribute in enumerate(attributes):
        for code, value in enumerate(attribute.values):
            inside = codes[index] == code
            entry = _entry(finding, attribute.name, value, y[inside])
            if entry["reasons"]:  # too few images
                entries.append(entry)
                continue
            entry.update(_point(y[inside], scores[inside], threshold, ece_ok))
            if threshold is None:
                entry["reasons"].append("sensitivity and specificity undefined: no threshold")
            if not ece_ok:
                entry["reasons"].append("ece undefined: scores outside [0, 1]")
            _add_interval(entry, None if resampled is None else resampled[index][:, code])
            ci = entry["auc_ci95"]
            entry["flagged"] = bool(ci and overall_auc is not None and ci[1] < overall_auc)
            entries.append(entry)
    return entries


def _entry(finding: str, attribute: str, value, sub_y: np.ndarray) -> dict:
    """A subgroup's entry before its metrics; its one reason when it is too small for them."""
    n, positives = len(sub_y), int(np.count_nonzero(sub_y == 1))
    entry = {
        "finding": finding,
        "attribute": attribute,
        "value": value,
        "n": n,
        "n_positive": positives,
        **dict.fromkeys(("auc", "auc_ci95", "sensitivity", "specificity", "ece")),
        "flagged": False,
        "reasons": [],
    }
    if positives < MIN_POSITIVES or n - positives < MIN_NEGATIVES:
        entry["reasons"].append(
            f"too few images for subgroup metrics: {positives} positive, "
            f"{n - positives} negative (at least {MIN_POSITIVES} and {MIN_NEGATIVES})"
        )
    return entry


def _add_interval(entry: dict, resampled: np.ndarray | None) -> None:
    """The subgroup AUC's percentile interval from its bootstrap, or the reason there is none."""
    if resampled is None:
        entry["reasons"].append("auc_ci95 undefined: no bootstrap")
        return
    entry["auc_ci95"] = metrics.percentile_interval(resampled)
    if entry["auc_ci95"] is None:
        entry["reasons"].append(
            "auc_ci95 undefined: too many resamples hold one class of the subgroup"
        )
