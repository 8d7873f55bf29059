"""``--quick`` and full-run presets shared by the benchmark scripts."""

from __future__ import annotations

import argparse


def add_quick_flag(parser: argparse.ArgumentParser, quick: dict) -> None:
    """Add ``--quick``, whose help lists the smoke-run values of ``quick``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in quick.items()),
    )


def parse_with_presets(
    parser: argparse.ArgumentParser, argv: list[str] | None, quick: dict, full: dict
) -> argparse.Namespace:
    """Parse ``argv``; flags left unset take the ``--quick`` or the full-run value."""
    args = parser.parse_args(argv)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args
