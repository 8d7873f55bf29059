"""The per-worker training loop run by Ray Train under ``MultiWorkerMirroredStrategy``.

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy with two or more workers
(ray-project/ray#47464), so the step is written out: ``strategy.run`` of a replica step whose
gradients the strategy all-reduces, and whose statistics (loss, correct count, score
histograms) are summed across replicas so that the epoch's train metrics cover every shard.

BatchNorm moving statistics are averaged across workers after each epoch, so all ranks hold
the same model; every worker then evaluates the full validation set (reading mirrored
variables may need collectives, so all ranks do the same work) and only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from medai.thresholds import auc_from_histograms, safe_auc, sensitivity_threshold, youden_threshold

__all__ = ["train_loop_per_worker", "make_replica_step", "CHECKPOINT_STATE", "BEST_MODEL"]

CHECKPOINT_STATE = "state.json"
BEST_MODEL = "best.keras"
_LAST_WEIGHTS = "last.weights.h5"
_OPTIMIZER = "optimizer.npz"
_BINS = 1000
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
    if (workdir / BEST_MODEL).exists():
        shutil.copy(workdir / BEST_MODEL, folder / BEST_MODEL)
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


def _make_steps(model, optimizer, augment, strategy, global_batch: int):
    import tensorflow as tf

    replica_step = make_replica_step(model, optimizer, augment, global_batch)

    @tf.function
    def train_step(images, labels, weights):
        stats = strategy.run(replica_step, args=(images, labels, weights))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None)

    @tf.function
    def predict_step(images):
        return model(images, training=False)

    @tf.function
    def sync_statistics():
        # BatchNorm moving statistics update per replica; averaging them keeps every worker's
        # model identical, so validation and checkpoint decisions agree across ranks.
        variables = model.non_trainable_variables
        local = strategy.run(lambda: [tf.identity(v) for v in variables])
        for variable, value in zip(variables, local, strict=True):
            variable.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

    return train_step, predict_step, sync_statistics


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


def _evaluate(predict_step, dataset, batch_size: int) -> dict:
    """Loss, accuracy, AUC, thresholds and raw arrays over the whole validation set."""
    labels, scores = [], []
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        scores.append(np.asarray(predict_step(batch["image"])).reshape(-1))
        labels.append(batch["label"].astype(np.float32))
    y = np.concatenate(labels) if labels else np.zeros(0, np.float32)
    p = np.clip(np.concatenate(scores) if scores else np.zeros(0, np.float32), 1e-7, 1 - 1e-7)
    if y.size == 0:
        return {"val_loss": None, "val_accuracy": None, "val_auc": None}
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return {
        "val_loss": loss,
        "val_accuracy": float(np.mean((p >= 0.5) == (y > 0.5))),
        "val_auc": safe_auc(y, p),
        "threshold": youden_threshold(y, p),
        "threshold_sensitivity_90": sensitivity_threshold(y, p, 0.9),
    }


def _train_epoch(train_step, shard, batch_size: int, class_weights: dict, seed: int) -> dict:
    totals = np.zeros(3 + 2 * _BINS, dtype=np.float64)
    weights_of = np.array([class_weights["0"], class_weights["1"]], dtype=np.float32)
    batches = shard.iter_batches(
        batch_size=batch_size,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=batch_size * 8,
        local_shuffle_seed=seed,
    )
    for batch in batches:
        labels = batch["label"].astype(np.float32).reshape(-1, 1)
        weights = weights_of[batch["label"].astype(np.int64)]
        totals += np.asarray(train_step(batch["image"], labels, weights))
    count = max(totals[2], 1.0)
    return {
        "loss": float(totals[0] / count),
        "accuracy": float(totals[1] / count),
        "auc": auc_from_histograms(totals[3 : 3 + _BINS], totals[3 + _BINS :]),
        "train_images": int(totals[2]),
    }


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: build the model under the strategy, train, checkpoint each epoch.

    Args:
        config: ``spec`` (a :class:`medai.model.ModelSpec` as dict), ``epochs``,
            ``batch_size`` (per worker), ``learning_rate``, ``class_weights``, ``precision``,
            ``seed``, ``cpus_per_worker``.
    """
    from medai.runtime import configure_tensorflow, setup_logging

    setup_logging()
    _quiet_ray_loggers()
    configure_tensorflow(config["cpus_per_worker"])
    import keras
    import ray.data
    import ray.train
    import tensorflow as tf

    from medai.model import ModelSpec, build_augmenter, build_model

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
    augment = build_augmenter(config["seed"])
    train_step, predict_step, sync_statistics = _make_steps(
        model, optimizer, augment, strategy, config["batch_size"] * world
    )
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
        row = {
            "epoch": epoch,
            **_train_epoch(
                train_step,
                shard,
                config["batch_size"],
                config["class_weights"],
                config["seed"] + epoch,
            ),
        }
        row["train_seconds"] = round(time.perf_counter() - started, 2)
        if world > 1 and model.non_trainable_variables:
            sync_statistics()
        evaluation = _evaluate(predict_step, val, config["batch_size"] * 2)
        row.update({k: evaluation[k] for k in ("val_loss", "val_accuracy", "val_auc")})
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
        checkpoint = _save_checkpoint(model, optimizer, state, workdir, rank)
        ray.train.report(row, checkpoint=checkpoint)
        if checkpoint is not None:
            # report() has persisted it to the run storage; the local copy would pile up in /tmp.
            shutil.rmtree(checkpoint.path, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)


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
