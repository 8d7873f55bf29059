"""The prediction store: what ``medai score`` writes, and how it keeps one row per key.

A prediction folder holds Parquet files of rows in :func:`prediction_schema`. The key of a row
is ``(model_id, image_id, finding)``, and after every run the folder holds exactly one row per
key, so pandas, pyarrow and DuckDB read it as it is, without de-duplicating. Three things keep
it so, whatever happens (reruns, ``kill -9``, retried Ray tasks, two runs at once):

- each file is written under a temporary name and renamed into place, so a reader never sees
  a partial file;
- a run holds the folder's lock (:data:`LOCK`, an ``flock``) from before it reads what is done
  until it ends, and a second run on the same folder refuses at once (:func:`hold_lock`);
- :func:`reconcile` keeps one row per key (a score before an error, then the newest) and
  rewrites the files that held the others, each atomically. A run calls it at its start
  (duplicates left by a killed run or a retried write task) and at its end (a retried error
  row replaced by its new result).

Files written before a column existed (``engine`` and ``precision``; the DICOM header columns
``study_id``, ``sex``, ``age``, ``view``, ``modality``, ``manufacturer``) are upgraded in place by
the next run (:func:`upgrade_files`, atomically, with nulls in the new columns): pyarrow and
pandas take a folder's schema from one file and DuckDB refuses a glob of differing schemas, so
a folder mixing both would lose the new columns or fail to read.

Error rows say what failed: ``"read error: ..."`` (the bytes could not be had; retried by the
next run) or ``"decode error: ..."`` (the bytes are not a usable image; final unless asked).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from medai.errors import MedaiError
from medai.images import error_kind
from medai.locks import exclusive_lock

__all__ = [
    "COLUMNS",
    "HEADER_COLUMNS",
    "PREDICTION_SCHEMA",
    "Column",
    "prediction_table",
    "rank_rows",
    "KEY",
    "LOCK",
    "StoreBusyError",
    "prediction_schema",
    "prediction_files",
    "hold_lock",
    "read_index",
    "reconcile",
    "remove_temporaries",
    "rows_to_retry",
    "scored_ids",
    "complete_images",
    "upgrade_files",
]

logger = logging.getLogger("medai.predictions")
KEY = ("model_id", "image_id", "finding")
# Underscore names are ignored by pandas, pyarrow, Spark and DuckDB globs over the folder.
LOCK = "_lock"
_INDEX_COLUMNS = ["image_id", "finding", "model_id", "source", "error", "scored_at"]


@dataclass(frozen=True)
class Column:
    """One column of the prediction files: its name, Arrow type and meaning."""

    name: str
    kind: str
    doc: str


# The one column spec: the Arrow schema, the row builder and the report's columns come from it.
COLUMNS = (
    Column("image_id", "string", "a DICOM image's SOP Instance UID, else the file name (NIH)"),
    Column("source", "string", "path or URI of the image, or ARCHIVE::MEMBER in a tarball"),
    Column("score", "float32", "probability of the finding; null on error"),
    Column("predicted", "bool", "score >= threshold compared in float32; null on error"),
    Column("threshold", "float32", "the model card's threshold (Youden's J on validation)"),
    Column("finding", "string", "the finding this row scores (one row per image and finding)"),
    Column("model_id", "string", "sha256 of the model's model.keras"),
    Column("scored_at", "timestamp", "UTC, microseconds"),
    Column("error", "string", "null, or 'read error: ...' (retried) or 'decode error: ...'"),
    Column("engine", "string", "openvino or tensorflow (what ran); null in older files"),
    Column(
        "precision", "string", "fp32, bf16 or int8 (what ran, after any fallback); null likewise"
    ),
    Column("study_id", "string", "DICOM StudyInstanceUID; null for other formats"),
    Column("sex", "string", "DICOM Patient's Sex, M or F; null when unknown or not DICOM"),
    Column("age", "float32", "years, from DICOM Patient's Age (045Y, 045M, 45); null likewise"),
    Column("view", "string", "DICOM View Position (PA, AP, LL, ...); null likewise"),
    Column("modality", "string", "DICOM Modality (CR, DX); null likewise"),
    Column("manufacturer", "string", "DICOM Manufacturer of the equipment; null likewise"),
)
# Filled from a DICOM header (see medai.dicom.DicomHeader.metadata); null for PNG and JPEG.
HEADER_COLUMNS = ("study_id", "sex", "age", "view", "modality", "manufacturer")
PREDICTION_SCHEMA = {column.name: f"{column.kind}, {column.doc}" for column in COLUMNS}


def _arrow_type(kind: str):
    import pyarrow as pa

    if kind == "timestamp":
        return pa.timestamp("us", tz="UTC")
    return {"string": pa.string(), "float32": pa.float32(), "bool": pa.bool_()}[kind]


class StoreBusyError(MedaiError, ValueError):
    """Another run holds the prediction folder's lock."""


def prediction_schema():
    """The Arrow schema of prediction files (from :data:`COLUMNS`)."""
    import pyarrow as pa

    return pa.schema([(column.name, _arrow_type(column.kind)) for column in COLUMNS])


def prediction_files(out: str | Path) -> list[Path]:
    """Completed prediction files in an output folder (temporary files excluded)."""
    folder = Path(out)
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def hold_lock(out: str | Path):
    """Hold the prediction folder's lock for a run; refuse at once if another run holds it.

    Refusing rather than waiting suits schedulers: the next scheduled run picks up whatever
    is left. ``flock`` is released by the kernel when the holder dies, so a killed run leaves
    no stale lock.

    Raises:
        StoreBusyError: Naming the folder and the holder.
    """
    folder = Path(out)

    def refuse(holder: str) -> StoreBusyError:
        return StoreBusyError(
            f"another run is writing predictions to {folder} ({holder}); it holds "
            f"{folder / LOCK}: wait for it to finish, or use another --out"
        )

    return exclusive_lock(folder / LOCK, refuse)


def upgrade_files(out: str | Path) -> int:
    """Rewrite prediction files of an older schema in the current one (call with the lock held).

    Columns added since (``engine``, ``precision``) are null in the rewritten rows; every
    other value is kept. Each file is rewritten atomically, so a kill part-way leaves some
    files upgraded and the others for the next run.

    Returns:
        The number of files rewritten.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = prediction_schema()
    upgraded = 0
    for path in prediction_files(out):
        if pq.read_schema(path).remove_metadata().equals(schema):
            continue
        table = pq.read_table(path)
        columns = [
            table[name] if name in table.column_names else pa.nulls(table.num_rows, kind)
            for name, kind in zip(schema.names, schema.types, strict=True)
        ]
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(pa.table(columns, schema=schema), tmp, compression="zstd")
        os.replace(tmp, path)
        upgraded += 1
    if upgraded:
        logger.info("upgraded %d prediction files in %s to the current schema", upgraded, out)
    return upgraded


def remove_temporaries(out: str | Path) -> int:
    """Delete temporary files left by killed writers (call with the lock held)."""
    removed = 0
    for path in Path(out).glob(".*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def read_index(out: str | Path, model_id: str) -> pd.DataFrame:
    """Every row of ``model_id`` in a folder, without scores.

    Returns:
        Columns ``image_id``, ``finding``, ``source``, ``error`` (None when scored),
        ``scored_at``, ``file`` (the file's name) and ``position`` (the row's index in it).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = []
    for path in prediction_files(out):
        table = pq.read_table(path, columns=_INDEX_COLUMNS)
        frame = table.to_pandas()
        frame["file"] = path.name
        frame["position"] = np.arange(table.num_rows)
        parts.append(frame[np.asarray(pc.equal(table["model_id"], model_id), dtype=bool)])
    columns = [c for c in _INDEX_COLUMNS if c != "model_id"] + ["file", "position"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def scored_ids(out: str | Path, model_id: str) -> frozenset[str]:
    """Image ids already in an output folder for ``model_id`` (errors included)."""
    return frozenset(read_index(out, model_id)["image_id"])


def complete_images(done: pd.DataFrame, findings: Iterable[str]) -> frozenset[str]:
    """Images that have a row for every one of ``findings`` (``done`` as :func:`reconcile`)."""
    wanted = list(findings)
    rows = done[done["finding"].isin(wanted)]
    per_image = rows.groupby("image_id")["finding"].nunique()
    return frozenset(per_image.index[per_image == len(set(wanted))])


def reconcile(
    out: str | Path, model_id: str, retire: Iterable[tuple[str, str]] = ()
) -> pd.DataFrame:
    """Leave exactly one row per key of ``model_id`` in a folder (call with the lock held).

    Of several rows with one key, the first by :func:`rank_rows` wins (a score over an
    error, then the newest ``scored_at``, then the later file). Winners are chosen before any
    file changes and no file loses a winner, so a kill part-way leaves at worst duplicates for
    the next call, never a lost row. Each affected file is rewritten under a temporary name
    and renamed over the original; one left without rows is removed.

    Args:
        out: The prediction folder.
        model_id: Only this model's rows are considered.
        retire: ``(image_id, finding)`` keys whose rows are removed altogether: error rows a
            run found obsolete (an archive that now reads to its end has no error).

    Returns:
        The rows kept, one per key (columns as :func:`read_index`, without ``position``).
    """
    index = read_index(out, model_id)
    if index.empty:
        return index.drop(columns="position")
    ranked = rank_rows(index, tiebreak=("file", "position"))
    keys = pd.MultiIndex.from_frame(ranked[["image_id", "finding"]])
    retired = keys.isin(list(retire)) if retire else np.zeros(len(ranked), dtype=bool)
    losers = ranked.duplicated(["image_id", "finding"], keep="first").to_numpy() | retired
    for name, rows in ranked[losers].groupby("file"):
        _drop_rows(Path(out) / name, rows["position"].to_numpy())
    if losers.any():
        logger.info(
            "reconciled %s: removed %d superseded rows of model %s",
            out,
            int(losers.sum()),
            model_id[:12],
        )
    return ranked[~losers].drop(columns=["position"]).reset_index(drop=True)


def _drop_rows(path: Path, positions: np.ndarray) -> None:
    """Rewrite one prediction file without the rows at ``positions`` (atomically)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[positions] = False
    if not keep.any():
        path.unlink()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table.filter(keep), tmp, compression="zstd")
    os.replace(tmp, path)


def rows_to_retry(done: pd.DataFrame, retry_errors: bool = False) -> pd.DataFrame:
    """Error rows a run scores again: read errors always, decode errors with ``retry_errors``.

    Error texts without a kind (written before kinds existed) are retried once, like read
    errors; their new row carries a kind.

    Args:
        done: One row per key, as :func:`reconcile` returns.
        retry_errors: Retry every error row.
    """
    failed = done[done["error"].notna()]
    if retry_errors:
        return failed
    return failed[failed["error"].map(error_kind) != "decode"]


def rank_rows(rows: pd.DataFrame, tiebreak: Sequence[str] = ()) -> pd.DataFrame:
    """The one duplicate-row rule: rows ordered so that the first of each (image, finding) wins.

    A score wins over an error (a non-empty ``error`` text), then the newest ``scored_at``
    (a missing one counts as the oldest), then the ``tiebreak`` columns, largest first. Used
    by :func:`reconcile` on the store and by the report's accounting on what it reads.
    """
    error = rows["error"]
    failed = error.notna() & (error.astype(str).str.strip() != "")
    keys = ["image_id", "finding", "_failed", "scored_at", *tiebreak]
    ranked = rows.assign(_failed=failed.to_numpy()).sort_values(
        keys,
        ascending=[True, True, True, False, *[False] * len(tiebreak)],
        na_position="last",
        kind="stable",
    )
    return ranked.drop(columns="_failed")


def prediction_table(
    batch: dict, model_id: str, findings: list[str], thresholds: list[float]
) -> tuple[object, np.ndarray]:
    """The rows of a scored batch, one per kept image and finding (image-major).

    Args:
        batch: Scored rows: ``image_id``, ``source``, ``score`` ``(N, findings)``, ``error``,
            ``skip`` (not written), ``engine``, ``precision`` and, optionally, ``meta`` (the
            DICOM header columns as JSON, ``""`` for other formats).

    Returns:
        The Arrow table in :func:`prediction_schema` and the per-image error mask.
    """
    import pyarrow as pa

    from medai.card import is_positive

    keep = ~np.asarray(batch["skip"], dtype=bool)
    k = len(findings)
    errors = [str(e) for e, kept in zip(batch["error"], keep, strict=True) if kept]
    failed = np.array([bool(e) for e in errors], dtype=bool)
    scores = np.asarray(batch["score"], dtype=np.float32).reshape(len(keep), k)[keep]
    n = len(errors)

    def per_row(values) -> list:
        return [v for v, kept in zip(values, keep, strict=True) if kept for _ in range(k)]

    predicted = np.zeros((n, k), bool)
    for column, threshold in enumerate(thresholds):  # each finding by its own threshold
        predicted[:, column] = is_positive(scores[:, column], threshold)
    mask = np.repeat(failed, k)
    values = {
        "image_id": [str(v) for v in per_row(batch["image_id"])],
        "source": [str(v) for v in per_row(batch["source"])],
        "score": pa.array(scores.reshape(-1), mask=mask, type=pa.float32()),
        "predicted": pa.array(np.asarray(predicted).reshape(-1), mask=mask, type=pa.bool_()),
        "threshold": pa.array(np.tile(np.asarray(thresholds, np.float32), n)),
        "finding": list(findings) * n,
        "model_id": [model_id] * (n * k),
        "scored_at": [datetime.now(timezone.utc)] * (n * k),
        "error": [e or None for e in errors for _ in range(k)],
        "engine": [str(v) for v in per_row(batch["engine"])],
        "precision": [str(v) for v in per_row(batch["precision"])],
    }
    headers = [json.loads(m) if m else {} for m in per_row(batch.get("meta", [""] * len(keep)))]
    for name in HEADER_COLUMNS:
        values[name] = [header.get(name) for header in headers]
    schema = prediction_schema()
    arrays = [
        value if isinstance(value, pa.Array) else pa.array(value, field.type)
        for value, field in ((values[field.name], field) for field in schema)
    ]
    return pa.Table.from_arrays(arrays, schema=schema), failed
