"""How far an engine's scores are from ``model.keras``'s, and on which images.

The images are those of the model's own splits (``split.csv``'s ``used`` rows), read through
the reader training uses; the measures are the largest score change, the share of equal
decisions (:func:`medai.card.is_positive` at the card's thresholds) and, with labels, the AUC
change. Export (:mod:`medai.export`) and int8 quantization (:mod:`medai.quantize`) both use
them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medai.card import SPLIT_FILE, card_findings
from medai.errors import MedaiError

__all__ = [
    "BATCH",
    "ExportError",
    "LabelledImages",
    "batched",
    "compile_ir",
    "ir_scores",
    "keras_scores",
    "load_split_images",
    "measure_agreement",
    "sample_ids",
]

logger = logging.getLogger("medai.export")
BATCH = 32


class ExportError(MedaiError, RuntimeError):
    """The IR cannot be exported (missing data, nncf not installed, or int8 refused by its gate)."""


@dataclass(frozen=True)
class LabelledImages:
    """Decoded images of one split with their labels.

    Attributes:
        images: ``uint8 (N, size, size, 1)``.
        labels: ``(N, K)``: 1/0 per finding, -1 where the image is not evaluated for it.
        image_ids: The images' ids.
        unreadable: Images of the split that could not be found or decoded.
    """

    images: np.ndarray
    labels: np.ndarray
    image_ids: list[str] = field(default_factory=list)
    unreadable: int = 0


def sample_ids(ids: list[str], limit: int | None, seed: int) -> list[str]:
    if limit is None or len(ids) <= limit:
        return ids
    chosen = np.random.default_rng(seed).choice(len(ids), size=limit, replace=False)
    return [ids[i] for i in sorted(chosen)]


def load_split_images(
    model_dir: str | Path,
    card: dict,
    splits: tuple[str, ...],
    images: tuple[str, ...] | None = None,
    limit: int | None = None,
    seed: int = 0,
    web: tuple[bool, str | None] = (False, None),
) -> dict[str, LabelledImages]:
    """Decode the images of some splits of ``split.csv``, read in place (archives streamed once).

    Only the images training used are read (``split.csv``'s ``status`` ``used``), through the
    reader training uses (:func:`medai.datasets.read_records`; ``web``: its
    ``(allow_insecure_http, ca_bundle)`` for the WADO-RS URLs of images from DICOMweb): an image
    that cannot be read or decoded now is left out and counted as ``unreadable``, and a
    truncated archive gives the members before its fault, as in training.

    Args:
        model_dir: The model directory (holds ``split.csv``).
        card: Its card (gives the image size and, by default, where the images are).
        splits: Split names, e.g. ``("train", "val")``.
        images: Where the images are (default: the card's ``training_data.images``).
        limit: At most this many images per split (a seeded sample).
        seed: Seed of the sample.

    Raises:
        ExportError: Without ``split.csv``, or when a split has no readable image.
    """
    from medai.card import ModelDirError, read_split, split_labels

    try:
        table = read_split(model_dir)
    except ModelDirError as exc:
        raise ExportError(str(exc)) from exc
    if table is None:
        missing = Path(model_dir) / SPLIT_FILE
        raise ExportError(f"{missing} is missing: int8 needs the model's training and val split")
    sources = tuple(images or card.get("training_data", {}).get("images", ()))
    if not sources:
        raise ExportError("no image folders known: pass the training images")
    table = table[table["status"] == "used"]
    wanted = {
        name: sample_ids(table.loc[table["split"] == name, "image_id"].tolist(), limit, seed)
        for name in splits
    }
    decoded = _decode_wanted(sources, table, wanted, card, web)
    label_of = dict(zip(table["image_id"], split_labels(table, card_findings(card)), strict=True))
    found = {}
    for name, ids in wanted.items():
        usable = [i for i in ids if i in decoded]
        if not usable:
            raise ExportError(f"no image of the {name} split was found in {list(sources)}")
        found[name] = LabelledImages(
            images=np.stack([decoded[i] for i in usable]),
            labels=np.stack([label_of[i] for i in usable]),
            image_ids=usable,
            unreadable=len(ids) - len(usable),
        )
    return found


def _split_inputs(sources: tuple[str, ...], table, wanted: set[str]):
    """What to read the wanted images from: the folders, archives and files of ``sources``, and
    for a ``dicomweb+`` source the WADO-RS URLs ``split.csv`` records for the wanted images."""
    from medai.dicomweb import is_dicomweb, parse_instance_url
    from medai.images import ImageInputs, discover_images

    files = [s for s in sources if not is_dicomweb(s)]
    inputs = discover_images(files) if files else ImageInputs()
    if len(files) == len(sources) or "source" not in table:
        return inputs
    chosen = table.loc[table["image_id"].isin(wanted), "source"]
    urls = dict.fromkeys(s for s in chosen if parse_instance_url(s))
    return ImageInputs(inputs.archives, (*inputs.files, *urls))


def _decode_wanted(
    sources: tuple[str, ...], table, chosen: dict, card: dict, web: tuple[bool, str | None]
) -> dict:
    """Per image id chosen (in any split), its decoded model input; unreadable images are
    logged and left out."""
    from medai.datasets import read_records
    from medai.images import ImageError, decode_image

    wanted = {i for ids in chosen.values() for i in ids}
    inputs = _split_inputs(sources, table, wanted)
    size = int(card["image_size"])
    decoded: dict[str, np.ndarray] = {}
    for record in read_records(inputs, wanted, allow_insecure_http=web[0], ca_bundle=web[1]):
        if record.image_id in decoded or record.image_id not in wanted:
            continue  # a broken archive's row is named after the archive
        if record.error:
            logger.warning("skipping %s: %s", record.source, record.error)
            continue
        try:
            decoded[record.image_id] = decode_image(record.data, size)
        except ImageError as exc:
            logger.warning("skipping %s: %s", record.source, exc.text)
    return decoded


def batched(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    parts = [predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    # (N, K): one column per finding.
    return np.concatenate(parts).reshape(len(images), -1).astype(np.float32)


def keras_scores(model, images: np.ndarray) -> np.ndarray:
    return batched(lambda x: np.asarray(model(x, training=False)), images)


def compile_ir(ov_model, hint: str = "f32"):
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    return ov.Core().compile_model(ov_model, "CPU", config)


def ir_scores(compiled, images: np.ndarray) -> np.ndarray:
    return batched(lambda x: np.asarray(compiled(x)[0]), images)


def measure_agreement(
    reference: np.ndarray,
    scores: np.ndarray,
    thresholds,
    labels: np.ndarray | None = None,
) -> dict:
    """How far ``scores`` are from ``reference`` (``model.keras``'s scores of the same images).

    Args:
        reference: ``(N, K)`` (or ``(N,)``) scores of ``model.keras``.
        scores: The same images' scores from the engine under test.
        thresholds: One threshold per finding (a float for one finding).
        labels: ``(N, K)`` labels (1/0, -1 = not evaluated), or ``None``.

    Returns:
        ``images``, ``max_abs_diff``, ``decision_agreement`` (fraction of equal
        :func:`medai.card.is_positive` decisions over every image and finding) and, with
        labels of both classes, ``auc_reference``, ``auc`` (means over findings) and
        ``auc_change`` (the largest change of any finding, signed); with several findings
        also ``auc_change_per_finding``.
    """
    from medai.card import is_positive
    from medai.metrics import roc_auc

    cut = np.atleast_1d(np.asarray(thresholds, np.float64))
    reference = np.asarray(reference, np.float32).reshape(len(reference), -1)
    scores = np.asarray(scores, np.float32).reshape(len(scores), -1)
    same = is_positive(reference, cut) == is_positive(scores, cut)
    measured = {
        "images": int(len(scores)),
        "max_abs_diff": float(np.max(np.abs(reference - scores))),
        "decision_agreement": float(same.mean()),
    }
    if labels is None:
        return measured
    labels = np.asarray(labels).reshape(len(scores), -1)
    pairs = []
    for k in range(labels.shape[1]):
        known = labels[:, k] >= 0
        pairs.append(
            (
                roc_auc(labels[known, k], reference[known, k]),
                roc_auc(labels[known, k], scores[known, k]),
            )
        )
    if any(a is None or b is None for a, b in pairs):
        measured["auc_reference"] = measured["auc"] = measured["auc_change"] = None
        return measured
    changes = [b - a for a, b in pairs]
    measured["auc_reference"] = float(np.mean([a for a, _ in pairs]))
    measured["auc"] = float(np.mean([b for _, b in pairs]))
    measured["auc_change"] = float(changes[int(np.argmax(np.abs(changes)))])
    if len(pairs) > 1:
        measured["auc_change_per_finding"] = changes
    return measured
