"""The per-worker training loop run by Ray Train under ``MultiWorkerMirroredStrategy``.

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy with two or more workers
(ray-project/ray#47464), so the step is written out: ``strategy.run`` of a replica step whose
gradients the strategy all-reduces, and whose statistics (loss, correct count, score
histograms) are summed across replicas so that the epoch's train metrics cover every shard.

One network serves every finding of the run: the output layer has one sigmoid unit per finding
(ordered as ``config["findings"]``) and the loss is the binary cross-entropy of each unit,
masked where an image is not evaluated for that finding (label -1) and weighted by that
finding's class weights. Validation measures each finding's AUC on the images evaluated for it;
the best checkpoint is the one with the best mean of those AUCs. With one finding everything
reduces to the single-output model, loss and numbers as before.

Each epoch reads the worker's shard through a shuffle buffer as large as the shard (capped at
:data:`SHUFFLE_BYTES`) after the driver randomised the block order, so every epoch shuffles the
whole training set; each rank draws its own augmentation (seed + rank). Before each validation
the BatchNorm moving statistics are re-estimated over recent training batches with the current
weights and averaged across workers (:mod:`medai.batchnorm`: only those statistics), so all
ranks hold the same model and validation loss and accuracy describe the model as saved. Every
worker evaluates the full validation set (reading mirrored variables may need collectives, so
all ranks do the same work) and only rank 0 writes files.

After the last epoch rank 0 reloads the best model exactly as it will be saved (fp32, also
after bf16 training), measures it on validation, fits Platt scaling per finding, folds each into
its output unit (:mod:`medai.calibration`) and takes the card's thresholds, AUCs and
calibrations from the calibrated model's validation predictions; the result travels in a last
checkpoint. The other ranks wait at that report: no TensorFlow collective runs in this phase,
so it cannot hang.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from medai.metrics import auc_from_histograms, roc_auc, sensitivity_threshold, youden_threshold

__all__ = [
    "train_loop_per_worker",
    "make_replica_step",
    "augmenter_for",
    "is_better",
    "shuffle_buffer_rows",
    "validation_summary",
    "validation_summaries",
    "label_matrix",
    "CHECKPOINT_STATE",
    "BEST_MODEL",
    "CALIBRATED_MODEL",
    "BN_BATCHES",
    "SHUFFLE_BYTES",
]

CHECKPOINT_STATE = "state.json"
BEST_MODEL = "best.keras"  # fp32 copy of the best epoch, uncalibrated (resume continues from it)
CALIBRATED_MODEL = "calibrated.keras"  # the best model with Platt scaling folded in: saved as is
_LAST_WEIGHTS = "last.weights.h5"
_OPTIMIZER = "optimizer.npz"
_BINS = 1000
# Training batches per worker whose statistics re-estimate BatchNorm before validation: at
# batch 16 and 256 px, 50 cached batches are ~52 MiB per worker.
BN_BATCHES = 50
# Memory cap of a worker's shuffle buffer (uint8 images): 4096 images at 256 px. Ray's
# shuffling batcher may hold up to about twice this while it compacts.
SHUFFLE_BYTES = 256 * 1024 * 1024
logger = logging.getLogger("medai.train")


def _restore(checkpoint, model, optimizer, workdir: Path) -> dict:
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


def _save_checkpoint(model, optimizer, state: dict, workdir: Path, rank: int):
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


def _save_best(model, spec, workdir: Path, rank: int) -> None:
    """Keep an fp32 inference copy of the best model so far."""
    from medai.model import rebuild_with_policy

    inference = rebuild_with_policy(model, spec, "float32")
    if rank == 0:
        inference.save(workdir / BEST_MODEL, include_optimizer=False)


def make_replica_step(model, optimizer, augment, global_batch: int):
    """One replica's training step: augment, masked class-weighted BCE per finding, Adam update.

    Returns:
        ``step(images, labels, weights)`` returning the batch's summable statistics, with
        ``labels`` ``(B, K)`` float (1, 0, or -1 for not evaluated) and ``weights`` the
        per-label loss weights (``(B, K)``, 0 where not evaluated; ``(B,)`` for one finding).
        An image's loss is the mean over the K findings of its weighted cross-entropies. Run it
        under ``strategy.run`` (as :func:`train_loop_per_worker` does) or alone in a
        ``tf.function``.
    """
    import keras
    import tensorflow as tf

    def replica_step(images, labels, weights):
        x = augment(tf.cast(images, tf.float32), training=True)
        x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
        weights = tf.reshape(tf.cast(weights, tf.float32), tf.shape(labels))
        # A -1 label carries zero weight; as a target it would still have to be a probability.
        targets = tf.maximum(labels, 0.0)
        with tf.GradientTape() as tape:
            scores = model(x, training=True)
            per_label = keras.ops.binary_crossentropy(targets, scores)
            per_image = tf.reduce_sum(per_label * weights, axis=-1) / tf.cast(
                tf.shape(labels)[-1], tf.float32
            )
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return _batch_stats(labels, scores, per_label)

    return replica_step


def augmenter_for(seed: int, rank: int):
    """The augmentation of one rank: seeded by ``seed + rank`` so that ranks draw differently."""
    from medai.model import build_augmenter

    return build_augmenter(seed + rank)


def shuffle_buffer_rows(train_rows: int, world: int, image_size: int, batch_size: int) -> int:
    """Rows of a worker's shuffle buffer: its whole shard, capped at :data:`SHUFFLE_BYTES`."""
    shard = math.ceil(train_rows / max(world, 1))
    cap = SHUFFLE_BYTES // (image_size * image_size)
    return max(batch_size, min(shard, cap))


def image_batches(model) -> list:
    """A ``tf.function`` input signature for batches of any length of ``model``'s images.

    Tracing InceptionV3 takes tens of seconds on 2 cores; without a signature the last,
    shorter validation batch costs a second trace.
    """
    import tensorflow as tf

    spec = model.inputs[0]
    return [tf.TensorSpec((None, *spec.shape[1:]), spec.dtype)]


def _make_steps(model, optimizer, augment, strategy, global_batch: int):
    import tensorflow as tf

    replica_step = make_replica_step(model, optimizer, augment, global_batch)

    @tf.function
    def train_step(images, labels, weights):
        stats = strategy.run(replica_step, args=(images, labels, weights))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None)

    @tf.function(input_signature=image_batches(model))
    def predict_step(images):
        return model(images, training=False)

    return train_step, predict_step


_HEAD = 4  # loss sum, correct, evaluated labels, images; then 2 histograms per finding


def _batch_stats(labels, scores, per_label):
    """Summable statistics of a batch over its evaluated labels (label >= 0).

    Returns:
        ``[loss sum, correct, evaluated, images]`` followed, per finding, by the histograms of
        its positives' and its negatives' scores.
    """
    import tensorflow as tf

    labels = tf.cast(labels, tf.float32)
    scores = tf.reshape(tf.cast(scores, tf.float32), tf.shape(labels))
    evaluated = labels >= 0.0
    mask = tf.cast(evaluated, tf.float32)
    agree = tf.cast(tf.equal(tf.cast(scores >= 0.5, tf.float32), labels), tf.float32)
    histogram = lambda values, keep: tf.cast(  # noqa: E731
        tf.histogram_fixed_width(tf.boolean_mask(values, keep), [0.0, 1.0], nbins=_BINS),
        tf.float32,
    )
    head = tf.stack(
        [
            tf.reduce_sum(tf.cast(per_label, tf.float32) * mask),
            tf.reduce_sum(agree * mask),
            tf.reduce_sum(mask),
            tf.cast(tf.shape(labels)[0], tf.float32),
        ]
    )
    parts = [head]
    for k in range(labels.shape[-1]):  # K is static: one pair of histograms per finding
        column, truth = scores[:, k], labels[:, k]
        parts += [histogram(column, truth > 0.5), histogram(column, tf.equal(truth, 0.0))]
    return tf.concat(parts, axis=0)


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


def _evaluate(predict_step, dataset, batch_size: int, findings: list[str], columns) -> dict:
    """:func:`validation_summaries` over the whole validation set."""
    labels, scores = [], []
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        scores.append(np.asarray(predict_step(batch["image"])).reshape(-1, len(columns)))
        labels.append(label_matrix(batch, columns))
    k = len(columns)
    y = np.concatenate(labels) if labels else np.zeros((0, k), np.int64)
    p = np.concatenate(scores) if scores else np.zeros((0, k), np.float32)
    return validation_summaries(y, p, findings)


def _train_epoch(train_step, shard, config: dict, seed: int) -> tuple[dict, list]:
    """One pass over the shard; returns the epoch's train metrics and its last few batches.

    The last :data:`BN_BATCHES` batches (unaugmented, as inference sees images) are kept for
    re-estimating the BatchNorm statistics: reading the shard a second time would start a new
    epoch of the streaming split on every rank.
    """
    batch_size, columns = config["batch_size"], config["label_columns"]
    totals = np.zeros(_HEAD + 2 * _BINS * len(columns), dtype=np.float64)
    # (K, 2): finding k's loss weight of a negative and of a positive.
    weights_of = np.asarray(config["class_weights"], dtype=np.float32).reshape(len(columns), 2)
    finding_index = np.arange(len(columns))
    recent: deque = deque(maxlen=BN_BATCHES)
    batches = shard.iter_batches(
        batch_size=batch_size,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=config["shuffle_rows"],
        local_shuffle_seed=seed,
    )
    for batch in batches:
        labels = label_matrix(batch, columns)
        weights = np.where(labels >= 0, weights_of[finding_index, np.clip(labels, 0, 1)], 0.0)
        totals += np.asarray(
            train_step(batch["image"], labels.astype(np.float32), weights.astype(np.float32))
        )
        recent.append(np.array(batch["image"], copy=True))
    count = max(totals[2], 1.0)
    aucs = [
        auc_from_histograms(*totals[start : start + 2 * _BINS].reshape(2, _BINS))
        for start in range(_HEAD, len(totals), 2 * _BINS)
    ]
    measured = [auc for auc in aucs if auc is not None]
    row = {
        "loss": float(totals[0] / count),
        "accuracy": float(totals[1] / count),
        "auc": (float(np.mean(measured)) if len(aucs) > 1 else aucs[0]) if measured else None,
        "train_images": int(totals[3]),
    }
    if len(columns) > 1:
        row["auc_per_finding"] = dict(zip(config["findings"], aucs, strict=True))
    return row, list(recent)


def _calibrate_best(val, workdir: Path, batch_size: int, findings: list[str], columns) -> dict:
    """Rank 0, after the last epoch: calibrate the best model as saved and measure it.

    Loads the fp32 copy of the best epoch (what ``model.keras`` will hold, whatever the
    training precision), computes its output layer's inputs on the validation set once, and
    per finding, on the images evaluated for it, fits Platt scaling on that output's logits and
    folds it into that output unit (:func:`medai.calibration.calibrate_output`), then measures
    threshold, AUC and calibration on the calibrated unit's own validation probabilities.

    Returns:
        With one finding: ``val_auc``, ``val_images``, ``threshold``,
        ``threshold_sensitivity_90`` and ``calibration``. With several, those of the first
        finding except ``val_auc`` (the mean over findings), plus ``per_finding``.
    """
    import keras
    import tensorflow as tf

    from medai.calibration import calibrate_output, head_inputs_model

    keras.config.set_dtype_policy("float32")  # training is over; the saved model is fp32
    model = keras.saving.load_model(workdir / BEST_MODEL, compile=False)
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
    model.save(workdir / CALIBRATED_MODEL, include_optimizer=False)
    first = per_finding[findings[0]]
    if len(findings) == 1:
        return first
    aucs = [entry["val_auc"] for entry in per_finding.values() if entry["val_auc"] is not None]
    return {
        **first,
        "val_auc": float(np.mean(aucs)) if aucs else None,
        "val_images": int(len(y)),
        "per_finding": per_finding,
    }


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: build the model under the strategy, train, checkpoint each epoch.

    Args:
        config: ``spec`` (a :class:`medai.model.ModelSpec` as dict), ``epochs``,
            ``batch_size`` (per worker), ``learning_rate``, ``class_weights``, ``precision``,
            ``seed``, ``cpus_per_worker``, ``shuffle_rows`` (see :func:`shuffle_buffer_rows`),
            ``findings`` and their ``label_columns`` (ordered as the outputs; ``spec`` has as
            many outputs), ``class_weights`` as ``[[w_negative, w_positive], ...]`` per
            finding, and ``resume_from``.
    """
    from medai.cpus import assigned_cpus
    from medai.runtime import configure_tensorflow, setup_logging

    setup_logging()
    _quiet_ray_loggers()
    # Ray's assignment to this worker, not the host's cores (a pod may see 64 cores of which
    # it was given 8).
    configure_tensorflow(assigned_cpus(config["cpus_per_worker"]))
    import keras
    import ray.train
    import tensorflow as tf

    from medai.batchnorm import make_bn_reestimation, make_bn_sync
    from medai.model import ModelSpec, build_model

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    keras.utils.set_random_seed(config["seed"])
    if config["precision"] == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    spec = ModelSpec(**config["spec"])
    findings = list(config["findings"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model(spec)
        optimizer = keras.optimizers.Adam(config["learning_rate"])
        optimizer.build(model.trainable_variables)
    augment = augmenter_for(config["seed"], rank)
    train_step, predict_step = _make_steps(
        model, optimizer, augment, strategy, config["batch_size"] * world
    )
    # A pretrained base runs its BatchNorm in inference mode: its statistics never change.
    reestimate = None if spec.pretrained else make_bn_reestimation(model, strategy)
    sync_statistics = make_bn_sync(model, strategy) if reestimate and world > 1 else None
    workdir = Path(tempfile.mkdtemp(prefix="medai-train-"))
    state = {"epoch": 0, "history": [], "best": None}
    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts failed workers
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(config["resume_from"])  # --resume of an earlier run
    resumed = ""
    if checkpoint is not None:
        state = _restore(checkpoint, model, optimizer, workdir)
        resumed = f" (resumed from checkpoint after epoch {state['epoch']})"
    shard = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val")
    for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
        started = time.perf_counter()
        seed = (config["seed"] * 1009 + epoch) * 1013 + rank
        metrics, recent = _train_epoch(train_step, shard, config, seed)
        row = {"epoch": epoch, **metrics}
        row["train_seconds"] = round(time.perf_counter() - started, 2)
        if reestimate is not None:
            reestimate(recent)
        if sync_statistics is not None:
            sync_statistics()
        del recent
        evaluation = _evaluate(
            predict_step, val, config["batch_size"] * 2, findings, config["label_columns"]
        )
        row.update(
            {k: evaluation[k] for k in ("val_loss", "val_accuracy", "val_auc", "val_images")}
        )
        if "per_finding" in evaluation:
            row["val_auc_per_finding"] = {
                f: entry["val_auc"] for f, entry in evaluation["per_finding"].items()
            }
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["images_per_second"] = round(row["train_images"] / max(row["seconds"], 1e-9), 2)
        improved = is_better(row, state["best"])
        if improved:
            state["best"] = {
                "epoch": epoch,
                **{
                    k: evaluation.get(k)
                    for k in ("val_auc", "val_loss", "threshold", "threshold_sensitivity_90")
                },
            }
            _save_best(model, spec, workdir, rank)
        state["epoch"] = epoch
        state["history"].append(row)
        if rank == 0:
            logger.info(_epoch_line(row, config["epochs"], improved) + resumed)
        resumed = ""
        _report(row, _save_checkpoint(model, optimizer, state, workdir, rank))
    _finish(val, model, optimizer, state, workdir, rank, config)


def _finish(val, model, optimizer, state: dict, workdir: Path, rank: int, config: dict) -> None:
    """The last phase: rank 0 calibrates the best model; a last checkpoint carries it."""
    # Rank 0 alone: the other ranks wait in the report below, where no TensorFlow collective
    # runs, so the unequal work cannot deadlock MultiWorkerMirroredStrategy.
    if rank == 0:
        findings = list(config["findings"])
        final = _calibrate_best(
            val, workdir, config["batch_size"] * 2, findings, config["label_columns"]
        )
        state["final"] = final
        for finding, entry in (final.get("per_finding") or {findings[0]: final}).items():
            logger.info(_calibration_line(entry, state["best"]["epoch"], finding))
    else:
        state["final"] = None
    checkpoint = _save_checkpoint(model, optimizer, state, workdir, rank)
    _report({"epoch": state["epoch"], "phase": "calibration"}, checkpoint)
    shutil.rmtree(workdir, ignore_errors=True)


def _calibration_line(final: dict, best_epoch: int, finding: str) -> str:
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


def _report(metrics: dict, checkpoint) -> None:
    import ray.train

    ray.train.report(metrics, checkpoint=checkpoint)
    if checkpoint is not None:
        # report() has persisted it to the run storage; the local copy would pile up in /tmp.
        shutil.rmtree(checkpoint.path, ignore_errors=True)


def _quiet_ray_loggers() -> None:
    """No per-report or per-epoch dataset INFO lines from Ray inside the workers."""
    from ray.train.v2._internal.execution import context as train_context

    # Ray Train names this logger by file path; only its level is changed here.
    for name in ("ray.train", "ray.data", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)


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


def _epoch_line(row: dict, epochs: int, improved: bool) -> str:
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
