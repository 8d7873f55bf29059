"""Builders of report inputs (prediction Parquet in the scorer's schema, labels, card copies)
and readers of its outputs, shared by the report, subgroup and localisation tests."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medai.card import is_positive, write_card_copy
from medai.predictions import prediction_schema
from medai.report import ReportConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL_A = "a1" * 32
MODEL_B = "b2" * 32
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCHEMA = prediction_schema()  # the contract medai score writes


def image_ids(n: int, start: int = 0) -> list[str]:
    return [f"{i // 3 + 1:08d}_{i % 3:03d}.png" for i in range(start, start + n)]


def synthetic(n: int, seed: int = 0, prevalence: float = 0.3):
    """Labels and float32 scores with some signal."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.int8)
    scores = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).astype(np.float32)
    return y, scores


def pred_table(
    ids,
    scores,
    model_id: str = MODEL_A,
    *,
    threshold: float | None = 0.5,
    finding: str = "Mass",
    sources=None,
    errors=None,
    scored_at=None,
) -> pa.Table:
    """A table in the `medai score` schema; ``threshold=None`` leaves that column out."""
    n = len(ids)
    scores = [None if s is None or np.isnan(s) else float(np.float32(s)) for s in scores]
    cut = 0.5 if threshold is None else threshold
    columns = {
        "image_id": list(ids),
        "source": list(sources) if sources is not None else [f"/nowhere/{i}" for i in ids],
        "score": scores,
        "predicted": [None if s is None else bool(is_positive(s, cut)) for s in scores],
        "threshold": [threshold] * n,
        "finding": [finding] * n,
        "model_id": [model_id] * n,
        "scored_at": list(scored_at) if scored_at is not None else [T0] * n,
        "error": list(errors) if errors is not None else [None] * n,
    }
    # Columns these tests do not set (e.g. the engine that ran) are null.
    table = pa.table([columns.get(f.name, pa.nulls(n, f.type)) for f in SCHEMA], schema=SCHEMA)
    return table.drop_columns(["threshold"]) if threshold is None else table


def write_preds(folder: Path, name: str, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return folder


def write_labels(path: Path, ids, y) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image": list(ids), "label": [int(v) for v in y]}).to_csv(path, index=False)
    return path


def write_card(folder: Path, model_id: str, **fields) -> None:
    """The card copy ``medai score`` leaves in a predictions folder."""
    write_card_copy(folder, {"model_id": model_id, **fields})


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def simple_setup(tmp_path: Path, n: int = 200, seed: int = 0, **table_options):
    ids = image_ids(n)
    y, scores = synthetic(n, seed)
    table = pred_table(ids, scores, **table_options)
    preds = write_preds(tmp_path / "pred", "part-0.parquet", table)
    labels = write_labels(tmp_path / "labels.csv", ids, y)
    return preds, labels, y, scores


def config(preds: Path, labels: Path, out: Path, **options) -> ReportConfig:
    """A report config; ``split`` defaults to ``all`` (these labels have no NIH lists)."""
    options.setdefault("split", "all")
    return ReportConfig(predictions=preds, labels=labels, out=out, **options)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src", ""))
        for key in ("src", "href"):
            if key in values and tag != "img":
                self.links.append(values[key])


def html_images(text: str) -> _Images:
    parser = _Images()
    parser.feed(text)
    return parser
