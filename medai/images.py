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
from typing import NamedTuple

import numpy as np

from medai.image_errors import ERROR_KINDS, ImageError, error_kind
from medai.luminance import (
    HIGH_DEPTH_MODES,
    high_depth_to_luminance,
    resize_luminance,
    to_luminance,
)

__all__ = [
    "ARCHIVE_SEP",
    "IMAGE_SUFFIXES",
    "MAX_BYTES",
    "ERROR_KINDS",
    "ImageError",
    "ImageInputs",
    "ArchiveMember",
    "discover_images",
    "image_size_of",
    "read_bytes",
    "iter_members",
    "iter_archive",
    "archive_error",
    "decode_image",
    "resize_luminance",
    "image_id_of",
    "error_kind",
]

ARCHIVE_SEP = "::"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_MAGIC = b"DICM"  # at byte 128 of a DICOM file with its preamble (see medai.dicom)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
LIST_SUFFIXES = (".txt", ".lst")
# NIH's split lists name images inside the tarballs (by Image Index), not files to read.
NIH_SPLIT_LISTS = ("train_val_list.txt", "test_list.txt")
# NIH images are 1024x1024; 50 Mpx leaves room for any radiograph and refuses decompression bombs.
MAX_PIXELS = 50_000_000
# A file or archive member above this is refused from its size alone, before any byte is read:
# NIH PNGs are under 1 MiB, and a hostile input must not decide how much memory a worker takes.
MAX_BYTES = 256 * 1024 * 1024


def _too_large(size: int, max_bytes: int) -> ImageError:
    return ImageError(f"file too large ({size} bytes; the limit is {max_bytes})", kind="decode")


def archive_error(exc: BaseException) -> ImageError:
    """The error row of an archive that could not be read to its end (a read error)."""
    return ImageError(f"unreadable archive: {type(exc).__name__}: {exc}", kind="read")


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


def discover_images(paths: Iterable[str], listed: bool = False) -> ImageInputs:
    """Resolve ``--images`` arguments into archives and single image files.

    A folder is walked recursively for images and tarballs; a ``.txt``/``.lst`` file is a list
    of sources, one per line; anything else is taken as one image (so a named file that is not
    an image still gets its row, with an error, when scored). A source of a list that does not
    exist (yet: a sync in progress) is kept, so that it gets a read-error row, retried by the
    next run, instead of stopping the whole job.

    Args:
        paths: Local paths or URIs.
        listed: The paths come from a list file (missing ones are kept, not refused).

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
        if info.type == pafs.FileType.NotFound and listed:
            files.append(given if _is_uri(given) else path)  # its row says it cannot be read
            continue
        if info.type == pafs.FileType.NotFound:
            raise ImageError(f"--images: no such file or folder: {given}", kind="read")
        if info.type == pafs.FileType.Directory:
            found_archives, found_files = _walk(filesystem, given, path)
            archives.extend(found_archives)
            files.extend(found_files)
        elif _suffix_in(path, ARCHIVE_SUFFIXES):
            archives.append(given if _is_uri(given) else path)
        elif _suffix_in(path, LIST_SUFFIXES):
            if PurePosixPath(path).name in NIH_SPLIT_LISTS:
                raise ImageError(
                    f"--images {given} is an NIH split list: it names images inside the "
                    "tarballs, not files to read. Give the folder of the tarballs; the report's "
                    "--split test evaluates the test list's images",
                    kind="read",
                )
            nested = discover_images(_listed_sources(given, path, filesystem), listed=True)
            archives.extend(nested.archives)
            files.extend(nested.files)
        else:
            files.append(given if _is_uri(given) else path)
    # The same file named twice (e.g. a folder and a file in it) is read once.
    return ImageInputs(tuple(dict.fromkeys(archives)), tuple(dict.fromkeys(files)))


def _walk(filesystem, given: str, path: str) -> tuple[list[str], list[str]]:
    """The archives and image files under a folder (recursive, sorted, hidden ones left out);
    DICOM files by suffix or, without extension, by ``DICM`` at byte 128."""
    from pyarrow import fs as pafs

    from medai.dicom import is_dicom_file

    archives, files = [], []
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    for entry in sorted(found, key=lambda e: e.path):
        if entry.type != pafs.FileType.File or PurePosixPath(entry.path).name.startswith("."):
            continue
        source = _join_source(given, path, entry.path)
        if _suffix_in(entry.path, ARCHIVE_SUFFIXES):
            archives.append(source)
        elif _suffix_in(entry.path, IMAGE_SUFFIXES) or is_dicom_file(filesystem, entry.path):
            files.append(source)
    return archives, files


def _join_source(given: str, root: str, found: str) -> str:
    """Express a path found under ``root`` in the same form (path or URI) as ``given``."""
    if not _is_uri(given):
        return found
    scheme = given.split("://", 1)[0]
    return f"{scheme}://{found}" if scheme != "file" else f"file://{found}"


def _listed_sources(given: str, path: str, filesystem) -> list[str]:
    """A list file's sources; a relative one is relative to the list's folder (not the cwd)."""
    with filesystem.open_input_stream(path) as handle:
        text = handle.read().decode("utf-8")
    lines = [line.strip() for line in text.splitlines()]
    sources = [line for line in lines if line and not line.startswith("#")]
    folder = str(PurePosixPath(path).parent)
    return [
        source
        if _is_uri(source) or PurePosixPath(source).is_absolute()
        else _join_source(given, folder, f"{folder}/{source}")
        for source in sources
    ]


def image_id_of(source: str) -> str:
    """The image id of a source: its file name (the NIH ``Image Index``)."""
    return PurePosixPath(source.split(ARCHIVE_SEP, 1)[-1]).name


def read_bytes(source: str, max_bytes: int = MAX_BYTES) -> bytes:
    """Read one image's bytes, from a file, a URI or an archive member.

    Archive members are found by streaming the archive up to the member: fine for a handful
    of images (thumbnails, single predictions); batch jobs use :func:`iter_members` instead.

    Args:
        source: Path, URI or ``ARCHIVE::MEMBER``.
        max_bytes: Larger files are refused from their size, without reading them.

    Raises:
        ImageError: ``kind="read"`` if the file or member cannot be read, ``kind="decode"``
            if it is larger than ``max_bytes``.
    """
    if ARCHIVE_SEP in source:
        import lzma
        import zlib

        from pyarrow import ArrowException

        archive, member = source.split(ARCHIVE_SEP, 1)
        try:
            for found in iter_members(archive, wanted={member}, max_bytes=max_bytes):
                if found.name == member:
                    if found.error is not None:
                        raise found.error
                    return found.data
        except ImageError:
            raise
        # What the filesystem, pyarrow, tarfile and its decompressors raise on a missing,
        # truncated or corrupt archive; anything else is a bug and keeps its traceback.
        except (
            OSError,
            EOFError,
            tarfile.TarError,
            zlib.error,
            lzma.LZMAError,
            ArrowException,
        ) as exc:
            raise archive_error(exc) from exc
        raise ImageError(f"{member} not found in {archive}", kind="read")
    filesystem, path = _filesystem(source)
    try:
        # A random-access handle knows its size before any byte is read (one stat, or the
        # HEAD request an object store needs anyway).
        with filesystem.open_input_file(path) as handle:
            size = handle.size()
            if size > max_bytes:
                raise _too_large(size, max_bytes)
            return handle.read()
    except ImageError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {source}: {exc}", kind="read") from exc


class ArchiveMember(NamedTuple):
    """An image member of a tarball: its bytes, or why they were not read."""

    name: str
    data: bytes
    error: ImageError | None


def iter_members(
    archive: str, wanted: set[str] | None = None, max_bytes: int = MAX_BYTES
) -> Iterator[ArchiveMember]:
    """Stream the image members of a tarball, in archive order, never extracting it.

    Images are PNG/JPEG by suffix and DICOM (``.dcm``/``.dicom``, or no extension and
    ``DICM`` at byte 128); an extensionless member without it is not an image and left out.

    A member larger than ``max_bytes`` (by its header) comes with a decode-kind error and no
    bytes: its data is skipped over in the stream, never held in memory.

    Args:
        archive: Path or URI of a ``.tar``, ``.tar.gz`` or ``.tgz``.
        wanted: If given, only members whose name or image id is in this set are read.
        max_bytes: Size cap per member.

    Raises:
        Exception: Whatever the filesystem, ``tarfile`` or ``zlib`` raise on an unreadable or
            truncated archive, after the members read before the fault.
    """
    from medai.dicom import extensionless, is_dicom_name

    filesystem, path = _filesystem(archive)
    with filesystem.open_input_stream(path) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        for member in tar:
            # A DICOM member's id is inside it (its SOP Instance UID): `wanted` cannot name it.
            dicom = is_dicom_name(member.name) or extensionless(member.name)
            if not member.isfile() or not (_suffix_in(member.name, IMAGE_SUFFIXES) or dicom):
                continue
            if (
                wanted is not None
                and not dicom
                and member.name not in wanted
                and image_id_of(member.name) not in wanted
            ):
                continue
            if member.size > max_bytes:
                yield ArchiveMember(member.name, b"", _too_large(member.size, max_bytes))
                continue
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            if not dicom or is_dicom_name(member.name) or data[128:132] == DICOM_MAGIC:
                yield ArchiveMember(member.name, data, None)


def iter_archive(
    archive: str, wanted: set[str] | None = None, max_bytes: int = MAX_BYTES
) -> Iterator[tuple[str, bytes]]:
    """Stream ``(member name, bytes)`` of the image members of a tarball, in archive order.

    Members above ``max_bytes`` are left out; :func:`iter_members` reports them.

    Args:
        archive: Path or URI of a ``.tar``, ``.tar.gz`` or ``.tgz``.
        wanted: If given, only members whose name or image id is in this set are read.
        max_bytes: Size cap per member.
    """
    for member in iter_members(archive, wanted, max_bytes):
        if member.error is None:
            yield member.name, member.data


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes into the model's input: ``uint8`` array of shape ``(size, size, 1)``.

    DICOM bytes (``DICM`` at byte 128, or a dataset without preamble that parses with pixel
    data) go to :func:`medai.dicom.decode_dicom`, the one DICOM decoder. Grayscale, RGB, RGBA,
    palette, 16-bit PNG and JPEG (whatever the file is named) are accepted; colour is
    collapsed to luminance because radiographs carry one channel.
    16-bit images are scaled by their own maximum so that the full range maps to 0-255; they
    are resized before scaling, so no full-size copy beyond the decoded image is made.

    Raises:
        ImageError: ``kind="decode"``, on empty, truncated, corrupt, non-image or oversized
            input; the reason is the same text for the same fault every time.
    """
    from PIL import Image

    if not data:
        raise ImageError("empty file")
    if data[128:132] == DICOM_MAGIC:
        from medai.dicom import decode_dicom

        return decode_dicom(data, size)
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
    except Image.UnidentifiedImageError as exc:
        # Old DICOM exports lack the preamble and file meta: read as DICOM if they parse so.
        from medai.dicom import decode_headerless

        if (dicom := decode_headerless(data, size)) is not None:
            return dicom
        # PIL's text names the BytesIO object by its memory address: different every run.
        raise ImageError("not a decodable image: unrecognised image format") from exc
    except Exception as exc:  # PIL raises many types for bad data; all mean "not an image"
        raise ImageError(f"not a decodable image: {type(exc).__name__}: {exc}") from exc
    if image.mode in HIGH_DEPTH_MODES:
        image = high_depth_to_luminance(image, size)
    else:
        image = to_luminance(image)
    return resize_luminance(image, size)


def image_size_of(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of encoded image bytes, from the header alone.

    Raises:
        ImageError: If the bytes are not an image.
    """
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).size
    except Exception as exc:  # as decode_image: every PIL failure means "not an image"
        from medai.dicom import read_header  # DICOM (with or without preamble): its header

        try:
            header = read_header(data)
        except ImageError:
            raise ImageError(f"not a decodable image: {type(exc).__name__}") from exc
        return header.width, header.height
