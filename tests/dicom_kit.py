"""Builders of real DICOM files (pydicom, dcmtk) from the same pixels as a PNG, for the tests.

Every file carries planted PHI in each element that must never leave medai (:data:`PHI`), so
any test can search its outputs for those values.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np

# Values planted in every element that must never reach an output (searched for verbatim).
PHI = {
    "PatientName": "Zyxwortel^Quirina",
    "PatientID": "PID-7734-QX",
    "PatientBirthDate": "19310417",
    "AccessionNumber": "ACC99118822",
    "InstitutionName": "Saint Hypothetica Infirmary",
    "InstitutionAddress": "17 Vexillum Lane Marrowtown",
    "ReferringPhysicianName": "Drumblewick^Oswin",
    "PerformingPhysicianName": "Pellucid^Ariadne",
    "StudyDate": "19990823",
    "SeriesDate": "19990824",
    "AcquisitionDate": "19990825",
    "ContentDate": "19990826",
    "StudyTime": "134711.250",
    "SeriesTime": "134812.375",
    "DeviceSerialNumber": "SN-QQ-4471902",
}
NATIVE = {
    "implicit": "1.2.840.10008.1.2",
    "explicit": "1.2.840.10008.1.2.1",
    "deflated": "1.2.840.10008.1.2.1.99",
}
# Compressed by pydicom's own encoders.
ENCODED = {
    "rle": "1.2.840.10008.1.2.5",
    "jpegls": "1.2.840.10008.1.2.4.80",
    "jpegls-near": "1.2.840.10008.1.2.4.81",
    "j2k": "1.2.840.10008.1.2.4.90",
    "j2k-lossy": "1.2.840.10008.1.2.4.91",
}
# Compressed by dcmtk's dcmcjpeg (pydicom has no JPEG encoder).
DCMCJPEG = {
    "jpeg-baseline": ("1.2.840.10008.1.2.4.50", ["+eb", "+q", "95"]),
    "jpeg-extended": ("1.2.840.10008.1.2.4.51", ["+ee", "+q", "95"]),
    "jpeg-lossless": ("1.2.840.10008.1.2.4.57", ["+el", "+sv", "1"]),
    "jpeg-sv1": ("1.2.840.10008.1.2.4.70", ["+e1"]),
}
LOSSY = ("jpegls-near", "j2k-lossy", "jpeg-baseline", "jpeg-extended")
SYNTAXES = (*NATIVE, *ENCODED, *DCMCJPEG)
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SR_DOCUMENT = "1.2.840.10008.5.1.4.1.1.88.22"


def phantom_pixels(size: int = 72, seed: int = 0, bits: int = 8) -> np.ndarray:
    """A phantom radiograph spanning its full range (0 .. 2**bits - 1), 2-D."""
    from medai.phantoms import PhantomSpec, render_phantom

    spec = PhantomSpec(n_patients=1, size=size, seed=seed)
    pixels = render_phantom(np.random.default_rng(seed), size, True, spec).astype(np.float64)
    pixels = (pixels - pixels.min()) / max(1.0, pixels.max() - pixels.min())
    top = 2**bits - 1
    return np.rint(pixels * top).astype(np.uint8 if bits <= 8 else np.uint16)


def png_bytes(pixels: np.ndarray) -> bytes:
    """The PNG twin of ``pixels`` (8-bit L, or 16-bit I;16)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def dataset(
    pixels: np.ndarray | None,
    bits_stored: int | None = None,
    modality: str | None = None,
    sop_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
    **attrs,
):
    """A CR dataset of ``pixels`` (``None``: an SR without pixel data), explicit VR LE,
    with :data:`PHI` planted."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE if pixels is not None else SR_DOCUMENT
    ds.SOPInstanceUID = sop_uid or new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = NATIVE["explicit"]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID = new_uid()
    ds.Modality = modality or ("CR" if pixels is not None else "SR")
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.ViewPosition = "PA"
    ds.Manufacturer = "Acme Imaging"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def to_bytes(ds, syntax: str = "explicit", preamble: bool = True) -> bytes:
    """The file of ``ds`` in one of :data:`SYNTAXES` (``preamble=False``: bare dataset)."""
    import copy

    ds = copy.deepcopy(ds)
    if syntax in DCMCJPEG:
        return _dcmcjpeg(to_bytes(ds, "explicit"), *DCMCJPEG[syntax])
    if syntax in ENCODED:
        options = {"jpegls-near": {"jls_error": 2}, "j2k-lossy": {"j2k_psnr": [50]}}
        # The same instance UID, so that tests can follow the instance (pydicom gives a lossy
        # copy a new one by default, as the standard asks of a real archive).
        ds.compress(ENCODED[syntax], generate_instance_uid=False, **options.get(syntax, {}))
    else:
        ds.file_meta.TransferSyntaxUID = NATIVE[syntax]
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def _dcmcjpeg(data: bytes, uid: str, options: list[str]) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        source.write_bytes(data)
        subprocess.run(["dcmcjpeg", *options, str(source), str(target)], check=True)
        out = target.read_bytes()
    assert uid.encode() in out[:1024], f"dcmcjpeg did not write {uid}"
    return out


def write_dicoms(folder: Path, files: dict[str, bytes]) -> list[Path]:
    """Write ``name -> bytes`` into ``folder`` and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths
