"""The model card and split.csv: the one home of both contracts and of the decision rule.

A model directory holds ``model.keras``, ``model_card.json`` (the card), ``split.csv`` and
``training_curves.png``. The card carries what a scorer or reviewer needs: the finding(s), the
input size, the thresholds chosen on validation, the calibration and the intended use. A
multi-finding card adds ``findings`` (ordered as the model's outputs) and ``per_finding`` (each
finding's threshold and the like); its top-level ``finding`` and ``threshold`` describe the
first finding and ``val_auc`` is the mean, so readers of single-finding cards still run.

``split.csv`` lists every labelled image of the training run, one row each: ``image_id``,
``patient_id``, ``split`` (train/val/test), ``label`` (and ``label_<Finding>`` per output of a
multi-finding model) and ``status``: ``used`` (trained or validated on), ``unreadable`` (read
but not decodable: never trained or validated on), ``missing`` (not found in the images, e.g.
behind a broken archive's fault) or ``not read`` (test images: training never reads them).
A split.csv written before ``status`` existed reads as ``used`` for its train and val rows.

Scoring copies the card into the predictions folder (``_model_cards/<model_id>.json``), where
the report reads it back leniently: a damaged copy costs the card's details, not the report.

The decision rule, :func:`is_positive`, is the card's threshold applied: ``score >= threshold``
compared in float32, in Parquet's ``predicted`` column, ``medai predict``, export and report.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from medai.errors import MedaiError
from medai.files import write_atomically, write_json

__all__ = [
    "MODEL_FILE",
    "CARD_FILE",
    "SPLIT_FILE",
    "CURVES_FILE",
    "CARDS_DIR",
    "INTENDED_USE",
    "PREPROCESSING",
    "ECE_BINS",
    "SPLIT_STATUSES",
    "ModelDirError",
    "is_positive",
    "read_card",
    "write_card",
    "card_findings",
    "card_thresholds",
    "finding_threshold",
    "card_line",
    "card_excerpt",
    "write_card_copy",
    "read_card_copy",
    "write_split",
    "read_split",
    "split_labels",
]

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
SPLIT_FILE = "split.csv"
CURVES_FILE = "training_curves.png"
CARDS_DIR = "_model_cards"  # the card copies in a predictions folder
INTENDED_USE = (
    "Research use only. Not a medical device and not for diagnosis or clinical decisions; "
    "scores must be reviewed by qualified radiologists."
)
PREPROCESSING = (
    "decode (PNG/JPEG, 8/16-bit, gray/RGB/RGBA) -> luminance uint8 -> resize to image_size "
    "(bilinear) -> repeat to 3 channels -> x/127.5 - 1 (InceptionV3 scaling, inside the model)"
)
ECE_BINS = 10  # equal-width bins of the expected calibration error (card and report)
SPLIT_STATUSES = ("used", "unreadable", "missing", "not read")
_REQUIRED = ("model_id", "finding", "image_size", "threshold")
_EXCERPT_KEYS = (
    "finding",
    "findings",
    "threshold",
    "threshold_sensitivity_90",
    "val_auc",
    "per_finding",
    "counts",
    "head",
    "image_size",
    "weights",
    "intended_use",
)


class ModelDirError(MedaiError, ValueError):
    """A model directory is missing or incomplete."""


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


# ------------------------------------------------------------------------------------ card


def read_card(model_dir: str | Path) -> dict:
    """Read and check a model directory's card.

    Raises:
        ModelDirError: If the directory, the model file or the card is missing or unreadable.
    """
    model_dir = Path(model_dir)
    for name in (MODEL_FILE, CARD_FILE):
        if not (model_dir / name).is_file():
            raise ModelDirError(f"{model_dir} is not a model directory: {name} is missing")
    try:
        card = json.loads((model_dir / CARD_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{model_dir / CARD_FILE}: not valid JSON ({exc})") from exc
    missing = [key for key in _REQUIRED if key not in card]
    if missing:
        raise ModelDirError(f"{model_dir / CARD_FILE}: missing fields {missing}")
    if "findings" in card:
        _check_findings(card, model_dir / CARD_FILE)
    return card


def write_card(model_dir: str | Path, card: dict) -> None:
    """Write a model directory's card atomically."""
    write_json(Path(model_dir) / CARD_FILE, card)


def _check_findings(card: dict, path: Path) -> None:
    """A multi-finding card: a non-empty list of distinct names, each with its threshold."""
    findings = card["findings"]
    if not isinstance(findings, list) or not findings or len(set(findings)) != len(findings):
        raise ModelDirError(f"{path}: 'findings' must be a non-empty list of distinct names")
    if findings[0] != card["finding"]:
        raise ModelDirError(f"{path}: 'finding' {card['finding']!r} is not findings[0]")
    per_finding = card.get("per_finding") or {}
    without = [f for f in findings if "threshold" not in per_finding.get(f, {})]
    if len(findings) > 1 and without:
        raise ModelDirError(f"{path}: per_finding has no threshold for {without}")


def card_findings(card: dict) -> list[str]:
    """A model's findings, ordered as its outputs (a card without ``findings`` has one)."""
    return list(card.get("findings") or [card["finding"]])


def card_thresholds(card: dict) -> list[float]:
    """Each finding's decision threshold, in :func:`card_findings` order (a checked card).

    A finding's own ``per_finding[f]["threshold"]`` when the card has it, else the card's
    ``threshold`` (single-finding cards).
    """
    per_finding = card.get("per_finding") or {}
    return [
        float(per_finding.get(f, {}).get("threshold", card["threshold"]))
        for f in card_findings(card)
    ]


def finding_threshold(card: dict | None, finding: str) -> float | None:
    """One finding's threshold from a card that may be damaged (a copy the report reads).

    ``None`` without a card, for a multi-finding card without the finding's entry, or where
    the value is not a finite number.
    """
    if not card:
        return None
    per_finding = card.get("per_finding")
    if isinstance(per_finding, dict) and isinstance(per_finding.get(finding), dict):
        return _number(per_finding[finding].get("threshold"))
    if isinstance(card.get("findings"), list) and len(card["findings"]) > 1:
        return None
    return _number(card.get("threshold"))


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def card_line(card: dict) -> str:
    """One line: the calibrated validation AUC and threshold of a card (or of one finding's entry).

    A multi-finding card's top-level AUC is the mean over its findings and its threshold the
    first finding's, so for such a card the line names the mean and no threshold.
    """
    findings = len(card.get("per_finding") or {})
    best = f" (best epoch {card['best_epoch']})" if "best_epoch" in card else ""
    if findings > 1:
        return f"mean val AUC {_four(card['val_auc'])} over {findings} findings{best}"
    return f"val AUC {_four(card['val_auc'])}, threshold {_four(card['threshold'])}{best}"


def _four(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def card_excerpt(card: dict | None) -> dict | None:
    """The card's fields a report shows (those present), or ``None`` without a card."""
    if card is None:
        return None
    return {key: card[key] for key in _EXCERPT_KEYS if key in card}


def write_card_copy(folder: str | Path, card: dict) -> None:
    """Copy a card into a predictions folder, as ``_model_cards/<model_id>.json``."""
    write_json(Path(folder) / CARDS_DIR / f"{card['model_id']}.json", card)


def read_card_copy(folder: str | Path, model_id: str) -> tuple[dict | None, str]:
    """A predictions folder's copy of a model's card, and why there is none (``""`` if absent).

    Never raises on a damaged copy: a report without the card's details still reports.
    """
    # The model id names a file: refuse anything that could leave the model_cards folder.
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", model_id) or model_id.startswith("."):
        return None, ""
    path = Path(folder) / CARDS_DIR / f"{model_id}.json"
    if not path.is_file():
        return None, ""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"model card {path.name} is unreadable ({exc}); card details omitted"
    if not isinstance(card, dict):
        return None, f"model card {path.name} is not a JSON object; card details omitted"
    return card, ""


# ------------------------------------------------------------------------------- split.csv


def write_split(model_dir: str | Path, split, label_columns: list[str]) -> None:
    """Write ``split.csv`` from the training inventory's split table.

    Args:
        model_dir: The model directory.
        split: ``image_id``, ``patient_id``, ``split``, ``label``, the ``label_<Finding>``
            columns, the inventory's ``found`` and ``unreadable`` flags and, if there, its
            ``source`` (an image's WADO-RS URL when read from DICOMweb, else ``""``; last).
        label_columns: The per-finding columns in output order (written when more than one).
    """
    import pandas as pd

    table = split[["image_id", "patient_id", "split", "label"]].copy()
    if len(label_columns) > 1:
        table[label_columns] = split[label_columns]
    read = split["split"].isin(["train", "val"])
    status = pd.Series("missing", index=split.index)
    status[split["found"]] = "used"
    status[split["unreadable"]] = "unreadable"
    status[~read] = "not read"
    table["status"] = status
    if "source" in split:
        table["source"] = split["source"]
    write_atomically(Path(model_dir) / SPLIT_FILE, lambda tmp: table.to_csv(tmp, index=False))


def read_split(model_dir: str | Path):
    """A model directory's ``split.csv`` as a DataFrame, or ``None`` when it has none.

    Ids are strings as written; a file from before ``status`` existed gets ``used`` for its
    train and val rows (and ``not read`` for test rows).

    Raises:
        ModelDirError: If the file cannot be read or lacks ``image_id`` or ``split``.
    """
    import pandas as pd

    path = Path(model_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        ids = {"image_id": str, "patient_id": str, "split": str, "status": str}
        table = pd.read_csv(path, dtype=ids, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in ("image_id", "split") if c not in table]
    if missing:
        raise ModelDirError(f"cannot read {path}: no column {missing}")
    if "status" not in table:
        read = table["split"].isin(["train", "val"])
        table["status"] = np.where(read, "used", "not read")
    return table


def split_labels(table, findings: list[str]) -> np.ndarray:
    """``(N, K)`` labels of split.csv rows in the model's output order (1/0, -1 = not evaluated).

    A multi-finding split.csv has a ``label_<Finding>`` column per output; one finding, ``label``.
    """
    per_finding = [f"label_{name}" for name in findings]
    columns = per_finding if all(c in table for c in per_finding) else ["label"]
    return table[columns].to_numpy(dtype=np.int64)
