"""Results back where radiologists read them: one DICOM SR per scored image, to a folder or a PACS.

``--results-to DIR`` writes each SR as ``DIR/<SR SOP Instance UID>.dcm`` (temporary name, then
rename); ``--results-to dicomweb+https://...`` stores it with STOW-RS. :func:`send_results` runs
after scoring, from the Parquet rows: every image this model scored for all its findings and
whose SR this target has not acknowledged yet gets one, so an SR that failed to go (a PACS down,
a killed run) goes with the next run, and a score is never lost for it. What each target
acknowledged is recorded beside the predictions, in ``OUT/_results/<target>/sent-*.parquet``
(image_id, model_id, SR UID; written then renamed), where the target's folder name is a hash of
its address, never credentials.

The SR needs the image's header (patient and study modules): from the PACS it came from
(WADO-RS metadata) or from its file (read up to the pixels; archive members in one pass per
archive). An image without a DICOM header (a PNG) gets no SR: it is counted once and recorded
with an empty SR UID, so it is not read again. Requests in flight stay within ``max_requests``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from medai.dicomweb import (
    DEFAULT_MAX_REQUESTS,
    DicomwebError,
    DicomwebSource,
    InstanceRef,
    is_dicomweb,
    open_client,
    parse_instance_url,
    parse_source,
)

__all__ = [
    "ResultsTarget",
    "ResultsSummary",
    "parse_target",
    "write_report_file",
    "store_report",
    "sent_images",
    "send_results",
]

logger = logging.getLogger("medai.results")
RESULTS_DIR = "_results"
_DUPLICATE = 0x0111  # PS3.4 C.5.2: Duplicate SOP Instance: the PACS has it already


@dataclass(frozen=True)
class ResultsTarget:
    """Where SRs go: a folder or a DICOMweb server (never both)."""

    folder: str | None = None
    server: DicomwebSource | None = None

    @property
    def name(self) -> str:
        """The target as logs and configs show it (no credentials are ever part of it)."""
        return self.server.url if self.server else str(self.folder)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:16]


@dataclass
class ResultsSummary:
    """What one :func:`send_results` did."""

    sent: int = 0
    failed: int = 0
    not_dicom: int = 0
    already: int = 0

    def line(self) -> str:
        return (
            f"SRs: {self.sent} sent, {self.already} sent before, {self.failed} failed "
            f"(sent next run), {self.not_dicom} images without a DICOM header"
        )


def parse_target(text: str, allow_insecure_http: bool = False) -> ResultsTarget:
    """``--results-to``: a ``dicomweb+http(s)://`` server or a folder."""
    if is_dicomweb(text):
        server = parse_source(text, allow_insecure_http)
        if server.study:
            raise DicomwebError(f"--results-to names a server (its root), not a study: {text}")
        return ResultsTarget(server=server)
    from medai.paths import folder_problem

    if problem := folder_problem("--results-to", text):
        raise DicomwebError(problem)
    return ResultsTarget(folder=str(Path(text).resolve()))


def write_report_file(folder: str | Path, dataset) -> Path:
    """Write an SR as ``<SOP Instance UID>.dcm`` (temporary name, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    dataset.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


def store_report(client, dataset) -> None:
    """STOW-RS one SR; a PACS that has this SOP Instance already counts as stored."""
    import requests

    try:
        client.store_instances([dataset])
    except requests.HTTPError as exc:
        if not _only_duplicates(exc.response):
            raise


def _only_duplicates(response) -> bool:
    """Whether a refused STOW-RS refused only because the instances exist (HTTP 409)."""
    if response is None or response.status_code != 409:
        return False
    try:
        import pydicom

        answer = pydicom.Dataset.from_json(response.json())
        failed = answer.get("FailedSOPSequence", [])
        return bool(failed) and all(item.FailureReason == _DUPLICATE for item in failed)
    except Exception:  # an answer that does not parse is not a duplicate we can vouch for
        return False


def _sent_folder(out: Path, target: ResultsTarget) -> Path:
    return out / RESULTS_DIR / target.key


def _recorded(out: str | Path, model_id: str, target: ResultsTarget) -> dict[str, str]:
    """``{image_id: SR UID}`` recorded for this model and target (``""``: no DICOM header)."""
    import pyarrow.parquet as pq

    folder = _sent_folder(Path(out), target)
    found: dict[str, str] = {}
    for path in sorted(folder.glob("sent-*.parquet")) if folder.is_dir() else ():
        table = pq.read_table(path, columns=["image_id", "model_id", "sr_uid"]).to_pydict()
        rows = zip(table["image_id"], table["model_id"], table["sr_uid"], strict=True)
        found.update((i, u) for i, m, u in rows if m == model_id)
    return found


def sent_images(out: str | Path, model_id: str, target: ResultsTarget) -> frozenset[str]:
    """Image ids whose SR from ``model_id`` this target acknowledged."""
    return frozenset(i for i, uid in _recorded(out, model_id, target).items() if uid)


def _record_sent(out: Path, target: ResultsTarget, model_id: str, sent: list[tuple]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not sent:
        return
    folder = _sent_folder(out, target)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "target.txt").write_text(target.name + "\n")
    image_ids, sr_uids = zip(*sent, strict=True)
    table = pa.table(
        {
            "image_id": list(image_ids),
            "model_id": [model_id] * len(sent),
            "sr_uid": list(sr_uids),
            "sent_at": pa.array(
                [datetime.now(timezone.utc)] * len(sent), pa.timestamp("us", tz="UTC")
            ),
        }
    )
    name = f"sent-{model_id[:12]}-{uuid.uuid4().hex[:12]}.parquet"
    pq.write_table(table, folder / f".{name}.tmp")
    os.replace(folder / f".{name}.tmp", folder / name)


def scored_results(out: str | Path, model_id: str, findings: list[str]):
    """Per image scored for every finding: its source and ``[(finding, score, threshold,
    predicted)]`` in card order (a DataFrame grouped by image; reconciled rows only)."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from medai.predictions import prediction_files

    columns = [
        "image_id",
        "source",
        "finding",
        "score",
        "threshold",
        "predicted",
        "model_id",
        "error",
    ]
    parts = []
    for path in prediction_files(out):
        table = pq.read_table(path, columns=columns)
        keep = pc.and_(pc.equal(table["model_id"], model_id), pc.is_null(table["error"]))
        parts.append(table.filter(keep).to_pandas())
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    frame = frame[frame["finding"].isin(findings)].drop_duplicates(["image_id", "finding"])
    complete = frame.groupby("image_id")["finding"].transform("nunique") == len(findings)
    return frame[complete]


def _metadata_header(client, ref: InstanceRef):
    """An instance's header from WADO-RS metadata (bulk data such as pixels left out)."""
    import pydicom

    record = client.retrieve_instance_metadata(ref.study, ref.series, ref.sop)
    plain = {tag: item for tag, item in record.items() if "BulkDataURI" not in item}
    return pydicom.Dataset.from_json(plain)


def _parse_header(data: bytes):
    """A DICOM header from a file's bytes, or ``None`` when they are not DICOM."""
    import pydicom

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # not DICOM (a PNG, a JPEG): no header, so no SR
        return None
    return header if "SOPInstanceUID" in header and "StudyInstanceUID" in header else None


def _archive_headers(sources: list[str]) -> dict[str, object]:
    """Headers of archive members (``ARCHIVE::MEMBER`` sources), one pass per archive."""
    from medai.images import ARCHIVE_SEP, iter_members

    wanted: dict[str, set[str]] = {}
    for source in sources:
        if ARCHIVE_SEP in source:
            archive, member = source.split(ARCHIVE_SEP, 1)
            wanted.setdefault(archive, set()).add(member)
    headers: dict[str, object] = {}
    for archive, members in wanted.items():
        for member in iter_members(archive, None):
            if member.name in members and member.error is None:
                headers[f"{archive}{ARCHIVE_SEP}{member.name}"] = _parse_header(member.data)
    return headers


class _Sender:
    """Builds and delivers the SR of one image; one DICOMweb client per thread and server."""

    def __init__(self, target: ResultsTarget, card: dict, ca_bundle: str | None, archived: dict):
        from medai import __version__
        from medai.card import INTENDED_USE, card_findings

        self.target, self.card, self.ca_bundle = target, card, ca_bundle
        self.version = __version__
        self.intended_use = card.get("intended_use") or INTENDED_USE
        self.findings = card_findings(card)
        self.archived = archived  # headers of archive members, read beforehand
        self._local = threading.local()

    def client(self, server: DicomwebSource):
        clients = self._local.__dict__.setdefault("clients", {})
        if server.url not in clients:
            clients[server.url] = open_client(server, self.ca_bundle)
        return clients[server.url]

    def header(self, source: str):
        if wado := parse_instance_url(source):
            return _metadata_header(self.client(wado[0]), wado[1])
        if source in self.archived:
            return self.archived[source]
        from medai.images import read_bytes

        return _parse_header(read_bytes(source))

    def __call__(self, image_id: str, rows) -> tuple[str, str]:
        """Deliver one image's SR; returns ``(image_id, SR UID)`` (``""``: no DICOM header)."""
        from medai.sr import FindingResult, build_report

        header = self.header(str(rows["source"].iloc[0]))
        if header is None:
            return image_id, ""
        by_finding = {r.finding: r for r in rows.itertuples()}
        results = [
            FindingResult(
                f,
                float(by_finding[f].score),
                float(by_finding[f].threshold),
                bool(by_finding[f].predicted),
            )
            for f in self.findings
        ]
        report = build_report(
            header, results, self.card["model_id"], self.version, self.intended_use
        )
        if self.target.server is not None:
            store_report(self.client(self.target.server), report)
        else:
            write_report_file(self.target.folder, report)
        return image_id, str(report.SOPInstanceUID)


def send_results(
    out: str | Path,
    card: dict,
    target: ResultsTarget,
    ca_bundle: str | None = None,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    record_every: int = 256,
) -> ResultsSummary:
    """Send the SR of every image in ``out`` this model scored and ``target`` lacks.

    Args:
        out: The prediction folder (its lock held by the caller).
        card: The model card (model_id, findings, thresholds, intended use).
        target: From :func:`parse_target`.
        ca_bundle: A CA file to trust for https servers.
        max_requests: SRs in flight at once (each one a metadata request and a STOW).
        record_every: Acknowledged SRs recorded in batches of this many, so that a killed
            run re-sends at most this many (which the PACS stores once: same UIDs).
    """
    from medai.card import card_findings

    out = Path(out)
    model_id = card["model_id"]
    scored = scored_results(out, model_id, card_findings(card))
    recorded = _recorded(out, model_id, target)
    pending = scored[~scored["image_id"].isin(recorded)]
    sent_before = {i for i, uid in recorded.items() if uid}
    summary = ResultsSummary(already=len(set(scored["image_id"]) & sent_before))
    archived = _archive_headers(list(pending["source"].unique()))
    sender, done = _Sender(target, card, ca_bundle, archived), []
    with ThreadPoolExecutor(max_workers=max(1, max_requests)) as pool:
        futures = {
            image_id: pool.submit(sender, image_id, rows)
            for image_id, rows in pending.groupby("image_id", sort=True)
        }
        for image_id, future in futures.items():
            try:
                result = future.result()
            except Exception as exc:  # this SR goes next run; its score stays in the Parquet
                summary.failed += 1
                logger.warning(
                    "SR of %s not sent to %s: %s", image_id, target.name, type(exc).__name__
                )
                continue
            done.append(result)  # an image without a header is recorded too: never read again
            if result[1]:
                summary.sent += 1
            else:
                summary.not_dicom += 1
            if len(done) >= record_every:
                _record_sent(out, target, model_id, done)
                done = []
    _record_sent(out, target, model_id, done)
    return summary
