"""Property tests of the IMAP parser and serializer.

* Random bytes in random chunkings never raise, only produce parser events, never leave more
  buffered than the limits allow, and give the same events however the input is split.
* Valid commands (with literals of every kind, IDLE and AUTHENTICATE exchanges) give the
  same events in any chunking.
* Generated search programs parse to the tree they were built from.
* Sequence sets and mailbox names survive a round trip through serializer and parser.
"""

from __future__ import annotations

import datetime
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.imap.commands import (
    Authenticate,
    Command,
    ContinuationRequest,
    Idle,
    IdleDone,
    ParseError,
    ParserLimits,
    SaslResponse,
    Search,
    SearchKey,
    Select,
    SequenceSet,
)
from mailkeep.imap.parser import CommandParser, parse_sequence_set
from mailkeep.imap.response import (
    decode_mailbox_name,
    mailbox_name,
    resolve_sequence_set,
    sequence_set,
)

LIMITS = ParserLimits(
    max_line=120, max_literal_unauthenticated=40, max_literal=80,
    max_nonsync_literal_unauthenticated=20, max_depth=6, max_append_messages=3,
    max_command_bytes=200, max_items=30,
)
EVENT_TYPES = (Command, ParseError, ContinuationRequest, IdleDone, SaslResponse)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def drive(pieces: list[bytes], *, authenticated: bool = False,
          limits: ParserLimits = LIMITS) -> list:
    """Feed ``pieces`` one by one, acting like a session: IDLE waits for DONE, AUTHENTICATE
    without an initial response reads one SASL line. Checks the buffering bound."""
    parser = CommandParser(limits)
    parser.authenticated = authenticated
    bound = limits.max_line + 1 + limits.max_command_bytes
    events: list = []
    for piece in pieces:
        parser.receive_data(piece)
        while (event := parser.next_event()) is not None:
            assert isinstance(event, EVENT_TYPES), event
            events.append(event)
            if isinstance(event, Idle):
                parser.expect_idle_done()
            elif isinstance(event, Authenticate) and event.initial_response is None:
                parser.expect_sasl_response()
        assert parser.buffered <= bound
    return events


# -- random input --------------------------------------------------------------------------

# Bytes that steer the parser into its interesting corners more often than uniform noise.
FRAGMENTS = st.sampled_from([
    b"\r\n", b"\n", b"\r", b" ", b"a1 ", b"UID ", b"FETCH 1:* (FLAGS BODY[1.2]<0.5>)",
    b"{5}", b"{5}\r\n", b"{3+}\r\n", b"~{4+}\r\n", b"{999999+}\r\n", b"{4294967295}\r\n",
    b"{0}\r\n", b"LOGIN ", b'"quoted\\"" ', b"APPEND INBOX ", b"(", b")", b"SEARCH NOT ",
    b"IDLE\r\n", b"DONE\r\n", b"AUTHENTICATE PLAIN\r\n", b"*\r\n", b"x" * 50, b"\x00",
    b"\xff", b"STORE 1 +FLAGS (\\Seen)", b"SELECT INBOX (QRESYNC (1 2 1:5 (1 2)))",
    b"LIST () \"\" (a b) RETURN (STATUS (MESSAGES))", b"OR (", b"1-Feb-1994", b"$",
])
# Words that make up real commands, so that lines get past the tag and command name.
WORDS = st.sampled_from([
    b"FETCH", b"UID", b"1:*", b"2,4:*", b"(FLAGS", b"FLAGS)", b"BODY.PEEK[HEADER]", b"<0.9>",
    b"{3+}\r\nabc", b"{2}\r\nxy", b"~{1+}\r\n\x00", b"LOGIN", b"APPEND", b"INBOX",
    b"SEARCH", b"NOT", b"ALL", b"OR", b"(", b")", b"()", b"IDLE", b"STORE", b"+FLAGS",
    b"\\Seen", b"SINCE", b"1-Feb-1994", b"LIST", b'""', b"%", b"RETURN", b"(CHILDREN)",
    b"SELECT", b"(CONDSTORE)", b"STATUS", b"(MESSAGES)", b"AUTHENTICATE", b"PLAIN", b"=",
    b"SORT", b"(DATE)", b"UTF-8", b"THREAD", b"REFERENCES", b"ENABLE", b"ID", b"NIL",
])
LINES = st.lists(
    st.tuples(
        st.sampled_from([b"a1 ", b"b ", b"+x ", b"", b"DONE"]),
        st.lists(WORDS, max_size=7).map(b" ".join),
        st.sampled_from([b"\r\n", b"\n", b"", b"\r"]),
    ).map(b"".join),
    max_size=8,
).map(b"".join)
NOISE = st.one_of(
    st.lists(st.one_of(FRAGMENTS, st.binary(max_size=20)), max_size=25).map(b"".join),
    LINES,
)
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(max_examples=300, deadline=None)
@given(data=NOISE, cuts=CUTS, authenticated=st.booleans())
def test_random_input_never_crashes_and_does_not_depend_on_chunking(
        data: bytes, cuts: list[int], authenticated: bool) -> None:
    whole = drive([data], authenticated=authenticated)
    assert drive(split(data, cuts), authenticated=authenticated) == whole
    assert drive([bytes((b,)) for b in data], authenticated=authenticated) == whole


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600), cuts=CUTS)
def test_random_binary_never_crashes(data: bytes, cuts: list[int]) -> None:
    assert drive(split(data, cuts)) == drive([data])


# -- valid commands ------------------------------------------------------------------------

VALID = [
    b"a1 LOGIN {3}\r\nbob {2+}\r\npw\r\n",
    b"a2 SELECT INBOX (CONDSTORE)\r\n",
    b"a3 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From {2+}\r\nTo)]<0.10>) "
    b"(CHANGEDSINCE 5 VANISHED)\r\n",
    b"a4 APPEND INBOX (\\Seen) \" 1-Jul-2002 22:35:00 +0000\" {5}\r\nhello ~{3+}\r\na\x00b\r\n",
    b"a5 IDLE\r\nDONE\r\n",
    b"a6 AUTHENTICATE SCRAM-SHA-256\r\nbiwsbj11c2VyLHI9\r\n",
    b"a7 SEARCH RETURN (MIN) CHARSET UTF-8 OR (FROM x SINCE \"1-Feb-1994\") NOT UID 1:5\r\n",
    b"a8 UID STORE 1,3 (UNCHANGEDSINCE 9) -FLAGS.SILENT \\Deleted $Junk\r\n",
    b'a9 LIST (SUBSCRIBED) "" ("%" {2+}\r\nx*) RETURN (CHILDREN STATUS (UNSEEN))\r\n',
    b"a10 FOO bar\r\n",
    b"a11 LOGIN {9999}\r\n",
    b"\r\n",
    b"a12 LOGOUT\n",
]


@settings(max_examples=200, deadline=None)
@given(commands=st.lists(st.sampled_from(VALID), min_size=1, max_size=8), cuts=CUTS)
def test_valid_commands_in_any_chunking(commands: list[bytes], cuts: list[int]) -> None:
    data = b"".join(commands)
    limits = ParserLimits()
    whole = drive([data], authenticated=True, limits=limits)
    assert not any(isinstance(e, ParseError) and e.fatal for e in whole)
    assert drive(split(data, cuts), authenticated=True, limits=limits) == whole


# -- generated search programs -------------------------------------------------------------

DATES = st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2100, 12, 31))
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
ATOM_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789$-_.", min_size=1,
                    max_size=8)


def _date_key(kind: str, day: datetime.date) -> tuple[bytes, SearchKey]:
    text = f"{kind} {day.day}-{MONTHS[day.month - 1]}-{day.year}".encode()
    return text, SearchKey(kind, (day,))


LEAVES = st.one_of(
    st.sampled_from([
        (b"ALL", SearchKey("ALL")),
        (b"SEEN", SearchKey("FLAG", ("\\Seen",))),
        (b"unseen", SearchKey("NOFLAG", ("\\Seen",))),
        (b"Deleted", SearchKey("FLAG", ("\\Deleted",))),
        (b"RECENT", SearchKey("RECENT")),
        (b"SAVEDATESUPPORTED", SearchKey("SAVEDATESUPPORTED")),
    ]),
    st.builds(lambda k, d: _date_key(k, d),
              st.sampled_from(["BEFORE", "ON", "SINCE", "SENTON", "SAVEDSINCE"]), DATES),
    st.builds(lambda n: (b"LARGER %d" % n, SearchKey("LARGER", (n,))),
              st.integers(0, 2**63 - 1)),
    st.builds(lambda h, v: (b'%s "%s"' % (h.encode(), v.encode()),
                            SearchKey("HEADER", (h, v.encode()))),
              st.sampled_from(["FROM", "TO", "CC", "BCC", "SUBJECT"]), ATOM_TEXT),
    st.builds(lambda v: (b"KEYWORD " + v.encode(), SearchKey("FLAG", (v,))), ATOM_TEXT),
    st.builds(lambda a, b: (b"%d:%d" % (a, b), SearchKey("SEQUENCE", (
        SequenceSet(((a, b),)),))), st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1)),
)


def _extend(children: st.SearchStrategy) -> st.SearchStrategy:
    def paren(items: list[tuple[bytes, SearchKey]]) -> tuple[bytes, SearchKey]:
        text = b"(" + b" ".join(t for t, _ in items) + b")"
        keys = tuple(k for _, k in items)
        return text, keys[0] if len(keys) == 1 else SearchKey("AND", keys)

    return st.one_of(
        children.map(lambda c: (b"NOT " + c[0], SearchKey("NOT", (c[1],)))),
        st.tuples(children, children).map(
            lambda p: (b"OR " + p[0][0] + b" " + p[1][0], SearchKey("OR", (p[0][1], p[1][1])))),
        st.lists(children, min_size=1, max_size=3).map(paren),
    )


PROGRAMS = st.lists(st.recursive(LEAVES, _extend, max_leaves=8), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(program=PROGRAMS, uid=st.booleans())
def test_generated_search_programs_parse_to_their_tree(
        program: list[tuple[bytes, SearchKey]], uid: bool) -> None:
    text = b" ".join(t for t, _ in program)
    keys = tuple(k for _, k in program)
    expected = keys[0] if len(keys) == 1 else SearchKey("AND", keys)
    line = b"t " + (b"UID " if uid else b"") + b"SEARCH " + text + b"\r\n"
    events = drive([line], authenticated=True, limits=ParserLimits())
    assert events == [Search("t", uid, expected)]


# -- round trips ---------------------------------------------------------------------------

NUMBERS = st.lists(st.integers(min_value=1, max_value=2**32 - 1), max_size=40)


@settings(max_examples=200, deadline=None)
@given(numbers=NUMBERS)
def test_sequence_set_round_trip(numbers: list[int]) -> None:
    text = sequence_set(numbers)
    if not numbers:
        assert text == b""
        return
    ranges = resolve_sequence_set(parse_sequence_set(text.decode()), max(numbers))
    # The merged ranges only span runs of consecutive listed numbers: small to expand.
    assert {n for a, b in ranges for n in range(a, b + 1)} == set(numbers)
    # The compact form is canonical: ranges sorted, separated by gaps.
    assert all(b1 + 1 < a2 for (_, b1), (a2, _) in itertools.pairwise(ranges))


SEQ_NUMBER = st.one_of(st.none(), st.integers(min_value=1, max_value=2**32 - 1))


@settings(max_examples=150, deadline=None)
@given(ranges=st.lists(st.tuples(SEQ_NUMBER, SEQ_NUMBER), min_size=1, max_size=20),
       largest=st.integers(min_value=0, max_value=2**32 - 1))
def test_sequence_set_text_parses_as_written_and_resolves_in_order(
        ranges: list[tuple[int | None, int | None]], largest: int) -> None:
    def num(n: int | None) -> str:
        return "*" if n is None else str(n)

    text = ",".join(num(a) if a == b else f"{num(a)}:{num(b)}" for a, b in ranges)
    parsed = parse_sequence_set(text)
    assert parsed == SequenceSet(tuple(ranges))
    [event] = drive([b"a UID FETCH %s FLAGS\r\n" % text.encode()], limits=ParserLimits())
    assert event.sequence_set == parsed
    resolved = resolve_sequence_set(parsed, largest)
    assert resolved == sorted(resolved)
    assert all(1 <= a <= b for a, b in resolved)
    assert all(b1 + 1 < a2 for (_, b1), (a2, _) in itertools.pairwise(resolved))


# Mailbox names: any Unicode text without control characters or lone surrogates.
NAMES = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(name=NAMES, utf8=st.booleans(), cuts=CUTS)
def test_mailbox_names_round_trip_through_the_parser(name: str, utf8: bool,
                                                     cuts: list[int]) -> None:
    wire = mailbox_name(name, utf8)
    line = b"a SELECT " + wire + b"\r\n"
    events = [e for e in drive(split(line, cuts), limits=ParserLimits())
              if not isinstance(e, ContinuationRequest)]
    assert len(events) == 1 and isinstance(events[0], Select), events
    decoded = decode_mailbox_name(events[0].mailbox, utf8)
    # INBOX is case-insensitive (RFC 9051 §5.1): the parser reports it as "INBOX".
    inbox = name.isascii() and name.upper() == "INBOX"
    assert decoded == ("INBOX" if inbox else name)
