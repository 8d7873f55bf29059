"""Phantoms with distractors: lesions next to effusion haze and enlarged hearts, AP views."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from medai.phantoms import DISTRACTORS, SIGNS, PhantomSpec, draw_phantom, write_phantom_archive


def _detail(pixels: np.ndarray) -> tuple[float, float]:
    """(contrast, pixel noise): the std of a blurred copy, and of the difference between
    horizontal neighbours over root 2 (ribs run horizontally and the textures are smooth, so
    that difference is mostly the pixel noise)."""
    from scipy.ndimage import gaussian_filter

    image = pixels.astype(np.float64)
    return float(gaussian_filter(image, 3).std()), float(np.diff(image, axis=1).std() / 2**0.5)


def test_ap_views_are_fainter_and_noisier():
    spec = replace(DISTRACTORS, size=128)
    for seed in range(4):
        signs = frozenset({"Effusion"})
        pa = draw_phantom(np.random.default_rng(seed), 128, True, spec, signs)
        ap = draw_phantom(np.random.default_rng(seed), 128, True, spec, signs, ap=True)
        assert ap.lesion_box == pa.lesion_box
        (pa_contrast, pa_noise), (ap_contrast, ap_noise) = _detail(pa.pixels), _detail(ap.pixels)
        assert ap_contrast < 0.85 * pa_contrast and ap_noise > 1.2 * pa_noise


def test_lesions_spread_down_to_the_base_and_the_heart():
    """With the default spread a lesion stays in the middle of its lung (centre above 0.7 of
    the height); the distractor phantoms' lesions also reach the base, where the effusion haze
    and the heart's shadow lie."""
    signs = frozenset(SIGNS)

    def centres(spec):
        boxes = [
            draw_phantom(np.random.default_rng(seed), 128, True, spec, signs).lesion_box
            for seed in range(40)
        ]
        return np.array([(y + h / 2) / 128 for _, y, _, h in boxes])

    plain = PhantomSpec(size=128, findings=SIGNS, lesion_profile="sphere")
    assert centres(plain).max() < 0.7 < centres(replace(plain, lesion_spread=0.75)).max()


def test_distractor_archive_writes_ap_views_and_mass_boxes(tmp_path):
    spec = replace(DISTRACTORS, n_patients=40, size=64, seed=5)
    write_phantom_archive(tmp_path, spec)
    labels = pd.read_csv(tmp_path / "Data_Entry_2017.csv", index_col=False)
    views = labels["View Position"].value_counts()
    assert set(views.index) == {"AP", "PA"} and 0.15 < views["AP"] / len(labels) < 0.6
    from medai.boxes import read_boxes

    boxes = read_boxes(tmp_path / "BBox_List_2017.csv")
    masses = labels["Finding Labels"].str.contains("Mass")
    assert set(boxes["image_id"]) == set(labels.loc[masses, "Image Index"])
    # Masses come with the distractor findings on some images.
    together = labels.loc[masses, "Finding Labels"]
    assert together.str.contains("Effusion").any() and together.str.contains("Cardiomegaly").any()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"lesion_spread": 0.9}, "lesion_spread must be in"), ({"ap_fraction": 1.5}, "ap_fraction")],
)
def test_bad_distractor_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PhantomSpec(**options)
