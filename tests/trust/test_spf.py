"""SPF check_host() (RFC 7208) against real DNS: NSD serving the test zones, a validating
Unbound in front, dnspython asking Unbound, as in production. Nothing about DNS is mocked.

Client addresses come from the documentation ranges 192.0.2.0/24 and 2001:db8::/32.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dns.name
import dns.reversename
import pytest
from tests.support.dns import ThrowawayDNS, Zone

from mailkeep.outbound.dns import make_resolver
from mailkeep.trust.spf import (
    SpfLimits,
    SpfResult,
    SpfStatus,
    check_host,
    received_spf_header,
    spf_for_helo,
    spf_for_mail_from,
)

REV4 = "2.0.192.in-addr.arpa"
REV6 = "8.b.d.0.1.0.0.2.ip6.arpa"


def nibbles(address: str) -> str:
    """%{i} of an IPv6 address, written out by hand for the zone: 32 dotted nibbles."""
    reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
    return ".".join(reversed(reverse.removesuffix(".ip6.arpa").split(".")))


def rev6(address: str) -> str:
    """The owner name of ``address``'s PTR record relative to the REV6 zone."""
    name = dns.reversename.from_address(address)
    return name.relativize(dns.name.from_text(REV6)).to_text()


SPF_ZONE = """
ip          TXT "v=spf1 ip4:192.0.2.10 ip6:2001:db8:10::/48 -all"
case        TXT "V=SpF1 IP4:192.0.2.10 -ALL"
alias       CNAME ip
neutral     TXT "v=spf1 ip4:192.0.2.10"
split       TXT "v=spf1 ip4:192.0.2.10" " -all"
nospace     TXT "v=spf1" "ip4:192.0.2.10"
multi       TXT "v=spf1 -all"
multi       TXT "v=spf1 +all"
other-txt   TXT "v=spf1 ip4:192.0.2.10 -all"
other-txt   TXT "site-verification=abc123"
other-txt   TXT "v=spf10 +all"
malformed   TXT "v=spf1 ip4:192.0.2.10 -all moo"
badcidr     TXT "v=spf1 ip4:192.0.2.10/33 -all"
nospf       A 192.0.2.1

a           TXT "v=spf1 a/24//64 -all"
a           A 198.51.100.20
a           AAAA 2001:db8:20::1
aother      TXT "v=spf1 a:host.spf.test ~all"
host        A 192.0.2.21
host        A 192.0.2.22

mx          TXT "v=spf1 mx:mxhosts.spf.test/28 -all"
mxhosts     MX 10 mx1
mxhosts     MX 20 mx2
mx1         A 198.51.100.1
mx2         A 192.0.2.64
mx2         AAAA 2001:db8:64::1
mxself      TXT "v=spf1 mx//120 -all"
mxself      MX 10 mx2
mxnone      TXT "v=spf1 mx ?all"
mxnone      A 192.0.2.30
nullmx      TXT "v=spf1 mx -all"
nullmx      MX 0 .
manymx      TXT "v=spf1 mx -all"
""" + "".join(f"manymx MX {n} m{n}\nm{n} A 192.0.2.{n}\n" for n in range(1, 12)) + f"""
mxtemp      TXT "v=spf1 mx -all"
mxtemp      MX 10 host.lame.test.

inc         TXT "v=spf1 include:_spf.inc.spf.test -all"
_spf.inc    TXT "v=spf1 ip4:192.0.2.40 ~all"
incnone     TXT "v=spf1 include:nospf.spf.test -all"
inctemp     TXT "v=spf1 include:x.lame.test -all"
incperm     TXT "v=spf1 include:badcidr.spf.test -all"
loop        TXT "v=spf1 include:loop.spf.test -all"
incexp      TXT "v=spf1 include:_spf.incexp.spf.test -all exp=why.incexp.spf.test"
_spf.incexp TXT "v=spf1 -all exp=inner.incexp.spf.test"
why.incexp  TXT "outer explanation"
inner.incexp TXT "inner explanation must not be used"

redir       TXT "v=spf1 exp=orig.redir.spf.test redirect=_spf.redir.spf.test"
_spf.redir  TXT "v=spf1 ip4:192.0.2.50 -all exp=why.redir.spf.test"
why.redir   TXT "%{{d}} does not list %{{i}}"
orig.redir  TXT "the original exp= must not be used"
redirplain  TXT "v=spf1 exp=orig.redir.spf.test redirect=_spf.plain.spf.test"
_spf.plain  TXT "v=spf1 -all"
redirloop   TXT "v=spf1 redirect=redirloop.spf.test"
redirnone   TXT "v=spf1 redirect=nospf.spf.test"
redirall    TXT "v=spf1 ?all redirect=redirloop.spf.test"

macro-i     TXT "v=spf1 exists:%{{i}}._ip.spf.test -all"
192.0.2.60._ip A 127.0.0.2
{nibbles("2001:db8::60")}._ip A 127.0.0.2
macro-ir    TXT "v=spf1 exists:%{{ir}}.%{{v}}._rev.spf.test -all"
60.2.0.192.in-addr._rev A 127.0.0.2
{".".join(reversed(nibbles("2001:db8::60").split(".")))}.ip6._rev A 127.0.0.2
macro-l     TXT "v=spf1 exists:%{{l1r-}}.%{{d2}}._users.spf.test -all"
john.spf.test._users A 127.0.0.2
macro-d     TXT "v=spf1 include:_inc.macro-d.spf.test -all"
_inc.macro-d TXT "v=spf1 exists:%{{d}}._seen.%{{o}} -all"
_inc.macro-d.spf.test._seen.macro-d A 127.0.0.2
macro-h     TXT "v=spf1 exists:%{{h}}._helo.spf.test -all"
good.example._helo A 127.0.0.2
upper       TXT "v=spf1 -all exp=why.upper.spf.test"
why.upper   TXT "see https://spf.test/why?s=%{{S}}&l=%{{L}} from %{{c}} at %{{r}} %{{t}}"
pmacro      TXT "v=spf1 -all exp=why.pmacro.spf.test"
why.pmacro  TXT "connect from %{{p}}"
a.pmacro    A 192.0.2.70
a.pmacro    AAAA 2001:db8::70
mail.ptrhost A 192.0.2.70
m2.ptrhost  A 192.0.2.70
m3.ptrhost  A 192.0.2.70
m4.ptrhost  A 192.0.2.70
pexact      TXT "v=spf1 -all exp=why.pmacro.spf.test"
pexact      A 192.0.2.73
a.pexact    A 192.0.2.73
pexists     TXT "v=spf1 exists:%{{p}}._p.spf.test -all"
a.pexists   A 192.0.2.72
a.pexists.spf.test._p A 127.0.0.2

void        TXT "v=spf1 a:nx1.spf.test a:nx2.spf.test a:nx3.spf.test +all"
void2       TXT "v=spf1 a:nx1.spf.test mx:nospf.spf.test +all"
voidmacro   TXT "v=spf1 a:%{{l}}.spf.test a:%{{l}}.spf.test a:%{{l}}.spf.test +all"
exists      TXT "v=spf1 exists:%{{l}}._allow.spf.test -all"
alice._allow A 127.0.0.2
exists6     TXT "v=spf1 exists:%{{l}}._allow.spf.test -all"

ptr         TXT "v=spf1 ptr -all"
mail.ptr    A 192.0.2.80
mail.ptr    AAAA 2001:db8::80
mail2.ptr   A 192.0.2.99
ptrother    TXT "v=spf1 ptr:other.spf.test -all"
mail.other  A 192.0.2.82

limit10     TXT "v=spf1 a a a a a a a a a a ip4:192.0.2.90 -all"
limit10     A 198.51.100.90
limit11     TXT "v=spf1 a a a a a a a a a a a ip4:192.0.2.90 -all"
limit11     A 198.51.100.90

expfail     TXT "v=spf1 -all exp=why.expfail.spf.test"
why.expfail TXT "%{{l}} may not send from %{{i}} for %{{d}}"
expmulti    TXT "v=spf1 -all exp=twice.spf.test"
twice       TXT "one"
twice       TXT "two"
expbad      TXT "v=spf1 -all exp=badexp.spf.test"
badexp      TXT "The %{{x}}-files."
exptemp     TXT "v=spf1 -all exp=x.lame.test"
expsoft     TXT "v=spf1 ~all exp=why.expfail.spf.test"

atemp       TXT "v=spf1 a:x.lame.test -all"
mail.helo   TXT "v=spf1 a -all exp=why.helo.spf.test"
mail.helo   A 192.0.2.100
why.helo    TXT "%{{s}} via %{{h}}"
"""

REV4_ZONE = """
70  PTR mail.ptrhost.spf.test.
70  PTR a.pmacro.spf.test.
70  PTR m2.ptrhost.spf.test.
70  PTR m3.ptrhost.spf.test.
70  PTR m4.ptrhost.spf.test.
70  PTR nowhere.spf.test.
73  PTR a.pexact.spf.test.
73  PTR pexact.spf.test.
73  PTR m2.ptrhost.spf.test.
72  PTR a.pexists.spf.test.
80  PTR mail.ptr.spf.test.
81  PTR mail2.ptr.spf.test.
82  PTR mail.other.spf.test.
"""

REV6_ZONE = f"""
{rev6("2001:db8::70")} PTR a.pmacro.spf.test.
{rev6("2001:db8::80")} PTR mail.ptr.spf.test.
"""


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS([Zone("spf.test", SPF_ZONE), Zone(REV4, REV4_ZONE),
                       Zone(REV6, REV6_ZONE)], lame_zones=["lame.test"]) as server:
        yield server


@pytest.fixture
def resolver(dns_server: ThrowawayDNS):
    host, port = dns_server.resolver_address
    return make_resolver([host], port, timeout=5.0)


async def spf(resolver, ip: str, domain: str, local: str = "someone", *,
              helo: str = "client.example", **kwargs) -> SpfResult:
    return await check_host(ip, f"{domain}.spf.test" if "." not in domain else domain,
                            f"{local}@{domain}.spf.test", helo=helo, resolver=resolver,
                            **kwargs)


# -- records: selection, ip4/ip6, defaults ----------------------------------------------

async def test_ip4_and_ip6_networks(resolver) -> None:
    listed = await spf(resolver, "192.0.2.10", "ip")
    assert listed.result == SpfStatus.PASS and listed.mechanism == "ip4:192.0.2.10"
    assert listed.domain == "ip.spf.test" and listed.lookups == 0
    assert (await spf(resolver, "192.0.2.11", "ip")).result == SpfStatus.FAIL
    v6 = await spf(resolver, "2001:db8:10:ffff::1", "ip")
    assert v6.result == SpfStatus.PASS and v6.mechanism == "ip6:2001:db8:10::/48"
    assert (await spf(resolver, "2001:db8:11::1", "ip")).result == SpfStatus.FAIL
    failed = await spf(resolver, "192.0.2.11", "ip")
    assert failed.mechanism == "-all" and failed.explanation == ""


async def test_ipv4_mapped_client_is_treated_as_ipv4(resolver) -> None:
    result = await spf(resolver, "::ffff:192.0.2.10", "ip")
    assert result.result == SpfStatus.PASS and result.ip == "192.0.2.10"


async def test_record_selection(resolver) -> None:
    # Case-insensitive version and names (§4.5, §4.6.1); CNAME followed.
    assert (await spf(resolver, "192.0.2.10", "case")).result == SpfStatus.PASS
    assert (await spf(resolver, "192.0.2.11", "case")).result == SpfStatus.FAIL
    assert (await spf(resolver, "192.0.2.10", "alias")).result == SpfStatus.PASS
    # TXT strings are joined without spaces (§3.3): " -all" keeps its space...
    assert (await spf(resolver, "192.0.2.11", "split")).result == SpfStatus.FAIL
    # ...and "v=spf1" "ip4:..." becomes "v=spf1ip4:...", which is not an SPF record.
    nospace = await spf(resolver, "192.0.2.10", "nospace")
    assert nospace.result == SpfStatus.NONE
    # Other TXT records, including "v=spf10", are not SPF records.
    assert (await spf(resolver, "192.0.2.11", "other-txt")).result == SpfStatus.FAIL
    # No mechanism matched and no redirect: neutral (§4.7).
    default = await spf(resolver, "192.0.2.11", "neutral")
    assert default.result == SpfStatus.NEUTRAL and default.mechanism == ""


async def test_no_record_gives_none(resolver) -> None:
    no_txt = await spf(resolver, "192.0.2.10", "nospf")
    assert no_txt.result == SpfStatus.NONE and "no SPF record" in no_txt.problem
    nxdomain = await spf(resolver, "192.0.2.10", "doesnotexist")
    assert nxdomain.result == SpfStatus.NONE


async def test_invalid_domains_give_none_without_dns(resolver) -> None:
    for domain in ("[192.0.2.10]", "localhost", "a..spf.test", "x" * 64 + ".spf.test", ""):
        result = await check_host("192.0.2.10", domain, f"me@{domain}", helo="h.example",
                                  resolver=resolver)
        assert result.result == SpfStatus.NONE, domain
        assert "not a domain name" in result.problem


async def test_multiple_records_are_a_permerror(resolver) -> None:
    result = await spf(resolver, "192.0.2.10", "multi")
    assert result.result == SpfStatus.PERMERROR
    assert "2 SPF records" in result.problem


async def test_syntax_error_anywhere_is_a_permerror(resolver) -> None:
    # ip4:192.0.2.10 would match first, but the record as a whole is invalid (§4.6).
    result = await spf(resolver, "192.0.2.10", "malformed")
    assert result.result == SpfStatus.PERMERROR
    assert "term 3 'moo'" in result.problem and "malformed.spf.test" in result.problem
    bad = await spf(resolver, "192.0.2.10", "badcidr")
    assert bad.result == SpfStatus.PERMERROR and "prefix length 33" in bad.problem


# -- a, mx ----------------------------------------------------------------------------

async def test_a_with_dual_cidr(resolver) -> None:
    v4 = await spf(resolver, "198.51.100.250", "a")
    assert v4.result == SpfStatus.PASS and v4.mechanism == "a/24//64" and v4.lookups == 1
    assert (await spf(resolver, "198.51.101.1", "a")).result == SpfStatus.FAIL
    assert (await spf(resolver, "2001:db8:20::ffff:1", "a")).result == SpfStatus.PASS
    assert (await spf(resolver, "2001:db8:20:1::1", "a")).result == SpfStatus.FAIL


async def test_a_with_another_domain(resolver) -> None:
    assert (await spf(resolver, "192.0.2.22", "aother")).result == SpfStatus.PASS
    other = await spf(resolver, "192.0.2.23", "aother")
    assert other.result == SpfStatus.SOFTFAIL and other.mechanism == "~all"


async def test_mx_with_cidr(resolver) -> None:
    # mx2 is 192.0.2.64; /28 covers .64-.79.
    result = await spf(resolver, "192.0.2.79", "mx")
    assert result.result == SpfStatus.PASS and result.mechanism == "mx:mxhosts.spf.test/28"
    assert (await spf(resolver, "192.0.2.80", "mx")).result == SpfStatus.FAIL
    assert (await spf(resolver, "198.51.100.1", "mx")).result == SpfStatus.PASS
    # The domain's own MX, IPv6 with //120.
    assert (await spf(resolver, "2001:db8:64::ff", "mxself")).result == SpfStatus.PASS
    assert (await spf(resolver, "2001:db8:64::1:0", "mxself")).result == SpfStatus.FAIL


async def test_mx_has_no_implicit_mx_and_null_mx_matches_nothing(resolver) -> None:
    # §5.4: without MX records the domain's own address is not used.
    result = await spf(resolver, "192.0.2.30", "mxnone")
    assert result.result == SpfStatus.NEUTRAL and result.void_lookups == 1
    assert (await spf(resolver, "192.0.2.30", "nullmx")).result == SpfStatus.FAIL


async def test_more_than_ten_mx_hosts_is_a_permerror(resolver) -> None:
    result = await spf(resolver, "192.0.2.1", "manymx")
    assert result.result == SpfStatus.PERMERROR
    assert "11 MX hosts" in result.problem


# -- include, redirect, loops ---------------------------------------------------------

async def test_include(resolver) -> None:
    result = await spf(resolver, "192.0.2.40", "inc")
    assert result.result == SpfStatus.PASS
    assert result.mechanism == "include:_spf.inc.spf.test" and result.lookups == 1
    # The included record's ~all is "no match" for the include (§5.2): -all decides.
    other = await spf(resolver, "192.0.2.41", "inc")
    assert other.result == SpfStatus.FAIL and other.mechanism == "-all"


async def test_include_of_nothing_or_of_an_error(resolver) -> None:
    none = await spf(resolver, "192.0.2.1", "incnone")
    assert none.result == SpfStatus.PERMERROR and "without an SPF record" in none.problem
    perm = await spf(resolver, "192.0.2.1", "incperm")
    assert perm.result == SpfStatus.PERMERROR and "badcidr.spf.test" in perm.problem
    temp = await spf(resolver, "192.0.2.1", "inctemp")
    assert temp.result == SpfStatus.TEMPERROR and "SERVFAIL" in temp.problem


async def test_include_of_itself_ends_at_the_lookup_limit(resolver) -> None:
    result = await spf(resolver, "192.0.2.1", "loop")
    assert result.result == SpfStatus.PERMERROR
    assert "more than 10 DNS-querying terms" in result.problem
    assert result.lookups == 11


async def test_redirect_and_its_explanation(resolver) -> None:
    passed = await spf(resolver, "192.0.2.50", "redir")
    assert passed.result == SpfStatus.PASS and passed.mechanism == "ip4:192.0.2.50"
    assert passed.lookups == 1 and passed.domain == "redir.spf.test"
    failed = await spf(resolver, "192.0.2.51", "redir")
    assert failed.result == SpfStatus.FAIL
    # §6.2: the target's exp= is used, with %{d} the target domain.
    assert failed.explanation == "_spf.redir.spf.test does not list 192.0.2.51"
    # ...and the original's never, even when the target has none.
    plain = await spf(resolver, "192.0.2.51", "redirplain")
    assert plain.result == SpfStatus.FAIL and plain.explanation == ""


async def test_redirect_errors(resolver) -> None:
    loop = await spf(resolver, "192.0.2.1", "redirloop")
    assert loop.result == SpfStatus.PERMERROR and loop.lookups == 11
    none = await spf(resolver, "192.0.2.1", "redirnone")
    assert none.result == SpfStatus.PERMERROR and "no SPF record" in none.problem
    # A redirect after a mechanism that always matches is never followed (§6.1).
    unused = await spf(resolver, "192.0.2.1", "redirall")
    assert unused.result == SpfStatus.NEUTRAL and unused.lookups == 0


async def test_include_does_not_use_the_included_explanation(resolver) -> None:
    result = await spf(resolver, "192.0.2.1", "incexp")
    assert result.result == SpfStatus.FAIL and result.explanation == "outer explanation"


# -- macros ---------------------------------------------------------------------------

async def test_i_macro_ipv4_and_ipv6(resolver) -> None:
    assert (await spf(resolver, "192.0.2.60", "macro-i")).result == SpfStatus.PASS
    assert (await spf(resolver, "192.0.2.61", "macro-i")).result == SpfStatus.FAIL
    # IPv6 %{i} is 32 dot-separated nibbles (§7.3).
    assert (await spf(resolver, "2001:db8::60", "macro-i")).result == SpfStatus.PASS
    assert (await spf(resolver, "2001:db8::61", "macro-i")).result == SpfStatus.FAIL


async def test_reversed_i_and_v_macros(resolver) -> None:
    assert (await spf(resolver, "192.0.2.60", "macro-ir")).result == SpfStatus.PASS
    assert (await spf(resolver, "2001:db8::60", "macro-ir")).result == SpfStatus.PASS
    assert (await spf(resolver, "2001:db8::61", "macro-ir")).result == SpfStatus.FAIL


async def test_l_macro_with_transformers_and_delimiters(resolver) -> None:
    # %{l1r-} of john-smith: split on "-", reverse, keep 1: "john"; %{d2}: "spf.test".
    assert (await spf(resolver, "192.0.2.1", "macro-l", "john-smith")).result == \
        SpfStatus.PASS
    assert (await spf(resolver, "192.0.2.1", "macro-l", "smith-john")).result == \
        SpfStatus.FAIL


async def test_d_changes_under_include_and_o_does_not(resolver) -> None:
    result = await spf(resolver, "192.0.2.1", "macro-d")
    assert result.result == SpfStatus.PASS and result.lookups == 2


async def test_h_macro(resolver) -> None:
    assert (await spf(resolver, "192.0.2.1", "macro-h", helo="good.example")).result == \
        SpfStatus.PASS
    assert (await spf(resolver, "192.0.2.1", "macro-h", helo="bad.example")).result == \
        SpfStatus.FAIL
    # An invalid HELO makes a name that does not exist: no match, not an error.
    odd = await spf(resolver, "192.0.2.1", "macro-h", helo="[192.0.2.1]")
    assert odd.result == SpfStatus.FAIL


async def test_explanation_with_url_escaping_and_exp_only_macros(resolver) -> None:
    result = await spf(resolver, "2001:db8::1", "upper", "jack&jill=up",
                       receiver="mx.receiver.example", now=1700000000.5)
    assert result.result == SpfStatus.FAIL
    assert result.explanation == (
        "see https://spf.test/why?s=jack%26jill%3Dup%40upper.spf.test&l=jack%26jill%3Dup"
        " from 2001:db8::1 at mx.receiver.example 1700000000")


async def test_p_macro_prefers_a_validated_name_under_the_domain(resolver) -> None:
    # 192.0.2.70 has five PTR names, four validated; the one below pmacro.spf.test wins
    # whatever order the resolver gives them in (Unbound rotates them: asked 3 times).
    for ip in ("192.0.2.70", "192.0.2.70", "192.0.2.70", "2001:db8::70"):
        result = await spf(resolver, ip, "pmacro")
        assert result.explanation == "connect from a.pmacro.spf.test", ip
    # The domain itself beats a name below it (§7.3).
    for _ in range(3):
        exact = await spf(resolver, "192.0.2.73", "pexact")
        assert exact.explanation == "connect from pexact.spf.test"
    unknown = await spf(resolver, "192.0.2.71", "pmacro")
    assert unknown.explanation == "connect from unknown"
    assert (await spf(resolver, "192.0.2.72", "pexists")).result == SpfStatus.PASS
    assert (await spf(resolver, "192.0.2.70", "pexists")).result == SpfStatus.FAIL


# -- void lookups, exists, ptr, limits ------------------------------------------------

async def test_void_lookup_limit(resolver) -> None:
    over = await spf(resolver, "192.0.2.1", "void")
    assert over.result == SpfStatus.PERMERROR and "void lookups" in over.problem
    assert over.void_lookups == 3
    at = await spf(resolver, "192.0.2.1", "void2")
    assert at.result == SpfStatus.PASS and at.void_lookups == 2
    # Names no query can be made for count as void too.
    invalid = await spf(resolver, "192.0.2.1", "voidmacro", "a..b")
    assert invalid.result == SpfStatus.PERMERROR and invalid.void_lookups == 3
    assert SpfLimits(void_lookups=3) != SpfLimits()
    relaxed = await spf(resolver, "192.0.2.1", "void", limits=SpfLimits(void_lookups=3))
    assert relaxed.result == SpfStatus.PASS


async def test_exists(resolver) -> None:
    assert (await spf(resolver, "192.0.2.1", "exists", "alice")).result == SpfStatus.PASS
    assert (await spf(resolver, "192.0.2.1", "exists", "bob")).result == SpfStatus.FAIL
    # exists always looks up A, also for an IPv6 client (§5.7).
    assert (await spf(resolver, "2001:db8::1", "exists6", "alice")).result == SpfStatus.PASS


async def test_ptr(resolver) -> None:
    assert (await spf(resolver, "192.0.2.80", "ptr")).result == SpfStatus.PASS
    assert (await spf(resolver, "2001:db8::80", "ptr")).result == SpfStatus.PASS
    # The PTR name does not resolve back to the client: not validated.
    assert (await spf(resolver, "192.0.2.81", "ptr")).result == SpfStatus.FAIL
    # Validated, but not under ptr.spf.test; ptr:other.spf.test takes it.
    assert (await spf(resolver, "192.0.2.82", "ptr")).result == SpfStatus.FAIL
    assert (await spf(resolver, "192.0.2.82", "ptrother")).result == SpfStatus.PASS
    # No PTR at all: no match, and a void lookup.
    none = await spf(resolver, "192.0.2.83", "ptr")
    assert none.result == SpfStatus.FAIL and none.void_lookups == 1


async def test_dns_lookup_limit_is_ten_terms(resolver) -> None:
    at = await spf(resolver, "192.0.2.90", "limit10")
    assert at.result == SpfStatus.PASS and at.lookups == 10
    over = await spf(resolver, "192.0.2.90", "limit11")
    assert over.result == SpfStatus.PERMERROR and over.lookups == 11
    assert "at 'a'" in over.problem
    higher = await spf(resolver, "192.0.2.90", "limit11", limits=SpfLimits(dns_lookups=11))
    assert higher.result == SpfStatus.PASS


# -- exp= -----------------------------------------------------------------------------

async def test_explanation_only_for_fail_and_only_when_sound(resolver) -> None:
    failed = await spf(resolver, "192.0.2.9", "expfail", "carol")
    assert failed.explanation == "carol may not send from 192.0.2.9 for expfail.spf.test"
    soft = await spf(resolver, "192.0.2.9", "expsoft", "carol")
    assert soft.result == SpfStatus.SOFTFAIL and soft.explanation == ""
    for domain in ("expmulti", "expbad", "exptemp"):
        result = await spf(resolver, "192.0.2.9", domain)
        # §6.2: any problem with the explanation leaves it out; the result stands.
        assert result.result == SpfStatus.FAIL and result.explanation == "", domain


# -- temporary failures and the time budget -------------------------------------------

async def test_servfail_is_a_temperror(resolver) -> None:
    record = await check_host("192.0.2.1", "lame.test", "a@lame.test", helo="h.example",
                              resolver=resolver)
    assert record.result == SpfStatus.TEMPERROR and "SERVFAIL" in record.problem
    mechanism = await spf(resolver, "192.0.2.1", "atemp")
    assert mechanism.result == SpfStatus.TEMPERROR
    mx_host = await spf(resolver, "192.0.2.1", "mxtemp")
    assert mx_host.result == SpfStatus.TEMPERROR


async def test_time_budget_bounds_an_unanswering_resolver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives queries, never answers
        resolver = make_resolver(["127.0.0.1"], silent.getsockname()[1], timeout=10.0)
        started = time.monotonic()
        result = await check_host("192.0.2.1", "ip.spf.test", "a@ip.spf.test", helo="h.example",
                                  resolver=resolver, limits=SpfLimits(time_budget=0.3))
        elapsed = time.monotonic() - started
    assert result.result == SpfStatus.TEMPERROR and "0.3s" in result.problem
    assert elapsed < 2.0


# -- identities: MAIL FROM, null sender, HELO -----------------------------------------

async def test_mail_from_identity(resolver) -> None:
    result = await spf_for_mail_from("192.0.2.10", "user@ip.spf.test", helo="h.example",
                                     resolver=resolver)
    assert (result.result, result.identity, result.domain) == (SpfStatus.PASS, "mailfrom",
                                                               "ip.spf.test")
    assert result.sender == "user@ip.spf.test"


async def test_null_sender_checks_postmaster_at_helo(resolver) -> None:
    result = await spf_for_mail_from("192.0.2.101", "", helo="mail.helo.spf.test",
                                     resolver=resolver)
    assert result.result == SpfStatus.FAIL and result.identity == "mailfrom"
    assert result.sender == "postmaster@mail.helo.spf.test"
    assert result.explanation == "postmaster@mail.helo.spf.test via mail.helo.spf.test"
    passed = await spf_for_mail_from("192.0.2.100", "", helo="mail.helo.spf.test",
                                     resolver=resolver)
    assert passed.result == SpfStatus.PASS


async def test_missing_local_part_is_postmaster(resolver) -> None:
    result = await spf_for_mail_from("192.0.2.9", "@expfail.spf.test", helo="h.example",
                                     resolver=resolver)
    assert result.explanation.startswith("postmaster may not send")


async def test_helo_identity(resolver) -> None:
    result = await spf_for_helo("192.0.2.100", "mail.helo.spf.test", resolver=resolver)
    assert (result.result, result.identity) == (SpfStatus.PASS, "helo")
    assert result.sender == "postmaster@mail.helo.spf.test"
    literal = await spf_for_helo("192.0.2.100", "[192.0.2.100]", resolver=resolver)
    assert literal.result == SpfStatus.NONE
    bare = await spf_for_helo("192.0.2.100", "OEMCOMPUTER", resolver=resolver)
    assert bare.result == SpfStatus.NONE


async def test_received_spf_header_from_a_real_check(resolver) -> None:
    result = await spf_for_mail_from("192.0.2.11", "x@ip.spf.test", helo="h.example",
                                     resolver=resolver)
    header = received_spf_header(result, receiver="mx.example.org")
    unfolded = header.replace("\r\n\t", " ")
    assert unfolded == (
        "Received-SPF: fail (mx.example.org: domain of x@ip.spf.test does not designate "
        "192.0.2.11 as permitted sender) client-ip=192.0.2.11; envelope-from=\"x@ip.spf.test\"; "
        "helo=h.example; receiver=mx.example.org; identity=mailfrom; mechanism=-all;")
    assert all(len(line) <= 78 for line in header.split("\r\n"))
