"""The training job's options (:class:`TrainConfig`), their checks, and what they resolve to.

:class:`TrainConfig` is what ``medai train`` flags (or a YAML file) give; :meth:`TrainConfig.check`
reports every unusable option at once. :class:`TrainPlan` is a checked configuration with its
label table split by patient and its image inputs found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd

from medai.configs import CheckedConfig
from medai.dicom import DEFAULT_MODALITIES
from medai.dicomweb import DEFAULT_MAX_REQUESTS, DicomwebError, is_dicomweb, parse_source
from medai.errors import MedaiError
from medai.images import ImageInputs
from medai.labels import NEGATIVE_POLICIES, parse_findings
from medai.model import HEADS, MIN_IMAGE_SIZE, ModelSpec
from medai.pacs_data import PacsListing, PacsOptions
from medai.paths import folder_problem
from medai.splits import finding_columns

__all__ = ["PRECISIONS", "TrainConfig", "TrainError", "TrainPlan"]

PRECISIONS = ("fp32", "bf16")


class TrainError(MedaiError, ValueError):
    """A training option or input is unusable; the message names the problem."""


@dataclass(frozen=True)
class TrainConfig(CheckedConfig):
    """The resolved options of one training run (CLI flags or YAML)."""

    labels: str
    images: tuple[str, ...]
    out: str
    finding: str = "Mass"
    negatives: str = "all-others"
    epochs: int = 20
    batch_size: int = 16
    image_size: int = 256
    head: str = "gap"
    weights: str = "imagenet"
    num_workers: int | None = None
    seed: int = 0
    resume: bool = False
    address: str | None = None
    precision: str = "fp32"
    learning_rate: float | None = None
    val_fraction: float = 0.2
    max_failures: int = 2
    max_unreadable: float = 0.01
    export_openvino: bool = True
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    id_key: str | None = None  # the site key's file (its path, never its bytes, is recorded)
    # DICOMweb sources among --images (credentials only from the environment, never here).
    allow_insecure_http: bool = False
    ca_bundle: str | None = None
    max_requests: int = DEFAULT_MAX_REQUESTS

    error: ClassVar[type[MedaiError]] = TrainError

    def problems(self) -> list[str]:
        """Every option that cannot work (:meth:`check` raises them as one TrainError)."""
        problems = []
        if self.epochs < 1:
            problems.append("--epochs must be at least 1")
        if self.batch_size < 1:
            problems.append("--batch-size must be at least 1")
        if self.image_size < MIN_IMAGE_SIZE:
            problems.append(f"--image-size must be at least {MIN_IMAGE_SIZE} (InceptionV3)")
        if self.head not in HEADS:
            problems.append(f"--head must be one of {', '.join(HEADS)}")
        if self.negatives not in NEGATIVE_POLICIES:
            problems.append(f"--negatives must be one of {', '.join(NEGATIVE_POLICIES)}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.num_workers is not None and self.num_workers < 1:
            problems.append("--num-workers must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append("--val-fraction must be between 0 and 1")
        if self.learning_rate is not None and self.learning_rate <= 0:
            problems.append("--learning-rate must be positive")
        if not 0.0 <= self.max_unreadable <= 1.0:
            problems.append("--max-unreadable must be between 0 and 1")
        if not self.images:
            problems.append("--images is required")
        problems += self.pacs.problems()
        for text in filter(is_dicomweb, self.images):
            try:
                parse_source(text, self.allow_insecure_http)
            except DicomwebError as exc:
                problems.append(str(exc))
        if problem := folder_problem("--out", self.out):
            problems.append(problem)
        return problems

    @property
    def pacs(self) -> PacsOptions:
        """The DICOMweb options (see :class:`medai.pacs_data.PacsOptions`)."""
        return PacsOptions(
            allow_insecure_http=self.allow_insecure_http,
            ca_bundle=self.ca_bundle,
            max_requests=self.max_requests,
        )

    @property
    def findings(self) -> tuple[str, ...]:
        """The findings to learn, ordered as the outputs (see :func:`medai.labels.parse_findings`).

        A single name is taken as it is (a generic CSV's ``label`` column may name any finding),
        as :func:`medai.labels.load_labels` does.
        """
        names = [name.strip() for name in self.finding.split(",")]
        if len(names) == 1 and names[0] and names[0] != "all":
            return (names[0],)
        return parse_findings(self.finding)

    @property
    def spec(self) -> ModelSpec:
        """The architecture these options describe (one output per finding)."""
        return ModelSpec(self.image_size, self.head, self.weights, n_outputs=len(self.findings))


@dataclass(frozen=True)
class TrainPlan:
    """What a checked configuration resolved to: the split, the files and archives found, and
    the instances DICOMweb sources listed."""

    config: TrainConfig
    split: pd.DataFrame
    inputs: ImageInputs
    test_ids: frozenset[str] = field(default_factory=frozenset)
    listing: PacsListing = field(default_factory=PacsListing)  # DICOMweb instances (QIDO)

    @property
    def findings(self) -> list[str]:
        """The findings of the label table, ordered as the model's outputs."""
        return [column.removeprefix("label_") for column in self.columns]

    @property
    def columns(self) -> list[str]:
        """The label table's per-finding columns (``label_<Finding>``), in output order."""
        return finding_columns(self.split)
