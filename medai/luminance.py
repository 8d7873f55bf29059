"""Luminance: every decoded image brought to the model's one 8-bit grey channel and its size.

Shared by every format (PNG, JPEG, DICOM): colour and alpha collapsed to luminance, 16-bit and
float images scaled by their peak, and :func:`resize_luminance`, the one resizing step, so that
the same pixels give the same model input whatever file held them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HIGH_DEPTH_MODES", "high_depth_to_luminance", "to_luminance", "resize_luminance"]


def resize_luminance(image, size: int) -> np.ndarray:
    """An 8-bit luminance PIL image resized to the model's input, ``uint8 (size, size, 1)``.

    The one resizing step of every format (PNG, JPEG, DICOM): a cheap box-filter ``reduce``
    while the image is over twice the size, then bilinear.
    """
    from PIL import Image

    factor = min(image.width, image.height) // (2 * size)
    if factor >= 2:
        image = image.reduce(factor)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(size, size, 1)


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def high_depth_to_luminance(image, size: int):
    """16-bit, 32-bit integer or float image -> 8-bit ``L`` of ``(size, size)``, scaled by its peak.

    The peak comes from PIL's extrema (no copy) and the image is resized in its own mode before
    scaling, so only the small image is ever converted to floats.
    """
    from PIL import Image

    if image.mode not in ("I;16", "I", "F"):
        image = image.convert("I")  # rare byte orders: a 32-bit integer copy, still no float64
    peak = float(image.getextrema()[1])
    small = image.resize((size, size), Image.Resampling.BILINEAR)
    scaled = np.asarray(small, dtype=np.float32) * np.float32(255.0 / (peak if peak > 0 else 1.0))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def to_luminance(image):
    """Convert any 8-bit PIL mode to 8-bit luminance ``L``."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L")
