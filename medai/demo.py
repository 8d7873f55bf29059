"""``medai demo``: the whole pipeline on generated phantoms, offline, in a few minutes.

Generates a phantom archive in the NIH layout, trains on a local Ray with two workers
(``--weights none``: no ImageNet download, said on screen), scores the archive, builds the
report on the phantom test split and returns the path of ``report.html``. It ends by printing
the test split's AUC, ECE and Brier score and the card's threshold, so a first-time user sees
that the scores are calibrated probabilities, not only a ranking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from medai.card import ECE_BINS
from medai.configs import CheckedConfig
from medai.errors import MedaiError
from medai.paths import folder_problem

__all__ = ["DemoConfig", "DemoError", "run_demo", "phantom_test_calibration"]

logger = logging.getLogger("medai.demo")


class DemoError(MedaiError, ValueError):
    """A demo option is unusable; the message names the problem."""


@dataclass(frozen=True)
class DemoConfig(CheckedConfig):
    """Options of the demo."""

    out: str = "medai-demo"
    patients: int = 240
    image_size: int = 96
    epochs: int = 4
    num_workers: int = 2
    seed: int = 0

    error: ClassVar[type[MedaiError]] = DemoError

    def problems(self) -> list[str]:
        """What stops the demo before it starts: its output folder."""
        problem = folder_problem("--out", self.out)
        return [problem] if problem else []


def run_demo(config: DemoConfig) -> Path:
    """Run phantoms -> train -> score -> report; returns the report's path."""
    from medai.phantoms import PhantomSpec, write_phantom_archive
    from medai.report import ReportConfig, run_report
    from medai.score import ScoreConfig, run_scoring
    from medai.train import TrainConfig, run_training

    config.check()
    out = Path(config.out).resolve()
    data = out / "data"
    logger.info(
        "1/4 generating %d phantom patients in the NIH layout under %s", config.patients, data
    )
    labels = write_phantom_archive(
        data, PhantomSpec(n_patients=config.patients, size=256, seed=config.seed)
    )
    logger.info(
        "2/4 training with --weights none (random initialisation: the demo runs offline, "
        "so no ImageNet weights are downloaded), %d workers, %d px, %d epochs",
        config.num_workers,
        config.image_size,
        config.epochs,
    )
    card = run_training(
        TrainConfig(
            labels=str(labels),
            images=(str(data),),
            out=str(out / "model"),
            weights="none",
            image_size=config.image_size,
            epochs=config.epochs,
            num_workers=config.num_workers,
            seed=config.seed,
            batch_size=16,
        )
    )
    logger.info("3/4 scoring the archive with model %s", card["model_id"][:12])
    summary = run_scoring(
        ScoreConfig(model=str(out / "model"), images=(str(data),), out=str(out / "predictions"))
    )
    logger.info(summary.line())
    logger.info("4/4 report on the phantom test split")
    report_dir = out / "report"
    metrics = run_report(
        ReportConfig(
            predictions=str(out / "predictions"),
            labels=str(labels),
            finding=card["finding"],
            out=str(report_dir),
            split="test",
            # This run's model alone (a rerun's folder also holds the earlier runs' rows), and
            # its network for the heatmaps.
            model=str(out / "model"),
            model_id=card["model_id"],
        )
    )
    _log_test_numbers(metrics, out, labels, card)
    return report_dir / "report.html"


def _log_test_numbers(metrics: dict, out: Path, labels: Path, card: dict) -> None:
    """The phantom test split's AUC, ECE and Brier score, beside the card's threshold."""
    section = metrics["models"][card["model_id"]]
    low, high = section.get("auc_ci95") or (None, None)
    ci = f" (95% CI {low:.3f}-{high:.3f})" if low is not None else ""
    logger.info("test AUC %.3f%s on %d images", section["auc"], ci, section["n"])
    calibration = phantom_test_calibration(out / "predictions", labels, card)
    logger.info(
        "test calibration on %d images: ECE %.3f (%d bins), Brier %.3f; card threshold %.3f "
        "(validation ECE %.3f -> %.3f after %s scaling)",
        calibration["n"],
        calibration["ece"],
        ECE_BINS,
        calibration["brier"],
        card["threshold"],
        card["calibration"]["val_ece_before"],
        card["calibration"]["val_ece_after"],
        card["calibration"]["method"],
    )


def phantom_test_calibration(predictions: Path, labels: Path, card: dict) -> dict:
    """ECE and Brier score of the model's scores on the phantom test list.

    Args:
        predictions: The folder ``medai score`` wrote.
        labels: The phantom ``Data_Entry_2017.csv`` (its ``test_list.txt`` lies beside it).
        card: The model card (model id, finding, negatives policy).

    Returns:
        ``{"n", "ece", "brier"}``.
    """
    import pandas as pd

    from medai.labels import load_labels, read_split_list
    from medai.metrics import brier_score, expected_calibration_error

    rows = pd.read_parquet(predictions, columns=["model_id", "image_id", "score", "error"])
    # Error rows carry no score (their error is text; a scored row's is empty or null).
    rows = rows[(rows["model_id"] == card["model_id"]) & (rows["error"].fillna("") == "")]
    test = set(read_split_list(Path(labels).parent / "test_list.txt"))
    truth = load_labels(labels, card["finding"], card.get("negatives", "all-others"))
    scored = rows[rows["image_id"].isin(test)].merge(truth[["image_id", "label"]], on="image_id")
    y, scores = scored["label"].to_numpy(), scored["score"].to_numpy()
    return {
        "n": len(scored),
        "ece": expected_calibration_error(y, scores, n_bins=ECE_BINS),
        "brier": brier_score(y, scores),
    }
