"""Validation numbers of a training epoch: loss, accuracy, AUC and thresholds per finding.

Also which epoch is best (:func:`is_better`) and the lines the loop logs per epoch and after
calibration. Pure NumPy: the loop gathers labels and scores, this module summarises them.
"""

from __future__ import annotations

import numpy as np

from medai.metrics import roc_auc, sensitivity_threshold, youden_threshold

__all__ = [
    "calibration_line",
    "epoch_line",
    "is_better",
    "label_matrix",
    "validation_summaries",
    "validation_summary",
]


def label_matrix(batch: dict, columns: list[str]) -> np.ndarray:
    """The ``(N, K)`` int64 labels of a batch (1, 0, -1 = not evaluated), columns in order."""
    return np.stack([np.asarray(batch[c]).astype(np.int64) for c in columns], axis=1)


def validation_summary(labels, scores) -> dict:
    """Loss, accuracy at 0.5, AUC and both operating thresholds of validation scores.

    Thresholds and AUC use the scores as they are: clipping would merge every score above
    ``1 - 1e-7`` into one and move Youden's threshold off the model's own outputs. Only the
    log loss clips, to stay finite.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0:
        return {"val_loss": None, "val_accuracy": None, "val_auc": None, "val_images": 0}
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    return {
        "val_loss": loss,
        "val_accuracy": float(np.mean((p >= 0.5) == (y > 0.5))),
        "val_auc": roc_auc(y, p),
        "val_images": int(y.size),
        "threshold": youden_threshold(y, p),
        "threshold_sensitivity_90": sensitivity_threshold(y, p, 0.9),
    }


def validation_summaries(labels, scores, findings: list[str]) -> dict:
    """:func:`validation_summary` per finding, over the images evaluated for it, and the mean.

    Args:
        labels: ``(N, K)`` labels, -1 where an image is not evaluated for a finding.
        scores: ``(N, K)`` scores.
        findings: The K finding names, in column order.

    Returns:
        With one finding, exactly :func:`validation_summary`. With several: ``val_loss`` and
        ``val_accuracy`` over every evaluated label, ``val_auc`` the mean of the findings'
        AUCs (those measurable), ``val_images`` and ``per_finding`` (each finding's summary).
    """
    k = len(findings)
    y = np.asarray(labels, dtype=np.float64).reshape(-1, k)
    p = np.asarray(scores, dtype=np.float64).reshape(-1, k)
    per = {}
    for column, finding in enumerate(findings):
        keep = y[:, column] >= 0
        per[finding] = validation_summary(y[keep, column], p[keep, column])
    if k == 1:
        return per[findings[0]]
    keep = y >= 0
    clipped = np.clip(p[keep], 1e-7, 1 - 1e-7)
    truth = y[keep]
    aucs = [s["val_auc"] for s in per.values() if s["val_auc"] is not None]
    return {
        "val_loss": float(-np.mean(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped)))
        if truth.size
        else None,
        "val_accuracy": float(np.mean((p[keep] >= 0.5) == (truth > 0.5))) if truth.size else None,
        "val_auc": float(np.mean(aucs)) if aucs else None,
        "val_images": int(len(y)),
        "per_finding": per,
    }


def is_better(row: dict, best: dict | None) -> bool:
    """Whether an epoch's validation beats the best so far: a higher (mean) AUC, or the same
    AUC with a lower loss.

    The tie matters on small validation sets, where AUC saturates at 1.0 within a few epochs:
    without it the first epoch to separate the classes is kept however much surer later ones
    are (a phantom model kept epoch 5 of 12 at validation loss 0.0082 over epoch 11's 0.0029).

    Args:
        row: The epoch's ``val_auc`` and ``val_loss`` (either may be ``None``).
        best: The best epoch's, or ``None`` before the first.
    """
    if best is None:
        return True
    auc, best_auc = row["val_auc"] or 0.0, best["val_auc"] or 0.0
    if auc != best_auc:
        return auc > best_auc
    loss, best_loss = row.get("val_loss"), best.get("val_loss")
    return loss is not None and (best_loss is None or loss < best_loss)


def epoch_line(row: dict, epochs: int, improved: bool) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    train = f"loss {fmt(row['loss'])} acc {fmt(row['accuracy'])} auc {fmt(row['auc'])}"
    val = (
        f"val_loss {fmt(row['val_loss'])} val_acc {fmt(row['val_accuracy'])} "
        f"val_auc {fmt(row['val_auc'])}"
    )
    if "val_auc_per_finding" in row:  # several findings: val_auc above is their mean
        val = (
            val.replace("val_auc", "val_auc(mean)")
            + " ("
            + ", ".join(
                f"{finding} {fmt(auc)}" for finding, auc in row["val_auc_per_finding"].items()
            )
            + ")"
        )
    speed = f"{row['seconds']:.1f}s {row['images_per_second']:.1f} img/s"
    best = " *best*" if improved else ""
    return f"epoch {row['epoch']}/{epochs}: {train} | {val} | {speed}{best}"


def calibration_line(final: dict, best_epoch: int, finding: str) -> str:
    block = final["calibration"]
    method = block["method"] if block["method"] != "none" else f"none ({block['reason']})"
    return (
        f"calibrated the best model (epoch {best_epoch}) for {finding} on "
        f"{final['val_images']} validation "
        f"images: {method}, a={block['a']:.4g} b={block['b']:.4g}, ECE "
        f"{block['val_ece_before']:.4f} -> {block['val_ece_after']:.4f}, Brier "
        f"{block['val_brier_before']:.4f} -> {block['val_brier_after']:.4f}, "
        f"threshold {final['threshold']}"
    )
