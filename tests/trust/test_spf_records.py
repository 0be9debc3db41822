"""SPF record parsing and macro expansion (RFC 7208 §4.5, §5, §6, §7, §12): pure
functions, tested with the RFC's own examples, precise syntax errors and property tests."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.trust.spf import (
    DOMAIN_EXPANSION_LIMIT,
    DOMAIN_LENGTH_LIMIT,
    EXPLANATION_MACRO_LETTERS,
    Directive,
    Macro,
    MacroContext,
    MacroEscape,
    MacroString,
    SpfRecord,
    SpfResult,
    SpfStatus,
    SpfSyntaxError,
    domain_name,
    expand,
    is_spf_record,
    parse_domain_spec,
    parse_macro_string,
    parse_record,
    received_spf_header,
)

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# RFC 7208 §7.4: sender strong-bad@email.example.com, client 192.0.2.3 / 2001:db8::cb01.
RFC_V4 = MacroContext(ipaddress.ip_address("192.0.2.3"), "strong-bad@email.example.com",
                      "strong-bad", "email.example.com", "email.example.com",
                      "mx.example.org", validated_name="mx.example.org")
RFC_V6 = MacroContext(ipaddress.ip_address("2001:db8::cb01"), RFC_V4.sender,
                      RFC_V4.local_part, RFC_V4.sender_domain, RFC_V4.domain, RFC_V4.helo)


@pytest.mark.parametrize(("macro", "expansion"), [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
])
def test_rfc_7208_section_7_4_examples(macro: str, expansion: str) -> None:
    assert expand(parse_macro_string(macro), RFC_V4) == expansion


def test_rfc_7208_section_7_4_ipv6_example() -> None:
    assert expand(parse_macro_string("%{ir}.%{v}._spf.%{d2}"), RFC_V6) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
    assert expand(parse_macro_string("%{i}"), RFC_V6).startswith("2.0.0.1.0.d.b.8.")


def test_other_macros_and_escapes() -> None:
    context = MacroContext(ipaddress.ip_address("2001:db8::1"), "a+b@x.example", "a+b",
                           "x.example", "d.example", "helo.example",
                           validated_name="ptr.example", receiver="me.example",
                           timestamp=1234)
    text = "%{h} %{p} %{c} %{r} %{t} %{v} %{L} %{l+} %% %_ %-"
    parsed = parse_macro_string(text, letters=EXPLANATION_MACRO_LETTERS, spaces=True)
    assert expand(parsed, context) == (
        "helo.example ptr.example 2001:db8::1 me.example 1234 ip6 a%2Bb a.b %   %20")
    # Several delimiters at once; more digits than parts keeps them all.
    assert expand(parse_macro_string("%{s9r+.}"), context) == "example.b@x.a"


def test_record_ast() -> None:
    record = parse_record("v=spf1 +a/24//64 mx:mail.%{d2}/28 ~ip4:192.0.2.1/24 "
                          "-ip6:2001:DB8::/32 ?include:_spf.example.com ptr exists:%{i}.x.example "
                          "-all redirect=_spf.example.com exp=why.%{d} Foo.bar-1_=x%%")
    a, mx, ip4, ip6, include, ptr, exists, all_ = record.directives
    assert (a.mechanism, a.qualifier, a.cidr4, a.cidr6, a.domain_spec) == ("a", "+", 24, 64,
                                                                           None)
    assert a.result == SpfStatus.PASS
    assert mx.domain_spec == MacroString(("mail.", Macro("d", 2)))
    assert (mx.cidr4, mx.cidr6, mx.result) == (28, None, SpfStatus.PASS)
    assert ip4.network == ipaddress.ip_network("192.0.2.0/24")
    assert ip4.result == SpfStatus.SOFTFAIL
    assert ip6.network == ipaddress.ip_network("2001:db8::/32")
    assert ip6.result == SpfStatus.FAIL and include.result == SpfStatus.NEUTRAL
    assert ptr.domain_spec is None
    assert exists.domain_spec == MacroString((Macro("i"), ".x.example"))
    assert all_.text == "-all"
    assert record.redirect == MacroString(("_spf.example.com",))
    assert record.explanation == MacroString(("why.", Macro("d")))
    assert [(m.name, m.value) for m in record.modifiers] == [
        ("foo.bar-1_", MacroString(("x", MacroEscape("%"))))]


def test_names_are_case_insensitive_and_spaces_are_separators() -> None:
    record = parse_record("V=SpF1   IP4:192.0.2.1   ReDiReCt=Example.com   ")
    assert record.directives[0].mechanism == "ip4"
    assert record.redirect == MacroString(("Example.com",))
    assert parse_record("v=spf1") == SpfRecord()


@pytest.mark.parametrize(("text", "spf"), [
    ("v=spf1", True), ("v=spf1 -all", True), ("V=SPF1 -all", True),
    ("v=spf10", False), ("v=spf1-all", False), ("v=spf2.0/pra -all", False),
    ("spf1", False), ("", False), (" v=spf1", False), ("v=spf1\t-all", False),
])
def test_is_spf_record(text: str, spf: bool) -> None:
    assert is_spf_record(text) is spf


@pytest.mark.parametrize(("record", "message"), [
    ("v=spf1 a:museum", "does not end in '.' and a top label"),
    ("v=spf1 a:museum.", "does not end in '.' and a top label"),
    ("v=spf1 a:111.222.33.44", "an address belongs in ip4:/ip6:"),
    ("v=spf1 a:example.-com", "'-com' is not a valid top label"),
    ("v=spf1 a:example.com:8080", "'com:8080' is not a valid top label"),
    ("v=spf1 a:foo.example.com\x00", "invalid character '\\x00'"),
    ("v=spf1 a:", "empty domain"),
    ("v=spf1 a/33", "prefix length 33 is over 32"),
    ("v=spf1 a//129", "prefix length 129 is over 128"),
    ("v=spf1 mx/032", "invalid prefix length '032'"),
    ("v=spf1 a/24/64", "prefix length 64 is over 32"),
    ("v=spf1 a/24/24", "unexpected '/24' after 'a'"),
    ("v=spf1 -all/8", "'all' takes no argument"),
    ("v=spf1 -all.", "'all' takes no argument"),
    ("v=spf1 ptr/0", "unexpected '/0' after 'ptr'"),
    ("v=spf1 include", "'include' needs ':' and a domain"),
    ("v=spf1 include:", "empty domain"),
    ("v=spf1 include:example.com/24", "'com/24' is not a valid top label"),
    ("v=spf1 exists", "'exists' needs ':'"),
    ("v=spf1 ip4", "'ip4' needs ':' and a network"),
    ("v=spf1 ip4:192.0.2", "'192.0.2' is not an IPv4 address"),
    ("v=spf1 ip4:192.0.2.1:25", "'192.0.2.1:25' is not an IPv4 address"),
    ("v=spf1 ip4:192.0.2.01", "is not an IPv4 address"),
    ("v=spf1 ip4:192.0.2.256", "is not an IPv4 address"),
    ("v=spf1 ip4:192.0.2.1//32", "invalid prefix length '/32'"),
    ("v=spf1 ip4:192.0.2.1/", "invalid prefix length ''"),
    ("v=spf1 ip6::cafe::babe", "is not an IPv6 address"),
    ("v=spf1 ip6:fe80::1%eth0", "is not an IPv6 address"),
    ("v=spf1 ip6:2001:db8::/129", "prefix length 129 is over 128"),
    ("v=spf1 ip6:1.2.3.4", "is not an IPv6 address"),
    ("v=spf1 ip4:192.0.2.1 -all moo", "term 3 'moo': unknown mechanism 'moo'"),
    ("v=spf1 redirect:example.com", "a modifier takes '=' and no qualifier"),
    ("v=spf1 +redirect=example.com", "a modifier takes '=' and no qualifier"),
    ("v=spf1 =all", "neither a mechanism nor a modifier"),
    ("v=spf1 1up=foo", "neither a mechanism nor a modifier"),
    ("v=spf1 -all foo=%abc", "'%' not followed by"),
    ("v=spf1 redirect=", "empty domain"),
    ("v=spf1 exp=", "empty domain"),
    ("v=spf1 redirect=-all ?all", "does not end in '.' and a top label"),
    ("v=spf1 redirect=a.example redirect=b.example", "redirect= given twice"),
    ("v=spf1 exp=a.example -all exp=b.example", "exp= given twice"),
    ("v=spf1 -all exp=%{r}.example.com", "c, r and t are for exp= text only"),
    ("v=spf1 a:%{a}.example.com", "unknown macro letter 'a'"),
    ("v=spf1 exists:%(ir).sbl.example.com", "'%' not followed by"),
    ("v=spf1 exists:%{ir.sbl.example.com", "no closing '}'"),
    ("v=spf1 exists:%{d0}.example.com", "keeps zero parts"),
    ("v=spf1 exists:%{dr2}.example.com", "invalid macro"),
    ("v=spf1 exists:%{d2r:}.example.com", "invalid macro"),
    ("v=spf1 exists:%{}.example.com", "invalid macro"),
    ("v=spf1 exists:x.example.com%", "'%' not followed by"),
    ("v=spf1 a:x\u00e9.example.com", "invalid character"),
    ("v=spf1 ip4:192.0.2.1 y.example.com", "term 2 'y.example.com': unknown mechanism 'y'"),
])
def test_syntax_errors_are_precise(record: str, message: str) -> None:
    with pytest.raises(SpfSyntaxError) as caught:
        parse_record(record)
    assert message in str(caught.value)


def test_unusual_but_valid_records() -> None:
    # Any visible character but "%" in a domain-spec (RFC 7208 test suite "a-colon-domain").
    (a,) = parse_record("v=spf1 a:foo:bar/baz.example.com").directives
    assert a.domain_spec == MacroString(("foo:bar/baz.example.com",))
    # A name with "-", "_" and "." followed by "=" is an unknown modifier, ignored.
    record = parse_record("v=spf1 moo.cow-far_out=man:dog/cat ip4:192.0.2.1 -all")
    assert len(record.directives) == 2 and record.modifiers[0].name == "moo.cow-far_out"
    # Top labels with dashes and digits; a final dot; a final dot after a macro.
    for spec in ("foo.example.xn--zckzah", "a.123-456", "example.com.", "%{d}.", "x.%{d2}"):
        parse_domain_spec(spec)
    # The obsolete default= modifier is just an unknown one.
    assert parse_record("v=spf1 default=deny").directives == ()


def test_domain_name_for_queries() -> None:
    assert domain_name("Example.COM.")[0] == "Example.COM"
    assert domain_name("b\u00fccher.example")[1].to_text() == "xn--bcher-kva.example."
    for bad in ("", ".", "a..b", "x" * 64 + ".example", "bad\udcff.example"):
        assert domain_name(bad) is None, bad
    # §7.3: over 253 characters, labels go from the left until it fits.
    long = ".".join([f"label{n:02d}" for n in range(40)])  # 40 * 8 - 1 = 319 characters
    text, _ = domain_name(long)
    assert len(text) <= DOMAIN_LENGTH_LIMIT and long.endswith(text)
    assert text.startswith("label09.") and text.endswith(".label39")


def test_received_spf_header_cannot_be_used_to_inject_lines() -> None:
    result = SpfResult(SpfStatus.PERMERROR, sender='evil\r\nX-Injected: yes"@example.com',
                       helo="helo\r\n\r\nbody", ip="2001:db8::1",
                       problem="bad (record) \\ here", identity="mailfrom")
    header = received_spf_header(result, receiver="mx.example.org")
    first, *rest = header.split("\r\n")
    assert first.startswith("Received-SPF: permerror (mx.example.org: permanent error")
    assert all(line.startswith("\t") for line in rest)
    assert "\n" not in header.replace("\r\n\t", "") and "\r" not in header.replace("\r\n\t", "")
    unfolded = header.replace("\r\n\t", " ")
    assert 'envelope-from="evil  X-Injected: yes\\"@example.com";' in unfolded
    assert 'client-ip="2001:db8::1";' in unfolded
    assert 'problem="bad (record) \\\\ here";' in unfolded


# -- properties -----------------------------------------------------------------------

LITERAL_CHARS = string.ascii_letters + string.digits + "-_:=/+"
literal_label = st.text(alphabet=LITERAL_CHARS, min_size=1, max_size=8)
top_label = st.from_regex(r"[a-z][a-z0-9]{0,4}(-[a-z0-9]{1,3})?", fullmatch=True)


@st.composite
def macro_text(draw, letters: str = "slodipvh") -> str:
    letter = draw(st.sampled_from(letters))
    letter = letter.upper() if draw(st.booleans()) else letter
    digits = draw(st.one_of(st.just(""), st.integers(1, 200).map(str)))
    reverse = draw(st.sampled_from(["", "r", "R"]))
    delimiters = draw(st.text(alphabet=".-+,/_=", max_size=3))
    return "%{" + letter + digits + reverse + delimiters + "}"


escape_text = st.sampled_from(["%%", "%_", "%-"])


@st.composite
def domain_spec_text(draw) -> str:
    pieces = draw(st.lists(st.one_of(literal_label, macro_text(), escape_text), min_size=1,
                           max_size=4))
    if draw(st.booleans()):
        return ".".join(pieces) + "." + draw(top_label) + draw(st.sampled_from(["", "."]))
    return ".".join([*pieces[:-1], draw(macro_text())])


def cidr(maximum: int, prefix: str) -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.integers(0, maximum).map(lambda n: f"{prefix}{n}"))


@st.composite
def directive_text(draw) -> str:
    qualifier = draw(st.sampled_from(["", "+", "-", "~", "?"]))
    mechanism = draw(st.sampled_from(["all", "include", "a", "mx", "ptr", "ip4", "ip6",
                                      "exists"]))
    name = mechanism.upper() if draw(st.booleans()) else mechanism
    if mechanism == "all":
        return qualifier + name
    if mechanism in ("include", "exists"):
        return f"{qualifier}{name}:{draw(domain_spec_text())}"
    if mechanism == "ip4":
        return f"{qualifier}{name}:{draw(st.ip_addresses(v=4))}{draw(cidr(32, '/'))}"
    if mechanism == "ip6":
        return f"{qualifier}{name}:{draw(st.ip_addresses(v=6))}{draw(cidr(128, '/'))}"
    spec = draw(st.one_of(st.just(""), domain_spec_text().map(lambda s: ":" + s)))
    if mechanism == "ptr":
        return qualifier + name + spec
    return qualifier + name + spec + draw(cidr(32, "/")) + draw(cidr(128, "//"))


unknown_modifier = st.tuples(
    st.from_regex(r"[a-zA-Z][a-zA-Z0-9._-]{0,8}", fullmatch=True).filter(
        lambda n: n.lower() not in ("redirect", "exp")),
    st.lists(st.one_of(literal_label, macro_text("slodipvhcrt"), escape_text), max_size=3),
).map(lambda pair: f"{pair[0]}={''.join(pair[1])}")


@st.composite
def record_text(draw) -> tuple[str, int]:
    directives = draw(st.lists(directive_text(), max_size=8))
    modifiers = draw(st.lists(unknown_modifier, max_size=2))
    if draw(st.booleans()):
        modifiers.append("redirect=" + draw(domain_spec_text()))
    if draw(st.booleans()):
        modifiers.append("exp=" + draw(domain_spec_text()))
    terms = draw(st.permutations(directives + modifiers))
    # Directive order matters; modifiers may be anywhere. Keep directives in order.
    ordered = iter(directives)
    terms = [next(ordered) if t in directives else t for t in terms]
    separators = draw(st.lists(st.sampled_from([" ", "  "]), min_size=len(terms),
                               max_size=len(terms)))
    text = "v=spf1" + "".join(sep + term for sep, term in zip(separators, terms, strict=True))
    return text + draw(st.sampled_from(["", " "])), len(directives)


@PROPERTY
@given(record_text())
def test_grammar_records_parse_and_round_trip(generated: tuple[str, int]) -> None:
    text, directive_count = generated
    record = parse_record(text)
    assert len(record.directives) == directive_count
    assert parse_record(record.to_text()) == record


@PROPERTY
@given(st.one_of(st.text(max_size=120),
                 st.text(alphabet=string.printable + "%{}é\x00", max_size=120).map(
                     lambda t: "v=spf1 " + t),
                 record_text().map(lambda r: r[0][:-3] + "%{"),
                 record_text().map(lambda r: r[0].replace(":", "/", 1))))
def test_any_text_parses_or_raises_a_syntax_error(text: str) -> None:
    try:
        record = parse_record(text)
    except SpfSyntaxError as exc:
        assert str(exc)
    else:
        assert isinstance(record, SpfRecord)
        assert all(isinstance(d, Directive) for d in record.directives)
        assert parse_record(record.to_text()) == record


contexts = st.builds(
    MacroContext,
    ip=st.ip_addresses(),
    sender=st.text(max_size=40),
    local_part=st.text(max_size=20),
    sender_domain=st.text(max_size=30),
    domain=st.text(max_size=30),
    helo=st.text(max_size=30),
    validated_name=st.text(max_size=20),
    receiver=st.text(max_size=20),
    timestamp=st.integers(0, 2**40),
)


@PROPERTY
@given(st.lists(st.one_of(literal_label, macro_text("slodipvhcrt"), escape_text),
                max_size=10).map("".join), contexts)
def test_expansion_never_fails_and_domain_names_are_bounded(text: str,
                                                            context: MacroContext) -> None:
    parsed = parse_macro_string(text, letters=EXPLANATION_MACRO_LETTERS)
    assert parse_macro_string(parsed.to_text(), letters=EXPLANATION_MACRO_LETTERS) == parsed
    expanded = expand(parsed, context)
    named = domain_name(expanded)
    # Expanding only the end that a domain name can use gives the same name.
    tail = expand(parsed, context, limit=DOMAIN_EXPANSION_LIMIT, keep_end=True)
    assert expanded.endswith(tail) and domain_name(tail) == named
    assert expand(parsed, context, limit=50) == expanded[:50]
    if named is not None:
        shown, name = named
        assert len(shown) <= DOMAIN_LENGTH_LIMIT and expanded.rstrip(".").endswith(shown)
        assert all(0 < len(label) <= 63 for label in name.labels[:-1])


@PROPERTY
@given(st.lists(st.one_of(literal_label, macro_text("slodh"), st.just(".")), min_size=1,
                max_size=30).map("".join),
       st.from_regex(r"[a-z]{1,20}(\.[a-z]{1,25}){0,12}", fullmatch=True))
def test_long_expansions_give_the_same_name_from_their_end(text: str, labels: str) -> None:
    context = MacroContext(ipaddress.ip_address("192.0.2.1"), f"{labels}@{labels}", labels,
                           labels, labels, labels)
    parsed = parse_macro_string(text)
    full = expand(parsed, context)
    tail = expand(parsed, context, limit=DOMAIN_EXPANSION_LIMIT, keep_end=True)
    assert len(tail) == min(len(full), DOMAIN_EXPANSION_LIMIT) and full.endswith(tail)
    assert domain_name(tail) == domain_name(full)


@PROPERTY
@given(st.lists(st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True), min_size=1, max_size=12),
       st.integers(1, 20), st.booleans())
def test_transformers_keep_the_rightmost_parts(labels: list[str], keep: int,
                                               reverse: bool) -> None:
    context = MacroContext(ipaddress.ip_address("192.0.2.1"), "a@b.example", "a",
                           "b.example", ".".join(labels), "h.example")
    macro = "%{d" + str(keep) + ("r" if reverse else "") + "}"
    expanded = expand(parse_macro_string(macro), context).split(".")
    ordered = labels[::-1] if reverse else labels
    assert expanded == ordered[-keep:]


@PROPERTY
@given(st.text(max_size=60), st.text(max_size=60), st.text(max_size=60),
       st.sampled_from(list(SpfStatus)))
def test_received_spf_header_is_always_one_well_folded_field(sender: str, helo: str,
                                                             problem: str,
                                                             status: SpfStatus) -> None:
    result = SpfResult(status, sender=sender, helo=helo, problem=problem, ip="192.0.2.1",
                       mechanism="-all", identity="helo")
    header = received_spf_header(result, receiver="mx.example.org")
    first, *rest = header.split("\r\n")
    assert first.startswith(f"Received-SPF: {status.value}")
    for line in [first, *rest]:
        assert "\r" not in line and "\n" not in line
    assert all(line.startswith("\t") and line.strip() for line in rest)
