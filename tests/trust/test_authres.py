"""Authentication-Results (RFC 8601): the field we write, the parser, and the removal of
incoming fields that claim our authserv-id."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.trust.authres import (
    METHOD_RESULTS,
    AuthenticationResults,
    MethodResult,
    arc_result,
    authserv_id_of,
    build_header,
    claims_authserv_id,
    dkim_result,
    dmarc_result,
    iprev_result,
    parse,
    quote_value,
    spf_result,
    strip_our_results,
)
from mailkeep.trust.dkim_verify import DkimResult, DkimStatus
from mailkeep.trust.dmarc import DmarcResult, DmarcStatus, Policy

OURS = "mx.example.org"


def value_of(field: bytes) -> bytes:
    name, colon, value = field.partition(b":")
    assert name == b"Authentication-Results" and colon and field.endswith(b"\r\n")
    return value[:-2]


# -- writing -------------------------------------------------------------------------------

def test_field_for_every_method() -> None:
    field = build_header(OURS, [
        iprev_result("pass", "192.0.2.1"),
        spf_result("pass", mailfrom="bounce@example.com", helo="mail.example.com"),
        dkim_result(DkimResult(result=DkimStatus.PASS, domain="example.com", selector="s1",
                               header_b="AbC/+12x", algorithm="rsa-sha256",
                               identity="@example.com", reason="signature verified")),
        dmarc_result(DmarcResult(result=DmarcStatus.PASS, from_domain="example.com",
                                 policy=Policy.REJECT)),
        arc_result("none"),
    ])
    assert field == (
        b"Authentication-Results: mx.example.org;\r\n"
        b"\tiprev=pass policy.iprev=192.0.2.1;\r\n"
        b"\tspf=pass smtp.mailfrom=bounce@example.com smtp.helo=mail.example.com;\r\n"
        b"\tdkim=pass header.d=example.com header.i=@example.com header.s=s1\r\n"
        b"\t  header.a=rsa-sha256 header.b=\"AbC/+12x\";\r\n"
        b"\tdmarc=pass (p=reject dis=none) header.from=example.com;\r\n"
        b"\tarc=none\r\n")
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))


def test_no_results_says_none() -> None:
    field = build_header(OURS, [])
    assert field == b"Authentication-Results: mx.example.org; none\r\n"
    assert parse(value_of(field)) == AuthenticationResults(OURS, ())


def test_values_are_quoted_and_sanitized() -> None:
    hostile = 'bad "key"\\ (x); dkim=pass\r\nX-Injected: yes \x00 é'
    field = build_header(OURS, [MethodResult("dkim", "permerror", hostile,
                                             (("header", "d", "a b;c.example"),))])
    assert b"\r\nX-Injected" not in field and b"\x00" not in field
    # One field: every line after the first is a continuation line.
    assert field.isascii() and all(line.startswith(b"\t")
                                   for line in field.split(b"\r\n")[1:-1])
    parsed = parse(value_of(field))
    assert parsed is not None
    (result,) = parsed.results
    assert result.reason == 'bad "key"\\ (x); dkim=pass??X-Injected: yes ? ?'
    assert result.properties == (("header", "d", "a b;c.example"),)
    assert quote_value("token-1.2") == "token-1.2" and quote_value("") == '""'
    assert quote_value("a=b") == '"a=b"' and quote_value('q"') == '"q\\""'


def test_long_reasons_are_cut() -> None:
    field = build_header(OURS, [spf_result("permerror", reason="x" * 5000)])
    parsed = parse(value_of(field))
    assert parsed is not None and len(parsed.results[0].reason or "") == 256
    assert max(len(line) for line in field.split(b"\r\n")) < 998


@pytest.mark.parametrize("result", [
    MethodResult("dkim", "softfail"), MethodResult("dmarc", "policy"),
    MethodResult("iprev", "none"), MethodResult("x-unknown", "pass"),
    MethodResult("spf", "pass", properties=(("smtp", "mail from", "x"),)),
])
def test_programming_errors_are_refused(result: MethodResult) -> None:
    with pytest.raises(ValueError):
        build_header(OURS, [result])


def test_results_of_our_verifiers() -> None:
    partial = DkimResult(result=DkimStatus.POLICY, domain="example.com", selector="s",
                         header_b="abcdefgh", reason="signature covers only 10 of 99 body "
                         "octets (l=); 89 octets are unsigned", unsigned_body_octets=89)
    assert dkim_result(partial).reason is not None
    too_big = dkim_result(DkimResult(result=DkimStatus.NONE, reason="message larger"))
    assert too_big.properties == () and too_big.reason == "message larger"
    failed = dmarc_result(DmarcResult(result=DmarcStatus.FAIL, from_domain="example.com",
                                      policy=Policy.REJECT, disposition=Policy.QUARANTINE,
                                      sampled_out=True, reasons=("no aligned SPF or DKIM pass",)))
    assert failed.comment == "p=reject dis=quarantine pct-sampled-out"
    assert failed.reason == "no aligned SPF or DKIM pass"
    unauthored = dmarc_result(DmarcResult(result=DmarcStatus.PERMERROR, from_domain="",
                                          reasons=("no From header field",)))
    assert unauthored.properties == () and unauthored.comment is None
    field = build_header(OURS, [dkim_result(partial), failed, unauthored])
    assert parse(value_of(field)) == AuthenticationResults(
        OURS, (dkim_result(partial), failed, unauthored))


# -- reading -------------------------------------------------------------------------------

def test_parse_examples_in_the_style_of_rfc_8601_appendix_b() -> None:
    parsed = parse(" example.com;\r\n   spf=pass smtp.mailfrom=example.net")
    assert parsed == AuthenticationResults("example.com", (
        MethodResult("spf", "pass", properties=(("smtp", "mailfrom", "example.net"),)),))
    parsed = parse(' example.com 1;\r\n  auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n'
                   '  spf=pass smtp.mailfrom=example.net;\r\n'
                   '  sender-id=fail header.from=example.com;\r\n'
                   '  dkim/1=pass (good signature) header.d=mail-router.example.net')
    assert parsed is not None and parsed.version == 1
    assert [(r.method, r.result, r.comment) for r in parsed.results] == [
        ("auth", "pass", "cram-md5"), ("spf", "pass", None), ("sender-id", "fail", None),
        ("dkim", "pass", "good signature")]
    assert parsed.results[3].version == 1
    parsed = parse(' (comment) "quoted.example" (more (nested) comment) ; '
                   'dkim = fail reason = "bad \\"sig\\"" header . d = example.com')
    assert parsed == AuthenticationResults("quoted.example", (
        MethodResult("dkim", "fail", 'bad "sig"', (("header", "d", "example.com"),)),))
    assert parse(' example.net; none') == AuthenticationResults("example.net", ())


@pytest.mark.parametrize("value", [
    "", ";", "example.com; spf", "example.com; spf=", "example.com; =pass",
    "example.com; spf=pass smtp", "example.com (unterminated; spf=pass",
    'example.com; dkim=pass reason="open', "example.com; spf=pass; ; dkim=pass",
    "example.com; spf=pass smtp.mailfrom=",
])
def test_malformed_values_give_none(value: str) -> None:
    assert parse(value) is None


_KEYWORDS = st.from_regex(r"[a-z](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30)


@st.composite
def method_results(draw: st.DrawFn) -> MethodResult:
    method = draw(st.sampled_from(sorted(METHOD_RESULTS)))
    result = draw(st.sampled_from(sorted(METHOD_RESULTS[method])))
    properties = tuple(draw(st.lists(st.tuples(_KEYWORDS, _KEYWORDS, _PRINTABLE), max_size=4)))
    reason = draw(st.none() | _PRINTABLE)
    comment = draw(st.none() | _PRINTABLE.filter(lambda c: c.strip() != ""))
    return MethodResult(method, result, reason, properties, comment)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z0-9]+(?:\.[a-z0-9-]+)*", fullmatch=True) | _PRINTABLE,
       st.lists(method_results(), max_size=6))
def test_build_then_parse_round_trip(authserv_id: str, results: list[MethodResult]) -> None:
    field = build_header(authserv_id, results)
    assert field.isascii()
    parsed = parse(value_of(field))
    assert parsed == AuthenticationResults(authserv_id.strip(), tuple(results))
    # (An id of dots only is no name: nothing can claim it.)
    assert claims_authserv_id(value_of(field), authserv_id) or not authserv_id.strip(" .")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.lists(st.sampled_from(
    ["example.com", ";", "spf", "=", "pass", "(", ")", '"', "\\", " ", ".", "smtp", "mailfrom",
     "reason", "/", "1", "@", "\r\n ", "none"]), max_size=30).map("".join))
def test_parser_never_raises(text: str) -> None:
    parsed = parse(text)
    assert parsed is None or isinstance(parsed.authserv_id, str)
    authserv_id_of(text)
    claims_authserv_id(text, OURS)


# -- removing incoming fields that claim to be ours ------------------------------------------

BLOCK = (b"Received: from a by b; Mon, 2 Mar 2026 10:00:00 +0000\r\n"
         b"Authentication-Results: mx.example.org; dkim=pass header.d=bank.example\r\n"
         b"Authentication-Results: other.example;\r\n"
         b"\tspf=fail smtp.mailfrom=x.example\r\n"
         b"authentication-results : (forged) \"MX.Example.ORG\" 1;\r\n"
         b"    dmarc=pass header.from=bank.example\r\n"
         b"ARC-Authentication-Results: i=1; mx.example.org; dkim=pass\r\n"
         b"Authentication-Results: mx.example.org.attacker.example; spf=pass\r\n"
         b"Authentication-Results:\r\n mx.example.org.; spf=pass\r\n"
         b"Subject: hello\r\n"
         b"\r\n"
         b"Authentication-Results: mx.example.org; this is the body\r\n")


def test_strip_removes_exactly_our_fields() -> None:
    stripped = strip_our_results(BLOCK, OURS)
    assert stripped == (
        b"Received: from a by b; Mon, 2 Mar 2026 10:00:00 +0000\r\n"
        b"Authentication-Results: other.example;\r\n"
        b"\tspf=fail smtp.mailfrom=x.example\r\n"
        b"ARC-Authentication-Results: i=1; mx.example.org; dkim=pass\r\n"
        b"Authentication-Results: mx.example.org.attacker.example; spf=pass\r\n"
        b"Subject: hello\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.org; this is the body\r\n")
    # Nothing to remove: the same bytes come back.
    assert strip_our_results(stripped, OURS) == stripped
    assert strip_our_results(BLOCK, "elsewhere.example") == BLOCK
    # LF-only line ends are handled the same way.
    assert strip_our_results(BLOCK.replace(b"\r\n", b"\n"), OURS) == stripped.replace(b"\r\n",
                                                                                    b"\n")


@pytest.mark.parametrize("value", [
    b" mx.example.org; spf=pass", b" MX.EXAMPLE.ORG;spf=pass", b'"mx.example.org"; none',
    b" (c) (d (e)) mx.example.org 1; dkim=pass", b" mx.example.org",
    b" mx.example.org.; dkim=pass", b" mx.example.org(comment); dkim=pass",
    # Malformed, but a lenient reader could take these for ours: removed as well.
    b" (unterminated mx.example.org; dkim=pass", b" junk mx.example.org; dkim=pass",
    b' "mx.example.org; dkim=pass', b" \xff mx.example.org; spf=pass",
])
def test_claims_our_id(value: bytes) -> None:
    assert claims_authserv_id(value, OURS)
    field = b"Authentication-Results:" + value + b"\r\n"
    assert strip_our_results(b"To: x\r\n" + field + b"\r\n", OURS) == b"To: x\r\n\r\n"


@pytest.mark.parametrize("value", [
    b" mx.example.org.evil; spf=pass", b" evil-mx.example.org; spf=pass",
    b" mx.example.orgx; spf=pass", b" other.example; dkim=pass header.d=mx.example.org",
    b" sub.mx.example.org; spf=pass", b"",
])
def test_does_not_claim_our_id(value: bytes) -> None:
    assert not claims_authserv_id(value, OURS)


_IDS = st.sampled_from([OURS, "MX.Example.Org", '"mx.example.org"', "(c) mx.example.org",
                        "mx.example.org.", "other.example", "mx.example.org.evil",
                        "x-mx.example.org", '"other.example"'])
_OURS_FORMS = {OURS, "MX.Example.Org", '"mx.example.org"', "(c) mx.example.org",
               "mx.example.org."}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _IDS, st.sampled_from(["\r\n\t", " ", "\r\n  "]),
                          st.sampled_from(["Authentication-Results", "authentication-RESULTS",
                                           "Authentication-Results ", "X-Other"])),
                max_size=8))
def test_strip_property(fields: list[tuple[bool, str, str, str]]) -> None:
    block, kept = b"", b""
    for number, (folded, ident, fold, name) in enumerate(fields):
        separator = fold if folded else " "
        raw = f"{name}: {ident};{separator}spf=pass smtp.mailfrom=n{number}.example\r\n".encode()
        block += raw
        is_ours = name.strip().lower() == "authentication-results" and ident in _OURS_FORMS
        if not is_ours:
            kept += raw
    block += b"\r\nbody\r\n"
    assert strip_our_results(block, OURS) == kept + b"\r\nbody\r\n"
