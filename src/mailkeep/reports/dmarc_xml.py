"""DMARC aggregate reports in XML (RFC 7489 §7.2.1, Appendix C): read and write.

:func:`parse_aggregate_report` reads what other receivers send about our domains. Real
reports stray from the appendix schema in small ways, and each is read the way its
sender meant it rather than refused:

- elements in any namespace (the DMARCbis aggregate-reporting draft puts them in
  ``urn:ietf:params:xml:ns:dmarc-2.0``; some reporters use the appendix's
  ``http://dmarc.org/dmarc-xml/0.1``): only local names count;
- optional elements left out (``version``, ``email``, ``envelope_from``, ``scope``,
  ``policy_evaluated``, ``adkim``...): their schema defaults, or a warning;
- result words from older implementations (the schema notes "unknown" for temperror and
  "error" for permerror; "hardfail" is seen too) and upper-case values;
- elements the appendix does not know (DMARCbis ``np``, ``testing``, ``generator``,
  ``extensions``): ignored, the ones of interest kept.

Input is hostile until proven otherwise: the XML is parsed with defusedxml, which refuses
entity declarations (no "billion laughs", no external entities) and with ``forbid_dtd``
any DTD at all; size, records, nesting depth and text lengths are bounded by the
constants below. Anything that is not a usable report raises :class:`ReportError`, never
another exception.

:func:`build_aggregate_report` writes our own reports: every element the appendix
requires, in the order its ``xs:sequence`` types give.
"""

from __future__ import annotations

import io
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from mailkeep.trust.dmarc import normalize_domain

#: Largest report accepted, in bytes of (uncompressed) XML. Reports of the biggest
#: mailbox providers for a busy domain are a few megabytes.
MAX_REPORT_BYTES = 32 * 1024 * 1024
#: Most <record> elements in one report.
MAX_RECORDS = 100_000
#: Deepest element nesting accepted; the schema needs six levels.
MAX_DEPTH = 20
#: Longest text value kept (characters); longer ones are cut.
MAX_TEXT = 1024
#: Most <error> elements of report_metadata kept.
MAX_METADATA_ERRORS = 32
#: Most DKIM or SPF results (each) kept per record, and override reasons per record.
MAX_AUTH_RESULTS = 32
MAX_REASONS = 8
#: Most warnings kept for one report.
MAX_WARNINGS = 50
#: Largest message count accepted in one row (a billion messages a day from one IP is
#: already absurd; sums over a report stay far inside SQLite's 64-bit integers).
MAX_COUNT = 10**9
#: Timestamps beyond this are not seconds since the epoch (year 5138).
MAX_TIMESTAMP = 10**11

#: The version our reports carry (RFC 7489 Appendix C ``feedback/version``).
REPORT_VERSION = "1.0"

DISPOSITIONS = ("none", "quarantine", "reject")
DMARC_RESULTS = ("pass", "fail")
DKIM_RESULTS = ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror")
SPF_RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
SPF_SCOPES = ("helo", "mfrom")
OVERRIDE_TYPES = ("forwarded", "sampled_out", "trusted_forwarder", "mailing_list",
                  "local_policy", "other")

# Appendix C notes these spellings for temperror/permerror; "hardfail" is an old name of fail.
_RESULT_ALIASES = {"unknown": "temperror", "error": "permerror", "hardfail": "fail"}
# XML 1.0 §2.2 Char: what may appear in a document at all.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NUMBER = re.compile(r"[0-9]{1,20}(?:\.[0-9]*)?\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")  # str.isdigit() also takes "²", which int() refuses


class ReportError(ValueError):
    """The data is not a usable DMARC aggregate report; the message says why."""


@dataclass(frozen=True)
class ReportMetadata:
    """``report_metadata``: who reports, which report, and the period (``begin`` and
    ``end`` in seconds since the epoch, UTC, both inclusive as reporters use them)."""

    org_name: str
    email: str
    report_id: str
    begin: int
    end: int
    extra_contact_info: str = ""
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyPublished:
    """``policy_published``: the DMARC record the reporter found. ``sp`` None: not given
    (p= applies to subdomains); ``pct`` None: not given (DMARCbis reports drop it);
    ``np`` and ``testing`` are DMARCbis additions, None when absent."""

    domain: str
    p: str = "none"
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int | None = 100
    fo: str | None = None
    np: str | None = None
    testing: str | None = None


@dataclass(frozen=True)
class DkimAuth:
    """One ``auth_results/dkim``: a signature's d=, s= and its result."""

    domain: str
    result: str
    selector: str = ""
    human_result: str = ""


@dataclass(frozen=True)
class SpfAuth:
    """One ``auth_results/spf``: the domain checked, which identity it was, the result."""

    domain: str
    result: str
    scope: str = "mfrom"


@dataclass(frozen=True)
class PolicyOverride:
    """One ``policy_evaluated/reason``: why the disposition differs from the policy."""

    type: str
    comment: str = ""


@dataclass(frozen=True)
class ReportRecord:
    """One ``record``: ``count`` messages from ``source_ip`` that had the same outcome.

    ``dkim`` and ``spf`` are the DMARC-evaluated results (aligned pass or not,
    ``policy_evaluated``); ``dkim_results``/``spf_results`` the raw authentication
    results. ``source_ip`` is kept as sent when it is not an IP address (some reporters
    mask addresses, as in seed 003's "64.x.x.x"), with a warning on the report.
    """

    source_ip: str
    count: int
    disposition: str
    dkim: str
    spf: str
    header_from: str
    envelope_from: str = ""
    envelope_to: str = ""
    reasons: tuple[PolicyOverride, ...] = ()
    dkim_results: tuple[DkimAuth, ...] = ()
    spf_results: tuple[SpfAuth, ...] = ()

    @property
    def dmarc_pass(self) -> bool:
        """DMARC passes when either aligned identifier passed (RFC 7489 §4.2)."""
        return self.dkim == "pass" or self.spf == "pass"


@dataclass(frozen=True)
class AggregateReport:
    """A parsed report. ``warnings`` say what was repaired or left out while reading."""

    metadata: ReportMetadata
    policy: PolicyPublished
    records: tuple[ReportRecord, ...]
    version: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def message_count(self) -> int:
        return sum(record.count for record in self.records)


# -- reading -------------------------------------------------------------------------------


def _local(tag: object) -> str:
    """The local name of an element (namespaces of any version are ignored)."""
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _text(element: Element | None) -> str:
    if element is None or element.text is None:
        return ""
    return _CONTROL.sub("", element.text.strip())[:MAX_TEXT]


class _Reader:
    """Turns the elements of one report into dataclasses; collects warnings."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        elif len(self.warnings) == MAX_WARNINGS:
            self.warnings.append("more warnings left out")

    @staticmethod
    def children(element: Element | None) -> dict[str, list[Element]]:
        found: dict[str, list[Element]] = {}
        for child in element if element is not None else ():
            found.setdefault(_local(child.tag), []).append(child)
        return found

    @staticmethod
    def first(children: dict[str, list[Element]], name: str) -> Element | None:
        found = children.get(name)
        return found[0] if found else None

    def word(self, value: str, allowed: Sequence[str], default: str, what: str) -> str:
        """An enumeration value: lower-cased, known aliases mapped, else ``default``."""
        word = value.strip().lower()
        word = _RESULT_ALIASES.get(word, word)
        if word in allowed:
            return word
        if word:
            self.warn(f"{what}: unknown value {value[:40]!r}, read as {default}")
        return default

    def number(self, value: str, what: str) -> int:
        """A non-negative integer (a fraction, as some reporters write times, is cut)."""
        if not _NUMBER.match(value):
            raise ReportError(f"{what} is not a number: {value[:40]!r}")
        return int(value.split(".", 1)[0])

    def metadata(self, element: Element) -> ReportMetadata:
        kids = self.children(element)
        org_name = _text(self.first(kids, "org_name"))
        report_id = _text(self.first(kids, "report_id"))
        if not org_name:
            raise ReportError("report_metadata has no org_name")
        if not report_id:
            raise ReportError("report_metadata has no report_id")
        date_range = self.first(kids, "date_range")
        if date_range is None:
            raise ReportError("report_metadata has no date_range")
        dates = self.children(date_range)
        begin = self.number(_text(self.first(dates, "begin")), "date_range/begin")
        end = self.number(_text(self.first(dates, "end")), "date_range/end")
        if begin > MAX_TIMESTAMP or end > MAX_TIMESTAMP:
            raise ReportError("date_range is not in seconds since the epoch")
        if end < begin:
            raise ReportError(f"date_range ends ({end}) before it begins ({begin})")
        errors = tuple(_text(e) for e in kids.get("error", [])[:MAX_METADATA_ERRORS])
        return ReportMetadata(org_name=org_name, email=_text(self.first(kids, "email")),
                              report_id=report_id, begin=begin, end=end,
                              extra_contact_info=_text(self.first(kids, "extra_contact_info")),
                              errors=tuple(e for e in errors if e))

    def policy(self, element: Element) -> PolicyPublished:
        kids = self.children(element)
        raw_domain = _text(self.first(kids, "domain"))
        domain = normalize_domain(raw_domain)
        if domain is None:
            raise ReportError(f"policy_published domain {raw_domain[:80]!r} is not a domain "
                              "name")
        p_element = self.first(kids, "p")
        if p_element is None:
            self.warn("policy_published has no p; read as none")
        p = self.word(_text(p_element), DISPOSITIONS, "none", "policy_published/p")
        sp = np = None
        if self.first(kids, "sp") is not None and _text(self.first(kids, "sp")):
            sp = self.word(_text(self.first(kids, "sp")), DISPOSITIONS, p, "policy_published/sp")
        if self.first(kids, "np") is not None and _text(self.first(kids, "np")):
            np = self.word(_text(self.first(kids, "np")), DISPOSITIONS, p, "policy_published/np")
        pct: int | None = None
        pct_text = _text(self.first(kids, "pct"))
        if pct_text:
            if _DIGITS.match(pct_text) and int(pct_text) <= 100:
                pct = int(pct_text)
            else:
                self.warn(f"policy_published/pct: invalid value {pct_text[:20]!r} ignored")
        fo = _text(self.first(kids, "fo")) or None
        testing = _text(self.first(kids, "testing")).lower() or None
        return PolicyPublished(
            domain=domain, p=p, sp=sp,
            adkim=self.word(_text(self.first(kids, "adkim")), ("r", "s"), "r", "adkim"),
            aspf=self.word(_text(self.first(kids, "aspf")), ("r", "s"), "r", "aspf"),
            pct=pct, fo=fo, np=np, testing=testing)

    def record(self, element: Element, number: int) -> ReportRecord | None:
        """One record; None (with a warning) when it cannot be read."""
        kids = self.children(element)
        row = self.first(kids, "row")
        if row is None:
            self.warn(f"record {number}: no row; left out")
            return None
        row_kids = self.children(row)
        source_ip = _text(self.first(row_kids, "source_ip"))
        try:
            source_ip = str(ipaddress.ip_address(source_ip))
        except ValueError:
            self.warn(f"record {number}: source_ip {source_ip[:60]!r} is not an IP address")
        count_text = _text(self.first(row_kids, "count"))
        if not _DIGITS.match(count_text) or int(count_text) > MAX_COUNT:
            self.warn(f"record {number}: count {count_text[:30]!r} is not a message count; "
                      "left out")
            return None
        evaluated = self.first(row_kids, "policy_evaluated")
        if evaluated is None:
            self.warn(f"record {number}: no policy_evaluated; read as disposition none, "
                      "DKIM and SPF fail")
        ev = self.children(evaluated)
        reasons = []
        for reason in ev.get("reason", [])[:MAX_REASONS]:
            parts = self.children(reason)
            kind = _text(self.first(parts, "type")).lower()
            if kind:
                reasons.append(PolicyOverride(kind, _text(self.first(parts, "comment"))))
        ids = self.children(self.first(kids, "identifiers"))
        auth = self.children(self.first(kids, "auth_results"))
        dkim_results = []
        for item in auth.get("dkim", [])[:MAX_AUTH_RESULTS]:
            parts = self.children(item)
            dkim_results.append(DkimAuth(
                domain=_text(self.first(parts, "domain")).lower(),
                result=self.word(_text(self.first(parts, "result")), DKIM_RESULTS, "permerror",
                                 f"record {number} dkim result"),
                selector=_text(self.first(parts, "selector")),
                human_result=_text(self.first(parts, "human_result"))))
        spf_results = []
        for item in auth.get("spf", [])[:MAX_AUTH_RESULTS]:
            parts = self.children(item)
            spf_results.append(SpfAuth(
                domain=_text(self.first(parts, "domain")).lower(),
                result=self.word(_text(self.first(parts, "result")), SPF_RESULTS, "permerror",
                                 f"record {number} spf result"),
                scope=self.word(_text(self.first(parts, "scope")), SPF_SCOPES, "mfrom",
                                f"record {number} spf scope")))
        return ReportRecord(
            source_ip=source_ip, count=int(count_text),
            disposition=self.word(_text(self.first(ev, "disposition")), DISPOSITIONS, "none",
                                  f"record {number} disposition"),
            dkim=self.word(_text(self.first(ev, "dkim")), DMARC_RESULTS, "fail",
                           f"record {number} policy_evaluated/dkim"),
            spf=self.word(_text(self.first(ev, "spf")), DMARC_RESULTS, "fail",
                          f"record {number} policy_evaluated/spf"),
            header_from=_text(self.first(ids, "header_from")).lower(),
            envelope_from=_text(self.first(ids, "envelope_from")).lower(),
            envelope_to=_text(self.first(ids, "envelope_to")).lower(),
            reasons=tuple(reasons), dkim_results=tuple(dkim_results),
            spf_results=tuple(spf_results))


def parse_aggregate_report(xml: bytes, *, max_bytes: int = MAX_REPORT_BYTES,
                           max_records: int = MAX_RECORDS) -> AggregateReport:
    """Read an aggregate report (RFC 7489 Appendix C). Raises :class:`ReportError` for
    anything that is not a usable report: not XML, a DTD or entity declaration, over a
    limit, no ``feedback`` root, no report id, organization, date range or policy domain.

    The document is read incrementally and each ``record`` is dropped from the tree once
    read, so memory follows the size of one record, not of the report.
    """
    if not isinstance(xml, bytes | bytearray | memoryview):
        raise ReportError("a report is bytes")
    if len(xml) > max_bytes:
        raise ReportError(f"report larger than {max_bytes} bytes")
    if not bytes(xml[:1024]).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise ReportError("not an XML document")
    reader = _Reader()
    metadata: ReportMetadata | None = None
    policy: PolicyPublished | None = None
    version = ""
    records: list[ReportRecord] = []
    seen_records = 0
    depth = 0
    root: Element | None = None
    try:
        events = SafeET.iterparse(io.BytesIO(xml), events=("start", "end"), forbid_dtd=True,
                                  forbid_entities=True, forbid_external=True)
        for event, element in events:
            if event == "start":
                depth += 1
                if depth > MAX_DEPTH:
                    raise ReportError(f"elements nested deeper than {MAX_DEPTH} levels")
                if depth == 1:
                    root = element
                    if _local(element.tag) != "feedback":
                        raise ReportError(f"root element is <{_local(element.tag)[:40]}>, "
                                          "not <feedback>")
                continue
            depth -= 1
            if depth != 1:
                continue
            # A child of <feedback> is complete: read it, then let it go.
            name = _local(element.tag)
            if name == "record":
                seen_records += 1
                if seen_records > max_records:
                    raise ReportError(f"more than {max_records} records")
                record = reader.record(element, seen_records)
                if record is not None:
                    records.append(record)
            elif name == "report_metadata":
                if metadata is None:
                    metadata = reader.metadata(element)
                else:
                    reader.warn("a second report_metadata ignored")
            elif name == "policy_published":
                if policy is None:
                    policy = reader.policy(element)
                else:
                    reader.warn("a second policy_published ignored")
            elif name == "version":
                version = version or _text(element)[:20]
            assert root is not None
            root.remove(element)
    except ReportError:
        raise
    except DefusedXmlException as exc:
        raise ReportError(f"refused XML construct: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise ReportError(f"not well-formed XML: {exc}") from None
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ReportError(f"unreadable report: {type(exc).__name__}: {exc}"[:200]) from None
    if root is None:
        raise ReportError("empty document")
    if metadata is None:
        raise ReportError("no report_metadata")
    if policy is None:
        raise ReportError("no policy_published")
    if seen_records == 0:
        reader.warn("the report has no records")
    return AggregateReport(metadata=metadata, policy=policy, records=tuple(records),
                           version=version, warnings=tuple(reader.warnings))


# -- writing -------------------------------------------------------------------------------


def _clean(value: object) -> str:
    """Text that XML 1.0 can carry (ElementTree would write anything, even NUL)."""
    return _NOT_XML_CHAR.sub("", str(value))


def _add(parent: Element, name: str, value: object | None = None) -> Element:
    child = ET.SubElement(parent, name)
    if value is not None:
        child.text = _clean(value)
    return child


def _check(value: str, allowed: Iterable[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what}: {value!r} is not one of {', '.join(allowed)}")
    return value


def build_aggregate_report(metadata: ReportMetadata, policy: PolicyPublished,
                           records: Sequence[ReportRecord]) -> bytes:
    """Our report as UTF-8 XML, valid against RFC 7489 Appendix C.

    The appendix's sequences fix the order of elements; ``feedback`` needs at least one
    ``record`` and every ``auth_results`` at least one ``spf`` (a record without an SPF
    result reports ``none`` for its envelope sender domain). Enumerated values are
    checked: ValueError for a value the schema does not allow (our own data is wrong).
    """
    if not records:
        raise ValueError("a report needs at least one record (RFC 7489 Appendix C)")
    root = Element("feedback")
    _add(root, "version", REPORT_VERSION)
    meta = _add(root, "report_metadata")
    _add(meta, "org_name", metadata.org_name)
    _add(meta, "email", metadata.email)
    if metadata.extra_contact_info:
        _add(meta, "extra_contact_info", metadata.extra_contact_info)
    _add(meta, "report_id", metadata.report_id)
    dates = _add(meta, "date_range")
    _add(dates, "begin", int(metadata.begin))
    _add(dates, "end", int(metadata.end))
    for error in metadata.errors:
        _add(meta, "error", error)

    published = _add(root, "policy_published")
    _add(published, "domain", policy.domain)
    _add(published, "adkim", _check(policy.adkim, ("r", "s"), "adkim"))
    _add(published, "aspf", _check(policy.aspf, ("r", "s"), "aspf"))
    _add(published, "p", _check(policy.p, DISPOSITIONS, "p"))
    # sp and pct are required by the appendix: their record defaults when not published
    # (RFC 7489 §6.3: sp defaults to p, pct to 100).
    _add(published, "sp", _check(policy.sp or policy.p, DISPOSITIONS, "sp"))
    _add(published, "pct", 100 if policy.pct is None else int(policy.pct))
    _add(published, "fo", policy.fo or "0")

    for record in records:
        item = _add(root, "record")
        row = _add(item, "row")
        _add(row, "source_ip", str(ipaddress.ip_address(record.source_ip)))
        _add(row, "count", int(record.count))
        evaluated = _add(row, "policy_evaluated")
        _add(evaluated, "disposition", _check(record.disposition, DISPOSITIONS, "disposition"))
        _add(evaluated, "dkim", _check(record.dkim, DMARC_RESULTS, "policy_evaluated/dkim"))
        _add(evaluated, "spf", _check(record.spf, DMARC_RESULTS, "policy_evaluated/spf"))
        for reason in record.reasons:
            why = _add(evaluated, "reason")
            _add(why, "type", _check(reason.type, OVERRIDE_TYPES, "reason"))
            if reason.comment:
                _add(why, "comment", reason.comment)
        ids = _add(item, "identifiers")
        if record.envelope_to:
            _add(ids, "envelope_to", record.envelope_to)
        # envelope_from is required; the null sender (bounces) has no domain: empty.
        _add(ids, "envelope_from", record.envelope_from)
        _add(ids, "header_from", record.header_from)
        auth = _add(item, "auth_results")
        for dkim in record.dkim_results:
            result = _add(auth, "dkim")
            _add(result, "domain", dkim.domain)
            if dkim.selector:
                _add(result, "selector", dkim.selector)
            _add(result, "result", _check(dkim.result, DKIM_RESULTS, "dkim result"))
            if dkim.human_result:
                _add(result, "human_result", dkim.human_result)
        spf_results = record.spf_results or (
            SpfAuth(domain=record.envelope_from or record.header_from, result="none"),)
        for spf in spf_results:
            result = _add(auth, "spf")
            _add(result, "domain", spf.domain)
            _add(result, "scope", _check(spf.scope, SPF_SCOPES, "spf scope"))
            _add(result, "result", _check(spf.result, SPF_RESULTS, "spf result"))
    ET.indent(root, space=" ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


__all__ = [
    "DISPOSITIONS", "DKIM_RESULTS", "DMARC_RESULTS", "MAX_RECORDS", "MAX_REPORT_BYTES",
    "OVERRIDE_TYPES", "SPF_RESULTS", "SPF_SCOPES", "AggregateReport", "DkimAuth",
    "PolicyOverride", "PolicyPublished", "ReportError", "ReportMetadata", "ReportRecord",
    "SpfAuth", "build_aggregate_report", "parse_aggregate_report",
]
