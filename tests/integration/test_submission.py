"""Submission (587 STARTTLS, 465 implicit TLS) end to end: a real server process, real
clients (smtplib, swaks), smtp-sink as relay host, and the durable queue behind it."""

from __future__ import annotations

import base64
import email
import email.policy
import os
import re
import signal
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import scramp
from tests.integration.conftest import MAILKEEP, RunningServer, make_server
from tests.support.procs import free_port
from tests.support.sink import SmtpSink, split_dump

import dkim

PASSWORD = "correct horse battery"
EXTRA = """
[submission]
senders = {{ "info@example.test" = ["demo@example.test", "me@other.test"] }}

[accounts."blocked@example.test"]
send = "block"
send_message = "This account is not allowed to send emails, talk to abuse@example.test"

[accounts."held@example.test"]
send = "hold"

[accounts."slow@example.test"]
max_messages_per_hour = 2

[relays.sink]
host = "[127.0.0.1]:{sink}"
tls = "may"

[relays.rejecting]
host = "[127.0.0.1]:{rejecting}"
tls = "may"

[relays.later]
host = "[127.0.0.1]:{later}"
tls = "may"

[delivery]
relayhost = "sink"
transport = {{ "bounce.test" = "rejecting", "later.test" = "later" }}
mta_sts = false
dane = false

[queue]
queue_run_delay = "1s"
minimal_backoff_time = "1s"
maximal_backoff_time = "2s"
"""
ACCOUNTS = ("demo@example.test", "me@other.test", "blocked@example.test",
            "held@example.test", "slow@example.test", "relay@example.test")


@pytest.fixture(scope="module")
def sinks(tmp_path_factory):
    base = tmp_path_factory.mktemp("sinks")
    ok = SmtpSink(base / "ok").start()
    rejecting = SmtpSink(base / "rejecting", hard_reject="RCPT").start()
    later_port = free_port()
    yield {"sink": ok, "rejecting": rejecting, "later": later_port, "base": base}
    ok.cleanup()
    rejecting.cleanup()


@pytest.fixture(scope="module")
def mk(tmp_path_factory, sinks) -> RunningServer:
    srv = make_server(tmp_path_factory.mktemp("submission"), EXTRA.format(
        sink=sinks["sink"].port, rejecting=sinks["rejecting"].port, later=sinks["later"]))
    for account in ACCOUNTS:
        srv.set_password(account, PASSWORD)
    result = srv.cli("dkim", "keygen", "example.test")
    assert result.returncode == 0, result.stderr
    srv.start()
    yield srv
    srv.stop()


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _client(mk: RunningServer, account: str | None = "demo@example.test",
            implicit: bool = False) -> smtplib.SMTP:
    if implicit:
        client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", mk.submissions_port,
                                               context=_tls(), timeout=20)
    else:
        client = smtplib.SMTP("127.0.0.1", mk.submission_port, timeout=20)
        client.starttls(context=_tls())
    if account:
        client.login(account, PASSWORD)
    return client


def _message(sender: str, to: str, subject: str, extra: str = "") -> bytes:
    return (f"From: Sender <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}"
            f"X-Mailer: LeakyMail 1.0\r\nUser-Agent: Leaky/2\r\n"
            f"X-Originating-IP: [192.0.2.55]\r\n\r\nHello,\r\n.dot line\r\n\r\n").encode()


def _dkim_dns(mk: RunningServer):
    from mailkeep.dkim.keys import DkimKeys

    records = {name.encode() + b".": txt.encode()
               for name, txt in DkimKeys.for_data_dir(mk.data_dir).dns_records("example.test")}

    def dnsfunc(name, timeout=5):
        key = name if name.endswith(b".") else name + b"."
        return records.get(key)
    return dnsfunc


def _wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _send(srv: RunningServer, to: str, subject: str) -> None:
    """demo@example.test submits one message to ``to`` on port 587."""
    client = _client(srv)
    try:
        client.sendmail("demo@example.test", [to], _message("demo@example.test", to, subject))
    finally:
        client.quit()


def _sink_find(sink: SmtpSink, subject: str) -> tuple[dict, bytes]:
    def find():
        for raw in sink.messages():
            envelope, message = split_dump(raw)
            if f"Subject: {subject}".encode() in message:
                return envelope, message
        return None
    return _wait_for(find, what=f"{subject!r} at smtp-sink")


# -- the listener's rules -----------------------------------------------------------------

def test_auth_only_after_starttls_and_mail_needs_auth(mk: RunningServer) -> None:
    client = smtplib.SMTP("127.0.0.1", mk.submission_port, timeout=20)
    try:
        client.ehlo("client.test")
        assert not client.has_extn("auth"), "AUTH must not be offered before STARTTLS"
        assert client.has_extn("starttls")
        code, text = client.docmd("AUTH", "PLAIN " + base64.b64encode(
            b"\0demo@example.test\0" + PASSWORD.encode()).decode())
        assert code == 503
        code, text = client.docmd("MAIL", "FROM:<demo@example.test>")
        assert (code, text[:5]) == (530, b"5.7.0")
        client.starttls(context=_tls())
        client.ehlo("client.test")
        assert client.has_extn("auth")
        assert "PLAIN" in client.esmtp_features["auth"].upper()
        code, text = client.docmd("MAIL", "FROM:<demo@example.test>")
        assert code == 530, "TLS alone is not authentication"
    finally:
        client.close()


def test_port_25_never_offers_auth(mk: RunningServer) -> None:
    client = smtplib.SMTP("127.0.0.1", mk.smtp_port, timeout=20)
    try:
        client.starttls(context=_tls())
        client.ehlo("client.test")
        assert not client.has_extn("auth")
        code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(
            b"\0demo@example.test\0" + PASSWORD.encode()).decode())
        assert code == 503
        client.docmd("RSET")
        code, _ = client.docmd("MAIL", "FROM:<demo@example.test>")
        assert code == 250
        code, _ = client.docmd("RCPT", "TO:<someone@elsewhere.test>")
        assert code == 554, "port 25 never relays"
    finally:
        client.close()


def test_requiretls_is_offered_after_tls_and_recorded(mk: RunningServer) -> None:
    client = _client(mk)
    try:
        client.ehlo("client.test")
        assert client.has_extn("requiretls")
        code, _ = client.docmd("MAIL", "FROM:<demo@example.test> REQUIRETLS")
        assert code == 250
        client.docmd("RCPT", "TO:<strict@later.test>")
        code, _ = client.data(_message("demo@example.test", "strict@later.test", "strict"))
        assert code == 250
    finally:
        client.quit()
    shown = _wait_for(lambda: (lambda out: out if "strict@later.test" in out else None)(
        mk.cli("queue", "list").stdout), what="the REQUIRETLS message in the queue")
    block = next(b for b in shown.split("\n\n") if "strict@later.test" in b)
    queue_id = next(line.split()[0].rstrip("!*") for line in block.splitlines()
                    if line[:1].isalnum() and "demo@example.test" in line)
    details = mk.cli("queue", "show", queue_id).stdout
    assert "REQUIRETLS" in details.upper()


def test_wrong_password_is_535(mk: RunningServer) -> None:
    client = smtplib.SMTP("127.0.0.1", mk.submission_port, timeout=20)
    try:
        client.starttls(context=_tls())
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login("demo@example.test", "wrong password")
        assert info.value.smtp_code == 535
    finally:
        client.close()


# -- what happens to a submitted message ----------------------------------------------------

def test_relayed_message_is_fixed_up_and_dkim_signed(mk: RunningServer, sinks) -> None:
    _send(mk, "friend@elsewhere.test", "signed one")
    envelope, message = _sink_find(sinks["sink"], "signed one")
    assert envelope["X-Rcpt-Args"] == ["<friend@elsewhere.test>"]
    assert envelope["X-Mail-Args"][0].startswith("<demo@example.test>")
    crlf = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    # smtp-sink put its own Received on top; ours follows.
    parsed = email.message_from_bytes(crlf, policy=email.policy.compat32)
    for leaked in ("X-Mailer", "User-Agent", "X-Originating-IP"):
        assert parsed[leaked] is None, f"{leaked} was not removed"
    assert parsed["Message-ID"] and parsed["Message-ID"].endswith("@mx.example.test>")
    assert parsed["Date"]
    ours = [r for r in parsed.get_all("Received") if "Mailkeep" in r]
    assert ours and "127.0.0.1" not in ours[0], "the client's address must not leak"
    signatures = parsed.get_all("DKIM-Signature")
    assert len(signatures) == 2
    assert {s.split("a=")[1].split(";")[0].strip() for s in signatures} == {
        "rsa-sha256", "ed25519-sha256"}
    # Verify every signature with dkimpy (an independent verifier).
    without_sink_received = crlf[crlf.index(b"\r\n", crlf.index(b";\r\n")) + 2:] \
        if crlf.startswith(b"Received: from [127.0.0.1]") else crlf
    verifier = dkim.DKIM(without_sink_received)
    for index in range(2):
        assert verifier.verify(idx=index, dnsfunc=_dkim_dns(mk)), f"signature {index}"


def test_local_recipients_go_straight_to_the_store(mk: RunningServer) -> None:
    before = len(mk.messages("me@other.test"))
    _send(mk, "me@other.test", "local one")
    stored = mk.messages("me@other.test")
    assert len(stored) == before + 1, "stored before the 250, not later"
    assert b"Subject: local one" in stored[-1]
    assert b"X-Mailer" not in stored[-1]
    assert b"DKIM-Signature:" in stored[-1]


def test_unknown_local_user_is_refused_at_rcpt(mk: RunningServer) -> None:
    client = _client(mk)
    try:
        client.docmd("MAIL", "FROM:<demo@example.test>")
        code, text = client.docmd("RCPT", "TO:<nobody@other.test>")
        assert code == 550 and text.startswith(b"5.1.1")
    finally:
        client.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_each_sasl_mechanism_on_465(mk: RunningServer, mechanism: str) -> None:
    client = smtplib.SMTP_SSL("127.0.0.1", mk.submissions_port, context=_tls(), timeout=20)
    try:
        client.ehlo("client.test")
        assert mechanism in client.esmtp_features["auth"].upper().split()
        method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login,
                  "CRAM-MD5": client.auth_cram_md5}[mechanism]
        client.user, client.password = "demo@example.test", PASSWORD
        code, _ = client.auth(mechanism, method)
        assert code == 235
        code, _ = client.docmd("MAIL", "FROM:<demo@example.test>")
        assert code == 250
    finally:
        client.close()


def test_scram_sha_256_on_465(mk: RunningServer) -> None:
    client = smtplib.SMTP_SSL("127.0.0.1", mk.submissions_port, context=_tls(), timeout=20)
    try:
        client.ehlo("client.test")
        assert "SCRAM-SHA-256" in client.esmtp_features["auth"].upper().split()
        scram = scramp.ScramClient(["SCRAM-SHA-256"], "demo@example.test", PASSWORD)
        first = base64.b64encode(scram.get_client_first().encode()).decode()
        code, challenge = client.docmd("AUTH", f"SCRAM-SHA-256 {first}")
        assert code == 334
        scram.set_server_first(base64.b64decode(challenge).decode())
        code, challenge = client.docmd(base64.b64encode(
            scram.get_client_final().encode()).decode())
        assert code == 334
        scram.set_server_final(base64.b64decode(challenge).decode())  # proves the server
        code, _ = client.docmd("")
        assert code == 235
    finally:
        client.close()


def test_swaks_submits_with_starttls_and_auth(mk: RunningServer, sinks) -> None:
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mk.submission_port}", "--tls", "--auth", "PLAIN",
         "--auth-user", "demo@example.test", "--auth-password", PASSWORD,
         "--from", "demo@example.test", "--to", "swaks-friend@elsewhere.test",
         "--header", "Subject: via swaks", "--body", "from swaks"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 OK queued as" in result.stdout
    _sink_find(sinks["sink"], "via swaks")


# -- the sender login map, send modes and rates ------------------------------------------

def test_envelope_sender_must_belong_to_the_account(mk: RunningServer) -> None:
    client = _client(mk)
    try:
        code, text = client.docmd("MAIL", "FROM:<me@other.test>")
        assert code == 553 and text.startswith(b"5.7.1")
        assert b"not owned by user demo@example.test" in text
        for allowed in ("demo@example.test", "demo+shop@example.test", "info@example.test",
                        "postmaster@example.test"):
            code, text = client.docmd("MAIL", f"FROM:<{allowed}>")
            assert code == 250, (allowed, text)
            client.docmd("RSET")
    finally:
        client.close()


def test_from_header_must_belong_to_the_account(mk: RunningServer) -> None:
    client = _client(mk)
    try:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("demo@example.test", ["friend@elsewhere.test"],
                            _message("ceo@example.test", "friend@elsewhere.test", "spoofed"))
        assert info.value.smtp_code == 553
        assert b"From: address rejected" in info.value.smtp_error
    finally:
        client.close()


def test_blocked_account_gets_its_custom_message(mk: RunningServer) -> None:
    client = _client(mk, "blocked@example.test")
    try:
        code, text = client.docmd("MAIL", "FROM:<blocked@example.test>")
        assert code == 554
        assert text == (b"5.7.1 This account is not allowed to send emails, talk to "
                        b"abuse@example.test")
    finally:
        client.close()


def test_held_account_mail_waits_until_released(mk: RunningServer, sinks) -> None:
    client = _client(mk, "held@example.test")
    try:
        client.sendmail("held@example.test", ["friend@elsewhere.test"],
                        _message("held@example.test", "friend@elsewhere.test", "held one"))
    finally:
        client.quit()
    listing = mk.cli("queue", "list")
    assert listing.returncode == 0, listing.stderr
    assert "held@example.test" in listing.stdout
    line = next(x for x in listing.stdout.splitlines() if "held@example.test" in x)
    assert "!" in line, "held mail is marked like Postfix's mailq does"
    time.sleep(1.5)
    assert not any(b"Subject: held one" in m for m in sinks["sink"].messages())
    queue_id = line.split()[0].rstrip("!*")
    released = mk.cli("queue", "release", queue_id)
    assert released.returncode == 0, released.stderr
    _sink_find(sinks["sink"], "held one")


def test_hourly_message_limit(mk: RunningServer) -> None:
    client = _client(mk, "slow@example.test")
    try:
        for n in range(2):
            client.sendmail("slow@example.test", ["friend@elsewhere.test"],
                            _message("slow@example.test", "friend@elsewhere.test", f"slow {n}"))
        code, text = client.docmd("MAIL", "FROM:<slow@example.test>")
        assert code == 450 and text.startswith(b"4.7.1")
    finally:
        client.close()


def test_8bit_body_needs_8bitmime(mk: RunningServer) -> None:
    client = _client(mk)
    try:
        client.docmd("MAIL", "FROM:<demo@example.test>")
        client.docmd("RCPT", "TO:<friend@elsewhere.test>")
        code, _ = client.docmd("DATA")
        assert code == 354
        client.send("From: <demo@example.test>\r\nSubject: 8bit\r\n\r\nGr\u00fc\u00dfe\r\n.\r\n"
                    .encode())
        code, text = client.getreply()
        assert code == 554 and text.startswith(b"5.6.1")
        code, _ = client.docmd("MAIL", "FROM:<demo@example.test> BODY=8BITMIME")
        assert code == 250
    finally:
        client.close()


# -- the queue: bounces, retries, durability ---------------------------------------------

def test_permanent_failure_bounces_to_the_sender(mk: RunningServer) -> None:
    before = len(mk.messages("demo@example.test"))
    _send(mk, "x@bounce.test", "will bounce")
    stored = _wait_for(lambda: (lambda m: m if len(m) > before else None)(
        mk.messages("demo@example.test")), what="the bounce")
    bounce = email.message_from_bytes(stored[-1], policy=email.policy.default)
    assert bounce.get_content_type() == "multipart/report"
    assert bounce.get_param("report-type") == "delivery-status"
    assert bounce["Return-Path"] == "<>"
    status = next(p for p in bounce.walk()
                  if p.get_content_type() in ("message/delivery-status",
                                              "message/global-delivery-status"))
    text = status.as_string()
    assert "Final-Recipient: rfc822; x@bounce.test" in text
    assert "Action: failed" in text
    assert "Status: 5." in text
    assert "Subject: will bounce" in bounce.as_string()


def test_deferred_mail_is_retried_and_flushed(mk: RunningServer, sinks) -> None:
    _send(mk, "someone@later.test", "later one")

    def deferred():
        out = mk.cli("queue", "list").stdout
        return out if "someone@later.test" in out and "(" in out else None
    listing = _wait_for(deferred, what="a deferral reason in the queue listing")
    assert "Connection refused" in listing
    later = SmtpSink(sinks["base"] / "later", port=sinks["later"]).start()
    try:
        assert mk.cli("queue", "flush").returncode == 0
        _sink_find(later, "later one")
        _wait_for(lambda: "someone@later.test" not in mk.cli("queue", "list").stdout,
                  what="the queue to empty")
    finally:
        later.cleanup()


def test_sendmail_command_delivers_through_the_pickup(mk: RunningServer, sinks) -> None:
    message = (b"From: root@mx.example.test\nTo: cron-reader@elsewhere.test\n"
               b"Bcc: hidden@elsewhere.test\nSubject: from cron\n\nnightly job ok\n")
    result = subprocess.run([MAILKEEP, "sendmail", "-t", "-i"], input=message, capture_output=True,
                            timeout=60, env={"MAILKEEP_CONFIG": str(mk.config),
                                             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    envelope, body = _sink_find(sinks["sink"], "from cron")
    assert sorted(envelope["X-Rcpt-Args"]) == ["<cron-reader@elsewhere.test>",
                                               "<hidden@elsewhere.test>"]
    assert b"Bcc:" not in body and b"hidden@" not in body


def test_queued_mail_survives_kill_9(tmp_path: Path) -> None:
    srv = make_server(tmp_path / "mk", EXTRA.format(sink=free_port(), rejecting=free_port(),
                                                    later=free_port()))
    srv.set_password("demo@example.test", PASSWORD)
    srv.start()
    acknowledged = 0
    try:
        client = _client(srv)
        for n in range(20):
            client.sendmail("demo@example.test", [f"r{n}@later.test"],
                            _message("demo@example.test", f"r{n}@later.test", f"kill {n}"))
            acknowledged += 1
        agents = _wait_for(lambda: _delivery_pids(srv), what="the delivery process")
        srv.stop(signal.SIGKILL)
        # Without its server, the delivery process stops by itself.
        _wait_for(lambda: not any(_alive(pid) for pid in agents), timeout=40,
                  what="the delivery process to exit")
    finally:
        if srv.proc is not None:
            srv.stop(signal.SIGKILL)
    srv.start()
    try:
        listing = srv.cli("queue", "list").stdout
        found = sum(1 for n in range(20) if f"r{n}@later.test" in listing)
        assert found == acknowledged == 20
    finally:
        srv.stop()


# -- the delivery process ---------------------------------------------------------------------

def _delivery_pids(srv: RunningServer) -> list[int]:
    """The delivery processes the server has started so far (from its log), oldest first."""
    return [int(m) for m in re.findall(r'msg="delivery process started" pid=(\d+)',
                                       srv.log_text())]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_delivery_runs_in_its_own_process_which_is_started_again_if_it_dies(
        mk: RunningServer, sinks) -> None:
    first = _wait_for(lambda: _delivery_pids(mk), what="the delivery process")[-1]
    assert mk.proc is not None and first != mk.proc.pid
    assert "mailkeep.queue.agent" in Path(f"/proc/{first}/cmdline").read_text()
    assert f"PPid:\t{mk.proc.pid}\n" in Path(f"/proc/{first}/status").read_text()
    os.kill(first, signal.SIGKILL)
    # Mail submitted while no delivery process runs waits in the queue for the next one.
    _send(mk, "far@elsewhere.test", "while restarting")
    _sink_find(sinks["sink"], "while restarting")
    second = _wait_for(lambda: (lambda p: p if p and p[-1] != first else None)(
        _delivery_pids(mk)), what="a new delivery process")[-1]
    assert _alive(second) and not _alive(first)
    assert "delivery process exited; starting it again" in mk.log_text()


def test_a_reloaded_config_reaches_the_delivery_process(tmp_path: Path, sinks) -> None:
    # The relay host is down at first: mail waits. The config then names the working one;
    # after a reload (SIGHUP) a flush delivers it there.
    srv = make_server(tmp_path / "mk", EXTRA.format(sink=free_port(), rejecting=free_port(),
                                                    later=free_port()))
    srv.set_password("demo@example.test", PASSWORD)
    srv.start()
    try:
        _send(srv, "far@elsewhere.test", "after reload")
        _wait_for(lambda: "Connection refused" in srv.cli("queue", "list").stdout,
                  what="a deferral")
        text = srv.config.read_text()
        port = re.search(r'\[relays\.sink\]\nhost = "\[127\.0\.0\.1\]:(\d+)"', text)
        assert port is not None
        srv.config.write_text(text.replace(f"[127.0.0.1]:{port.group(1)}",
                                           f"[127.0.0.1]:{sinks['sink'].port}", 1))
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGHUP)
        _wait_for(lambda: "msg=reloaded" in srv.log_text(), what="the reload")
        assert srv.cli("queue", "flush").returncode == 0
        _sink_find(sinks["sink"], "after reload")
        agents = _delivery_pids(srv)
    finally:
        srv.stop()
    # A clean stop stops the delivery process too.
    assert agents and not any(_alive(pid) for pid in agents)
