"""Platt scaling of the model's logits, fitted on validation and folded into the output layer.

The network ends in ``Dense(K, sigmoid)`` (the layer named ``score``, one unit per finding):
output ``k`` is ``p = sigmoid(w.x + c)`` with ``w`` the kernel's column ``k``.
Platt scaling replaces the logit ``z = w.x + c`` by ``a * z + b`` with ``a`` and ``b`` fitted by
logistic regression on the validation split. Because ``a * (w.x + c) + b = (a w).x + (a c + b)``
the calibrated model is the same architecture with a rescaled last layer (each finding's column
with its own ``a`` and ``b``, fitted on the validation images evaluated for that finding):
``model.keras`` stays
plain Keras and every scorer (Keras, OpenVINO, ``medai predict``) gets calibrated probabilities
without knowing calibration exists.

``a`` and ``b`` are the maximum-likelihood fit, so the validation log loss can only go down
(``a = 1, b = 0`` is among the candidates). When the logit separates the validation classes
perfectly the maximum does not exist (``a`` grows without bound); Platt's smoothed targets
(positives ``(N+ + 1) / (N+ + 2)``, negatives ``1 / (N- + 2)``) then keep the fit finite.

The card also reports ECE and Brier score, which the fit does not minimise: on a small
validation split (ten-bin ECE over ~60 images) a fit can lower the log loss yet raise one of
them. :func:`rejection_reason` then keeps the model's own scores, so the card never shows a
calibration that made its own validation numbers worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medai.card import ECE_BINS

__all__ = [
    "OUTPUT_LAYER",
    "METHOD",
    "Platt",
    "fit_platt",
    "fold_platt",
    "head_inputs_model",
    "output_logits",
    "calibration_block",
    "rejection_reason",
    "calibrate_output",
    "IDENTITY",
    "calibrate_best",
]

OUTPUT_LAYER = "score"
METHOD = "platt"


@dataclass(frozen=True)
class Platt:
    """A fitted Platt scaling ``sigmoid(a * logit + b)``.

    Attributes:
        a: Slope on the logit (positive for a model that ranks positives higher).
        b: Offset on the logit.
    """

    a: float
    b: float

    def apply(self, logits) -> np.ndarray:
        """Calibrated probabilities of the given logits (float64)."""
        from scipy.special import expit

        return expit(self.a * np.asarray(logits, dtype=np.float64) + self.b)


IDENTITY = Platt(a=1.0, b=0.0)


def fit_platt(logits, labels) -> Platt:
    """Fit Platt scaling by unregularised logistic regression of the labels on the logit.

    Smoothed targets replace the labels only when the logit separates the classes.

    Args:
        logits: The model's pre-sigmoid outputs on the validation split.
        labels: 0/1 labels of the same images; both classes must be present.

    Raises:
        ValueError: With only one class or no rows.
    """
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(logits, dtype=np.float64).reshape(-1, 1)
    y = np.asarray(labels).astype(bool).ravel()
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"Platt scaling needs both classes ({positives} positive, {negatives} negative)"
        )
    separable = z[y].min() > z[~y].max() or z[y].max() < z[~y].min()
    if separable:
        target = np.where(y, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))
    else:
        target = y.astype(np.float64)
    # Targets as two weighted copies of every row: the weighted cross-entropy is exactly the
    # (soft-target) likelihood, and C=inf turns off sklearn's regularisation.
    x = np.vstack([z, z])
    classes = np.r_[np.ones(len(z)), np.zeros(len(z))]
    weights = np.r_[target, 1.0 - target]
    fitted = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(
        x, classes, sample_weight=weights
    )
    return Platt(a=float(fitted.coef_[0, 0]), b=float(fitted.intercept_[0]))


def fold_platt(model, platt: Platt, layer: str = OUTPUT_LAYER, column: int = 0) -> None:
    """Rescale one output unit in place so that it outputs ``sigmoid(a * logit + b)``.

    Args:
        model: A Keras model whose ``layer`` is ``Dense(K, sigmoid)``.
        platt: The fitted scaling.
        layer: Name of the output layer.
        column: The output unit (finding) to rescale; the others are untouched.
    """
    dense = model.get_layer(layer)
    kernel, bias = dense.get_weights()
    kernel64, bias64 = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    kernel64[:, column] *= platt.a
    bias64[column] = bias64[column] * platt.a + platt.b
    # Only the rescaled column changes, bit for bit: the others are copied back as they were.
    new_kernel, new_bias = kernel.copy(), bias.copy()
    new_kernel[:, column] = kernel64[:, column].astype(kernel.dtype)
    new_bias[column] = bias64[column].astype(bias.dtype)
    dense.set_weights([new_kernel, new_bias])


def head_inputs_model(model, layer: str = OUTPUT_LAYER):
    """A model sharing ``model``'s layers that outputs the input of the output layer."""
    import keras

    return keras.Model(model.inputs, model.get_layer(layer).input, name="head_inputs")


def output_logits(model, features, layer: str = OUTPUT_LAYER, column: int = 0) -> np.ndarray:
    """One output unit's logit ``w.x + c`` of the given head inputs, in float64 (1-D)."""
    kernel, bias = model.get_layer(layer).get_weights()
    features = np.asarray(features, dtype=np.float64)
    kernel = np.asarray(kernel, np.float64)[:, column]
    return features @ kernel + float(np.asarray(bias, np.float64)[column])


def calibration_block(platt: Platt, labels, before, after) -> dict:
    """The model card's ``calibration`` entry: method, parameters, ECE and Brier before/after.

    Args:
        platt: The fitted scaling.
        labels: Validation labels.
        before: Validation probabilities of the uncalibrated model.
        after: Validation probabilities of the calibrated model.
    """
    from medai.metrics import brier_score, expected_calibration_error

    return {
        "method": METHOD,
        "a": platt.a,
        "b": platt.b,
        "fitted_on": "validation",
        "n": int(np.asarray(labels).size),
        "ece_bins": ECE_BINS,
        "val_ece_before": expected_calibration_error(labels, before, n_bins=ECE_BINS),
        "val_ece_after": expected_calibration_error(labels, after, n_bins=ECE_BINS),
        "val_brier_before": brier_score(labels, before),
        "val_brier_after": brier_score(labels, after),
    }


def rejection_reason(platt: Platt, block: dict) -> str | None:
    """Why a fitted scaling must not be applied, or ``None`` to apply it.

    Args:
        platt: The fitted scaling.
        block: Its :func:`calibration_block` on validation.
    """
    if platt.a <= 0:
        return (
            f"Platt slope {platt.a:.3g} <= 0: the model does not rank validation positives "
            "above negatives, and scaling would reverse its ranking"
        )
    worse = [
        f"{name} {block[f'val_{key}_before']:.4f} -> {block[f'val_{key}_after']:.4f}"
        for name, key in (("ECE", "ece"), ("Brier", "brier"))
        if block[f"val_{key}_after"] > block[f"val_{key}_before"]
    ]
    if worse:
        return (
            f"Platt scaling (a={platt.a:.4g}, b={platt.b:.4g}) would raise validation "
            f"{', '.join(worse)}; the model's own scores are kept"
        )
    return None


def calibrate_output(model, features, labels, layer: str = OUTPUT_LAYER, column: int = 0) -> tuple:
    """Fit Platt scaling on validation and fold it into ``model`` unless it must be rejected.

    Args:
        model: The Keras model; its output unit ``column`` is changed in place when the fit is
            applied.
        features: The output layer's inputs on the validation images evaluated for this
            finding (see :func:`head_inputs_model`).
        labels: Their 0/1 labels for this finding.
        layer: Name of the output layer.
        column: The output unit (finding) to calibrate.

    Returns:
        ``(before, after, block)``: validation probabilities of the model before and after
        (computed by the output layer itself, in its own float32 arithmetic) and the card's
        ``calibration`` entry (``method`` ``"none"`` with a ``reason`` when rejected).
    """
    output = model.get_layer(layer)
    original = output.get_weights()
    before = np.asarray(output(features))[:, column]
    platt = fit_platt(output_logits(model, features, layer, column), labels)
    fold_platt(model, platt, layer, column)
    after = np.asarray(output(features))[:, column]
    block = calibration_block(platt, labels, before, after)
    reason = rejection_reason(platt, block)
    if reason is None:
        return before, after, block
    output.set_weights(original)
    rejected = {k: block[k] for k in ("a", "b", "val_ece_after", "val_brier_after")}
    block = calibration_block(IDENTITY, labels, before, before)
    return before, before, {**block, "method": "none", "reason": reason, "rejected": rejected}


def calibrate_best(
    best: Path, calibrated: Path, val, batch_size: int, findings: list[str], columns: list[str]
) -> dict:
    """Rank 0, after the last epoch: calibrate the best model as saved and measure it.

    Loads the fp32 copy of the best epoch (what ``model.keras`` will hold, whatever the
    training precision), computes its output layer's inputs on the validation set once, and
    per finding, on the images evaluated for it, fits Platt scaling on that output's logits and
    folds it into that output unit (:func:`medai.calibration.calibrate_output`), then measures
    threshold, AUC and calibration on the calibrated unit's own validation probabilities.

    Args:
        best: The best epoch's fp32 model file.
        calibrated: Where the calibrated model is saved.
        val: The validation dataset (Ray Data: ``image`` and the label columns).
        batch_size: Validation batch size.
        findings: The model's findings, in output order.
        columns: Their label columns.

    Returns:
        With one finding: ``val_auc``, ``val_images``, ``threshold``,
        ``threshold_sensitivity_90`` and ``calibration``. With several, those of the first
        finding except ``val_auc`` (the mean over findings), plus ``per_finding``.
    """
    import keras
    import tensorflow as tf

    from medai.model import image_batches
    from medai.validation import label_matrix, validation_summary

    keras.config.set_dtype_policy("float32")  # training is over; the saved model is fp32
    model = keras.saving.load_model(best, compile=False)
    head_inputs = head_inputs_model(model)
    features_of = tf.function(
        lambda x: head_inputs(x, training=False), input_signature=image_batches(model)
    )
    features, labels = [], []
    for batch in val.iter_batches(batch_size=batch_size, batch_format="numpy"):
        features.append(np.asarray(features_of(batch["image"])))
        labels.append(label_matrix(batch, columns))
    x, y = np.concatenate(features), np.concatenate(labels)
    per_finding = {}
    for column, finding in enumerate(findings):
        keep = y[:, column] >= 0
        truth = y[keep, column]
        _, after, block = calibrate_output(model, x[keep], truth, column=column)
        summary = validation_summary(truth, after)
        per_finding[finding] = {
            **{k: summary[k] for k in ("val_auc", "val_images", "threshold")},
            "threshold_sensitivity_90": summary["threshold_sensitivity_90"],
            "calibration": block,
        }
    model.save(calibrated, include_optimizer=False)
    return _final_summary(per_finding, findings, len(y))


def _final_summary(per_finding: dict, findings: list[str], images: int) -> dict:
    """One finding's summary as it is; several: the first's, the mean AUC, ``per_finding``."""
    first = per_finding[findings[0]]
    if len(findings) == 1:
        return first
    aucs = [entry["val_auc"] for entry in per_finding.values() if entry["val_auc"] is not None]
    return {
        **first,
        "val_auc": float(np.mean(aucs)) if aucs else None,
        "val_images": int(images),
        "per_finding": per_finding,
    }
