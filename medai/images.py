"""Image inputs: discovering them, reading their bytes in place, and the one preprocessing step.

An image is named by a *source* string: a local path, a URI (``file://``, ``s3://``, ``gs://``,
read through pyarrow filesystems), or ``ARCHIVE::MEMBER`` for a member of a tarball, which is
read by streaming the archive, never by extracting it to disk.

:func:`decode_image` is the single preprocessing function shared by training, scoring and
single-image prediction: decode, collapse to one luminance channel, resize to the model's input
size, as ``uint8``. The model itself repeats the channel to RGB and applies InceptionV3's input
scaling (see :mod:`medai.model`), so a batch crosses process boundaries 12x smaller than
float32 RGB and no caller can forget a step.
"""

from __future__ import annotations

import io
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from medai.errors import MedaiError

__all__ = [
    "ARCHIVE_SEP",
    "IMAGE_SUFFIXES",
    "ImageError",
    "ImageInputs",
    "discover_images",
    "read_bytes",
    "iter_archive",
    "decode_image",
    "image_id_of",
]

ARCHIVE_SEP = "::"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
LIST_SUFFIXES = (".txt", ".lst")
# NIH images are 1024x1024; 50 Mpx leaves room for any radiograph and refuses decompression bombs.
MAX_PIXELS = 50_000_000


class ImageError(MedaiError, ValueError):
    """An input is not a usable image; the message is a one-line reason."""


@dataclass(frozen=True)
class ImageInputs:
    """The image inputs named on a command line, resolved to archives and single files.

    Attributes:
        archives: Tarball sources, each streamed as a whole.
        files: Single-image sources (paths or URIs).
    """

    archives: tuple[str, ...] = ()
    files: tuple[str, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        """True when no archive and no file was found."""
        return not self.archives and not self.files


def _is_uri(text: str) -> bool:
    return "://" in text


def _filesystem(source: str):
    """Return ``(pyarrow filesystem, path)`` for a local path or URI."""
    from pyarrow import fs as pafs

    if _is_uri(source):
        return pafs.FileSystem.from_uri(source)
    return pafs.LocalFileSystem(), str(Path(source).resolve())


def _suffix_in(name: str, suffixes: Iterable[str]) -> bool:
    return name.lower().endswith(tuple(suffixes))


def discover_images(paths: Iterable[str]) -> ImageInputs:
    """Resolve ``--images`` arguments into archives and single image files.

    A folder is walked recursively for images and tarballs; a ``.txt``/``.lst`` file is a list
    of sources, one per line; anything else is taken as one image (so a named file that is not
    an image still gets its row, with an error, when scored).

    Args:
        paths: Local paths or URIs.

    Returns:
        The archives and files found, each sorted for a reproducible order.

    Raises:
        ImageError: If a named path does not exist.
    """
    from pyarrow import fs as pafs

    archives: list[str] = []
    files: list[str] = []
    for given in paths:
        filesystem, path = _filesystem(given)
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ImageError(f"--images: no such file or folder: {given}")
        if info.type == pafs.FileType.Directory:
            found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
            for entry in sorted(found, key=lambda e: e.path):
                if entry.type != pafs.FileType.File or PurePosixPath(entry.path).name.startswith(
                    "."
                ):
                    continue
                source = _join_source(given, path, entry.path)
                if _suffix_in(entry.path, ARCHIVE_SUFFIXES):
                    archives.append(source)
                elif _suffix_in(entry.path, IMAGE_SUFFIXES):
                    files.append(source)
        elif _suffix_in(path, ARCHIVE_SUFFIXES):
            archives.append(given if _is_uri(given) else path)
        elif _suffix_in(path, LIST_SUFFIXES):
            nested = discover_images(_read_list(filesystem, path))
            archives.extend(nested.archives)
            files.extend(nested.files)
        else:
            files.append(given if _is_uri(given) else path)
    # The same file named twice (e.g. a folder and a file in it) is read once.
    return ImageInputs(tuple(dict.fromkeys(archives)), tuple(dict.fromkeys(files)))


def _join_source(given: str, root: str, found: str) -> str:
    """Express a path found under ``root`` in the same form (path or URI) as ``given``."""
    if not _is_uri(given):
        return found
    scheme = given.split("://", 1)[0]
    return f"{scheme}://{found}" if scheme != "file" else f"file://{found}"


def _read_list(filesystem, path: str) -> list[str]:
    with filesystem.open_input_stream(path) as handle:
        text = handle.read().decode("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def image_id_of(source: str) -> str:
    """The image id of a source: its file name (the NIH ``Image Index``)."""
    return PurePosixPath(source.split(ARCHIVE_SEP, 1)[-1]).name


def read_bytes(source: str) -> bytes:
    """Read one image's bytes, from a file, a URI or an archive member.

    Archive members are found by streaming the archive up to the member: fine for a handful
    of images (thumbnails, single predictions); batch jobs use :func:`iter_archive` instead.

    Raises:
        ImageError: If the file or member cannot be read.
    """
    if ARCHIVE_SEP in source:
        archive, member = source.split(ARCHIVE_SEP, 1)
        for name, data in iter_archive(archive, wanted={member}):
            if name == member:
                return data
        raise ImageError(f"{member} not found in {archive}")
    filesystem, path = _filesystem(source)
    try:
        with filesystem.open_input_stream(path) as handle:
            return handle.read()
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {source}: {exc}") from exc


def iter_archive(archive: str, wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """Stream ``(member name, bytes)`` of the image members of a tarball, in archive order.

    The archive is read sequentially from its filesystem (local or URI), never extracted.

    Args:
        archive: Path or URI of a ``.tar``, ``.tar.gz`` or ``.tgz``.
        wanted: If given, only members whose name or image id is in this set are read.
    """
    filesystem, path = _filesystem(archive)
    with filesystem.open_input_stream(path) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        for member in tar:
            if not member.isfile() or not _suffix_in(member.name, IMAGE_SUFFIXES):
                continue
            if (
                wanted is not None
                and member.name not in wanted
                and image_id_of(member.name) not in wanted
            ):
                continue
            handle = tar.extractfile(member)
            yield member.name, handle.read() if handle is not None else b""


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes into the model's input: ``uint8`` array of shape ``(size, size, 1)``.

    Grayscale, RGB, RGBA, palette, 16-bit PNG and JPEG (whatever the file is named) are
    accepted; colour is collapsed to luminance because radiographs carry one channel.
    16-bit images are scaled by their own maximum so that the full range maps to 0-255.

    Raises:
        ImageError: On empty, truncated, corrupt, non-image or oversized input.
    """
    from PIL import Image

    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"image too large ({image.width}x{image.height} pixels)")
            # draft() lets JPEG decode at reduced scale; reduce() is a cheap box filter.
            image.draft("L", (size, size))
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from exc
    except Exception as exc:  # PIL raises many types for bad data; all mean "not an image"
        raise ImageError(f"not a decodable image: {type(exc).__name__}: {exc}") from exc
    image = _to_luminance(image)
    factor = min(image.width, image.height) // (2 * size)
    if factor >= 2:
        image = image.reduce(factor)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(size, size, 1)


def _to_luminance(image):
    """Convert any PIL mode to 8-bit luminance ``L``."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max()) or 1.0
        return Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L")
