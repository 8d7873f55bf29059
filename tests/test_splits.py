"""Patient-level splits never leak patients or test images."""

from __future__ import annotations

import numpy as np
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


# ----------------------------------------------------------------------------- several findings

FINDINGS = ("Mass", "Nodule", "Effusion", "Hernia", "Edema", "Pneumonia")


def multi_labels(seed=0, n_patients=80):
    """Patients with 1-3 images; Mass and Effusion common, the others rare.

    Hernia: exactly two patients, each of whom also carries a rarer-keyed combination, and
    Edema: three patients who always also have Hernia or Nodule, so a split by each patient's
    own finding set alone would put them all on one side. Pneumonia: two patients, each keyed
    by a finding only they have (Fibrosis, Emphysema), so only the repair pass splits them.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        hot = {
            "Mass": rng.random() < 0.3,
            "Nodule": p in (3, 17, 41, 60),
            "Effusion": rng.random() < 0.4,
            "Hernia": p in (5, 9),
            "Edema": p in (5, 9, 17),
            "Pneumonia": p in (20, 30),
            "Fibrosis": p == 20,
            "Emphysema": p == 30,
        }
        for k in range(int(rng.integers(1, 4))):
            row = {"image_id": f"{p:08d}_{k:03d}.png", "patient_id": str(p)}
            # Only a patient's first image carries the rare findings.
            row.update(
                {
                    f"label_{f}": int(v and (k == 0 or f in ("Mass", "Effusion")))
                    for f, v in hot.items()
                }
            )
            rows.append(row)
    table = pd.DataFrame(rows)
    table["label"] = table["label_Mass"]
    return table


def test_multi_finding_split_has_positives_of_every_finding_on_both_sides():
    table = multi_labels()
    for seed in range(6):
        split = split_by_patient(table, seed=seed)
        assert split.groupby("patient_id")["split"].nunique().max() == 1
        for finding in FINDINGS:
            column = f"label_{finding}"
            patients = table.loc[table[column] == 1, "patient_id"].nunique()
            assert patients >= 2
            sides = split.loc[split[column] == 1].groupby("split")["patient_id"].nunique()
            assert set(sides.index) == {"train", "val"}, (seed, finding, sides.to_dict())


def test_multi_finding_split_is_seeded_and_leaves_test_alone():
    table = multi_labels(seed=1)
    test_ids = [i for i in table["image_id"] if i.startswith("0000007")]
    a = split_by_patient(table, test_ids, seed=4)
    assert a.equals(split_by_patient(table, test_ids, seed=4))
    assert not a["split"].equals(split_by_patient(table, test_ids, seed=5)["split"])
    assert set(a.loc[a["split"] == "test", "image_id"]) == set(test_ids)
    check_split(a, test_ids)


def test_single_finding_column_split_equals_the_label_column_split():
    table = labels()
    named = table.assign(label_Mass=table["label"])
    for seed in range(4):
        assert split_by_patient(table, seed=seed)["split"].equals(
            split_by_patient(named, seed=seed)["split"]
        )
