"""Builders of valid and broken image files for the image, scoring and report tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def valid_variants(size: int = 64) -> dict[str, bytes]:
    """Image files that must decode: gray, RGB, RGBA, 16-bit, palette, JPEG named .png."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (size, size), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(gray).save(jpeg, format="JPEG")
    palette = Image.fromarray(gray).convert("P")
    pal = io.BytesIO()
    palette.save(pal, format="PNG")
    sixteen = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 200).save(sixteen, format="PNG")
    return {
        "gray.png": png(gray),
        "rgb.png": png(np.stack([gray] * 3, axis=-1)),
        "rgba.png": png(np.dstack([gray, gray, gray, np.full_like(gray, 255)])),
        "sixteen.png": sixteen.getvalue(),
        "palette.png": pal.getvalue(),
        "jpeg_named.png": jpeg.getvalue(),
    }


def bomb_png() -> bytes:
    """A small file that claims 12000 x 12000 pixels (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")
    return buffer.getvalue()


def broken_variants() -> dict[str, bytes]:
    """Files that must become error rows: empty, truncated, corrupt, non-image, bomb."""
    good = png(np.full((64, 64), 128, np.uint8))
    return {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "notes.png": b"this is a text file, not an image\n",
        "bomb.png": bomb_png(),
    }


def write_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def write_tar(path: Path, files: dict[str, bytes], prefix: str = "images/") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
