"""The card fields a training run writes: what was learnt, from what, and how.

:func:`card_fields` gathers them from the training loop's final state, the inventory of the
images read and the loop's configuration; :func:`medai.artifact.save_model_dir` completes the
card (``model_id``, versions, intended use) and :mod:`medai.card` owns its format.

Several findings train one network with one output per finding: the card then lists
``findings`` in output order and a ``per_finding`` entry for each (threshold,
threshold_sensitivity_90, val_auc, calibration, counts, class_weights); its top-level keys keep
the single-finding layout and describe the first finding, except ``val_auc``, the mean over
findings, so readers of single-finding cards still work.
"""

from __future__ import annotations

from medai.augment import description as augmentation_description
from medai.inventory import Inventory, finding_counts, split_counts
from medai.train_config import TrainConfig, TrainPlan

__all__ = ["card_fields"]

_PER_FINDING_KEYS = ("threshold", "threshold_sensitivity_90", "val_auc", "calibration")


def card_fields(
    config: TrainConfig, plan: TrainPlan, inventory: Inventory, state: dict, loop_config: dict
) -> dict:
    """The card's fields from a finished training run.

    Args:
        config: The training options.
        plan: The checked plan (findings and their label columns).
        inventory: What reading the images found (the counts).
        state: The loop's final state: ``best``, ``final`` and ``history``.
        loop_config: The loop's configuration (learning rate, class weights, workers, ...).
    """
    final, findings = state["final"], plan.findings
    weights = loop_config["class_weights_by_finding"]
    return {
        "finding": findings[0],
        **_multi_finding_fields(plan, inventory, final, weights),
        "negatives": config.negatives,
        "image_size": config.image_size,
        "head": config.head,
        "weights": config.weights,
        "precision": config.precision,
        "threshold": final["threshold"],
        "threshold_method": (
            "Youden's J on the calibrated validation probabilities of the saved (fp32) model"
        ),
        "threshold_sensitivity_90": final["threshold_sensitivity_90"],
        "val_auc": final["val_auc"],
        "calibration": final["calibration"],
        "best_epoch": state["best"]["epoch"],
        "history": state["history"],
        "counts": split_counts(inventory),
        "max_unreadable": config.max_unreadable,
        "class_weights": weights[findings[0]],
        **_method_fields(config, loop_config, len(findings)),
        "training_data": {
            "labels": str(config.labels),
            "images": list(config.images),
            "test_list_images_excluded": len(plan.test_ids),
        },
    }


def _multi_finding_fields(
    plan: TrainPlan, inventory: Inventory, final: dict, weights: dict[str, dict[str, float]]
) -> dict:
    """``findings``, ``per_finding`` and how to read the top-level keys; nothing for one finding."""
    if len(plan.findings) == 1:
        return {}
    per_finding = {
        finding: {
            **{key: final["per_finding"][finding][key] for key in _PER_FINDING_KEYS},
            "counts": finding_counts(inventory, column),
            "class_weights": weights[finding],
        }
        for finding, column in zip(plan.findings, plan.columns, strict=True)
    }
    return {
        "findings": plan.findings,
        "per_finding": per_finding,
        "best_by": "mean validation AUC over findings, ties by lower validation loss",
        "top_level_keys": "describe the first finding, except val_auc: the mean over "
        "findings of their calibrated validation AUCs",
    }


def _method_fields(config: TrainConfig, loop_config: dict, findings: int) -> dict:
    """How the model was trained: class weighting, augmentation, batchnorm, shuffle, optimizer."""
    return {
        "class_imbalance": "per-image loss weights n/(2*n_class) from the train split"
        + ("" if findings == 1 else ", per finding over the images evaluated for it"),
        "augmentation": augmentation_description(),
        "batchnorm": (
            "frozen (pretrained base)"
            if config.spec.pretrained
            else "moving statistics re-estimated over the last training batches before each "
            "validation (mean batch statistics), averaged across workers"
        ),
        "shuffle": "block order randomised every epoch + per-worker shuffle buffer of "
        f"{loop_config['shuffle_rows']} images",
        "optimizer": {
            "name": "adam",
            "learning_rate": loop_config["learning_rate"],
            "batch_size_per_worker": config.batch_size,
            "workers": loop_config["workers"],
        },
    }
