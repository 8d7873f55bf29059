"""Does the training augmentation let the network learn small lesions among distractors?

Trains InceptionV3 from random weights in one process with medai's own replica step
(:func:`medai.train_loop.make_replica_step`: masked BCE over the three findings, Adam 1e-3,
batch 16) on in-memory multi-finding phantoms with distractors
(:data:`medai.phantoms.DISTRACTORS`, one image per patient), once per augmentation:

- ``warp``: medai's augmentation (:mod:`medai.augment`, one affine warp, one resample);
- ``chain``: the chain of Keras random layers medai used before (rotation, translation, zoom,
  shear: four resamples);
- ``none``: no augmentation.

Prints each augmentation's cost (milliseconds per batch of 16), each epoch's validation AUC
per finding and, at the end, the best and last Mass AUC of each run. One run of 12 epochs
at 128 px takes about 2.5 minutes on 2 cores.

    nice python benchmarks/augmentation.py --augmentations warp chain none --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

AUGMENTATIONS = ("warp", "chain", "none")


def keras_chain(seed: int):
    """The former augmentation: four Keras random layers, each resampling the image."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
            keras.layers.RandomShear(0.05, 0.05, fill_mode="constant", seed=seed),
        ]
    )


def augmenter(name: str, seed: int):
    from medai.augment import build_augmenter

    if name == "warp":
        return build_augmenter(seed)
    if name == "chain":
        return keras_chain(seed)
    return lambda images, training=True: images


def batch_seconds(name: str, size: int, batches: int = 30) -> float:
    """Wall seconds to augment one batch of 16 images (inside a ``tf.function``, traced first)."""
    import tensorflow as tf

    augment = augmenter(name, 0)
    step = tf.function(lambda images: augment(images, training=True))
    images = tf.random.uniform((16, size, size, 1), 0.0, 255.0)
    step(images)
    started = time.perf_counter()
    for _ in range(batches):
        step(images).numpy()
    return (time.perf_counter() - started) / batches


def run(name: str, size: int, seed: int, args) -> list[float]:
    """One training; the validation AUC of Mass after each epoch."""
    import keras
    import tensorflow as tf
    from saliency_methods import draw_set
    from sklearn.metrics import roc_auc_score

    from medai.model import ModelSpec, build_model
    from medai.phantoms import DISTRACTORS
    from medai.train_loop import make_replica_step

    spec = replace(DISTRACTORS, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    fit, val = draw_set(spec, args.train, rng), draw_set(spec, args.val, rng)
    keras.utils.set_random_seed(seed)
    model = build_model(ModelSpec(size, "gap", "none", n_outputs=fit["labels"].shape[1]))
    step = tf.function(
        make_replica_step(model, keras.optimizers.Adam(1e-3), augmenter(name, seed), 16)
    )
    weights = np.ones((16, fit["labels"].shape[1]), np.float32)
    mass = []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        order = np.random.default_rng(seed * 1000 + epoch).permutation(len(fit["images"]))
        for start in range(0, len(order) - 15, 16):
            batch = order[start : start + 16]
            step(fit["images"][batch], fit["labels"][batch], weights)
        scores = model.predict(val["images"], batch_size=32, verbose=0)
        aucs = [roc_auc_score(val["labels"][:, k], scores[:, k]) for k in range(scores.shape[1])]
        mass.append(aucs[0])
        print(
            f"  {name} {size}px seed {seed} epoch {epoch + 1}: val AUC "
            + " ".join(f"{f} {a:.3f}" for f, a in zip(fit["findings"], aucs, strict=True))
            + f" ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return mass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--augmentations", nargs="+", default=list(AUGMENTATIONS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=320, help="training images")
    parser.add_argument("--val", type=int, default=80, help="validation images")
    args = parser.parse_args()
    unknown = set(args.augmentations) - set(AUGMENTATIONS)
    if unknown:
        parser.error(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTATIONS}")
    from medai.runtime import quiet_tensorflow

    quiet_tensorflow()
    for size in args.sizes:
        for name in args.augmentations:
            seconds = batch_seconds(name, size)
            print(f"{name} at {size} px: {1000 * seconds:.1f} ms per batch of 16", flush=True)
    rows = []
    for size in args.sizes:
        for seed in args.seeds:
            for name in args.augmentations:
                mass = run(name, size, seed, args)
                rows.append((name, size, seed, max(mass), mass[-1]))
    print("\n| augmentation | size | seed | best val AUC Mass | last val AUC Mass |")
    print("|---|---|---|---|---|")
    for name, size, seed, best, last in rows:
        print(f"| {name} | {size} | {seed} | {best:.3f} | {last:.3f} |")


if __name__ == "__main__":
    main()
