"""Deletion curves on tiny Keras models whose true dependence is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from medai.faithfulness import GRID, STEPS, deletion_aucs, deletion_curves, summarise

SIZE = 64
# The region the model looks at: rows 8-23, columns 40-55 (4 x 4 cells of the 16 x 16 grid).
REGION = (slice(8, 24), slice(40, 56))


def region_model(size: int = SIZE, region=REGION):
    """``sigmoid(0.08 * (max of the region's pixels) - 10)``: a real Keras network that
    depends on one region's brightest detail and on nothing else."""
    import keras

    inputs = keras.Input((size, size, 1), dtype="uint8")
    x = keras.layers.Rescaling(1.0)(inputs)
    rows, cols = region
    x = keras.layers.Cropping2D(((rows.start, size - rows.stop), (cols.start, size - cols.stop)))(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid")
    outputs = dense(x)
    dense.set_weights([np.full((1, 1), 0.08, np.float32), np.full(1, -10.0, np.float32)])
    return keras.Model(inputs, outputs)


def spotted_images(count: int, seed: int = 0, spots: int = 3) -> np.ndarray:
    """Textured images with small bright spots inside the region (what the model scores)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(40, 90, (count, SIZE, SIZE, 1)).astype(np.uint8)
    for image in images:
        for _ in range(spots):
            row, col = (
                rng.integers(REGION[0].start, REGION[0].stop - 3),
                rng.integers(REGION[1].start, REGION[1].stop - 3),
            )
            image[row : row + 3, col : col + 3] = 230
    return images


def region_maps(count: int, region=REGION) -> np.ndarray:
    maps = np.zeros((count, SIZE, SIZE), np.float32)
    maps[:, region[0], region[1]] = 1.0
    return maps


def test_the_true_map_deletes_faster_than_random_and_a_wrong_one_does_not():
    model = region_model()
    images = spotted_images(6)
    right, random = deletion_aucs(model, images, region_maps(6), 0, seed=1)
    wrong_region = (slice(40, 56), slice(8, 24))
    wrong, random_again = deletion_aucs(model, images, region_maps(6, wrong_region), 0, seed=1)
    # The region is 16 of 256 cells: removing it first takes the score away in the first step.
    assert (right < random).all() and right.mean() < 0.5 * random.mean()
    # A map of another region removes nothing the score depends on before random order does.
    assert wrong.mean() >= random_again.mean()
    np.testing.assert_allclose(random, random_again)


def test_deletion_curve_starts_at_the_score_and_ends_at_the_blurred_image():
    from medai.occlusion import blurred

    model = region_model()
    images = spotted_images(3, seed=2)
    orders = np.tile(np.arange(GRID * GRID), (3, 1))
    curves = deletion_curves(model, images, orders, 0)
    assert curves.shape == (3, STEPS + 1)
    np.testing.assert_allclose(curves[:, 0], np.asarray(model(images))[:, 0], rtol=1e-5)
    np.testing.assert_allclose(curves[:, -1], np.asarray(model(blurred(images)))[:, 0], rtol=1e-5)
    assert (curves[:, 0] > 0.9).all() and (curves[:, -1] < 0.1).all()


def test_summary_says_whether_the_map_beats_random():
    """Better than random takes more than a lower mean: most images, paired."""
    entry = summarise(np.array([0.1, 0.5]), np.array([0.4, 0.4]), "occlusion")
    assert entry["n"] == 2 and entry["method"] == "occlusion"
    assert entry["deletion_auc"] == pytest.approx(0.3) and not entry["better_than_random"]
    assert entry["images_below_random"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    random = rng.uniform(0.4, 0.6, 30)
    assert summarise(random - 0.1, random, "gradcam")["better_than_random"]
    noise = summarise(random + rng.normal(0, 0.01, 30), random, "gradcam")
    assert not noise["better_than_random"] and noise["p_value"] > 0.05
    empty = summarise(np.zeros(0), np.zeros(0), "gradcam")
    assert empty["deletion_auc"] is None and empty["n"] == 0


def test_an_image_gets_the_same_aucs_in_any_batch():
    model = region_model()
    images = spotted_images(4, seed=6)
    maps = np.random.default_rng(7).random((4, SIZE, SIZE)).astype(np.float32)
    deletion, random = deletion_aucs(model, images, maps, 0)
    order = [2, 0, 3, 1]
    again, random_again = deletion_aucs(model, images[order], maps[order], 0)
    np.testing.assert_allclose(again, deletion[order], rtol=1e-5)
    np.testing.assert_allclose(random_again, random[order], rtol=1e-5)


def test_faithfulness_measures_at_most_the_limit_spread_over_the_images():
    from medai.faithfulness import faithfulness

    model = region_model()
    images = spotted_images(5, seed=8)
    entry = faithfulness(model, images, region_maps(5), 0, "gradcam", limit=3)
    deletion, random = deletion_aucs(model, images[[0, 2, 4]], region_maps(3), 0)
    assert entry["n"] == 3 and entry["deletion_auc"] == pytest.approx(deletion.mean(), rel=1e-5)
