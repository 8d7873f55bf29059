"""Command-line flags shared by several jobs, defined once so that they read the same everywhere."""

from __future__ import annotations

import argparse

__all__ = [
    "add_retry_errors_flag",
    "add_images_flag",
    "add_run_flags",
    "add_model_flag",
    "add_max_unreadable_flag",
    "add_engine_flags",
    "add_nightly_arguments",
    "add_train_arguments",
    "add_runs_arguments",
    "add_dicom_flags",
    "add_pacs_flags",
]


def add_images_flag(parser: argparse.ArgumentParser) -> None:
    """``--images A [B ...]`` (also repeatable): folders, tarballs, images, lists or URIs.

    ``--images A B`` and ``--images A --images B`` mean the same.
    """
    parser.add_argument(
        "--images",
        required=True,
        nargs="+",
        action="extend",
        metavar="PATH",
        help="folders (recursive; NIH tarballs read in place), tarballs, images, .txt lists, "
        "URIs (file://, s3://, gs://) or DICOMweb servers (dicomweb+https://HOST/dicom-web); "
        "several after one flag or the flag repeated",
    )


def add_model_flag(parser: argparse.ArgumentParser) -> None:
    """``--model``: a model directory written by ``medai train``."""
    parser.add_argument("--model", required=True, help="model directory from medai train")


def add_run_flags(
    parser: argparse.ArgumentParser, batch_size: int, batch_help: str, inference: bool = False
) -> None:
    """``--batch-size``, ``--precision`` and ``--address``: how and where a Ray job runs.

    Args:
        parser: The sub-command's parser.
        batch_size: Default ``--batch-size``.
        batch_help: Help of ``--batch-size``.
        inference: Also offer ``--precision int8`` and ``--engine`` (scoring jobs).
    """
    from medai.train_config import PRECISIONS as TRAIN_PRECISIONS

    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    if inference:
        add_engine_flags(parser)
    else:
        parser.add_argument(
            "--precision",
            default="fp32",
            choices=list(TRAIN_PRECISIONS),
            help="fp32, or bf16 (mixed_bfloat16; ~1.3-1.5x on CPUs with bf16 units)",
        )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray address (default: RAY_ADDRESS, else a local Ray in-process)",
    )


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """``--engine`` and ``--precision`` of inference (score, predict, nightly)."""
    from medai.engines import ENGINES, PRECISIONS

    parser.add_argument(
        "--engine",
        default="auto",
        choices=list(ENGINES),
        help="auto (default): OpenVINO on CPU when the model directory has an IR (medai "
        "export), TensorFlow on GPUs or without one; or force openvino / tensorflow",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISIONS),
        help="fp32 (default); bf16 (OpenVINO's bf16 hint, or TensorFlow's mixed_bfloat16; "
        "fp32 with a warning on CPUs without bf16); int8 (OpenVINO only, from an IR that "
        "medai export --int8 wrote and its gate accepted)",
    )


def add_max_unreadable_flag(parser: argparse.ArgumentParser) -> None:
    """``--max-unreadable``: the fraction of unreadable labelled images training tolerates."""
    parser.add_argument(
        "--max-unreadable",
        type=float,
        default=0.01,
        help="stop before training when more than this fraction of the labelled train+val "
        "images is unreadable (default 0.01)",
    )


def add_retry_errors_flag(parser: argparse.ArgumentParser) -> None:
    """``--retry-errors``: score error rows again, decode errors included."""
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="score every error row again (read errors are always retried; decode errors, "
        "whose bytes are not an image, only with this flag)",
    )


def _modalities(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name.strip().upper() for name in text.split(",") if name.strip()))


def add_dicom_flags(parser: argparse.ArgumentParser, id_key: bool = True) -> None:
    """``--modalities`` (DICOM instances read as chest radiographs) and ``--id-key``."""
    parser.add_argument(
        "--modalities",
        type=_modalities,
        default=("CR", "DX"),
        help="DICOM modalities read as chest radiographs (default CR,DX). Other DICOM "
        "instances, of other modalities or without pixel data (SR, KO, PR), are skipped and "
        "counted in the summary; multi-frame and colour CR/DX images are decode-error rows",
    )
    if id_key:
        parser.add_argument(
            "--id-key",
            metavar="FILE",
            default=None,
            help="site key for keyed pseudonyms of DICOM Patient IDs (default: the file in "
            "$MEDAI_ID_KEY_FILE, or $MEDAI_ID_KEY); make one with "
            "`head -c 32 /dev/urandom > site.key`",
        )


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``medai train`` flags."""
    from medai.labels import NEGATIVE_POLICIES
    from medai.model import HEADS

    parser.add_argument("--labels", required=True, help="Data_Entry_2017.csv or a CSV image,label")
    add_images_flag(parser)
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument(
        "--finding",
        default="Mass",
        help="finding(s) to detect: a name, a comma list (Mass,Nodule,Effusion) or 'all' "
        "(the 14 NIH findings); default Mass",
    )
    parser.add_argument(
        "--openvino",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the OpenVINO IR beside model.keras (default: on; the CPU scoring engine)",
    )
    parser.add_argument(
        "--negatives",
        default="all-others",
        choices=NEGATIVE_POLICIES,
        help="negatives of a finding: every image without it (default, ChestX-ray14) or only "
        "'No Finding' images",
    )
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    add_run_flags(parser, 16, "images per worker per step")
    parser.add_argument(
        "--image-size", type=int, default=256, help="input pixels per side (default 256, min 75)"
    )
    parser.add_argument(
        "--head",
        default="gap",
        choices=HEADS,
        help="global average pooling (default) or the original flatten + dense head",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (default), none, or a local InceptionV3 notop .h5 file",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="Ray Train workers (default: one per GPU, else one per node)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="split, weights and augmentation seed (default 0)"
    )
    _add_train_run_flags(parser)
    return parser


def _add_train_run_flags(parser: argparse.ArgumentParser) -> None:
    """How a training run goes: resume, learning rate, validation share, failures, unreadable."""
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="Adam learning rate (default 1e-4 pretrained, 1e-3 from scratch)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of train_val patients held out for validation (default 0.2)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="worker failures to recover from (restart from last checkpoint)",
    )
    add_max_unreadable_flag(parser)
    add_dicom_flags(parser)
    add_pacs_flags(parser, scoring=False)


def add_nightly_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``medai nightly`` flags."""
    from medai.labels import NEGATIVE_POLICIES
    from medai.report import SPLIT_HELP, SPLITS

    add_images_flag(parser)
    add_model_flag(parser)
    parser.add_argument("--store", required=True, help="store root (predictions, reports, ledger)")
    parser.add_argument(
        "--labels", default=None, help="labels CSV: refresh the report after scoring"
    )
    parser.add_argument("--negatives", default="all-others", choices=NEGATIVE_POLICIES)
    parser.add_argument("--split", default=None, choices=SPLITS, help=SPLIT_HELP)
    add_run_flags(parser, 32, "images per inference batch", inference=True)
    parser.add_argument("--rows-per-file", type=int, default=4096)
    add_retry_errors_flag(parser)
    add_dicom_flags(parser, id_key=False)
    add_pacs_flags(parser)
    return parser


def add_runs_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``medai runs`` arguments."""
    parser.add_argument("store", help="store root of medai nightly")
    return parser


def add_pacs_flags(
    parser: argparse.ArgumentParser, scoring: bool = True, requests: bool = True
) -> None:
    """DICOMweb flags: ``--since``, ``--results-to`` (``scoring``), ``--allow-insecure-http``,
    ``--ca-bundle``, ``--max-requests`` (``requests``). Credentials are never flags:
    ``MEDAI_DICOMWEB_USER`` + ``MEDAI_DICOMWEB_PASSWORD`` or ``MEDAI_DICOMWEB_TOKEN`` in the
    environment."""
    group = parser.add_argument_group(
        "PACS (dicomweb+https://HOST/dicom-web[?QIDO filters] or .../studies/UID[/series/UID"
        "[/instances/UID]]; credentials from MEDAI_DICOMWEB_USER + MEDAI_DICOMWEB_PASSWORD or "
        "MEDAI_DICOMWEB_TOKEN)"
    )
    if scoring:
        _add_scoring_pacs_flags(group)
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow plain http to a DICOMweb host other than this machine",
    )
    group.add_argument("--ca-bundle", default=None, help="CA file to trust for https (PEM)")
    if requests:
        group.add_argument(
            "--max-requests",
            type=int,
            default=4,
            help="DICOMweb requests in flight at most, for the whole run (default: 4)",
        )


def _add_scoring_pacs_flags(group) -> None:
    """``--since`` and ``--results-to`` (scoring jobs only)."""
    group.add_argument(
        "--since",
        default=None,
        help="list only studies dated this many days back (2d) or since a date (2026-01-31): "
        "a QIDO StudyDate range, so a nightly run does not list the whole archive",
    )
    group.add_argument(
        "--results-to",
        default=None,
        metavar="DIR|dicomweb+https://...",
        help="one DICOM SR per scored image: files in DIR, or STOW-RS to a PACS (one per "
        "model and image, however often a job runs; missing ones are sent next run)",
    )
