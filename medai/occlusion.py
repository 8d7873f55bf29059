"""Occlusion sensitivity: how far a finding's logit falls when a patch of the image is hidden.

Model agnostic (Zeiler and Fergus, 2014): a square patch, :data:`PATCH` of the image's width,
slides over the image in steps of half a patch; each position is filled from a blurred copy of
the image (:func:`blurred`, the fill the deletion curves of :mod:`medai.faithfulness` use, so
the patch hides detail without adding an edge or a dark hole the network has never seen), the
network scores every occluded copy, and each pixel's value is the mean fall of the logit over
the positions that covered it. Only falls count (a patch whose removal raises the score is not
evidence for the finding). It costs one forward pass per position: 225 per image (15 x 15
positions) at any size, against 4 forward-and-backward passes for mirror-summed Grad-CAM.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BLUR", "PATCH", "blurred", "logits", "occlusion", "positions"]

# Patch side as a fraction of the image's width (16 px at 128 px, about a lesion's diameter).
PATCH = 1 / 8
# Blur of the fill, as a fraction of the image's width: wider than a lesion, so a lesion
# filled from the blurred copy is gone, while the lung's overall brightness stays.
BLUR = 0.08
_BATCH = 64
_EPS = 1e-6


def blurred(images: np.ndarray) -> np.ndarray:
    """``images`` (``uint8 (N, S, S, 1)``) each blurred by a Gaussian of :data:`BLUR` width."""
    from scipy.ndimage import gaussian_filter

    sigma = BLUR * images.shape[1]
    smooth = gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(smooth), 0, 255).astype(np.uint8)


def logits(model, images: np.ndarray, output: int) -> np.ndarray:
    """The model's ``output`` as a logit, ``float64 (N,)``, scored in batches.

    Any model giving probabilities works; they are clipped to ``[1e-6, 1 - 1e-6]`` so a
    saturated score still moves when evidence is removed.
    """
    scores = [
        np.asarray(model(images[at : at + _BATCH], training=False))[:, output]
        for at in range(0, len(images), _BATCH)
    ]
    p = np.clip(np.concatenate(scores).astype(np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def positions(size: int) -> tuple[int, list[int]]:
    """Patch side and the top-left offsets along one axis (the last patch ends at the edge)."""
    patch = max(2, int(round(size * PATCH)))
    stride = max(1, patch // 2)
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return patch, starts


def occlusion(model, images: np.ndarray, output: int = 0) -> np.ndarray:
    """Occlusion maps ``float32 (N, S, S)`` in [0, 1] of one output.

    Args:
        model: A classifier taking ``uint8 (N, S, S, 1)`` and giving probabilities ``(N, K)``.
        images: ``uint8 (N, S, S, 1)``.
        output: Index of the finding.
    """
    size = images.shape[1]
    patch, starts = positions(size)
    grid = [(row, col) for row in starts for col in starts]
    fill = blurred(images)
    maps = np.zeros(images.shape[:3], np.float32)
    for index, (image, smooth) in enumerate(zip(images, fill, strict=True)):
        base = logits(model, image[None], output)[0]
        hidden = np.repeat(image[None], len(grid), axis=0)
        for k, (row, col) in enumerate(grid):
            window = (slice(row, row + patch), slice(col, col + patch))
            hidden[k][window] = smooth[window]
        falls = np.maximum(base - logits(model, hidden, output), 0.0)
        total = np.zeros((size, size))
        count = np.zeros((size, size))
        for fall, (row, col) in zip(falls, grid, strict=True):
            total[row : row + patch, col : col + patch] += fall
            count[row : row + patch, col : col + patch] += 1
        heat = total / np.maximum(count, 1)
        peak = heat.max()
        maps[index] = heat / peak if peak > 0 else 0.0
    return maps
