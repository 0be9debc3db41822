"""The inbound policy on the wire: a real `mailkeep serve` whose port 25 judges mail from
outside with SPF, DKIM, DMARC, ARC and iprev against a real local DNS (nsd + unbound),
and applies the seeds' restrictions and tables.

Clients connect from different loopback addresses (127.0.0.2, 127.0.0.3, ...) so that
each plays another host on the Internet: loopback is not trusted here
(``trusted_networks = []``). Three listeners share the server:

- ``policy_port``: the default policy (minus greylisting, which gets its own listener);
- ``seeds_port``: seed 000's tables as its ruleset (helo_reject_domains,
  sender_domain_reject, sender_access.pcre, invalid_recipients, header_checks.pcre) and
  seed 002's "Plz stop sending SPAM" header checks;
- ``grey_port``: greylisting alone, with a one-second delay.
"""

from __future__ import annotations

import base64
import email.utils
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.integration.conftest import MAILKEEP, RunningServer, free_ports, wait_for_port
from tests.support.clamd import EICAR, EICAR_DETECTED_AS, RunningClamd
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.rspamd import TEST_ADD_HEADER, TEST_HEADER, RunningRspamd

import dkim

FIXTURES = Path(__file__).parent.parent / "policy" / "fixtures"

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = _KEY.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
PUBLIC_B64 = base64.b64encode(_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


def _txt(text: str) -> str:
    """A TXT record value split into strings of at most 255 characters."""
    return " ".join(f'"{text[i:i + 250]}"' for i in range(0, len(text), 250))


# good.test: SPF allows 127.0.0.2 and 127.0.0.3, DKIM key, DMARC p=reject.
# bad.test: SPF -all, DMARC p=reject. quar.test: SPF -all, DMARC p=quarantine.
# none.test: MX only, no SPF, no DMARC. nullmx.test: a null MX (RFC 7505).
ZONES = [
    Zone("good.test", "\n".join([
        "@ MX 10 mx", "mx A 127.0.0.2",
        '@ TXT "v=spf1 ip4:127.0.0.2 ip4:127.0.0.3 -all"',
        f"sel._domainkey TXT {_txt('v=DKIM1; k=rsa; p=' + PUBLIC_B64)}",
        '_dmarc TXT "v=DMARC1; p=reject"'])),
    Zone("bad.test", "\n".join([
        "@ MX 10 mx", "mx A 127.0.0.9", '@ TXT "v=spf1 -all"',
        '_dmarc TXT "v=DMARC1; p=reject"'])),
    Zone("quar.test", "\n".join([
        "@ MX 10 mx", "mx A 127.0.0.9", '@ TXT "v=spf1 -all"',
        '_dmarc TXT "v=DMARC1; p=quarantine"'])),
    Zone("none.test", "@ MX 10 mx\nmx A 127.0.0.9"),
    Zone("nullmx.test", "@ MX 0 ."),
    # 127.0.0.5 is listed; the DNSBL answers 127.0.0.2 as lists do.
    Zone("dnsbl.test", "5.0.0.127 A 127.0.0.2"),
    # Reverse DNS of the client addresses: 127.0.0.2 forward-confirms, 127.0.0.4 not.
    Zone("0.0.127.in-addr.arpa", "2 PTR mx.good.test.\n4 PTR nowhere.none.test."),
]

CONFIG = """\
hostname = "mx.example.test"
data_dir = "data"

[log]
file = "{log}"
level = "debug"

[smtp]
error_sleep = "0.1s"
command_timeout = "20s"
soft_error_limit = 20
hard_error_limit = 40

[delivery]
resolvers = ["{dns}"]

[policy]
trusted_networks = []
greet_wait = "0.4s"
received_spf = true
rules = [
  "reject_pregreet", "dnsbl", "reject_unauth_pipelining",
  "reject_invalid_helo_hostname", "reject_non_fqdn_helo_hostname", "reject_our_helo",
  "reject_non_fqdn_sender", "reject_unknown_sender_domain",
  "reject_spoofed_own_domain", "dmarc",
]

[policy.rulesets]
seeds = [
  "check_helo_access hash:{fixtures}/helo_reject_domains",
  "check_sender_access hash:{fixtures}/sender_domain_reject",
  "check_sender_access pcre:{fixtures}/sender_access.pcre",
  "check_recipient_access hash:{fixtures}/invalid_recipients bare_keys=REJECT",
  "header_checks pcre:{fixtures}/header_checks.pcre",
  "header_checks pcre:{fixtures}/plz_stop_spam_2014",
]
grey = ["greylist"]
scan = ["clamav", "rspamd"]

[policy.clamav]
socket = "{clamd}"

[policy.rspamd]
url = "{rspamd}"

[policy.dnsbl]
sites = ["dnsbl.test"]
check_private_addresses = true

[policy.greylist]
delay = "1s"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{policy_port}"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{seeds_port}"
policy = "seeds"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{grey_port}"
policy = "grey"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{scan_port}"
policy = "scan"

[domains."example.test"]
[domains."example.com"]

[accounts."demo@example.test"]
[accounts."rolf@example.com"]
[aliases]
"adobe@example.com" = "rolf@example.com"
"""


class Server(RunningServer):
    ports: dict[str, int]


@pytest.fixture(scope="module")
def dns_server() -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS(ZONES) as server:
        yield server


@pytest.fixture(scope="module")
def scanners() -> Iterator[tuple[RunningClamd, RunningRspamd]]:
    with RunningClamd() as clamd, RunningRspamd() as rspamd:
        yield clamd, rspamd


@pytest.fixture(scope="module")
def server(dns_server: ThrowawayDNS, scanners: tuple[RunningClamd, RunningRspamd],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("policy")
    policy_port, seeds_port, grey_port, scan_port = free_ports(4)
    clamd, rspamd = scanners
    host, port = dns_server.resolver_address
    config = directory / "mailkeep.toml"
    log = directory / "mailkeep.log"
    config.write_text(CONFIG.format(log=log, dns=f"{host}:{port}", fixtures=FIXTURES,
                                    policy_port=policy_port, seeds_port=seeds_port,
                                    grey_port=grey_port, scan_port=scan_port,
                                    clamd=clamd.socket_path, rspamd=rspamd.url))
    running = Server(dir=directory, config=config, smtp_port=policy_port,
                     smtps_port=0, lmtp_socket=directory / "none", log=log)
    running.ports = {"policy": policy_port, "seeds": seeds_port, "grey": grey_port,
                     "scan": scan_port}
    import subprocess
    running.proc = subprocess.Popen([MAILKEEP, "serve", "--config", str(config)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_port(policy_port, proc=running.proc)
    try:
        yield running
    finally:
        running.stop()


def _message(sender: str, *, subject: str = "hello", date: str | None = None,
             extra: str = "", to: str = "demo@example.test") -> bytes:
    date = date or email.utils.formatdate(localtime=True)
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{time.monotonic_ns()}@client.test>\r\n{extra}\r\n"
            "Body text.\r\n").encode()


def _signed(message: bytes, domain: str = "good.test") -> bytes:
    signature = dkim.sign(message, b"sel", domain.encode(), PRIVATE_PEM,
                          include_headers=[b"from", b"to", b"subject", b"date"])
    return signature + message


def _client(server: Server, source: str, listener: str = "policy",
            helo: str = "mx.good.test") -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=20, source_address=(source, 0))
    client.connect("127.0.0.1", server.ports[listener])
    client.ehlo(helo)
    return client


def _send(server: Server, source: str, sender: str, recipient: str, message: bytes, *,
          listener: str = "policy", helo: str = "mx.good.test") -> tuple[int, str]:
    """MAIL, RCPT, DATA; the first refusal's (code, text), or (250, text)."""
    with _client(server, source, listener, helo) as client:
        code, text = client.mail(sender)
        if code >= 300:
            return code, text.decode()
        code, text = client.rcpt(recipient)
        if code >= 300:
            return code, text.decode()
        code, text = client.data(message)
        return code, text.decode()


def _stored(server: Server, account: str, folder: str = "INBOX", *, expect: int = 1,
            timeout: float = 10.0) -> list[bytes]:
    """The messages in an account's folder (an mbox export), waiting for ``expect``."""
    import subprocess
    import tempfile
    deadline = time.monotonic() + timeout
    while True:
        with tempfile.TemporaryDirectory(dir=server.dir) as scratch:
            dest = Path(scratch) / "out"
            subprocess.run([MAILKEEP, "export", "--config", str(server.config), "--format",
                            "mbox", "--no-progress", account, str(dest)],
                           capture_output=True, timeout=30, check=True)
            mbox = dest / f"{folder}.mbox"
            data = mbox.read_bytes() if mbox.exists() else b""
        messages = [m for m in (b"\n" + data).split(b"\nFrom ") if m.strip()]
        if len(messages) >= expect or time.monotonic() > deadline:
            return messages
        time.sleep(0.2)


# -- sender authentication ---------------------------------------------------------------


def test_dmarc_pass_is_delivered_with_authentication_results(server: Server) -> None:
    forged = "Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n"
    other = "Authentication-Results: elsewhere.test; spf=pass\r\n"
    message = _signed(_message("alice@good.test", subject="signed one",
                               extra=forged + other))
    code, _ = _send(server, "127.0.0.2", "alice@good.test", "demo@example.test", message)
    assert code == 250
    (stored,) = [m for m in _stored(server, "demo@example.test") if b"signed one" in m]
    head = stored.split(b"\n\n", 1)[0].decode()
    ours = [line for line in head.replace("\n\t", " ").replace("\n ", " ").split("\n")
            if line.startswith("Authentication-Results: mx.example.test")]
    assert len(ours) == 1, head       # the forged one was removed, ours added once
    result = ours[0]
    assert "spf=pass" in result and "smtp.mailfrom=alice@good.test" in result
    assert "dkim=pass" in result and "header.d=good.test" in result
    assert "dmarc=pass" in result and "header.from=good.test" in result
    assert "iprev=pass" in result
    assert "bank.test" not in head
    assert "Authentication-Results: elsewhere.test; spf=pass" in head   # not ours: kept
    assert "\nReceived-SPF: pass " in head


def test_dmarc_reject_policy_refuses_at_end_of_data(server: Server) -> None:
    code, text = _send(server, "127.0.0.2", "mallory@bad.test", "demo@example.test",
                       _message("mallory@bad.test"))
    assert code == 550
    assert text.startswith("5.7.1") and "DMARC" in text and "bad.test" in text


def test_dmarc_quarantine_policy_delivers_to_junk(server: Server) -> None:
    code, _ = _send(server, "127.0.0.2", "q@quar.test", "demo@example.test",
                    _message("q@quar.test", subject="quarantined one"))
    assert code == 250
    junk = _stored(server, "demo@example.test", "Junk")
    assert any(b"quarantined one" in m and b"dmarc=fail" in m for m in junk)
    inbox = _stored(server, "demo@example.test", expect=0, timeout=0)
    assert not any(b"quarantined one" in m for m in inbox)


def test_our_domain_from_an_outsider_is_refused_unless_authenticated(server: Server) -> None:
    code, text = _send(server, "127.0.0.3", "boss@example.test", "demo@example.test",
                       _message("boss@example.test"))
    assert code == 550 and text.startswith("5.7.1")
    assert "example.test" in text


# -- client, HELO and sender restrictions ----------------------------------------------------


@pytest.mark.parametrize(("helo", "code", "status"), [
    ("localhost", 504, "5.5.2"),             # reject_non_fqdn_helo_hostname
    ("bad_name!", 501, "5.5.2"),             # reject_invalid_helo_hostname
    ("mx.example.test", 550, "5.7.1"),       # reject_our_helo: our host name
    ("relay.example.test", 550, "5.7.1"),    # ... and our domains
])
def test_helo_restrictions(server: Server, helo: str, code: int, status: str) -> None:
    with _client(server, "127.0.0.2", helo=helo) as client:
        assert client.mail("alice@good.test")[0] == 250
        got, text = client.rcpt("demo@example.test")
        assert (got, text.decode()[:5]) == (code, status)


@pytest.mark.parametrize(("sender", "code", "status"), [
    ("someone@nxdomain.none.test", 550, "5.1.8"),   # no such domain
    ("someone@nullmx.test", 550, "5.7.27"),          # null MX (RFC 7505 §4.2)
    ("someone@localhost", 504, "5.5.2"),             # not fully qualified
])
def test_sender_restrictions(server: Server, sender: str, code: int, status: str) -> None:
    with _client(server, "127.0.0.2") as client:
        assert client.mail(sender)[0] == 250
        got, text = client.rcpt("demo@example.test")
        assert (got, text.decode()[:len(status)]) == (code, status), text


def test_dnsbl_listed_client_is_refused(server: Server) -> None:
    with _client(server, "127.0.0.5") as client:
        client.mail("alice@good.test")
        code, text = client.rcpt("demo@example.test")
    assert code == 554
    assert b"blocked using dnsbl.test" in text and b"127.0.0.5" in text


def test_client_that_talks_before_the_greeting_is_refused(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.ports["policy"]), timeout=10,
                                  source_address=("127.0.0.6", 0)) as sock:
        sock.sendall(b"EHLO mx.good.test\r\n")    # before the greeting has ended
        data = b""
        while b"\r\n250 " not in data:
            data += sock.recv(4096)
        assert data.startswith(b"220-")
        sock.sendall(b"MAIL FROM:<alice@good.test>\r\nRCPT TO:<demo@example.test>\r\n")
        while data.count(b"\r\n") < 5 or not data.rstrip().split(b"\r\n")[-1][:3].isdigit() \
                or b"5.5.1" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert b"550 5.5.1 Protocol error" in data


def test_pipelining_without_ehlo_is_refused_at_data(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.ports["policy"]), timeout=10,
                                  source_address=("127.0.0.7", 0)) as sock:
        reader = sock.makefile("rb")
        while not reader.readline().startswith(b"220 "):
            pass
        sock.sendall(b"HELO mx.good.test\r\n")
        assert reader.readline().startswith(b"250")
        # HELO announces no PIPELINING: everything at once is a protocol violation.
        sock.sendall(b"MAIL FROM:<alice@good.test>\r\nRCPT TO:<demo@example.test>\r\n"
                     b"DATA\r\n")
        replies = [reader.readline() for _ in range(3)]
    # The RCPT that came with the pipelined group is refused, and so DATA has no
    # recipient (a client that pipelines after EHLO is fine: see the other tests).
    assert replies[1].startswith(b"554 5.5.0 Error: improper use of SMTP command pipelining")
    assert replies[2].startswith(b"554"), replies


# -- the seeds' tables --------------------------------------------------------------------


def test_seed_tables_on_the_wire(server: Server) -> None:
    old_date = "Mon, 5 Mar 2018 10:00:00 +0100"   # the seed rejects dates from 2020 on
    # helo_reject_domains: "example.com REJECT User unknown in local recipient table".
    with _client(server, "127.0.0.2", "seeds", helo="example.com") as client:
        client.mail("alice@good.test")
        code, text = client.rcpt("rolf@example.com")
        assert code == 554 and b"Helo command rejected: User unknown" in text
    # sender_domain_reject (hash:) and sender_access.pcre.
    code, text = _send(server, "127.0.0.2", "x@gutemails.ga", "rolf@example.com",
                       b"", listener="seeds")
    assert code == 554 and "Sender address rejected: User unknown" in text
    code, text = _send(server, "127.0.0.2", "gautamgovinda@outlook.com", "rolf@example.com",
                       b"", listener="seeds")
    assert code == 554 and "User unknown in local recipient table" in text
    # invalid_recipients: the address exists here (an alias), the table refuses it.
    code, text = _send(server, "127.0.0.2", "alice@good.test", "adobe@example.com", b"",
                       listener="seeds")
    assert code == 554 and "Recipient address rejected" in text
    # header_checks.pcre: a date in the future; IGNORE of Disposition-Notification-To.
    code, text = _send(server, "127.0.0.2", "alice@good.test", "rolf@example.com",
                       _message("alice@good.test", to="rolf@example.com"), listener="seeds")
    assert code == 550 and "Your email got a date in the future." in text
    code, _ = _send(server, "127.0.0.2", "alice@good.test", "rolf@example.com",
                    _message("alice@good.test", to="rolf@example.com", date=old_date,
                             subject="seed ok",
                             extra="Disposition-Notification-To: <alice@good.test>\r\n"),
                    listener="seeds")
    assert code == 250
    (stored,) = [m for m in _stored(server, "rolf@example.com") if b"seed ok" in m]
    assert b"Disposition-Notification-To" not in stored
    # seed 002: "Plz stop sending SPAM".
    code, text = _send(server, "127.0.0.2", "alice@good.test", "rolf@example.com",
                       _message("alice@good.test", to="rolf@example.com", date=old_date,
                                extra="X-Origin: massnews.gr\r\n"), listener="seeds")
    assert code == 550 and "Plz stop sending SPAM id=1" in text


# -- greylisting ------------------------------------------------------------------------------


def test_greylisting_defers_the_first_attempt_and_passes_the_retry(server: Server) -> None:
    message = _message("alice@none.test", subject="grey")
    code, text = _send(server, "127.0.0.8", "alice@none.test", "demo@example.test", message,
                       listener="grey")
    assert code == 450 and text.startswith("4.7.1")
    code, _ = _send(server, "127.0.0.8", "alice@none.test", "demo@example.test", message,
                    listener="grey")
    assert code == 450                      # too early: the timer does not restart
    time.sleep(1.2)
    code, _ = _send(server, "127.0.0.8", "alice@none.test", "demo@example.test", message,
                    listener="grey")
    assert code == 250


# -- virus scanning and rspamd ---------------------------------------------------------------


GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def test_virus_is_refused_with_its_name_and_clean_mail_passes(server: Server) -> None:
    infected = _message("alice@good.test", subject="infected").replace(
        b"Body text.", EICAR)
    code, text = _send(server, "127.0.0.2", "alice@good.test", "demo@example.test", infected,
                       listener="scan")
    assert code == 550 and text.startswith("5.7.1") and EICAR_DETECTED_AS in text
    code, _ = _send(server, "127.0.0.2", "alice@good.test", "demo@example.test",
                    _message("alice@good.test", subject="clean scanned"), listener="scan")
    assert code == 250
    (stored,) = [m for m in _stored(server, "demo@example.test") if b"clean scanned" in m]
    assert b"X-Virus-Scanned: clamd; clean" in stored
    assert b"X-Spamd-Result: default: False" in stored


def test_rspamd_actions_on_the_wire(server: Server) -> None:
    spam = _message("alice@good.test", subject="gtube").replace(b"Body text.",
                                                                GTUBE.encode())
    code, text = _send(server, "127.0.0.2", "alice@good.test", "demo@example.test", spam,
                       listener="scan")
    assert code == 554 and text.startswith("5.7.1")
    tagged = _message("alice@good.test", subject="tag me",
                      extra=f"{TEST_HEADER}: {TEST_ADD_HEADER}\r\n")
    code, _ = _send(server, "127.0.0.2", "alice@good.test", "demo@example.test", tagged,
                    listener="scan")
    assert code == 250
    (stored,) = [m for m in _stored(server, "demo@example.test") if b"tag me" in m]
    assert b"X-Spam: Yes" in stored


DROP_CONFIG = """\
hostname = "mx.example.test"
data_dir = "data"

[log]
file = "{log}"

[delivery]
resolvers = ["{dns}"]

[policy]
trusted_networks = []
rules = ["dnsbl"]

[policy.dnsbl]
sites = ["dnsbl.test"]
action = "drop"
check_private_addresses = true

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{port}"

[domains."example.test"]
[accounts."demo@example.test"]
"""


def test_dnsbl_drop_answers_521_instead_of_the_greeting(
        dns_server: ThrowawayDNS, tmp_path: Path) -> None:
    import subprocess
    (port,) = free_ports(1)
    host, dns_port = dns_server.resolver_address
    config = tmp_path / "mailkeep.toml"
    config.write_text(DROP_CONFIG.format(log=tmp_path / "log", dns=f"{host}:{dns_port}",
                                         port=port))
    running = Server(dir=tmp_path, config=config, smtp_port=port, smtps_port=0,
                     lmtp_socket=tmp_path / "none", log=tmp_path / "log")
    running.proc = subprocess.Popen([MAILKEEP, "serve", "--config", str(config)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=running.proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10,
                                      source_address=("127.0.0.5", 0)) as sock:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        # One complete reply line and the connection closed: no 220 at all.
        assert data.startswith(b"521 5.7.1 ") and data.endswith(b"\r\n"), data
        assert b"blocked using dnsbl.test" in data
        with _client(running_ports(running, port), "127.0.0.2") as client:   # not listed
            assert client.mail("alice@good.test")[0] == 250
    finally:
        running.stop()


def running_ports(server: Server, port: int) -> Server:
    server.ports = {"policy": port}
    return server
