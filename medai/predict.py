"""Single-image prediction with the same preprocessing, engine and decision rule as the scorer.

Images are files, URIs, archive members or DICOMweb sources (``dicomweb+https://HOST/dicom-web``
with QIDO filters, or narrowed to ``/studies/S[/series/R[/instances/I]]``): a source's logins
are checked and its instances listed before the model loads, then each is retrieved (WADO-RS)
and scored; its result's ``image`` is its WADO-RS URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from medai.card import card_findings, card_thresholds, is_positive
from medai.configs import CheckedConfig
from medai.datasets import read_source
from medai.dicom_codecs import warn_missing_codecs
from medai.dicomweb import DicomwebError, is_dicomweb, parse_source
from medai.errors import MedaiError
from medai.images import ImageError, decode_image
from medai.pacs_data import instance_urls
from medai.paths import folder_problem
from medai.saliency import METHODS

__all__ = ["PredictConfig", "PredictError", "predict_image", "predict_images", "run_predict"]


class PredictError(MedaiError, ValueError):
    """Unusable prediction options; the message names the problem."""


@lru_cache(maxsize=4)
def _load(model_dir: str, engine: str, precision: str, threads: int | None):
    from medai.artifact import read_card
    from medai.engines import load_engine
    from medai.runtime import quiet_tensorflow

    quiet_tensorflow()
    return read_card(model_dir), load_engine(model_dir, engine, precision, threads)


@dataclass(frozen=True)
class PredictConfig(CheckedConfig):
    """The options of ``medai predict`` (see :func:`predict_images`)."""

    image: tuple[str, ...]
    model: str
    engine: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    heatmap: str | None = None
    saliency: str | None = None
    json: bool = False
    allow_insecure_http: bool = False  # DICOMweb; credentials only from the environment
    ca_bundle: str | None = None

    error: ClassVar[type[MedaiError]] = PredictError

    def problems(self) -> list[str]:
        """Every option that cannot work, before the model is loaded."""
        problems = []
        if self.threads is not None and self.threads < 1:
            problems.append("--threads must be at least 1")
        if self.heatmap is not None and (problem := folder_problem("--heatmap", self.heatmap)):
            problems.append(problem)
        if self.saliency is not None and self.saliency not in METHODS:
            problems.append(
                f"--saliency must be one of {', '.join(METHODS)}, not {self.saliency!r}"
            )
        for text in filter(is_dicomweb, self.image):
            try:
                parse_source(text, self.allow_insecure_http)
            except DicomwebError as exc:
                problems.append(str(exc))
        return problems


def run_predict(config: PredictConfig) -> list[dict]:
    """Check ``config`` and score its images (:func:`predict_images`)."""
    config.check()
    return predict_images(
        list(config.image),
        config.model,
        engine=config.engine,
        precision=config.precision,
        threads=config.threads,
        heatmap_dir=config.heatmap,
        saliency=config.saliency,
        web=(config.allow_insecure_http, config.ca_bundle),
    )


def predict_images(
    paths: list[str],
    model_dir: str | Path,
    engine: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    heatmap_dir: str | Path | None = None,
    saliency: str | None = None,
    web: tuple[bool, str | None] = (False, None),
) -> list[dict]:
    """Score images one by one, in process (no Ray): for a handful of files.

    Each image is decoded and run through the network once, for every finding of the model.
    With ``heatmap_dir``, each image's heatmap (``saliency``) of every finding is written there
    as ``<image stem>_<finding>.png``: the decoded model input with the heatmap overlaid.

    Args:
        paths: Image paths, URIs, ``ARCHIVE::MEMBER`` sources, DICOMweb sources
            (``dicomweb+https://...``, filtered or narrowed) or WADO-RS instance URLs.
        model_dir: A model directory written by ``medai train``.
        engine: ``auto``, ``openvino`` or ``tensorflow`` (see :func:`medai.engines.load_engine`).
        precision: ``fp32``, ``bf16`` or ``int8``.
        threads: Inference threads (``None``: the engine's default).
        heatmap_dir: Folder for heatmap PNGs (created); ``None`` writes none.
        saliency: Heatmap method (:data:`medai.saliency.METHODS`); ``None``: the default.
        web: ``(allow_insecure_http, ca_bundle)`` for DICOMweb sources.

    Returns:
        One dict per image and finding (image-major, findings in the model's order):
        ``image``, ``finding``, ``score`` (None on error), ``predicted``
        (:func:`medai.card.is_positive` at that finding's threshold, the rule of
        Parquet's ``predicted``), ``threshold``, ``error`` (None, or the stable one-line
        reason), ``engine`` and ``precision`` (what ran), ``heatmap`` (the PNG's path, or
        ``None``).

    Raises:
        EngineError: If the engine or precision cannot run this model directory.
        PredictError: If ``heatmap_dir`` is a file.
        SaliencyError: If ``saliency`` is not a known method.
        DicomwebError: An unusable DICOMweb source or login, before the model loads.
    """
    if saliency is not None:
        from medai.saliency import check_method

        check_method(saliency)  # before the model loads
    warn_missing_codecs()
    paths = instance_urls(paths, *web)  # logins checked, instances listed: before the model
    card, runner = _load(str(Path(model_dir).resolve()), engine, precision, threads)
    explainer = _explainer(model_dir, heatmap_dir, saliency)
    # read_source's options: one DICOMweb client per server for the whole call.
    reader = {"allow_insecure_http": web[0], "ca_bundle": web[1], "clients": {}}
    return [
        row
        for p in paths
        for row in _predict_one(str(p), card, runner, explainer, heatmap_dir, reader)
    ]


def _explainer(model_dir, heatmap_dir, saliency: str | None):
    """The heatmap maker for ``--heatmap`` (its folder created), or ``None`` without it."""
    if heatmap_dir is None:
        return None
    if problem := folder_problem("--heatmap", heatmap_dir):
        raise PredictError(problem)
    from medai.saliency import DEFAULT_METHOD, load_explainer

    explainer = load_explainer(model_dir, saliency or DEFAULT_METHOD)
    Path(heatmap_dir).mkdir(parents=True, exist_ok=True)
    return explainer


def _predict_one(path: str, card: dict, runner, explainer, heatmap_dir, reader: dict) -> list[dict]:
    """One image's rows, one per finding: its score and decision, or its error."""
    findings, thresholds = card_findings(card), card_thresholds(card)
    heatmaps = dict.fromkeys(findings)
    try:
        image = decode_image(read_source(path, **reader), int(card["image_size"]))
    except ImageError as exc:
        scores, error = [None] * len(findings), exc.text  # the text Parquet stores
    else:
        # float32 like the scorer's output column, so both give the same numbers.
        row = np.asarray(runner.predict(image[None]), np.float32).reshape(-1)
        scores, error = [float(s) for s in row], None
        if explainer is not None:
            heatmaps = _write_heatmaps(explainer, image, path, Path(heatmap_dir))
    return [
        {
            "image": path,
            "finding": finding,
            "score": score,
            "predicted": None if score is None else bool(is_positive(score, threshold)),
            "threshold": threshold,
            "error": error,
            "engine": runner.name,
            "precision": runner.precision,
            "heatmap": heatmaps[finding],
        }
        for finding, threshold, score in zip(findings, thresholds, scores, strict=True)
    ]


def _write_heatmaps(explainer, image: np.ndarray, source: str, out: Path) -> dict[str, str]:
    """Write one overlay PNG per finding of ``explainer`` for a decoded image."""
    from PIL import Image

    from medai.dicomweb import parse_instance_url
    from medai.images import image_id_of
    from medai.saliency import overlay

    # A WADO-RS URL ends in the SOP Instance UID, whose last dotted part is no suffix.
    name = image_id_of(source)
    stem = name if parse_instance_url(source) else Path(name).stem
    written = {}
    for finding in explainer.findings:
        heat = explainer.heatmaps(image[None], finding)[0]
        path = out / f"{stem}_{re.sub(r'[^A-Za-z0-9_-]', '_', finding)}.png"
        Image.fromarray(overlay(image, heat)).save(path)
        written[finding] = str(path)
    return written


def predict_image(
    path: str | Path,
    model_dir: str | Path,
    finding: str | None = None,
    engine: str = "auto",
    precision: str = "fp32",
) -> dict:
    """Score one image for one finding (default: the model's first).

    Returns:
        ``{"image", "finding", "score", "predicted", "threshold", "error", "engine",
        "precision"}``, as :func:`predict_images`.

    Raises:
        ValueError: If the model has no such finding.

    Example:
        >>> import medai
        >>> medai.predict_image("00000013_005.png", "models/mass")  # doctest: +SKIP
        {'image': '00000013_005.png', 'finding': 'Mass', 'score': 0.91, 'predicted': True, ...}
    """
    results = predict_images([str(path)], model_dir, engine, precision)
    wanted = finding or results[0]["finding"]
    for result in results:
        if result["finding"] == wanted:
            return result
    raise ValueError(f"the model has no finding {wanted!r}: {[r['finding'] for r in results]}")
