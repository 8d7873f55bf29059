"""Bounding-box files: NIH's ``BBox_List_2017.csv`` or the same columns under plain names.

NIH's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the unquoted ``Bbox [x,y,w,h]``
splits into four columns and three empty ones follow, so the first six fields are read by
position. Other data may use a header of ``image_id,finding,x,y,width,height``. Coordinates are
pixels of the original image (NIH: 1024 x 1024), ``x``/``y`` the top-left corner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medai.errors import MedaiError

__all__ = ["BOX_COLUMNS", "BoxError", "read_boxes"]

BOX_COLUMNS = ("image_id", "finding", "x", "y", "width", "height")
_NIH_FIRST = "Image Index"


class BoxError(MedaiError, ValueError):
    """A bounding-box file that cannot be used; the message names the file and the problem."""


def read_boxes(path: str | Path) -> pd.DataFrame:
    """Read and check a bounding-box file.

    Args:
        path: NIH ``BBox_List_2017.csv`` or a CSV with columns :data:`BOX_COLUMNS`.

    Returns:
        One row per box with columns :data:`BOX_COLUMNS` (coordinates as float64).

    Raises:
        BoxError: If the file is missing, unreadable, lacks the columns, or a row has a
            missing or non-numeric coordinate, a negative corner or a non-positive size.
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BoxError(f"--boxes {path}: cannot read it: {exc}") from exc
    if len(raw.columns) and str(raw.columns[0]).strip() == _NIH_FIRST:
        if len(raw.columns) < len(BOX_COLUMNS):
            raise BoxError(
                f"--boxes {path}: an NIH box list needs 6 columns (Image Index, Finding Label, "
                f"x, y, w, h), found {len(raw.columns)}"
            )
        frame = raw.iloc[:, : len(BOX_COLUMNS)].copy()
        frame.columns = list(BOX_COLUMNS)
    else:
        raw.columns = [str(c).strip() for c in raw.columns]
        missing = [c for c in BOX_COLUMNS if c not in raw.columns]
        if missing:
            raise BoxError(
                f"--boxes {path}: missing columns {missing}; expected NIH's BBox_List_2017.csv "
                f"or a header with {list(BOX_COLUMNS)}"
            )
        frame = raw[list(BOX_COLUMNS)].copy()
    return _checked(frame, path)


def _checked(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Strip names, convert coordinates and reject the first bad row with its line number."""
    if frame.empty:
        raise BoxError(f"--boxes {path}: the file has no boxes")
    for name in ("image_id", "finding"):
        frame[name] = frame[name].str.strip()
    coords = frame[list(BOX_COLUMNS[2:])].apply(pd.to_numeric, errors="coerce")
    bad = (
        (frame["image_id"] == "")
        | (frame["finding"] == "")
        | ~np.isfinite(coords).all(axis=1)
        | (coords["x"] < 0)
        | (coords["y"] < 0)
        | (coords["width"] <= 0)
        | (coords["height"] <= 0)
    )
    if bad.any():
        at = int(np.flatnonzero(bad.to_numpy())[0])
        row = ",".join(str(v) for v in frame.iloc[at].tolist())
        raise BoxError(
            f"--boxes {path}: line {at + 2} is not a box (needs an image id, a finding, x and "
            f"y >= 0, width and height > 0): {row!r}"
        )
    frame[list(BOX_COLUMNS[2:])] = coords.astype(np.float64)
    return frame.reset_index(drop=True)
