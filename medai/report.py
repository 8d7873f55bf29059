"""The report job: score Parquet files + labels -> metrics.json, PNG plots and report.html.

``medai score`` writes one row per image, finding and model (see :data:`REQUIRED_COLUMNS` and
:data:`OPTIONAL_COLUMNS`). The report joins those rows to the label table by ``image_id`` (each
finding to its own ``label_<Finding>`` column), keeps the chosen split (by default the images
the model never saw: the NIH test list, or the images outside the train and validation splits
of the model's ``split.csv``), and for every model and finding (those it scored, or those
``--finding`` names) writes its ranking and calibration metrics (AUC with a bootstrap CI,
average precision, Brier score, ECE), its operating points at the model threshold and at the
Youden-optimal threshold, and plots, with a summary table of all findings and one ROC figure
with a curve per finding. An image is called positive when ``score >= threshold`` in float32
(:func:`medai.thresholds.is_positive`, the rule of Parquet's ``predicted`` column), with the
model card's exact threshold for that finding. Models that scored the same images are compared
pairwise on the images both scored, finding by finding.

A model reported for one finding keeps the ``metrics.json`` section it always had (the metrics
at its top level); every section also has ``findings`` (one entry per finding with every
metric) and ``summary`` (the CheXNet-style table).

Nothing is dropped silently: per model and finding the rows are accounted for as
``n_rows = n_duplicates + n_outside_split + n_errors + n_unlabeled + n``, and every metric
that is undefined on the data is ``null`` with an entry in ``reasons``. All input problems
raise :class:`ReportError` before any output is written.
"""

from __future__ import annotations

import argparse
import base64
import html
import itertools
import json
import logging
import math
import numbers
import re
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from medai import metrics
from medai.errors import MedaiError
from medai.labels import (
    ALL,
    NEGATIVE_POLICIES,
    NIH_FINDINGS,
    LabelError,
    find_split_lists,
    label_columns,
    labelled_findings,
    load_labels,
    parse_findings,
    read_split_list,
)
from medai.thresholds import is_positive

__all__ = [
    "INTENDED_USE",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "SPLIT_HELP",
    "ReportConfig",
    "ReportError",
    "add_report_arguments",
    "build_report_parser",
    "check_config",
    "config_from_args",
    "run_report",
]

log = logging.getLogger("medai.report")

SPLITS = ("unseen", "test", "train_val", "all")
SPLIT_HELP = (
    "images to evaluate: 'unseen' = the labelled images the model neither trained nor "
    "validated on (read from MODEL_DIR/split.csv, so it needs --model); 'test' / 'train_val' = "
    "the images of the NIH test_list.txt / train_val_list.txt beside the labels file; 'all' = "
    "every labelled image, training images included (optimistic metrics). Default: test when "
    "test_list.txt is beside the labels file, else unseen"
)
REQUIRED_COLUMNS = ("image_id", "score", "model_id")
OPTIONAL_COLUMNS = ("source", "predicted", "threshold", "finding", "scored_at", "error")
INTENDED_USE = "Research use only, not for diagnosis."
DEFAULT_FINDING = "Mass"  # the finding of rows and generic label columns that name none
FINDING_HELP = (
    "finding(s) to evaluate: a name, a comma list (Mass,Nodule,Effusion) or 'all' (the 14 NIH "
    "findings). Default: every finding the models scored that the labels have (Mass for a "
    "generic image,label CSV)"
)
EXAMPLES_PER_GROUP = 4
ECE_BINS = 10  # equal-width bins of the expected calibration error
THUMBNAIL_SIZE = 192


class ReportError(MedaiError, ValueError):
    """The report cannot run with these inputs or options; the message says why."""


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """Options of one report run (the ``medai report`` flags).

    Attributes:
        predictions: Folder of ``*.parquet`` files written by ``medai score``.
        labels: NIH ``Data_Entry_2017.csv`` or a generic ``image,label`` CSV.
        out: Output folder for ``metrics.json``, ``config.json``, ``plots/`` and ``report.html``.
        finding: The finding(s) to report: a name, a comma list or ``all``; ``None`` = every
            finding the models scored that the labels have. Models scoring none of them are
            skipped.
        negatives: ``all-others`` or ``no-finding`` (see :func:`medai.labels.load_labels`).
        split: One of :data:`SPLITS` (see :data:`SPLIT_HELP`); ``None`` means ``test`` when
            the NIH ``test_list.txt`` is beside the labels file, else ``unseen``.
        model: The model directory (from ``medai train``) of the predictions' model: its
            ``split.csv`` defines the ``unseen`` split, and the report covers only that model
            (its card's ``model_id`` must be in the predictions).
        model_id: Report only this model (a unique prefix of its id is enough).
        threshold: Cut-off overriding the model's own threshold.
        bootstrap: Bootstrap resamples for the confidence intervals (0 disables them).
        seed: Seed of the bootstrap.
    """

    predictions: str | Path
    labels: str | Path
    out: str | Path
    finding: str | None = None
    negatives: str = "all-others"
    split: str | None = None
    model: str | Path | None = None
    model_id: str | None = None
    threshold: float | None = None
    bootstrap: int = 1000
    seed: int = 0


# ----------------------------------------------------------------------------- command line


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``medai report`` flags to ``parser``.

    Args:
        parser: A parser or sub-command parser.

    Returns:
        The same parser.
    """
    parser.add_argument(
        "--predictions",
        required=True,
        metavar="PRED_DIR",
        help="folder of *.parquet files written by `medai score`",
    )
    parser.add_argument(
        "--labels",
        required=True,
        metavar="CSV",
        help="NIH Data_Entry_2017.csv or a generic CSV with columns image,label",
    )
    parser.add_argument("--finding", default=None, help=FINDING_HELP)
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT_DIR",
        help="output folder for metrics.json, plots and report.html",
    )
    parser.add_argument(
        "--negatives",
        default="all-others",
        choices=NEGATIVE_POLICIES,
        help="which images count as negatives (default: all-others)",
    )
    parser.add_argument("--split", default=None, choices=SPLITS, help=SPLIT_HELP)
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODEL_DIR",
        help="the model directory (from `medai train`) of the predictions' model: its split.csv "
        "tells which images it trained and validated on (needed for --split unseen, the "
        "default without NIH lists); only that model is reported",
    )
    parser.add_argument(
        "--model-id",
        default=None,
        metavar="ID",
        help="report only this model (a unique prefix of its id is enough)",
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="cut-off overriding the model's threshold"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for confidence intervals, 0 disables (default: 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    return parser


def build_report_parser(prog: str = "medai report") -> argparse.ArgumentParser:
    """A stand-alone parser for the report flags (used by ``jobs/report.py``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Evaluate `medai score` predictions against labels."
    )
    return add_report_arguments(parser)


def config_from_args(namespace: argparse.Namespace) -> ReportConfig:
    """Build and check a :class:`ReportConfig` from parsed report flags.

    Raises:
        ReportError: If a flag value is invalid.
    """
    config = ReportConfig(
        predictions=namespace.predictions,
        labels=namespace.labels,
        out=namespace.out,
        finding=namespace.finding,
        negatives=namespace.negatives,
        split=namespace.split,
        model=getattr(namespace, "model", None),
        model_id=namespace.model_id,
        threshold=namespace.threshold,
        bootstrap=namespace.bootstrap,
        seed=namespace.seed,
    )
    check_config(config)
    return config


def check_config(config: ReportConfig) -> None:
    """Check option values that need no file access.

    Raises:
        ReportError: Naming the first invalid option.
    """
    if config.finding is not None and not str(config.finding).strip():
        raise ReportError("--finding must not be empty")
    if config.negatives not in NEGATIVE_POLICIES:
        raise ReportError(
            f"--negatives must be one of {', '.join(NEGATIVE_POLICIES)}, not {config.negatives!r}"
        )
    if config.split is not None and config.split not in SPLITS:
        raise ReportError(f"--split must be one of {', '.join(SPLITS)}, not {config.split!r}")
    if config.threshold is not None and (
        isinstance(config.threshold, bool)
        or not isinstance(config.threshold, numbers.Real)
        or not 0.0 <= config.threshold <= 1.0
    ):
        raise ReportError(f"--threshold must be a number in [0, 1], not {config.threshold!r}")
    for name in ("bootstrap", "seed"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ReportError(f"--{name} must be a non-negative integer, not {value!r}")
    if config.model_id is not None and not str(config.model_id).strip():
        raise ReportError("--model-id must not be empty")
    if config.model is not None and not str(config.model).strip():
        raise ReportError("--model must not be empty")
    for name in ("predictions", "labels", "out"):
        if not str(getattr(config, name)).strip():
            raise ReportError(f"--{name} is required")


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Split:
    """Which images a split keeps.

    Attributes:
        name: One of :data:`SPLITS`.
        ids: The image ids the split is defined by; ``None`` keeps every image.
        listed_inside: ``True``: the split is the listed images (an NIH list); ``False``: it is
            every image except the listed ones (``unseen``: all but the model's train and val).
    """

    name: str
    ids: frozenset[str] | None = None
    listed_inside: bool = True

    def inside(self, image_ids: pd.Series) -> pd.Series:
        """A boolean mask of the images in the split."""
        if self.ids is None:
            return pd.Series(True, index=image_ids.index)
        listed = image_ids.isin(self.ids)
        return listed if self.listed_inside else ~listed


@dataclass(frozen=True)
class _Inputs:
    """Everything read and checked before the report does any work.

    Attributes:
        findings: The findings the labels were loaded for, i.e. the ones that can be reported.
    """

    files: tuple[Path, ...]
    predictions: pd.DataFrame
    labels: pd.DataFrame
    split: _Split
    skipped_models: dict[str, str]
    findings: tuple[str, ...]
    model_card: dict | None = None


def _requested_findings(finding: str | None) -> tuple[str, ...] | None:
    """The ``--finding`` value as names; ``None`` = every finding the models scored.

    A lone name is kept as written so that a generic ``image,label`` CSV can name its finding
    freely (an NIH file then refuses an unknown name, listing the valid ones).
    """
    if finding is None:
        return None
    text = str(finding).strip()
    if "," not in text and text != ALL:
        return (text,)
    try:
        return parse_findings(text)
    except LabelError as exc:
        raise ReportError(str(exc)) from exc


def _findings_in_order(names, card: Mapping | None = None) -> list[str]:
    """Findings ordered as the card's outputs, else as :data:`NIH_FINDINGS`, others after."""
    listed = [str(name) for name in (card or {}).get("findings") or () if isinstance(name, str)]
    rank = {name: k for k, name in enumerate(listed or NIH_FINDINGS)}
    return sorted(set(names), key=lambda name: (rank.get(name, len(rank)), name))


def _label_findings(
    config: ReportConfig, requested: tuple[str, ...] | None, scored: Sequence[str]
) -> tuple[str, ...]:
    """The findings to load labels for: those asked for, else those scored that have labels."""
    try:
        available = labelled_findings(config.labels)
    except LabelError as exc:
        raise ReportError(f"--labels: {exc}") from exc
    if requested is not None:
        return requested
    if available is None:  # one `label` column: the finding is Mass unless --finding says
        return (DEFAULT_FINDING,)
    found = tuple(name for name in scored if name in available)
    return found or (DEFAULT_FINDING,)


def _keep_findings(
    frame: pd.DataFrame, findings: tuple[str, ...], finding_option: str | None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Keep the rows of the reported findings; models with none of them are skipped."""
    scored = frame.groupby("model_id")["finding"].unique()
    wanted = set(findings)
    skipped = {
        mid: ", ".join(_findings_in_order(names))
        for mid, names in scored.items()
        if not wanted.intersection(names)
    }
    if skipped and len(skipped) == len(scored):
        everything = sorted({str(name) for names in scored for name in names})
        option = "(default: every finding scored)" if finding_option is None else finding_option
        raise ReportError(
            f"--finding {option!r}: the predictions are for {everything}, the labels for "
            f"{list(findings)}; pass the finding the models were trained for"
        )
    for mid, other in skipped.items():
        log.warning("skipping model %s: it scores %r, not %r", mid, other, ", ".join(findings))
    return frame[frame["finding"].isin(wanted)], skipped


def _prediction_files(folder: Path) -> tuple[Path, ...]:
    if not folder.exists():
        raise ReportError(f"--predictions: no such folder: {folder}")
    if not folder.is_dir():
        raise ReportError(f"--predictions must be a folder of Parquet files, not a file: {folder}")
    files = tuple(
        sorted(
            path
            for path in folder.glob("*.parquet")
            if path.is_file() and not path.name.startswith((".", "_"))
        )
    )
    if not files:
        raise ReportError(f"--predictions: no *.parquet files in {folder}")
    return files


def _read_predictions(files: Sequence[Path]) -> pd.DataFrame:
    """Read and concatenate prediction files, checking each one's columns first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = []
    for path in files:
        try:
            names = pq.read_schema(path).names
        except (OSError, pa.ArrowException) as exc:
            raise ReportError(f"{path}: not a readable Parquet file ({exc})") from exc
        missing = [name for name in REQUIRED_COLUMNS if name not in names]
        if missing:
            raise ReportError(f"{path}: missing prediction column(s) {missing}; found {names}")
        wanted = [name for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if name in names]
        try:
            frames.append(pq.read_table(path, columns=wanted).to_pandas())
        except (OSError, pa.ArrowException) as exc:
            raise ReportError(f"{path}: cannot read predictions ({exc})") from exc
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for name in OPTIONAL_COLUMNS:
        if name not in frame:
            frame[name] = None
    frame["image_id"] = frame["image_id"].astype(object)
    frame["model_id"] = frame["model_id"].astype(object).where(frame["model_id"].notna(), "unknown")
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype(np.float64)
    frame["threshold"] = pd.to_numeric(frame["threshold"], errors="coerce").astype(np.float64)
    frame["scored_at"] = pd.to_datetime(frame["scored_at"], utc=True, errors="coerce")
    return frame


def _select_model(frame: pd.DataFrame, wanted: str) -> pd.DataFrame:
    ids = sorted(frame["model_id"].unique())
    matches = [mid for mid in ids if mid == wanted]
    matches = matches or [mid for mid in ids if mid.startswith(wanted)]
    if len(matches) != 1:
        problem = "matches several models" if matches else "matches no model"
        raise ReportError(f"--model-id {wanted!r} {problem}; models in the predictions: {ids}")
    return frame[frame["model_id"] == matches[0]]


def _read_model_dir(model: Path) -> tuple[dict, frozenset[str] | None]:
    """The card of ``--model`` and the image ids it trained or validated on (``split.csv``)."""
    from medai.artifact import SPLIT_FILE, ModelDirError, read_card

    try:
        card = read_card(model)
    except (ModelDirError, OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"--model: {exc}") from exc
    path = model / SPLIT_FILE
    if not path.is_file():
        return card, None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["image_id", "split"])
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"--model: cannot read {path}: {exc}") from exc
    seen = table.loc[table["split"].isin(["train", "val"]), "image_id"]
    return card, frozenset(seen)


def _resolve_split(config: ReportConfig, seen: frozenset[str] | None, model_note: str) -> _Split:
    """The split to evaluate; ``seen`` holds the --model's train and val image ids, if known."""
    train_val_path, test_path = find_split_lists(config.labels)
    split = config.split or ("test" if test_path is not None else "unseen")
    if split == "all":
        return _Split("all")
    if split == "unseen":
        if seen is None:
            where = "" if config.split else f"no NIH test_list.txt is beside {config.labels}, so "
            raise ReportError(
                f"--split unseen: {where}the report cannot tell which images the model never "
                f"saw: {model_note}. Pass --model MODEL_DIR (the model directory from medai "
                "train; its split.csv lists the images it trained and validated on), or "
                "--split all to evaluate every labelled image, training images included "
                "(optimistic metrics)"
            )
        return _Split("unseen", seen, listed_inside=False)
    path = test_path if split == "test" else train_val_path
    if path is None:
        expected = "test_list.txt" if split == "test" else "train_val_list.txt"
        raise ReportError(
            f"--split {split}: no {expected} beside {config.labels}; use --split unseen with "
            "--model, or --split all"
        )
    try:
        return _Split(split, frozenset(read_split_list(path)))
    except (LabelError, OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"--split {split}: cannot read {path}: {exc}") from exc


def _only_model_of_dir(predictions: pd.DataFrame, card: dict, config: ReportConfig):
    """Keep the rows of the ``--model`` directory's model; its id must be in the predictions."""
    model_id = str(card["model_id"])
    if config.model_id is not None and not model_id.startswith(str(config.model_id)):
        raise ReportError(
            f"--model-id {config.model_id!r} does not match --model {config.model} "
            f"(model {model_id[:12]})"
        )
    ids = sorted(predictions["model_id"].unique())
    if model_id not in ids:
        raise ReportError(
            f"--model {config.model} is model {model_id[:12]}, which is not in the predictions "
            f"(models: {[mid[:12] for mid in ids]}); pass the model directory that scored them"
        )
    return predictions[predictions["model_id"] == model_id]


def _prepare(config: ReportConfig) -> _Inputs:
    """Read and check every input; raises :class:`ReportError` before any output exists."""
    check_config(config)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out must be a folder, but {out} is a file")
    files = _prediction_files(Path(config.predictions))
    requested = _requested_findings(config.finding)
    card, seen = None, None
    if config.model is not None:
        card, seen = _read_model_dir(Path(config.model))
        model_note = f"{Path(config.model) / 'split.csv'} does not exist"
    else:
        model_note = "no --model given"
    predictions = _read_predictions(files)
    # Rows written before the finding column existed are for the finding asked for.
    default = requested[0] if requested else DEFAULT_FINDING
    predictions["finding"] = predictions["finding"].where(predictions["finding"].notna(), default)
    scored = _findings_in_order(predictions["finding"].unique(), card)
    findings = _label_findings(config, requested, scored)
    try:
        labels = load_labels(config.labels, findings, config.negatives)
    except LabelError as exc:
        raise ReportError(f"--labels: {exc}") from exc
    split = _resolve_split(config, seen, model_note)
    if card is not None:
        predictions = _only_model_of_dir(predictions, card, config)
    elif config.model_id is not None:
        predictions = _select_model(predictions, str(config.model_id))
    skipped: dict[str, str] = {}
    if not predictions.empty:
        predictions, skipped = _keep_findings(predictions, findings, config.finding)
    return _Inputs(files, predictions, labels, split, skipped, findings, card)


def _resolved_config(config: ReportConfig, inputs: _Inputs) -> dict:
    resolved = asdict(config)
    for name in ("predictions", "labels", "out"):
        resolved[name] = str(Path(resolved[name]).resolve())
    resolved["model"] = None if config.model is None else str(Path(config.model).resolve())
    resolved["split"] = inputs.split.name
    resolved["split_requested"] = config.split
    resolved["prediction_files"] = [path.name for path in inputs.files]
    return resolved


# ----------------------------------------------------------------------------- per model


@dataclass
class _Finding:
    """One finding's evaluated rows of one model, and the bookkeeping of the rows left out.

    Attributes:
        rows: ``image_id``, ``source``, ``score`` and ``label`` (0/1), sorted by image id so
            that the bootstrap sees the same order whatever the file order was.
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


@dataclass
class _Model:
    """One model: its findings (in output order), card and model-level notes."""

    model_id: str
    findings: list[_Finding]
    card: dict | None
    reasons: list[str] = field(default_factory=list)

    @property
    def single(self) -> bool:
        """One finding reported: the section keeps the single-finding layout."""
        return len(self.findings) == 1


_COUNT_KEYS = ("n_rows", "n_duplicates", "n_outside_split", "n_errors", "n_unlabeled", "n")


def _account_rows(
    rows: pd.DataFrame, labels: pd.DataFrame, split: _Split, findings: Sequence[str]
) -> list[_Finding]:
    """Deduplicate, filter by split, drop errors and unlabeled rows, counting each step.

    All findings of a model go through each step together (one pass over the rows, counts
    by ``bincount`` on the finding's index), so the cost does not grow with a copy per finding.
    """
    k = len(findings)
    names = pd.Index(findings)

    def per_finding(codes: np.ndarray) -> np.ndarray:
        return np.bincount(codes, minlength=k)

    code = names.get_indexer(rows["finding"])
    counts = {"n_rows": per_finding(code)}
    # A row without an image id can be neither deduplicated nor joined: it is unlabeled.
    no_id = rows["image_id"].isna().to_numpy()
    without_id = per_finding(code[no_id])
    rows = rows[~no_id]
    # The latest scoring of an image wins; rows without a timestamp count as the oldest.
    ordered = rows.sort_values("scored_at", kind="stable", na_position="first")
    unique = ordered.drop_duplicates(["image_id", "finding"], keep="last")
    kept = per_finding(code[~no_id])
    code = names.get_indexer(unique["finding"])
    counts["n_duplicates"] = kept - per_finding(code)
    inside = split.inside(unique["image_id"]).to_numpy()
    counts["n_outside_split"] = per_finding(code[~inside])
    unique, code = unique[inside], code[inside]
    error = unique["error"]
    present = error.notna().to_numpy()
    has_error = present.copy()
    has_error[present] = error[present].astype(str).str.strip().to_numpy() != ""
    failed = has_error | ~np.isfinite(unique["score"].to_numpy(dtype=np.float64))
    counts["n_errors"] = per_finding(code[failed])
    messages = pd.DataFrame(
        {
            "code": code[failed],
            "text": error[failed].where(has_error[failed], "missing score").astype(str).str[:200],
        }
    )
    unique, code = unique[~failed], code[~failed]
    matrix = labels[label_columns(findings)].to_numpy(dtype=np.int8)
    at = pd.Index(labels["image_id"]).get_indexer(unique["image_id"])
    # -1 in the label table: not evaluated for this finding (no-finding negatives).
    y = np.where(at >= 0, matrix[np.maximum(at, 0), code], -1) if len(at) else np.zeros(0)
    labelled = y >= 0
    counts["n_unlabeled"] = per_finding(code[~labelled]) + without_id
    evaluated, code, y = unique[labelled], code[labelled], y[labelled].astype(np.int8)
    # One sort for every finding: by finding, then image id.
    rank = pd.factorize(evaluated["image_id"], sort=True)[0]
    order = np.lexsort((rank, code))
    code, y = code[order], y[order]
    bounds = np.searchsorted(code, np.arange(k + 1))
    image_ids = evaluated["image_id"].to_numpy()[order]
    sources = evaluated["source"].to_numpy()[order]
    scores = evaluated["score"].to_numpy(dtype=np.float64)[order]
    counts["n"] = np.diff(bounds)
    counts["n_positive"] = per_finding(code[y == 1])
    counts["n_negative"] = counts["n"] - counts["n_positive"]
    out = []
    for index, name in enumerate(findings):
        part = slice(bounds[index], bounds[index + 1])
        table = pd.DataFrame(
            {
                "image_id": image_ids[part],
                "source": sources[part],
                "score": scores[part],
                "label": y[part],
            }
        )
        texts = messages.loc[messages["code"] == index, "text"].value_counts().head(5)
        out.append(
            _Finding(
                name,
                table,
                {key: int(values[index]) for key, values in counts.items()},
                {str(text): int(count) for text, count in texts.items()},
            )
        )
    return out


def _load_card(folder: Path, model_id: str) -> tuple[dict | None, list[str]]:
    # The model id names a file: refuse anything that could leave the model_cards folder.
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", model_id) or model_id.startswith("."):
        return None, []
    path = folder / "_model_cards" / f"{model_id}.json"
    if not path.is_file():
        return None, []
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable model card %s: %s", path, exc)
        return None, [f"model card {path.name} is unreadable ({exc}); card details omitted"]
    if not isinstance(card, dict):
        return None, [f"model card {path.name} is not a JSON object; card details omitted"]
    return card, []


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _card_threshold(card: dict | None, finding: str) -> float | None:
    """The card's threshold for ``finding``: ``per_finding`` for a multi-finding card."""
    if not card:
        return None
    per_finding = card.get("per_finding")
    if isinstance(per_finding, dict) and isinstance(per_finding.get(finding), dict):
        return _number(per_finding[finding].get("threshold"))
    if isinstance(card.get("findings"), list) and len(card["findings"]) > 1:
        return None  # a multi-finding card without this finding's entry
    return _number(card.get("threshold"))


def _finding_threshold(
    config: ReportConfig, values: pd.Series, card: dict | None, finding: str
) -> tuple[float | None, str, list[str]]:
    """A finding's own cut-off: ``--threshold``, else the card's, else the predictions'.

    ``values`` counts the finding's prediction rows per stored threshold. The card's value is
    used exactly as trained (never a rounded decimal); compared in float32
    (:func:`medai.thresholds.is_positive`) it splits the scores exactly as Parquet's
    ``predicted`` column, which was computed from the same value.
    """
    if config.threshold is not None:
        return float(config.threshold), "--threshold", []
    card_value = _card_threshold(card, finding)
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


def _collect_models(config: ReportConfig, inputs: _Inputs) -> list[_Model]:
    models = []
    for model_id, rows in inputs.predictions.groupby("model_id", sort=True):
        card, reasons = _load_card(Path(config.predictions), str(model_id))
        if card is None and inputs.model_card is not None:
            card = inputs.model_card  # the --model directory's own card
        names = _findings_in_order(rows["finding"].unique(), card)
        findings = _account_rows(rows, inputs.labels, inputs.split, names)
        stored = _stored_thresholds(rows)
        for finding in findings:
            values = stored.get(finding.name, pd.Series(dtype=np.int64))
            threshold, source, why = _finding_threshold(config, values, card, finding.name)
            finding.threshold, finding.threshold_source = threshold, source
            finding.reasons += why
        counts = {key: sum(f.counts[key] for f in findings) for key in _COUNT_KEYS}
        if counts["n_outside_split"] == counts["n_rows"] - counts["n_duplicates"] > 0:
            reasons.append(f"all rows are outside the {inputs.split.name} split")
        models.append(_Model(str(model_id), findings, card, reasons))
    return models


def _card_summary(card: dict | None) -> dict | None:
    if card is None:
        return None
    keys = (
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
    return {key: card[key] for key in keys if key in card}


def _ranking_metrics(finding: _Finding, config: ReportConfig) -> tuple[dict, list[str]]:
    y, scores = finding.y, finding.scores
    reasons = []
    why = metrics.class_reason(y)
    result = {
        "auc": metrics.roc_auc(y, scores),
        "auc_ci95": metrics.auc_ci(y, scores, config.bootstrap, config.seed),
        "average_precision": metrics.average_precision(y, scores),
        "brier": metrics.brier_score(y, scores),
        "ece": metrics.expected_calibration_error(y, scores, n_bins=ECE_BINS),
    }
    if why:
        reasons.append(f"auc undefined: {why}")
        reasons.append(f"auc_ci95 undefined: {why}")
    elif config.bootstrap == 0:
        reasons.append("auc_ci95 undefined: bootstrap disabled (--bootstrap 0)")
    if result["average_precision"] is None:
        reasons.append("average_precision undefined: no positive images")
    for key in ("brier", "ece"):
        if y.size and (scores.min() < 0 or scores.max() > 1):
            result[key] = None
            reasons.append(f"{key} undefined: scores outside [0, 1] are not probabilities")
        elif result[key] is None:
            reasons.append(f"{key} undefined: no labelled predictions")
    return result, reasons


def _operating_points(finding: _Finding) -> tuple[dict, list[str]]:
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


def _finding_entry(finding: _Finding, config: ReportConfig) -> dict:
    """Every metric of one finding (the single-finding section's keys, less the model's)."""
    ranking, ranking_reasons = _ranking_metrics(finding, config)
    points, point_reasons = _operating_points(finding)
    return {
        "finding": finding.name,
        **finding.counts,
        **ranking,
        "operating_points": points,
        "error_messages": finding.error_messages,
        "reasons": finding.reasons + ranking_reasons + point_reasons,
    }


def _summary_row(entry: Mapping) -> dict:
    """One row of the CheXNet-style table: counts, AUC with CI, the operating point."""
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
    }


def _model_section(model: _Model, config: ReportConfig) -> dict:
    """The model's metrics.json section.

    Every section has ``findings`` (one entry of :func:`_finding_entry` per finding) and
    ``summary`` (one :func:`_summary_row` per finding). A single-finding section also keeps
    the keys it always had, the finding's entry spread at the top level.
    """
    entries = {f.name: _finding_entry(f, config) for f in model.findings}
    summary = [_summary_row(entry) for entry in entries.values()]
    card = _card_summary(model.card)
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
        **{key: sum(entry[key] for entry in entries.values()) for key in _COUNT_KEYS},
        "mean_auc": float(np.mean(aucs)) if aucs else None,
        "error_messages": top,
        "model_card": card,
        "reasons": list(model.reasons),
        "findings": entries,
        "summary": summary,
    }


# ----------------------------------------------------------------------------- comparisons


def _compare(first: _Finding, second: _Finding, config: ReportConfig) -> tuple[dict, pd.DataFrame]:
    shared = first.rows[["image_id", "label", "score"]].merge(
        second.rows[["image_id", "score"]], on="image_id", suffixes=("_a", "_b")
    )
    y = shared["label"].to_numpy(dtype=np.int8)
    result, reasons = metrics.paired_auc_difference(
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


def _comparisons(models: Sequence[_Model], config: ReportConfig):
    """Each pair of models on each finding both report, on the images both scored."""
    for first, second in itertools.combinations(models, 2):
        theirs = {f.name: f for f in second.findings}
        for finding in first.findings:
            if finding.name in theirs:
                section, shared = _compare(finding, theirs[finding.name], config)
                section = {"model_a": first.model_id, "model_b": second.model_id, **section}
                yield first, second, section, shared


# ----------------------------------------------------------------------------- plots


def _slug(index: int, model_id: str) -> str:
    return f"{index + 1:02d}_{re.sub(r'[^A-Za-z0-9]', '', model_id)[:12] or 'model'}"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ----------------------------------------------------------------------------- plots


def _auc_label(name: str, section: Mapping) -> str:
    text = f"{name} (n={section['n']:,}, AUC={_fmt(section['auc'])}"
    if section.get("auc_ci95"):
        low, high = section["auc_ci95"]
        text += f" [{low:.3f}, {high:.3f}]"
    return text + ")"


def _finding_curves(model: _Model, section: Mapping) -> list[tuple[str, metrics.Curve | None]]:
    """The ``(legend, curve)`` pairs of the model's ROC figure: one per finding."""
    curves = []
    for finding in model.findings:
        entry = section["findings"][finding.name]
        label = (
            f"{finding.name} (pos={entry['n_positive']:,}/{entry['n']:,}, AUC={_fmt(entry['auc'])})"
        )
        curves.append((label, metrics.roc_curve(finding.y, finding.scores)))
    return curves


def _findings_roc_arguments(model: _Model, section: Mapping) -> tuple:
    """Arguments of :func:`medai.plots.roc_plot` for the model's ROC with a curve per finding."""
    return (
        f"ROC curves per finding - model {model.model_id[:12]}",
        _finding_curves(model, section),
        (),
        "ROC undefined for every finding",
    )


def _operating_marks(points: Mapping) -> tuple[list, dict, list]:
    """ROC marks, histogram cut-offs and confusion panels of the two operating points."""
    from medai import plots

    names = {"model_threshold": "model threshold", "youden": "Youden threshold"}
    marks, cut_offs, confusion_panels = [], {}, []
    for key, name in names.items():
        point = points[key]
        cut_offs[name] = point["threshold"]
        if point["threshold"] is None:
            confusion_panels.append((f"No {name}", None))
            continue
        confusion_panels.append(
            (f"At {name} {point['threshold']:.3f}", {k: point[k] for k in ("tp", "fp", "tn", "fn")})
        )
        if point["sensitivity"] is not None and point["specificity"] is not None:
            marks.append(
                plots.OperatingPoint(
                    f"{name} {point['threshold']:.3f}",
                    1 - point["specificity"],
                    point["sensitivity"],
                )
            )
    return marks, cut_offs, confusion_panels


def _finding_plots(
    model: _Model, finding: _Finding, entry: dict, examples: bytes, with_roc: bool
) -> dict[str, bytes]:
    """The per-finding figures: ROC (single-finding layout only), histogram, confusion,
    calibration and the example grid drawn beforehand."""
    from medai import plots

    y, scores = finding.y, finding.scores
    short = model.model_id[:12]
    what = f"model {short}" if model.single else f"{finding.name} - model {short}"
    marks, cut_offs, confusion_panels = _operating_marks(entry["operating_points"])
    figures = {}
    if with_roc:
        figures["roc"] = plots.roc_plot(
            f"ROC curve - {what}",
            [(_auc_label(short, entry), metrics.roc_curve(y, scores))],
            marks,
            empty_reason=f"ROC undefined: {metrics.class_reason(y)}",
        )
    brier, ece = _fmt(entry["brier"]), _fmt(entry["ece"])
    figures["histogram"] = plots.score_histogram(
        f"Score distribution - {what}", y, scores, cut_offs
    )
    figures["confusion"] = plots.confusion_plot(f"Confusion matrices - {what}", confusion_panels)
    figures["calibration"] = plots.calibration_plot(
        f"Calibration - {what}",
        metrics.calibration_bins(y, scores),
        f"{short} (n={len(y):,}, Brier={brier}, ECE={ece})",
    )
    figures["examples"] = examples
    return figures


def _model_plots(model: _Model, section: dict) -> dict[str, bytes]:
    """Model-level figures: the ROC with a curve per finding (several findings), training."""
    from medai import plots

    figures = {}
    if not model.single:
        figures["roc"] = plots.roc_plot(*_findings_roc_arguments(model, section))
    history = (model.card or {}).get("history")
    if isinstance(history, list) and any(isinstance(row, dict) for row in history):
        rows = [row for row in history if isinstance(row, dict)]
        figures["training"] = plots.training_plot(
            f"Training history - model {model.model_id[:12]}", rows
        )
    return figures


_EXAMPLE_GROUPS = {
    "true_positives": "True positives\n(highest scores)",
    "false_positives": "False positives\n(highest scores)",
    "missed_positives": "Missed positives\n(lowest scores)",
}


def _example_cut_off(entry: Mapping) -> tuple[float | None, str]:
    points = entry["operating_points"]
    if points["model_threshold"]["threshold"] is not None:
        return points["model_threshold"]["threshold"], "model threshold"
    return points["youden"]["threshold"], "Youden threshold"


def _example_rows(finding: _Finding, cut_off: float) -> dict[str, pd.DataFrame]:
    """The images to show per group of :data:`_EXAMPLE_GROUPS` at a cut-off.

    Missed positives are the lowest-scoring ones: the model's most confident misses.
    """
    rows = finding.rows
    called = is_positive(rows["score"].to_numpy(), cut_off)
    positive = (rows["label"] == 1).to_numpy()
    top = EXAMPLES_PER_GROUP
    return {
        "true_positives": rows[called & positive].nlargest(top, "score"),
        "false_positives": rows[called & ~positive].nlargest(top, "score"),
        "missed_positives": rows[~called & positive].nsmallest(top, "score"),
    }


def _examples_figure(
    model: _Model,
    finding: _Finding,
    entry: dict,
    groups: Mapping[str, pd.DataFrame] | None,
    thumbnails: Mapping[str, tuple[np.ndarray | None, str]],
) -> bytes:
    """Draw the example grid and record the chosen images in ``entry["examples"]``."""
    from medai import plots

    cut_off, name = _example_cut_off(entry)
    title = f"Example images - model {model.model_id[:12]}"
    if not model.single:
        title = f"Example images - {finding.name} - model {model.model_id[:12]}"
    if groups is None:
        entry["examples"] = None
        return plots.message_plot(title, "no examples: no labelled predictions with a threshold")
    grid, listed, unreadable = {}, {}, 0
    for group, frame in groups.items():
        examples = []
        shown = frame[["image_id", "source", "score"]].itertuples(index=False)
        for image_id, source, score in shown:
            pixels, problem = thumbnails.get(source, (None, "no source recorded"))
            unreadable += pixels is None
            examples.append(plots.Example(f"{image_id}\nscore {score:.3f}", pixels, problem))
        grid[_EXAMPLE_GROUPS[group]] = examples
        listed[group] = frame["image_id"].tolist()
    entry["examples"] = {"cut_off": cut_off, "images": listed, "unreadable": unreadable}
    return plots.examples_plot(f"{title} at {name} {cut_off:.3f}", grid)


def _all_examples(models: Sequence[_Model], sections: Mapping[str, dict]):
    """Choose every finding's examples, then decode all their images in one go.

    Reading once for every model and finding means an archive is streamed once per report,
    however many findings show one of its members.
    """
    chosen: dict[tuple[str, str], dict[str, pd.DataFrame] | None] = {}
    for model in models:
        for finding in model.findings:
            cut_off, _ = _example_cut_off(sections[model.model_id]["findings"][finding.name])
            empty = cut_off is None or finding.rows.empty
            chosen[model.model_id, finding.name] = (
                None if empty else _example_rows(finding, cut_off)
            )
    sources = [
        source
        for groups in chosen.values()
        if groups is not None
        for frame in groups.values()
        for source in frame["source"].tolist()
        if isinstance(source, str)
    ]
    return chosen, _load_thumbnails(sources)


def _load_thumbnails(sources: Sequence[str]) -> dict[str, tuple[np.ndarray | None, str]]:
    """Decode the example images; a failure becomes a message, never an exception."""
    from medai.images import (
        ARCHIVE_SEP,
        ImageError,
        decode_image,
        image_id_of,
        iter_archive,
        read_bytes,
    )

    payloads: dict[str, bytes | str] = {}
    members: dict[str, set[str]] = {}
    for source in dict.fromkeys(sources):
        if ARCHIVE_SEP in source:
            archive, member = source.split(ARCHIVE_SEP, 1)
            members.setdefault(archive, set()).add(member)
            continue
        try:
            payloads[source] = read_bytes(source)
        except (ImageError, OSError, ValueError) as exc:
            payloads[source] = str(exc)
    # One streaming pass per archive however many of its members are shown.
    for archive, wanted in members.items():
        found: dict[str, bytes] = {}
        try:
            for name, data in iter_archive(archive, wanted=wanted):
                found[name] = found[image_id_of(name)] = data
                if all(m in found or image_id_of(m) in found for m in wanted):
                    break
        except (ImageError, OSError, ValueError, tarfile.TarError, EOFError) as exc:
            log.warning("cannot read example images from %s: %s", archive, exc)
        for member in wanted:
            data = found.get(member, found.get(image_id_of(member)))
            payloads[f"{archive}{ARCHIVE_SEP}{member}"] = (
                data if data is not None else f"{member} not found in {archive}"
            )
    thumbnails = {}
    for source, data in payloads.items():
        if isinstance(data, str):
            thumbnails[source] = (None, data)
            continue
        try:
            thumbnails[source] = (decode_image(data, THUMBNAIL_SIZE)[:, :, 0], "")
        except ImageError as exc:
            thumbnails[source] = (None, str(exc))
    return thumbnails


def _comparison_plot(section: Mapping, shared: pd.DataFrame) -> bytes:
    from medai import plots

    y = shared["label"].to_numpy(dtype=np.int8)
    curves = []
    for side in ("a", "b"):
        name = section[f"model_{side}"][:12]
        scores = shared[f"score_{side}"].to_numpy()
        label = f"{name} (n={len(y):,}, AUC={_fmt(section[f'auc_{side}'])})"
        curves.append((label, metrics.roc_curve(y, scores)))
    why = metrics.class_reason(y)
    return plots.roc_plot(
        f"ROC on shared images ({section['finding']}) - {section['model_a'][:12]} vs "
        f"{section['model_b'][:12]}",
        curves,
        empty_reason=f"ROC undefined: {why}",
    )


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{border-bottom:2px solid #333;padding-bottom:.2em}
h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.6em 0 1.2em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{background:#fff3cd;border:1px solid #e0c36a;padding:.7em 1em;font-weight:600}
.notes li{color:#7a4b00}
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}
code{font-size:.9em;word-break:break-all}
"""


def _e(value) -> str:
    return html.escape(_fmt(value), quote=True)


def _cell(value) -> str:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return f'<td class="num">{_e(value)}</td>' if numeric else f"<td>{_e(value)}</td>"


def _table(rows: Sequence[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{html.escape(name)}</th>{_cell(value)}</tr>" for name, value in rows)
    return f"<table>{body}</table>"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_html(png: bytes, caption: str) -> str:
    text = html.escape(caption, quote=True)
    return (
        f'<figure><img src="{_data_uri(png)}" alt="{text}"><figcaption>{text}</figcaption></figure>'
    )


def _ci(section: Mapping, key: str) -> str:
    interval = section.get(key)
    return "n/a" if not interval else f"{interval[0]:.3f} - {interval[1]:.3f}"


def _card_html(card: Mapping | None) -> str:
    if not card:
        return "<p>No model card found beside the predictions.</p>"
    rows = [
        (key, card[key])
        for key in (
            "finding",
            "threshold",
            "threshold_sensitivity_90",
            "val_auc",
            "head",
            "image_size",
            "weights",
        )
        if key in card and not isinstance(card[key], (dict, list))
    ]
    if isinstance(card.get("findings"), list):
        rows.insert(0, ("findings", ", ".join(map(str, card["findings"]))))
    parts = ["<h4>Model card</h4>", _table(rows), _per_finding_card_html(card.get("per_finding"))]
    counts = card.get("counts")
    if isinstance(counts, dict) and counts:
        header = "<tr><th>split</th><th>images</th><th>patients</th><th>positives</th></tr>"
        body = "".join(
            f"<tr><td>{html.escape(str(split))}</td>"
            + "".join(
                f'<td class="num">{_e(values.get(k))}</td>'
                for k in ("images", "patients", "positives")
            )
            + "</tr>"
            for split, values in counts.items()
            if isinstance(values, dict)
        )
        parts.append(f"<h4>Training data</h4><table>{header}{body}</table>")
    if card.get("intended_use"):
        use = html.escape(str(card["intended_use"]))
        parts.append(f"<p><b>Intended use (model card):</b> {use}</p>")
    return "".join(parts)


def _per_finding_card_html(per_finding) -> str:
    """The card's per-finding thresholds and validation AUCs (a multi-finding card)."""
    if not isinstance(per_finding, dict) or not per_finding:
        return ""
    keys = ("threshold", "threshold_sensitivity_90", "val_auc")
    header = "<tr><th>finding</th>" + "".join(f"<th>{key}</th>" for key in keys) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(str(name))}</td>"
        + "".join(
            _cell(values.get(key)) if not isinstance(values.get(key), (dict, list)) else "<td></td>"
            for key in keys
        )
        + "</tr>"
        for name, values in per_finding.items()
        if isinstance(values, dict)
    )
    return f"<table>{header}{body}</table>"


def _points_html(points: Mapping) -> str:
    keys = metrics.THRESHOLD_KEYS
    header = (
        "<tr><th></th><th>model threshold "
        f"({html.escape(str(points['model_threshold'].get('source')))})</th>"
        "<th>Youden-optimal threshold</th></tr>"
    )
    body = "".join(
        f'<tr><th>{key}</th><td class="num">{_e(points["model_threshold"][key])}</td>'
        f'<td class="num">{_e(points["youden"][key])}</td></tr>'
        for key in keys
    )
    return f"<table>{header}{body}</table>"


def _summary_html(summary: Sequence[Mapping]) -> str:
    """The CheXNet-style table: one row per finding."""
    header = (
        "<tr><th>finding</th><th>images</th><th>positives</th><th>AUC</th>"
        "<th>AUC 95% CI</th><th>threshold</th><th>sensitivity</th><th>specificity</th></tr>"
    )
    body = "".join(
        f"<tr><td>{html.escape(str(row['finding']))}</td>"
        + "".join(_cell(row[key]) for key in ("n", "n_positive", "auc"))
        + f'<td class="num">{html.escape(_ci(row, "auc_ci95"))}</td>'
        + "".join(_cell(row[key]) for key in ("threshold", "sensitivity", "specificity"))
        + "</tr>"
        for row in summary
    )
    return f'<h3>Summary</h3><table class="summary">{header}{body}</table>'


_CAPTIONS = {
    "roc": "ROC curve with the operating points",
    "histogram": "Score distributions of positives and negatives",
    "confusion": "Confusion matrices at the model and Youden thresholds",
    "calibration": "Calibration (reliability) curve",
    "training": "Training curves from the model card",
    "examples": "Example images",
}


def _counts_table(section: Mapping) -> str:
    return _table(
        [
            (name, section[key])
            for name, key in (
                ("prediction rows", "n_rows"),
                ("duplicate rows (older dropped)", "n_duplicates"),
                ("outside the split", "n_outside_split"),
                ("scoring errors", "n_errors"),
                ("without a label", "n_unlabeled"),
                ("evaluated images", "n"),
                ("positives", "n_positive"),
                ("negatives", "n_negative"),
            )
            if key in section
        ]
    )


def _errors_html(messages: Mapping[str, int]) -> str:
    if not messages:
        return ""
    items = "".join(
        f"<li>{_e(count)} x <code>{html.escape(message)}</code></li>"
        for message, count in messages.items()
    )
    return f"<h4>Most common scoring errors</h4><ul>{items}</ul>"


def _notes_html(reasons: Sequence[str]) -> str:
    if not reasons:
        return ""
    notes = "".join(f"<li>{html.escape(text)}</li>" for text in reasons)
    return f'<h4>Notes</h4><ul class="notes">{notes}</ul>'


def _metrics_html(entry: Mapping) -> str:
    ranking = [
        ("AUC", entry["auc"]),
        ("AUC 95% CI", _ci(entry, "auc_ci95")),
        ("average precision", entry["average_precision"]),
        ("Brier score", entry["brier"]),
        (f"ECE ({ECE_BINS} equal-width bins)", entry["ece"]),
    ]
    return _table(ranking) + _points_html(entry["operating_points"])


def _figures_html(figures: Mapping[str, bytes], finding: str = "") -> str:
    prefix = f"{finding}: " if finding else ""
    return "".join(
        _figure_html(png, prefix + _CAPTIONS.get(name, name)) for name, png in figures.items()
    )


def _model_html(section: Mapping, figures: Mapping[str, bytes], per_finding) -> str:
    """One model's section; ``per_finding`` maps finding -> figures (several findings only)."""
    single = not per_finding
    findings = ", ".join(section["findings"])
    parts = [
        f"<h2>Model <code>{html.escape(section['model_id'])}</code></h2>",
        _table(
            [
                ("model id", section["model_id"]),
                (
                    "findings" if not single else "finding",
                    section["finding"] if single else findings,
                ),
            ]
        ),
        _summary_html(section["summary"]),
        _card_html(section.get("model_card")),
        "<h3>Counts</h3>" if single else "<h3>Counts (prediction rows, all findings)</h3>",
        _counts_table(section),
        _errors_html(section["error_messages"]),
    ]
    if single:
        parts += ["<h3>Metrics</h3>", _metrics_html(section), _notes_html(section["reasons"])]
        parts += ["<h3>Plots</h3>", _figures_html(figures)]
        return "".join(parts)
    parts += [_notes_html(section["reasons"]), "<h3>Plots</h3>", _figures_html(figures)]
    for name, entry in section["findings"].items():
        parts += [
            f"<h3>{html.escape(name)}</h3>",
            _counts_table(entry),
            _errors_html(entry["error_messages"]),
            _metrics_html(entry),
            _notes_html(entry["reasons"]),
            _figures_html(per_finding.get(name, {}), name),
        ]
    return "".join(parts)


def _comparisons_html(comparisons: Sequence[Mapping], figures: Sequence[bytes]) -> str:
    if not comparisons:
        return ""
    header = (
        "<tr><th>model A</th><th>model B</th><th>finding</th><th>shared images</th><th>AUC A</th>"
        "<th>AUC B</th><th>AUC A - B</th><th>95% CI (paired bootstrap)</th></tr>"
    )
    body = "".join(
        f"<tr><td><code>{html.escape(c['model_a'])}</code></td>"
        f"<td><code>{html.escape(c['model_b'])}</code></td><td>{_e(c['finding'])}</td>"
        f'<td class="num">{_e(c["n"])}</td>'
        f'<td class="num">{_e(c["auc_a"])}</td><td class="num">{_e(c["auc_b"])}</td>'
        f'<td class="num">{_e(c["auc_difference"])}</td>'
        f'<td class="num">{html.escape(_ci(c, "auc_difference_ci95"))}</td></tr>'
        for c in comparisons
    )
    notes = "".join(f"<li>{html.escape(t)}</li>" for c in comparisons for t in c["reasons"])
    plots_html = "".join(
        _figure_html(png, "ROC curves on the images both models scored") for png in figures
    )
    return (
        f"<h2>Model comparison</h2><table>{header}{body}</table>"
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + plots_html
    )


def _render_html(report: Mapping, figures: Mapping, comparison_figures: Sequence[bytes]) -> str:
    """The self-contained page; ``figures[model_id]`` = (model figures, per-finding figures)."""
    config = report["config"]
    finding = html.escape(str(report["finding"]))
    summary = _table(
        [
            ("finding", report["finding"]),
            ("split", report["split"]),
            ("negatives", config["negatives"]),
            ("predictions", config["predictions"]),
            ("prediction files", len(config["prediction_files"])),
            ("prediction rows", report["n_prediction_rows"]),
            ("labels", config["labels"]),
            ("threshold override", config["threshold"]),
            ("bootstrap resamples", config["bootstrap"]),
            ("seed", config["seed"]),
            ("generated at", report["generated_at"]),
        ]
    )
    banner = f'<p class="banner">Intended use: {html.escape(INTENDED_USE)}</p>'
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>medai report - {finding}</title><style>{_CSS}</style></head><body>",
        f"<h1>medai report: {finding}</h1>",
        banner,
        "<h2>Data</h2>",
        summary,
    ]
    if report["reasons"]:
        notes = "".join(f"<li>{html.escape(text)}</li>" for text in report["reasons"])
        parts.append(f'<ul class="notes">{notes}</ul>')
    for model_id, section in report["models"].items():
        parts.append(_model_html(section, *figures[model_id]))
    parts.append(_comparisons_html(report["comparisons"], comparison_figures))
    parts += [banner, "</body></html>"]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- driver


def _json_safe(value):
    """Convert to strict JSON types: NumPy scalars to Python, NaN and infinities to null."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _write_json(path: Path, payload) -> None:
    path.write_text(
        json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )


def _write_png(folder: Path, name: str, png: bytes) -> str:
    (folder / name).write_bytes(png)
    return f"plots/{name}"


def run_report(config: ReportConfig) -> dict:
    """Evaluate the predictions and write ``metrics.json``, ``config.json``, plots and HTML.

    Args:
        config: The report options.

    Returns:
        The dict written to ``OUT/metrics.json``: run details, ``models`` (one section per
        model id, see :func:`_model_section`), ``comparisons`` (one per pair of models and
        shared finding) and ``reasons``.

    Raises:
        ReportError: On invalid options or unusable inputs, before anything is written.
    """
    started = time.perf_counter()
    inputs = _prepare(config)
    out = Path(config.out)
    resolved = _resolved_config(config, inputs)
    log.info("report config: %s", json.dumps(resolved, sort_keys=True))
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", resolved)

    models = _collect_models(config, inputs)
    # In the models' output order (the first model's first).
    reported = list(dict.fromkeys(f.name for m in models for f in m.findings))
    reported = reported or list(inputs.findings)
    report: dict = {
        "finding": ",".join(reported),
        "findings": reported,
        "split": inputs.split.name,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_prediction_rows": int(len(inputs.predictions)),
        "config": resolved,
        "models": {},
        "comparisons": [],
        "skipped_models": inputs.skipped_models,
        "reasons": [],
    }
    if not models:
        report["reasons"].append("the prediction files hold no rows")
    for model_id, finding in inputs.skipped_models.items():
        report["reasons"].append(f"model {model_id} skipped: it scores {finding!r}")
    sections = {model.model_id: _model_section(model, config) for model in models}
    for model in models:
        for row in sections[model.model_id]["summary"]:
            log.info(
                "model %s %s: n=%d (%d positive), AUC %s",
                model.model_id,
                row["finding"],
                row["n"],
                row["n_positive"],
                _fmt(row["auc"]),
            )
    chosen, thumbnails = _all_examples(models, sections)
    figures: dict[str, tuple[dict[str, bytes], dict[str, dict[str, bytes]]]] = {}
    for index, model in enumerate(models):
        section = sections[model.model_id]
        slug = _slug(index, model.model_id)
        model_figures, per_finding = _model_plots(model, section), {}
        for finding in model.findings:
            entry = section["findings"][finding.name]
            groups = chosen[model.model_id, finding.name]
            examples = _examples_figure(model, finding, entry, groups, thumbnails)
            drawn = _finding_plots(model, finding, entry, examples, with_roc=model.single)
            if model.single:
                section["examples"] = entry["examples"]
                model_figures = {**drawn, **model_figures}
                entry["plots"] = {}
                continue
            name = re.sub(r"[^A-Za-z0-9_]", "", finding.name) or "finding"
            entry["plots"] = {
                kind: _write_png(plots_dir, f"{slug}_{name}_{kind}.png", png)
                for kind, png in drawn.items()
            }
            per_finding[finding.name] = drawn
        section["plots"] = {
            kind: _write_png(plots_dir, f"{slug}_{kind}.png", png)
            for kind, png in model_figures.items()
        }
        if model.single:
            entry["plots"] = {k: v for k, v in section["plots"].items() if k != "training"}
        figures[model.model_id] = (model_figures, per_finding)
        report["models"][model.model_id] = section
    comparison_figures = []
    for first, second, section, shared in _comparisons(models, config):
        png = _comparison_plot(section, shared)
        suffix = "" if first.single and second.single else f"_{section['finding']}"
        name = (
            f"compare_{_slug(models.index(first), first.model_id)}"
            f"_{_slug(models.index(second), second.model_id)}{suffix}.png"
        )
        section["plot"] = _write_png(plots_dir, name, png)
        report["comparisons"].append(section)
        comparison_figures.append(png)

    report = _json_safe(report)
    _write_json(out / "metrics.json", report)
    (out / "report.html").write_text(
        _render_html(report, figures, comparison_figures), encoding="utf-8"
    )
    log.info("report written to %s in %.1f s", out, time.perf_counter() - started)
    return report
