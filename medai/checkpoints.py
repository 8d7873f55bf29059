"""The training loop's checkpoints: what a Ray Train checkpoint folder holds, written by rank 0.

A checkpoint holds the last weights, the optimizer's slots and the loop's state
(:data:`CHECKPOINT_STATE`: epoch, history, best) and, once they exist, the best model
(:data:`BEST_MODEL`, fp32, uncalibrated: a resumed run continues from it) and the calibrated
model (:data:`CALIBRATED_MODEL`, saved into the model directory as it is).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "BEST_MODEL",
    "CALIBRATED_MODEL",
    "CHECKPOINT_STATE",
    "report_epoch",
    "restore_checkpoint",
    "save_best",
    "save_checkpoint",
]

CHECKPOINT_STATE = "state.json"
BEST_MODEL = "best.keras"  # fp32 copy of the best epoch, uncalibrated (resume continues from it)
CALIBRATED_MODEL = "calibrated.keras"  # the best model with Platt scaling folded in: saved as is
_LAST_WEIGHTS = "last.weights.h5"
_OPTIMIZER = "optimizer.npz"


def restore_checkpoint(checkpoint, model, optimizer, workdir: Path) -> dict:
    """Load weights, optimizer slots and loop state from a Ray checkpoint."""
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        model.load_weights(folder / _LAST_WEIGHTS)
        slots = np.load(folder / _OPTIMIZER)
        for index, variable in enumerate(optimizer.variables):
            variable.assign(slots[f"v{index}"])
        if (folder / BEST_MODEL).exists():
            shutil.copy(folder / BEST_MODEL, workdir / BEST_MODEL)
        return json.loads((folder / CHECKPOINT_STATE).read_text())


def save_checkpoint(model, optimizer, state: dict, workdir: Path, rank: int):
    """Write a checkpoint folder (rank 0 only writes; every rank reads the same variables)."""
    import ray.train

    weights = [np.asarray(v.numpy()) for v in optimizer.variables]
    if rank != 0:
        return None
    folder = Path(tempfile.mkdtemp(prefix="ckpt-", dir=workdir))
    model.save_weights(folder / _LAST_WEIGHTS)
    np.savez(folder / _OPTIMIZER, **{f"v{i}": w for i, w in enumerate(weights)})
    (folder / CHECKPOINT_STATE).write_text(json.dumps(state, indent=2))
    for name in (BEST_MODEL, CALIBRATED_MODEL):
        if (workdir / name).exists():
            shutil.copy(workdir / name, folder / name)
    return ray.train.Checkpoint.from_directory(str(folder))


def save_best(model, spec, workdir: Path, rank: int) -> None:
    """Keep an fp32 inference copy of the best model so far."""
    from medai.model import rebuild_with_policy

    inference = rebuild_with_policy(model, spec, "float32")
    if rank == 0:
        inference.save(workdir / BEST_MODEL, include_optimizer=False)


def report_epoch(metrics: dict, checkpoint) -> None:
    import ray.train

    ray.train.report(metrics, checkpoint=checkpoint)
    if checkpoint is not None:
        # report() has persisted it to the run storage; the local copy would pile up in /tmp.
        shutil.rmtree(checkpoint.path, ignore_errors=True)
