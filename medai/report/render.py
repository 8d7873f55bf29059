"""Rendering: the report page from ``templates/report.html.j2`` (Jinja2, autoescaped).

The template ships as package data (``pyproject.toml`` lists it), so an installed medai
renders the same page as a source checkout. Figures are embedded as ``data:`` URIs: the page
is one self-contained file that needs no network and no other file.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence

import numpy as np

from medai import metrics
from medai.card import ECE_BINS, INTENDED_USE
from medai.saliency import METHOD_NAMES

__all__ = ["CAPTIONS", "fmt", "render_html", "undefined_auc"]

CAPTIONS = {
    "roc": "ROC curve with the operating points",
    "histogram": "Score distributions of positives and negatives",
    "confusion": "Confusion matrices at the model and Youden thresholds",
    "calibration": "Calibration (reliability) curve with the images per bin",
    "training": "Training curves from the model card",
    "examples": "Example images",
}
_CARD_KEYS = (
    "finding",
    "threshold",
    "threshold_sensitivity_90",
    "val_auc",
    "head",
    "image_size",
    "weights",
)


def fmt(value, digits: int = 3) -> str:
    """A value as the page shows it: ``n/a`` for ``None``, thousands separators, 3 decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pvalue(value) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


@functools.lru_cache(maxsize=1)
def _template():
    from jinja2 import Environment, PackageLoader, Undefined

    environment = Environment(
        loader=PackageLoader("medai.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # A key a model card lacks shows as n/a, like a null.
    environment.filters["fmt"] = lambda value: fmt(None if isinstance(value, Undefined) else value)
    environment.filters["pvalue"] = _pvalue
    return environment.get_template("report.html.j2")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figures(figures: Mapping[str, bytes], finding: str = "") -> list[dict]:
    prefix = f"{finding}: " if finding else ""
    return [
        {"uri": _data_uri(png), "caption": prefix + CAPTIONS.get(name, name)}
        for name, png in figures.items()
    ]


def _card_rows(card: Mapping | None) -> list[tuple[str, object]]:
    if not card:
        return []
    rows = [
        (key, card[key])
        for key in _CARD_KEYS
        if key in card and not isinstance(card[key], (dict, list))
    ]
    if isinstance(card.get("findings"), list):
        rows.insert(0, ("findings", ", ".join(map(str, card["findings"]))))
    return rows


def _mapping_items(value) -> list[tuple[str, dict]]:
    """``(name, dict)`` pairs of a card's per-split or per-finding mapping, plain values only."""
    if not isinstance(value, Mapping):
        return []
    return [
        (
            str(name),
            {
                key: item
                for key, item in values.items()
                if not isinstance(item, (dict, list)) and key != "reasons"
            },
        )
        for name, values in value.items()
        if isinstance(values, Mapping)
    ]


def undefined_auc(section: Mapping, finding: str) -> str:
    """Why a finding's AUC is undefined, as its metrics' ``reasons`` say (one class only...)."""
    prefix = "auc undefined: "
    reasons = section["findings"][finding].get("reasons", [])
    return next((r[len(prefix) :] for r in reasons if r.startswith(prefix)), "no reason recorded")


def _flags(report: Mapping) -> list[str]:
    """What a reviewer must not miss: flagged subgroups, findings without a threshold, and
    heatmaps that miss the annotated boxes."""
    flags = []
    for model_id, section in report["models"].items():
        for row in section["subgroups"]:
            if row["flagged"]:
                low, high = row["auc_ci95"]
                overall = section["findings"][row["finding"]]["auc"]
                flags.append(
                    f"model {model_id[:12]}, {row['finding']}: {row['attribute']}={row['value']} "
                    f"AUC {row['auc']:.3f} [{low:.3f}, {high:.3f}] is below the overall "
                    f"{overall:.3f}"
                )
        for row in section["summary"]:
            if row["auc"] is None:
                why = undefined_auc(section, row["finding"])
                flags.append(f"model {model_id[:12]}, {row['finding']}: AUC undefined: {why}")
            if row["threshold"] is None:
                flags.append(f"model {model_id[:12]}, {row['finding']}: no operating threshold")
    for row in report.get("localization", []):
        if row["flagged"]:
            low, high = row["ci95"]
            name = METHOD_NAMES.get(report["saliency"].get("method"), "Grad-CAM")
            flags.append(
                f"{row['finding']}: {name} points inside the annotated box in "
                f"{row['pointing_hit_rate']:.3f} [{low:.3f}, {high:.3f}] of {row['n']} images: "
                "the heatmaps do not show where the finding is"
            )
    return flags


def _model_view(model_id: str, section: Mapping, drawn: tuple, failures: Mapping) -> dict:
    """What the template shows of one model: its section, figures, findings and card."""
    model_figures, per_finding = drawn
    card = section.get("model_card") or {}
    findings = [
        {
            "name": name,
            "entry": entry,
            "figures": _figures(per_finding.get(name, {}), name),
            "subgroups": [row for row in section["subgroups"] if row["finding"] == name],
            "failures": failures.get(name),
        }
        for name, entry in section["findings"].items()
    ]
    return {
        "section": section,
        "single": not per_finding,
        "figures": _figures(model_figures),
        "findings": findings,
        "card_rows": _card_rows(card),
        "card_findings": _mapping_items(card.get("per_finding")),
        "training": _mapping_items(card.get("counts")),
    }


def render_html(
    report: Mapping,
    figures: Mapping[str, tuple[dict[str, bytes], dict[str, dict[str, bytes]]]],
    comparison_figures: Sequence[bytes],
    failures: Mapping[str, Mapping[str, dict | None]],
    attributes: Sequence[str],
    images: bool = True,
) -> str:
    """The self-contained report page.

    Args:
        report: The JSON-safe metrics.json content.
        figures: Per model id, (model figures, per-finding figures) as PNG bytes.
        comparison_figures: One ROC figure per comparison, in ``report["comparisons"]`` order.
        failures: Per model id and finding, the failure table (see
            :func:`medai.report.examples.failure_table`).
        attributes: The subgroup attributes the labels have (columns of the failure table).
        images: ``False`` when patient images were left out (``--no-images``).

    Returns:
        The HTML text.
    """
    models = [
        _model_view(model_id, section, figures[model_id], failures.get(model_id, {}))
        for model_id, section in report["models"].items()
    ]
    return _template().render(
        report=report,
        models=models,
        comparison_figures=[
            {"uri": _data_uri(png), "caption": "ROC curves on the images both models scored"}
            for png in comparison_figures
        ],
        flags=_flags(report),
        attributes=list(attributes),
        images=images,
        intended_use=INTENDED_USE,
        ece_bins=ECE_BINS,
        threshold_keys=metrics.THRESHOLD_KEYS,
    )
