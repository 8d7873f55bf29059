"""DICOM inputs: recognising them, reading their headers, and decoding a radiograph's grey values.

One decoder for every caller: :func:`medai.images.decode_image` hands DICOM bytes to
:func:`decode_dicom`, so training, scoring, prediction, report thumbnails and Grad-CAM read a
DICOM file the same way. Grey values follow the standard's order (PS3.3 C.11) with
``pydicom.pixels``: stored values (Bits Stored honoured) -> Modality LUT (Rescale
Slope/Intercept or a Modality LUT Sequence) -> VOI (a VOI LUT Sequence, else the first Window
Center/Width with its VOI LUT Function, else the data's own range: :func:`voi_source` says which)
-> MONOCHROME1 inverted -> ``uint8`` -> resized exactly as a PNG is
(:func:`medai.images.resize_luminance`), so a PNG and a DICOM of the same pixels give the same
model input.

Headers are read first, without pixels (``stop_before_pixels``): :func:`read_header` gives the
few fields medai may write (:class:`DicomHeader`) and never a name, an ID, a date or an
institution. What is not a chest radiograph is sorted by :func:`skip_reason` (no pixel data,
another modality: skipped and counted) and by :func:`decode_dicom` (multi-frame, colour: decode
errors, since they claim to be radiographs). Every error text is built here from fixed words and
numbers, never from a header value, so no PHI reaches an error row.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medai.dicom_codecs import codec_problem, missing_codecs, stored_values
from medai.images import ImageError
from medai.luminance import resize_luminance
from medai.pseudonyms import pseudonym  # re-exported: the interface names it here

__all__ = [
    "DICOM_SUFFIXES",
    "DEFAULT_MODALITIES",
    "DicomHeader",
    "looks_like_dicom",
    "is_dicomdir",
    "is_dicom_name",
    "is_dicom_file",
    "extensionless",
    "decode_headerless",
    "read_header",
    "skip_reason",
    "decode_dicom",
    "grey_values",
    "voi_source",
    "parse_age",
    "pseudonym",
    "codec_problem",
    "missing_codecs",
]

logger = logging.getLogger("medai.dicom")

DICOM_SUFFIXES = (".dcm", ".dicom")
DEFAULT_MODALITIES = ("CR", "DX")
MAGIC = b"DICM"
_PIXEL_TAGS = (
    b"\xe0\x7f\x10\x00",  # (7FE0,0010) Pixel Data, little endian
    b"\xe0\x7f\x08\x00",  # (7FE0,0008) Float Pixel Data
    b"\xe0\x7f\x09\x00",  # (7FE0,0009) Double Float Pixel Data
    b"\x7f\xe0\x00\x10",  # Pixel Data, big endian
)
_DEFLATED = "1.2.840.10008.1.2.1.99"
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_GREY = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class DicomHeader:
    """What medai takes from a DICOM header: identity and the columns it may write.

    No name, patient ID, birth date, accession number, institution, physician, date or device
    serial is held here. ``patient`` is a keyed pseudonym of the Patient ID, present only when
    a site key was given to :func:`read_header` (see :mod:`medai.pseudonyms`).
    """

    sop_instance_uid: str
    study_id: str | None = None
    series_uid: str | None = None
    modality: str | None = None
    sex: str | None = None
    age: float | None = None
    view: str | None = None
    manufacturer: str | None = None
    transfer_syntax: str | None = None
    photometric: str | None = None
    frames: int = 1
    samples: int = 1
    has_pixels: bool = False
    bits_stored: int = 8
    width: int = 0
    height: int = 0
    patient: str | None = None

    def metadata(self) -> dict:
        """The prediction row's header columns (see :mod:`medai.predictions`)."""
        return {
            "study_id": self.study_id,
            "sex": self.sex,
            "age": self.age,
            "view": self.view,
            "modality": self.modality,
            "manufacturer": self.manufacturer,
        }


def looks_like_dicom(name: str, head: bytes) -> bool:
    """True for a ``.dcm``/``.dicom`` name or bytes with ``DICM`` at 128; never a ``DICOMDIR``."""
    if is_dicomdir(name):
        return False
    return name.lower().endswith(DICOM_SUFFIXES) or head[128:132] == MAGIC


def is_dicomdir(name: str) -> bool:
    """True for a DICOMDIR: an index of a DICOM media's files, not an image."""
    return name.replace("\\", "/").rsplit("/", 1)[-1].upper() == "DICOMDIR"


def is_dicom_name(name: str) -> bool:
    """A DICOM file by its name alone (``.dcm``/``.dicom``; a ``DICOMDIR`` never is)."""
    return not is_dicomdir(name) and name.lower().endswith(DICOM_SUFFIXES)


def extensionless(name: str) -> bool:
    """A file name without extension (other than ``DICOMDIR``): DICOM if its bytes say so."""
    base = name.rsplit("/", 1)[-1]
    return "." not in base and not is_dicomdir(base)


def is_dicom_file(filesystem, path: str) -> bool:
    """A DICOM file found in a folder: by suffix, or without extension with ``DICM`` at 128."""
    if is_dicom_name(path):
        return True
    if not extensionless(path):
        return False
    try:
        with filesystem.open_input_file(path) as handle:
            return handle.read(132)[128:132] == MAGIC
    except OSError:
        return False


def decode_headerless(data: bytes, size: int) -> np.ndarray | None:
    """A DICOM dataset without preamble and file meta (old exports), decoded; ``None`` if the
    bytes do not parse as a dataset with pixel data (the caller's own error then stands)."""
    try:
        header = read_header(data)
    except ImageError:
        return None
    return decode_dicom(data, size) if header.has_pixels else None


def _parse(data: bytes, stop_before_pixels: bool):
    """``(dataset, offset where reading stopped)``; files without preamble/meta read forced.

    Raises:
        ImageError: If the bytes are not a DICOM dataset.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not data:
        raise ImageError("empty file")
    handle = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every oddity of real files
        try:
            try:
                dataset = pydicom.dcmread(handle, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                handle.seek(0)
                dataset = pydicom.dcmread(handle, stop_before_pixels=stop_before_pixels, force=True)
        except Exception as exc:  # pydicom raises many types; the text may quote values
            raise ImageError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    if "SOPInstanceUID" not in dataset and "Rows" not in dataset:
        raise ImageError("not a DICOM file: no SOP Instance UID and no image")
    _infer_syntax(dataset)
    return dataset, handle.tell()


def _infer_syntax(dataset) -> None:
    """Give a dataset read without file meta the transfer syntax it was read in."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = dataset.original_encoding
    if meta is None:
        dataset.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _text(dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def parse_age(text: str | None) -> float | None:
    """Patient's Age in years: ``045Y``, ``045M``, ``012W``, ``003D`` and the bare ``45``."""
    match = _AGE.match(text or "")
    if not match:
        return None
    return round(float(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()], 3)


def read_header(data: bytes, key: bytes | Callable[[], bytes] | None = None) -> DicomHeader:
    """The header of a DICOM file, read without its pixel data.

    Args:
        data: The file's bytes (with or without the preamble and file meta).
        key: A site key, or a function giving it (called only for a Patient ID); with it,
            ``patient`` is the keyed pseudonym of the Patient ID.

    Raises:
        ImageError: ``kind="decode"`` if the bytes are not a DICOM dataset.
    """
    dataset, stopped = _parse(data, stop_before_pixels=True)
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    sex = (_text(dataset, "PatientSex") or "").upper()[:1]
    patient_id = _text(dataset, "PatientID")
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    uid = _text(dataset, "SOPInstanceUID")
    if uid is None:
        raise ImageError("DICOM file without a SOP Instance UID")
    return DicomHeader(
        sop_instance_uid=uid,
        study_id=_text(dataset, "StudyInstanceUID"),
        series_uid=_text(dataset, "SeriesInstanceUID"),
        modality=(_text(dataset, "Modality") or "").upper() or None,
        sex=sex if sex in ("M", "F") else None,
        age=parse_age(_text(dataset, "PatientAge")),
        view=(_text(dataset, "ViewPosition") or "").upper() or None,
        manufacturer=_text(dataset, "Manufacturer"),
        transfer_syntax=str(syntax) if syntax else None,
        photometric=_text(dataset, "PhotometricInterpretation"),
        frames=frames,
        samples=int(dataset.get("SamplesPerPixel") or 1),
        has_pixels=_has_pixels(data, stopped, str(syntax or "")),
        bits_stored=int(dataset.get("BitsStored") or 8),
        width=int(dataset.get("Columns") or 0),
        height=int(dataset.get("Rows") or 0),
        patient=pseudonym(patient_id, key() if callable(key) else key)
        if key and patient_id
        else None,
    )


def _has_pixels(data: bytes, stopped: int, syntax: str) -> bool:
    """Whether reading without pixels stopped at a pixel data element.

    A deflated dataset stops inside its inflated stream, so it is read whole to know.
    """
    if syntax == _DEFLATED:
        dataset, _ = _parse(data, stop_before_pixels=False)
        return any(tag in dataset for tag in ("PixelData", "FloatPixelData"))
    return data[stopped : stopped + 4] in _PIXEL_TAGS


def skip_reason(header: DicomHeader, modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> str:
    """Why an instance is not an image of the task (skipped and counted), or ``""``.

    Instances of other modalities than ``modalities`` are skipped, those without pixel data
    (SR, KO, PR) said apart: they are not chest radiographs. A CR/DX instance is never skipped:
    it claims to be a radiograph, so :func:`decode_dicom` makes one without pixel data (a
    truncated file), with several frames or in colour an error row.
    """
    if modalities and header.modality not in modalities:
        return (
            "no pixel data" if not header.has_pixels else f"modality {header.modality or 'missing'}"
        )
    return ""


def decode_dicom(data: bytes, size: int) -> np.ndarray:
    """Decode a DICOM radiograph into the model's input: ``uint8`` of shape ``(size, size, 1)``.

    Raises:
        ImageError: ``kind="decode"`` for bytes that are not DICOM, no pixel data, several
            frames, colour, a syntax without codec, or pixel data that does not decode; the
            reason is a fixed one-line text that holds no header value.
    """
    from PIL import Image

    from medai.images import MAX_PIXELS

    header = read_header(data)
    if not header.has_pixels:
        raise ImageError("DICOM instance without pixel data (not an image, or truncated)")
    if header.frames > 1:
        raise ImageError(f"multi-frame DICOM ({header.frames} frames): not a radiograph")
    if header.samples != 1 or header.photometric not in _GREY:
        raise ImageError("colour DICOM (not MONOCHROME1/2): not a radiograph")
    if problem := codec_problem(header.transfer_syntax, header.bits_stored):
        raise ImageError(problem)
    dataset, _ = _parse(data, stop_before_pixels=False)
    rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
    if rows * columns > MAX_PIXELS:
        raise ImageError(f"image too large ({columns}x{rows} pixels)")
    grey = grey_values(dataset)
    if header.bits_stored <= 8:
        return resize_luminance(Image.fromarray(grey.astype(np.uint8)), size)
    # Deeper data is resized before it is truncated to 8 bits, as a 16-bit PNG is.
    small = Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(small), 0, 255).astype(np.uint8).reshape(size, size, 1)


def grey_values(dataset) -> np.ndarray:
    """A decoded dataset's display grey values, full-size 2-D ``float32`` in 0-255 (see the
    module doc); the caller truncates them to ``uint8``, as a 16-bit PNG's are.

    Raises:
        ImageError: If the pixel data does not decode.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            stored = stored_values(dataset)
        except Exception as exc:  # decoders raise many types; their texts hold no header value
            raise ImageError(f"DICOM pixel data does not decode: {type(exc).__name__}") from exc
        if stored.ndim != 2:
            raise ImageError(f"DICOM pixel data of shape {stored.shape}: not one grey frame")
        values = apply_modality_lut(_masked(stored, dataset), dataset)
        source = voi_source(dataset)
        try:
            shown = apply_voi_lut(values, dataset, prefer_lut=True) if source != "range" else values
        except (ValueError, IndexError, TypeError) as exc:
            raise ImageError(f"DICOM VOI attributes unusable: {type(exc).__name__}") from exc
    low, high = _output_range(dataset, source, np.asarray(shown))
    logger.debug("DICOM VOI from %s, output range %g..%g", source, low, high)
    scaled = (np.asarray(shown, dtype=np.float32) - np.float32(low)) * np.float32(
        255.0 / (high - low if high > low else 1.0)
    )
    grey = np.clip(scaled, 0, 255)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1: the lowest value is white
    return grey


def _masked(stored: np.ndarray, dataset) -> np.ndarray:
    """Stored values with the bits above Bits Stored cleared (unsigned pixel data)."""
    bits = int(dataset.get("BitsStored") or 0)
    if dataset.get("PixelRepresentation", 0) == 0 and 0 < bits < stored.dtype.itemsize * 8:
        return stored & np.asarray((1 << bits) - 1, dtype=stored.dtype)
    return stored


def voi_source(dataset) -> str:
    """Which VOI a dataset's grey values take: ``"lut"`` (VOI LUT Sequence), ``"window"``
    (the first Window Center/Width, with its VOI LUT Function) or ``"range"`` (neither: the
    data's own range)."""
    if dataset.get("VOILUTSequence"):
        return "lut"
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        return "window"
    return "range"


def _output_range(dataset, source: str, shown: np.ndarray) -> tuple[float, float]:
    """The range the VOI maps into (PS3.3 C.11.2), or the data's own for ``"range"``."""
    if source == "lut":
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if source == "range":
        return float(shown.min()), float(shown.max())
    bits = int(dataset.BitsStored)
    if dataset.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif dataset.get("PixelRepresentation", 0) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None and not dataset.get("ModalityLUTSequence"):
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return low, high
