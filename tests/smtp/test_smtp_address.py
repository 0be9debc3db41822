"""Envelope address parsing (RFC 5321 §4.1.2, §4.1.3, §4.5.3.1; RFC 6531 §3.3)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.smtp.address import (
    Address,
    AddressError,
    canonical_address,
    canonical_domain,
    parse_address,
    parse_path,
    split_path,
)


def code(exc_info) -> str:
    r = exc_info.value.reply
    return f"{r.code} {r.enhanced}"


def test_simple_path():
    assert parse_path("<user@example.com>") == Address("user", "example.com")


def test_domain_is_lower_cased_local_part_kept():
    a = parse_path("<John.Smith@EXAMPLE.Com>")
    assert a == Address("John.Smith", "example.com")
    assert str(a) == "John.Smith@example.com"
    assert a.canonical == "john.smith@example.com"


def test_null_reverse_path():
    assert parse_path("<>", allow_null=True) is None
    with pytest.raises(AddressError) as e:
        parse_path("<>")
    assert code(e) == "501 5.1.3"


def test_postmaster_without_domain():
    # RFC 5321 §4.5.1: "<Postmaster>" must be accepted as a recipient.
    assert parse_path("<postmaster>", postmaster_domain="MX.Example.org") == Address(
        "Postmaster", "mx.example.org"
    )
    with pytest.raises(AddressError):
        parse_path("<postmaster>")


@pytest.mark.parametrize(
    ("path", "local"),
    [
        ('<"john doe"@example.com>', "john doe"),
        ('<"a\\"b"@example.com>', 'a"b'),
        ('<"back\\\\slash"@example.com>', "back\\slash"),
        ('<"a@b"@example.com>', "a@b"),
        ('<"john"@example.com>', "john"),
        ("<!#$%&'*+/=?^_`{|}~-@example.com>", "!#$%&'*+/=?^_`{|}~-"),
    ],
)
def test_quoted_and_special_local_parts(path, local):
    assert parse_path(path) == Address(local, "example.com")


def test_quoting_is_only_added_when_needed():
    assert str(parse_path('<"john"@example.com>')) == "john@example.com"
    assert str(parse_path('<"john doe"@example.com>')) == '"john doe"@example.com'
    assert str(parse_path('<"a\\"b"@example.com>')) == '"a\\"b"@example.com'
    assert str(parse_path('<"a..b"@example.com>')) == '"a..b"@example.com'


@pytest.mark.parametrize(
    "path",
    [
        "user@example.com",          # no angle brackets
        "<user@example.com",
        "<user>",                    # no domain
        "<@example.com>",
        "<user@>",
        "<.user@example.com>",
        "<user.@example.com>",
        "<us..er@example.com>",
        "<us er@example.com>",
        "<user@exa mple.com>",
        "<user@example.com.>",       # no trailing dot in the grammar
        "<user@.example.com>",
        "<user@example..com>",
        "<user@-example.com>",
        "<user@example-.com>",
        "<user@exa_mple.com>",
        '<"unterminated@example.com>',
        '<"bad\\"@example.com>',
        '<""@example.com>',          # empty quoted local part
        "<a@b@example.com>",
        "<user@example.com> ",
        "<\x01user@example.com>",
        '<"tab\there"@example.com>',
    ],
)
def test_bad_syntax_is_501_5_1_3(path):
    with pytest.raises(AddressError) as e:
        parse_path(path)
    assert code(e) == "501 5.1.3"


def test_utf8_local_part_needs_smtputf8():
    with pytest.raises(AddressError) as e:
        parse_path("<jörg@example.com>")
    assert code(e) == "553 5.6.7"      # RFC 6531 §3.5
    a = parse_path("<jörg@example.com>", smtputf8=True)
    assert a.local == "jörg" and a.utf8


def test_utf8_domain_needs_smtputf8_and_becomes_a_label():
    with pytest.raises(AddressError) as e:
        parse_path("<user@bücher.example>")
    assert code(e) == "553 5.6.7"
    a = parse_path("<user@Bücher.example>", smtputf8=True)
    assert a.domain == "xn--bcher-kva.example"
    assert not a.utf8                      # ASCII local part: no SMTPUTF8 needed to relay it
    assert a.domain_unicode == "bücher.example"
    assert a.unicode == "user@bücher.example"


def test_a_label_domain_needs_no_smtputf8():
    assert parse_path("<user@XN--BCHER-KVA.example>").domain == "xn--bcher-kva.example"


def test_invalid_a_label_is_refused():
    with pytest.raises(AddressError):
        parse_path("<user@xn--zz.example>")


def test_canonical_local_part_is_nfc_and_lower_case():
    decomposed = parse_path("<Jo\u0308rg@example.com>", smtputf8=True)
    composed = parse_path("<JÖRG@example.com>", smtputf8=True)
    assert decomposed != composed
    assert decomposed.canonical == composed.canonical == "jörg@example.com"


@pytest.mark.parametrize(
    ("path", "domain"),
    [
        ("<u@[192.0.2.1]>", "[192.0.2.1]"),
        ("<u@[IPv6:2001:DB8:0:0:0:0:0:1]>", "[IPv6:2001:db8::1]"),
        ("<u@[ipv6:::1]>", "[IPv6:::1]"),
        ("<u@[IPv6:::ffff:192.0.2.1]>", "[IPv6:::ffff:c000:201]"),
    ],
)
def test_address_literals(path, domain):
    assert parse_path(path).domain == domain


@pytest.mark.parametrize(
    "literal",
    ["[192.0.2.256]", "[192.0.2]", "[010.0.0.1]", "[IPv6:fe80::1%eth0]", "[IPv6:]",
     "[IPv6:1::2::3]", "[x400:foo]", "[]", "[192.0.2.1", "[ 192.0.2.1]"],
)
def test_bad_address_literals(literal):
    with pytest.raises(AddressError):
        parse_path(f"<u@{literal}>")


def test_source_route_is_checked_then_ignored():
    assert parse_path("<@relay.example,@other.example:user@example.com>") == Address(
        "user", "example.com"
    )
    with pytest.raises(AddressError):
        parse_path("<@relay..example:user@example.com>")
    with pytest.raises(AddressError):
        parse_path("<@relay.example user@example.com>")


def test_length_limits():
    # RFC 5321 §4.5.3.1.1: local part 64 octets.
    assert parse_path(f"<{'a' * 64}@example.com>").local == "a" * 64
    with pytest.raises(AddressError) as e:
        parse_path(f"<{'a' * 65}@example.com>")
    assert code(e) == "501 5.5.4"
    # Octets, not characters: 33 two-octet characters are 66 octets.
    with pytest.raises(AddressError):
        parse_path(f"<{'é' * 33}@example.com>", smtputf8=True)
    # RFC 5321 §4.5.3.1.3: path 256 octets including the brackets.
    domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 50])
    ok = f"<{'u' * (256 - 3 - len(domain))}@{domain}>"
    assert len(ok) == 256
    parse_path(ok)
    with pytest.raises(AddressError) as e:
        parse_path(ok[:1] + "u" + ok[1:])
    assert code(e) == "501 5.5.4"
    with pytest.raises(AddressError):
        parse_path(f"<u@{'a' * 64}.example>")      # a label is at most 63 octets


def test_split_path():
    assert split_path("<a@b.example> SIZE=10  BODY=8BITMIME") == (
        "<a@b.example>",
        "SIZE=10  BODY=8BITMIME",
    )
    assert split_path('<"a> b"@c.example> X') == ('<"a> b"@c.example>', "X")
    assert split_path("<>") == ("<>", "")
    for bad in ["a@b.example", "<a@b.example", "<a@b.example>SIZE=1"]:
        with pytest.raises(AddressError):
            split_path(bad)


def test_canonical_domain():
    assert canonical_domain("Example.COM.") == "example.com"
    assert canonical_domain("Bücher.Example") == "xn--bcher-kva.example"
    assert canonical_domain("[IPv6:2001:db8::0:1]") == "[IPv6:2001:db8::1]"
    for bad in ["", ".", "a..b", "exa_mple.com", "-a.com", "a" * 64 + ".com", "x." * 130]:
        with pytest.raises(ValueError):
            canonical_domain(bad)


def test_parse_address_and_canonical_address():
    assert parse_address("  Alice@Example.COM ") == Address("Alice", "example.com")
    assert parse_address("jörg@bücher.example").domain == "xn--bcher-kva.example"
    with pytest.raises(AddressError):
        parse_address("jörg@example.com", smtputf8=False)
    with pytest.raises(AddressError):
        parse_address("<alice@example.com>")
    assert canonical_address("Alice@EXAMPLE.com") == "alice@example.com"


# --- properties -------------------------------------------------------------------------------

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=10)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map(".".join)
quoted_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
)
labels = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z")
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)


@settings(max_examples=200, deadline=None)
@given(local=st.one_of(dot_strings, quoted_values), domain=domains)
def test_printed_address_parses_back_to_itself(local, domain):
    address = Address(local, domain)
    text = str(address)
    if len(text.encode()) + 2 > 256 or len(local) > 60:
        return
    try:
        parsed = parse_path(f"<{text}>")
    except AddressError as exc:
        # Only the RFC length limits may refuse a printable address.
        assert exc.reply.code == 501
        assert len(text.split("@")[0]) > 64
        return
    assert parsed == address
    assert parse_address(text) == address
    assert parse_path(f"<{address.canonical}>").canonical == address.canonical


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), smtputf8=st.booleans(), null=st.booleans())
def test_arbitrary_text_never_raises_anything_but_address_error(text, smtputf8, null):
    for candidate in (text, f"<{text}>"):
        try:
            result = parse_path(candidate, smtputf8=smtputf8, allow_null=null)
        except AddressError as exc:
            assert exc.reply.code in (501, 553)
            continue
        if result is None:
            assert null
            continue
        # Whatever is accepted is canonical and printable as a valid path again.
        assert result.domain == result.domain.lower() or result.domain.startswith("[IPv6:")
        assert parse_path(f"<{result}>", smtputf8=True) == result


@settings(max_examples=200, deadline=None)
@given(local=st.text(min_size=1, max_size=20), domain=domains)
def test_canonical_is_idempotent(local, domain):
    try:
        address = parse_address(f"{Address(local, domain)}")
    except AddressError:
        return
    canonical = address.canonical
    assert parse_address(canonical).canonical == canonical
