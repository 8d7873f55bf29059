"""Time the report job at ChestX-ray14 scale on synthetic predictions.

Writes ``--rows`` prediction rows per model (Parquet, the ``medai score`` schema) and an NIH-style
label CSV into a temporary folder, runs :func:`medai.report.run_report` with the full bootstrap,
and prints the wall time, e.g. ``report over 112120 rows: 12.3 s``. Example thumbnails are read
from a few small generated PNG files that every row points at.

    python benchmarks/report_scale.py --rows 112120
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

NIH_ROWS = 112_120
PREVALENCE = 0.05  # Mass is in about 5% of ChestX-ray14 images


def write_inputs(folder: Path, rows: int, models: int, seed: int) -> tuple[Path, Path]:
    """Write synthetic predictions and labels; return ``(predictions dir, labels csv)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    image_ids = np.array([f"{i // 8 + 1:08d}_{i % 8:03d}.png" for i in range(rows)])
    labels = rng.random(rows) < PREVALENCE
    findings = np.where(labels, "Mass", rng.choice(["No Finding", "Effusion", "Nodule"], rows))
    label_csv = folder / "Data_Entry_2017.csv"
    pd.DataFrame(
        {
            "Image Index": image_ids,
            "Finding Labels": findings,
            "Follow-up #": 0,
            "Patient ID": [name[:8] for name in image_ids],
        }
    ).to_csv(label_csv, index=False)

    images = folder / "images"
    images.mkdir()
    sources = []
    for index in range(8):
        path = images / f"example_{index}.png"
        Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(path)
        sources.append(str(path))

    predictions = folder / "predictions"
    predictions.mkdir()
    scored_at = pd.Timestamp("2025-01-01", tz="UTC")
    for model in range(models):
        model_id = hashlib.sha256(f"synthetic model {model}".encode()).hexdigest()
        scores = 1 / (1 + np.exp(-(rng.normal(-1.5, 1.0, rows) + 1.2 * labels)))
        scores = scores.astype(np.float32)
        failed = rng.random(rows) < 0.001
        error = np.where(failed, "not a decodable image", None)
        table = pa.table(
            {
                "image_id": pa.array(image_ids, pa.string()),
                "source": pa.array([sources[i % len(sources)] for i in range(rows)], pa.string()),
                "score": pa.array(np.where(failed, np.nan, scores), pa.float32(), from_pandas=True),
                "predicted": pa.array(scores >= 0.3, pa.bool_()),
                "threshold": pa.array(np.full(rows, 0.3, np.float32)),
                "finding": pa.array(["Mass"] * rows, pa.string()),
                "model_id": pa.array([model_id] * rows, pa.string()),
                "scored_at": pa.array([scored_at] * rows, pa.timestamp("us", tz="UTC")),
                "error": pa.array(error, pa.string()),
            }
        )
        # Several files per model, as Ray Data writes them.
        for part, start in enumerate(range(0, rows, 40_000)):
            pq.write_table(table.slice(start, 40_000), predictions / f"m{model}-{part:05d}.parquet")
    return predictions, label_csv


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark and print the time of the report over ``--rows`` rows.

    Returns:
        The measured seconds.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=NIH_ROWS, help="prediction rows per model")
    parser.add_argument(
        "--models",
        type=int,
        default=1,
        help="models scoring the same images (2+ adds the comparison)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="show the report's log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    from medai.report import ReportConfig, run_report

    with tempfile.TemporaryDirectory(prefix="medai-report-bench-") as tmp:
        folder = Path(tmp)
        predictions, labels = write_inputs(folder, args.rows, args.models, args.seed)
        config = ReportConfig(
            predictions=predictions,
            labels=labels,
            out=folder / "out",
            split="all",
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        started = time.perf_counter()
        report = run_report(config)
        seconds = time.perf_counter() - started
    for model_id, section in report["models"].items():
        print(
            f"model {model_id[:12]}: n={section['n']} AUC={section['auc']:.4f} "
            f"CI95={section['auc_ci95']}"
        )
    print(f"report over {args.rows} rows: {seconds:.1f} s")
    return seconds


if __name__ == "__main__":
    main()
