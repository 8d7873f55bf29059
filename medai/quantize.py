"""int8 quantization with NNCF behind a gate measured on the validation split.

The IR is quantized post-training, calibrated on images of the model's *training* split, and
the result is kept only if :class:`Int8Gate`, measured on the *validation* split, accepts it:
the AUC may move by at most 0.005 and at least 99% of the threshold decisions must equal
``model.keras``'s. :data:`DEFAULT_ATTEMPTS` are tried from the cheapest to the most accurate;
when none passes, :func:`quantize_gated` refuses with what it measured.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

import numpy as np

from medai.agreement import ExportError, LabelledImages, compile_ir, ir_scores, measure_agreement

__all__ = [
    "ACTIVATION_RANGES",
    "DEFAULT_ATTEMPTS",
    "Int8Attempt",
    "Int8Gate",
    "gate_verdict",
    "import_nncf",
    "quantize_gated",
]

logger = logging.getLogger("medai.export")


@dataclass(frozen=True)
class Int8Gate:
    """When an int8 IR is good enough, measured against ``model.keras`` on the validation split.

    Attributes:
        max_auc_change: Largest accepted ``|AUC(int8) - AUC(model.keras)|``.
        min_agreement: Smallest accepted fraction of equal threshold decisions
            (:func:`medai.card.is_positive` at the card's threshold).
    """

    max_auc_change: float = 0.005
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        if self.max_auc_change < 0 or not 0 <= self.min_agreement <= 1:
            raise ExportError("the int8 gate needs max_auc_change >= 0 and 0 <= min_agreement <= 1")


# NNCF's range estimators by the names the card records.
ACTIVATION_RANGES = {"minmax": "MINMAX", "mean-minmax": "MEAN_MINMAX"}


@dataclass(frozen=True)
class Int8Attempt:
    """One NNCF configuration tried for int8, from the cheapest to the most accurate.

    Attributes:
        name: Short name recorded in the card.
        accuracy_control: Use ``nncf.quantize_with_accuracy_control``, which reverts the most
            damaging quantizers to fp32 until the decisions agree on the calibration images.
        keep_ends: Keep the first convolution and the dense head in fp32.
        preset: NNCF preset, ``performance`` or ``mixed`` (asymmetric activations).
        fast_bias_correction: NNCF's fast (True) or full (False) bias correction.
        max_reverted: Accuracy control's bound: quantizer groups reverted to fp32 at most.
        ranking_images: Calibration images accuracy control ranks the groups on.
        activation_ranges: How each activation's int8 range is set from the calibration
            images: ``minmax``, the whole range any image reached, or ``mean-minmax``
            (NNCF's default), the mean over images of each image's own range.
    """

    name: str
    accuracy_control: bool = False
    keep_ends: bool = True
    preset: str = "mixed"
    fast_bias_correction: bool = False
    max_reverted: int = 6
    ranking_images: int = 100
    activation_ranges: str = "minmax"

    def __post_init__(self) -> None:
        if self.activation_ranges not in ACTIVATION_RANGES:
            raise ExportError(
                f"activation_ranges must be one of {sorted(ACTIVATION_RANGES)}, "
                f"not {self.activation_ranges!r}"
            )


# Measured on a trained 128 px phantom model: NNCF defaults moved scores by up to 0.13 and
# flipped 11% of decisions (its threshold sits where the sigmoid saturates); the full bias
# correction with fp32 ends moved them by 0.02. NNCF's default activation ranges average each
# image's own range, which clips the rare strong activations a lesion raises in a few images
# (the very ones a classifier's score rests on): on two trained phantom models (2026-12-03)
# the whole range cut the largest validation score change from 0.32 to 0.011 and from 0.29 to
# 0.036, and flipped decisions on 394 unseen phantoms from 3 to 1 and from 8 to 2. Accuracy
# control brings back what is left.
DEFAULT_ATTEMPTS = (
    Int8Attempt("ptq-minmax-fp32-ends"),
    Int8Attempt("ptq-mean-minmax-fp32-ends", activation_ranges="mean-minmax"),
    Int8Attempt("accuracy-control", accuracy_control=True),
)


def gate_verdict(measured: dict, gate: Int8Gate) -> list[str]:
    """Reasons the gate refuses ``measured`` (empty when it accepts)."""
    reasons = []
    change = measured.get("auc_change")
    if change is None:
        reasons.append("AUC not measurable on the validation split (one class only)")
    elif abs(change) > gate.max_auc_change:
        reasons.append(f"|delta AUC| {abs(change):.4f} > {gate.max_auc_change}")
    if measured["decision_agreement"] < gate.min_agreement:
        reasons.append(
            f"decision agreement {measured['decision_agreement']:.4f} < {gate.min_agreement}"
        )
    return reasons


def import_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise ExportError(
            "--int8 needs NNCF, which is not installed: pip install 'medai[int8]' (or nncf)"
        ) from exc
    return nncf


def _quantize(ov_model, attempt: Int8Attempt, calibration: np.ndarray, threshold):
    """Quantize an fp32 OpenVINO model with one NNCF configuration."""
    from medai.card import is_positive

    nncf = import_nncf()
    dataset = nncf.Dataset([image[None] for image in calibration])
    options = {
        "subset_size": len(calibration),
        "preset": nncf.QuantizationPreset(attempt.preset),
        "fast_bias_correction": attempt.fast_bias_correction,
    }
    if attempt.keep_ends:
        options["ignored_scope"] = _end_layers(ov_model, nncf)
    advanced = _advanced(nncf, attempt)
    if not attempt.accuracy_control:
        return nncf.quantize(ov_model, dataset, advanced_parameters=advanced, **options)
    fp32, references = compile_ir(ov_model), {}

    def reference_of(item: np.ndarray) -> np.ndarray:
        # NNCF ranks layers by calling the metric many times on the same items: the fp32
        # scores of an item are computed once.
        key = hashlib.blake2b(np.ascontiguousarray(item).tobytes(), digest_size=16).digest()
        if key not in references:
            references[key] = np.asarray(fp32(item)[0])
        return references[key]

    def agreement(compiled, items) -> tuple[float, list[float]]:
        # NNCF calls this on subsets of the dataset too (one item to choose its mode, then
        # rankings): compare each item with the fp32 model's decision on that same item,
        # one value per item, so NNCF reads the values as per-item metrics.
        items = list(items)
        scores = np.concatenate([np.asarray(compiled(item)[0]) for item in items])
        reference = np.concatenate([reference_of(item) for item in items])
        same = is_positive(scores, threshold) == is_positive(reference, threshold)
        per_item = same.reshape(len(items), -1).all(axis=1).astype(float)
        return float(per_item.mean()), per_item.tolist()

    # The decisions' agreement on the (training) calibration images is the metric, so the
    # validation split stays unseen until the gate measures it. Unbounded, NNCF reverts one
    # quantizer group per iteration and re-ranks all the others: on a 128 px phantom model
    # (300 calibration images, 103 quantized ops) one ranking took 3-3.5 min on 2 cores and
    # 20 min brought no gain (the groups it reverted were transposes), so it is bounded.
    restorer = nncf.AdvancedAccuracyRestorerParameters(
        max_num_iterations=attempt.max_reverted,
        ranking_subset_size=min(attempt.ranking_images, len(calibration)),
    )
    return nncf.quantize_with_accuracy_control(
        ov_model,
        dataset,
        dataset,
        agreement,
        max_drop=0.005,
        advanced_quantization_parameters=advanced,
        advanced_accuracy_restorer_parameters=restorer,
        **options,
    )


def _advanced(nncf, attempt: Int8Attempt):
    """NNCF's advanced parameters for an attempt: its activation range estimator."""
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ranges = getattr(RangeEstimatorParametersSet, ACTIVATION_RANGES[attempt.activation_ranges])
    return nncf.AdvancedQuantizationParameters(activations_range_estimator_params=ranges)


def _end_layers(ov_model, nncf):
    """The first convolution and the dense head, which quantize worst, as an NNCF scope."""
    ops = ov_model.get_ordered_ops()
    first_conv = next(op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution")
    return nncf.IgnoredScope(names=[first_conv], types=["MatMul"], validate=False)


def quantize_gated(
    ov_model,
    split: dict[str, LabelledImages],
    reference_val: np.ndarray,
    threshold: float,
    gate: Int8Gate,
    attempts: tuple[Int8Attempt, ...],
):
    """Try ``attempts`` in order; return the first int8 model the gate accepts and the record."""
    tried = []
    for attempt in attempts:
        logger.info("int8: trying %s", attempt.name)
        quantized = _quantize(ov_model, attempt, split["train"].images, threshold)
        scores = ir_scores(compile_ir(quantized), split["val"].images)
        measured = measure_agreement(reference_val, scores, threshold, split["val"].labels)
        reasons = gate_verdict(measured, gate)
        tried.append({"attempt": asdict(attempt), "validation": measured, "refused": reasons})
        logger.info("int8 %s on validation: %s; refused: %s", attempt.name, measured, reasons)
        if not reasons:
            return quantized, tried
    lines = [f"{t['attempt']['name']}: {_summary(t['validation'])}" for t in tried]
    raise ExportError(
        "int8 refused by its gate (|delta AUC| <= "
        f"{gate.max_auc_change}, decision agreement >= {gate.min_agreement}) on "
        f"{len(reference_val)} validation images; measured " + "; ".join(lines)
    )


def _summary(measured: dict) -> str:
    change = measured.get("auc_change")
    auc = "n/a" if change is None else f"{measured['auc_reference']:.4f} -> {measured['auc']:.4f}"
    return (
        f"AUC {auc}, decision agreement {measured['decision_agreement']:.4f}, "
        f"max |delta score| {measured['max_abs_diff']:.4f}"
    )
