"""Report figures as PNG bytes: ROC, score histograms, confusion matrices, calibration and
example thumbnails (training curves: :mod:`medai.report.training_curves`).

Figures are drawn on matplotlib's Agg canvas directly (no ``pyplot``), so no global backend
state is touched and nothing is imported until a plot is drawn. Every function returns PNG
bytes; when the data cannot support a plot (one class, no rows) the figure states why instead
of raising, so a degenerate report still renders completely.
"""

from __future__ import annotations

import functools
import io
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medai.metrics import Curve

__all__ = [
    "Example",
    "OperatingPoint",
    "message_plot",
    "roc_figure",
    "roc_plot",
    "score_histogram",
    "confusion_plot",
    "calibration_plot",
    "is_finite",
    "new_figure",
    "plain_text",
    "png_bytes",
    "examples_plot",
]

_DPI = 100
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class OperatingPoint:
    """A marked cut-off on a ROC curve.

    Attributes:
        label: Legend text, e.g. ``model threshold 0.412``.
        fpr: 1 - specificity at the cut-off.
        tpr: Sensitivity at the cut-off.
    """

    label: str
    fpr: float
    tpr: float


@dataclass(frozen=True)
class Example:
    """One thumbnail of the example grid.

    Attributes:
        caption: Text under the image (image id and score).
        pixels: 2-D ``uint8`` grayscale array, or ``None`` when the image could not be read.
        problem: Why the image is missing, shown in place of it.
    """

    caption: str
    pixels: np.ndarray | None = None
    problem: str = ""


def plain_text(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Draw with mathtext off: ids and file names with ``$`` must print, not fail to parse."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> bytes:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float):
    """A matplotlib figure on an Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout keeps tick labels of side-by-side panels from overlapping.
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure, fast: bool = False) -> bytes:
    """Encode a figure; ``fast`` trades zlib effort for time on photo-like figures, whose
    pixels hardly compress anyway (about half the encode time of a thumbnail grid)."""
    buffer = io.BytesIO()
    options = {"pil_kwargs": {"compress_level": 1}} if fast else {}
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", **options)
    return buffer.getvalue()


def _colors(count: int) -> list:
    """Distinct line colours: the report palette, or tab20 beyond it (14 findings)."""
    if count <= len(_COLORS):
        return list(_COLORS)
    from matplotlib import colormaps

    palette = colormaps["tab20"].colors
    return [palette[index % len(palette)] for index in range(count)]


def _say(axes, message: str) -> None:
    """Write a message across an empty axes, for data that cannot be plotted."""
    axes.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        wrap=True,
        fontsize=11,
        transform=axes.transAxes,
        color="#444444",
    )
    axes.set_xticks([])
    axes.set_yticks([])


@plain_text
def message_plot(title: str, message: str) -> bytes:
    """A placeholder figure that only states ``message``.

    Args:
        title: Figure title.
        message: Why there is nothing to draw.

    Returns:
        PNG bytes.
    """
    figure = new_figure(6, 2.5)
    axes = figure.add_subplot()
    axes.set_title(title)
    _say(axes, message)
    return png_bytes(figure)


@plain_text
def roc_plot(
    title: str,
    curves: Sequence[tuple[str, Curve | None]],
    points: Sequence[OperatingPoint] = (),
    empty_reason: str = "",
) -> bytes:
    """ROC curves with the chance diagonal and marked operating points.

    Args:
        title: Figure title.
        curves: ``(legend label, curve)`` pairs, one per model or finding; the label should
            carry n and AUC.
        points: Operating points to mark on the (first) curve.
        empty_reason: Shown instead of a curve when no curve is defined.

    Returns:
        PNG bytes.
    """
    return png_bytes(roc_figure(title, curves, points, empty_reason))


def roc_figure(
    title: str,
    curves: Sequence[tuple[str, Curve | None]],
    points: Sequence[OperatingPoint] = (),
    empty_reason: str = "",
):
    """The matplotlib ``Figure`` of :func:`roc_plot` (for callers that inspect it)."""
    figure = new_figure(6, 5.5)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("False-positive rate (1 - specificity)")
    axes.set_ylabel("True-positive rate (sensitivity)")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance (AUC 0.5)")
    drawn = 0
    colors = _colors(len(curves))
    for index, (label, curve) in enumerate(curves):
        if curve is None:
            continue
        axes.plot(curve.fpr, curve.tpr, color=colors[index], lw=1.8, label=label)
        drawn += 1
    for marker, point in zip(("o", "s", "^", "D"), points, strict=False):
        axes.plot(
            [point.fpr],
            [point.tpr],
            marker=marker,
            markersize=8,
            linestyle="none",
            markeredgecolor="black",
            label=point.label,
        )
    if not drawn:
        axes.text(
            0.5,
            0.55,
            empty_reason or "ROC curve undefined",
            ha="center",
            va="center",
            wrap=True,
            color="#444444",
            transform=axes.transAxes,
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8 if len(curves) <= len(_COLORS) else 7)
    return figure


@plain_text
def score_histogram(
    title: str,
    y: np.ndarray,
    scores: np.ndarray,
    thresholds: Mapping[str, float | None],
    bins: int = 50,
) -> bytes:
    """Score distributions of positive and negative images, with cut-off lines.

    Each class is normalised to its own density because positives are usually rare.

    Args:
        title: Figure title.
        y: 0/1 labels.
        scores: Predicted probabilities.
        thresholds: ``{legend label: cut-off}``; ``None`` cut-offs are skipped.
        bins: Number of equal-width bins on [0, 1].

    Returns:
        PNG bytes.
    """
    figure = new_figure(7, 4.2)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("Predicted probability")
    axes.set_ylabel("Density (per class)")
    if y.size == 0:
        _say(axes, "no labelled predictions")
        return png_bytes(figure)
    edges = np.linspace(0.0, 1.0, bins + 1)
    clipped = np.clip(scores, 0.0, 1.0)
    for value, name, color in ((0, "negatives", _COLORS[0]), (1, "positives", _COLORS[1])):
        chosen = clipped[y == value]
        if chosen.size:
            axes.hist(
                chosen,
                bins=edges,
                density=True,
                alpha=0.45,
                color=color,
                label=f"{name} (n={chosen.size:,})",
            )
        else:
            axes.plot([], [], color=color, label=f"{name} (n=0)")
    styles = ("--", "-.", ":")
    for style, (label, value) in zip(styles, thresholds.items(), strict=False):
        if value is not None:
            axes.axvline(value, color="black", linestyle=style, label=f"{label} = {value:.3f}")
    axes.set_xlim(0, 1)
    axes.legend(fontsize=8)
    return png_bytes(figure)


@plain_text
def confusion_plot(title: str, panels: Sequence[tuple[str, Mapping[str, int] | None]]) -> bytes:
    """Confusion matrices side by side, one per cut-off.

    Args:
        title: Figure title.
        panels: ``(panel title, {"tp", "fp", "tn", "fn"} or None)`` pairs.

    Returns:
        PNG bytes.
    """
    figure = new_figure(4.2 * max(1, len(panels)), 4.2)
    figure.suptitle(title)
    for index, (name, counts) in enumerate(panels or [("", None)]):
        axes = figure.add_subplot(1, max(1, len(panels)), index + 1)
        axes.set_title(name, fontsize=10)
        if counts is None or sum(counts.values()) == 0:
            _say(axes, "no threshold" if counts is None else "no labelled predictions")
            continue
        matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
        axes.imshow(matrix, cmap="Blues", vmin=0)
        names = (("TN", "FP"), ("FN", "TP"))
        for (row, col), value in np.ndenumerate(matrix):
            dark = value > matrix.max() / 2
            axes.text(
                col,
                row,
                f"{names[row][col]}\n{value:,}",
                ha="center",
                va="center",
                color="white" if dark else "black",
                fontsize=11,
            )
        axes.set_xticks([0, 1], ["negative", "positive"])
        axes.set_yticks([0, 1], ["negative", "positive"])
        axes.set_xlabel("Predicted")
        axes.set_ylabel("Actual (label)")
    return png_bytes(figure)


@plain_text
def calibration_plot(title: str, bins: Mapping[str, Sequence], label: str) -> bytes:
    """Reliability curve (observed positive fraction per predicted-probability bin), with the
    number of images in each bin as labelled bars below it.

    Args:
        title: Figure title.
        bins: Output of :func:`medai.metrics.calibration_bins`.
        label: Legend label of the curve (n and Brier score).

    Returns:
        PNG bytes.
    """
    figure = new_figure(6, 6)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.set_title(title)
    top.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    counts = np.asarray(bins.get("count", []))
    if counts.size == 0:
        _say(top, "no labelled predictions")
    else:
        predicted = np.asarray(bins["mean_predicted"])
        top.plot(predicted, bins["fraction_positive"], marker="o", color=_COLORS[0], label=label)
        bars = bottom.bar(predicted, counts, width=0.06, color=_COLORS[0], alpha=0.6)
        # The count of each bin printed on its bar: a reviewer sees how much each point weighs.
        bottom.bar_label(bars, labels=[f"{int(c):,}" for c in counts], fontsize=7)
        bottom.set_ylim(0, counts.max() * 1.3)
        top.legend(loc="upper left", fontsize=8)
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
    top.set_ylabel("Observed fraction positive")
    bottom.set_xlabel("Mean predicted probability (bin)")
    bottom.set_ylabel("Images")
    return png_bytes(figure)


def is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


@plain_text
def examples_plot(title: str, rows: Mapping[str, Sequence[Example]], columns: int = 4) -> bytes:
    """A grid of thumbnails: one row per group (e.g. true positives), up to ``columns`` each.

    Args:
        title: Figure title.
        rows: ``{row title: examples}``; an empty row says "none".
        columns: Thumbnails per row.

    Returns:
        PNG bytes.
    """
    figure = new_figure(2.3 * columns, 2.7 * max(1, len(rows)))
    figure.suptitle(title)
    grid = figure.subplots(max(1, len(rows)), columns, squeeze=False)
    for row_axes, (name, examples) in zip(grid, rows.items(), strict=False):
        for column, axes in enumerate(row_axes):
            axes.set_box_aspect(1)  # square cells whether or not an image was drawn
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(name, fontsize=9)
            if column >= len(examples):
                if column == 0:
                    axes.text(0.5, 0.5, "none", ha="center", va="center", transform=axes.transAxes)
                else:
                    axes.set_axis_off()
                continue
            example = examples[column]
            axes.set_title(example.caption, fontsize=7)
            if example.pixels is None:
                problem = textwrap.shorten(example.problem, 90, placeholder="...")
                axes.text(
                    0.5,
                    0.5,
                    "unreadable:\n" + textwrap.fill(problem, 24),
                    ha="center",
                    va="center",
                    fontsize=7,
                    transform=axes.transAxes,
                )
            else:
                axes.imshow(example.pixels, cmap="gray", vmin=0, vmax=255)
    return png_bytes(figure, fast=True)
