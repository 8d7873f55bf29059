"""The scoring job's options (:class:`ScoreConfig`, checked all at once) and its outcome.

:class:`ScoreConfig` is what ``medai score`` flags (or a YAML file) give; nightly composes it.
:class:`ScoreSummary` is what a run did, with its one-line summary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from medai.configs import CheckedConfig
from medai.dicom import DEFAULT_MODALITIES
from medai.engines import ENGINES
from medai.engines import PRECISIONS as ENGINE_PRECISIONS
from medai.errors import MedaiError
from medai.pacs_data import PacsOptions
from medai.paths import folder_problem

__all__ = ["PRECISIONS", "ScoreConfig", "ScoreError", "ScoreSummary"]

PRECISIONS = ENGINE_PRECISIONS


class ScoreError(MedaiError, ValueError):
    """A scoring option or input is unusable; the message names the problem."""


@dataclass(frozen=True)
class ScoreConfig(CheckedConfig):
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
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    pacs: PacsOptions = PacsOptions()

    error: ClassVar[type[MedaiError]] = ScoreError

    def problems(self) -> list[str]:
        """Every option that cannot work (:meth:`check` raises them as one ScoreError)."""
        problems = []
        if not self.modalities:
            problems.append("--modalities must name at least one DICOM modality (e.g. CR,DX)")
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
        return problems


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
    ignored: Counter = field(default_factory=Counter)
    results: object = None  # medai.results.ResultsSummary with --results-to

    @property
    def images_per_second(self) -> float:
        """Images scored (errors included) per second of wall time."""
        return (self.scored + self.errors) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        """The final one-line summary."""
        per = f" x {self.findings} findings" if self.findings > 1 else ""
        kinds = ", ".join(f"{count} {reason}" for reason, count in sorted(self.ignored.items()))
        # DICOM instances that are not chest radiographs (SR, CT, ...): skipped, counted here.
        other = f", {sum(self.ignored.values())} not radiographs ({kinds})" if kinds else ""
        return (
            f"scored {self.scored} images{per}, skipped {self.skipped} already scored{other}, "
            f"{self.errors} errors, {self.files} files, {self.seconds:.1f} s wall, "
            f"{self.images_per_second:.1f} images/s"
        ) + (f"; {self.results.line()}" if self.results is not None else "")
