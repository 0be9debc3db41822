"""iprev, forward-confirmed reverse DNS (RFC 8601 §2.7.3, §3), against real DNS: NSD
serving in-addr.arpa, ip6.arpa and forward zones, a validating Unbound in front."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dns.name
import dns.reversename
import pytest
from tests.support.dns import ThrowawayDNS, Zone

from mailkeep.outbound.dns import make_resolver
from mailkeep.trust.iprev import IPREV_NAME_LIMIT, IprevStatus, client_address, iprev

REV4 = "2.0.192.in-addr.arpa"
REV6 = "8.b.d.0.1.0.0.2.ip6.arpa"


def rev6(address: str) -> str:
    name = dns.reversename.from_address(address)
    return name.relativize(dns.name.from_text(REV6)).to_text()


FORWARD = """
mail        A 192.0.2.10
good11      A 192.0.2.11
bad11       A 192.0.2.99
mismatch    A 192.0.2.99
ok18        A 192.0.2.18
alias20     CNAME real20
real20      A 192.0.2.20
mail6       AAAA 2001:db8::10
mail6       A 192.0.2.99
""" + "".join(f"n{n} A 192.0.2.19\n" for n in range(1, 13)) + """
shared      A 192.0.2.21
shared      AAAA 2001:db8::21
"""

REVERSE4 = """
10  PTR mail.fwd.test.
11  PTR bad11.fwd.test.
11  PTR good11.fwd.test.
12  PTR mismatch.fwd.test.
13  PTR gone.fwd.test.
15  TXT "a name without PTR records"
16  PTR host.lame.test.
17  PTR host.lame.test.
17  PTR mismatch.fwd.test.
18  PTR host.lame.test.
18  PTR ok18.fwd.test.
20  PTR alias20.fwd.test.
21  PTR shared.fwd.test.
""" + "".join(f"19 PTR n{n}.fwd.test.\n" for n in range(1, 13))

REVERSE6 = f"""
{rev6("2001:db8::10")} PTR mail6.fwd.test.
{rev6("2001:db8::11")} PTR mail.fwd.test.
{rev6("2001:db8::21")} PTR shared.fwd.test.
"""


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS([Zone("fwd.test", FORWARD), Zone(REV4, REVERSE4),
                       Zone(REV6, REVERSE6, signed=True)],
                      lame_zones=["lame.test", "100.51.198.in-addr.arpa"]) as server:
        yield server


@pytest.fixture
def resolver(dns_server: ThrowawayDNS):
    host, port = dns_server.resolver_address
    return make_resolver([host], port, timeout=5.0)


async def test_pass_when_the_ptr_name_resolves_back(resolver) -> None:
    result = await iprev("192.0.2.10", resolver)
    assert result.result == IprevStatus.PASS == "pass"
    assert result.names == ("mail.fwd.test",) and result.ptr_names == ("mail.fwd.test",)
    assert result.ip == "192.0.2.10" and result.problem == ""


async def test_one_confirming_name_among_several_is_enough(resolver) -> None:
    result = await iprev("192.0.2.11", resolver)
    assert result.result == IprevStatus.PASS
    assert result.names == ("good11.fwd.test",)
    assert sorted(result.ptr_names) == ["bad11.fwd.test", "good11.fwd.test"]


async def test_forward_name_through_a_cname(resolver) -> None:
    result = await iprev("192.0.2.20", resolver)
    assert result.result == IprevStatus.PASS and result.names == ("alias20.fwd.test",)


async def test_fail_when_forward_lookup_disagrees_or_does_not_exist(resolver) -> None:
    mismatch = await iprev("192.0.2.12", resolver)
    assert mismatch.result == IprevStatus.FAIL and mismatch.names == ()
    assert mismatch.problem == "mismatch.fwd.test does not resolve to 192.0.2.12"
    gone = await iprev("192.0.2.13", resolver)
    assert gone.result == IprevStatus.FAIL and gone.ptr_names == ("gone.fwd.test",)


async def test_permerror_without_ptr_records(resolver) -> None:
    nxdomain = await iprev("192.0.2.14", resolver)
    assert nxdomain.result == IprevStatus.PERMERROR and "NXDOMAIN" in nxdomain.problem
    nodata = await iprev("192.0.2.15", resolver)
    assert nodata.result == IprevStatus.PERMERROR and nodata.ptr_names == ()


async def test_temperror_when_dns_fails(resolver) -> None:
    forward = await iprev("192.0.2.16", resolver)
    assert forward.result == IprevStatus.TEMPERROR and "SERVFAIL" in forward.problem
    # A failed forward lookup next to a mismatch: a later try could still pass.
    mixed = await iprev("192.0.2.17", resolver)
    assert mixed.result == IprevStatus.TEMPERROR
    reverse = await iprev("198.51.100.5", resolver)
    assert reverse.result == IprevStatus.TEMPERROR and reverse.ptr_names == ()


async def test_a_confirmed_name_passes_despite_another_failing(resolver) -> None:
    result = await iprev("192.0.2.18", resolver)
    assert result.result == IprevStatus.PASS and result.names == ("ok18.fwd.test",)


async def test_at_most_ten_ptr_names_are_checked(resolver) -> None:
    result = await iprev("192.0.2.19", resolver)
    assert result.result == IprevStatus.PASS
    assert len(result.ptr_names) == IPREV_NAME_LIMIT == 10
    assert set(result.names) == set(result.ptr_names)
    assert set(result.ptr_names) <= {f"n{n}.fwd.test" for n in range(1, 13)}
    fewer = await iprev("192.0.2.19", resolver, name_limit=3)
    assert len(fewer.ptr_names) == 3


async def test_ipv6_uses_ip6_arpa_and_aaaa(resolver) -> None:
    result = await iprev("2001:db8::10", resolver)
    assert result.result == IprevStatus.PASS and result.names == ("mail6.fwd.test",)
    # mail.fwd.test has only an A record: an IPv6 client is not confirmed by it.
    v4_only = await iprev("2001:db8::11", resolver)
    assert v4_only.result == IprevStatus.FAIL
    # The same name serves both families, each confirmed by its own record type.
    assert (await iprev("2001:db8::21", resolver)).result == IprevStatus.PASS
    assert (await iprev("192.0.2.21", resolver)).result == IprevStatus.PASS


async def test_ipv4_mapped_address_is_the_ipv4_client(resolver) -> None:
    result = await iprev("::ffff:192.0.2.10", resolver)
    assert result.result == IprevStatus.PASS and result.ip == "192.0.2.10"


async def test_time_budget_bounds_an_unanswering_resolver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives queries, never answers
        resolver = make_resolver(["127.0.0.1"], silent.getsockname()[1], timeout=10.0)
        started = time.monotonic()
        result = await iprev("192.0.2.10", resolver, time_budget=0.3)
        elapsed = time.monotonic() - started
    assert result.result == IprevStatus.TEMPERROR and "0.3s" in result.problem
    assert elapsed < 2.0


def test_client_address_normalizes_and_rejects() -> None:
    assert str(client_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(client_address(" 2001:DB8::1 ")) == "2001:db8::1"
    assert str(client_address("fe80::1%eth0")) == "fe80::1"
    with pytest.raises(ValueError):
        client_address("mail.example.com")
