"""Do bf16 scores agree with fp32? Largest score difference and AUC difference, measured.

``medai score --precision bf16`` rebuilds the network under ``mixed_bfloat16``; this script
scores the same images with both precisions and prints how far they disagree. An untrained
network is no test of that (its scores barely vary), so by default it first trains a small
model on generated phantoms with ``medai train`` (``--weights none``, 2 workers, a few
minutes on 2 cores) and scores a second, unseen phantom archive. Pass ``--model``,
``--images`` and ``--labels`` to measure a model of your own on your own data instead::

    .venv/bin/python benchmarks/bf16_agreement.py
    .venv/bin/python benchmarks/bf16_agreement.py --model MODEL_DIR --images DIR \\
        --labels Data_Entry_2017.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine_info import machine  # benchmarks/ is on sys.path when run as a script


def train_phantom_model(root: Path, image_size: int, epochs: int) -> Path:
    """Train a phantom model with ``medai train``; returns its model directory."""
    from medai.phantoms import PhantomSpec, write_phantom_archive
    from medai.train import TrainConfig, run_training

    labels = write_phantom_archive(root / "train_data", PhantomSpec(n_patients=240, seed=0))
    out = root / "model"
    run_training(
        TrainConfig(
            labels=str(labels),
            images=(str(root / "train_data"),),
            out=str(out),
            weights="none",
            image_size=image_size,
            epochs=epochs,
            num_workers=2,
            seed=0,
            batch_size=16,
        )
    )
    return out


def score_both(model: Path, images: str, root: Path) -> dict:
    """Score ``images`` with fp32 and bf16; returns ``{precision: Series of scores by id}``."""
    import pandas as pd

    from medai.score import ScoreConfig, run_scoring

    scores = {}
    for precision in ("fp32", "bf16"):
        out = root / f"pred_{precision}"
        run_scoring(
            ScoreConfig(
                model=str(model),
                images=(images,),
                out=str(out),
                precision=precision,
                progress=False,
            )
        )
        frame = pd.read_parquet(out, columns=["image_id", "score", "error"])
        frame = frame[frame["error"].isna()]
        scores[precision] = frame.set_index("image_id")["score"].astype(float).sort_index()
    return scores


def agreement_lines(scores: dict, y: np.ndarray | None, threshold: float) -> list[str]:
    """The measured differences as a Markdown table."""
    from medai.metrics import roc_auc

    fp32, bf16 = scores["fp32"].to_numpy(), scores["bf16"].to_numpy()
    diff = np.abs(fp32 - bf16)
    rows = [
        ("images compared", f"{len(diff)}"),
        (
            "fp32 scores: min / max / standard deviation",
            f"{fp32.min():.4f} / {fp32.max():.4f} / {fp32.std():.4f}",
        ),
        ("largest absolute score difference", f"{diff.max():.5f}"),
        ("mean absolute score difference", f"{diff.mean():.5f}"),
        (
            f"predictions that flip at the model's threshold {threshold:.4f}",
            f"{int(((fp32 >= threshold) != (bf16 >= threshold)).sum())}",
        ),
    ]
    if y is not None:
        auc32, auc16 = roc_auc(y, fp32), roc_auc(y, bf16)
        if auc32 is not None and auc16 is not None:
            rows += [
                ("AUC fp32 / bf16", f"{auc32:.4f} / {auc16:.4f}"),
                ("AUC difference (absolute)", f"{abs(auc32 - auc16):.4f}"),
            ]
    lines = ["| bf16 vs fp32 | value |", "| --- | ---: |"]
    return lines + [f"| {name} | {value} |" for name, value in rows]


def main(argv: list[str] | None = None) -> int:
    """Measure and print the agreement. Returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model directory (default: train one)")
    parser.add_argument("--images", help="images to score (default: unseen phantoms)")
    parser.add_argument("--labels", type=Path, help="labels of --images, for the AUCs")
    parser.add_argument("--image-size", type=int, default=128, help="of the trained model")
    parser.add_argument("--epochs", type=int, default=4, help="of the trained model")
    args = parser.parse_args(argv)
    if args.model and not args.images:
        parser.error("--model needs --images")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from medai.artifact import read_card
    from medai.labels import load_labels
    from medai.phantoms import PhantomSpec, write_phantom_archive

    with tempfile.TemporaryDirectory(prefix="medai-bf16-") as tmp:
        root = Path(tmp)
        model = args.model or train_phantom_model(root, args.image_size, args.epochs)
        images, labels = args.images, args.labels
        if images is None:
            labels = write_phantom_archive(
                root / "unseen", PhantomSpec(n_patients=120, seed=7, first_patient=5000)
            )
            images = str(root / "unseen")
        card = read_card(model)
        scores = score_both(model, images, root)
        scores["fp32"], scores["bf16"] = scores["fp32"].align(scores["bf16"], join="inner")
        y = None
        if labels is not None:
            table = load_labels(labels, card["finding"]).set_index("image_id")["label"]
            known = scores["fp32"].index.intersection(table.index)
            scores = {k: v.loc[known] for k, v in scores.items()}
            y = table.loc[known].to_numpy()
    source = "unseen generated phantoms" if args.images is None else args.images
    print(
        f"bf16 vs fp32: model {card['model_id'][:12]} ({card['finding']}, "
        f"{card['image_size']} px, weights {card.get('weights')}), images: {source}"
    )
    print(f"Machine: {machine()}")
    print("\n".join(agreement_lines(scores, y, float(card["threshold"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
