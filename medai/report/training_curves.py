"""Training curves: accuracy, loss and AUC per epoch, train vs validation, one drawing.

The same figure is the model directory's ``training_curves.png`` (written atomically by
:func:`write_training_curves` at the end of training) and the report's training plot. With
several findings the AUC panel shows the mean and each finding's validation AUC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medai.report.plots import is_finite, message_plot, new_figure, plain_text, png_bytes

__all__ = ["training_figure", "training_plot", "write_training_curves"]


def training_figure(title: str, history: Sequence[Mapping], findings: Sequence[str] = ()):
    """The figure of :func:`training_plot` (for inspection; :func:`training_plot` draws it)."""
    from matplotlib.ticker import MaxNLocator

    panels = _training_panels(history)
    figure = new_figure(4.4 * max(1, len(panels)), 4)
    figure.suptitle(title)
    epochs = [row.get("epoch", index + 1) for index, row in enumerate(history)]
    several = len(findings) > 1
    for index, name in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for key, style, split in ((name, "-", "training"), (f"val_{name}", "--", "validation")):
            values = [row.get(key) if is_finite(row.get(key)) else np.nan for row in history]
            if not all(np.isnan(values)):
                label = f"{split} (mean)" if several and name == "auc" else split
                axes.plot(epochs, values, style, marker="o", markersize=3, label=label)
        if name == "auc" and several:
            for finding in findings:
                values = [_per_finding(row, finding) for row in history]
                if not all(np.isnan(values)):
                    axes.plot(epochs, values, ":", alpha=0.8, label=f"validation {finding}")
        label = name.upper() if name == "auc" else name
        axes.set_title(label if name == "auc" else name.capitalize(), fontsize=10)
        axes.set_xlabel("Epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 on short runs
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def _training_panels(history: Sequence[Mapping]) -> list[str]:
    return [
        name
        for name in ("accuracy", "loss", "auc")
        if any(is_finite(row.get(name)) or is_finite(row.get(f"val_{name}")) for row in history)
    ]


def _per_finding(row: Mapping, finding: str) -> float:
    values = row.get("val_auc_per_finding")
    value = values.get(finding) if isinstance(values, Mapping) else None
    return value if is_finite(value) else np.nan


@plain_text
def training_plot(title: str, history: Sequence[Mapping], findings: Sequence[str] = ()) -> bytes:
    """Training and validation accuracy, loss (and AUC when recorded) per epoch.

    The one drawing of training curves: the report's and the model directory's
    ``training_curves.png``.

    Args:
        title: Figure title.
        history: Per-epoch dicts with any of ``epoch``, ``loss``, ``accuracy``, ``auc`` and
            their ``val_`` counterparts, and ``val_auc_per_finding`` (several findings).
        findings: The model's findings; with several, the AUC panel adds each finding's
            validation AUC beside the mean.

    Returns:
        PNG bytes.
    """
    if not _training_panels(history):
        return message_plot(title, "the model card history has no accuracy or loss values")
    return png_bytes(training_figure(title, history, findings))


def write_training_curves(path, history: Sequence[Mapping], findings: Sequence[str]) -> None:
    """Write a model directory's ``training_curves.png`` atomically."""
    from medai.files import write_atomically

    findings = list(findings)
    named = findings[0] if len(findings) == 1 else f"{len(findings)} findings"
    png = training_plot(f"Training history - {named}", history, findings)
    write_atomically(path, lambda tmp: tmp.write_bytes(png))
