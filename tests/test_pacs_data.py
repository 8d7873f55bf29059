"""Scoring straight from a real Orthanc (DICOMweb), SRs back into it, nightly against it."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pacs_kit import PHI, FaultProxy, chest_dicom, instance_count, orthanc, upload  # noqa: F401

from medai.dicomweb import ENV_PASSWORD, ENV_USER
from medai.images import error_kind
from medai.nightly import NightlyConfig, read_ledger, run_nightly
from medai.pacs_data import PacsOptions
from medai.predictions import prediction_files
from medai.score import ScoreConfig, run_scoring


@pytest.fixture
def server(orthanc):  # noqa: F811
    """The module's Orthanc, emptied; its credentials are in the environment (pacs_kit)."""
    for instance in orthanc.json("/instances"):
        orthanc.request("DELETE", f"/instances/{instance}")
    assert orthanc.env.items() <= os.environ.items()
    return orthanc


def _sop(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _score(model: Path, images: list[str], out: Path, **pacs) -> object:
    config = ScoreConfig(
        model=str(model),
        images=tuple(images),
        out=str(out),
        batch_size=8,
        progress=False,
        pacs=PacsOptions(**pacs),
    )
    return run_scoring(config)


def _rows(out: Path) -> pd.DataFrame:
    rows = pd.concat([pd.read_parquet(p) for p in prediction_files(out)], ignore_index=True)
    return rows.assign(
        kind=rows["error"].map(lambda e: error_kind(e) if isinstance(e, str) else None)
    )


def test_read_errors_from_5xx_are_retried_next_run(ray_session, tiny_model_dir, server, tmp_path):
    files = [chest_dicom(i) for i in range(6)]
    upload(server, files)
    failing = {_sop(files[0]), _sop(files[3])}
    proxy = FaultProxy(server.port, failing=failing).start()
    try:
        out = tmp_path / "out"
        first = _score(tiny_model_dir, [proxy.dicomweb], out, max_requests=2)
        rows = _rows(out)
        assert sorted(rows["image_id"]) == sorted(_sop(f) for f in files)
        read_errors = rows[rows["kind"] == "read"]
        assert set(read_errors["image_id"]) == failing and first.errors >= 2
        assert all("HTTP 503" in e for e in read_errors["error"])
        assert all(s.startswith(proxy.dicomweb[len("dicomweb+") :]) for s in rows["source"])
        assert not any(server.password in s for s in rows["source"])
        assert proxy.peak <= 2  # --max-requests 2 held across all read tasks
        proxy.failing = set()
        second = _score(tiny_model_dir, [proxy.dicomweb], out, max_requests=2)
        rows = _rows(out)
        assert len(rows) == 6 and set(rows["image_id"]) == {_sop(f) for f in files}
        assert not (rows["kind"] == "read").any()
        assert second.scored + second.errors == 2  # only the two read errors were read again
        assert rows["error"].isna().all()
        _assert_no_secrets(out, [server.password, *PHI.values()])
    finally:
        proxy.stop()


def _assert_no_secrets(out: Path, secrets: list[str]) -> None:
    """No password or header PHI in any file medai wrote (Parquet read as text)."""
    for path in out.rglob("*"):
        if not path.is_file() or path.name == "_lock":
            continue
        text = (
            pd.read_parquet(path).to_csv()
            if path.suffix == ".parquet"
            else path.read_bytes().decode("utf-8", "replace")
        )
        found = [s for s in secrets if s in text]
        assert not found, f"{path.name} holds {found}"


def test_wrong_password_stops_before_work_with_one_line(
    tiny_model_dir, server, tmp_path, monkeypatch, capsys
):
    from medai.cli import main

    monkeypatch.setenv(ENV_PASSWORD, "not-the-password")
    argv = ["score", "--model", str(tiny_model_dir), "--images", server.dicomweb]
    code = main([*argv, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "HTTP 401" in err and "\n" not in err
    assert "not-the-password" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


def test_credentials_in_the_url_are_refused(tiny_model_dir, server, tmp_path, monkeypatch):
    from medai.dicomweb import DicomwebError

    url = server.dicomweb.replace("http://", f"http://{server.user}:{server.password}@")
    monkeypatch.delenv(ENV_USER)
    # Raised as itself (a MedaiError: one line, exit 2), not re-wrapped by score.
    with pytest.raises(DicomwebError, match="do not go in the URL") as caught:
        _score(tiny_model_dir, [url], tmp_path / "out")
    assert server.password not in str(caught.value)


def test_scoring_from_dicomweb_equals_scoring_the_files(
    ray_session, tiny_model_dir, server, tmp_path
):
    files = [chest_dicom(i, bits=8 if i % 2 else 16, lesion=i % 3 == 0) for i in range(6)]
    folder = tmp_path / "files"
    folder.mkdir()
    for data in files:
        (folder / f"{_sop(data)}.dcm").write_bytes(data)
    upload(server, files)
    _score(tiny_model_dir, [str(folder)], tmp_path / "from-files")
    _score(tiny_model_dir, [server.dicomweb], tmp_path / "from-pacs")
    local = _rows(tmp_path / "from-files").set_index("image_id")
    remote = _rows(tmp_path / "from-pacs").set_index("image_id")
    assert sorted(remote.index) == sorted(_sop(f) for f in files) == sorted(local.index)
    assert remote["error"].isna().all()
    assert np.allclose(remote["score"], local.loc[remote.index, "score"], atol=1e-4)
    assert all("/instances/" in s and server.password not in s for s in remote["source"])


def test_nightly_reads_only_new_arrivals_within_since(
    ray_session, tiny_model_dir, server, tmp_path
):
    files = [chest_dicom(80 + i) for i in range(3)]
    upload(server, files[:2])
    config = NightlyConfig.of(
        images=(server.dicomweb,),
        model=str(tiny_model_dir),
        store=str(tmp_path / "store"),
        pacs=PacsOptions(since="2026-01-01"),
    )
    first = run_nightly(config)
    assert (first.scored + first.errors, first.skipped) == (2, 0)
    upload(server, files[2:])
    second = run_nightly(config)
    assert (second.scored + second.errors, second.skipped) == (1, 2)  # only the new arrival
    later = PacsOptions(since="2099-01-01")
    future = dataclasses.replace(config, scoring=dataclasses.replace(config.scoring, pacs=later))
    third = run_nightly(future)  # the StudyDate range lists nothing
    assert (third.scored + third.errors, third.skipped) == (0, 0)
    assert [r["status"] for r in read_ledger(tmp_path / "store")] == ["succeeded"] * 3


@pytest.mark.slow  # three nightly runs (~100 s on a loaded 2-core host)
def test_nightly_scores_new_arrivals_and_leaves_one_sr_per_image(
    ray_session, tiny_model_dir, server, tmp_path
):
    from medai.sr import read_report

    files = [chest_dicom(20 + i) for i in range(5)]
    upload(server, files[:3])
    store = tmp_path / "store"
    config = NightlyConfig.of(
        images=(server.dicomweb,),
        model=str(tiny_model_dir),
        store=str(store),
        pacs=PacsOptions(results_to=server.dicomweb, since="2026-01-01"),
    )
    assert run_nightly(config).scored == 3
    upload(server, files[3:])
    second = run_nightly(config)
    assert (second.scored, second.skipped) == (2, 3)
    third = run_nightly(config)
    assert (third.scored, third.skipped) == (0, 5)
    ledger = read_ledger(store)
    assert [r["srs_sent"] for r in ledger] == [3, 2, 0]
    srs = [
        i
        for i in server.json("/instances")
        if server.json(f"/instances/{i}/simplified-tags")["Modality"] == "SR"
    ]
    assert len(srs) == 5 and instance_count(server) == 10
    report = pydicom.dcmread(io.BytesIO(server.request("GET", f"/instances/{srs[0]}/file")))
    assert set(read_report(report)) == {"Mass"}


def test_srs_that_fail_to_go_are_sent_next_run(ray_session, tiny_model_dir, server, tmp_path):
    files = [chest_dicom(40 + i) for i in range(3)]
    upload(server, files)
    proxy = FaultProxy(server.port, fail_posts=True).start()
    try:
        out = tmp_path / "out"
        first = _score(tiny_model_dir, [server.dicomweb], out, results_to=proxy.dicomweb)
        assert (first.scored, first.results.sent, first.results.failed) == (3, 0, 3)
        proxy.fail_posts = False
        second = _score(tiny_model_dir, [server.dicomweb], out, results_to=proxy.dicomweb)
        assert (second.scored, second.results.sent, second.results.already) == (0, 3, 0)
        third = _score(tiny_model_dir, [server.dicomweb], out, results_to=str(tmp_path / "srs"))
        assert third.results.sent == 3 and len(list((tmp_path / "srs").glob("*.dcm"))) == 3
    finally:
        proxy.stop()
    assert instance_count(server) == 6
