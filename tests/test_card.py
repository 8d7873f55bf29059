"""The model card and split.csv contracts: reading, thresholds, summaries, the decision rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medai.card import (
    CARDS_DIR,
    ModelDirError,
    card_excerpt,
    card_line,
    finding_threshold,
    is_positive,
    read_card_copy,
    read_split,
    split_labels,
    write_card_copy,
    write_split,
)


def test_the_summary_line_names_a_mean_auc_and_no_threshold_for_several_findings():
    single = {"val_auc": 0.91234, "threshold": 0.40001, "best_epoch": 3}
    assert card_line(single) == "val AUC 0.9123, threshold 0.4000 (best epoch 3)"
    per = {
        "Mass": {"val_auc": 0.6, "threshold": 0.79},
        "Effusion": {"val_auc": None, "threshold": 0.1},
    }
    several = {**single, "val_auc": 0.6, "threshold": 0.79, "per_finding": per}
    assert card_line(several) == "mean val AUC 0.6000 over 2 findings (best epoch 3)"
    assert card_line(per["Effusion"]) == "val AUC n/a, threshold 0.1000"
    assert card_excerpt(several) == {"threshold": 0.79, "val_auc": 0.6, "per_finding": per}
    assert card_excerpt(None) is None


def test_a_score_at_the_threshold_is_positive_in_float32():
    threshold = 0.1  # not a float32 value: float32(0.1) > 0.1 in float64
    scores = np.array([np.float32(0.1), 0.0999999, np.nan], np.float32)
    assert is_positive(scores, threshold).tolist() == [True, False, False]


def test_finding_threshold_of_damaged_and_multi_finding_cards():
    multi = {"findings": ["Mass", "Effusion"], "threshold": 0.3, "per_finding": {"Mass": {}}}
    assert finding_threshold(multi, "Effusion") is None  # never the first finding's value
    assert finding_threshold({"threshold": "0.4"}, "Mass") is None
    assert finding_threshold({"threshold": float("nan")}, "Mass") is None
    assert finding_threshold({"threshold": 0.25}, "Mass") == 0.25
    assert finding_threshold(None, "Mass") is None


def test_card_copies_round_trip_and_damaged_ones_are_reasons(tmp_path: Path):
    card = {"model_id": "abc123", "finding": "Mass", "threshold": 0.5}
    write_card_copy(tmp_path, card)
    assert read_card_copy(tmp_path, "abc123") == (card, "")
    assert read_card_copy(tmp_path, "../abc123") == (None, "")  # never leaves the folder
    assert read_card_copy(tmp_path, "other") == (None, "")
    (tmp_path / CARDS_DIR / "bad.json").write_text("[1, 2")
    copy, reason = read_card_copy(tmp_path, "bad")
    assert copy is None and "unreadable" in reason
    (tmp_path / CARDS_DIR / "list.json").write_text(json.dumps([1]))
    assert "not a JSON object" in read_card_copy(tmp_path, "list")[1]


def _inventory_split() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ["a.png", "b.png", "c.png", "d.png", "e.png"],
            "patient_id": ["1", "1", "2", "3", "4"],
            "split": ["train", "train", "val", "val", "test"],
            "label": [1, 0, 1, 0, 1],
            "label_Mass": [1, 0, 1, 0, 1],
            "label_Effusion": [0, -1, 1, 0, 0],
            "found": [True, False, True, False, True],
            "unreadable": [False, True, False, False, False],
        }
    )


def test_split_csv_says_what_was_trained_and_validated_on(tmp_path: Path):
    write_split(tmp_path, _inventory_split(), ["label_Mass", "label_Effusion"])
    table = read_split(tmp_path)
    assert table["status"].tolist() == ["used", "unreadable", "used", "missing", "not read"]
    assert table["patient_id"].tolist() == ["1", "1", "2", "3", "4"]  # ids stay strings
    labels = split_labels(table, ["Mass", "Effusion"])
    assert labels.tolist() == [[1, 0], [0, -1], [1, 1], [0, 0], [1, 0]]
    assert [p.name for p in tmp_path.iterdir()] == ["split.csv"]  # no temporary left


def test_a_split_csv_from_before_status_reads_as_used(tmp_path: Path):
    single = _inventory_split()[["image_id", "patient_id", "split", "label"]]
    single.to_csv(tmp_path / "split.csv", index=False)
    table = read_split(tmp_path)
    assert table["status"].tolist() == ["used"] * 4 + ["not read"]
    assert split_labels(table, ["Mass"]).ravel().tolist() == [1, 0, 1, 0, 1]
    assert read_split(tmp_path / "absent") is None
    (tmp_path / "split.csv").write_text("image_id\na.png\n")
    with pytest.raises(ModelDirError, match="no column"):
        read_split(tmp_path)
