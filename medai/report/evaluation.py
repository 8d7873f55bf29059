"""Evaluation: per model and finding, the metrics.json entries; pairwise model comparisons."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor

import numpy as np
import pandas as pd

from medai import metrics, resampling
from medai.card import ECE_BINS, card_excerpt
from medai.report.accounting import COUNT_KEYS, FindingRows, ModelRows
from medai.report.config import SUBGROUP_BOOTSTRAP, ReportConfig
from medai.report.subgroups import Attribute, subgroup_entries
from medai.report.workers import pool_map

__all__ = ["comparisons", "model_section"]


def _probabilities(scores: np.ndarray) -> bool:
    return not scores.size or (scores.min() >= 0 and scores.max() <= 1)


def _ranking_metrics(
    finding: FindingRows, config: ReportConfig, attributes: Sequence[Attribute]
) -> tuple[dict, list[str], list[dict]]:
    """AUC, AP, Brier and ECE with their CIs, and the subgroup entries, from one bootstrap."""
    y, scores = finding.y, finding.scores
    reasons = []
    why = metrics.class_reason(y)
    probabilities = _probabilities(scores)
    rows = finding.rows["label_row"].to_numpy()
    codes = [attribute.codes[rows] for attribute in attributes]
    result = {
        "auc": metrics.roc_auc(y, scores),
        "auc_ci95": None,
        "average_precision": metrics.average_precision(y, scores),
        "brier": metrics.brier_score(y, scores),
        "ece": metrics.expected_calibration_error(y, scores, n_bins=ECE_BINS),
        "ece_ci95": None,
    }
    resampled = None
    if not why and config.bootstrap > 0:
        boot = resampling.bootstrap(
            y,
            [scores],
            config.bootstrap,
            config.seed,
            strata=codes,
            ece_bins=ECE_BINS if probabilities else None,
            strata_boot=SUBGROUP_BOOTSTRAP,
        )
        result["auc_ci95"] = metrics.percentile_interval(boot.aucs[:, 0])
        if boot.ece is not None:
            result["ece_ci95"] = metrics.percentile_interval(boot.ece)
        resampled = boot.strata
    if why:
        reasons += [f"auc undefined: {why}", f"auc_ci95 undefined: {why}"]
        if probabilities and y.size:
            reasons.append(f"ece_ci95 undefined: {why} (the bootstrap keeps both classes)")
    elif config.bootstrap == 0:
        reasons.append("auc_ci95 undefined: bootstrap disabled (--bootstrap 0)")
        reasons.append("ece_ci95 undefined: bootstrap disabled (--bootstrap 0)")
    if result["average_precision"] is None:
        reasons.append("average_precision undefined: no positive images")
    for key in ("brier", "ece"):
        if not probabilities:
            result[key] = None
            reasons.append(f"{key} undefined: scores outside [0, 1] are not probabilities")
        elif result[key] is None:
            reasons.append(f"{key} undefined: no labelled predictions")
    subgroups = subgroup_entries(
        finding.name,
        y,
        scores,
        codes,
        attributes,
        resampled,
        result["auc"],
        finding.threshold,
    )
    return result, reasons, subgroups


def _operating_points(finding: FindingRows) -> tuple[dict, list[str]]:
    y, scores = finding.y, finding.scores
    at_model, model_reasons = metrics.threshold_metrics(y, scores, finding.threshold)
    at_model["source"] = finding.threshold_source
    youden = metrics.youden_threshold(y, scores)
    at_youden, youden_reasons = metrics.threshold_metrics(y, scores, youden)
    if youden is None:
        youden_reasons = [f"Youden threshold undefined: {metrics.class_reason(y)}"]
    reasons = [
        f"at model threshold: {text}" for text in model_reasons if finding.threshold is not None
    ]
    reasons += [f"at Youden threshold: {text}" for text in youden_reasons]
    return {"model_threshold": at_model, "youden": at_youden}, reasons


def _finding_entry(
    finding: FindingRows, config: ReportConfig, attributes: Sequence[Attribute]
) -> tuple[dict, list[dict]]:
    """Every metric of one finding (the single-finding section's keys, less the model's),
    and its subgroup entries."""
    ranking, ranking_reasons, subgroups = _ranking_metrics(finding, config, attributes)
    points, point_reasons = _operating_points(finding)
    entry = {
        "finding": finding.name,
        **finding.counts,
        **ranking,
        "operating_points": points,
        "error_messages": finding.error_messages,
        "reasons": finding.reasons + ranking_reasons + point_reasons,
    }
    return entry, subgroups


def _summary_row(entry: Mapping, subgroups: Sequence[Mapping] = ()) -> dict:
    """One row of the CheXNet-style table: counts, AUC with CI, the operating point, and the
    subgroups flagged for an AUC below the overall one."""
    point = entry["operating_points"]["model_threshold"]
    return {
        "finding": entry["finding"],
        "n": entry["n"],
        "n_positive": entry["n_positive"],
        "auc": entry["auc"],
        "auc_ci95": entry["auc_ci95"],
        "threshold": point["threshold"],
        "sensitivity": point["sensitivity"],
        "specificity": point["specificity"],
        "flagged_subgroups": [
            f"{row['attribute']}={row['value']}"
            for row in subgroups
            if row["finding"] == entry["finding"] and row["flagged"]
        ],
    }


def model_section(
    model: ModelRows,
    config: ReportConfig,
    attributes: Sequence[Attribute] = (),
    pool: Executor | None = None,
) -> dict:
    """The model's metrics.json section.

    Every section has ``findings`` (one entry of :func:`_finding_entry` per finding),
    ``summary`` (one :func:`_summary_row` per finding) and ``subgroups`` (every finding's
    subgroup entries, see :func:`medai.report.subgroups.subgroup_entries`). A single-finding
    section also keeps the keys it always had, the finding's entry spread at the top level.

    Args:
        model: The model's evaluated rows.
        config: The report options (bootstrap resamples and seed).
        attributes: The subgroup attributes of the label table.
        pool: Worker processes for the findings (:func:`medai.report.workers.finding_pool`);
            ``None`` evaluates them here.
    """
    findings = [finding.numeric() for finding in model.findings]
    done = pool_map(pool, _finding_entry, [(f, config, attributes) for f in findings])
    entries, subgroups = {}, []
    for finding, (entry, found) in zip(findings, done, strict=True):
        entries[finding.name] = entry
        subgroups += found
    summary = [_summary_row(entry, subgroups) for entry in entries.values()]
    card = card_excerpt(model.card)
    if model.single:
        [entry] = entries.values()
        flat = {key: value for key, value in entry.items() if key not in ("reasons",)}
        errors = flat.pop("error_messages")
        return {
            "model_id": model.model_id,
            **flat,
            "error_messages": errors,
            "model_card": card,
            "reasons": model.reasons + entry["reasons"],
            "findings": entries,
            "summary": summary,
            "subgroups": subgroups,
        }
    aucs = [row["auc"] for row in summary if row["auc"] is not None]
    errors: dict[str, int] = {}
    for entry in entries.values():
        for text, count in entry["error_messages"].items():
            errors[text] = errors.get(text, 0) + count
    top = dict(sorted(errors.items(), key=lambda item: -item[1])[:5])
    return {
        "model_id": model.model_id,
        "finding": None,
        **{key: sum(entry[key] for entry in entries.values()) for key in COUNT_KEYS},
        "mean_auc": float(np.mean(aucs)) if aucs else None,
        "error_messages": top,
        "model_card": card,
        "reasons": list(model.reasons),
        "findings": entries,
        "summary": summary,
        "subgroups": subgroups,
    }


# ----------------------------------------------------------------------------- comparisons


def _compare(
    first: FindingRows, second: FindingRows, config: ReportConfig
) -> tuple[dict, pd.DataFrame]:
    shared = first.rows[["image_id", "label", "score"]].merge(
        second.rows[["image_id", "score"]], on="image_id", suffixes=("_a", "_b")
    )
    y = shared["label"].to_numpy(dtype=np.int8)
    result, reasons = resampling.paired_auc_difference(
        y,
        shared["score_a"].to_numpy(),
        shared["score_b"].to_numpy(),
        config.bootstrap,
        config.seed,
    )
    section = {
        "finding": first.name,
        "n": len(shared),
        "n_positive": int(y.sum()),
        "n_negative": int(len(y) - y.sum()),
        **result,
        "reasons": reasons,
    }
    return section, shared


def comparisons(models: Sequence[ModelRows], config: ReportConfig):
    """Each pair of models on each finding both report, on the images both scored."""
    for first, second in itertools.combinations(models, 2):
        theirs = {f.name: f for f in second.findings}
        for finding in first.findings:
            if finding.name in theirs:
                section, shared = _compare(finding, theirs[finding.name], config)
                section = {"model_a": first.model_id, "model_b": second.model_id, **section}
                yield first, second, section, shared
