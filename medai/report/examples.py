"""Examples and failure analysis: which images to show and list, and their thumbnails.

Per finding, at the operating threshold (the model's, else Youden's): the highest-scoring true
and false positives and the lowest-scoring missed positives. The example grid shows a few of
each; the failure table lists more false positives and missed positives with the image's
subgroup attributes and its other labelled findings, so a reviewer sees whether errors cluster.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medai.labels import NO_FINDING
from medai.report.accounting import FindingRows, ModelRows
from medai.report.config import EXAMPLES_PER_GROUP, FAILURES_PER_KIND, THUMBNAIL_SIZE
from medai.thresholds import is_positive

__all__ = ["EXAMPLE_GROUPS", "all_examples", "example_cut_off", "failure_table", "load_thumbnails"]

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


def all_examples(models: Sequence[ModelRows], sections: Mapping[str, dict], images: bool = True):
    """Choose every finding's examples, then decode all their images in one go.

    Reading once for every model and finding means an archive is streamed once per report,
    however many findings show one of its members. ``images=False`` (``--no-images``) chooses
    the examples but reads no image.
    """
    chosen: dict[tuple[str, str], dict[str, pd.DataFrame] | None] = {}
    for model in models:
        for finding in model.findings:
            cut_off, _ = example_cut_off(sections[model.model_id]["findings"][finding.name])
            empty = cut_off is None or finding.rows.empty
            chosen[model.model_id, finding.name] = None if empty else example_rows(finding, cut_off)
    sources = [
        source
        for groups in chosen.values()
        if groups is not None
        for frame in groups.values()
        for source in frame["source"].tolist()
        if isinstance(source, str)
    ]
    return chosen, load_thumbnails(sources) if images else {}


def load_thumbnails(sources: Sequence[str]) -> dict[str, tuple[np.ndarray | None, str]]:
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
