"""Row accounting: per model and finding, which prediction rows are evaluated and why not.

Per model and finding the rows are accounted for as
``n_rows = n_duplicates + n_outside_split + n_errors + n_unlabeled + n``; the evaluated rows
carry the label table's metadata (for subgroups and failure analysis) and the finding's
threshold (``--threshold``, else the model card's, else the predictions').
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from medai.card import finding_threshold, read_card_copy
from medai.labels import label_columns
from medai.predictions import rank_rows
from medai.report.config import ReportConfig
from medai.report.inputs import Inputs, Split, findings_in_order

__all__ = ["COUNT_KEYS", "FindingRows", "ModelRows", "collect_models"]

log = logging.getLogger("medai.report")

# ----------------------------------------------------------------------------- per model


@dataclass
class FindingRows:
    """One finding's evaluated rows of one model, and the bookkeeping of the rows left out.

    Attributes:
        rows: ``image_id``, ``source``, ``score``, ``label`` (0/1) and ``label_row`` (the
            image's row in the label table, for its metadata), sorted by image id so that the
            bootstrap sees the same order whatever the file order was.
    """

    name: str
    rows: pd.DataFrame
    counts: dict[str, int]
    error_messages: dict[str, int]
    threshold: float | None = None
    threshold_source: str = "none"
    reasons: list[str] = field(default_factory=list)

    @property
    def y(self) -> np.ndarray:
        return self.rows["label"].to_numpy(dtype=np.int8)

    @property
    def scores(self) -> np.ndarray:
        return self.rows["score"].to_numpy(dtype=np.float64)

    def numeric(self) -> FindingRows:
        """A copy keeping only ``score``, ``label`` and ``label_row``: what the metrics and
        figures read, cheap to send to a worker process (no image ids or sources)."""
        return replace(self, rows=self.rows[["score", "label", "label_row"]])


@dataclass
class ModelRows:
    """One model: its findings (in output order), card and model-level notes."""

    model_id: str
    findings: list[FindingRows]
    card: dict | None
    reasons: list[str] = field(default_factory=list)

    @property
    def single(self) -> bool:
        """One finding reported: the section keeps the single-finding layout."""
        return len(self.findings) == 1


COUNT_KEYS = ("n_rows", "n_duplicates", "n_outside_split", "n_errors", "n_unlabeled", "n")


def account_rows(
    rows: pd.DataFrame, labels: pd.DataFrame, split: Split, findings: Sequence[str]
) -> list[FindingRows]:
    """Deduplicate, filter by split, drop errors and unlabeled rows, counting each step.

    All findings of a model go through each step together (one pass over the rows, counts
    by ``bincount`` on the finding's index), so the cost does not grow with a copy per finding.
    """
    k, names = len(findings), pd.Index(findings)
    code = names.get_indexer(rows["finding"])
    counts = {"n_rows": _per_finding(code, k)}
    unique, code, without_id = _deduplicated(rows, code, names, counts)
    inside = split.inside(unique["image_id"]).to_numpy()
    counts["n_outside_split"] = _per_finding(code[~inside], k)
    unique, code, messages = _without_errors(unique[inside], code[inside], k, counts)
    matrix = labels[label_columns(findings)].to_numpy(dtype=np.int8)
    at = pd.Index(labels["image_id"]).get_indexer(unique["image_id"])
    # -1 in the label table: not evaluated for this finding (no-finding negatives).
    y = np.where(at >= 0, matrix[np.maximum(at, 0), code], -1) if len(at) else np.zeros(0)
    labelled = y >= 0
    counts["n_unlabeled"] = _per_finding(code[~labelled], k) + without_id
    evaluated = unique[labelled].assign(label=y[labelled].astype(np.int8), label_row=at[labelled])
    return _finding_rows(evaluated, code[labelled], findings, counts, messages)


def _per_finding(codes: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(codes, minlength=k)


def _deduplicated(
    rows: pd.DataFrame, code: np.ndarray, names: pd.Index, counts: dict
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One row per (image, finding) by the store's rule; the rows without an image id."""
    k = len(names)
    # A row without an image id can be neither deduplicated nor joined: it is unlabeled.
    no_id = rows["image_id"].isna().to_numpy()
    without_id = _per_finding(code[no_id], k)
    rows = rows[~no_id]
    # The store's one rule (a score before an error, then the newest; rows without a timestamp
    # count as the oldest; then the later row), so the report counts what reconcile keeps.
    ranked = rank_rows(rows.assign(_row=np.arange(len(rows))), tiebreak=("_row",))
    unique = ranked.drop_duplicates(["image_id", "finding"], keep="first").drop(columns="_row")
    kept = _per_finding(code[~no_id], k)
    code = names.get_indexer(unique["finding"])
    counts["n_duplicates"] = kept - _per_finding(code, k)
    return unique, code, without_id


def _without_errors(
    unique: pd.DataFrame, code: np.ndarray, k: int, counts: dict
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """The rows with a score; the error texts of the others (``code``, ``text``)."""
    error = unique["error"]
    present = error.notna().to_numpy()
    has_error = present.copy()
    has_error[present] = error[present].astype(str).str.strip().to_numpy() != ""
    failed = has_error | ~np.isfinite(unique["score"].to_numpy(dtype=np.float64))
    counts["n_errors"] = _per_finding(code[failed], k)
    messages = pd.DataFrame(
        {
            "code": code[failed],
            "text": error[failed].where(has_error[failed], "missing score").astype(str).str[:200],
        }
    )
    return unique[~failed], code[~failed], messages


def _finding_rows(
    evaluated: pd.DataFrame,
    code: np.ndarray,
    findings: Sequence[str],
    counts: dict,
    messages: pd.DataFrame,
) -> list[FindingRows]:
    """Each finding's evaluated rows, sorted by image id, with its counts and top errors."""
    k = len(findings)
    # One sort for every finding: by finding, then image id.
    rank = pd.factorize(evaluated["image_id"], sort=True)[0]
    order = np.lexsort((rank, code))
    code, y = code[order], evaluated["label"].to_numpy(dtype=np.int8)[order]
    bounds = np.searchsorted(code, np.arange(k + 1))
    columns = {
        "image_id": evaluated["image_id"].to_numpy()[order],
        "source": evaluated["source"].to_numpy()[order],
        "score": evaluated["score"].to_numpy(dtype=np.float64)[order],
        "label": y,
        "label_row": evaluated["label_row"].to_numpy()[order],
    }
    counts["n"] = np.diff(bounds)
    counts["n_positive"] = _per_finding(code[y == 1], k)
    counts["n_negative"] = counts["n"] - counts["n_positive"]
    out = []
    for index, name in enumerate(findings):
        part = slice(bounds[index], bounds[index + 1])
        table = pd.DataFrame({key: values[part] for key, values in columns.items()})
        texts = messages.loc[messages["code"] == index, "text"].value_counts().head(5)
        out.append(
            FindingRows(
                name,
                table,
                {key: int(values[index]) for key, values in counts.items()},
                {str(text): int(count) for text, count in texts.items()},
            )
        )
    return out


def _finding_threshold(
    config: ReportConfig, values: pd.Series, card: dict | None, finding: str
) -> tuple[float | None, str, list[str]]:
    """A finding's own cut-off: ``--threshold``, else the card's, else the predictions'.

    ``values`` counts the finding's prediction rows per stored threshold. The card's value is
    used exactly as trained (never a rounded decimal); compared in float32
    (:func:`medai.card.is_positive`) it splits the scores exactly as Parquet's
    ``predicted`` column, which was computed from the same value.
    """
    if config.threshold is not None:
        return float(config.threshold), "--threshold", []
    card_value = finding_threshold(card, finding)
    if card_value is not None:
        stored = values.index.to_numpy(dtype=np.float64).astype(np.float32)
        differs = int(values[stored != np.float32(card_value)].sum())
        reasons = []
        if differs:
            reasons.append(
                f"{differs} prediction rows carry a threshold other than the model card's "
                f"{card_value!r}; the card's is used"
            )
        return card_value, "model card", reasons
    if not values.empty:
        reasons = []
        if len(values) > 1:
            reasons.append(
                f"the predictions carry {len(values)} different thresholds; "
                f"the most common, {float(values.index[0])!r}, is used"
            )
        return float(values.index[0]), "predictions", reasons
    return None, "none", ["no model threshold in the model card, the predictions or --threshold"]


def _stored_thresholds(rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Per finding, the prediction rows per stored threshold, most common first."""
    stored = rows.loc[np.isfinite(rows["threshold"].to_numpy()), ["finding", "threshold"]]
    return {
        str(name): group.value_counts()
        for name, group in stored.groupby("finding", sort=False)["threshold"]
    }


def collect_models(config: ReportConfig, inputs: Inputs) -> list[ModelRows]:
    models = []
    for model_id, rows in inputs.predictions.groupby("model_id", sort=True):
        card, problem = read_card_copy(config.predictions, str(model_id))
        if problem:
            log.warning("ignoring %s", problem)
        reasons = [problem] if problem else []
        if card is None and inputs.model_card is not None:
            card = inputs.model_card  # the --model directory's own card
        names = findings_in_order(rows["finding"].unique(), card)
        findings = account_rows(rows, inputs.labels, inputs.split, names)
        stored = _stored_thresholds(rows)
        for finding in findings:
            values = stored.get(finding.name, pd.Series(dtype=np.int64))
            threshold, source, why = _finding_threshold(config, values, card, finding.name)
            finding.threshold, finding.threshold_source = threshold, source
            finding.reasons += why
        counts = {key: sum(f.counts[key] for f in findings) for key in COUNT_KEYS}
        if counts["n_outside_split"] == counts["n_rows"] - counts["n_duplicates"] > 0:
            reasons.append(f"all rows are outside the {inputs.split.name} split")
        models.append(ModelRows(str(model_id), findings, card, reasons))
    return models
