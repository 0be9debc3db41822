"""STARTTLS (RFC 3207) and the AUTH command plumbing (RFC 4954)."""

import pytest

from mailkeep.smtp import (
    AuthResponse,
    AuthStart,
    Hello,
    MailFrom,
    Reply,
    StartTLS,
    State,
    UsageError,
)

# --- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_discards_pipelined_commands(ready):
    # CVE-2011-0411: commands sent in the clear after STARTTLS must never be executed.
    s = ready(starttls_available=True)
    injected = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<x@y.example>\r\n"
    out = s.send(b"STARTTLS\r\n" + injected)
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert isinstance(s.events[-1], StartTLS)
    assert s.conn.state is State.TLS_HANDSHAKE
    assert s.conn.discarded_after_starttls == len(injected)
    s.conn.tls_started()
    s.pump()
    assert not s.of_type(MailFrom)
    assert s.conn.config.tls_active


def test_plaintext_that_arrives_while_starttls_is_pending_is_discarded(session):
    def policy(conn, event):
        if isinstance(event, StartTLS):
            # The adapter is still deciding while more plaintext comes in.
            conn.receive_data(b"RSET\r\n")
        conn.accept()

    s = session(policy, starttls_available=True)
    s.send(b"EHLO x.example\r\nSTARTTLS\r\n")
    assert s.conn.discarded_after_starttls == len(b"RSET\r\n")


def test_encrypted_input_before_tls_started_is_kept(ready):
    # asyncio's start_tls can hand over the client's first TLS record (EHLO) before the
    # adapter calls tls_started(): that input belongs to the new session.
    s = ready(starttls_available=True)
    s.send(b"STARTTLS\r\n")
    s.send(b"EHLO secure.example\r\n")
    assert s.conn.state is State.TLS_HANDSHAKE and not s.of_type(Hello)[1:]
    s.conn.tls_started()
    s.pump()
    assert s.conn.hello == Hello("EHLO", "secure.example")


def test_after_tls_the_client_must_say_ehlo_again(ready):
    # RFC 3207 §4.2: all knowledge from before TLS is discarded.
    s = ready(starttls_available=True)
    s.send(b"STARTTLS\r\n")
    s.conn.tls_started()
    assert s.codes(b"MAIL FROM:<a@b.example>\r\n") == ["503 5.5.1"]
    lines = s.replies(b"EHLO client.example\r\n")
    assert "250-STARTTLS" not in lines and "250 STARTTLS" not in lines
    assert s.codes(b"STARTTLS\r\n") == ["503 5.5.1"]          # already under TLS
    assert s.conn.hello == Hello("EHLO", "client.example")


def test_tls_started_can_change_the_configuration(ready):
    s = ready(starttls_available=True)
    s.send(b"STARTTLS\r\n")
    new = s.conn.config.__class__(s.conn.config.hostname, auth_mechanisms=("PLAIN",))
    s.conn.tls_started(new)
    assert s.conn.config.tls_active and s.conn.config.auth_mechanisms == ("PLAIN",)
    assert "250 AUTH PLAIN" in s.replies(b"EHLO client.example\r\n")


def test_starttls_refusals(ready):
    assert ready().codes(b"STARTTLS\r\n") == ["454 4.7.0"]             # not offered
    s = ready(starttls_available=True)
    assert s.codes(b"STARTTLS now\r\n") == ["501 5.5.4"]             # RFC 3207 §4
    s.send(b"MAIL FROM:<a@b.example>\r\n")
    assert s.codes(b"STARTTLS\r\n") == ["503 5.5.1"]                 # in a transaction
    assert ready(starttls_available=True, tls_active=True).codes(b"STARTTLS\r\n") == ["503 5.5.1"]


def test_starttls_rejected_by_policy(ready):
    s = ready(lambda conn, e: conn.reject(Reply(454, "4.7.0", "No certificate"))
              if isinstance(e, StartTLS) else conn.accept(), starttls_available=True)
    assert s.codes(b"STARTTLS\r\nNOOP\r\n") == ["454 4.7.0", "250 2.0.0"]
    with pytest.raises(UsageError):
        s.conn.tls_started()


# --- AUTH ------------------------------------------------------------------------------------------

def sasl(script):
    """Policy answering AUTH events from a list of ("challenge", b64) / ("accept",) / ("reject",)."""
    steps = list(script)

    def policy(conn, event):
        if isinstance(event, AuthStart | AuthResponse):
            step = steps.pop(0)
            if step[0] == "challenge":
                conn.auth_challenge(step[1])
            elif step[0] == "accept":
                conn.accept()
            else:
                conn.reject(Reply(535, "5.7.8", "Authentication credentials invalid"))
        else:
            conn.accept()

    return policy


def test_auth_with_initial_response(ready):
    s = ready(sasl([("accept",)]), auth_mechanisms=("PLAIN",))
    assert s.codes(b"AUTH plain AGFsaWNlAHNlY3JldA==\r\n") == ["235 2.7.0"]
    start = s.of_type(AuthStart)[0]
    assert start.mechanism == "PLAIN" and start.initial_response == "AGFsaWNlAHNlY3JldA=="
    assert s.conn.authenticated
    assert s.codes(b"AUTH PLAIN\r\n") == ["503 5.5.1"]      # RFC 4954 §4: once per session


def test_auth_empty_initial_response(ready):
    s = ready(sasl([("reject",)]), auth_mechanisms=("PLAIN",))
    assert s.codes(b"AUTH PLAIN =\r\n") == ["535 5.7.8"]
    assert s.of_type(AuthStart)[0].initial_response == ""
    assert not s.conn.authenticated and s.conn.error_count == 0


def test_auth_challenge_and_responses(ready):
    s = ready(sasl([("challenge", "VXNlcm5hbWU6"), ("challenge", "UGFzc3dvcmQ6"), ("accept",)]),
              auth_mechanisms=("LOGIN",))
    assert s.replies(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert s.conn.state is State.AUTH
    assert s.replies(b"YWxpY2U=\r\n") == ["334 UGFzc3dvcmQ6"]
    assert s.codes(b"c2VjcmV0\r\nNOOP\r\n") == ["235 2.7.0", "250 2.0.0"]
    assert [e.line for e in s.of_type(AuthResponse)] == ["YWxpY2U=", "c2VjcmV0"]
    assert s.conn.state is State.READY


def test_auth_cancelled_by_client(ready):
    s = ready(sasl([("challenge", "")]), auth_mechanisms=("LOGIN",))
    assert s.send(b"AUTH LOGIN\r\n") == b"334 \r\n"
    assert s.codes(b"*\r\nNOOP\r\n") == ["501 5.0.0", "250 2.0.0"]
    assert not s.conn.authenticated


def test_auth_bad_base64_response(ready):
    s = ready(sasl([("challenge", "")]), auth_mechanisms=("LOGIN",))
    s.send(b"AUTH LOGIN\r\n")
    assert s.codes(b"not base64!\r\n") == ["501 5.5.2"]
    assert s.conn.state is State.READY


def test_auth_long_responses_are_allowed_up_to_12288(ready):
    # RFC 4954 §4: AUTH lines up to 12288 octets.
    s = ready(sasl([("challenge", ""), ("challenge", "")]), auth_mechanisms=("XOAUTH2",))
    s.send(b"AUTH XOAUTH2\r\n")
    assert s.replies(b"QUFB" * 3000 + b"\r\n") == ["334 "]
    assert s.codes(b"QUFB" * 3100 + b"\r\nNOOP\r\n") == ["500 5.5.6", "250 2.0.0"]


def test_long_initial_response_but_not_other_long_lines(ready):
    s = ready(sasl([("reject",)]), auth_mechanisms=("PLAIN",))
    assert s.codes(b"AUTH PLAIN " + b"QUFB" * 2000 + b"\r\n") == ["535 5.7.8"]
    assert s.codes(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n") == ["500 5.5.2", "250 2.0.0"]
    assert s.codes(b"AUTH PLAIN " + b"QUFB" * 3100 + b"\r\n") == ["500 5.5.2"]


@pytest.mark.parametrize(
    ("config", "commands", "expected"),
    [
        ({}, b"AUTH PLAIN\r\n", "503 5.5.1"),                          # not offered
        ({"auth_mechanisms": ("PLAIN",)}, b"AUTH CRAM-MD5\r\n", "504 5.5.4"),
        ({"auth_mechanisms": ("PLAIN",)}, b"AUTH\r\n", "501 5.5.4"),
        ({"auth_mechanisms": ("PLAIN",)}, b"AUTH PLAIN a b\r\n", "501 5.5.4"),
        ({"auth_mechanisms": ("PLAIN",)}, b"AUTH PLAIN abc\r\n", "501 5.5.2"),
        ({"auth_mechanisms": ("PLAIN",)}, b"MAIL FROM:<a@b.example>\r\nAUTH PLAIN\r\n", "503 5.5.1"),
    ],
)
def test_auth_refusals(ready, config, commands, expected):
    assert ready(**config).codes(commands)[-1] == expected


def test_auth_before_ehlo_is_refused(session):
    s = session(auth_mechanisms=("PLAIN",))
    assert s.codes(b"AUTH PLAIN\r\n") == ["503 5.5.1"]
    s.send(b"HELO x.example\r\n")
    assert s.codes(b"AUTH PLAIN\r\n") == ["503 5.5.1"]


def test_mail_auth_parameter_only_when_auth_is_offered(ready):
    assert ready().codes(b"MAIL FROM:<a@b.example> AUTH=<>\r\n") == ["555 5.5.4"]
    s = ready(auth_mechanisms=("PLAIN",))
    assert s.codes(b"MAIL FROM:<a@b.example> AUTH=a+2Bb@b.example\r\n") == ["250 2.1.0"]
    assert s.of_type(MailFrom)[0].params.auth == "a+b@b.example"


def test_credentials_stay_out_of_reprs():
    assert "secret" not in repr(AuthStart("PLAIN", "secret"))
    assert "secret" not in repr(AuthResponse("secret"))


def test_tls_forgets_authentication(ready):
    s = ready(sasl([("accept",)]), auth_mechanisms=("PLAIN",), starttls_available=True)
    s.send(b"AUTH PLAIN AGEAYg==\r\n")
    assert s.conn.authenticated
    s.send(b"STARTTLS\r\n")
    s.conn.tls_started()
    assert not s.conn.authenticated
