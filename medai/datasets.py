"""Ray Data pipelines over image inputs: read in place, decode in parallel CPU tasks.

Rows have the columns ``image_id`` (a DICOM image's SOP Instance UID, else the file name),
``source``, ``skip`` (already done, or not an image of the task: not decoded),
``meta`` (a DICOM header's prediction columns as JSON, ``""`` otherwise), ``ignored`` (why a
DICOM instance is not an image of the task, e.g. ``"modality CT"``; ``""`` otherwise),
``image`` (``uint8`` of shape ``(size, size, 1)``; zeros when the image could not be used)
and ``error`` (``""`` when the image is usable, else :attr:`medai.images.ImageError.text`:
``"read error: ..."`` or ``"decode error: ..."``, the same text for the same fault every run;
empty strings survive Arrow and pandas round trips where ``None`` turns into NaN or "nan").
A corrupt member, an unreadable file or a broken archive becomes a row with an error: nothing
is dropped silently. A WADO-RS instance URL (a DICOMweb row's ``source``) is read as a file is,
retrieved through :mod:`medai.dicomweb` (see :func:`read_source`). A file or member above the
size cap is an error row without its bytes ever being read.

Reading (streaming each tarball, or a chunk of single files) and decoding are separate
stages with different CPU requests, so Ray does not fuse them into one serial task, and
both stay apart from a downstream inference actor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from medai.dicom import DEFAULT_MODALITIES, extensionless, is_dicom_name, read_header, skip_reason
from medai.dicomweb import parse_instance_url, read_instance_url
from medai.images import (
    ARCHIVE_SEP,
    MAX_BYTES,
    ImageError,
    ImageInputs,
    archive_error,
    decode_image,
    image_id_of,
    iter_members,
    read_bytes,
)

__all__ = [
    "READ_CPUS",
    "DECODE_CPUS",
    "ImageRecord",
    "plan_units",
    "read_source",
    "read_records",
    "identify",
    "record_columns",
    "record_batches",
    "read_unit",
    "decode_batch",
    "decode_stage",
    "image_dataset",
]

READ_CPUS = 0.25  # streaming a tarball is mostly I/O and inflate
DECODE_CPUS = 0.5  # differs from READ_CPUS and from actors' requests: prevents operator fusion
_ROWS_PER_BATCH = 32
# Ray Data packs UDF output into blocks of up to 128 MiB by default: a whole phantom archive
# would travel as one block and nothing would stream. 2 MiB is ~32 decoded 256 px images.
BLOCK_BYTES = 2 * 1024 * 1024


def plan_units(inputs: ImageInputs, files_per_unit: int = 64) -> list[dict]:
    """Split inputs into read units: one per archive, one per chunk of single files."""
    units = [{"archive": archive, "files": []} for archive in inputs.archives]
    files = list(inputs.files)
    for start in range(0, len(files), files_per_unit):
        units.append({"archive": "", "files": files[start : start + files_per_unit]})
    return units


def read_source(
    source: str,
    max_bytes: int = MAX_BYTES,
    allow_insecure_http: bool = False,
    ca_bundle: str | None = None,
    clients: dict | None = None,
) -> bytes:
    """One image's bytes: a WADO-RS instance URL retrieved through :mod:`medai.dicomweb`
    (credentials from the environment, plain http only to this machine unless
    ``allow_insecure_http``), anything else read by :func:`medai.images.read_bytes`.

    Raises:
        ImageError: As :func:`medai.images.read_bytes` or
            :func:`medai.dicomweb.retrieve_instance` (same texts, same retries).
        medai.dicomweb.DicomwebError: A WADO-RS URL that may not be read (plain http to
            another host, credentials in it or unusable ones in the environment).
    """
    if parse_instance_url(source) is not None:
        return read_instance_url(source, allow_insecure_http, ca_bundle, clients)
    return read_bytes(source, max_bytes)


def _records(
    unit: dict,
    wanted: set[str] | None,
    exclude: frozenset[str],
    max_bytes: int = MAX_BYTES,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
    web: tuple[bool, str | None] = (False, None),
) -> Iterator[tuple]:
    """Yield ``(image_id, source, bytes, error, skip, meta, ignored)`` for every image of a
    read unit (see :func:`_identified`).

    Excluded images still yield a row (flagged ``skip``, without bytes) so that the
    downstream count of skipped images is exact. ``web``: ``(allow_insecure_http, ca_bundle)``
    for WADO-RS URLs among the files.
    """
    archive = unit["archive"]
    if archive:
        try:
            for member in iter_members(archive, wanted, max_bytes):
                source = f"{archive}{ARCHIVE_SEP}{member.name}"
                error = member.error.text if member.error is not None else ""
                record = (image_id_of(member.name), source, member.data, error)
                yield from identify(record, wanted, exclude, modalities)
        except Exception as exc:  # a truncated or corrupt archive: one row says so
            yield image_id_of(archive), archive, b"", archive_error(exc).text, False, "", ""
        return
    clients: dict = {}  # one DICOMweb client per server for the unit's WADO-RS URLs
    for source in unit["files"]:
        image_id = image_id_of(source)
        wado = parse_instance_url(source) is not None
        dicom = is_dicom_name(source) or extensionless(source) or wado
        if wanted is not None and image_id not in wanted and not dicom:
            continue
        if image_id in exclude and not dicom:
            yield image_id, source, b"", "", True, "", ""
            continue
        try:
            record = (image_id, source, read_source(source, max_bytes, *web, clients), "")
        except ImageError as exc:
            record = (image_id, source, b"", exc.text)
        yield from identify(record, wanted, exclude, modalities)


def identify(
    record: tuple, wanted: set[str] | None, exclude: frozenset[str], modalities: tuple[str, ...]
) -> Iterator[tuple]:
    """A read record with its identity: a DICOM image is named by its SOP Instance UID.

    ``meta`` is the header's prediction columns as JSON (``""`` for other formats); ``ignored``
    says why an instance is not an image of the task (no pixel data, another modality: see
    :func:`medai.dicom.skip_reason`). An ignored instance is skipped (counted, not written),
    unless it was asked for by id (a labelled one): then it is a decode-error row.
    """
    image_id, source, data, error = record
    meta, ignored = "", ""
    if not error and (data[128:132] == b"DICM" or is_dicom_name(source)):
        try:
            header = read_header(data)
            image_id, meta = header.sop_instance_uid, json.dumps(header.metadata())
            ignored = skip_reason(header, modalities)
        except ImageError:
            pass  # decoding says why, in the row's error
    # Asked for by image id, or (read_records' callers) by archive member name.
    member = source.split(ARCHIVE_SEP, 1)[-1]
    if wanted is not None and image_id not in wanted and member not in wanted:
        return
    if image_id in exclude:
        yield image_id, source, b"", "", True, meta, ""
    elif ignored and wanted is not None:
        yield (
            image_id,
            source,
            b"",
            ImageError(f"not a chest radiograph: {ignored}").text,
            False,
            meta,
            "",
        )
    elif ignored:
        yield image_id, source, b"", "", True, meta, ignored
    else:
        yield image_id, source, data, error, False, meta, ""


class ImageRecord(NamedTuple):
    """One image as read, before decoding: its bytes, or the error text of why there are none.

    A truncated or corrupt archive yields one record named after the archive (``source`` is
    the archive) whose ``error`` says so, after the records of the members read before the fault.
    """

    image_id: str
    source: str
    data: bytes
    error: str


def read_records(
    inputs: ImageInputs,
    wanted: set[str] | None = None,
    max_bytes: int = MAX_BYTES,
    allow_insecure_http: bool = False,
    ca_bundle: str | None = None,
) -> Iterator[ImageRecord]:
    """Read images in this process, one streaming pass per archive, as :func:`read_unit` does.

    For the few images a job needs outside a Ray dataset (export's validation images, the
    report's examples): the same reading, the same error rows, no Ray. Files may be WADO-RS
    instance URLs (DICOMweb rows' sources): they are retrieved (see :func:`read_source`).

    Args:
        inputs: Archives and files to read.
        wanted: If given, only these image ids (or archive member names) are read.
        max_bytes: Files and members above this size are error records, never read.
        allow_insecure_http: Allow plain http to a DICOMweb host other than this machine.
        ca_bundle: A CA file to trust for https DICOMweb servers.

    Raises:
        medai.dicomweb.DicomwebError: A WADO-RS URL that may not be read (see
            :func:`read_source`).
    """
    web = (allow_insecure_http, ca_bundle)
    for unit in plan_units(inputs):
        for image_id, source, data, error, skip, *_ in _records(
            unit, wanted, frozenset(), max_bytes, web=web
        ):
            if not skip:  # a DICOM instance that is not a radiograph (SR, CT, ...)
                yield ImageRecord(image_id, source, data, error)


def read_unit(
    batch: dict,
    wanted: set[str] | None = None,
    exclude: frozenset[str] = frozenset(),
    max_bytes: int = MAX_BYTES,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
) -> Iterator[dict]:
    """Ray Data UDF: expand read units into batches of raw image bytes.

    Args:
        batch: A batch of read units (columns ``archive``, ``files``).
        wanted: If given, only these image ids are read (e.g. the labelled ones).
        exclude: Image ids to skip (e.g. already scored).
        max_bytes: Files and members above this size are error rows, never read.
        modalities: DICOM modalities scored; other instances are skipped and counted.
    """
    units = (
        {"archive": str(archive), "files": [str(f) for f in files]}
        for archive, files in zip(batch["archive"], batch["files"], strict=True)
    )
    yield from record_batches(
        record
        for unit in units
        for record in _records(unit, wanted, exclude, max_bytes, tuple(modalities))
    )


def record_batches(records: Iterable[tuple]) -> Iterator[dict]:
    """Read records (see :func:`identify`) as column batches of up to 32 rows, the read
    stage's output for :func:`decode_batch`."""
    rows: list[tuple] = []
    for record in records:
        rows.append(record)
        if len(rows) == _ROWS_PER_BATCH:
            yield record_columns(rows)
            rows = []
    if rows:
        yield record_columns(rows)


def record_columns(rows: list[tuple]) -> dict:
    image_id, source, data, error, skip, meta, ignored = zip(*rows, strict=True)
    return {
        "image_id": list(image_id),
        "source": list(source),
        "data": list(data),
        "error": list(error),
        "skip": np.array(skip, dtype=bool),
        "meta": list(meta),
        "ignored": list(ignored),
    }


def decode_batch(batch: dict, image_size: int) -> dict:
    """Ray Data UDF: decode raw bytes into ``uint8`` model inputs, recording failures per row."""
    n = len(batch["image_id"])
    images = np.zeros((n, image_size, image_size, 1), dtype=np.uint8)
    errors = [str(e) for e in batch["error"]]
    for i, data in enumerate(batch["data"]):
        if errors[i] or batch["skip"][i]:
            continue
        try:
            images[i] = decode_image(bytes(data), image_size)
        except ImageError as exc:
            errors[i] = exc.text
    return {
        "image_id": batch["image_id"],
        "source": batch["source"],
        "image": images,
        "error": errors,
        "skip": batch["skip"],
        "meta": batch["meta"],
        "ignored": batch["ignored"],
    }


def image_dataset(
    inputs: ImageInputs,
    image_size: int,
    wanted: set[str] | None = None,
    exclude: frozenset[str] = frozenset(),
    max_bytes: int = MAX_BYTES,
    ordered: bool = False,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
):
    """Build the lazy Ray dataset of decoded images for the given inputs.

    Args:
        inputs: Archives and files to read.
        image_size: Output width and height.
        wanted: Only these image ids (``None``: all).
        exclude: Skip these image ids.
        max_bytes: Size cap per file or archive member (larger ones are error rows).
        modalities: DICOM modalities read as images (others: skipped rows, ``ignored``).
        ordered: Rows in input order (archives and chunks of files as planned), for this
            dataset and those derived from it. Otherwise they come in the order tasks finish,
            which varies between runs when units are read in parallel: fine for scoring
            (every row carries its image id), not for training from a seed.

    Returns:
        A ``ray.data.Dataset`` with columns ``image_id``, ``source``, ``image``, ``error``,
        ``skip``, ``meta`` and ``ignored``.
    """
    import ray

    ray.data.DataContext.get_current().target_max_block_size = BLOCK_BYTES
    units = plan_units(inputs)
    items = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    raw = items.map_batches(
        read_unit,
        batch_size=1,
        num_cpus=READ_CPUS,
        fn_kwargs={
            "wanted": wanted,
            "exclude": exclude,
            "max_bytes": max_bytes,
            "modalities": tuple(modalities),
        },
    )
    return decode_stage(raw, image_size, ordered)


def decode_stage(raw, image_size: int, ordered: bool = False):
    """The decode stage after a read stage (files' or a new source's): :func:`decode_batch`
    in tasks of their own CPU request; ``ordered`` keeps the read stage's row order."""
    decoded = raw.map_batches(
        decode_batch,
        batch_size=_ROWS_PER_BATCH,
        num_cpus=DECODE_CPUS,
        fn_kwargs={"image_size": image_size},
    )
    if ordered:
        decoded.context.execution_options.preserve_order = True
    return decoded
