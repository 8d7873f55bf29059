"""Time the report job at ChestX-ray14 scale on synthetic predictions.

Writes ``--rows`` images' prediction rows per model (Parquet, the ``medai score`` schema from
:func:`medai.predictions.prediction_schema`; one row per image and finding with ``--findings``)
and an NIH-style label CSV (with age, sex, view and follow-up, so the subgroups are computed)
into a temporary folder, runs :func:`medai.report.run_report` with the full bootstrap, and
prints the wall time, e.g. ``report over 112120 rows: 12.3 s``. Labels are drawn per finding
at about the ChestX-ray14 prevalence and scores are correlated with them.
Example thumbnails are read from a few small generated PNG files that every row points at.

    python benchmarks/report_scale.py --rows 112120
    python benchmarks/report_scale.py --rows 112120 --findings 14   # 1,569,680 rows

With ``--model MODEL_DIR`` the first synthetic model takes that model's id, so the report
draws heatmaps (``--saliency``) on the example thumbnails; ``--boxes N`` adds a box file
boxing Mass on the first N images (NIH's has 85 Mass boxes among 984), so the report also
plays the pointing game and measures faithfulness there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

NIH_ROWS = 112_120
# Share of ChestX-ray14 images with each finding (Wang et al. 2017, rounded).
PREVALENCE = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.025,
    "Consolidation": 0.042,
    "Edema": 0.021,
    "Effusion": 0.119,
    "Emphysema": 0.022,
    "Fibrosis": 0.015,
    "Hernia": 0.002,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pleural_Thickening": 0.030,
    "Pneumonia": 0.013,
    "Pneumothorax": 0.047,
}


def chosen_findings(count: int) -> tuple[str, ...]:
    """``Mass`` for one finding, else the first ``count`` NIH findings."""
    from medai.labels import NIH_FINDINGS

    if not 1 <= count <= len(NIH_FINDINGS):
        raise SystemExit(f"--findings must be 1 to {len(NIH_FINDINGS)}, not {count}")
    return ("Mass",) if count == 1 else NIH_FINDINGS[:count]


def write_inputs(
    folder: Path,
    rows: int,
    models: int,
    seed: int,
    findings: tuple[str, ...] = ("Mass",),
    first_model_id: str | None = None,
) -> tuple[Path, Path]:
    """Write synthetic predictions and labels; return ``(predictions dir, labels csv)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from medai.labels import NIH_FINDINGS
    from medai.predictions import prediction_schema

    rng = np.random.default_rng(seed)
    image_ids = np.array([f"{i // 8 + 1:08d}_{i % 8:03d}.png" for i in range(rows)])
    names = np.array(NIH_FINDINGS)
    hot = rng.random((rows, len(names))) < np.array([PREVALENCE[name] for name in names])
    text = ["|".join(names[row]) or "No Finding" for row in hot]
    label_csv = folder / "Data_Entry_2017.csv"
    pd.DataFrame(
        {
            "Image Index": image_ids,
            "Finding Labels": text,
            # Eight images per patient: the first is follow-up 0.
            "Follow-up #": np.arange(rows) % 8,
            "Patient ID": [name[:8] for name in image_ids],
            # Subgroup metadata at about ChestX-ray14's mix (56% male, 60% PA).
            "Patient Age": rng.choice([30, 50, 70, 85], rows, p=[0.25, 0.4, 0.3, 0.05]),
            "Patient Gender": np.where(rng.random(rows) < 0.56, "M", "F"),
            "View Position": np.where(rng.random(rows) < 0.6, "PA", "AP"),
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
    k = len(findings)
    columns = [list(NIH_FINDINGS).index(name) for name in findings]
    labels = hot[:, columns].ravel()  # image-major: the rows of one image are adjacent
    n = rows * k
    scored_at = pd.Timestamp("2025-01-01", tz="UTC")
    for model in range(models):
        model_id = hashlib.sha256(f"synthetic model {model}".encode()).hexdigest()
        if model == 0 and first_model_id:
            model_id = first_model_id
        scores = 1 / (1 + np.exp(-(rng.normal(-1.5, 1.0, n) + 1.2 * labels)))
        scores = scores.astype(np.float32)
        failed = rng.random(n) < 0.001
        error = np.where(failed, "decode error: not a decodable image", None)
        columns = {
            "image_id": pa.array(np.repeat(image_ids, k), pa.string()),
            "source": pa.array(
                np.repeat([sources[i % len(sources)] for i in range(rows)], k), pa.string()
            ),
            "score": pa.array(np.where(failed, np.nan, scores), pa.float32(), from_pandas=True),
            "predicted": pa.array(np.where(failed, None, scores >= 0.3), pa.bool_()),
            "threshold": pa.array(np.full(n, 0.3, np.float32)),
            "finding": pa.array(np.tile(np.array(findings), rows), pa.string()),
            "model_id": pa.array(np.full(n, model_id), pa.string()),
            "scored_at": pa.array(np.full(n, scored_at), pa.timestamp("us", tz="UTC")),
            "error": pa.array(error, pa.string()),
        }
        schema = prediction_schema()
        # Columns this benchmark does not model (e.g. the engine that ran) are null.
        table = pa.table([columns.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema)
        # Several files per model, as Ray Data writes them.
        for part, start in enumerate(range(0, n, 40_000 * k)):
            name = f"m{model}-{part:05d}.parquet"
            pq.write_table(table.slice(start, 40_000 * k), predictions / name)
    return predictions, label_csv


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark and print the time of the report over ``--rows`` images.

    Returns:
        The measured seconds.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=NIH_ROWS, help="images scored per model")
    parser.add_argument(
        "--findings",
        type=int,
        default=1,
        help="findings per image (1 = Mass; 14 = all NIH findings, one row per image and finding)",
    )
    parser.add_argument(
        "--models",
        type=int,
        default=1,
        help="models scoring the same images (2+ adds the comparison)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="show the report's log")
    parser.add_argument("--model", default=None, help="model directory: heatmaps on examples")
    parser.add_argument("--saliency", default="gradcam", help="heatmap method with --model")
    parser.add_argument("--boxes", type=int, default=0, help="Mass boxes on the first N images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    findings = chosen_findings(args.findings)

    from medai.report import ReportConfig, run_report

    with tempfile.TemporaryDirectory(prefix="medai-report-bench-") as tmp:
        folder = Path(tmp)
        model_id = None
        if args.model:
            model_id = json.loads((Path(args.model) / "model_card.json").read_text())["model_id"]
        predictions, labels = write_inputs(
            folder, args.rows, args.models, args.seed, findings, model_id
        )
        boxes = None
        if args.boxes:
            ids = pd.read_csv(labels, usecols=["Image Index"])["Image Index"][: args.boxes]
            boxes = folder / "boxes.csv"
            boxes.write_text(
                "image_id,finding,x,y,width,height\n"
                + "".join(f"{image_id},Mass,64,64,64,64\n" for image_id in ids)
            )
        config = ReportConfig(
            model=args.model,
            boxes=boxes,
            saliency=args.saliency,
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
        for row in section["summary"]:
            print(
                f"model {model_id[:12]} {row['finding']}: n={row['n']} "
                f"positives={row['n_positive']} AUC={row['auc']:.4f} CI95={row['auc_ci95']}"
            )
    if len(findings) == 1:
        print(f"report over {args.rows} rows: {seconds:.1f} s")
    else:
        total = args.rows * len(findings)
        print(
            f"report over {args.rows} images x {len(findings)} findings ({total} rows): "
            f"{seconds:.1f} s"
        )
    return seconds


if __name__ == "__main__":
    main()
