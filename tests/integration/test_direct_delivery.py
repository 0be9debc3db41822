"""Direct delivery end to end: a running `mailkeep serve` takes mail on 587 and delivers it
to the recipient domain's MX hosts with the TLS the destination asks for.

Every peer is real and local: NSD behind a validating Unbound (tests/support/dns.py)
publishes MX, A, TLSA (in DNSSEC-signed zones), MTA-STS TXT records and a null MX; an
aiohttp HTTPS server serves the MTA-STS policies with a certificate from a private CA; a
throwaway Postfix is the destination MX, offering STARTTLS with a certificate from that CA;
smtp-sink is a plaintext MX that can be told to answer 4xx. Mailkeep is pointed at them
with the test knobs of ``[delivery]`` (``resolvers``, ``smtp_port``, ``mta_sts_port``,
``ca_file``). ``smtp_port`` is one port for all of a server's direct deliveries, so two
Mailkeep servers run: one whose MX port is Postfix's (DANE, MTA-STS, null MX, NXDOMAIN),
one whose MX port is smtp-sink's (opportunistic TLS, retries after 4xx).

What a user would notice is asserted: the message in the destination's Maildir (with the
Received header Postfix writes about the TLS it saw), the line in the TLS results file, the
reason `mailkeep queue list` gives for mail that must wait, and the bounce in the sender's
INBOX (RFC 3464 Status codes of RFC 7505 and RFC 3463).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import json
import re
import smtplib
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from tests.integration.conftest import RunningServer, make_server
from tests.support.certs import IssuedCert, TestCA
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.https import LocalHTTPS, Reply
from tests.support.postfix import ThrowawayPostfix
from tests.support.procs import free_port
from tests.support.sink import SinkUnavailable, SmtpSink, split_dump

T = TypeVar("T")

PASSWORD = "correct horse battery"
SENDER = "demo@example.test"
POLICY_PATH = "/.well-known/mta-sts.txt"
#: Every wait in this module ends after this many seconds with a message saying what for.
WAIT = 20.0

#: The destination Postfix accepts every address in these domains.
POSTFIX_DOMAINS = ("dane.test", "badtlsa.test", "sts.test", "stsbad.test", "stscert.test")

SERVER_EXTRA = """
[delivery]
resolvers = ["127.0.0.1:{resolver_port}"]
smtp_port = {smtp_port}
mta_sts_port = {https_port}
ca_file = "{ca_file}"
connect_timeout = "5s"

[queue]
queue_run_delay = "1s"
minimal_backoff_time = "1s"
maximal_backoff_time = "2s"
"""


# -- waiting ----------------------------------------------------------------------------------

def wait_for(predicate: Callable[[], T], what: str, timeout: float = WAIT,
             context: Callable[[], str] | None = None) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    extra = f"\n{context()}" if context else ""
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")


# -- peers ------------------------------------------------------------------------------------

class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = TestCA.create(directory)
        # The MX certificate names the hosts MTA-STS policies list, but not mx.stscert.test.
        self.mx = self.ca.issue(["mx.dane.test", "mx.badtlsa.test", "mx.sts.test",
                                 "mx.stsbad.test"], stem="mx")
        self.policy_host = self.ca.issue(["mta-sts.sts.test", "mta-sts.stsbad.test",
                                          "mta-sts.stscert.test", "mta-sts.stssink.test"],
                                         stem="mta-sts")


def spki_sha256(cert: IssuedCert) -> str:
    return hashlib.sha256(cert.spki_der).hexdigest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def destination(pki: Pki) -> Iterator[ThrowawayPostfix]:
    with ThrowawayPostfix.tls_destination(POSTFIX_DOMAINS, cert_file=pki.mx.cert_file,
                                          key_file=pki.mx.key_file,
                                          hostname="mx.dane.test") as postfix:
        yield postfix


class Sink:
    """The smtp-sink MX on one fixed port, restarted in another mode when a test asks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.current: SmtpSink | None = None
        self.options: dict[str, str] = {}
        self.received: list[bytes] = []

    def start(self, **options: str) -> SmtpSink:
        self.stop()
        self.options = options
        deadline = time.monotonic() + 10
        while True:  # the old listener's port may take a moment to be free again
            sink = SmtpSink(self.directory, port=self.port, **options)
            try:
                self.current = sink.start()
                return sink
            except SinkUnavailable:
                sink.cleanup()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def accept_all(self) -> None:
        """Make sure the sink runs and accepts everything (another test may have left it
        answering 4xx)."""
        if self.current is None or self.options:
            self.start()

    def stop(self) -> None:
        if self.current is not None:
            self.received += self.current.messages()
            self.current.cleanup()
            self.current = None

    def find(self, subject: str) -> tuple[dict, bytes] | None:
        current = self.current.messages() if self.current else []
        for raw in self.received + current:
            envelope, message = split_dump(raw)
            if f"Subject: {subject}".encode() in message:
                return envelope, message
        return None


@pytest.fixture(scope="module")
def sink(tmp_path_factory) -> Iterator[Sink]:
    holder = Sink(tmp_path_factory.mktemp("sink"))
    holder.start()
    yield holder
    holder.stop()


def zones(pki: Pki, postfix_port: int, sink_port: int) -> list[Zone]:
    mx = "@ MX 10 mx\nmx A 127.0.0.1\n"
    sts = '_mta-sts TXT "v=STSv1; id=20240101"\nmta-sts A 127.0.0.1\n'
    return [
        # RFC 7672 §3.1: the TLSA base domain is the MX host, the port is the SMTP port.
        Zone("dane.test", mx + f"_{postfix_port}._tcp.mx TLSA 3 1 1 {spki_sha256(pki.mx)}",
             signed=True),
        # A valid, signed TLSA record for a key the MX does not have.
        Zone("badtlsa.test",
             mx + f"_{postfix_port}._tcp.mx TLSA 3 1 1 {spki_sha256(pki.policy_host)}",
             signed=True),
        Zone("sts.test", mx + sts),
        Zone("stsbad.test", mx + sts),
        Zone("stscert.test", mx + sts),
        Zone("nullmx.test", "@ MX 0 .\n"),
        # An IPv6 address where nothing listens, tried first (RFC 5321 §5.1 and our
        # default family order), then IPv4.
        Zone("plain.test", mx + "mx AAAA ::1\n"),
        Zone("later.test", mx),
        # DANE and MTA-STS enforce for an MX without STARTTLS (the smtp-sink port).
        Zone("danesink.test", mx + f"_{sink_port}._tcp.mx TLSA 3 1 1 {spki_sha256(pki.mx)}",
             signed=True),
        Zone("stssink.test", mx + sts),
    ]


@pytest.fixture(scope="module")
def dns_server(pki: Pki, destination: ThrowawayPostfix, sink: Sink) -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS(zones(pki, destination.port, sink.port)) as server:
        yield server


def policy(*mx: str, mode: str = "enforce") -> Reply:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), "max_age: 86400"]
    return Reply(body=("\r\n".join(lines) + "\r\n").encode())


class PolicyServer:
    """LocalHTTPS on an event loop of its own thread: the server under test is another
    process, so the policy host must answer while the test thread waits."""

    def __init__(self, cert: IssuedCert) -> None:
        self.https = LocalHTTPS(cert)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.https.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.https.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def policy_server(pki: Pki) -> Iterator[PolicyServer]:
    server = PolicyServer(pki.policy_host)
    server.https.serve(POLICY_PATH, policy("mx.sts.test"), host="mta-sts.sts.test")
    # The domain's MX (mx.stsbad.test) is not among the hosts its policy allows.
    server.https.serve(POLICY_PATH, policy("mx.elsewhere.test"), host="mta-sts.stsbad.test")
    # Allowed by the policy, but the MX's certificate does not name mx.stscert.test.
    server.https.serve(POLICY_PATH, policy("mx.stscert.test"), host="mta-sts.stscert.test")
    server.https.serve(POLICY_PATH, policy("mx.stssink.test"), host="mta-sts.stssink.test")
    server.start()
    yield server
    server.stop()


def start_mailkeep(directory: Path, *, smtp_port: int, dns_server: ThrowawayDNS,
                   https_port: int, ca_file: Path) -> RunningServer:
    server = make_server(directory, SERVER_EXTRA.format(
        resolver_port=dns_server.unbound_port, smtp_port=smtp_port, https_port=https_port,
        ca_file=ca_file))
    server.set_password(SENDER, PASSWORD)
    server.start()
    return server


@pytest.fixture(scope="module")
def mk(tmp_path_factory, pki: Pki, destination: ThrowawayPostfix, dns_server: ThrowawayDNS,
       policy_server: PolicyServer) -> Iterator[RunningServer]:
    """Mailkeep whose direct deliveries go to the Postfix MX port."""
    server = start_mailkeep(tmp_path_factory.mktemp("mk-tls"), smtp_port=destination.port,
                            dns_server=dns_server, https_port=policy_server.https.port,
                            ca_file=pki.ca.ca_file)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mk_plain(tmp_path_factory, pki: Pki, sink: Sink, dns_server: ThrowawayDNS,
             policy_server: PolicyServer) -> Iterator[RunningServer]:
    """Mailkeep whose direct deliveries go to the smtp-sink MX port."""
    server = start_mailkeep(tmp_path_factory.mktemp("mk-plain"), smtp_port=sink.port,
                            dns_server=dns_server, https_port=policy_server.https.port,
                            ca_file=pki.ca.ca_file)
    yield server
    server.stop()


# -- helpers ----------------------------------------------------------------------------------

def submit(server: RunningServer, to: str) -> str:
    """Send one message as SENDER over 587 (STARTTLS, AUTH); return its unique Subject."""
    subject = f"direct {uuid.uuid4().hex[:12]}"
    body = (f"From: Demo <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\n"
            "Hello from the direct delivery test.\r\n").encode()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=20) as client:
        client.starttls(context=context)
        client.login(SENDER, PASSWORD)
        refused = client.sendmail(SENDER, [to], body)
    assert refused == {}
    return subject


def in_maildir(postfix: ThrowawayPostfix, subject: str) -> bytes | None:
    for message in postfix.maildir_messages():
        if f"Subject: {subject}".encode() in message:
            return message
    return None


def queue_list(server: RunningServer) -> str:
    result = server.cli("queue", "list")
    assert result.returncode == 0, result.stderr
    return result.stdout


def queue_block(server: RunningServer, recipient: str) -> str | None:
    """The `mailkeep queue list` block (sender line, reasons, recipients) naming recipient."""
    for block in queue_list(server).split("\n\n"):
        if any(line.strip() == recipient for line in block.splitlines()):
            return block
    return None


def delete_queued(server: RunningServer, recipient: str) -> None:
    """Remove the message waiting for recipient (so its retries stop), no bounce."""
    block = queue_block(server, recipient)
    assert block is not None, queue_list(server)
    ids = [line.split()[0].rstrip("!") for line in block.splitlines()
           if line[:1].isalnum()]
    assert len(ids) == 1, block
    result = server.cli("queue", "delete", ids[0])
    assert result.returncode == 0, result.stderr
    assert queue_block(server, recipient) is None


def tls_results(server: RunningServer) -> list[dict]:
    directory = server.data_dir / "tls-results"
    if not directory.is_dir():
        return []
    lines = []
    for path in sorted(directory.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def delivery_log(server: RunningServer, recipient: str) -> list[str]:
    return [line for line in server.log_text().splitlines()
            if "msg=delivery " in line and f"to={recipient}" in line]


def attempts(server: RunningServer, recipient: str) -> int:
    return len(delivery_log(server, recipient))


def dsn_for(server: RunningServer, subject: str) -> email.message.EmailMessage | None:
    for raw in server.messages(SENDER):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        if "multipart/report" in message.get_content_type() and subject.encode() in raw:
            return message
    return None


def status_fields(report: email.message.EmailMessage) -> dict[str, str]:
    """The per-recipient fields of the message/delivery-status part (RFC 3464 §2.3)."""
    for part in report.walk():
        if part.get_content_type() == "message/delivery-status":
            for block in part.get_payload():
                if "Final-Recipient" in block:
                    return {name: str(value) for name, value in block.items()}
    raise AssertionError(f"no per-recipient status in {report.as_string()[:2000]}")


def context_of(server: RunningServer, postfix: ThrowawayPostfix | None = None
               ) -> Callable[[], str]:
    def describe() -> str:
        parts = [f"--- queue ---\n{queue_list(server)}",
                 "--- mailkeep log (tail) ---\n" + "\n".join(server.log_text().splitlines()[-30:])]
        if postfix is not None:
            parts.append("--- postfix log (tail) ---\n"
                         + "\n".join(postfix.log_text().splitlines()[-20:]))
        return "\n".join(parts)
    return describe


# -- 1. DANE (RFC 7672) -----------------------------------------------------------------------

def test_dane_destination_gets_mail_over_authenticated_tls(
        mk: RunningServer, destination: ThrowawayPostfix) -> None:
    subject = submit(mk, "alice@dane.test")
    message = wait_for(lambda: in_maildir(destination, subject), "the message at the DANE MX",
                       context=context_of(mk, destination))
    # Postfix's own Received header: the message came over TLS, not in plaintext.
    received = message.split(b"\n\n", 1)[0].decode(errors="replace")
    assert re.search(r"from mx\.example\.test .*\(using TLSv1\.[23] with cipher", received,
                     re.S), received
    result = wait_for(lambda: [r for r in tls_results(mk) if r["domain"] == "dane.test"],
                      "a TLS result for dane.test")
    assert result[-1]["policy"] == "tlsa"
    assert result[-1]["result"] == "success"
    assert result[-1]["mx"] == "mx.dane.test"
    assert any("status=delivered" in line for line in delivery_log(mk, "alice@dane.test"))
    wait_for(lambda: queue_block(mk, "alice@dane.test") is None, "the queue to let go of it")


def test_dane_mismatch_defers_and_never_sends_unverified(
        mk: RunningServer, destination: ThrowawayPostfix) -> None:
    recipient = "bob@badtlsa.test"
    subject = submit(mk, recipient)
    # Two attempts, so the retry too is seen refusing the certificate.
    wait_for(lambda: attempts(mk, recipient) >= 2, "two delivery attempts",
             context=context_of(mk, destination))
    block = queue_block(mk, recipient)
    assert block is not None, queue_list(mk)
    assert "TLSA" in block, block
    assert all("status=deferred" in line for line in delivery_log(mk, recipient))
    failures = [r for r in tls_results(mk) if r["domain"] == "badtlsa.test"]
    assert failures and all(r["policy"] == "tlsa" and r["result"] == "failure"
                            for r in failures), failures
    # Postfix accepts any address of badtlsa.test, in plaintext too: had Mailkeep fallen
    # back to plaintext or to unverified TLS, the message would be in the Maildir.
    assert in_maildir(destination, subject) is None
    delete_queued(mk, recipient)


# -- 2. MTA-STS (RFC 8461) --------------------------------------------------------------------

def test_mta_sts_enforce_delivers_over_verified_tls(
        mk: RunningServer, destination: ThrowawayPostfix, policy_server: PolicyServer) -> None:
    subject = submit(mk, "carol@sts.test")
    message = wait_for(lambda: in_maildir(destination, subject), "the message at the STS MX",
                       context=context_of(mk, destination))
    received = message.split(b"\n\n", 1)[0].decode(errors="replace")
    assert "(using TLSv1." in received, received
    assert policy_server.https.count(POLICY_PATH, host="mta-sts.sts.test") >= 1
    result = [r for r in tls_results(mk) if r["domain"] == "sts.test"]
    assert result and result[-1]["policy"] == "sts" and result[-1]["result"] == "success", \
        result


def test_mta_sts_mx_not_in_policy_is_not_used(
        mk: RunningServer, destination: ThrowawayPostfix) -> None:
    recipient = "dave@stsbad.test"
    subject = submit(mk, recipient)
    wait_for(lambda: attempts(mk, recipient) >= 1, "a delivery attempt",
             context=context_of(mk, destination))
    block = queue_block(mk, recipient)
    assert block is not None, queue_list(mk)
    assert "MTA-STS" in block and "mx.stsbad.test" in block, block
    failures = [r for r in tls_results(mk) if r["domain"] == "stsbad.test"]
    assert failures and failures[-1]["policy"] == "sts", failures
    assert failures[-1]["result"] == "failure"
    assert in_maildir(destination, subject) is None
    delete_queued(mk, recipient)


def test_mta_sts_certificate_not_naming_the_mx_defers(
        mk: RunningServer, destination: ThrowawayPostfix) -> None:
    recipient = "erin@stscert.test"
    subject = submit(mk, recipient)
    wait_for(lambda: attempts(mk, recipient) >= 2, "two delivery attempts",
             context=context_of(mk, destination))
    block = queue_block(mk, recipient)
    assert block is not None, queue_list(mk)
    assert "certificate" in block.lower(), block
    failures = [r for r in tls_results(mk) if r["domain"] == "stscert.test"]
    assert failures and all(r["policy"] == "sts" and r["result"] == "failure"
                            for r in failures), failures
    # Enforce mode never falls back to plaintext the way opportunistic TLS would.
    assert in_maildir(destination, subject) is None
    delete_queued(mk, recipient)


# -- 3. Null MX (RFC 7505) and NXDOMAIN: immediate bounces -------------------------------------

@pytest.mark.parametrize("recipient, status", [
    ("frank@nullmx.test", "5.1.10"),
    ("grace@nosuch.plain.test", "5.1.2"),
])
def test_undeliverable_domain_bounces_at_once(mk: RunningServer, recipient: str,
                                              status: str) -> None:
    subject = submit(mk, recipient)
    report = wait_for(lambda: dsn_for(mk, subject), f"a bounce for {recipient}",
                      timeout=10, context=context_of(mk))
    fields = status_fields(report)
    assert fields.get("Status") == status, fields
    assert fields.get("Action") == "failed", fields
    assert recipient in fields.get("Final-Recipient", ""), fields
    assert report["From"].addresses[0].username.upper() == "MAILER-DAEMON"
    lines = delivery_log(mk, recipient)
    assert len(lines) == 1 and "status=failed" in lines[0], lines
    wait_for(lambda: queue_block(mk, recipient) is None, "the bounced message to leave the queue")


# -- 4. Opportunistic TLS (RFC 7435): no STARTTLS, delivered anyway ----------------------------

def test_mx_without_starttls_gets_mail_in_plaintext(mk_plain: RunningServer,
                                                    sink: Sink) -> None:
    sink.accept_all()
    subject = submit(mk_plain, "heidi@plain.test")
    envelope, message = wait_for(lambda: sink.find(subject), "the message at smtp-sink",
                                 context=context_of(mk_plain))
    assert envelope["X-Rcpt-Args"] == ["<heidi@plain.test>"]
    assert envelope["X-Mail-Args"][0].startswith(f"<{SENDER}>")
    assert b"Hello from the direct delivery test." in message
    # ::1 refused the connection; the IPv4 address got the mail.
    assert re.search(r"connection failed.* peer=mx\.plain\.test\[::1\]", mk_plain.log_text())
    result = [r for r in tls_results(mk_plain) if r["domain"] == "plain.test"]
    assert result and result[-1]["result"] == "no-tls" and result[-1]["policy"] == "none", \
        result
    assert any("status=delivered" in line for line in delivery_log(mk_plain,
                                                                   "heidi@plain.test"))


# -- 5. A 4xx is retried until the MX accepts ---------------------------------------------------

def test_temporary_rejection_is_retried_until_accepted(mk_plain: RunningServer,
                                                       sink: Sink) -> None:
    recipient = "ivan@later.test"
    sink.start(soft_reject="RCPT")
    subject = submit(mk_plain, recipient)
    wait_for(lambda: attempts(mk_plain, recipient) >= 2, "two deferred attempts",
             context=context_of(mk_plain))
    lines = delivery_log(mk_plain, recipient)
    assert all("status=deferred" in line and "code=4" in line for line in lines), lines
    block = queue_block(mk_plain, recipient)
    assert block is not None and re.search(r"\(450 4\.\d+\.\d+ ", block), block
    assert sink.find(subject) is None

    sink.start()  # the same port, now accepting
    envelope, message = wait_for(lambda: sink.find(subject), "the retried message",
                                 context=context_of(mk_plain))
    assert envelope["X-Rcpt-Args"] == [f"<{recipient}>"]
    assert b"Hello from the direct delivery test." in message
    wait_for(lambda: queue_block(mk_plain, recipient) is None, "the queue to let go of it")
    final = delivery_log(mk_plain, recipient)
    assert "status=delivered" in final[-1] and len(final) >= 3, final


# -- DANE and MTA-STS never fall back to plaintext ----------------------------------------------

@pytest.mark.parametrize("recipient, policy_type", [
    ("judy@danesink.test", "tlsa"),   # RFC 7672 §2.2: TLSA records mean TLS is mandatory
    ("mallory@stssink.test", "sts"),  # RFC 8461 §4.2: enforce needs STARTTLS
])
def test_required_tls_without_starttls_defers(mk_plain: RunningServer, sink: Sink,
                                              recipient: str, policy_type: str) -> None:
    sink.accept_all()
    subject = submit(mk_plain, recipient)
    wait_for(lambda: attempts(mk_plain, recipient) >= 2, "two delivery attempts",
             context=context_of(mk_plain))
    assert all("status=deferred" in line for line in delivery_log(mk_plain, recipient))
    block = queue_block(mk_plain, recipient)
    assert block is not None and "STARTTLS" in block, block
    domain = recipient.partition("@")[2]
    failures = [r for r in tls_results(mk_plain) if r["domain"] == domain]
    assert failures and all(r["policy"] == policy_type and r["result"] == "failure"
                            for r in failures), failures
    # smtp-sink takes mail from anyone: had Mailkeep sent in plaintext, it would be here.
    assert sink.find(subject) is None
    delete_queued(mk_plain, recipient)
