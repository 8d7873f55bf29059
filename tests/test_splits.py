"""Patient-level splits never leak patients or test images."""

from __future__ import annotations

import pandas as pd
import pytest

from medai.labels import find_split_lists, load_labels, read_split_list
from medai.splits import SplitError, check_split, split_by_patient


def labels(n_patients=60, per_patient=3):
    rows = []
    for p in range(n_patients):
        for f in range(per_patient):
            rows.append(
                {"image_id": f"{p:08d}_{f:03d}.png", "patient_id": str(p), "label": int(p % 3 == 0)}
            )
    return pd.DataFrame(rows)


def test_no_patient_in_two_splits_and_test_list_respected():
    table = labels()
    test_ids = [i for i in table["image_id"] if i.startswith("0000000")]  # patients 0-9
    split = split_by_patient(table, test_ids, seed=3)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split.loc[split["split"] == "test", "image_id"]) == set(test_ids)
    assert not split.loc[split["split"] != "test", "image_id"].isin(test_ids).any()
    for name in ("train", "val"):
        assert split.loc[split["split"] == name, "label"].nunique() == 2  # stratified


def test_patient_with_a_test_image_never_trains():
    table = labels(10, 2)
    split = split_by_patient(table, ["00000001_000.png"], seed=0)
    assert set(split.loc[split["patient_id"] == "1", "split"]) == {"test"}
    assert "00000001_001.png" not in set(split["image_id"])


def test_seeded_and_reproducible():
    table = labels()
    a = split_by_patient(table, seed=1)
    b = split_by_patient(table, seed=1)
    c = split_by_patient(table, seed=2)
    assert a.equals(b) and not a["split"].equals(c["split"])


def test_check_split_catches_leaks():
    bad = pd.DataFrame(
        {"image_id": ["a", "b"], "patient_id": ["1", "1"], "split": ["train", "val"]}
    )
    with pytest.raises(SplitError, match="more than one split"):
        check_split(bad)
    bad = pd.DataFrame({"image_id": ["a"], "patient_id": ["1"], "split": ["train"]})
    with pytest.raises(SplitError, match="test-list image"):
        check_split(bad, ["a"])


def test_real_sample_split(sample_dir):
    path = sample_dir / "Data_Entry_2017.csv"
    table = load_labels(path, "Mass")
    train_val, test = find_split_lists(path)
    split = split_by_patient(table, read_split_list(test), read_split_list(train_val), seed=0)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split.loc[split["split"] == "test", "image_id"]) == set(read_split_list(test))
