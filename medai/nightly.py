"""Nightly incremental rescoring into a store, with a run ledger and a single-run lock.

Store layout (``ROOT``)::

    ROOT/predictions/     Parquet predictions of every model (medai score's output format;
                          its own _lock is held by the scoring inside a nightly run)
    ROOT/reports/latest/  the report refreshed after each run (when labels are given)
    ROOT/runs.jsonl       the ledger: one JSON object per run
    ROOT/_lock            held (flock) by the running nightly job (named as the predictions'
                          lock, :data:`medai.predictions.LOCK`)

Only images the current model has not scored yet are scored (the new arrivals; everything
when the model changes). A killed run leaves complete Parquet files only, and its ledger row
is marked ``interrupted`` by the next run, which scores what is left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from medai.artifact import card_findings, write_json
from medai.configs import CheckedConfig, config_from
from medai.errors import MedaiError
from medai.locks import exclusive_lock
from medai.pacs_data import PacsOptions
from medai.paths import folder_problem
from medai.predictions import LOCK
from medai.score_config import ScoreConfig

__all__ = [
    "NightlyConfig",
    "NightlyError",
    "NightlyResult",
    "config_from_args",
    "run_nightly",
    "read_ledger",
    "format_ledger",
]

logger = logging.getLogger("medai.nightly")
LEDGER = "runs.jsonl"


class NightlyError(MedaiError, ValueError):
    """A nightly run cannot start; the message says why."""


@dataclass(frozen=True)
class NightlyConfig(CheckedConfig):
    """Options of a nightly run: the scoring of new arrivals into the store, then the report.

    Attributes:
        scoring: The scoring's options (its ``out`` is the store's ``predictions`` folder, its
            progress bar off); :meth:`of` builds them.
        store: The store root.
        labels: A labels CSV: refresh the report after scoring.
        negatives: The report's negatives policy.
        split: The report's split.
    """

    scoring: ScoreConfig
    store: str
    labels: str | None = None
    negatives: str = "all-others"
    split: str | None = None

    error: ClassVar[type[MedaiError]] = NightlyError

    @classmethod
    def of(
        cls,
        images: tuple[str, ...],
        model: str,
        store: str,
        labels: str | None = None,
        negatives: str = "all-others",
        split: str | None = None,
        **scoring,
    ) -> NightlyConfig:
        """A config from the scoring's inputs, the store and :class:`ScoreConfig` options."""
        predictions = str(Path(store) / "predictions")
        options = {"progress": False, **scoring}
        score = ScoreConfig(model=model, images=tuple(images), out=predictions, **options)
        return cls(score, store, labels, negatives, split)

    @property
    def model(self) -> str:
        """The model directory scored with."""
        return self.scoring.model

    def problems(self) -> list[str]:
        """The store must be (or become) a folder; the scoring checks its own options."""
        problem = folder_problem("--store", self.store)
        return [problem] if problem else []


@dataclass
class NightlyResult:
    """Outcome of a nightly run."""

    run_id: str
    model_id: str
    scored: int
    skipped: int
    errors: int
    seconds: float
    report: str | None

    def line(self) -> str:
        """One-line summary."""
        report = f", report {self.report}" if self.report else ""
        return (
            f"nightly run {self.run_id}: model {self.model_id[:12]}, scored {self.scored}, "
            f"skipped {self.skipped}, errors {self.errors}, {self.seconds:.1f} s{report}"
        )


def config_from_args(args: argparse.Namespace) -> NightlyConfig:
    """Build the config from parsed flags (the scoring's from the same flags)."""
    nightly = {name: getattr(args, name) for name in ("store", "labels", "negatives", "split")}
    scoring = config_from(
        ScoreConfig,
        args,
        out=str(Path(args.store) / "predictions"),
        pacs=config_from(PacsOptions, args),
    )
    return NightlyConfig(replace(scoring, progress=False), **nightly)


def _store_lock(root: Path):
    """Hold the store's lock; refuse at once if another nightly run holds it."""

    def refuse(holder: str) -> NightlyError:
        return NightlyError(
            f"another nightly run is in progress on {root} ({holder}); "
            "it holds the store's lock — wait for it to finish"
        )

    return exclusive_lock(root / LOCK, refuse)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_ledger(store: str | Path) -> list[dict]:
    """All ledger rows of a store, oldest first."""
    path = Path(store) / LEDGER
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_ledger(store: Path, rows: list[dict]) -> None:
    tmp = store / f".{LEDGER}.{uuid.uuid4().hex[:8]}"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, store / LEDGER)


def _record(store: Path, row: dict) -> None:
    """Insert or replace the ledger row with ``row['run_id']``."""
    rows = [r for r in read_ledger(store) if r["run_id"] != row["run_id"]]
    _write_ledger(store, sorted([*rows, row], key=lambda r: r["start"]))


def _mark_interrupted(store: Path) -> None:
    # Called with the lock held: any row still "running" belongs to a run that died.
    rows = read_ledger(store)
    for row in rows:
        if row["status"] == "running":
            row["status"] = "interrupted"
    _write_ledger(store, rows)


def run_nightly(config: NightlyConfig) -> NightlyResult:
    """Score new arrivals into the store, record the run, refresh the report.

    Raises:
        NightlyError: If another run holds the store, or an input is unusable.
    """
    # The store's lock (ROOT/_lock) and run_scoring's (ROOT/predictions/_lock) are two files,
    # taken in that order by every nightly run: they never wait on each other. A plain
    # `medai score` on ROOT/predictions during a nightly run makes one of them refuse.
    from medai.score import prepare_scoring, run_scoring

    config.check()
    store = Path(config.store).resolve()
    score_config = replace(config.scoring, out=str(store / "predictions"))
    prepared = prepare_scoring(score_config)  # fail on bad inputs before taking the lock
    card = prepared.card
    with _store_lock(store):
        _mark_interrupted(store)
        write_json(store / "nightly_config.json", asdict(config))
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        row = {
            "run_id": run_id,
            "start": _now(),
            "end": None,
            "model_id": card["model_id"],
            "scored": 0,
            "skipped": 0,
            "errors": 0,
            "status": "running",
        }
        _record(store, row)
        started = time.perf_counter()
        try:
            summary = run_scoring(score_config, prepared)
            row.update(scored=summary.scored, skipped=summary.skipped, errors=summary.errors)
            if summary.results is not None:  # --results-to: the SRs this run sent
                row.update(srs_sent=summary.results.sent, srs_failed=summary.results.failed)
            report = _refresh_report(config, store, card) if config.labels else None
            row["status"] = "succeeded"
        except BaseException:
            row["status"] = "failed"
            raise
        finally:
            row["end"] = _now()
            _record(store, row)
    return NightlyResult(
        run_id,
        card["model_id"],
        row["scored"],
        row["skipped"],
        row["errors"],
        time.perf_counter() - started,
        report,
    )


def _refresh_report(config: NightlyConfig, store: Path, card: dict) -> str:
    from medai.report import ReportConfig, run_report

    out = store / "reports" / "latest"
    run_report(
        ReportConfig(
            predictions=str(store / "predictions"),
            labels=config.labels,
            finding=",".join(card_findings(card)),
            out=str(out),
            negatives=config.negatives,
            split=config.split,
            model=config.model,
        )
    )
    return str(out / "report.html")


def format_ledger(store: str | Path) -> str:
    """The ledger as a fixed-width table."""
    if not Path(store).is_dir():
        raise NightlyError(f"no such store: {store}")
    rows = read_ledger(store)
    if not rows:
        return f"no runs recorded in {store}"
    header = ("run_id", "start", "end", "model_id", "scored", "skipped", "errors", "status")
    if any("srs_sent" in r for r in rows):  # runs with --results-to
        header = (*header[:-1], "srs_sent", header[-1])
    lines = [
        [str(r.get(k) if k != "model_id" else str(r.get(k))[:12]) for k in header] for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(header), *(fmt(line) for line in lines)])
