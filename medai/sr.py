"""A model's result for one image as a DICOM Comprehensive SR: a TID 1500 measurement report.

:func:`build_report` turns one scored image into the document a PACS files beside it, built with
``highdicom``'s typed SR classes (never hand-assembled sequences):

- in the image's study: the Study Instance UID, and the patient and general study modules,
  copied from the source image's header (as a PACS expects; they stay inside the SR, which goes
  back only to the PACS the image came from or a folder the user names);
- the observer is a device: medai, with the model_id as its model name;
- one measurement group per finding: the calibrated probability as a numeric measurement
  (UCUM unit ``1``) and present/absent at the finding's threshold from the
  model card as a qualitative evaluation; its algorithm identification names medai, medai's
  version and the model_id; its source image is the scored instance, which the evidence lists;
- the model card's intended-use sentence as a comment, Verification Flag ``UNVERIFIED``, and
  Completion Flag ``COMPLETE`` (the model scored every finding it has).

Exactly one SR per (model, image): :func:`report_uids` derives the SR's SOP Instance UID and
Series UID from the model_id and the source SOP Instance UID (``2.25.`` + the integer of a
SHA-256 prefix, PS3.5 B.2), so a rerun, a killed run or a nightly after a manual score makes the
same instance, which a PACS stores once; a new model makes new UIDs, so new SRs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CODING_SCHEME",
    "FindingResult",
    "ReportUids",
    "report_uids",
    "build_report",
    "read_report",
]

CODING_SCHEME = "99MEDAI"  # private coding scheme (PS3.16 8.2: "99" prefix) for medai's concepts
SERIES_NUMBER = 9901
_UID_DIGITS = 38  # 2.25. + up to 39 digits keeps a UID within 64 characters


@dataclass(frozen=True)
class FindingResult:
    """One finding's result for one image.

    Attributes:
        finding: The finding's name, as in the model card (``Mass``).
        score: The calibrated probability.
        threshold: The card's decision threshold for this finding.
        present: The decision at that threshold (medai's one float32 rule).
    """

    finding: str
    score: float
    threshold: float
    present: bool


class ReportUids(NamedTuple):
    """The SR's own UIDs, derived from (model_id, source SOP Instance UID)."""

    series: str
    sop: str


def _derived_uid(*parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return "2.25." + str(int(digest[:32], 16))[:_UID_DIGITS]


def report_uids(model_id: str, sop_instance_uid: str) -> ReportUids:
    """The SR's Series and SOP Instance UIDs: the same for the same model and image, always.

    The series is one per (model, source series-less image): a viewer shows each model's
    result for an image as its own series; the SOP UID is what makes a second SR impossible.
    """
    return ReportUids(
        series=_derived_uid("medai-sr-series", model_id, sop_instance_uid),
        sop=_derived_uid("medai-sr", model_id, sop_instance_uid),
    )


def _concept(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value[:16], scheme_designator=CODING_SCHEME, meaning=meaning[:64])


def _shortest(score: float) -> float:
    """A float32 score as the shortest decimal that reads back as it (0.8734, not 0.87339997:
    the SR's decimal string shows what the model gave, no more digits)."""
    import numpy as np

    return float(str(np.float32(score)))


def _finding_group(source, result: FindingResult, algorithm, index: int):
    """TID 1501: the finding's probability and its present/absent decision."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    finding = _concept(f"F-{result.finding}", result.finding)
    measurement = hd.sr.Measurement(
        name=_concept(f"P-{result.finding}", f"Probability of {result.finding}"),
        value=_shortest(result.score),
        unit=codes.UCUM.NoUnits,
        algorithm_id=algorithm,
    )
    evaluation = hd.sr.QualitativeEvaluation(
        name=finding, value=codes.SCT.Present if result.present else codes.SCT.Absent
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_derived_uid("medai-tracking", source.SOPInstanceUID, str(index)),
            identifier=f"{result.finding} (threshold {result.threshold:.4g})"[:64],
        ),
        finding_type=finding,
        algorithm_id=algorithm,
        measurements=[measurement],
        qualitative_evaluations=[evaluation],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _content(source, results: list[FindingResult], model_id: str, version: str, note: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(
        name="medai", version=version, parameters=[f"model_id={model_id}"]
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_derived_uid("medai-device", model_id),
        name="medai",
        manufacturer_name="medai",
        model_name=model_id[:64],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    groups = [_finding_group(source, r, algorithm, i) for i, r in enumerate(results)]
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ChestImaging,
        imaging_measurements=groups,
    )
    comment = hd.sr.TextContentItem(
        name=codes.DCM.Comment,
        value=note,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    report[0].ContentSequence.append(comment)
    return report


def build_report(
    source,
    results: list[FindingResult],
    model_id: str,
    version: str,
    intended_use: str,
):
    """The Comprehensive SR of one scored image.

    Args:
        source: The scored image's header (a ``pydicom.Dataset``; pixels not needed).
        results: One per finding of the model, in the card's order.
        model_id: The model's id (sha256 of ``model.keras``).
        version: medai's version.
        intended_use: The model card's intended-use sentence.

    Returns:
        A ``highdicom.sr.ComprehensiveSR`` (a ``pydicom.Dataset``).
    """
    import highdicom as hd

    uids = report_uids(model_id, str(source.SOPInstanceUID))
    findings = ", ".join(r.finding for r in results)
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=_content(source, results, model_id, version, intended_use),
        series_instance_uid=uids.series,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop,
        instance_number=1,
        manufacturer="medai",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"medai {findings} (research use only)"[:64],
    )


def read_report(dataset) -> dict[str, tuple[float, bool]]:
    """Read an SR written by :func:`build_report` back through highdicom's TID 1500 parser.

    Args:
        dataset: The SR as a ``pydicom.Dataset`` (``pydicom.dcmread`` of its file).

    Returns:
        ``{finding: (probability, present)}``.
    """
    import highdicom as hd

    report = hd.sr.ComprehensiveSR.from_dataset(dataset, copy=True)
    results: dict[str, tuple[float, bool]] = {}
    for group in report.content.get_image_measurement_groups():
        finding = group.finding_type.meaning
        probability = float(group.get_measurements()[0].value)
        evaluation = group.get_qualitative_evaluations()[0].value
        results[finding] = (probability, evaluation.value == "52101004")
    return results
