"""``medai demo``: the whole pipeline on generated phantoms, offline, in a few minutes.

Generates a phantom archive in the NIH layout, trains on a local Ray with two workers
(``--weights none``: no ImageNet download, said on screen), scores the archive, builds the
report on the phantom test split and returns the path of ``report.html``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoConfig", "run_demo"]

logger = logging.getLogger("medai.demo")


@dataclass(frozen=True)
class DemoConfig:
    """Options of the demo."""

    out: str = "medai-demo"
    patients: int = 240
    image_size: int = 96
    epochs: int = 4
    num_workers: int = 2
    seed: int = 0


def run_demo(config: DemoConfig) -> Path:
    """Run phantoms -> train -> score -> report; returns the report's path."""
    from medai.phantoms import PhantomSpec, write_phantom_archive
    from medai.report import ReportConfig, run_report
    from medai.score import ScoreConfig, run_scoring
    from medai.train import TrainConfig, run_training

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
        )
    )
    section = metrics["models"][card["model_id"]]
    low, high = section.get("auc_ci95") or (None, None)
    ci = f" (95% CI {low:.3f}-{high:.3f})" if low is not None else ""
    logger.info("test AUC %.3f%s on %d images", section["auc"], ci, section["n"])
    return report_dir / "report.html"
