"""The README's first command: phantoms -> train (2 workers) -> score -> report, offline."""

from __future__ import annotations

import json

from medai.demo import DemoConfig, run_demo


def test_demo_end_to_end_reaches_auc_0_9(ray_session, tmp_path):
    report = run_demo(DemoConfig(out=str(tmp_path / "demo")))
    assert report.exists() and report.stat().st_size > 50_000  # plots embedded
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["split"] == "test"
    (section,) = metrics["models"].values()
    print(f"demo test AUC {section['auc']:.4f} on {section['n']} images")
    assert section["auc"] >= 0.9
    card = json.loads((tmp_path / "demo" / "model" / "model_card.json").read_text())
    assert card["weights"] == "none" and card["optimizer"]["workers"] == 2
