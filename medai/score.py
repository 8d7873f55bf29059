"""The scoring job: stream image archives through a model with Ray Data into Parquet.

Pipeline: read units (tarballs streamed in place, chunks of files) -> decode tasks (CPU) ->
scorer actors (the model loaded once per actor) -> Parquet writer tasks -> a tiny summary
row per file back to the driver. Nothing is materialised and no score is collected on the
driver, so memory stays flat however large the archive.

Incremental, crash-safe and exact (see :mod:`medai.predictions`): a run holds the output
folder's lock (a second run on it refuses at once), skips the images this ``model_id`` already
has rows for except read errors (which may clear) and, with ``retry_errors``, every error, and
reconciles the folder at its start and end so that it holds exactly one row per key, however
the last run ended.

A model with several findings (``findings`` in its card, one output each) scores every image
once: it is read, decoded and passed through the network once, and the writer expands it into
one row per finding, each decided with that finding's threshold. A rerun skips an image only
when it has a row for every finding; an image left with some (a run killed between files) is
scored again whole, and reconcile keeps the newest row of each key.

The scorer actors run an inference engine (:mod:`medai.engines`): OpenVINO on CPU actors when
the model directory has an IR (``auto``), TensorFlow on GPU actors or without an IR. An
OpenVINO actor never imports TensorFlow. Each row records the engine and precision that ran.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from medai.artifact import verify_model_file
from medai.card import (
    card_findings,
    card_thresholds,
    read_card,
    write_card_copy,
)
from medai.dicom_codecs import warn_missing_codecs
from medai.dicomweb import is_dicomweb
from medai.engines import resolve_engine, verify_ir
from medai.files import write_json
from medai.images import ImageInputs, discover_images
from medai.pacs_data import check_servers, input_dataset, send_run_results
from medai.predictions import (
    PREDICTION_SCHEMA,
    complete_images,
    hold_lock,
    prediction_files,
    prediction_schema,
    prediction_table,  # the row builder: write_predictions calls it
    reconcile,
    remove_temporaries,
    rows_to_retry,
    scored_ids,
    upgrade_files,
)
from medai.score_config import PRECISIONS, ScoreConfig, ScoreError, ScoreSummary
from medai.scorer import Scorer, actor_cpus, actor_threads

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ScoreConfig",
    "ScoreError",
    "ScoreSummary",
    "PREDICTION_SCHEMA",
    "prediction_schema",
    "prediction_files",
    "scored_ids",
    "Scorer",
    "actor_cpus",
    "PreparedScoring",
    "prepare_scoring",
    "actor_threads",
    "PRECISIONS",
    "run_scoring",
]

logger = logging.getLogger("medai.score")
IN_FLIGHT_BYTES = 512 * 1024 * 1024
_SUMMARY_FIELDS = ("rows", "scored", "errors", "skipped")


def write_predictions(
    batch: dict,
    out: str,
    model_id: str,
    findings: list[str],
    thresholds: list[float],
    run_id: str,
) -> dict:
    """Ray Data UDF: write one Parquet file (temp name, then rename) and return its counts.

    Counts are of images (``rows`` of rows): an image is one row per finding.
    """
    import pyarrow.parquet as pq

    skip = np.asarray(batch["skip"], dtype=bool)
    ignored = [str(reason) for reason in batch.get("ignored", [""] * len(skip))]
    table, failed = prediction_table(batch, model_id, findings, thresholds)
    n = len(failed)
    counts = {
        "rows": [table.num_rows],
        "scored": [int(n - failed.sum())],
        "errors": [int(failed.sum())],
        "skipped": [int(skip.sum()) - sum(map(bool, ignored))],
        "ignored": [json.dumps(Counter(reason for reason in ignored if reason))],
        "file": [""],
    }
    if n == 0:
        return counts
    name = f"predictions-{model_id[:12]}-{run_id}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = Path(out) / f".{name}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, Path(out) / name)
    counts["file"] = [name]
    return counts


class PreparedScoring(NamedTuple):
    """A checked scoring run: the model's card and the image inputs found."""

    card: dict
    inputs: ImageInputs


def prepare_scoring(config: ScoreConfig) -> PreparedScoring:
    """Check options, the model directory, its IR and the inputs before any work starts.

    Raises:
        ScoreError: On unusable options or inputs.
        EngineError: On an engine or precision this model directory cannot run
            (``--engine openvino`` without an IR, int8 without an accepted int8 IR), or an IR
            file that does not match its card.
        ModelDirError: On a ``model.keras`` that does not match its card.
    """
    config.check()
    card = read_card(config.model)
    findings = card_findings(card)
    if len(set(findings)) != len(findings):
        raise ScoreError(f"{config.model}: the card lists a finding twice: {findings}")
    # The actors check again as they load; a mismatch found there would surface only as a
    # dead actor, after Ray has started.
    verify_model_file(config.model, card)
    if resolve_engine(config.model, config.engine, config.precision, card) == "openvino":
        verify_ir(config.model, config.precision, card)
    files = [i for i in config.images if not is_dicomweb(i)]
    inputs = discover_images(files) if files else ImageInputs()
    if inputs.empty and len(files) == len(config.images):
        raise ScoreError(f"--images: no images or archives found in {list(config.images)}")
    check_servers(config.images, config.pacs)  # a refused login stops the run before work
    return PreparedScoring(card, inputs)


def actor_engine(config: ScoreConfig, card: dict, gpus: float) -> str:
    """The engine the scorer actors run: ``auto`` keeps TensorFlow on a cluster with GPUs
    (GPU actors), and otherwise picks OpenVINO when the model directory has an IR."""
    if config.engine == "auto" and gpus and config.precision != "int8":
        return "tensorflow"
    return resolve_engine(config.model, config.engine, config.precision, card)


def run_scoring(config: ScoreConfig, prepared: PreparedScoring | None = None) -> ScoreSummary:
    """Score every image not yet scored by this model into ``config.out``.

    Holds the folder's lock for the whole run, so a second run on the same folder refuses.

    Args:
        config: The run's options.
        prepared: What :func:`prepare_scoring` returned for ``config``, when the caller has
            checked it already (nightly does, before its store's lock): not hashed twice.

    Returns:
        Counts and timings of the run.

    Raises:
        MedaiError: On unusable options or inputs (see :func:`prepare_scoring`);
            ``StoreBusyError`` when another run holds ``config.out``.
    """
    started = time.perf_counter()
    card, inputs = prepared or prepare_scoring(config)
    out = Path(config.out).resolve()
    with hold_lock(out):
        return _score_locked(config, card, inputs, out, started)


def _score_locked(
    config: ScoreConfig, card: dict, inputs: ImageInputs, out: Path, started: float
) -> ScoreSummary:
    """The run itself, with the output folder's lock held."""
    import ray.data

    from medai.cpus import cluster_gpus
    from medai.runtime import init_ray

    skip, retry = _settle_store(config, card, out)
    init_ray(config.address, dashboard=False)  # see init_ray: scoring has no use for it
    context = ray.data.DataContext.get_current()
    # Ray Data draws its own bars (tqdm) on a terminal; --no-progress silences them too.
    context.enable_progress_bars = config.progress
    engine = actor_engine(config, card, cluster_gpus())
    logger.info("scorer engine: %s, precision %s", engine, config.precision)
    # Bound what the pipeline holds in flight: without a limit, reading and decoding race ahead
    # of the scorer and fill the object store, so memory grows with the archive.
    context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=IN_FLIGHT_BYTES
    )
    written, listing = _pipeline(config, card, inputs, skip, out, engine)
    # The total is known up front only without archives (counting members means inflating them).
    found = len(inputs.files) + listing.count
    total = None if inputs.archives else min(found, config.limit or found)
    summary = ScoreSummary(
        model_id=card["model_id"],
        startup_seconds=time.perf_counter() - started,
        findings=len(card_findings(card)),
        engine=engine,
    )
    files = _collect(written, summary, config.progress, total)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Ray Data stats:\n%s", written.stats())
    if summary.errors:
        _log_errors(out, files, summary.errors)
    # A retried error row gives way to its new row; one whose input now reads without any
    # error row of its own (an archive read to its end) is obsolete. --limit may stop before
    # reaching an input, so nothing is declared obsolete then.
    model_id = card["model_id"]
    obsolete = () if config.limit else _obsolete_errors(retry, inputs, out, files, model_id)
    reconcile(out, model_id, retire=obsolete)
    summary.skipped += listing.skipped
    if config.pacs.results_to:
        summary.results = send_run_results(config.pacs, out, card)
    summary.seconds = time.perf_counter() - started
    return summary


def _settle_store(config: ScoreConfig, card: dict, out: Path) -> tuple[frozenset, pd.DataFrame]:
    """Record the card and config, settle what a killed run left; the images done, the retries."""
    model_id, findings = card["model_id"], card_findings(card)
    write_card_copy(out, card)
    write_json(out / "_score_config.json", asdict(config))
    logger.info("score config: %s", asdict(config))
    remove_temporaries(out)
    upgrade_files(out)  # one schema in the folder before this run adds files
    # Duplicates left by a killed run or a retried write task go before counting what is done.
    done = reconcile(out, model_id)
    retry = rows_to_retry(done, config.retry_errors)
    # An image is done when every finding has a row; one with only some is scored again whole.
    skip = complete_images(done, findings) - frozenset(retry["image_id"])
    logger.info(
        "model %s (%s, %d px); %d images already scored by it, %d error rows to retry",
        model_id[:12],
        ", ".join(findings),
        card["image_size"],
        len(skip),
        len(retry),
    )
    return skip, retry


def _pipeline(
    config: ScoreConfig, card: dict, inputs: ImageInputs, skip: frozenset, out: Path, engine: str
):
    """The lazy Ray dataset (read and decode, score in an actor pool, write Parquet files) and
    the run's DICOMweb listing (:class:`medai.pacs_data.PacsListing`)."""
    import ray.data

    from medai.cpus import plan_actors

    plan = plan_actors(config.actors, engine, actor_cpus)
    warn_missing_codecs()
    dataset, listing = input_dataset(
        config.images, inputs, card["image_size"], skip, config.pacs, tuple(config.modalities)
    )
    if config.limit:
        dataset = dataset.limit(config.limit)  # the first N inputs, so a rerun skips them
    scored = dataset.map_batches(
        Scorer,
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus,
        num_gpus=plan.gpus,
        fn_constructor_kwargs={
            "model_dir": str(Path(config.model).resolve()),
            "precision": config.precision,
            "threads": config.threads,
            "engine": engine,
            "actors_per_node": plan.per_node,
        },
    )
    written = scored.map_batches(
        write_predictions,
        batch_size=config.rows_per_file,
        num_cpus=0.1,
        fn_kwargs={
            "out": str(out),
            "model_id": card["model_id"],
            "findings": card_findings(card),
            "thresholds": card_thresholds(card),
            "run_id": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"),
        },
    )
    return written, listing


def _collect(written, summary: ScoreSummary, progress: bool, total: int | None) -> list[str]:
    """Run the pipeline, counting into ``summary``; the names of the files written."""
    files: list[str] = []
    with _progress_bar(progress, total) as bar:
        for row in written.iter_rows():
            summary.scored += int(row["scored"])
            summary.errors += int(row["errors"])
            summary.skipped += int(row["skipped"])
            summary.ignored.update(json.loads(row["ignored"]))
            if row["file"]:
                files.append(str(row["file"]))
            summary.files = len(files)
            bar.update(int(row["scored"]) + int(row["errors"]) + int(row["skipped"]))
            bar.set_postfix(errors=summary.errors, skipped=summary.skipped, refresh=False)
    return files


def _log_errors(out: Path, files: list[str], count: int, shown: int = 5) -> None:
    """Name the first few inputs that became error rows in this run, and where the rest are."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # An image has a row per finding; its error repeats in each, so sources are kept once.
    examples: dict[str, str] = {}
    for name in files:
        table = pq.read_table(out / name, columns=["source", "error"])
        failed = table.filter(pc.invert(pc.is_null(table["error"]))).to_pydict()
        examples.update(zip(failed["source"], failed["error"], strict=True))
        if len(examples) >= shown:
            break
    named = "; ".join(f"{source}: {error}" for source, error in list(examples.items())[:shown])
    logger.warning(
        "%d image%s not scored: %s%s (each has an error row: the Parquet's error column)",
        count,
        "" if count == 1 else "s",
        named,
        "; ..." if count > shown else "",
    )


def _obsolete_errors(
    retry: pd.DataFrame, inputs: ImageInputs, out: Path, files: list[str], model_id: str
) -> list[tuple[str, str]]:
    """Keys of retried error rows whose input this run read again without writing that key."""
    import pyarrow.parquet as pq

    read_again = retry[retry["source"].isin({*inputs.archives, *inputs.files})]
    if read_again.empty:
        return []
    written: set[str] = set()
    for name in files:
        table = pq.read_table(out / name, columns=["image_id", "model_id"]).to_pydict()
        written.update(
            image_id
            for image_id, owner in zip(table["image_id"], table["model_id"], strict=True)
            if owner == model_id
        )
    stale = read_again[~read_again["image_id"].isin(written)]
    return list(zip(stale["image_id"], stale["finding"], strict=True))


def _progress_bar(enabled: bool, total: int | None):
    """medai's own progress bar (tqdm, on stderr), counting images; Ray Data draws its own.

    Shown only when ``enabled`` and stderr is a terminal: in logs (Ray jobs, schedulers) a
    self-overwriting line is noise, and the summary line says what happened.
    """
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        desc="medai score",
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
