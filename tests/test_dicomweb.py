"""DICOMweb sources against a real Orthanc: parsing, credentials, login, paging, retrieval."""

from __future__ import annotations

import io
from datetime import date

import numpy as np
import pydicom
import pytest
from pacs_kit import FaultProxy, chest_dicom, orthanc, upload  # noqa: F401  (fixture)

from medai import dicomweb as web
from medai.images import ImageError

SHARED_STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture(scope="module")
def loaded(orthanc):  # noqa: F811
    """Orthanc holding 5 single-image studies and one study of 3 images (8 and 16 bits)."""
    files = [chest_dicom(i, bits=8 if i % 2 else 16) for i in range(5)]
    files += [chest_dicom(10 + i, study_uid=SHARED_STUDY, modality="CR") for i in range(3)]
    upload(orthanc, files)
    return orthanc, files


def _client(server, source=None, env=None):
    source = source or web.parse_source(server.dicomweb)
    return web.open_client(source, env=server.env if env is None else env), source


def test_parse_source_filters_and_refusals():
    source = web.parse_source("dicomweb+https://pacs.example.org/dicom-web/?ModalitiesInStudy=DX")
    assert source.url == "https://pacs.example.org/dicom-web"
    assert source.filters == (("ModalitiesInStudy", "DX"),)
    with pytest.raises(web.DicomwebError, match="MEDAI_DICOMWEB_USER"):
        web.parse_source("dicomweb+https://alice:secret@pacs.example.org/dicom-web")
    with pytest.raises(web.DicomwebError, match="--allow-insecure-http"):
        web.parse_source("dicomweb+http://pacs.example.org/dicom-web")
    allowed = web.parse_source("dicomweb+http://pacs.example.org/dw", allow_insecure_http=True)
    assert allowed.url == "http://pacs.example.org/dw"
    assert web.parse_source("dicomweb+http://127.0.0.1:8042/dicom-web").host == "127.0.0.1"
    assert web.parse_source("dicomweb+http://localhost/dicom-web").host == "localhost"
    with pytest.raises(web.DicomwebError):
        web.parse_source("https://pacs.example.org/dicom-web")


def test_since_range_and_bad_since():
    assert web.since_range("2d", today=date(2026, 3, 2)) == "20260228-"
    assert web.since_range("2026-01-31") == "20260131-"
    with pytest.raises(web.DicomwebError, match="--since"):
        web.since_range("yesterday")


def test_credentials_come_in_pairs_and_one_kind(tmp_path):
    source = web.parse_source("dicomweb+https://pacs.example.org/dicom-web")
    with pytest.raises(web.DicomwebError, match="go together"):
        web.open_client(source, env={web.ENV_USER: "a"})
    with pytest.raises(web.DicomwebError, match="not both"):
        web.open_client(source, env={web.ENV_USER: "a", web.ENV_PASSWORD: "b", web.ENV_TOKEN: "t"})
    with pytest.raises(web.DicomwebError, match="--ca-bundle"):
        web.open_client(source, ca_bundle=str(tmp_path / "missing.pem"), env={})
    client = web.open_client(source, env={web.ENV_TOKEN: "tok"})
    assert client._session.headers["Authorization"] == "Bearer tok"
    assert client._session.verify is True


def test_wrong_password_is_one_line_naming_no_secret(loaded):
    server, _ = loaded
    env = {web.ENV_USER: server.user, web.ENV_PASSWORD: "wrong-password-xyz"}
    client, source = _client(server, env=env)
    with pytest.raises(web.DicomwebError) as caught:
        web.check_login(client, source)
    text = str(caught.value)
    assert "HTTP 401" in text and "\n" not in text and "wrong-password-xyz" not in text
    web.check_login(*_client(server))  # the right one passes


def test_unreachable_server_is_one_line():
    source = web.parse_source("dicomweb+http://127.0.0.1:9/dicom-web")
    with pytest.raises(web.DicomwebError, match="cannot reach"):
        web.check_login(web.open_client(source, env={}), source)


def test_listing_pages_through_studies_and_instances(loaded):
    server, files = loaded
    client, source = _client(server)
    refs = list(web.list_instances(client, source, page=2))
    uids = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files}
    assert {r.sop for r in refs} == uids and len(refs) == len(uids)
    assert sum(r.study == SHARED_STUDY for r in refs) == 3
    filtered = web.parse_source(server.dicomweb + "?ModalitiesInStudy=CR")
    assert {r.study for r in web.list_instances(client, filtered, page=2)} == {SHARED_STUDY}
    assert list(web.list_instances(client, source, since="2099-01-01")) == []
    assert len(list(web.list_instances(client, source, since="2026-01-01"))) == len(uids)


def test_retrieval_gives_the_stored_part10_instance(loaded):
    server, files = loaded
    client, source = _client(server)
    originals = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID: f for f in files}
    for ref in web.list_instances(client, source):
        data = web.retrieve_instance(client, ref)
        assert data[128:132] == b"DICM"
        got, want = (pydicom.dcmread(io.BytesIO(d)) for d in (data, originals[ref.sop]))
        assert got.SOPInstanceUID == ref.sop
        assert np.array_equal(got.pixel_array, want.pixel_array)
        assert source.instance_url(ref).endswith(f"/instances/{ref.sop}")


def test_gone_instance_is_a_final_error(loaded):
    server, _ = loaded
    client, source = _client(server)
    ref = next(web.list_instances(client, source))._replace(sop="1.2.3.4.5")
    with pytest.raises(ImageError) as caught:
        web.retrieve_instance(client, ref, backoff=0.01)
    assert caught.value.kind == "decode" and "HTTP 404" in caught.value.text


def test_5xx_is_retried_then_a_read_error(loaded):
    server, _ = loaded
    client, _ = _client(server)
    refs = list(web.list_instances(client, web.parse_source(server.dicomweb)))
    proxy = FaultProxy(server.port, failing={refs[0].sop, refs[1].sop}, times=2).start()
    try:
        source = web.parse_source(proxy.dicomweb)
        client, _ = _client(server, source)
        assert web.retrieve_instance(client, refs[0], retries=2, backoff=0.01)[128:132] == b"DICM"
        assert proxy.seen[refs[0].sop] == 3
        proxy.times = None  # from now on refs[1] always fails
        with pytest.raises(ImageError) as caught:
            web.retrieve_instance(client, refs[1], retries=2, backoff=0.01)
        assert caught.value.kind == "read" and "HTTP 503" in caught.value.text
        assert proxy.seen[refs[1].sop] == 3  # the first try and two retries
    finally:
        proxy.stop()
