"""DICOM codecs: which installed decoder reads a transfer syntax, and what to install when none.

Every codec medai installs is MIT/BSD: pydicom (uncompressed, deflated, RLE), ``pylibjpeg`` with
``pylibjpeg-openjpeg`` and ``pylibjpeg-rle``, ``python-gdcm`` (JPEG, JPEG-LS, JPEG 2000),
``pyjpegls`` and Pillow. ``pylibjpeg-libjpeg`` is GPL-3.0 and never installed: the one syntax
only it decodes, 12-bit JPEG Extended, gets an error naming the way out (dcmtk's ``dcmdjpeg``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["codec_problem", "missing_codecs", "stored_values", "warn_missing_codecs"]

# The package that decodes each compressed syntax (MIT/BSD; never GPL pylibjpeg-libjpeg).
_CODEC_PACKAGES = {
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline", "python-gdcm"),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended", "python-gdcm"),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", "python-gdcm"),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless SV1", "python-gdcm"),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", "pyjpegls or python-gdcm"),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near-Lossless", "pyjpegls or python-gdcm"),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", "pylibjpeg with pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", "pylibjpeg with pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "pylibjpeg with pylibjpeg-rle"),
}
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
_PREFERRED_PLUGINS = {"1.2.840.10008.1.2.4.50": "pillow"}


def codec_problem(syntax: str | None, bits_stored: int = 8) -> str:
    """The error text of a transfer syntax this installation cannot decode, or ``""``.

    12-bit JPEG Extended is named apart: python-gdcm and Pillow decode only its 8-bit form,
    and the one pylibjpeg plugin for it (pylibjpeg-libjpeg) is GPL-3.0, which medai does not
    install; dcmtk's ``dcmdjpeg`` converts such files to an uncompressed syntax medai reads.
    """
    from pydicom.pixels import get_decoder

    if not syntax:
        return ""
    if syntax == _JPEG_EXTENDED and bits_stored > 8:
        return (
            f"transfer syntax JPEG Extended ({syntax}) with 12-bit samples has no codec "
            "installed: convert with dcmtk's `dcmdjpeg in.dcm out.dcm` (or install the "
            "GPL-3.0 pylibjpeg-libjpeg yourself)"
        )
    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError, KeyError):
        return f"unsupported transfer syntax {syntax}: no decoder exists for it"
    if available:
        return ""
    name, package = _CODEC_PACKAGES.get(syntax, (syntax, "a pydicom pixel data plugin"))
    return f"transfer syntax {name} ({syntax}) needs a codec: install {package}"


def missing_codecs() -> list[str]:
    """One line per radiograph transfer syntax without an installed decoder (warned at start)."""
    return [text for text in map(codec_problem, _CODEC_PACKAGES) if text]


def warn_missing_codecs() -> None:
    """Warn, at the start of a job that reads images, of each syntax it cannot decode: such
    files become decode-error rows naming the package to install."""
    import logging

    for problem in missing_codecs():
        logging.getLogger("medai.dicom").warning("DICOM codec missing: %s", problem)


def stored_values(dataset) -> np.ndarray:
    """The stored values, by the fastest installed decoder of the syntax (pydicom's own
    order otherwise): Pillow decodes 8-bit JPEG baseline ~4x faster than GDCM here."""
    from pydicom.pixels import pixel_array

    syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
    plugin = _PREFERRED_PLUGINS.get(syntax, "")
    if plugin:
        try:
            return pixel_array(dataset, decoding_plugin=plugin)
        except Exception:  # that plugin missing or unable: pydicom's order decides
            pass
    return dataset.pixel_array
