"""FETCH responses as a client sees them: item order, sections, partials, BINARY, PREVIEW.

Byte-for-byte parity with Dovecot is checked against a real Dovecot in
test_imap_fetch_dovecot.py; these tests pin the behaviour itself, including the places where
we follow the RFC rather than Dovecot, and the robustness against hostile messages.
"""

from __future__ import annotations

import base64
import mmap
import re
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.imap.commands import FetchAttribute, Section
from mailkeep.imap.fetch import (
    FetchError,
    FetchLimits,
    format_datetime,
    message_preview,
    needs_data,
    needs_structure,
    render_fetch,
    sets_seen,
)
from mailkeep.mime import index_message
from mailkeep.store.api import MessageInfo

# 2020-02-01 01:34:05 UTC and 2024-12-09 08:07:06 UTC
INTERNAL_DATE = 1580520845.75
SAVE_DATE = 1733731626.0


def crlf(*lines: str | bytes) -> bytes:
    return b"".join((line if isinstance(line, bytes) else line.encode()) + b"\r\n"
                    for line in lines)


def info_for(data: bytes, *, uid: int = 4827, flags: tuple[str, ...] = ("\\Seen",),
             modseq: int = 12345) -> MessageInfo:
    return MessageInfo(uid=uid, modseq=modseq, flags=flags, internal_date=INTERNAL_DATE,
                       save_date=SAVE_DATE, size=len(data))


def fetch(data: bytes, *items: FetchAttribute, seq: int = 12, **options: object) -> bytes:
    return render_fetch(seq, list(items), info_for(data), structure=index_message(data),
                        data=data, **options)  # type: ignore[arg-type]


def item(name: str, **options: object) -> FetchAttribute:
    return FetchAttribute(name, **options)  # type: ignore[arg-type]


def body(spec: str = "", *fields: str, partial: tuple[int, int] | None = None,
         peek: bool = True) -> FetchAttribute:
    words = spec.split(".") if spec else []
    numbers = []
    while words and words[0].isdigit():
        numbers.append(int(words.pop(0)))
    return FetchAttribute("BODY", Section(tuple(numbers), ".".join(words) or None, fields),
                          peek=peek, partial=partial)


def binary(spec: str = "", partial: tuple[int, int] | None = None,
           peek: bool = True) -> FetchAttribute:
    numbers = tuple(int(n) for n in spec.split(".")) if spec else ()
    return FetchAttribute("BINARY", Section(numbers), peek=peek, partial=partial)


def binary_size(spec: str = "") -> FetchAttribute:
    numbers = tuple(int(n) for n in spec.split(".")) if spec else ()
    return FetchAttribute("BINARY.SIZE", Section(numbers))


SIMPLE = crlf("From: Alice <alice@example.org>", "To: bob@example.com", "Subject: hello",
              "Message-ID: <1@example.org>", "", "Hello Bob,", "", "how are you?")

NESTED = crlf(
    "From: outer@example.org", "Subject: outer", "MIME-Version: 1.0",
    "Content-Type: multipart/mixed; boundary=outer", "",
    "--outer", "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: quoted-printable", "",
    "Caf=C3=A9 =3D soft=", "break.   ", "next=20",
    "--outer", "Content-Type: message/rfc822", "",
    "From: inner@example.org", "Subject: inner", "Content-Type: multipart/alternative; boundary=in",
    "",
    "--in", "Content-Type: text/plain", "", "inner plain",
    "--in", "Content-Type: text/html", "", "<p>inner html</p>",
    "--in--", "",
    "--outer", "Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64", "",
    base64.b64encode(b"bin\x00ary\xff").decode(),
    "--outer", "Content-Type: application/x-thing", "Content-Transfer-Encoding: x-uuencode", "",
    "begin 644 x",
    "--outer--")


# -- the small items and their order ---------------------------------------------------------

def test_small_items_come_first_in_the_order_asked() -> None:
    response = fetch(SIMPLE, body("TEXT"), item("RFC822.SIZE"), item("ENVELOPE"), item("UID"),
                     item("MODSEQ"), item("FLAGS"), item("INTERNALDATE"), item("SAVEDATE"))
    assert response.startswith(
        b'* 12 FETCH (RFC822.SIZE %d UID 4827 MODSEQ (12345) FLAGS (\\Seen) '
        b'INTERNALDATE "01-Feb-2020 01:34:05 +0000" SAVEDATE "09-Dec-2024 08:07:06 +0000" '
        b'BODY[TEXT] {28}\r\nHello Bob,\r\n\r\nhow are you?\r\n ENVELOPE (NIL "hello" '
        % len(SIMPLE))
    assert response.endswith(b' NIL NIL NIL "<1@example.org>"))\r\n')


def test_uid_fetch_puts_uid_first_and_once() -> None:
    response = fetch(SIMPLE, item("FLAGS"), item("UID"), include_uid=True)
    assert response == b"* 12 FETCH (UID 4827 FLAGS (\\Seen))\r\n"


def test_items_asked_twice_are_sent_once_but_sections_repeat() -> None:
    response = fetch(SIMPLE, item("FLAGS"), item("FLAGS"), item("BODY"), item("BODY"),
                     body("1", partial=(0, 5)), body("1", partial=(0, 5)))
    assert response == (
        b'* 12 FETCH (FLAGS (\\Seen) BODY ("text" "plain" ("charset" "us-ascii") NIL NIL '
        b'"7bit" 28 3) BODY[1]<0> {5}\r\nHello BODY[1]<0> {5}\r\nHello)\r\n')


def test_implied_flags_after_seen_follow_the_small_items() -> None:
    data = SIMPLE
    response = render_fetch(3, [body("1", peek=False), item("UID")],
                            info_for(data, flags=()), structure=index_message(data), data=data,
                            flags=("\\Seen",))
    assert response.startswith(b"* 3 FETCH (UID 4827 FLAGS (\\Seen) BODY[1] {28}\r\n")


def test_flags_override_without_seen_change_adds_nothing() -> None:
    # BODY.PEEK does not set \Seen: no implied FLAGS even if flags are passed.
    response = render_fetch(3, [body("1", partial=(0, 1))], info_for(SIMPLE),
                            structure=index_message(SIMPLE), data=SIMPLE, flags=("\\Seen",))
    assert response == b"* 3 FETCH (BODY[1]<0> {1}\r\nH)\r\n"
    # An asked-for FLAGS shows the new flags, not the stored ones.
    response = render_fetch(3, [item("FLAGS"), body("1", peek=False, partial=(0, 1))],
                            info_for(SIMPLE, flags=("\\Flagged",)),
                            structure=index_message(SIMPLE), data=SIMPLE,
                            flags=("\\Flagged", "\\Seen", "$Label"))
    assert response == b"* 3 FETCH (FLAGS (\\Flagged \\Seen $Label) BODY[1]<0> {1}\r\nH)\r\n"


@pytest.mark.parametrize(("timestamp", "text"), [
    (0, b'"01-Jan-1970 00:00:00 +0000"'),
    (INTERNAL_DATE, b'"01-Feb-2020 01:34:05 +0000"'),
    (951782400, b'"29-Feb-2000 00:00:00 +0000"'),
    (4102444799.999, b'"31-Dec-2099 23:59:59 +0000"'),
])
def test_date_time_format(timestamp: float, text: bytes) -> None:
    assert format_datetime(timestamp) == text


def test_empty_flags_and_large_modseq() -> None:
    data = SIMPLE
    response = render_fetch(1, [item("FLAGS"), item("MODSEQ")],
                            info_for(data, flags=(), modseq=2**63 - 1), structure=None,
                            data=None)
    assert response == b"* 1 FETCH (FLAGS () MODSEQ (9223372036854775807))\r\n"


# -- BODY sections -------------------------------------------------------------------------

def test_whole_message_needs_no_index() -> None:
    items = [body(), item("RFC822.SIZE")]
    assert not needs_structure(items)
    response = render_fetch(1, items, info_for(SIMPLE), structure=None, data=SIMPLE)
    assert response == b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\n" % (
        len(SIMPLE), len(SIMPLE), SIMPLE)


def test_header_text_and_rfc822_forms() -> None:
    header, text = SIMPLE.split(b"\r\n\r\n", 1)
    response = fetch(SIMPLE, body("HEADER"), item("RFC822.HEADER"), body("TEXT"),
                     item("RFC822.TEXT"), item("RFC822"))
    assert response == (
        b"* 12 FETCH (BODY[HEADER] {%d}\r\n%s\r\n\r\n RFC822.HEADER {%d}\r\n%s\r\n\r\n "
        b"BODY[TEXT] {%d}\r\n%s RFC822.TEXT {%d}\r\n%s RFC822 {%d}\r\n%s)\r\n"
        % (len(header) + 4, header, len(header) + 4, header, len(text), text, len(text), text,
           len(SIMPLE), SIMPLE))


def test_nested_message_sections() -> None:
    response = fetch(NESTED, body("2.HEADER.FIELDS", "SUBJECT"), body("2.MIME"),
                     body("2.TEXT", partial=(0, 4)), body("2.1"), body("2.2.MIME"),
                     body("2.HEADER", partial=(6, 5)))
    assert response == (
        b"* 12 FETCH (BODY[2.HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: inner\r\n\r\n "
        b"BODY[2.MIME] {32}\r\nContent-Type: message/rfc822\r\n\r\n "
        b"BODY[2.TEXT]<0> {4}\r\n--in BODY[2.1] {11}\r\ninner plain "
        b"BODY[2.2.MIME] {27}\r\nContent-Type: text/html\r\n\r\n "
        b"BODY[2.HEADER]<6> {5}\r\ninner)\r\n")


def test_missing_sections_are_empty() -> None:
    response = fetch(NESTED, body("7"), body("1.HEADER"), body("1.TEXT"), body("2.3"),
                     body("1.1.1"), body("MIME"), body("3.2"))
    assert response == (b"* 12 FETCH (BODY[7] {0}\r\n BODY[1.HEADER] {0}\r\n "
                        b"BODY[1.TEXT] {0}\r\n BODY[2.3] {0}\r\n BODY[1.1.1] {0}\r\n "
                        b"BODY[MIME] {0}\r\n BODY[3.2] {0}\r\n)\r\n")


def test_part_one_of_a_leaf_is_the_leaf() -> None:
    # Like Dovecot and UW-IMAP: a part that is not a multipart has a part 1, itself.
    response = fetch(NESTED, body("1.1.MIME"), body("1.MIME"))
    first, second = re.findall(rb"\{\d+\}\r\n(Content-Type[^{]*?\r\n\r\n)", response)
    assert first == second and first.startswith(b"Content-Type: text/plain")


def test_single_part_message_part_one_and_mime() -> None:
    response = fetch(SIMPLE, body("1"), body("1.MIME", partial=(0, 4)))
    assert response == (b"* 12 FETCH (BODY[1] {28}\r\nHello Bob,\r\n\r\nhow are you?\r\n "
                        b"BODY[1.MIME]<0> {4}\r\nFrom)\r\n")


def test_partial_names_only_the_origin_and_clips() -> None:
    size = len(SIMPLE)
    response = fetch(SIMPLE, body(partial=(size - 4, 100)), body(partial=(size, 10)),
                     body(partial=(10**12, 10)), body(partial=(0, 0)))
    assert response == (b"* 12 FETCH (BODY[]<%d> {4}\r\nu?\r\n BODY[]<%d> {0}\r\n "
                        b"BODY[]<1000000000000> {0}\r\n BODY[]<0> {0}\r\n)\r\n"
                        % (size - 4, size))


FOLDED = crlf("Received: from a (a [192.0.2.1])", "\tby b; Fri, 4 Apr 2025 12:00:00 +0000",
              "subject: a", "  folded", "From: f@example.org", "X-Dup: 1", "not a field",
              "x-DUP: 2", "Subject : second", "", "body")


def test_header_fields_match_case_insensitively_and_keep_folding_and_order() -> None:
    response = fetch(FOLDED, body("HEADER.FIELDS", "X-DUP", "SUBJECT", "RECEIVED"))
    content = crlf("Received: from a (a [192.0.2.1])", "\tby b; Fri, 4 Apr 2025 12:00:00 +0000",
                   "subject: a", "  folded", "X-Dup: 1", "x-DUP: 2", "Subject : second", "")
    assert response == (b"* 12 FETCH (BODY[HEADER.FIELDS (X-DUP SUBJECT RECEIVED)] {%d}\r\n"
                        b"%s)\r\n" % (len(content), content))


def test_header_fields_not_keeps_everything_else() -> None:
    response = fetch(FOLDED, body("HEADER.FIELDS.NOT", "RECEIVED", "X-DUP", "SUBJECT"))
    content = crlf("From: f@example.org", "not a field", "")
    assert response.endswith(b"{%d}\r\n%s)\r\n" % (len(content), content))


def test_header_fields_blank_line_only_when_the_message_has_one() -> None:
    # RFC 9051 §6.4.5: no blank line for a message without body and blank line.
    headers_only = b"From: h@example.org\r\nSubject: s\r\n"
    response = fetch(headers_only, body("HEADER.FIELDS", "SUBJECT"),
                     body("HEADER.FIELDS", "X-NONE"), body("HEADER"))
    assert response == (b"* 12 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {12}\r\nSubject: s\r\n "
                        b"BODY[HEADER.FIELDS (X-NONE)] {0}\r\n "
                        b"BODY[HEADER] {33}\r\nFrom: h@example.org\r\nSubject: s\r\n)\r\n")
    response = fetch(SIMPLE, body("HEADER.FIELDS", "X-NONE"))
    assert response == b"* 12 FETCH (BODY[HEADER.FIELDS (X-NONE)] {2}\r\n\r\n)\r\n"


def test_header_field_names_that_are_not_atoms_are_quoted_in_the_echo() -> None:
    response = fetch(SIMPLE, body("HEADER.FIELDS", "SUBJECT", "X ODD", 'Q"UOTE'))
    assert response.startswith(
        b'* 12 FETCH (BODY[HEADER.FIELDS (SUBJECT "X ODD" "Q\\"UOTE")] {18}\r\nSubject: hello\r\n\r\n)\r\n')


def test_nul_in_a_section_becomes_0x80_and_sizes_stay() -> None:
    data = crlf("Subject: nul", "X-Nul: a\x00b", "", "one\x00two")
    response = fetch(data, body(), body("HEADER.FIELDS", "X-NUL"), body("TEXT", partial=(2, 3)))
    assert b"\x00" not in response
    assert response == (b"* 12 FETCH (BODY[] {%d}\r\n%s BODY[HEADER.FIELDS (X-NUL)] {14}\r\n"
                        b"X-Nul: a\x80b\r\n\r\n BODY[TEXT]<2> {3}\r\ne\x80t)\r\n"
                        % (len(data), data.replace(b"\x00", b"\x80")))


def test_eight_bit_content_is_always_a_literal() -> None:
    data = crlf("Subject: Grüße", "", "x")
    response = fetch(data, body("HEADER.FIELDS", "SUBJECT"), body("TEXT"))
    assert response == ("* 12 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {20}\r\nSubject: Grüße\r\n"
                        "\r\n BODY[TEXT] {3}\r\nx\r\n)\r\n").encode()


# -- BINARY ---------------------------------------------------------------------------------

def test_binary_decodes_quoted_printable_the_rfc_2045_way() -> None:
    # Soft line breaks join lines; trailing white space is transport padding (§6.7 rule 3).
    response = fetch(NESTED, binary("1"), binary_size("1"))
    content = "Café = softbreak.\r\nnext ".encode()
    assert response == (b"* 12 FETCH (BINARY[1] {%d}\r\n%s BINARY.SIZE[1] %d)\r\n"
                        % (len(content), content, len(content)))


def test_binary_with_nul_is_a_literal8_and_partial_names_the_origin() -> None:
    response = fetch(NESTED, binary("3"), binary("3", partial=(1, 3)),
                     binary("3", partial=(4, 1)), binary_size("3"))
    assert response == (b"* 12 FETCH (BINARY[3] ~{8}\r\nbin\x00ary\xff BINARY[3]<1> ~{3}\r\n"
                        b"in\x00 BINARY[3]<4> {1}\r\na BINARY.SIZE[3] 8)\r\n")


def test_binary_of_a_missing_part_is_empty() -> None:
    assert fetch(NESTED, binary("9"), binary_size("2.7")) == (
        b"* 12 FETCH (BINARY[9] {0}\r\n BINARY.SIZE[2.7] 0)\r\n")


def test_binary_of_an_unknown_encoding_fails_with_unknown_cte() -> None:
    with pytest.raises(FetchError) as failure:
        fetch(NESTED, binary("1"), binary("4"))
    assert failure.value.code == "UNKNOWN-CTE"  # RFC 3516 §4.3
    assert "x-uuencode" in failure.value.text
    with pytest.raises(FetchError):
        fetch(NESTED, binary_size("4"))


@pytest.mark.parametrize("spec", ["", "2"])
def test_binary_of_a_multipart_or_message_fails(spec: str) -> None:
    # RFC 9051 §6.4.5: BINARY only for leaf parts.
    with pytest.raises(FetchError) as failure:
        fetch(NESTED, binary(spec))
    assert failure.value.code == "CANNOT"
    # The leaves inside the message are fine.
    assert fetch(NESTED, binary("2.1")) == b"* 12 FETCH (BINARY[2.1] {11}\r\ninner plain)\r\n"


def test_binary_of_a_whole_single_part_message_rewrites_the_encoding() -> None:
    data = crlf("Subject: b64", "Content-Transfer-Encoding: base64", "X-After: 1", "",
                base64.b64encode(b"decoded").decode())
    response = fetch(data, binary(), binary_size())
    header = crlf("Subject: b64", "X-After: 1", "Content-Transfer-Encoding: binary", "")
    assert response == (b"* 12 FETCH (BINARY[] {%d}\r\n%sdecoded BINARY.SIZE[] %d)\r\n"
                        % (len(header) + 7, header, len(header) + 7))
    # Nothing decoded: the message as it is.
    assert fetch(SIMPLE, binary()) == b"* 12 FETCH (BINARY[] {%d}\r\n%s)\r\n" % (
        len(SIMPLE), SIMPLE)


@pytest.mark.parametrize(("encoded", "decoded"), [
    (b"YWJj\r\nZGVm", b"abcdef"),
    (b"YWI", b"ab"),  # padding missing
    (b"YW*Jj", b"abc"),  # junk outside the alphabet
    (b"Y Q = =", b"a"),
    (b"YQ==YQ==", b"a"),  # data after the padding
    (b"", b""),
])
def test_damaged_base64_is_decoded_robustly(encoded: bytes, decoded: bytes) -> None:
    data = crlf("Content-Transfer-Encoding: base64", "", encoded.decode())
    response = fetch(data, binary("1"))
    assert response.endswith(b"BINARY[1] {%d}\r\n%s)\r\n" % (len(decoded), decoded))


@pytest.mark.parametrize(("encoded", "decoded"), [
    (b"invalid =ZZ escape", b"invalid =ZZ escape"),  # RFC 2045 §6.7 note (2)
    (b"lower =c3=a9", "lower é".encode()),
    (b"soft =  \r\nbreak", b"soft break"),  # padding after the "="
    (b"ends with equals=", b"ends with equals"),
    (b"tab\t=\r\nx", b"tab\tx"),
])
def test_quoted_printable_edge_cases(encoded: bytes, decoded: bytes) -> None:
    data = crlf("Content-Transfer-Encoding: quoted-printable", "") + encoded
    response = fetch(data, binary("1"))
    assert response.endswith(b"BINARY[1] {%d}\r\n%s)\r\n" % (len(decoded), decoded))


# -- PREVIEW (RFC 8970) ----------------------------------------------------------------------

def preview_of(data: bytes, **options: object) -> bytes:
    response = fetch(data, item("PREVIEW"), **options)
    match = re.fullmatch(rb"\* 12 FETCH \(PREVIEW (.*)\)\r\n", response, re.DOTALL)
    assert match is not None, response
    return match.group(1)


def test_preview_collapses_white_space_and_skips_quotes() -> None:
    data = crlf("Subject: re", "", "> quoted", "  Hello   there,", "", ">more", "\tbye\x0b now ")
    assert preview_of(data) == b'"Hello there, bye now"'


def test_preview_of_only_quoted_text_is_marked() -> None:
    assert preview_of(crlf("", "> only", ">  quoted")) == b'">only quoted"'


def test_preview_html_is_reduced_to_text() -> None:
    data = crlf(
        "Content-Type: text/html; charset=utf-8", "",
        "<html><head><style type=x>p {}</style><title>T</title></head><body>",
        "<!-- a <b>comment</b> -- ><p title='a>b'>A&amp;B&nbsp;&lt;&#x41;&#66;&unknown;"
        " &EACUTE;</p>", "<blockquote><p>quoted &amp; gone</p></blockquote>",
        "<script>var x = '<p>';</script><![CDATA[cdata]]>x & y</body></html>")
    # Tags are spaces, &nbsp; stays a no-break space, a bare "&" is dropped (as in Dovecot).
    text = "T A&B\u00a0<AB é cdatax y".encode()
    assert preview_of(data) == b"{%d}\r\n%s" % (len(text), text)


def test_preview_picks_the_plain_alternative_and_skips_attachments() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=m", "",
                "--m", "Content-Type: image/png", "", "png",
                "--m", "Content-Type: multipart/alternative; boundary=a", "",
                "--a", "Content-Type: text/html", "", "<p>html</p>",
                "--a", "Content-Type: text/plain", "", "plain",
                "--a--", "--m--")
    assert preview_of(data) == b'"plain"'


def test_preview_of_a_message_without_text_is_empty() -> None:
    assert preview_of(crlf("Content-Type: image/png", "", "png")) == b'""'
    assert preview_of(crlf("Subject: empty", "")) == b'""'
    assert preview_of(crlf("Content-Type: multipart/mixed; boundary=m", "",
                           "--m", "Content-Type: message/rfc822", "", "Subject: x", "",
                           "forwarded text", "--m--")) == b'""'


def test_preview_decodes_transfer_encoding_and_charset() -> None:
    data = crlf("Content-Type: text/plain; charset=iso-8859-1",
                "Content-Transfer-Encoding: quoted-printable", "", "Gr=FC=DFe \x00=EF=BB=BF")
    assert preview_of(data) == '{14}\r\nGrüße ï»¿'.encode()  # latin-1 bytes, not a BOM
    data = crlf("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64",
                "", base64.b64encode("\ufeffGrüße\x00!".encode()).decode())
    assert preview_of(data) == '{8}\r\nGrüße!'.encode()


def test_preview_utf8_accept_sends_a_quoted_string() -> None:
    data = crlf("Content-Type: text/plain; charset=utf-8", "", "Grüße")
    assert preview_of(data, utf8=True) == '"Grüße"'.encode()


def test_preview_is_at_most_200_characters_and_256_octets() -> None:
    ascii_text = preview_of(crlf("", "word " * 100))
    assert len(ascii_text) == 2 + 199 and ascii_text.endswith(b'word"')  # no trailing space
    wide = crlf("Content-Type: text/plain; charset=utf-8", "", "é" * 300).decode()
    text = message_preview(index_message(wide.encode()), wide.encode())
    assert text == "é" * 128 and len(text.encode()) == 256


def test_preview_reads_a_bounded_prefix_of_huge_parts() -> None:
    data = crlf("Content-Type: text/html", "", "<style>" + "x" * 5000 + "</style><p>late</p>")
    root = index_message(data)
    assert message_preview(root, data) == "late"
    assert message_preview(root, data, FetchLimits(preview_input_bytes=100)) == ""
    with pytest.raises(ValueError):
        FetchLimits(preview_input_bytes=0)


def test_preview_lazy_without_data_is_nil() -> None:
    items = [item("PREVIEW", lazy=True)]
    assert needs_data(items)
    response = render_fetch(1, items, info_for(SIMPLE), structure=None, data=None)
    assert response == b"* 1 FETCH (PREVIEW NIL)\r\n"


# -- what a FETCH needs ----------------------------------------------------------------------

@pytest.mark.parametrize(("items", "seen", "structure", "data"), [
    ([item("FLAGS"), item("UID"), item("RFC822.SIZE"), item("INTERNALDATE")], False, False,
     False),
    ([item("MODSEQ"), item("SAVEDATE")], False, False, False),
    ([item("ENVELOPE")], False, True, False),
    ([item("BODY")], False, True, False),
    ([item("BODYSTRUCTURE")], False, True, False),
    ([body()], False, False, True),
    ([body(peek=False)], True, False, True),
    ([body("HEADER")], False, True, True),
    ([body("1.TEXT", peek=False)], True, True, True),
    ([item("RFC822")], True, False, True),
    ([item("RFC822.TEXT")], True, True, True),
    ([item("RFC822.HEADER")], False, True, True),
    ([binary("1")], False, True, True),
    ([binary("1", peek=False)], True, True, True),
    ([binary_size("1")], False, True, True),
    ([item("PREVIEW")], False, True, True),
])
def test_needs(items: list[FetchAttribute], seen: bool, structure: bool, data: bool) -> None:
    assert (sets_seen(items), needs_structure(items), needs_data(items)) == (
        seen, structure, data)


def test_a_missing_index_is_rebuilt_from_the_data() -> None:
    items = [item("BODYSTRUCTURE"), body("1.MIME")]
    assert render_fetch(1, items, info_for(NESTED), structure=None, data=NESTED) == \
        render_fetch(1, items, info_for(NESTED), structure=index_message(NESTED), data=NESTED)


# -- buffers -------------------------------------------------------------------------------

ALL_KINDS = [body(), body("2.HEADER.FIELDS", "FROM"), body("1", partial=(2, 5)),
             item("RFC822.HEADER"), binary("1"), binary("3"), binary_size("3"),
             item("PREVIEW"), item("BODYSTRUCTURE")]


def test_memoryview_and_mmap_give_the_same_bytes() -> None:
    expected = fetch(NESTED, *ALL_KINDS)
    structure = index_message(NESTED)
    info = info_for(NESTED)
    padded = memoryview(b"xx" + NESTED)[2:]  # a view of part of a buffer
    for data in (memoryview(NESTED), padded):
        assert render_fetch(12, ALL_KINDS, info, structure=structure, data=data) == expected
    with tempfile.TemporaryFile() as file:
        file.write(NESTED)
        file.flush()
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        assert render_fetch(12, ALL_KINDS, info, structure=structure, data=mapped) == expected
        with pytest.raises(FetchError):
            render_fetch(12, [*ALL_KINDS, binary("4")], info, structure=structure, data=mapped)
        mapped.close()  # no view of it outlives render_fetch, even after an error


# -- robustness: any message, any items ------------------------------------------------------

def parse_fetch_response(response: bytes) -> list[tuple[bytes, object]]:
    """Strictly parse ``* n FETCH (name value ...)``: literal sizes, quoting, parentheses."""
    head = re.match(rb"\* (\d+) FETCH \(", response)
    assert head is not None, response
    pos = head.end()
    items: list[tuple[bytes, object]] = []

    def value(pos: int) -> tuple[object, int]:
        if response.startswith(b"(", pos):
            out = []
            pos += 1
            while not response.startswith(b")", pos):
                if response.startswith(b" ", pos):
                    pos += 1
                    continue
                element, pos = value(pos)
                out.append(element)
            return out, pos + 1
        if response.startswith(b'"', pos):
            match = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"').match(response, pos)
            assert match is not None, response[pos:pos + 50]
            return match.group(1), match.end()
        literal = re.compile(rb"(~?)\{(\d+)\}\r\n").match(response, pos)
        if literal is not None:
            start = literal.end()
            end = start + int(literal.group(2))
            assert end <= len(response)
            content = response[start:end]
            assert literal.group(1) == b"~" or b"\x00" not in content
            return content, end
        match = re.compile(rb"NIL|\d+|[^ ()\r\n]+").match(response, pos)
        assert match is not None, response[pos:pos + 50]
        return match.group(0), match.end()

    while True:
        name = re.compile(rb"[A-Z0-9.]+(?:\[[^\]]*\])?(?:<\d+>)?").match(response, pos)
        assert name is not None, response[pos:pos + 50]
        assert response.startswith(b" ", name.end())
        parsed, pos = value(name.end() + 1)
        items.append((name.group(0), parsed))
        if response.startswith(b")\r\n", pos):
            assert pos + 3 == len(response)
            return items
        assert response.startswith(b" ", pos), response[pos:pos + 50]
        pos += 1


_LINE = st.one_of(
    st.sampled_from([b"", b"--b", b"--b--", b"--c", b"Content-Type: multipart/mixed; boundary=c",
                     b"Content-Type: message/rfc822", b"Content-Type: text/html",
                     b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: x-y",
                     b"Content-Transfer-Encoding: quoted-printable", b"Subject: s", b" folded",
                     b"=41=", b"> quote", b"<p>&amp;", b"\x00", b"\xff\xfe"]),
    st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
_MESSAGE = st.lists(_LINE, max_size=30).map(
    lambda lines: crlf("Content-Type: multipart/mixed; boundary=b", *lines))
_SPEC = st.lists(st.integers(1, 3), max_size=3).map(tuple)
_ITEM = st.one_of(
    st.sampled_from([item(n) for n in ("FLAGS", "UID", "ENVELOPE", "BODY", "BODYSTRUCTURE",
                                       "RFC822", "RFC822.HEADER", "RFC822.TEXT", "PREVIEW",
                                       "INTERNALDATE", "MODSEQ")]),
    st.builds(lambda part, text, partial: FetchAttribute(
        "BODY", Section(part, text, ("SUBJECT", "X") if text and "FIELDS" in text else ()),
        peek=True, partial=partial),
        _SPEC, st.sampled_from([None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS",
                                "HEADER.FIELDS.NOT"]),
        st.none() | st.tuples(st.integers(0, 300), st.integers(0, 300))),
    st.builds(lambda part, partial: FetchAttribute("BINARY", Section(part), peek=True,
                                                   partial=partial),
              _SPEC, st.none() | st.tuples(st.integers(0, 50), st.integers(0, 50))),
    st.builds(lambda part: FetchAttribute("BINARY.SIZE", Section(part)), _SPEC),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_MESSAGE, items=st.lists(_ITEM, min_size=1, max_size=6), utf8=st.booleans())
def test_any_message_gives_a_well_formed_response_or_a_fetch_error(
        data: bytes, items: list[FetchAttribute], utf8: bool) -> None:
    try:
        response = fetch(data, *items, utf8=utf8)
    except FetchError as failure:
        assert any(i.name.startswith("BINARY") for i in items)
        assert failure.code in ("UNKNOWN-CTE", "CANNOT")
        return
    parsed = dict(parse_fetch_response(response))
    for attribute in items:
        if attribute.name == "BODY" and attribute.section == Section() and attribute.partial:
            origin, length = attribute.partial
            assert parsed[b"BODY[]<%d>" % origin] == data[origin:origin + length].replace(
                b"\x00", b"\x80")
        if attribute.name == "BINARY.SIZE" and attribute.section is not None:
            # RFC 3516 §4.2: BINARY.SIZE is the size of what BINARY returns.
            spec = ".".join(str(n) for n in attribute.section.part).encode()
            content = dict(parse_fetch_response(fetch(
                data, FetchAttribute("BINARY", attribute.section, peek=True))))
            assert parsed[b"BINARY.SIZE[" + spec + b"]"] == b"%d" % len(
                content[b"BINARY[" + spec + b"]"])  # type: ignore[arg-type]


_HEADER_LINE = st.one_of(
    st.sampled_from([b"Subject: x", b"subject : y", b"SUBJECT:z", b" cont", b"\tcont", b"  ",
                     b"X-A: 1", b"x-a:", b"no colon", b": empty name", b"Subj ect: q",
                     b"From: a\rb", b"X-A\t: tab", b"X-AB: longer name", b"\x00: nul"]),
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
)
_NAMES = st.lists(st.sampled_from(["SUBJECT", "X-A", "FROM", "X-AB", "NO COLON", "X-A:B", ""]),
                  min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_HEADER_LINE, max_size=12), blank=st.booleans(), names=_NAMES,
       text=st.sampled_from(["HEADER.FIELDS", "HEADER.FIELDS.NOT"]))
def test_header_fields_fast_path_equals_field_by_field(
        lines: list[bytes], blank: bool, names: list[str], text: str) -> None:
    # Up to MAX_FIELDS_PATTERN_NAMES names are matched with one expression, longer lists
    # field by field (mailkeep.mime.header.header_fields): both must select the same bytes.
    data = b"".join(line + b"\r\n" for line in lines) + (b"\r\nbody" if blank else b"")
    padding = tuple(f"X-PADDING-{n}" for n in range(101))

    def content(fields: tuple[str, ...]) -> bytes:
        response = fetch(data, FetchAttribute("BODY", Section((), text, fields), peek=True))
        [(_, value)] = parse_fetch_response(response)
        return value  # type: ignore[return-value]

    assert content(tuple(names)) == content(tuple(names) + padding)
