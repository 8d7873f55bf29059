"""Patient-level splits: train / validation from the NIH train_val list, test from the test list.

A patient never appears in two splits and a test-list image is never trained on; both are
asserted by :func:`check_split` every time a split is made or loaded.

Train and validation are stratified by finding. Scikit-learn has no multi-label *group*
stratifier, so the method is a compact one in the spirit of iterative stratification (Sechidis
et al. 2011, which places the rarest label first): each patient is keyed by the rarest finding
among its positive images (or "none"), and every key's patients are shuffled and divided by
``val_fraction``. Each finding thereby has its patients split in proportion, at least those
keyed by it. A final repair pass, rarest finding first, moves one patient across when a finding
with at least two patients still has positives on one side only, choosing a patient whose move
leaves every finding it carries with positives on the side it leaves. With one finding the keys
are "none" and "positive", which is exactly the positive / negative stratification of the
single-finding split, so single-finding splits are unchanged for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from medai.errors import MedaiError

__all__ = ["SplitError", "split_by_patient", "check_split", "finding_columns", "SPLITS"]

SPLITS = ("train", "val", "test")


class SplitError(MedaiError, ValueError):
    """A split would leak patients or test images, or leaves a split empty."""


def finding_columns(labels: pd.DataFrame) -> list[str]:
    """The per-finding label columns (``label_<Finding>``), or ``["label"]`` for older tables."""
    return [col for col in labels.columns if col.startswith("label_")] or ["label"]


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
    stratified by finding (see the module docstring), so that both splits get positives of
    every finding that at least two patients have. A patient with images on the test list
    is kept out of train and validation altogether.

    Args:
        labels: The normalised label table (``image_id``, ``patient_id`` and the
            ``label_<Finding>`` columns, or a single ``label`` column).
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

    columns = finding_columns(table)
    positive = (table.loc[pool, columns] == 1).groupby(table.loc[pool, "patient_id"]).max()
    in_val = _stratified_val(positive, val_fraction, np.random.default_rng(seed))
    val_patients = set(positive.index[in_val])
    is_val = table["patient_id"].isin(val_patients)
    table.loc[pool & is_val, "split"] = "val"
    table.loc[pool & ~is_val, "split"] = "train"
    table = table[table["split"].notna()].reset_index(drop=True)
    check_split(table, test_set)
    return table


def _stratified_val(positive: pd.DataFrame, fraction: float, rng) -> np.ndarray:
    """Which patients (rows of a patients x findings boolean frame) go to validation."""
    hot = positive.to_numpy(dtype=bool)
    totals = hot.sum(axis=0)
    # Key = 1 + index of the patient's rarest positive finding (ties: first column), 0 = none.
    rarity = np.where(hot, totals[None, :], np.iinfo(np.int64).max)
    key = np.where(hot.any(axis=1), rarity.argmin(axis=1) + 1, 0) if hot.size else np.zeros(0)
    in_val = np.zeros(len(hot), dtype=bool)
    for value in np.unique(key):
        patients = np.flatnonzero(key == value)
        rng.shuffle(patients)
        n_val = int(round(len(patients) * fraction))
        if len(patients) >= 2:
            n_val = min(max(n_val, 1), len(patients) - 1)
        in_val[patients[:n_val]] = True
    _repair(hot, totals, in_val)
    return in_val


def _repair(hot: np.ndarray, totals: np.ndarray, in_val: np.ndarray) -> None:
    """Move single patients so each finding with >= 2 patients has positives on both sides."""
    for finding in np.argsort(totals, kind="stable"):
        if totals[finding] < 2:
            continue
        carriers = hot[:, finding]
        on_val = int(np.count_nonzero(carriers & in_val))
        if 0 < on_val < totals[finding]:
            continue
        source = on_val > 0  # the side holding all of them: True = validation
        side = in_val == source
        left = hot[side].sum(axis=0)  # positives per finding on the source side
        for patient in np.flatnonzero(carriers & side):
            needed = hot[patient] & (totals >= 2)
            if np.all(left[needed] >= 2):  # the source side keeps one of each it carries
                in_val[patient] = not source
                break


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
