"""MX resolution (RFC 5321 §5.1, RFC 7505) against real DNS: NSD + a validating Unbound.

Every lookup goes through the same path as in production: dnspython asks Unbound, which
asks NSD and validates the signed zones. Nothing about DNS behaviour is mocked.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.procs import free_port

from mailkeep.outbound.dns import (
    DnsNameError,
    DnsTemporaryError,
    make_resolver,
    parse_nameserver,
    query,
    resolver_is_local,
)
from mailkeep.outbound.mx import MxLoopError, order_mx, resolve_mx

SIGNED = """
order       MX 10 a
order       MX 10 b
order       MX 10 c
order       MX 20 backup
order       MX 5 first
a           A 127.0.0.10
b           A 127.0.0.11
c           A 127.0.0.12
backup      A 127.0.0.13
first       A 127.0.0.14
first       AAAA ::14
implicit    A 127.0.0.20
implicit    AAAA ::20
null        MX 0 .
nullmixed   MX 0 .
nullmixed   MX 10 a
cname       MX 10 alias
alias       CNAME real
real        A 127.0.0.30
aliasdomain CNAME order
skip        MX 10 nohost
skip        MX 20 a
skip        MX 30 empty
empty       TXT "no addresses here"
noaddr      MX 10 nohost
noaddr      MX 20 empty
mixed       MX 10 mx.lame.test.
mixed       MX 20 a
alltemp     MX 10 mx.lame.test.
toplain     MX 10 mx.plain.test.
many        A 127.0.1.1
many        A 127.0.1.2
many        A 127.0.1.3
many        A 127.0.1.4
many        A 127.0.1.5
noaddrdomain TXT "neither MX nor addresses"
xn--bcher-kva MX 10 a
"""

PLAIN = """
@   MX 10 mx
mx  A 127.0.0.40
tosigned MX 10 a.signed.test.
"""


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS([Zone("signed.test", SIGNED, signed=True), Zone("plain.test", PLAIN),
                       Zone("bogus.test", "@ MX 10 mx\nmx A 127.0.0.50", signed=True,
                            expired=True)],
                      lame_zones=["lame.test"]) as server:
        yield server


@pytest.fixture
def resolver(dns_server: ThrowawayDNS):
    host, port = dns_server.resolver_address
    return make_resolver([host], port, timeout=5.0)


async def test_hosts_sorted_by_preference_with_addresses_ipv6_first(resolver) -> None:
    result = await resolve_mx(resolver, "order.signed.test", rng=random.Random(1))
    assert not result.null_mx and not result.implicit and result.secure
    names = [h.name for h in result.hosts]
    assert names[0] == "first.signed.test"
    assert sorted(names[1:4]) == ["a.signed.test", "b.signed.test", "c.signed.test"]
    assert names[4] == "backup.signed.test"
    assert [h.preference for h in result.hosts] == [5, 10, 10, 10, 20]
    assert result.hosts[0].addresses == ("::14", "127.0.0.14")
    assert result.hosts[-1].addresses == ("127.0.0.13",)
    assert all(h.secure and h.error is None for h in result.hosts)


async def test_equal_preferences_are_shuffled(resolver) -> None:
    orders = set()
    for seed in range(20):
        result = await resolve_mx(resolver, "order.signed.test", rng=random.Random(seed))
        names = tuple(h.name for h in result.hosts)
        assert names[0] == "first.signed.test" and names[-1] == "backup.signed.test"
        orders.add(names[1:4])
    # 20 seeds over 6 permutations: all show up (a fixed order would give 1).
    assert len(orders) == 6
    # The same seed gives the same order: tests and retries can be reproduced.
    one = await resolve_mx(resolver, "order.signed.test", rng=random.Random(7))
    two = await resolve_mx(resolver, "order.signed.test", rng=random.Random(7))
    assert one.hosts == two.hosts


async def test_address_family_order_is_configurable(resolver) -> None:
    both = await resolve_mx(resolver, "implicit.signed.test", families=("ipv4", "ipv6"))
    assert both.hosts[0].addresses == ("127.0.0.20", "::20")
    v4 = await resolve_mx(resolver, "implicit.signed.test", families=("ipv4",))
    assert v4.hosts[0].addresses == ("127.0.0.20",)
    v6 = await resolve_mx(resolver, "implicit.signed.test", families=("ipv6",))
    assert v6.hosts[0].addresses == ("::20",)
    with pytest.raises(ValueError, match="unknown address family"):
        await resolve_mx(resolver, "implicit.signed.test", families=("ipx",))


async def test_implicit_mx_uses_the_domains_addresses(resolver) -> None:
    result = await resolve_mx(resolver, "implicit.signed.test")
    assert result.implicit and not result.null_mx
    assert result.secure  # the absence of MX records was validated
    (host,) = result.hosts
    assert (host.name, host.preference, host.addresses) == ("implicit.signed.test", 0,
                                                            ("::20", "127.0.0.20"))
    assert host.secure


async def test_null_mx_means_no_mail(resolver) -> None:
    result = await resolve_mx(resolver, "null.signed.test")
    assert result.null_mx and result.hosts == () and result.secure


async def test_root_among_other_mx_records_is_ignored(resolver) -> None:
    result = await resolve_mx(resolver, "nullmixed.signed.test")
    assert not result.null_mx
    assert [h.name for h in result.hosts] == ["a.signed.test"]


async def test_nonexistent_domain_is_a_permanent_error(resolver) -> None:
    with pytest.raises(DnsNameError) as caught:
        await resolve_mx(resolver, "nosuchdomain.signed.test")
    assert caught.value.permanent and caught.value.enhanced_code == "5.1.2"
    assert caught.value.secure
    assert "nosuchdomain.signed.test" in str(caught.value)


async def test_domain_without_mx_or_addresses_is_permanent(resolver) -> None:
    with pytest.raises(DnsNameError, match="no MX and no address records") as caught:
        await resolve_mx(resolver, "noaddrdomain.signed.test")
    assert caught.value.permanent


async def test_servfail_from_a_lame_zone_is_temporary(resolver) -> None:
    with pytest.raises(DnsTemporaryError) as caught:
        await resolve_mx(resolver, "lame.test")
    assert not caught.value.permanent and caught.value.enhanced_code == "4.4.3"
    assert "SERVFAIL" in str(caught.value)


async def test_bogus_signature_is_temporary_and_says_why(resolver) -> None:
    with pytest.raises(DnsTemporaryError) as caught:
        await resolve_mx(resolver, "bogus.test")
    # Unbound's Extended DNS Error (RFC 8914) ends up in the log line.
    assert "Signature Expired" in str(caught.value)


async def test_mx_host_that_is_a_cname(resolver) -> None:
    result = await resolve_mx(resolver, "cname.signed.test")
    (host,) = result.hosts
    assert host.name == "alias.signed.test"
    assert host.expanded_name == "real.signed.test"
    assert host.addresses == ("127.0.0.30",)
    assert host.secure


async def test_domain_that_is_a_cname(resolver) -> None:
    result = await resolve_mx(resolver, "aliasdomain.signed.test")
    assert result.domain == "aliasdomain.signed.test"
    assert result.expanded_domain == "order.signed.test"
    assert len(result.hosts) == 5


async def test_hosts_without_addresses_are_skipped(resolver) -> None:
    result = await resolve_mx(resolver, "skip.signed.test")
    assert [h.name for h in result.hosts] == ["a.signed.test"]
    assert "nohost.signed.test: no such host" in result.skipped
    assert "empty.signed.test: no address records" in result.skipped


async def test_no_host_with_an_address_is_permanent(resolver) -> None:
    with pytest.raises(DnsNameError, match=r"no MX host of noaddr\.signed\.test") as caught:
        await resolve_mx(resolver, "noaddr.signed.test")
    assert caught.value.enhanced_code == "5.4.4"


async def test_host_with_temporary_failure_is_kept(resolver) -> None:
    result = await resolve_mx(resolver, "mixed.signed.test")
    assert [h.name for h in result.hosts] == ["mx.lame.test", "a.signed.test"]
    broken = result.hosts[0]
    assert broken.addresses == () and "SERVFAIL" in (broken.error or "")
    assert not broken.secure
    assert result.hosts[1].addresses == ("127.0.0.10",)


async def test_only_temporarily_failing_hosts_is_temporary(resolver) -> None:
    with pytest.raises(DnsTemporaryError, match=r"mx\.lame\.test"):
        await resolve_mx(resolver, "alltemp.signed.test")


async def test_unsigned_answers_are_not_secure(resolver) -> None:
    plain = await resolve_mx(resolver, "plain.test")
    assert not plain.secure and not plain.hosts[0].secure
    assert plain.hosts[0].addresses == ("127.0.0.40",)
    # A validated MX answer naming a host in an unsigned zone: the host is not secure.
    mixed = await resolve_mx(resolver, "toplain.signed.test")
    assert mixed.secure and not mixed.hosts[0].secure
    # An unvalidated MX answer naming a host in a signed zone: not secure either, since
    # whoever forged the MX answer chose the host (RFC 7672 §2.2.1).
    forged = await resolve_mx(resolver, "tosigned.plain.test")
    assert not forged.secure and not forged.hosts[0].secure


async def test_address_literals_need_no_dns(resolver) -> None:
    v4 = await resolve_mx(resolver, "[192.0.2.1]")
    assert v4.ip_literal and v4.hosts[0].addresses == ("192.0.2.1",)
    v6 = await resolve_mx(resolver, "[IPv6:2001:db8::1]")
    assert v6.hosts[0].addresses == ("2001:db8::1",)
    for bad in ("[192.0.2.300]", "[2001:db8::1]", "[192.0.2.1", "[]"):
        with pytest.raises(DnsNameError, match="address literal") as caught:
            await resolve_mx(resolver, bad)
        assert caught.value.permanent
    with pytest.raises(DnsNameError, match="ipv6 delivery is disabled"):
        await resolve_mx(resolver, "[IPv6:2001:db8::1]", families=("ipv4",))


async def test_our_own_name_drops_it_and_worse_hosts(resolver) -> None:
    result = await resolve_mx(resolver, "order.signed.test", own_names={"B.signed.test."})
    assert [h.name for h in result.hosts] == ["first.signed.test"]
    with pytest.raises(MxLoopError, match="loops back to myself") as caught:
        await resolve_mx(resolver, "order.signed.test", own_names={"first.signed.test"})
    assert caught.value.enhanced_code == "5.4.6" and caught.value.permanent


async def test_limits_on_hosts_and_addresses(resolver) -> None:
    result = await resolve_mx(resolver, "order.signed.test", max_hosts=2)
    assert len(result.hosts) == 2 and result.hosts[0].name == "first.signed.test"
    assert sum("beyond the limit of 2 MX hosts" in s for s in result.skipped) == 3
    many = await resolve_mx(resolver, "many.signed.test", max_addresses=2)
    assert len(many.hosts[0].addresses) == 2
    assert set(many.hosts[0].addresses) <= {f"127.0.1.{i}" for i in range(1, 6)}


async def test_internationalized_domain_is_looked_up_as_a_labels(resolver) -> None:
    result = await resolve_mx(resolver, "Bücher.signed.test")
    assert result.domain == "xn--bcher-kva.signed.test"
    assert [h.name for h in result.hosts] == ["a.signed.test"]


async def test_invalid_domain_names_are_permanent_errors(resolver) -> None:
    for bad in ("a..b", "", "x" * 64 + ".test", "."):
        with pytest.raises(DnsNameError) as caught:
            await resolve_mx(resolver, bad)
        assert caught.value.permanent


async def test_no_resolver_answering_is_temporary_and_bounded() -> None:
    silent = make_resolver(["127.0.0.1"], free_port(), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DnsTemporaryError):
        await resolve_mx(silent, "signed.test")
    assert time.monotonic() - started < 3.0


async def test_resolver_addresses_with_their_own_ports(dns_server) -> None:
    host, port = dns_server.resolver_address
    resolver = make_resolver([f"{host}:{port}"])  # the form [delivery] resolvers uses
    result = await resolve_mx(resolver, "order.signed.test")
    assert result.secure and len(result.hosts) == 5
    assert resolver_is_local(resolver)
    assert not resolver_is_local(make_resolver(["192.0.2.1", "127.0.0.1"]))
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("localhost", "127.0.0.1:0", "[::1", "192.0.2.1:x", "[::1]x", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="nameserver"):
            make_resolver([bad])


async def test_authoritative_answers_never_count_as_validated(dns_server) -> None:
    # Straight from NSD (no validation), a signed zone's answers carry no AD flag.
    host, port = dns_server.authoritative_address
    direct = make_resolver([host], port)
    answer = await query(direct, "a.signed.test", "A")
    assert answer.records and not answer.secure


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 65535), st.sampled_from("abcdefgh")), max_size=12),
       st.integers(0, 2**32))
def test_order_mx_sorts_dedupes_and_only_shuffles_ties(records, seed) -> None:
    ordered = order_mx(records, random.Random(seed))
    preferences = [p for p, _ in ordered]
    assert preferences == sorted(preferences)
    best = {}
    for preference, host in records:
        best[host] = min(preference, best.get(host, 65536))
    assert sorted(ordered) == sorted((p, h) for h, p in best.items())
