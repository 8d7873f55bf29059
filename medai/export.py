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

import logging
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np

from medai.agreement import (
    ExportError,
    LabelledImages,
    compile_ir,
    ir_scores,
    keras_scores,
    load_split_images,
    measure_agreement,
    sample_ids,
)
from medai.artifact import load_model_dir
from medai.card import card_thresholds, write_card
from medai.configs import CheckedConfig
from medai.engines import CARD_KEY, IR_DIR, IR_FILES
from medai.errors import MedaiError
from medai.files import file_sha256
from medai.quantize import (
    DEFAULT_ATTEMPTS,
    Int8Attempt,
    Int8Gate,
    gate_verdict,
    import_nncf,
    quantize_gated,
)
from medai.runtime import quiet_tensorflow

__all__ = [
    "DEFAULT_ATTEMPTS",
    "ExportConfig",
    "ExportError",
    "run_export",
    "Int8Gate",
    "Int8Attempt",
    "LabelledImages",
    "export_openvino",
    "measure_agreement",
    "gate_verdict",
    "load_split_images",
]

logger = logging.getLogger("medai.export")
RANDOM_AGREEMENT_IMAGES = 64


@dataclass(frozen=True)
class ExportConfig(CheckedConfig):
    """The options of ``medai export`` (see :func:`export_openvino`)."""

    model_dir: str
    int8: bool = False
    images: tuple[str, ...] | None = None

    error: ClassVar[type[MedaiError]] = ExportError

    def problems(self) -> list[str]:
        """Every option that cannot work, before the model is loaded."""
        return [] if str(self.model_dir).strip() else ["MODEL_DIR is required"]


def run_export(config: ExportConfig) -> dict:
    """Check ``config`` and export (:func:`export_openvino`); returns the card's block."""
    config.check()
    return export_openvino(config.model_dir, int8=config.int8, images=config.images)


def export_openvino(
    model_dir: str | Path,
    int8: bool = False,
    images: tuple[str, ...] | None = None,
    gate: Int8Gate | None = None,
    calibration_size: int = 300,
    validation_size: int | None = 2000,
    attempts: tuple[Int8Attempt, ...] = DEFAULT_ATTEMPTS,
    seed: int = 0,
    web: tuple[bool, str | None] = (False, None),
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
        seed: Seed of the image samples; ``web``: ``(allow_insecure_http, ca_bundle)`` (DICOMweb).

    Returns:
        The card's new ``openvino`` block.

    Raises:
        ExportError: int8 refused by its gate, NNCF missing or split images missing (then
            nothing is written).
        ModelDirError: If the directory is incomplete or ``model.keras`` was changed.
    """
    import openvino as ov

    gate = gate or Int8Gate()
    if int8:
        import_nncf()  # fail before the slow steps
    quiet_tensorflow()
    model_dir = Path(model_dir)
    loaded = load_model_dir(model_dir)
    card = loaded.card
    threshold = np.asarray(card_thresholds(card), np.float64)
    sizes = (calibration_size, validation_size)
    split = _agreement_images(model_dir, card, images, int8, sizes, seed, web)
    ov_model = _convert(loaded.model)
    reference, fp32 = _fp32_agreement(loaded.model, ov_model, split.get("val"), card, seed)
    quantized = None
    if int8:
        quantized, tried = quantize_gated(ov_model, split, reference, threshold, gate, attempts)
    block = {
        "path": IR_DIR,
        "openvino_version": ov.get_version(),
        "converted_from": card["model_id"],
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fp32": {**_write_ir(model_dir, ov_model, quantized)["fp32"], "agreement": fp32},
    }
    if quantized is not None:
        block["int8"] = _int8_block(model_dir, gate, tried, len(split["train"].images), seed)
    card[CARD_KEY] = block
    write_card(model_dir, card)
    return block


def _fp32_agreement(model, ov_model, val: LabelledImages | None, card: dict, seed: int):
    """``model.keras``'s scores of the checked images, and how far the fp32 IR's are from them.

    The validation images when there are any, else random images (no labels, no AUC).
    """
    check = val.images if val else _random_images(card, seed)
    reference = keras_scores(model, check)
    scores = ir_scores(compile_ir(ov_model), check)
    threshold = np.asarray(card_thresholds(card), np.float64)
    fp32 = measure_agreement(reference, scores, threshold, val.labels if val else None)
    fp32["on"] = "validation split" if val else f"random uint8 images (seed {seed})"
    return reference, fp32


def _convert(model):
    """The Keras model as an OpenVINO model whose output is named ``score``.

    Keras 3 models convert directly (TF 2.21, Keras 3.15): no SavedModel detour. Tracing passes
    the input as a tuple where the model names it: Keras warns, harmlessly, every time.
    """
    import openvino as ov

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The structure of `inputs` doesn't match", UserWarning)
        ov_model = ov.convert_model(model)
    ov_model.output(0).get_tensor().set_names({"score"})
    return ov_model


def _int8_block(model_dir: Path, gate: Int8Gate, tried: list[dict], images: int, seed: int):
    """The card's ``int8`` block: files, the gate and what it measured, every attempt."""
    return {
        **_written(model_dir, "int8"),
        "gate": {"accepted": True, **asdict(gate), "measured": tried[-1]["validation"]},
        "quantization": tried[-1]["attempt"],
        "attempts": tried,
        "calibration": {"split": "train", "images": int(images), "seed": seed},
        "nncf_version": _nncf_version(),
    }


def _agreement_images(
    model_dir: Path,
    card: dict,
    images: tuple[str, ...] | None,
    int8: bool,
    sizes: tuple[int, int | None],
    seed: int,
    web: tuple[bool, str | None],
) -> dict[str, LabelledImages]:
    """Training (int8 only) and validation images; an fp32 export without them uses none.

    ``sizes``: the calibration and validation sample sizes."""
    calibration_size, validation_size = sizes
    splits = ("train", "val") if int8 else ("val",)
    try:
        found = load_split_images(model_dir, card, splits, images, validation_size, seed, web)
    except ExportError:
        if int8:
            raise
        logger.info("no validation images: fp32 agreement measured on random images")
        return {}
    if int8 and len(found["train"].images) > calibration_size:
        train = found["train"]
        keep = sample_ids(train.image_ids, calibration_size, seed)
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
