"""The SR of a scored image: valid for dcmtk, read back by highdicom, one per (model, image)."""

from __future__ import annotations

import io
import shutil
import subprocess

import pydicom
import pytest
from pacs_kit import PHI, chest_dicom, instance_count, orthanc, upload  # noqa: F401  (fixture)
from pydicom.uid import UID

from medai import __version__
from medai.card import INTENDED_USE
from medai.dicomweb import open_client
from medai.results import parse_target, store_report, write_report_file
from medai.sr import FindingResult, build_report, read_report, report_uids

MODEL_A = "a" * 64
MODEL_B = "b" * 64
RESULTS = [
    FindingResult("Mass", 0.8125, 0.5, True),
    FindingResult("Effusion", 0.0625, 0.3, False),
]


def _header(seed: int = 7):
    return pydicom.dcmread(io.BytesIO(chest_dicom(seed)), stop_before_pixels=True)


def _report(seed: int = 7, model_id: str = MODEL_A):
    return build_report(_header(seed), RESULTS, model_id, __version__, INTENDED_USE)


def test_report_uids_are_derived_valid_and_per_model():
    first = report_uids(MODEL_A, "1.2.3.4")
    assert first == report_uids(MODEL_A, "1.2.3.4")
    assert first.sop != report_uids(MODEL_B, "1.2.3.4").sop
    assert first.sop != report_uids(MODEL_A, "1.2.3.5").sop
    for uid in (*first, *report_uids(MODEL_B, "9" * 64)):
        assert UID(uid).is_valid and uid.startswith("2.25.") and len(uid) <= 64


def test_report_is_in_the_image_study_and_reads_back():
    header = _header()
    report = _report()
    assert report.StudyInstanceUID == header.StudyInstanceUID
    assert report.PatientID == header.PatientID and report.PatientName == header.PatientName
    assert report.AccessionNumber == header.AccessionNumber
    assert report.SOPInstanceUID == report_uids(MODEL_A, header.SOPInstanceUID).sop
    assert report.VerificationFlag == "UNVERIFIED" and report.CompletionFlag == "COMPLETE"
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert read_report(report) == {"Mass": (0.8125, True), "Effusion": (0.0625, False)}


def test_report_names_the_algorithm_and_intended_use(tmp_path):
    path = write_report_file(tmp_path, _report())
    assert path.name == f"{_report().SOPInstanceUID}.dcm"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    text = path.read_bytes()
    for needle in ("medai", __version__, f"model_id={MODEL_A}", INTENDED_USE[:60]):
        assert needle.encode() in text
    assert read_report(pydicom.dcmread(path)) == read_report(_report())


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk's dsrdump not installed")
def test_dsrdump_accepts_the_report(tmp_path):
    path = write_report_file(tmp_path, _report())
    done = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "error" not in (done.stdout + done.stderr).lower()
    assert "Verification Flag   : UNVERIFIED" in done.stdout
    assert '"Probability of Mass")="0.8125"' in done.stdout
    assert '(52101004,SCT,"Present")' in done.stdout


def test_three_stores_leave_one_sr_per_image_and_model(orthanc):  # noqa: F811
    upload(orthanc, [chest_dicom(7)])
    before = instance_count(orthanc)
    target = parse_target(orthanc.dicomweb)
    client = open_client(target.server, env=orthanc.env)
    for _ in range(3):
        store_report(client, _report())
    assert instance_count(orthanc) == before + 1
    store_report(client, _report(model_id=MODEL_B))  # a new model gives a new SR
    assert instance_count(orthanc) == before + 2
    study = _header().StudyInstanceUID
    modalities = {
        orthanc.json(f"/instances/{i}/simplified-tags").get("Modality")
        for i in orthanc.json("/instances")
    }
    assert modalities == {"DX", "SR"}
    srs = [
        tags
        for i in orthanc.json("/instances")
        if (tags := orthanc.json(f"/instances/{i}/simplified-tags"))["Modality"] == "SR"
    ]
    assert {t["StudyInstanceUID"] for t in srs} == {study}
    assert PHI["PatientName"] in {t["PatientName"] for t in srs}  # the PACS files it right


def test_results_target_refuses_plain_http_to_another_host(tmp_path):
    from medai.dicomweb import DicomwebError

    with pytest.raises(DicomwebError, match="--allow-insecure-http"):
        parse_target("dicomweb+http://pacs.example.org/dicom-web")
    assert parse_target(str(tmp_path / "srs")).folder == str(tmp_path / "srs")
