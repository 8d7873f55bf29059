"""Training-only augmentation: one random affine warp per image, resampled once.

Each image gets a small rotation (up to :data:`ROTATION` of a turn), a zoom (``1 +- ZOOM``),
a shear (``+- SHEAR``) and a shift (``+- SHIFT`` of the side), composed into a single affine
transform about the image centre and applied with one bilinear resample; corners that fall
outside the image are filled with black, as on a collimated radiograph.

One resample, not one per transform: a chain of Keras' random layers (rotation, translation,
zoom, shear) resamples four times, and four bilinear passes low-pass filter the image (the
grain of a noise image keeps 0.35 of its standard deviation, against 0.67 after one warp),
at three times the cost. Trained with that chain on the seed-0 archive of phantoms with
distractors (``medai.phantoms.DISTRACTORS``), ``medai train`` did not learn the small Mass
lesions (validation AUC 0.47 after 12 epochs, 0.53 after 24) while it learnt the large
findings; with the single warp, everything else the same, it reached 0.93 after 12 epochs
(README, Limitations; ``benchmarks/augmentation.py`` compares the two in one process).
"""

from __future__ import annotations

import math

__all__ = ["ROTATION", "SHEAR", "SHIFT", "ZOOM", "Augmenter", "build_augmenter", "description"]

ROTATION = 0.03  # fraction of a full turn, either way (about 11 degrees)
ZOOM = 0.1
SHEAR = 0.05
SHIFT = 0.05


class Augmenter:
    """``augmenter(images, training=True)``: each image of a float ``(B, H, W, C)`` batch warped.

    Draws come from a Keras ``SeedGenerator``, so they advance inside a ``tf.function`` and a
    fresh augmenter with the same seed repeats its draws. With ``training=False`` the images
    are returned unchanged.
    """

    def __init__(self, seed: int | None = None):
        import keras

        self._seed = keras.random.SeedGenerator(seed)

    def __call__(self, images, training: bool = True):
        import keras

        if not training:
            return images
        return keras.ops.image.affine_transform(
            images,
            self.transforms(keras.ops.shape(images)),
            interpolation="bilinear",
            fill_mode="constant",
            fill_value=0.0,
        )

    def transforms(self, shape):
        """One affine transform per image, in Keras' 8-vector form (output -> input pixel)."""
        import keras
        from keras import ops

        n, height, width = shape[0], shape[1], shape[2]

        def uniform(limit: float):
            return keras.random.uniform((n,), -limit, limit, seed=self._seed)

        angle = uniform(ROTATION * 2.0 * math.pi)
        zoom = 1.0 + uniform(ZOOM)
        shear = uniform(SHEAR)
        shift_x = uniform(SHIFT) * ops.cast(width, "float32")
        shift_y = uniform(SHIFT) * ops.cast(height, "float32")
        # input = zoom * [[cos, -sin + shear], [sin, cos]] @ (output - centre) + centre + shift
        cos, sin = ops.cos(angle) * zoom, ops.sin(angle) * zoom
        a0, a1, b0, b1 = cos, -sin + shear * zoom, sin, cos
        cx = (ops.cast(width, "float32") - 1.0) / 2.0
        cy = (ops.cast(height, "float32") - 1.0) / 2.0
        a2 = cx - a0 * cx - a1 * cy + shift_x
        b2 = cy - b0 * cx - b1 * cy + shift_y
        zero = ops.zeros_like(a0)
        return ops.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)


def build_augmenter(seed: int | None = None) -> Augmenter:
    """The training augmentation of one worker (seed it per rank)."""
    return Augmenter(seed)


def description() -> str:
    """The augmentation in words, for the model card."""
    return (
        f"one affine warp per image, resampled once (bilinear): rotation {ROTATION} turn, "
        f"shift {SHIFT:.0%}, zoom {ZOOM:.0%}, shear {SHEAR} (training only, seeded per worker)"
    )
