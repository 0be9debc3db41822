"""IMAP output: strings and literals, ENVELOPE, BODYSTRUCTURE edge cases, section specs."""

from __future__ import annotations

import pytest

from mailkeep.mime import (
    Envelope,
    EnvelopeAddress,
    Part,
    find_section,
    imap_bodystructure,
    imap_envelope,
    index_message,
)
from mailkeep.mime.imap import imap_nstring, imap_string


def crlf(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"plain", b'"plain"'),
        (b"", b'""'),
        (b'say "hi" \\ bye', b'"say \\"hi\\" \\\\ bye"'),
        (b"two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        ("café".encode(), b"{5}\r\ncaf\xc3\xa9"),
        (b"nul\x00byte", b'"nulbyte"'),  # no IMAP string may carry NUL
    ],
)
def test_imap_string(value: bytes, wire: bytes) -> None:
    assert imap_string(value) == wire


def test_imap_string_utf8_mode() -> None:
    assert imap_string("café".encode(), utf8=True) == '"café"'.encode()
    # Invalid UTF-8 still needs a literal.
    assert imap_string(b"caf\xe9", utf8=True) == b"{4}\r\ncaf\xe9"
    assert imap_nstring(None) == b"NIL"
    assert imap_nstring("x") == b'"x"'


def test_envelope_with_8bit_subject_uses_a_literal(imap_parse) -> None:
    data = "Subject: Grüße\r\nFrom: Zoë <zoe@example.org>\r\n\r\n".encode()
    envelope = index_message(data).envelope
    wire = imap_envelope(envelope)
    assert wire.startswith(b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe ((")
    parsed = imap_parse(wire)
    assert parsed[1] == "Grüße".encode()
    assert parsed[2] == [["Zoë".encode(), None, b"zoe", b"example.org"]]
    assert imap_envelope(envelope, utf8=True).startswith('(NIL "Grüße" (("Zoë" NIL'.encode())


def test_envelope_of_hand_built_value_defaults_and_strips_line_breaks() -> None:
    sender = [EnvelopeAddress(b"A", None, b"a", b"example.org")]
    envelope = Envelope(subject=b"folded\r\n subject", from_=sender)
    assert imap_envelope(envelope) == (
        b'(NIL "folded subject" (("A" NIL "a" "example.org")) (("A" NIL "a" "example.org"))'
        b' (("A" NIL "a" "example.org")) NIL NIL NIL NIL NIL)'
    )


def test_envelope_quoting_in_names_and_message_id() -> None:
    data = crlf(
        'From: "Dr. \\"Q\\" Smith" <q@example.org>',
        "Message-ID: <a\"b@example.org>",
        "In-Reply-To: <x@example.org> <y@example.org>",
        "",
    )
    assert imap_envelope(index_message(data).envelope) == (
        b'(NIL NIL (("Dr. \\"Q\\" Smith" NIL "q" "example.org"))'
        b' (("Dr. \\"Q\\" Smith" NIL "q" "example.org"))'
        b' (("Dr. \\"Q\\" Smith" NIL "q" "example.org")) NIL NIL NIL'
        b' "<x@example.org> <y@example.org>" "<a\\"b@example.org>")'
    )


def test_reply_to_and_sender_present_but_empty_default_to_from() -> None:
    data = crlf("From: a@example.org", "Sender:", "Reply-To:  ", "")
    envelope = index_message(data).envelope
    assert envelope.sender == envelope.from_ == envelope.reply_to


def test_bodystructure_of_8bit_description_is_a_literal(imap_parse) -> None:
    data = "Content-Description: Résumé\r\n\r\nx".encode()
    wire = imap_bodystructure(index_message(data))
    assert imap_parse(wire)[4] == "Résumé".encode()


def test_bodystructure_raw_8bit_parameter_round_trips_its_bytes(imap_parse) -> None:
    data = b"Content-Type: text/plain; name=\"caf\xe9.txt\"\r\n\r\nx"
    root = index_message(data)
    parsed = imap_parse(imap_bodystructure(root))
    assert parsed[2] == [b"name*", b"utf-8''caf%E9.txt", b"charset", b"us-ascii"]
    parsed = imap_parse(imap_bodystructure(root, utf8=True))
    assert parsed[2] == [b"name", b"caf\xe9.txt", b"charset", b"us-ascii"]


def test_hand_built_parts_always_give_valid_bodystructure(imap_parse) -> None:
    unparsed_message = Part(0, 10, 20, content_type="message/rfc822")
    assert imap_bodystructure(unparsed_message, extended=False) == (
        b'("application" "octet-stream" NIL NIL NIL "7bit" 10)'
    )
    empty_multipart = Part(0, 10, 20, content_type="multipart/related")
    assert imap_bodystructure(empty_multipart, extended=False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "related")'
    )
    no_subtype = Part(0, 0, 0, content_type="text")
    assert imap_parse(imap_bodystructure(no_subtype))[:2] == [b"application", b"octet-stream"]


def test_deep_tree_serializes_without_recursion(imap_parse) -> None:
    root = Part(0, 0, 0, content_type="multipart/mixed")
    part = root
    for _ in range(5000):
        child = Part(0, 0, 0, content_type="multipart/mixed")
        part.children.append(child)
        part = child
    part.children.append(Part(0, 0, 0))
    wire = imap_bodystructure(root, extended=False)
    assert wire.startswith(b"(" * 5001 + b'("text" "plain"')
    assert wire.count(b'"mixed")') == 5001


# RFC 9051 §6.4.5 example: the structure of its sample message, built for real.
NESTED = crlf(
    "Subject: sections",
    "Content-Type: multipart/mixed; boundary=A",
    "",
    "--A",
    "",
    "part 1",
    "--A",
    "Content-Type: application/octet-stream",
    "",
    "part 2",
    "--A",
    "Content-Type: message/rfc822",
    "",
    "Subject: part 3",
    "Content-Type: multipart/mixed; boundary=B",
    "",
    "--B",
    "",
    "part 3.1",
    "--B",
    "Content-Type: application/octet-stream",
    "",
    "part 3.2",
    "--B--",
    "--A",
    "Content-Type: multipart/mixed; boundary=C",
    "",
    "--C",
    "Content-Type: image/gif",
    "",
    "part 4.1",
    "--C",
    "Content-Type: message/rfc822",
    "",
    "Subject: part 4.2",
    "Content-Type: multipart/mixed; boundary=D",
    "",
    "--D",
    "",
    "part 4.2.1",
    "--D",
    "Content-Type: multipart/alternative; boundary=E",
    "",
    "--E",
    "",
    "part 4.2.2.1",
    "--E",
    "Content-Type: text/richtext",
    "",
    "part 4.2.2.2",
    "--E--",
    "--D--",
    "--C--",
    "--A--",
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1", b"part 1"),
        ("2", b"part 2"),
        ("3.HEADER", b"Subject: part 3\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"),
        ("3.1", b"part 3.1"),
        ("3.2", b"part 3.2"),
        ("4.1", b"part 4.1"),
        ("4.1.MIME", b"Content-Type: image/gif\r\n\r\n"),
        ("4.2.HEADER", b"Subject: part 4.2\r\nContent-Type: multipart/mixed; boundary=D\r\n\r\n"),
        ("4.2.1", b"part 4.2.1"),
        ("4.2.2.1", b"part 4.2.2.1"),
        ("4.2.2.2", b"part 4.2.2.2"),
        ("4.2.2.2.MIME", b"Content-Type: text/richtext\r\n\r\n"),
        ("4.2.header.fields (Subject)",
         b"Subject: part 4.2\r\nContent-Type: multipart/mixed; boundary=D\r\n\r\n"),
        ("4.2.HEADER.FIELDS.NOT (Subject)",
         b"Subject: part 4.2\r\nContent-Type: multipart/mixed; boundary=D\r\n\r\n"),
    ],
)
def test_rfc9051_section_example(spec: str, expected: bytes) -> None:
    root = index_message(NESTED)
    start, end = find_section(root, spec)
    assert NESTED[start:end] == expected


def test_section_text_of_encapsulated_message() -> None:
    root = index_message(NESTED)
    start, end = find_section(root, "3.TEXT")
    assert NESTED[start:end] == (
        b"--B\r\n\r\npart 3.1\r\n--B\r\nContent-Type: application/octet-stream\r\n\r\n"
        b"part 3.2\r\n--B--"
    )


@pytest.mark.parametrize(
    "spec",
    ["0", "5", "01", "1.0", "2.1", "2.HEADER", "2.TEXT", "MIME", "1.", ".1", "1..1", "BODY",
     "3.3", "4.3", "4.2.2.3", "4.2.2.1.1", "99999999999", "1.HEADER.FIELDS.X", "x1"],
)
def test_nonexistent_sections(spec: str) -> None:
    assert find_section(index_message(NESTED), spec) is None


def test_section_specs_are_case_insensitive() -> None:
    root = index_message(NESTED)
    assert find_section(root, "3.header") == find_section(root, "3.HEADER")
    assert find_section(root, "header") == find_section(root, "HEADER")
    assert find_section(root, "text") == (root.body_start, root.body_end)
    assert find_section(root, "HEADER.FIELDS (From)") == (0, root.body_start)
