"""Patient-level splits: train / validation from the NIH train_val list, test from the test list.

A patient never appears in two splits and a test-list image is never trained on; both are
asserted by :func:`check_split` every time a split is made or loaded.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from medai.errors import MedaiError

__all__ = ["SplitError", "split_by_patient", "check_split", "SPLITS"]

SPLITS = ("train", "val", "test")


class SplitError(MedaiError, ValueError):
    """A split would leak patients or test images, or leaves a split empty."""


def split_by_patient(
    labels: pd.DataFrame,
    test_ids: Iterable[str] | None = None,
    train_val_ids: Iterable[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> pd.DataFrame:
    """Assign every labelled image to ``train``, ``val`` or ``test`` by patient.

    Images on the test list are ``test``. The patients of the train_val images (all
    remaining images when no list is given) are divided into train and validation,
    stratified by whether a patient has any positive image, so that both splits get
    positives whenever at least two patients have one. A patient with images on the test
    list is kept out of train and validation altogether.

    Args:
        labels: The normalised label table (``image_id``, ``patient_id``, ``label``).
        test_ids: Image ids of the NIH ``test_list.txt``; ``None`` when there is no test list.
        train_val_ids: Image ids of ``train_val_list.txt``; ``None`` to use all non-test images.
        val_fraction: Fraction of train_val patients that go to validation.
        seed: Seed of the patient shuffle.

    Returns:
        The label table with a ``split`` column, rows with no split dropped.
    """
    table = labels.copy()
    test_set = set(test_ids or ())
    is_test = table["image_id"].isin(test_set)
    test_patients = set(table.loc[is_test, "patient_id"])
    pool = ~is_test & ~table["patient_id"].isin(test_patients)
    if train_val_ids is not None:
        pool &= table["image_id"].isin(set(train_val_ids))
    table["split"] = None
    table.loc[is_test, "split"] = "test"

    per_patient = table[pool].groupby("patient_id")["label"].max()
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for _, group in per_patient.groupby(per_patient):
        patients = group.index.to_numpy()
        rng.shuffle(patients)
        n_val = int(round(len(patients) * val_fraction))
        if len(patients) >= 2:
            n_val = min(max(n_val, 1), len(patients) - 1)
        val_patients.update(patients[:n_val])
    in_val = table["patient_id"].isin(val_patients)
    table.loc[pool & in_val, "split"] = "val"
    table.loc[pool & ~in_val, "split"] = "train"
    table = table[table["split"].notna()].reset_index(drop=True)
    check_split(table, test_set)
    return table


def check_split(table: pd.DataFrame, test_ids: Iterable[str] = ()) -> None:
    """Raise :class:`SplitError` if any patient spans two splits or a test image is not in test.

    Args:
        table: A table with ``image_id``, ``patient_id`` and ``split`` columns.
        test_ids: Image ids that must never be in train or validation.
    """
    spans = table.groupby("patient_id")["split"].nunique()
    leaking = spans[spans > 1]
    if not leaking.empty:
        raise SplitError(f"patient {leaking.index[0]!r} appears in more than one split")
    trained = table[table["split"].isin(["train", "val"]) & table["image_id"].isin(set(test_ids))]
    if not trained.empty:
        raise SplitError(
            f"test-list image {trained['image_id'].iloc[0]!r} is in {trained['split'].iloc[0]}"
        )
    unknown = set(table["split"]) - set(SPLITS)
    if unknown:
        raise SplitError(f"unknown split names {sorted(unknown)}")
