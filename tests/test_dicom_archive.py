"""A hospital's DICOM archive end to end: score, predict and train on DICOM folders with real
Ray and real Keras models, rows keyed by SOP Instance UID, and no planted PHI in any output."""

from __future__ import annotations

import logging
from pathlib import Path

import dicom_kit as kit
import numpy as np
import pandas as pd
import pytest

SIZE = 75  # the tiny model's input
# Scores of one image in different batches differ by fp32 kernel blocking (~1e-6): not bit-exact.
SCORE_TOLERANCE = 1e-4
LOSSLESS = ("explicit", "implicit", "rle", "jpegls", "j2k", "jpeg-sv1")


def _phi_found(paths: list[Path], texts: list[str] = ()) -> list[str]:
    """The planted PHI values found in any byte of ``paths`` (recursively) or in ``texts``."""
    blobs = [p.read_bytes() for root in paths for p in [root, *root.rglob("*")] if p.is_file()]
    blobs += [text.encode() for text in texts]
    return [value for value in kit.PHI.values() for blob in blobs if value.encode() in blob]


@pytest.fixture
def archive(tmp_path) -> dict:
    """A DICOM export (several syntaxes, one instance twice, an SR, a CT, a broken file) and
    the PNG twins of its radiographs."""
    dicoms, twins, uids = {}, {}, {}
    for index, syntax in enumerate(LOSSLESS):
        pixels = kit.phantom_pixels(80, seed=index)
        ds = kit.dataset(pixels)
        dicoms[f"patient-Zyxwortel/{syntax}.dcm"] = kit.to_bytes(ds, syntax)
        twins[f"{syntax}.png"] = kit.png_bytes(pixels)
        uids[ds.SOPInstanceUID] = f"{syntax}.png"
    dicoms["copy/IM0001"] = dicoms["patient-Zyxwortel/explicit.dcm"]  # one instance, two files
    dicoms["sr.dcm"] = kit.to_bytes(kit.dataset(None))
    dicoms["ct.dcm"] = kit.to_bytes(kit.dataset(kit.phantom_pixels(72), modality="CT"))
    # A truncated copy of a scored instance (its score wins) and a truncated instance of its own.
    dicoms["copy/rle-cut.dcm"] = dicoms["patient-Zyxwortel/rle.dcm"][:600]
    dicoms["broken.dcm"] = kit.to_bytes(kit.dataset(kit.phantom_pixels(72)))[:900]
    kit.write_dicoms(tmp_path / "dicom", dicoms)
    kit.write_dicoms(tmp_path / "png", twins)
    return {"root": tmp_path, "uids": uids}


def _score(images: Path, model: Path, out: Path):
    from medai.score import ScoreConfig, run_scoring

    config = ScoreConfig(
        model=str(model), images=(str(images),), out=str(out), batch_size=4, progress=False
    )
    return run_scoring(config)


def test_score_a_dicom_folder_like_its_png_twins(ray_session, tiny_model_dir, archive, caplog):
    root = archive["root"]
    with caplog.at_level(logging.INFO, logger="medai"):
        summary = _score(root / "dicom", tiny_model_dir, root / "out-dicom")
    _score(root / "png", tiny_model_dir, root / "out-png")
    rows = pd.read_parquet(root / "out-dicom")
    png = pd.read_parquet(root / "out-png").set_index("image_id")
    scored = rows[rows["error"].isna()].set_index("image_id")
    # One row per instance (the copy collapsed), keyed by its SOP Instance UID.
    assert sorted(scored.index) == sorted(archive["uids"])
    for uid, twin in archive["uids"].items():
        assert scored.loc[uid, "score"] == pytest.approx(
            png.loc[twin, "score"], abs=SCORE_TOLERANCE
        )
    assert (scored["modality"] == "CR").all() and (scored["sex"] == "F").all()
    assert (scored["age"] == 45.0).all() and (scored["view"] == "PA").all()
    assert (scored["manufacturer"] == "Acme Imaging").all() and scored["study_id"].notna().all()
    assert png["study_id"].isna().all() and png["modality"].isna().all()
    failed = rows[rows["error"].notna()]
    assert len(failed) == 1 and failed["error"].iloc[0].startswith("decode error: ")
    # The SR and the CT are not radiographs: skipped and counted, not rows.
    assert dict(summary.ignored) == {"no pixel data": 1, "modality CT": 1}
    assert "2 not radiographs (1 modality CT, 1 no pixel data)" in summary.line()
    # `source` keeps the user's own paths (here a folder named after a patient): by design.
    assert rows["source"].str.contains("patient-Zyxwortel").any()
    assert not _phi_found([root / "out-dicom"], [caplog.text, summary.line()])
    _check_deidentified_report(rows, root, caplog)


def _check_deidentified_report(rows: pd.DataFrame, root: Path, caplog) -> None:
    """``medai report --deidentify --no-images``: no image id, study id, source or PHI left."""
    from medai.report import ReportConfig, run_report

    scored = rows[rows["error"].isna()].reset_index(drop=True)
    labels = root / "labels.csv"
    pd.DataFrame({"image": scored["image_id"], "label": scored.index % 2}).to_csv(
        labels, index=False
    )
    key = root / "site.key"
    key.write_bytes(b"fedcba9876543210fedcba9876543210")
    out = root / "report"
    config = ReportConfig(
        predictions=str(root / "out-dicom"),
        labels=str(labels),
        out=str(out),
        finding="Mass",
        split="all",
        bootstrap=20,
        images=False,
        deidentify=True,
        id_key=str(key),
        processes=1,
    )
    caplog.clear()  # the scoring's own log names its sources: searched above, not here
    with caplog.at_level(logging.INFO, logger="medai"):
        metrics = run_report(config)
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file()
    assert {"modality", "manufacturer"} <= set(metrics["subgroup_attributes"])
    identifiers = [*rows["image_id"], *rows["study_id"].dropna(), *rows["source"]]
    identifiers += [str(root / "dicom")]
    blobs = [p.read_bytes() for p in out.rglob("*") if p.is_file()] + [caplog.text.encode()]
    leaked = [i for i in identifiers for blob in blobs if i.encode() in blob]
    assert not leaked
    assert not _phi_found([out])


def test_predict_one_dcm(tiny_model_dir, archive):
    from medai.predict import predict_images

    root = archive["root"]
    dcm = root / "dicom" / "patient-Zyxwortel" / "j2k.dcm"
    [from_dicom] = predict_images([str(dcm)], tiny_model_dir)
    [from_png] = predict_images([str(root / "png" / "j2k.png")], tiny_model_dir)
    assert from_dicom["error"] is None
    assert from_dicom["score"] == pytest.approx(from_png["score"], abs=SCORE_TOLERANCE)
    [sr] = predict_images([str(root / "dicom" / "sr.dcm")], tiny_model_dir)
    assert sr["score"] is None and "without pixel data" in sr["error"]


def _training_archive(folder: Path, studies: int = 32) -> tuple[list[dict], Path]:
    """Two views per study, one patient per study; half the studies show a lesion."""
    from medai.phantoms import PhantomSpec, render_phantom

    spec = PhantomSpec(n_patients=1, size=80, seed=0)
    rng = np.random.default_rng(0)
    records, files = [], {}
    for study in range(studies):
        lesion = study % 2 == 0
        study_uid, patient = kit.new_uid(), f"PID-7734-QX-{study:03d}"
        for view in ("PA", "LL"):
            pixels = render_phantom(rng, 80, lesion, spec)
            ds = kit.dataset(pixels, study_uid=study_uid, patient_id=patient, ViewPosition=view)
            files[f"{study:03d}/{view}"] = kit.to_bytes(ds, "explicit")  # extensionless
            records.append({"uid": ds.SOPInstanceUID, "study": study_uid, "label": int(lesion)})
    kit.write_dicoms(folder, files)
    return records, folder


@pytest.mark.slow  # 3-5 min on 2 busy cores; test_dicom_labels covers the labels without Ray
@pytest.mark.parametrize("level", ["image", "study"])
def test_train_on_a_dicom_folder(ray_session, tmp_path, monkeypatch, caplog, level):
    from medai.train import TrainConfig, run_training

    records, images = _training_archive(tmp_path / "dicom")
    frame = pd.DataFrame(records)
    labels = tmp_path / "labels.csv"
    if level == "image":
        frame.rename(columns={"uid": "image"})[["image", "label"]].to_csv(labels, index=False)
    else:
        frame.drop_duplicates("study")[["study", "label"]].to_csv(labels, index=False)
    key = tmp_path / "site.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    monkeypatch.setenv("MEDAI_ID_KEY_FILE", str(key))
    out = tmp_path / "model"
    with caplog.at_level(logging.INFO, logger="medai"):
        card = run_training(
            TrainConfig(
                labels=str(labels),
                images=(str(images),),
                out=str(out),
                finding="Mass",
                epochs=1,
                batch_size=8,
                image_size=SIZE,
                weights="none",
                num_workers=1,
                export_openvino=False,
            )
        )
    split = pd.read_csv(out / "split.csv")
    assert set(split["image_id"]) == set(frame["uid"])  # every instance, by its UID
    # Patients are keyed pseudonyms of the Patient ID: one per study here, never the plain ID.
    assert split["patient_id"].nunique() == frame["study"].nunique()
    assert split["patient_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert card["model_id"]
    assert not _phi_found([out], [caplog.text])
