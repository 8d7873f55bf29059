"""Platt scaling: the maximum-likelihood fit, finite on separable data, folded exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from medai.calibration import (
    Platt,
    calibrate_output,
    calibration_block,
    fit_platt,
    fold_platt,
    head_inputs_model,
    output_logits,
    rejection_reason,
)


def test_platt_is_the_unregularised_logistic_fit():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 400)
    labels = (rng.random(400) < expit(0.5 * logits + 0.3)).astype(int)
    platt = fit_platt(logits, labels)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000)
    reference.fit(logits.reshape(-1, 1), labels)
    assert platt.a == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert platt.b == pytest.approx(reference.intercept_[0], rel=1e-4, abs=1e-5)

    # The maximum-likelihood fit never raises the log loss over the identity (a=1, b=0).
    def log_loss(p):
        return -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    assert log_loss(platt.apply(logits)) <= log_loss(expit(logits))


def test_platt_stays_finite_when_validation_is_separable():
    logits = np.r_[np.linspace(-6, -0.5, 40), np.linspace(0.5, 6, 40)]
    labels = np.r_[np.zeros(40), np.ones(40)]
    platt = fit_platt(logits, labels)
    # On hard labels the likelihood has no maximum: the slope runs off as far as the
    # optimiser's tolerance lets it, and every score becomes 0 or 1.
    hard = LogisticRegression(C=np.inf, max_iter=200).fit(logits.reshape(-1, 1), labels)
    assert hard.coef_[0, 0] > 10
    assert 0 < platt.a < 5 and 0.5 < platt.apply([0.5])[0] < 0.9


def test_platt_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        fit_platt([0.1, 0.2], [1, 1])


def test_folding_into_the_output_layer_is_exact():
    import keras

    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(75, "gap", "none"))
    images = np.random.default_rng(1).integers(0, 256, (6, 75, 75, 1), dtype=np.uint8)
    logits = output_logits(model, head_inputs_model(model)(images, training=False))
    platt = Platt(a=2.7, b=-0.8)
    fold_platt(model, platt)
    folded = np.asarray(model(images, training=False), dtype=np.float64).ravel()
    np.testing.assert_allclose(folded, expit(2.7 * logits - 0.8), atol=1e-5)
    # Still plain Keras: the folded model saves and loads without custom objects.
    assert model.get_layer("score").get_config()["activation"] == "sigmoid"


def test_calibration_block_reports_before_and_after():
    labels = np.array([0, 0, 1, 1])
    before, after = [0.4, 0.6, 0.4, 0.6], [0.05, 0.05, 0.95, 0.95]
    block = calibration_block(Platt(1.0, 0.0), labels, before, after)
    assert block["method"] == "platt" and block["fitted_on"] == "validation" and block["n"] == 4
    assert block["val_ece_before"] == pytest.approx(0.1)
    assert block["val_ece_after"] == pytest.approx(0.05)
    assert block["val_brier_after"] == pytest.approx(0.05**2)


def test_a_scaling_that_worsens_validation_numbers_is_not_applied():
    block = {
        "val_ece_before": 0.05,
        "val_ece_after": 0.07,
        "val_brier_before": 0.05,
        "val_brier_after": 0.04,
    }
    assert "ECE 0.0500 -> 0.0700" in rejection_reason(Platt(0.6, 0.3), block)
    assert "reverse" in rejection_reason(Platt(-0.5, 0.0), {**block, "val_ece_after": 0.01})
    assert rejection_reason(Platt(0.6, 0.3), {**block, "val_ece_after": 0.04}) is None


def test_calibrate_output_folds_or_keeps_the_model():
    import keras

    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(75, "gap", "none"))
    rng = np.random.default_rng(2)
    features = np.asarray(
        head_inputs_model(model)(rng.integers(0, 256, (64, 75, 75, 1), dtype=np.uint8)),
        np.float32,
    )
    logits = output_logits(model, features)
    # An untrained model's logits barely spread; labels that follow them closely make a
    # model that ranks well but whose scores sit near one value: Platt must stretch them.
    z = (logits - logits.mean()) / logits.std()
    labels = (rng.random(64) < expit(4 * z)).astype(int)
    original = model.get_layer("score").get_weights()
    before, after, block = calibrate_output(model, features, labels)
    assert block["method"] == "platt" and block["a"] > 0, block
    # The fitted slope is about 1.2e5 here (untrained logits barely spread), and the folded
    # kernel a * w rounds in float32: an AVX2 CPU's kernels came 1.3e-5 from the float64
    # reference, an AVX-512 CPU's within 1e-5.
    np.testing.assert_allclose(after, expit(block["a"] * logits + block["b"]), atol=5e-5)
    assert block["val_ece_after"] < block["val_ece_before"]
    assert block["val_brier_after"] < block["val_brier_before"]
    # Labels against the ranking: the fit would reverse it and is rejected, model untouched.
    model.get_layer("score").set_weights(original)
    kept_before, kept, rejected = calibrate_output(model, features, 1 - labels)
    assert rejected["method"] == "none" and "reverse" in rejected["reason"]
    np.testing.assert_array_equal(kept, kept_before)
    folded = model.get_layer("score").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(folded, original, strict=True))


def test_each_output_of_a_multi_finding_model_is_folded_on_its_own():
    import keras

    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(75, "gap", "none", n_outputs=3))
    images = np.random.default_rng(3).integers(0, 256, (6, 75, 75, 1), dtype=np.uint8)
    features = head_inputs_model(model)(images, training=False)
    unfolded = np.asarray(model(images, training=False), np.float64)
    assert unfolded.shape == (6, 3)
    logits = output_logits(model, features, column=1)
    np.testing.assert_allclose(expit(logits), unfolded[:, 1], atol=1e-5)
    fold_platt(model, Platt(a=2.7, b=-0.8), column=1)
    folded = np.asarray(model(images, training=False), np.float64)
    np.testing.assert_allclose(folded[:, 1], expit(2.7 * logits - 0.8), atol=1e-5)
    # The other findings' outputs are exactly as they were.
    np.testing.assert_array_equal(folded[:, [0, 2]], unfolded[:, [0, 2]])
