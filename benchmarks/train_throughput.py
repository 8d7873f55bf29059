"""Training throughput: plain Keras in one process vs Ray Train with 1 and 2 workers, fp32 and bf16.

Everything is measured in one run, on one phantom archive (``--patients`` patients, 1-3
images each, ``--image-size`` px PNGs) and the same architecture,
``build_model(ModelSpec(image_size, 'gap', 'none'))``, batch size and learning rate:

* plain Keras: one process (a fresh one per precision), the train/val split that
  :func:`medai.train.prepare_training` makes, images decoded with
  :func:`medai.images.decode_image` into in-memory ``uint8`` arrays, then
  :mod:`medai.train_loop`'s own replica step (``make_replica_step``: augmentation,
  ``GradientTape``, Adam, weighted binary cross-entropy) in a ``tf.function``, without a
  distribution strategy, and after each epoch, as medai's loop does and its epoch time
  includes, the BatchNorm re-estimation of a model trained from random weights
  (:mod:`medai.batchnorm`, over the epoch's last ``BN_BATCHES`` batches) and a prediction pass
  over the validation images. TensorFlow
  gets the thread count of a 1-worker Ray Train worker: ``configure_tensorflow`` with the CPUs
  :func:`medai.cpus.plan_workers` grants it.
* Ray Train: :func:`medai.train.run_training` with ``num_workers`` 1 and 2; its model card's
  history gives per-epoch ``train_images`` and ``seconds``.

Throughput is train images / epoch seconds over the steady-state epochs (epoch 1, which
includes tracing, is skipped). Ray Train with 1 worker against plain Keras is the overhead
comparison at equal compute (target: at most 10% overhead); 2 workers on a 2-core machine get
about one core each and are reported as measured. A local Ray is started once with
``init_ray(num_cpus=usable_cpus())``.

Full run (about 15-20 minutes on 2 cores; run it on a quiet machine)::

    .venv/bin/python benchmarks/train_throughput.py --image-size 256 --patients 120 --epochs 4

Smoke run (a few minutes)::

    .venv/bin/python benchmarks/train_throughput.py --quick
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from machine_info import machine  # benchmarks/ is on sys.path when run as a script
from presets import add_quick_flag, parse_with_presets

if TYPE_CHECKING:
    from medai.train import TrainConfig, TrainPlan

QUICK = {"patients": 30, "image_size": 96, "epochs": 2, "batch_size": 8}
FULL = {"patients": 120, "image_size": 256, "epochs": 4, "batch_size": 16}
PRECISIONS = ("fp32", "bf16")
WORKER_COUNTS = (1, 2)
SEED = 0
TARGET_RAY_VS_PLAIN = 0.90  # Ray Train 1 worker / plain Keras: at most 10% overhead


@dataclass
class Measured:
    """Per-epoch rows of one configuration and what they add up to."""

    config: str
    precision: str
    cpus: str
    history: list[dict]
    wall_seconds: float = 0.0
    threads: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def steady(self) -> list[dict]:
        """The epochs after the first (all epochs if there is only one)."""
        return self.history[1:] or self.history

    @property
    def images_per_second(self) -> float:
        """Train images / epoch seconds over the steady-state epochs."""
        seconds = sum(row["seconds"] for row in self.steady)
        return sum(row["train_images"] for row in self.steady) / seconds if seconds else 0.0

    @property
    def train_images(self) -> int:
        """Train images per epoch (of the last epoch)."""
        return int(self.history[-1]["train_images"]) if self.history else 0


# ------------------------------------------------------------------------------ inputs


def make_archive(folder: Path, patients: int, image_size: int) -> Path:
    """Write the phantom archive; returns its ``Data_Entry_2017.csv``."""
    from medai.phantoms import PhantomSpec, write_phantom_archive

    return write_phantom_archive(
        folder, PhantomSpec(n_patients=patients, size=image_size, seed=SEED)
    )


def train_config(
    args: argparse.Namespace, labels: Path, out: Path, workers: int, precision: str
) -> TrainConfig:
    """The :class:`medai.train.TrainConfig` of one configuration."""
    from medai.train import TrainConfig

    return TrainConfig(
        labels=str(labels),
        images=(str(labels.parent),),
        out=str(out),
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        weights="none",
        num_workers=workers,
        precision=precision,
        seed=SEED,
    )


# -------------------------------------------------------------- plain Keras, one process


def _decode_split(plan: TrainPlan) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (uint8 images, float labels)}`` of the train and val images, decoded once."""
    from medai.images import decode_image, image_id_of, iter_archive

    split = plan.split[plan.split["split"].isin(["train", "val"])]
    part_of = dict(zip(split["image_id"], split["split"], strict=True))
    label_of = dict(zip(split["image_id"], split["label"].astype(np.float32), strict=True))
    found: dict[str, list] = {"train": [], "val": []}
    for archive in plan.inputs.archives:
        for member, data in iter_archive(archive, wanted=set(part_of)):
            image_id = image_id_of(member)
            image = decode_image(data, plan.config.image_size)
            found[part_of[image_id]].append((image, label_of[image_id]))
    return {
        name: (np.stack([i for i, _ in rows]), np.array([y for _, y in rows], np.float32))
        for name, rows in found.items()
    }


def _make_steps(model, optimizer, augment, batch_size: int):
    """:mod:`medai.train_loop`'s own replica step without the strategy, and a predict step."""
    import tensorflow as tf

    from medai.train_loop import make_replica_step

    train_step = tf.function(make_replica_step(model, optimizer, augment, batch_size))

    @tf.function
    def predict_step(images):
        return model(images, training=False)

    return train_step, predict_step


def plain_keras(config: TrainConfig, cpus: float) -> dict:
    """Train ``config.epochs`` epochs with plain Keras in this process; per-epoch timings.

    Args:
        config: The :class:`medai.train.TrainConfig` of the 1-worker Ray Train run.
        cpus: The CPUs a 1-worker Ray Train worker gets; TensorFlow is sized to them.
    """
    from medai.runtime import configure_tensorflow

    configure_tensorflow(cpus)
    import keras
    import tensorflow as tf

    from medai.augment import build_augmenter
    from medai.batchnorm import make_bn_reestimation
    from medai.inventory import class_weights_of
    from medai.model import build_model
    from medai.train import prepare_training
    from medai.train_loop import BN_BATCHES

    plan = prepare_training(config)
    data = _decode_split(plan)
    (x_train, y_train), (x_val, _) = data["train"], data["val"]
    train = plan.split[plan.split["split"] == "train"]
    class_weights = class_weights_of(train)
    weights_of = np.array([class_weights["0"], class_weights["1"]], np.float32)
    keras.utils.set_random_seed(config.seed)
    if config.precision == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    model = build_model(config.spec)
    optimizer = keras.optimizers.Adam(config.learning_rate or 1e-3)  # medai's from-scratch rate
    optimizer.build(model.trainable_variables)
    train_step, predict_step = _make_steps(
        model, optimizer, build_augmenter(config.seed), config.batch_size
    )
    # medai's loop re-estimates BatchNorm statistics before each validation of a model trained
    # from random weights (medai.batchnorm): the same work here keeps the compute equal.
    reestimate = (
        None
        if config.spec.pretrained
        else make_bn_reestimation(model, tf.distribute.get_strategy())
    )
    rng = np.random.default_rng(config.seed)
    batch, history = config.batch_size, []
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(len(x_train))
        started = time.perf_counter()
        starts = range(0, len(order) - batch + 1, batch)  # drop_last, as medai
        for start in starts:
            index = order[start : start + batch]
            labels = y_train[index].reshape(-1, 1)
            np.asarray(
                train_step(x_train[index], labels, weights_of[labels.astype(np.int64)[:, 0]])
            )
        train_seconds = time.perf_counter() - started
        if reestimate is not None:  # over the epoch's last BN_BATCHES batches, as medai
            reestimate(x_train[order[s : s + batch]] for s in starts[-BN_BATCHES:])
        bn_seconds = time.perf_counter() - started - train_seconds
        for start in range(0, len(x_val), 2 * batch):
            np.asarray(predict_step(x_val[start : start + 2 * batch]))
        history.append(
            {
                "epoch": epoch,
                "train_images": len(order) // batch * batch,
                "seconds": time.perf_counter() - started,
                "train_seconds": train_seconds,
                "bn_seconds": bn_seconds,
            }
        )
    threads = (
        f"{tf.config.threading.get_intra_op_parallelism_threads()} intra / "
        f"{tf.config.threading.get_inter_op_parallelism_threads()} inter"
    )
    return {"history": history, "threads": threads}


def run_plain(config: TrainConfig, cpus: float) -> Measured:
    """Plain Keras in a fresh process (so TensorFlow's threads can be set before first use)."""
    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(plain_keras, config, cpus).result()
    measured = Measured(
        "plain Keras, 1 process",
        config.precision,
        f"1 x {cpus:g}",
        result["history"],
        time.perf_counter() - started,
        result["threads"],
    )
    steady = measured.steady
    train_only = sum(r["train_images"] for r in steady) / sum(r["train_seconds"] for r in steady)
    measured.notes.append(
        f"plain Keras {config.precision}, train steps only (no BatchNorm re-estimation, no "
        f"validation pass): {train_only:.1f} images/s; BatchNorm re-estimation "
        f"{np.mean([r['bn_seconds'] for r in steady]):.1f} s per epoch"
    )
    return measured


# ------------------------------------------------------------------------------ Ray Train


def run_ray(config: TrainConfig, cpus: float) -> Measured:
    """One :func:`medai.train.run_training` run; the card's history holds the epochs."""
    from medai.train import run_training

    started = time.perf_counter()
    card = run_training(config)
    history = [
        {"epoch": row["epoch"], "train_images": row["train_images"], "seconds": row["seconds"]}
        for row in card["history"]
    ]
    workers = config.num_workers
    intra = max(1, math.ceil(cpus))  # what configure_tensorflow(cpus) sets in each worker
    return Measured(
        f"Ray Train, {workers} worker{'s' if workers > 1 else ''}",
        config.precision,
        f"{workers} x {cpus:g}",
        history,
        time.perf_counter() - started,
        f"{intra} intra / {min(intra, 2)} inter",
    )


# ------------------------------------------------------------------------------ report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def report_lines(args: argparse.Namespace, results: list[Measured]) -> list[str]:
    """The table, the bf16/fp32 ratios and the overhead line."""
    by_key = {(m.config, m.precision): m for m in results}
    plain = by_key.get(("plain Keras, 1 process", "fp32"))
    base = plain.images_per_second if plain else None
    lines = [
        f"Training throughput: InceptionV3 (gap head, random init), {args.image_size} px, "
        f"batch {args.batch_size} per worker, {args.epochs} epochs ({args.patients} phantom "
        "patients); images/s over epochs 2.. (epoch 1 includes tracing)",
        f"Machine: {machine()}",
        "",
        "| config | precision | CPUs (workers x CPUs) | TF threads | train images/epoch "
        "| img/s | ratio vs plain fp32 | ratio bf16/fp32 | run wall s |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results:
        fp32 = by_key.get((m.config, "fp32"))
        bf16_ratio = (
            m.images_per_second / fp32.images_per_second
            if fp32 and fp32.images_per_second
            else None
        )
        vs_plain = m.images_per_second / base if base else None
        lines.append(
            f"| {m.config} | {m.precision} | {m.cpus} | {m.threads} | "
            f"{m.train_images} | {m.images_per_second:.1f} | {_fmt(vs_plain)} | "
            f"{_fmt(bf16_ratio)} | {m.wall_seconds:.0f} |"
        )
    lines.append("")
    ratios = []
    for precision in PRECISIONS:
        ray_one = by_key.get(("Ray Train, 1 worker", precision))
        plain_p = by_key.get(("plain Keras, 1 process", precision))
        if ray_one and plain_p and plain_p.images_per_second:
            ratios.append((precision, ray_one.images_per_second / plain_p.images_per_second))
    if ratios:
        verdict = "PASS" if all(r >= TARGET_RAY_VS_PLAIN for _, r in ratios) else "FAIL"
        measured = ", ".join(f"{r:.2f}x ({p})" for p, r in ratios)
        lines.append(
            f"Ray Train 1 worker / plain Keras = {measured}; target >= "
            f"{TARGET_RAY_VS_PLAIN:.2f}x (overhead <= 10%) at equal compute: {verdict}"
        )
    lines += [f"note: {note}" for m in results for note in m.notes]
    lines.append(
        "note: plain Keras and the 1-worker Ray Train worker call configure_tensorflow "
        "with the same CPU count, so both run the same TensorFlow threads"
    )
    if args.quick:
        lines.append("note: --quick: tiny sizes; the ratios and the verdict mean nothing")
    return lines


# -------------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, help=f"default {FULL['image_size']}")
    parser.add_argument(
        "--patients",
        type=int,
        help=f"phantom patients, 1-3 images each (default {FULL['patients']})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"epochs per configuration, the first is skipped (default {FULL['epochs']})",
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"per worker, as medai train (default {FULL['batch_size']})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        choices=WORKER_COUNTS,
        default=list(WORKER_COUNTS),
        help="Ray Train worker counts to run (default: 1 2); plain Keras always runs",
    )
    add_quick_flag(parser, QUICK)
    args = parse_with_presets(parser, argv, QUICK, FULL)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is skipped)")
    if args.batch_size < 1 or args.patients < 10:
        parser.error("--batch-size must be at least 1 and --patients at least 10")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the training benchmark and print its table. Returns the exit status."""
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ray

    from medai.cpus import plan_workers, usable_cpus
    from medai.runtime import init_ray

    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="medai-train-bench-") as tmp:
        root = Path(tmp)
        labels = make_archive(root / "archive", args.patients, args.image_size)
        init_ray(num_cpus=usable_cpus())  # as the jobs size
        try:
            cpus = {w: plan_workers(w).cpus_per_worker for w in {1, *args.workers}}
            for precision in PRECISIONS:
                print(f"plain Keras {precision} ...", flush=True)
                config = train_config(args, labels, root / f"plain-{precision}", 1, precision)
                results.append(run_plain(config, cpus[1]))
            for workers in args.workers:
                for precision in PRECISIONS:
                    print(f"Ray Train {workers} worker(s) {precision} ...", flush=True)
                    out = root / f"ray{workers}-{precision}"
                    results.append(
                        run_ray(train_config(args, labels, out, workers, precision), cpus[workers])
                    )
        finally:
            ray.shutdown()
    print("\n".join(report_lines(args, results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
