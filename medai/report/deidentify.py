"""De-identified reports: image ids, study ids, patients and source paths as keyed pseudonyms.

``medai report --deidentify`` (with ``--no-images``) is for a report that leaves the
institution. The inputs are pseudonymised before any evaluation (:func:`deidentify_inputs`), so
every table, figure and file of the report folder is built from pseudonyms only: an image id, a
StudyInstanceUID, a label file's patient id or a source path (often a folder named after a
patient in a PACS export) never reaches it. The pseudonym is the HMAC-SHA256 of the value under
the site key (:mod:`medai.pseudonyms`): stable across reports of one site, so two reports can
still be compared, and meaningless without the key.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from medai.pseudonyms import pseudonym
from medai.report.inputs import Inputs, Split

__all__ = ["PSEUDONYM_CHARS", "deidentify_inputs"]

# 96 bits of the HMAC: no collision among any archive's images, and short enough to read.
PSEUDONYM_CHARS = 24
_PREFIXES = {"image_id": "img-", "source": "src-", "study_id": "std-", "patient_id": "pat-"}


def _masked(values: pd.Series, prefix: str, key: bytes) -> pd.Series:
    """Each non-null value replaced by its pseudonym (one HMAC per distinct value)."""
    distinct = values.dropna().astype(str).unique()
    names = {value: prefix + pseudonym(value, key)[:PSEUDONYM_CHARS] for value in distinct}
    return values.map(lambda value: names.get(str(value)) if pd.notna(value) else value)


def _masked_frame(frame: pd.DataFrame | None, key: bytes) -> pd.DataFrame | None:
    if frame is None:
        return None
    frame = frame.copy()
    for column, prefix in _PREFIXES.items():
        if column in frame:
            frame[column] = _masked(frame[column], prefix, key)
    return frame


def deidentify_inputs(inputs: Inputs, key: bytes) -> Inputs:
    """The report's inputs with every image id, study id, patient id and source pseudonymised.

    The same value gets the same pseudonym in the predictions, the labels and the split, so
    the report joins them exactly as it would the plain values.
    """
    split = inputs.split
    if split.ids is not None:
        ids = _masked(pd.Series(sorted(split.ids), dtype=object), _PREFIXES["image_id"], key)
        split = Split(split.name, frozenset(ids), split.listed_inside)
    return replace(
        inputs,
        predictions=_masked_frame(inputs.predictions, key),
        labels=_masked_frame(inputs.labels, key),
        split=split,
        boxes=_masked_frame(inputs.boxes, key),
    )
