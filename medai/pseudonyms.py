"""Keyed pseudonyms: a site key and HMAC-SHA256, so identifiers leave no trace of their value.

A DICOM image's patient is known to medai only as ``pseudonym(Patient ID, key)``: the patient
split works (one patient, one pseudonym) and the plain ID is written nowhere. ``medai report
--deidentify`` replaces image ids, study ids and source paths the same way. Without the key a
pseudonym cannot be reversed or recomputed from a guessed ID, so the key stays with the site
and out of every output.

The key is a file of random bytes, made once per site::

    head -c 32 /dev/urandom > site.key && chmod 600 site.key

and named by ``--id-key FILE``, or by the environment variable ``MEDAI_ID_KEY_FILE`` (a path),
or given as ``MEDAI_ID_KEY`` (the key itself, at least 16 characters).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from medai.errors import MedaiError

__all__ = [
    "KEY_FILE_ENV",
    "KEY_ENV",
    "MIN_KEY_BYTES",
    "IdKeyError",
    "pseudonym",
    "load_id_key",
    "KEY_HOWTO",
]

KEY_FILE_ENV = "MEDAI_ID_KEY_FILE"
KEY_ENV = "MEDAI_ID_KEY"
MIN_KEY_BYTES = 16
KEY_HOWTO = (
    "make a site key once with `head -c 32 /dev/urandom > site.key` and give it with "
    f"--id-key site.key or {KEY_FILE_ENV}=site.key"
)


class IdKeyError(MedaiError, ValueError):
    """The site key for pseudonyms is missing or unusable; the message says how to make one."""


def pseudonym(value: str, key: bytes) -> str:
    """The keyed pseudonym of ``value``: HMAC-SHA256 under ``key``, hex (64 characters)."""
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()


def load_id_key(path: str | None = None, needed_for: str = "") -> bytes:
    """The site key: from ``path`` (``--id-key``), else ``MEDAI_ID_KEY_FILE``, else
    ``MEDAI_ID_KEY``.

    Args:
        path: The ``--id-key`` file, if given.
        needed_for: What needs it, for the message when it is missing.

    Raises:
        IdKeyError: If no key is given, its file cannot be read, or it is shorter than
            :data:`MIN_KEY_BYTES`.
    """
    named = path or os.environ.get(KEY_FILE_ENV)
    if named:
        try:
            key = Path(named).expanduser().read_bytes()
        except OSError as exc:
            raise IdKeyError(f"--id-key: cannot read {named}: {exc.strerror}") from None
        origin = str(named)
    elif os.environ.get(KEY_ENV):
        key, origin = os.environ[KEY_ENV].encode("utf-8"), KEY_ENV
    else:
        purpose = f" {needed_for}" if needed_for else ""
        raise IdKeyError(f"a site key is needed{purpose}: {KEY_HOWTO}")
    if len(key.strip()) < MIN_KEY_BYTES:
        raise IdKeyError(f"the site key in {origin} is shorter than {MIN_KEY_BYTES} bytes")
    return key
