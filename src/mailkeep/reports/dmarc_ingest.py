"""DMARC aggregate reports arriving by mail (RFC 7489 §7.2.1.1), into the report store.

Reporters send the XML as an attachment, gzipped or zipped (Google: application/zip,
Microsoft: application/gzip, Yahoo: application/zip or gzip, others application/xml,
text/xml, or application/octet-stream with a telling file name). :func:`ingest_message`
looks through the MIME parts (``mailkeep.mime`` indexer, with its limits) for the first
one that holds a report: a report media type, or any part whose file name ends in .xml,
.xml.gz, .gz or .zip. The compression is recognised by its magic bytes, not by what the
headers claim.

An attachment is hostile until read: decompression stops at :data:`MAX_REPORT_BYTES` of
output whatever the archive claims (a zip or gzip bomb costs us that much at most), a
zip may hold at most :data:`MAX_ZIP_ENTRIES` entries, and encrypted or exotic archives
are refused. The XML itself is parsed by ``dmarc_xml`` (defusedxml, bounded).

Nothing here raises: :class:`IngestOutcome` says ``stored``, ``duplicate`` (the same
organization and report id is stored already), ``not a report`` (no report-like part),
``invalid`` (a report-like part that is not a usable report) or ``failed`` (our side: the
database cannot be written; worth trying again).
"""

from __future__ import annotations

import io
import logging
import zipfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from mailkeep.logfmt import log
from mailkeep.mime.structure import Part, index_message, iter_parts
from mailkeep.mime.transfer import decode_body
from mailkeep.reports.dmarc_store import DmarcStore, DmarcStoreError
from mailkeep.reports.dmarc_xml import (
    MAX_REPORT_BYTES,
    AggregateReport,
    ReportError,
    parse_aggregate_report,
)
from mailkeep.trust.dmarc import organizational_domain

logger = logging.getLogger("mailkeep.dmarc")

#: Largest message (or file) read for a report. Compressed reports are a few megabytes.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Most entries in a zip archive.
MAX_ZIP_ENTRIES = 16
#: Most concatenated gzip members (RFC 1952 §2.2 allows several; reporters send one).
MAX_GZIP_MEMBERS = 8
#: Most report-like MIME parts tried in one message.
MAX_CANDIDATES = 8
#: Decompressed bytes produced per step (bounds memory between size checks).
_CHUNK = 1024 * 1024

REPORT_TYPES = frozenset({
    "application/xml", "text/xml", "application/gzip", "application/x-gzip",
    "application/zip", "application/x-zip-compressed", "application/x-zip",
})
REPORT_SUFFIXES = (".xml", ".xml.gz", ".gz", ".zip")
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"


class IngestStatus(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    NOT_A_REPORT = "not a report"
    INVALID = "invalid"
    FAILED = "failed"


@dataclass(frozen=True)
class IngestOutcome:
    """What became of one message or file. ``reason`` explains anything but ``stored``;
    the report fields are set for ``stored`` and ``duplicate``."""

    status: IngestStatus
    reason: str = ""
    attachment: str = ""
    org_name: str = ""
    report_id: str = ""
    domain: str = ""
    begin: int = 0
    end: int = 0
    records: int = 0
    messages: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The report is in the store (now or from before)."""
        return self.status in (IngestStatus.STORED, IngestStatus.DUPLICATE)


# -- decompression ---------------------------------------------------------------------------


def _gunzip(data: bytes, limit: int) -> bytes:
    """RFC 1952 members, concatenated; ReportError past ``limit`` bytes of output."""
    out = bytearray()
    rest = data
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        while not inflater.eof:
            chunk = inflater.decompress(pending, _CHUNK)
            out += chunk
            if len(out) > limit:
                raise ReportError(f"decompressed report larger than {limit} bytes")
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                raise ReportError("truncated gzip data")
        rest = inflater.unused_data.lstrip(b"\x00")  # zero padding after a member is common
        if not rest:
            return bytes(out)
        if not rest.startswith(_GZIP_MAGIC):
            raise ReportError("garbage after the gzip data")
    raise ReportError(f"more than {MAX_GZIP_MEMBERS} gzip members")


def _unzip(data: bytes, limit: int) -> bytes:
    """The report entry of a zip archive: the first *.xml, else the only entry."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = [i for i in archive.infolist() if not i.is_dir()]
        if len(archive.infolist()) > MAX_ZIP_ENTRIES:
            raise ReportError(f"zip archive with more than {MAX_ZIP_ENTRIES} entries")
        chosen = next((i for i in entries if i.filename.lower().endswith(".xml")), None)
        if chosen is None:
            if len(entries) != 1:
                raise ReportError("zip archive without an .xml entry")
            chosen = entries[0]
        if chosen.flag_bits & 0x1:
            raise ReportError("encrypted zip entry")
        out = bytearray()
        # The sizes in the archive are claims: read no more than the limit, whatever they say.
        with archive.open(chosen) as entry:
            while chunk := entry.read(_CHUNK):
                out += chunk
                if len(out) > limit:
                    raise ReportError(f"decompressed report larger than {limit} bytes")
        return bytes(out)


def extract_report_xml(data: bytes, *, limit: int = MAX_REPORT_BYTES) -> bytes:
    """The XML of a report file as attached: gzip, zip or plain, told apart by magic
    bytes. ReportError for a damaged, encrypted or oversized archive."""
    try:
        if data.startswith(_GZIP_MAGIC):
            return _gunzip(data, limit)
        if data.startswith(_ZIP_MAGIC):
            return _unzip(data, limit)
    except ReportError:
        raise
    except (zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError,
            RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ReportError(f"damaged archive: {type(exc).__name__}: {exc}"[:200]) from None
    if len(data) > limit:
        raise ReportError(f"report larger than {limit} bytes")
    return data


# -- messages ------------------------------------------------------------------------------


def _file_name(part: Part) -> str:
    return (part.disposition_params.get("filename") or part.params.get("name") or "").strip()


def report_parts(message: bytes) -> list[tuple[str, bytes]]:
    """(file name, decoded body) of each MIME part that may hold a report, in order."""
    found = []
    for part in iter_parts(index_message(message)):
        if part.is_multipart or part.content_type.startswith("message/"):
            continue
        name = _file_name(part)
        if part.content_type not in REPORT_TYPES and not name.lower().endswith(REPORT_SUFFIXES):
            continue
        body = decode_body(memoryview(message)[part.body_start:part.body_end], part.encoding)
        if body is None:
            continue
        found.append((name, bytes(body)))
        if len(found) == MAX_CANDIDATES:
            break
    return found


def _stored(store: DmarcStore, report: AggregateReport, attachment: str,
            source: str) -> IngestOutcome:
    meta = report.metadata
    fields = {"attachment": attachment, "org_name": meta.org_name,
              "report_id": meta.report_id, "domain": report.policy.domain,
              "begin": meta.begin, "end": meta.end, "records": len(report.records),
              "messages": report.message_count, "warnings": report.warnings}
    try:
        done = store.add_report(report, source=source)
    except DmarcStoreError as exc:
        log(logger, "report not stored", logging.ERROR, org=meta.org_name,
            report_id=meta.report_id, error=str(exc))
        return IngestOutcome(IngestStatus.FAILED, f"cannot store the report: {exc}", **fields)
    status = IngestStatus.STORED if done.stored else IngestStatus.DUPLICATE
    log(logger, "report " + ("stored" if done.stored else "duplicate"), org=meta.org_name,
        report_id=meta.report_id, domain=report.policy.domain, records=len(report.records),
        messages=report.message_count, warnings=len(report.warnings), source=source)
    return IngestOutcome(status, "" if done.stored else "this report is stored already",
                         **fields)


def _is_ours(domain: str, our_domains: Collection[str]) -> bool:
    """One of our domains, a subdomain of one, or the organizational domain of one (whose
    record covers it, RFC 7489 §6.6.3)."""
    return any(domain == ours or domain.endswith("." + ours)
               or domain == organizational_domain(ours) for ours in our_domains)


def ingest_report_data(data: bytes, store: DmarcStore, *, name: str = "", source: str = "",
                       our_domains: Collection[str] | None = None) -> IngestOutcome:
    """A report file's bytes (xml, gzip or zip) into ``store``; never raises.

    With ``our_domains``, a report about another domain is ``invalid``: the report
    address is public, and nobody else's reports should fill our database."""
    try:
        report = parse_aggregate_report(extract_report_xml(data))
        if our_domains is not None and not _is_ours(report.policy.domain, our_domains):
            return IngestOutcome(IngestStatus.INVALID, f"a report about "
                                 f"{report.policy.domain}, not one of our domains",
                                 attachment=name)
        return _stored(store, report, name, source)
    except ReportError as exc:
        return IngestOutcome(IngestStatus.INVALID, str(exc), attachment=name)
    except Exception as exc:  # a bug: keep the caller (the server) running
        logger.exception("dmarc report ingest failed")
        return IngestOutcome(IngestStatus.FAILED, f"{type(exc).__name__}: {exc}",
                             attachment=name)


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_MESSAGE_BYTES + 1)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ReportError(f"larger than {MAX_MESSAGE_BYTES} bytes")
    return data


def ingest_message(message: bytes | Path, store: DmarcStore, *, source: str = "",
                   our_domains: Collection[str] | None = None) -> IngestOutcome:
    """Find the report in a message and store it; never raises.

    The first report-like part that holds a usable report counts; when none does, the
    outcome is ``invalid`` with the first part's problem, or ``not a report`` when no
    part looked like one. ``source`` is kept with the report (a queue id, a file name);
    ``our_domains`` (canonical names) limits what is stored to reports about them.
    Blocking (parsing, SQLite): the server calls it in a worker thread.
    """
    try:
        data = _read(message) if isinstance(message, Path) else bytes(message)
        if len(data) > MAX_MESSAGE_BYTES:
            return IngestOutcome(IngestStatus.INVALID,
                                 f"message larger than {MAX_MESSAGE_BYTES} bytes")
        first_problem: IngestOutcome | None = None
        for name, body in report_parts(data):
            outcome = ingest_report_data(body, store, name=name, source=source,
                                         our_domains=our_domains)
            if outcome.status != IngestStatus.INVALID:
                return outcome
            first_problem = first_problem or outcome
        if first_problem is not None:
            log(logger, "report invalid", logging.WARNING, source=source,
                attachment=first_problem.attachment, reason=first_problem.reason)
            return first_problem
        return IngestOutcome(IngestStatus.NOT_A_REPORT,
                             "no xml, gzip or zip attachment in the message")
    except ReportError as exc:
        return IngestOutcome(IngestStatus.INVALID, str(exc))
    except OSError as exc:
        return IngestOutcome(IngestStatus.FAILED, f"cannot read the message: {exc}")
    except Exception as exc:  # a bug: keep the caller (the server) running
        logger.exception("dmarc report ingest failed")
        return IngestOutcome(IngestStatus.FAILED, f"{type(exc).__name__}: {exc}")


def looks_like_report_file(data: bytes) -> bool:
    """A bare report file (gzip, zip or XML) rather than a message (.eml): messages start
    with a header field, never with "<" or archive magic."""
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith((_GZIP_MAGIC, _ZIP_MAGIC, b"<"))


def ingest_file(path: Path, store: DmarcStore, *,
                our_domains: Collection[str] | None = None) -> IngestOutcome:
    """A file given by hand (``mailkeep dmarc import``): a report (.xml, .xml.gz, .zip)
    or a message containing one (.eml); never raises."""
    try:
        data = _read(path)
    except ReportError as exc:
        return IngestOutcome(IngestStatus.INVALID, str(exc), attachment=path.name)
    except OSError as exc:
        return IngestOutcome(IngestStatus.FAILED, f"cannot read {path}: {exc.strerror or exc}",
                             attachment=path.name)
    if looks_like_report_file(data):
        return ingest_report_data(data, store, name=path.name, source=f"file:{path.name}",
                                  our_domains=our_domains)
    return ingest_message(data, store, source=f"file:{path.name}", our_domains=our_domains)


__all__ = [
    "MAX_GZIP_MEMBERS", "MAX_MESSAGE_BYTES", "MAX_ZIP_ENTRIES", "IngestOutcome",
    "IngestStatus", "extract_report_xml", "ingest_file", "ingest_message",
    "ingest_report_data", "looks_like_report_file", "report_parts",
]
