"""The sans-IO POP3 core, command by command: bytes in, bytes out (RFC 1939, RFC 2449,
RFC 2595, RFC 5034, RFC 3206)."""

from __future__ import annotations

import pytest

from mailkeep.pop3 import (
    MAX_SASL_LINE,
    Auth,
    AuthResponse,
    ClientError,
    ConnectionClosed,
    Dele,
    ListedMessage,
    MessageStream,
    Quit,
    Reply,
    ServerConnection,
    SessionConfig,
    State,
    UsageError,
)

from .driver import CONTENTS, HOST, PASSWORD, USER, Session, b64, lines, logged_in, secured

# -- greeting, CAPA, state rules -----------------------------------------------------------------


def test_greeting_names_host_and_server():
    assert bytes(Session().output) == b"+OK pop.example.org Mailkeep POP3 ready\r\n"


def test_capa_before_tls_offers_stls_and_no_plaintext_login():
    s = Session(stls_available=True)
    out = s.send("CAPA\r\n")
    assert lines(out) == [
        b"+OK Capability list follows", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING",
        b"AUTH-RESP-CODE", b"SASL SCRAM-SHA-256 X-CHALLENGE", b"STLS", b"EXPIRE NEVER",
        b"IMPLEMENTATION Mailkeep", b"."]


def test_capa_after_stls_offers_user_and_plain_not_stls():
    s = Session(stls_available=True,
                tls_config=SessionConfig(HOST, plaintext_allowed=True,
                                         sasl_mechanisms=("SCRAM-SHA-256-PLUS", "PLAIN"),
                                         login_delay=300))
    assert s.send("STLS\r\n") == b"+OK Begin TLS negotiation\r\n"
    out = s.send("CAPA\r\n")
    assert b"USER\r\n" in out and b"SASL SCRAM-SHA-256-PLUS PLAIN\r\n" in out
    assert b"STLS" not in out and b"LOGIN-DELAY 300\r\n" in out
    assert s.conn.config.tls_active


def test_capa_in_transaction_drops_login_capabilities():
    s = logged_in(login_delay=900)
    out = s.send("CAPA\r\n")
    assert b"USER" not in out and b"SASL" not in out
    assert b"\r\nLOGIN-DELAY 900\r\nEXPIRE NEVER\r\nIMPLEMENTATION Mailkeep\r\n.\r\n" in out


def test_commands_are_case_insensitive():
    s = secured()
    out = s.send(f"user {USER}\r\npAsS {PASSWORD.decode()}\r\nsTaT\r\n")
    assert lines(out)[-1] == b"+OK 3 " + str(sum(map(len, CONTENTS.values()))).encode()


def test_transaction_commands_refused_before_login():
    s = secured()
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "UIDL", "TOP 1 1"):
        assert s.send(command + "\r\n") == b"-ERR Command not valid in this state\r\n"
    assert s.conn.state is State.AUTHORIZATION


def test_login_commands_refused_after_login():
    s = logged_in()
    for command in (f"USER {USER}", "PASS x", "AUTH PLAIN", "STLS"):
        assert s.send(command + "\r\n") == b"-ERR Command not valid in this state\r\n"


def test_unknown_command_and_apop():
    s = secured()
    assert s.send("XYZZY\r\n") == b"-ERR Unknown command\r\n"
    assert s.send("LAST\r\n") == b"-ERR Unknown command\r\n"
    assert s.send("APOP me 1234\r\n") == b"-ERR APOP is not supported\r\n"
    assert s.conn.error_count == 3


def test_http_request_closes_at_once():
    s = Session()
    out = s.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out == b"-ERR This is a POP3 server\r\n"
    assert s.conn.closed


# -- USER / PASS -------------------------------------------------------------------------------------


def test_user_refused_without_tls_before_password_is_sent():
    s = Session(stls_available=True)
    out = s.send(f"USER {USER}\r\nPASS {PASSWORD.decode()}\r\n")
    assert lines(out) == [
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections, "
        b"use STLS first",
        b"-ERR Send USER first"]
    assert not any(type(e).__name__ == "Pass" for e in s.events)


def test_user_pass_success_enters_transaction():
    s = secured()
    out = s.login()
    assert lines(out) == [b"+OK Send the password with PASS", b"+OK Logged in"]
    assert s.conn.state is State.TRANSACTION and s.conn.authenticated


def test_password_is_the_rest_of_the_line_spaces_included():
    s = secured()
    s.send(f"USER {USER}\r\nPASS  with two  spaces \r\n")
    password = [e for e in s.events if type(e).__name__ == "Pass"][0].password
    assert password == b" with two  spaces "


def test_wrong_password_stays_in_authorization_and_may_retry():
    s = secured()
    out = s.send(f"USER {USER}\r\nPASS wrong\r\n")
    assert lines(out)[-1] == b"-ERR [AUTH] Authentication failed"
    assert s.conn.state is State.AUTHORIZATION
    assert s.send("PASS secret\r\n") == b"-ERR Send USER first\r\n"   # USER is forgotten
    assert s.login().endswith(b"+OK Logged in\r\n")


def test_user_needs_a_name():
    s = secured()
    assert s.send("USER\r\n") == b"-ERR Syntax: USER name\r\n"
    assert s.send("USER \x01x\r\n") == b"-ERR Syntax: USER name\r\n"
    assert s.send(b"USER \xff\r\n") == b"-ERR Syntax: USER name\r\n"


# -- STAT, LIST, UIDL, DELE, RSET, NOOP ------------------------------------------------------------


def test_stat_list_uidl():
    s = logged_in()
    sizes = [len(c) for c in CONTENTS.values()]
    out = s.send("STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 3\r\nNOOP\r\n")
    assert lines(out) == [
        f"+OK 3 {sum(sizes)}".encode(),
        f"+OK 3 messages ({sum(sizes)} octets)".encode(),
        f"1 {sizes[0]}".encode(), f"2 {sizes[1]}".encode(), f"3 {sizes[2]}".encode(), b".",
        f"+OK 2 {sizes[1]}".encode(),
        b"+OK Unique-ID listing follows", b"1 77.11", b"2 77.12", b"3 77.15", b".",
        b"+OK 3 77.15",
        b"+OK"]


def test_dele_hides_message_and_rset_restores_it():
    s = logged_in()
    sizes = [len(c) for c in CONTENTS.values()]
    assert s.send("DELE 2\r\n") == b"+OK Message 2 deleted\r\n"
    out = s.send("STAT\r\nLIST\r\nUIDL\r\nLIST 2\r\nRETR 2\r\nDELE 2\r\nTOP 2 0\r\nUIDL 2\r\n")
    assert lines(out) == [
        f"+OK 2 {sizes[0] + sizes[2]}".encode(),
        f"+OK 2 messages ({sizes[0] + sizes[2]} octets)".encode(),
        f"1 {sizes[0]}".encode(), f"3 {sizes[2]}".encode(), b".",
        b"+OK Unique-ID listing follows", b"1 77.11", b"3 77.15", b".",
        *[b"-ERR Message 2 already deleted"] * 5]
    out = s.send("RSET\r\nSTAT\r\n")
    assert lines(out) == [f"+OK Maildrop has 3 messages ({sum(sizes)} octets)".encode(),
                          f"+OK 3 {sum(sizes)}".encode()]


@pytest.mark.parametrize("arg", ["0", "4", "99999999999999999999", "-1", "+1", "1x", "abc"])
def test_bad_message_numbers(arg):
    s = logged_in()
    out = s.send(f"RETR {arg}\r\nLIST {arg}\r\nDELE {arg}\r\n")
    expected = b"-ERR No such message" if arg.isdigit() else b"-ERR Invalid message number"
    assert lines(out) == [expected] * 3
    assert not s.conn.deleted


def test_argument_counts_are_checked():
    s = logged_in()
    out = s.send("STAT 1\r\nLIST 1 2\r\nRETR\r\nTOP 1\r\nTOP 1 x\r\nDELE\r\nNOOP x\r\n")
    assert lines(out) == [b"-ERR Syntax: STAT", b"-ERR Syntax: LIST [message]",
                          b"-ERR Syntax: RETR message", b"-ERR Syntax: TOP message lines",
                          b"-ERR Syntax: TOP message lines", b"-ERR Syntax: DELE message",
                          b"-ERR Syntax: NOOP"]


# -- RETR and TOP --------------------------------------------------------------------------------


def test_retr_is_dot_stuffed_and_terminated():
    s = logged_in()
    out = s.send("RETR 2\r\n")
    size = len(CONTENTS[12])
    assert out == (f"+OK {size} octets\r\n".encode()
                   + b"Subject: two\r\nX-A: b\r\n\r\n..leading dot\r\nline 2\r\n"
                   + b"...two dots\r\nlast\r\n.\r\n")


def test_retr_of_message_without_final_newline_adds_one():
    s = logged_in()
    out = s.send("RETR 3\r\n")
    assert out.endswith(b"\r\n\r\nno final newline\r\n.\r\n")


def test_top_sends_header_blank_line_and_n_body_lines():
    s = logged_in()
    assert s.send("TOP 2 0\r\n") == (b"+OK Top of message follows\r\n"
                                     b"Subject: two\r\nX-A: b\r\n\r\n.\r\n")
    assert s.send("TOP 2 2\r\n") == (b"+OK Top of message follows\r\n"
                                     b"Subject: two\r\nX-A: b\r\n\r\n..leading dot\r\n"
                                     b"line 2\r\n.\r\n")
    whole = s.send("TOP 2 999999999999999\r\n")
    assert whole.endswith(b"...two dots\r\nlast\r\n.\r\n")


def test_top_of_message_without_body_separator_is_the_whole_message():
    s = logged_in(contents={1: b"Subject: x\r\nX: y\r\n"})
    assert s.send("TOP 1 0\r\n").endswith(b"\r\nSubject: x\r\nX: y\r\n.\r\n")


def test_quit_reports_deletions_and_retrieved_messages():
    s = logged_in()
    s.send("RETR 1\r\nRETR 2\r\nTOP 3 1\r\nDELE 2\r\n")
    out = s.send("QUIT\r\n")
    quit_event = s.events[-2]
    assert isinstance(quit_event, Quit)
    assert [m.uid for m in quit_event.deleted] == [12]
    assert [m.uid for m in quit_event.seen] == [11]   # RETR, not deleted; TOP is not RETR
    assert out == b"+OK Logging out, 1 messages deleted\r\n"
    assert isinstance(s.events[-1], ConnectionClosed)


def test_quit_failure_is_reported_and_closes():
    s = logged_in(quit_fails=True)
    s.send("DELE 1\r\n")
    assert s.send("QUIT\r\n") == b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
    assert s.conn.closed


def test_quit_before_login_has_nothing_to_commit():
    s = secured()
    assert s.send("QUIT\r\nSTAT\r\n") == b"+OK Logging out\r\n"
    assert s.events[0] == Quit()
    assert s.conn.closed


def test_eof_without_quit_commits_nothing():
    s = logged_in()
    s.send("DELE 1\r\nRETR 2\r\nQUI")
    assert s.eof() == b""
    assert isinstance(s.events[-1], ConnectionClosed)
    assert not any(isinstance(e, Quit) for e in s.events)


def test_pipelined_commands_are_answered_in_order():
    s = secured()
    out = s.send(f"USER {USER}\r\nPASS {PASSWORD.decode()}\r\nDELE 1\r\nSTAT\r\nLIST 1\r\n"
                 "RSET\r\nLIST 1\r\nQUIT\r\n")
    assert [line.split(b" ")[0] for line in lines(out)] == [
        b"+OK", b"+OK", b"+OK", b"+OK", b"-ERR", b"+OK", b"+OK", b"+OK"]
    assert isinstance(s.events[-2], Quit) and s.events[-2].deleted == ()


# -- AUTH (RFC 5034) -----------------------------------------------------------------------------


def test_auth_plain_with_initial_response():
    s = secured()
    plain = b64(b"\0" + USER.encode() + b"\0" + PASSWORD)
    out = s.send(f"AUTH PLAIN {plain}\r\n")
    assert out == b"+OK Logged in\r\n"


def test_auth_plain_empty_initial_response_and_challenge_exchange():
    s = secured()
    assert s.send("AUTH PLAIN =\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
    assert s.events[-2] == Auth("PLAIN", b"")
    assert s.send("AUTH X-CHALLENGE\r\n") == f"+ {b64(b'ping')}\r\n".encode()
    assert s.conn.state is State.AUTH
    assert s.send(f"{b64(b'pong')}\r\n") == b"+OK Logged in\r\n"


def test_auth_empty_challenge_is_plus_space():
    s = secured()
    assert s.send("AUTH SCRAM-SHA-256\r\n") == b"+ \r\n"
    assert s.send("\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
    assert s.events[-2] == AuthResponse(b"")


def test_auth_cancel_with_star():
    s = secured()
    s.send("AUTH X-CHALLENGE\r\n")
    assert s.send("*\r\n") == b"-ERR [AUTH] Authentication cancelled\r\n"
    assert s.events[-1] == AuthResponse(b"", cancelled=True)
    assert s.conn.state is State.AUTHORIZATION


def test_auth_plain_refused_before_tls():
    s = Session(stls_available=True)
    out = s.send("AUTH PLAIN AG1lAHNlY3JldA==\r\n")
    assert out.startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    assert not any(isinstance(e, Auth) for e in s.events)


def test_auth_unknown_mechanism_and_bad_base64():
    s = secured()
    assert s.send("AUTH GSSAPI\r\n") == b"-ERR Unsupported authentication mechanism\r\n"
    assert s.send("AUTH PLAIN not*base64\r\n") == b"-ERR [AUTH] Invalid base64 data\r\n"
    assert s.send("AUTH PLAIN AG1lAHNlY3JldA\r\n") == b"-ERR [AUTH] Invalid base64 data\r\n"
    s.send("AUTH X-CHALLENGE\r\n")
    assert s.send("%%%%\r\n") == b"-ERR [AUTH] Invalid base64 data\r\n"
    assert s.conn.state is State.AUTHORIZATION
    assert s.conn.error_count == 4


def test_auth_without_argument_lists_mechanisms():
    s = Session()
    assert s.send("AUTH\r\n") == b"+OK Supported mechanisms follow\r\nSCRAM-SHA-256\r\nX-CHALLENGE\r\n.\r\n"


def test_sasl_response_lines_may_be_longer_than_commands():
    s = secured(max_line=255)
    s.send("AUTH X-CHALLENGE\r\n")
    long = b64(b"x" * 3000).encode()
    assert len(long) > 255
    assert s.send(long + b"\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
    assert s.events[-2] == AuthResponse(b"x" * 3000)
    s.send("AUTH X-CHALLENGE\r\n")
    assert s.send(b"A" * (MAX_SASL_LINE + 10)) == b"-ERR Line too long\r\n"
    assert s.conn.state is State.AUTHORIZATION
    assert s.send(b"AAAA\r\nNOOP\r\n") == b"-ERR Command not valid in this state\r\n"


# -- STLS (RFC 2595) ------------------------------------------------------------------------------


def test_stls_discards_pipelined_plaintext():
    s = Session(stls_available=True)
    s.stop_tls_handshake = True
    out = s.send(f"STLS\r\nUSER {USER}\r\nPASS {PASSWORD.decode()}\r\n")
    assert out == b"+OK Begin TLS negotiation\r\n"
    assert s.conn.discarded_after_stls == len(f"USER {USER}\r\nPASS secret\r\n")
    assert s.conn.state is State.TLS_HANDSHAKE
    # Bytes that arrive now came through TLS: kept until the handshake is reported.
    assert s.send("CAPA\r\n") == b""
    s.conn.tls_started(SessionConfig(HOST, plaintext_allowed=True))
    s.pump()
    assert b"+OK Capability list follows\r\n" in s.output and b"USER\r\n" in s.output


def test_stls_refused_when_unavailable_or_already_tls():
    assert Session().send("STLS\r\n") == b"-ERR STLS is not available\r\n"
    s = secured(stls_available=True)
    assert s.send("STLS\r\n") == b"-ERR Command not permitted when TLS active\r\n"
    assert logged_in().send("STLS\r\n") == b"-ERR Command not valid in this state\r\n"


def test_stls_forgets_a_pending_user():
    s = Session(stls_available=True, tls_config=SessionConfig(HOST, plaintext_allowed=True))
    s.send("STLS\r\n")
    assert s.send("PASS secret\r\n") == b"-ERR Send USER first\r\n"


# -- limits and bad input ------------------------------------------------------------------------


def test_long_line_refused_and_discarded_without_buffering():
    s = secured()
    assert s.send(b"NOOP " + b"x" * 600) == b"-ERR Line too long\r\n"
    assert s.send(b"y" * 100_000) == b""
    assert len(s.conn._buffer) == 0
    assert s.send(b"zzz\r\nQUIT\r\n") == b"+OK Logging out\r\n"


def test_line_of_exactly_max_line_is_accepted():
    s = secured(max_line=300)
    name = "u" * (300 - len("USER \r\n"))
    assert s.send(f"USER {name}\r\n") == b"+OK Send the password with PASS\r\n"
    assert s.send(f"USER {name}x\r\n") == b"-ERR Line too long\r\n"


def test_bare_lf_ends_a_line():
    s = secured()
    out = s.send(f"USER {USER}\nPASS {PASSWORD.decode()}\nSTAT\n")
    assert lines(out)[1] == b"+OK Logged in"


def test_too_many_errors_close_the_connection():
    s = Session(max_errors=3)
    out = s.send("A\r\nB\r\nC\r\nCAPA\r\n")
    assert lines(out) == [b"-ERR Unknown command"] * 3 + [
        b"-ERR Too many errors, closing connection"]
    assert s.conn.closed
    assert [e.count for e in s.events if isinstance(e, ClientError)] == [1, 2, 3]


def test_failed_logins_count_as_errors():
    s = secured(max_errors=2)
    out = s.send(f"USER {USER}\r\nPASS a\r\nUSER {USER}\r\nPASS b\r\nUSER x\r\n")
    assert lines(out)[-1] == b"-ERR Too many errors, closing connection"
    assert s.conn.closed


def test_partial_line_at_eof_is_ignored():
    s = secured()
    s.send("NOOP")
    s.eof()
    assert isinstance(s.events[-1], ConnectionClosed)
    assert bytes(s.output).count(b"\r\n") == 1  # only the greeting


# -- API contract ----------------------------------------------------------------------------------


def test_next_event_while_decision_pending_is_a_usage_error():
    conn = ServerConnection(SessionConfig(HOST, plaintext_allowed=True))
    conn.greet()
    conn.receive_data(b"USER a\r\nPASS b\r\nNOOP\r\n")
    conn.next_event()
    conn.next_event()
    with pytest.raises(UsageError):
        conn.next_event()
    with pytest.raises(UsageError):
        conn.ok()
    with pytest.raises(UsageError):
        conn.begin_message()


def test_login_validates_unique_ids():
    conn = ServerConnection(SessionConfig(HOST, plaintext_allowed=True))
    conn.greet()
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    conn.next_event()
    conn.next_event()
    with pytest.raises(ValueError):
        conn.login([ListedMessage(1, 10, "has space")])
    conn.login([ListedMessage(1, 10, "1.1")])
    assert conn.state is State.TRANSACTION


def test_dele_event_names_the_message():
    s = logged_in()
    s.send("DELE 3\r\n")
    assert s.events[-1] == Dele(3, ListedMessage(15, len(CONTENTS[15]), "77.15"))


def test_config_limits_are_validated():
    with pytest.raises(ValueError):
        SessionConfig(HOST, max_line=100)
    with pytest.raises(ValueError):
        SessionConfig(HOST, sasl_mechanisms=("bad mech",))
    with pytest.raises(ValueError):
        SessionConfig("two words")


def test_reply_serialisation():
    assert Reply(True, "fine").to_bytes() == b"+OK fine\r\n"
    assert Reply(False, "no\r\nmore", "SYS/TEMP").to_bytes() == b"-ERR [SYS/TEMP] no  more\r\n"
    assert Reply(False, "x", "IN-USE").to_bytes() == b"-ERR [IN-USE] x\r\n"
    assert Reply(True).to_bytes() == b"+OK\r\n"
    assert len(Reply(False, "é" * 600).to_bytes()) <= 512
    with pytest.raises(ValueError):
        Reply(False, "x", "BAD CODE")


def test_message_stream_alone():
    stream = MessageStream(1)
    out = stream.feed(b"A: b\r\n\r\nline1\r\n.line2\r\n") + stream.feed(b"more\r\n")
    assert stream.done
    assert out + stream.finish() == b"A: b\r\n\r\nline1\r\n.\r\n"
    empty = MessageStream()
    assert empty.finish() == b".\r\n"
