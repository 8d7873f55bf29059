"""The model directory's network: saving ``model.keras`` with its card, loading and verifying it.

The card and split.csv themselves are :mod:`medai.card`'s (their names are re-exported here).
``model.keras`` holds the inference model only (no optimizer state), with the calibration
fitted on validation folded into its output layer, so its scores are probabilities. The card
carries everything a scorer or reviewer needs: the finding, input size and preprocessing, the
thresholds chosen on validation and the calibration (method, validation ECE and Brier before and
after), the training history and counts (unreadable images per split), versions and intended
use.
``model_id`` is the sha256 of ``model.keras``, so predictions name the exact weights they came from;
the file is saved without its save time, so the same weights get the same ``model_id``.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medai.card import (
    CARD_FILE,
    CURVES_FILE,
    INTENDED_USE,
    MODEL_FILE,
    PREPROCESSING,
    SPLIT_FILE,
    ModelDirError,
    card_findings,
    card_thresholds,
    read_card,
    write_card,
)
from medai.files import file_sha256, write_json

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
    write_card(out, completed)
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
