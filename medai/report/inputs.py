"""Report inputs: read and check the prediction files, the labels, the split and ``--model``.

Everything is read and checked by :func:`prepare` before the report writes anything; every
problem is a :class:`~medai.report.config.ReportError` naming the input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medai.boxes import BoxError, read_boxes
from medai.labels import (
    ALL,
    NIH_FINDINGS,
    LabelError,
    find_split_lists,
    labelled_findings,
    load_labels,
    parse_findings,
    read_split_list,
)
from medai.paths import folder_problem
from medai.predictions import COLUMNS
from medai.report.config import DEFAULT_FINDING, ReportConfig, ReportError, check_config

__all__ = ["OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "Inputs", "Split", "prepare", "resolved_config"]

log = logging.getLogger("medai.report")

# The report's columns, from the one column spec (medai.predictions.COLUMNS): these three are
# required, the others read where a file has them (older files lack some; null then).
REQUIRED_COLUMNS = ("image_id", "score", "model_id")
OPTIONAL_COLUMNS = tuple(c.name for c in COLUMNS if c.name not in REQUIRED_COLUMNS)

# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Split:
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
class Inputs:
    """Everything read and checked before the report does any work.

    Attributes:
        findings: The findings the labels were loaded for, i.e. the ones that can be reported.
        model_card: The card of ``--model``.
        boxes: The ``--boxes`` table (:func:`medai.boxes.read_boxes`).
    """

    files: tuple[Path, ...]
    predictions: pd.DataFrame
    labels: pd.DataFrame
    split: Split
    skipped_models: dict[str, str]
    findings: tuple[str, ...]
    model_card: dict | None = None
    boxes: pd.DataFrame | None = None


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


def findings_in_order(names, card: Mapping | None = None) -> list[str]:
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
        mid: ", ".join(findings_in_order(names))
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
    """The card of ``--model`` and the image ids of its train and val splits (``split.csv``).

    Every train and val image counts as seen, the unreadable ones too: the split is by
    patient, so their patients' other images were trained or validated on.
    """
    from medai.card import ModelDirError, read_card, read_split

    try:
        card = read_card(model)
        table = read_split(model)
    except (ModelDirError, OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"--model: {exc}") from exc
    if table is None:
        return card, None
    seen = table.loc[table["split"].isin(["train", "val"]), "image_id"]
    return card, frozenset(seen)


def _resolve_split(config: ReportConfig, seen: frozenset[str] | None, model_note: str) -> Split:
    """The split to evaluate; ``seen`` holds the --model's train and val image ids, if known."""
    train_val_path, test_path = find_split_lists(config.labels)
    split = config.split or ("test" if test_path is not None else "unseen")
    if split == "all":
        return Split("all")
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
        return Split("unseen", seen, listed_inside=False)
    path = test_path if split == "test" else train_val_path
    if path is None:
        expected = "test_list.txt" if split == "test" else "train_val_list.txt"
        raise ReportError(
            f"--split {split}: no {expected} beside {config.labels}; use --split unseen with "
            "--model, or --split all"
        )
    try:
        return Split(split, frozenset(read_split_list(path)))
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


def prepare(config: ReportConfig) -> Inputs:
    """Read and check every input; raises :class:`ReportError` before any output exists."""
    check_config(config)
    if problem := folder_problem("--out", config.out):
        raise ReportError(problem)
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
    scored = findings_in_order(predictions["finding"].unique(), card)
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
    boxes = None
    if config.boxes is not None:
        try:
            boxes = read_boxes(config.boxes)
        except BoxError as exc:
            raise ReportError(str(exc)) from exc
    return Inputs(files, predictions, labels, split, skipped, findings, card, boxes)


def resolved_config(config: ReportConfig, inputs: Inputs) -> dict:
    resolved = asdict(config)
    for name in ("predictions", "labels", "out"):
        resolved[name] = str(Path(resolved[name]).resolve())
    resolved["model"] = None if config.model is None else str(Path(config.model).resolve())
    resolved["boxes"] = None if config.boxes is None else str(Path(config.boxes).resolve())
    resolved["split"] = inputs.split.name
    resolved["split_requested"] = config.split
    resolved["prediction_files"] = [path.name for path in inputs.files]
    return resolved
