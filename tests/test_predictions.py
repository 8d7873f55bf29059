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
