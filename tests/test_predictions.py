"""The prediction store contract: one row per key after reconcile, the folder lock, retries."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medai.predictions import (
    HEADER_COLUMNS,
    LOCK,
    StoreBusyError,
    hold_lock,
    prediction_files,
    prediction_schema,
    reconcile,
    rows_to_retry,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def write(out: Path, name: str, rows: list[tuple]) -> Path:
    """Write ``(image_id, model_id, score, error, minutes after T0)`` rows as a prediction file."""
    image_id, model_id, score, error, minutes = zip(*rows, strict=True)
    n = len(rows)
    table = pa.table(
        {
            "image_id": list(image_id),
            "source": [f"/data/{i}" for i in image_id],
            "score": pa.array(score, pa.float32()),
            "predicted": pa.array([None if s is None else s >= 0.5 for s in score], pa.bool_()),
            "threshold": pa.array([0.5] * n, pa.float32()),
            "finding": ["Mass"] * n,
            "model_id": list(model_id),
            "scored_at": [T0 + timedelta(minutes=m) for m in minutes],
            "error": list(error),
            "engine": ["openvino"] * n,
            "precision": ["fp32"] * n,
            # The DICOM header columns: null for PNGs.
            **{name: pa.nulls(n, prediction_schema().field(name).type) for name in HEADER_COLUMNS},
        },
        schema=prediction_schema(),
    )
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / name)
    return out / name


def test_reconcile_keeps_one_row_per_key_score_first_then_newest(tmp_path):
    write(
        tmp_path,
        "predictions-a.parquet",
        [
            ("x.png", "m1", None, "read error: cannot read x", 0),
            ("y.png", "m1", None, "read error: cannot read y", 0),
            ("z.png", "m1", 0.7, None, 0),
            ("z.png", "m2", 0.1, None, 0),  # another model: never touched
        ],
    )
    write(
        tmp_path,
        "predictions-b.parquet",
        [
            ("x.png", "m1", 0.4, None, -5),  # a score wins over a newer error
            ("y.png", "m1", None, "read error: cannot read y", 9),  # the newest error wins
        ],
    )
    write(tmp_path, "predictions-c.parquet", [("z.png", "m1", 0.7, None, -1)])  # a task's 1st try

    kept = reconcile(tmp_path, "m1").set_index("image_id")
    frame = pd.read_parquet(tmp_path)
    assert not frame.duplicated(["model_id", "image_id", "finding"]).any()
    assert len(frame) == 4 and sorted(kept.index) == ["x.png", "y.png", "z.png"]
    rows = frame.set_index(["model_id", "image_id"])
    assert rows.loc[("m1", "x.png"), "score"] == pytest.approx(0.4)
    assert rows.loc[("m1", "y.png"), "scored_at"] == T0 + timedelta(minutes=9)
    assert rows.loc[("m2", "z.png"), "score"] == pytest.approx(0.1)
    assert [p.name for p in prediction_files(tmp_path)] == [
        "predictions-a.parquet",
        "predictions-b.parquet",
    ]  # the file left without rows is removed
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    before = {p.name: p.stat().st_mtime_ns for p in prediction_files(tmp_path)}
    reconcile(tmp_path, "m1")  # nothing more to do: no file is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in prediction_files(tmp_path)} == before


def test_reconcile_retires_obsolete_error_rows(tmp_path):
    write(
        tmp_path,
        "predictions-a.parquet",
        [
            ("images_002.tar.gz", "m1", None, "read error: unreadable archive: EOFError", 0),
            ("00000001_000.png", "m1", 0.2, None, 0),
        ],
    )
    kept = reconcile(tmp_path, "m1", retire=[("images_002.tar.gz", "Mass")])
    assert kept["image_id"].tolist() == ["00000001_000.png"]
    assert pd.read_parquet(tmp_path)["image_id"].tolist() == ["00000001_000.png"]


def test_rows_to_retry_read_errors_always_decode_errors_on_request():
    done = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "error": [
                None,
                "read error: cannot read b",
                "decode error: empty file",
                "not a decodable image: written by an older medai",
            ],
        }
    )
    assert rows_to_retry(done)["image_id"].tolist() == ["b", "d"]
    assert rows_to_retry(done, retry_errors=True)["image_id"].tolist() == ["b", "c", "d"]


def test_lock_refuses_a_second_holder_and_is_released_when_the_holder_dies(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from medai.predictions import hold_lock\n"
            f"with hold_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(StoreBusyError, match=f"pid {holder.pid} .*{LOCK}"),
            hold_lock(tmp_path),
        ):
            pass
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait(timeout=30)
    with hold_lock(tmp_path):
        assert (tmp_path / LOCK).read_text().startswith(f"pid {os.getpid()} ")


def test_old_files_are_upgraded_so_every_reader_sees_one_schema(tmp_path):
    import duckdb

    from medai.predictions import upgrade_files

    new = write(tmp_path, "predictions-0new.parquet", [("a.png", "m1", 0.3, None, 0)])
    old = pq.read_table(
        write(tmp_path, "predictions-1old.parquet", [("b.png", "m0", 0.6, None, 0)])
    )
    pq.write_table(old.drop_columns(["engine", "precision"]), tmp_path / "predictions-1old.parquet")
    query = f"select count(*), count(engine) from read_parquet('{tmp_path}/*.parquet')"
    with pytest.raises(duckdb.Error, match="schema mismatch"):
        duckdb.sql(query).fetchall()  # a folder mixing schemas: DuckDB refuses the glob
    assert upgrade_files(tmp_path) == 1 and upgrade_files(tmp_path) == 0
    assert duckdb.sql(query).fetchall() == [(2, 1)]
    for path in prediction_files(tmp_path):
        assert pq.read_schema(path).remove_metadata().equals(prediction_schema())
    frame = pd.read_parquet(tmp_path).set_index("image_id")
    assert (
        frame.loc["b.png", "score"] == pytest.approx(0.6) and frame.loc["b.png", "model_id"] == "m0"
    )
    assert pd.isna(frame.loc["b.png", "engine"]) and frame.loc["a.png", "engine"] == "openvino"
    assert new.exists() and not list(tmp_path.glob(".*.tmp"))


def test_card_findings_thresholds_and_complete_images():
    from medai.artifact import card_findings, card_thresholds
    from medai.predictions import complete_images

    old = {"finding": "Mass", "threshold": 0.4}
    assert card_findings(old) == ["Mass"] and card_thresholds(old) == [0.4]
    multi = {
        "finding": "Mass",
        "threshold": 0.4,
        "findings": ["Mass", "Nodule"],
        "per_finding": {"Mass": {"threshold": 0.4}, "Nodule": {"threshold": 0.8}},
    }
    assert card_findings(multi) == ["Mass", "Nodule"] and card_thresholds(multi) == [0.4, 0.8]
    done = pd.DataFrame(
        {"image_id": ["a", "a", "b", "c", "c"], "finding": ["Mass", "Nodule", "Mass", "Mass", "X"]}
    )
    assert complete_images(done, ["Mass", "Nodule"]) == {"a"}
    assert complete_images(done, ["Mass"]) == {"a", "b", "c"}
