"""Label tables: the NIH ``Data_Entry_2017.csv`` and generic CSVs, for one finding or several.

Both formats are normalised into one table: ``image_id`` (the NIH *Image Index* or the file
name), ``patient_id`` (string), ``findings`` (the raw ``|``-separated NIH findings, or an empty
string for generic CSVs), one ``int8`` column per finding named ``label_<Finding>``
(:func:`label_columns`) holding 1 (positive), 0 (negative) or -1 (not evaluated for this finding:
under ``no-finding`` negatives, an image with other findings but not this one), and ``label``,
a copy of the first finding's column for single-finding code. Optional metadata is normalised
when the file has it: ``age`` (int), ``sex`` (``M``/``F``), ``view`` (``PA``/``AP``) and
``follow_up`` (int). Every problem with a label file raises :class:`LabelError` with a message
naming the file and the problem, before any training or scoring starts.
"""

from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medai.errors import MedaiError
from medai.images import NIH_SPLIT_LISTS

__all__ = [
    "LABEL_COLUMNS",
    "METADATA_COLUMNS",
    "NEGATIVE_POLICIES",
    "NIH_FINDINGS",
    "LabelError",
    "label_columns",
    "labelled_findings",
    "load_labels",
    "parse_findings",
    "read_split_list",
    "find_split_lists",
]

log = logging.getLogger("medai.labels")

LABEL_COLUMNS = ("image_id", "patient_id", "label", "findings")
METADATA_COLUMNS = ("age", "sex", "view", "follow_up")
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
ALL = "all"

_NIH_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
_NIH_METADATA = {
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
    "Follow-up #": "follow_up",
}
_GENERIC_METADATA = {"age": "age", "sex": "sex", "view": "view", "follow_up": "follow_up"}
_GENERIC_REQUIRED = ("image", "label")
_ID_COLUMNS = ("image", "study")
# Where the table's patients come from (table.attrs): the file's own column, or nothing (each
# image its own patient until medai.dicom_labels gives DICOM images their keyed pseudonym).
PATIENTS_FROM_FILE = "file"
PATIENTS_FROM_IMAGES = "images"


class LabelError(MedaiError, ValueError):
    """A label file or label option is unusable; the message says why."""


def _valid_names() -> str:
    return f"valid NIH findings: {', '.join(NIH_FINDINGS)}, or {ALL!r} for all of them"


def parse_findings(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parse a ``--finding`` value: ``Mass``, a comma list ``Mass,Nodule`` or ``all`` (any case).

    Args:
        text: The option text (whitespace around names is ignored), or a sequence of names.

    Returns:
        The findings in the order given; ``all`` gives :data:`NIH_FINDINGS` in their order.

    Raises:
        LabelError: On an empty, unknown or repeated name; the message lists the valid names.
    """
    names = [str(name).strip() for name in (text.split(",") if isinstance(text, str) else text)]
    # Any case: 'mass' and 'MASS' mean Mass, as the NIH label file spells it.
    canonical = {name.lower(): name for name in (*NIH_FINDINGS, ALL)}
    names = [canonical.get(name.lower(), name) for name in names]
    if names == [ALL]:
        return NIH_FINDINGS
    if not names or any(not name for name in names):
        raise LabelError(f"--finding {text!r} holds an empty name; {_valid_names()}")
    unknown = [name for name in names if name not in NIH_FINDINGS]
    if unknown:
        raise LabelError(f"unknown finding {unknown[0]!r}; {_valid_names()}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise LabelError(f"--finding names {repeated[0]!r} more than once")
    return tuple(names)


def label_columns(findings: Iterable[str]) -> list[str]:
    """The label table's per-finding column names, in the order of ``findings``."""
    return [f"label_{finding}" for finding in findings]


def labelled_findings(path: str | Path) -> tuple[str, ...] | None:
    """The findings a label file can label, or ``None`` for a single ``label`` column.

    Returns:
        :data:`NIH_FINDINGS` for the NIH format, the finding columns of a generic CSV, or
        ``None`` for a generic CSV whose one ``label`` column is whatever finding is asked for.

    Raises:
        LabelError: If the file is missing, empty or in neither format.
    """
    path = Path(path)
    header = _read_header(path)
    if all(col in header for col in _NIH_REQUIRED):
        return NIH_FINDINGS
    if _id_column(header) and "label" not in header:
        columns = tuple(name for name in NIH_FINDINGS if name in header)
        if columns:
            return columns
    if _id_column(header) and "label" in header:
        return None
    raise _unrecognised(path, header)


def _id_column(header: Sequence[str]) -> str | None:
    """A generic CSV's id column: ``image`` (a file name or SOP Instance UID), else ``study``
    (a StudyInstanceUID: study-level labels, every image of the study takes them)."""
    return next((name for name in _ID_COLUMNS if name in header), None)


def _unrecognised(path: Path, header: list[str]) -> LabelError:
    # A file with some of a layout's columns is most likely that layout missing the others.
    layouts = (
        ("an NIH", _NIH_REQUIRED, ""),
        ("a generic", _GENERIC_REQUIRED, " (or one 0/1 column per NIH finding)"),
    )
    for layout, required, alternative in layouts:
        missing = [col for col in required if col not in header]
        if len(missing) < len(required):
            return LabelError(
                f"{path}: {layout} label file needs the column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(col) for col in missing)}{alternative}; its columns are "
                f"{header}"
            )
    return LabelError(
        f"{path}: unrecognised label file: columns {header} hold neither the NIH columns "
        f"{list(_NIH_REQUIRED)} nor the generic columns {list(_GENERIC_REQUIRED)} (or image and "
        "one 0/1 column per finding)"
    )


def _resolve(finding: str | Sequence[str], single_ok: bool) -> tuple[str, ...]:
    """The findings asked for; a lone name is taken as is where a ``label`` column names it."""
    if single_ok:
        names = finding.split(",") if isinstance(finding, str) else list(finding)
        if len(names) == 1 and names[0].strip() and names[0].strip() != ALL:
            return (names[0].strip(),)
    return parse_findings(finding)


def load_labels(
    path: str | Path,
    finding: str | Sequence[str] = "Mass",
    negatives: str = "all-others",
) -> pd.DataFrame:
    """Load a label file into the normalised label table.

    Args:
        path: An NIH ``Data_Entry_2017.csv``, or a generic CSV with an ``image`` column (a
            file name or a DICOM SOP Instance UID), or a ``study`` column (a
            StudyInstanceUID: study-level labels, see :mod:`medai.dicom_labels`), and
            either a ``label`` column (0/1, for a single finding) or one 0/1 column per finding
            named exactly as the finding; optional ``patient_id`` (without it each image is its
            own patient, and a warning says so), ``sex``, ``age`` and ``view`` columns.
        finding: The finding(s) to label: a name, a comma list, ``all``, or a sequence of names
            (see :func:`parse_findings`). With a generic ``label`` column, the single name names
            that column's finding.
        negatives: ``all-others`` (every image without the finding is its negative, the
            ChestX-ray14 protocol) or ``no-finding`` (only ``No Finding`` images are negatives;
            an image with other findings is -1, not evaluated, for this finding).

    Returns:
        A DataFrame with ``image_id``, ``patient_id``, ``findings``, the :func:`label_columns`,
        ``label`` and any metadata columns, one row per image (per study, with a ``study_id``
        column, for study-level labels); images not evaluated for any finding are dropped.
        ``attrs["level"]`` is ``"image"`` or ``"study"``; ``attrs["patients"]`` is ``"file"``
        (a patient column) or ``"images"`` (none: each image its own patient).

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
        findings = _resolve(finding, single_ok=False)
        table = _load_nih(path, header, findings, negatives)
        patients = PATIENTS_FROM_FILE
    elif _id_column(header) and ("label" in header or any(f in header for f in NIH_FINDINGS)):
        findings = _resolve(finding, single_ok="label" in header)
        table = _load_generic(path, header, findings)
        patients = PATIENTS_FROM_FILE if "patient_id" in header else PATIENTS_FROM_IMAGES
    else:
        raise _unrecognised(path, header)
    columns = label_columns(findings)
    table["label"] = table[columns[0]]
    table = table[(table[columns] >= 0).any(axis=1)]
    if table.empty:
        raise LabelError(
            f"{path}: no labelled images left for finding {', '.join(findings)!r} ({negatives})"
        )
    return _finished(path, table, columns, patients)


def _finished(path: Path, table: pd.DataFrame, columns: list[str], patients: str) -> pd.DataFrame:
    """The table in its column order, with its ``level`` and ``patients`` attrs; refuses
    duplicated ids."""
    level = "study" if "study_id" in table else "image"
    duplicated = table["image_id"][table["image_id"].duplicated()]
    if not duplicated.empty:
        raise LabelError(f"{path}: duplicated {level} ids, e.g. {duplicated.iloc[0]!r}")
    order = ["image_id", "patient_id", "findings", *columns, "label"]
    order += [name for name in METADATA_COLUMNS if name in table]
    table = table[order + (["study_id"] if level == "study" else [])].reset_index(drop=True)
    table.attrs["level"] = level
    table.attrs["patients"] = patients
    return table


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


def _read_csv(path: Path, required: Iterable[str], optional: Iterable[str] = ()) -> pd.DataFrame:
    """Read the required columns (blank values refused) and whichever optional ones exist."""
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
    required = list(required)
    present = [col for col in optional if col in frame.columns and col not in required]
    frame = frame[required + present].apply(lambda col: col.str.strip())
    blank = frame[(frame[required] == "").any(axis=1)]
    if not blank.empty:
        line = int(blank.index[0]) + 2  # header is line 1
        raise LabelError(f"{path}: line {line} has an empty value in {required}")
    return frame


def _metadata(raw: pd.DataFrame, names: dict[str, str]) -> dict[str, pd.Series]:
    """Normalised metadata columns (missing or malformed values become NA)."""
    out = {}
    for source, name in names.items():
        if source not in raw:
            continue
        values = raw[source]
        if name in ("age", "follow_up"):
            # Old NIH releases write ages as "058Y": the number is what matters.
            digits = values.str.extract(r"(\d+)", expand=False)
            out[name] = pd.to_numeric(digits, errors="coerce").astype("Int64")
        elif name == "sex":
            first = values.str.upper().str[:1]
            out[name] = first.where(first.isin(["M", "F"]), pd.NA)
        else:
            upper = values.str.upper()
            out[name] = upper.where(upper != "", pd.NA)
    return out


def _load_nih(
    path: Path, header: list[str], findings: tuple[str, ...], negatives: str
) -> pd.DataFrame:
    raw = _read_csv(path, _NIH_REQUIRED, _NIH_METADATA)
    text = raw["Finding Labels"]
    # One multi-hot matrix from the exploded labels: no per-finding pass over the strings.
    exploded = text.str.split("|").explode()
    names = (*NIH_FINDINGS, NO_FINDING)
    codes = pd.Categorical(exploded, categories=names).codes
    if (codes < 0).any():
        unknown = sorted(set(exploded[codes < 0]))
        raise LabelError(f"{path}: unknown finding labels {unknown}")
    hot = np.zeros((len(raw), len(names)), dtype=bool)
    hot[exploded.index.to_numpy(), codes] = True
    only_no_finding = hot[:, -1] & (hot.sum(axis=1) == 1)
    table = pd.DataFrame(
        {
            "image_id": raw["Image Index"],
            "patient_id": raw["Patient ID"].str.lstrip("0").replace("", "0"),
            "findings": text,
        }
    )
    for finding, column in zip(findings, label_columns(findings), strict=True):
        positive = hot[:, names.index(finding)]
        label = positive.astype(np.int8)
        if negatives == "no-finding":
            label[~positive & ~only_no_finding] = -1
        table[column] = label
    for name, values in _metadata(raw, _NIH_METADATA).items():
        table[name] = values
    return table


def _load_generic(path: Path, header: list[str], findings: tuple[str, ...]) -> pd.DataFrame:
    single = "label" in header and len(findings) == 1
    sources = ["label"] if single else list(findings)
    missing = [name for name in sources if name not in header]
    if missing:
        raise LabelError(
            f"{path}: no column for finding(s) {missing}; a generic CSV has a `label` column "
            "for one finding, or one 0/1 column per finding named as the finding"
        )
    # Every finding column the file has, asked for or not: the report lists an image's other
    # labelled findings, as NIH's "Finding Labels" does.
    others = [name for name in NIH_FINDINGS if name in header and name not in sources]
    optional = ["patient_id", *_GENERIC_METADATA, *others]
    key = _id_column(header) or "image"
    raw = _read_csv(path, [key, *sources], optional)
    for source in sources:
        bad = raw[~raw[source].isin(["0", "1"])]
        if not bad.empty:
            value, image = bad[source].iloc[0], bad[key].iloc[0]
            name = "label" if source == "label" else f"label ({source})"
            raise LabelError(f"{path}: {name} must be 0 or 1, found {value!r} for {image!r}")
    # A study's rows carry its UID as their id until its images are known (medai.dicom_labels).
    image_id = raw[key] if key == "study" else raw[key].map(lambda value: Path(value).name)
    if "patient_id" not in raw and key == "image":
        # The split can still not leak images, but it can leak patients, which inflates AUC.
        log.warning(
            "%s has no patient_id column: each image is treated as its own patient, so "
            "follow-up images of one patient may leak across train and validation; add a "
            "patient_id column to split by patient",
            path,
        )
    patient = raw.get("patient_id", image_id)
    table = pd.DataFrame({"image_id": image_id, "patient_id": patient})
    if key == "study":
        table["study_id"] = raw["study"]
    table["findings"] = _findings_text(raw, [] if single else [*sources, *others])
    for source, column in zip(sources, label_columns(findings), strict=True):
        table[column] = raw[source].astype("int8")
    for name, values in _metadata(raw, _GENERIC_METADATA).items():
        table[name] = values
    return table


def _findings_text(raw: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """NIH-style ``A|B`` text of the finding columns holding 1 (``No Finding`` when none)."""
    present = [name for name in NIH_FINDINGS if name in columns and name in raw]
    if not present:
        return pd.Series("", index=raw.index)
    parts = [np.where(raw[name].to_numpy() == "1", name + "|", "") for name in present]
    text = pd.Series(functools.reduce(np.char.add, parts), index=raw.index)
    text = text.astype(str).str.rstrip("|")
    return text.where(text != "", NO_FINDING)


def read_split_list(path: str | Path) -> list[str]:
    """Read an NIH split list (one ``Image Index`` per line, blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"split list not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def find_split_lists(labels_path: str | Path) -> tuple[Path | None, Path | None]:
    """Return the NIH ``train_val_list.txt`` and ``test_list.txt`` beside a label file, if any."""
    folder = Path(labels_path).parent
    found = [folder / name for name in NIH_SPLIT_LISTS]
    return tuple(p if p.is_file() else None for p in found)  # type: ignore[return-value]
