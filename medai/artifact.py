"""The model directory: model.keras, model_card.json, split.csv, training_curves.png.

``model.keras`` holds the inference model only (no optimizer state), with the calibration
fitted on validation folded into its output layer, so its scores are probabilities. The card
carries everything a scorer or reviewer needs: the finding, input size and preprocessing, the
thresholds chosen on validation and the calibration (method, validation ECE and Brier before and
after), the training history and counts (unreadable images per split), versions and intended
use.
``model_id`` is the sha256 of ``model.keras``, so predictions name the exact weights they came from;
the file is saved without its save time, so the same weights get the same ``model_id``.

A multi-finding card adds ``findings`` (ordered as the model's outputs) and ``per_finding``
(each finding's threshold, threshold_sensitivity_90, val_auc, calibration, counts and class
weights); its top-level ``finding``, ``threshold`` and the like describe the first finding and
``val_auc`` is the mean, so a reader of single-finding cards still runs (on the first finding).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medai.errors import MedaiError

__all__ = [
    "MODEL_FILE",
    "CARD_FILE",
    "SPLIT_FILE",
    "CURVES_FILE",
    "INTENDED_USE",
    "ModelDirError",
    "LoadedModel",
    "file_sha256",
    "package_versions",
    "write_json",
    "save_model_dir",
    "read_card",
    "card_findings",
    "card_thresholds",
    "load_model_dir",
    "verify_model_file",
]

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
SPLIT_FILE = "split.csv"
CURVES_FILE = "training_curves.png"
INTENDED_USE = (
    "Research use only. Not a medical device and not for diagnosis or clinical decisions; "
    "scores must be reviewed by qualified radiologists."
)
PREPROCESSING = (
    "decode (PNG/JPEG, 8/16-bit, gray/RGB/RGBA) -> luminance uint8 -> resize to image_size "
    "(bilinear) -> repeat to 3 channels -> x/127.5 - 1 (InceptionV3 scaling, inside the model)"
)


class ModelDirError(MedaiError, ValueError):
    """A model directory is missing or incomplete."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model directory.

    Attributes:
        model: The Keras model.
        card: The parsed model card.
        path: The model directory.
    """

    model: Any
    card: dict
    path: Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a model's behaviour."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("medai", "ray", "tensorflow", "keras", "numpy", "pillow", "pandas", "pyarrow")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (temp file, then rename) so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def save_model_dir(model, out: str | Path, card: dict) -> dict:
    """Save the inference model and its card; returns the card completed with ``model_id``.

    Args:
        model: The trained Keras model.
        out: The model directory (created if needed).
        card: Card fields from training (finding, thresholds, history, counts, ...).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MODEL_FILE}.tmp.keras"
    model.save(tmp, include_optimizer=False)
    _make_reproducible(tmp)
    os.replace(tmp, out / MODEL_FILE)
    completed = {
        "model_id": file_sha256(out / MODEL_FILE),
        **card,
        "preprocessing": PREPROCESSING,
        "package_versions": package_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
    }
    write_json(out / CARD_FILE, completed)
    return completed


def _make_reproducible(path: Path) -> None:
    """Rewrite a ``.keras`` archive so that the same network always gives the same bytes.

    Keras stamps ``metadata.json`` (``date_saved``) and the weights' zip entry with the clock,
    and numbers the config's shared objects by memory address (``shared_object_id``), so the
    same weights saved twice hashed to two ``model_id`` values and a rerun of the same training
    scored every image again. The card keeps the time (``created_at``); the shared objects are
    numbered in order of appearance instead, which keeps which of them are one object.
    """
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    rewritten = path.with_name(path.name + ".reproducible")
    with zipfile.ZipFile(rewritten, "w") as target:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared(json.loads(data), {})).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
            target.writestr(entry, data)
    os.replace(rewritten, path)


def _renumber_shared(node: Any, numbers: dict) -> Any:
    """``node`` with each ``shared_object_id`` replaced by its order of first appearance."""
    if isinstance(node, dict):
        return {
            key: numbers.setdefault(value, len(numbers))
            if key == "shared_object_id"
            else _renumber_shared(value, numbers)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumber_shared(item, numbers) for item in node]
    return node


def read_card(model_dir: str | Path) -> dict:
    """Read and check a model card.

    Raises:
        ModelDirError: If the directory, the model file or the card is missing or unreadable.
    """
    model_dir = Path(model_dir)
    for name in (MODEL_FILE, CARD_FILE):
        if not (model_dir / name).is_file():
            raise ModelDirError(f"{model_dir} is not a model directory: {name} is missing")
    try:
        card = json.loads((model_dir / CARD_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{model_dir / CARD_FILE}: not valid JSON ({exc})") from exc
    missing = [key for key in ("model_id", "finding", "image_size", "threshold") if key not in card]
    if missing:
        raise ModelDirError(f"{model_dir / CARD_FILE}: missing fields {missing}")
    if "findings" in card:
        _check_findings(card, model_dir / CARD_FILE)
    return card


def _check_findings(card: dict, path: Path) -> None:
    """A multi-finding card: a non-empty list of distinct names, each with its threshold."""
    findings = card["findings"]
    if not isinstance(findings, list) or not findings or len(set(findings)) != len(findings):
        raise ModelDirError(f"{path}: 'findings' must be a non-empty list of distinct names")
    if findings[0] != card["finding"]:
        raise ModelDirError(f"{path}: 'finding' {card['finding']!r} is not findings[0]")
    per_finding = card.get("per_finding") or {}
    without = [f for f in findings if "threshold" not in per_finding.get(f, {})]
    if len(findings) > 1 and without:
        raise ModelDirError(f"{path}: per_finding has no threshold for {without}")


def card_findings(card: dict) -> list[str]:
    """A model's findings, ordered as its outputs (a card without ``findings`` has one)."""
    return list(card.get("findings") or [card["finding"]])


def card_thresholds(card: dict) -> list[float]:
    """Each finding's decision threshold, in :func:`card_findings` order.

    A finding's own ``per_finding[f]["threshold"]`` when the card has it, else the card's
    ``threshold`` (single-finding cards).
    """
    per_finding = card.get("per_finding") or {}
    return [
        float(per_finding.get(f, {}).get("threshold", card["threshold"]))
        for f in card_findings(card)
    ]


def verify_model_file(model_dir: str | Path, card: dict) -> None:
    """Check that ``model.keras`` still hashes to the card's ``model_id``.

    Raises:
        ModelDirError: If it does not (the file was changed, truncated or replaced).
    """
    path = Path(model_dir) / MODEL_FILE
    if file_sha256(path) != card["model_id"]:
        raise ModelDirError(f"{path} does not match model_id in the card")


def load_model_dir(model_dir: str | Path, verify: bool = True) -> LoadedModel:
    """Load a model directory for inference.

    Args:
        model_dir: Folder written by :func:`save_model_dir`.
        verify: Check that ``model.keras`` still hashes to the card's ``model_id``.

    Raises:
        ModelDirError: If the directory is incomplete or ``model.keras`` was changed.
    """
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    if verify:
        verify_model_file(model_dir, card)
    import keras  # after the checks: a wrong folder fails before TensorFlow's seconds of import

    model = keras.saving.load_model(model_dir / MODEL_FILE, compile=False)
    return LoadedModel(model=model, card=card, path=model_dir)
