"""Command handling of the SMTP/LMTP core: every command, reply path and limit."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.smtp import (
    Address,
    ClientError,
    ConnectionClosed,
    DataStart,
    Hello,
    MailFrom,
    Quit,
    RcptTo,
    Reply,
    Reset,
    ServerConnection,
    SessionConfig,
    State,
    UsageError,
)
from mailkeep.smtp.server import NEED_DATA, command_line_limit

HOST = "mx.example.org"


def test_greeting(session):
    assert session().output == f"220 {HOST} ESMTP Mailkeep\r\n".encode()
    assert session(lmtp=True).output == f"220 {HOST} LMTP Mailkeep\r\n".encode()
    assert session(greeting_text="Hello").output == f"220 {HOST} Hello\r\n".encode()


def test_nothing_is_processed_before_greeting():
    conn = ServerConnection(SessionConfig(HOST))
    conn.receive_data(b"EHLO early.example\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.early_talker
    conn.greet()
    assert isinstance(conn.next_event(), Hello)


def test_early_talker_input_is_bounded():
    conn = ServerConnection(SessionConfig(HOST))
    for _ in range(100):
        conn.receive_data(b"x" * 10_000)
    assert conn.early_talker
    assert len(conn._buffer) <= 64 * 1024


def test_refused_greeting_421_closes(session):
    s = session(greet=False)
    s.conn.refuse_greeting(Reply(421, "4.3.2", "Busy"))
    s.pump()
    assert s.output == b"421 4.3.2 Busy\r\n"
    assert s.conn.closed and isinstance(s.events[-1], ConnectionClosed)


def test_refused_greeting_554_waits_for_quit(session):
    # RFC 5321 §3.1: after a 554 greeting the server waits for QUIT and answers 503.
    s = session(greet=False)
    s.conn.refuse_greeting(Reply(554, "5.7.1", "No service for you"))
    assert s.conn.state is State.REFUSED
    assert s.codes(b"EHLO x.example\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n") == [
        "554 5.7.1", "503 5.5.1", "503 5.5.1", "221 2.0.0",
    ]
    assert s.conn.closed


def test_ehlo_lists_extensions(ready):
    s = ready(starttls_available=True, auth_mechanisms=("PLAIN", "LOGIN"), max_message_size=1000)
    lines = s.output.decode().split("\r\n")
    assert lines[1:-1] == [
        f"250-{HOST}", "250-PIPELINING", "250-SIZE 1000", "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES", "250-CHUNKING", "250-SMTPUTF8", "250-DSN", "250-STARTTLS",
        "250 AUTH PLAIN LOGIN",
    ]


def test_ehlo_respects_configuration(ready):
    s = ready(chunking=False, smtputf8=False, dsn=False, eightbitmime=False, pipelining=False,
              tls_active=True, starttls_available=True)
    assert s.output.decode().split("\r\n")[1:-1] == [
        f"250-{HOST}", "250-SIZE 104857600", "250 ENHANCEDSTATUSCODES",
    ]


def test_helo_has_no_extensions(session):
    s = session()
    assert s.replies(b"HELO client.example\r\n") == [f"250 {HOST}"]
    assert s.events[-1] == Hello("HELO", "client.example")
    # After HELO no extension was announced, so parameters are refused (RFC 5321 §4.1.1.1).
    assert s.codes(b"MAIL FROM:<a@b.example> SIZE=10\r\n") == ["555 5.5.4"]
    assert s.codes(b"MAIL FROM:<a@b.example>\r\n") == ["250 2.1.0"]


def test_hello_needs_an_argument(session):
    s = session()
    assert s.codes(b"EHLO\r\nEHLO \r\nHELO\r\n") == ["501 5.5.4"] * 3


def test_lhlo_only_in_lmtp_and_helo_ehlo_only_in_smtp(session):
    assert session().codes(b"LHLO x.example\r\n") == ["500 5.5.1"]
    lmtp = session(lmtp=True)
    assert lmtp.codes(b"EHLO x.example\r\nHELO x.example\r\n") == ["500 5.5.1", "500 5.5.1"]
    lines = lmtp.replies(b"LHLO x.example\r\n")
    assert lines[0] == f"250-{HOST}" and "250-PIPELINING" in lines


def test_rejected_hello_leaves_the_client_unidentified(session):
    s = session(policy=lambda conn, e: conn.reject(Reply(550, "5.7.1", "Go away"))
                if isinstance(e, Hello) else conn.accept())
    assert s.codes(b"EHLO bad.example\r\nMAIL FROM:<a@b.example>\r\n") == ["550 5.7.1", "503 5.5.1"]


def test_mail_transaction(ready):
    s = ready()
    out = s.codes(
        b"MAIL FROM:<alice@example.net> SIZE=100\r\n"
        b"RCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org> NOTIFY=NEVER\r\n"
    )
    assert out == ["250 2.1.0", "250 2.1.5", "250 2.1.5"]
    mail, = s.of_type(MailFrom)
    assert mail.sender == Address("alice", "example.net") and mail.params.size == 100
    txn = s.conn.transaction
    assert txn.sender == mail.sender
    assert txn.recipients == (Address("bob", "example.org"), Address("carol", "example.org"))
    assert txn.recipient_params[1].notify == ("NEVER",)
    assert s.conn.state is State.TRANSACTION


def test_mail_accepts_a_space_after_the_colon_and_null_sender(ready):
    s = ready()
    assert s.codes(b"mail from: <>\r\n") == ["250 2.1.0"]
    assert s.of_type(MailFrom)[0].sender is None


def test_sequence_errors(session, ready):
    s = session()
    assert s.codes(b"MAIL FROM:<a@b.example>\r\n") == ["503 5.5.1"]       # before EHLO
    s = ready()
    assert s.codes(b"RCPT TO:<a@b.example>\r\n") == ["503 5.5.1"]         # before MAIL
    assert s.codes(b"DATA\r\n") == ["503 5.5.1"]                          # before MAIL
    assert s.codes(b"MAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n") == [
        "250 2.1.0", "503 5.5.1",                                         # nested MAIL
    ]
    assert s.codes(b"DATA\r\n") == ["554 5.5.1"]                          # no recipients
    assert not s.of_type(DataStart)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL TO:<a@b.example>", "501 5.5.4"),
        (b"MAIL FROM:a@b.example", "501 5.1.7"),
        (b"MAIL FROM:<a@@b.example>", "501 5.1.7"),
        (b"MAIL FROM:<a@b.example> XFOO=1", "555 5.5.4"),
        (b"MAIL FROM:<j\xc3\xb6rg@b.example>", "553 5.6.7"),
        (b"MAIL FROM:<a@b.example> SIZE=999999999999", "552 5.3.4"),
    ],
)
def test_mail_errors(ready, line, expected):
    assert ready().codes(line + b"\r\n") == [expected]


def test_utf8_sender_with_smtputf8(ready):
    s = ready()
    assert s.codes("MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode()) == ["250 2.1.0"]
    assert s.codes("RCPT TO:<zoë@example.org>\r\n".encode()) == ["250 2.1.5"]
    assert s.of_type(RcptTo)[0].recipient.utf8


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"RCPT FROM:<a@b.example>", "501 5.5.4"),
        (b"RCPT TO:<>", "501 5.1.3"),
        (b"RCPT TO:<a@b.example> NOTIFY=ALWAYS", "555 5.5.4"),
        (b"RCPT TO:<j\xc3\xb6rg@b.example>", "553 5.6.7"),
        (b"RCPT TO:<" + b"a" * 65 + b"@b.example>", "501 5.5.4"),
    ],
)
def test_rcpt_errors(ready, line, expected):
    s = ready()
    s.send(b"MAIL FROM:<a@b.example>\r\n")
    assert s.codes(line + b"\r\n") == [expected]


def test_postmaster_recipient(in_transaction):
    s = in_transaction()
    assert s.codes(b"RCPT TO:<Postmaster>\r\n") == ["250 2.1.5"]
    assert s.of_type(RcptTo)[-1].recipient == Address("Postmaster", HOST)


def test_too_many_recipients(ready):
    s = ready(max_recipients=2)
    out = s.codes(b"MAIL FROM:<a@b.example>\r\n" + b"RCPT TO:<r@b.example>\r\n" * 4)
    assert out == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3", "452 4.5.3"]
    assert s.conn.error_count == 0        # a limit, not a client mistake


def test_policy_rejections_do_not_count_as_errors_unless_asked(ready):
    def policy(conn, event):
        if isinstance(event, RcptTo):
            conn.reject(Reply(550, "5.1.1", "No such user"),
                        count_error=event.recipient.local == "counted")
        else:
            conn.accept()

    s = ready(policy)
    out = s.codes(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@b.example>\r\nRCPT TO:<counted@b.example>\r\n")
    assert out == ["250 2.1.0", "550 5.1.1", "550 5.1.1"]
    assert s.conn.error_count == 1
    assert s.conn.transaction.recipients == ()


def test_simple_commands(ready):
    s = ready(hard_error_limit=10)
    assert s.codes(b"NOOP\r\nNOOP anything\r\nVRFY bob\r\nEXPN list\r\nHELP\r\n") == [
        "250 2.0.0", "250 2.0.0", "252 2.5.0", "502 5.5.1", "214 2.0.0",
    ]
    assert s.codes(b"VRFY\r\nXYZZY\r\nRSET now\r\nDATA please\r\n") == [
        "501 5.5.4", "500 5.5.1", "501 5.5.4", "501 5.5.4",
    ]


def test_rset_clears_the_transaction(in_transaction):
    s = in_transaction()
    assert s.codes(b"RSET\r\n") == ["250 2.0.0"]
    assert isinstance(s.events[-1], Reset)
    assert s.conn.transaction is None and s.conn.state is State.READY
    assert s.codes(b"RCPT TO:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n") == [
        "503 5.5.1", "250 2.1.0",
    ]


def test_ehlo_in_a_transaction_resets_it(in_transaction):
    # RFC 5321 §4.1.4: a second EHLO acts like RSET.
    s = in_transaction()
    s.send(b"EHLO again.example\r\n")
    assert [type(e) for e in s.events[-2:]] == [Reset, Hello]
    assert s.conn.transaction is None


def test_quit(ready):
    s = ready()
    assert s.send(b"QUIT\r\nNOOP\r\n") == b"221 2.0.0 Bye\r\n"
    assert [type(e) for e in s.events[-2:]] == [Quit, ConnectionClosed]
    assert s.conn.closed
    s.send(b"NOOP\r\n")
    assert s.conn.next_event() == ConnectionClosed()


def test_end_of_input_closes(ready):
    s = ready()
    s.send(b"NOOP\r\nNOO")
    s.eof()
    assert isinstance(s.events[-1], ConnectionClosed)
    assert s.output.endswith(b"250 2.0.0 OK\r\n")


def test_complete_commands_before_eof_are_still_processed(ready):
    s = ready()
    s.conn.receive_data(b"NOOP\r\nQUIT\r\n")
    s.eof()
    assert s.output.endswith(b"250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")


def test_pipelined_replies_come_in_command_order(ready):
    s = ready()
    out = s.codes(
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<>\r\n"
        b"NOOP\r\nRCPT TO:<e@f.example>\r\nVRFY x\r\nRSET\r\n"
    )
    assert out == ["250 2.1.0", "250 2.1.5", "501 5.1.3", "250 2.0.0", "250 2.1.5",
                   "252 2.5.0", "250 2.0.0"]


def test_commands_split_across_reads(ready):
    s = ready()
    data = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
    assert s.send(data, chunks=[1] * len(data)) == b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"


# --- line discipline (RFC 5321 §2.3.8, §4.5.3.1.4) ----------------------------------------------

@pytest.mark.parametrize(
    "data",
    [b"NOOP\nRSET\r\n", b"NOOP\rRSET\r\n", b"NO\nOP\r\n", b"NOOP\r\r\n", b"\nNOOP\r\n",
     b"NOOP\n\r\n"],
)
def test_bare_cr_or_lf_discards_the_whole_line(ready, data):
    s = ready()
    assert s.codes(data + b"NOOP\r\n") == ["500 5.5.2", "250 2.0.0"]
    assert not s.of_type(Reset)
    assert s.conn.error_count == 1


def test_bare_lf_is_refused_without_waiting_for_crlf(ready):
    # A client that only sends LF gets an answer at once, not after 1000 octets.
    s = ready()
    assert s.codes(b"EHLO x\n") == ["500 5.5.2"]
    assert s.codes(b"NOOP\n") == []            # still the same (discarded) line
    assert s.codes(b"\r\nNOOP\r\n") == ["250 2.0.0"]


def test_nul_and_invalid_utf8_in_commands(ready):
    s = ready()
    assert s.codes(b"NOOP\x00\r\nNOOP \xff\xfe\r\n") == ["500 5.5.2", "500 5.5.2"]


def test_line_too_long(ready):
    s = ready()
    limit = command_line_limit(s.conn.config)
    assert s.codes(b"NOOP " + b"x" * (limit - 7) + b"\r\n") == ["250 2.0.0"]
    assert s.codes(b"NOOP " + b"x" * (limit - 6) + b"\r\nNOOP\r\n") == ["500 5.5.2", "250 2.0.0"]


def test_overlong_line_is_answered_once_and_discarded_up_to_crlf(ready):
    s = ready()
    out = s.send(b"MAIL FROM:<" + b"a" * 5000, chunks=[100] * 50)
    assert out == b"500 5.5.2 Line too long\r\n"
    # The rest of that line, however long, is dropped; the next line works.
    assert s.send(b"b" * 10000 + b">\r", chunks=[999] * 11) == b""
    assert s.codes(b"\nNOOP\r\n") == ["250 2.0.0"]


def test_line_limit_grows_with_extensions():
    # RFC 1869 §4.1.2: extensions lengthen MAIL/RCPT; a full DSN RCPT must fit.
    config = SessionConfig(HOST)
    assert command_line_limit(config) > 512 + 500
    assert command_line_limit(SessionConfig(HOST, dsn=False, smtputf8=False)) < 600


def test_long_orcpt_fits(in_transaction):
    s = in_transaction()
    orcpt = b"rfc822;" + b"o" * 480 + b"@example.org"
    assert len(orcpt) < 500
    line = b"RCPT TO:<" + b"r" * 64 + b"@example.org> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=" + orcpt
    assert len(line) > 512
    assert s.codes(line + b"\r\n") == ["250 2.1.5"]


def test_http_request_is_refused_and_closed(session):
    s = session()
    assert s.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == (
        b"554 5.5.1 This is an SMTP server, not an HTTP proxy; goodbye\r\n"
    )
    assert s.conn.closed


# --- limits -----------------------------------------------------------------------------------

def test_error_limits(ready):
    s = ready(soft_error_limit=1, hard_error_limit=3)
    s.send(b"BOGUS\r\nBOGUS\r\n")
    assert [e.count for e in s.of_type(ClientError)] == [1, 2]
    assert s.send(b"BOGUS\r\nNOOP\r\n") == (
        b"500 5.5.1 Command unrecognized\r\n421 4.7.0 Too many errors, closing connection\r\n"
    )
    assert s.conn.closed and isinstance(s.events[-1], ConnectionClosed)


def test_a_delivered_message_resets_the_error_count(ready):
    s = ready(hard_error_limit=3)
    s.send(b"BOGUS\r\nBOGUS\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
           b"DATA\r\nhi\r\n.\r\n")
    assert s.conn.error_count == 0
    s.send(b"BOGUS\r\nBOGUS\r\n")
    assert not s.conn.closed


def test_too_many_commands(ready):
    s = ready(max_commands=5)
    out = s.codes(b"NOOP\r\n" * 6)
    assert out == ["250 2.0.0"] * 4 + ["421 4.7.0"]
    assert s.conn.closed


# --- API misuse -------------------------------------------------------------------------------

def test_usage_errors():
    conn = ServerConnection(SessionConfig(HOST))
    with pytest.raises(UsageError):
        conn.accept()
    conn.greet()
    with pytest.raises(UsageError):
        conn.greet()
    conn.receive_data(b"EHLO x.example\r\n")
    event = conn.next_event()
    assert isinstance(event, Hello) and conn.pending is event
    with pytest.raises(UsageError):
        conn.next_event()
    with pytest.raises(ValueError):
        conn.accept(Reply(550, "5.0.0", "no"))
    with pytest.raises(ValueError):
        conn.reject(Reply(250, "2.0.0", "yes"))
    with pytest.raises(ValueError):
        conn.accept(Reply(354, None, "wrong reply for EHLO"))
    with pytest.raises(UsageError):
        conn.lmtp_replies([])
    with pytest.raises(UsageError):
        conn.tls_started()
    conn.accept()
    assert conn.pending is None


def test_session_config_validation():
    for kwargs in [{"hostname": ""}, {"hostname": "a b"}, {"hostname": "x", "bare_newlines": "fix"},
                   {"hostname": "x", "max_command_line": 100},
                   {"hostname": "x", "max_message_size": 0},
                   {"hostname": "x", "auth_mechanisms": ("PLAIN LOGIN",)}]:
        with pytest.raises(ValueError):
            SessionConfig(**kwargs)


def test_close_from_the_server_side(ready):
    s = ready()
    s.conn.close(Reply(421, "4.4.2", "Timeout"))
    s.pump()
    assert s.output.endswith(b"421 4.4.2 Timeout\r\n") and s.conn.closed


def reject_everything(conn, event):
    conn.reject(Reply(550, "5.7.1", "No"))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.binary(max_size=1200).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r")))
def test_a_command_line_never_swallows_the_next_one(ready, line):
    # Whatever one line holds, it gets exactly one answer and the next command is intact.
    verb = line.split(b" ", 1)[0].upper()
    if verb in (b"BDAT", b"QUIT", b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS",
                b"DELETE"):
        return
    s = ready(reject_everything, hard_error_limit=100)
    lines = s.replies(line + b"\r\nNOOP\r\n")
    finals = [x for x in lines if x[3:4] == " "]
    assert len(finals) == 2, lines
    assert finals[-1] == "250 2.0.0 OK"
