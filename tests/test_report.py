"""The report job end to end: real Parquet in, metrics.json / plots / report.html out."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from report_kit import (
    MODEL_A,
    MODEL_B,
    PNG_MAGIC,
    SCHEMA,
    T0,
    config,
    html_images,
    image_ids,
    pred_table,
    simple_setup,
    strict_json,
    synthetic,
    write_card,
    write_labels,
    write_preds,
)
from sklearn import metrics as skm

from medai.report import (
    INTENDED_USE,
    SPLITS,
    ReportConfig,
    ReportError,
    add_report_arguments,
    build_report_parser,
    config_from_args,
    run_report,
)

ROOT = Path(__file__).resolve().parents[1]


def _ece_by_hand(y, scores, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width bins, written out bin by bin."""
    y, scores = np.asarray(y, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    which = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], scores)
    total = 0.0
    for b in range(n_bins):
        members = which == b
        if members.any():
            gap = abs(scores[members].mean() - y[members].mean())
            total += members.sum() * gap
    return total / len(y)


# ----------------------------------------------------------------------------- a shared report


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    """Two models (partly overlapping images), a model card with history, readable sources."""
    root = tmp_path_factory.mktemp("rich")
    n = 240
    ids = image_ids(n)
    y, _ = synthetic(n, seed=1)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for image_id in ids:
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(images / image_id)
    archive = root / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for image_id in ids[::2]:
            tar.add(images / image_id, arcname=f"images/{image_id}")
    sources = [
        f"{archive}::images/{image_id}" if k % 2 == 0 else str(images / image_id)
        for k, image_id in enumerate(ids)
    ]
    scores_a = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.15, n), 0, 1).astype(np.float32)
    scores_b = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.3, n), 0, 1).astype(np.float32)
    preds = root / "pred"
    write_preds(
        preds,
        "a.parquet",
        pred_table(ids[:200], scores_a[:200], MODEL_A, sources=sources[:200], threshold=0.5),
    )
    write_preds(
        preds,
        "b.parquet",
        pred_table(ids[60:], scores_b[60:], MODEL_B, sources=sources[60:], threshold=0.45),
    )
    write_card(
        preds,
        MODEL_A,
        finding="Mass",
        threshold=0.5,
        val_auc=0.81,
        head="dense",
        image_size=299,
        weights="imagenet",
        intended_use="Research <em>only</em>",
        counts={
            "train": {"images": 1234, "patients": 321, "positives": 56},
            "val": {"images": 222, "patients": 60, "positives": 9},
        },
        history=[
            {
                "epoch": e,
                "loss": 1 / e,
                "val_loss": 1.2 / e,
                "accuracy": 0.6 + e / 50,
                "val_accuracy": 0.55 + e / 60,
                "auc": 0.7,
                "val_auc": 0.72,
            }
            for e in range(1, 6)
        ],
    )
    labels = write_labels(root / "labels.csv", ids, y)
    out = root / "out"
    report = run_report(config(preds, labels, out))
    return {"report": report, "out": out, "y": y, "ids": ids, "a": scores_a, "b": scores_b}


def test_metrics_match_sklearn(rich) -> None:
    section = rich["report"]["models"][MODEL_A]
    y, scores = rich["y"][:200], rich["a"][:200]
    assert section["n"] == 200
    assert section["n_positive"] == int(y.sum())
    assert section["n_negative"] == int((1 - y).sum())
    assert section["auc"] == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
    assert section["average_precision"] == pytest.approx(skm.average_precision_score(y, scores))
    assert section["brier"] == pytest.approx(skm.brier_score_loss(y, scores), abs=1e-6)
    low, high = section["auc_ci95"]
    assert low < section["auc"] < high
    for key in ("model_threshold", "youden"):
        point = section["operating_points"][key]
        called = (scores >= point["threshold"]).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(y, called).ravel()
        assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (tp, fp, tn, fn)
        assert point["f1"] == pytest.approx(skm.f1_score(y, called))
        assert point["sensitivity"] == pytest.approx(skm.recall_score(y, called))
        assert point["specificity"] == pytest.approx(skm.recall_score(y, called, pos_label=0))
        assert point["ppv"] == pytest.approx(skm.precision_score(y, called))
        assert point["accuracy"] == pytest.approx(skm.accuracy_score(y, called))
    assert section["operating_points"]["model_threshold"]["threshold"] == 0.5
    assert section["operating_points"]["model_threshold"]["source"] == "model card"
    assert section["ece"] == pytest.approx(_ece_by_hand(y, scores), abs=1e-12)
    fpr, tpr, thresholds = skm.roc_curve(y, scores, drop_intermediate=False)
    assert section["operating_points"]["youden"]["threshold"] == pytest.approx(
        thresholds[np.argmax(tpr - fpr)]
    )
    assert section["reasons"] == []


def test_outputs_are_written_and_strict_json(rich) -> None:
    out, report = rich["out"], rich["report"]
    assert strict_json(out / "metrics.json") == report
    written = strict_json(out / "config.json")
    assert written["split"] == "all" and written["bootstrap"] == 1000 and written["seed"] == 0
    assert written["prediction_files"] == ["a.parquet", "b.parquet"]
    for section in report["models"].values():
        assert set(section["plots"]) >= {"roc", "histogram", "confusion", "calibration", "examples"}
        for relative in section["plots"].values():
            assert (out / relative).read_bytes().startswith(PNG_MAGIC)
        # A single-finding model's one finding shows the model's figures, less its training.
        (entry,) = section["findings"].values()
        assert entry["plots"] == {k: v for k, v in section["plots"].items() if k != "training"}
    assert "training" in report["models"][MODEL_A]["plots"]  # the card has a history
    assert "training" not in report["models"][MODEL_B]["plots"]  # no card for B


def test_multi_model_sections_and_comparison_on_shared_images(rich) -> None:
    report = rich["report"]
    assert list(report["models"]) == [MODEL_A, MODEL_B]
    assert report["models"][MODEL_B]["n"] == 180
    point = report["models"][MODEL_B]["operating_points"]["model_threshold"]
    assert point["threshold"] == float(np.float32(0.45))  # as stored (float32), no card
    [comparison] = report["comparisons"]
    shared = slice(60, 200)
    y = rich["y"][shared]
    assert comparison["model_a"] == MODEL_A and comparison["model_b"] == MODEL_B
    assert comparison["n"] == 140
    assert comparison["n_positive"] == int(y.sum())
    auc_a = skm.roc_auc_score(y, rich["a"][shared])
    auc_b = skm.roc_auc_score(y, rich["b"][shared])
    assert comparison["auc_a"] == pytest.approx(auc_a)
    assert comparison["auc_b"] == pytest.approx(auc_b)
    assert comparison["auc_difference"] == pytest.approx(auc_a - auc_b)
    low, high = comparison["auc_difference_ci95"]
    assert low < comparison["auc_difference"] < high
    assert (rich["out"] / comparison["plot"]).read_bytes().startswith(PNG_MAGIC)


def test_examples_are_read_from_files_and_tarballs(rich) -> None:
    examples = rich["report"]["models"][MODEL_A]["examples"]
    assert examples["unreadable"] == 0
    shown = examples["images"]
    assert set(shown) == {"true_positives", "false_positives", "missed_positives"}
    assert all(1 <= len(group) <= 4 for group in shown.values())
    sources = {i: k for k, i in enumerate(rich["ids"])}
    # Both source kinds (tar member: even index, file: odd index) were among the shown images.
    assert {sources[i] % 2 for group in shown.values() for i in group} == {0, 1}


def test_html_is_self_contained_and_escaped(rich) -> None:
    text = (rich["out"] / "report.html").read_text(encoding="utf-8")
    parsed = html_images(text)
    plots = [p for s in rich["report"]["models"].values() for p in s["plots"].values()]
    assert len(parsed.images) == len(plots) + len(rich["report"]["comparisons"])
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert parsed.links == []  # no stylesheets, scripts or links to fetch
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    assert INTENDED_USE in text
    assert "ECE (10 equal-width bins)" in text and "Brier score" in text
    assert "Research &lt;em&gt;only&lt;/em&gt;" in text  # card text is escaped
    assert "1,234" in text and "321" in text  # training data counts from the card
    assert MODEL_A in text and MODEL_B in text


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


_IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var fetched = performance.getEntriesByType("resource").length;
  var out = document.createElement("pre");
  out.id = "medai-check";
  out.textContent = "images=" + loaded.length + "/" + images.length + " fetched=" + fetched;
  document.body.appendChild(out);
});
</script>"""


def _browser_check(chromium: str, page: Path, profile: Path) -> tuple[int, int, int]:
    """Open ``page`` headless and return (images loaded, images, network resources fetched)."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'id="medai-check">images=(\d+)/(\d+) fetched=(\d+)<', done.stdout)
    assert found, f"no check output from chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    loaded, total, fetched = map(int, found.groups())
    return loaded, total, fetched


def test_report_renders_in_headless_chromium(rich, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI is set: the browser test must run")
        pytest.skip("chromium not installed (apt-get install chromium); set CI to make this fail")
    text = (rich["out"] / "report.html").read_text(encoding="utf-8")
    expected = len(html_images(text).images)
    page = tmp_path / "checked.html"
    page.write_text(text.replace("</body>", _IMAGE_CHECK + "</body>"), encoding="utf-8")
    assert _browser_check(chromium, page, tmp_path / "profile") == (expected, expected, 0)
    # The check itself can fail: a broken image is not counted as loaded.
    broken = tmp_path / "broken.html"
    broken.write_text(
        page.read_text().replace(
            "</body>", '<img src="data:image/png;base64,AAAA" alt="broken"></body>'
        )
    )
    loaded, total, _ = _browser_check(chromium, broken, tmp_path / "profile2")
    assert (loaded, total) == (expected, expected + 1)


# ----------------------------------------------------------------------------- bookkeeping


def test_errors_unlabeled_and_duplicates_are_counted(tmp_path: Path) -> None:
    ids = image_ids(30)
    y, scores = synthetic(30, seed=2, prevalence=0.4)
    good = pred_table(ids[:20], scores[:20])
    errors = pred_table(
        ids[20:24], [None, None, None, None], errors=["not a decodable image"] * 3 + [None]
    )
    unlabeled = pred_table(
        ["x1.png", "x2.png", "x3.png", "x4.png", None], [0.5, 0.6, 0.7, 0.8, 0.9]
    )
    # ids[0] scored again later with a different score: the later row must win.
    rescored = pred_table([ids[0]], [1.0 - float(scores[0])], scored_at=[T0 + timedelta(days=1)])
    preds = tmp_path / "pred"
    for name, table in (
        ("p0.parquet", good),
        ("p1.parquet", errors),
        ("p2.parquet", unlabeled),
        ("p3.parquet", rescored),
    ):
        write_preds(preds, name, table)
    labels = write_labels(tmp_path / "labels.csv", ids, y)
    report = run_report(config(preds, labels, tmp_path / "out", bootstrap=0))
    section = report["models"][MODEL_A]
    assert section["n_rows"] == 30
    assert section["n_duplicates"] == 1
    assert section["n_errors"] == 4
    assert section["n_unlabeled"] == 5  # 4 ids without a label, 1 row without an id
    assert section["n"] == 20
    assert section["n_rows"] == sum(
        section[key] for key in ("n_duplicates", "n_outside_split", "n_errors", "n_unlabeled", "n")
    )
    assert section["error_messages"] == {"not a decodable image": 3, "missing score": 1}
    expected = scores[:20].astype(np.float64)
    expected[0] = np.float32(1.0 - float(scores[0]))
    assert section["auc"] == pytest.approx(skm.roc_auc_score(y[:20], expected))
    assert section["auc_ci95"] is None
    assert "auc_ci95 undefined: bootstrap disabled (--bootstrap 0)" in section["reasons"]


def _nih_setup(tmp_path: Path):
    """40 NIH images of 20 patients; the first 8 patients' images are on the test list."""
    ids = [f"{p:08d}_{k:03d}.png" for p in range(1, 21) for k in range(2)]
    findings = [
        "Mass" if i % 5 == 0 else "Effusion" if i % 5 == 1 else "No Finding" for i in range(40)
    ]
    folder = tmp_path / "nih"
    folder.mkdir()
    pd.DataFrame(
        {
            "Image Index": ids,
            "Finding Labels": findings,
            "Follow-up #": 0,
            "Patient ID": [i[:8] for i in ids],
        }
    ).to_csv(folder / "Data_Entry_2017.csv", index=False)
    (folder / "test_list.txt").write_text("\n".join(ids[:16]) + "\n")
    (folder / "train_val_list.txt").write_text("\n".join(ids[16:]) + "\n")
    rng = np.random.default_rng(3)
    scores = np.clip(rng.normal(0.5, 0.2, 40), 0, 1)
    preds = write_preds(tmp_path / "pred", "p.parquet", pred_table(ids, scores))
    return preds, folder / "Data_Entry_2017.csv", ids, findings, scores


def test_split_filtering_with_nih_lists(tmp_path: Path) -> None:
    preds, labels, ids, findings, scores = _nih_setup(tmp_path)
    y = np.array([f == "Mass" for f in findings], dtype=int)

    report = run_report(config(preds, labels, tmp_path / "default", split=None, bootstrap=0))
    section = report["models"][MODEL_A]
    assert report["split"] == "test"
    assert strict_json(tmp_path / "default" / "config.json")["split"] == "test"
    assert (section["n"], section["n_outside_split"]) == (16, 24)
    assert section["auc"] == pytest.approx(skm.roc_auc_score(y[:16], scores[:16]))

    section = run_report(config(preds, labels, tmp_path / "tv", split="train_val", bootstrap=0))[
        "models"
    ][MODEL_A]
    assert (section["n"], section["n_outside_split"]) == (24, 16)
    assert section["auc"] == pytest.approx(skm.roc_auc_score(y[16:], scores[16:]))

    section = run_report(config(preds, labels, tmp_path / "all", split="all", bootstrap=0))[
        "models"
    ][MODEL_A]
    assert (section["n"], section["n_outside_split"]) == (40, 0)

    # no-finding negatives: images with only other findings have no label here.
    section = run_report(
        config(preds, labels, tmp_path / "nf", negatives="no-finding", split=None, bootstrap=0)
    )["models"][MODEL_A]
    other = sum(f == "Effusion" for f in findings[:16])
    assert (section["n"], section["n_unlabeled"]) == (16 - other, other)


def test_threshold_sources_and_override(tmp_path: Path) -> None:
    preds, labels, y, scores = simple_setup(tmp_path, threshold=0.3)
    section = run_report(config(preds, labels, tmp_path / "o1", bootstrap=0))["models"][MODEL_A]
    assert section["operating_points"]["model_threshold"]["source"] == "predictions"
    # The float32 value itself, never a rounded decimal: 0.3 and float32(0.3) split differently.
    assert section["operating_points"]["model_threshold"]["threshold"] == float(np.float32(0.3))

    section = run_report(config(preds, labels, tmp_path / "o2", bootstrap=0, threshold=0.7))[
        "models"
    ][MODEL_A]
    point = section["operating_points"]["model_threshold"]
    assert (point["source"], point["threshold"]) == ("--threshold", 0.7)
    tn, fp, fn, tp = skm.confusion_matrix(y, scores >= 0.7).ravel()
    assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (tp, fp, tn, fn)


def test_score_exactly_at_the_card_threshold_is_positive(tmp_path: Path) -> None:
    """The report calls positives as Parquet's ``predicted`` does: float32 ``>=``, exact threshold.

    float32(0.7) is just below 0.7, so a report comparing against the decimal 0.7 (or in
    float64) would call a score of exactly the stored threshold negative.
    """
    threshold = 0.7
    at = np.float32(threshold)
    assert float(at) < threshold
    ids = image_ids(6)
    scores = np.array([at, np.nextafter(at, np.float32(0)), 0.9, 0.2, at, 0.1], dtype=np.float32)
    y = [1, 0, 1, 0, 0, 1]
    table = pred_table(ids, scores, threshold=threshold)
    assert table.column("threshold").to_pylist() == [float(at)] * len(ids)
    preds = write_preds(tmp_path / "pred", "part-0.parquet", table)
    write_card(preds, MODEL_A, finding="Mass", threshold=threshold)
    labels = write_labels(tmp_path / "labels.csv", ids, y)
    predicted = pq.read_table(preds / "part-0.parquet").column("predicted").to_numpy()
    truth = np.array(y, dtype=bool)
    from_file = {
        "tp": int((predicted & truth).sum()),
        "fp": int((predicted & ~truth).sum()),
        "tn": int((~predicted & ~truth).sum()),
        "fn": int((~predicted & truth).sum()),
    }
    assert from_file == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}

    report = run_report(config(preds, labels, tmp_path / "card", bootstrap=0))
    point = report["models"][MODEL_A]["operating_points"]["model_threshold"]
    assert (point["source"], point["threshold"]) == ("model card", threshold)  # exact, as trained
    assert {key: point[key] for key in from_file} == from_file

    # Without a card the Parquet's float32 threshold is used as stored, with the same result.
    (preds / "_model_cards" / f"{MODEL_A}.json").unlink()
    report = run_report(config(preds, labels, tmp_path / "file", bootstrap=0))
    point = report["models"][MODEL_A]["operating_points"]["model_threshold"]
    assert (point["source"], point["threshold"]) == ("predictions", float(at))
    assert {key: point[key] for key in from_file} == from_file


def test_ece_is_written_beside_brier(tmp_path: Path) -> None:
    preds, labels, y, scores = simple_setup(tmp_path, n=300, seed=8)
    report = run_report(config(preds, labels, tmp_path / "out", bootstrap=0))
    section = report["models"][MODEL_A]
    assert section["ece"] == pytest.approx(_ece_by_hand(y, scores), abs=1e-12)
    assert 0.0 < section["ece"] < 1.0
    assert (
        strict_json(tmp_path / "out" / "metrics.json")["models"][MODEL_A]["ece"] == (section["ece"])
    )
    html_text = (tmp_path / "out" / "report.html").read_text()
    assert f'ECE (10 equal-width bins)</th><td class="num">{section["ece"]:.3f}<' in html_text


def test_threshold_from_card_or_none(tmp_path: Path) -> None:
    from medai.metrics import youden_threshold

    preds, labels, y, scores = simple_setup(tmp_path, threshold=None)
    section = run_report(config(preds, labels, tmp_path / "none", bootstrap=0))["models"][MODEL_A]
    assert section["operating_points"]["model_threshold"]["threshold"] is None
    assert any("no model threshold" in r for r in section["reasons"])
    youden = section["operating_points"]["youden"]["threshold"]
    assert youden == pytest.approx(youden_threshold(y, scores))
    assert section["examples"]["cut_off"] == section["operating_points"]["youden"]["threshold"]
    # The sources point nowhere: every shown example is reported unreadable, nothing crashes.
    shown = sum(len(group) for group in section["examples"]["images"].values())
    assert section["examples"]["unreadable"] == shown > 0

    write_card(preds, MODEL_A, threshold=0.42, history="not a list")
    section = run_report(config(preds, labels, tmp_path / "card", bootstrap=0))["models"][MODEL_A]
    point = section["operating_points"]["model_threshold"]
    assert (point["source"], point["threshold"]) == ("model card", 0.42)
    assert "training" not in section["plots"]

    (preds / "_model_cards" / f"{MODEL_A}.json").write_text("{not json")
    section = run_report(config(preds, labels, tmp_path / "bad", bootstrap=0))["models"][MODEL_A]
    assert section["model_card"] is None
    assert any("unreadable" in r for r in section["reasons"])


# ----------------------------------------------------------------------------- degenerate data


def test_one_class_and_empty_models_give_nulls_with_reasons(tmp_path: Path, caplog) -> None:
    ids = image_ids(20)
    labels = write_labels(tmp_path / "labels.csv", ids, [0] * 20)
    preds = tmp_path / "pred"
    write_preds(preds, "a.parquet", pred_table(ids, np.linspace(0, 1, 20)))
    write_preds(preds, "b.parquet", pred_table(ids, [None] * 20, MODEL_B, errors=["boom"] * 20))
    with caplog.at_level(logging.INFO, logger="medai"):
        report = run_report(config(preds, labels, tmp_path / "out"))
    # No AUC is the report's main result missing: a warning, and a flag at a glance.
    why = "only one class present (0 positive, 20 negative)"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(MODEL_A in text and f"AUC n/a: {why}" in text for text in warned), warned
    assert any(MODEL_B in text and "AUC n/a: no labelled predictions" in text for text in warned)
    page = (tmp_path / "out" / "report.html").read_text()
    glance = page[page.index('id="summary"') :].split("</section>", 1)[0]
    assert "Flags raised" in glance and "No flags raised" not in glance
    assert f"{MODEL_A[:12]}, Mass: AUC undefined: {why}" in glance
    # No positives, so none missed: the failure table says so under its heading.
    missed = r"Missed positives \(lowest scores\)</th></tr><tr><td colspan=\"\d+\">none</td>"
    assert re.search(missed, page)
    one_class, empty = report["models"][MODEL_A], report["models"][MODEL_B]

    for key in ("auc", "auc_ci95", "average_precision"):
        assert one_class[key] is None
    # All negatives: Brier is the mean squared score; half of them lie below 0.5.
    assert one_class["brier"] == pytest.approx(np.mean(np.linspace(0, 1, 20) ** 2), abs=1e-6)
    assert "auc undefined: only one class present (0 positive, 20 negative)" in one_class["reasons"]
    assert one_class["operating_points"]["youden"]["threshold"] is None
    assert one_class["operating_points"]["model_threshold"]["specificity"] == 0.5

    assert (empty["n"], empty["n_errors"]) == (0, 20)
    for key in ("auc", "auc_ci95", "average_precision", "brier"):
        assert empty[key] is None
    assert all(v is None for k, v in empty["operating_points"]["youden"].items())
    assert "auc undefined: no labelled predictions" in empty["reasons"]

    [comparison] = report["comparisons"]
    assert comparison["n"] == 0 and comparison["auc_difference"] is None
    assert comparison["reasons"] == ["AUC comparison undefined: no labelled predictions"]
    assert strict_json(tmp_path / "out" / "metrics.json") == report
    for section in (one_class, empty):
        for relative in section["plots"].values():
            assert (tmp_path / "out" / relative).read_bytes().startswith(PNG_MAGIC)
    assert "n/a" in (tmp_path / "out" / "report.html").read_text()


def test_prediction_files_without_rows(tmp_path: Path) -> None:
    preds = write_preds(tmp_path / "pred", "p.parquet", SCHEMA.empty_table())
    labels = write_labels(tmp_path / "labels.csv", image_ids(4), [0, 1, 0, 1])
    report = run_report(config(preds, labels, tmp_path / "out"))
    assert report["models"] == {} and report["comparisons"] == []
    assert report["reasons"] == ["the prediction files hold no rows"]
    assert INTENDED_USE in (tmp_path / "out" / "report.html").read_text()


def test_user_strings_are_escaped_in_html(tmp_path: Path) -> None:
    evil = '$\\frac{$<img src="http://x/y.png">&'  # $..$ would be mathtext in matplotlib
    preds, labels, _, _ = simple_setup(tmp_path, n=30, model_id=evil)
    report = run_report(config(preds, labels, tmp_path / "out", bootstrap=0))
    assert list(report["models"]) == [evil]
    text = (tmp_path / "out" / "report.html").read_text()
    assert evil not in text and 'src="http' not in text
    assert "$\\frac{$&lt;img src=&#34;http://x/y.png&#34;&gt;&amp;" in text


# ----------------------------------------------------------------------------- options


def test_ci_is_deterministic_with_seed(tmp_path: Path) -> None:
    preds, labels, _, _ = simple_setup(tmp_path, n=150)
    runs = [
        run_report(config(preds, labels, tmp_path / f"o{k}", seed=seed, bootstrap=1000))
        for k, seed in enumerate((5, 5, 6))
    ]
    cis = [run["models"][MODEL_A]["auc_ci95"] for run in runs]
    assert cis[0] == cis[1]
    assert cis[0] != cis[2]


def test_model_id_prefix_selects_one_model(tmp_path: Path) -> None:
    ids = image_ids(40)
    y, scores = synthetic(40, seed=4)
    preds = tmp_path / "pred"
    write_preds(preds, "a.parquet", pred_table(ids, scores, MODEL_A))
    write_preds(preds, "b.parquet", pred_table(ids, scores, MODEL_B))
    labels = write_labels(tmp_path / "labels.csv", ids, y)
    report = run_report(config(preds, labels, tmp_path / "out", model_id="b2b2", bootstrap=0))
    assert list(report["models"]) == [MODEL_B] and report["comparisons"] == []


def test_models_for_another_finding_are_skipped(tmp_path: Path) -> None:
    ids = image_ids(40)
    y, scores = synthetic(40, seed=4)
    preds = tmp_path / "pred"
    write_preds(preds, "a.parquet", pred_table(ids, scores, MODEL_A))
    write_preds(preds, "b.parquet", pred_table(ids, scores, MODEL_B, finding="Nodule"))
    labels = write_labels(tmp_path / "labels.csv", ids, y)
    report = run_report(config(preds, labels, tmp_path / "out", bootstrap=0))
    assert list(report["models"]) == [MODEL_A]
    assert report["skipped_models"] == {MODEL_B: "Nodule"}


# ----------------------------------------------------------------------------- default split


@pytest.fixture
def model_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A private copy (hard links) of a real model directory, to add a split.csv to."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder, copy_function=os.link)
    return folder


def _unseen_setup(tmp_path: Path, model: Path):
    """60 labelled images: 25 trained on, 10 validated on, 10 test, 15 the model never listed."""
    model_id = json.loads((model / "model_card.json").read_text())["model_id"]
    ids = image_ids(60)
    y, scores = synthetic(60, seed=5, prevalence=0.4)
    split = ["train"] * 25 + ["val"] * 10 + ["test"] * 10
    pd.DataFrame(
        {"image_id": ids[:45], "patient_id": ids[:45], "split": split, "label": y[:45]}
    ).to_csv(model / "split.csv", index=False)
    preds = tmp_path / "pred"
    write_preds(preds, "a.parquet", pred_table(ids, scores, model_id))
    write_preds(preds, "b.parquet", pred_table(ids, scores[::-1], MODEL_B))
    labels = write_labels(tmp_path / "labels.csv", ids, y)
    return preds, labels, model_id, y, scores


def test_default_split_is_the_images_the_model_never_saw(tmp_path: Path, model_dir: Path) -> None:
    preds, labels, model_id, y, scores = _unseen_setup(tmp_path, model_dir)
    out = tmp_path / "out"
    report = run_report(
        ReportConfig(predictions=preds, labels=labels, out=out, model=model_dir, bootstrap=0)
    )
    assert report["split"] == "unseen"
    assert list(report["models"]) == [model_id]  # only the --model's model
    section = report["models"][model_id]
    assert (section["n"], section["n_outside_split"]) == (25, 35)
    assert section["auc"] == pytest.approx(skm.roc_auc_score(y[35:], scores[35:]))
    written = strict_json(out / "config.json")
    assert written["split"] == "unseen" and written["model"] == str(model_dir.resolve())

    # Without --model nothing says what the model saw: a clear error, before any output.
    with pytest.raises(ReportError, match=r"never saw.*--model MODEL_DIR.*--split all"):
        run_report(ReportConfig(predictions=preds, labels=labels, out=tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def test_model_dir_must_have_a_split_and_match_the_predictions(
    tmp_path: Path, model_dir: Path
) -> None:
    preds, labels, model_id, _, _ = _unseen_setup(tmp_path, model_dir)
    options = {"predictions": preds, "labels": labels, "out": tmp_path / "out", "bootstrap": 0}
    with pytest.raises(ReportError, match="--model-id 'b2b2' does not match --model"):
        run_report(ReportConfig(**options, model=model_dir, model_id="b2b2"))
    (model_dir / "split.csv").unlink()
    with pytest.raises(ReportError, match=r"split\.csv does not exist"):
        run_report(ReportConfig(**options, model=model_dir))
    # --split all needs no split.csv; the model must still be one of the predictions'.
    assert list(run_report(ReportConfig(**options, model=model_dir, split="all"))["models"]) == [
        model_id
    ]
    for path in preds.glob("a.parquet"):
        path.unlink()
    with pytest.raises(ReportError, match="not in the predictions"):
        run_report(ReportConfig(**options, model=model_dir, split="all"))


def test_split_choices_are_documented_in_help() -> None:
    text = " ".join(build_report_parser().format_help().split())
    assert SPLITS == ("unseen", "test", "train_val", "all")
    for phrase in (
        "'unseen' = the labelled images the model neither trained nor validated on",
        "MODEL_DIR/split.csv",
        "'all' = every labelled image, training images included",
        "Default: test when test_list.txt is beside the labels file, else unseen",
        "--model MODEL_DIR",
    ):
        assert phrase in text, phrase


def test_config_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    preds, labels, _, _ = simple_setup(tmp_path, n=30)
    with caplog.at_level(logging.INFO, logger="medai.report"):
        run_report(config(preds, labels, tmp_path / "out", bootstrap=0, seed=9))
    [record] = [r for r in caplog.records if r.getMessage().startswith("report config: ")]
    logged = json.loads(record.getMessage().removeprefix("report config: "))
    assert logged == strict_json(tmp_path / "out" / "config.json")
    assert logged["seed"] == 9 and logged["split"] == "all"


def test_cli_flags_build_the_config(tmp_path: Path) -> None:
    parser = build_report_parser()
    args = parser.parse_args(
        [
            "--predictions",
            "p",
            "--labels",
            "l.csv",
            "--out",
            "o",
            "--finding",
            "Nodule",
            "--negatives",
            "no-finding",
            "--split",
            "train_val",
            "--model",
            "m",
            "--model-id",
            "abc",
            "--threshold",
            "0.25",
            "--bootstrap",
            "2000",
            "--seed",
            "3",
        ]
    )
    assert config_from_args(args) == ReportConfig(
        predictions="p",
        labels="l.csv",
        out="o",
        finding="Nodule",
        negatives="no-finding",
        split="train_val",
        model="m",
        model_id="abc",
        threshold=0.25,
        bootstrap=2000,
        seed=3,
    )
    defaults = config_from_args(
        parser.parse_args(["--predictions", "p", "--labels", "l", "--out", "o"])
    )
    # No --finding: every finding the models scored (Mass for a generic image,label CSV).
    assert (defaults.finding, defaults.negatives, defaults.split) == (None, "all-others", None)
    assert defaults.model is None
    assert (defaults.threshold, defaults.bootstrap, defaults.seed) == (None, 1000, 0)

    sub = argparse.ArgumentParser(prog="medai").add_subparsers(dest="command")
    add_report_arguments(sub.add_parser("report"))
    with pytest.raises(ReportError, match="--threshold must be a number in"):
        config_from_args(
            parser.parse_args(
                ["--predictions", "p", "--labels", "l", "--out", "o", "--threshold", "1.5"]
            )
        )
    with pytest.raises(SystemExit):
        parser.parse_args(["--predictions", "p", "--labels", "l", "--out", "o", "--split", "val"])


# ----------------------------------------------------------------------------- bad inputs


def _no_parquet(tmp_path, preds, labels):
    for path in preds.glob("*.parquet"):
        path.unlink()
    write_preds(preds, ".hidden.parquet", pred_table(["a.png"], [0.5]))
    write_preds(preds, "_metadata.parquet", pred_table(["a.png"], [0.5]))
    write_preds(preds / "nested", "p.parquet", pred_table(["a.png"], [0.5]))
    return {}


def _missing_column(tmp_path, preds, labels):
    write_preds(preds, "p.parquet", pred_table(["a.png"], [0.5]).drop_columns(["model_id"]))
    return {}


def _corrupt_parquet(tmp_path, preds, labels):
    (preds / "zz.parquet").write_bytes(b"not parquet at all")
    return {}


def _bad_labels(tmp_path, preds, labels):
    labels.write_text("image,label\na.png,2\n")
    return {}


def _unknown_columns(tmp_path, preds, labels):
    labels.write_text("file,truth\na.png,1\n")
    return {}


def _out_is_file(tmp_path, preds, labels):
    (tmp_path / "out").write_text("")
    return {}


def _set(**options):
    return lambda *_: options


BAD_INPUTS = [
    ("missing predictions", lambda tmp, *_: {"predictions": tmp / "nope"}, "no such folder"),
    ("predictions is a file", lambda _, __, csv: {"predictions": csv}, "must be a folder"),
    ("no parquet files", _no_parquet, r"no \*\.parquet files"),
    ("missing column", _missing_column, r"missing prediction column\(s\) \['model_id'\]"),
    ("corrupt parquet", _corrupt_parquet, "not a readable Parquet file"),
    ("missing labels", lambda tmp, *_: {"labels": tmp / "nope.csv"}, "label file not found"),
    ("bad label value", _bad_labels, "label must be 0 or 1"),
    ("unknown label columns", _unknown_columns, "unrecognised label file"),
    ("split without lists", _set(split="test"), "no test_list.txt beside"),
    ("unseen without a model", _set(split=None), r"never saw: no --model given.*--split all"),
    ("model is not a model dir", lambda tmp, *_: {"model": tmp}, "is not a model directory"),
    ("bad split", _set(split="val"), "--split must be one of"),
    ("bad negatives", _set(negatives="some"), "--negatives must be one of"),
    ("threshold out of range", _set(threshold=1.5), "--threshold must be"),
    ("negative bootstrap", _set(bootstrap=-1), "--bootstrap must be"),
    ("float seed", _set(seed=1.5), "--seed must be"),
    ("unknown model", _set(model_id="ffff"), "matches no model"),
    ("finding mismatch", _set(finding="Nodule"), r"predictions are for \['Mass'\]"),
    ("out is a file", _out_is_file, "--out must be a folder"),
]


@pytest.mark.parametrize(
    ("change", "message"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_inputs_raise_before_any_output(tmp_path: Path, change, message: str) -> None:
    preds, labels, _, _ = simple_setup(tmp_path, n=12)
    options = {"predictions": preds, "labels": labels, "out": tmp_path / "out", "split": "all"}
    options.update(change(tmp_path, preds, labels))
    with pytest.raises(ReportError, match=message):
        run_report(ReportConfig(**options))
    out = tmp_path / "out"
    assert not out.is_dir(), "nothing may be written before the inputs are checked"


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_script_runs_small(capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location(
        "report_scale", ROOT / "benchmarks" / "report_scale.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seconds = module.main(["--rows", "3000", "--models", "2"])
    assert seconds > 0
    assert re.search(r"^report over 3000 rows: \d+\.\d s$", capsys.readouterr().out, re.M)


# ----------------------------------------------------------------------------- several findings

MULTI = ("Mass", "Nodule", "Effusion")  # the card's output order, not the NIH order
SINGLE_KEYS = {  # a single-finding model's section before findings were added, plus the two
    "model_id", "finding", "n_rows", "n_duplicates", "n_outside_split", "n_errors",
    "n_unlabeled", "n", "n_positive", "n_negative", "auc", "auc_ci95", "average_precision",
    "brier", "ece", "operating_points", "error_messages", "model_card", "reasons", "examples",
    "plots",
}  # fmt: skip
# Every section (single- or multi-finding) since: per finding, subgroups and failure analysis.
NEW_KEYS = {"findings", "summary", "subgroups", "failures", "ece_ci95"}


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """One 3-finding model over NIH-style labels: one row per (image, finding)."""
    root = tmp_path_factory.mktemp("multi")
    n = 150
    ids = image_ids(n)
    rng = np.random.default_rng(7)
    hot = rng.random((n, len(MULTI))) < np.array([0.3, 0.2, 0.4])
    hot[:6] = False  # a few No Finding images
    text = ["|".join(np.array(MULTI)[row]) or "No Finding" for row in hot]
    labels = root / "Data_Entry_2017.csv"
    pd.DataFrame(
        {"Image Index": ids, "Finding Labels": text, "Patient ID": [i[:8] for i in ids]}
    ).to_csv(labels, index=False)
    scores = np.clip(0.3 + 0.35 * hot + rng.normal(0, 0.2, hot.shape), 0, 1).astype(np.float32)
    thresholds = {"Mass": 0.5, "Nodule": 0.45, "Effusion": 0.55}
    preds = root / "pred"
    for k, finding in enumerate(MULTI):
        table = pred_table(ids, scores[:, k], threshold=thresholds[finding], finding=finding)
        write_preds(preds, f"{finding}.parquet", table)
    write_card(
        preds,
        MODEL_A,
        findings=list(MULTI),
        per_finding={f: {"threshold": t, "val_auc": 0.8} for f, t in thresholds.items()},
    )
    out = root / "out"
    report = run_report(config(preds, labels, out, bootstrap=200))
    return {"report": report, "out": out, "hot": hot, "scores": scores, "labels": labels,
            "preds": preds, "thresholds": thresholds}  # fmt: skip


def test_multi_finding_metrics_per_finding_match_sklearn(multi) -> None:
    report = multi["report"]
    section = report["models"][MODEL_A]
    assert report["findings"] == list(MULTI) and report["finding"] == "Mass,Nodule,Effusion"
    assert list(section["findings"]) == list(MULTI)  # ordered as the card's outputs
    for k, finding in enumerate(MULTI):
        entry = section["findings"][finding]
        y, scores = multi["hot"][:, k].astype(int), multi["scores"][:, k]
        assert (entry["n"], entry["n_positive"]) == (150, int(y.sum()))
        assert entry["auc"] == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
        assert entry["average_precision"] == pytest.approx(skm.average_precision_score(y, scores))
        low, high = entry["auc_ci95"]
        assert low < entry["auc"] < high
        point = entry["operating_points"]["model_threshold"]
        assert (point["source"], point["threshold"]) == ("model card", multi["thresholds"][finding])
        called = scores >= np.float32(point["threshold"])
        assert point["sensitivity"] == pytest.approx(skm.recall_score(y, called))
        assert set(entry["plots"]) == {"histogram", "confusion", "calibration", "examples"}
    assert section["mean_auc"] == pytest.approx(
        np.mean([section["findings"][f]["auc"] for f in MULTI])
    )
    assert set(section["plots"]) == {"roc"}  # one ROC figure for all findings


def test_multi_finding_summary_in_json_and_html(multi) -> None:
    out, report = multi["out"], multi["report"]
    assert strict_json(out / "metrics.json") == report
    summary = report["models"][MODEL_A]["summary"]
    assert [row["finding"] for row in summary] == list(MULTI)
    for row in summary:
        entry = report["models"][MODEL_A]["findings"][row["finding"]]
        assert set(row) == {"finding", "n", "n_positive", "auc", "auc_ci95", "threshold",
                            "sensitivity", "specificity", "flagged_subgroups"}  # fmt: skip
        assert (row["auc"], row["auc_ci95"]) == (entry["auc"], entry["auc_ci95"])
        point = entry["operating_points"]["model_threshold"]
        assert (row["sensitivity"], row["specificity"]) == (
            point["sensitivity"],
            point["specificity"],
        )
    text = (out / "report.html").read_text(encoding="utf-8")
    table = text[text.index('<table class="summary">') :]
    table = table[: table.index("</table>")]
    for row in summary:
        assert f"<td>{row['finding']}</td>" in table
        assert f"{row['auc']:.3f}" in table
    # Near the top: before the first finding's own section.
    assert text.index('<table class="summary">') < text.index("<h3>Mass</h3>")
    plots = [p for e in report["models"][MODEL_A]["findings"].values() for p in e["plots"].values()]
    assert len(html_images(text).images) == len(plots) + 1  # + the ROC with all findings


def test_worker_processes_do_not_change_the_report(multi, tmp_path) -> None:
    """The findings' bootstraps and figures run in worker processes (``--processes``): two
    workers and none give the same metrics.json and the same plot files, byte for byte."""
    reports, plots = [], []
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        cfg = config(multi["preds"], multi["labels"], out, bootstrap=200, processes=processes)
        report = run_report(cfg)
        assert report["config"]["processes"] == processes
        reports.append({k: v for k, v in report.items() if k not in ("config", "generated_at")})
        plots.append({f.name: f.read_bytes() for f in sorted((out / "plots").iterdir())})
    assert reports[0] == reports[1]
    assert plots[0].keys() == plots[1].keys() and len(plots[0]) >= 3 * len(MULTI) + 1
    assert plots[0] == plots[1]


def test_processes_flag_is_checked(tmp_path) -> None:
    from medai.cli import main

    args = ["report", "--predictions", str(tmp_path), "--labels", str(tmp_path / "l.csv")]
    assert main([*args, "--out", str(tmp_path / "out"), "--processes", "-1"]) == 2
    assert not (tmp_path / "out").exists()


def test_multi_finding_roc_has_one_curve_per_finding(multi) -> None:
    from medai.report import accounting, evaluation, figures, inputs, plots

    cfg = config(multi["preds"], multi["labels"], multi["out"] / "unused", bootstrap=0)
    [model] = accounting.collect_models(cfg, inputs.prepare(cfg))
    section = evaluation.model_section(model, cfg)
    figure = plots.roc_figure(*figures.findings_roc_arguments(model, section))
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend[0].startswith("chance")
    assert [label.split(" ")[0] for label in legend[1:]] == list(MULTI)
    assert len(figure.axes[0].lines) == 1 + len(MULTI)


def test_finding_option_picks_findings_and_no_finding_negatives(multi, tmp_path) -> None:
    hot = multi["hot"]
    report = run_report(
        config(
            multi["preds"],
            multi["labels"],
            tmp_path / "two",
            finding="Nodule,Mass",
            negatives="no-finding",
            bootstrap=0,
        )  # fmt: skip
    )
    section = report["models"][MODEL_A]
    assert list(section["findings"]) == ["Mass", "Nodule"]  # the model's order
    for k, finding in ((0, "Mass"), (1, "Nodule")):
        entry = section["findings"][finding]
        others = hot.any(axis=1) & ~hot[:, k]  # other findings only: not evaluated here
        assert (entry["n_unlabeled"], entry["n"]) == (int(others.sum()), int((~others).sum()))
        keep = ~others
        assert entry["auc"] == pytest.approx(
            skm.roc_auc_score(hot[keep, k], multi["scores"][keep, k])
        )
    # One finding of a multi-finding model: today's single-finding section.
    one = run_report(
        config(multi["preds"], multi["labels"], tmp_path / "one", finding="Effusion", bootstrap=0)
    )["models"][MODEL_A]
    assert set(one) == SINGLE_KEYS | NEW_KEYS
    assert one["finding"] == "Effusion"
    assert one["operating_points"]["model_threshold"]["threshold"] == 0.55


def test_single_finding_section_keeps_its_keys(rich) -> None:
    for section in rich["report"]["models"].values():
        assert set(section) == SINGLE_KEYS | NEW_KEYS
        [entry] = section["findings"].values()
        for key in ("n", "auc", "auc_ci95", "brier", "ece", "operating_points", "examples"):
            assert entry[key] == section[key]
        [row] = section["summary"]
        assert (row["finding"], row["auc"]) == ("Mass", section["auc"])
    [comparison] = rich["report"]["comparisons"]
    assert comparison["finding"] == "Mass"


def test_template_is_package_data_of_a_built_wheel(tmp_path: Path) -> None:
    """A non-editable install carries the page template (pyproject package-data)."""
    import zipfile

    # Build isolation: pyproject needs setuptools>=77, newer than some venvs carry.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    offline = ("No matching distribution", "Could not find a version", "NewConnectionError")
    if done.returncode != 0 and any(text in done.stderr for text in offline):
        pytest.skip(f"cannot fetch the build backend (offline?): {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("medai-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "medai/report/templates/report.html.j2" in names
    assert "medai/report/render.py" in names
