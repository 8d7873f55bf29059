"""DICOMweb sources: name a PACS, log in, list its instances page by page, retrieve one instance.

A source is written ``dicomweb+https://HOST/dicom-web`` (``dicomweb+http://`` for a server on
this machine), optionally with QIDO-RS filters as query parameters
(``?ModalitiesInStudy=DX&StudyDate=20260101-20260131``), which apply at the study level, or
narrowed to one study, series or instance (``.../dicom-web/studies/S[/series/R[/instances/I]]``):
then only that scope is listed. A row's ``source`` is its instance's WADO-RS URL
(``https://HOST/dicom-web/studies/S/series/R/instances/I``, see
:meth:`DicomwebSource.instance_url`); :func:`read_instance_url` retrieves one again.

Credentials come from the environment only: ``MEDAI_DICOMWEB_USER`` with
``MEDAI_DICOMWEB_PASSWORD`` (HTTP basic) or ``MEDAI_DICOMWEB_TOKEN`` (bearer). They are never
taken from a URL (a ``user:password@`` part is refused: argv is visible to every user of a
host), never logged and never written: a :class:`DicomwebSource` holds none, so neither does any
config, row or report made from one. Plain http to a host other than this machine is refused
unless the user says ``--allow-insecure-http``; TLS certificates are always verified
(``ca_bundle`` names a hospital's own CA).

Listing (:func:`list_instances`) asks QIDO-RS for studies ``page`` at a time (``limit`` and
``offset``), then for each study's instances the same way: no request ever asks for a whole
archive. Retrieval (:func:`retrieve_instance`) asks WADO-RS for one instance in its stored
transfer syntax and returns part-10 bytes, retrying a timeout, a 5xx or a dropped connection
with exponential backoff; what still fails is an :class:`medai.images.ImageError` of kind
``read`` (its row is retried next run), as is a refused login (a worker without credentials),
and a 404/410 ("gone") or another 4xx one of kind ``decode`` (final).
The HTTP clients are ``dicomweb-client``'s, on a ``requests`` session.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

from medai.errors import MedaiError
from medai.images import ImageError

__all__ = [
    "SCHEMES",
    "ENV_USER",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "DEFAULT_MAX_REQUESTS",
    "NOT_IMAGES",
    "DicomwebError",
    "DicomwebSource",
    "InstanceRef",
    "is_dicomweb",
    "parse_source",
    "since_range",
    "open_client",
    "check_login",
    "list_instances",
    "list_study_patients",
    "retrieve_instance",
    "parse_instance_url",
    "read_instance_url",
]

logger = logging.getLogger("medai.dicomweb")
SCHEMES = ("dicomweb+https://", "dicomweb+http://")
ENV_USER = "MEDAI_DICOMWEB_USER"
ENV_PASSWORD = "MEDAI_DICOMWEB_PASSWORD"
ENV_TOKEN = "MEDAI_DICOMWEB_TOKEN"
DEFAULT_MAX_REQUESTS = 4
PAGE = 100
TIMEOUT = (10, 120)  # seconds to connect, seconds between bytes
RETRIES = 4
BACKOFF = 0.5  # seconds before the first retry; doubles each time
_GONE = (404, 410)
# Documents, not images (medai's own SRs among them): never listed, so never retrieved.
NOT_IMAGES = frozenset({"SR", "KO", "PR", "DOC"})
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
# A narrowed source's path ends in one study, series or instance; a WADO-RS instance URL names
# all three.
_SCOPE = re.compile(r"^(.*?)/studies/([^/]+)(?:/series/([^/]+)(?:/instances/([^/]+))?)?/?$")
_INSTANCE_URL = re.compile(
    r"^(https?://[^?#]+?)/studies/([^/?#]+)/series/([^/?#]+)/instances/([^/?#]+)$"
)


class DicomwebError(MedaiError, ValueError):
    """A DICOMweb source, its credentials or its server is unusable; the message names it."""


@dataclass(frozen=True)
class DicomwebSource:
    """A DICOMweb server as the user named it, without credentials.

    Attributes:
        url: The service root, e.g. ``https://pacs.example.org/dicom-web``.
        filters: QIDO-RS study-level filters, in the order given.
        study, series, instance: The one study, series or instance a narrowed source names
            (``None``: all that the filters match).
    """

    url: str
    filters: tuple[tuple[str, str], ...] = ()
    study: str | None = None
    series: str | None = None
    instance: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def scope(self) -> str:
        """The URL of what is listed: the root, or the study, series or instance named."""
        parts = zip(
            ("studies", "series", "instances"),
            (self.study, self.series, self.instance),
            strict=True,
        )
        return self.url + "".join(f"/{name}/{uid}" for name, uid in parts if uid)

    def instance_url(self, ref: InstanceRef) -> str:
        """The WADO-RS URL of an instance (the ``source`` of its rows)."""
        return f"{self.url}/studies/{ref.study}/series/{ref.series}/instances/{ref.sop}"


class InstanceRef(NamedTuple):
    """The UIDs that address one instance: study, series, SOP instance."""

    study: str
    series: str
    sop: str


def is_dicomweb(text: str) -> bool:
    """Whether an ``--images`` or ``--results-to`` value names a DICOMweb server."""
    return str(text).lower().startswith(SCHEMES)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_source(text: str, allow_insecure_http: bool = False) -> DicomwebSource:
    """Parse ``dicomweb+http(s)://HOST[:PORT]/PATH[/studies/S[/series/R[/instances/I]]][?FILTERS]``.

    Raises:
        DicomwebError: Not such a URL, credentials in it, or plain http to another host
            without ``allow_insecure_http``.
    """
    if not is_dicomweb(text):
        raise DicomwebError(f"not a DICOMweb source (dicomweb+https://HOST/PATH): {text!r}")
    parts = urlsplit(str(text)[len("dicomweb+") :])
    if parts.username is not None or parts.password is not None:
        raise DicomwebError(
            f"DICOMweb credentials do not go in the URL (argv is visible to every user): "
            f"set {ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN}"
        )
    if not parts.hostname:
        raise DicomwebError(f"DICOMweb source without a host: {text!r}")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise DicomwebError(
            f"refusing plain http to {parts.hostname}: credentials and images would cross the "
            "network unencrypted; use dicomweb+https:// or pass --allow-insecure-http"
        )
    if parts.fragment:
        raise DicomwebError(f"DICOMweb source with a #fragment: {text!r}")
    path, uids = parts.path.rstrip("/"), (None, None, None)
    if scoped := _SCOPE.match(path):
        path, *uids = scoped.groups()
    url = f"{parts.scheme}://{parts.netloc}{path}"
    return DicomwebSource(url, tuple(parse_qsl(parts.query, keep_blank_values=False)), *uids)


def since_range(since: str, today: date | None = None) -> str:
    """A QIDO ``StudyDate`` range from ``--since``: ``2d`` (days back) or ``YYYY-MM-DD``.

    Returns:
        ``"YYYYMMDD-"``: studies dated that day or later.
    """
    today = today or date.today()
    text = since.strip().lower()
    try:
        if text.endswith("d") and text[:-1].isdigit():
            start = today - timedelta(days=int(text[:-1]))
        else:
            start = date.fromisoformat(text)
    except ValueError:
        raise DicomwebError(
            f"--since must be days (2d) or a date (2026-01-31), not {since!r}"
        ) from None
    return f"{start:%Y%m%d}-"


def _credentials(env: Mapping[str, str]) -> tuple[tuple[str, str] | None, str | None]:
    user, password, token = (env.get(k) or None for k in (ENV_USER, ENV_PASSWORD, ENV_TOKEN))
    if token and (user or password):
        raise DicomwebError(f"set either {ENV_TOKEN} or {ENV_USER}+{ENV_PASSWORD}, not both")
    if bool(user) != bool(password):
        raise DicomwebError(f"{ENV_USER} and {ENV_PASSWORD} go together; one is unset")
    return ((user, password) if user else None), token


def open_client(
    source: DicomwebSource,
    ca_bundle: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | tuple = TIMEOUT,
):
    """A ``dicomweb_client.DICOMwebClient`` for ``source``, logged in from the environment.

    Its own retrying is off: :func:`retrieve_instance` retries, so that what it retries and how
    long it waits is medai's choice. TLS is verified (``ca_bundle``: a CA file to trust).
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    basic, token = _credentials(os.environ if env is None else env)
    if ca_bundle is not None and not os.path.isfile(ca_bundle):
        raise DicomwebError(f"--ca-bundle: no such file: {ca_bundle}")
    session = requests.Session()
    session.verify = ca_bundle or True
    if basic:
        session.auth = basic
    elif token:
        session.headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(source.url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return client


def check_login(client, source: DicomwebSource) -> None:
    """Ask the server for one study: a refused login or an unreachable server stops here.

    Raises:
        DicomwebError: One line naming the host and the cause (never the credentials).
    """
    import requests

    try:
        client.search_for_studies(limit=1, fields=["StudyInstanceUID"])
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            raise DicomwebError(
                f"DICOMweb login refused by {source.host} (HTTP {status}): check {ENV_USER}/"
                f"{ENV_PASSWORD} or {ENV_TOKEN}"
            ) from None
        raise DicomwebError(f"DICOMweb server {source.host} answered HTTP {status}") from None
    except requests.exceptions.SSLError:
        raise DicomwebError(
            f"TLS certificate of {source.host} not trusted; --ca-bundle names a CA file to trust"
        ) from None
    except requests.RequestException as exc:
        raise DicomwebError(
            f"cannot reach DICOMweb server {source.host}: {type(exc).__name__}"
        ) from None


def _uid(record: dict, tag: str) -> str | None:
    values = record.get(tag, {}).get("Value") or [None]
    return str(values[0]) if values[0] else None


def _pages(search, page: int, **query) -> Iterator[dict]:
    """Every record of a QIDO search, ``page`` records per request."""
    offset = 0
    while True:
        records = search(limit=page, offset=offset, **query)
        yield from records
        if len(records) < page:
            return
        offset += len(records)


def _studies(client, source: DicomwebSource, since: str | None, page: int, fields: list[str]):
    """The study records of a source (its filters, its one study, ``--since``), page by page."""
    filters = dict(source.filters)
    if since:
        filters["StudyDate"] = since_range(since)
    if source.study:
        filters["StudyInstanceUID"] = source.study
    return _pages(client.search_for_studies, page, fields=fields, search_filters=filters)


def list_instances(
    client,
    source: DicomwebSource,
    since: str | None = None,
    page: int = PAGE,
    modalities: tuple[str, ...] | None = None,
) -> Iterator[InstanceRef]:
    """Every image instance of the studies that match the source's filters, page by page.

    Instances whose Modality is a document's (SR, KO, PR, DOC: medai's own results among
    them) are left out. A narrowed source lists only its study, series or instance.

    Args:
        client: From :func:`open_client`.
        source: The server and its study-level filters.
        since: ``--since`` (``2d`` or a date): only studies dated then or later (``StudyDate``,
            which every PACS indexes; an instance's arrival time is not a QIDO attribute).
        page: Records per QIDO request.
        modalities: If given, only instances of these modalities (training lists only the
            radiographs it reads, as the header index of files does).
    """
    narrowed = {"SOPInstanceUID": source.instance} if source.instance else None
    for study_record in _studies(client, source, since, page, ["StudyInstanceUID"]):
        study = _uid(study_record, "0020000D")
        if study is None:
            continue
        instances = _pages(
            client.search_for_instances,
            page,
            study_instance_uid=study,
            series_instance_uid=source.series,
            fields=["SeriesInstanceUID", "SOPInstanceUID", "Modality"],
            search_filters=narrowed,
        )
        for record in instances:
            series, sop, modality = (_uid(record, t) for t in ("0020000E", "00080018", "00080060"))
            if not (series and sop) or modality in NOT_IMAGES:
                continue
            if modalities is None or modality is None or modality in modalities:
                yield InstanceRef(study, series, sop)


def list_study_patients(
    client, source: DicomwebSource, pseudonym: Callable[[str], str], page: int = PAGE
) -> dict[str, str | None]:
    """Per study of the source, the keyed pseudonym of its Patient ID (``None``: none given).

    The Patient ID (a QIDO study attribute) goes straight into ``pseudonym``; the plain value
    is kept nowhere, returned nowhere and never logged.
    """
    patients: dict[str, str | None] = {}
    for record in _studies(client, source, None, page, ["StudyInstanceUID", "PatientID"]):
        if study := _uid(record, "0020000D"):
            value = record.get("00100020", {}).get("Value") or [None]
            text = str(value[0]).strip() if value[0] is not None else ""
            patients[study] = pseudonym(text) if text else None
    return patients


def _retriable(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status >= 500 or status in (408, 429)
    # A timeout, a refused or dropped connection, or a body cut short (which then fails to
    # parse): all may clear on the next attempt.
    return True


def _failure(exc: BaseException) -> ImageError:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in _GONE:
            return ImageError(f"the PACS no longer has this instance (HTTP {status})", "decode")
        if status in (401, 403):  # the login held on the driver: this process lacks it
            return ImageError(
                f"WADO-RS answered HTTP {status}: this Ray worker has no valid {ENV_USER}/"
                f"{ENV_PASSWORD} or {ENV_TOKEN} in its environment",
                "read",
            )
        kind = "read" if _retriable(exc) else "decode"
        return ImageError(f"WADO-RS answered HTTP {status} {exc.response.reason}", kind)
    return ImageError(f"WADO-RS retrieval failed: {type(exc).__name__}", "read")


def retrieve_instance(
    client, ref: InstanceRef, retries: int = RETRIES, backoff: float = BACKOFF
) -> bytes:
    """One instance as part-10 bytes, in the transfer syntax the PACS stores it in.

    Raises:
        ImageError: ``read`` after ``retries`` retries of a timeout, 5xx or dropped
            connection; ``decode`` for a 404/410 or another 4xx.
    """
    import pydicom

    for attempt in range(retries + 1):
        try:
            dataset = client.retrieve_instance(
                ref.study, ref.series, ref.sop, media_types=(("application/dicom", "*"),)
            )
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, dataset, enforce_file_format=False)
            return buffer.getvalue()
        except Exception as exc:  # classified below: every failure is one row, none a crash
            if attempt == retries or not _retriable(exc):
                raise _failure(exc) from None
            delay = backoff * 2**attempt
            logger.info("retrying %s in %.1f s (%s)", ref.sop, delay, type(exc).__name__)
            time.sleep(delay)
    raise AssertionError("unreachable")


def parse_instance_url(text: str) -> tuple[DicomwebSource, InstanceRef] | None:
    """The server and UIDs of a WADO-RS instance URL (a DICOMweb row's ``source``), or ``None``
    when ``text`` is not one."""
    match = _INSTANCE_URL.match(str(text))
    if match is None:
        return None
    root, *uids = match.groups()
    return DicomwebSource(root), InstanceRef(*uids)


def read_instance_url(
    url: str,
    allow_insecure_http: bool = False,
    ca_bundle: str | None = None,
    clients: dict | None = None,
) -> bytes:
    """Retrieve the instance a WADO-RS URL names (as :func:`retrieve_instance` does), logged in
    from the environment; ``clients`` keeps one client per server across calls.

    Raises:
        DicomwebError: Not such a URL, credentials in it, or plain http to another host.
        ImageError: The retrieval failed (see :func:`retrieve_instance`).
    """
    parsed = parse_instance_url(url)
    if parsed is None:
        raise DicomwebError(f"not a WADO-RS instance URL: {url!r}")
    root, ref = parsed
    clients = {} if clients is None else clients
    if root.url not in clients:
        source = parse_source(f"dicomweb+{root.url}", allow_insecure_http)  # the same rules
        clients[root.url] = open_client(source, ca_bundle)
    return retrieve_instance(clients[root.url], ref)
