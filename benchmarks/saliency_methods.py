"""Compare saliency methods on phantom models: pointing game, deletion AUC, cost per image.

For each phantom kind (``distractors``: :data:`medai.phantoms.DISTRACTORS`, three findings,
Mass lesions anywhere in the lung next to effusion haze and enlarged hearts, a third of the
views AP; ``lesion``: the lesion-only phantoms of the slow pointing-game test), image size and
seed, it draws phantoms in memory (one image per patient), trains an InceptionV3 from random
weights with a plain one-process Keras loop (``model.fit``, Adam 1e-3, the checkpoint with the
best validation AUC of Mass), then plays every method of :data:`medai.saliency.METHODS` on the
boxed Mass test lesions: the pointing game, the deletion curve's AUC against the random-order
curve's (:mod:`medai.faithfulness`), and the seconds per image of the map alone. Trained
models are cached under ``--cache`` (``<kind>_<size>_<seed>.keras`` and the test set), so a
second run only measures. Prints one row per training and method, then the table of means.

    nice -n 15 python benchmarks/saliency_methods.py --sizes 96 128 --seeds 0 1 \\
        --kinds distractors lesion --cache /tmp/saliency-bench
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

KINDS = ("distractors", "lesion")


def phantom_spec(kind: str, size: int, seed: int):
    """The phantoms of one kind, at ``size`` px."""
    from medai.phantoms import DISTRACTORS, PhantomSpec

    if kind == "distractors":
        return replace(DISTRACTORS, size=size, seed=seed)
    lesion = PhantomSpec(
        size=size, seed=seed, exposure_jitter=0.15, lesion_contrast=110.0, lesion_profile="sphere"
    )
    return lesion


def draw_set(spec, count: int, rng: np.random.Generator) -> dict:
    """``count`` phantoms: images, labels ``(count, K)`` (Mass first) and Mass boxes."""
    from medai.phantoms import draw_phantom

    findings = spec.findings or ("Mass",)
    images, labels, boxes = [], [], []
    for _ in range(count):
        carried = rng.random(len(findings)) < spec.positive_fraction
        signs = frozenset(f for f, c in zip(findings, carried, strict=True) if c)
        ap = bool(spec.ap_fraction) and bool(rng.random() < spec.ap_fraction)
        drawn = draw_phantom(
            rng, spec.size, "Mass" in signs, spec, signs if spec.findings else None, ap
        )
        images.append(drawn.pixels[..., None])
        labels.append([f in signs for f in findings])
        boxes.append(drawn.lesion_box or (np.nan,) * 4)
    return {
        "images": np.stack(images),
        "labels": np.asarray(labels, np.float32),
        "boxes": np.asarray(boxes, np.float64),
        "findings": np.asarray(findings),
    }


def train(kind: str, size: int, seed: int, args) -> tuple[object, dict]:
    """Train one model, or load it from the cache (training on where it stopped when the
    cached one had fewer epochs); returns it and its test set."""
    import keras

    from medai.model import ModelSpec, build_model

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    stem = cache / f"{kind}_{size}_{seed}"
    done, test = 0, None
    if stem.with_suffix(".keras").exists():
        test = dict(np.load(stem.with_suffix(".npz")))
        done = int(test.get("epochs", 6))
        model = keras.models.load_model(stem.with_suffix(".keras"))
        if done >= args.epochs:
            return model, test
    spec = phantom_spec(kind, size, seed)
    rng = np.random.default_rng(seed)
    fit, val, drawn = (draw_set(spec, n, rng) for n in (args.train, args.val, args.test))
    if test is None:
        test = drawn | {"val_auc": np.asarray(-1.0), "train_s": np.asarray(0.0)}
        keras.utils.set_random_seed(seed)
        model = build_model(ModelSpec(size, "gap", "none", n_outputs=fit["labels"].shape[1]))
        model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    started = time.perf_counter()
    best = _fit(model, fit, val, range(done, args.epochs), float(test["val_auc"]), kind, seed)
    model.save(stem.with_suffix(".keras"))
    test["val_auc"] = np.asarray(best)
    test["epochs"] = np.asarray(args.epochs)
    test["train_s"] = np.asarray(float(test["train_s"]) + time.perf_counter() - started)
    np.savez(stem.with_suffix(".npz"), **test)
    return model, test


def _fit(model, fit: dict, val: dict, epochs, best: float, kind: str, seed: int) -> float:
    """Train over ``epochs``; the model ends with the weights of the best validation AUC of
    Mass (those it came with, when no epoch beats ``best``)."""
    from sklearn.metrics import roc_auc_score

    weights, size = model.get_weights(), fit["images"].shape[1]
    for epoch in epochs:
        model.fit(fit["images"], fit["labels"], batch_size=16, epochs=1, verbose=0)
        scores = model.predict(val["images"], batch_size=32, verbose=0)
        auc = float(roc_auc_score(val["labels"][:, 0], scores[:, 0]))
        print(
            f"  {kind} {size}px seed {seed} epoch {epoch + 1}: val AUC Mass {auc:.3f}", flush=True
        )
        if auc > best:
            best, weights = auc, model.get_weights()
    model.set_weights(weights)
    return best


def measure(model, test: dict, method: str, args) -> dict:
    """One method on one model's boxed Mass test lesions."""
    from medai.faithfulness import deletion_aucs
    from medai.saliency import Box, Explainer, choose_block, pointing_hit

    size = test["images"].shape[1]
    explainer = Explainer(model, "bench", list(test["findings"]), size, choose_block(model), method)
    boxed = ~np.isnan(test["boxes"][:, 0])
    images, boxes = test["images"][boxed][: args.lesions], test["boxes"][boxed][: args.lesions]
    explainer.heatmaps(images[:1], "Mass")  # trace the graph before timing
    started = time.perf_counter()
    maps = explainer.heatmaps(images, "Mass")
    seconds = (time.perf_counter() - started) / len(images)
    hits = [pointing_hit(m, Box(*b), (size, size)) for m, b in zip(maps, boxes, strict=True)]
    deletion, random = deletion_aucs(model, images, maps, 0, seed=0)
    return {
        "n": len(images),
        "pointing": float(np.mean(hits)),
        "deletion": float(np.mean(deletion)),
        "random": float(np.mean(random)),
        "below": float(np.mean(deletion < random)),
        "s_per_image": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--cache", default="/tmp/medai-saliency-bench")
    parser.add_argument("--train", type=int, default=320, help="training images")
    parser.add_argument("--val", type=int, default=80, help="validation images")
    parser.add_argument("--test", type=int, default=120, help="test images")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lesions", type=int, default=60, help="boxed test lesions per model")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument(
        "--unseen",
        type=int,
        default=0,
        help="also measure on this many phantoms drawn from another seed (seed + 1000), "
        "data no method was chosen on",
    )
    args = parser.parse_args()
    from medai.runtime import quiet_tensorflow
    from medai.saliency import METHODS

    quiet_tensorflow()
    rows = []
    for kind in args.kinds:
        for size in args.sizes:
            for seed in args.seeds:
                model, test = train(kind, size, seed, args)
                if args.train_only:
                    continue
                sets = {"test": test}
                if args.unseen:
                    spec = phantom_spec(kind, size, seed + 1000)
                    unseen = draw_set(spec, args.unseen, np.random.default_rng(seed + 1000))
                    sets["unseen"] = unseen
                for (data, images), method in itertools.product(
                    sets.items(), args.methods or METHODS
                ):
                    row = {"kind": kind, "size": size, "seed": seed, "data": data}
                    row |= {"method": method, "val_auc": float(test["val_auc"])}
                    rows.append(row | measure(model, images, method, args))
                    row = rows[-1]
                    print(
                        "  {kind} {size}px seed {seed} {data} {method}: val AUC {val_auc:.3f}, "
                        "n {n}, "
                        "pointing {pointing:.2f}, deletion {deletion:.3f} vs random {random:.3f} "
                        "({below:.2f} of images below), {s_per_image:.2f} s/image".format(**row),
                        flush=True,
                    )
    if rows:
        print_table(rows)


def print_table(rows: list[dict]) -> None:
    """Means over trainings per kind, size and method (Markdown)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["deletion_below_random"] = frame["deletion"] < frame["random"]
    frame["pointing_0.6"] = frame["pointing"] >= 0.6
    table = frame.groupby(["kind", "data", "size", "method"]).agg(
        trainings=("seed", "count"),
        pointing=("pointing", "mean"),
        pointing_min=("pointing", "min"),
        pointing_ge_06=("pointing_0.6", "sum"),
        deletion_auc=("deletion", "mean"),
        random_auc=("random", "mean"),
        deletion_below_random=("deletion_below_random", "sum"),
        s_per_image=("s_per_image", "mean"),
    )
    print(table.round(3).to_markdown())


if __name__ == "__main__":
    main()
