"""Where the model looks, in the report: heatmaps on the example images, the pointing game and
how faithful the heatmaps are.

All need the network itself, so all need ``--model MODEL_DIR`` (the report already checks
that its ``model_id`` is the predictions'). Heatmaps are the ``--saliency`` method's
(:mod:`medai.saliency`) of the finding's output, computed at the model's input size from the
same decoding the scorer used, then resized onto the thumbnails. The pointing game runs over
the evaluated images that ``--boxes`` gives a box for the finding: a hit when the heatmap's
maximum falls inside one of the image's boxes for that finding; the hit rate's 95% CI is
Wilson's score interval. On the same images the deletion curves of :mod:`medai.faithfulness`
say whether the heatmap finds what the score depends on better than a random order does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from medai.report.accounting import FindingRows, ModelRows
from medai.report.examples import Decoded
from medai.saliency import Explainer

__all__ = ["POINTING_FLAG", "boxed_sources", "localization", "overlays"]

# A finding is flagged when its hit rate's 95% CI lies wholly below this: the heatmaps then
# point inside the annotated box for fewer than half of the images, confidently.
POINTING_FLAG = 0.5

log = logging.getLogger("medai.report")


def boxed_sources(model: ModelRows, boxes: pd.DataFrame) -> list[str]:
    """Sources of the evaluated images that have a box for one of the model's findings."""
    sources: list[str] = []
    for finding in model.findings:
        wanted = set(boxes.loc[boxes["finding"] == finding.name, "image_id"])
        rows = finding.rows
        sources += rows.loc[rows["image_id"].isin(wanted), "source"].dropna().tolist()
    return list(dict.fromkeys(sources))


def localization(
    explainer: Explainer,
    model: ModelRows,
    boxes: pd.DataFrame,
    decoded: Mapping[str, tuple[Decoded | None, str]],
) -> list[dict]:
    """The pointing game per finding of ``model`` over its evaluated, boxed images.

    Args:
        explainer: The model's network.
        model: The model's evaluated rows.
        boxes: :func:`medai.boxes.read_boxes` output.
        decoded: Per source, its decoded image or the reason it could not be read.

    Returns:
        One entry per finding: ``finding``, ``n`` (images played), ``hits``,
        ``pointing_hit_rate``, ``ci95`` (Wilson), ``block``, ``unreadable``, ``flagged``
        (the CI lies wholly below :data:`POINTING_FLAG`), ``reason`` (why the rate is
        null, else ``None``) and ``faithfulness``
        (:func:`medai.faithfulness.summarise`: ``deletion_auc``, ``random_deletion_auc``,
        ``n``, ``method``, ...).
    """
    return [_play(explainer, finding, boxes, decoded) for finding in model.findings]


def _play(explainer, finding: FindingRows, boxes, decoded) -> dict:
    from medai.faithfulness import faithfulness, summarise
    from medai.saliency import Box, pointing_hit

    mine = boxes[boxes["finding"] == finding.name]
    rows = finding.rows.drop_duplicates("image_id")
    rows = rows[rows["image_id"].isin(set(mine["image_id"]))]
    entry = {"finding": finding.name, "n": 0, "hits": 0, "pointing_hit_rate": None}
    entry |= {"ci95": None, "block": explainer.block, "unreadable": 0, "reason": None}
    entry["flagged"] = False
    entry["faithfulness"] = summarise(np.zeros(0), np.zeros(0), explainer.method)
    usable = []
    for image_id, source in rows[["image_id", "source"]].itertuples(index=False):
        image, _ = decoded.get(source, (None, "not read"))
        if image is None or image.model_input is None:
            entry["unreadable"] += 1
            continue
        usable.append((image_id, image))
    if not usable:
        entry["reason"] = "no evaluated image has a readable image and a box for this finding"
        return entry
    images = np.stack([image.model_input for _, image in usable])
    maps = explainer.heatmaps(images, finding.name)
    output = explainer.findings.index(finding.name)
    entry["faithfulness"] = faithfulness(explainer.model, images, maps, output, explainer.method)
    by_image = {
        image_id: [Box(*box) for box in group[["x", "y", "width", "height"]].to_numpy()]
        for image_id, group in mine.groupby("image_id")
    }
    hits = sum(
        any(pointing_hit(heat, box, image.original_size) for box in by_image[image_id])
        for (image_id, image), heat in zip(usable, maps, strict=True)
    )
    entry |= {"n": len(usable), "hits": int(hits), "pointing_hit_rate": hits / len(usable)}
    entry["ci95"] = _wilson(int(hits), len(usable))
    entry["flagged"] = entry["ci95"][1] < POINTING_FLAG
    return entry


def _wilson(hits: int, n: int) -> list[float]:
    from scipy.stats import binomtest

    interval = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def overlays(
    explainer: Explainer,
    finding: str,
    sources: list[str],
    decoded: Mapping[str, tuple[Decoded | None, str]],
) -> dict[str, np.ndarray]:
    """Thumbnails with the finding's heatmap blended in, ``uint8 (T, T, 3)`` per source."""
    from PIL import Image

    from medai.saliency import overlay

    ready = [
        (source, image)
        for source in dict.fromkeys(sources)
        if (image := decoded.get(source, (None, ""))[0]) is not None
        and image.model_input is not None
        and image.thumbnail is not None
    ]
    if not ready:
        return {}
    maps = explainer.heatmaps(np.stack([image.model_input for _, image in ready]), finding)
    result = {}
    for (source, image), heat in zip(ready, maps, strict=True):
        size = image.thumbnail.shape[:2]
        resized = Image.fromarray(heat).resize(size[::-1], Image.Resampling.BILINEAR)
        result[source] = overlay(image.thumbnail, np.asarray(resized, np.float32))
    return result
