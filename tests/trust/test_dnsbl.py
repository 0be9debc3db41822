"""DNS blocklists (RFC 5782) scored like postscreen, against real DNS: NSD serving
blocklist and allowlist zones, a validating Unbound in front, dnspython asking it."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.dns import DEFAULT_TTL, ThrowawayDNS, Zone

from mailkeep.outbound.dns import make_resolver
from mailkeep.trust.dnsbl import (
    AnswerFilter,
    DnsblChecker,
    DnsblList,
    DnsblSyntaxError,
    client_address,
    format_postscreen_sites,
    parse_filter,
    parse_postscreen_sites,
    query_name,
)

# Client addresses (global unicast, so that they are looked up) and what the lists say.
SPAMMER = "1.2.3.4"          # zen: 127.0.0.2 and 127.0.0.4; spamcop: 127.0.0.2
DYNAMIC = "1.2.3.5"          # zen: 127.0.0.10 (inside 127.0.0.[2..11])
ODD_CODE = "1.2.3.6"         # zen: 127.0.0.20 (outside it)
REFUSED = "1.2.3.7"          # zen: 127.255.255.254 ("public resolver": refused)
BOGUS = "1.2.3.8"            # zen: 10.0.0.1 (not a listing code)
TRUSTED = "1.2.3.9"          # dnswl: 127.0.10.2
CLEAN = "1.2.3.100"          # nowhere
SPAMMER6 = "2600:3c00::25"   # zen: 127.0.0.3
ZEN = "zen.test"
SPAMCOP = "spamcop.test"
DNSWL = "dnswl.test"
LAME = "lame-bl.test"


def _name(ip: str) -> str:
    """The record name in a zone file, from the standard library's reverse pointer
    (an oracle independent of the code under test)."""
    pointer = ipaddress.ip_address(ip).reverse_pointer
    return pointer.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")


def _records(entries: dict[str, list[str]]) -> str:
    return "\n".join(f"{_name(ip)} A {answer}" for ip, answers in entries.items()
                     for answer in answers)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ThrowawayDNS]:
    zones = [
        Zone(ZEN, _records({SPAMMER: ["127.0.0.2", "127.0.0.4"], DYNAMIC: ["127.0.0.10"],
                            ODD_CODE: ["127.0.0.20"], REFUSED: ["127.255.255.254"],
                            BOGUS: ["10.0.0.1"], SPAMMER6: ["127.0.0.3"]})),
        Zone(SPAMCOP, _records({SPAMMER: ["127.0.0.2"]})),
        Zone(DNSWL, _records({TRUSTED: ["127.0.10.2"], "10.1.2.3": ["127.0.10.3"]})),
    ]
    with ThrowawayDNS(zones, lame_zones=[LAME]) as server:
        yield server


class CountingResolver:
    """Our resolver, counting the names it is asked for and optionally slow for some."""

    def __init__(self, server: ThrowawayDNS, slow_suffix: str | None = None,
                 delay: float = 0.0):
        host, port = server.resolver_address
        self.resolver = make_resolver([host], port, timeout=5.0)
        self.asked: list[str] = []
        original = self.resolver.resolve

        async def resolve(name, *args, **kwargs):
            text = str(name).rstrip(".")
            self.asked.append(text)
            if slow_suffix and text.endswith(slow_suffix):
                await asyncio.sleep(delay)
            return await original(name, *args, **kwargs)

        self.resolver.resolve = resolve  # type: ignore[method-assign]


@pytest.fixture
def counting(dns_server: ThrowawayDNS) -> CountingResolver:
    return CountingResolver(dns_server)


def checker(counting: CountingResolver, sites: str, threshold: int = 1, **options) -> DnsblChecker:
    return DnsblChecker(parse_postscreen_sites(sites), threshold=threshold,
                        resolver=counting.resolver, **options)


# -- scoring -------------------------------------------------------------------------------


async def test_weights_add_up_and_count_once_per_entry(counting: CountingResolver) -> None:
    lists = checker(counting, f"{ZEN}=127.0.0.[2..11]*3, {SPAMCOP}*2")
    result = await lists.score(SPAMMER)
    # zen answers twice (127.0.0.2 and .4) but its weight counts once (postconf(5)).
    assert result.score == 5
    assert result.listed == ((ZEN, "127.0.0.2"), (ZEN, "127.0.0.4"), (SPAMCOP, "127.0.0.2"))
    assert result.blocked and not result.allowed
    assert result.errors == () and result.queries == 2


async def test_unlisted_client_scores_zero(counting: CountingResolver) -> None:
    result = await checker(counting, f"{ZEN}*3, {SPAMCOP}*2").score(CLEAN)
    assert (result.score, result.listed, result.errors) == (0, (), ())
    assert not result.blocked and not result.allowed


async def test_threshold_decides_blocking(counting: CountingResolver) -> None:
    sites = f"{ZEN}=127.0.0.[2..11]*3, {SPAMCOP}*2"
    assert (await checker(counting, sites, threshold=5).score(SPAMMER)).blocked
    below = await checker(counting, sites, threshold=6).score(SPAMMER)
    assert below.score == 5 and not below.blocked


async def test_filter_ranges_select_answers(counting: CountingResolver) -> None:
    filtered = checker(counting, f"{ZEN}=127.0.0.[2..11]*3")
    assert (await filtered.score(DYNAMIC)).score == 3
    outside = await filtered.score(ODD_CODE)
    assert outside.score == 0 and outside.listed == ()
    # Without a filter every listing code counts.
    assert (await checker(counting, ZEN).score(ODD_CODE)).listed == ((ZEN, "127.0.0.20"),)


async def test_one_zone_several_entries_one_query(counting: CountingResolver) -> None:
    """postconf(5)'s example: one list, different weights per answer."""
    lists = checker(counting, f"{ZEN}=127.0.0.[10;11]*8 {ZEN}=127.0.0.[4..7]*6 "
                              f"{ZEN}=127.0.0.3*4 {ZEN}=127.0.0.2*3")
    result = await lists.score(SPAMMER)
    assert result.score == 6 + 3
    assert counting.asked == [f"{_name(SPAMMER)}.{ZEN}"]
    assert (await lists.score(DYNAMIC)).score == 8


async def test_allowlist_with_negative_weight(counting: CountingResolver) -> None:
    lists = checker(counting, f"{ZEN}*2 {DNSWL}=127.0.[0..255].[1..3]*-2")
    trusted = await lists.score(TRUSTED)
    assert trusted.score == -2 and trusted.allowed and not trusted.blocked
    assert trusted.allow_listed == ((DNSWL, "127.0.10.2"),) and trusted.listed == ()
    assert not (await lists.score(CLEAN)).allowed


async def test_allow_lists_argument_counts_negative(counting: CountingResolver) -> None:
    lists = DnsblChecker([DnsblList(ZEN, 1)], [DnsblList(DNSWL, 3, "127.0.10.[0..9]")],
                         resolver=counting.resolver, allow_threshold=-3)
    result = await lists.score(TRUSTED)
    assert result.score == -3 and result.allowed


async def test_ipv6_client_is_looked_up_by_nibbles(counting: CountingResolver) -> None:
    result = await checker(counting, f"{ZEN}*3").score(SPAMMER6)
    assert result.score == 3 and result.listed == ((ZEN, "127.0.0.3"),)
    assert counting.asked == [f"{_name(SPAMMER6)}.{ZEN}"]
    assert len(counting.asked[0].split(".")) == 32 + 2


async def test_ipv4_mapped_client_is_looked_up_as_ipv4(counting: CountingResolver) -> None:
    result = await checker(counting, ZEN).score("::ffff:" + SPAMMER)
    assert result.ip == SPAMMER and result.score == 1


# -- answers that are not listings ----------------------------------------------------------


async def test_refusal_code_is_an_error_not_a_listing(counting: CountingResolver,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    lists = checker(counting, f"{ZEN}*3 {SPAMCOP}")
    with caplog.at_level(logging.WARNING, logger="mailkeep.trust.dnsbl"):
        result = await lists.score(REFUSED)
    assert result.score == 0 and result.listed == () and not result.blocked
    assert result.errors == ((ZEN, "answered 127.255.255.254: queries through a public or "
                                   "open resolver are refused"),)
    assert "127.255.255.254" in caplog.text
    # A refusal is not cached: the next check asks zen again (spamcop's "not listed" is).
    again = await lists.score(REFUSED)
    assert again.queries == 1 and counting.asked[-1] == f"{_name(REFUSED)}.{ZEN}"


async def test_answer_outside_loopback_is_ignored(counting: CountingResolver) -> None:
    result = await checker(counting, ZEN).score(BOGUS)
    assert result.score == 0 and result.listed == ()
    assert result.errors[0][0] == ZEN and "10.0.0.1" in result.errors[0][1]


async def test_lame_zone_is_an_error_not_a_listing(counting: CountingResolver) -> None:
    result = await checker(counting, f"{LAME}*5 {SPAMCOP}*2").score(SPAMMER)
    assert result.score == 2 and result.listed == ((SPAMCOP, "127.0.0.2"),)
    assert [zone for zone, _why in result.errors] == [LAME]
    # Errors are not cached either.
    assert (await checker(counting, f"{LAME}*5").score(SPAMMER)).errors != ()


async def test_slow_list_costs_at_most_the_budget(dns_server: ThrowawayDNS) -> None:
    slow = CountingResolver(dns_server, slow_suffix=SPAMCOP, delay=3.0)
    lists = checker(slow, f"{ZEN}*3 {SPAMCOP}*2", budget=0.3)
    started = time.monotonic()
    result = await lists.score(SPAMMER)
    assert time.monotonic() - started < 1.5
    assert result.score == 3
    assert result.errors == ((SPAMCOP, "no answer within 0.3s"),)


async def test_private_addresses_are_not_looked_up(counting: CountingResolver) -> None:
    lists = checker(counting, f"{DNSWL}*-1")
    skipped = await lists.score("10.1.2.3")
    assert skipped.skipped and skipped.score == 0 and counting.asked == []
    asked = await checker(counting, f"{DNSWL}*-1", skip_non_global=False).score("10.1.2.3")
    assert asked.score == -1 and counting.asked == [f"3.2.1.10.{DNSWL}"]


async def test_not_an_address_is_an_error(counting: CountingResolver) -> None:
    result = await checker(counting, ZEN).score("mail.example.com")
    assert result.score == 0 and not result.blocked and result.errors
    assert counting.asked == []


# -- the cache -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_second_check_is_answered_from_the_cache(counting: CountingResolver) -> None:
    clock = Clock()
    lists = checker(counting, f"{ZEN}*3 {SPAMCOP}*2", clock=clock)
    first = await lists.score(SPAMMER)
    assert first.queries == 2 and len(counting.asked) == 2
    clock.now += DEFAULT_TTL - 60
    second = await lists.score(SPAMMER)
    assert second.queries == 0 and len(counting.asked) == 2
    assert (second.score, second.listed) == (first.score, first.listed)
    # "Not listed" is cached too.
    await lists.score(CLEAN)
    assert (await lists.score(CLEAN)).queries == 0 and len(counting.asked) == 4
    # After the answer's TTL (at most the harness's 300 s) the lists are asked again.
    clock.now += 61
    assert (await lists.score(SPAMMER)).queries == 2 and len(counting.asked) == 6


async def test_cache_ttl_is_clamped(counting: CountingResolver) -> None:
    clock = Clock()
    lists = checker(counting, ZEN, clock=clock, max_ttl=100)
    await lists.score(SPAMMER)
    clock.now += 99
    assert (await lists.score(SPAMMER)).queries == 0
    clock.now += 2
    assert (await lists.score(SPAMMER)).queries == 1
    floor = checker(counting, ZEN, clock=clock, min_ttl=1000, max_ttl=2000)
    await floor.score(SPAMMER)
    clock.now += 900
    assert (await floor.score(SPAMMER)).queries == 0


async def test_cache_size_is_bounded(counting: CountingResolver) -> None:
    lists = checker(counting, ZEN, cache_size=2)
    for ip in (SPAMMER, DYNAMIC, ODD_CODE):
        await lists.score(ip)
    assert (await lists.score(ODD_CODE)).queries == 0
    assert (await lists.score(SPAMMER)).queries == 1  # the oldest was dropped
    assert (await checker(counting, ZEN, cache_size=0).score(SPAMMER)).queries == 1


# -- configuration -------------------------------------------------------------------------


SEED_002 = """postscreen_dnsbl_sites =
bl.spamcop.net,
zen.spamhaus.org
"""


def test_seed_002_setting_reads_as_is() -> None:
    assert parse_postscreen_sites(SEED_002) == [DnsblList("bl.spamcop.net"),
                                                DnsblList("zen.spamhaus.org")]


def test_postfix_documentation_examples() -> None:
    entries = parse_postscreen_sites(
        "# weighted\n zen.spamhaus.org=127.0.0.[2..11]*3,\n\tbl.spamcop.net*2 "
        "list.dnswl.org=127.0.[0..255].[1..3]*-2, b.barracudacentral.org*+1")
    assert [(e.zone, e.weight, e.filter) for e in entries] == [
        ("zen.spamhaus.org", 3, "127.0.0.[2..11]"), ("bl.spamcop.net", 2, None),
        ("list.dnswl.org", -2, "127.0.[0..255].[1..3]"), ("b.barracudacentral.org", 1, None)]
    assert format_postscreen_sites(entries) == (
        "zen.spamhaus.org=127.0.0.[2..11]*3, bl.spamcop.net*2, "
        "list.dnswl.org=127.0.[0..255].[1..3]*-2, b.barracudacentral.org")


@pytest.mark.parametrize("text", [
    "zen.spamhaus.org=127.0.0*3",          # three octets
    "zen.spamhaus.org=127.0.0.2..5",       # range outside brackets
    "zen.spamhaus.org=127.0.0.[5..2]",     # decreasing
    "zen.spamhaus.org=127.0.0.[2..256]",   # beyond 255
    "zen.spamhaus.org=127.0.0.[2",         # unbalanced
    "zen.spamhaus.org*three",
    "zen.spamhaus.org*5000",               # beyond MAX_WEIGHT
    "bad_zone..test",
    "=127.0.0.2",
])
def test_malformed_entries_are_refused_with_the_entry(text: str) -> None:
    with pytest.raises(DnsblSyntaxError) as error:
        parse_postscreen_sites(text)
    assert repr(text) in str(error.value) or text.split("=")[0] in str(error.value)


def test_checker_refuses_thresholds_that_block_or_allow_everyone(counting) -> None:
    with pytest.raises(ValueError, match="threshold"):
        DnsblChecker([DnsblList(ZEN)], threshold=0, resolver=counting.resolver)
    with pytest.raises(ValueError, match="allow_threshold"):
        DnsblChecker([DnsblList(ZEN)], allow_threshold=0, resolver=counting.resolver)


def test_filter_matching() -> None:
    pattern = parse_filter("127.0.[0;2..3].[1..3;10]")
    assert isinstance(pattern, AnswerFilter)
    matches = [str(a) for a in (ipaddress.IPv4Address(f"127.0.{c}.{d}")
                                for c in range(5) for d in range(12)) if pattern.matches(a)]
    assert matches == [f"127.0.{c}.{d}" for c in (0, 2, 3) for d in (1, 2, 3, 10)]


# -- properties ----------------------------------------------------------------------------


_RANGE = st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda p: (min(p), max(p)))
_FILTER = st.lists(st.lists(_RANGE, min_size=1, max_size=4), min_size=4, max_size=4).map(
    lambda octets: AnswerFilter(tuple(tuple(r) for r in octets)))
_LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
_ENTRY = st.builds(lambda labels, weight, pattern: DnsblList(
    ".".join(labels), weight, None if pattern is None else str(pattern)),
    st.lists(_LABEL, min_size=2, max_size=4), st.integers(-1000, 1000), st.none() | _FILTER)


@settings(max_examples=100, deadline=None)
@given(st.lists(_ENTRY, min_size=1, max_size=6))
def test_sites_round_trip(entries: list[DnsblList]) -> None:
    assert parse_postscreen_sites(format_postscreen_sites(entries)) == entries


@settings(max_examples=200, deadline=None)
@given(_FILTER, st.integers(0, 2**32 - 1))
def test_filter_text_round_trip_keeps_meaning(pattern: AnswerFilter, value: int) -> None:
    again = parse_filter(str(pattern))
    address = ipaddress.IPv4Address(value)
    assert again.matches(address) == pattern.matches(address)
    expected = all(any(low <= octet <= high for low, high in ranges)
                   for octet, ranges in zip(address.packed, pattern.octets, strict=True))
    assert pattern.matches(address) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abz019.=*[];,-+ \n\t#_", max_size=60))
def test_any_text_parses_or_is_refused(text: str) -> None:
    try:
        entries = parse_postscreen_sites(text)
    except DnsblSyntaxError:
        return
    assert all(isinstance(e, DnsblList) for e in entries)


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses())
def test_query_name_is_the_reverse_pointer(address) -> None:
    name = query_name(address, "bl.test")
    mapped = client_address(address)
    assert name == _name(str(mapped)) + ".bl.test"
