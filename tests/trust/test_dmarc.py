"""DMARC (RFC 7489): record parsing, policy discovery against real DNS (NSD + a validating
Unbound), alignment, evaluation with pct sampling, and From header edge cases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.dns import ThrowawayDNS, Zone

from mailkeep.outbound.dns import make_resolver
from mailkeep.trust.dmarc import (
    MAX_AUTHOR_DOMAINS,
    MAX_REPORT_URIS,
    DiscoveryStatus,
    DmarcResult,
    Policy,
    PolicyDiscovery,
    aligned,
    author_domains,
    check_message,
    combine,
    discover_policy,
    evaluate,
    is_dmarc_record,
    organizational_domain,
    parse_record,
)

DMARC_ZONE = """
_dmarc          TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:agg@dmarc.test!10m; ruf=mailto:forensic@dmarc.test"
_dmarc.own      TXT "v=DMARC1; p=none"
_dmarc.multi    TXT "v=DMARC1; p=none"
_dmarc.multi    TXT "v=DMARC1; p=reject"
_dmarc.junk     TXT "v=spf1 -all"
_dmarc.junk     TXT "some verification token"
_dmarc.bad      TXT "v=DMARC1; p=bogus"
_dmarc.badrua   TXT "v=DMARC1; p=bogus; rua=mailto:reports@dmarc.test"
_dmarc.split    TXT "v=DMARC1; " "p=reject; adkim=s"
_dmarc.pct      TXT "v=DMARC1; p=reject; pct=30"
_dmarc.strict   TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
_dmarc.lamepolicy CNAME _dmarc.x.lame.test.
"""
# A registered domain below a two-label public suffix (co.uk is on the PSL).
CO_UK_ZONE = """
_dmarc  TXT "v=DMARC1; p=quarantine"
"""


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS([Zone("dmarc.test", DMARC_ZONE, signed=True),
                       Zone("example.co.uk", CO_UK_ZONE),
                       Zone("nopolicy.test", "www A 127.0.0.1")],
                      lame_zones=["lame.test"]) as server:
        yield server


@pytest.fixture(scope="module")
def resolver(dns_server: ThrowawayDNS):
    host, port = dns_server.resolver_address
    return make_resolver([host], port, timeout=5.0)


# -- records -------------------------------------------------------------------------------

def test_record_with_every_tag() -> None:
    record = parse_record("v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=r; pct=25; "
                          "fo=1:d; rf=afrf; ri=3600; "
                          "rua=mailto:agg@example.com!10m, mailto:dmarc%21reports@Example.NET; "
                          "ruf=mailto:ruf@example.com!512k")
    assert record.usable and record.warnings == ()
    assert (record.policy, record.subdomain_policy) == (Policy.REJECT, Policy.QUARANTINE)
    assert (record.adkim, record.aspf, record.pct, record.ri) == ("s", "r", 25, 3600)
    assert record.fo == ("1", "d") and record.rf == ("afrf",)
    assert [(u.address, u.max_bytes) for u in record.rua] == \
        [("agg@example.com", 10 * 2**20), ("dmarc!reports@example.net", None)]
    assert [(u.address, u.max_bytes) for u in record.ruf] == [("ruf@example.com", 512 * 1024)]


def test_record_defaults_and_case() -> None:
    record = parse_record("V = DMARC1 ;P=Quarantine;")
    assert record.usable and record.policy == Policy.QUARANTINE
    assert record.subdomain_policy is None and record.policy_for(subdomain=True) == "quarantine"
    assert (record.adkim, record.aspf, record.pct, record.fo, record.ri) == \
        ("r", "r", 100, ("0",), 86400)


def test_version_must_come_first_and_be_exact() -> None:
    for text in ("p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=dmarc1; p=reject",
                 "v=spf1 -all", "", "   "):
        record = parse_record(text)
        assert not record.usable and "not a DMARC record" in (record.problem or "")
        assert not is_dmarc_record(text)
    assert is_dmarc_record("v=DMARC1") and is_dmarc_record(b"v = DMARC1; p=none")


def test_invalid_optional_values_fall_back_to_defaults() -> None:
    record = parse_record("v=DMARC1; p=reject; adkim=x; aspf=; pct=101; fo=2; rf=iodef; "
                          "ri=-5; unknown=tag; junk; p=none")
    assert record.usable and record.policy == Policy.REJECT  # the first p= counts
    assert (record.adkim, record.aspf, record.pct, record.fo, record.rf, record.ri) == \
        ("r", "r", 100, ("0",), ("afrf",), 86400)
    assert len(record.warnings) == 8
    assert any("repeated tag p=" in w for w in record.warnings)


def test_missing_or_invalid_policy() -> None:
    # §6.6.3 step 6: an invalid p= (or sp=) with a valid rua= acts as p=none ...
    for text in ("v=DMARC1; rua=mailto:r@example.com", "v=DMARC1; p=nope; rua=mailto:r@example.com",
                 "v=DMARC1; p=reject; sp=nope; rua=mailto:r@example.com"):
        record = parse_record(text)
        assert record.usable and record.policy == Policy.NONE, text
        assert record.subdomain_policy is None and record.rua
    # ... and without one, DMARC is not applied.
    for text in ("v=DMARC1", "v=DMARC1; p=nope", "v=DMARC1; p=reject; sp=nope",
                 "v=DMARC1; p=nope; rua=bogus"):
        record = parse_record(text)
        assert not record.usable and record.policy is None and record.problem, text


def test_report_uris_are_bounded_and_checked() -> None:
    many = ", ".join(f"mailto:r{i}@example.com" for i in range(MAX_REPORT_URIS + 3))
    record = parse_record(f"v=DMARC1; p=none; rua={many}; ruf=mailto:x@example.com!12q, "
                          "mailto:x@example.com!9999999999999999, mailto:nobody, "
                          "https://example.com/report, mailto:x@[192.0.2.1]")
    assert len(record.rua) == MAX_REPORT_URIS
    assert [(u.uri, u.address) for u in record.ruf] == [("https://example.com/report", None)]
    assert len(record.warnings) == 5


def test_oversized_record_is_refused() -> None:
    record = parse_record("v=DMARC1; p=reject; rua=" + "mailto:a@example.com," * 400)
    assert not record.usable and "longer than" in (record.problem or "")


_TAGS = {
    "p": st.sampled_from(["none", "quarantine", "reject", "NONE", "Reject"]),
    "sp": st.sampled_from(["none", "quarantine", "reject"]),
    "adkim": st.sampled_from(["r", "s", "S"]),
    "aspf": st.sampled_from(["r", "s", "R"]),
    "pct": st.integers(0, 100).map(str),
    "ri": st.integers(0, 2**32 - 1).map(str),
    "fo": st.lists(st.sampled_from("01ds"), min_size=1, max_size=4).map(":".join),
    "rua": st.lists(st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.example", fullmatch=True),
                    min_size=1, max_size=3).map(lambda a: ",".join("mailto:" + x for x in a)),
}


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional=_TAGS), st.randoms(use_true_random=False),
       st.sampled_from(["", " ", "\t"]))
def test_record_round_trip(tags: dict[str, str], rnd, space: str) -> None:
    tags.setdefault("p", "none")
    items = list(tags.items())
    rnd.shuffle(items)
    text = f"v{space}={space}DMARC1" + "".join(f";{space}{k}{space}={space}{v}" for k, v in items)
    record = parse_record(text)
    assert record.usable and record.warnings == ()
    assert record.policy == tags["p"].lower()
    assert record.subdomain_policy == tags.get("sp")
    assert record.adkim == tags.get("adkim", "r").lower()
    assert record.aspf == tags.get("aspf", "r").lower()
    assert record.pct == int(tags.get("pct", "100"))
    assert record.ri == int(tags.get("ri", "86400"))
    assert record.fo == tuple(tags.get("fo", "0").split(":"))
    expected_rua = tags["rua"].replace("mailto:", "").split(",") if "rua" in tags else []
    assert [u.address for u in record.rua] == expected_rua


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(["v=DMARC1", "p=reject", "sp=", "pct=", "rua=",
                                           "mailto:", "!", "10m", ",", "=", "%", "%ff", "@",
                                           "fo=1:", "ri=99999999999", "\x00", "é"]),
                          max_size=12).map(lambda parts: ";".join(parts))))
def test_record_parser_never_raises(text: str) -> None:
    record = parse_record(text)
    assert record.usable == (record.problem is None and record.policy is not None)
    assert parse_record(text.encode("utf-8", "surrogatepass")).text is not None


# -- organizational domains and alignment ----------------------------------------------------

def test_organizational_domains_from_the_public_suffix_list() -> None:
    assert organizational_domain("mail.example.com") == "example.com"
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("co.uk") == "co.uk"  # a public suffix is its own
    assert organizational_domain("user.github.io") == "user.github.io"  # private section
    assert organizational_domain("Mail.Example.COM.") == "example.com"


def test_alignment_modes() -> None:
    assert aligned("example.com", "example.com", "s")
    assert aligned("EXAMPLE.com.", "example.com", "s")
    assert not aligned("mail.example.com", "example.com", "s")
    assert aligned("mail.example.com", "example.com", "r")
    assert aligned("bounce.example.com", "news.example.com", "r")
    assert not aligned("example.net", "example.com", "r")
    assert not aligned("other.co.uk", "example.co.uk", "r")  # only the suffix in common
    assert not aligned("alice.github.io", "bob.github.io", "r")
    assert not aligned("", "example.com", "r") and not aligned("[192.0.2.1]", "example.com", "r")
    assert aligned("xn--bcher-kva.example", "bücher.example", "s")


# -- discovery against DNS -------------------------------------------------------------------

async def test_policy_at_the_from_domain(resolver) -> None:
    found = await discover_policy("dmarc.test", resolver=resolver)
    assert found.status == DiscoveryStatus.FOUND and found.record_domain == "dmarc.test"
    assert found.record is not None and found.record.policy == Policy.REJECT
    assert [u.address for u in found.record.rua] == ["agg@dmarc.test"]
    assert found.record.rua[0].max_bytes == 10 * 2**20
    assert [u.address for u in found.record.ruf] == ["forensic@dmarc.test"]


async def test_subdomain_uses_its_own_record_or_the_organizational_one(resolver) -> None:
    own = await discover_policy("own.dmarc.test", resolver=resolver)
    assert own.status == "found" and own.record_domain == "own.dmarc.test"
    assert own.record is not None and own.record.policy == "none"
    # No _dmarc.deep.sub: the organizational domain's record applies (with its sp=).
    deep = await discover_policy("deep.sub.dmarc.test", resolver=resolver)
    assert deep.status == "found" and deep.record_domain == "dmarc.test"
    assert deep.organizational_domain == "dmarc.test"
    # Records that are not DMARC records are discarded, then the same fallback.
    junk = await discover_policy("junk.dmarc.test", resolver=resolver)
    assert junk.status == "found" and junk.record_domain == "dmarc.test"


async def test_public_suffix_list_finds_the_registered_domain(resolver) -> None:
    found = await discover_policy("mail.example.co.uk", resolver=resolver)
    assert found.status == "found" and found.record_domain == "example.co.uk"
    assert found.record is not None and found.record.policy == Policy.QUARANTINE


async def test_discovery_outcomes(resolver) -> None:
    multi = await discover_policy("multi.dmarc.test", resolver=resolver)
    assert multi.status == DiscoveryStatus.PERMERROR and "2 DMARC records" in multi.reason
    bad = await discover_policy("bad.dmarc.test", resolver=resolver)
    assert bad.status == "permerror" and "invalid p=bogus" in bad.reason
    badrua = await discover_policy("badrua.dmarc.test", resolver=resolver)
    assert badrua.status == "found" and badrua.record is not None
    assert badrua.record.policy == "none"
    split = await discover_policy("split.dmarc.test", resolver=resolver)
    assert split.status == "found" and split.record is not None
    assert (split.record.policy, split.record.adkim) == ("reject", "s")
    none = await discover_policy("www.nopolicy.test", resolver=resolver)
    assert none.status == DiscoveryStatus.NONE
    lame = await discover_policy("lame.test", resolver=resolver)
    assert lame.status == DiscoveryStatus.TEMPERROR and "lookup failed" in lame.reason
    via_cname = await discover_policy("lamepolicy.dmarc.test", resolver=resolver)
    assert via_cname.status == DiscoveryStatus.TEMPERROR
    literal = await discover_policy("[192.0.2.1]", resolver=resolver)
    assert literal.status == DiscoveryStatus.PERMERROR


# -- evaluation ------------------------------------------------------------------------------

def found(text: str, from_domain: str, record_domain: str | None = None) -> PolicyDiscovery:
    record_domain = record_domain or from_domain
    return PolicyDiscovery(DiscoveryStatus.FOUND, from_domain,
                           organizational_domain(from_domain), parse_record(text),
                           record_domain)


REJECT = "v=DMARC1; p=reject; sp=quarantine"


def test_aligned_spf_or_dkim_pass() -> None:
    policy = found(REJECT, "example.com")
    spf_only = evaluate("example.com", ("pass", "bounces.example.com"), [], policy)
    assert spf_only.result == "pass" and spf_only.spf_aligned and not spf_only.dkim_aligned
    assert spf_only.disposition == "none" and spf_only.policy == "reject"
    dkim_only = evaluate("example.com", ("fail", "example.com"),
                         [("fail", "example.com"), ("pass", "mail.example.com")], policy)
    assert dkim_only.result == "pass" and dkim_only.aligned_dkim_domains == ("mail.example.com",)


def test_unaligned_or_failing_results_fail() -> None:
    policy = found(REJECT, "example.com")
    result = evaluate("example.com", ("pass", "mailer.example.net"),
                      [("pass", "mailer.example.net"), ("fail", "example.com"),
                       ("neutral", "example.com")], policy)
    assert result.result == "fail" and result.disposition == "reject"
    assert not result.spf_aligned and not result.dkim_aligned
    assert "no aligned" in result.reason
    assert evaluate("example.com", None, [], policy).result == "fail"
    # softfail is not pass, whatever the domain
    assert evaluate("example.com", ("softfail", "example.com"), [], policy).result == "fail"


def test_strict_alignment() -> None:
    policy = found("v=DMARC1; p=reject; adkim=s; aspf=s", "example.com")
    sub = evaluate("example.com", ("pass", "mail.example.com"), [("pass", "mail.example.com")],
                   policy)
    assert sub.result == "fail"
    exact = evaluate("example.com", None, [("pass", "example.com")], policy)
    assert exact.result == "pass"


def test_subdomain_policy_applies_below_the_record() -> None:
    at_org = found(REJECT, "news.example.com", record_domain="example.com")
    result = evaluate("news.example.com", None, [], at_org)
    assert (result.result, result.policy, result.disposition) == ("fail", "quarantine",
                                                                   "quarantine")
    without_sp = found("v=DMARC1; p=reject", "news.example.com", record_domain="example.com")
    assert evaluate("news.example.com", None, [], without_sp).disposition == "reject"
    at_self = found(REJECT, "example.com")
    assert evaluate("example.com", None, [], at_self).disposition == "reject"


def test_pct_sampling_with_injected_random() -> None:
    policy = found("v=DMARC1; p=reject; pct=30", "example.com")
    chosen = evaluate("example.com", None, [], policy, random=lambda: 0.29)
    assert chosen.disposition == "reject" and not chosen.sampled_out
    spared = evaluate("example.com", None, [], policy, random=lambda: 0.30)
    assert (spared.result, spared.policy, spared.disposition) == ("fail", "reject",
                                                                  "quarantine")
    assert spared.sampled_out and "pct=30" in spared.reason
    quarantine = found("v=DMARC1; p=quarantine; pct=0", "example.com")
    assert evaluate("example.com", None, [], quarantine, random=lambda: 0.0).disposition == "none"

    calls = []

    def counting() -> float:
        calls.append(1)
        return 0.99

    # pct=100 and passing messages never draw a number.
    evaluate("example.com", None, [], found(REJECT, "example.com"), random=counting)
    evaluate("example.com", ("pass", "example.com"), [], policy, random=counting)
    assert calls == []
    # Over many messages, about pct percent get the full policy.
    import random as random_module
    source = random_module.Random(5)
    rejected = sum(evaluate("example.com", None, [], policy, random=source.random)
                   .disposition == "reject" for _ in range(2000))
    assert 500 < rejected < 700


def test_no_policy_and_errors() -> None:
    for status, expected in ((DiscoveryStatus.NONE, "none"),
                             (DiscoveryStatus.TEMPERROR, "temperror"),
                             (DiscoveryStatus.PERMERROR, "permerror")):
        outcome = evaluate("example.com", ("pass", "example.com"), [],
                           PolicyDiscovery(status, "example.com", reason="why"))
        assert outcome.result == expected and outcome.disposition == "none"
        assert outcome.spf_aligned and outcome.reasons[0] == "why"


# -- the From header and whole messages ------------------------------------------------------

def test_author_domains() -> None:
    assert author_domains(b"From: Alice <alice@Example.COM.>\r\nTo: x@y\r\n") == \
        author_domains(b"from:alice@example.com\r\n")
    single = author_domains(b"From: =?utf-8?q?A?= <a@b\xc3\xbccher.example> (c)\r\n")
    assert single.domains == ("xn--bcher-kva.example",) and single.problem is None
    multi = author_domains(b"From: a@one.example, b@two.example, c@one.example\r\n"
                           b"Sender: a@one.example\r\n")
    assert multi.domains == ("one.example", "two.example") and multi.problem is None
    assert author_domains(b"To: x@y.example\r\n").problem == \
        "no From header field (RFC 5322 §3.6)"
    two = author_domains(b"From: a@one.example\r\nFrom: b@two.example\r\n")
    assert two.domains == ("one.example", "two.example") and "2 From" in (two.problem or "")
    empty_group = author_domains(b"From: undisclosed:;\r\n")
    assert empty_group.domains == () and "without an address" in (empty_group.problem or "")
    literal = author_domains(b"From: a@[192.0.2.1]\r\n")
    assert literal.domains == () and "usable domain" in (literal.problem or "")
    folded = author_domains(b"From: Alice\r\n <alice@folded.example>\r\n\r\nFrom: body@x.y\r\n")
    assert folded.domains == ("folded.example",) and folded.problem is None


async def test_message_with_aligned_dkim_passes(resolver) -> None:
    header = b"From: ceo@dmarc.test\r\nSubject: x\r\n"
    result = await check_message(header, ("pass", "mailer.example.net"),
                                 [("pass", "dmarc.test")], resolver=resolver)
    assert result.result == "pass" and result.from_domain == "dmarc.test"
    assert not result.from_problem


async def test_spoofed_message_is_rejected(resolver) -> None:
    header = b"From: ceo@dmarc.test\r\n"
    result = await check_message(header, ("pass", "evil.example"), [("pass", "evil.example")],
                                 resolver=resolver)
    assert (result.result, result.disposition) == ("fail", "reject")
    sub = await check_message(b"From: it@helpdesk.dmarc.test\r\n", None, [], resolver=resolver)
    assert (sub.result, sub.policy, sub.disposition) == ("fail", "quarantine", "quarantine")


async def test_multiple_author_domains_take_the_strictest_failure(resolver) -> None:
    header = b"From: a@own.dmarc.test, b@dmarc.test, c@www.nopolicy.test\r\nSender: a@x.test\r\n"
    result = await check_message(header, None, [("pass", "own.dmarc.test")], resolver=resolver)
    # own.dmarc.test and (relaxed alignment: same organizational domain) dmarc.test pass;
    # nopolicy.test has no record: nothing fails.
    assert result.result == "pass"
    # split.dmarc.test asks for strict DKIM alignment: own.dmarc.test does not align.
    header = b"From: a@www.nopolicy.test, b@split.dmarc.test, c@own.dmarc.test\r\n"
    result = await check_message(header, None, [("pass", "own.dmarc.test")], resolver=resolver)
    assert (result.result, result.from_domain, result.disposition) == \
        ("fail", "split.dmarc.test", "reject")


async def test_malformed_from_never_hides_a_failing_domain(resolver) -> None:
    # A second From field, or an address without a domain, next to a spoofed one.
    for header in (b"From: friend@www.nopolicy.test\r\nFrom: ceo@dmarc.test\r\n",
                   b"From: nobody, ceo@dmarc.test\r\n"):
        result = await check_message(header, None, [], resolver=resolver)
        assert (result.result, result.disposition) == ("fail", "reject"), header
        assert result.from_problem and "From problem" in result.reason


async def test_messages_without_a_usable_author_domain(resolver) -> None:
    too_many = b"From: " + b", ".join(b"a@d%d.example" % i
                                       for i in range(MAX_AUTHOR_DOMAINS + 1)) + b"\r\n"
    for header in (b"Subject: no from\r\n", b"From: undisclosed:;\r\n",
                   b"From: a@[192.0.2.1]\r\n", too_many):
        result = await check_message(header, ("pass", "example.com"), [], resolver=resolver)
        assert result.result == "permerror" and result.from_problem, header
        assert result.disposition == "none"


def test_combine_order() -> None:
    def outcome(result: str, disposition: str = "none") -> DmarcResult:
        return DmarcResult(result=result, from_domain=f"{result}-{disposition}.example",
                           policy=Policy(disposition), disposition=Policy(disposition))
    parts = [outcome("pass"), outcome("fail", "quarantine"), outcome("temperror"),
             outcome("fail", "reject"), outcome("none")]
    assert combine(parts).from_domain == "fail-reject.example"
    assert combine(parts[:1] + parts[2:3]).result == "temperror"
    assert combine([outcome("none"), outcome("pass")]).result == "pass"
    with pytest.raises(ValueError):
        combine([])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_author_domains_never_raises(header: bytes) -> None:
    found_domains = author_domains(header)
    assert found_domains.domains or found_domains.problem


def test_check_message_on_hostile_header(resolver) -> None:
    header = b"From: " + b"(" * 5000 + b"a@dmarc.test\r\n" + b"From: \xff\xfe@\xff\r\n"
    result = asyncio.run(check_message(header, None, [], resolver=resolver))
    assert result.result in ("fail", "permerror") and result.from_problem
