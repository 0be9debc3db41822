"""The DMARC report store, ``data_dir/dmarc.db``: reports we received, and our own DMARC
evaluations of inbound mail until they have been reported (RFC 7489 §7.2).

Two halves share one SQLite database (WAL mode, so the CLI reads while the server
writes):

- **Received aggregate reports** (``reports`` and ``report_records``), one row per report
  and one per record, unique on (organization, report id) so that a report delivered
  twice, or imported by hand after it arrived, is stored once (RFC 7489 §7.2.1.1 makes
  the pair the report's identity). :meth:`DmarcStore.summary` is what
  ``mailkeep dmarc reports`` prints.

- **Our evaluations** (``evaluations``): the receiver calls
  :meth:`DmarcStore.record_evaluation` once per inbound message whose author domain
  publishes a DMARC policy with a mailto: rua=. That call is on the SMTP hot path, so it
  only appends a row to a buffer in memory; a writer thread commits the buffer every
  :data:`FLUSH_INTERVAL` seconds (or sooner when :data:`FLUSH_BATCH` rows wait) in one
  transaction, with ``synchronous=NORMAL``. A crash (or power loss) loses at most the
  evaluations of the last second or so: they are missing from one day's report, a
  statistical loss that reports tolerate (reporters sample, too), and not worth an fsync
  per message. If the disk stalls, at most :data:`MAX_BUFFERED` rows wait; more are
  dropped and counted in the log rather than growing without bound.

Sending (``dmarc_send``) claims a (policy domain, day) in ``sent_reports`` before it builds
the report, so the server and ``mailkeep dmarc send`` never both report the same day, and
marks the evaluations reported only after the queue accepted the message.

Retention (:meth:`DmarcStore.purge`, daily): received reports for
:data:`RECEIVED_RETENTION_DAYS` after their period ended; evaluations for
:data:`REPORTED_RETENTION_DAYS` after they were reported, or
:data:`UNREPORTED_RETENTION_DAYS` if they never could be.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailkeep.logfmt import log
from mailkeep.reports.dmarc_xml import (
    DKIM_RESULTS,
    MAX_AUTH_RESULTS,
    AggregateReport,
    DkimAuth,
    PolicyOverride,
    PolicyPublished,
    SpfAuth,
)
from mailkeep.sqlite_schema import connect, init_schema
from mailkeep.trust.dkim_verify import DkimResult
from mailkeep.trust.dmarc import DmarcRecord, DmarcResult, DmarcStatus, ReportUri
from mailkeep.trust.spf import SpfResult

logger = logging.getLogger("mailkeep.dmarc")

SCHEMA_VERSION = 1
DB_NAME = "dmarc.db"
#: How long a writer waits for another process's write transaction (server vs. CLI).
BUSY_TIMEOUT_SECONDS = 30.0
#: Seconds buffered evaluations may wait before they are committed.
FLUSH_INTERVAL = 1.0
#: Buffered evaluations that make the writer commit at once.
FLUSH_BATCH = 500
#: Most evaluations waiting in memory; beyond this they are dropped (and counted).
MAX_BUFFERED = 50_000
#: Received reports are kept this long after the end of their period.
RECEIVED_RETENTION_DAYS = 90
#: Evaluations are kept this long after they were reported.
REPORTED_RETENTION_DAYS = 14
#: Evaluations never reported (no usable destination, the server was down for days) are
#: dropped this long after they were made.
UNREPORTED_RETENTION_DAYS = 7
#: Records of reports we sent are kept as long as received reports.
SENT_RETENTION_DAYS = RECEIVED_RETENTION_DAYS
#: A claim on a (domain, day) older than this was left by a crashed sender: taken over.
STALE_CLAIM_SECONDS = 3600.0
#: Distinct (policy domain, record) pairs whose stored form is kept ready.
POLICY_CACHE_SIZE = 1024
#: Longest text kept from an evaluation field (a domain name is at most 253).
MAX_FIELD = 255
DAY = 86400

FILE_MODE = 0o600

SCHEMA = """
CREATE TABLE reports (
    id INTEGER PRIMARY KEY,
    org_name TEXT NOT NULL,
    report_id TEXT NOT NULL,
    email TEXT NOT NULL,
    extra_contact_info TEXT NOT NULL,
    begin INTEGER NOT NULL,
    end_ INTEGER NOT NULL,
    domain TEXT NOT NULL,
    policy TEXT NOT NULL,
    errors TEXT NOT NULL,
    warnings TEXT NOT NULL,
    messages INTEGER NOT NULL,
    received REAL NOT NULL,
    source TEXT NOT NULL,
    UNIQUE (org_name, report_id)
);
CREATE INDEX reports_period ON reports (end_, domain);
CREATE TABLE report_records (
    report INTEGER NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    source_ip TEXT NOT NULL,
    count INTEGER NOT NULL,
    disposition TEXT NOT NULL,
    dkim TEXT NOT NULL,
    spf TEXT NOT NULL,
    header_from TEXT NOT NULL,
    envelope_from TEXT NOT NULL,
    envelope_to TEXT NOT NULL,
    reasons TEXT NOT NULL,
    dkim_results TEXT NOT NULL,
    spf_results TEXT NOT NULL
);
CREATE INDEX report_records_report ON report_records (report);
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    policy_domain TEXT NOT NULL,
    source_ip TEXT NOT NULL,
    header_from TEXT NOT NULL,
    envelope_from TEXT NOT NULL,
    envelope_to TEXT NOT NULL,
    spf_domain TEXT NOT NULL,
    spf_scope TEXT NOT NULL,
    spf_result TEXT NOT NULL,
    dkim_results TEXT NOT NULL,
    dmarc_result TEXT NOT NULL,
    dmarc_dkim TEXT NOT NULL,
    dmarc_spf TEXT NOT NULL,
    disposition TEXT NOT NULL,
    reasons TEXT NOT NULL,
    policy TEXT NOT NULL,
    reported REAL
);
CREATE INDEX evaluations_pending ON evaluations (reported, time);
CREATE INDEX evaluations_domain ON evaluations (policy_domain, time);
CREATE TABLE sent_reports (
    policy_domain TEXT NOT NULL,
    begin INTEGER NOT NULL,
    end_ INTEGER NOT NULL,
    report_id TEXT NOT NULL,
    status TEXT NOT NULL,
    claimed REAL NOT NULL,
    queue_id TEXT NOT NULL DEFAULT '',
    recipients TEXT NOT NULL DEFAULT '[]',
    messages INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (policy_domain, begin)
)
"""

_EVALUATION_COLUMNS = ("time", "policy_domain", "source_ip", "header_from", "envelope_from",
                       "envelope_to", "spf_domain", "spf_scope", "spf_result", "dkim_results",
                       "dmarc_result", "dmarc_dkim", "dmarc_spf", "disposition", "reasons",
                       "policy")
_INSERT_EVALUATION = (f"INSERT INTO evaluations ({', '.join(_EVALUATION_COLUMNS)}) "
                      f"VALUES ({', '.join('?' * len(_EVALUATION_COLUMNS))})")


class DmarcStoreError(Exception):
    """The report database cannot be opened or written."""


@dataclass(frozen=True)
class StoreOutcome:
    """What :meth:`DmarcStore.add_report` did: ``stored`` False means the report was
    there already (same organization and report id)."""

    stored: bool
    report_row: int


@dataclass(frozen=True)
class SourceSummary:
    """One line of ``mailkeep dmarc reports``: what one reporter saw from one source IP
    sending as one of our domains, over the reports in the period."""

    domain: str
    source_ip: str
    org_name: str
    reports: int
    messages: int
    dmarc_pass: int
    dmarc_fail: int
    spf_aligned: int
    dkim_aligned: int
    disposition_none: int
    disposition_quarantine: int
    disposition_reject: int
    header_from: tuple[str, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class ReceivedReport:
    """One stored report, for listings."""

    org_name: str
    report_id: str
    domain: str
    begin: int
    end: int
    messages: int
    records: int
    received: float
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Evaluation:
    """One inbound message's DMARC evaluation, as recorded for our reports."""

    id: int
    time: float
    policy_domain: str
    source_ip: str
    header_from: str
    envelope_from: str
    envelope_to: str
    spf: SpfAuth
    dkim: tuple[DkimAuth, ...]
    dmarc_result: str
    dmarc_dkim: str
    dmarc_spf: str
    disposition: str
    reasons: tuple[PolicyOverride, ...]
    policy: PolicyPublished
    rua: tuple[ReportUri, ...]


@dataclass(frozen=True)
class ReportLogEntry:
    """A row of ``sent_reports``: what happened to our report on one domain and day."""

    policy_domain: str
    begin: int
    end: int
    report_id: str
    status: str
    claimed: float
    queue_id: str
    recipients: tuple[str, ...]
    messages: int
    detail: str


def _cut(value: object) -> str:
    return str(value or "")[:MAX_FIELD]


def _domain_of(address_or_domain: str) -> str:
    """The domain of an address (the text after the last @), or the text itself."""
    text = (address_or_domain or "").strip().strip("<>")
    return _cut(text.rpartition("@")[2].lower().rstrip("."))


@functools.lru_cache(maxsize=POLICY_CACHE_SIZE)
def _policy_json(record_domain: str, record: DmarcRecord) -> str:
    # Cached: the same few policies come back message after message (the resolver caches
    # the record, so the parsed record is often the very same object).
    assert record.policy is not None
    return json.dumps({
        "domain": record_domain, "p": str(record.policy),
        "sp": str(record.subdomain_policy) if record.subdomain_policy else None,
        "adkim": record.adkim, "aspf": record.aspf, "pct": record.pct,
        "fo": ":".join(record.fo),
        "rua": [[u.uri, u.address, u.max_bytes] for u in record.rua if u.address],
    }, separators=(",", ":"))


def _policy_from_json(text: str) -> tuple[PolicyPublished, tuple[ReportUri, ...]]:
    data = json.loads(text)
    policy = PolicyPublished(domain=data["domain"], p=data["p"], sp=data.get("sp"),
                             adkim=data.get("adkim", "r"), aspf=data.get("aspf", "r"),
                             pct=data.get("pct"), fo=data.get("fo"))
    rua = tuple(ReportUri(uri, address, max_bytes) for uri, address, max_bytes
                in data.get("rua", ()))
    return policy, rua


class DmarcStore:
    """``dmarc.db`` of one data directory. Thread-safe; the server and the CLI may have
    it open at the same time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._buffer: list[tuple[Any, ...]] = []
        self._buffer_lock = threading.Lock()
        self._dropped = 0
        self._wake = threading.Event()
        self._stop = False
        self._writer: threading.Thread | None = None
        self._closed = False
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._conn = connect(self.path, BUSY_TIMEOUT_SECONDS)
        except (OSError, sqlite3.Error) as exc:
            raise DmarcStoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            with contextlib.suppress(OSError):
                self.path.chmod(FILE_MODE)
            init_schema(self._conn, SCHEMA, SCHEMA_VERSION, what="DMARC report database",
                        error=DmarcStoreError)
            # WAL + NORMAL: a crash never corrupts the file; power loss may cost the last
            # commits, which for statistics is the trade the module docstring explains.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._give_to_owner()
        except (OSError, sqlite3.Error) as exc:
            self._conn.close()
            raise DmarcStoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> DmarcStore:
        return cls(Path(data_dir) / DB_NAME)

    def _give_to_owner(self) -> None:
        """Created by root (an administrator's CLI command): hand the files to the data
        directory's owner, the user the server runs as, so that it can still write."""
        if os.geteuid() != 0:
            return
        owner = self.path.parent.stat()
        if owner.st_uid == 0:
            return
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                path = self.path.with_name(self.path.name + suffix)
                if path.lstat().st_uid == 0:
                    os.lchown(path, owner.st_uid, owner.st_gid)

    def close(self) -> None:
        """Commit buffered evaluations, stop the writer, close. Idempotent."""
        if self._closed:
            return
        writer = self._writer
        self._stop = True
        self._wake.set()
        if writer is not None:
            writer.join()
        self.flush()
        self._closed = True
        with self._lock:
            self._conn.close()

    def __enter__(self) -> DmarcStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise DmarcStoreError("the DMARC report database is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._closed:
                raise DmarcStoreError("the DMARC report database is closed")
            return self._conn.execute(sql, params).fetchall()

    # -- received reports ------------------------------------------------------------------

    def add_report(self, report: AggregateReport, *, received: float | None = None,
                   source: str = "") -> StoreOutcome:
        """Store a received report unless one with the same organization and report id is
        there already. ``source`` says where it came from (a message id, a file name)."""
        meta, policy = report.metadata, report.policy
        policy_json = json.dumps({"p": policy.p, "sp": policy.sp, "adkim": policy.adkim,
                                  "aspf": policy.aspf, "pct": policy.pct, "fo": policy.fo,
                                  "np": policy.np, "testing": policy.testing})
        rows = [(r.source_ip, r.count, r.disposition, r.dkim, r.spf, r.header_from,
                 r.envelope_from, r.envelope_to,
                 json.dumps([[x.type, x.comment] for x in r.reasons]),
                 json.dumps([[d.domain, d.selector, d.result, d.human_result]
                             for d in r.dkim_results]),
                 json.dumps([[s.domain, s.scope, s.result] for s in r.spf_results]))
                for r in report.records]
        try:
            with self._transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO reports (org_name, report_id, email, extra_contact_info, "
                    "begin, end_, domain, policy, errors, warnings, messages, received, source) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (org_name, report_id) DO NOTHING",
                    (meta.org_name, meta.report_id, meta.email, meta.extra_contact_info,
                     meta.begin, meta.end, policy.domain, policy_json,
                     json.dumps(list(meta.errors)), json.dumps(list(report.warnings)),
                     report.message_count, time.time() if received is None else received,
                     source[:MAX_FIELD]))
                if cursor.rowcount == 0:
                    existing = conn.execute(
                        "SELECT id FROM reports WHERE org_name = ? AND report_id = ?",
                        (meta.org_name, meta.report_id)).fetchone()
                    return StoreOutcome(False, existing[0] if existing else 0)
                row_id = int(cursor.lastrowid or 0)
                conn.executemany(
                    "INSERT INTO report_records (report, source_ip, count, disposition, dkim, "
                    "spf, header_from, envelope_from, envelope_to, reasons, dkim_results, "
                    "spf_results) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(row_id, *row) for row in rows])
                return StoreOutcome(True, row_id)
        except (sqlite3.Error, OverflowError) as exc:
            raise DmarcStoreError(f"cannot store the report: {exc}") from exc

    def received_reports(self, *, since: float, domain: str | None = None) -> list[ReceivedReport]:
        """Stored reports whose period ended at or after ``since``, newest first."""
        sql = ("SELECT r.org_name, r.report_id, r.domain, r.begin, r.end_, r.messages, "
               "(SELECT COUNT(*) FROM report_records WHERE report = r.id), r.received, "
               "r.warnings FROM reports r WHERE r.end_ >= ?")
        params: list[Any] = [int(since)]
        if domain:
            sql += " AND r.domain = ?"
            params.append(domain)
        sql += " ORDER BY r.end_ DESC, r.org_name"
        return [ReceivedReport(org, rid, dom, begin, end, messages, records, received,
                               tuple(json.loads(warnings)))
                for org, rid, dom, begin, end, messages, records, received, warnings
                in self._query(sql, params)]

    def summary(self, *, since: float, domain: str | None = None) -> list[SourceSummary]:
        """Per policy domain, source IP and reporting organization: messages, DMARC
        pass/fail (pass: either aligned identifier passed), aligned SPF and DKIM passes
        and dispositions, over reports whose period ended at or after ``since``.

        ``domain`` selects reports about that domain, or records whose header From is it
        (a subdomain covered by its organizational domain's policy)."""
        sql = """
            SELECT r.domain, rec.source_ip, r.org_name, COUNT(DISTINCT r.id),
                   TOTAL(rec.count),
                   TOTAL(CASE WHEN rec.dkim = 'pass' OR rec.spf = 'pass' THEN rec.count ELSE 0 END),
                   TOTAL(CASE WHEN rec.spf = 'pass' THEN rec.count ELSE 0 END),
                   TOTAL(CASE WHEN rec.dkim = 'pass' THEN rec.count ELSE 0 END),
                   TOTAL(CASE WHEN rec.disposition = 'none' THEN rec.count ELSE 0 END),
                   TOTAL(CASE WHEN rec.disposition = 'quarantine' THEN rec.count ELSE 0 END),
                   TOTAL(CASE WHEN rec.disposition = 'reject' THEN rec.count ELSE 0 END),
                   GROUP_CONCAT(DISTINCT rec.header_from),
                   MIN(r.begin), MAX(r.end_)
            FROM report_records rec JOIN reports r ON rec.report = r.id
            WHERE r.end_ >= ?"""
        params: list[Any] = [int(since)]
        if domain:
            sql += " AND (r.domain = ? OR rec.header_from = ?)"
            params += [domain, domain]
        # TOTAL (a float) rather than SUM: a sum of hostile counts cannot overflow.
        sql += (" GROUP BY r.domain, rec.source_ip, r.org_name"
                " ORDER BY r.domain, TOTAL(rec.count) DESC, rec.source_ip, r.org_name")
        out = []
        for (dom, ip, org, reports, messages, passed, spf, dkim, none, quarantine, reject,
             header_from, begin, end) in self._query(sql, params):
            out.append(SourceSummary(
                domain=dom, source_ip=ip, org_name=org, reports=reports,
                messages=int(messages), dmarc_pass=int(passed),
                dmarc_fail=int(messages - passed), spf_aligned=int(spf),
                dkim_aligned=int(dkim), disposition_none=int(none),
                disposition_quarantine=int(quarantine), disposition_reject=int(reject),
                header_from=tuple(sorted(h for h in (header_from or "").split(",") if h)),
                begin=begin, end=end))
        return out

    # -- our evaluations: the hot path -----------------------------------------------------

    def record_evaluation(self, *, source_ip: str, envelope_from: str, envelope_to: str,
                          spf: SpfResult | None, dkim: Sequence[DkimResult],
                          dmarc: DmarcResult, header_from: str | None = None,
                          disposition: str | None = None,
                          override: PolicyOverride | None = None,
                          when: float | None = None) -> bool:
        """Remember one inbound message's DMARC evaluation for our aggregate reports.

        Called by the receiver once per message (not per recipient) after DMARC was
        checked. ``envelope_from`` is the MAIL FROM address or domain ("" for the null
        sender), ``envelope_to`` a recipient address or domain, ``spf`` the SPF result
        DMARC used (MAIL FROM, or HELO for the null sender), ``dkim`` every signature's
        result. ``disposition`` is what we actually did when that differs from
        ``dmarc.disposition`` (local policy), with ``override`` saying why (RFC 7489
        Appendix C PolicyOverrideType); a pct= sample-out is reported as ``sampled_out``
        by itself.

        Returns False, recording nothing, when there is nothing to report: no usable
        policy record (result none, temperror, permerror), no mailto: rua= in it, or a
        client address that is not an IP address. Never blocks and never raises for
        its inputs: the row is buffered and committed by a writer thread.
        """
        record = dmarc.record
        if self._stop or (record is None or record.policy is None or not dmarc.record_domain
                or dmarc.result not in (DmarcStatus.PASS, DmarcStatus.FAIL)
                or not any(uri.address for uri in record.rua)):
            return False
        try:
            ip = str(ipaddress.ip_address(source_ip))
        except ValueError:
            return False
        envelope_domain = _domain_of(envelope_from)
        if spf is not None:
            spf_row = (_cut(spf.domain.lower()) or envelope_domain,
                       "helo" if spf.identity == "helo" else "mfrom", str(spf.result))
        else:
            spf_row = (envelope_domain, "mfrom", "none")
        dkim_rows = [[_cut(d.domain), _cut(d.selector),
                      str(d.result) if str(d.result) in DKIM_RESULTS else "permerror",
                      "testing key (t=y)" if d.testing else ""]
                     for d in dkim[:MAX_AUTH_RESULTS] if d.domain]
        reasons = []
        if dmarc.sampled_out:
            reasons.append(["sampled_out", ""])
        if override is not None:
            reasons.append([override.type, _cut(override.comment)])
        row = (time.time() if when is None else float(when), _cut(dmarc.record_domain), ip,
               _cut((header_from or dmarc.from_domain).lower()), envelope_domain,
               _domain_of(envelope_to), *spf_row, json.dumps(dkim_rows),
               str(dmarc.result), "pass" if dmarc.dkim_aligned else "fail",
               "pass" if dmarc.spf_aligned else "fail", str(disposition or dmarc.disposition),
               json.dumps(reasons), _policy_json(dmarc.record_domain, record))
        with self._buffer_lock:
            if len(self._buffer) >= MAX_BUFFERED:
                self._dropped += 1
                return False
            self._buffer.append(row)
            waiting = len(self._buffer)
        if self._writer is None:
            self._start_writer()
        if waiting >= FLUSH_BATCH:
            self._wake.set()
        return True

    def _start_writer(self) -> None:
        with self._buffer_lock:
            if self._writer is not None or self._closed or self._stop:
                return
            self._writer = threading.Thread(target=self._write_loop, name="dmarc-writer",
                                            daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        while not self._stop:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # the next round tries again; the buffer is bounded
                log(logger, "evaluations not saved", logging.ERROR, error=str(exc))

    def flush(self) -> int:
        """Commit the buffered evaluations now; the number written."""
        with self._buffer_lock:
            rows, self._buffer = self._buffer, []
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log(logger, "evaluations dropped", logging.WARNING, count=dropped,
                reason=f"more than {MAX_BUFFERED} waiting to be written")
        if not rows:
            return 0
        try:
            with self._transaction() as conn:
                conn.executemany(_INSERT_EVALUATION, rows)
        except (sqlite3.Error, DmarcStoreError):
            with self._buffer_lock:
                # Put them back in front (bounded like any other wait).
                room = max(0, MAX_BUFFERED - len(self._buffer))
                self._buffer[:0] = rows[:room]
                self._dropped += len(rows) - min(room, len(rows))
            raise
        return len(rows)

    # -- our evaluations: reporting ------------------------------------------------------

    def pending_days(self, *, before: int, since: int) -> list[tuple[str, int]]:
        """(policy domain, start of UTC day) with evaluations not yet reported, made in
        [``since``, ``before``)."""
        rows = self._query(
            "SELECT policy_domain, CAST(time / ? AS INTEGER) * ? AS day FROM evaluations "
            "WHERE reported IS NULL AND time >= ? AND time < ? "
            "GROUP BY policy_domain, day ORDER BY day, policy_domain",
            (DAY, DAY, since, before))
        return [(domain, int(day)) for domain, day in rows]

    def evaluations(self, policy_domain: str, begin: int, end: int) -> list[Evaluation]:
        """Unreported evaluations of ``policy_domain`` made in [begin, end)."""
        rows = self._query(
            f"SELECT id, {', '.join(_EVALUATION_COLUMNS)} FROM evaluations "
            "WHERE policy_domain = ? AND time >= ? AND time < ? AND reported IS NULL "
            "ORDER BY id", (policy_domain, begin, end))
        out = []
        for (row_id, when, domain, ip, header_from, envelope_from, envelope_to, spf_domain,
             spf_scope, spf_result, dkim_json, dmarc_result, dmarc_dkim, dmarc_spf,
             disposition, reasons_json, policy_json) in rows:
            policy, rua = _policy_from_json(policy_json)
            out.append(Evaluation(
                id=row_id, time=when, policy_domain=domain, source_ip=ip,
                header_from=header_from, envelope_from=envelope_from, envelope_to=envelope_to,
                spf=SpfAuth(spf_domain, spf_result, spf_scope),
                dkim=tuple(DkimAuth(d, result, selector, human)
                           for d, selector, result, human in json.loads(dkim_json)),
                dmarc_result=dmarc_result, dmarc_dkim=dmarc_dkim, dmarc_spf=dmarc_spf,
                disposition=disposition,
                reasons=tuple(PolicyOverride(t, c) for t, c in json.loads(reasons_json)),
                policy=policy, rua=rua))
        return out

    def claim_report(self, policy_domain: str, begin: int, end: int, report_id: str, *,
                     now: float) -> bool:
        """Take the right to report ``policy_domain`` for the day starting at ``begin``.

        False when that day was reported already (late evaluations of it are then marked
        reported: a day is reported once) or another sender holds a fresh claim."""
        with self._transaction() as conn:
            found = conn.execute("SELECT status, claimed FROM sent_reports "
                                 "WHERE policy_domain = ? AND begin = ?",
                                 (policy_domain, begin)).fetchone()
            if found is not None:
                status, claimed = found
                if status != "sending":
                    conn.execute("UPDATE evaluations SET reported = ? WHERE policy_domain = ? "
                                 "AND time >= ? AND time < ? AND reported IS NULL",
                                 (now, policy_domain, begin, end))
                    return False
                if claimed > now - STALE_CLAIM_SECONDS:
                    return False
            conn.execute("INSERT OR REPLACE INTO sent_reports (policy_domain, begin, end_, "
                         "report_id, status, claimed) VALUES (?, ?, ?, ?, 'sending', ?)",
                         (policy_domain, begin, end, report_id, now))
            return True

    def finish_report(self, policy_domain: str, begin: int, *, status: str,
                      evaluation_ids: Sequence[int], now: float, queue_id: str = "",
                      recipients: Sequence[str] = (), messages: int = 0,
                      detail: str = "") -> None:
        """Record the outcome of a claimed report and mark its evaluations reported."""
        with self._transaction() as conn:
            conn.execute("UPDATE sent_reports SET status = ?, queue_id = ?, recipients = ?, "
                         "messages = ?, detail = ? WHERE policy_domain = ? AND begin = ?",
                         (status, queue_id, json.dumps(list(recipients)), messages,
                          detail[:1000], policy_domain, begin))
            ids = list(evaluation_ids)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                conn.execute(f"UPDATE evaluations SET reported = ? WHERE id IN "
                             f"({', '.join('?' * len(chunk))})", (now, *chunk))

    def release_report(self, policy_domain: str, begin: int) -> None:
        """Give up a claim (the report could not be sent now; a later run tries again)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM sent_reports WHERE policy_domain = ? AND begin = ? "
                         "AND status = 'sending'", (policy_domain, begin))

    def sent_reports(self, *, since: float) -> list[ReportLogEntry]:
        """Our reports for days starting at or after ``since``, newest first."""
        return [ReportLogEntry(d, b, e, rid, status, claimed, qid, tuple(json.loads(rcpts)), n,
                           detail)
                for d, b, e, rid, status, claimed, qid, rcpts, n, detail in self._query(
                    "SELECT policy_domain, begin, end_, report_id, status, claimed, queue_id, "
                    "recipients, messages, detail FROM sent_reports WHERE begin >= ? "
                    "ORDER BY begin DESC, policy_domain", (int(since),))]

    # -- retention -----------------------------------------------------------------------

    def purge(self, now: float | None = None) -> dict[str, int]:
        """Delete what is past its retention period; counts by kind."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            counts = {
                "reports": conn.execute(
                    "DELETE FROM reports WHERE end_ < ?",
                    (now - RECEIVED_RETENTION_DAYS * DAY,)).rowcount,
                "evaluations": conn.execute(
                    "DELETE FROM evaluations WHERE (reported IS NOT NULL AND reported < ?) "
                    "OR (reported IS NULL AND time < ?)",
                    (now - REPORTED_RETENTION_DAYS * DAY,
                     now - UNREPORTED_RETENTION_DAYS * DAY)).rowcount,
                "sent_reports": conn.execute(
                    "DELETE FROM sent_reports WHERE begin < ?",
                    (now - SENT_RETENTION_DAYS * DAY,)).rowcount,
            }
        if any(counts.values()):
            log(logger, "purged", **counts)
        return counts


__all__ = [
    "DB_NAME", "FLUSH_INTERVAL", "MAX_BUFFERED", "RECEIVED_RETENTION_DAYS",
    "REPORTED_RETENTION_DAYS", "UNREPORTED_RETENTION_DAYS", "DmarcStore", "DmarcStoreError",
    "Evaluation", "ReceivedReport", "ReportLogEntry", "SourceSummary", "StoreOutcome",
]
