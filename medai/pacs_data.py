"""DICOMweb images as Ray Data rows: the driver lists and drops what is done, read tasks retrieve.

:func:`list_new_instances` runs on the driver: it logs in to every ``dicomweb+`` source (a
refused login stops the run before any work, in one line), lists instances page by page (see
:func:`medai.dicomweb.list_instances`) and drops the SOP Instance UIDs this model has scored
already, so nothing done is ever retrieved. :func:`pacs_dataset` turns the rest into read
units of a few instances each; read tasks retrieve them (WADO-RS, part-10 bytes, retries with
backoff) and hand the bytes to the same decode stage as files (:func:`medai.datasets.decode_batch`
and so :func:`medai.images.decode_image`, which decodes DICOM with the one DICOM decoder).

Rows are those of files: ``image_id`` is the SOP Instance UID, ``source`` the instance's
WADO-RS URL (credentials are never part of it), ``error`` a read error (retried next run) or
a final one (an instance gone from the PACS).

The PACS is never flooded: each read task has one request in flight at a time, and the read
stage runs at most ``max_requests`` tasks at once across the cluster (a Ray Data
``TaskPoolStrategy`` of that size), so at most ``max_requests`` WADO-RS requests are in flight
for the whole run, however many nodes read. Read tasks take their credentials from their own
environment (the Kubernetes Secret in the cluster manifests; a local Ray inherits the driver's),
never from the task's arguments, so credentials never enter Ray's object store or logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from medai.dicom import DEFAULT_MODALITIES
from medai.dicomweb import (
    DEFAULT_MAX_REQUESTS,
    DicomwebSource,
    InstanceRef,
    check_login,
    list_instances,
    open_client,
    parse_source,
    retrieve_instance,
)
from medai.images import ImageError

__all__ = [
    "UNIT_INSTANCES",
    "PacsOptions",
    "PacsListing",
    "open_sources",
    "list_new_instances",
    "plan_pacs_units",
    "read_pacs_unit",
    "pacs_dataset",
    "check_servers",
    "instance_urls",
    "input_dataset",
    "send_run_results",
]

logger = logging.getLogger("medai.pacs_data")
UNIT_INSTANCES = 8  # instances per read task: small, so retrieval spreads over tasks


@dataclass(frozen=True)
class PacsOptions:
    """The DICOMweb options of a run (never credentials: those come from the environment).

    Attributes:
        since: ``--since``: list only studies dated this many days back (``2d``) or since a
            date (``2026-01-31``).
        results_to: ``--results-to``: a folder or a ``dicomweb+`` server for the SRs.
        allow_insecure_http: Allow plain http to a host other than this machine.
        ca_bundle: A CA file to trust for https.
        max_requests: DICOMweb requests in flight at most, for the whole run.
    """

    since: str | None = None
    results_to: str | None = None
    allow_insecure_http: bool = False
    ca_bundle: str | None = None
    max_requests: int = DEFAULT_MAX_REQUESTS

    def problems(self) -> list[str]:
        """What is wrong with these options (before any connection is made)."""
        from medai.dicomweb import DicomwebError, since_range

        problems = []
        if self.max_requests < 1:
            problems.append("--max-requests must be at least 1")
        try:
            if self.since:
                since_range(self.since)
            if self.results_to:
                from medai.results import parse_target

                parse_target(self.results_to, self.allow_insecure_http)
        except DicomwebError as exc:
            problems.append(str(exc))
        return problems


class PacsListing(list):
    """``[(source, [InstanceRef, ...]), ...]`` still to score, and how many were dropped."""

    skipped: int = 0

    @property
    def count(self) -> int:
        return sum(len(refs) for _, refs in self)


def open_sources(
    texts: Iterable[str], allow_insecure_http: bool = False, ca_bundle: str | None = None
) -> list[DicomwebSource]:
    """Parse every ``dicomweb+`` source and check its login (before any work starts).

    Raises:
        medai.dicomweb.DicomwebError: A bad URL, credentials or login, in one line.
    """
    sources = [parse_source(text, allow_insecure_http) for text in texts]
    for source in sources:
        check_login(open_client(source, ca_bundle), source)
    return sources


def list_new_instances(
    sources: Iterable[DicomwebSource],
    exclude: frozenset[str],
    since: str | None = None,
    ca_bundle: str | None = None,
    modalities: tuple[str, ...] | None = None,
) -> PacsListing:
    """Instances of every source not in ``exclude`` (SOP Instance UIDs already scored); only
    those of ``modalities`` if given (see :func:`medai.dicomweb.list_instances`)."""
    listing = PacsListing()
    seen: set[str] = set()
    for source in sources:
        client = open_client(source, ca_bundle)
        refs = []
        for ref in list_instances(client, source, since, modalities=modalities):
            if ref.sop in exclude:
                listing.skipped += 1
            elif ref.sop not in seen:  # one instance listed twice (two sources) is read once
                seen.add(ref.sop)
                refs.append(ref)
        listing.append((source, refs))
        logger.info(
            "%s: %d instances to read (since %s)", source.scope, len(refs), since or "the start"
        )
    return listing


def plan_pacs_units(listing: PacsListing, tasks: int = 1) -> list[dict]:
    """Read units of one source's instances each: up to :data:`UNIT_INSTANCES`, fewer when
    that leaves fewer than ``tasks`` units (so that a small listing still reads in parallel)."""
    per_unit = max(1, min(UNIT_INSTANCES, -(-listing.count // max(1, tasks))))
    units = []
    for source, refs in listing:
        for start in range(0, len(refs), per_unit):
            chunk = refs[start : start + per_unit]
            units.append(
                {
                    "root": source.url,
                    "study": [r.study for r in chunk],
                    "series": [r.series for r in chunk],
                    "sop": [r.sop for r in chunk],
                }
            )
    return units


def _records(
    unit: dict,
    ca_bundle: str | None,
    retries: int | None,
    modalities: tuple[str, ...],
    wanted: set[str] | None = None,
) -> Iterator[tuple]:
    from medai.datasets import identify

    source = DicomwebSource(unit["root"])
    client = open_client(source, ca_bundle)
    options = {} if retries is None else {"retries": retries, "backoff": 0.05}
    for ref in zip(unit["study"], unit["series"], unit["sop"], strict=True):
        ref = InstanceRef(*(str(uid) for uid in ref))
        url = source.instance_url(ref)
        try:
            record = (ref.sop, url, retrieve_instance(client, ref, **options), "")
        except ImageError as exc:
            record = (ref.sop, url, b"", exc.text)
        # As a file's bytes are: named by the header's SOP Instance UID, its columns kept.
        yield from identify(record, wanted, frozenset(), modalities)


def read_pacs_unit(
    batch: dict,
    ca_bundle: str | None = None,
    retries: int | None = None,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
    wanted: set[str] | None = None,
) -> Iterator[dict]:
    """Ray Data UDF: retrieve the instances of read units, one request at a time.

    Yields batches in the columns of :func:`medai.datasets.read_unit`, for
    :func:`medai.datasets.decode_batch`; with ``wanted`` (training's labelled ids) an instance
    that is not a radiograph of the task is a decode-error row, as a file's is.
    """
    from medai.datasets import record_batches

    units = (
        {key: batch[key][i] for key in ("root", "study", "series", "sop")}
        for i in range(len(batch["root"]))
    )
    yield from record_batches(
        record
        for unit in units
        for record in _records(unit, ca_bundle, retries, modalities, wanted)
    )


def pacs_dataset(
    listing: PacsListing,
    image_size: int,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    ca_bundle: str | None = None,
    retries: int | None = None,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
    wanted: set[str] | None = None,
    ordered: bool = False,
):
    """The lazy Ray dataset of decoded DICOMweb images (columns as
    :func:`medai.datasets.image_dataset`), ``None`` when nothing is left to read.

    Args:
        listing: From :func:`list_new_instances`.
        image_size: The model's input size.
        max_requests: WADO-RS requests in flight at most, for the whole run.
        ca_bundle: A CA file to trust.
        retries: Retries per instance (``None``: :data:`medai.dicomweb.RETRIES`).
        modalities: DICOM modalities read as images.
        wanted: Training's labelled ids: only these are retrieved, and one that is not a
            radiograph of the task is an error row (see :func:`medai.datasets.identify`).
        ordered: Rows in listing order (as :func:`medai.datasets.image_dataset`'s).
    """
    import ray

    from medai.datasets import BLOCK_BYTES, READ_CPUS, decode_stage

    if wanted is not None:
        listing = _only(listing, wanted)
    units = plan_pacs_units(listing, max_requests)
    if not units:
        return None
    ray.data.DataContext.get_current().target_max_block_size = BLOCK_BYTES
    items = ray.data.from_items(units, override_num_blocks=len(units))
    raw = items.map_batches(
        read_pacs_unit,
        batch_size=1,
        num_cpus=READ_CPUS,
        compute=ray.data.TaskPoolStrategy(size=max(1, max_requests)),
        fn_kwargs={
            "ca_bundle": ca_bundle,
            "retries": retries,
            "modalities": modalities,
            "wanted": wanted,
        },
    )
    return decode_stage(raw, image_size, ordered)


def _only(listing: PacsListing, wanted: set[str]) -> PacsListing:
    """The listing's instances whose SOP Instance UID is wanted (nothing else is retrieved)."""
    kept = PacsListing((source, [r for r in refs if r.sop in wanted]) for source, refs in listing)
    kept.skipped = listing.skipped
    return kept


def check_servers(images: Iterable[str], pacs: PacsOptions) -> None:
    """Log in to every DICOMweb server a run names (``--images``, ``--results-to``).

    Raises:
        medai.dicomweb.DicomwebError: One line naming the server and the cause.
    """
    from medai.dicomweb import is_dicomweb

    servers = [i for i in images if is_dicomweb(i)]
    if pacs.results_to and is_dicomweb(pacs.results_to):
        servers.append(pacs.results_to)
    open_sources(servers, pacs.allow_insecure_http, pacs.ca_bundle)


def instance_urls(
    texts: Iterable[str], allow_insecure_http: bool = False, ca_bundle: str | None = None
) -> list[str]:
    """Each argument as the sources to read one by one (``medai predict``): a ``dicomweb+``
    source (a server, filtered or narrowed) becomes the WADO-RS URLs of its instances, listed
    after every server's login is checked; one narrowed to an instance, or a bare WADO-RS URL,
    stays that instance's URL (a gone one then gets its error row); others stay as given.

    Raises:
        medai.dicomweb.DicomwebError: A bad URL, credentials or login, in one line.
    """
    from medai.dicomweb import is_dicomweb, parse_instance_url

    texts = [str(t) for t in texts]
    web = {t: t if is_dicomweb(t) else f"dicomweb+{t}" for t in texts if parse_instance_url(t)}
    web.update({t: t for t in texts if is_dicomweb(t)})
    sources = dict(
        zip(web, open_sources(web.values(), allow_insecure_http, ca_bundle), strict=True)
    )
    urls = []
    for text in texts:
        source = sources.get(text)
        if source is None:
            urls.append(text)
        elif source.instance:  # one named instance: retrieved as named (if gone: its error row)
            urls.append(source.scope)
        else:
            [(_, refs)] = list_new_instances([source], frozenset(), None, ca_bundle)
            urls += [source.instance_url(ref) for ref in refs]
            if not refs:
                logger.warning("%s: no image instance found", source.scope)
    return urls


def input_dataset(
    images,
    inputs,
    size: int,
    skip: frozenset[str],
    pacs: PacsOptions,
    modalities: tuple[str, ...] = DEFAULT_MODALITIES,
):
    """The decoded images of a run's files and DICOMweb sources (one Ray dataset), and the
    DICOMweb listing: listed on the driver, what ``skip`` holds dropped before any retrieval.

    Args:
        images: The run's ``--images`` values.
        inputs: Its files and archives (:func:`medai.images.discover_images` of the rest).
        size: The model's input size.
        skip: Image ids this model has scored already.
        pacs: The run's DICOMweb options.
        modalities: DICOM modalities read as images (others: skipped and counted).
    """
    import ray.data

    from medai.datasets import image_dataset
    from medai.dicomweb import is_dicomweb

    sources = [parse_source(i, pacs.allow_insecure_http) for i in images if is_dicomweb(i)]
    listing = list_new_instances(sources, skip, pacs.since, pacs.ca_bundle)
    parts = []
    if not inputs.empty:
        parts.append(image_dataset(inputs, size, exclude=skip, modalities=modalities))
    web = pacs_dataset(listing, size, pacs.max_requests, pacs.ca_bundle, modalities=modalities)
    if web is not None:
        parts.append(web)
    if not parts:
        return ray.data.from_items([]), listing
    return (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]), listing


def send_run_results(pacs: PacsOptions, out, card: dict):
    """One SR per newly scored image to ``--results-to`` (and any a past run did not send)."""
    from medai.results import parse_target, send_results

    target = parse_target(pacs.results_to, pacs.allow_insecure_http)
    summary = send_results(out, card, target, pacs.ca_bundle, pacs.max_requests)
    logger.info("%s -> %s", summary.line(), target.name)
    return summary
