"""Training, predict, export and the report's examples from a real Orthanc (DICOMweb).

Rows from DICOMweb must be those of the same files: the same image ids (SOP Instance UIDs), the
same scores, and WADO-RS URLs (never credentials) as sources that every in-process reader can
read back. No planted PHI may reach anything medai writes or logs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pacs_kit import PHI, chest_dicom, orthanc, upload  # noqa: F401  (fixture)

from medai import dicomweb as web
from medai.dicomweb import ENV_PASSWORD
from medai.images import ImageInputs, decode_image

SIZE = 75  # the tiny model's input
SCORE_TOLERANCE = 1e-4
STUDY = "1.2.826.0.1.3680043.8.498.77"  # one study of two instances


@pytest.fixture
def server(orthanc):  # noqa: F811
    """The module's Orthanc, emptied; its credentials are in the environment (pacs_kit)."""
    for instance in orthanc.json("/instances"):
        orthanc.request("DELETE", f"/instances/{instance}")
    assert orthanc.env.items() <= os.environ.items()
    return orthanc


def _uids(data: bytes) -> web.InstanceRef:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return web.InstanceRef(
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    )


def _wado(server, data: bytes) -> str:
    """The WADO-RS URL medai gives an uploaded instance (its rows' ``source``)."""
    return web.parse_source(server.dicomweb).instance_url(_uids(data))


@pytest.fixture
def loaded(server, tmp_path) -> dict:
    """Three instances in Orthanc (two share :data:`STUDY`) and the same files on disk."""
    files = [chest_dicom(60, bits=16, lesion=True), chest_dicom(61)]
    files += [chest_dicom(62 + i, study_uid=STUDY, modality="CR") for i in range(2)]
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for data in files:
        paths.append(folder / f"{_uids(data).sop}.dcm")
        paths[-1].write_bytes(data)
    upload(server, files)
    return {"server": server, "files": files, "paths": paths}


def test_narrowed_sources_list_only_their_scope(loaded):
    server, files = loaded["server"], loaded["files"]
    refs = [_uids(f) for f in files]
    base = web.parse_source(server.dicomweb)
    study = web.parse_source(f"{server.dicomweb}/studies/{STUDY}/")
    assert (study.url, study.study, study.series) == (base.url, STUDY, None)
    assert study.scope == f"{base.url}/studies/{STUDY}"
    client = web.open_client(base)
    assert {r.sop for r in web.list_instances(client, study)} == {r.sop for r in refs[2:]}
    one = web.parse_source(base.instance_url(refs[3]).replace("http://", "dicomweb+http://"))
    assert one.instance == refs[3].sop and one.scope == base.instance_url(refs[3])
    assert list(web.list_instances(client, one)) == [refs[3]]
    series = web.parse_source(f"{server.dicomweb}/studies/{refs[0].study}/series/{refs[0].series}")
    assert list(web.list_instances(client, series)) == [refs[0]]
    assert list(web.list_instances(client, study, modalities=("DX",))) == []  # they are CR
    assert web.parse_instance_url(base.instance_url(refs[1])) == (
        web.DicomwebSource(base.url),
        refs[1],
    )
    assert web.parse_instance_url(f"{base.url}/studies/{STUDY}") is None


def test_predict_from_dicomweb_equals_predict_on_the_files(tiny_model_dir, loaded):
    from medai.predict import predict_images

    server, files, paths = loaded["server"], loaded["files"], loaded["paths"]
    local = predict_images([str(p) for p in paths], tiny_model_dir)
    urls = [_wado(server, f) for f in files]
    instance = "dicomweb+" + urls[0]  # narrowed to one instance
    remote = predict_images([instance, f"{server.dicomweb}/studies/{STUDY}"], tiny_model_dir)
    assert remote[0]["image"] == urls[0]  # in the order given, each source's instances
    by_url = {r["image"]: r for r in remote}
    assert set(by_url) == {urls[0], urls[2], urls[3]}  # the study's two, not the others
    for url, row in zip(urls, local, strict=True):
        if url in by_url:
            assert by_url[url]["error"] is None and row["error"] is None
            assert by_url[url]["score"] == pytest.approx(row["score"], abs=SCORE_TOLERANCE)
    assert all(server.password not in r["image"] for r in remote)
    [bare] = predict_images([urls[1]], tiny_model_dir)  # a WADO-RS URL as a row gives it
    assert bare["image"] == urls[1]
    assert bare["score"] == pytest.approx(local[1]["score"], abs=SCORE_TOLERANCE)
    gone = urls[1].replace(_uids(files[1]).sop, "1.2.3.4.5")
    [missing] = predict_images([gone], tiny_model_dir)  # an error row, not a crash
    assert missing["score"] is None and "no longer has this instance" in missing["error"]


def test_read_records_and_report_examples_read_wado_urls(loaded):
    from medai.datasets import read_records
    from medai.report.config import THUMBNAIL_SIZE
    from medai.report.examples import read_images

    server, files = loaded["server"], loaded["files"]
    url = _wado(server, files[0])
    [record] = read_records(ImageInputs(files=(url,)))
    assert (record.image_id, record.source, record.error) == (_uids(files[0]).sop, url, "")
    assert np.array_equal(decode_image(record.data, SIZE), decode_image(files[0], SIZE))
    [(image, problem)] = read_images([url], thumbnails=[url]).values()
    assert problem == "" and image.original_size == (64, 64)
    expected = decode_image(files[0], THUMBNAIL_SIZE)[:, :, 0]
    assert np.array_equal(image.thumbnail, expected)
    gone = url.replace(_uids(files[0]).sop, "1.2.3.4.5")
    [(nothing, why)] = read_images([gone], thumbnails=[gone]).values()
    assert nothing is None and "no longer has this instance (HTTP 404)" in why
    far = "http://pacs.example.org/dicom-web/studies/1/series/2/instances/3"
    with pytest.raises(web.DicomwebError, match="--allow-insecure-http"):
        list(read_records(ImageInputs(files=(far,))))
    [(none, refused)] = read_images([far], thumbnails=[far]).values()
    assert none is None and "refusing plain http" in refused


def test_listing_index_gives_studies_and_pseudonymous_patients(server, tmp_path, monkeypatch):
    from medai.dicom_labels import listing_index, resolve_labels
    from medai.labels import load_labels
    from medai.pacs_data import list_new_instances
    from medai.pseudonyms import pseudonym

    files = [chest_dicom(70 + i) for i in range(3)]  # one Patient ID (PHI) in all three
    files.append(chest_dicom(73, study_uid=STUDY, modality="CR"))
    upload(server, files)
    refs = {r.sop: r for r in map(_uids, files)}
    listing = list_new_instances([web.parse_source(server.dicomweb)], frozenset())
    key = b"k" * 32
    index = listing_index(listing, lambda: key)
    assert set(index["image_id"]) == set(refs)
    assert dict(zip(index["image_id"], index["study_id"], strict=True)) == {
        sop: r.study for sop, r in refs.items()
    }
    assert set(index["patient"]) == {pseudonym(PHI["PatientID"], key)}
    assert PHI["PatientID"] not in index.to_csv()
    assert listing_index(listing, None)["patient"].isna().all()  # no key, no patient asked for
    labels_csv = tmp_path / "labels.csv"
    pd.DataFrame({"study": [STUDY, refs[_uids(files[0]).sop].study], "label": [1, 0]}).to_csv(
        labels_csv, index=False
    )
    labels = load_labels(str(labels_csv), "Mass")
    monkeypatch.setenv("MEDAI_ID_KEY", key.decode())
    resolved = resolve_labels(labels, ImageInputs(), None, ("CR", "DX"), listing)
    assert set(resolved["image_id"]) == {_uids(files[0]).sop, _uids(files[3]).sop}
    assert set(resolved["patient_id"]) == {pseudonym(PHI["PatientID"], key)}


def test_wrong_password_stops_train_and_predict_before_work(server, tmp_path, monkeypatch, capsys):
    from medai.cli import main

    labels = tmp_path / "labels.csv"
    labels.write_text("image,label,patient_id\n1.2.3,1,p1\n")
    monkeypatch.setenv(ENV_PASSWORD, "not-the-password")
    out = tmp_path / "model"
    argv = ["train", "--labels", str(labels), "--images", server.dicomweb, "--out", str(out)]
    code = main([*argv, "--weights", "none", "--image-size", str(SIZE)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "HTTP 401" in err and "\n" not in err, err
    assert "not-the-password" not in err and not out.exists()
    # No model directory at all: the login is refused before the model would load.
    code = main(["predict", "--model", str(tmp_path / "no-model"), f"{server.dicomweb}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "HTTP 401" in err and "\n" not in err, err


def _phi_found(root: Path, texts: list[str], values: list[str]) -> list[str]:
    blobs = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    blobs += [text.encode() for text in texts]
    return sorted({v for v in values for blob in blobs if v.encode() in blob})


@pytest.mark.slow  # ~2-4 min on 2 busy cores: Ray Train, then the OpenVINO export
def test_train_from_dicomweb_and_a_folder(
    ray_session, server, tmp_path, monkeypatch, caplog, capsys
):
    import dicom_kit as kit
    from test_dicom_archive import _training_archive

    from medai.cli import main

    records, everything = _training_archive(tmp_path / "all", studies=20)
    folder = tmp_path / "files"
    for study in range(20):  # a quarter of the studies in a folder, the rest in the PACS
        if study % 4 == 0:
            shutil.copytree(everything / f"{study:03d}", folder / f"{study:03d}")
        else:
            upload(
                server, [p.read_bytes() for p in sorted((everything / f"{study:03d}").iterdir())]
            )
    frame = pd.DataFrame(records)
    labels = tmp_path / "labels.csv"
    frame.drop_duplicates("study")[["study", "label"]].to_csv(labels, index=False)
    key = tmp_path / "site.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("MEDAI_ID_KEY_FILE", str(key))
    out = tmp_path / "model"
    argv = ["train", "--labels", str(labels), "--images", server.dicomweb, str(folder)]
    argv += ["--out", str(out), "--epochs", "1", "--batch-size", "8", "--weights", "none"]
    argv += ["--image-size", str(SIZE), "--num-workers", "1", "--max-requests", "2"]
    with caplog.at_level(logging.INFO, logger="medai"):
        code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    split = pd.read_csv(out / "split.csv", dtype=str, keep_default_na=False)
    assert set(split["image_id"]) == set(frame["uid"])  # every instance, by its UID
    in_pacs = {r["uid"] for i, r in enumerate(records) if (i // 2) % 4}
    root = web.parse_source(server.dicomweb).url
    for row in split.itertuples():
        if row.image_id in in_pacs:
            assert row.source.startswith(f"{root}/studies/")
            assert row.source.endswith(f"/instances/{row.image_id}")
        else:
            assert row.source == ""  # a path may name a patient: never written
    assert (split["status"] == "used").sum() == len(split)
    assert split["patient_id"].nunique() == 20  # keyed pseudonyms, one per study here
    assert split["patient_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    card = json.loads((out / "model_card.json").read_text())
    agreement = card["openvino"]["fp32"]["agreement"]
    assert agreement["on"] == "validation split"
    val = split[split["split"] == "val"]
    assert agreement["images"] == len(val) and (val["source"] != "").any()
    secrets = [*kit.PHI.values(), server.password]
    logs = [caplog.text, captured.out, captured.err]
    assert not _phi_found(out, logs, secrets)
