"""Occlusion sensitivity on a tiny Keras model whose dependence is known by construction."""

from __future__ import annotations

import numpy as np
from test_faithfulness import REGION, SIZE, region_model, spotted_images

from medai.occlusion import blurred, occlusion, positions


def test_patches_cover_the_image_to_its_edge():
    for size in (64, 96, 128, 256):
        patch, starts = positions(size)
        assert patch == round(size / 8) and starts[0] == 0 and starts[-1] + patch == size
        assert all(b - a <= patch // 2 for a, b in zip(starts, starts[1:], strict=False))


def test_occlusion_map_lies_on_what_the_score_depends_on():
    """One bright spot in the region: hiding it drops the score. (With several spots, no one
    patch moves a max-pooling model's score: occlusion misses redundant evidence.)"""
    model = region_model()
    images = spotted_images(3, seed=4, spots=1)
    maps = occlusion(model, images, 0)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isclose(maps.max(axis=(1, 2)), 1.0).all() and maps.min() >= 0.0
    inside = np.zeros((SIZE, SIZE), bool)
    inside[REGION] = True
    for heat in maps:
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        assert inside[row, col]
        # Nothing outside the region's reach (a patch overlapping it) moves the score.
        reach = np.zeros((SIZE, SIZE), bool)
        reach[
            REGION[0].start - 8 : REGION[0].stop + 8, REGION[1].start - 8 : REGION[1].stop + 8
        ] = 1
        assert heat[~reach].max() == 0.0


def test_blur_keeps_brightness_and_removes_detail():
    images = spotted_images(2, seed=5)
    smooth = blurred(images)
    assert smooth.dtype == np.uint8 and smooth.shape == images.shape
    assert abs(float(smooth.mean()) - float(images.mean())) < 2.0
    assert smooth[:, REGION[0], REGION[1]].max() < 150 < images[:, REGION[0], REGION[1]].max()
