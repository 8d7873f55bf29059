"""Command-line flags shared by several jobs, defined once so that they read the same everywhere."""

from __future__ import annotations

import argparse

__all__ = ["add_images_flag", "add_run_flags", "add_model_flag"]


def add_images_flag(parser: argparse.ArgumentParser) -> None:
    """``--images`` (repeatable): folders, tarballs, images, ``.txt`` lists or URIs."""
    parser.add_argument(
        "--images",
        required=True,
        action="append",
        help="folder (recursive; NIH tarballs read in place), tarball, image, .txt list or "
        "URI (file://, s3://, gs://); repeatable",
    )


def add_model_flag(parser: argparse.ArgumentParser) -> None:
    """``--model``: a model directory written by ``medai train``."""
    parser.add_argument("--model", required=True, help="model directory from medai train")


def add_run_flags(parser: argparse.ArgumentParser, batch_size: int, batch_help: str) -> None:
    """``--batch-size``, ``--precision`` and ``--address``: how and where a Ray job runs."""
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="fp32, or bf16 (mixed_bfloat16; ~1.3-1.5x on CPUs with bf16 units)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray address (default: RAY_ADDRESS, else a local Ray in-process)",
    )
