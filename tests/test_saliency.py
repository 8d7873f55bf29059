"""Grad-CAM heatmaps and the pointing-game geometry."""

from __future__ import annotations

import numpy as np
import pytest

from medai.saliency import MIN_GRID, Box, choose_block, gradcam, overlay, pointing_hit


def test_block_choice_keeps_a_usable_grid(tiny_model_dir):
    from medai.artifact import load_model_dir

    model = load_model_dir(tiny_model_dir).model  # 75 px: mixed3+ are 3x3 or smaller
    block = choose_block(model)
    grid = model.get_layer("inception_v3").get_layer(block).output.shape[1]
    assert block == "mixed2" and grid >= MIN_GRID


def test_heatmaps_are_normalised_and_finite(tiny_model_dir):
    from medai.artifact import load_model_dir

    model = load_model_dir(tiny_model_dir).model
    images = np.random.default_rng(0).integers(0, 255, (3, 75, 75, 1), dtype=np.uint8)
    maps = gradcam(model, images)
    assert maps.shape == (3, 75, 75) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert overlay(images[0], maps[0]).shape == (75, 75, 3)


def test_pointing_hit_uses_original_coordinates():
    heat = np.zeros((8, 8), np.float32)
    heat[1, 6] = 1.0  # centre of that cell at (6.5, 1.5) of 8 -> (832, 192) of 1024
    assert pointing_hit(heat, Box(800, 150, 60, 60), (1024, 1024))
    assert not pointing_hit(heat, Box(100, 150, 60, 60), (1024, 1024))


def test_output_index_is_checked(tiny_model_dir):
    from medai.artifact import load_model_dir

    model = load_model_dir(tiny_model_dir).model
    with pytest.raises(ValueError, match="out of range: the model has 1 output"):
        gradcam(model, np.zeros((1, 75, 75, 1), np.uint8), output=1)
