"""The per-worker training loop run by Ray Train under ``MultiWorkerMirroredStrategy``.

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy with two or more workers
(ray-project/ray#47464), so the step is written out: ``strategy.run`` of a replica step whose
gradients the strategy all-reduces, and whose statistics (loss, correct count, score
histograms) are summed across replicas so that the epoch's train metrics cover every shard.

Each epoch reads the worker's shard through a shuffle buffer as large as the shard (capped at
:data:`SHUFFLE_BYTES`) after the driver randomised the block order, so every epoch shuffles the
whole training set; each rank draws its own augmentation (seed + rank). Before each validation
the BatchNorm moving statistics are re-estimated over recent training batches with the current
weights and averaged across workers (:mod:`medai.batchnorm`: only those statistics), so all
ranks hold the same model and validation loss and accuracy describe the model as saved. Every
worker evaluates the full validation set (reading mirrored variables may need collectives, so
all ranks do the same work) and only rank 0 writes files.

After the last epoch rank 0 reloads the best model exactly as it will be saved (fp32, also
after bf16 training), measures it on validation, fits Platt scaling, folds it into the output
layer (:mod:`medai.calibration`) and takes the card's threshold, AUC and calibration from the
calibrated model's validation predictions; the result travels in a last checkpoint. The other
ranks wait at that report: no TensorFlow collective runs in this phase, so it cannot hang.
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

from medai.thresholds import auc_from_histograms, safe_auc, sensitivity_threshold, youden_threshold

__all__ = [
    "train_loop_per_worker",
    "make_replica_step",
    "augmenter_for",
    "shuffle_buffer_rows",
    "validation_summary",
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
    """One replica's training step: augment, class-weighted BCE, Adam update.

    Returns:
        ``step(images, labels, weights)`` returning the batch's summable statistics; run it
        under ``strategy.run`` (as :func:`train_loop_per_worker` does) or alone in a
        ``tf.function``.
    """
    import keras
    import tensorflow as tf

    def replica_step(images, labels, weights):
        x = augment(tf.cast(images, tf.float32), training=True)
        x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
        with tf.GradientTape() as tape:
            scores = model(x, training=True)
            per_image = keras.losses.binary_crossentropy(labels, scores)
            loss = tf.nn.compute_average_loss(per_image * weights, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return _batch_stats(labels, scores, per_image)

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


def _make_steps(model, optimizer, augment, strategy, global_batch: int):
    import tensorflow as tf

    replica_step = make_replica_step(model, optimizer, augment, global_batch)

    @tf.function
    def train_step(images, labels, weights):
        stats = strategy.run(replica_step, args=(images, labels, weights))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None)

    @tf.function(reduce_retracing=True)
    def predict_step(images):
        return model(images, training=False)

    return train_step, predict_step


def _batch_stats(labels, scores, per_image):
    """Summable statistics of a batch: [loss sum, correct, count, pos histogram, neg histogram]."""
    import tensorflow as tf

    labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
    scores = tf.reshape(tf.cast(scores, tf.float32), [-1])
    correct = tf.reduce_sum(
        tf.cast(tf.equal(tf.cast(scores >= 0.5, tf.float32), labels), tf.float32)
    )
    histogram = lambda mask: tf.cast(  # noqa: E731
        tf.histogram_fixed_width(tf.boolean_mask(scores, mask), [0.0, 1.0], nbins=_BINS), tf.float32
    )
    head = tf.stack(
        [
            tf.reduce_sum(tf.cast(per_image, tf.float32)),
            correct,
            tf.cast(tf.size(labels), tf.float32),
        ]
    )
    return tf.concat([head, histogram(labels > 0.5), histogram(labels <= 0.5)], axis=0)


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
        "val_auc": safe_auc(y, p),
        "val_images": int(y.size),
        "threshold": youden_threshold(y, p),
        "threshold_sensitivity_90": sensitivity_threshold(y, p, 0.9),
    }


def _evaluate(predict_step, dataset, batch_size: int) -> dict:
    """:func:`validation_summary` over the whole validation set."""
    labels, scores = [], []
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        scores.append(np.asarray(predict_step(batch["image"])).reshape(-1))
        labels.append(batch["label"].astype(np.float32))
    y = np.concatenate(labels) if labels else np.zeros(0, np.float32)
    p = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    return validation_summary(y, p)


def _train_epoch(train_step, shard, config: dict, seed: int) -> tuple[dict, list]:
    """One pass over the shard; returns the epoch's train metrics and its last few batches.

    The last :data:`BN_BATCHES` batches (unaugmented, as inference sees images) are kept for
    re-estimating the BatchNorm statistics: reading the shard a second time would start a new
    epoch of the streaming split on every rank.
    """
    batch_size = config["batch_size"]
    totals = np.zeros(3 + 2 * _BINS, dtype=np.float64)
    weights_of = np.array(
        [config["class_weights"]["0"], config["class_weights"]["1"]], dtype=np.float32
    )
    recent: deque = deque(maxlen=BN_BATCHES)
    batches = shard.iter_batches(
        batch_size=batch_size,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=config["shuffle_rows"],
        local_shuffle_seed=seed,
    )
    for batch in batches:
        labels = batch["label"].astype(np.float32).reshape(-1, 1)
        weights = weights_of[batch["label"].astype(np.int64)]
        totals += np.asarray(train_step(batch["image"], labels, weights))
        recent.append(np.array(batch["image"], copy=True))
    count = max(totals[2], 1.0)
    row = {
        "loss": float(totals[0] / count),
        "accuracy": float(totals[1] / count),
        "auc": auc_from_histograms(totals[3 : 3 + _BINS], totals[3 + _BINS :]),
        "train_images": int(totals[2]),
    }
    return row, list(recent)


def _calibrate_best(val, workdir: Path, batch_size: int) -> dict:
    """Rank 0, after the last epoch: calibrate the best model as saved and measure it.

    Loads the fp32 copy of the best epoch (what ``model.keras`` will hold, whatever the
    training precision), computes its output layer's inputs on the validation set once, fits
    Platt scaling on the logits and folds it into the output layer
    (:func:`medai.calibration.calibrate_output`), and measures threshold, AUC and calibration
    on the calibrated model's own validation probabilities.
    """
    import keras
    import tensorflow as tf

    from medai.calibration import calibrate_output, head_inputs_model

    keras.config.set_dtype_policy("float32")  # training is over; the saved model is fp32
    model = keras.saving.load_model(workdir / BEST_MODEL, compile=False)
    head_inputs = head_inputs_model(model)
    features_of = tf.function(lambda x: head_inputs(x, training=False), reduce_retracing=True)
    features, labels = [], []
    for batch in val.iter_batches(batch_size=batch_size, batch_format="numpy"):
        features.append(np.asarray(features_of(batch["image"])))
        labels.append(batch["label"].astype(np.int64))
    y = np.concatenate(labels)
    _, after, block = calibrate_output(model, np.concatenate(features), y)
    model.save(workdir / CALIBRATED_MODEL, include_optimizer=False)
    summary = validation_summary(y, after)
    return {
        **{k: summary[k] for k in ("val_auc", "val_images", "threshold")},
        "threshold_sensitivity_90": summary["threshold_sensitivity_90"],
        "calibration": block,
    }


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: build the model under the strategy, train, checkpoint each epoch.

    Args:
        config: ``spec`` (a :class:`medai.model.ModelSpec` as dict), ``epochs``,
            ``batch_size`` (per worker), ``learning_rate``, ``class_weights``, ``precision``,
            ``seed``, ``cpus_per_worker``, ``shuffle_rows`` (see :func:`shuffle_buffer_rows`)
            and ``resume_from``.
    """
    from medai.runtime import assigned_cpus, configure_tensorflow, setup_logging

    setup_logging()
    _quiet_ray_loggers()
    # Ray's assignment to this worker, not the host's cores (a pod may see 64 cores of which
    # it was given 8).
    configure_tensorflow(assigned_cpus(config["cpus_per_worker"]))
    import keras
    import ray.data
    import ray.train
    import tensorflow as tf

    from medai.batchnorm import make_bn_reestimation, make_bn_sync
    from medai.model import ModelSpec, build_model

    ray.data.DataContext.get_current().enable_progress_bars = False
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    keras.utils.set_random_seed(config["seed"])
    if config["precision"] == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    spec = ModelSpec(**config["spec"])
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
        evaluation = _evaluate(predict_step, val, config["batch_size"] * 2)
        row.update(
            {k: evaluation[k] for k in ("val_loss", "val_accuracy", "val_auc", "val_images")}
        )
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["images_per_second"] = round(row["train_images"] / max(row["seconds"], 1e-9), 2)
        improved = state["best"] is None or (row["val_auc"] or 0.0) > (
            state["best"]["val_auc"] or 0.0
        )
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
    _finish(val, model, optimizer, state, workdir, rank, config["batch_size"] * 2)


def _finish(val, model, optimizer, state: dict, workdir: Path, rank: int, batch_size: int) -> None:
    """The last phase: rank 0 calibrates the best model; a last checkpoint carries it."""
    # Rank 0 alone: the other ranks wait in the report below, where no TensorFlow collective
    # runs, so the unequal work cannot deadlock MultiWorkerMirroredStrategy.
    state["final"] = _calibrate_best(val, workdir, batch_size) if rank == 0 else None
    if rank == 0:
        logger.info(_calibration_line(state["final"], state["best"]["epoch"]))
    checkpoint = _save_checkpoint(model, optimizer, state, workdir, rank)
    _report({"epoch": state["epoch"], "phase": "calibration"}, checkpoint)
    shutil.rmtree(workdir, ignore_errors=True)


def _calibration_line(final: dict, best_epoch: int) -> str:
    block = final["calibration"]
    method = block["method"] if block["method"] != "none" else f"none ({block['reason']})"
    return (
        f"calibrated the best model (epoch {best_epoch}) on {final['val_images']} validation "
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


def _epoch_line(row: dict, epochs: int, improved: bool) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    train = f"loss {fmt(row['loss'])} acc {fmt(row['accuracy'])} auc {fmt(row['auc'])}"
    val = (
        f"val_loss {fmt(row['val_loss'])} val_acc {fmt(row['val_accuracy'])} "
        f"val_auc {fmt(row['val_auc'])}"
    )
    speed = f"{row['seconds']:.1f}s {row['images_per_second']:.1f} img/s"
    best = " *best*" if improved else ""
    return f"epoch {row['epoch']}/{epochs}: {train} | {val} | {speed}{best}"
