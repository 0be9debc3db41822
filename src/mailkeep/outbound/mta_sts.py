"""MTA-STS (RFC 8461): which TLS a delivery to a destination domain must achieve.

A recipient domain announces in DNS (``_mta-sts.<domain>`` TXT, §3.1) that it publishes a
policy at ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (§3.2, §3.3). The policy
lists the MX host names that may receive its mail and a mode: ``enforce`` (only those
hosts, only over TLS with a PKIX-valid certificate, §4), ``testing`` (deliver as usual,
report failures) or ``none``. Senders cache the policy for ``max_age`` seconds, so an
attacker who later strips the DNS record or blocks the HTTPS fetch cannot downgrade the
delivery (§3.3, §5.1, §10).

Layout, from pure to I/O:

- :func:`parse_sts_record`, :func:`parse_policy`, :meth:`Policy.matches` and
  :func:`tls_for_mx` are pure functions over text: no sockets, no clock, no files.
- :class:`MtaStsResolver` does the I/O: the TXT lookup through the caller's dnspython
  resolver, the HTTPS fetch (aiohttp, with the policy host resolved through that same
  resolver), and the on-disk cache (one JSON file per domain, written durably).

The delivery scheduler calls ``await resolver.policy_for(domain)`` once per attempt and
``tls_for_mx(decision, mx_host)`` per candidate MX. Because ``policy_for`` always looks at
the TXT record first, calling it again before a retry is what §5.1 step 3 asks: never fail
a message permanently without first checking for a new policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, cast

import aiohttp
import aiohttp.abc
import dns.exception
import dns.resolver

from mailkeep.durable import atomic_write_text, fsync_dir
from mailkeep.logfmt import log
from mailkeep.smtp.address import canonical_domain

logger = logging.getLogger("mailkeep.mta_sts")

# -- settings ---------------------------------------------------------------------------------

#: Largest policy body accepted (bytes). §3.3 suggests 64 kilobytes.
DEFAULT_MAX_POLICY_SIZE = 64 * 1024
#: Upper bound on one policy fetch, connect to last byte (seconds). §3.3 suggests one minute.
DEFAULT_FETCH_TIMEOUT = 60.0
#: After a failed fetch, how long the same domain and record id are not fetched again
#: (seconds). §3.3: "limit further attempts to a period of five minutes or longer per
#: version ID".
DEFAULT_FETCH_RETRY_INTERVAL = 300.0
#: A cached policy older than this is refetched in the background while the cached copy
#: keeps being used (seconds). §3.3 suggests refreshing once per day.
DEFAULT_REFRESH_AFTER = 86400.0
#: Domains whose cache entry (or its absence) is kept in memory; the rest are on disk only.
DEFAULT_MEMORY_ENTRIES = 10000
#: The largest max_age a policy may declare (seconds, §3.2).
MAX_AGE_LIMIT = 31557600

#: Where the policy lives on the policy host (§3.3).
WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"
#: Failed fetches remembered before old ones are pruned (each is a few hundred bytes).
_FAILURES_KEPT = 1024
#: Longest domain used as a cache file name as is; longer ones are hashed.
_LONGEST_FILE_STEM = 200
#: Version of the cache file layout, so a future format can recognise old files.
_CACHE_FORMAT = 1

Mode = Literal["enforce", "testing", "none"]
Source = Literal["fetched", "cache", "none"]


class MtaStsSyntaxError(ValueError):
    """A TXT record or policy body that does not follow RFC 8461's grammar."""


# -- §3.1 the TXT record ----------------------------------------------------------------------

@dataclass(frozen=True)
class StsRecord:
    """A valid ``_mta-sts`` TXT record; ``id`` changes whenever the policy changes."""

    id: str


_RECORD_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# sts-ext-value: visible ASCII without "=", ";" and space.
_RECORD_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
# sts-sep = *WSP ";" *WSP
_RECORD_SEP = re.compile(r"[ \t]*;[ \t]*")
_RECORD_START = re.compile(r"v=STSv1[ \t]*;")


def parse_sts_record(txt: str) -> StsRecord:
    """Parse one TXT record (its strings already concatenated, §3.1) into an StsRecord.

    ``v=STSv1`` must come first and be followed by ";"; exactly one ``id`` of 1 to 32
    letters and digits; other fields must be well-formed ``name=value`` and are ignored.
    Raises :class:`MtaStsSyntaxError` saying what is wrong.
    """
    if not txt.startswith("v=STSv1"):
        raise MtaStsSyntaxError('record does not start with "v=STSv1"')
    rest = txt[len("v=STSv1"):]
    # sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]
    parts = _RECORD_SEP.split(rest)
    if len(parts) < 2 or parts[0] != "":
        raise MtaStsSyntaxError('"v=STSv1" must be followed by ";" and at least the id field')
    fields = parts[1:]
    if fields[-1] == "":  # the optional trailing separator
        fields = fields[:-1]
    record_id: str | None = None
    for field in fields:
        if not field:
            raise MtaStsSyntaxError("empty field (two separators in a row)")
        name, eq, value = field.partition("=")
        if not eq:
            raise MtaStsSyntaxError(f"field {field!r} is not name=value")
        if name == "id":
            if record_id is not None:
                raise MtaStsSyntaxError("more than one id field")
            if not _RECORD_ID.fullmatch(value):
                raise MtaStsSyntaxError(f"id {value!r} is not 1 to 32 letters and digits")
            record_id = value
        elif not _EXT_NAME.fullmatch(name) or not _RECORD_EXT_VALUE.fullmatch(value):
            # Unknown fields are allowed (sts-extension) but must still be well-formed.
            raise MtaStsSyntaxError(f"malformed field {field!r}")
    if record_id is None:
        raise MtaStsSyntaxError("no id field")
    return StsRecord(record_id)


def select_sts_record(txts: list[str]) -> StsRecord | None:
    """Pick the MTA-STS record among all TXT answers at ``_mta-sts.<domain>`` (§3.1).

    Records not starting with ``v=STSv1;`` belong to something else and are discarded
    (whitespace before the ";" is allowed, as the grammar's sts-sep permits). None when no
    record is left; :class:`MtaStsSyntaxError` when more than one is left or it is
    malformed, in which case the domain has no usable record either.
    """
    ours = [t for t in txts if _RECORD_START.match(t)]
    if not ours:
        return None
    if len(ours) > 1:
        raise MtaStsSyntaxError(f"{len(ours)} TXT records start with v=STSv1 (must be one)")
    return parse_sts_record(ours[0])


# -- §3.2 the policy --------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """A parsed policy. ``mx`` holds lower-case A-label patterns, ``*.`` for a wildcard."""

    version: str
    mode: Mode
    mx: tuple[str, ...]
    max_age: int

    def matches(self, mx_host: str) -> bool:
        """True if ``mx_host`` (the name from the MX record) is one the policy allows (§4.1).

        A pattern "*.example.com" matches exactly one extra leftmost label:
        "mx.example.com" but neither "example.com" nor "a.b.example.com". Case and one
        trailing dot do not matter; names are compared as IDNA A-labels (§3.2 asks
        policies to use A-labels; a U-label in a policy is converted rather than refused).
        """
        try:
            host = canonical_domain(mx_host)
        except ValueError:
            return False
        if host.startswith("["):  # an address literal is never an MX host name
            return False
        for pattern in self.mx:
            if pattern.startswith("*."):
                first, dot, parent = host.partition(".")
                if dot and first and parent == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


# No field may hold control characters (sts-policy-vchar and WSP only); tab is WSP.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_MODES: tuple[Mode, ...] = ("enforce", "testing", "none")


def _mx_pattern(value: str) -> str:
    """One ``mx`` value, ``["*."] Domain`` (§3.2), canonicalised; raises on anything else."""
    wildcard = value.startswith("*.")
    # The grammar has no trailing dot, but "mx.example.com." names the same host; refusing
    # it would throw the whole policy away and with it the protection the domain asked for.
    name = (value[2:] if wildcard else value).removesuffix(".")
    if not name or name.endswith(".") or name.startswith("[") or "*" in name:
        raise MtaStsSyntaxError(f"mx {value!r} is not a host name or *.domain pattern")
    try:
        canonical = canonical_domain(name)
    except ValueError as exc:
        raise MtaStsSyntaxError(f"mx {value!r}: {exc}") from None
    return "*." + canonical if wildcard else canonical


def parse_policy(text: str | bytes, *, max_size: int = DEFAULT_MAX_POLICY_SIZE) -> Policy:
    """Parse a policy body (§3.2): ``key: value`` lines ended by LF or CRLF.

    ``version: STSv1``, ``mode`` and ``max_age`` are required exactly once; ``mx`` at least
    once unless the mode is "none". Unknown keys are ignored (their names must be
    well-formed sts-policy-ext-names).
    Blank lines are tolerated. Raises :class:`MtaStsSyntaxError` naming the problem.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > max_size:
        raise MtaStsSyntaxError(f"policy is larger than {max_size} bytes")
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MtaStsSyntaxError(f"policy is not UTF-8 (byte {exc.start})") from None
    seen: dict[str, str] = {}
    mx: list[str] = []
    # sts-policy-term = LF / CRLF; a bare CR is not a line end and so never valid here.
    for number, line in enumerate(body.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip(" \t") == "":
            continue
        if _CONTROL.search(line):
            # Typically a bare CR from a policy written with old Mac line ends.
            raise MtaStsSyntaxError(f"line {number}: control character in {line[:80]!r}")
        key, colon, value = line.partition(":")
        if not colon:
            raise MtaStsSyntaxError(f"line {number}: no ':' in {line[:80]!r}")
        # sts-policy-field-delim = ":" *WSP; trailing *WSP ends the field.
        value = value.strip(" \t")
        if key in ("version", "mode", "max_age"):
            if key in seen:
                raise MtaStsSyntaxError(f"line {number}: {key} given more than once")
            seen[key] = value
        elif key == "mx":
            mx.append(_mx_pattern(value))
        elif not _EXT_NAME.fullmatch(key):
            # An extension's name must be well-formed; its value is ignored unread, so
            # a policy stays usable when a future extension has a value we cannot judge.
            raise MtaStsSyntaxError(f"line {number}: malformed field name {key[:40]!r}")
    for required in ("version", "mode", "max_age"):
        if required not in seen:
            raise MtaStsSyntaxError(f"no {required} field")
    if seen["version"] != "STSv1":
        raise MtaStsSyntaxError(f"version {seen['version']!r} is not STSv1")
    mode = seen["mode"]
    if mode not in _MODES:
        raise MtaStsSyntaxError(f"mode {mode!r} is not enforce, testing or none")
    if not _MAX_AGE.fullmatch(seen["max_age"]):
        raise MtaStsSyntaxError(f"max_age {seen['max_age']!r} is not 1 to 10 digits")
    max_age = int(seen["max_age"])
    if max_age > MAX_AGE_LIMIT:
        raise MtaStsSyntaxError(f"max_age {max_age} exceeds the maximum {MAX_AGE_LIMIT}")
    if not mx and mode != "none":
        raise MtaStsSyntaxError(f"mode {mode} requires at least one mx line")
    return Policy("STSv1", cast(Mode, mode), tuple(dict.fromkeys(mx)), max_age)


# -- §4 and §5: what a decision means for one MX ----------------------------------------------

@dataclass(frozen=True)
class PolicyDecision:
    """The MTA-STS outcome for one destination domain.

    ``mode`` is the policy's mode, or "none" when there is no policy. ``source`` says
    where the policy came from ("none": there is none). ``error`` explains why a fresh
    policy could not be had (a DNS failure, a malformed record, a failed fetch), even
    when a cached policy still applies; log it, and report it for TLS-RPT.
    """

    mode: Mode
    policy: Policy | None
    source: Source
    error: str | None = None


class MxTlsRequirement(NamedTuple):
    """What delivery to one MX host must achieve under a decision (see :func:`tls_for_mx`)."""

    #: May this MX be used at all? False: skip it (§4.1, §5), try the next one.
    allowed: bool
    #: STARTTLS is required and the certificate must be PKIX-valid for the MX host name
    #: (§4.2: a SAN DNS-ID matching it); without that, do not deliver to this host.
    require_verified_tls: bool
    #: A "testing" policy: deliver as usual, but validate as under "enforce" and record
    #: every failure (MX mismatch, no STARTTLS, bad certificate) for TLS reporting (§5).
    report_failures: bool
    #: Why the host is refused or would have been refused; None when all is well.
    reason: str | None


def tls_for_mx(decision: PolicyDecision, mx_host: str) -> MxTlsRequirement:
    """The TLS requirement for delivering to ``mx_host`` under ``decision`` (§4, §5).

    enforce: hosts not matching the policy are not used; matching hosts need TLS with a
    PKIX-valid certificate for their name. testing: every host may be used without
    verified TLS, and failures are reported. none or no policy: nothing changes.

    When no MX is allowed, or none achieves verified TLS, the message must be deferred
    (temporary failure), never bounced: §5.1 step 3 requires checking for a new policy
    first, which the next ``policy_for`` call does.
    """
    policy = decision.policy
    if policy is None or decision.mode == "none":
        return MxTlsRequirement(True, False, False, None)
    matches = policy.matches(mx_host)
    reason = None if matches else f"MX host {mx_host} is not listed in the MTA-STS policy"
    if decision.mode == "enforce":
        return MxTlsRequirement(matches, matches, False, reason)
    return MxTlsRequirement(True, False, True, reason)


# -- I/O: DNS, HTTPS, cache -------------------------------------------------------------------

class AsyncDnsResolver(Protocol):
    """What we need of a resolver: dnspython's ``dns.asyncresolver.Resolver`` fits."""

    async def resolve(self, qname: str, rdtype: str) -> Any: ...


class _PolicyHostResolver(aiohttp.abc.AbstractResolver):
    """aiohttp resolver that asks our DNS resolver, not the system's (§3.3 policy host).

    The delivery path uses one configured resolver for every lookup; resolving the policy
    host through getaddrinfo would silently use a different view of DNS.
    """

    def __init__(self, resolver: AsyncDnsResolver) -> None:
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET
                      ) -> list[aiohttp.abc.ResolveResult]:
        wanted: list[tuple[str, socket.AddressFamily]] = []
        if family in (socket.AF_INET6, socket.AF_UNSPEC):
            wanted.append(("AAAA", socket.AF_INET6))
        if family in (socket.AF_INET, socket.AF_UNSPEC):
            wanted.append(("A", socket.AF_INET))
        results: list[aiohttp.abc.ResolveResult] = []
        problems: list[str] = []
        for rdtype, fam in wanted:
            try:
                answer = await self._resolver.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                problems.append(f"{rdtype}: {_dns_error_text(exc)}")
                continue
            for rdata in answer:
                results.append({"hostname": host, "host": rdata.address, "port": port,
                                "family": fam, "proto": 0,
                                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV})
        if not results:
            detail = "; ".join(problems) or "no A or AAAA record"
            # (errno, strerror): aiohttp quotes strerror in ClientConnectorDNSError.
            raise OSError(None, f"cannot resolve {host}: {detail}")
        return results

    async def close(self) -> None:
        """Nothing to release: the DNS resolver belongs to the caller."""


def _dns_error_text(exc: dns.exception.DNSException) -> str:
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name


@dataclass(frozen=True)
class _CachedPolicy:
    record_id: str
    policy: Policy
    fetched_at: float
    #: The body as fetched, kept so the cache re-validates it on load (and for TLS-RPT).
    text: str

    def expired(self, now: float) -> bool:
        # §3.2 max_age: cached "for up to this value from the last policy fetch time".
        return now >= self.fetched_at + self.policy.max_age


@dataclass(frozen=True)
class _FetchOutcome:
    cached: _CachedPolicy | None
    error: str | None


class PolicyFetchError(Exception):
    """The policy could not be fetched over HTTPS; the message says why."""


class MtaStsResolver:
    """Finds, fetches, caches and serves MTA-STS policies for destination domains.

    ``resolver`` is any object with dnspython's ``async resolve(name, rdtype)``; it
    answers the TXT lookup and the policy host's A/AAAA lookups. ``cache_dir`` holds
    one JSON file per domain, so policies survive restarts (the point of §10's caching).
    ``ca_file``: extra trust anchors (PEM) for the policy host's certificate, besides
    the system store (``[delivery] ca_file``). ``https_port`` is a test knob only: RFC
    8461 fixes 443. ``now`` is injectable so tests can move time past ``max_age``.
    The other keywords are the limits named at the top of this module. Call
    :meth:`aclose` before the event loop ends (background refreshes may be running).
    """

    def __init__(
        self,
        resolver: AsyncDnsResolver,
        cache_dir: Path,
        *,
        https_port: int = 443,
        ca_file: str | None = None,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
        max_policy_size: int = DEFAULT_MAX_POLICY_SIZE,
        fetch_retry_interval: float = DEFAULT_FETCH_RETRY_INTERVAL,
        refresh_after: float | None = DEFAULT_REFRESH_AFTER,
        memory_entries: int = DEFAULT_MEMORY_ENTRIES,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._dns = resolver
        self._cache_dir = Path(cache_dir)
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        self._https_port = https_port
        self._fetch_timeout = fetch_timeout
        self._max_policy_size = max_policy_size
        self._fetch_retry_interval = fetch_retry_interval
        self._refresh_after = refresh_after
        self._now = now
        # §3.3: PKIX validation of the policy host name against the system roots plus
        # ca_file; create_default_context checks the chain, expiry and host name.
        self._ssl = ssl.create_default_context()
        if ca_file is not None:
            self._ssl.load_verify_locations(cafile=ca_file)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._memory_entries = max(1, memory_entries)
        # domain -> its cached policy (None: none on disk), oldest first.
        self._memory: dict[str, _CachedPolicy | None] = {}
        # domain -> (record id being fetched, the fetch): one fetch per domain at a time.
        self._in_flight: dict[str, tuple[str, asyncio.Task[_FetchOutcome]]] = {}
        # (domain, record id) -> (time of the failure, its text), for §3.3's back-off.
        self._failures: dict[tuple[str, str], tuple[float, str]] = {}
        self._background: set[asyncio.Task[_FetchOutcome]] = set()

    # -- the one public question --------------------------------------------------------------

    async def policy_for(self, domain: str) -> PolicyDecision:
        """The MTA-STS decision for mail to ``domain`` (§5.1). Never raises for bad input."""
        try:
            name = canonical_domain(domain)
        except ValueError as exc:
            return PolicyDecision("none", None, "none", f"not a domain name: {exc}")
        if name.startswith("["):
            return PolicyDecision("none", None, "none", None)  # address literal: no DNS
        record, lookup_error = await self._lookup_record(name)
        # The cache is consulted after the lookup's await, so a fetch that another caller
        # finished meanwhile is seen here instead of being repeated.
        cached = await self._load(name)
        now = self._now()
        usable = cached if cached is not None and not cached.expired(now) else None
        if record is None:
            # §3.1 (note) and §3.3: without a usable TXT record a valid cached policy
            # still applies; otherwise the domain is treated as having no policy.
            if usable is not None:
                if lookup_error:
                    log(logger, "MTA-STS record lookup failed; using cached policy",
                        logging.WARNING, domain=name, error=lookup_error)
                return self._from_cache(usable, lookup_error)
            return PolicyDecision("none", None, "none", lookup_error)

        if usable is not None and usable.record_id == record.id:
            self._maybe_refresh(name, record.id, usable, now)
            return self._from_cache(usable, None)

        outcome = await self._fetch_single_flight(name, record.id)
        if outcome.cached is not None:
            return PolicyDecision(outcome.cached.policy.mode, outcome.cached.policy,
                                  "fetched", None)
        # §3.3: a failed fetch leaves a valid cached policy in force.
        if usable is not None:
            log(logger, "MTA-STS policy fetch failed; using cached policy", logging.WARNING,
                domain=name, record_id=record.id, error=outcome.error)
            return self._from_cache(usable, outcome.error)
        return PolicyDecision("none", None, "none", outcome.error)

    async def aclose(self) -> None:
        """Cancel the refreshes and fetches still running and wait for them to end."""
        tasks = list(self._background) + [task for _, task in self._in_flight.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def wait_for_refreshes(self) -> None:
        """Wait until every background refresh started so far has finished."""
        while self._background:
            await asyncio.wait(list(self._background))

    # -- steps --------------------------------------------------------------------------------

    @staticmethod
    def _from_cache(cached: _CachedPolicy, error: str | None) -> PolicyDecision:
        return PolicyDecision(cached.policy.mode, cached.policy, "cache", error)

    async def _lookup_record(self, domain: str) -> tuple[StsRecord | None, str | None]:
        """The TXT record at _mta-sts.<domain> (§3.1); (None, None) when there is none."""
        qname = f"_mta-sts.{domain}"
        try:
            answer = await self._dns.resolve(qname, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None, None
        except dns.exception.DNSException as exc:
            return None, f"TXT lookup of {qname} failed: {_dns_error_text(exc)}"
        texts: list[str] = []
        for rdata in answer:
            # §3.1: several strings in one record are concatenated without spaces.
            joined = b"".join(rdata.strings)
            try:
                texts.append(joined.decode("ascii"))
            except UnicodeDecodeError:
                texts.append(joined.decode("ascii", "replace"))  # fails the grammar below
        try:
            return select_sts_record(texts), None
        except MtaStsSyntaxError as exc:
            return None, f"invalid MTA-STS record at {qname}: {exc}"

    def _maybe_refresh(self, domain: str, record_id: str, cached: _CachedPolicy,
                       now: float) -> None:
        """§3.3: refresh a policy in use before it expires, without delaying delivery."""
        if self._refresh_after is None or now - cached.fetched_at < self._refresh_after:
            return
        if domain in self._in_flight or self._recently_failed(domain, record_id, now):
            return
        task = self._start_fetch(domain, record_id, background=True)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _remember_failure(self, domain: str, record_id: str, error: str) -> None:
        now = self._now()
        if len(self._failures) >= _FAILURES_KEPT:
            # Forget failures old enough to be retried anyway, so the table stays small.
            for key, (when, _) in list(self._failures.items()):
                if now - when >= self._fetch_retry_interval:
                    del self._failures[key]
        self._failures[(domain, record_id)] = (now, error)

    def _recently_failed(self, domain: str, record_id: str, now: float) -> str | None:
        failure = self._failures.get((domain, record_id))
        if failure is None or now - failure[0] >= self._fetch_retry_interval:
            return None
        return failure[1]

    async def _fetch_single_flight(self, domain: str, record_id: str) -> _FetchOutcome:
        """One fetch per domain at a time; concurrent callers share its outcome."""
        while True:
            running = self._in_flight.get(domain)
            if running is None:
                break
            running_id, task = running
            # shield: a caller cancelled while waiting must not cancel the others' fetch.
            outcome = await asyncio.shield(task)
            if running_id == record_id:
                return outcome
            # It fetched for an older record id (a background refresh): ours is newer.
        failed = self._recently_failed(domain, record_id, self._now())
        if failed is not None:
            return _FetchOutcome(None, f"{failed} (not retried for "
                                       f"{self._fetch_retry_interval:g}s)")
        return await asyncio.shield(self._start_fetch(domain, record_id, background=False))

    def _start_fetch(self, domain: str, record_id: str, *,
                     background: bool) -> asyncio.Task[_FetchOutcome]:
        task = asyncio.get_running_loop().create_task(
            self._fetch_and_store(domain, record_id, background=background))
        self._in_flight[domain] = (record_id, task)

        def forget(done: asyncio.Task[_FetchOutcome]) -> None:
            running = self._in_flight.get(domain)
            if running is not None and running[1] is done:
                del self._in_flight[domain]

        task.add_done_callback(forget)
        return task

    def _policy_url(self, domain: str) -> str:
        port = "" if self._https_port == 443 else f":{self._https_port}"
        return f"https://mta-sts.{domain}{port}{WELL_KNOWN_PATH}"

    async def _fetch_and_store(self, domain: str, record_id: str, *,
                               background: bool) -> _FetchOutcome:
        url = self._policy_url(domain)
        try:
            body = await self._fetch(domain)
            policy = parse_policy(body, max_size=self._max_policy_size)
        except (PolicyFetchError, MtaStsSyntaxError) as exc:
            error = f"{url}: {exc}"
        except Exception as exc:
            # A failure nobody foresaw (a library raising something undocumented) must not
            # stop deliveries to this domain: log it in full, treat it as a failed fetch.
            logger.exception("MTA-STS policy fetch raised unexpectedly")
            error = f"{url}: unexpected {type(exc).__name__}: {exc}"
        else:
            error = None
        if error is not None:
            self._remember_failure(domain, record_id, error)
            cached = self._memory.get(domain)
            # §3.3: alert administrators when a refresh fails, unless the mode is "none".
            quiet = cached is not None and cached.policy.mode == "none"
            log(logger, "MTA-STS policy fetch failed", logging.INFO if quiet else
                logging.WARNING, domain=domain, record_id=record_id, error=error,
                background=background)
            return _FetchOutcome(None, error)
        self._failures.pop((domain, record_id), None)
        entry = _CachedPolicy(record_id, policy, self._now(), body.decode("utf-8"))
        self._remember(domain, entry)
        await self._store(domain, entry)
        log(logger, "MTA-STS policy fetched", domain=domain, record_id=record_id,
            mode=policy.mode, max_age=policy.max_age, mx=",".join(policy.mx))
        return _FetchOutcome(entry, None)

    async def _fetch(self, domain: str) -> bytes:
        """GET the policy (§3.3): HTTPS with PKIX, no redirects, 200, text/plain, bounded."""
        host = f"mta-sts.{domain}"
        url = self._policy_url(domain)
        connector = aiohttp.TCPConnector(resolver=_PolicyHostResolver(self._dns),
                                         ssl=self._ssl, use_dns_cache=False,
                                         force_close=True)
        timeout = aiohttp.ClientTimeout(total=self._fetch_timeout)
        headers = {"Accept": "text/plain", "Accept-Encoding": "identity"}
        try:
            # No cookies, no proxies from the environment, no HTTP cache (§3.3).
            session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
            async with session, session.get(url, allow_redirects=False,
                                            headers=headers) as resp:
                # §3.3: "HTTP 3xx redirects MUST NOT be followed"; only 200 is a policy.
                if resp.status != 200:
                    where = resp.headers.get("Location")
                    detail = f" (redirect to {where}, not followed)" if where else ""
                    raise PolicyFetchError(f"HTTP status {resp.status}{detail}")
                # §3.3: senders SHOULD check the media type is text/plain.
                if resp.content_type != "text/plain":
                    raise PolicyFetchError(
                        f"Content-Type {resp.headers.get('Content-Type')!r} is not "
                        f"text/plain")
                body = await self._read_bounded(resp)
        except PolicyFetchError:
            raise
        except TimeoutError:
            # aiohttp's connect and read timeouts are TimeoutErrors too: one message.
            raise PolicyFetchError(
                f"no complete answer within {self._fetch_timeout:g}s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise PolicyFetchError(f"certificate not valid for {host}: "
                                   f"{exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise PolicyFetchError(f"TLS failed: {exc}") from None
        except aiohttp.ClientError as exc:
            raise PolicyFetchError(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise PolicyFetchError(f"{type(exc).__name__}: {exc}") from None
        return body

    async def _read_bounded(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._max_policy_size
        if resp.content_length is not None and resp.content_length > limit:
            raise PolicyFetchError(f"policy of {resp.content_length} bytes is larger than "
                                   f"the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await resp.content.read(min(65536, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PolicyFetchError(f"policy is larger than the limit of {limit} bytes")

    # -- the cache ----------------------------------------------------------------------------

    def _cache_path(self, domain: str) -> Path:
        # canonical_domain admits only LDH labels separated by dots: a safe file name,
        # unless too long for one (NAME_MAX is 255; a domain may have 253 characters).
        if len(domain) <= _LONGEST_FILE_STEM:
            return self._cache_dir / f"{domain}.json"
        digest = hashlib.sha256(domain.encode("ascii")).hexdigest()
        return self._cache_dir / f"long-{digest}.json"

    def prune_cache(self) -> int:
        """Delete cache files whose policy has expired; return how many (blocking I/O).

        The cache otherwise keeps one small file per destination domain ever seen;
        call this now and then (daily, say) from a thread.
        """
        removed = 0
        now = self._now()
        for path in self._cache_dir.glob("*.json"):
            try:
                data = json.loads(path.read_text("utf-8"))
                expires = float(data["fetched_at"]) + int(parse_policy(data["policy"]).max_age)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                expires = now  # unreadable or invalid: useless, remove it too
            if expires <= now:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            fsync_dir(self._cache_dir)
        return removed

    async def _load(self, domain: str) -> _CachedPolicy | None:
        if domain in self._memory:
            return self._memory[domain]
        entry = await asyncio.to_thread(self._read_cache_file, domain)
        if domain in self._memory:
            # Another caller fetched while the file was being read: theirs is newer.
            return self._memory[domain]
        self._remember(domain, entry)
        return entry

    def _remember(self, domain: str, entry: _CachedPolicy | None) -> None:
        """Keep ``entry`` in memory, forgetting the oldest beyond the limit.

        Forgetting loses nothing: the disk copy is read again when that domain comes up.
        """
        self._memory.pop(domain, None)
        self._memory[domain] = entry
        while len(self._memory) > self._memory_entries:
            del self._memory[next(iter(self._memory))]

    def _read_cache_file(self, domain: str) -> _CachedPolicy | None:
        path = self._cache_path(domain)
        try:
            raw = path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log(logger, "MTA-STS cache file unreadable; ignored", logging.WARNING,
                domain=domain, path=str(path), error=str(exc))
            return None
        try:
            data = json.loads(raw)
            if data.get("format") != _CACHE_FORMAT or data.get("domain") != domain:
                raise ValueError("not a cache file for this domain")
            record_id = data["record_id"]
            if not isinstance(record_id, str) or not _RECORD_ID.fullmatch(record_id):
                raise ValueError("bad record_id")
            fetched_at = float(data["fetched_at"])
            text = data["policy"]
            if not isinstance(text, str):
                raise ValueError("bad policy")
            # Re-parse: the cache holds what was fetched, validated again on every load.
            policy = parse_policy(text)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log(logger, "MTA-STS cache file invalid; ignored", logging.WARNING,
                domain=domain, path=str(path), error=str(exc))
            return None
        return _CachedPolicy(record_id, policy, fetched_at, text)

    async def _store(self, domain: str, entry: _CachedPolicy) -> None:
        data = {"format": _CACHE_FORMAT, "domain": domain, "record_id": entry.record_id,
                "fetched_at": entry.fetched_at, "policy": entry.text}
        try:
            await asyncio.to_thread(atomic_write_text, self._cache_path(domain),
                                    json.dumps(data, indent=1) + "\n")
        except OSError as exc:
            # The policy still applies from memory; only its survival of a restart is lost.
            log(logger, "MTA-STS cache write failed", logging.ERROR, domain=domain,
                path=str(self._cache_path(domain)), error=str(exc))
