"""Training curves: one drawing for the model directory and the report, per-finding AUC lines."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from medai.report.training_curves import training_figure, training_plot, write_training_curves

HISTORY = [
    {
        "epoch": epoch,
        "loss": 0.7 - 0.1 * epoch,
        "val_loss": 0.75 - 0.1 * epoch,
        "accuracy": 0.6 + 0.05 * epoch,
        "val_accuracy": 0.55 + 0.05 * epoch,
        "auc": 0.7 + 0.05 * epoch,
        "val_auc": 0.65 + 0.05 * epoch,
        "val_auc_per_finding": {"Mass": 0.6 + 0.05 * epoch, "Effusion": 0.7 + 0.05 * epoch},
    }
    for epoch in (1, 2, 3)
]


def _legends(figure) -> list[list[str]]:
    return [[t.get_text() for t in axes.get_legend().get_texts()] for axes in figure.axes]


def test_several_findings_get_a_validation_line_each_beside_the_mean():
    legends = _legends(training_figure("t", HISTORY, ["Mass", "Effusion"]))
    assert legends[0] == ["training", "validation"]  # accuracy
    assert legends[2] == [
        "training (mean)",
        "validation (mean)",
        "validation Mass",
        "validation Effusion",
    ]
    auc_axes = training_figure("t", HISTORY, ["Mass", "Effusion"]).axes[2]
    mass = auc_axes.lines[2].get_ydata()
    np.testing.assert_allclose(mass, [0.65, 0.7, 0.75])


def test_one_finding_has_no_per_finding_lines():
    legends = _legends(training_figure("t", HISTORY, ["Mass"]))
    assert legends[2] == ["training", "validation"]


def test_a_history_without_values_says_so_in_a_drawn_figure():
    png = training_plot("empty", [{"epoch": 1}])
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_the_model_directory_png_is_written_atomically(tmp_path: Path):
    path = tmp_path / "training_curves.png"
    write_training_curves(path, HISTORY, ["Mass", "Effusion"])
    image = Image.open(path)
    width, height = image.size
    assert image.format == "PNG" and width > 2 * height  # three panels side by side
    assert len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not blank
    assert [p.name for p in tmp_path.iterdir()] == ["training_curves.png"]
