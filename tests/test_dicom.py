"""DICOM reading: every transfer syntax against the PNG of the same pixels, the grey-value chain
(Bits Stored, rescale, windows, VOI LUT, MONOCHROME1), headers, discovery, hostile files."""

from __future__ import annotations

import io
import tarfile

import dicom_kit as kit
import numpy as np
import pytest

from medai.dicom import (
    decode_dicom,
    grey_values,
    parse_age,
    read_header,
    skip_reason,
    voi_source,
)
from medai.images import ImageError, decode_image, discover_images, iter_members

SIZE = 64  # source images are 72-96 px: under twice the size, so no box reduce step
# Lossy syntaxes (JPEG q95, JPEG-LS NEAR=2, JPEG 2000 at 50 dB PSNR) change a few grey levels
# near edges: 50 dB is an RMS error of 0.8 levels and NEAR=2 bounds every stored value's error
# by 2, so the mean stays under 1.5 levels and no pixel moves more than a few.
LOSSY_MEAN, LOSSY_MAX = 1.5, 6


def _cases():
    for bits in (8, 12, 16):
        for syntax in kit.SYNTAXES:
            if syntax.startswith("jpeg") and bits == 16:
                continue  # JPEG processes carry at most 12 (lossy) or 16 bits; keep it short
            if syntax in ("jpeg-baseline", "jpeg-extended") and bits > 8:
                continue  # baseline is 8-bit only; 12-bit extended has no MIT/BSD decoder
            yield bits, syntax


@pytest.mark.parametrize(("bits", "syntax"), list(_cases()))
def test_every_syntax_decodes_to_the_png_twin(bits, syntax):
    pixels = kit.phantom_pixels(80, seed=bits, bits=bits)
    expected = decode_image(kit.png_bytes(pixels), SIZE)
    data = kit.to_bytes(kit.dataset(pixels, bits_stored=bits), syntax)
    decoded = decode_image(data, SIZE)
    assert decoded.dtype == np.uint8 and decoded.shape == (SIZE, SIZE, 1)
    diff = np.abs(decoded.astype(int) - expected.astype(int))
    if syntax in kit.LOSSY:
        assert diff.mean() <= LOSSY_MEAN and diff.max() <= LOSSY_MAX, (diff.mean(), diff.max())
    else:
        assert diff.max() <= 1


def test_twelve_bit_jpeg_extended_is_an_error_naming_the_syntax_and_the_fix():
    pixels = kit.phantom_pixels(72, bits=12)
    data = kit.to_bytes(kit.dataset(pixels, bits_stored=12), "jpeg-extended")
    with pytest.raises(ImageError) as caught:
        decode_image(data, SIZE)
    assert caught.value.kind == "decode"
    assert "JPEG Extended (1.2.840.10008.1.2.4.51)" in str(caught.value)
    assert "dcmdjpeg" in str(caught.value)


def test_no_preamble_and_no_file_meta_read_forced():
    pixels = kit.phantom_pixels(72)
    data = kit.to_bytes(kit.dataset(pixels), "implicit", preamble=False)
    assert data[128:132] != b"DICM"
    assert np.array_equal(decode_image(data, SIZE), decode_image(kit.png_bytes(pixels), SIZE))
    assert read_header(data).sop_instance_uid


def test_monochrome1_is_inverted():
    pixels = kit.phantom_pixels(72)
    ds = kit.dataset(pixels, PhotometricInterpretation="MONOCHROME1")
    expected = decode_image(kit.png_bytes(255 - pixels), SIZE)
    assert np.array_equal(decode_image(kit.to_bytes(ds), SIZE), expected)


def test_bits_above_bits_stored_are_masked():
    pixels = kit.phantom_pixels(72, bits=12)
    dirty = pixels | np.uint16(0xA000)  # junk in the 4 unused high bits (an overlay, say)
    clean = decode_image(kit.to_bytes(kit.dataset(pixels, bits_stored=12)), SIZE)
    assert np.array_equal(
        decode_image(kit.to_bytes(kit.dataset(dirty, bits_stored=12)), SIZE), clean
    )


def _windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window to 0-255, written out (the expected values)."""
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(scaled, 0, 255).astype(np.uint8)


def test_twelve_bit_window_with_rescale_follows_the_standard():
    pixels = kit.phantom_pixels(72, bits=12)
    # Rescale to "HU-like" units; the window is given in those units, as real files do.
    slope, intercept, center, width = 2.0, -1000.0, 2000.0, 4000.0
    ds = kit.dataset(
        pixels,
        bits_stored=12,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=center,
        WindowWidth=width,
    )
    assert voi_source(ds) == "window"
    expected = _windowed(pixels * slope + intercept, center, width)
    decoded = decode_image(kit.to_bytes(ds), SIZE)
    diff = np.abs(decoded.astype(int) - decode_image(kit.png_bytes(expected), SIZE))
    assert diff.max() <= 1


def test_first_of_several_windows_is_taken():
    pixels = kit.phantom_pixels(72, bits=12)
    ds = kit.dataset(
        pixels, bits_stored=12, WindowCenter=[1024.0, 3000.0], WindowWidth=[1024.0, 500.0]
    )
    expected = decode_image(kit.png_bytes(_windowed(pixels, 1024.0, 1024.0)), SIZE)
    assert np.abs(decode_image(kit.to_bytes(ds), SIZE).astype(int) - expected).max() <= 1


def test_voi_lut_sequence_wins_over_the_window():
    from pydicom.dataset import Dataset

    pixels = kit.phantom_pixels(72, bits=12)
    lut = np.rint(4095 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)  # a gamma curve
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: entries, first, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds = kit.dataset(
        pixels, bits_stored=12, VOILUTSequence=[item], WindowCenter=100.0, WindowWidth=10.0
    )
    assert voi_source(ds) == "lut"
    decoded = decode_image(kit.to_bytes(ds), SIZE)
    expected = decode_image(kit.png_bytes((lut[pixels] * (255 / 4095)).astype(np.uint8)), SIZE)
    assert np.abs(decoded.astype(int) - expected).max() <= 1


def test_without_voi_the_data_range_is_used():
    pixels = (kit.phantom_pixels(72, bits=8).astype(np.uint16) + 1000).astype(np.uint16)
    ds = kit.dataset(pixels, bits_stored=12)
    assert voi_source(ds) == "range"
    grey = grey_values(ds)
    assert grey.min() == 0 and grey.max() == 255


@pytest.mark.parametrize("name", ["6154", "6247", "6278"])
def test_pydicoms_bundled_cr_files_decode(name):
    """Real CR files (MONOCHROME1, 12-bit, windowed) shipped inside pydicom (offline)."""
    from pathlib import Path

    import pydicom

    found = list(Path(pydicom.__file__).parent.glob(f"data/test_files/dicomdirtests/**/{name}"))
    assert found, f"pydicom's bundled test file {name} is missing"
    data = found[0].read_bytes()
    header = read_header(data)
    assert header.modality == "CR" and header.photometric == "MONOCHROME1"
    image = decode_image(data, SIZE)
    assert image.shape == (SIZE, SIZE, 1) and image.std() > 5


def test_image_size_of_a_dicom_file():
    from medai.images import image_size_of

    pixels = kit.phantom_pixels(72)[:, :60]
    assert image_size_of(kit.to_bytes(kit.dataset(np.ascontiguousarray(pixels)))) == (60, 72)


def test_header_holds_the_row_columns_and_no_phi():
    ds = kit.dataset(kit.phantom_pixels(72))
    header = read_header(kit.to_bytes(ds))
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.study_id == ds.StudyInstanceUID
    assert (header.sex, header.age, header.view) == ("F", 45.0, "PA")
    assert (header.modality, header.manufacturer) == ("CR", "Acme Imaging")
    assert header.has_pixels and header.frames == 1 and header.patient is None
    text = repr(header)
    assert not [value for value in kit.PHI.values() if value in text]
    keyed = read_header(kit.to_bytes(ds), key=b"k" * 32)
    assert keyed.patient and kit.PHI["PatientID"] not in keyed.patient


@pytest.mark.parametrize(
    ("text", "years"),
    [("045Y", 45.0), ("006M", 0.5), ("45", 45.0), ("052W", 0.997), ("", None), ("abc", None)],
)
def test_patient_age_in_years(text, years):
    assert parse_age(text) == years


def _broken_files() -> dict[str, bytes]:
    good = kit.to_bytes(kit.dataset(kit.phantom_pixels(72)))
    ct = kit.to_bytes(kit.dataset(kit.phantom_pixels(72), modality="CT"))
    frames = kit.dataset(np.concatenate([kit.phantom_pixels(72)] * 2), NumberOfFrames=2)
    frames.Rows = 72
    colour = kit.dataset(kit.phantom_pixels(72))
    rgb = np.repeat(kit.phantom_pixels(72)[..., None], 3, axis=2)
    colour.SamplesPerPixel, colour.PhotometricInterpretation = 3, "RGB"
    colour.PlanarConfiguration, colour.PixelData = 0, rgb.tobytes()
    unknown = kit.dataset(kit.phantom_pixels(72))
    data = bytearray(kit.to_bytes(unknown))
    uid, fake = b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.1\x00"
    data[:400] = data[:400].replace(uid, fake)
    return {
        "truncated.dcm": good[: len(good) - 2000],
        "corrupt.dcm": good[:132] + bytes(range(256)) * 8,
        "empty.dcm": b"",
        "ct.dcm": ct,
        "multiframe.dcm": kit.to_bytes(frames),
        "colour.dcm": kit.to_bytes(colour),
        "unknown-syntax.dcm": bytes(data),
        "sr.dcm": kit.to_bytes(kit.dataset(None)),
    }


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.dcm", "does not decode"),
        ("corrupt.dcm", "DICOM"),
        ("empty.dcm", "empty file"),
        ("multiframe.dcm", "multi-frame DICOM (2 frames)"),
        ("colour.dcm", "colour DICOM"),
        ("unknown-syntax.dcm", "unsupported transfer syntax 1.2.3.4.5.6.7.8.9.1"),
        ("sr.dcm", "without pixel data"),
    ],
)
def test_hostile_files_raise_one_line_decode_errors(name, reason):
    with pytest.raises(ImageError) as caught:
        decode_dicom(_broken_files()[name], SIZE)
    assert caught.value.kind == "decode" and reason in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not [value for value in kit.PHI.values() if value in str(caught.value)]


def test_non_radiographs_are_sorted_by_skip_reason():
    files = _broken_files()
    assert skip_reason(read_header(files["sr.dcm"])) == "no pixel data"
    assert skip_reason(read_header(files["ct.dcm"])) == "modality CT"
    assert skip_reason(read_header(files["ct.dcm"]), ("CR", "DX", "CT")) == ""
    assert skip_reason(read_header(files["multiframe.dcm"])) == ""  # a decode error, not a skip


def test_discovery_finds_dicom_by_suffix_and_by_magic(tmp_path):
    dcm = kit.to_bytes(kit.dataset(kit.phantom_pixels(72)))
    kit.write_dicoms(
        tmp_path,
        {
            "a/one.dcm": dcm,
            "a/two.DICOM": dcm,
            "a/IM000001": dcm,  # no extension: found by DICM at byte 128
            "a/DICOMDIR": dcm,  # an index, never an image
            "a/README": b"not an image",
            "b/x.png": kit.png_bytes(kit.phantom_pixels(72)),
        },
    )
    found = discover_images([str(tmp_path)])
    names = sorted(path.rsplit("/", 1)[-1] for path in found.files)
    assert names == ["IM000001", "one.dcm", "two.DICOM", "x.png"]


def test_tarball_members_include_dicom(tmp_path):
    dcm = kit.to_bytes(kit.dataset(kit.phantom_pixels(72)))
    archive = tmp_path / "export.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in {
            "s/1.dcm": dcm,
            "s/IM2": dcm,
            "s/DICOMDIR": dcm,
            "s/notes": b"x",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [member.name for member in iter_members(str(archive), wanted={"nothing"})]
    assert members == ["s/1.dcm", "s/IM2"]
