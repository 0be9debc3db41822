"""DNS blocklists and allowlists (RFC 5782), scored the way Postfix postscreen does.

A DNSBL publishes listed client addresses as DNS names under its zone: the IPv4 address
192.0.2.99 is looked up as ``99.2.0.192.<zone>``, an IPv6 address as its 32 nibbles in
reverse (RFC 5782 §2.1, §2.4). An A record answer in 127.0.0.0/8 means "listed", and the
last octets often say why (zen.spamhaus.org: 127.0.0.2 spam source, 127.0.0.4 exploited
host, 127.0.0.10 dynamic range...). NXDOMAIN means "not listed".

Mailkeep combines several lists the way seed 002's ``postscreen_dnsbl_sites`` does
(postconf(5)): each entry is ``zone[=filter][*weight]``; the weights of the entries that
match are added up, and the client is blocked when the sum reaches a threshold. Negative
weights are allowlists (e.g. DNSWL): a sum at or below a negative allow threshold marks
the client as allowed. :func:`parse_postscreen_sites` reads Postfix's syntax as it is,
so seed 002's setting works unchanged.

Behaviour (all limits are named constants, settable per checker):

- every zone is asked once per client, all zones in parallel, within one time budget
  (a list that is slow or broken costs at most the budget and counts as an error, never
  as "listed"); the client's greeting proceeds meanwhile (the caller starts
  :meth:`DnsblChecker.score` as soon as the connection is accepted);
- answers are cached per (zone, address) for their TTL, clamped to a minimum and a
  maximum as postscreen does, in a cache of bounded size (least recently used first out);
- answers that are not listing codes are errors, not listings: 127.255.255.0/24 is how
  Spamhaus and others say "query refused" (from a public resolver, over quota, a typo in
  the zone), and anything outside 127.0.0.0/8 is not a DNSBL answer (RFC 5782 §2.1). They
  are logged, reported in :attr:`DnsblResult.errors`, and a refusal is not cached;
- addresses that no public list can hold (private, loopback, link-local, reserved) are
  not looked up unless asked: it would only leak internal addresses to the list.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver

from mailkeep.config.names import InvalidName, canonical_domain
from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, query

#: Seconds all lookups for one client may take together (postscreen_dnsbl_timeout).
LOOKUP_BUDGET = 10.0
#: Cached answers live at least this long, whatever their TTL (postscreen_dnsbl_min_ttl).
MIN_TTL = 60
#: ...and at most this long (postscreen_dnsbl_max_ttl).
MAX_TTL = 3600
#: How long "not listed" (NXDOMAIN or no A record) is cached, before clamping.
NEGATIVE_TTL = 300
#: Most (zone, address) answers kept in the cache.
CACHE_SIZE = 10_000
#: postscreen_dnsbl_threshold: the sum of weights at which a client is blocked.
DEFAULT_THRESHOLD = 1
#: postscreen_dnsbl_allowlist_threshold: a sum at or below it allows the client (it must
#: be negative, or every unlisted client would be "allowed").
DEFAULT_ALLOW_THRESHOLD = -1
#: Largest absolute weight of one entry.
MAX_WEIGHT = 1000
#: Most entries in one list of sites, and most numbers or ranges inside one [...] filter.
MAX_SITES = 100
MAX_FILTER_ITEMS = 32
#: Longest site list text parsed.
MAX_SITES_TEXT = 64 * 1024

# RFC 5782 §2.1: listing codes are in 127.0.0.0/8; 127.255.255.0/24 is used by Spamhaus
# (252: typo in the zone name, 254: query through a public resolver, 255: too many
# queries) and others for refusals.
_LISTING_NET = ipaddress.IPv4Network("127.0.0.0/8")
_REFUSAL_NET = ipaddress.IPv4Network("127.255.255.0/24")
_REFUSALS = {
    "127.255.255.252": "the zone name is wrong (typo)",
    "127.255.255.254": "queries through a public or open resolver are refused",
    "127.255.255.255": "too many queries (over the free quota)",
}
_ENTRY = re.compile(r"(?P<zone>[^=*\s,]+)(?:=(?P<filter>[^*\s,]+))?(?:\*(?P<weight>[-+]?[0-9]{1,6}))?\Z")
_OCTET_ITEM = re.compile(r"([0-9]{1,3})(?:\.\.([0-9]{1,3}))?\Z")
_SEPARATORS = re.compile(r"[\s,]+")
_PARAMETER = re.compile(r"\A\s*postscreen_dnsbl_sites\s*=", re.IGNORECASE)

_log = logging.getLogger(__name__)


class DnsblSyntaxError(ValueError):
    """A postscreen_dnsbl_sites entry or filter that cannot be read."""


# -- filters and entries -------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerFilter:
    """Postfix's answer filter ``d.d.d.d``: each octet a number or ``[...]`` holding
    ";"-separated numbers and ``low..high`` ranges, e.g. ``127.0.0.[2..11]`` or
    ``127.0.[0..255].[1;3]``. ``octets`` holds, per octet, (low, high) ranges."""

    octets: tuple[tuple[tuple[int, int], ...], ...]

    def matches(self, address: ipaddress.IPv4Address) -> bool:
        return all(any(low <= value <= high for low, high in ranges)
                   for value, ranges in zip(address.packed, self.octets, strict=True))

    def __str__(self) -> str:
        parts = []
        for ranges in self.octets:
            items = [str(low) if low == high else f"{low}..{high}" for low, high in ranges]
            parts.append(items[0] if len(ranges) == 1 and ranges[0][0] == ranges[0][1]
                         else "[" + ";".join(items) + "]")
        return ".".join(parts)


def parse_filter(text: str) -> AnswerFilter:
    """An :class:`AnswerFilter` from its Postfix text; DnsblSyntaxError if malformed."""
    octets = text.split(".") if "[" not in text else _split_octets(text)
    if len(octets) != 4:
        raise DnsblSyntaxError(f"filter {text!r}: expected four octets d.d.d.d")
    parsed = []
    for octet in octets:
        inner = octet[1:-1] if octet.startswith("[") and octet.endswith("]") else None
        items = inner.split(";") if inner is not None else [octet]
        if inner is None and ".." in octet:
            raise DnsblSyntaxError(f"filter {text!r}: a range must be inside [...]")
        if len(items) > MAX_FILTER_ITEMS:
            raise DnsblSyntaxError(f"filter {text!r}: more than {MAX_FILTER_ITEMS} items "
                                   "in one octet")
        ranges = []
        for item in items:
            match = _OCTET_ITEM.match(item)
            if match is None:
                raise DnsblSyntaxError(f"filter {text!r}: {item!r} is not a number or "
                                       "number..number")
            low = int(match.group(1))
            high = int(match.group(2)) if match.group(2) is not None else low
            if high > 255 or low > high:
                raise DnsblSyntaxError(f"filter {text!r}: {item!r} is not within 0..255 "
                                       "in increasing order")
            ranges.append((low, high))
        parsed.append(tuple(ranges))
    return AnswerFilter(tuple(parsed))


def _split_octets(text: str) -> list[str]:
    """Split at the dots outside brackets (a range's ".." is inside them)."""
    octets, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise DnsblSyntaxError(f"filter {text!r}: unbalanced brackets")
        if char == "." and depth == 0:
            octets.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise DnsblSyntaxError(f"filter {text!r}: unbalanced brackets")
    octets.append("".join(current))
    return octets


@dataclass(frozen=True)
class DnsblList:
    """One list entry: the zone, the weight its match adds (negative: an allowlist), and
    optionally which answers count (``filter``, Postfix syntax; default: any listing
    code). Raises DnsblSyntaxError (a ValueError) for an unusable zone, filter or weight.
    """

    zone: str
    weight: int = 1
    filter: str | None = None
    answer_filter: AnswerFilter | None = field(init=False, default=None, compare=False,
                                               repr=False)

    def __post_init__(self) -> None:
        try:
            zone = canonical_domain(self.zone.strip().rstrip("."))
        except (InvalidName, AttributeError):
            raise DnsblSyntaxError(f"{self.zone!r} is not a DNS zone name") from None
        object.__setattr__(self, "zone", zone)
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) \
                or abs(self.weight) > MAX_WEIGHT:
            raise DnsblSyntaxError(f"weight {self.weight!r} of {zone}: an integer within "
                                   f"±{MAX_WEIGHT} is required")
        if self.filter is not None:
            parsed = parse_filter(self.filter)
            object.__setattr__(self, "filter", str(parsed))
            object.__setattr__(self, "answer_filter", parsed)

    def counts(self, answer: ipaddress.IPv4Address) -> bool:
        """Whether a listing code makes this entry match."""
        return self.answer_filter is None or self.answer_filter.matches(answer)

    def postscreen_text(self) -> str:
        """The entry in postscreen_dnsbl_sites syntax."""
        text = self.zone
        if self.filter is not None:
            text += "=" + self.filter
        if self.weight != 1:
            text += f"*{self.weight}"
        return text


def parse_postscreen_sites(text: str) -> list[DnsblList]:
    """The entries of a postscreen_dnsbl_sites value (postconf(5)): separated by commas
    and/or white space (line breaks included), each ``zone[=filter][*weight]``.

    A leading ``postscreen_dnsbl_sites =`` and lines starting with ``#`` are ignored, so a
    main.cf excerpt works as it is. Raises DnsblSyntaxError naming the bad entry.
    """
    if len(text) > MAX_SITES_TEXT:
        raise DnsblSyntaxError(f"site list longer than {MAX_SITES_TEXT} characters")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    value = _PARAMETER.sub("", "\n".join(lines), count=1)
    entries = []
    for item in _SEPARATORS.split(value):
        if not item:
            continue
        match = _ENTRY.match(item)
        if match is None:
            raise DnsblSyntaxError(f"{item!r} is not zone[=filter][*weight]")
        weight = int(match.group("weight")) if match.group("weight") is not None else 1
        try:
            entries.append(DnsblList(match.group("zone"), weight, match.group("filter")))
        except DnsblSyntaxError as exc:
            raise DnsblSyntaxError(f"{item!r}: {exc}") from None
        if len(entries) > MAX_SITES:
            raise DnsblSyntaxError(f"more than {MAX_SITES} entries")
    return entries


# -- query names ---------------------------------------------------------------------------


def client_address(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address
                   ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address to look up: IPv4-mapped IPv6 addresses (a dual-stack listener's view of
    an IPv4 client) become IPv4. ValueError if ``ip`` is not an address."""
    address = ipaddress.ip_address(ip.strip() if isinstance(ip, str) else ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def query_name(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str) -> str:
    """RFC 5782 §2.1 (IPv4: octets reversed) and §2.4 (IPv6: 32 nibbles reversed)."""
    address = client_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone


# -- the checker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsblResult:
    """The verdict on one client address.

    ``score`` is the sum of the weights of the entries that matched (allowlists count
    negative). ``listed`` and ``allow_listed`` hold (zone, answer) for each answer that
    made a blocklist or allowlist entry match. ``errors`` holds (zone, why) for lists
    that could not be used (lookup failed or too slow, a refusal code, a non-DNSBL answer);
    they add nothing to the score. ``blocked`` is score >= threshold; ``allowed`` is
    score <= the (negative) allow threshold. ``queries`` is how many DNS lookups this
    check made (0 when everything came from the cache); ``skipped`` says why the address
    was not looked up at all.
    """

    ip: str
    score: int = 0
    listed: tuple[tuple[str, str], ...] = ()
    allow_listed: tuple[tuple[str, str], ...] = ()
    errors: tuple[tuple[str, str], ...] = ()
    blocked: bool = False
    allowed: bool = False
    queries: int = 0
    skipped: str = ""


@dataclass(frozen=True)
class _Answers:
    """A zone's answer for one address: the A records (empty: not listed)."""

    addresses: tuple[ipaddress.IPv4Address, ...]
    ttl: int


class _LookupFailed(Exception):
    pass


class DnsblChecker:
    """Scores client addresses against ``lists`` (negative weights are allowlists) and
    ``allow_lists`` (whose weights count negative whatever their sign).

    ``threshold`` (at least 1) blocks, ``allow_threshold`` (negative) allows. ``clock``
    is a monotonic time source for the cache (injectable for tests).
    """

    def __init__(self, lists: Sequence[DnsblList], allow_lists: Sequence[DnsblList] = (),
                 threshold: int = DEFAULT_THRESHOLD, *, resolver: dns.asyncresolver.Resolver,
                 allow_threshold: int = DEFAULT_ALLOW_THRESHOLD,
                 budget: float = LOOKUP_BUDGET, cache_size: int = CACHE_SIZE,
                 min_ttl: int = MIN_TTL, max_ttl: int = MAX_TTL,
                 negative_ttl: int = NEGATIVE_TTL, skip_non_global: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1 (0 would block every client)")
        if allow_threshold >= 0:
            raise ValueError("allow_threshold must be negative (0 would allow every "
                             "unlisted client)")
        if budget <= 0 or cache_size < 0 or not 0 <= min_ttl <= max_ttl or negative_ttl < 0:
            raise ValueError("budget must be positive, cache_size and TTLs not negative, "
                             "min_ttl <= max_ttl")
        # (entry, signed weight): allowlists from either argument count negative.
        self.entries: tuple[tuple[DnsblList, int], ...] = (
            *((entry, entry.weight) for entry in lists),
            *((entry, -abs(entry.weight)) for entry in allow_lists),
        )
        self.zones = tuple(dict.fromkeys(entry.zone for entry, _w in self.entries))
        self.threshold = threshold
        self.allow_threshold = allow_threshold
        self.resolver = resolver
        self.budget = budget
        self.cache_size = cache_size
        self.min_ttl, self.max_ttl, self.negative_ttl = min_ttl, max_ttl, negative_ttl
        self.skip_non_global = skip_non_global
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, _Answers]] = OrderedDict()

    # -- cache -------------------------------------------------------------------------

    def _cached(self, zone: str, ip: str) -> _Answers | None:
        key = (zone, ip)
        hit = self._cache.get(key)
        if hit is None:
            return None
        expires, answers = hit
        if self._clock() >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answers

    def _store(self, zone: str, ip: str, answers: _Answers) -> None:
        if self.cache_size == 0:
            return
        # postscreen clamps the TTL the same way (postscreen_dnsbl_{min,max}_ttl).
        lifetime = max(self.min_ttl, min(self.max_ttl, answers.ttl))
        key = (zone, ip)
        self._cache[key] = (self._clock() + lifetime, answers)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- lookups -----------------------------------------------------------------------

    async def _lookup(self, zone: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address
                      ) -> _Answers:
        name = query_name(address, zone)
        try:
            answer = await query(self.resolver, name, "A")
        except DnsNameError:
            return _Answers((), self.negative_ttl)
        except DnsTemporaryError as exc:
            raise _LookupFailed(str(exc)) from None
        addresses = tuple(sorted({ipaddress.IPv4Address(r.address) for r in answer.records}))
        return _Answers(addresses, answer.ttl if addresses else self.negative_ttl)

    async def _lookup_all(self, zones: Sequence[str],
                          address: ipaddress.IPv4Address | ipaddress.IPv6Address
                          ) -> tuple[dict[str, _Answers], dict[str, str]]:
        tasks = {zone: asyncio.create_task(self._lookup(zone, address)) for zone in zones}
        try:
            _done, pending = await asyncio.wait(tasks.values(), timeout=self.budget)
        finally:
            # Over budget, or the session went away while we waited: stop the lookups.
            unfinished = [task for task in tasks.values() if not task.done()]
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.gather(*unfinished, return_exceptions=True)
        answers: dict[str, _Answers] = {}
        errors: dict[str, str] = {}
        for zone, task in tasks.items():
            if task in pending:
                errors[zone] = f"no answer within {self.budget:g}s"
            elif isinstance(task.exception(), _LookupFailed):
                errors[zone] = str(task.exception())
            elif task.exception() is not None:
                # Anything else is a bug or an unexpected library error: report it as
                # this list's error rather than failing the whole check.
                errors[zone] = f"lookup failed: {type(task.exception()).__name__}"
                _log.error("DNSBL lookup in %s failed unexpectedly", zone,
                           exc_info=task.exception())
            else:
                answers[zone] = task.result()
        return answers, errors

    # -- scoring -----------------------------------------------------------------------

    async def score(self, ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> DnsblResult:
        """Look ``ip`` up in every list (cached answers first, the rest in parallel within
        the time budget) and score it. Never raises for anything DNS or ``ip`` holds."""
        try:
            address = client_address(ip)
        except ValueError:
            shown = str(ip)[:80]
            return DnsblResult(ip=shown, errors=(("", f"{shown!r} is not an IP address"),))
        text = str(address)
        if self.skip_non_global and not address.is_global:
            return DnsblResult(ip=text, skipped=f"{text} is not a global address: not "
                                                "looked up")
        answers: dict[str, _Answers] = {}
        missing = []
        for zone in self.zones:
            cached = self._cached(zone, text)
            if cached is None:
                missing.append(zone)
            else:
                answers[zone] = cached
        errors: dict[str, str] = {}
        if missing:
            fresh, errors = await self._lookup_all(missing, address)
            for zone, found in fresh.items():
                answers[zone] = found
                # A refusal is about us, not the client: ask again next time.
                if not any(a in _REFUSAL_NET for a in found.addresses):
                    self._store(zone, text, found)
        return self._verdict(text, answers, errors, len(missing))

    def _verdict(self, ip: str, answers: dict[str, _Answers], lookup_errors: dict[str, str],
                 queries: int) -> DnsblResult:
        errors = [(zone, why) for zone, why in lookup_errors.items()]
        usable: dict[str, list[ipaddress.IPv4Address]] = {}
        for zone in self.zones:
            if zone not in answers:
                continue
            usable[zone] = []
            for answer in answers[zone].addresses:
                if answer in _REFUSAL_NET:
                    meaning = _REFUSALS.get(str(answer), "the list refused the query")
                    errors.append((zone, f"answered {answer}: {meaning}"))
                    _log.warning("DNSBL %s answered %s for %s: %s; this list is not "
                                 "being used", zone, answer, ip, meaning)
                elif answer not in _LISTING_NET:
                    errors.append((zone, f"answered {answer}, which is not a listing code "
                                         "(127.0.0.0/8, RFC 5782 §2.1)"))
                    _log.warning("DNSBL %s answered %s for %s, outside 127.0.0.0/8; "
                                 "ignored", zone, answer, ip)
                else:
                    usable[zone].append(answer)
        score = 0
        listed: list[tuple[str, str]] = []
        allow_listed: list[tuple[str, str]] = []
        for entry, weight in self.entries:
            matching = [a for a in usable.get(entry.zone, ()) if entry.counts(a)]
            if not matching:
                continue
            # postconf(5): an entry's weight counts once, however many answers match.
            score += weight
            hits = allow_listed if weight < 0 else listed
            for answer in matching:
                if (entry.zone, str(answer)) not in hits:
                    hits.append((entry.zone, str(answer)))
        return DnsblResult(ip=ip, score=score, listed=tuple(listed),
                           allow_listed=tuple(allow_listed), errors=tuple(errors),
                           blocked=score >= self.threshold,
                           allowed=score <= self.allow_threshold, queries=queries)

    def clear_cache(self) -> None:
        self._cache.clear()


def format_postscreen_sites(entries: Iterable[DnsblList]) -> str:
    """``entries`` as a postscreen_dnsbl_sites value (what :func:`parse_postscreen_sites`
    reads back)."""
    return ", ".join(entry.postscreen_text() for entry in entries)


__all__ = [
    "DEFAULT_ALLOW_THRESHOLD", "DEFAULT_THRESHOLD", "AnswerFilter", "DnsblChecker",
    "DnsblList", "DnsblResult", "DnsblSyntaxError", "client_address",
    "format_postscreen_sites", "parse_filter",
    "parse_postscreen_sites", "query_name",
]
