"""Labels of DICOM images: SOP Instance UIDs, study-level labels and keyed patients (no Ray)."""

from __future__ import annotations

import dicom_kit as kit
import pandas as pd
import pytest

from medai.dicom_labels import header_index, resolve_labels
from medai.images import discover_images
from medai.labels import LabelError, load_labels
from medai.pseudonyms import IdKeyError, pseudonym

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def export(tmp_path):
    """Two studies of two images each (one patient per study), an SR and a CT."""
    files, rows = {}, []
    for study in range(2):
        study_uid = kit.new_uid()
        for view in range(2):
            ds = kit.dataset(
                kit.phantom_pixels(72, seed=view), study_uid=study_uid, patient_id=f"P{study}"
            )
            files[f"s{study}/IM{view}"] = kit.to_bytes(ds)
            rows.append({"uid": ds.SOPInstanceUID, "study": study_uid, "patient": f"P{study}"})
    files["sr.dcm"] = kit.to_bytes(kit.dataset(None, study_uid=rows[0]["study"]))
    files["ct.dcm"] = kit.to_bytes(kit.dataset(kit.phantom_pixels(72), modality="CT"))
    kit.write_dicoms(tmp_path / "images", files)
    return tmp_path, pd.DataFrame(rows)


def test_header_index_names_radiographs_by_uid_with_keyed_patients(export):
    root, truth = export
    index = header_index(discover_images([str(root / "images")]), key=lambda: KEY)
    assert sorted(index["image_id"]) == sorted(truth["uid"])  # the SR and the CT left out
    expected = {row.uid: pseudonym(row.patient, KEY) for row in truth.itertuples()}
    assert dict(zip(index["image_id"], index["patient"], strict=True)) == expected


def test_study_labels_reach_every_image_of_the_study(export, monkeypatch):
    root, truth = export
    monkeypatch.setenv("MEDAI_ID_KEY", KEY.decode())
    labels_csv = root / "labels.csv"
    pd.DataFrame({"study": truth["study"].unique(), "label": [1, 0]}).to_csv(
        labels_csv, index=False
    )
    labels = load_labels(labels_csv, "Mass")
    assert labels.attrs["level"] == "study"
    resolved = resolve_labels(labels, discover_images([str(root / "images")]))
    assert sorted(resolved["image_id"]) == sorted(truth["uid"])
    by_image = resolved.set_index("image_id")
    for row in truth.itertuples():
        assert by_image.loc[row.uid, "label"] == (1 if row.study == truth["study"][0] else 0)
        assert by_image.loc[row.uid, "patient_id"] == pseudonym(row.patient, KEY)


def test_instance_labels_by_uid_without_patients_need_the_key(export, monkeypatch):
    root, truth = export
    labels_csv = root / "labels.csv"
    pd.DataFrame({"image": truth["uid"], "label": [1, 0, 1, 0]}).to_csv(labels_csv, index=False)
    inputs = discover_images([str(root / "images")])
    monkeypatch.delenv("MEDAI_ID_KEY", raising=False)
    monkeypatch.delenv("MEDAI_ID_KEY_FILE", raising=False)
    with pytest.raises(IdKeyError, match="patient_id column"):
        resolve_labels(load_labels(labels_csv, "Mass"), inputs)
    key = root / "site.key"
    key.write_bytes(KEY)
    resolved = resolve_labels(load_labels(labels_csv, "Mass"), inputs, id_key=str(key))
    assert resolved["patient_id"].nunique() == 2  # two patients, keyed
    assert not resolved["patient_id"].isin(["P0", "P1"]).any()


def test_labels_with_patient_ids_read_no_header(export):
    root, truth = export
    labels_csv = root / "labels.csv"
    frame = pd.DataFrame({"image": truth["uid"], "label": [1, 0, 1, 0], "patient_id": "x"})
    frame.to_csv(labels_csv, index=False)
    labels = load_labels(labels_csv, "Mass")
    assert resolve_labels(labels, discover_images([str(root / "images")])) is labels


def test_study_labels_without_matching_images_stop(export):
    root, _ = export
    labels_csv = root / "labels.csv"
    pd.DataFrame({"study": ["1.2.3"], "label": [1], "patient_id": ["p"]}).to_csv(
        labels_csv, index=False
    )
    with pytest.raises(LabelError, match="no DICOM image"):
        resolve_labels(load_labels(labels_csv, "Mass"), discover_images([str(root / "images")]))
