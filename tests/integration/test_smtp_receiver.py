"""The SMTP receiver over real sockets: what a sending MTA and a user would notice."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import time
import warnings

import pytest

from .conftest import RunningServer


class RawClient:
    """A byte-exact SMTP client for the cases smtplib refuses to produce."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One complete (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {lines!r} {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"\r\n".join(lines)

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def _client(server: RunningServer) -> RawClient:
    c = RawClient(server.smtp_port)
    assert c.reply().startswith(b"220 ")
    return c


def test_ehlo_advertises_extensions(server: RunningServer):
    c = _client(server)
    r = c.cmd(b"EHLO client.example.net")
    for keyword in (b"PIPELINING", b"SIZE 262144", b"8BITMIME", b"SMTPUTF8",
                    b"ENHANCEDSTATUSCODES", b"STARTTLS", b"CHUNKING", b"DSN"):
        assert keyword in r, r
    # AUTH is never offered on port 25.
    assert b"AUTH" not in r
    c.close()


def test_delivers_durably_with_trace_headers(server: RunningServer):
    body = "Subject: hello\r\nFrom: a@example.net\r\nTo: demo@example.test\r\n\r\nbody line\r\n.leading dot\r\n"
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        s.ehlo("client.example.net")
        refused = s.sendmail("a@example.net", ["demo@example.test"], body)
        assert refused == {}
    msgs = [m for m in server.messages("demo@example.test") if b"Subject: hello\r\n" in m]
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg.startswith(b"Return-Path: <a@example.net>\r\nDelivered-To: demo@example.test\r\n"
                          b"Received: from client.example.net ([127.0.0.1])")
    assert b"by mx.example.test (Mailkeep) with ESMTP id " in msg
    assert msg.endswith(body.encode())


def test_never_an_open_relay(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO relay-tester")
    assert c.cmd(b"MAIL FROM:<spammer@example.net>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<victim@gmail.com>").startswith(b"554 5.7.1")
    # A relay through our own host name or a source route does not work either.
    assert c.cmd(b"RCPT TO:<@mx.example.test:victim@gmail.com>").startswith(b"554 5.7.1")
    assert c.cmd(b'RCPT TO:<"victim@gmail.com"@elsewhere.test>').startswith(b"554 5.7.1")
    assert c.cmd(b"RCPT TO:<nobody@example.test>").startswith(b"250")  # catch-all
    assert c.cmd(b"RCPT TO:<nobody@other.test>").startswith(b"550 5.1.1")
    c.close()


def test_vrfy_expn_do_not_disclose_users(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    assert c.cmd(b"VRFY demo@example.test").startswith(b"252")
    assert c.cmd(b"VRFY nosuchuser@example.test").startswith(b"252")
    assert c.cmd(b"EXPN team@example.test").startswith(b"502")
    c.close()


def test_addressing_rules_on_the_wire(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    c.cmd(b"MAIL FROM:<a@example.net>")
    assert c.cmd(b"RCPT TO:<burned@example.test>").startswith(b"550 5.1.1")
    assert c.cmd(b"RCPT TO:<relay@example.test>").startswith(b"550 5.1.1")  # no mailbox
    assert c.cmd(b"RCPT TO:<outside@example.test>").startswith(b"451 4.3.0")
    assert c.cmd(b"RCPT TO:<POSTMASTER@OTHER.TEST>").startswith(b"250")  # RFC 2142, any domain
    assert c.cmd(b"RCPT TO:<leser@xn--bcher-kva.test>").startswith(b"250")
    c.close()


def _send(server: RunningServer, rcpts: list[str], subject: str, sender: str = "a@example.net",
          extra: str = "") -> dict:
    body = f"Subject: {subject}\r\n{extra}\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        return s.sendmail(sender, rcpts, body)


def _subjects(server: RunningServer, account: str, mailbox: str = "INBOX") -> list[str]:
    out = []
    for m in server.messages(account, mailbox):
        for line in m.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode())
                break
    return out


def test_alias_list_catch_all_subaddress_and_personalized(server: RunningServer):
    assert _send(server, ["team@example.test"], "to-team") == {}
    assert "to-team" in _subjects(server, "demo@example.test")
    assert "to-team" in _subjects(server, "me@other.test")
    assert _send(server, ["whatever@example.test"], "to-catchall") == {}
    assert "to-catchall" in _subjects(server, "catch@example.test")
    assert _send(server, ["shopme@other.test"], "personalized") == {}
    assert "personalized" in _subjects(server, "me@other.test")
    # Sub-address into an existing folder, and into INBOX when the folder does not exist.
    assert _send(server, ["demo+Archive@example.test"], "plus-folder") == {}
    assert "plus-folder" in _subjects(server, "demo@example.test", "Archive")
    assert _send(server, ["demo+nosuchfolder@example.test"], "plus-inbox") == {}
    assert "plus-inbox" in _subjects(server, "demo@example.test")


def test_one_copy_per_mailbox_for_duplicate_recipients(server: RunningServer):
    assert _send(server, ["demo@example.test", "DEMO@example.test", "team@example.test"],
                 "dedupe") == {}
    assert _subjects(server, "demo@example.test").count("dedupe") == 1


def test_quota_is_enforced(server: RunningServer):
    big = "x" * 3000
    assert _send(server, ["small@example.test"], "fits", extra=f"X-Pad: {big}\r\n") == {}
    with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        _send(server, ["small@example.test"], "over", extra=f"X-Pad: {big}\r\n")
    code, text = err.value.recipients["small@example.test"]
    assert code == 552 and text.startswith(b"5.2.2")


def test_message_size_limit(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    assert c.cmd(b"MAIL FROM:<a@example.net> SIZE=999999999").startswith(b"552 5.3.4")
    assert c.cmd(b"MAIL FROM:<a@example.net>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<demo@example.test>").startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")
    c.send((b"x" * 998 + b"\r\n") * 300 + b".\r\n")
    assert c.reply().startswith(b"552 5.3.4")
    # The session stays usable.
    assert c.cmd(b"NOOP").startswith(b"250")
    c.close()


def test_command_line_too_long(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    assert c.cmd(b"NOOP " + b"a" * 5000).startswith(b"500 5.5.2")
    assert c.cmd(b"NOOP").startswith(b"250")
    c.close()


SMUGGLING_ENDINGS = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n",
                     b"\r.\r\n", b"\r\n.\r", b"\r\n.\x00\r\n"]


@pytest.mark.parametrize("ending", SMUGGLING_ENDINGS)
def test_smtp_smuggling_is_impossible(server: RunningServer, ending: bytes):
    c = _client(server)
    c.cmd(b"EHLO attacker.example.net")
    c.cmd(b"MAIL FROM:<a@example.net>")
    c.cmd(b"RCPT TO:<demo@example.test>")
    assert c.cmd(b"DATA").startswith(b"354")
    marker = f"smuggled-{ending.hex()}".encode()
    c.send(b"Subject: outer\r\n\r\nhello" + ending +
           b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<demo@example.test>\r\nDATA\r\n"
           b"Subject: " + marker + b"\r\n\r\nsmuggled\r\n.\r\n")
    reply = c.reply()
    # Exactly one reply for one message: the smuggled commands were body text.
    c.send(b"NOOP\r\n")
    assert c.reply().startswith(b"250")
    c.close()
    if b"\x00" not in ending:
        assert reply.startswith(b"550 5.6.11"), reply  # bare CR/LF refused
    assert marker.decode() not in _subjects(server, "demo@example.test")


def test_starttls_discards_pipelined_plaintext(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    # CVE-2011-0411: commands injected after STARTTLS in the same packet must be dropped.
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\n")
    assert c.reply().startswith(b"220")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")
    tls.sendall(b"RCPT TO:<demo@example.test>\r\n")
    answer = tls.recv(4096)
    # Had the injected MAIL been processed, RCPT would be accepted.
    assert answer.startswith(b"503"), answer
    tls.sendall(b"EHLO x.example.net\r\n")
    ehlo = b""
    while not ehlo.endswith(b"\r\n") or b"250 " not in ehlo:
        ehlo += tls.recv(4096)
    assert b"STARTTLS" not in ehlo
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    tls.close()


def test_starttls_delivery_records_tls_in_received(server: RunningServer):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        s.starttls(context=ctx)
        assert s.sendmail("a@example.net", ["demo@example.test"], "Subject: tls\r\n\r\nx\r\n") == {}
    msg = [m for m in server.messages("demo@example.test") if b"Subject: tls\r\n" in m][0]
    assert b"with ESMTPS id" in msg
    assert b"(using TLSv1.3 with cipher" in msg


def test_tls_below_1_2_is_refused(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    assert c.cmd(b"STARTTLS").startswith(b"220")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(c.sock, server_hostname="mx.example.test")
    c.close()


def test_bdat_chunking(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    c.cmd(b"MAIL FROM:<a@example.net> BODY=8BITMIME")
    c.cmd(b"RCPT TO:<demo@example.test>")
    part1 = b"Subject: bdat\r\n\r\n"
    part2 = b"line with a lone dot next\r\n.\r\nand bytes \xc3\xa9\r\n"
    assert c.cmd(b"BDAT %d\r\n" % len(part1) + part1[:-2]).startswith(b"250")
    c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert c.reply().startswith(b"250")
    c.close()
    msg = [m for m in server.messages("demo@example.test") if b"Subject: bdat\r\n" in m][0]
    assert msg.endswith(part1 + part2)


def test_pipelining_replies_in_order(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    c.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<nobody@other.test>\r\n"
           b"RCPT TO:<demo@example.test>\r\nDATA\r\n")
    assert c.reply().startswith(b"250")
    assert c.reply().startswith(b"550")
    assert c.reply().startswith(b"250")
    assert c.reply().startswith(b"354")
    c.send(b"Subject: pipelined\r\n\r\nx\r\n.\r\nQUIT\r\n")
    assert c.reply().startswith(b"250")
    assert c.reply().startswith(b"221")
    c.close()


def test_error_limit_disconnects(server: RunningServer):
    c = _client(server)
    started = time.monotonic()
    replies = [c.cmd(b"BOGUS") for _ in range(4)]
    assert all(r.startswith(b"500") for r in replies)
    # The fifth error reaches the hard limit: its reply, then 421 and the connection closes.
    assert c.cmd(b"BOGUS").startswith(b"500")
    assert c.reply().startswith(b"421 4.7.0")
    assert c.sock.recv(100) == b""
    # Errors past the soft limit were slowed down (error_sleep = 0.2 s in this config).
    assert time.monotonic() - started >= 0.2
    c.close()


def test_lmtp_one_reply_per_recipient(server: RunningServer):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.lmtp_socket))
    sock.settimeout(10)
    c = RawClient.__new__(RawClient)
    c.sock, c.buf = sock, b""
    assert c.reply().startswith(b"220")
    assert c.cmd(b"LHLO postfix.example.test").startswith(b"250")
    c.cmd(b"MAIL FROM:<a@example.net>")
    assert c.cmd(b"RCPT TO:<demo@example.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<nobody@other.test>").startswith(b"550")
    assert c.cmd(b"RCPT TO:<me@other.test>").startswith(b"250")
    c.send(b"DATA\r\n")
    assert c.reply().startswith(b"354")
    c.send(b"Subject: via-lmtp\r\n\r\nhi\r\n.\r\n")
    assert c.reply().startswith(b"250")
    assert c.reply().startswith(b"250")
    c.close()
    assert "via-lmtp" in _subjects(server, "demo@example.test")
    assert "via-lmtp" in _subjects(server, "me@other.test")


def test_swaks_starttls_and_pipelining(server: RunningServer):
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.smtp_port}", "--to", "demo@example.test",
         "--from", "swaks@example.net", "--tls", "--pipeline", "--header", "Subject: swaks-tls",
         "--helo", "swaks.example.net", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "swaks-tls" in _subjects(server, "demo@example.test")


def test_swaks_rejected_recipient_exit_code(server: RunningServer):
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.smtp_port}", "--to", "x@gmail.com",
         "--from", "swaks@example.net", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "554 5.7.1" in out.stdout


def test_smtp_source_load(server: RunningServer):
    before = len(server.messages("catch@example.test"))
    out = subprocess.run(
        ["smtp-source", "-s", "5", "-m", "200", "-l", "2048", "-f", "load@example.net",
         "-t", "load@example.test", f"127.0.0.1:{server.smtp_port}"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(server.messages("catch@example.test")) - before == 200


def test_session_and_message_logs_are_logfmt(server: RunningServer):
    _send(server, ["demo@example.test"], "logged")
    time.sleep(0.2)
    lines = [ln for ln in server.log_text().splitlines() if "msg=message" in ln]
    assert lines, server.log_text()[-2000:]
    last = lines[-1]
    for key in ("ts=", "level=info", "subsystem=smtp", "id=", "client=127.0.0.1", "from_=",
                "to=demo@example.test", "size=", "outcome=delivered"):
        assert key in last, last


def test_smtputf8_and_idna(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    # Without SMTPUTF8 a UTF-8 address is refused (RFC 6531 §3.5) ...
    c.cmd(b"MAIL FROM:<a@example.net>")
    assert c.cmd("RCPT TO:<leser@bücher.test>".encode()).startswith(b"553 5.6.7")
    c.cmd(b"RSET")
    # ... with it, U-label domains and UTF-8 local parts work.
    assert c.cmd("MAIL FROM:<jürgen@example.net> SMTPUTF8".encode()).startswith(b"250")
    assert c.cmd("RCPT TO:<leser@bücher.test>".encode()).startswith(b"250")
    assert c.cmd("RCPT TO:<größe@example.test>".encode()).startswith(b"250")  # catch-all
    assert c.cmd(b"DATA").startswith(b"354")
    c.send("Subject: utf8 ✓\r\n\r\nhällo\r\n.\r\n".encode())
    assert c.reply().startswith(b"250")
    c.close()
    msg = next(m for m in server.messages("leser@xn--bcher-kva.test") if "utf8 ✓".encode() in m)
    assert msg.startswith("Return-Path: <jürgen@example.net>\r\n".encode())
    assert b"with UTF8SMTP id" in msg


def test_quota_failure_after_data_converges(fresh_server: RunningServer):
    """One recipient over quota at end of data: 451 for all, and the retry refuses it at RCPT."""
    body = b"Subject: mixed-quota\r\n\r\n" + b"z" * 6000 + b"\r\n"

    def attempt() -> tuple[bytes, bytes]:
        c = _client(fresh_server)
        c.cmd(b"EHLO x.example.net")
        c.cmd(b"MAIL FROM:<a@example.net>")  # no SIZE=: the RCPT check cannot know
        assert c.cmd(b"RCPT TO:<demo@example.test>").startswith(b"250")
        small = c.cmd(b"RCPT TO:<small@example.test>")
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(body + b".\r\n")
        end = c.reply()
        c.close()
        return small, end

    small, end = attempt()
    assert small.startswith(b"250") and end.startswith(b"451 4.3.0")
    small, end = attempt()  # the sender's retry
    assert small.startswith(b"552 5.2.2") and end.startswith(b"250")
    copies = [m for m in fresh_server.messages("demo@example.test") if b"mixed-quota" in m]
    assert len(copies) == 2  # delivered twice rather than lost
    assert not [m for m in fresh_server.messages("small@example.test") if b"mixed-quota" in m]


def test_long_data_lines_are_accepted_up_to_the_cap(server: RunningServer):
    c = _client(server)
    c.cmd(b"EHLO x.example.net")
    c.cmd(b"MAIL FROM:<a@example.net>")
    c.cmd(b"RCPT TO:<demo@example.test>")
    assert c.cmd(b"DATA").startswith(b"354")
    line = b"L" * 100_000  # far beyond RFC 5321's 1000 octets, as real mail does
    c.send(b"Subject: long-line\r\n\r\n" + line + b"\r\n.\r\n")
    assert c.reply().startswith(b"250")
    c.close()
    msg = next(m for m in server.messages("demo@example.test") if b"Subject: long-line" in m)
    assert msg.endswith(line + b"\r\n")
