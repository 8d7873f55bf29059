"""The report driver: :func:`run_report` reads, evaluates, draws and writes the report."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from medai.pseudonyms import load_id_key
from medai.report.accounting import collect_models
from medai.report.config import SUBGROUP_BOOTSTRAP, ReportConfig
from medai.report.deidentify import deidentify_inputs
from medai.report.evaluation import comparisons, model_section
from medai.report.examples import (
    choose_examples,
    example_sources,
    failure_table,
    read_images,
    thumbnails_of,
)
from medai.report.figures import (
    FindingJob,
    Titles,
    comparison_plot,
    draw_finding,
    model_plots,
    slug,
)
from medai.report.inputs import prepare, resolved_config
from medai.report.render import fmt, render_html, undefined_auc
from medai.report.saliency import boxed_sources, localization, overlays
from medai.report.subgroups import attributes_of, with_header_attributes
from medai.report.workers import finding_pool, pool_map
from medai.saliency import METHOD_NAMES, Explainer, load_explainer

__all__ = ["run_report"]

log = logging.getLogger("medai.report")


def json_safe(value):
    """Convert to strict JSON types: NumPy scalars to Python, NaN and infinities to null."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _write_json(path: Path, payload) -> None:
    path.write_text(
        json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )


def _write_png(folder: Path, name: str, png: bytes) -> str:
    (folder / name).write_bytes(png)
    return f"plots/{name}"


def run_report(config: ReportConfig) -> dict:
    """Evaluate the predictions and write ``metrics.json``, ``config.json``, plots and HTML.

    Args:
        config: The report options.

    Returns:
        The dict written to ``OUT/metrics.json``: run details, ``models`` (one section per
        model id, see :func:`medai.report.evaluation.model_section`, with its ``subgroups``),
        ``comparisons`` (one per pair of models and shared finding, with the bootstrap CI of
        the AUC difference and DeLong's p-value) and ``reasons``.

    Raises:
        ReportError: On invalid options or unusable inputs, before anything is written.
    """
    started = time.perf_counter()
    key = load_id_key(config.id_key, "for --deidentify") if config.deidentify else None
    inputs = prepare(config)
    if key is not None:  # before any evaluation: the report is built from pseudonyms only
        inputs = deidentify_inputs(inputs, key)
    out = Path(config.out)
    resolved = resolved_config(config, inputs)
    log.info("report config: %s", json.dumps(resolved, sort_keys=True))
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", resolved)

    models = collect_models(config, inputs)
    attributes = attributes_of(with_header_attributes(inputs.labels, inputs.predictions))
    report = _report_header(config, inputs, models, attributes, resolved)
    names = [attribute.name for attribute in attributes]
    failures: dict[str, dict[str, dict | None]] = {}
    figures: dict[str, tuple[dict[str, bytes], dict[str, dict[str, bytes]]]] = {}
    with finding_pool(config.processes, sum(len(m.findings) for m in models)) as pool:
        sections = {m.model_id: model_section(m, config, attributes, pool) for m in models}
        _log_summary(sections)
        chosen = choose_examples(models, sections)
        explainer, report["saliency"] = _explainer(config, inputs)
        decoded, report["localization"] = _example_images(config, inputs, models, chosen, explainer)
        drawing = _Drawing(
            chosen, explainer, decoded, inputs.labels, names, config.images, plots_dir, pool
        )
        for index, model in enumerate(models):
            section = sections[model.model_id]
            failures[model.model_id], figures[model.model_id] = _draw_model(
                drawing, index, model, section
            )
            report["models"][model.model_id] = section
    comparison_figures = _draw_comparisons(models, config, plots_dir, report["comparisons"])

    report = json_safe(report)
    _write_json(out / "metrics.json", report)
    safe_failures = json_safe(failures)
    page = render_html(report, figures, comparison_figures, safe_failures, names, config.images)
    (out / "report.html").write_text(page, encoding="utf-8")
    log.info("report written to %s in %.1f s", out, time.perf_counter() - started)
    return report


def _report_header(config: ReportConfig, inputs, models, attributes, resolved: dict) -> dict:
    """``metrics.json`` before its sections: what was evaluated, how, and what was skipped."""
    # In the models' output order (the first model's first).
    reported = list(dict.fromkeys(f.name for m in models for f in m.findings))
    reported = reported or list(inputs.findings)
    report: dict = {
        "finding": ",".join(reported),
        "findings": reported,
        "split": inputs.split.name,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_prediction_rows": int(len(inputs.predictions)),
        "subgroup_attributes": [attribute.name for attribute in attributes],
        "subgroup_bootstrap": min(config.bootstrap, SUBGROUP_BOOTSTRAP),
        "images": config.images,
        "config": resolved,
        "models": {},
        "comparisons": [],
        "skipped_models": inputs.skipped_models,
        "reasons": [],
    }
    if not models:
        report["reasons"].append("the prediction files hold no rows")
    for model_id, finding in inputs.skipped_models.items():
        report["reasons"].append(f"model {model_id} skipped: it scores {finding!r}")
    return report


@dataclass(frozen=True)
class _Drawing:
    """What drawing each model's figures shares: the chosen examples and their images."""

    chosen: dict
    explainer: Explainer | None
    decoded: dict
    labels: pd.DataFrame
    names: list[str]
    images: bool
    plots_dir: Path
    pool: Executor | None


def _example_images(config: ReportConfig, inputs, models, chosen, explainer) -> tuple[dict, list]:
    """The decoded example and boxed images, and the pointing game's entries (maybe none)."""
    shown = example_sources(chosen) if config.images else []
    # The one model whose boxed images the pointing game plays: the --model network's.
    explained = next(
        (m for m in models if explainer is not None and m.model_id == explainer.model_id), None
    )
    located = explained if explained is not None and inputs.boxes is not None else None
    boxed = boxed_sources(located, inputs.boxes) if located is not None else []
    decoded = read_images(
        shown + boxed, thumbnails=shown, model_size=explainer.image_size if explainer else None
    )
    if located is None:
        return decoded, []
    entries = localization(explainer, located, inputs.boxes, decoded)
    _log_localization(entries)
    return decoded, entries


def _draw_model(drawing: _Drawing, index: int, model, section: dict) -> tuple[dict, tuple]:
    """Draw one model's figures (its findings' in the pool) and write them under ``plots/``.

    Fills the section's ``plots``, ``examples`` and ``failures`` entries.

    Returns:
        The model's failure tables by finding, and its figures: ``(model-wide PNGs by kind,
        per-finding PNGs by finding and kind)``; a single-finding model has only the first.
    """
    prefix = slug(index, model.model_id)
    model_figures, per_finding, failures = model_plots(model, section), {}, {}
    titles, jobs = Titles(model.model_id, model.single), []
    for finding in model.findings:
        entry = section["findings"][finding.name]
        table = failure_table(finding, entry, drawing.labels, drawing.names)
        entry["failures"] = failures[finding.name] = table
        groups = drawing.chosen[model.model_id, finding.name]
        thumbnails, note = _thumbnails(
            drawing.explainer, model, finding.name, groups, drawing.decoded
        )
        jobs.append(
            FindingJob(titles, finding.numeric(), entry, groups, thumbnails, drawing.images, note)
        )
    drawings = pool_map(drawing.pool, draw_finding, jobs)
    for finding, (drawn, examples) in zip(model.findings, drawings, strict=True):
        entry = section["findings"][finding.name]
        entry["examples"] = examples
        if model.single:
            section["examples"] = examples
            section["failures"] = entry["failures"]
            model_figures = {**drawn, **model_figures}
            continue
        name = re.sub(r"[^A-Za-z0-9_]", "", finding.name) or "finding"
        entry["plots"] = {
            kind: _write_png(drawing.plots_dir, f"{prefix}_{name}_{kind}.png", png)
            for kind, png in drawn.items()
        }
        per_finding[finding.name] = drawn
    section["plots"] = {
        kind: _write_png(drawing.plots_dir, f"{prefix}_{kind}.png", png)
        for kind, png in model_figures.items()
    }
    if model.single:  # its one finding's figures are the model's, less the training curves
        (only,) = model.findings
        section["findings"][only.name]["plots"] = {
            kind: path for kind, path in section["plots"].items() if kind != "training"
        }
    return failures, (model_figures, per_finding)


def _draw_comparisons(models, config: ReportConfig, plots_dir: Path, sections: list) -> list:
    """Append each pair of models' comparison to ``sections``, with its plot; the PNGs."""
    pngs = []
    for first, second, section, shared in comparisons(models, config):
        png = comparison_plot(section, shared)
        suffix = "" if first.single and second.single else f"_{section['finding']}"
        name = (
            f"compare_{slug(models.index(first), first.model_id)}"
            f"_{slug(models.index(second), second.model_id)}{suffix}.png"
        )
        section["plot"] = _write_png(plots_dir, name, png)
        sections.append(section)
        pngs.append(png)
    return pngs


def _explainer(config: ReportConfig, inputs) -> tuple[Explainer | None, dict]:
    """The ``--model`` network when heatmaps or localisation need it, and what was skipped."""
    saliency = {"model_id": None, "block": None, "heatmaps": False, "localization": False}
    saliency["method"] = None
    skipped = []
    if config.model is None:
        skipped.append("heatmaps and localisation skipped: no --model MODEL_DIR given")
    elif not config.images:
        skipped.append("heatmaps left out (--no-images)")
    if config.model is not None and inputs.boxes is None:
        skipped.append("localisation skipped: no --boxes given")
    saliency["skipped"] = skipped
    if config.model is None or (not config.images and inputs.boxes is None):
        return None, saliency
    explainer = load_explainer(config.model, config.saliency)
    saliency |= {"model_id": explainer.model_id, "block": explainer.block}
    saliency["method"] = explainer.method
    saliency |= {"heatmaps": config.images, "localization": inputs.boxes is not None}
    return explainer, saliency


def _thumbnails(explainer, model, finding: str, groups, decoded) -> tuple[dict, str]:
    """The thumbnails of the sources one finding's examples show (all a worker needs of
    them), with the finding's heatmaps overlaid when there is a model."""
    if groups is None:
        return {}, ""
    sources = [s for frame in groups.values() for s in frame["source"].tolist()]
    wanted = set(sources)
    thumbnails = thumbnails_of({s: image for s, image in decoded.items() if s in wanted})
    if explainer is None or model.model_id != explainer.model_id:
        return thumbnails, ""
    shown = [s for s in sources if isinstance(s, str)]
    for source, pixels in overlays(explainer, finding, shown, decoded).items():
        thumbnails[source] = (pixels, "")
    name = METHOD_NAMES[explainer.method]
    where = "" if explainer.method == "occlusion" else f" ({explainer.block})"
    return thumbnails, f"\n{name} heatmaps of {finding}{where}"


def _log_localization(entries) -> None:
    for entry in entries:
        log.info(
            "pointing game %s: %d/%d hits (%s), block %s",
            entry["finding"],
            entry["hits"],
            entry["n"],
            fmt(entry["pointing_hit_rate"]),
            entry["block"],
        )


def _log_summary(sections: Mapping[str, dict]) -> None:
    for model_id, section in sections.items():
        for row in section["summary"]:
            # An undefined AUC (one class only in the split) leaves the report without its
            # main result: said as a warning, not beside the routine lines.
            log.log(
                logging.INFO if row["auc"] is not None else logging.WARNING,
                "model %s %s: n=%d (%d positive), AUC %s%s",
                model_id,
                row["finding"],
                row["n"],
                row["n_positive"],
                fmt(row["auc"]),
                "" if row["auc"] is not None else f": {undefined_auc(section, row['finding'])}",
            )
