"""SRs from prediction rows: to a folder and to a real Orthanc, once each, missing ones next run."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from images_kit import png
from pacs_kit import FaultProxy, chest_dicom, instance_count, orthanc, upload  # noqa: F401

from medai.dicomweb import list_instances, open_client, parse_source
from medai.results import parse_target, send_results, sent_images
from medai.score import write_predictions
from medai.sr import read_report, report_uids

FINDINGS = ["Mass", "Effusion"]
THRESHOLDS = [0.5, 0.25]
CARD = {"model_id": "c" * 64, "finding": "Mass", "findings": FINDINGS, "threshold": 0.5}
CARD["per_finding"] = {f: {"threshold": t} for f, t in zip(FINDINGS, THRESHOLDS, strict=True)}


def _sop(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _write_rows(out, image_ids, sources, scores, errors=None) -> None:
    n = len(image_ids)
    batch = {
        "image_id": image_ids,
        "source": sources,
        "score": np.asarray(scores, np.float32),
        "error": errors or [""] * n,
        "skip": np.zeros(n, bool),
        "engine": ["tensorflow"] * n,
        "precision": ["fp32"] * n,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(batch, str(out), CARD["model_id"], FINDINGS, THRESHOLDS, "run")


def test_srs_to_a_folder_once_each(tmp_path):
    files = [chest_dicom(60 + i) for i in range(3)]
    sources = []
    for data in files:
        path = tmp_path / "images" / f"{_sop(data)}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        sources.append(str(path))
    picture = tmp_path / "images" / "plain.png"
    picture.write_bytes(png(np.zeros((8, 8), np.uint8)))
    broken = tmp_path / "images" / "broken.dcm"
    ids = [_sop(f) for f in files] + ["plain.png", "broken.dcm"]
    scores = [[0.9, 0.1], [0.2, 0.3], [0.5, 0.25], [0.4, 0.4], [np.nan, np.nan]]
    errors = ["", "", "", "", "decode error: not a decodable image"]
    out = tmp_path / "out"
    _write_rows(out, ids, [*sources, str(picture), str(broken)], scores, errors)
    target = parse_target(str(tmp_path / "srs"))
    first = send_results(out, CARD, target)
    assert (first.sent, first.not_dicom, first.failed, first.already) == (3, 1, 0, 0)
    written = sorted((tmp_path / "srs").glob("*.dcm"))
    expected = {report_uids(CARD["model_id"], i).sop for i in ids[:3]}
    assert {p.stem for p in written} == expected
    by_source = {
        str(pydicom.dcmread(p).StudyInstanceUID): read_report(pydicom.dcmread(p)) for p in written
    }
    studies = [str(pydicom.dcmread(io.BytesIO(f)).StudyInstanceUID) for f in files]
    # The threshold decides with medai's float32 rule: a score equal to it is positive.
    assert by_source[studies[0]] == {
        "Mass": (pytest.approx(0.9), True),
        "Effusion": (pytest.approx(0.1), False),
    }
    assert by_source[studies[2]]["Mass"][1] and by_source[studies[2]]["Effusion"][1]
    assert sent_images(out, CARD["model_id"], target) == frozenset(ids[:3])
    again = send_results(out, CARD, target)
    assert (again.sent, again.already, again.not_dicom) == (0, 3, 0)  # the PNG is not re-read
    assert sorted((tmp_path / "srs").glob("*.dcm")) == written


def test_srs_to_a_pacs_once_each_and_failed_ones_next_run(orthanc, tmp_path):  # noqa: F811
    files = [chest_dicom(70 + i) for i in range(2)]
    upload(orthanc, files)
    before = instance_count(orthanc)
    source = parse_source(orthanc.dicomweb)
    client = open_client(source)
    refs = {r.sop: r for r in list_instances(client, source)}
    ids = [_sop(f) for f in files]
    out = tmp_path / "out"
    _write_rows(out, ids, [source.instance_url(refs[i]) for i in ids], [[0.7, 0.1], [0.1, 0.7]])
    proxy = FaultProxy(orthanc.port, fail_posts=True).start()
    try:
        target = parse_target(proxy.dicomweb)
        failed = send_results(out, CARD, target, max_requests=2)
        assert (failed.sent, failed.failed) == (0, 2) and instance_count(orthanc) == before
        proxy.fail_posts = False
        for _ in range(3):
            send_results(out, CARD, target, max_requests=2)
        assert sent_images(out, CARD["model_id"], target) == frozenset(ids)
    finally:
        proxy.stop()
    assert instance_count(orthanc) == before + 2
    tags = [orthanc.json(f"/instances/{i}/simplified-tags") for i in orthanc.json("/instances")]
    srs = [t for t in tags if t["Modality"] == "SR"]
    assert {t["SOPInstanceUID"] for t in srs} == {report_uids(CARD["model_id"], i).sop for i in ids}
