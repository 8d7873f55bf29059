"""The ``medai`` command line: one sub-command per job.

Examples::

    medai demo --out medai-demo
    medai train --labels Data_Entry_2017.csv --images /data/nih --finding Mass --out models/mass
    medai score --model models/mass --images /data/nih --out predictions/
    medai predict --model models/mass 00000013_005.png
    medai export models/mass --int8
    medai report --predictions predictions/ --labels Data_Entry_2017.csv --out report/
    medai nightly --images /data/nih --model models/mass --store /data/store --labels ...
    medai submit score --address http://head:8265 -- --model ... --images ... --out ...

Every job also reads ``--config FILE.yaml``, whose keys are the long flag names (``batch-size``
or ``batch_size``); flags given on the command line win. Bad flags or inputs stop the job
before work starts with ``medai <job>: error: <what is wrong>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from medai.configs import config_from
from medai.flags import (
    add_dicom_flags,
    add_engine_flags,
    add_images_flag,
    add_model_flag,
    add_pacs_flags,
    add_retry_errors_flag,
    add_run_flags,
)

__all__ = ["main", "build_parser", "parse_args"]

logger = logging.getLogger("medai")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of options (keys: long flag names)")
    _add_verbose(parser)


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the libraries' logs: Ray's, Ray Data's plans and progress, TensorFlow's "
        "(as MEDAI_VERBOSE=1 does)",
    )


def _add_score(parser: argparse.ArgumentParser) -> None:

    add_model_flag(parser)
    add_images_flag(parser)
    parser.add_argument("--out", required=True, help="predictions folder (Parquet)")
    add_run_flags(parser, 32, "images per inference batch", inference=True)
    parser.add_argument("--limit", type=int, default=None, help="only the first N input images")
    add_pacs_flags(parser)
    parser.add_argument(
        "--actors",
        type=int,
        default=None,
        help="scorer actors (default: one per GPU, else one per node)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="inference threads per scorer actor, OpenVINO or TensorFlow (default: its node's Ray "
        "CPUs shared among the node's scorer actors)",
    )
    parser.add_argument("--rows-per-file", type=int, default=4096)
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (medai's and Ray Data's; they show only on a terminal anyway)",
    )
    add_retry_errors_flag(parser)
    add_dicom_flags(parser, id_key=False)


def _add_predict(parser: argparse.ArgumentParser) -> None:
    from medai.saliency import METHODS

    add_model_flag(parser)
    parser.add_argument(
        "image",
        nargs="+",
        help="image files, ARCHIVE::MEMBER, or DICOMweb sources (dicomweb+https://HOST/"
        "dicom-web[?QIDO filters] or .../studies/UID[/series/UID[/instances/UID]])",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON lines (one per image and finding)"
    )
    add_engine_flags(parser)
    parser.add_argument(
        "--threads", type=int, default=None, help="inference threads (default: the engine's)"
    )
    parser.add_argument(
        "--heatmap",
        metavar="DIR",
        default=None,
        help="write each image's heatmap of every finding to DIR as "
        "<image stem>_<finding>.png (the model's input with the heatmap overlaid)",
    )
    parser.add_argument(
        "--saliency",
        default=None,
        metavar="METHOD",
        help=f"heatmap method for --heatmap: {', '.join(METHODS)} (default: the report's)",
    )
    add_pacs_flags(parser, scoring=False, requests=False)


def _add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model directory from medai train")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also quantize to int8 (NNCF: pip install 'medai[int8]'), calibrated on the "
        "training split and kept only if its gate on the validation split accepts it",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATH",
        help="where the split's images are (default: the card's training images)",
    )


def _add_demo(parser: argparse.ArgumentParser) -> None:
    from medai.demo import DemoConfig

    defaults = DemoConfig()
    for flag, kind, help_text in (
        ("--out", str, "folder for everything the demo makes"),
        ("--patients", int, "phantom patients to generate, 1-3 images each"),
        ("--image-size", int, "pixels per side of the phantoms and the model's input"),
        ("--epochs", int, "training epochs"),
        ("--num-workers", int, "Ray Train workers"),
        ("--seed", int, "phantom, split and training seed"),
    ):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        parser.add_argument(
            flag, type=kind, default=default, help=f"{help_text} (default {default})"
        )


def _load_yaml(path: str, parser: argparse.ArgumentParser) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        parser.error(f"--config {path}: {exc}")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of option names to values")
    known = {action.dest for action in parser._actions}
    values = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known or dest in ("help", "config"):
            parser.error(f"--config {path}: unknown option {key!r}")
        if dest in _LIST_OPTIONS:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                parser.error(f"--config {path}: {key} must be a path or a list of paths")
        values[dest] = value
    return values


# Options that take several values: YAML gives a string or a list; the command line wins.
_LIST_OPTIONS = ("images",)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse flags, taking defaults from ``--config`` YAML when given."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    late: dict = {}
    if known.config:
        defaults = _load_yaml(known.config, parser)
        # A list default would be extended, not replaced, by the flag given on the command line.
        late = {dest: defaults.pop(dest) for dest in _LIST_OPTIONS if dest in defaults}
        for action in parser._actions:
            if action.dest in defaults or action.dest in late:
                action.required = False
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for dest, value in late.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
    return args


def _run_train(args: argparse.Namespace) -> int:
    from medai.card import card_line
    from medai.train import TrainConfig, run_training

    config = config_from(TrainConfig, args, export_openvino=args.openvino)
    card = run_training(config)
    print(f"model {card['model_id'][:12]} in {args.out}: {card_line(card)}")
    return 0


def _score_config(args: argparse.Namespace):
    from medai.pacs_data import PacsOptions
    from medai.score import ScoreConfig

    return config_from(ScoreConfig, args, pacs=config_from(PacsOptions, args))


def _run_score(args: argparse.Namespace) -> int:
    from medai.score import run_scoring

    summary = run_scoring(_score_config(args))
    print(summary.line())
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from medai.predict import PredictConfig, run_predict

    status = 0
    results = run_predict(config_from(PredictConfig, args))
    for result in results:
        if args.json:
            print(json.dumps(result))
        elif result["error"]:
            print(f"{result['image']}\t{result['finding']}\terror\t{result['error']}")
        else:
            heatmap = f"\t{result['heatmap']}" if result["heatmap"] else ""
            print(
                f"{result['image']}\t{result['finding']}\t{result['score']:.6f}\t"
                f"{result['predicted']}{heatmap}"
            )
        status = status or (1 if result["error"] else 0)
    return status


def _run_export(args: argparse.Namespace) -> int:
    from medai.export import ExportConfig, run_export

    block = run_export(config_from(ExportConfig, args))
    print(json.dumps(block, indent=2))
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from medai.report import config_from_args, run_report

    config = config_from_args(args)
    run_report(config)
    print(f"report: {Path(config.out).resolve() / 'report.html'}")
    return 0


def _run_submit(args: argparse.Namespace) -> int:
    from medai.submit import run_submit

    return run_submit(args)


def _run_nightly(args: argparse.Namespace) -> int:
    from medai.nightly import config_from_args, run_nightly

    result = run_nightly(config_from_args(args))
    print(result.line())
    return 0


def _run_runs(args: argparse.Namespace) -> int:
    from medai.nightly import format_ledger

    print(format_ledger(args.store))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from medai.demo import DemoConfig, run_demo

    config = config_from(DemoConfig, args)
    report = run_demo(config)
    print(f"open the report: {report}")
    return 0


def _commands() -> dict[str, tuple[str, Callable, Callable]]:
    from medai.flags import add_nightly_arguments, add_runs_arguments, add_train_arguments
    from medai.report import add_report_arguments
    from medai.submit import add_submit_arguments

    return {
        "demo": (
            "end-to-end demo on generated phantoms (no data, no network)",
            _add_demo,
            _run_demo,
        ),
        "train": ("fine-tune InceptionV3 with Ray Train", add_train_arguments, _run_train),
        "score": ("score image archives into Parquet with Ray Data", _add_score, _run_score),
        "predict": ("score single images in process", _add_predict, _run_predict),
        "export": (
            "write a model directory's OpenVINO IR (fp32, and int8 behind a gate)",
            _add_export,
            _run_export,
        ),
        "report": (
            "ROC/AUC, plots and report.html from predictions",
            add_report_arguments,
            _run_report,
        ),
        "nightly": (
            "incremental rescoring into a store, with a run ledger",
            add_nightly_arguments,
            _run_nightly,
        ),
        "runs": ("print a store's run ledger", add_runs_arguments, _run_runs),
        "submit": ("submit a job to a Ray cluster", add_submit_arguments, _run_submit),
    }


def build_parser() -> argparse.ArgumentParser:
    """The ``medai`` parser with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="medai",
        description=__doc__.split("\n\n")[0].replace("``", ""),  # reST quotes, not for a terminal
    )
    _add_verbose(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add, run) in _commands().items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add(child)
        if name not in ("submit", "runs"):
            _add_common(child)
        child.set_defaults(_run=run)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a ``medai`` command line, with ``--config`` YAML defaults for the jobs.

    Args:
        argv: The arguments after ``medai`` (the sub-command first).

    Returns:
        The parsed options; ``command`` names the sub-command and ``_run`` runs it.
    """
    argv = list(argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):  # the global flag, before the command
        verbose, argv = True, argv[1:]
    parser = build_parser()
    if argv and argv[0] in _commands() and argv[0] not in ("submit", "runs"):
        child = parser._subparsers._group_actions[0].choices[argv[0]]  # type: ignore[union-attr]
        args = _parse(child, argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    args.verbose = verbose or bool(getattr(args, "verbose", False))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``medai`` command; returns the process exit status."""
    from medai.console import setup_console
    from medai.errors import run_reported

    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_console(verbose=args.verbose)
    return run_reported(args.command, lambda: int(args._run(args)), _RESUME.get(args.command, ""))


# What an interrupted command has kept, and how to go on from it.
_RESUME = {
    "score": "; the prediction files written so far are kept: run the same command to go on",
    "nightly": "; the prediction files written so far are kept: run it again to go on",
    "train": "; add --resume to the same command to go on from the last checkpoint",
}


if __name__ == "__main__":
    sys.exit(main())
