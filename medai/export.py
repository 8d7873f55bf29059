"""Export a model directory's network to an OpenVINO IR, optionally quantized to int8 behind a gate.

``export_openvino`` converts the loaded ``model.keras`` directly with ``openvino.convert_model``
(Keras 3 models convert as they are; no SavedModel step), keeps fp32 weights in the IR
(``save_model`` would compress them to fp16), measures how far the IR's scores are from
``model.keras``'s and writes ``MODEL_DIR/openvino/`` atomically (a temporary folder renamed
into place). The card gains an ``openvino`` block: files and their sha256, OpenVINO's version,
the ``model_id`` converted from and the measured agreement. ``model_id`` is untouched: it stays
the sha256 of ``model.keras``.

With ``int8=True`` the IR is also quantized with NNCF (post-training quantization calibrated on
images of the model's *training* split), and the result is kept only if a gate measured on the
*validation* split accepts it: the AUC may move by at most 0.005 and at least 99% of the
threshold decisions must equal ``model.keras``'s. Otherwise export refuses with what it
measured and writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medai.artifact import (
    CARD_FILE,
    SPLIT_FILE,
    card_findings,
    card_thresholds,
    file_sha256,
    write_json,
)
from medai.engines import CARD_KEY, IR_DIR, IR_FILES
from medai.errors import MedaiError

__all__ = [
    "ExportError",
    "Int8Gate",
    "Int8Attempt",
    "LabelledImages",
    "export_openvino",
    "measure_agreement",
    "gate_verdict",
    "load_split_images",
]

logger = logging.getLogger("medai.export")
BATCH = 32
RANDOM_AGREEMENT_IMAGES = 64


class ExportError(MedaiError, RuntimeError):
    """The IR cannot be exported (missing data, nncf not installed, or int8 refused by its gate)."""


@dataclass(frozen=True)
class Int8Gate:
    """When an int8 IR is good enough, measured against ``model.keras`` on the validation split.

    Attributes:
        max_auc_change: Largest accepted ``|AUC(int8) - AUC(model.keras)|``.
        min_agreement: Smallest accepted fraction of equal threshold decisions
            (:func:`medai.metrics.is_positive` at the card's threshold).
    """

    max_auc_change: float = 0.005
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        if self.max_auc_change < 0 or not 0 <= self.min_agreement <= 1:
            raise ExportError("the int8 gate needs max_auc_change >= 0 and 0 <= min_agreement <= 1")


# NNCF's range estimators by the names the card records.
ACTIVATION_RANGES = {"minmax": "MINMAX", "mean-minmax": "MEAN_MINMAX"}


@dataclass(frozen=True)
class Int8Attempt:
    """One NNCF configuration tried for int8, from the cheapest to the most accurate.

    Attributes:
        name: Short name recorded in the card.
        accuracy_control: Use ``nncf.quantize_with_accuracy_control``, which reverts the most
            damaging quantizers to fp32 until the decisions agree on the calibration images.
        keep_ends: Keep the first convolution and the dense head in fp32.
        preset: NNCF preset, ``performance`` or ``mixed`` (asymmetric activations).
        fast_bias_correction: NNCF's fast (True) or full (False) bias correction.
        max_reverted: Accuracy control's bound: quantizer groups reverted to fp32 at most.
        ranking_images: Calibration images accuracy control ranks the groups on.
        activation_ranges: How each activation's int8 range is set from the calibration
            images: ``minmax``, the whole range any image reached, or ``mean-minmax``
            (NNCF's default), the mean over images of each image's own range.
    """

    name: str
    accuracy_control: bool = False
    keep_ends: bool = True
    preset: str = "mixed"
    fast_bias_correction: bool = False
    max_reverted: int = 6
    ranking_images: int = 100
    activation_ranges: str = "minmax"

    def __post_init__(self) -> None:
        if self.activation_ranges not in ACTIVATION_RANGES:
            raise ExportError(
                f"activation_ranges must be one of {sorted(ACTIVATION_RANGES)}, "
                f"not {self.activation_ranges!r}"
            )


# Measured on a trained 128 px phantom model: NNCF defaults moved scores by up to 0.13 and
# flipped 11% of decisions (its threshold sits where the sigmoid saturates); the full bias
# correction with fp32 ends moved them by 0.02. NNCF's default activation ranges average each
# image's own range, which clips the rare strong activations a lesion raises in a few images
# (the very ones a classifier's score rests on): on two trained phantom models (2026-12-03)
# the whole range cut the largest validation score change from 0.32 to 0.011 and from 0.29 to
# 0.036, and flipped decisions on 394 unseen phantoms from 3 to 1 and from 8 to 2. Accuracy
# control brings back what is left.
DEFAULT_ATTEMPTS = (
    Int8Attempt("ptq-minmax-fp32-ends"),
    Int8Attempt("ptq-mean-minmax-fp32-ends", activation_ranges="mean-minmax"),
    Int8Attempt("accuracy-control", accuracy_control=True),
)


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


def _sample_ids(ids: list[str], limit: int | None, seed: int) -> list[str]:
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
) -> dict[str, LabelledImages]:
    """Decode the images of some splits of ``split.csv``, read in place (archives streamed once).

    Args:
        model_dir: The model directory (holds ``split.csv``).
        card: Its card (gives the image size and, by default, where the images are).
        splits: Split names, e.g. ``("train", "val")``.
        images: Archives, folders or files holding the images; default: the card's
            ``training_data.images``.
        limit: At most this many images per split (a seeded sample).
        seed: Seed of the sample.

    Raises:
        ExportError: Without ``split.csv``, or when a split has no readable image.
    """
    import pandas as pd

    from medai.images import decode_image, discover_images, image_id_of, iter_archive, read_bytes

    path = Path(model_dir) / SPLIT_FILE
    if not path.is_file():
        raise ExportError(
            f"{path} is missing: int8 needs the model's training and validation split"
        )
    table = pd.read_csv(path, dtype={"image_id": str})
    sources = tuple(images or card.get("training_data", {}).get("images", ()))
    if not sources:
        raise ExportError("no image folders known: pass the training images")
    wanted: dict[str, list[str]] = {}
    for name in splits:
        ids = table.loc[table["split"] == name, "image_id"].tolist()
        wanted[name] = _sample_ids(ids, limit, seed)
    every = {i for ids in wanted.values() for i in ids}
    size = int(card["image_size"])
    decoded: dict[str, np.ndarray] = {}
    inputs = discover_images(sources)
    for archive in inputs.archives:
        for member, data in iter_archive(archive, every):
            _decode_into(decoded, image_id_of(member), data, size, decode_image)
    for source in inputs.files:
        if image_id_of(source) in every and image_id_of(source) not in decoded:
            _decode_into(decoded, image_id_of(source), read_bytes(source), size, decode_image)
    per_finding = [f"label_{name}" for name in card_findings(card)]
    # A multi-finding split.csv has a label_<Finding> column per output; one finding, `label`.
    columns = per_finding if all(c in table for c in per_finding) else ["label"]
    label_of = dict(zip(table["image_id"], table[columns].to_numpy(dtype=np.int64), strict=True))
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


def _decode_into(decoded: dict, image_id: str, data: bytes, size: int, decode) -> None:
    from medai.images import ImageError

    try:
        decoded[image_id] = decode(data, size)
    except ImageError as exc:
        logger.warning("skipping %s: %s", image_id, exc)


def _batched(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    parts = [predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    # (N, K): one column per finding.
    return np.concatenate(parts).reshape(len(images), -1).astype(np.float32)


def _keras_scores(model, images: np.ndarray) -> np.ndarray:
    return _batched(lambda x: np.asarray(model(x, training=False)), images)


def _compile(ov_model, hint: str = "f32"):
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    return ov.Core().compile_model(ov_model, "CPU", config)


def _ov_scores(compiled, images: np.ndarray) -> np.ndarray:
    return _batched(lambda x: np.asarray(compiled(x)[0]), images)


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
        :func:`medai.metrics.is_positive` decisions over every image and finding) and, with
        labels of both classes, ``auc_reference``, ``auc`` (means over findings) and
        ``auc_change`` (the largest change of any finding, signed); with several findings
        also ``auc_change_per_finding``.
    """
    from medai.metrics import is_positive, roc_auc

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


def gate_verdict(measured: dict, gate: Int8Gate) -> list[str]:
    """Reasons the gate refuses ``measured`` (empty when it accepts)."""
    reasons = []
    change = measured.get("auc_change")
    if change is None:
        reasons.append("AUC not measurable on the validation split (one class only)")
    elif abs(change) > gate.max_auc_change:
        reasons.append(f"|delta AUC| {abs(change):.4f} > {gate.max_auc_change}")
    if measured["decision_agreement"] < gate.min_agreement:
        reasons.append(
            f"decision agreement {measured['decision_agreement']:.4f} < {gate.min_agreement}"
        )
    return reasons


def _import_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise ExportError(
            "--int8 needs NNCF, which is not installed: pip install 'medai[int8]' (or nncf)"
        ) from exc
    return nncf


def _quantize(ov_model, attempt: Int8Attempt, calibration: np.ndarray, threshold):
    """Quantize an fp32 OpenVINO model with one NNCF configuration."""
    from medai.metrics import is_positive

    nncf = _import_nncf()
    dataset = nncf.Dataset([image[None] for image in calibration])
    options = {
        "subset_size": len(calibration),
        "preset": nncf.QuantizationPreset(attempt.preset),
        "fast_bias_correction": attempt.fast_bias_correction,
    }
    if attempt.keep_ends:
        options["ignored_scope"] = _end_layers(ov_model, nncf)
    advanced = _advanced(nncf, attempt)
    if not attempt.accuracy_control:
        return nncf.quantize(ov_model, dataset, advanced_parameters=advanced, **options)
    fp32, references = _compile(ov_model), {}

    def reference_of(item: np.ndarray) -> np.ndarray:
        # NNCF ranks layers by calling the metric many times on the same items: the fp32
        # scores of an item are computed once.
        key = hashlib.blake2b(np.ascontiguousarray(item).tobytes(), digest_size=16).digest()
        if key not in references:
            references[key] = np.asarray(fp32(item)[0])
        return references[key]

    def agreement(compiled, items) -> tuple[float, list[float]]:
        # NNCF calls this on subsets of the dataset too (one item to choose its mode, then
        # rankings): compare each item with the fp32 model's decision on that same item,
        # one value per item, so NNCF reads the values as per-item metrics.
        items = list(items)
        scores = np.concatenate([np.asarray(compiled(item)[0]) for item in items])
        reference = np.concatenate([reference_of(item) for item in items])
        same = is_positive(scores, threshold) == is_positive(reference, threshold)
        per_item = same.reshape(len(items), -1).all(axis=1).astype(float)
        return float(per_item.mean()), per_item.tolist()

    # The decisions' agreement on the (training) calibration images is the metric, so the
    # validation split stays unseen until the gate measures it. Unbounded, NNCF reverts one
    # quantizer group per iteration and re-ranks all the others: on a 128 px phantom model
    # (300 calibration images, 103 quantized ops) one ranking took 3-3.5 min on 2 cores and
    # 20 min brought no gain (the groups it reverted were transposes), so it is bounded.
    restorer = nncf.AdvancedAccuracyRestorerParameters(
        max_num_iterations=attempt.max_reverted,
        ranking_subset_size=min(attempt.ranking_images, len(calibration)),
    )
    return nncf.quantize_with_accuracy_control(
        ov_model,
        dataset,
        dataset,
        agreement,
        max_drop=0.005,
        advanced_quantization_parameters=advanced,
        advanced_accuracy_restorer_parameters=restorer,
        **options,
    )


def _advanced(nncf, attempt: Int8Attempt):
    """NNCF's advanced parameters for an attempt: its activation range estimator."""
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ranges = getattr(RangeEstimatorParametersSet, ACTIVATION_RANGES[attempt.activation_ranges])
    return nncf.AdvancedQuantizationParameters(activations_range_estimator_params=ranges)


def _end_layers(ov_model, nncf):
    """The first convolution and the dense head, which quantize worst, as an NNCF scope."""
    ops = ov_model.get_ordered_ops()
    first_conv = next(op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution")
    return nncf.IgnoredScope(names=[first_conv], types=["MatMul"], validate=False)


def _quantize_gated(
    ov_model,
    split: dict[str, LabelledImages],
    reference_val: np.ndarray,
    threshold: float,
    gate: Int8Gate,
    attempts: tuple[Int8Attempt, ...],
):
    """Try ``attempts`` in order; return the first int8 model the gate accepts and the record."""
    tried = []
    for attempt in attempts:
        logger.info("int8: trying %s", attempt.name)
        quantized = _quantize(ov_model, attempt, split["train"].images, threshold)
        scores = _ov_scores(_compile(quantized), split["val"].images)
        measured = measure_agreement(reference_val, scores, threshold, split["val"].labels)
        reasons = gate_verdict(measured, gate)
        tried.append({"attempt": asdict(attempt), "validation": measured, "refused": reasons})
        logger.info("int8 %s on validation: %s; refused: %s", attempt.name, measured, reasons)
        if not reasons:
            return quantized, tried
    lines = [f"{t['attempt']['name']}: {_summary(t['validation'])}" for t in tried]
    raise ExportError(
        "int8 refused by its gate (|delta AUC| <= "
        f"{gate.max_auc_change}, decision agreement >= {gate.min_agreement}) on "
        f"{len(reference_val)} validation images; measured " + "; ".join(lines)
    )


def _summary(measured: dict) -> str:
    change = measured.get("auc_change")
    auc = "n/a" if change is None else f"{measured['auc_reference']:.4f} -> {measured['auc']:.4f}"
    return (
        f"AUC {auc}, decision agreement {measured['decision_agreement']:.4f}, "
        f"max |delta score| {measured['max_abs_diff']:.4f}"
    )


def export_openvino(
    model_dir: str | Path,
    int8: bool = False,
    images: tuple[str, ...] | None = None,
    gate: Int8Gate | None = None,
    calibration_size: int = 300,
    validation_size: int | None = 2000,
    attempts: tuple[Int8Attempt, ...] = DEFAULT_ATTEMPTS,
    seed: int = 0,
) -> dict:
    """Write ``MODEL_DIR/openvino/`` and record it in the card.

    Args:
        model_dir: A model directory written by ``medai train``.
        int8: Also quantize to int8 (needs ``split.csv`` and the training images).
        images: Where the split's images are; default: the card's ``training_data.images``.
        gate: The int8 acceptance gate (default :class:`Int8Gate`).
        calibration_size: Training images used to calibrate int8 (a seeded sample).
        validation_size: At most this many validation images measure agreement and the gate.
        attempts: NNCF configurations tried in order until one passes the gate.
        seed: Seed of the image samples.

    Returns:
        The card's new ``openvino`` block.

    Raises:
        ExportError: If int8 is refused by the gate, NNCF is missing, or split images are
            missing; nothing is written then.
        ModelDirError: If the directory is incomplete or ``model.keras`` was changed.

    Example:
        >>> export_openvino("models/mass", int8=True)["int8"]["gate"]  # doctest: +SKIP
        {'accepted': True, 'max_auc_change': 0.005, 'min_agreement': 0.99, ...}
    """
    import openvino as ov

    from medai.artifact import load_model_dir
    from medai.runtime import quiet_tensorflow

    gate = gate or Int8Gate()
    if int8:
        _import_nncf()  # fail before the slow steps
    quiet_tensorflow()
    model_dir = Path(model_dir)
    loaded = load_model_dir(model_dir)
    card = loaded.card
    threshold = np.asarray(card_thresholds(card), np.float64)
    split = _agreement_images(
        model_dir, card, images, int8, calibration_size, validation_size, seed
    )
    # Keras 3 models convert directly (TF 2.21, Keras 3.15): no SavedModel detour. Tracing
    # passes the input as a tuple where the model names it: Keras warns, harmlessly, every time.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The structure of `inputs` doesn't match", UserWarning)
        ov_model = ov.convert_model(loaded.model)
    ov_model.output(0).get_tensor().set_names({"score"})
    val = split.get("val")
    check = val.images if val else _random_images(card, seed)
    reference = _keras_scores(loaded.model, check)
    fp32 = measure_agreement(
        reference, _ov_scores(_compile(ov_model), check), threshold, val.labels if val else None
    )
    fp32["on"] = "validation split" if val else f"random uint8 images (seed {seed})"
    quantized = None
    if int8:
        quantized, tried = _quantize_gated(ov_model, split, reference, threshold, gate, attempts)
    block = _write_ir(model_dir, ov_model, quantized)
    block = {
        "path": IR_DIR,
        "openvino_version": ov.get_version(),
        "converted_from": card["model_id"],
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fp32": {**block["fp32"], "agreement": fp32},
    }
    if quantized is not None:
        block["int8"] = {
            **_written(model_dir, "int8"),
            "gate": {"accepted": True, **asdict(gate), "measured": tried[-1]["validation"]},
            "quantization": tried[-1]["attempt"],
            "attempts": tried,
            "calibration": {
                "split": "train",
                "images": int(len(split["train"].images)),
                "seed": seed,
            },
            "nncf_version": _nncf_version(),
        }
    card[CARD_KEY] = block
    write_json(model_dir / CARD_FILE, card)
    return block


def _agreement_images(
    model_dir: Path,
    card: dict,
    images: tuple[str, ...] | None,
    int8: bool,
    calibration_size: int,
    validation_size: int | None,
    seed: int,
) -> dict[str, LabelledImages]:
    """Training (int8 only) and validation images; an fp32 export without them uses none."""
    splits = ("train", "val") if int8 else ("val",)
    try:
        found = load_split_images(model_dir, card, splits, images, validation_size, seed)
    except ExportError:
        if int8:
            raise
        logger.info("no validation images: fp32 agreement measured on random images")
        return {}
    if int8 and len(found["train"].images) > calibration_size:
        train = found["train"]
        keep = _sample_ids(train.image_ids, calibration_size, seed)
        index = [train.image_ids.index(i) for i in keep]
        found["train"] = LabelledImages(train.images[index], train.labels[index], keep)
    return found


def _random_images(card: dict, seed: int) -> np.ndarray:
    size = int(card["image_size"])
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (RANDOM_AGREEMENT_IMAGES, size, size, 1), dtype=np.uint8)


def _nncf_version() -> str:
    from importlib.metadata import version

    return version("nncf")


def _written(model_dir: Path, stored: str) -> dict:
    xml, weights = IR_FILES[stored]
    folder = model_dir / IR_DIR
    return {
        "xml": xml,
        "bin": weights,
        "sha256": {"xml": file_sha256(folder / xml), "bin": file_sha256(folder / weights)},
    }


def _write_ir(model_dir: Path, fp32_model, int8_model) -> dict:
    """Save the IR(s) into a temporary folder, then swap it for ``MODEL_DIR/openvino``."""
    import openvino as ov

    tmp = Path(tempfile.mkdtemp(prefix=f".{IR_DIR}.", dir=model_dir))
    try:
        tmp.chmod(0o755)
        ov.save_model(fp32_model, tmp / IR_FILES["fp32"][0], compress_to_fp16=False)
        if int8_model is not None:
            ov.save_model(int8_model, tmp / IR_FILES["int8"][0], compress_to_fp16=False)
        final = model_dir / IR_DIR
        old = model_dir / f".{IR_DIR}.old-{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return {"fp32": _written(model_dir, "fp32")}
