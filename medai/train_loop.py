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
reduces to the single-output model and its loss.

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

import logging
import math
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medai.calibration import calibrate_best
from medai.checkpoints import (
    BEST_MODEL,
    CALIBRATED_MODEL,
    CHECKPOINT_STATE,
    report_epoch,
    restore_checkpoint,
    save_best,
    save_checkpoint,
)
from medai.metrics import auc_from_histograms
from medai.model import ModelSpec, image_batches
from medai.validation import (
    calibration_line,
    epoch_line,
    is_better,
    label_matrix,
    validation_summaries,
    validation_summary,
)

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

_BINS = 1000
# Training batches per worker whose statistics re-estimate BatchNorm before validation: at
# batch 16 and 256 px, 50 cached batches are ~52 MiB per worker.
BN_BATCHES = 50
# Memory cap of a worker's shuffle buffer (uint8 images): 4096 images at 256 px. Ray's
# shuffling batcher may hold up to about twice this while it compacts.
SHUFFLE_BYTES = 256 * 1024 * 1024
logger = logging.getLogger("medai.train")


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
    from medai.augment import build_augmenter

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
    import ray.train

    worker = _build_worker(config)
    workdir = Path(tempfile.mkdtemp(prefix="medai-train-"))
    state, resumed = _resume(config, worker, workdir)
    shard = ray.train.get_dataset_shard("train")
    val = ray.train.get_dataset_shard("val")
    for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
        row, evaluation = _run_epoch(worker, shard, val, config, epoch)
        improved = is_better(row, state["best"])
        if improved:
            state["best"] = {
                "epoch": epoch,
                **{
                    k: evaluation.get(k)
                    for k in ("val_auc", "val_loss", "threshold", "threshold_sensitivity_90")
                },
            }
            save_best(worker.model, worker.spec, workdir, worker.rank)
        state["epoch"] = epoch
        state["history"].append(row)
        if worker.rank == 0:
            logger.info(epoch_line(row, config["epochs"], improved) + resumed)
        resumed = ""
        checkpoint = save_checkpoint(worker.model, worker.optimizer, state, workdir, worker.rank)
        report_epoch(row, checkpoint)
    _finish(val, worker.model, worker.optimizer, state, workdir, worker.rank, config)


@dataclass(frozen=True)
class _Worker:
    """One Ray Train worker's model, optimizer and compiled steps."""

    spec: ModelSpec
    model: object
    optimizer: object
    train_step: object
    predict_step: object
    reestimate: object  # BatchNorm re-estimation, or None (pretrained base)
    sync_statistics: object  # averaging BatchNorm statistics across workers, or None
    rank: int


def _build_worker(config: dict) -> _Worker:
    """The model and optimizer under MultiWorkerMirroredStrategy, and their steps."""
    import keras
    import ray.train
    import tensorflow as tf

    from medai.batchnorm import make_bn_reestimation, make_bn_sync
    from medai.model import build_model

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
    steps = _make_steps(model, optimizer, augment, strategy, config["batch_size"] * world)
    # A pretrained base runs its BatchNorm in inference mode: its statistics never change.
    reestimate = None if spec.pretrained else make_bn_reestimation(model, strategy)
    sync_statistics = make_bn_sync(model, strategy) if reestimate and world > 1 else None
    return _Worker(spec, model, optimizer, *steps, reestimate, sync_statistics, rank)


def _resume(config: dict, worker: _Worker, workdir: Path) -> tuple[dict, str]:
    """The loop state to start from (Ray's restart or ``--resume``), and a note for the log."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()  # set when Ray restarts failed workers
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(config["resume_from"])  # --resume of an earlier run
    if checkpoint is None:
        return {"epoch": 0, "history": [], "best": None}, ""
    state = restore_checkpoint(checkpoint, worker.model, worker.optimizer, workdir)
    return state, f" (resumed from checkpoint after epoch {state['epoch']})"


def _run_epoch(worker: _Worker, shard, val, config: dict, epoch: int) -> tuple[dict, dict]:
    """Train one epoch, then validate: the history row and the validation summary."""
    started = time.perf_counter()
    seed = (config["seed"] * 1009 + epoch) * 1013 + worker.rank
    metrics, recent = _train_epoch(worker.train_step, shard, config, seed)
    row = {"epoch": epoch, **metrics}
    row["train_seconds"] = round(time.perf_counter() - started, 2)
    if worker.reestimate is not None:
        worker.reestimate(recent)
    if worker.sync_statistics is not None:
        worker.sync_statistics()
    del recent
    findings, columns = list(config["findings"]), config["label_columns"]
    evaluation = _evaluate(worker.predict_step, val, config["batch_size"] * 2, findings, columns)
    row.update({k: evaluation[k] for k in ("val_loss", "val_accuracy", "val_auc", "val_images")})
    if "per_finding" in evaluation:
        row["val_auc_per_finding"] = {
            f: entry["val_auc"] for f, entry in evaluation["per_finding"].items()
        }
    row["seconds"] = round(time.perf_counter() - started, 2)
    row["images_per_second"] = round(row["train_images"] / max(row["seconds"], 1e-9), 2)
    return row, evaluation


def _finish(val, model, optimizer, state: dict, workdir: Path, rank: int, config: dict) -> None:
    """The last phase: rank 0 calibrates the best model; a last checkpoint carries it."""
    # Rank 0 alone: the other ranks wait in the report below, where no TensorFlow collective
    # runs, so the unequal work cannot deadlock MultiWorkerMirroredStrategy.
    if rank == 0:
        findings = list(config["findings"])
        final = calibrate_best(
            workdir / BEST_MODEL,
            workdir / CALIBRATED_MODEL,
            val,
            config["batch_size"] * 2,
            findings,
            config["label_columns"],
        )
        state["final"] = final
        for finding, entry in (final.get("per_finding") or {findings[0]: final}).items():
            logger.info(calibration_line(entry, state["best"]["epoch"], finding))
    else:
        state["final"] = None
    checkpoint = save_checkpoint(model, optimizer, state, workdir, rank)
    report_epoch({"epoch": state["epoch"], "phase": "calibration"}, checkpoint)
    shutil.rmtree(workdir, ignore_errors=True)


def _quiet_ray_loggers() -> None:
    """No per-report or per-epoch dataset INFO lines from Ray inside the workers."""
    from ray.train.v2._internal.execution import context as train_context

    # Ray Train names this logger by file path; only its level is changed here.
    for name in ("ray.train", "ray.data", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
