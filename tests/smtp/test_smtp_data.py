"""Message content: DATA (RFC 5321 §4.1.1.4, §4.5.2), smuggling resistance, BDAT (RFC 3030),
LMTP per-recipient replies (RFC 2033 §4.2)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.smtp import BodyEnd, ClientError, DataStart, Reply, Reset, State
from mailkeep.smtp.data import BodyScanner, DataReader

TXN = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"


def dot_stuff(body: bytes) -> bytes:
    """What a correct client sends for ``body`` (which ends with CRLF)."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


# --- DATA ----------------------------------------------------------------------------------------

def test_data_transaction(in_transaction):
    s = in_transaction()
    assert s.codes(b"DATA\r\n") == ["354"]
    assert s.conn.state is State.DATA
    assert s.codes(b"Subject: hi\r\n\r\nHello\r\n.\r\n") == ["250 2.0.0"]
    assert s.body == b"Subject: hi\r\n\r\nHello\r\n"
    assert s.body_end == BodyEnd(None, None, len(s.body))
    assert s.conn.transaction is None and s.conn.state is State.READY


def test_empty_message(in_transaction):
    s = in_transaction()
    s.send(b"DATA\r\n.\r\n")
    assert s.body == b"" and s.body_end.size == 0 and s.body_end.problem is None


def test_dot_unstuffing(in_transaction):
    s = in_transaction()
    s.send(b"DATA\r\n..first\r\nmid..dle\r\n..\r\n...\r\n. \r\n.\r\n")
    assert s.body == b".first\r\nmid..dle\r\n.\r\n..\r\n \r\n"


def test_pipelined_transactions_and_quit(ready):
    s = ready()
    out = s.codes((TXN + b"DATA\r\nbody one\r\n.\r\n") * 3 + b"QUIT\r\n")
    # Without PIPELINING-compliant waiting the client would still get ordered replies.
    assert out == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"] * 3 + ["221 2.0.0"]
    assert len(s.of_type(BodyEnd)) == 3


def test_data_refused_by_policy_keeps_commands_in_sync(in_transaction):
    s = in_transaction(lambda conn, e: conn.reject(Reply(451, "4.3.0", "Later"))
                       if isinstance(e, DataStart) else conn.accept())
    assert s.codes(b"DATA\r\nRSET\r\n") == ["451 4.3.0", "250 2.0.0"]


@pytest.mark.parametrize("split", range(1, len(b"x\r\n.\r\nNOOP\r\n")))
def test_end_of_data_split_at_every_position(in_transaction, split):
    s = in_transaction()
    s.send(b"DATA\r\n")
    data = b"x\r\n.\r\nNOOP\r\n"
    s.send(data[:split])
    s.send(data[split:])
    assert s.body == b"x\r\n"
    assert s.output.endswith(b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n")


@pytest.mark.parametrize("split", range(1, 5))
def test_immediate_end_split(in_transaction, split):
    s = in_transaction()
    data = b"DATA\r\n.\r\nNOOP\r\n"
    s.send(data[: 6 + split])
    s.send(data[6 + split:])
    assert s.body == b"" and s.body_end is not None
    assert s.output.endswith(b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n")


# Every look-alike of the terminator that must NOT end the message (SMTP smuggling).
SMUGGLING = [
    b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r",
    b"\r\n.\x00\r\n", b"\r\n\x00.\r\n", b"\r\n. \r\n", b"\n\n.\n\n", b"\r\r\n.\n",
]


@pytest.mark.parametrize("fake", SMUGGLING)
def test_smuggled_terminator_does_not_end_data(in_transaction, fake):
    s = in_transaction()
    smuggled = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\n"
    s.send(b"DATA\r\nheader: x\r\n\r\nbody" + fake + smuggled + b"spoofed\r\n.\r\n")
    # Exactly one message, containing the smuggled commands as text.
    ends = s.of_type(BodyEnd)
    assert len(ends) == 1
    assert smuggled in s.body
    assert s.codes(b"NOOP\r\n") == ["250 2.0.0"]
    assert s.conn.state is State.READY
    if b"\r" in fake.replace(b"\r\n", b"") or b"\n" in fake.replace(b"\r\n", b""):
        assert ends[0].problem == "bare-newline"
        assert ends[0].suggested.code == 550


@pytest.mark.parametrize("fake", SMUGGLING)
def test_smuggled_terminator_split_everywhere(in_transaction, fake):
    data = b"DATA\r\nbody" + fake + b"more\r\n.\r\n"
    for split in range(1, len(data)):
        s = in_transaction()
        s.send(data[:split])
        s.send(data[split:])
        assert len(s.of_type(BodyEnd)) == 1
        assert fake.replace(b"\r\n.", b"\r\n") in s.body


def test_bare_newlines_reject_mode_reads_to_the_real_end(in_transaction):
    s = in_transaction()
    s.send(b"DATA\r\nline one\nline two\r\n.\r\n")
    assert s.body_end.problem == "bare-newline"
    assert s.body_end.suggested == Reply(
        550, "5.6.11", "Message contains bare CR or LF; lines must end with CRLF"
    )


def test_adapter_answers_body_end_with_the_suggestion(in_transaction):
    def policy(conn, event):
        if isinstance(event, BodyEnd) and event.problem:
            conn.reject(event.suggested)
        else:
            conn.accept()

    s = in_transaction(policy)
    assert s.codes(b"DATA\r\nbad\rline\r\n.\r\n") == ["354", "550 5.6.11"]
    assert s.conn.transaction is None      # RFC 5321 §4.1.1.4: transaction over anyway


def test_bare_newlines_normalize_mode(in_transaction):
    s = in_transaction(bare_newlines="normalize")
    s.send(b"DATA\r\na\nb\rc\r\r\nd\n.\ne\r\n.\r\n")
    assert s.body_end.problem is None
    # Bare CR and LF become CRLF; the lone "." after a bare LF is content, not the end.
    assert s.body == b"a\r\nb\r\nc\r\n\r\nd\r\n.\r\ne\r\n"


def test_nul_in_body(in_transaction):
    s = in_transaction()
    s.send(b"DATA\r\na\x00b\r\n.\r\n")
    assert s.body_end.problem == "nul" and s.body_end.suggested.code == 554


def test_line_too_long(in_transaction):
    s = in_transaction(max_data_line=100)
    s.send(b"DATA\r\n" + b"x" * 98 + b"\r\n.\r\n")
    assert s.body_end.problem is None
    s = in_transaction(max_data_line=100)
    s.send(b"DATA\r\nshort\r\n" + b"x" * 99 + b"\r\nshort\r\n.\r\n", chunks=[7] * 30)
    assert s.body_end.problem == "line-too-long"
    assert s.body_end.suggested == Reply(554, "5.6.0", "Message contains a line that is too long")


def test_long_line_in_the_middle_of_one_big_read(in_transaction):
    s = in_transaction(max_data_line=100)
    s.send(b"DATA\r\n" + b"ok\r\n" * 50 + b"y" * 150 + b"\r\n" + b"ok\r\n" * 50 + b".\r\n")
    assert s.body_end.problem == "line-too-long"


def test_too_big_is_read_to_the_end_but_not_stored(in_transaction):
    s = in_transaction(max_message_size=1000)
    s.send(b"DATA\r\n")
    s.send(b"y" * 998 + b"\r\n")
    s.send(b"z" * 5000 + b"\r\n.\r\nNOOP\r\n", chunks=[512] * 20)
    end = s.body_end
    assert end.problem == "too-big" and end.suggested.code == 552 and end.size == 6002
    assert len(s.body) <= 1000
    assert s.output.endswith(b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n")   # still in sync


def test_eof_in_the_middle_of_data(in_transaction):
    s = in_transaction()
    s.send(b"DATA\r\npartial\r\n")
    s.eof()
    assert s.body_end is None and s.conn.closed


# --- LMTP ----------------------------------------------------------------------------------------

def test_lmtp_one_reply_per_recipient(ready):
    def policy(conn, event):
        if isinstance(event, BodyEnd):
            conn.lmtp_replies([Reply(250, "2.0.0", "a ok"), Reply(452, "4.2.2", "b over quota"),
                               Reply(250, "2.0.0", "c ok")])
        else:
            conn.accept()

    s = ready(policy, lmtp=True)
    s.send(b"MAIL FROM:<x@y.example>\r\n" + b"".join(
        b"RCPT TO:<%s@d.example>\r\n" % n for n in (b"a", b"b", b"c")))
    assert s.codes(b"DATA\r\nhi\r\n.\r\n") == ["354", "250 2.0.0", "452 4.2.2", "250 2.0.0"]


def test_lmtp_accept_and_reject_answer_every_recipient(ready):
    s = ready(lmtp=True)
    s.send(b"MAIL FROM:<x@y.example>\r\nRCPT TO:<a@d.example>\r\nRCPT TO:<b@d.example>\r\n")
    assert s.codes(b"DATA\r\nhi\r\n.\r\n") == ["354", "250 2.0.0", "250 2.0.0"]


def test_lmtp_replies_must_match_recipients(ready):
    def policy(conn, event):
        if isinstance(event, BodyEnd):
            with pytest.raises(ValueError):
                conn.lmtp_replies([Reply(250, "2.0.0", "only one")])
            conn.reject(Reply(451, "4.3.0", "try later"))
        else:
            conn.accept()

    s = ready(policy, lmtp=True)
    s.send(b"MAIL FROM:<x@y.example>\r\nRCPT TO:<a@d.example>\r\nRCPT TO:<b@d.example>\r\n")
    assert s.codes(b"DATA\r\nhi\r\n.\r\n") == ["354", "451 4.3.0", "451 4.3.0"]


# --- BDAT (RFC 3030) -----------------------------------------------------------------------------

def test_bdat_single_chunk_is_binary_safe(in_transaction):
    s = in_transaction()
    content = b"Subject: x\r\n\r\n.\r\n..\r\nQUIT\r\n"
    assert s.codes(b"BDAT %d LAST\r\n" % len(content) + content) == ["250 2.0.0"]
    assert s.body == content                    # no unstuffing, no end marker
    assert s.of_type(DataStart) == [DataStart(chunking=True)]
    assert s.conn.state is State.READY


def test_bdat_several_chunks(in_transaction):
    s = in_transaction()
    out = s.replies(b"BDAT 5\r\nabc\r\nBDAT 3\r\nxyzBDAT 0 LAST\r\n")
    assert out == ["250 2.0.0 5 octets received", "250 2.0.0 3 octets received", "250 2.0.0 OK"]
    assert s.body == b"abc\r\nxyz"
    assert len(s.of_type(DataStart)) == 1


def test_bdat_zero_last(in_transaction):
    s = in_transaction()
    assert s.codes(b"BDAT 0 LAST\r\n") == ["250 2.0.0"]
    assert s.body_end == BodyEnd(None, None, 0)


def test_bdat_crlf_split_between_chunks_is_not_bare(in_transaction):
    s = in_transaction()
    s.send(b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd")
    assert s.body == b"ab\r\ncd" and s.body_end.problem is None
    s = in_transaction()
    s.send(b"BDAT 3\r\nab\rBDAT 3 last\r\nxcd")
    assert s.body_end.problem == "bare-newline"


def test_bdat_trailing_bare_cr(in_transaction):
    s = in_transaction(bare_newlines="normalize")
    s.send(b"BDAT 3 LAST\r\nab\r")
    assert s.body == b"ab\r\n" and s.body_end.problem is None


@pytest.mark.parametrize(
    "arg", [b"", b"x", b"-1", b"5 FIRST", b"5 LAST x", b"1" * 21, b" 5", b"5  LAST"]
)
def test_malformed_bdat_closes_the_connection(in_transaction, arg):
    # The octets after a BDAT we cannot parse cannot be located: never read them as commands.
    s = in_transaction()
    out = s.codes(b"BDAT " + arg + b"\r\nMAIL FROM:<evil@x.example>\r\n")
    assert out == ["501 5.5.4"]
    assert s.conn.closed


def test_bdat_without_transaction_is_consumed(ready):
    s = ready()
    out = s.codes(b"BDAT 12 LAST\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    assert out == ["503 5.5.1", "250 2.0.0"]      # the two NOOPs inside the chunk are content


def test_bdat_without_recipients_is_consumed(ready):
    s = ready()
    out = s.codes(b"MAIL FROM:<a@b.example>\r\nBDAT 6\r\nRSET\r\nBDAT 0 LAST\r\nRSET\r\n")
    assert out == ["250 2.1.0", "554 5.5.1", "503 5.5.1", "250 2.0.0"]


def test_bdat_refused_by_policy_discards_its_chunks(in_transaction):
    s = in_transaction(lambda conn, e: conn.reject(Reply(452, "4.3.1", "Disk full"))
                       if isinstance(e, DataStart) else conn.accept())
    out = s.codes(b"BDAT 6\r\nNOOP\r\nBDAT 6 LAST\r\nNOOP\r\nRSET\r\n")
    assert out == ["452 4.3.1", "503 5.5.1", "250 2.0.0"]
    assert s.body == b""


def test_data_and_bdat_do_not_mix(in_transaction):
    s = in_transaction()
    assert s.codes(b"BDAT 2\r\nabDATA\r\nRCPT TO:<x@y.example>\r\n") == [
        "250 2.0.0", "503 5.5.1", "503 5.5.1",
    ]
    assert s.codes(b"RSET\r\n") == ["250 2.0.0"]
    assert isinstance(s.events[-1], Reset)


def test_bdat_not_offered(ready, session):
    s = ready(chunking=False)
    s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")
    assert s.codes(b"BDAT 4 LAST\r\nNOOPNOOP\r\n") == ["503 5.5.1", "250 2.0.0"]
    helo = session()
    helo.send(b"HELO x.example\r\n")
    assert helo.codes(b"BDAT 4\r\nNOOP") == ["503 5.5.1"]


def test_bdat_too_big_is_consumed_and_refused_at_the_end(in_transaction):
    s = in_transaction(max_message_size=10)
    out = s.codes(b"BDAT 8\r\n12345678BDAT 8 LAST\r\n12345678NOOP\r\n")
    assert out == ["250 2.0.0", "250 2.0.0", "250 2.0.0"]
    assert s.body_end.problem == "too-big" and s.body_end.size == 16
    assert s.body == b"12345678"


def test_binarymime(in_transaction):
    s = in_transaction(mail_params=b" BODY=BINARYMIME", binarymime=True)
    content = b"\x00\x01\n\r\xff" * 10
    assert s.codes(b"DATA\r\n") == ["503 5.5.1"]        # BINARYMIME needs BDAT (RFC 3030 §3)
    s.send(b"BDAT %d LAST\r\n" % len(content) + content)
    assert s.body == content and s.body_end.problem is None


def test_binarymime_is_opt_in(in_transaction):
    s = in_transaction(mail_params=b" BODY=BINARYMIME")
    assert s.conn.transaction is None
    assert s.of_type(ClientError)[0].reply.code == 555


# --- readers directly, and properties ------------------------------------------------------------

def read_all(pieces: list[bytes], normalize: bool = False) -> tuple[bytes, BodyScanner, bytes]:
    scanner = BodyScanner(max_size=10**9, max_line=10**6, normalize=normalize)
    reader = DataReader(scanner)
    buffer = bytearray()
    pos = 0
    out = []
    for index, piece in enumerate(pieces):
        buffer += piece
        content, pos, done = reader.feed(buffer, pos)
        out.append(content)
        if done:
            return b"".join(out), scanner, bytes(buffer[pos:]) + b"".join(pieces[index + 1:])
    raise AssertionError("no end of data")


bodies = st.lists(
    st.one_of(
        st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.sampled_from([b".", b"..", b".x", b"", b"\x00", b". ", b"...."]),
    ),
    max_size=15,
).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@settings(max_examples=200, deadline=None)
@given(body=bodies, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_data_reader_output_does_not_depend_on_chunking(body, cuts):
    wire = dot_stuff(body) + b".\r\nNEXT"
    points = sorted({c % (len(wire) + 1) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    content, scanner, rest = read_all(pieces)
    assert content == body
    assert rest == b"NEXT"
    assert scanner.size == len(body)
    assert scanner.problem == ("nul" if b"\x00" in body else None)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=8),
       normalize=st.booleans())
def test_data_reader_ends_exactly_at_the_first_terminator(raw, cuts, normalize):
    wire = raw + b"\r\n.\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    content, scanner, rest = read_all(pieces, normalize)
    # Oracle: the end is the first CRLF.CRLF, counting the DATA line's CRLF before it.
    first = (b"\r\n" + wire).find(b"\r\n.\r\n")
    assert rest == wire[first + 3:]
    bare = b"\r" in content.replace(b"\r\n", b"") or b"\n" in content.replace(b"\r\n", b"")
    if normalize:
        assert not bare and scanner.problem != "bare-newline"
    else:
        assert ("bare-newline" in scanner.problems) == bare


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=500), sizes=st.lists(st.integers(0, 120), max_size=6),
       cuts=st.lists(st.integers(0, 700), max_size=6))
def test_bdat_body_does_not_depend_on_chunking(in_transaction, body, sizes, cuts):
    # Split the body into BDAT chunks of the given sizes, then the wire into reads.
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(body[pos:pos + size])
        pos += size
    chunks.append(body[pos:])
    wire = b"".join(b"BDAT %d\r\n" % len(c) + c for c in chunks[:-1])
    wire += b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1] + b"NOOP\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts})
    reads = [b - a for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    s = in_transaction(bare_newlines="normalize")
    s.send(wire, chunks=reads)
    normalized = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert s.body == normalized
    assert len(s.of_type(BodyEnd)) == 1
    assert s.output.endswith(b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n")


def test_reader_handles_large_bodies_quickly():
    import time

    body = (b"x" * 76 + b"\r\n") * 130_000           # ~10 MB
    wire = dot_stuff(body) + b".\r\n"
    start = time.perf_counter()
    content, _, _ = read_all([wire[i:i + 65536] for i in range(0, len(wire), 65536)])
    assert content == body
    assert time.perf_counter() - start < 2.0
