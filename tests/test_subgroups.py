"""Subgroups, failure analysis, ECE CI, the reviewer summary and --no-images, end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_kit import MODEL_A, html_images, image_ids, pred_table, write_card, write_preds
from sklearn import metrics as skm

from medai.report import ReportConfig, run_report

N = 900


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """NIH-style labels with sex, age, view and follow-up; the model is poor on women."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(5)
    ids = image_ids(N)
    sex = rng.choice(["M", "F"], N)
    age = rng.choice([25, 50, 70, 85], N, p=[0.3, 0.3, 0.37, 0.03])
    view = rng.choice(["PA", "AP"], N)
    follow = rng.choice([0, 1, 4], N)
    y = rng.random(N) < 0.3
    y[age == 85] = False
    y[np.flatnonzero(age == 85)[:3]] = True  # >=80: too few positives for metrics
    signal = np.where(sex == "M", 0.45, 0.08)  # far less signal for women: flagged
    scores = np.clip(0.3 + signal * y + rng.normal(0, 0.15, N), 0, 1).astype(np.float32)
    other = np.where(rng.random(N) < 0.2, "|Effusion", "")
    text = np.where(y, "Mass" + other, np.where(other == "", "No Finding", "Effusion"))
    labels = root / "Data_Entry_2017.csv"
    pd.DataFrame(
        {
            "Image Index": ids,
            "Finding Labels": text,
            "Follow-up #": follow,
            "Patient ID": [i[:8] for i in ids],
            "Patient Age": age,
            "Patient Gender": sex,
            "View Position": view,
        }
    ).to_csv(labels, index=False)
    preds = write_preds(root / "pred", "p.parquet", pred_table(ids, scores, threshold=0.5))
    write_card(preds, MODEL_A, threshold=0.5, counts={"train": {"images": 700, "patients": 230}})
    config = ReportConfig(predictions=preds, labels=labels, out=root / "out", split="all",
                          bootstrap=300, seed=1)  # fmt: skip
    report = run_report(config)
    return {"report": report, "root": root, "config": config, "y": y.astype(int),
            "scores": scores, "sex": sex, "age": age, "view": view, "follow": follow,
            "ids": np.array(ids), "text": text}  # fmt: skip


def _row(section, attribute, value):
    [row] = [r for r in section["subgroups"] if (r["attribute"], r["value"]) == (attribute, value)]
    return row


def test_subgroup_entries_match_sklearn_and_flag_the_weak_group(cohort) -> None:
    section = cohort["report"]["models"][MODEL_A]
    y, scores = cohort["y"], cohort["scores"]
    keys = {"finding", "attribute", "value", "n", "n_positive", "auc", "auc_ci95",
            "sensitivity", "specificity", "ece", "flagged", "reasons"}  # fmt: skip
    assert {(r["attribute"], r["value"]) for r in section["subgroups"]} == {
        ("sex", "F"), ("sex", "M"), ("age", "<40"), ("age", "40-59"), ("age", "60-79"),
        ("age", ">=80"), ("view", "PA"), ("view", "AP"), ("follow_up", "first"),
        ("follow_up", "later"),
    }  # fmt: skip
    masks = {
        ("sex", "F"): cohort["sex"] == "F",
        ("age", "40-59"): cohort["age"] == 50,
        ("view", "AP"): cohort["view"] == "AP",
        ("follow_up", "first"): cohort["follow"] == 0,
        ("follow_up", "later"): cohort["follow"] > 0,
    }
    for (attribute, value), mask in masks.items():
        row = _row(section, attribute, value)
        assert set(row) == keys
        assert (row["n"], row["n_positive"]) == (int(mask.sum()), int(y[mask].sum()))
        assert row["auc"] == pytest.approx(skm.roc_auc_score(y[mask], scores[mask]))
        called = scores[mask] >= np.float32(0.5)
        assert row["sensitivity"] == pytest.approx(skm.recall_score(y[mask], called))
        assert row["specificity"] == pytest.approx(skm.recall_score(y[mask], called, pos_label=0))
        low, high = row["auc_ci95"]
        assert low < row["auc"] < high
    overall = section["auc"]
    women, men = _row(section, "sex", "F"), _row(section, "sex", "M")
    assert women["flagged"] and women["auc_ci95"][1] < overall
    assert not men["flagged"]
    assert section["summary"][0]["flagged_subgroups"] == ["sex=F"]
    old = _row(section, "age", ">=80")
    assert (old["n_positive"], old["auc"], old["auc_ci95"], old["flagged"]) == (
        3,
        None,
        None,
        False,
    )
    assert "too few images" in old["reasons"][0]


def test_ece_has_a_bootstrap_ci(cohort) -> None:
    section = cohort["report"]["models"][MODEL_A]
    low, high = section["ece_ci95"]
    assert low <= section["ece"] <= high and high - low > 0


def test_failure_table_lists_confident_errors_with_attributes(cohort) -> None:
    failures = cohort["report"]["models"][MODEL_A]["failures"]
    y, scores, ids = cohort["y"], cohort["scores"], cohort["ids"]
    called = scores >= np.float32(0.5)
    fp = np.flatnonzero(called & (y == 0))
    fp = fp[np.argsort(-scores[fp], kind="stable")][:10]
    assert [r["image_id"] for r in failures["false_positives"]] == ids[fp].tolist()
    missed = np.flatnonzero(~called & (y == 1))
    missed = missed[np.argsort(scores[missed], kind="stable")][:10]
    assert [r["image_id"] for r in failures["missed_positives"]] == ids[missed].tolist()
    for row, index in zip(failures["missed_positives"], missed, strict=True):
        assert row["sex"] == cohort["sex"][index]
        assert row["age"] == cohort["age"][index]
        assert row["view"] == cohort["view"][index]
        assert row["follow_up"] == cohort["follow"][index]
        assert row["other_findings"] == (
            ["Effusion"] if "Effusion" in cohort["text"][index] else []
        )


def test_page_has_summary_first_subgroups_flagged_and_failures(cohort) -> None:
    text = (cohort["root"] / "out" / "report.html").read_text(encoding="utf-8")
    glance = text[text.index('id="summary"') : text.index("<h2>Data</h2>")]
    assert "700 images / 230 patients" in glance  # training data counts from the card
    assert "sex=F" in glance and "Flags raised" in glance
    assert 'class="flagged"><td>sex</td><td>F</td>' in text
    assert text.count('class="flagged"') == 1
    assert "Failure analysis at 0.500" in text
    assert "Example images" in text and len(html_images(text).images) >= 4


def test_no_images_leaves_out_every_patient_image(cohort, tmp_path) -> None:
    config = cohort["config"]
    fields = {k: getattr(config, k) for k in ("predictions", "labels", "split", "seed")}
    report = run_report(ReportConfig(**fields, out=tmp_path, bootstrap=0, images=False))
    section = report["models"][MODEL_A]
    assert "examples" not in section["plots"]
    assert not any("examples" in path.name for path in (tmp_path / "plots").iterdir())
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Example images" not in text and "--no-images" in text
    assert len(html_images(text).images) == len(section["plots"])  # only the charts
    assert section["examples"]["images"]["false_positives"]  # ids are still listed
