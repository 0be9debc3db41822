"""The outbound SMTP session against real Postfix programs started by the test.

- ``smtp-sink`` (Postfix's test server) as a fast destination, with PIPELINING or
  8BITMIME switched off, refusals and disconnects injected by its own options, and every
  transaction dumped to a file so the test can read exactly what arrived.
- A private Postfix (``ThrowawayPostfix.sasl_submission``) as the relayhost that requires
  SASL over STARTTLS (Cyrus SASL: SCRAM-SHA-256, PLAIN, LOGIN), or over implicit TLS; it
  delivers to a Maildir, which the test reads.

Both need root and the Debian postfix/sasl2-bin packages (``make test`` installs them);
a missing program fails the test with that message.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.certs import TestCA
from tests.support.postfix import ThrowawayPostfix
from tests.support.procs import free_port, start_process, stop_process, wait_for_smtp_greeting

from mailkeep.outbound.client import (
    ClientSession,
    Credentials,
    OutboundMessage,
    OutboundRecipient,
    SessionError,
    TlsRequirement,
)

pytestmark = pytest.mark.interop

SMTP_SINK = "/usr/sbin/smtp-sink"
HELO = "client.mailkeep.test"
WAIT = 30.0
DOMAIN = "example.test"
USER = "demo"
LOGIN = "relay@example.test"
PASSWORD = "correct horse battery"


def normalized_lf(body: bytes) -> bytes:
    """What a receiver that stores LF line endings should have: every line break one LF."""
    body = re.sub(rb"\r\n|\r|\n", b"\n", body)
    return body if not body or body.endswith(b"\n") else body + b"\n"


def tricky_body(marker: str) -> bytes:
    lines = b"".join(b".%05d dotted filler line\r\n" % i for i in range(6000))
    return (f"X-Marker: {marker}\r\nSubject: dots\r\n\r\n".encode()
            + b".\r\n..\r\nsmuggle\n.\nMAIL FROM:<x@evil>\r\nbare\rcr\r\n\xc3\xa9t\xc3\xa9\r\n"
            + lines + b".no final newline")


def message(path: Path, *recipients: str, **kwargs) -> OutboundMessage:
    return OutboundMessage("sender@example.org",
                           tuple(OutboundRecipient(r) for r in recipients),
                           path, path.stat().st_size, **kwargs)


async def connect(port: int, **kwargs) -> ClientSession:
    kwargs.setdefault("tls", TlsRequirement("may"))
    return await asyncio.wait_for(ClientSession.connect(
        "relay.example.test", port, address="127.0.0.1", helo_name=HELO, **kwargs), WAIT)


# --- smtp-sink ------------------------------------------------------------------------------------

class SmtpSink:
    """smtp-sink on a free port, dumping each transaction into ``dumps``."""

    def __init__(self, directory: Path, *options: str) -> None:
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError(f"{SMTP_SINK} is missing: apt-get install postfix (the Makefile "
                               "installs it)")
        self.dumps = directory / "dumps"
        self.dumps.mkdir()
        self.port = free_port()
        log = directory / "smtp-sink.log"
        self.process = start_process(
            [SMTP_SINK, "-u", "root", "-d", f"{self.dumps}/%M.", *options,
             f"127.0.0.1:{self.port}", "100"], log_path=log)
        wait_for_smtp_greeting(self.port, process=self.process, log_path=log, timeout=WAIT)

    def stop(self) -> None:
        stop_process(self.process)

    def raw_dumps(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dumps.rglob("*")) if p.is_file()]

    def transactions(self) -> list[tuple[list[str], bytes]]:
        """(smtp-sink's X- header lines, message content) of every dumped transaction."""
        found = []
        for path in sorted(p for p in self.dumps.rglob("*") if p.is_file()):
            raw = path.read_bytes()
            head, _, rest = raw.partition(b"\nReceived: ")
            # The Received header smtp-sink adds is three lines (two continuation lines).
            content = rest.split(b"\n", 3)[3]
            assert content.endswith(b"\n\n")
            found.append((head.decode().split("\n"), content[:-1]))
        return found


@pytest.fixture
def sink(tmp_path, request) -> Iterator[SmtpSink]:
    options = getattr(request, "param", ())
    server = SmtpSink(tmp_path, *options)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("sink", [(), ("-p",), ("-8",)], indirect=True,
                         ids=["pipelining", "lock-step", "no-8bitmime"])
async def test_smtp_sink_receives_exactly_the_normalized_message(tmp_path, sink):
    body = tricky_body(uuid.uuid4().hex)
    path = tmp_path / "msg"
    path.write_bytes(body)
    session = await connect(sink.port)
    results = [await session.send(message(path, "a@example.net", "b@example.net",
                                          body_type="8BITMIME", envid="env-1"))
               for _ in range(2)]
    await session.quit()
    assert [r.message_reply.code for r in results if r.message_reply] == [250, 250]
    transactions = sink.transactions()
    assert len(transactions) == 2
    for headers, content in transactions:
        assert content == normalized_lf(body)
        mail_args = next(h for h in headers if h.startswith("X-Mail-Args:"))
        # BODY=8BITMIME only when announced; DSN's ENVID since smtp-sink offers DSN.
        assert ("BODY=8BITMIME" in mail_args) == ("-8" not in sink.process.args)
        assert "ENVID=env-1" in mail_args
        assert [h for h in headers if h.startswith("X-Rcpt-Args:")] == [
            "X-Rcpt-Args: <a@example.net>", "X-Rcpt-Args: <b@example.net>"]


@pytest.mark.parametrize(("sink", "code"), [(("-r", "RCPT"), 450), (("-f", "RCPT"), 500)],
                         indirect=["sink"], ids=["soft", "hard"])
async def test_smtp_sink_refusing_every_recipient(tmp_path, sink, code):
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: x\r\n\r\nbody of the refused message\r\n")
    session = await connect(sink.port)
    result = await session.send(message(path, "a@example.net", "b@example.net"))
    await session.quit()
    assert {r.code for r in result.recipients.values()} == {code}
    assert result.message_reply is None
    # smtp-sink may dump the envelope of the failed transaction, never any content.
    assert not any(b"refused message" in dump for dump in sink.raw_dumps())


@pytest.mark.parametrize("sink", [("-q", ".")], indirect=True)
async def test_smtp_sink_hanging_up_after_the_data_is_temporary(tmp_path, sink):
    # The peer got the whole message but never said 250: at-least-once means retry.
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    session = await connect(sink.port)
    with pytest.raises(SessionError) as caught:
        await session.send(message(path, "a@example.net"))
    assert caught.value.stage == "data" and caught.value.temporary
    assert caught.value.recipients["a@example.net"].code == 250


# --- Postfix as a relayhost requiring SASL over TLS ------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[TestCA, TestCA, Path, Path]:
    base = tmp_path_factory.mktemp("relay-pki")
    ca = TestCA.create(base / "ca")
    other = TestCA.create(base / "other", name="Unrelated CA")
    cert = ca.issue(["relay.example.test"])
    # Postfix's daemons (user postfix) read the key: copy it out of pytest's private tree.
    shared = Path(f"/tmp/mailkeep-relay-pki-{uuid.uuid4().hex}")
    shared.mkdir(mode=0o755)
    cert_file, key_file = shared / "relay.crt", shared / "relay.key"
    shutil.copy(cert.cert_file, cert_file)
    shutil.copy(cert.key_file, key_file)
    key_file.chmod(0o644)
    yield ca, other, cert_file, key_file
    shutil.rmtree(shared, ignore_errors=True)


def relay(pki, **kwargs) -> ThrowawayPostfix:
    _, _, cert_file, key_file = pki
    return ThrowawayPostfix.sasl_submission(
        DOMAIN, USER, login=LOGIN, password=PASSWORD, cert_file=cert_file, key_file=key_file,
        hostname="relay.example.test", extra_main_cf={"message_size_limit": "300000"},
        **kwargs)


@pytest.fixture(scope="module")
def postfix(pki) -> Iterator[ThrowawayPostfix]:
    with relay(pki) as instance:
        yield instance


def verify_with(ca: TestCA, *, implicit: bool = False) -> TlsRequirement:
    return TlsRequirement("verify", verify_names=("relay.example.test",),
                          ca_file=str(ca.ca_file), implicit=implicit)


def delivered_body(instance: ThrowawayPostfix, marker: str) -> bytes:
    """The body (after the header, which Postfix extends) of the delivered message whose
    X-Marker is ``marker``."""
    instance.wait_for_maildir_count(1)
    for raw in instance.maildir_messages():
        header, _, body = raw.partition(b"\n\n")
        if f"\nX-Marker: {marker}\n".encode() in header:
            return body
    raise AssertionError(f"no message with marker {marker} in {instance.maildir}")


async def test_relayhost_scram_over_starttls_and_exact_content(tmp_path, pki, postfix):
    marker = uuid.uuid4().hex
    body = tricky_body(marker)
    path = tmp_path / "msg"
    path.write_bytes(body)
    session = await connect(postfix.port, tls=verify_with(pki[0]),
                            credentials=Credentials(LOGIN, PASSWORD))
    assert session.tls_info.verified
    assert session.auth_mechanism == "SCRAM-SHA-256"
    assert "CHUNKING" in session.capabilities          # so the content went by BDAT
    result = await session.send(message(path, f"{USER}@{DOMAIN}", "someone@elsewhere.example",
                                        body_type="8BITMIME"))
    await session.quit()
    assert {r.code for r in result.recipients.values()} == {250}
    assert delivered_body(postfix, marker) == normalized_lf(body).partition(b"\n\n")[2]
    # smtpd writes its "disconnect ... bdat=N" line after our QUIT: wait for it.
    deadline = time.monotonic() + 10
    while not re.search(r" bdat=[2-9] ", log := postfix.log_text()) and \
            time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "sasl_method=SCRAM-SHA-256, sasl_username=relay@example.test" in log
    assert re.search(r" bdat=[2-9] ", log), "the content should have gone in BDAT chunks"


async def test_relayhost_wrong_password_is_a_permanent_auth_error(pki, postfix):
    with pytest.raises(SessionError) as caught:
        await connect(postfix.port, tls=verify_with(pki[0]),
                      credentials=Credentials(LOGIN, "wrong password"))
    error = caught.value
    assert error.stage == "auth" and not error.temporary
    assert error.reply is not None and error.reply.code == 535


async def test_relayhost_certificate_from_another_ca_is_refused(pki, postfix):
    with pytest.raises(SessionError) as caught:
        await connect(postfix.port, tls=verify_with(pki[1]),
                      credentials=Credentials(LOGIN, PASSWORD))
    assert caught.value.stage == "tls" and caught.value.tls_failed
    assert "certificate verification failed" in str(caught.value)


async def test_relayhost_without_login_refuses_each_recipient(tmp_path, pki, postfix):
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    session = await connect(postfix.port, tls=verify_with(pki[0]))
    assert "AUTH" in session.capabilities               # offered after STARTTLS only
    result = await session.send(message(path, "a@elsewhere.example", "b@elsewhere.example"))
    await session.quit()
    assert {(r.code, r.enhanced) for r in result.recipients.values()} == {(554, "5.7.1")}
    assert result.message_reply is None


async def test_relayhost_size_limit_is_honoured_before_sending(tmp_path, pki, postfix):
    path = tmp_path / "big"
    path.write_bytes(b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * 5000)
    session = await connect(postfix.port, tls=verify_with(pki[0]),
                            credentials=Credentials(LOGIN, PASSWORD))
    result = await session.send(message(path, f"{USER}@{DOMAIN}"))
    await session.quit()
    assert {(r.code, r.enhanced) for r in result.recipients.values()} == {(552, "5.3.4")}
    assert "300000" in result.recipients[f"{USER}@{DOMAIN}"].lines[0]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_relayhost_plain_and_login(tmp_path, pki, mechanism):
    marker = uuid.uuid4().hex
    path = tmp_path / "msg"
    path.write_bytes(f"X-Marker: {marker}\r\n\r\nvia {mechanism}\r\n".encode())
    with relay(pki, mechanisms=(mechanism,)) as instance:
        session = await connect(instance.port, tls=verify_with(pki[0]),
                                credentials=Credentials(LOGIN, PASSWORD))
        assert session.auth_mechanism == mechanism
        await session.send(message(path, f"{USER}@{DOMAIN}"))
        await session.quit()
        assert delivered_body(instance, marker) == f"via {mechanism}\n".encode()


async def test_relayhost_with_implicit_tls(tmp_path, pki):
    marker = uuid.uuid4().hex
    path = tmp_path / "msg"
    path.write_bytes(f"X-Marker: {marker}\r\n\r\nport 465 style\r\n".encode())
    with relay(pki, wrapper_mode=True) as instance:
        session = await connect(instance.port, tls=verify_with(pki[0], implicit=True),
                                credentials=Credentials(LOGIN, PASSWORD))
        assert session.tls_info.verified and session.authenticated_as == LOGIN
        await session.send(message(path, f"{USER}@{DOMAIN}"))
        await session.quit()
        assert delivered_body(instance, marker) == b"port 465 style\n"
