"""A real PACS for the tests: an Orthanc with its DICOMweb plugin, and DICOM files to load into it.

:func:`start_orthanc` runs ``/usr/sbin/Orthanc`` (Debian's ``orthanc`` and ``orthanc-dicomweb``
packages, which ``.ci/run`` installs) on a free loopback port, with HTTP basic authentication on
(a random password), its DICOM server off (nothing but HTTP is needed, so nothing else listens)
and its storage in a temporary folder. The ``orthanc`` fixture gives one per test module; tests
skip, saying why, only when the binary or the plugin is not installed.

:func:`chest_dicom` writes a small CR/DX radiograph with pydicom (MONOCHROME2, 8 or 16 bits, the
pixels of a phantom from :mod:`medai.phantoms`), with PHI-looking values planted in the header
so that tests can look for them in every output. :func:`upload` stores files through Orthanc's
REST API (``POST /instances``).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Lock, Thread

import numpy as np
import pytest

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER = "medai"
# One password per test process, in the environment from import on: Ray's workers inherit the
# environment of the process that starts Ray, as they do in production, and the session's Ray
# may start before any Orthanc fixture does.
PASSWORD = secrets.token_urlsafe(16)
CREDENTIALS = {"MEDAI_DICOMWEB_USER": USER, "MEDAI_DICOMWEB_PASSWORD": PASSWORD}
os.environ.update(CREDENTIALS)
READY_SECONDS = 60
# Planted in every test file's header; none of these may reach anything medai writes.
PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-4711-SECRET",
    "PatientBirthDate": "19450203",
    "AccessionNumber": "ACC-99887766",
    "InstitutionName": "St Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20260115",
    "DeviceSerialNumber": "SN-SECRET-42",
}

__all__ = [
    "PHI",
    "CREDENTIALS",
    "Orthanc",
    "start_orthanc",
    "orthanc_missing",
    "free_port",
    "chest_dicom",
    "upload",
    "instance_count",
    "FaultProxy",
]


@dataclass
class Orthanc:
    """A running Orthanc: where it listens and how to log in."""

    process: subprocess.Popen
    port: int
    user: str
    password: str
    folder: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root as medai takes it (``dicomweb+http://...``)."""
        return f"dicomweb+{self.base}/dicom-web"

    @property
    def env(self) -> dict[str, str]:
        """The environment variables that give medai this server's credentials."""
        return {"MEDAI_DICOMWEB_USER": self.user, "MEDAI_DICOMWEB_PASSWORD": self.password}

    def request(self, method: str, path: str, data: bytes | None = None, **headers) -> bytes:
        """One authenticated REST request; returns the response body."""
        token = b64encode(f"{self.user}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Basic {token}", **headers},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def json(self, path: str):
        return json.loads(self.request("GET", path))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def orthanc_missing() -> str | None:
    """Why no Orthanc can run here, or ``None`` when it can."""
    for path, package in ((ORTHANC, "orthanc"), (DICOMWEB_PLUGIN, "orthanc-dicomweb")):
        if not path.exists():
            return f"{path} not found (Debian package {package}; .ci/run installs it)"
    return None


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(folder: Path, port: int, password: str) -> dict:
    return {
        "Name": "medai-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        # Orthanc 1.10 cannot bind HTTP to one address; it refuses every non-loopback client.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: password},
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        "SaveJobs": False,
        "HttpTimeout": 30,
        "StableAge": 1,
    }


def start_orthanc(folder: Path) -> Orthanc:
    """Start an Orthanc with its storage under ``folder`` and wait until it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    password = PASSWORD
    port = free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(_config(folder, port, password)))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [str(ORTHANC), "--no-jobs", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    server = Orthanc(process, port, USER, password, folder)
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            if server.json("/plugins").count("dicom-web"):
                return server
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within {READY_SECONDS} s")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc with DICOMweb for the test module; stopped at its end."""
    if reason := orthanc_missing():
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


def _phantom_pixels(seed: int, size: int, bits: int, lesion: bool) -> np.ndarray:
    from medai.phantoms import PhantomSpec, render_phantom

    pixels = render_phantom(np.random.default_rng(seed), size, lesion, PhantomSpec(size=size))
    if bits == 8:
        return pixels
    return pixels.astype(np.uint16) * 16  # 12 of 16 bits used, as CR/DX store


def chest_dicom(
    seed: int,
    size: int = 64,
    bits: int = 8,
    modality: str = "DX",
    lesion: bool = False,
    study_uid: str | None = None,
) -> bytes:
    """A part-10 chest radiograph (explicit VR little endian) with phantom pixels.

    Args:
        seed: Picks the phantom and derives the UIDs (same seed, same instance).
        size: Rows and columns.
        bits: 8 or 16 bits allocated (16: 12 bits stored).
        modality: ``CR`` or ``DX``.
        lesion: Whether the phantom carries a lesion.
        study_uid: The Study Instance UID (default: one per seed).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {
        "CR": "1.2.840.10008.5.1.4.1.1.1",
        "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    }[modality]
    pixels = _phantom_pixels(seed, size, bits, lesion)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sop", str(seed)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid(entropy_srcs=["study", str(seed)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(seed)])
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.PatientSex = "F" if seed % 2 else "M"
    ds.PatientAge = f"{40 + seed % 30:03d}Y"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "PhantomWorks"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = 8 if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def upload(server: Orthanc, files: list[bytes]) -> list[str]:
    """Store part-10 files in Orthanc (REST ``POST /instances``); returns their Orthanc ids."""
    ids = []
    for data in files:
        answer = json.loads(
            server.request("POST", "/instances", data, **{"Content-Type": "application/dicom"})
        )
        ids.append(answer["ID"])
    return ids


def instance_count(server: Orthanc) -> int:
    """How many instances Orthanc holds."""
    return int(server.json("/statistics")["CountInstances"])


_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class FaultProxy:
    """A real HTTP proxy thread in front of Orthanc that answers 503 for chosen instances.

    Requests whose path contains one of ``failing`` get a 503 (``times`` times each, then they
    pass; ``None``: always); every other request is forwarded to Orthanc as is. ``seen`` counts
    requests per failing UID, so tests can check retries happened; ``fail_posts`` fails every
    POST (STOW-RS); ``peak`` is the most requests it ever had in flight at once.
    """

    upstream_port: int
    failing: set[str] = field(default_factory=set)
    times: int | None = None
    seen: dict[str, int] = field(default_factory=dict)
    fail_posts: bool = False
    in_flight: int = 0
    peak: int = 0
    lock: Lock = field(default_factory=Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def dicomweb(self) -> str:
        return f"dicomweb+http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_GET(self):
                proxy.handle(self)

            def do_POST(self):
                proxy.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _should_fail(self, path: str) -> bool:
        with self.lock:
            for uid in self.failing:
                if uid in path:
                    self.seen[uid] = self.seen.get(uid, 0) + 1
                    return self.times is None or self.seen[uid] <= self.times
        return False

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            self._answer(request, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, request: BaseHTTPRequestHandler, body: bytes | None) -> None:
        if self._should_fail(request.path) or (self.fail_posts and request.command == "POST"):
            request.send_response(503, "Service Unavailable")
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        upstream = HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            upstream.request(request.command, request.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        request.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in _HOP_HEADERS:
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
