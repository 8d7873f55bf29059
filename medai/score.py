"""The scoring job: stream image archives through a model with Ray Data into Parquet.

Pipeline: read units (tarballs streamed in place, chunks of files) -> decode tasks (CPU) ->
scorer actors (the model loaded once per actor) -> Parquet writer tasks -> a tiny summary
row per file back to the driver. Nothing is materialised and no score is collected on the
driver, so memory stays flat however large the archive.

Incremental, crash-safe and exact (see :mod:`medai.predictions`): a run holds the output
folder's lock (a second run on it refuses at once), skips the images this ``model_id`` already
has rows for except read errors (which may clear) and, with ``retry_errors``, every error, and
reconciles the folder at its start and end so that it holds exactly one row per image, however
the last run ended.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medai.artifact import read_card, write_json
from medai.errors import MedaiError
from medai.images import ImageInputs, discover_images
from medai.predictions import (
    PREDICTION_SCHEMA,
    StoreBusyError,
    hold_lock,
    prediction_files,
    prediction_schema,
    reconcile,
    remove_temporaries,
    rows_to_retry,
    scored_ids,
)
from medai.thresholds import is_positive

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
    "run_scoring",
]

logger = logging.getLogger("medai.score")
PRECISIONS = ("fp32", "bf16")
CARDS_DIR = "_model_cards"
IN_FLIGHT_BYTES = 512 * 1024 * 1024
_SUMMARY_FIELDS = ("rows", "scored", "errors", "skipped")


class ScoreError(MedaiError, ValueError):
    """A scoring option or input is unusable; the message names the problem."""


@dataclass(frozen=True)
class ScoreConfig:
    """The resolved options of one scoring run."""

    model: str
    images: tuple[str, ...]
    out: str
    batch_size: int = 32
    precision: str = "fp32"
    address: str | None = None
    limit: int | None = None
    actors: int | None = None
    threads: int | None = None
    rows_per_file: int = 4096
    progress: bool = True
    retry_errors: bool = False

    def check(self) -> None:
        """Raise :class:`ScoreError` on any option that cannot work."""
        problems = []
        if self.batch_size < 1:
            problems.append("--batch-size must be at least 1")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.limit is not None and self.limit < 1:
            problems.append("--limit must be at least 1")
        if self.actors is not None and self.actors < 1:
            problems.append("--actors must be at least 1")
        if self.threads is not None and self.threads < 1:
            problems.append("--threads must be at least 1")
        if self.rows_per_file < 1:
            problems.append("--rows-per-file must be at least 1")
        if not self.images:
            problems.append("--images is required")
        if problems:
            raise ScoreError("; ".join(problems))


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    scored: int = 0
    errors: int = 0
    skipped: int = 0
    files: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    model_id: str = ""

    @property
    def images_per_second(self) -> float:
        """Images scored (errors included) per second of wall time."""
        return (self.scored + self.errors) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        """The final one-line summary."""
        return (
            f"scored {self.scored} images, skipped {self.skipped} already scored, "
            f"{self.errors} errors, {self.files} files, {self.seconds:.1f} s wall, "
            f"{self.images_per_second:.1f} images/s"
        )


class Scorer:
    """Ray Data actor: loads the model once, then scores batches of decoded images."""

    def __init__(self, model_dir: str, precision: str, threads: int | None):
        from medai.runtime import assigned_cpus, configure_tensorflow

        # Ray's assignment, not the host's cores (a pod limited to 8 CPUs on a 64-core host
        # would start 64 threads); a fraction rounds up. Outside Ray: TensorFlow's defaults.
        configure_tensorflow(threads or assigned_cpus())
        import tensorflow as tf

        from medai.artifact import load_model_dir
        from medai.model import ModelSpec, rebuild_with_policy

        loaded = load_model_dir(model_dir)
        model = loaded.model
        if precision == "bf16":
            spec = ModelSpec(loaded.card["image_size"], loaded.card.get("head", "gap"), "none")
            model = rebuild_with_policy(model, spec, "mixed_bfloat16")
        size = loaded.card["image_size"]
        # One graph for every batch length: Ray Data hands over short batches wherever input
        # blocks end, and padding them to the full batch size wasted up to a third of the
        # model's time on the NIH-layout benchmark.
        signature = tf.TensorSpec((None, size, size, 1), tf.uint8)
        self._predict = tf.function(lambda x: model(x, training=False), input_signature=[signature])
        self._predict.get_concrete_function()  # trace now, without running a dummy batch

    def __call__(self, batch: dict) -> dict:
        """Score the usable rows of a batch; other rows get a null score."""
        errors = np.asarray(batch["error"], dtype=object)
        usable = (errors == "") & ~np.asarray(batch["skip"], dtype=bool)
        scores = np.full(len(errors), np.nan, dtype=np.float32)
        if usable.any():
            images = np.asarray(batch["image"])[usable]
            scores[usable] = np.asarray(self._predict(images), np.float32).reshape(-1)
        return {
            "image_id": batch["image_id"],
            "source": batch["source"],
            "score": scores,
            "error": batch["error"],
            "skip": batch["skip"],
        }


def write_predictions(
    batch: dict, out: str, model_id: str, finding: str, threshold: float, run_id: str
) -> dict:
    """Ray Data UDF: write one Parquet file (temp name, then rename) and return its counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    skip = np.asarray(batch["skip"], dtype=bool)
    keep = ~skip
    errors = [str(e) for e, k in zip(batch["error"], keep, strict=True) if k]
    scores = np.asarray(batch["score"], dtype=np.float32)[keep]
    failed = np.array([bool(e) for e in errors], dtype=bool)
    n = int(keep.sum())
    counts = {
        "rows": [n],
        "scored": [int(n - failed.sum())],
        "errors": [int(failed.sum())],
        "skipped": [int(skip.sum())],
        "file": [""],
    }
    if n == 0:
        return counts
    table = pa.table(
        {
            "image_id": [str(i) for i, k in zip(batch["image_id"], keep, strict=True) if k],
            "source": [str(s) for s, k in zip(batch["source"], keep, strict=True) if k],
            "score": pa.array(scores, mask=failed, type=pa.float32()),
            "predicted": pa.array(is_positive(scores, threshold), mask=failed, type=pa.bool_()),
            "threshold": pa.array(np.full(n, threshold, np.float32)),
            "finding": pa.array([finding] * n, pa.string()),
            "model_id": pa.array([model_id] * n, pa.string()),
            "scored_at": pa.array([datetime.now(timezone.utc)] * n, pa.timestamp("us", tz="UTC")),
            "error": pa.array([e or None for e in errors], pa.string()),
        },
        schema=prediction_schema(),
    )
    name = f"predictions-{model_id[:12]}-{run_id}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = Path(out) / f".{name}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, Path(out) / name)
    counts["file"] = [name]
    return counts


def actor_cpus(cpus: float, nodes: int, actors: int) -> float:
    """CPUs to request per CPU scorer actor.

    Up to one CPU is reserved per actor (TensorFlow's threads also use a node's idle cores),
    but one read task and one decode task per node must always fit beside the actors: a read
    task streaming an archive holds its CPUs while it waits for decoding to catch up, so a
    node without room for a decode task deadlocks. The request also differs from the decode
    tasks', or Ray Data fuses decoding into the actor, where it runs serially.

    Args:
        cpus: CPUs of the cluster.
        nodes: Alive nodes.
        actors: Scorer actors requested.

    Raises:
        ScoreError: When the actors leave no room for reading and decoding.
    """
    from medai.datasets import DECODE_CPUS, READ_CPUS

    share = min(1.0, (cpus - nodes * (READ_CPUS + DECODE_CPUS)) / actors)
    if share < 0.05:
        raise ScoreError(
            f"--actors {actors} leaves no CPU for reading and decoding on {cpus:g} CPUs; "
            "use fewer actors"
        )
    return share - 0.01 if share in (READ_CPUS, DECODE_CPUS) else share


def _plan_actors(config: ScoreConfig) -> tuple[int, float, float]:
    """Number of scorer actors, CPUs and GPUs per actor."""
    import ray

    from medai.runtime import cluster_cpus, cluster_gpus

    gpus = int(cluster_gpus())
    if gpus:
        return config.actors or gpus, 1.0, 1.0
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    actors = config.actors or nodes
    return actors, actor_cpus(cluster_cpus(), nodes, actors), 0.0


def prepare_scoring(config: ScoreConfig) -> tuple[dict, ImageInputs]:
    """Check options, the model directory and the inputs before any work starts."""
    config.check()
    card = read_card(config.model)
    inputs = discover_images(config.images)
    if inputs.empty:
        raise ScoreError(f"--images: no images or archives found in {list(config.images)}")
    return card, inputs


def run_scoring(config: ScoreConfig) -> ScoreSummary:
    """Score every image not yet scored by this model into ``config.out``.

    Holds the folder's lock for the whole run, so a second run on the same folder refuses.

    Returns:
        Counts and timings of the run.

    Raises:
        ScoreError: On unusable options or inputs, or when another run holds ``config.out``.
    """
    started = time.perf_counter()
    card, inputs = prepare_scoring(config)
    out = Path(config.out).resolve()
    try:
        with hold_lock(out):
            return _score_locked(config, card, inputs, out, started)
    except StoreBusyError as exc:
        raise ScoreError(str(exc)) from None


def _score_locked(
    config: ScoreConfig, card: dict, inputs: ImageInputs, out: Path, started: float
) -> ScoreSummary:
    """The run itself, with the output folder's lock held."""
    import ray.data

    from medai.datasets import image_dataset
    from medai.runtime import init_ray

    model_id = card["model_id"]
    write_json(out / CARDS_DIR / f"{model_id}.json", card)
    write_json(out / "_score_config.json", asdict(config))
    logger.info("score config: %s", asdict(config))
    remove_temporaries(out)
    # Duplicates left by a killed run or a retried write task go before counting what is done.
    done = reconcile(out, model_id)
    retry = rows_to_retry(done, config.retry_errors)
    skip = frozenset(done["image_id"]) - frozenset(retry["image_id"])
    logger.info(
        "model %s (%s, %d px); %d images already scored by it, %d error rows to retry",
        model_id[:12],
        card["finding"],
        card["image_size"],
        len(skip),
        len(retry),
    )
    init_ray(config.address, dashboard=False)  # see init_ray: scoring has no use for it
    # Bound what the pipeline holds in flight: without a limit, reading and decoding race ahead
    # of the scorer and fill the object store, so memory grows with the archive.
    ray.data.DataContext.get_current().execution_options.resource_limits = (
        ray.data.ExecutionResources.for_limits(object_store_memory=IN_FLIGHT_BYTES)
    )
    actors, cpus, gpus = _plan_actors(config)
    dataset = image_dataset(inputs, card["image_size"], exclude=skip)
    if config.limit:
        dataset = dataset.limit(config.limit)  # the first N inputs, so a rerun skips them
    scored = dataset.map_batches(
        Scorer,
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
        fn_constructor_kwargs={
            "model_dir": str(Path(config.model).resolve()),
            "precision": config.precision,
            "threads": config.threads,
        },
    )
    written = scored.map_batches(
        write_predictions,
        batch_size=config.rows_per_file,
        num_cpus=0.1,
        fn_kwargs={
            "out": str(out),
            "model_id": model_id,
            "finding": card["finding"],
            "threshold": float(card["threshold"]),
            "run_id": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"),
        },
    )
    # The total is known up front only without archives (counting members means inflating them).
    total = None if inputs.archives else min(len(inputs.files), config.limit or len(inputs.files))
    summary = ScoreSummary(model_id=model_id, startup_seconds=time.perf_counter() - started)
    files: list[str] = []
    for row in written.iter_rows():
        summary.scored += int(row["scored"])
        summary.errors += int(row["errors"])
        summary.skipped += int(row["skipped"])
        if row["file"]:
            files.append(str(row["file"]))
        summary.files = len(files)
        if config.progress:
            _progress(summary, time.perf_counter() - started, total)
    if config.progress:
        sys.stderr.write("\n")
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Ray Data stats:\n%s", written.stats())
    # A retried error row gives way to its new row; one whose input now reads without any
    # error row of its own (an archive read to its end) is obsolete. --limit may stop before
    # reaching an input, so nothing is declared obsolete then.
    obsolete = () if config.limit else _obsolete_errors(retry, inputs, out, files, model_id)
    reconcile(out, model_id, retire=obsolete)
    summary.seconds = time.perf_counter() - started
    return summary


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


def _progress(summary: ScoreSummary, elapsed: float, total: int | None) -> None:
    """One self-overwriting progress line per written file (Ray Data's own bars run too)."""
    done = summary.scored + summary.errors + summary.skipped
    rate = (summary.scored + summary.errors) / elapsed if elapsed else 0.0
    if total:
        filled = int(30 * min(done, total) / total)
        bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
    else:
        bar = f"{done} images"
    sys.stderr.write(
        f"\r{bar} scored {summary.scored}, errors {summary.errors}, skipped "
        f"{summary.skipped}, {rate:.1f} img/s "
    )
    sys.stderr.flush()
