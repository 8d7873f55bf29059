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

import logging
import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medai.artifact import (
    ModelDirError,
    card_findings,
    card_thresholds,
    read_card,
    verify_model_file,
    write_json,
)
from medai.dicomweb import DicomwebError, is_dicomweb
from medai.engines import ENGINES, EngineError, resolve_engine, verify_ir
from medai.engines import PRECISIONS as ENGINE_PRECISIONS
from medai.errors import MedaiError
from medai.flags import folder_problem
from medai.images import ImageInputs, discover_images
from medai.metrics import is_positive
from medai.pacs_data import PacsOptions, check_servers, input_dataset, send_run_results
from medai.predictions import (
    PREDICTION_SCHEMA,
    StoreBusyError,
    complete_images,
    hold_lock,
    prediction_files,
    prediction_schema,
    reconcile,
    remove_temporaries,
    rows_to_retry,
    scored_ids,
    upgrade_files,
)

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
PRECISIONS = ENGINE_PRECISIONS
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
    engine: str = "auto"
    address: str | None = None
    limit: int | None = None
    actors: int | None = None
    threads: int | None = None
    rows_per_file: int = 4096
    progress: bool = True
    retry_errors: bool = False
    pacs: PacsOptions = PacsOptions()

    def check(self) -> None:
        """Raise :class:`ScoreError` on any option that cannot work."""
        problems = []
        if self.batch_size < 1:
            problems.append("--batch-size must be at least 1")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.engine not in ENGINES:
            problems.append(f"--engine must be one of {', '.join(ENGINES)}")
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
        if problem := folder_problem("--out", self.out):
            problems.append(problem)
        problems.extend(self.pacs.problems())
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
    findings: int = 1
    engine: str = ""
    results: object = None  # medai.results.ResultsSummary with --results-to

    @property
    def images_per_second(self) -> float:
        """Images scored (errors included) per second of wall time."""
        return (self.scored + self.errors) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        """The final one-line summary."""
        per = f" x {self.findings} findings" if self.findings > 1 else ""
        return (
            f"scored {self.scored} images{per}, skipped {self.skipped} already scored, "
            f"{self.errors} errors, {self.files} files, {self.seconds:.1f} s wall, "
            f"{self.images_per_second:.1f} images/s"
        ) + (f"; {self.results.line()}" if self.results is not None else "")


class Scorer:
    """Ray Data actor: loads an inference engine once, then scores batches of decoded images.

    Its output ``score`` column is ``float32 (N, n_findings)``: every finding of an image from
    one forward pass; rows without a usable image get NaN.
    """

    def __init__(
        self,
        model_dir: str,
        precision: str,
        threads: int | None,
        engine: str = "auto",
        actors_per_node: int = 1,
    ):
        from medai.engines import load_engine

        card = read_card(model_dir)
        if threads is None:
            threads = actor_threads(actors_per_node)
        # load_engine imports TensorFlow only for the TensorFlow engine (sized to `threads`).
        self._engine = load_engine(model_dir, engine, precision, threads)
        self._findings = len(card_findings(card))
        if self._engine.n_outputs != self._findings:
            raise ScoreError(
                f"{model_dir}: the model has {self._engine.n_outputs} outputs but its card "
                f"lists {self._findings} findings"
            )

    def __call__(self, batch: dict) -> dict:
        """Score the usable rows of a batch; other rows get NaN scores."""
        errors = np.asarray(batch["error"], dtype=object)
        usable = (errors == "") & ~np.asarray(batch["skip"], dtype=bool)
        scores = np.full((len(errors), self._findings), np.nan, dtype=np.float32)
        if usable.any():
            images = np.asarray(batch["image"])[usable]
            scores[usable] = self._engine.predict(images)
        n = len(errors)
        return {
            "image_id": batch["image_id"],
            "source": batch["source"],
            "score": scores,
            "error": batch["error"],
            "skip": batch["skip"],
            "engine": [self._engine.name] * n,
            "precision": [self._engine.precision] * n,
        }


def prediction_table(
    batch: dict, model_id: str, findings: list[str], thresholds: list[float]
) -> tuple[object, np.ndarray]:
    """The rows of a scored batch, one per kept image and finding (image-major).

    Returns:
        The Arrow table in :func:`prediction_schema` and the per-image error mask.
    """
    import pyarrow as pa

    keep = ~np.asarray(batch["skip"], dtype=bool)
    k = len(findings)
    errors = [str(e) for e, kept in zip(batch["error"], keep, strict=True) if kept]
    failed = np.array([bool(e) for e in errors], dtype=bool)
    scores = np.asarray(batch["score"], dtype=np.float32).reshape(len(keep), k)[keep]
    n = len(errors)

    def per_row(values) -> list:
        return [str(v) for v, kept in zip(values, keep, strict=True) if kept for _ in range(k)]

    limits = np.asarray(thresholds, np.float32)
    # Each finding decided with its own threshold, by the one float32 rule.
    predicted = np.zeros((n, k), bool)
    for column, threshold in enumerate(thresholds):
        predicted[:, column] = is_positive(scores[:, column], threshold)
    mask = np.repeat(failed, k)
    table = pa.table(
        {
            "image_id": per_row(batch["image_id"]),
            "source": per_row(batch["source"]),
            "score": pa.array(scores.reshape(-1), mask=mask, type=pa.float32()),
            "predicted": pa.array(np.asarray(predicted).reshape(-1), mask=mask, type=pa.bool_()),
            "threshold": pa.array(np.tile(limits, n)),
            "finding": pa.array(list(findings) * n, pa.string()),
            "model_id": pa.array([model_id] * (n * k), pa.string()),
            "scored_at": pa.array(
                [datetime.now(timezone.utc)] * (n * k), pa.timestamp("us", tz="UTC")
            ),
            "error": pa.array([e or None for e in errors for _ in range(k)], pa.string()),
            "engine": pa.array(per_row(batch["engine"]), pa.string()),
            "precision": pa.array(per_row(batch["precision"]), pa.string()),
        },
        schema=prediction_schema(),
    )
    return table, failed


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
    table, failed = prediction_table(batch, model_id, findings, thresholds)
    n = len(failed)
    counts = {
        "rows": [table.num_rows],
        "scored": [int(n - failed.sum())],
        "errors": [int(failed.sum())],
        "skipped": [int(skip.sum())],
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


def actor_threads(actors_per_node: int) -> int | None:
    """Inference threads for a scorer actor: its node's CPUs shared among the node's actors.

    Ray reserves at most one CPU per actor so that reading and decoding always fit, but
    decoding does not keep the remaining cores busy: on 2 cores one OpenVINO thread per actor
    measured 36 img/s (bf16) and two threads 43. The count comes from Ray's view of the node
    (a pod's CPU limit), never the host's core count, and is at least the actor's own share.
    Outside Ray: ``None``, the engine's default.

    Args:
        actors_per_node: Scorer actors placed on each node.
    """
    from medai.runtime import assigned_cpus, node_cpus

    cpus = assigned_cpus()
    if not cpus:
        return None
    node = node_cpus() or cpus
    return max(1, math.ceil(cpus), math.floor(node / max(1, actors_per_node)))


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


def _plan_actors(config: ScoreConfig, engine: str) -> tuple[int, float, float, int]:
    """Number of scorer actors, CPUs and GPUs per actor, and actors per node.

    OpenVINO actors are CPU actors, as hungry as TensorFlow's: the same CPU plan.
    """
    import ray

    from medai.runtime import cluster_cpus, cluster_gpus

    gpus = int(cluster_gpus())
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    if gpus and engine == "tensorflow":
        actors = config.actors or gpus
        return actors, 1.0, 1.0, math.ceil(actors / nodes)
    actors = config.actors or nodes
    return actors, actor_cpus(cluster_cpus(), nodes, actors), 0.0, math.ceil(actors / nodes)


def prepare_scoring(config: ScoreConfig) -> tuple[dict, ImageInputs]:
    """Check options, the model directory, its IR and the inputs before any work starts.

    Raises:
        ScoreError: On unusable options or inputs, or an engine or precision this model
            directory cannot run (``--engine openvino`` without an IR, int8 without an
            accepted int8 IR), or a ``model.keras`` or IR file that does not match its card.
    """
    config.check()
    card = read_card(config.model)
    findings = card_findings(card)
    if len(set(findings)) != len(findings):
        raise ScoreError(f"{config.model}: the card lists a finding twice: {findings}")
    try:
        # The actors check again as they load; a mismatch found there would surface only
        # as a dead actor, after Ray has started.
        verify_model_file(config.model, card)
        if resolve_engine(config.model, config.engine, config.precision, card) == "openvino":
            verify_ir(config.model, config.precision, card)
    except (EngineError, ModelDirError) as exc:
        raise ScoreError(str(exc)) from None
    files = [i for i in config.images if not is_dicomweb(i)]
    inputs = discover_images(files) if files else ImageInputs()
    if inputs.empty and len(files) == len(config.images):
        raise ScoreError(f"--images: no images or archives found in {list(config.images)}")
    try:  # a refused login stops the run here, before any work
        check_servers(config.images, config.pacs)
    except DicomwebError as exc:
        raise ScoreError(str(exc)) from None
    return card, inputs


def actor_engine(config: ScoreConfig, card: dict, gpus: float) -> str:
    """The engine the scorer actors run: ``auto`` keeps TensorFlow on a cluster with GPUs
    (GPU actors), and otherwise picks OpenVINO when the model directory has an IR."""
    if config.engine == "auto" and gpus and config.precision != "int8":
        return "tensorflow"
    return resolve_engine(config.model, config.engine, config.precision, card)


def run_scoring(
    config: ScoreConfig, prepared: tuple[dict, ImageInputs] | None = None
) -> ScoreSummary:
    """Score every image not yet scored by this model into ``config.out``.

    Holds the folder's lock for the whole run, so a second run on the same folder refuses.

    Args:
        config: The run's options.
        prepared: What :func:`prepare_scoring` returned for ``config``, when the caller has
            checked it already (nightly does, before its store's lock): not hashed twice.

    Returns:
        Counts and timings of the run.

    Raises:
        ScoreError: On unusable options or inputs, or when another run holds ``config.out``.
    """
    started = time.perf_counter()
    card, inputs = prepared or prepare_scoring(config)
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

    from medai.runtime import cluster_gpus, init_ray

    model_id = card["model_id"]
    findings, thresholds = card_findings(card), card_thresholds(card)
    write_json(out / CARDS_DIR / f"{model_id}.json", card)
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
    actors, cpus, gpus, per_node = _plan_actors(config, engine)
    dataset, listing = input_dataset(config.images, inputs, card["image_size"], skip, config.pacs)
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
            "engine": engine,
            "actors_per_node": per_node,
        },
    )
    written = scored.map_batches(
        write_predictions,
        batch_size=config.rows_per_file,
        num_cpus=0.1,
        fn_kwargs={
            "out": str(out),
            "model_id": model_id,
            "findings": findings,
            "thresholds": thresholds,
            "run_id": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"),
        },
    )
    # The total is known up front only without archives (counting members means inflating them).
    found = len(inputs.files) + listing.count
    total = None if inputs.archives else min(found, config.limit or found)
    summary = ScoreSummary(
        model_id=model_id,
        startup_seconds=time.perf_counter() - started,
        findings=len(findings),
        engine=engine,
    )
    files: list[str] = []
    with _progress_bar(config.progress, total) as bar:
        for row in written.iter_rows():
            summary.scored += int(row["scored"])
            summary.errors += int(row["errors"])
            summary.skipped += int(row["skipped"])
            if row["file"]:
                files.append(str(row["file"]))
            summary.files = len(files)
            bar.update(int(row["scored"]) + int(row["errors"]) + int(row["skipped"]))
            bar.set_postfix(errors=summary.errors, skipped=summary.skipped, refresh=False)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("Ray Data stats:\n%s", written.stats())
    if summary.errors:
        _log_errors(out, files, summary.errors)
    # A retried error row gives way to its new row; one whose input now reads without any
    # error row of its own (an archive read to its end) is obsolete. --limit may stop before
    # reaching an input, so nothing is declared obsolete then.
    obsolete = () if config.limit else _obsolete_errors(retry, inputs, out, files, model_id)
    reconcile(out, model_id, retire=obsolete)
    summary.skipped += listing.skipped
    if config.pacs.results_to:
        summary.results = send_run_results(config.pacs, out, card)
    summary.seconds = time.perf_counter() - started
    return summary


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
