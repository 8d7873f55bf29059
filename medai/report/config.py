"""The report's options: :class:`ReportConfig`, the ``medai report`` flags and their checks."""

from __future__ import annotations

import argparse
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from medai.configs import CheckedConfig, config_from
from medai.errors import MedaiError
from medai.labels import NEGATIVE_POLICIES
from medai.saliency import DEFAULT_METHOD, METHODS

__all__ = [
    "SPLITS",
    "SPLIT_HELP",
    "ReportConfig",
    "ReportError",
    "add_report_arguments",
    "build_report_parser",
    "check_config",
    "config_from_args",
]

SPLITS = ("unseen", "test", "train_val", "all")
SPLIT_HELP = (
    "images to evaluate: 'unseen' = the labelled images the model neither trained nor "
    "validated on (read from MODEL_DIR/split.csv, so it needs --model); 'test' / 'train_val' = "
    "the images of the NIH test_list.txt / train_val_list.txt beside the labels file; 'all' = "
    "every labelled image, training images included (optimistic metrics). Default: test when "
    "test_list.txt is beside the labels file, else unseen"
)
DEFAULT_FINDING = "Mass"  # the finding of rows and generic label columns that name none
FINDING_HELP = (
    "finding(s) to evaluate: a name, a comma list (Mass,Nodule,Effusion) or 'all' (the 14 NIH "
    "findings). Default: every finding the models scored that the labels have (Mass for a "
    "generic image,label CSV)"
)
EXAMPLES_PER_GROUP = 4
# Subgroup AUC CIs use the first this many of the finding's bootstrap resamples: each subgroup
# attribute costs as much as the overall AUC per resample, and 14 findings x 4 attributes x
# 1,000 resamples over the whole archive would not fit the report's one-minute budget.
SUBGROUP_BOOTSTRAP = 250
THUMBNAIL_SIZE = 192
FAILURES_PER_KIND = 10  # rows of the failure-analysis table per kind of error


class ReportError(MedaiError, ValueError):
    """The report cannot run with these inputs or options; the message says why."""


@dataclass(frozen=True, kw_only=True)
class ReportConfig(CheckedConfig):
    """Options of one report run (the ``medai report`` flags).

    Attributes:
        predictions: Folder of ``*.parquet`` files written by ``medai score``.
        labels: NIH ``Data_Entry_2017.csv`` or a generic ``image,label`` CSV.
        out: Output folder for ``metrics.json``, ``config.json``, ``plots/`` and ``report.html``.
        finding: The finding(s) to report: a name, a comma list or ``all``; ``None`` = every
            finding the models scored that the labels have. Models scoring none of them are
            skipped.
        negatives: ``all-others`` or ``no-finding`` (see :func:`medai.labels.load_labels`).
        split: One of :data:`SPLITS` (see :data:`SPLIT_HELP`); ``None`` means ``test`` when
            the NIH ``test_list.txt`` is beside the labels file, else ``unseen``.
        model: The model directory (from ``medai train``) of the predictions' model: its
            ``split.csv`` defines the ``unseen`` split, and the report covers only that model
            (its card's ``model_id`` must be in the predictions).
        model_id: Report only this model (a unique prefix of its id is enough).
        threshold: Cut-off overriding the model's own threshold.
        bootstrap: Bootstrap resamples for the confidence intervals (0 disables them).
        seed: Seed of the bootstrap.
        images: Show patient images (example thumbnails, with Grad-CAM heatmaps when
            ``model`` is given); ``False`` (``--no-images``) leaves every patient image out of
            the page and the plots folder, for reports that leave the institution.
        boxes: NIH ``BBox_List_2017.csv`` (or the columns of :data:`medai.boxes.BOX_COLUMNS`)
            for the pointing-game localisation check; needs ``model``.
        deidentify: Replace image ids, study ids, patient ids and source paths with keyed
            pseudonyms everywhere in the report (:mod:`medai.report.deidentify`); needs
            ``images=False``.
        id_key: The site key's file for ``deidentify`` (else ``MEDAI_ID_KEY_FILE`` or
            ``MEDAI_ID_KEY``, see :mod:`medai.pseudonyms`).
        processes: Worker processes for the findings' bootstraps and figures (findings are
            independent); ``0``: one per CPU this process may use, ``1``: all in this process.
            The results do not depend on it.
        saliency: Heatmap method, one of :data:`medai.saliency.METHODS`.
    """

    predictions: str | Path
    labels: str | Path
    out: str | Path
    finding: str | None = None
    negatives: str = "all-others"
    split: str | None = None
    model: str | Path | None = None
    model_id: str | None = None
    threshold: float | None = None
    bootstrap: int = 1000
    seed: int = 0
    images: bool = True
    boxes: str | Path | None = None
    processes: int = 0
    deidentify: bool = False
    id_key: str | None = None
    saliency: str = DEFAULT_METHOD

    error: ClassVar[type[MedaiError]] = ReportError

    def problems(self) -> list[str]:
        """Every option value that cannot work, checked without file access."""
        return report_problems(self)


# ----------------------------------------------------------------------------- command line


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``medai report`` flags to ``parser``.

    Args:
        parser: A parser or sub-command parser.

    Returns:
        The same parser.
    """
    parser.add_argument(
        "--predictions",
        required=True,
        metavar="PRED_DIR",
        help="folder of *.parquet files written by `medai score`",
    )
    parser.add_argument(
        "--labels",
        required=True,
        metavar="CSV",
        help="NIH Data_Entry_2017.csv or a generic CSV with columns image,label",
    )
    parser.add_argument("--finding", default=None, help=FINDING_HELP)
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT_DIR",
        help="output folder for metrics.json, plots and report.html",
    )
    parser.add_argument(
        "--negatives",
        default="all-others",
        choices=NEGATIVE_POLICIES,
        help="which images count as negatives (default: all-others)",
    )
    parser.add_argument("--split", default=None, choices=SPLITS, help=SPLIT_HELP)
    _add_model_flags(parser)
    _add_output_flags(parser)
    return parser


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--model-id`` and ``--threshold``: whose rows, at which cut-off."""
    parser.add_argument(
        "--model",
        default=None,
        metavar="MODEL_DIR",
        help="the model directory (from `medai train`) of the predictions' model: its split.csv "
        "tells which images it trained and validated on (needed for --split unseen, the "
        "default without NIH lists); only that model is reported",
    )
    parser.add_argument(
        "--model-id",
        default=None,
        metavar="ID",
        help="report only this model (a unique prefix of its id is enough)",
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="cut-off overriding the model's threshold"
    )


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    """Bootstrap, processes, images and boxes: what the report computes and shows."""
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for confidence intervals, 0 disables (default: 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        metavar="N",
        help="worker processes for the findings' bootstraps and figures; 0: one per usable "
        "CPU, 1: none (default: 0; the results are the same)",
    )
    parser.add_argument(
        "--no-images",
        dest="images",
        action="store_false",
        help="leave every patient image (example thumbnails and heatmaps) out of the report, "
        "for reports that leave the institution (default: images are shown)",
    )
    parser.add_argument(
        "--deidentify",
        action="store_true",
        help="replace image ids, study ids, patient ids and source paths with keyed pseudonyms "
        "(HMAC-SHA256 under the site key) everywhere in the report folder; needs --no-images",
    )
    parser.add_argument(
        "--id-key",
        metavar="FILE",
        default=None,
        help="site key for --deidentify (default: $MEDAI_ID_KEY_FILE or $MEDAI_ID_KEY); make "
        "one with `head -c 32 /dev/urandom > site.key`",
    )
    parser.add_argument(
        "--boxes",
        default=None,
        help="NIH BBox_List_2017.csv (or a CSV with image_id,finding,x,y,width,height in "
        "original-image pixels): score localisation by the pointing game on the evaluated "
        "images with a box (needs --model, whose Grad-CAM heatmaps are played)",
    )
    parser.add_argument(
        "--saliency",
        default=DEFAULT_METHOD,
        metavar="METHOD",
        help=f"heatmap method: {', '.join(METHODS)} (default: {DEFAULT_METHOD}; README, "
        "Limitations, compares them)",
    )


def build_report_parser(prog: str = "medai report") -> argparse.ArgumentParser:
    """A stand-alone parser for the report flags."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Evaluate `medai score` predictions against labels."
    )
    return add_report_arguments(parser)


def config_from_args(namespace: argparse.Namespace) -> ReportConfig:
    """Build and check a :class:`ReportConfig` from parsed report flags.

    Raises:
        ReportError: If a flag value is invalid.
    """
    config = config_from(ReportConfig, namespace)
    config.check()
    return config


def check_config(config: ReportConfig) -> None:
    """Check option values that need no file access (:meth:`ReportConfig.check`).

    Raises:
        ReportError: Naming every invalid option.
    """
    config.check()


def report_problems(config: ReportConfig) -> list[str]:
    """Every option value that cannot work, checked without file access."""
    problems = []
    if config.finding is not None and not str(config.finding).strip():
        problems.append("--finding must not be empty")
    if config.negatives not in NEGATIVE_POLICIES:
        problems.append(
            f"--negatives must be one of {', '.join(NEGATIVE_POLICIES)}, not {config.negatives!r}"
        )
    if config.split is not None and config.split not in SPLITS:
        problems.append(f"--split must be one of {', '.join(SPLITS)}, not {config.split!r}")
    if config.threshold is not None and (
        isinstance(config.threshold, bool)
        or not isinstance(config.threshold, numbers.Real)
        or not 0.0 <= config.threshold <= 1.0
    ):
        problems.append(f"--threshold must be a number in [0, 1], not {config.threshold!r}")
    for name in ("bootstrap", "seed", "processes"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            problems.append(f"--{name} must be a non-negative integer, not {value!r}")
    if not isinstance(config.images, bool):
        problems.append(f"images must be True or False, not {config.images!r}")
    for name in ("model_id", "model"):
        value = getattr(config, name)
        if value is not None and not str(value).strip():
            problems.append(f"--{name.replace('_', '-')} must not be empty")
    if config.saliency not in METHODS:
        problems.append(f"--saliency must be one of {', '.join(METHODS)}, not {config.saliency!r}")
    if config.boxes is not None and config.model is None:
        problems.append(
            "--boxes needs --model MODEL_DIR: the pointing game plays the model's Grad-CAM heatmaps"
        )
    for name in ("predictions", "labels", "out"):
        if not str(getattr(config, name)).strip():
            problems.append(f"--{name} is required")
    if config.deidentify and (config.images or config.boxes is not None):
        problems.append(
            "--deidentify needs --no-images (and no --boxes): patient images cannot be "
            "de-identified by renaming"
        )
    return problems
