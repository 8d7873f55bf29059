"""Single-image prediction with the same preprocessing, model and decision rule as the scorer."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from medai.images import ImageError, decode_image, read_bytes
from medai.thresholds import is_positive

__all__ = ["predict_image", "predict_images"]


@lru_cache(maxsize=4)
def _load(model_dir: str):
    from medai.artifact import load_model_dir
    from medai.runtime import quiet_tensorflow

    quiet_tensorflow()
    return load_model_dir(model_dir)


def predict_images(paths: list[str], model_dir: str | Path) -> list[dict]:
    """Score images one by one, in process (no Ray): for a handful of files.

    Args:
        paths: Image paths, URIs or ``ARCHIVE::MEMBER`` sources.
        model_dir: A model directory written by ``medai train``.

    Returns:
        One dict per image: ``image``, ``score`` (None on error), ``predicted``
        (:func:`medai.thresholds.is_positive`, the rule of Parquet's ``predicted``),
        ``threshold``, ``error`` (None, or the stable one-line reason).
    """
    loaded = _load(str(Path(model_dir).resolve()))
    size, threshold = loaded.card["image_size"], float(loaded.card["threshold"])
    results = []
    for path in paths:
        try:
            image = decode_image(read_bytes(str(path)), size)
        except ImageError as exc:
            results.append(
                {
                    "image": str(path),
                    "score": None,
                    "predicted": None,
                    "threshold": threshold,
                    "error": str(exc),
                }
            )
            continue
        # float32 like the scorer's output column, so both give bit-identical numbers.
        score = float(
            np.float32(np.asarray(loaded.model(image[None], training=False)).reshape(-1)[0])
        )
        results.append(
            {
                "image": str(path),
                "score": score,
                "predicted": bool(is_positive(score, threshold)),
                "threshold": threshold,
                "error": None,
            }
        )
    return results


def predict_image(path: str | Path, model_dir: str | Path) -> dict:
    """Score one image: ``{"image", "score", "predicted", "threshold", "error"}``.

    Example:
        >>> import medai
        >>> medai.predict_image("00000013_005.png", "models/mass")  # doctest: +SKIP
        {'image': '00000013_005.png', 'score': 0.91, 'predicted': True, ...}
    """
    return predict_images([str(path)], model_dir)[0]
