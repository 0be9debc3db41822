"""IMAP SEARCH keys on a real store, answered by reading messages and by the full-text
index (every test runs both ways and must give the same UIDs)."""

from __future__ import annotations

import asyncio
import calendar
import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.imap.commands import SearchKey, SequenceSet
from mailkeep.imap.search import BADCHARSET, SearchContext, SearchError, SearchLimits, search
from mailkeep.store import ImportItem, SQLiteStore, open_store
from mailkeep.store.fts import FullTextIndex

ACCOUNT = "me@example.com"


def K(kind: str, *args: object) -> SearchKey:
    return SearchKey(kind, tuple(args))


def day(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> float:
    return float(calendar.timegm((y, m, d, hh, mm, ss)))


def msg(subject: str = "hello", body: str = "body text", *, sender: str = "a@example.org",
        extra: str = "", date: str | None = "Mon, 11 Mar 2024 10:00:00 +0000") -> bytes:
    head = f"From: {sender}\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\n"
    if date is not None:
        head += f"Date: {date}\r\n"
    return (head + extra + "\r\n" + body + "\r\n").encode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path / "data")
    s.ensure_account(ACCOUNT)
    try:
        yield s
    finally:
        s.close()


def add(store: SQLiteStore, *items: bytes | tuple[bytes, tuple[str, ...], float | None]
        ) -> list[int]:
    imports = []
    for item in items:
        data, flags, when = item if isinstance(item, tuple) else (item, (), None)
        imports.append(ImportItem("INBOX", data, flags=flags, internal_date=when))
    return list(asyncio.run(store.import_messages(ACCOUNT, imports)))


@pytest.fixture(params=["scan", "index"])
def run(request: pytest.FixtureRequest, store: SQLiteStore, tmp_path: Path):
    """run(key, charset=None, **context) -> UIDs, reading messages or asking the index."""
    fts = None
    if request.param == "index":
        fts = FullTextIndex.for_data_dir(store, tmp_path / "data")
        request.addfinalizer(fts.close)

    def do(key: SearchKey, charset: str | None = None, **extra: object) -> list[int]:
        ctx = SearchContext(store, ACCOUNT, "INBOX", store.list_messages(ACCOUNT, "INBOX"),
                            fts=fts, limits=SearchLimits(scan_below=0), **extra)  # type: ignore[arg-type]
        return search(ctx, key, charset)

    return do


# -- keys from the message list ----------------------------------------------------------


def test_flag_keys(store, run) -> None:
    seen, flagged, plain = add(store, (msg(), ("\\Seen", "\\Answered"), None),
                               (msg(), ("\\Flagged", "\\Deleted", "\\Draft", "$Work"), None),
                               msg())
    assert run(K("FLAG", "\\Seen")) == [seen]
    assert run(K("NOFLAG", "\\Seen")) == [flagged, plain]  # UNSEEN
    assert run(K("FLAG", "\\Answered")) == [seen]
    assert run(K("NOFLAG", "\\Answered")) == [flagged, plain]
    assert run(K("FLAG", "\\Deleted")) == run(K("FLAG", "\\Draft")) == [flagged]
    assert run(K("FLAG", "\\Flagged")) == [flagged]
    assert run(K("FLAG", "$work")) == [flagged]  # keywords compare case-insensitively
    assert run(K("NOFLAG", "$Work")) == [seen, plain]  # UNKEYWORD
    # No \Recent here: RECENT and NEW match nothing, OLD everything.
    assert run(K("RECENT")) == []
    assert run(K("AND", K("RECENT"), K("NOFLAG", "\\Seen"))) == []
    assert run(K("NOT", K("RECENT"))) == [seen, flagged, plain]
    assert run(K("ALL")) == [seen, flagged, plain]


def test_sequence_and_uid_sets(store, run) -> None:
    uids = add(store, *[msg(f"m{n}") for n in range(5)])
    # Expunge the second so that sequence numbers and UIDs differ.
    asyncio.run(store.store_flags(ACCOUNT, "INBOX", [uids[1]], ["\\Deleted"]))
    asyncio.run(store.expunge(ACCOUNT, "INBOX"))
    left = [uids[0], *uids[2:]]
    seq = lambda *r: K("SEQUENCE", SequenceSet(tuple(r)))  # noqa: E731
    uid = lambda *r: K("UID", SequenceSet(tuple(r)))  # noqa: E731
    assert run(seq((2, 2))) == [uids[2]]
    assert run(seq((None, None))) == [uids[4]]  # "*" is the last message
    assert run(seq((3, None))) == uids[3:]
    assert run(seq((3, 1))) == left[:3]  # a range may be written backwards
    assert run(seq((9, 12))) == []  # past the end matches nothing
    assert run(seq((1, 1), (4, 4))) == [left[0], left[3]]
    assert run(uid((uids[1], uids[2]))) == [uids[2]]  # the expunged UID is just absent
    assert run(uid((uids[4] + 100, None))) == [uids[4]]  # n:* with n past the end: the last
    assert run(uid((None, None))) == [uids[4]]
    # SEARCHRES "$" (RFC 5182): the saved UIDs; nothing saved matches nothing.
    saved = K("UID", SequenceSet(saved=True))
    assert run(saved, saved=[uids[3], uids[1]]) == [uids[3]]
    assert run(K("SEQUENCE", SequenceSet(saved=True)), saved=[uids[0]]) == [uids[0]]
    assert run(saved) == []


def test_sizes_and_modseq(store, run) -> None:
    small, big = add(store, msg(body="x"), msg(body="x" * 500))
    size = store.get_message(ACCOUNT, "INBOX", small).size
    assert run(K("LARGER", size)) == [big]
    assert run(K("LARGER", size - 1)) == [small, big]
    assert run(K("SMALLER", size)) == []
    assert run(K("SMALLER", size + 1)) == [small]
    asyncio.run(store.store_flags(ACCOUNT, "INBOX", [small], ["\\Seen"]))
    modseq = store.get_message(ACCOUNT, "INBOX", small).modseq
    assert run(K("MODSEQ", modseq)) == [small]  # RFC 7162 §3.1.5: equal or greater
    assert run(K("MODSEQ", modseq + 1)) == []


def test_internal_date_keys_use_utc_days(store, run) -> None:
    late, early, later = add(store, (msg(), (), day(2024, 3, 10, 23, 59, 59)),
                             (msg(), (), day(2024, 3, 11, 0, 0, 0)),
                             (msg(), (), day(2024, 3, 12, 12)))
    d = datetime.date
    assert run(K("ON", d(2024, 3, 11))) == [early]
    assert run(K("BEFORE", d(2024, 3, 11))) == [late]
    assert run(K("SINCE", d(2024, 3, 11))) == [early, later]
    assert run(K("SINCE", d(2024, 3, 13))) == []


def test_savedate_keys(store, run) -> None:
    [uid] = add(store, (msg(), (), day(2001, 1, 1)))
    saved = store.get_message(ACCOUNT, "INBOX", uid).save_date
    today = datetime.datetime.fromtimestamp(saved, datetime.UTC).date()
    assert run(K("SAVEDON", today)) == [uid]
    assert run(K("SAVEDSINCE", today)) == [uid]
    assert run(K("SAVEDBEFORE", today)) == []
    assert run(K("ON", datetime.date(2001, 1, 1))) == [uid]  # internal date is the old one
    assert run(K("SAVEDATESUPPORTED")) == [uid]


def test_older_and_younger(store, run) -> None:
    now = day(2024, 6, 1, 12)
    old, new = add(store, (msg(), (), now - 7200), (msg(), (), now - 60))
    assert run(K("OLDER", 3600), now=now) == [old]
    assert run(K("YOUNGER", 3600), now=now) == [new]
    assert run(K("YOUNGER", 60), now=now) == [new]  # both ends inclusive
    assert run(K("OLDER", 60), now=now) == [old, new]


def test_sent_keys_use_the_date_field_in_its_own_zone(store, run) -> None:
    # 01:30 at +02:00 is the 10th in UTC, but SENTON looks at the date as written.
    east, bad, missing = add(
        store, (msg(date="Mon, 11 Mar 2024 01:30:00 +0200"), (), day(2024, 1, 1)),
        (msg(date="not a date at all"), (), day(2024, 3, 9, 12)),
        (msg(date=None), (), day(2024, 3, 11, 8)))
    d = datetime.date
    assert run(K("SENTON", d(2024, 3, 11))) == [east, missing]  # missing: internal date
    assert run(K("SENTON", d(2024, 3, 9))) == [bad]  # unparseable: internal date
    assert run(K("SENTBEFORE", d(2024, 3, 11))) == [bad]
    assert run(K("SENTSINCE", d(2024, 3, 10))) == [east, missing]


# -- header and text keys --------------------------------------------------------------


def test_header_keys_match_decoded_and_raw_values(store, run) -> None:
    umlaut, plain = add(
        store,
        msg("=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
            sender="=?iso-8859-1?q?J=F6rg_M=FCller?= <jm@example.de>",
            extra="Cc: Team <team@example.net>\r\nX-Custom: Yes\r\nMessage-ID: <abc@x>\r\n"),
        msg("Meeting notes", sender="Bob <bob@example.org>",
            extra="Bcc: secret@example.com\r\nX-Custom:\r\n"))
    subject = lambda s: K("HEADER", "SUBJECT", s)  # noqa: E731
    assert run(subject("grüsse aus köln".encode())) == [umlaut]  # decoded, case-folded
    assert run(subject("GRÜSSE".encode())) == [umlaut]
    assert run(subject(b"=?utf-8?q?Gr")) == [umlaut]  # the raw text matches too
    assert run(subject(b"eting no")) == [plain]  # substrings, not words
    assert run(subject(b"")) == [umlaut, plain]  # every message has a Subject
    assert run(K("HEADER", "FROM", "jörg müller".encode())) == [umlaut]
    assert run(K("HEADER", "FROM", b"bob@example")) == [plain]
    assert run(K("HEADER", "TO", ACCOUNT.encode())) == [umlaut, plain]
    assert run(K("HEADER", "CC", b"team@")) == [umlaut]
    assert run(K("HEADER", "BCC", b"secret")) == [plain]
    assert run(K("HEADER", "CC", b"")) == [umlaut]  # HEADER x "": has the field
    assert run(K("HEADER", "X-CUSTOM", b"")) == [umlaut, plain]  # even when empty
    assert run(K("HEADER", "X-CUSTOM", b"yes")) == [umlaut]
    assert run(K("HEADER", "MESSAGE-ID", b"<abc@x>")) == [umlaut]
    assert run(K("HEADER", "X-MISSING", b"")) == []
    # A field's text is only that field's: "Bob" is not in the Subject.
    assert run(subject(b"bob")) == []
    # The field name is part of TEXT (the header), but not of a field's value.
    assert run(K("TEXT", b"x-custom: yes")) == [umlaut]
    assert run(subject(b"subject")) == []


LATIN1_QP = (b"From: a@example.org\r\nSubject: menu\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: text/plain; charset=iso-8859-1\r\n"
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
             b"Un caf=E9 cr=E8me, s'il vous pla=EEt, tr=E8s =\r\nchaud.\r\n")
UTF8_BASE64 = (b"From: a@example.org\r\nSubject: b64\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n"
               + __import__("base64").encodebytes("Привет, мир! Größe 42".encode()).replace(
                   b"\n", b"\r\n"))
MULTIPART = (b"From: a@example.org\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
             b"preamble words\r\n--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
             b"<html><head><style>p.hidden {color: red}</style></head><body>"
             b"<p>Quarterly <b>numbers</b> &amp; plans</p><div>second&nbsp;line</div>"
             b"</body></html>\r\n"
             b"--XX\r\nContent-Type: application/pdf; name=\"q3-figures.pdf\"\r\n"
             b"Content-Disposition: attachment; filename=\"q3-figures.pdf\"\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKc2VjcmV0cGRmdGV4dA==\r\n"
             b"--XX\r\nContent-Type: message/rfc822\r\n\r\n"
             b"From: forwarded@example.net\r\nSubject: inner subject\r\n\r\ninner body\r\n"
             b"--XX--\r\n")


def test_body_is_decoded_text(store, run) -> None:
    latin, b64, multi = add(store, LATIN1_QP, UTF8_BASE64, MULTIPART)
    # The string in ISO-8859-1, the body quoted-printable ISO-8859-1.
    assert run(K("BODY", b"caf\xe9 cr\xe8me"), "ISO-8859-1") == [latin]
    assert run(K("BODY", "CAFÉ".encode()), "UTF-8") == [latin]
    assert run(K("BODY", "très chaud".encode())) == [latin]  # soft line break joined
    assert run(K("BODY", "мир".encode("koi8-r")), "KOI8-R") == [b64]
    assert run(K("BODY", "GRÖSSE".encode())) == [b64]  # ß case-folds to ss
    assert run(K("BODY", b"privet")) == []
    # HTML: the text a reader sees, not the markup.
    assert run(K("BODY", b"quarterly numbers & plans")) == [multi]
    assert run(K("BODY", b"second line")) == [multi]
    assert run(K("BODY", b"color")) == []
    assert run(K("BODY", b"<b>")) == []
    # Attachment names (MIME headers are in the body), not attachment bytes.
    assert run(K("BODY", b"q3-figures.pdf")) == [multi]
    assert run(K("BODY", b"secretpdf")) == []
    # An attached message's header and body are body text of the outer message.
    assert run(K("BODY", b"inner subject")) == [multi]
    assert run(K("BODY", b"inner body")) == [multi]
    assert run(K("HEADER", "SUBJECT", b"inner")) == []
    assert run(K("BODY", b"preamble")) == []
    # BODY is not the header; TEXT is both.
    assert run(K("BODY", b"report")) == []
    assert run(K("TEXT", b"report")) == [multi]
    assert run(K("TEXT", b"inner body")) == [multi]


def test_short_and_empty_strings(store, run) -> None:
    a, b = add(store, msg("x1", "a é b"), msg("yz", "nothing"))
    assert run(K("BODY", "É".encode())) == [a]  # shorter than a trigram: scanned
    assert run(K("BODY", b"no")) == [b]
    assert run(K("HEADER", "SUBJECT", b"1")) == [a]
    assert run(K("TEXT", b"")) == [a, b]
    assert run(K("BODY", b"")) == [a, b]


def test_string_with_line_break(store, run) -> None:
    [a] = add(store, msg(body="first line\r\nsecond line"))
    assert run(K("BODY", b"line\r\nsecond")) == [a]
    assert run(K("HEADER", "SUBJECT", b"hel\r\nlo")) == []


def test_and_or_not(store, run) -> None:
    a, b, c, d = add(store, (msg("alpha", "red apple"), ("\\Seen",), None),
                     (msg("beta", "green apple"), (), None),
                     (msg("gamma", "red cherry"), ("\\Seen",), None),
                     (msg("delta", "blue"), (), None))
    red, apple = K("BODY", b"red"), K("BODY", b"apple")
    seen = K("FLAG", "\\Seen")
    assert run(K("AND", red, apple)) == [a]
    assert run(K("OR", red, apple)) == [a, b, c]
    assert run(K("NOT", K("OR", red, apple))) == [d]
    assert run(K("AND", K("NOT", seen), K("OR", apple, K("HEADER", "SUBJECT", b"delta")))) \
        == [b, d]
    assert run(K("OR", K("AND", seen, K("NOT", apple)), K("AND", K("NOT", seen), red))) == [c]
    assert run(K("AND", K("SEQUENCE", SequenceSet(((2, 3),))), red)) == [c]
    assert run(K("AND")) == [a, b, c, d]  # an empty AND is everything


def test_deep_nesting_does_not_use_the_stack(store, run) -> None:
    [a] = add(store, msg(body="deep"))
    key = K("BODY", b"deep")
    for _ in range(5001):  # NOT (x OR RECENT), an odd number of times: 10,000 levels
        key = K("NOT", K("OR", key, K("RECENT")))
    assert run(key) == []
    assert run(K("NOT", key)) == [a]
    key = K("BODY", b"deep")
    for _ in range(5000):  # NOT NOT x is x
        key = K("NOT", key)
    assert run(key) == [a]


# -- charsets and errors --------------------------------------------------------------


def test_unknown_charset_is_badcharset(store, run) -> None:
    add(store, msg())
    with pytest.raises(SearchError) as info:
        run(K("BODY", b"x"), "X-UNKNOWN-42")
    assert info.value.code == BADCHARSET
    assert info.value.code.startswith("BADCHARSET (UTF-8 US-ASCII ISO-8859-1 ")
    assert "WINDOWS-1252" in info.value.code and "KOI8-R" in info.value.code


def test_strings_invalid_in_their_charset(store, run) -> None:
    [a] = add(store, msg(body="naïve"))
    with pytest.raises(SearchError) as info:
        run(K("BODY", b"na\xefve"), "UTF-8")
    assert info.value.code is None
    with pytest.raises(SearchError):
        run(K("BODY", b"na\xefve"), "US-ASCII")
    with pytest.raises(SearchError):
        run(K("BODY", b"na\xefve"))  # no CHARSET: UTF-8
    assert run(K("BODY", b"na\xefve"), "iso-8859-1") == [a]  # names are case-insensitive
    assert run(K("BODY", "naïve".encode())) == [a]


def test_malformed_keys_are_search_errors(store, run) -> None:
    add(store, msg())
    for key in (K("NO-SUCH-KEY"), K("LARGER", "ten"), K("OR", K("ALL")),
                K("ON", "2024-01-01"), K("NOT")):
        with pytest.raises(SearchError):
            run(key)


def test_expunged_meanwhile_matches_no_text(store, run) -> None:
    a, b = add(store, msg(body="kept"), msg(body="kept"))
    ctx_view = store.list_messages(ACCOUNT, "INBOX")
    asyncio.run(store.store_flags(ACCOUNT, "INBOX", [a], ["\\Deleted"]))
    asyncio.run(store.expunge(ACCOUNT, "INBOX"))
    ctx = SearchContext(store, ACCOUNT, "INBOX", ctx_view, limits=SearchLimits(scan_below=0))
    # The session's view still lists it; its text is gone, so it matches no text key.
    assert search(ctx, K("BODY", b"kept")) == [b]
    assert search(ctx, K("ALL")) == [a, b]
