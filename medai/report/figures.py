"""Report figures (PNG bytes via :mod:`medai.report.plots`) and the example images they show."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from medai import metrics
from medai.report.accounting import FindingRows, ModelRows
from medai.report.examples import EXAMPLE_GROUPS, example_cut_off
from medai.report.render import fmt

__all__ = [
    "FindingJob",
    "Titles",
    "comparison_plot",
    "draw_finding",
    "examples_figure",
    "finding_plots",
    "findings_roc_arguments",
    "model_plots",
    "slug",
]

# ----------------------------------------------------------------------------- plots


def slug(index: int, model_id: str) -> str:
    return f"{index + 1:02d}_{re.sub(r'[^A-Za-z0-9]', '', model_id)[:12] or 'model'}"


# ----------------------------------------------------------------------------- plots


def _auc_label(name: str, section: Mapping) -> str:
    text = f"{name} (n={section['n']:,}, AUC={fmt(section['auc'])}"
    if section.get("auc_ci95"):
        low, high = section["auc_ci95"]
        text += f" [{low:.3f}, {high:.3f}]"
    return text + ")"


def _finding_curves(model: ModelRows, section: Mapping) -> list[tuple[str, metrics.Curve | None]]:
    """The ``(legend, curve)`` pairs of the model's ROC figure: one per finding."""
    curves = []
    for finding in model.findings:
        entry = section["findings"][finding.name]
        label = (
            f"{finding.name} (pos={entry['n_positive']:,}/{entry['n']:,}, AUC={fmt(entry['auc'])})"
        )
        curves.append((label, metrics.roc_curve(finding.y, finding.scores)))
    return curves


def findings_roc_arguments(model: ModelRows, section: Mapping) -> tuple:
    """Arguments of :func:`medai.report.plots.roc_plot`: the model's ROC, a curve per finding."""
    return (
        f"ROC curves per finding - model {model.model_id[:12]}",
        _finding_curves(model, section),
        (),
        "ROC undefined for every finding",
    )


def _operating_marks(points: Mapping) -> tuple[list, dict, list]:
    """ROC marks, histogram cut-offs and confusion panels of the two operating points."""
    from medai.report import plots

    names = {"model_threshold": "model threshold", "youden": "Youden threshold"}
    marks, cut_offs, confusion_panels = [], {}, []
    for key, name in names.items():
        point = points[key]
        cut_offs[name] = point["threshold"]
        if point["threshold"] is None:
            confusion_panels.append((f"No {name}", None))
            continue
        confusion_panels.append(
            (f"At {name} {point['threshold']:.3f}", {k: point[k] for k in ("tp", "fp", "tn", "fn")})
        )
        if point["sensitivity"] is not None and point["specificity"] is not None:
            marks.append(
                plots.OperatingPoint(
                    f"{name} {point['threshold']:.3f}",
                    1 - point["specificity"],
                    point["sensitivity"],
                )
            )
    return marks, cut_offs, confusion_panels


@dataclass(frozen=True)
class Titles:
    """What a finding's figures say of their model (a :class:`ModelRows` without its rows).

    Attributes:
        model_id: The model's id.
        single: The report has one finding for the model (single-finding layout).
    """

    model_id: str
    single: bool


class FindingJob(NamedTuple):
    """The arguments of one :func:`draw_finding` call (a worker process may run it)."""

    titles: Titles
    finding: FindingRows
    entry: dict
    groups: Mapping[str, pd.DataFrame] | None
    thumbnails: Mapping[str, tuple[np.ndarray | None, str]]
    images: bool
    note: str


def draw_finding(
    titles: Titles,
    finding: FindingRows,
    entry: dict,
    groups: Mapping[str, pd.DataFrame] | None,
    thumbnails: Mapping[str, tuple[np.ndarray | None, str]],
    images: bool,
    note: str,
) -> tuple[dict[str, bytes], dict | None]:
    """Every figure of one finding (:func:`examples_figure`, then :func:`finding_plots`).

    Returns:
        The figures by kind, and the entry's ``examples`` record: this may run in a worker
        process, where changes to ``entry`` stay behind.
    """
    entry = dict(entry)
    examples = examples_figure(titles, finding, entry, groups, thumbnails, images, note)
    figures = finding_plots(titles, finding, entry, examples, with_roc=titles.single)
    return figures, entry["examples"]


def finding_plots(
    model: ModelRows | Titles,
    finding: FindingRows,
    entry: dict,
    examples: bytes | None,
    with_roc: bool,
) -> dict[str, bytes]:
    """The per-finding figures: ROC (single-finding layout only), histogram, confusion,
    calibration and the example grid drawn beforehand (``None``: no patient images)."""
    from medai.report import plots

    y, scores = finding.y, finding.scores
    short = model.model_id[:12]
    what = f"model {short}" if model.single else f"{finding.name} - model {short}"
    marks, cut_offs, confusion_panels = _operating_marks(entry["operating_points"])
    figures = {}
    if with_roc:
        figures["roc"] = plots.roc_plot(
            f"ROC curve - {what}",
            [(_auc_label(short, entry), metrics.roc_curve(y, scores))],
            marks,
            empty_reason=f"ROC undefined: {metrics.class_reason(y)}",
        )
    brier, ece = fmt(entry["brier"]), fmt(entry["ece"])
    if entry.get("ece_ci95"):
        ece += " [{:.3f}, {:.3f}]".format(*entry["ece_ci95"])
    figures["histogram"] = plots.score_histogram(
        f"Score distribution - {what}", y, scores, cut_offs
    )
    figures["confusion"] = plots.confusion_plot(f"Confusion matrices - {what}", confusion_panels)
    figures["calibration"] = plots.calibration_plot(
        f"Calibration - {what}",
        metrics.calibration_bins(y, scores),
        f"{short} (n={len(y):,}, Brier={brier}, ECE={ece})",
    )
    if examples is not None:
        figures["examples"] = examples
    return figures


def model_plots(model: ModelRows, section: dict) -> dict[str, bytes]:
    """Model-level figures: the ROC with a curve per finding (several findings), training."""
    from medai.report import plots
    from medai.report.training_curves import training_plot

    figures = {}
    if not model.single:
        figures["roc"] = plots.roc_plot(*findings_roc_arguments(model, section))
    history = (model.card or {}).get("history")
    if isinstance(history, list) and any(isinstance(row, dict) for row in history):
        rows = [row for row in history if isinstance(row, dict)]
        findings = (model.card or {}).get("findings")
        figures["training"] = training_plot(
            f"Training history - model {model.model_id[:12]}",
            rows,
            [str(f) for f in findings] if isinstance(findings, list) else (),
        )
    return figures


def examples_figure(
    model: ModelRows | Titles,
    finding: FindingRows,
    entry: dict,
    groups: Mapping[str, pd.DataFrame] | None,
    thumbnails: Mapping[str, tuple[np.ndarray | None, str]],
    images: bool = True,
    note: str = "",
) -> bytes | None:
    """Draw the example grid and record the chosen images in ``entry["examples"]``.

    With ``images=False`` (``--no-images``) the images are listed but no grid is drawn:
    ``None`` is returned. ``note`` is added to the title (e.g. which heatmap is overlaid).
    """
    from medai.report import plots

    cut_off, name = example_cut_off(entry)
    title = f"Example images - model {model.model_id[:12]}"
    if not model.single:
        title = f"Example images - {finding.name} - model {model.model_id[:12]}"
    if groups is None:
        entry["examples"] = None
        if not images:
            return None
        return plots.message_plot(title, "no examples: no labelled predictions with a threshold")
    if not images:
        listed = {group: frame["image_id"].tolist() for group, frame in groups.items()}
        entry["examples"] = {"cut_off": cut_off, "images": listed, "unreadable": None}
        return None
    grid, listed, unreadable = {}, {}, 0
    for group, frame in groups.items():
        examples = []
        shown = frame[["image_id", "source", "score"]].itertuples(index=False)
        for image_id, source, score in shown:
            pixels, problem = thumbnails.get(source, (None, "no source recorded"))
            unreadable += pixels is None
            examples.append(plots.Example(f"{image_id}\nscore {score:.3f}", pixels, problem))
        grid[EXAMPLE_GROUPS[group]] = examples
        listed[group] = frame["image_id"].tolist()
    entry["examples"] = {"cut_off": cut_off, "images": listed, "unreadable": unreadable}
    return plots.examples_plot(f"{title} at {name} {cut_off:.3f}{note}", grid)


def comparison_plot(section: Mapping, shared: pd.DataFrame) -> bytes:
    from medai.report import plots

    y = shared["label"].to_numpy(dtype=np.int8)
    curves = []
    for side in ("a", "b"):
        name = section[f"model_{side}"][:12]
        scores = shared[f"score_{side}"].to_numpy()
        label = f"{name} (n={len(y):,}, AUC={fmt(section[f'auc_{side}'])})"
        curves.append((label, metrics.roc_curve(y, scores)))
    why = metrics.class_reason(y)
    return plots.roc_plot(
        f"ROC on shared images ({section['finding']}) - {section['model_a'][:12]} vs "
        f"{section['model_b'][:12]}",
        curves,
        empty_reason=f"ROC undefined: {why}",
    )
