"""Examples and failure analysis: which images to show and list, and their thumbnails.

Per finding, at the operating threshold (the model's, else Youden's): the highest-scoring true
and false positives and the lowest-scoring missed positives. The example grid shows a few of
each; the failure table lists more false positives and missed positives with the image's
subgroup attributes and its other labelled findings, so a reviewer sees whether errors cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medai.card import is_positive
from medai.labels import NO_FINDING
from medai.report.accounting import FindingRows, ModelRows
from medai.report.config import EXAMPLES_PER_GROUP, FAILURES_PER_KIND, THUMBNAIL_SIZE

__all__ = [
    "EXAMPLE_GROUPS",
    "Decoded",
    "choose_examples",
    "example_cut_off",
    "example_sources",
    "failure_table",
    "read_images",
    "thumbnails_of",
]

log = logging.getLogger("medai.report")

EXAMPLE_GROUPS = {
    "true_positives": "True positives\n(highest scores)",
    "false_positives": "False positives\n(highest scores)",
    "missed_positives": "Missed positives\n(lowest scores)",
}


def example_cut_off(entry: Mapping) -> tuple[float | None, str]:
    points = entry["operating_points"]
    if points["model_threshold"]["threshold"] is not None:
        return points["model_threshold"]["threshold"], "model threshold"
    return points["youden"]["threshold"], "Youden threshold"


def example_rows(finding: FindingRows, cut_off: float) -> dict[str, pd.DataFrame]:
    """The images to show per group of :data:`EXAMPLE_GROUPS` at a cut-off.

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


def choose_examples(
    models: Sequence[ModelRows], sections: Mapping[str, dict]
) -> dict[tuple[str, str], dict[str, pd.DataFrame] | None]:
    """Every finding's example rows per group, keyed by ``(model_id, finding)``.

    ``None`` where there is no threshold or no labelled row to choose from.
    """
    chosen: dict[tuple[str, str], dict[str, pd.DataFrame] | None] = {}
    for model in models:
        for finding in model.findings:
            cut_off, _ = example_cut_off(sections[model.model_id]["findings"][finding.name])
            empty = cut_off is None or finding.rows.empty
            chosen[model.model_id, finding.name] = None if empty else example_rows(finding, cut_off)
    return chosen


def example_sources(chosen: Mapping[tuple[str, str], Mapping | None]) -> list[str]:
    """The sources of every chosen example, each once."""
    sources = [
        source
        for groups in chosen.values()
        if groups is not None
        for frame in groups.values()
        for source in frame["source"].tolist()
        if isinstance(source, str)
    ]
    return list(dict.fromkeys(sources))


@dataclass(frozen=True)
class Decoded:
    """An image decoded for the report.

    Attributes:
        thumbnail: ``uint8 (T, T)`` at THUMBNAIL_SIZE, or ``None`` when not asked for.
        model_input: ``uint8 (S, S, 1)`` exactly as the scorer decodes it, or ``None``.
        original_size: ``(width, height)`` of the stored image (box coordinates refer to it).
    """

    thumbnail: np.ndarray | None
    model_input: np.ndarray | None
    original_size: tuple[int, int]


def read_images(
    sources: Sequence[str],
    thumbnails: Collection[str] = (),
    model_size: int | None = None,
) -> dict[str, tuple[Decoded | None, str]]:
    """Read and decode images for the report; a failure becomes a message, never an exception.

    Each archive is streamed once however many of its members are wanted, so thumbnails and
    model inputs come from one read.

    Args:
        sources: Image sources as the predictions record them.
        thumbnails: The sources that also get a THUMBNAIL_SIZE thumbnail.
        model_size: Also decode the model's input at this size (for Grad-CAM).

    Returns:
        Per source: ``(Decoded, "")`` or ``(None, reason)``.
    """
    from medai.images import ImageError, decode_image, image_size_of

    decoded = {}
    thumbnails = frozenset(thumbnails)
    for source, data in _payloads(sources).items():
        if isinstance(data, str):
            decoded[source] = (None, data)
            continue
        try:
            thumbnail = None
            if source in thumbnails:
                thumbnail = decode_image(data, THUMBNAIL_SIZE)[:, :, 0]
            model_input = decode_image(data, model_size) if model_size else None
            decoded[source] = (Decoded(thumbnail, model_input, image_size_of(data)), "")
        except ImageError as exc:
            decoded[source] = (None, str(exc))
    return decoded


def thumbnails_of(
    decoded: Mapping[str, tuple[Decoded | None, str]],
) -> dict[str, tuple[np.ndarray | None, str]]:
    """Per source, its thumbnail or the reason there is none."""
    return {
        source: (image.thumbnail, "") if image is not None else (None, problem)
        for source, (image, problem) in decoded.items()
    }


def _payloads(sources: Sequence[str]) -> dict[str, bytes | str]:
    """Per source, its bytes or why they could not be read.

    Read as every job reads (:func:`medai.datasets.read_records`): one streaming pass per
    archive however many of its members are shown, stopped once all of them are found; a
    truncated archive gives the members before its fault.
    """
    from medai.datasets import read_records
    from medai.images import ARCHIVE_SEP, ImageInputs

    payloads: dict[str, bytes | str] = {}
    members: dict[str, set[str]] = {}
    files = []
    for source in dict.fromkeys(sources):
        if ARCHIVE_SEP in source:
            archive, member = source.split(ARCHIVE_SEP, 1)
            members.setdefault(archive, set()).add(member)
        else:
            files.append(source)
    for source in files:
        try:
            for record in read_records(ImageInputs(files=(source,))):
                payloads[record.source] = record.error or record.data
        except (OSError, ValueError) as exc:  # e.g. a URI whose filesystem cannot be opened
            payloads[source] = f"cannot read {source}: {exc}"
    for archive, wanted in members.items():
        payloads.update(_archive_payloads(archive, wanted))
    return payloads


def _archive_payloads(archive: str, wanted: set[str]) -> dict[str, bytes | str]:
    from medai.datasets import read_records
    from medai.images import ARCHIVE_SEP, ImageInputs, image_id_of

    found: dict[str, bytes | str] = {}
    fault = ""
    for record in read_records(ImageInputs(archives=(archive,)), wanted):
        if record.source == archive:  # the archive itself failed after these members
            fault = f" ({record.error})"
            log.warning("cannot read example images from %s: %s", archive, record.error)
            continue
        member = record.source.split(ARCHIVE_SEP, 1)[1]
        found[member] = found[image_id_of(member)] = record.error or record.data
        if all(m in found or image_id_of(m) in found for m in wanted):
            break
    missing = {m: f"{m} not found in {archive}{fault}" for m in wanted}
    return {
        f"{archive}{ARCHIVE_SEP}{m}": found.get(m, found.get(image_id_of(m), missing[m]))
        for m in wanted
    }


def _other_findings(text, finding: str) -> list[str]:
    """The image's labelled findings other than ``finding`` (NIH ``Finding Labels``)."""
    if not isinstance(text, str):
        return []
    return [name for name in text.split("|") if name and name not in (finding, NO_FINDING)]


def failure_table(
    finding: FindingRows, entry: Mapping, labels: pd.DataFrame, attributes: Sequence[str]
) -> dict | None:
    """The finding's most confident errors at its operating threshold.

    Args:
        finding: The finding's evaluated rows.
        entry: Its metrics.json entry (for the operating threshold).
        labels: The label table (``findings`` and the metadata columns).
        attributes: The metadata columns to list (those the label table has).

    Returns:
        ``{"cut_off", "false_positives", "missed_positives"}``: up to
        :data:`FAILURES_PER_KIND` rows each (the highest-scoring false positives, the
        lowest-scoring missed positives) with ``image_id``, ``score``, the attributes and
        ``other_findings``; ``None`` without a threshold or rows.
    """
    cut_off, _ = example_cut_off(entry)
    rows = finding.rows
    if cut_off is None or rows.empty:
        return None
    called = is_positive(rows["score"].to_numpy(), cut_off)
    positive = (rows["label"] == 1).to_numpy()
    picked = {
        "false_positives": rows[called & ~positive].nlargest(FAILURES_PER_KIND, "score"),
        "missed_positives": rows[~called & positive].nsmallest(FAILURES_PER_KIND, "score"),
    }
    table: dict = {"cut_off": cut_off}
    for kind, frame in picked.items():
        meta = labels.iloc[frame["label_row"].to_numpy()]
        listed = []
        for (image_id, score), (_, info) in zip(
            frame[["image_id", "score"]].itertuples(index=False), meta.iterrows(), strict=True
        ):
            row = {"image_id": image_id, "score": float(score)}
            for name in attributes:
                value = info.get(name)
                row[name] = None if value is None or pd.isna(value) else value
            row["other_findings"] = _other_findings(info.get("findings"), finding.name)
            listed.append(row)
        table[kind] = listed
    return table
