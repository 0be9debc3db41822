"""Address lists (RFC 5322 §3.4 and the obsolete forms of §4.4)."""

from __future__ import annotations

import pytest

from mailkeep.mime import Group, Mailbox, parse_address_list
from mailkeep.mime.address_list import (
    MAX_ADDRESSES,
    _parse_simple,
    _Parser,
    _tokenize,
    parse_address_list_limited,
)
from mailkeep.mime.envelope import envelope_addresses


def mbox(name: bytes | None, local: bytes | None, domain: bytes | None,
         route: bytes | None = None) -> Mailbox:
    return Mailbox(name, route, local, domain)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"alice@example.org", [mbox(None, b"alice", b"example.org")]),
        (b"Alice Martin <alice@example.org>", [mbox(b"Alice Martin", b"alice", b"example.org")]),
        (b'"Martin, Alice" <alice@example.org>',
         [mbox(b"Martin, Alice", b"alice", b"example.org")]),
        (b"<alice@example.org>", [mbox(None, b"alice", b"example.org")]),
        (b"a@x.org, B <b@y.org>,c@z.org",
         [mbox(None, b"a", b"x.org"), mbox(b"B", b"b", b"y.org"), mbox(None, b"c", b"z.org")]),
        # Comments: left out of names, but a comment after a bare address is its name.
        (b"alice@example.org (Alice Martin)", [mbox(b"Alice Martin", b"alice", b"example.org")]),
        (b"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
         [mbox(b"Pete", b"pete", b"silly.test")]),
        # RFC 5322 Appendix A.1.3 group examples.
        (b"A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
         [Group(b"A Group", (mbox(b"Ed Jones", b"c", b"a.test"), mbox(None, b"joe", b"where.test"),
                             mbox(b"John", b"jdoe", b"one.test")))]),
        (b"Undisclosed recipients:;", [Group(b"Undisclosed recipients", ())]),
        (b"team: ;, solo@x.org", [Group(b"team", ()), mbox(None, b"solo", b"x.org")]),
        # Quoted local part and domain literal.
        (b'"john doe"@example.org', [mbox(None, b"john doe", b"example.org")]),
        (b"user@[192.0.2.1]", [mbox(None, b"user", b"[192.0.2.1]")]),
        # Obsolete forms: source route, CFWS around dots, empty list elements, phrase dots.
        (b"<@relay1.test,@relay2.test:joe@final.test>",
         [mbox(None, b"joe", b"final.test", route=b"@relay1.test,@relay2.test")]),
        (b"john . doe @ example . org", [mbox(None, b"john.doe", b"example.org")]),
        (b", , a@b.c, ,", [mbox(None, b"a", b"b.c")]),
        (b"John Q. Public <jqp@example.org>", [mbox(b"John Q. Public", b"jqp", b"example.org")]),
        # Encoded-words stay encoded; raw UTF-8 is accepted (RFC 6532).
        (b"=?utf-8?q?Zo=C3=AB?= <zoe@example.org>",
         [mbox(b"=?utf-8?q?Zo=C3=AB?=", b"zoe", b"example.org")]),
        ("Zoë <zoë@exämple.org>".encode(),
         [mbox("Zoë".encode(), "zoë".encode(), "exämple.org".encode())]),
        # Broken input, recovered the way mail clients do.
        (b"a@b.c d@e.f", [mbox(None, b"a", b"b.c"), mbox(None, b"d", b"e.f")]),
        (b"Name <a@b.c", [mbox(b"Name", b"a", b"b.c")]),
        (b"localuser", [mbox(None, b"localuser", None)]),
        (b"<>", [mbox(None, None, None)]),
        (b"grp: a@b.c", [Group(b"grp", (mbox(None, b"a", b"b.c"),))]),
        (b"", []),
        (b"   ", []),
    ],
)
def test_parse_address_list(raw: bytes, expected: list[Mailbox | Group]) -> None:
    assert parse_address_list(raw) == expected


def test_fast_path_agrees_with_the_full_parser() -> None:
    raw = b'Alice  Martin <alice@example.org>, "Bob" <bob@example.com>, carol@example.net'
    fast = _parse_simple(raw, MAX_ADDRESSES)
    assert fast is not None
    assert fast == _Parser(_tokenize(raw), MAX_ADDRESSES).parse()
    assert fast[0].name == b"Alice Martin"


def test_address_count_is_limited() -> None:
    raw = b",".join(b"u%d@example.org" % i for i in range(MAX_ADDRESSES + 10))
    result, truncated = parse_address_list_limited(raw)
    assert len(result) == MAX_ADDRESSES
    assert truncated
    result, truncated = parse_address_list_limited(raw + b" (comment)")
    assert len(result) == MAX_ADDRESSES
    assert truncated


def test_envelope_addresses_never_use_nil_for_a_real_address() -> None:
    addresses, _ = envelope_addresses(b"localuser, <>, g: ;")
    assert [(a.mailbox, a.host) for a in addresses] == [
        (b"localuser", b"MISSING_DOMAIN"),
        (b"MISSING_MAILBOX", b"MISSING_DOMAIN"),
        (b"g", None),
        (None, None),
    ]


def test_addr_spec_property() -> None:
    assert mbox(None, b"a", b"b.c").addr_spec == b"a@b.c"
    assert mbox(None, b"a", None).addr_spec == b"a"


def test_huge_address_list_value_is_cut() -> None:
    raw = b"a@b.c, " * 50_000  # 350 KB
    result, truncated = parse_address_list_limited(raw)
    assert truncated
    assert 0 < len(result) <= MAX_ADDRESSES
