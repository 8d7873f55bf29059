"""Why an input is not a usable image: the error rows' one vocabulary.

An :class:`ImageError` is either a *read* error (the bytes could not be had: I/O, permission, a
missing file, an unreadable or truncated archive; such a fault may clear, so the next run
retries it) or a *decode* error (the bytes are not a usable image: corrupt, not an image, too
large; final). A prediction row stores it as ``"<kind> error: <reason>"``, the same text for
the same fault every run.
"""

from __future__ import annotations

import re

from medai.errors import MedaiError

__all__ = ["ERROR_KINDS", "ImageError", "error_kind"]

# How an image failed. "read": the bytes could not be had (I/O, permission, missing file,
# unreadable or truncated archive); such a fault may clear, so the next run retries it.
# "decode": the bytes are not a usable image (corrupt, not an image, too large); final.
ERROR_KINDS = ("read", "decode")
_ADDRESS = re.compile(r"<([^<>]*?) at 0x[0-9a-fA-F]+>")
_REASON_CHARS = 300


class ImageError(MedaiError, ValueError):
    """An input is not a usable image; the message is a stable one-line reason.

    Attributes:
        kind: ``"read"`` (the bytes could not be read; worth retrying) or ``"decode"`` (the
            bytes are not a usable image; final).
    """

    def __init__(self, reason: str, kind: str = "decode"):
        if kind not in ERROR_KINDS:
            raise ValueError(f"ImageError kind must be one of {ERROR_KINDS}, not {kind!r}")
        super().__init__(_stable(reason))
        self.kind = kind

    @property
    def text(self) -> str:
        """The error as a prediction row stores it: ``"<kind> error: <reason>"``."""
        return f"{self.kind} error: {self}"


def error_kind(text: str | None) -> str | None:
    """The kind of a stored error text (see :attr:`ImageError.text`).

    Returns:
        ``"read"`` or ``"decode"``; ``None`` for no error, or for a text without a kind
        (written by an older medai).
    """
    for kind in ERROR_KINDS:
        if text and text.startswith(f"{kind} error: "):
            return kind
    return None


def _stable(reason: str) -> str:
    """One line, without what varies between runs of the same fault (object addresses)."""
    reason = _ADDRESS.sub(r"<\1>", " ".join(str(reason).split()))
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 3] + "..."
