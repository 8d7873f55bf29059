"""What reading the labelled train/val images found: used, unreadable, missing, broken archives.

Images that cannot be read or decoded never reach training or validation: they are counted per
split (``unreadable``), the first few are named in the log, and a truncated or corrupt archive
contributes the members read before the fault and is named. Images lost behind the fault of a
broken archive are not counted as unreadable (a tarball has no index, so nothing can name
them): they are ``missing``, like any labelled image absent from the inputs. When more than
``--max-unreadable`` of the labelled train/val images are unreadable, :func:`check_unreadable`
stops the job before any worker starts, naming the worst sources.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medai.dicomweb import parse_instance_url
from medai.train_config import TrainError

__all__ = [
    "Inventory",
    "take_inventory",
    "check_unreadable",
    "split_counts",
    "finding_counts",
    "class_weights_of",
]

logger = logging.getLogger("medai.train")


@dataclass(frozen=True)
class Inventory:
    """What reading the labelled train/val images found.

    Attributes:
        split: The split table with ``found`` (read and decoded), ``unreadable`` and
            ``source`` (the WADO-RS URL of an image read from DICOMweb, else ``""``) columns;
            test rows count as found (training does not read them).
        unreadable: One row per unreadable labelled image: ``image_id``, ``split``,
            ``source``, ``error``.
        broken: One row per source that failed as a whole (a truncated or corrupt archive):
            ``source``, ``error``, ``read`` (images read from it before the fault).
    """

    split: pd.DataFrame
    unreadable: pd.DataFrame
    broken: pd.DataFrame


def _container(source: str) -> str:
    """The archive of an archive member, else the folder of a file."""
    from medai.images import ARCHIVE_SEP

    if ARCHIVE_SEP in source:
        return source.split(ARCHIVE_SEP, 1)[0]
    return str(Path(source).parent)


def take_inventory(seen: pd.DataFrame, split: pd.DataFrame) -> Inventory:
    """Sort the rows read for the labelled train/val images into found, unreadable and broken.

    Args:
        seen: ``image_id``, ``source`` and ``error`` of every row the image dataset produced.
        split: The split table (``image_id``, ``patient_id``, ``label``, ``split``).
    """
    wanted = split["split"].isin(["train", "val"])
    labelled = set(split.loc[wanted, "image_id"])
    ok = seen["error"] == ""
    found = set(seen.loc[ok, "image_id"])
    failed = seen[~ok & seen["image_id"].isin(labelled) & ~seen["image_id"].isin(found)]
    failed = failed.drop_duplicates("image_id")
    broken = seen[~ok & ~seen["image_id"].isin(labelled)][["source", "error"]].copy()
    containers = seen.loc[ok, "source"].map(_container)
    broken["read"] = [int((containers == source).sum()) for source in broken["source"]]
    table = split.copy()
    table["found"] = table["image_id"].isin(found) | ~wanted
    table["unreadable"] = table["image_id"].isin(set(failed["image_id"])) & wanted
    table["source"] = table["image_id"].map(_web_sources(seen, ok)).fillna("")
    split_of = dict(zip(split["image_id"], split["split"], strict=True))
    unreadable = failed.assign(split=failed["image_id"].map(split_of))
    return Inventory(
        split=table,
        unreadable=unreadable[["image_id", "split", "source", "error"]].reset_index(drop=True),
        broken=broken.reset_index(drop=True),
    )


def _web_sources(seen: pd.DataFrame, ok: pd.Series) -> dict[str, str]:
    """Per image read from DICOMweb, its WADO-RS URL (UIDs only: the export retrieves it again).

    Paths are left out: a hospital's export folders may be named after patients, and
    ``split.csv`` travels with the model.
    """
    rows = pd.concat([seen[ok], seen[~ok]]).drop_duplicates("image_id")
    web = rows[rows["source"].map(lambda s: parse_instance_url(s) is not None)]
    return dict(zip(web["image_id"], web["source"], strict=True))


def _worst_sources(inventory: Inventory, limit: int = 3) -> list[str]:
    """The sources with the most unreadable images (broken archives first), as phrases."""
    phrases = [
        f"{row.source} (broken after {row.read} images: {row.error})"
        for row in inventory.broken.itertuples()
    ]
    per_source = inventory.unreadable["source"].map(_container).value_counts()
    phrases += [f"{source} ({count} unreadable)" for source, count in per_source.items()]
    return phrases[:limit]


def check_unreadable(inventory: Inventory, max_unreadable: float) -> None:
    """Log what could not be read; stop when too many labelled images are unreadable.

    Raises:
        TrainError: If the unreadable fraction of the labelled train/val images is above
            ``max_unreadable``; the message names the worst sources and the flag.
    """
    table = inventory.split
    labelled = int(table["split"].isin(["train", "val"]).sum())
    bad = len(inventory.unreadable)
    for row in inventory.unreadable.head(10).itertuples():
        logger.warning(
            "unreadable %s image %s (%s): %s", row.split, row.image_id, row.source, row.error
        )
    if bad > 10:
        logger.warning("... and %d more unreadable images", bad - 10)
    missing = int((~table["found"] & ~table["unreadable"]).sum())
    for row in inventory.broken.itertuples():
        logger.warning(
            "broken archive %s: %d images read before the fault (%s); labelled images after it "
            "are missing",
            row.source,
            row.read,
            row.error,
        )
    logger.info(
        "images: %d labelled train/val found, %d missing from --images, %d unreadable "
        "(excluded from training and validation)",
        int((table["found"] & table["split"].isin(["train", "val"])).sum()),
        missing,
        bad,
    )
    fraction = bad / labelled if labelled else 0.0
    if fraction > max_unreadable:
        raise TrainError(
            f"{bad} of {labelled} labelled train/val images ({fraction:.1%}) are unreadable, "
            f"more than --max-unreadable {max_unreadable:g}; worst sources: "
            f"{'; '.join(_worst_sources(inventory))}. Repair or replace them, or pass "
            f"--max-unreadable {math.ceil(fraction * 100) / 100:g} to train without them"
        )
    if bad or len(inventory.broken):
        logger.warning(
            "training without %d unreadable images (%.1f%% of the labelled train/val images, "
            "--max-unreadable %g)%s",
            bad,
            100 * fraction,
            max_unreadable,
            f"; broken archives: {', '.join(inventory.broken['source'])}"
            if len(inventory.broken)
            else "",
        )


def split_counts(inventory: Inventory) -> dict:
    """The card's ``counts``: per split the images used, patients, positives and unreadable
    images, the images missing from the inputs and the broken archives."""
    split = inventory.split
    counts = {}
    for name in ("train", "val", "test"):
        part = split[(split["split"] == name) & split["found"]]
        counts[name] = {
            "images": int(len(part)),
            "patients": int(part["patient_id"].nunique()),
            "positives": int((part["label"] == 1).sum()),
        }
        if name != "test":  # training never reads the test images
            counts[name]["unreadable"] = int(((split["split"] == name) & split["unreadable"]).sum())
    counts["missing"] = int((~split["found"] & ~split["unreadable"]).sum())
    counts["broken_archives"] = [
        {"source": row.source, "images_read": row.read, "error": row.error}
        for row in inventory.broken.itertuples()
    ]
    return counts


def finding_counts(inventory: Inventory, column: str) -> dict:
    """Images evaluated for one finding, its positives and negatives, per split (found only)."""
    split = inventory.split
    counts = {}
    for name in ("train", "val", "test"):
        labels = split.loc[(split["split"] == name) & split["found"], column]
        counts[name] = {
            "images": int((labels >= 0).sum()),
            "positives": int((labels == 1).sum()),
            "negatives": int((labels == 0).sum()),
        }
    return counts


def class_weights_of(train: pd.DataFrame, column: str = "label") -> dict[str, float]:
    """Loss weights ``n / (2 n_class)`` of negatives ("0") and positives ("1") of one finding,
    over the training images evaluated for it."""
    labels = train[column]
    labels = labels[labels >= 0]
    counts = labels.value_counts()
    total = float(len(labels))
    return {str(k): total / (2.0 * float(counts.get(k, 1))) for k in (0, 1)}
