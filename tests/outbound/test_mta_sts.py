"""MTA-STS (mailkeep.outbound.mta_sts, RFC 8461).

The parsers and the per-MX decision are pure functions, tested with plain calls and
fuzzed. ``MtaStsResolver`` is tested against real peers: a local DNS (NSD behind
Unbound, tests/support/dns.py) publishing the ``_mta-sts`` TXT records and the policy
hosts' addresses, and a local HTTPS server (tests/support/https.py) with certificates
from a private CA. Nothing leaves 127.0.0.1; no DNS or HTTP is faked in Python.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import dns.asyncresolver
import dns.nameserver
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.certs import IssuedCert, TestCA
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.https import LocalHTTPS, Reply

from mailkeep.outbound.dns import make_resolver
from mailkeep.outbound.mta_sts import (
    DEFAULT_MAX_POLICY_SIZE,
    MAX_AGE_LIMIT,
    MtaStsResolver,
    MtaStsSyntaxError,
    Policy,
    PolicyDecision,
    StsRecord,
    parse_policy,
    parse_sts_record,
    select_sts_record,
    tls_for_mx,
)

PATH = "/.well-known/mta-sts.txt"

# == §3.1 TXT records ========================================================================


@pytest.mark.parametrize("txt, record_id", [
    ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),  # the RFC's own example
    ("v=STSv1;id=abc", "abc"),
    ("v=STSv1 ; id=abc ;  ", "abc"),
    ("v=STSv1;\tid=A1b2", "A1b2"),
    ("v=STSv1; id=" + "x" * 32, "x" * 32),
    ("v=STSv1; ext=val; id=1; other_ext.v-2=x:y", "1"),  # unknown fields ignored
])
def test_sts_record_valid(txt: str, record_id: str) -> None:
    assert parse_sts_record(txt) == StsRecord(record_id)


@pytest.mark.parametrize("txt, complaint", [
    ("", "v=STSv1"),
    ("id=1; v=STSv1;", "v=STSv1"),  # version must come first
    ("v=STSv2; id=1", "v=STSv1"),
    ("v=stsv1; id=1", "v=STSv1"),  # case-sensitive (%s in the ABNF)
    ("v=STSv1", "followed"),
    ("v=STSv1 id=1", "followed"),
    ("v=STSv1;", "no id"),
    ("v=STSv1; ext=1", "no id"),
    ("v=STSv1; id=", "1 to 32"),
    ("v=STSv1; id=" + "x" * 33, "1 to 32"),
    ("v=STSv1; id=a-b", "1 to 32"),
    ("v=STSv1; id=1; id=2", "more than one id"),
    ("v=STSv1; id=1;; ext=2", "empty field"),
    ("v=STSv1; id=1; ext", "not name=value"),
    ("v=STSv1; id=1; ext=a b", "malformed"),
    ("v=STSv1; id=1; ext=a=b", "malformed"),
    ("v=STSv1; id=1; _ext=1", "malformed"),
    ("v=STSv1; id=1; ext=\x7f", "malformed"),
])
def test_sts_record_malformed(txt: str, complaint: str) -> None:
    with pytest.raises(MtaStsSyntaxError, match=complaint):
        parse_sts_record(txt)


def test_select_record_discards_other_records_and_refuses_two() -> None:
    assert select_sts_record(["v=spf1 -all", "v=STSv1; id=7"]) == StsRecord("7")
    assert select_sts_record(["v=spf1 -all", "v=STSv10; id=7"]) is None
    assert select_sts_record([]) is None
    # §3.1: more than one record starting "v=STSv1;" means no usable record at all.
    with pytest.raises(MtaStsSyntaxError, match="2 TXT records"):
        select_sts_record(["v=STSv1; id=1", "v=STSv1; id=2"])
    with pytest.raises(MtaStsSyntaxError, match="1 to 32"):
        select_sts_record(["v=STSv1; id=bad-id"])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.text(alphabet="v=STSv1;id =ab-_.", max_size=40))
def test_sts_record_fuzz_only_syntax_errors(txt: str) -> None:
    try:
        record = parse_sts_record(txt)
    except MtaStsSyntaxError:
        return
    assert txt.startswith("v=STSv1") and 1 <= len(record.id) <= 32 and record.id.isalnum()


# == §3.2 policies ===========================================================================

RFC_EXAMPLE = ("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
               "mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n")


def test_policy_rfc_example() -> None:
    policy = parse_policy(RFC_EXAMPLE)
    assert policy == Policy("STSv1", "enforce",
                            ("mail.example.com", "*.example.net", "backupmx.example.com"),
                            604800)


@pytest.mark.parametrize("text, expected", [
    # LF line ends, any field order, no final newline, blank lines, spaces after the colon.
    ("mode: testing\nmax_age:86400\nversion: STSv1\nmx:Mx.Example.COM  ",
     Policy("STSv1", "testing", ("mx.example.com",), 86400)),
    ("version: STSv1\n\nmode: enforce\r\n\r\nmx: a.test\nmax_age: 0\n\n",
     Policy("STSv1", "enforce", ("a.test",), 0)),
    # mode none needs no mx (§3.2, and §8.3: how a domain removes its policy).
    ("version: STSv1\nmode: none\nmax_age: 31557600\n",
     Policy("STSv1", "none", (), MAX_AGE_LIMIT)),
    # Unknown keys are ignored whatever their value; duplicate mx lines collapse.
    ("version: STSv1\nmode: enforce\nmx: a.test\nmx: A.test.\nmax_age: 5\n"
     "x-future.ext_1: anything at all: really\nnote:\n",
     Policy("STSv1", "enforce", ("a.test",), 5)),
    # A U-label mx is compared in A-label form.
    ("version: STSv1\nmode: enforce\nmx: *.bücher.example\nmax_age: 5\n",
     Policy("STSv1", "enforce", ("*.xn--bcher-kva.example",), 5)),
])
def test_policy_valid_variants(text: str, expected: Policy) -> None:
    assert parse_policy(text) == expected
    assert parse_policy(text.encode()) == expected


@pytest.mark.parametrize("text, complaint", [
    ("", "no version"),
    ("mode: enforce\nmx: a.test\nmax_age: 1\n", "no version"),
    ("version: STSv1\nmx: a.test\nmax_age: 1\n", "no mode"),
    ("version: STSv1\nmode: enforce\nmx: a.test\n", "no max_age"),
    ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "not STSv1"),
    ("version: STSv1\nmode: Enforce\nmx: a.test\nmax_age: 1\n", "not enforce"),
    ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "not enforce"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "at least one mx"),
    ("version: STSv1\nmode: testing\nmax_age: 1\n", "at least one mx"),
    ("version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 1\n", "more than once"),
    ("version: STSv1\nversion: STSv1\nmode: none\nmax_age: 1\n", "more than once"),
    ("version: STSv1\nmode: none\nmax_age: 1\nmax_age: 2\n", "more than once"),
    ("version: STSv1\nmode: none\nmax_age: -1\n", "1 to 10 digits"),
    ("version: STSv1\nmode: none\nmax_age: 1d\n", "1 to 10 digits"),
    ("version: STSv1\nmode: none\nmax_age: 12345678901\n", "1 to 10 digits"),
    ("version: STSv1\nmode: none\nmax_age: 31557601\n", "exceeds the maximum"),
    ("version: STSv1\nmode: none\nmax_age\n", "no ':'"),
    ("version: STSv1\n mode: none\nmax_age: 1\n", "malformed field name"),
    ("version: STSv1\nmode: none\nmax_age: 1\n-bad: x\n", "malformed field name"),
    ("version: STSv1\rmode: none\rmax_age: 1\r", "control character"),  # bare CR
    ("version: STSv1\nmode: none\nmax_age: 1\nx: a\x00b\n", "control character"),
    ("version: STSv1\nmode: enforce\nmx: *.*.a.test\nmax_age: 1\n", "not a host name"),
    ("version: STSv1\nmode: enforce\nmx: mx*.a.test\nmax_age: 1\n", "not a host name"),
    ("version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", "not a host name"),
    ("version: STSv1\nmode: enforce\nmx: *.\nmax_age: 1\n", "not a host name"),
    ("version: STSv1\nmode: enforce\nmx: [127.0.0.1]\nmax_age: 1\n", "not a host name"),
    ("version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n", "mx 'a..test'"),
    ("version: STSv1\nmode: enforce\nmx: a_b.test\nmax_age: 1\n", "mx 'a_b.test'"),
    ("version: STSv1\nmode: enforce\nmx: a.test b.test\nmax_age: 1\n", "mx 'a.test b.test'"),
    ("version: STSv1\nmode: enforce\nmx:\nmax_age: 1\n", "not a host name"),
])
def test_policy_malformed(text: str, complaint: str) -> None:
    with pytest.raises(MtaStsSyntaxError, match=complaint):
        parse_policy(text)


def test_policy_size_limit_and_encoding() -> None:
    padding = "x-pad: " + "p" * 200 + "\n"
    big = "version: STSv1\nmode: none\nmax_age: 1\n" + padding * 400
    assert len(big) > DEFAULT_MAX_POLICY_SIZE
    with pytest.raises(MtaStsSyntaxError, match=f"larger than {DEFAULT_MAX_POLICY_SIZE}"):
        parse_policy(big)
    assert parse_policy(big, max_size=len(big)).mode == "none"
    with pytest.raises(MtaStsSyntaxError, match="not UTF-8"):
        parse_policy(b"version: STSv1\nmode: none\nmax_age: 1\nx: \xff\n")


@pytest.mark.parametrize("host, allowed", [
    ("mail.example.com", True),
    ("MAIL.Example.Com.", True),  # case and the trailing dot of a DNS name do not matter
    ("backupmx.example.com", True),
    ("a.example.net", True),  # wildcard: exactly one leftmost label (§4.1)
    ("example.net", False),
    ("a.b.example.net", False),
    ("xexample.net", False),
    ("mail.example.com.evil", False),
    ("evil-mail.example.com", False),
    ("[127.0.0.1]", False),
    ("not a host", False),
    ("", False),
])
def test_policy_matches(host: str, allowed: bool) -> None:
    assert parse_policy(RFC_EXAMPLE).matches(host) is allowed


_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_host = st.lists(_label, min_size=2, max_size=4).map(".".join)


@settings(max_examples=200, deadline=None)
@given(mode=st.sampled_from(["enforce", "testing", "none"]),
       mx=st.lists(st.tuples(st.booleans(), _host), min_size=1, max_size=5),
       max_age=st.integers(0, MAX_AGE_LIMIT), crlf=st.booleans(),
       order=st.randoms(use_true_random=False))
def test_policy_round_trip(mode, mx, max_age, crlf, order) -> None:
    patterns = [("*." if wild else "") + host for wild, host in mx]
    lines = ["version: STSv1", f"mode: {mode}", f"max_age: {max_age}"]
    lines += [f"mx: {p}" for p in patterns]
    order.shuffle(lines)
    policy = parse_policy(("\r\n" if crlf else "\n").join(lines))
    assert (policy.mode, policy.max_age) == (mode, max_age)
    assert sorted(policy.mx) == sorted(set(patterns))
    for wild, host in mx:
        assert policy.matches(("sub." if wild else "") + host.upper())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(
    alphabet="version:STSv1 mode:enforce testing none mx:*.a.b max_age:0123\r\n", max_size=200))
def test_policy_fuzz_only_syntax_errors(data) -> None:
    try:
        policy = parse_policy(data)
    except MtaStsSyntaxError:
        return
    assert policy.version == "STSv1" and policy.mode in ("enforce", "testing", "none")
    assert 0 <= policy.max_age <= MAX_AGE_LIMIT


# == §4, §5: what a decision means for one MX ===============================================

def _decision(mode: str) -> PolicyDecision:
    text = f"version: STSv1\nmode: {mode}\nmx: mx1.example.com\nmx: *.example.org\nmax_age: 9\n"
    policy = parse_policy(text)
    return PolicyDecision(policy.mode, policy, "fetched")


def test_tls_for_mx_enforce() -> None:
    listed = tls_for_mx(_decision("enforce"), "mx1.example.com")
    assert (listed.allowed, listed.require_verified_tls, listed.report_failures) == (
        True, True, False)
    assert listed.reason is None
    assert tls_for_mx(_decision("enforce"), "b.example.org").require_verified_tls
    # §4.2: a host the policy does not list is never used, TLS or not.
    other = tls_for_mx(_decision("enforce"), "mx.attacker.example")
    assert (other.allowed, other.require_verified_tls) == (False, False)
    assert other.reason and "mx.attacker.example" in other.reason


def test_tls_for_mx_testing_delivers_and_reports() -> None:
    for host in ("mx1.example.com", "mx.attacker.example"):
        result = tls_for_mx(_decision("testing"), host)
        assert (result.allowed, result.require_verified_tls, result.report_failures) == (
            True, False, True)
    assert tls_for_mx(_decision("testing"), "mx.attacker.example").reason is not None
    assert tls_for_mx(_decision("testing"), "mx1.example.com").reason is None


def test_tls_for_mx_none_and_no_policy_change_nothing() -> None:
    no_policy = PolicyDecision("none", None, "none", "TXT lookup failed")
    for decision in (_decision("none"), no_policy):
        assert tuple(tls_for_mx(decision, "anything.example")) == (True, False, False, None)


# == The resolver against local DNS and HTTPS ===============================================

ZONE = "mtasts.test"
LABELS = ("good", "vanishing", "nothing", "twice", "othertxt", "split", "noaddr", "alias")


def _zone_v1() -> str:
    lines = []
    for label in LABELS:
        if label != "noaddr":
            lines.append(f"mta-sts.{label} A 127.0.0.1")
    for label in ("good", "vanishing", "noaddr"):
        lines.append(f'_mta-sts.{label} TXT "v=STSv1; id=1"')
    lines.append('_mta-sts.twice TXT "v=STSv1; id=1"')
    lines.append('_mta-sts.twice TXT "v=STSv1; id=2"')
    lines.append('_mta-sts.othertxt TXT "v=spf1 -all"')
    # §3.1: the strings of one record are joined without spaces.
    lines.append('_mta-sts.split TXT "v=STSv1; " "id=20" "24"')
    # §3.1: senders follow a CNAME at _mta-sts (here to another domain's record).
    lines.append("_mta-sts.alias CNAME _mta-sts.split")
    return "\n".join(lines)


def _zone_v2() -> str:
    """The same domains later: good has a new id, vanishing removed its record."""
    lines = [f"mta-sts.{label} A 127.0.0.1" for label in ("good", "vanishing")]
    lines.append('_mta-sts.good TXT "v=STSv1; id=2"')
    return "\n".join(lines)


FLAKY_V1 = 'mta-sts A 127.0.0.1\n_mta-sts TXT "v=STSv1; id=1"'


def _domain(label: str) -> str:
    return f"{label}.{ZONE}"


def _policy(mode: str = "enforce", domain: str = "good.mtasts.test",
            max_age: int = 86400) -> bytes:
    return (f"version: STSv1\r\nmode: {mode}\r\nmx: mx1.{domain}\r\nmx: *.mx.{domain}\r\n"
            f"max_age: {max_age}\r\n").encode()


class Clock:
    """An injectable time.time that tests move forward by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class PKI:
    def __init__(self, root: Path) -> None:
        self.ca = TestCA.create(root / "ca")
        names = [f"mta-sts.{_domain(label)}" for label in LABELS] + ["mta-sts.flaky.test"]
        self.good = self.ca.issue(names, stem="good")
        self.expired = self.ca.issue(names, stem="expired", expired=True)
        self.wrong_host = self.ca.issue(["mta-sts.elsewhere.test"], stem="wrong-host")
        self.other_ca = TestCA.create(root / "other-ca", name="Someone Else's CA")
        self.untrusted = self.other_ca.issue(names, stem="untrusted")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def dns_v1():
    with ThrowawayDNS([Zone(ZONE, _zone_v1()), Zone("flaky.test", FLAKY_V1)]) as server:
        yield server


@pytest.fixture(scope="module")
def dns_v2():
    # flaky.test is now a broken delegation: every lookup below it is SERVFAIL.
    with ThrowawayDNS([Zone(ZONE, _zone_v2())], lame_zones=["flaky.test"]) as server:
        yield server


def _point_at(resolver: dns.asyncresolver.Resolver, server: ThrowawayDNS) -> None:
    """Make ``resolver`` ask ``server``: the DNS as the world sees it has changed."""
    resolver.nameservers = [dns.nameserver.Do53Nameserver(*server.resolver_address)]


@pytest.fixture
def resolver(dns_v1) -> dns.asyncresolver.Resolver:
    """The resolver delivery uses (mailkeep.outbound.dns), asking the local Unbound."""
    host, port = dns_v1.resolver_address
    return make_resolver([host], port, timeout=5.0)


async def _https(cert: IssuedCert, body: bytes | None = None, **reply) -> LocalHTTPS:
    server = LocalHTTPS(cert)
    await server.start()
    server.serve(PATH, Reply(body=_policy() if body is None else body, **reply))
    return server


@pytest.fixture
async def https(pki):
    server = await _https(pki.good)
    yield server
    await server.stop()


def _sts(resolver, cache_dir: Path, server: LocalHTTPS, pki: PKI, **kw) -> MtaStsResolver:
    return MtaStsResolver(resolver, cache_dir, https_port=server.port,
                          ca_file=str(pki.ca.ca_file), **kw)


GOOD = _domain("good")


async def test_fetch_then_cache(resolver, https, pki, tmp_path) -> None:
    sts = _sts(resolver, tmp_path, https, pki)
    first = await sts.policy_for(GOOD)
    assert (first.mode, first.source, first.error) == ("enforce", "fetched", None)
    assert first.policy is not None and first.policy.mx == (f"mx1.{GOOD}", f"*.mx.{GOOD}")
    # The request went to the right host, by name, with SNI, for the right path; the
    # host name was resolved through our DNS (no /etc/hosts entry exists for it).
    (request,) = https.requests
    assert (request.method, request.host, request.path) == ("GET", f"mta-sts.{GOOD}", PATH)
    assert request.sni == f"mta-sts.{GOOD}"
    assert "Cookie" not in request.headers
    second = await sts.policy_for(GOOD.upper() + ".")
    assert (second.mode, second.source, second.policy) == ("enforce", "cache", first.policy)
    assert https.count() == 1
    cached = json.loads((tmp_path / f"{GOOD}.json").read_text())
    assert cached["record_id"] == "1" and cached["policy"] == _policy().decode()


async def test_cache_survives_restart(resolver, https, pki, tmp_path) -> None:
    await _sts(resolver, tmp_path, https, pki).policy_for(GOOD)
    restarted = _sts(resolver, tmp_path, https, pki)
    decision = await restarted.policy_for(GOOD)
    assert (decision.mode, decision.source) == ("enforce", "cache")
    assert https.count() == 1


async def test_new_record_id_refetches(resolver, https, pki, tmp_path, dns_v2) -> None:
    sts = _sts(resolver, tmp_path, https, pki)
    assert (await sts.policy_for(GOOD)).mode == "enforce"
    https.serve(PATH, Reply(body=_policy("testing")))
    assert (await sts.policy_for(GOOD)).source == "cache"  # same id: the cache answers
    _point_at(resolver, dns_v2)  # the domain publishes id=2
    decision = await sts.policy_for(GOOD)
    assert (decision.mode, decision.source) == ("testing", "fetched")
    assert https.count() == 2
    assert json.loads((tmp_path / f"{GOOD}.json").read_text())["record_id"] == "2"


async def test_max_age_expiry(resolver, https, pki, tmp_path) -> None:
    clock = Clock()
    https.serve(PATH, Reply(body=_policy(max_age=3600)))
    sts = _sts(resolver, tmp_path, https, pki, now=clock, refresh_after=None)
    assert (await sts.policy_for(GOOD)).source == "fetched"
    clock.now += 3599
    assert (await sts.policy_for(GOOD)).source == "cache"
    clock.now += 1  # max_age seconds after the fetch: expired (§3.2)
    assert (await sts.policy_for(GOOD)).source == "fetched"
    assert https.count() == 2
    # An expired policy is not a fallback: with the policy host gone, there is none.
    clock.now += 3600
    https.serve(PATH, Reply(status=503))
    decision = await sts.policy_for(GOOD)
    assert (decision.mode, decision.policy, decision.source) == ("none", None, "none")
    assert decision.error and "503" in decision.error


async def test_proactive_refresh(resolver, https, pki, tmp_path) -> None:
    clock = Clock()
    sts = _sts(resolver, tmp_path, https, pki, now=clock, refresh_after=600)
    await sts.policy_for(GOOD)
    https.serve(PATH, Reply(body=_policy("testing")))
    clock.now += 601
    decision = await sts.policy_for(GOOD)  # answered from the cache at once...
    assert (decision.mode, decision.source) == ("enforce", "cache")
    await sts.wait_for_refreshes()  # ...while a refresh runs in the background
    assert https.count() == 2
    assert (await sts.policy_for(GOOD)).mode == "testing"
    await sts.aclose()


async def test_failed_fetch_keeps_cached_policy(resolver, https, pki, tmp_path,
                                                dns_v2) -> None:
    sts = _sts(resolver, tmp_path, https, pki)
    await sts.policy_for(GOOD)
    _point_at(resolver, dns_v2)
    https.serve(PATH, Reply(status=500, body=b"oops"))
    decision = await sts.policy_for(GOOD)  # §3.3: the cached policy still applies
    assert (decision.mode, decision.source) == ("enforce", "cache")
    assert decision.error and "HTTP status 500" in decision.error


@pytest.mark.parametrize("cert_name, complaint", [
    ("expired", "certificate has expired"),
    ("untrusted", "certificate verify failed"),
    ("wrong_host", "Hostname mismatch"),
])
async def test_invalid_certificate_means_no_policy(resolver, pki, tmp_path, dns_v2,
                                                   cert_name, complaint) -> None:
    server = await _https(getattr(pki, cert_name))
    try:
        sts = _sts(resolver, tmp_path, server, pki)
        decision = await sts.policy_for(GOOD)
        assert (decision.mode, decision.policy, decision.source) == ("none", None, "none")
        assert decision.error and "certificate" in decision.error
        assert complaint in decision.error
        assert server.count() == 0  # the TLS handshake failed: no request was sent
    finally:
        await server.stop()


async def test_invalid_certificate_keeps_cached_policy(resolver, https, pki, tmp_path,
                                                       dns_v2) -> None:
    await _sts(resolver, tmp_path, https, pki).policy_for(GOOD)
    impostor = await _https(pki.untrusted, _policy("none"))
    try:
        _point_at(resolver, dns_v2)  # a new id makes the sender fetch from the impostor
        decision = await _sts(resolver, tmp_path, impostor, pki).policy_for(GOOD)
        assert (decision.mode, decision.source) == ("enforce", "cache")
        assert decision.error and "certificate" in decision.error
    finally:
        await impostor.stop()


@pytest.mark.parametrize("reply, complaint", [
    (Reply(status=404, body=b"no"), "HTTP status 404"),
    (Reply(status=204), "HTTP status 204"),
    (Reply(content_type="text/html"), "'text/html' is not text/plain"),
    (Reply(content_type=None), "'application/octet-stream' is not text/plain"),
    (Reply(body=b"version: STSv1\nmode: enforce\nmax_age: 60\n"), "at least one mx"),
    (Reply(body=b"<html>hello</html>"), "no ':'"),
    (Reply(body=b"version: STSv1\nmode: none\nmax_age: 1\nx: \xff\n"), "not UTF-8"),
])
async def test_bad_answers_mean_no_policy(resolver, https, pki, tmp_path, reply,
                                          complaint) -> None:
    if reply.body == b"" and reply.status == 200:
        reply.body = _policy()
    https.serve(PATH, reply)
    decision = await _sts(resolver, tmp_path, https, pki).policy_for(GOOD)
    assert (decision.mode, decision.policy, decision.source) == ("none", None, "none")
    assert decision.error and complaint in decision.error
    assert not (tmp_path / f"{GOOD}.json").exists()


async def test_redirect_not_followed(resolver, https, pki, tmp_path) -> None:
    https.serve(PATH, Reply(status=301, redirect_to="/elsewhere.txt"))
    https.serve("/elsewhere.txt", Reply(body=_policy()))
    decision = await _sts(resolver, tmp_path, https, pki).policy_for(GOOD)
    assert (decision.mode, decision.source) == ("none", "none")
    assert decision.error and "301" in decision.error and "not followed" in decision.error
    assert https.count("/elsewhere.txt") == 0


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_policy_refused(resolver, https, pki, tmp_path, chunked) -> None:
    body = _policy() + b"x-pad: " + b"p" * DEFAULT_MAX_POLICY_SIZE + b"\n"
    https.serve(PATH, Reply(body=body, chunked=chunked, chunk_size=8192))
    decision = await _sts(resolver, tmp_path, https, pki).policy_for(GOOD)
    assert decision.source == "none"
    assert decision.error and f"limit of {DEFAULT_MAX_POLICY_SIZE} bytes" in decision.error
    # The limit is a setting: a smaller one refuses even the ordinary policy.
    https.serve(PATH, Reply(body=_policy()))
    small = await _sts(resolver, tmp_path, https, pki, max_policy_size=50).policy_for(GOOD)
    assert small.error and "limit of 50 bytes" in small.error


@pytest.mark.parametrize("reply", [
    Reply(delay=5.0),  # no headers
    Reply(chunk_delay=0.2, chunk_size=4),  # headers at once, then a trickle
])
async def test_slow_server_bounded_by_timeout(resolver, https, pki, tmp_path, reply) -> None:
    reply.body = _policy()
    https.serve(PATH, reply)
    sts = _sts(resolver, tmp_path, https, pki, fetch_timeout=0.5)
    started = time.monotonic()
    decision = await sts.policy_for(GOOD)
    assert time.monotonic() - started < 2.0
    assert decision.source == "none"
    assert decision.error and "within 0.5s" in decision.error


async def test_failed_fetch_not_retried_for_five_minutes(resolver, https, pki,
                                                         tmp_path) -> None:
    clock = Clock()
    https.serve(PATH, Reply(status=404))
    sts = _sts(resolver, tmp_path, https, pki, now=clock)
    assert (await sts.policy_for(GOOD)).source == "none"
    clock.now += 299
    again = await sts.policy_for(GOOD)
    assert again.error and "not retried" in again.error and "404" in again.error
    assert https.count() == 1  # §3.3: at most one attempt per five minutes per id
    https.serve(PATH, Reply(body=_policy()))
    clock.now += 1
    assert (await sts.policy_for(GOOD)).source == "fetched"
    assert https.count() == 2


async def test_concurrent_callers_share_one_fetch(resolver, https, pki, tmp_path) -> None:
    https.serve(PATH, Reply(body=_policy(), delay=0.3))
    sts = _sts(resolver, tmp_path, https, pki)
    decisions = await asyncio.gather(*(sts.policy_for(GOOD) for _ in range(20)))
    assert {d.mode for d in decisions} == {"enforce"}
    assert https.count() == 1


async def test_mode_none_is_cached(resolver, https, pki, tmp_path) -> None:
    https.serve(PATH, Reply(body=_policy("none")))
    sts = _sts(resolver, tmp_path, https, pki)
    first = await sts.policy_for(GOOD)
    assert (first.mode, first.source) == ("none", "fetched") and first.policy is not None
    assert tls_for_mx(first, "any.mx.example").allowed
    assert (await sts.policy_for(GOOD)).source == "cache"
    assert https.count() == 1


async def test_record_problems(resolver, https, pki, tmp_path) -> None:
    sts = _sts(resolver, tmp_path, https, pki)
    for label, error in (("nothing", None), ("othertxt", None),
                         ("twice", "2 TXT records start with v=STSv1")):
        decision = await sts.policy_for(_domain(label))
        assert (decision.mode, decision.source) == ("none", "none"), label
        assert decision.error == error or (error and error in (decision.error or "")), label
    assert https.count() == 0  # without a valid record nothing is fetched
    split = await sts.policy_for(_domain("split"))
    assert split.source == "fetched"
    assert json.loads((tmp_path / "split.mtasts.test.json").read_text())["record_id"] == "2024"
    alias = await sts.policy_for(_domain("alias"))
    assert alias.source == "fetched"  # from mta-sts.alias.mtasts.test, its own policy host
    assert https.count(host="mta-sts.alias.mtasts.test") == 1
    assert json.loads((tmp_path / "alias.mtasts.test.json").read_text())["record_id"] == "2024"


async def test_policy_host_without_address(resolver, https, pki, tmp_path) -> None:
    decision = await _sts(resolver, tmp_path, https, pki).policy_for(_domain("noaddr"))
    assert decision.source == "none"
    assert decision.error and "cannot resolve mta-sts.noaddr.mtasts.test" in decision.error


async def test_record_removed_keeps_cached_policy(resolver, https, pki, tmp_path,
                                                  dns_v2) -> None:
    sts = _sts(resolver, tmp_path, https, pki)
    vanishing = _domain("vanishing")
    assert (await sts.policy_for(vanishing)).source == "fetched"
    _point_at(resolver, dns_v2)
    # §3.1: a record that disappeared does not remove a cached, unexpired policy.
    decision = await sts.policy_for(vanishing)
    assert (decision.mode, decision.source, decision.error) == ("enforce", "cache", None)


async def test_dns_failure(resolver, https, pki, tmp_path, dns_v2) -> None:
    sts = _sts(resolver, tmp_path, https, pki)
    assert (await sts.policy_for("flaky.test")).source == "fetched"
    _point_at(resolver, dns_v2)
    kept = await sts.policy_for("flaky.test")
    assert (kept.mode, kept.source) == ("enforce", "cache")
    assert kept.error and "SERVFAIL" in kept.error
    fresh = await _sts(resolver, tmp_path / "empty", https, pki).policy_for("flaky.test")
    assert (fresh.mode, fresh.source) == ("none", "none")
    assert fresh.error and "TXT lookup of _mta-sts.flaky.test failed" in fresh.error


async def test_corrupt_cache_file_ignored(resolver, https, pki, tmp_path) -> None:
    (tmp_path / f"{GOOD}.json").write_text('{"format": 1, "domain": "good.mtas')
    decision = await _sts(resolver, tmp_path, https, pki).policy_for(GOOD)
    assert decision.source == "fetched"
    assert json.loads((tmp_path / f"{GOOD}.json").read_text())["record_id"] == "1"


@pytest.mark.parametrize("domain", ["", "bad domain", "a..b", "-x.test", "x" * 300])
async def test_bad_domain_is_an_answer_not_a_crash(resolver, https, pki, tmp_path,
                                                   domain) -> None:
    decision = await _sts(resolver, tmp_path, https, pki).policy_for(domain)
    assert (decision.mode, decision.source) == ("none", "none")
    assert decision.error and "not a domain name" in decision.error
    assert list(tmp_path.iterdir()) == []


async def test_content_type_parameters_accepted(resolver, https, pki, tmp_path) -> None:
    https.serve(PATH, Reply(body=_policy(), content_type="text/plain; charset=utf-8"))
    assert (await _sts(resolver, tmp_path, https, pki).policy_for(GOOD)).source == "fetched"


async def test_cache_write_failure_still_applies_policy(resolver, https, pki, tmp_path,
                                                        caplog) -> None:
    (tmp_path / f"{GOOD}.json").mkdir()  # the cache file cannot be read nor replaced
    sts = _sts(resolver, tmp_path, https, pki)
    decision = await sts.policy_for(GOOD)
    assert (decision.mode, decision.source) == ("enforce", "fetched")
    assert "MTA-STS cache write failed" in caplog.text
    assert (await sts.policy_for(GOOD)).source == "cache"  # kept in memory meanwhile
    assert https.count() == 1


async def test_memory_limit_falls_back_to_disk(resolver, https, pki, tmp_path) -> None:
    sts = _sts(resolver, tmp_path, https, pki, memory_entries=1)
    for _ in range(2):
        for domain in (GOOD, _domain("split"), _domain("nothing")):
            await sts.policy_for(domain)
    assert https.count() == 2  # good and split once each, however often evicted
    assert (await sts.policy_for(GOOD)).source == "cache"


async def test_prune_cache(resolver, https, pki, tmp_path) -> None:
    clock = Clock()
    sts = _sts(resolver, tmp_path, https, pki, now=clock)
    https.serve(PATH, Reply(body=_policy(max_age=100)), host=f"mta-sts.{GOOD}")
    await sts.policy_for(GOOD)
    await sts.policy_for(_domain("split"))  # the default policy: max_age 86400
    (tmp_path / "junk.json").write_text("not json")
    assert sts.prune_cache() == 1  # only the junk
    clock.now += 100
    assert sts.prune_cache() == 1  # good's policy has expired
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["split.mtasts.test.json"]


async def test_long_domain_names(resolver, https, pki, tmp_path) -> None:
    long_domain = ".".join(["a" * 60] * 3) + "." + ZONE  # 194 + 12 characters
    decision = await _sts(resolver, tmp_path, https, pki).policy_for(long_domain)
    assert (decision.mode, decision.source, decision.error) == ("none", "none", None)
