"""The throwaway DNS (NSD + validating Unbound) behaves like DNSSEC on the Internet."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.procs import ProcessError, pid_is_alive


def ask(address: tuple[str, int], name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    return dns.query.udp(query, address[0], port=address[1], timeout=3.0)


def test_signed_unsigned_bogus_and_lame_zones() -> None:
    zones = [Zone("signed.test", "www A 127.0.0.1", signed=True,
                  signature_validity=datetime.timedelta(days=3)),
             Zone("plain.test", "www A 127.0.0.2"),
             Zone("bogus.test", "www A 127.0.0.3", signed=True, expired=True)]
    started = time.monotonic()
    with ThrowawayDNS(zones, lame_zones=["lame.test"]) as server:
        assert time.monotonic() - started < 3.0
        resolver = server.resolver_address

        signed = ask(resolver, "www.signed.test")
        assert signed.rcode() == dns.rcode.NOERROR and signed.flags & dns.flags.AD
        assert signed.answer[0][0].address == "127.0.0.1"
        # The signatures last as long as asked (from an hour ago).
        rrsig = ask(resolver, "www.signed.test", "RRSIG").answer[0][0]
        lifetime = rrsig.expiration - rrsig.inception
        assert abs(lifetime - (3 * 86400 + 3600)) < 5

        denied = ask(resolver, "nothing.signed.test")
        assert denied.rcode() == dns.rcode.NXDOMAIN and denied.flags & dns.flags.AD

        plain = ask(resolver, "www.plain.test")
        assert plain.rcode() == dns.rcode.NOERROR and not plain.flags & dns.flags.AD

        bogus = ask(resolver, "www.bogus.test")
        assert bogus.rcode() == dns.rcode.SERVFAIL
        assert [e.code for e in bogus.extended_errors()] == [dns.edns.EDECode.SIGNATURE_EXPIRED]
        assert "signature expired" in server.log_text()

        assert ask(resolver, "www.lame.test").rcode() == dns.rcode.SERVFAIL

        # The authoritative server answers the signed zone but never validates.
        direct = ask(server.authoritative_address, "www.signed.test")
        assert direct.flags & dns.flags.AA and not direct.flags & dns.flags.AD

        # Names outside the test zones are refused, never looked up on the Internet.
        assert ask(resolver, "example.com").rcode() == dns.rcode.REFUSED

        assert server.ds_records["signed.test."].startswith("signed.test.")
        assert "plain.test." not in server.ds_records
        root = server.root
        pids = [server._nsd.pid, server._unbound.pid]  # type: ignore[union-attr]
    assert root is not None and not root.exists()
    assert not any(pid_is_alive(pid) for pid in pids)


def test_two_instances_run_side_by_side() -> None:
    with ThrowawayDNS([Zone("one.test", "x A 127.0.0.1")]) as one, \
            ThrowawayDNS([Zone("one.test", "x A 127.0.0.9")]) as two:
        assert one.resolver_address != two.resolver_address
        assert ask(one.resolver_address, "x.one.test").answer[0][0].address == "127.0.0.1"
        assert ask(two.resolver_address, "x.one.test").answer[0][0].address == "127.0.0.9"


def test_a_broken_zone_file_fails_with_the_servers_reason() -> None:
    server = ThrowawayDNS([Zone("broken.test", "www A not-an-address")])
    with pytest.raises(ProcessError, match=r"broken\.test") as caught:
        server.start()
    assert "invalid IPv4 address 'not-an-address'" in str(caught.value)
    assert server.root is None  # cleaned up after the failure


def test_a_broken_signed_zone_fails_at_signing() -> None:
    with pytest.raises(ProcessError, match="ldns-signzone"):
        ThrowawayDNS([Zone("broken.test", "www A not-an-address", signed=True)]).start()


def test_never_touches_the_system_configuration() -> None:
    system = [Path("/etc/nsd"), Path("/etc/unbound")]
    before = {p: sorted(f.stat().st_mtime_ns for f in p.rglob("*")) if p.exists() else None
              for p in system}
    with ThrowawayDNS([Zone("x.test", "a A 127.0.0.1", signed=True)]) as server:
        conf = (server.root / "unbound.conf").read_text()  # type: ignore[operator]
        assert "/etc/" not in conf
    after = {p: sorted(f.stat().st_mtime_ns for f in p.rglob("*")) if p.exists() else None
             for p in system}
    assert before == after
