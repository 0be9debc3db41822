"""Our DMARC aggregate reports (RFC 7489 §7.2): once a day, to the domains that ask.

For every policy domain (the domain whose ``_dmarc`` record we applied) with evaluations
recorded by the receiver on a complete UTC day not reported yet, :func:`send_reports`:

1. claims the (domain, day) in the store, so the server and ``mailkeep dmarc send`` never
   both report it;
2. groups the day's evaluations into records (same source IP, identifiers, results and
   disposition: one record with a count) and builds the XML (``dmarc_xml``), gzipped;
3. checks each mailto: rua= destination of the newest policy seen: a destination outside
   the policy domain's organizational domain must publish
   ``<policy domain>._report._dmarc.<destination domain>`` TXT "v=DMARC1..." (§7.1),
   else it gets nothing (this stops a domain from making us mail reports to a third
   party); a destination whose "!size" limit (§6.2) the message exceeds is left out;
4. writes the message of §7.2.1.1 (Subject "Report Domain: ... Submitter: ...
   Report-ID: ...", the report as an application/gzip attachment named
   ``<receiver>!<policy domain>!<begin>!<end>.xml.gz``) and hands it to the submission
   service like any locally generated mail: DKIM-signed for the From: domain, queued,
   delivered and retried by the queue;
5. marks the evaluations reported only once the queue has accepted the message. If the
   queue refuses for now, or DNS fails for every destination, the claim is dropped and
   the next run (the next day at the latest) tries that day again, for up to
   :data:`MAX_CATCH_UP_DAYS` days.

:class:`DmarcReporter` runs that shortly after midnight UTC with a random delay (so that
not every server on the Internet reports at 00:00:00), and once at start-up for days
missed while the server was down.

We send daily reports only: a smaller ri= is honoured as once a day (RFC 7489 §7.2
lets a receiver choose its interval; daily is what every large receiver does).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import gzip
import logging
import random as random_module
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dns.asyncresolver

from mailkeep.delivery.pipeline import AcceptedRecipient, Envelope, SessionInfo, new_message_id
from mailkeep.delivery.submission import Submission, SubmitRequest
from mailkeep.logfmt import log
from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, query
from mailkeep.reports.dmarc_store import DAY, DmarcStore, Evaluation
from mailkeep.reports.dmarc_xml import (
    ReportMetadata,
    ReportRecord,
    build_aggregate_report,
)
from mailkeep.smtp.address import AddressError, parse_address
from mailkeep.trust.dmarc import ReportUri, is_dmarc_record, normalize_domain, organizational_domain

logger = logging.getLogger("mailkeep.dmarc")

#: Complete UTC days before today whose unreported evaluations are still sent.
MAX_CATCH_UP_DAYS = 3
#: Most records in one report; the rest (the smallest counts) are left out and the
#: report says so in report_metadata/error.
MAX_OUTGOING_RECORDS = 20_000
#: Reports are sent this long after midnight UTC, plus up to SEND_JITTER seconds.
SEND_AFTER_MIDNIGHT = 300.0
SEND_JITTER = 1800.0
#: After start-up, missed days are reported after this long plus up to STARTUP_JITTER.
STARTUP_DELAY = 120.0
STARTUP_JITTER = 120.0
#: Line length of the base64 attachment (RFC 2045 §6.8: at most 76).
BASE64_LINE = 76

SUBMITTER_LISTENER = "dmarc-reports"


@dataclass(frozen=True)
class ReportSettings:
    """Who we are in our reports.

    ``submitter`` is our host name (the Submitter of the subject and the receiver part
    of the file name, §7.2.1.1); ``org_name`` goes into report_metadata; ``report_from``
    is the From: and envelope sender (bounces of reports go there).
    """

    submitter: str
    org_name: str
    report_from: str
    extra_contact_info: str = ""

    @classmethod
    def from_config(cls, config: Any) -> ReportSettings:
        """From ``[dmarc]`` (``org_name``, ``report_from``), with the defaults of
        docs/dmarc-reports.md: the host name, and postmaster@ the host name."""
        section = getattr(config, "dmarc", None)
        hostname = config.hostname
        return cls(submitter=hostname,
                   org_name=getattr(section, "org_name", None) or hostname,
                   report_from=getattr(section, "report_from", None) or f"postmaster@{hostname}")


@dataclass(frozen=True)
class Destination:
    """One rua= address and whether it gets the report (``reason`` when not)."""

    address: str
    uri: str
    accepted: bool
    reason: str = ""
    temporary: bool = False


@dataclass(frozen=True)
class SentReport:
    """What :func:`send_reports` did for one policy domain and day.

    ``status``: ``queued``; ``dry-run`` (built, not sent); ``no destination`` (no rua
    address may receive it; not retried); ``deferred`` (DNS or the queue failed for now;
    retried by a later run); ``refused`` (the submission service refused it for good);
    ``reported`` (another run has it, or had it); ``error`` (a bug or broken store; the
    log has it).
    """

    policy_domain: str
    begin: int
    end: int
    status: str
    report_id: str = ""
    records: int = 0
    messages: int = 0
    destinations: tuple[Destination, ...] = ()
    queue_id: str = ""
    size: int = 0
    detail: str = ""
    xml: bytes = field(default=b"", repr=False)
    message: bytes = field(default=b"", repr=False)

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(d.address for d in self.destinations if d.accepted)


# -- pure parts ------------------------------------------------------------------------------


def aggregate(evaluations: Sequence[Evaluation]) -> tuple[list[ReportRecord], int, int]:
    """Evaluations grouped into report records (most messages first), capped at
    :data:`MAX_OUTGOING_RECORDS`; also the records and messages left out."""
    counts: Counter[tuple[Any, ...]] = Counter()
    for e in evaluations:
        counts[(e.source_ip, e.disposition, e.dmarc_dkim, e.dmarc_spf, e.reasons,
                e.header_from, e.envelope_from, e.envelope_to, e.dkim, e.spf)] += 1
    records = [ReportRecord(source_ip=ip, count=n, disposition=disposition, dkim=dkim,
                            spf=spf, header_from=header_from, envelope_from=envelope_from,
                            envelope_to=envelope_to, reasons=reasons, dkim_results=dkim_auth,
                            spf_results=(spf_auth,))
               for (ip, disposition, dkim, spf, reasons, header_from, envelope_from,
                    envelope_to, dkim_auth, spf_auth), n in counts.items()]
    records.sort(key=lambda r: (-r.count, r.source_ip, r.header_from))
    kept, left = records[:MAX_OUTGOING_RECORDS], records[MAX_OUTGOING_RECORDS:]
    return kept, len(left), sum(r.count for r in left)


def report_file_name(submitter: str, policy_domain: str, begin: int, end: int) -> str:
    """§7.2.1.1: receiver "!" policy-domain "!" begin-timestamp "!" end-timestamp."""
    return f"{submitter}!{policy_domain}!{begin}!{end}.xml.gz"


def report_subject(policy_domain: str, submitter: str, report_id: str) -> str:
    """§7.2.1.1 dmarc-subject; the Report-ID is an RFC 5322 msg-id."""
    return f"Report Domain: {policy_domain} Submitter: {submitter} Report-ID: <{report_id}>"


def _utc(stamp: int) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_report_message(settings: ReportSettings, *, policy_domain: str, report_id: str,
                         begin: int, end: int, compressed: bytes, recipients: Sequence[str],
                         records: int, messages: int, now: float) -> bytes:
    """The report message of RFC 7489 §7.2.1.1: a short text part and the gzipped
    report as an application/gzip attachment; CRLF line ends."""
    boundary = f"=_dmarc_{secrets.token_hex(12)}"
    name = report_file_name(settings.submitter, policy_domain, begin, end)
    encoded = base64.b64encode(compressed).decode("ascii")
    lines = [
        f"From: <{settings.report_from}>",
        # No recipient (a dry run with none usable): the RFC 5322 §3.4 empty group.
        "To: " + (",\r\n ".join(f"<{r}>" for r in recipients) or "undisclosed-recipients:;"),
        f"Subject: {report_subject(policy_domain, settings.submitter, report_id)}",
        f"Date: {email.utils.formatdate(now, usegmt=True)}",
        f"Message-ID: <{report_id}>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        "This is a DMARC aggregate report (RFC 7489 section 7.2) in MIME format.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "",
        f"DMARC aggregate report for {policy_domain} from {settings.org_name}",
        f"({settings.submitter}): {messages} message{'s' if messages != 1 else ''} in "
        f"{records} record{'s' if records != 1 else ''},",
        f"received from {_utc(begin)} to {_utc(end)}.",
        "",
        f"--{boundary}",
        f'Content-Type: application/gzip; name="{name}"',
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment; filename="{name}"',
        "",
        *(encoded[i:i + BASE64_LINE] for i in range(0, len(encoded), BASE64_LINE)),
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


async def check_destination(policy_domain: str, uri: ReportUri,
                            resolver: dns.asyncresolver.Resolver) -> Destination:
    """Whether ``uri`` may receive reports about ``policy_domain`` (RFC 7489 §7.1)."""
    address = uri.address or ""
    dest_domain = normalize_domain(address.rpartition("@")[2]) if address else None
    if dest_domain is None:
        return Destination(address, uri.uri, False, "not a mailto: address")
    if organizational_domain(dest_domain) == organizational_domain(policy_domain):
        return Destination(address, uri.uri, True)
    name = f"{policy_domain}._report._dmarc.{dest_domain}"
    try:
        answer = await query(resolver, name, "TXT")
    except DnsTemporaryError as exc:
        return Destination(address, uri.uri, False, f"cannot verify it now: {exc}",
                           temporary=True)
    except DnsNameError:
        return Destination(address, uri.uri, False,
                           f"external destination not authorized: no TXT record at {name} "
                           "(RFC 7489 §7.1)")
    texts = [b"".join(rdata.strings) for rdata in answer.records]
    if any(is_dmarc_record(text) for text in texts):
        return Destination(address, uri.uri, True)
    return Destination(address, uri.uri, False,
                       f"external destination not authorized: no v=DMARC1 record at {name} "
                       "(RFC 7489 §7.1)")


def _report_id(policy_domain: str, begin: int, submitter: str) -> str:
    """Unique per report and an RFC 5322 msg-id body (dot-atom "@" domain)."""
    day = datetime.fromtimestamp(begin, UTC).strftime("%Y%m%d")
    return f"{day}.{policy_domain}.{secrets.token_hex(4)}@{submitter}"


# -- sending ---------------------------------------------------------------------------------


async def _report_day(store: DmarcStore, submission_factory: Callable[[], Submission],
                      settings: ReportSettings, resolver: dns.asyncresolver.Resolver,
                      policy_domain: str, begin: int, now: float,
                      dry_run: bool) -> SentReport:
    end = begin + DAY
    last = end - 1  # date_range/end: the last second of the day (§7.2 reporters do so)
    evaluations = await asyncio.to_thread(store.evaluations, policy_domain, begin, end)
    if not evaluations:
        return SentReport(policy_domain, begin, last, "reported")
    report_id = _report_id(policy_domain, begin, settings.submitter)
    if not dry_run and not await asyncio.to_thread(store.claim_report, policy_domain, begin,
                                                     end, report_id, now=now):
        return SentReport(policy_domain, begin, last, "reported",
                          detail="reported already, or being reported by another process")
    try:
        sent = await _build_and_submit(submission_factory, settings, resolver,
                                       policy_domain, begin, last, report_id, evaluations,
                                       now, dry_run)
    except BaseException:
        if not dry_run:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(store.release_report, policy_domain, begin)
        raise
    if not dry_run:
        ids = [e.id for e in evaluations]
        if sent.status in ("queued", "no destination", "refused"):
            await asyncio.to_thread(
                store.finish_report, policy_domain, begin, status=sent.status,
                evaluation_ids=ids, now=now, queue_id=sent.queue_id,
                recipients=sent.recipients, messages=sent.messages, detail=sent.detail)
        else:
            await asyncio.to_thread(store.release_report, policy_domain, begin)
    log(logger, "report " + sent.status, logging.INFO if sent.status in ("queued", "dry-run")
        else logging.WARNING, domain=policy_domain, day=_utc(begin)[:10],
        report_id=report_id, records=sent.records, messages=sent.messages,
        to=",".join(sent.recipients), id=sent.queue_id, size=sent.size,
        skipped="; ".join(f"{d.address}: {d.reason}" for d in sent.destinations
                          if not d.accepted), detail=sent.detail)
    return sent


async def _build_and_submit(submission_factory: Callable[[], Submission],
                            settings: ReportSettings, resolver: dns.asyncresolver.Resolver,
                            policy_domain: str, begin: int, last: int, report_id: str,
                            evaluations: Sequence[Evaluation], now: float,
                            dry_run: bool) -> SentReport:
    latest = evaluations[-1]

    def build() -> tuple[list[ReportRecord], bytes, bytes]:
        records, left_out, left_messages = aggregate(evaluations)
        errors: tuple[str, ...] = ()
        if left_out:
            errors = (f"{left_out} records ({left_messages} messages) left out: more than "
                      f"{MAX_OUTGOING_RECORDS} records",)
        metadata = ReportMetadata(org_name=settings.org_name, email=settings.report_from,
                                  report_id=report_id, begin=begin, end=last,
                                  extra_contact_info=settings.extra_contact_info,
                                  errors=errors)
        xml = build_aggregate_report(metadata, latest.policy, records)
        return records, xml, gzip.compress(xml, compresslevel=9, mtime=begin)

    # A busy day's report is megabytes of XML: built and compressed off the event loop.
    records, xml, compressed = await asyncio.to_thread(build)
    messages = sum(r.count for r in records)
    unique: dict[str, ReportUri] = {}
    for uri in latest.rua:  # an address listed twice gets one copy
        if uri.address:
            unique.setdefault(uri.address.lower(), uri)
    checked = await asyncio.gather(*(check_destination(policy_domain, uri, resolver)
                                     for uri in unique.values()))
    destinations: list[Destination] = []
    for dest in checked:
        if dest.accepted:
            try:
                parse_address(dest.address)
            except AddressError as exc:
                dest = Destination(dest.address, dest.uri, False, f"invalid address: {exc}")
        destinations.append(dest)

    def message_for(recipients: Sequence[str]) -> bytes:
        return build_report_message(settings, policy_domain=policy_domain,
                                    report_id=report_id, begin=begin, end=last,
                                    compressed=compressed, recipients=recipients,
                                    records=len(records), messages=messages, now=now)

    message = message_for([d.address for d in destinations if d.accepted])
    limits = {u.uri: u.max_bytes for u in latest.rua}
    final: list[Destination] = []
    for dest in destinations:
        limit = limits.get(dest.uri)
        if dest.accepted and limit is not None and len(message) > limit:
            # §6.2: a report larger than the destination's limit is not sent there.
            dest = Destination(dest.address, dest.uri, False,
                               f"report ({len(message)} bytes) over its size limit ({limit})")
        final.append(dest)
    recipients = [d.address for d in final if d.accepted]
    message = message_for(recipients)
    common = {"report_id": report_id, "records": len(records), "messages": messages,
              "destinations": tuple(final), "size": len(message), "xml": xml,
              "message": message}
    if dry_run:
        return SentReport(policy_domain, begin, last, "dry-run", **common)
    if not recipients:
        if any(d.temporary for d in final):
            return SentReport(policy_domain, begin, last, "deferred",
                              detail="no destination could be verified now", **common)
        return SentReport(policy_domain, begin, last, "no destination",
                          detail="no rua= destination may receive this report", **common)
    submission = submission_factory()
    msg_id = new_message_id()
    envelope = Envelope(sender=parse_address(settings.report_from),
                        recipients=[AcceptedRecipient(parse_address(r), ()) for r in recipients])
    reply = await submission.submit(SubmitRequest(
        session=SessionInfo(client_ip="local", protocol="local", listener=SUBMITTER_LISTENER),
        account=None, envelope=envelope, source=message, size=len(message), msg_id=msg_id,
        local_user=SUBMITTER_LISTENER, queue_local=True))
    if reply.code < 300:
        return SentReport(policy_domain, begin, last, "queued", queue_id=msg_id, **common)
    status = "refused" if reply.code >= 500 else "deferred"
    return SentReport(policy_domain, begin, last, status, detail=reply.one_line(), **common)


async def send_reports(store: DmarcStore, submission_factory: Callable[[], Submission],
                       settings: ReportSettings, *, resolver: dns.asyncresolver.Resolver,
                       now: float | None = None, dry_run: bool = False,
                       max_days: int = MAX_CATCH_UP_DAYS) -> list[SentReport]:
    """Build and queue the reports of every complete UTC day (up to ``max_days`` back)
    that has unreported evaluations; one :class:`SentReport` per policy domain and day.

    ``submission_factory`` returns the current ``Submission`` service (it is rebuilt on
    reload). ``dry_run`` builds everything, looks up DNS, and neither queues nor marks
    anything. Never raises for one domain's trouble: that domain's entry says
    ``error`` and the others go on. The settings' ``report_from`` must be a valid
    address (ValueError otherwise, before anything is claimed).
    """
    try:
        parse_address(settings.report_from)
    except AddressError as exc:
        raise ValueError(f"report_from {settings.report_from!r} is not an address: {exc}") \
            from None
    now = time.time() if now is None else now
    today = int(now // DAY) * DAY
    await asyncio.to_thread(store.flush)
    days = await asyncio.to_thread(store.pending_days, before=today,
                                   since=today - max_days * DAY)
    results = []
    for policy_domain, begin in days:
        try:
            results.append(await _report_day(store, submission_factory, settings, resolver,
                                             policy_domain, begin, now, dry_run))
        except Exception as exc:
            logger.exception("dmarc report failed", extra={"domain": policy_domain})
            results.append(SentReport(policy_domain, begin, begin + DAY - 1, "error",
                                      detail=f"{type(exc).__name__}: {exc}"))
    return results


# -- the daily task --------------------------------------------------------------------------


class DmarcReporter:
    """Sends our reports once a day, shortly after 00:00 UTC, and once at start-up for
    days missed while the server was down.

    ``settings`` may be replaced on reload (the next run uses the new value), as may the
    submission service behind ``submission_factory``.
    """

    def __init__(self, store: DmarcStore, submission_factory: Callable[[], Submission],
                 settings: ReportSettings, resolver: dns.asyncresolver.Resolver, *,
                 clock: Callable[[], float] = time.time,
                 random: Callable[[], float] = random_module.random) -> None:
        self.store = store
        self.submission_factory = submission_factory
        self.settings = settings
        self.resolver = resolver
        self._clock = clock
        self._random = random
        self._lock = asyncio.Lock()

    def next_run(self, now: float) -> float:
        """The next daily run after ``now``: midnight UTC + SEND_AFTER_MIDNIGHT + jitter."""
        midnight = (int(now // DAY) + 1) * DAY
        return midnight + SEND_AFTER_MIDNIGHT + self._random() * SEND_JITTER

    async def send_now(self) -> list[SentReport]:
        """Send what is due now (one run at a time), then purge old data."""
        async with self._lock:
            now = self._clock()
            sent = await send_reports(self.store, self.submission_factory, self.settings,
                                      resolver=self.resolver, now=now)
            try:
                await asyncio.to_thread(self.store.purge, now)
            except Exception as exc:
                log(logger, "purge failed", logging.ERROR, error=str(exc))
            return sent

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set."""
        when = self._clock() + STARTUP_DELAY + self._random() * STARTUP_JITTER
        while True:
            delay = max(0.0, when - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            try:
                await self.send_now()
            except Exception:
                logger.exception("dmarc reports failed")
            when = self.next_run(self._clock())


__all__ = [
    "MAX_CATCH_UP_DAYS", "MAX_OUTGOING_RECORDS", "Destination", "DmarcReporter",
    "ReportSettings", "SentReport", "aggregate", "build_report_message",
    "check_destination", "report_file_name", "report_subject", "send_reports",
]
