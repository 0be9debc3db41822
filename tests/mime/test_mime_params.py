"""Content-Type and Content-Disposition values (RFC 2045 §5.1, RFC 2183, RFC 2231)."""

from __future__ import annotations

import pytest

from mailkeep.mime.params import (
    parse_content_type,
    parse_disposition,
    parse_language,
    parse_transfer_encoding,
)


@pytest.mark.parametrize(
    ("raw", "media_type", "params"),
    [
        (b"text/plain", "text/plain", {}),
        (b"Text/HTML; Charset=UTF-8", "text/html", {"charset": "UTF-8"}),
        (b'multipart/mixed; boundary="----=_Part_1"', "multipart/mixed",
         {"boundary": "----=_Part_1"}),
        (b"text/plain;charset=us-ascii;format=flowed;", "text/plain",
         {"charset": "us-ascii", "format": "flowed"}),
        # Comments and white space anywhere between tokens (RFC 2045 §5.1).
        (b"text (a comment) / plain ; charset = \"utf-8\" (more)", "text/plain",
         {"charset": "utf-8"}),
        (b'text/plain; title="a \\"quoted\\" word"', "text/plain",
         {"title": 'a "quoted" word'}),
        # Tolerated: the ";" is missing, the value has spaces, the quote is unterminated.
        (b"text/html charset=utf-8", "text/html", {"charset": "utf-8"}),
        (b"application/pdf; name=my report.pdf", "application/pdf", {"name": "my report.pdf"}),
        (b'application/pdf; name="unterminated', "application/pdf", {"name": "unterminated"}),
        # Duplicates: the first one counts.
        (b"text/plain; charset=a; charset=b", "text/plain", {"charset": "a"}),
        # RFC 2231 §4: charset and language.
        (b"application/x-stuff; title*=us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A",
         "application/x-stuff", {"title": "This is ***fun***"}),
        # RFC 2231 §3: continuations, in any order.
        (b'message/external-body; access-type=URL; URL*1="cgi-bin/foo";'
         b' URL*0="ftp://"', "message/external-body",
         {"access-type": "URL", "url": "ftp://cgi-bin/foo"}),
        # RFC 2231 §4.1: mixed encoded and plain sections.
        (b"application/x-stuff; title*0*=us-ascii'en'This%20is%20even%20more%20;"
         b" title*1*=%2A%2A%2Afun%2A%2A%2A%20; title*2=\"isn't it!\"",
         "application/x-stuff", {"title": "This is even more ***fun*** isn't it!"}),
        # The RFC 2231 form wins over a plain one of the same name.
        (b"text/plain; name=fallback.txt; name*=utf-8''%E2%82%AC.txt", "text/plain",
         {"name": "€.txt"}),
        # Raw UTF-8 in a quoted value (RFC 6532).
        ('text/plain; name="Résumé.txt"'.encode(), "text/plain", {"name": "Résumé.txt"}),
    ],
)
def test_content_type(raw: bytes, media_type: str, params: dict[str, str]) -> None:
    parsed_type, parsed_params, _ = parse_content_type(raw)
    assert parsed_type == media_type
    assert parsed_params == params


@pytest.mark.parametrize("raw", [b"", b"text", b"text/", b"/plain", b"(only a comment)", b"\xff/x"])
def test_unusable_content_type(raw: bytes) -> None:
    media_type, params, defects = parse_content_type(raw)
    assert media_type is None
    assert params == {}
    assert defects


def test_raw_8bit_parameter_bytes_survive() -> None:
    _, params, _ = parse_content_type(b"text/plain; name=\"caf\xe9.txt\"")
    assert params["name"].encode("utf-8", "surrogateescape") == b"caf\xe9.txt"


def test_rfc2231_unknown_charset_and_gap() -> None:
    _, params, defects = parse_content_type(b"a/b; x*0*=bogus''%41; x*2=C")
    assert params == {"x": "A"}
    assert any("gap" in d for d in defects)


def test_rfc2231_without_charset_quotes() -> None:
    _, params, defects = parse_content_type(b"a/b; x*=%41%42")
    assert params == {"x": "AB"}
    assert defects


def test_parameter_count_is_limited() -> None:
    raw = b"a/b" + b"".join(b"; p%d=v" % i for i in range(1000))
    _, params, defects = parse_content_type(raw)
    assert len(params) == 256
    assert any("more than" in d for d in defects)


@pytest.mark.parametrize(
    ("raw", "kind", "params"),
    [
        (b"attachment; filename=genome.jpeg;\r\n modification-date=\"Wed, 12 Feb 1997 16:29:51 -0500\"",
         "attachment",
         {"filename": "genome.jpeg", "modification-date": "Wed, 12 Feb 1997 16:29:51 -0500"}),
        (b"INLINE", "inline", {}),
        (b"attachment; filename*=UTF-8''%F0%9F%93%8E.txt", "attachment", {"filename": "📎.txt"}),
        (b"; filename=x", None, {}),
    ],
)
def test_disposition(raw: bytes, kind: str | None, params: dict[str, str]) -> None:
    parsed_kind, parsed_params, _ = parse_disposition(raw)
    assert parsed_kind == kind
    assert parsed_params == params


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [(b"base64", "base64"), (b" Quoted-Printable ", "quoted-printable"), (b"8bit (comment)", "8bit"),
     (b"?invalid", None), (b"", None), (b"7bit junk", None)],
)
def test_transfer_encoding(raw: bytes, encoding: str | None) -> None:
    assert parse_transfer_encoding(raw) == encoding


@pytest.mark.parametrize(
    ("raw", "tags"),
    [(b"en", ["en"]), (b"en, fi,se", ["en", "fi", "se"]), (b"(comment) de-CH", ["de-CH"]),
     (b"", None), (b",,", None)],
)
def test_language(raw: bytes, tags: list[str] | None) -> None:
    assert parse_language(raw) == tags


def test_huge_values_are_cut_to_the_limit() -> None:
    media_type, params, defects = parse_content_type(b"text/plain; name=" + b"a" * 70_000)
    assert media_type == "text/plain"
    assert len(params["name"]) < 65_536
    assert any("longer than 65536 bytes" in d for d in defects)
    kind, _, defects = parse_disposition(b"attachment;" + b";" * 100_000)
    assert kind == "attachment"
    assert len(defects) <= 20
    assert parse_transfer_encoding(b" " * 70_000 + b"base64") is None


def test_language_tag_count_is_limited() -> None:
    tags = parse_language(b", ".join(b"l%d" % i for i in range(100)))
    assert tags is not None
    assert len(tags) == 64
