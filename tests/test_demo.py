"""The README's first command: phantoms -> train (2 workers) -> score -> report, offline."""

from __future__ import annotations

import json

import pytest

from medai.demo import DemoConfig, phantom_test_calibration, run_demo


@pytest.mark.slow  # 426 s on a 2-core AVX2 host: the whole demo, a 4-epoch training included
def test_demo_end_to_end_reaches_auc_0_9_with_calibrated_scores(ray_session, tmp_path, caplog):
    with caplog.at_level("INFO", logger="medai.demo"):
        report = run_demo(DemoConfig(out=str(tmp_path / "demo")))
    page = report.read_text()
    assert page.count("data:image/png;base64,") >= 5  # the plots are embedded in the page
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["split"] == "test"
    (section,) = metrics["models"].values()
    print(f"demo test AUC {section['auc']:.4f} on {section['n']} images")
    assert section["auc"] >= 0.9
    card = json.loads((tmp_path / "demo" / "model" / "model_card.json").read_text())
    assert card["weights"] == "none" and card["optimizer"]["workers"] == 2
    # Scores are probabilities (issue 9): it once had threshold 0.001 and Brier 0.49.
    test = phantom_test_calibration(
        tmp_path / "demo" / "predictions", tmp_path / "demo" / "data" / "Data_Entry_2017.csv", card
    )
    print(f"demo threshold {card['threshold']:.4f}, test {test}")
    assert test["n"] == section["n"]
    assert 0.1 <= card["threshold"] <= 0.9
    assert test["ece"] <= 0.1 and test["brier"] <= 0.1
    assert f"ECE {test['ece']:.3f}" in caplog.text and f"Brier {test['brier']:.3f}" in caplog.text
