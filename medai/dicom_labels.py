"""Labels of DICOM images: study-level labels and patients, from one header pass over the inputs.

A label file names DICOM images by SOP Instance UID (the image id medai gives them), or names
studies (a ``study`` column of StudyInstanceUIDs, as radiology reports are labelled): then every
image of the study takes its labels. Without a ``patient_id`` column, a DICOM image's patient is
the keyed pseudonym of its Patient ID (:mod:`medai.pseudonyms`), so the patient split holds and
the plain ID is written nowhere. Both need each image's study and patient, which only the
headers hold: :func:`header_index` reads them (without pixel data) before any training starts.
For DICOMweb instances the QIDO listing gives them (:func:`listing_index`): the study of each
instance, and the Patient ID asked for at study level, kept only as its pseudonym.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import pandas as pd

from medai.dicom import DEFAULT_MODALITIES, extensionless, is_dicom_name, read_header, skip_reason
from medai.dicomweb import list_study_patients, open_client
from medai.images import MAX_BYTES, ImageError, ImageInputs, iter_members, read_bytes
from medai.labels import PATIENTS_FROM_FILE, LabelError
from medai.pseudonyms import load_id_key, pseudonym

__all__ = ["INDEX_COLUMNS", "header_index", "listing_index", "resolve_labels"]

logger = logging.getLogger("medai.dicom_labels")
INDEX_COLUMNS = ["image_id", "study_id", "patient"]


def _dicom_bytes(inputs: ImageInputs) -> Iterator[bytes]:
    """The bytes of every DICOM candidate among the inputs (unreadable ones left out: the
    image pass gives them their error rows)."""
    for source in inputs.files:
        if is_dicom_name(source) or extensionless(source):
            try:
                yield read_bytes(source, MAX_BYTES)
            except ImageError:
                continue
    for archive in inputs.archives:
        try:
            for member in iter_members(archive, max_bytes=MAX_BYTES):
                if member.error is None and member.data[128:132] == b"DICM":
                    yield member.data
        except Exception:  # a broken archive: the image pass reports it, as for PNGs
            continue


def header_index(
    inputs: ImageInputs,
    key: Callable[[], bytes] | None = None,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
) -> pd.DataFrame:
    """``image_id`` (SOP Instance UID), ``study_id`` and ``patient`` of every DICOM radiograph.

    Args:
        inputs: The discovered inputs.
        key: Gives the site key, called once at the first image with a Patient ID; ``None``:
            no pseudonyms (``patient`` is null).
        modalities: Instances of other modalities, or without pixels, are left out.
    """
    rows = []
    once = functools.cache(key) if key is not None else None
    for data in _dicom_bytes(inputs):
        try:
            header = read_header(data, once)
        except ImageError:
            continue
        if not skip_reason(header, modalities):
            rows.append((header.sop_instance_uid, header.study_id, header.patient))
    return pd.DataFrame(rows, columns=INDEX_COLUMNS).drop_duplicates("image_id")


def listing_index(
    listing, key: Callable[[], bytes] | None = None, ca_bundle: str | None = None
) -> pd.DataFrame:
    """:func:`header_index`'s table for DICOMweb instances, from QIDO alone (no retrieval).

    Args:
        listing: ``[(DicomwebSource, [InstanceRef, ...]), ...]``
            (:func:`medai.pacs_data.list_new_instances`).
        key: As :func:`header_index`'s; with it, each study's Patient ID is asked for (QIDO,
            study level) and only its pseudonym kept.
        ca_bundle: A CA file to trust.
    """
    once = functools.cache(key) if key is not None else None
    rows = []
    for source, refs in listing:
        patients: dict = {}
        if once is not None and refs:
            client = open_client(source, ca_bundle)
            patients = list_study_patients(client, source, lambda text: pseudonym(text, once()))
        rows += [(ref.sop, ref.study, patients.get(ref.study)) for ref in refs]
    return pd.DataFrame(rows, columns=INDEX_COLUMNS).drop_duplicates("image_id")


def resolve_labels(
    labels: pd.DataFrame,
    inputs: ImageInputs,
    id_key: str | None = None,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
    listing=(),
    ca_bundle: str | None = None,
) -> pd.DataFrame:
    """Labels keyed by image, with DICOM images' patients pseudonymised where the file has none.

    Image-level labels with a patient column are returned as they are (no header is read).
    DICOMweb instances (``listing``, see :func:`listing_index`) count as the files' do.

    Raises:
        LabelError: If study-level labels match no DICOM image.
        medai.pseudonyms.IdKeyError: If a DICOM image's patient needs a pseudonym and no site
            key is given.
    """
    study_level = labels.attrs.get("level") == "study"
    from_file = labels.attrs.get("patients", PATIENTS_FROM_FILE) == PATIENTS_FROM_FILE
    if not study_level and from_file:
        return labels
    needed = "to give DICOM images a patient (the label file has no patient_id column)"
    key = None if from_file else lambda: load_id_key(id_key, needed)
    index = header_index(inputs, key, modalities)
    if listing:
        index = pd.concat([index, listing_index(listing, key, ca_bundle)], ignore_index=True)
        index = index.drop_duplicates("image_id")
    attrs = dict(labels.attrs)
    if study_level:
        labels = _expand_studies(labels, index, from_file)
    elif not index.empty:
        patients = dict(zip(index["image_id"], index["patient"], strict=True))
        patient = labels["image_id"].map(patients)
        labels = labels.assign(patient_id=patient.fillna(labels["patient_id"]))
    labels.attrs.update(attrs, level="image")
    return labels


def _expand_studies(labels: pd.DataFrame, index: pd.DataFrame, from_file: bool) -> pd.DataFrame:
    """One row per image of each labelled study, with the study's labels."""
    images = index.dropna(subset=["study_id"])
    joined = labels.drop(columns="image_id").merge(images, on="study_id", how="inner")
    if joined.empty:
        raise LabelError(
            f"the study-level labels name {len(labels)} studies, but no DICOM image of "
            f"--images belongs to any of them (StudyInstanceUID)"
        )
    missing = len(set(labels["study_id"]) - set(joined["study_id"]))
    if missing:
        logger.warning("%d labelled studies have no image in --images", missing)
    if not from_file:
        # A study is one patient's: without a Patient ID, the study stands for the patient.
        joined["patient_id"] = joined["patient"].fillna(joined["study_id"])
    logger.info(
        "study-level labels: %d studies -> %d images",
        joined["study_id"].nunique(),
        len(joined),
    )
    columns = ["image_id", *[c for c in labels.columns if c != "image_id"]]
    return joined[columns].reset_index(drop=True)
