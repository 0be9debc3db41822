"""The HTTP and HTTPS listeners of a real `mailkeep serve`: client autoconfiguration
(Thunderbird, Outlook, Apple) and the MTA-STS policy, fetched over real sockets with the
Host names clients use; refusals (404, 413, banned clients, connection limits); and a
certificate reload that reaches HTTPS without a restart.

HTTPS is verified against the server's own self-signed certificates
(data_dir/tls/selfsigned-*.pem, for mx.example.test), or a test CA where a test needs the
autoconfig./mta-sts. names in the certificate (curl, which sends those names in SNI).
"""

from __future__ import annotations

import asyncio
import plistlib
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import defusedxml.ElementTree as SafeET
import pytest
from tests.integration.conftest import RunningServer, free_ports, make_server
from tests.support.certs import IssuedCert, TestCA

from mailkeep.web.autoconfig import OUTLOOK_RESPONSE_NS
from mailkeep.web.server import MAX_CONNECTIONS_PER_IP

pytestmark = pytest.mark.timeout(180)

#: Every single network wait of these tests ends by then.
TIMEOUT = 15.0
#: The server re-reads the ban file every second; give it a little more.
BAN_DELAY = 1.6
POLICY = (b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\n"
          b"max_age: 604800\r\n")


def web_extra(http: int, https: int, tls: str = "") -> str:
    return f"""
[[listeners]]
protocol = "http"
address = "127.0.0.1:{http}"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{https}"

[dns]
mta_sts_mode = "enforce"
mta_sts_max_age = "7d"
{tls}
"""


class WebServer:
    """A RunningServer with its two web ports."""

    def __init__(self, directory: Path, *, tls: str = "", auth: str = "") -> None:
        self.http, self.https = free_ports(2)
        self.srv: RunningServer = make_server(directory, web_extra(self.http, self.https, tls))
        if auth:
            text = self.srv.config.read_text().replace("[auth]\n", "[auth]\n" + auth, 1)
            self.srv.config.write_text(text)

    def client_tls(self) -> ssl.SSLContext:
        """Trusts the server's self-signed certificates (ECDSA and RSA)."""
        context = ssl.create_default_context()
        for path in sorted((self.srv.data_dir / "tls").glob("selfsigned-*.pem")):
            context.load_verify_locations(cafile=str(path))
        return context

    def port(self, scheme: str) -> int:
        return self.https if scheme == "https" else self.http


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> WebServer:
    server = WebServer(tmp_path_factory.mktemp("web"))
    server.srv.start()
    yield server
    server.srv.stop()


async def fetch(web: WebServer, scheme: str, path: str, *, host: str, method: str = "GET",
                body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
    tls = web.client_tls() if scheme == "https" else False
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
            method, f"{scheme}://127.0.0.1:{web.port(scheme)}{path}", data=body,
            headers={"Host": host, **(headers or {})}, ssl=tls,
            server_hostname="mx.example.test" if scheme == "https" else None) as response:
        return response.status, dict(response.headers), await response.read()


def get(web: WebServer, scheme: str, path: str, **kwargs) -> tuple[int, dict[str, str], bytes]:
    return asyncio.run(fetch(web, scheme, path, **kwargs))


def autodiscover_body(address: str) -> bytes:
    return ('<?xml version="1.0" encoding="utf-8"?>\r\n<Autodiscover xmlns="http://schemas.'
            'microsoft.com/exchange/autodiscover/outlook/requestschema/2006"><Request>'
            f"<EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>"
            f"{OUTLOOK_RESPONSE_NS}</AcceptableResponseSchema></Request></Autodiscover>"
            ).encode()


SCHEMES = ["http", "https"]


# -- the documents ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_mta_sts_policy(web, scheme):
    status, headers, body = get(web, scheme, "/.well-known/mta-sts.txt",
                                host="mta-sts.example.test")
    assert status == 200
    assert headers["Content-Type"] == "text/plain"
    assert body == POLICY
    assert ("Strict-Transport-Security" in headers) == (scheme == "https")
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_thunderbird_autoconfig_on_its_host_and_the_well_known_path(web, scheme):
    srv = web.srv
    for path, host in [("/mail/config-v1.1.xml?emailaddress=demo%40example.test",
                        "autoconfig.example.test"),
                       ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress="
                        "demo%40example.test", "example.test")]:
        status, headers, body = get(web, scheme, path, host=host)
        assert status == 200, (path, host)
        assert headers["Content-Type"] == "application/xml; charset=utf-8"
        root = SafeET.fromstring(body, forbid_dtd=True)
        provider = root.find("emailProvider")
        assert root.get("version") == "1.1" and provider is not None
        assert provider.get("id") == "example.test"
        incoming = [(s.get("type"), s.findtext("hostname"), int(s.findtext("port")),
                     s.findtext("socketType"), s.findtext("username"),
                     s.findtext("authentication"))
                    for s in provider.findall("incomingServer")]
        # The test config turns CRAM-MD5 on: Thunderbird's "password-encrypted" first.
        auth = "password-encrypted"
        assert incoming == [
            ("imap", "mx.example.test", srv.imaps_port, "SSL", "%EMAILADDRESS%", auth),
            ("imap", "mx.example.test", srv.imap_port, "STARTTLS", "%EMAILADDRESS%", auth),
            ("pop3", "mx.example.test", srv.pop3s_port, "SSL", "%EMAILADDRESS%", auth),
            ("pop3", "mx.example.test", srv.pop3_port, "STARTTLS", "%EMAILADDRESS%", auth),
        ]
        outgoing = [(int(s.findtext("port")), s.findtext("socketType"))
                    for s in provider.findall("outgoingServer")]
        assert outgoing == [(srv.submissions_port, "SSL"), (srv.submission_port, "STARTTLS")]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_outlook_autodiscover(web, scheme):
    srv = web.srv
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml",
                 "/AUTODISCOVER/AUTODISCOVER.XML"):
        status, headers, body = get(web, scheme, path, host="autodiscover.example.test",
                                    method="POST", body=autodiscover_body("Demo@Example.test"),
                                    headers={"Content-Type": "text/xml"})
        assert status == 200, path
        assert headers["Content-Type"] == "text/xml; charset=utf-8"
        ns = {"o": OUTLOOK_RESPONSE_NS}
        account = SafeET.fromstring(body, forbid_dtd=True).find("o:Response/o:Account", ns)
        assert account is not None
        protocols = {p.findtext("o:Type", namespaces=ns): (
            p.findtext("o:Server", namespaces=ns), int(p.findtext("o:Port", namespaces=ns)),
            p.findtext("o:SSL", namespaces=ns), p.findtext("o:Encryption", namespaces=ns),
            p.findtext("o:LoginName", namespaces=ns), p.findtext("o:SPA", namespaces=ns))
            for p in account.findall("o:Protocol", ns)}
        assert protocols == {
            "IMAP": ("mx.example.test", srv.imaps_port, "on", "SSL", "demo@example.test", "off"),
            "POP3": ("mx.example.test", srv.pop3s_port, "on", "SSL", "demo@example.test", "off"),
            "SMTP": ("mx.example.test", srv.submissions_port, "on", "SSL", "demo@example.test",
                     "off"),
        }


@pytest.mark.parametrize("scheme", SCHEMES)
def test_apple_profile(web, scheme):
    srv = web.srv
    status, headers, body = get(web, scheme,
                                "/apple/profile.mobileconfig?email=leser%40b%C3%BCcher.test",
                                host="mx.example.test")
    assert status == 200
    assert headers["Content-Type"] == "application/x-apple-aspen-config"
    assert headers["Content-Disposition"] == \
        'attachment; filename="xn--bcher-kva.test.mobileconfig"'
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration"
    (mail,) = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAddress"] == "leser@xn--bcher-kva.test"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
            mail["IncomingMailServerUseSSL"]) == ("mx.example.test", srv.imaps_port, True)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"],
            mail["OutgoingMailServerUseSSL"]) == ("mx.example.test", srv.submissions_port, True)
    assert mail["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    # Asked again: the same file (stable UUIDs).
    assert get(web, scheme, "/apple/profile.mobileconfig?email=leser%40b%C3%BCcher.test",
               host="mx.example.test")[2] == body


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_not_found(web, scheme):
    for path, host in [
            ("/.well-known/mta-sts.txt", "mx.example.test"),
            ("/.well-known/mta-sts.txt", "mta-sts.elsewhere.test"),
            ("/mail/config-v1.1.xml?emailaddress=me%40elsewhere.test", "autoconfig.example.test"),
            ("/mail/config-v1.1.xml", "autoconfig.elsewhere.test"),
            ("/.well-known/autoconfig/mail/config-v1.1.xml", "mx.example.test"),
            ("/apple/profile.mobileconfig?email=me%40elsewhere.test", "mx.example.test"),
            ("/apple/profile.mobileconfig?email=%3Cscript%3E%40example.test", "mx.example.test"),
            ("/apple/profile.mobileconfig", "mx.example.test"),
            ("/index.html", "mx.example.test"),
            ("/.well-known/acme-challenge/" + "A" * 43, "mx.example.test")]:
        status, _headers, body = get(web, scheme, path, host=host)
        assert status == 404, (path, host)
        assert b"Traceback" not in body and b"elsewhere" not in body


@pytest.mark.parametrize("scheme", SCHEMES)
def test_autodiscover_errors_are_documents_not_server_errors(web, scheme):
    ns = {"o": OUTLOOK_RESPONSE_NS}
    for body, code in [(autodiscover_body("someone@elsewhere.test"), "500"),
                       (autodiscover_body("not an address"), "500"),
                       (b"<Autodiscover><Request>", "600"),
                       (b'<!DOCTYPE a [<!ENTITY b "c">]><Autodiscover/>', "600")]:
        status, _, answer = get(web, scheme, "/autodiscover/autodiscover.xml",
                                host="mx.example.test", method="POST", body=body)
        assert status == 200
        error = SafeET.fromstring(answer).find("o:Response/o:Error", ns)
        assert error is not None and error.findtext("o:ErrorCode", namespaces=ns) == code
    status, _, _ = get(web, scheme, "/autodiscover/autodiscover.xml", host="mx.example.test")
    assert status == 405


@pytest.mark.parametrize("scheme", SCHEMES)
def test_oversized_bodies_are_refused(web, scheme):
    for size in (17 * 1024, 70 * 1024):
        status, headers, _ = get(web, scheme, "/autodiscover/autodiscover.xml",
                                 host="mx.example.test", method="POST", body=b"<" * size)
        assert status == 413, size
        assert headers["X-Content-Type-Options"] == "nosniff"

    async def chunked() -> int:
        # No Content-Length: the body arrives in chunks and is cut off at the limit.
        async def pieces():
            for _ in range(100):
                yield b"x" * 1024
        tls = web.client_tls() if scheme == "https" else False
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                f"{scheme}://127.0.0.1:{web.port(scheme)}/autodiscover/autodiscover.xml",
                data=pieces(), ssl=tls,
                server_hostname="mx.example.test" if scheme == "https" else None) as response:
            return response.status
    assert asyncio.run(chunked()) == 413


def test_curl_fetches_the_policy_with_the_policy_name_in_sni(web):
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is missing: install Debian's curl (make apt-deps)")
    # SNI and certificate check for mx.example.test (the self-signed certificate's name),
    # Host mta-sts.example.test: what a proxy or an MX-named policy host would send.
    ca = web.srv.data_dir / "tls" / "selfsigned-ecdsa.pem"
    result = subprocess.run(
        [curl, "--silent", "--show-error", "--fail", "--max-time", str(int(TIMEOUT)),
         "--cacert", str(ca), "--resolve", f"mx.example.test:{web.https}:127.0.0.1",
         "-H", "Host: mta-sts.example.test",
         f"https://mx.example.test:{web.https}/.well-known/mta-sts.txt"],
        capture_output=True, timeout=TIMEOUT + 5)
    assert result.returncode == 0, result.stderr
    assert result.stdout == POLICY


def closed_without_a_byte(port: int, send: bytes = b"") -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        if send:
            sock.sendall(send)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def test_connections_beyond_the_per_address_limit_are_closed(web):
    held = []
    try:
        for _ in range(MAX_CONNECTIONS_PER_IP):
            held.append(socket.create_connection(("127.0.0.1", web.http), timeout=TIMEOUT))
        # The listener accepts in the order of the backlog; the last one admitted is open.
        time.sleep(0.3)
        assert closed_without_a_byte(web.http)
        log = web.srv.log_text()
        assert "limit=max_connections_per_ip" in log
        assert f"listener=http:127.0.0.1:{web.http}" in log
    finally:
        for sock in held:
            sock.close()
    # The places are free again.
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            status, _, _ = get(web, "http", "/.well-known/mta-sts.txt",
                               host="mta-sts.example.test")
            assert status == 200
            break
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_banned_client_is_closed_on_http_and_before_tls_on_https(tmp_path):
    web = WebServer(tmp_path / "mk", auth="ban_allow = []\n")
    web.srv.start()
    try:
        assert get(web, "https", "/.well-known/mta-sts.txt", host="mta-sts.example.test")[0] \
            == 200
        added = web.srv.cli("ban", "add", "127.0.0.1", "--for", "1h", "--reason", "test")
        assert added.returncode == 0, added.stderr
        time.sleep(BAN_DELAY)
        assert closed_without_a_byte(web.http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # A ClientHello gets no ServerHello: the connection is closed first.
        assert closed_without_a_byte(web.https, b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03")
        # Logged once per address and interval: for the first listener it tried.
        assert any("reason=banned" in line and f"listener=http:127.0.0.1:{web.http}" in line
                   for line in web.srv.log_text().splitlines())
    finally:
        web.srv.stop()


def served_certificate(port: int, ca: Path, name: str) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        return tls.getpeercert(binary_form=True)


def read_response(sock: ssl.SSLSocket) -> bytes:
    """One HTTP/1.1 response with a Content-Length, whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the end of the response"
        body += chunk
    return head + b"\r\n\r\n" + body


def wait_for_log(srv: RunningServer, text: str, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while srv.log_text().count(text) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not logged {count} times")


def test_reload_with_new_certificate_files_reaches_https_and_curl_checks_the_names(tmp_path):
    ca = TestCA.create(tmp_path / "ca")
    names = ["mx.example.test", "mta-sts.example.test", "autoconfig.example.test"]
    first: IssuedCert = ca.issue(names, stem="first")
    second: IssuedCert = ca.issue(names, stem="second")
    tls = f'\n[tls]\ncert = "{first.cert_file}"\nkey = "{first.key_file}"\n'
    web = WebServer(tmp_path / "mk", tls=tls)
    web.srv.start()
    try:
        assert served_certificate(web.https, ca.ca_file, "mta-sts.example.test") == \
            first.cert_der
        # curl sends the policy host's name in SNI and Host, and checks the certificate.
        curl = shutil.which("curl")
        if curl is None:
            pytest.fail("curl is missing: install Debian's curl (make apt-deps)")
        for host, path, expect in [
                ("mta-sts.example.test", "/.well-known/mta-sts.txt", POLICY),
                ("autoconfig.example.test",
                 "/mail/config-v1.1.xml?emailaddress=demo%40example.test", b"<clientConfig")]:
            result = subprocess.run(
                [curl, "--silent", "--show-error", "--fail", "--max-time", str(int(TIMEOUT)),
                 "--cacert", str(ca.ca_file), "--resolve", f"{host}:{web.https}:127.0.0.1",
                 f"https://{host}:{web.https}{path}"], capture_output=True, timeout=TIMEOUT + 5)
            assert result.returncode == 0, result.stderr
            assert expect in result.stdout

        # An open keep-alive connection, then the config names new files and is reloaded.
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        with socket.create_connection(("127.0.0.1", web.https), timeout=TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname="mx.example.test") as kept:
            request = (b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n"
                       b"Host: mta-sts.example.test\r\n\r\n")
            kept.sendall(request)
            assert read_response(kept).startswith(b"HTTP/1.1 200")
            text = web.srv.config.read_text()
            web.srv.config.write_text(text.replace(str(first.cert_file), str(second.cert_file))
                                      .replace(str(first.key_file), str(second.key_file)))
            assert web.srv.proc is not None
            web.srv.proc.send_signal(signal.SIGHUP)
            wait_for_log(web.srv, "msg=reloaded", 1)
            assert served_certificate(web.https, ca.ca_file, "mx.example.test") == \
                second.cert_der
            # The connection from before the reload still answers.
            kept.sendall(request)
            answer = read_response(kept)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(POLICY)
            assert kept.getpeercert(binary_form=True) == first.cert_der
    finally:
        web.srv.stop()


def test_apple_profile_is_signed_with_a_ca_certificate(tmp_path):
    ca = TestCA.create(tmp_path / "ca")
    issued = ca.issue(["mx.example.test"], stem="mx")
    tls = f'\n[tls]\ncert = "{issued.cert_file}"\nkey = "{issued.key_file}"\n'
    web = WebServer(tmp_path / "mk", tls=tls)
    web.srv.start()
    try:
        status, headers, body = get(web, "http", "/apple/profile.mobileconfig?email="
                                    "demo%40example.test", host="mx.example.test")
        assert status == 200 and headers["Content-Type"] == "application/x-apple-aspen-config"
        with pytest.raises(plistlib.InvalidFileException):
            plistlib.loads(body)  # not a bare plist: a CMS SignedData around it
        signed = tmp_path / "profile.der"
        signed.write_bytes(body)
        # OpenSSL checks the signature and the chain to our CA, and hands back the plist.
        result = subprocess.run(
            ["openssl", "smime", "-verify", "-inform", "DER", "-in", str(signed),
             "-CAfile", str(ca.ca_file), "-purpose", "any"],
            capture_output=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
        assert b"Verification successful" in result.stderr
        profile = plistlib.loads(result.stdout)
        (mail,) = profile["PayloadContent"]
        assert mail["EmailAddress"] == "demo@example.test"
        # Another CA does not verify it.
        other = TestCA.create(tmp_path / "other", "Another CA")
        refused = subprocess.run(
            ["openssl", "smime", "-verify", "-inform", "DER", "-in", str(signed),
             "-CAfile", str(other.ca_file), "-purpose", "any"],
            capture_output=True, timeout=TIMEOUT)
        assert refused.returncode != 0
    finally:
        web.srv.stop()
