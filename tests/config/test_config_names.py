"""Canonical domains and addresses (IDNA A-labels, NFC, lower case)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailkeep.config.names import (
    InvalidName,
    canonical_address,
    canonical_domain,
    display_domain,
    lookup_address,
    lookup_domain,
)


@pytest.mark.parametrize(("name", "canonical"), [
    ("Example.COM", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ("localhost", "localhost"),
])
def test_canonical_domain(name: str, canonical: str):
    assert canonical_domain(name) == canonical
    assert lookup_domain(name) == canonical


@pytest.mark.parametrize("name", ["", "exa mple.com", "a_b.example", "-a.example", "a..b",
                                  "example.com.", "[192.0.2.1]", "192.0.2.1", "xn--zz.example",
                                  "a" * 64 + ".example", ("a" * 60 + ".") * 5 + "example"])
def test_invalid_domains(name: str):
    with pytest.raises(InvalidName):
        canonical_domain(name)
    assert lookup_domain(name) is None


def test_display_domain():
    assert display_domain("xn--bcher-kva.example") == "bücher.example"
    assert display_domain("example.com") == "example.com"


@pytest.mark.parametrize(("address", "canonical"), [
    ("Me@Example.COM", "me@example.com"),
    ("Jürgen@Bücher.example", "jürgen@xn--bcher-kva.example"),
    ("ju\u0308rgen@bücher.example", "jürgen@xn--bcher-kva.example"),  # NFC
    ("first.last+tag@example.com", "first.last+tag@example.com"),
    ("o'neil@example.com", "o'neil@example.com"),
])
def test_canonical_address(address: str, canonical: str):
    assert canonical_address(address) == canonical


@pytest.mark.parametrize("address", ["me", "@example.com", "me@", ".me@example.com",
                                     "me.@example.com", "m..e@example.com", '"me"@example.com',
                                     "m e@example.com", "x" * 65 + "@example.com",
                                     "me@exa_mple.com"])
def test_invalid_addresses(address: str):
    with pytest.raises(InvalidName):
        canonical_address(address)


def test_lookup_address_accepts_what_the_wire_may_carry():
    assert lookup_address('"Me"@Example.com') == ("me", "example.com", "Me")
    assert lookup_address('"a\\"b"@example.com') == ('a"b', "example.com", 'a"b')
    assert lookup_address("x" * 65 + "@example.com") is None
    assert lookup_address("me@\udcff.example") is None


_ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~äÖßéЖ",
                min_size=1, max_size=20)
_LABEL = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
_ULABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüéñ", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ATOM, min_size=1, max_size=3), st.lists(st.one_of(_LABEL, _ULABEL), min_size=1,
                                                         max_size=3), st.sampled_from(["com", "example", "de"]))
def test_canonical_forms_are_stable(atoms: list[str], labels: list[str], tld: str):
    address = ".".join(atoms) + "@" + ".".join([*labels, tld])
    try:
        canonical = canonical_address(address)
    except InvalidName:
        return
    assert canonical_address(canonical) == canonical
    assert canonical == canonical.lower() or not canonical.isascii()
    parsed = lookup_address(address)
    assert parsed is not None
    assert f"{parsed.local}@{parsed.domain}" == canonical


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_domain_parsing_never_fails_unexpectedly(text: str):
    try:
        canonical = canonical_domain(text)
    except InvalidName:
        assert lookup_domain(text) is None
    else:
        assume(canonical)
        assert canonical_domain(canonical) == canonical
        assert lookup_domain(text) == canonical


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_lookup_address_never_raises(text: str):
    parsed = lookup_address(text)
    assert parsed is None or "@" not in parsed.domain


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-zA-Z0-9-]{1,12}(\.[a-zA-Z0-9-]{1,12}){0,3}", fullmatch=True))
def test_fast_path_agrees_with_idna(name: str):
    # lookup_domain skips IDNA for plain ASCII names; it must decide exactly as IDNA would.
    try:
        expected: str | None = canonical_domain(name)
    except InvalidName:
        expected = None
    assert lookup_domain(name) == expected
