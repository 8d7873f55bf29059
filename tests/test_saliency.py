"""Grad-CAM heatmaps and the pointing-game geometry."""

from __future__ import annotations

import numpy as np
import pytest

from medai.saliency import (
    BLOCK,
    FALLBACK_BLOCK,
    MIN_GRID,
    Box,
    cell_centres,
    choose_block,
    gradcam,
    overlay,
    pointing_hit,
)


def test_block_choice_keeps_a_usable_grid(tiny_model_dir):
    from medai.artifact import load_model_dir
    from medai.model import ModelSpec, build_model

    model = load_model_dir(tiny_model_dir).model  # 75 px: mixed0-2 are 7x7, mixed3+ 3x3 or less
    base = model.get_layer("inception_v3")
    assert base.get_layer(BLOCK).output.shape[1] == 3 < MIN_GRID
    assert choose_block(model) == FALLBACK_BLOCK == "mixed2"
    model = build_model(ModelSpec(128, "gap", "none"))
    assert model.get_layer("inception_v3").get_layer(BLOCK).output.shape[1] == 6 == MIN_GRID
    assert choose_block(model) == BLOCK == "mixed5"


def test_heatmaps_are_normalised_and_finite(tiny_model_dir):
    from medai.artifact import load_model_dir

    model = load_model_dir(tiny_model_dir).model
    images = np.random.default_rng(0).integers(0, 255, (3, 75, 75, 1), dtype=np.uint8)
    maps = gradcam(model, images)
    assert maps.shape == (3, 75, 75) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert overlay(images[0], maps[0]).shape == (75, 75, 3)


def _mirror(array: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    array = array[:, ::-1] if rows else array
    return np.ascontiguousarray(array[:, :, ::-1] if cols else array)


def test_mirrored_heatmaps_follow_the_image_when_it_is_flipped(tiny_model_dir):
    """Summed over the image's mirror images, a heatmap no longer carries the direction in which
    the network's features sit off the object they detect: flipping the input flips the map.
    The image's own Grad-CAM alone does not have that symmetry (the check can fail)."""
    from medai.artifact import load_model_dir
    from medai.saliency import MIRRORS

    model = load_model_dir(tiny_model_dir).model
    images = np.random.default_rng(1).integers(0, 255, (2, 75, 75, 1), dtype=np.uint8)
    mirrored, single = gradcam(model, images), gradcam(model, images, mirrored=False)
    assert len(MIRRORS) == 4 and single.max() == 1.0
    for rows, cols in MIRRORS[1:]:
        flipped = _mirror(images, rows, cols)
        back = _mirror(gradcam(model, flipped), rows, cols)
        np.testing.assert_allclose(back, mirrored, atol=1e-4)
        back = _mirror(gradcam(model, flipped, mirrored=False), rows, cols)
        assert np.abs(back - single).max() > 0.05


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


def _support_centre(model, inputs, cell: int) -> float:
    """Centre of the rows of ``inputs`` that the output cell (``cell``, ``cell``) depends on."""
    import tensorflow as tf

    x = tf.convert_to_tensor(inputs)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = tf.reduce_sum(model(x, training=False)[0, cell, cell, :])
    rows = np.nonzero(np.abs(tape.gradient(value, x).numpy()[0]).sum(axis=(1, 2)))[0]
    return (rows.min() + rows.max()) / 2


@pytest.fixture(scope="module")
def base_299():
    """An untrained InceptionV3 base at 299 px, where the fields of every block fit."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.InceptionV3(
        include_top=False, weights=None, input_shape=(299, 299, 3)
    )


def test_cell_centres_are_the_receptive_field_centres(base_299):
    """Each cell's heatmap value is placed where its receptive field is centred.

    At 299 px the receptive fields of mixed0-mixed3 cells fit inside the image, so the centre
    of their gradient support is measured on the input. Deeper fields overflow any test image:
    mixed4-7 keep mixed3's grid (stride 1, same padding), and mixed8's reduction is measured
    on mixed7's grid (mixed9-10 keep mixed8's).
    """
    import keras

    rng = np.random.default_rng(0)
    base = base_299
    image = rng.uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32)
    for block in ("mixed0", "mixed2", "mixed3"):
        cells = base.get_layer(block).output.shape[1]
        probe = keras.Model(base.input, base.get_layer(block).output)
        for cell in (cells // 2 - 3, cells // 2, cells // 2 + 3):  # fields clear of the edges
            assert _support_centre(probe, image, cell) == cell_centres(block, cells)[cell]
    for block in ("mixed4", "mixed7"):
        assert base.get_layer(block).output.shape[1] == base.get_layer("mixed3").output.shape[1]
    mixed7 = base.get_layer("mixed7").output
    reduction = keras.Model(mixed7, base.get_layer("mixed8").output)
    maps = rng.uniform(0, 1, (1, *mixed7.shape[1:])).astype(np.float32)
    coarse, fine = cell_centres("mixed8", 8), cell_centres("mixed7", 17)
    for cell in (2, 3, 4):  # their fields (9 cells of mixed7) fit inside its 17
        assert fine[int(_support_centre(reduction, maps, cell))] == coarse[cell]


def test_heatmap_peaks_on_the_cell_centre():
    """One hot cell puts the heatmap's maximum on that cell's receptive-field centre, falling
    to exp(-1/2) of it one effective-field width (18 px at mixed2) away."""
    from medai.saliency import place_cells

    cam = np.zeros((1, 13, 13))
    cam[0, 2, 9] = 1.0
    heat = place_cells(cam, "mixed2", (128, 128))[0]
    row, col = 8 * 2 + 13, 8 * 9 + 13
    assert np.unravel_index(np.argmax(heat), heat.shape) == (row, col)
    assert heat[row, col - 18] == pytest.approx(np.exp(-0.5) * heat[row, col])


def test_a_ring_of_cells_peaks_at_its_centre():
    """A lesion's rim lights a ring of cells around it; the heatmap's maximum is the centre."""
    from medai.saliency import place_cells

    cam = np.zeros((1, 13, 13))
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)):
        cam[0, 6 + dr, 4 + dc] = 1.0
    heat = place_cells(cam, "mixed2", (128, 128))[0]
    assert np.unravel_index(np.argmax(heat), heat.shape) == (8 * 6 + 13, 8 * 4 + 13)


@pytest.mark.parametrize("block", ["mixed0", "mixed2", "mixed3"])
def test_field_widths_are_the_measured_effective_fields(base_299, block):
    """The Gaussian width of each block is the spatial standard deviation of a central cell's
    mean input gradient on an untrained InceptionV3 at 299 px (Luo et al., 2016)."""
    import keras
    import tensorflow as tf

    from medai.saliency import _ERF_SIGMA

    probe = keras.Model(base_299.input, base_299.get_layer(block).output)
    x = tf.convert_to_tensor(
        np.random.default_rng(0).uniform(-1, 1, (4, 299, 299, 3)).astype(np.float32)
    )
    with tf.GradientTape() as tape:
        tape.watch(x)
        maps = probe(x, training=False)
        centre = maps.shape[1] // 2
        value = tf.reduce_sum(maps[:, centre, centre, :])
    weight = np.abs(tape.gradient(value, x).numpy()).sum(axis=(0, 3))
    rows = weight.sum(axis=1) / weight.sum()
    pixels = np.arange(299)
    spread = np.sqrt((rows * (pixels - (rows * pixels).sum()) ** 2).sum())
    print(f"{block}: measured {spread:.1f} px, table {_ERF_SIGMA[block]}")
    assert spread == pytest.approx(_ERF_SIGMA[block], rel=0.15)


def test_every_method_gives_normalised_maps_and_hirescam_is_not_gradcam(tiny_model_dir):
    """HiResCAM weights each cell by its own gradient: on an untrained network its map differs
    from Grad-CAM's spatially averaged weighting (the check fails if the weighting is ignored)."""
    from medai.artifact import load_model_dir
    from medai.saliency import METHODS, heatmaps

    model = load_model_dir(tiny_model_dir).model
    images = np.random.default_rng(2).integers(0, 255, (2, 75, 75, 1), dtype=np.uint8)
    maps = {method: heatmaps(model, images, 0, method) for method in METHODS}
    for heat in maps.values():
        assert heat.shape == (2, 75, 75) and heat.dtype == np.float32
        assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    np.testing.assert_array_equal(maps["gradcam"], gradcam(model, images))
    assert np.abs(maps["hirescam"] - maps["gradcam"]).max() > 0.05


def test_unknown_method_is_named(tiny_model_dir):
    from medai.saliency import SaliencyError, load_explainer

    with pytest.raises(SaliencyError, match="--saliency must be one of gradcam, hirescam, occl"):
        load_explainer(tiny_model_dir, "lime")
