"""The sans-IO IMAP command parser: framing, literals, limits, modes and the grammar of every
command (examples mostly taken from the RFCs that define them)."""

from __future__ import annotations

import datetime

import pytest

from mailkeep.imap.commands import (
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Compress,
    ContinuationRequest,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    IdleDone,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    ParseError,
    ParserLimits,
    QResyncParameters,
    Rename,
    SaslResponse,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceSet,
    SetQuota,
    Sort,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Thread,
    Unselect,
    Unsubscribe,
)
from mailkeep.imap.parser import CommandParser, parse_sequence_set


def drain(parser: CommandParser) -> list:
    events = []
    while (event := parser.next_event()) is not None:
        events.append(event)
    return events


def feed(data: bytes, *, authenticated: bool = False, limits: ParserLimits | None = None,
         chunk: int | None = None) -> list:
    """All events for ``data`` fed in one piece (or ``chunk``-sized pieces)."""
    parser = CommandParser(limits or ParserLimits())
    parser.authenticated = authenticated
    events = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        parser.receive_data(data[i:i + step])
        events += drain(parser)
    return events


def one(line: bytes, **kw: object) -> object:
    """The single event of one command line (CRLF added)."""
    events = feed(line + b"\r\n", **kw)  # type: ignore[arg-type]
    assert len(events) == 1, events
    return events[0]


def bad(line: bytes, **kw: object) -> ParseError:
    event = one(line, **kw)
    assert isinstance(event, ParseError), event
    assert not event.fatal
    return event


def seq(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


ALL_SEQ = seq((1, None))


# -- framing -------------------------------------------------------------------------------


def test_pipelined_commands_come_out_one_by_one() -> None:
    assert feed(b"a1 CAPABILITY\r\na2 NOOP\r\na3 LOGOUT\r\n") == [
        Capability("a1"), Noop("a2"), Logout("a3")]


def test_bare_lf_ends_a_line_but_bare_cr_does_not() -> None:
    assert feed(b"a1 NOOP\nb NOOP\r\n") == [Noop("a1"), Noop("b")]
    events = feed(b"a1 NOOP\rb2 LOGOUT\r\n")
    assert events == [ParseError("a1", "Unexpected extra arguments")]


def test_empty_lines_are_ignored() -> None:
    assert feed(b"\r\n\na1 NOOP\r\n\r\n") == [Noop("a1")]


def test_nothing_before_the_line_ends() -> None:
    parser = CommandParser()
    parser.receive_data(b"a1 NOO")
    assert parser.next_event() is None
    parser.receive_data(b"P\r")
    assert parser.next_event() is None
    parser.receive_data(b"\n")
    assert parser.next_event() == Noop("a1")
    assert parser.next_event() is None


def test_synchronising_literal_asks_for_continuation_then_reads_exactly_n_octets() -> None:
    parser = CommandParser()
    parser.receive_data(b"A001 LOGIN {11}\r\n")
    assert parser.next_event() == ContinuationRequest()
    assert parser.next_event() is None
    parser.receive_data(b"FRED FOOBAR {7}\r\n")
    assert parser.next_event() == ContinuationRequest()
    parser.receive_data(b"fat man\r\n")
    assert parser.next_event() == Login("A001", b"FRED FOOBAR", b"fat man")
    assert parser.next_event() is None


def test_literal_content_is_not_interpreted() -> None:
    # CRLF, quotes and a literal header inside literal data are just octets.
    data = b'x\r\n"{3}\r\n'
    events = feed(b"a LOGIN {%d+}\r\n" % len(data) + data + b" pw\r\n")
    assert events == [Login("a", data, b"pw")]


def test_non_synchronising_literal_needs_no_continuation() -> None:
    assert feed(b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n") == [Login("a", b"bob", b"pw")]


def test_zero_length_literals() -> None:
    assert feed(b"a LOGIN {0}\r\n {0+}\r\n\r\n") == [
        ContinuationRequest(), Login("a", b"", b"")]


def test_nul_is_refused_in_a_string_literal() -> None:
    events = feed(b"a LOGIN {3+}\r\nb\x00b pw\r\n")
    assert events == [ParseError("a", "NUL is not allowed in a string")]


def test_literal8_is_refused_where_a_string_is_expected() -> None:
    assert feed(b"a LOGIN ~{3+}\r\nbob pw\r\n")[0].tag == "a"
    assert isinstance(feed(b"a LOGIN ~{3+}\r\nbob pw\r\n")[0], ParseError)


def test_same_events_whatever_the_chunking() -> None:
    data = (b"a1 LOGIN {3}\r\nbob {2+}\r\npw\r\n"
            b"a2 APPEND INBOX (\\Seen) {5}\r\nhello (\\Draft) ~{3+}\r\na\x00b\r\n"
            b"a3 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From)])\r\n")
    whole = feed(data, authenticated=True)
    assert [type(e) for e in whole] == [
        ContinuationRequest, Login, ContinuationRequest, Append, Fetch]
    for chunk in (1, 2, 3, 7, 64):
        assert feed(data, authenticated=True, chunk=chunk) == whole


# -- literal limits ------------------------------------------------------------------------


def test_huge_literal_before_login_is_refused_without_reading_it() -> None:
    parser = CommandParser()
    parser.receive_data(b"a1 LOGIN {4294967295}\r\n")
    assert parser.next_event() == ParseError("a1", "Literal too big", code="TOOBIG")
    assert parser.buffered == 0
    # RFC 7888 §4: the client does not send the literal; the next line is a new command.
    parser.receive_data(b"a2 NOOP\r\n")
    assert parser.next_event() == Noop("a2")


def test_literal_limit_depends_on_authentication() -> None:
    limits = ParserLimits(max_literal_unauthenticated=10, max_literal=100)
    assert feed(b"a APPEND INBOX {50}\r\n", limits=limits) == [
        ParseError("a", "Literal too big", code="TOOBIG")]
    assert feed(b"a APPEND INBOX {50}\r\n", limits=limits, authenticated=True) == [
        ContinuationRequest()]
    assert feed(b"a APPEND INBOX {101}\r\n", limits=limits, authenticated=True) == [
        ParseError("a", "Literal too big", code="TOOBIG")]


def test_absurd_literal_size_is_too_big() -> None:
    assert feed(b"a LOGIN {" + b"9" * 200 + b"}\r\n", authenticated=True) == [
        ParseError("a", "Literal too big", code="TOOBIG")]


def test_oversized_nonsync_literal_is_skipped_and_its_command_dropped() -> None:
    limits = ParserLimits(max_literal=10)
    # The skipped literal looks like a command; it must not be read as one.
    payload = b"x LOGOUT\r\n" * 3
    data = (b"a1 APPEND INBOX {%d+}\r\n" % len(payload) + payload
            + b" {4+}\r\nabcd\r\na2 NOOP\r\n")
    whole = feed(data, authenticated=True, limits=limits)
    assert whole == [ParseError("a1", "Literal too big", code="TOOBIG"), Noop("a2")]
    assert feed(data, authenticated=True, limits=limits, chunk=3) == whole


def test_nonsync_literal_beyond_the_skip_cap_is_fatal() -> None:
    parser = CommandParser(ParserLimits(max_literal=10, max_command_bytes=100))
    parser.authenticated = True
    parser.receive_data(b"a1 APPEND INBOX {101+}\r\n")
    event = parser.next_event()
    assert event == ParseError("a1", "Literal too big", code="TOOBIG", fatal=True)
    parser.receive_data(b"a2 NOOP\r\n")
    assert parser.next_event() is None
    assert parser.buffered == 0


def test_nonsync_literal_before_login_is_capped_like_literal_minus() -> None:
    # RFC 7888 §5: 4096 octets; a bit more is skipped, much more ends the connection.
    events = feed(b"a1 LOGIN {5000+}\r\n" + b"u" * 5000 + b" pw\r\na2 NOOP\r\n")
    assert events == [ParseError("a1", "Literal too big", code="TOOBIG"), Noop("a2")]
    events = feed(b"a1 LOGIN {100000+}\r\n")
    assert events == [ParseError("a1", "Literal too big", code="TOOBIG", fatal=True)]


def test_total_literal_size_of_one_command_is_capped() -> None:
    limits = ParserLimits(max_literal=100, max_command_bytes=150)
    data = b"a APPEND INBOX {100+}\r\n" + b"m" * 100 + b" {100}\r\n"
    assert feed(data, authenticated=True, limits=limits) == [
        ParseError("a", "Literal too big", code="TOOBIG")]


def test_multiappend_message_count_is_capped() -> None:
    limits = ParserLimits(max_append_messages=2)
    data = b"a APPEND INBOX" + b" {1+}\r\nx" * 3 + b"\r\n"
    assert feed(data, authenticated=True, limits=limits) == [
        ParseError("a", "Too many messages in one APPEND")]


# -- line limits ---------------------------------------------------------------------------


def test_over_long_line_is_refused_early_and_not_buffered() -> None:
    parser = CommandParser(ParserLimits(max_line=100))
    parser.receive_data(b"a1 SEARCH " + b"1," * 40)
    assert parser.next_event() is None
    parser.receive_data(b"1," * 40)
    assert parser.next_event() == ParseError("a1", "Command line too long")
    for _ in range(50):
        parser.receive_data(b"2," * 100)
        assert parser.next_event() is None
        assert parser.buffered == 0
    parser.receive_data(b"3\r\na2 NOOP\r\n")
    assert drain(parser) == [Noop("a2")]


def test_over_long_line_in_one_piece() -> None:
    limits = ParserLimits(max_line=50)
    events = feed(b"a1 LOGIN " + b"x" * 60 + b" y\r\na2 NOOP\r\n", limits=limits)
    assert events == [ParseError("a1", "Command line too long"), Noop("a2")]


def test_line_of_exactly_max_line_is_accepted_however_it_is_split() -> None:
    limits = ParserLimits(max_line=20)
    line = b"a LOGIN " + b"u" * 9 + b" pw"
    assert len(line) == 20
    for cut in range(len(line) + 3):
        parser = CommandParser(limits)
        data = line + b"\r\n"
        parser.receive_data(data[:cut])
        events = drain(parser)
        parser.receive_data(data[cut:])
        assert events + drain(parser) == [Login("a", b"u" * 9, b"pw")]
    assert feed(b"a LOGIN " + b"u" * 10 + b" pw\r\n", limits=limits) == [
        ParseError("a", "Command line too long")]


def test_line_limit_counts_all_lines_of_a_command_but_not_literals() -> None:
    limits = ParserLimits(max_line=40)
    # 30 octets of literal do not count.
    assert feed(b"a LOGIN {30+}\r\n" + b"u" * 30 + b" pw\r\n", limits=limits) == [
        Login("a", b"u" * 30, b"pw")]
    data = b"a LOGIN {3+}\r\nbob " + b"p" * 30 + b"\r\nb NOOP\r\n"
    assert feed(data, limits=limits) == [
        ParseError("a", "Command line too long"), Noop("b")]


def test_over_long_line_ending_in_a_nonsync_literal_skips_the_literal() -> None:
    limits = ParserLimits(max_line=30)
    data = b"a1 LOGIN " + b"x" * 40 + b" {10+}\r\nb2 LOGOUT\r\n" + b"a3 NOOP\r\n"
    events = feed(data, limits=limits)
    assert events == [ParseError("a1", "Command line too long"), Noop("a3")]
    assert feed(data, limits=limits, chunk=4) == events


# -- tags and unknown commands -------------------------------------------------------------


@pytest.mark.parametrize("line", [b"+a NOOP", b"a+ NOOP", b"(a) NOOP", b"* NOOP", b'"a" NOOP',
                                  b"a\x01 NOOP", b"\xc3\xa9 NOOP", b" NOOP"])
def test_invalid_tag_is_answered_with_star(line: bytes) -> None:
    assert bad(line) == ParseError("*", "Invalid tag")


def test_tag_may_hold_a_bracket() -> None:
    assert one(b"a]1 NOOP") == Noop("a]1")


def test_missing_and_unknown_commands() -> None:
    assert bad(b"a1") == ParseError("a1", "Missing command")
    assert bad(b"a1 ") == ParseError("a1", "Missing command")
    assert bad(b"a1 XYZZY") == ParseError("a1", "Unknown command", code=None)
    assert bad(b"a1 UID XYZZY 1").tag == "a1"


def test_commands_are_case_insensitive() -> None:
    assert one(b"a capability") == Capability("a")
    assert one(b"a uid fetch 1 flags") == Fetch("a", True, seq((1, 1)),
                                                  (FetchAttribute("FLAGS"),))


def test_extra_arguments_are_refused() -> None:
    assert bad(b"a NOOP now").text == "Unexpected extra arguments"
    assert bad(b"a SELECT INBOX  ").tag == "a"


# -- modes: IDLE, AUTHENTICATE, STARTTLS ---------------------------------------------------


def test_idle_then_done() -> None:
    parser = CommandParser()
    parser.receive_data(b"A002 IDLE\r\n")
    assert parser.next_event() == Idle("A002")
    parser.expect_idle_done()
    parser.receive_data(b"done\r\nA003 NOOP\r\n")
    assert drain(parser) == [IdleDone(), Noop("A003")]


def test_idle_ended_by_something_else() -> None:
    parser = CommandParser()
    parser.receive_data(b"A002 IDLE\r\n")
    assert parser.next_event() == Idle("A002")
    parser.expect_idle_done()
    parser.receive_data(b"A003 NOOP\r\nA004 NOOP\r\n")
    assert drain(parser) == [ParseError("A002", "Expected DONE"), Noop("A004")]


def test_sasl_responses() -> None:
    parser = CommandParser()
    parser.receive_data(b"a AUTHENTICATE SCRAM-SHA-256\r\n")
    assert parser.next_event() == Authenticate("a", "SCRAM-SHA-256")
    parser.expect_sasl_response()
    # A SASL line is not a command: "{5}" at its end is no literal.
    parser.receive_data(b"biwsbj11c2VyLHI9{5}\r\n")
    assert parser.next_event() == SaslResponse(b"biwsbj11c2VyLHI9{5}")
    parser.expect_sasl_response()
    parser.receive_data(b"\r\n")
    assert parser.next_event() == SaslResponse(b"")
    parser.expect_sasl_response()
    parser.receive_data(b"*\r\nb NOOP\r\n")
    assert drain(parser) == [SaslResponse(b"*", cancelled=True), Noop("b")]


def test_starttls_discards_pipelined_plaintext() -> None:
    parser = CommandParser()
    injected = b"a2 LOGIN evil pw\r\na3 DELETE INBOX\r\n"
    parser.receive_data(b"a1 STARTTLS\r\n" + injected)
    assert parser.next_event() == StartTLS("a1")
    assert parser.discard_buffer() == len(injected)
    assert parser.next_event() is None
    parser.receive_data(b"a4 CAPABILITY\r\n")
    assert parser.next_event() == Capability("a4")


# -- commands of the not-authenticated state ------------------------------------------------


def test_login_forms() -> None:
    assert one(b'a LOGIN SMITH "sesame"') == Login("a", b"SMITH", b"sesame")
    assert one(b'a LOGIN "us\\"er" "p\\\\w d"') == Login("a", b'us"er', b"p\\w d")
    assert one(b"a LOGIN user]x p%") == ParseError("a", "Unexpected extra arguments")
    assert one(b"a LOGIN user]x pw") == Login("a", b"user]x", b"pw")
    assert bad(b"a LOGIN onlyuser").text == "Missing argument"
    assert bad(b'a LOGIN "unterminated pw').text == "Invalid quoted string"


def test_authenticate_forms() -> None:
    assert one(b"a AUTHENTICATE plain") == Authenticate("a", "PLAIN")
    assert one(b"a AUTHENTICATE PLAIN AGJvYgBwdw==") == Authenticate(
        "a", "PLAIN", b"AGJvYgBwdw==")
    assert one(b"a AUTHENTICATE EXTERNAL =") == Authenticate("a", "EXTERNAL", b"=")
    assert bad(b"a AUTHENTICATE PLAIN !!").tag == "a"


def test_any_state_commands() -> None:
    assert one(b"a STARTTLS") == StartTLS("a")
    assert one(b"a NAMESPACE") == Namespace("a")
    assert one(b"a IDLE") == Idle("a")
    assert one(b"a CHECK") == Check("a")
    assert one(b"a CLOSE") == Close("a")
    assert one(b"a UNSELECT") == Unselect("a")
    assert one(b"a EXPUNGE") == Expunge("a")
    assert one(b"a COMPRESS deflate") == Compress("a", "DEFLATE")


def test_id() -> None:
    # RFC 2971 §3.3
    line = b'a023 ID ("name" "sodr" "version" "19.34" "vendor" "Pink Floyd Music Limited")'
    assert one(line) == Id("a023", ((b"name", b"sodr"), (b"version", b"19.34"),
                                    (b"vendor", b"Pink Floyd Music Limited")))
    assert one(b"a ID NIL") == Id("a", None)
    assert one(b'a ID ("os" NIL)') == Id("a", ((b"os", None),))
    assert one(b"a ID ()") == Id("a", ())
    assert isinstance(one(b'a ID ("name")'), ParseError)


# -- authenticated state --------------------------------------------------------------------


def test_select_and_examine() -> None:
    assert one(b"A142 SELECT INBOX") == Select("A142", b"INBOX")
    assert one(b"A143 select inbox") == Select("A143", b"INBOX")
    assert one(b"A932 EXAMINE blurdybloop") == Select("A932", b"blurdybloop", readonly=True)
    assert one(b"a SELECT INBOX (CONDSTORE)") == Select("a", b"INBOX", condstore=True)
    assert bad(b"a SELECT INBOX (FOO)").text == "Invalid SELECT parameter FOO"
    assert bad(b"a SELECT INBOX ()").tag == "a"


def test_select_qresync_examples_from_rfc_7162() -> None:
    event = one(b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))")
    assert event == Select("A02", b"INBOX", qresync=QResyncParameters(
        67890007, 20050715194045000, seq((41, 41), (43, 211), (214, 541))))
    event = one(b"B01 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 "
                b"(5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976)))")
    assert event.qresync == QResyncParameters(
        67890007, 90060115194045000, seq((1, 29997)),
        seq((5000, 5000), (7500, 7500), (9000, 9000), (9990, 9999)),
        seq((15000, 15000), (22500, 22500), (27000, 27000), (29970, 29970), (29973, 29973),
            (29976, 29976)))
    event = one(b"a SELECT INBOX (CONDSTORE QRESYNC (1 2 (3 4)))")
    assert event.condstore and event.qresync == QResyncParameters(1, 2, None, seq((3, 3)),
                                                                  seq((4, 4)))
    assert one(b"a SELECT INBOX (QRESYNC (1 2))").qresync == QResyncParameters(1, 2)
    assert isinstance(one(b"a SELECT INBOX (QRESYNC (1 2 5:*))"), ParseError)
    assert isinstance(one(b"a SELECT INBOX (QRESYNC (0 2))"), ParseError)


def test_mailbox_management() -> None:
    assert one(b"A003 CREATE owatagusiam/") == Create("A003", b"owatagusiam/")
    assert one(b"t1 CREATE MySpecial (USE (\\drafts \\Sent \\X-Other))") == Create(
        "t1", b"MySpecial", ("\\Drafts", "\\Sent", "\\X-Other"))
    assert isinstance(one(b"t1 CREATE x (USE ($Junk))"), ParseError)
    assert isinstance(one(b"t1 CREATE x (FOO)"), ParseError)
    assert one(b"A683 DELETE blurdybloop") == Delete("A683", b"blurdybloop")
    assert one(b'A684 RENAME "Foo bar" zowie') == Rename("A684", b"Foo bar", b"zowie")
    assert one(b"A002 SUBSCRIBE #news.comp.mail.mime") == Subscribe(
        "A002", b"#news.comp.mail.mime")
    assert one(b"A002 UNSUBSCRIBE {4+}\r\nx yz") == Unsubscribe("A002", b"x yz")


def test_mailbox_names_may_be_utf8() -> None:
    name = "Entwürfe".encode()
    assert one(b'a SELECT "' + name + b'"') == Select("a", name)
    assert one(b"a SELECT " + name) == Select("a", name)
    assert one(b"a SELECT Entw&APw-rfe") == Select("a", b"Entw&APw-rfe")


def test_list_basic() -> None:
    assert one(b'A101 LIST "" ""') == List("A101", b"", (b"",))
    assert one(b'A102 LIST #news.comp.mail.misc ""') == List(
        "A102", b"#news.comp.mail.misc", (b"",))
    assert one(b"A202 LIST ~/Mail/ %") == List("A202", b"~/Mail/", (b"%",))
    assert one(b'a LIST "" *') == List("a", b"", (b"*",))
    assert one(b'a LIST "" "foo bar/*"') == List("a", b"", (b"foo bar/*",))


def test_list_extended() -> None:
    assert one(b'A01 LIST (REMOTE) "" *') == List(
        "A01", b"", (b"*",), selection=("REMOTE",), extended=True)
    assert one(b'C04 LIST (subscribed RECURSIVEMATCH) "" %') == List(
        "C04", b"", (b"%",), selection=("SUBSCRIBED", "RECURSIVEMATCH"), extended=True)
    assert one(b'A05 LIST "" % RETURN (CHILDREN)') == List(
        "A05", b"", (b"%",), returns=("CHILDREN",), extended=True)
    assert one(b'A06 LIST () "" (INBOX Drafts*)') == List(
        "A06", b"", (b"INBOX", b"Drafts*"), extended=True)
    assert one(b'A07 LIST (SPECIAL-USE) "" * RETURN (SPECIAL-USE)') == List(
        "A07", b"", (b"*",), ("SPECIAL-USE",), ("SPECIAL-USE",), extended=True)
    # RFC 5819 §5
    assert one(b'A02 LIST "" % RETURN (STATUS (MESSAGES UNSEEN))') == List(
        "A02", b"", (b"%",), returns=("STATUS",), status_items=("MESSAGES", "UNSEEN"),
        extended=True)


def test_list_extended_errors() -> None:
    assert bad(b'a LIST (RECURSIVEMATCH) "" %').tag == "a"
    assert bad(b'a LIST (REMOTE RECURSIVEMATCH) "" %').tag == "a"
    assert bad(b'a LIST (FOO) "" %').tag == "a"
    assert bad(b'a LIST "" % RETURN (FOO)').tag == "a"
    assert bad(b'a LIST "" % RETURN (STATUS (FOO))').tag == "a"
    assert bad(b'a LIST "" ()').tag == "a"


def test_lsub_status_quota() -> None:
    assert one(b'A002 LSUB "#news." "comp.mail.*"') == Lsub("A002", b"#news.", b"comp.mail.*")
    assert one(b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)") == Status(
        "A042", b"blurdybloop", ("UIDNEXT", "MESSAGES"))
    assert one(b"a STATUS INBOX (size highestmodseq appendlimit deleted)").items == (
        "SIZE", "HIGHESTMODSEQ", "APPENDLIMIT", "DELETED")
    assert bad(b"a STATUS INBOX (FOO)").text == "Unknown status item FOO"
    assert bad(b"a STATUS INBOX ()").tag == "a"
    assert one(b'G0001 GETQUOTA "!partition/sda4"') == GetQuota("G0001", b"!partition/sda4")
    assert one(b"A003 GETQUOTAROOT INBOX") == GetQuotaRoot("A003", b"INBOX")
    assert one(b'S0000 SETQUOTA "#user/alice" (storage 510)') == SetQuota(
        "S0000", b"#user/alice", (("STORAGE", 510),))
    assert one(b'a SETQUOTA "" ()') == SetQuota("a", b"", ())


def test_enable() -> None:
    assert one(b"t2 ENABLE CONDSTORE X-GOOD-IDEA") == Enable("t2", ("CONDSTORE", "X-GOOD-IDEA"))
    assert one(b"t2 enable utf8=accept") == Enable("t2", ("UTF8=ACCEPT",))
    assert bad(b"t2 ENABLE").text == "Missing argument"


def test_append_from_rfc_9051() -> None:
    message = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar "
               b"<foobar@Blurdybloop.example>\r\nSubject: afternoon meeting\r\n\r\n"
               b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n")
    parser = CommandParser()
    parser.authenticated = True
    parser.receive_data(b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(message))
    assert parser.next_event() == ContinuationRequest()
    parser.receive_data(message + b"\r\n")
    assert parser.next_event() == Append("A003", b"saved-messages", (
        AppendMessage(("\\Seen",), None, message),))


def test_append_date_time_and_multiappend() -> None:
    # RFC 3502 §6 (MULTIAPPEND) with a date-time whose day has a leading space.
    data = (b'A003 APPEND saved-messages (\\Seen) {3+}\r\none'
            b' (\\seen $Forwarded) " 1-Jul-2002 22:35:00 +0000" {3+}\r\ntwo'
            b' "17-Jul-1996 02:44:25 -0700" {5+}\r\nthree\r\n')
    [event] = feed(data, authenticated=True)
    utc = datetime.UTC
    assert event == Append("A003", b"saved-messages", (
        AppendMessage(("\\Seen",), None, b"one"),
        AppendMessage(("\\Seen", "$Forwarded"),
                      datetime.datetime(2002, 7, 1, 22, 35, tzinfo=utc), b"two"),
        AppendMessage((), datetime.datetime(1996, 7, 17, 9, 44, 25, tzinfo=utc), b"three"),
    ))
    assert event.messages[2].internal_date.utcoffset() == datetime.timedelta(hours=-7)


def test_append_binary_and_utf8() -> None:
    [event] = feed(b"a APPEND INBOX ~{3+}\r\na\x00b\r\n", authenticated=True)
    assert event.messages == (AppendMessage(data=b"a\x00b", binary=True),)
    [event] = feed(b"a APPEND INBOX UTF8 (~{3+}\r\nabc)\r\n", authenticated=True)
    assert event.messages == (AppendMessage(data=b"abc", binary=True, utf8=True),)
    [event] = feed(b"a APPEND INBOX (\\Seen) utf8 (~{2+}\r\nhi) {2+}\r\nho\r\n",
                   authenticated=True)
    assert event.messages == (AppendMessage(("\\Seen",), data=b"hi", binary=True, utf8=True),
                              AppendMessage(data=b"ho"))


def test_append_errors() -> None:
    assert bad(b'a APPEND INBOX "hello"').text == "Invalid date-time"
    assert bad(b"a APPEND INBOX hello").text == "Expected a literal"
    assert bad(b"a APPEND INBOX").text == "Missing argument"
    assert bad(b'a APPEND INBOX "31-Feb-2020 00:00:00 +0000" {0+}\r\n').text == (
        "Invalid date-time")
    assert bad(b'a APPEND INBOX "1-Jan-2020 25:00:00 +0000" {0+}\r\n').tag == "a"
    assert bad(b"a APPEND INBOX {1+}\r\nx junk").tag == "a"


# -- selected state ------------------------------------------------------------------------


def test_fetch_examples() -> None:
    assert one(b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])") == Fetch(
        "A654", False, seq((2, 4)), (
            FetchAttribute("FLAGS"),
            FetchAttribute("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM")))))
    assert one(b"a FETCH * body.peek[1.2.mime]").items == (
        FetchAttribute("BODY", Section((1, 2), "MIME"), peek=True),)
    assert one(b"a FETCH 1 BODY[]<0.2048>").items == (
        FetchAttribute("BODY", Section(), partial=(0, 2048)),)
    assert one(b"a FETCH 1 (BODY[TEXT] BODY[2] RFC822.SIZE RFC822 RFC822.HEADER)").items == (
        FetchAttribute("BODY", Section((), "TEXT")), FetchAttribute("BODY", Section((2,))),
        FetchAttribute("RFC822.SIZE"), FetchAttribute("RFC822"),
        FetchAttribute("RFC822.HEADER"))
    assert one(b'a FETCH 1 BODY.PEEK[3.HEADER.FIELDS.NOT ("X-A" {3+}\r\nX-B)]').items == (
        FetchAttribute("BODY", Section((3,), "HEADER.FIELDS.NOT", ("X-A", "X-B")),
                       peek=True),)
    assert one(b"a FETCH 1 BODY").items == (FetchAttribute("BODY"),)
    assert one(b"a FETCH 1 (UID ENVELOPE BODYSTRUCTURE INTERNALDATE MODSEQ SAVEDATE)"
               ).items == tuple(FetchAttribute(n) for n in (
                   "UID", "ENVELOPE", "BODYSTRUCTURE", "INTERNALDATE", "MODSEQ", "SAVEDATE"))


def test_fetch_macros() -> None:
    names = lambda line: [a.name for a in one(line).items]  # noqa: E731
    assert names(b"a FETCH 1 ALL") == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert names(b"a FETCH 1 fast") == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert names(b"a FETCH 1 FULL") == [
        "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]
    assert bad(b"a FETCH 1 (FLAGS ALL)").tag == "a"


def test_fetch_binary_and_preview() -> None:
    assert one(b"a FETCH 1 (BINARY[1]<0.10> BINARY.PEEK[] BINARY.SIZE[2.1])").items == (
        FetchAttribute("BINARY", Section((1,)), partial=(0, 10)),
        FetchAttribute("BINARY", Section(), peek=True),
        FetchAttribute("BINARY.SIZE", Section((2, 1))))
    assert one(b"a FETCH 1 (PREVIEW (LAZY) FLAGS)").items == (
        FetchAttribute("PREVIEW", lazy=True), FetchAttribute("FLAGS"))
    assert one(b"a FETCH 1 PREVIEW").items == (FetchAttribute("PREVIEW"),)
    # "(" after a lone PREVIEW opens the fetch modifiers unless it holds LAZY
    event = one(b"a UID FETCH 1 PREVIEW (CHANGEDSINCE 7)")
    assert event.items == (FetchAttribute("PREVIEW"),) and event.changed_since == 7
    assert one(b"a FETCH 1 PREVIEW (lazy)").items == (FetchAttribute("PREVIEW", lazy=True),)


def test_fetch_modifiers() -> None:
    # RFC 7162 §3.1.4.1 and §3.2.6
    event = one(b"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)")
    assert event == Fetch("s100", True, ALL_SEQ, (FetchAttribute("FLAGS"),), 12345)
    event = one(b"s101 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)")
    assert event.vanished and event.changed_since == 12345
    assert bad(b"a FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)").tag == "a"
    assert bad(b"a UID FETCH 1 (FLAGS) (VANISHED)").tag == "a"
    assert bad(b"a FETCH 1 FLAGS (FOO)").tag == "a"
    assert bad(b"a FETCH 1 FLAGS (CHANGEDSINCE 0)").tag == "a"


@pytest.mark.parametrize("line", [
    b"a FETCH 1 BODY[MIME]", b"a FETCH 1 BINARY[HEADER]", b"a FETCH 1 BODY[]<0.0>",
    b"a FETCH 1 BODY[0]", b"a FETCH 1 BODY[1..2]", b"a FETCH 1 BODY[1.]",
    b"a FETCH 1 BODY[HEADER.FIELDS ()]", b"a FETCH 1 BODY[HEADER.FIELDS]",
    b"a FETCH 1 BODY.PEEK", b"a FETCH 1 BODY[TEXT", b"a FETCH 1 FOO", b"a FETCH 1 ()",
    b"a FETCH 0 FLAGS", b"a FETCH 1:0 FLAGS", b"a FETCH 01 FLAGS", b"a FETCH 4294967296 FLAGS",
    b"a FETCH 1,,2 FLAGS", b"a FETCH FLAGS", b"a FETCH 1", b"a FETCH 1 (FLAGS",
    b"a FETCH 1 BODY[]<1.2", b"a FETCH 1 BODY[]<99999999999999999999.1>",
])
def test_fetch_errors(line: bytes) -> None:
    assert bad(line).tag == "a"


def test_sequence_sets() -> None:
    assert one(b"a FETCH 1:*,5,7:3,*,$ FLAGS") == ParseError("a", "Invalid sequence set")
    assert one(b"a FETCH 2,4:7,9,12:* FLAGS").sequence_set == seq(
        (2, 2), (4, 7), (9, 9), (12, None))
    assert one(b"a UID FETCH *:4 FLAGS").sequence_set == seq((None, 4))
    assert one(b"a FETCH $ FLAGS").sequence_set == SequenceSet(saved=True)
    assert one(b"a FETCH 4294967295 FLAGS").sequence_set == seq((4294967295, 4294967295))


def test_items_limit() -> None:
    limits = ParserLimits(max_items=10)
    assert bad(b"a FETCH " + b",".join(b"%d" % i for i in range(1, 12)) + b" FLAGS",
               limits=limits).tag == "a"
    assert bad(b"a STORE 1 +FLAGS (" + b" ".join(b"k%d" % i for i in range(12)) + b")",
               limits=limits).tag == "a"


def test_store() -> None:
    assert one(b"A003 STORE 2:4 +FLAGS (\\Deleted)") == Store(
        "A003", False, seq((2, 4)), "add", False, ("\\Deleted",))
    assert one(b"a STORE 1 flags.silent ()") == Store("a", False, seq((1, 1)), "set", True, ())
    assert one(b"a STORE 1 -FLAGS \\seen \\FLAGGED $Junk NonJunk") == Store(
        "a", False, seq((1, 1)), "remove", False, ("\\Seen", "\\Flagged", "$Junk", "NonJunk"))
    # RFC 7162 §3.1.3
    assert one(b"a103 UID STORE 6,4,8 (UNCHANGEDSINCE 12121230045) +FLAGS.SILENT (\\Deleted)"
               ) == Store("a103", True, seq((6, 6), (4, 4), (8, 8)), "add", True,
                          ("\\Deleted",), 12121230045)
    assert one(b"a STORE 1 (UNCHANGEDSINCE 0) FLAGS (x)").unchanged_since == 0
    for line in (b"a STORE 1 +FLAGZ (x)", b"a STORE 1 ++FLAGS (x)", b"a STORE 1 FLAGS",
                 b"a STORE 1 FLAGS (\\)", b"a STORE 1 (FOO 1) FLAGS (x)",
                 b"a STORE 1 FLAGS (a b", b"a STORE 1 FLAGS (\\Seen\x80)"):
        assert bad(line).tag == "a"


def test_copy_move_expunge() -> None:
    assert one(b"A003 COPY 2:4 MEETING") == Copy("A003", False, seq((2, 4)), b"MEETING")
    assert one(b"a UID MOVE 42:69 foo") == Move("a", True, seq((42, 69)), b"foo")
    assert one(b"a MOVE 1 inbox") == Move("a", False, seq((1, 1)), b"INBOX")
    assert one(b"A003 UID EXPUNGE 3000:3002") == Expunge("A003", seq((3000, 3002)))
    assert bad(b"A003 UID EXPUNGE").tag == "A003"


# -- SEARCH, SORT, THREAD ------------------------------------------------------------------

FLAGGED = SearchKey("FLAG", ("\\Flagged",))
SINCE_1994 = SearchKey("SINCE", (datetime.date(1994, 2, 1),))
NOT_SMITH = SearchKey("NOT", (SearchKey("HEADER", ("FROM", b"Smith")),))


def test_search_examples() -> None:
    assert one(b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"') == Search(
        "A282", False, SearchKey("AND", (FLAGGED, SINCE_1994, NOT_SMITH)))
    assert one(b'A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'
               ) == Search("A282", False, SearchKey("AND", (FLAGGED, SINCE_1994, NOT_SMITH)),
                           returns=("MIN", "COUNT"))
    assert one(b"A283 SEARCH RETURN () FLAGGED").returns == ()
    assert one(b'A284 SEARCH TEXT "string not in mailbox"') == Search(
        "A284", False, SearchKey("TEXT", (b"string not in mailbox",)))
    text = "XXXXXXЖ".encode()
    assert one(b"A285 SEARCH CHARSET UTF-8 TEXT {%d+}\r\n" % len(text) + text) == Search(
        "A285", False, SearchKey("TEXT", (text,)), charset="UTF-8")
    assert one(b"a UID SEARCH RETURN (SAVE) CHARSET us-ascii UNSEEN") == Search(
        "a", True, SearchKey("NOFLAG", ("\\Seen",)), "us-ascii", ("SAVE",))


def test_search_keys() -> None:
    def key(text: bytes) -> SearchKey:
        event = one(b"a SEARCH " + text)
        assert isinstance(event, Search), event
        return event.key

    day = datetime.date(1994, 2, 1)
    assert key(b"ALL") == SearchKey("ALL")
    assert key(b"unseen") == SearchKey("NOFLAG", ("\\Seen",))
    assert key(b"ANSWERED") == SearchKey("FLAG", ("\\Answered",))
    assert key(b"UNDRAFT") == SearchKey("NOFLAG", ("\\Draft",))
    assert key(b"KEYWORD $Junk") == SearchKey("FLAG", ("$Junk",))
    assert key(b"UNKEYWORD NonJunk") == SearchKey("NOFLAG", ("NonJunk",))
    assert key(b"NEW") == SearchKey("AND", (SearchKey("RECENT"), SearchKey("NOFLAG",
                                                                           ("\\Seen",))))
    assert key(b"OLD") == SearchKey("NOT", (SearchKey("RECENT"),))
    assert key(b"RECENT") == SearchKey("RECENT")
    assert key(b'SUBJECT ""') == SearchKey("HEADER", ("SUBJECT", b""))
    assert key(b"TO bob BCC c CC d") == SearchKey("AND", (
        SearchKey("HEADER", ("TO", b"bob")), SearchKey("HEADER", ("BCC", b"c")),
        SearchKey("HEADER", ("CC", b"d"))))
    assert key(b'HEADER message-id "<x@y>"') == SearchKey("HEADER", ("MESSAGE-ID", b"<x@y>"))
    assert key(b"BODY hello") == SearchKey("BODY", (b"hello",))
    assert key(b'ON "1-Feb-1994"') == SearchKey("ON", (day,))
    assert key(b"BEFORE 01-FEB-1994") == SearchKey("BEFORE", (day,))
    assert key(b"SENTSINCE 1-feb-1994 SENTBEFORE 1-Feb-1994 SENTON 1-Feb-1994") == SearchKey(
        "AND", tuple(SearchKey(k, (day,)) for k in ("SENTSINCE", "SENTBEFORE", "SENTON")))
    assert key(b"SAVEDBEFORE 1-Feb-1994 SAVEDATESUPPORTED") == SearchKey("AND", (
        SearchKey("SAVEDBEFORE", (day,)), SearchKey("SAVEDATESUPPORTED")))
    assert key(b"LARGER 10000 SMALLER 9223372036854775807") == SearchKey("AND", (
        SearchKey("LARGER", (10000,)), SearchKey("SMALLER", (2**63 - 1,))))
    assert key(b"YOUNGER 3600") == SearchKey("YOUNGER", (3600,))
    assert key(b"OLDER 60") == SearchKey("OLDER", (60,))
    assert key(b"MODSEQ 620162338") == SearchKey("MODSEQ", (620162338,))
    assert key(b'MODSEQ "/flags/\\\\draft" all 620162338') == SearchKey("MODSEQ",
                                                                       (620162338,))
    assert key(b"1:5,7 UID 3:*") == SearchKey("AND", (
        SearchKey("SEQUENCE", (seq((1, 5), (7, 7)),)), SearchKey("UID", (seq((3, None)),))))
    assert key(b"UID $") == SearchKey("UID", (SequenceSet(saved=True),))
    assert key(b"OR (SEEN FLAGGED) NOT (DELETED)") == SearchKey("OR", (
        SearchKey("AND", (SearchKey("FLAG", ("\\Seen",)), FLAGGED)),
        SearchKey("NOT", (SearchKey("FLAG", ("\\Deleted",)),))))
    assert key(b"((ALL))") == SearchKey("ALL")


@pytest.mark.parametrize("text", [
    b"", b"FOO", b"SINCE 31-Feb-1994", b"SINCE 1-Foo-1994", b'SINCE "1-Feb-1994',
    b"SINCE 1994-02-01", b"LARGER", b"LARGER x", b"LARGER 9223372036854775808", b"OLDER 0",
    b"OR SEEN", b"NOT", b"(SEEN", b"SEEN)", b"()", b"KEYWORD \\Seen", b"HEADER", b"UID",
    b"UID 0", b"MODSEQ \"/flags/x\" foo 1", b"CHARSET", b"RETURN (FOO) ALL", b"SEEN  ALL",
])
def test_search_errors(text: bytes) -> None:
    assert bad(b"a SEARCH " + text).tag == "a"


def test_deep_search_programs_are_refused_not_crashing() -> None:
    assert bad(b"a SEARCH " + b"NOT " * 5000 + b"ALL").text == (
        "Search program nested too deeply")
    assert bad(b"a SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000).text == (
        "Search program nested too deeply")
    assert bad(b"a SEARCH " + b"OR ALL " * 5000 + b"ALL").tag == "a"
    limits = ParserLimits(max_depth=3)
    assert isinstance(one(b"a SEARCH NOT NOT ALL", limits=limits), Search)
    assert isinstance(one(b"a SEARCH NOT NOT NOT NOT ALL", limits=limits), ParseError)


def test_sort() -> None:
    # RFC 5256 §3
    assert one(b"A283 SORT (SUBJECT REVERSE DATE) UTF-8 ALL") == Sort(
        "A283", False, (("SUBJECT", False), ("DATE", True)), "UTF-8", SearchKey("ALL"))
    assert one(b"A284 UID SORT (reverse arrival) US-ASCII SINCE 1-Feb-1994 UNSEEN") == Sort(
        "A284", True, (("ARRIVAL", True),), "US-ASCII",
        SearchKey("AND", (SINCE_1994, SearchKey("NOFLAG", ("\\Seen",)))))
    # RFC 5267 ESORT
    assert one(b"a SORT RETURN (MIN COUNT) (DISPLAYFROM) UTF-8 ALL").returns == ("MIN", "COUNT")
    for line in (b"a SORT () UTF-8 ALL", b"a SORT (FOO) UTF-8 ALL", b"a SORT (DATE) ALL",
                 b"a SORT (DATE) UTF-8", b"a SORT (REVERSE) UTF-8 ALL"):
        assert bad(line).tag == "a"


def test_thread() -> None:
    assert one(b"A283 THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000") == Thread(
        "A283", False, "ORDEREDSUBJECT", "UTF-8",
        SearchKey("SINCE", (datetime.date(2000, 3, 5),)))
    assert one(b"A284 UID THREAD references US-ASCII TEXT \"gewp\"") == Thread(
        "A284", True, "REFERENCES", "US-ASCII", SearchKey("TEXT", (b"gewp",)))
    assert bad(b"a THREAD REFS UTF-8 ALL").text == "Unknown threading algorithm REFS"


def test_parse_sequence_set_function() -> None:
    assert parse_sequence_set("1:4,7,9:*") == seq((1, 4), (7, 7), (9, None))
    assert parse_sequence_set("$") == SequenceSet(saved=True)
    for text in ("", "0", "1:", ":1", "1,", "a", "1:2:3", "$,1", "99999999999"):
        with pytest.raises(ValueError):
            parse_sequence_set(text)
    with pytest.raises(ValueError):
        parse_sequence_set(",".join(["1"] * 11), max_items=10)
