"""index_message on realistic messages: exact BODYSTRUCTURE, BODY, ENVELOPE and byte ranges.

Expected strings are worked out by hand from RFC 9051 §7.5.2 and RFC 2046 §5.1.1 (the line
end before a delimiter belongs to the delimiter), in the form Dovecot sends.
"""

from __future__ import annotations

from mailkeep.mime import (
    decode_header_value,
    find_section,
    imap_bodystructure,
    imap_envelope,
    index_message,
    iter_parts,
)


def crlf(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


def section(data: bytes, root, spec: str) -> bytes | None:
    found = find_section(root, spec)
    return None if found is None else data[found[0] : found[1]]


SIMPLE = crlf(
    "Return-Path: <alice@example.org>",
    "Date: Mon, 7 Aug 2023 09:15:00 +0200",
    "From: Alice Martin <alice@example.org>",
    "To: Bob Stone <bob@example.com>",
    "Subject: Lunch on Friday?",
    "Message-ID: <lunch-1@example.org>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8; format=flowed",
    "Content-Transfer-Encoding: 8bit",
    "",
    "Hi Bob,",
    "",
    "Lunch on Friday at noon?",
    "",
    "Alice",
)


def test_simple_text_message() -> None:
    root = index_message(SIMPLE)
    # Body: "Hi Bob,\r\n" 9 + "\r\n" 2 + "Lunch on Friday at noon?\r\n" 26 + "\r\n" 2 + "Alice\r\n" 7.
    assert imap_bodystructure(root) == (
        b'("text" "plain" ("charset" "utf-8" "format" "flowed") NIL NIL "8bit" 46 5'
        b" NIL NIL NIL NIL)"
    )
    assert imap_bodystructure(root, extended=False) == (
        b'("text" "plain" ("charset" "utf-8" "format" "flowed") NIL NIL "8bit" 46 5)'
    )
    assert imap_envelope(root.envelope) == (
        b'("Mon, 7 Aug 2023 09:15:00 +0200" "Lunch on Friday?"'
        b' (("Alice Martin" NIL "alice" "example.org"))'
        b' (("Alice Martin" NIL "alice" "example.org"))'
        b' (("Alice Martin" NIL "alice" "example.org"))'
        b' (("Bob Stone" NIL "bob" "example.com")) NIL NIL NIL "<lunch-1@example.org>")'
    )
    assert root.defects == []


def test_simple_text_sections() -> None:
    root = index_message(SIMPLE)
    header_end = SIMPLE.index(b"\r\n\r\n") + 4
    assert section(SIMPLE, root, "") == SIMPLE
    assert section(SIMPLE, root, "HEADER") == SIMPLE[:header_end]
    assert section(SIMPLE, root, "TEXT") == SIMPLE[header_end:]
    # RFC 9051 §6.4.5: a non-multipart message has a part 1, its body.
    assert section(SIMPLE, root, "1") == SIMPLE[header_end:]
    assert section(SIMPLE, root, "1.MIME") == SIMPLE[:header_end]
    assert section(SIMPLE, root, "2") is None
    assert section(SIMPLE, root, "1.1") is None
    assert section(SIMPLE, root, "1.HEADER") is None


MIXED = crlf(
    "From: Carol <carol@example.net>",
    "To: team@example.com",
    "Subject: Report",
    "Date: Tue, 8 Aug 2023 10:00:00 +0000",
    "Message-ID: <r1@example.net>",
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="outer"',
    "",
    "This is a multi-part message in MIME format.",
    "--outer",
    'Content-Type: multipart/alternative; boundary="inner"',
    "",
    "--inner",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "See the attached report.",
    "",
    "--inner",
    "Content-Type: text/html; charset=us-ascii",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "<p>See the attached report.</p>",
    "--inner--",
    "",
    "--outer",
    'Content-Type: application/pdf; name="report.pdf"',
    'Content-Disposition: attachment; filename="report.pdf"',
    "Content-Transfer-Encoding: base64",
    "Content-ID: <pdf1@example.net>",
    "Content-Description: Quarterly report",
    "",
    "JVBERi0xLjQK",
    "--outer",
    "Content-Type: image/png",
    "Content-Disposition: inline",
    "Content-Transfer-Encoding: base64",
    "Content-Language: en",
    "",
    "iVBORw0KGgo=",
    "--outer--",
)


def test_mixed_with_alternative_and_attachments() -> None:
    root = index_message(MIXED)
    # multipart/alternative body: "--inner\r\n" 9, its header 44 + 2, "See the attached
    # report.\r\n\r\n" 28, "--inner\r\n" 9, header 43 + 45 + 2, "<p>...</p>\r\n" 33,
    # "--inner--\r\n" 11 = 226 (the CRLF before "--outer" belongs to the delimiter).
    assert imap_bodystructure(root) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 26 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "quoted-printable" 31 0'
        b' NIL NIL NIL NIL) "alternative" ("boundary" "inner") NIL NIL NIL)'
        b'("application" "pdf" ("name" "report.pdf") "<pdf1@example.net>" "Quarterly report"'
        b' "base64" 12 NIL ("attachment" ("filename" "report.pdf")) NIL NIL)'
        b'("image" "png" NIL NIL NIL "base64" 12 NIL ("inline" NIL) ("en") NIL)'
        b' "mixed" ("boundary" "outer") NIL NIL NIL)'
    )
    assert imap_bodystructure(root, extended=False) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 26 1)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "quoted-printable" 31 0)'
        b' "alternative")'
        b'("application" "pdf" ("name" "report.pdf") "<pdf1@example.net>" "Quarterly report"'
        b' "base64" 12)'
        b'("image" "png" NIL NIL NIL "base64" 12) "mixed")'
    )
    alternative = root.children[0]
    assert alternative.size == 226
    assert all(part.defects == [] for part in iter_parts(root))


def test_mixed_sections() -> None:
    root = index_message(MIXED)
    assert section(MIXED, root, "1.1") == b"See the attached report.\r\n"
    assert section(MIXED, root, "1.2") == b"<p>See the attached report.</p>"
    assert section(MIXED, root, "1.2.MIME") == (
        b"Content-Type: text/html; charset=us-ascii\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    assert section(MIXED, root, "2") == b"JVBERi0xLjQK"
    assert section(MIXED, root, "3") == b"iVBORw0KGgo="
    assert section(MIXED, root, "3.MIME").startswith(b"Content-Type: image/png\r\n")
    assert section(MIXED, root, "1").startswith(b"--inner\r\n")
    assert section(MIXED, root, "1").endswith(b"--inner--\r\n")
    assert section(MIXED, root, "4") is None
    assert section(MIXED, root, "2.1") is None
    # The TEXT of the message includes the preamble and the close delimiter.
    assert section(MIXED, root, "TEXT").startswith(b"This is a multi-part message")
    assert section(MIXED, root, "TEXT").endswith(b"--outer--\r\n")


FORWARD_INNER = crlf(
    "From: Frank <frank@example.net>",
    "To: dave@example.com",
    "Subject: Photos",
    "Date: Tue, 8 Aug 2023 20:00:00 +0100",
    "Message-ID: <photos@example.net>",
    "Content-Type: multipart/mixed; boundary=inner",
    "",
    "--inner",
    "Content-Type: text/plain; charset=utf-8",
    "",
    "Here they are.",
    "",
    "--inner",
    "Content-Type: image/jpeg; name=a.jpg",
    "Content-Transfer-Encoding: base64",
    "",
    "/9j/4AAQ",
    "--inner--",
)

FORWARD = crlf(
    "From: dave@example.com",
    "To: erin@example.org",
    "Subject: Fwd: Photos",
    "Date: Wed, 9 Aug 2023 08:00:00 -0400",
    "MIME-Version: 1.0",
    "Content-Type: multipart/mixed; boundary=fwd",
    "",
    "--fwd",
    "Content-Type: text/plain",
    "",
    "Forwarding.",
    "",
    "--fwd",
    "Content-Type: message/rfc822",
    "Content-Description: Photos",
    "",
) + FORWARD_INNER + crlf("", "--fwd--")


def test_message_rfc822_containing_multipart() -> None:
    root = index_message(FORWARD)
    inner_size = len(FORWARD_INNER)  # ends with "--inner--\r\n"; the blank line is the delimiter's
    inner_lines = FORWARD_INNER.count(b"\n")
    assert (inner_size, inner_lines) == (368, 18)
    inner_header_size = FORWARD_INNER.index(b"\r\n\r\n") + 4
    expected = (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1 NIL NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL "Photos" "7bit" 368'
        b' ("Tue, 8 Aug 2023 20:00:00 +0100" "Photos" (("Frank" NIL "frank" "example.net"))'
        b' (("Frank" NIL "frank" "example.net")) (("Frank" NIL "frank" "example.net"))'
        b' ((NIL NIL "dave" "example.com")) NIL NIL NIL "<photos@example.net>")'
        b' (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 16 1 NIL NIL NIL NIL)'
        b'("image" "jpeg" ("name" "a.jpg") NIL NIL "base64" 8 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "inner") NIL NIL NIL) 18 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "fwd") NIL NIL NIL)'
    )
    assert imap_bodystructure(root) == expected

    assert section(FORWARD, root, "2") == FORWARD_INNER
    assert section(FORWARD, root, "2.HEADER") == FORWARD_INNER[:inner_header_size]
    assert section(FORWARD, root, "2.HEADER.FIELDS (Subject)") == FORWARD_INNER[:inner_header_size]
    assert section(FORWARD, root, "2.TEXT") == FORWARD_INNER[inner_header_size:]
    assert section(FORWARD, root, "2.MIME") == (
        b"Content-Type: message/rfc822\r\nContent-Description: Photos\r\n\r\n"
    )
    assert section(FORWARD, root, "2.1") == b"Here they are.\r\n"
    assert section(FORWARD, root, "2.2") == b"/9j/4AAQ"
    assert section(FORWARD, root, "2.2.MIME") == (
        b"Content-Type: image/jpeg; name=a.jpg\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    assert section(FORWARD, root, "1.TEXT") is None  # part 1 is not a message
    assert section(FORWARD, root, "2.3") is None

    message_part = root.children[1]
    assert message_part.message is not None
    assert message_part.message.header_start == message_part.body_start
    assert message_part.message.body_end == message_part.body_end


def test_multipart_digest_defaults_to_message_rfc822() -> None:
    data = crlf(
        "From: list@example.org",
        "Subject: Digest 42",
        "Content-Type: multipart/digest; boundary=d",
        "",
        "--d",
        "",
        "From: x@example.com",
        "Subject: first post",
        "",
        "Hello list.",
        "--d",
        "Content-Type: text/plain",
        "",
        "Not a message.",
        "--d--",
    )
    root = index_message(data)
    first, second = root.children
    # RFC 2046 §5.1.5: in a digest, a part without Content-Type is message/rfc822.
    assert first.content_type == "message/rfc822"
    assert first.message is not None
    assert first.message.envelope.subject == b"first post"
    assert second.content_type == "text/plain"
    assert imap_bodystructure(root, extended=False) == (
        b'(("message" "rfc822" NIL NIL NIL "7bit" 55'
        b' (NIL "first post" ((NIL NIL "x" "example.com")) ((NIL NIL "x" "example.com"))'
        b' ((NIL NIL "x" "example.com")) NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 0) 3)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 0) "digest")'
    )


def test_rfc2231_filename_continuation_with_charset() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=x",
        "",
        "--x",
        "Content-Type: application/vnd.ms-excel;",
        " name*0*=utf-8''%E2%82%AC%20rates%20;",
        ' name*1="for 2024.xls"',
        "Content-Disposition: attachment;",
        "    filename*0*=iso-8859-1'fr'%E9t%E9%20;",
        "    filename*1*=2024.xls",
        "",
        "AAAA",
        "--x--",
    )
    root = index_message(data)
    part = root.children[0]
    assert part.params == {"name": "€ rates for 2024.xls"}
    assert part.disposition == "attachment"
    assert part.disposition_params == {"filename": "été 2024.xls"}
    # Without UTF8=ACCEPT, 8-bit values go out as RFC 2231 extended values.
    assert imap_bodystructure(part) == (
        b'("application" "vnd.ms-excel" ("name*" "utf-8\'\'%E2%82%AC%20rates%20for%202024.xls")'
        b' NIL NIL "7bit" 4 NIL ("attachment" ("filename*" "utf-8\'\'%C3%A9t%C3%A9%202024.xls"))'
        b" NIL NIL)"
    )
    assert imap_bodystructure(part, utf8=True) == (
        '("application" "vnd.ms-excel" ("name" "€ rates for 2024.xls") NIL NIL "7bit" 4'
        ' NIL ("attachment" ("filename" "été 2024.xls")) NIL NIL)'
    ).encode()


def test_group_syntax_in_to() -> None:
    data = crlf(
        "From: Newsletter <news@example.com>",
        "To: undisclosed-recipients:;",
        "Cc: Friends: ann@example.org, \"Lee, Bo\" <bo@example.org>;, zed@example.net",
        "Subject: =?UTF-8?Q?Caf=C3=A9?= news",
        "",
        "Hi",
    )
    root = index_message(data)
    assert imap_envelope(root.envelope) == (
        b'(NIL "=?UTF-8?Q?Caf=C3=A9?= news" (("Newsletter" NIL "news" "example.com"))'
        b' (("Newsletter" NIL "news" "example.com")) (("Newsletter" NIL "news" "example.com"))'
        b' ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
        b' ((NIL NIL "Friends" NIL)(NIL NIL "ann" "example.org")("Lee, Bo" NIL "bo" "example.org")'
        b'(NIL NIL NIL NIL)(NIL NIL "zed" "example.net")) NIL NIL NIL)'
    )
    # ENVELOPE carries the subject raw; decoded for display it reads naturally.
    assert decode_header_value(root.envelope.subject) == "Café news"


def test_multipart_without_any_delimiter_is_shown_as_text() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=nowhere",
        "",
        "--elsewhere",
        "Content-Type: text/plain",
        "",
        "The body is still readable.",
    )
    root = index_message(data)
    assert root.content_type == "text/plain"
    assert root.children == []
    assert any("no boundary delimiter" in d for d in root.defects)
    assert section(data, root, "1") == data[data.index(b"--elsewhere") :]


def test_multipart_without_boundary_parameter() -> None:
    data = crlf("Content-Type: multipart/mixed", "", "text")
    root = index_message(data)
    assert root.content_type == "text/plain"
    assert root.params == {}
    assert any("boundary" in d for d in root.defects)


def test_unterminated_multipart_keeps_the_last_part_to_the_end() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "--b",
        "",
        "first",
        "--b",
        "Content-Type: text/html",
        "",
        "<p>cut off",
    )
    root = index_message(data)
    assert [child.content_type for child in root.children] == ["text/plain", "text/html"]
    assert section(data, root, "2") == b"<p>cut off\r\n"
    assert any("not terminated" in d for d in root.defects)


def test_close_delimiter_only_gives_an_empty_placeholder_part() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=b", "", "--b--")
    root = index_message(data)
    assert root.children == []
    assert imap_bodystructure(root) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "b") NIL NIL NIL)'
    )
    assert find_section(root, "1") is None


def test_boundary_that_is_a_prefix_of_another() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=abc",
        "",
        "--abc",
        "Content-Type: multipart/alternative; boundary=abcdef",
        "",
        "--abcdef",
        "",
        "plain",
        "--abcdef",
        "Content-Type: text/html",
        "",
        "<b>html</b>",
        "--abcdef--",
        "--abc",
        "Content-Type: image/gif",
        "",
        "R0lGOD",
        "--abc--",
    )
    root = index_message(data)
    assert [c.content_type for c in root.children] == ["multipart/alternative", "image/gif"]
    assert [c.content_type for c in root.children[0].children] == ["text/plain", "text/html"]
    assert section(data, root, "1.1") == b"plain"
    assert section(data, root, "1.2") == b"<b>html</b>"
    assert section(data, root, "2") == b"R0lGOD"


def test_inner_boundary_prefixed_by_outer() -> None:
    # The outer boundary is the longer one: "--abc" lines must not end the outer parts.
    data = crlf(
        "Content-Type: multipart/mixed; boundary=abcdef",
        "",
        "--abcdef",
        "Content-Type: multipart/alternative; boundary=abc",
        "",
        "--abc",
        "",
        "one",
        "--abc",
        "",
        "two",
        "--abc--",
        "--abcdef",
        "",
        "three",
        "--abcdef--",
    )
    root = index_message(data)
    assert len(root.children) == 2
    assert [section(data, root, s) for s in ("1.1", "1.2", "2")] == [b"one", b"two", b"three"]


def test_transport_padding_after_delimiters() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=pad",
        "",
        "--pad  \t",
        "",
        "padded",
        "--pad-- ",
        "epilogue",
    )
    root = index_message(data)
    assert len(root.children) == 1
    assert section(data, root, "1") == b"padded"


def test_lf_only_message_offsets() -> None:
    data = MIXED.replace(b"\r\n", b"\n")
    root = index_message(data)
    assert section(data, root, "1.1") == b"See the attached report.\n"
    assert section(data, root, "1.2") == b"<p>See the attached report.</p>"
    assert section(data, root, "2") == b"JVBERi0xLjQK"
    assert section(data, root, "3.MIME") == (
        b"Content-Type: image/png\nContent-Disposition: inline\n"
        b"Content-Transfer-Encoding: base64\nContent-Language: en\n\n"
    )
    assert section(data, root, "HEADER") == data[: data.index(b"\n\n") + 2]
    # Sizes are octets of the data as given.
    assert root.children[0].children[0].size == len(b"See the attached report.\n")


def test_empty_message() -> None:
    root = index_message(b"")
    assert (root.header_start, root.body_start, root.body_end) == (0, 0, 0)
    assert imap_bodystructure(root) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
    )
    assert imap_envelope(root.envelope) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_empty_body() -> None:
    data = crlf("Subject: nothing", "")
    root = index_message(data)
    assert root.body_start == root.body_end == len(data)
    assert section(data, root, "TEXT") == b""
    assert section(data, root, "HEADER") == data


def test_header_without_body_or_blank_line() -> None:
    data = b"Subject: only a header\r\nFrom: a@example.com"
    root = index_message(data)
    assert root.body_start == root.body_end == len(data)
    assert root.envelope.subject == b"only a header"
    assert section(data, root, "HEADER") == data
    assert section(data, root, "TEXT") == b""


def test_body_without_header() -> None:
    data = b"\r\njust a body\r\n"
    root = index_message(data)
    assert (root.header_start, root.body_start) == (0, 2)
    assert section(data, root, "TEXT") == b"just a body\r\n"


def test_folded_header_values() -> None:
    data = crlf(
        "Subject: a long",
        "\tsubject line",
        "Content-Type: text/plain;",
        ' charset="iso-8859-1"',
        "",
        "x",
    )
    root = index_message(data)
    assert root.envelope.subject == b"a long\tsubject line"
    assert root.params == {"charset": "iso-8859-1"}


def test_invalid_content_type_defaults_to_text_plain() -> None:
    root = index_message(crlf("Content-Type: garbage", "", "body"))
    assert root.content_type == "text/plain"
    assert root.defects


def test_base64_encoded_message_rfc822_is_not_parsed() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b",
        "",
        "--b",
        "Content-Type: message/rfc822",
        "Content-Transfer-Encoding: base64",
        "",
        "RnJvbTogYUBiLmMNCg0KaGk=",
        "--b--",
    )
    root = index_message(data)
    part = root.children[0]
    assert part.content_type == "application/octet-stream"
    assert part.message is None
    assert imap_bodystructure(part, extended=False) == (
        b'("application" "octet-stream" NIL NIL NIL "base64" 24)'
    )


def test_message_global_is_encapsulated() -> None:
    inner = "From: Zoë <zoe@example.org>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    data = crlf("Content-Type: message/global", "") + inner
    root = index_message(data)
    assert root.message is not None
    assert root.message.envelope.subject == "Grüße".encode()
    assert imap_bodystructure(root, extended=False).startswith(b'("message" "global" NIL')
    assert section(data, root, "1.TEXT") == b"Hallo\r\n"


def test_content_fields_are_kept() -> None:
    data = crlf(
        "Content-Type: text/plain",
        "Content-ID: <id1@example.com>",
        "Content-Description: =?utf-8?q?R=C3=A9sum=C3=A9?=",
        "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==",
        "Content-Language: en-GB (British), cy",
        "Content-Location: http://example.com/a.txt",
        "Content-Disposition: INLINE",
        "Content-Transfer-Encoding: Quoted-Printable",
        "",
        "x",
    )
    root = index_message(data)
    assert root.content_id == "<id1@example.com>"
    assert root.description == "=?utf-8?q?R=C3=A9sum=C3=A9?="
    assert root.md5 == "Q2hlY2sgSW50ZWdyaXR5IQ=="
    assert root.language == ["en-GB", "cy"]
    assert root.location == "http://example.com/a.txt"
    assert root.disposition == "inline"
    # Decoding uses the lower-cased name; BODYSTRUCTURE shows it as written (as Dovecot).
    assert root.encoding == "quoted-printable" and root.encoding_raw == "Quoted-Printable"
    assert imap_bodystructure(root) == (
        b'("text" "plain" ("charset" "us-ascii") "<id1@example.com>"'
        b' "=?utf-8?q?R=C3=A9sum=C3=A9?=" "Quoted-Printable" 3 1 "Q2hlY2sgSW50ZWdyaXR5IQ=="'
        b' ("inline" NIL) ("en-GB" "cy") "http://example.com/a.txt")'
    )


def test_first_header_occurrence_wins() -> None:
    data = crlf("Subject: first", "Subject: second", "Content-Type: text/html", "Content-Type: image/png", "", "")
    root = index_message(data)
    assert root.envelope.subject == b"first"
    assert root.content_type == "text/html"


def test_memoryview_and_bytearray_input() -> None:
    assert index_message(bytearray(SIMPLE)) == index_message(SIMPLE)
    assert index_message(memoryview(SIMPLE)) == index_message(SIMPLE)
