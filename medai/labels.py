"""Label tables: the NIH ``Data_Entry_2017.csv`` and generic ``image,label`` CSVs.

Both formats are normalised into one table with the columns of :data:`LABEL_COLUMNS`:
``image_id`` (the NIH *Image Index* or the file name), ``patient_id`` (string), ``label``
(0/1 for the chosen finding) and ``findings`` (the raw ``|``-separated NIH findings, or an
empty string for generic CSVs). Every problem with a label file raises :class:`LabelError`
with a message naming the file and the problem, before any training or scoring starts.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from medai.errors import MedaiError

__all__ = [
    "LABEL_COLUMNS",
    "NEGATIVE_POLICIES",
    "NIH_FINDINGS",
    "LabelError",
    "load_labels",
    "read_split_list",
    "find_split_lists",
]

log = logging.getLogger("medai.labels")

LABEL_COLUMNS = ("image_id", "patient_id", "label", "findings")
NEGATIVE_POLICIES = ("all-others", "no-finding")

# The 14 ChestX-ray14 findings plus the explicit negative label.
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"

_NIH_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
_GENERIC_REQUIRED = ("image", "label")


class LabelError(MedaiError, ValueError):
    """A label file or label option is unusable; the message says why."""


def load_labels(
    path: str | Path, finding: str = "Mass", negatives: str = "all-others"
) -> pd.DataFrame:
    """Load a label file into the normalised label table.

    Args:
        path: An NIH ``Data_Entry_2017.csv`` or a generic CSV with columns ``image,label``
            (label 0/1) and an optional ``patient_id`` column (without it each image is its own
            patient, and a warning says so).
        finding: The NIH finding to detect (ignored for generic CSVs, whose label is the finding).
        negatives: ``all-others`` (every image without the finding is negative, the ChestX-ray14
            protocol) or ``no-finding`` (only ``No Finding`` images are negative; images with
            other findings are dropped).

    Returns:
        A DataFrame with the columns of :data:`LABEL_COLUMNS`, one row per image.

    Raises:
        LabelError: On a missing or empty file, missing columns, an unknown finding or negatives
            policy, bad label values or duplicated image ids.
    """
    if negatives not in NEGATIVE_POLICIES:
        raise LabelError(
            f"--negatives must be one of {', '.join(NEGATIVE_POLICIES)}, not {negatives!r}"
        )
    path = Path(path)
    header = _read_header(path)
    if all(col in header for col in _NIH_REQUIRED):
        table = _load_nih(path, finding, negatives)
    elif all(col in header for col in _GENERIC_REQUIRED):
        table = _load_generic(path)
    else:
        raise LabelError(
            f"{path}: unrecognised label file: columns {header} hold neither the NIH columns "
            f"{list(_NIH_REQUIRED)} nor the generic columns {list(_GENERIC_REQUIRED)}"
        )
    if table.empty:
        raise LabelError(f"{path}: no labelled images left for finding {finding!r} ({negatives})")
    duplicated = table["image_id"][table["image_id"].duplicated()]
    if not duplicated.empty:
        raise LabelError(f"{path}: duplicated image ids, e.g. {duplicated.iloc[0]!r}")
    return table.reset_index(drop=True)


def _read_header(path: Path) -> list[str]:
    if not path.is_file():
        raise LabelError(f"label file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        try:
            header = next(csv.reader(handle), None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise LabelError(f"{path}: not a readable CSV file ({exc})") from exc
    if not header or not any(cell.strip() for cell in header):
        raise LabelError(f"{path}: empty label file (no header row)")
    return [cell.strip() for cell in header]


def _read_csv(path: Path, columns: Iterable[str]) -> pd.DataFrame:
    try:
        # index_col=False: the NIH header's split brackets make pandas guess an index otherwise.
        frame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            index_col=False,
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: malformed CSV ({exc})") from exc
    frame.columns = [str(col).strip() for col in frame.columns]
    frame = frame[list(columns)].apply(lambda col: col.str.strip())
    blank = frame[(frame == "").any(axis=1)]
    if not blank.empty:
        line = int(blank.index[0]) + 2  # header is line 1
        raise LabelError(f"{path}: line {line} has an empty value in {list(columns)}")
    return frame


def _load_nih(path: Path, finding: str, negatives: str) -> pd.DataFrame:
    if finding not in NIH_FINDINGS:
        raise LabelError(
            f"unknown finding {finding!r}; valid NIH findings: {', '.join(NIH_FINDINGS)}"
        )
    raw = _read_csv(path, _NIH_REQUIRED)
    findings = raw["Finding Labels"]
    sets = findings.str.split("|")
    unknown = sorted({f for s in sets for f in s} - set(NIH_FINDINGS) - {NO_FINDING})
    if unknown:
        raise LabelError(f"{path}: unknown finding labels {unknown}")
    positive = sets.map(lambda s: finding in s)
    keep = positive | (sets.map(lambda s: s == [NO_FINDING]) if negatives == "no-finding" else True)
    table = pd.DataFrame(
        {
            "image_id": raw["Image Index"],
            "patient_id": raw["Patient ID"].str.lstrip("0").replace("", "0"),
            "label": positive.astype("int8"),
            "findings": findings,
        }
    )
    return table[keep]


def _load_generic(path: Path) -> pd.DataFrame:
    header = _read_header(path)
    columns = ["image", "label"] + (["patient_id"] if "patient_id" in header else [])
    raw = _read_csv(path, columns)
    bad = raw[~raw["label"].isin(["0", "1"])]
    if not bad.empty:
        value, image = bad["label"].iloc[0], bad["image"].iloc[0]
        raise LabelError(f"{path}: label must be 0 or 1, found {value!r} for {image!r}")
    image_id = raw["image"].map(lambda value: Path(value).name)
    if "patient_id" not in raw:
        # The split can still not leak images, but it can leak patients, which inflates AUC.
        log.warning(
            "%s has no patient_id column: each image is treated as its own patient, so "
            "follow-up images of one patient may leak across train and validation; add a "
            "patient_id column to split by patient",
            path,
        )
    patient = raw.get("patient_id", image_id)
    return pd.DataFrame(
        {
            "image_id": image_id,
            "patient_id": patient,
            "label": raw["label"].astype("int8"),
            "findings": "",
        }
    )


def read_split_list(path: str | Path) -> list[str]:
    """Read an NIH split list (one ``Image Index`` per line, blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"split list not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def find_split_lists(labels_path: str | Path) -> tuple[Path | None, Path | None]:
    """Return the NIH ``train_val_list.txt`` and ``test_list.txt`` beside a label file, if any."""
    folder = Path(labels_path).parent
    found = [folder / name for name in ("train_val_list.txt", "test_list.txt")]
    return tuple(p if p.is_file() else None for p in found)  # type: ignore[return-value]
