"""The outbound SMTP session over real sockets on 127.0.0.1.

Two kinds of peer:

- ``MailkeepPeer``: Mailkeep's own sans-IO SMTP server core (strict: a bare CR or LF in a
  body is reported) behind a small asyncio adapter, with STARTTLS, AUTH (PLAIN and
  SCRAM-SHA-256(-PLUS) through Mailkeep's SCRAM server), PIPELINING, CHUNKING, DSN,
  SMTPUTF8 and REQUIRETLS; it records exactly what it received.
- ``ScriptedPeer``: a raw asyncio server whose script misbehaves on purpose (response
  injection after STARTTLS, garbage, disconnects, silence, odd replies).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.support.certs import TestCA

from mailkeep.outbound.client import (
    ClientSession,
    ClientTimeouts,
    Credentials,
    MessageFileError,
    OutboundMessage,
    OutboundRecipient,
    SessionError,
    TlsRequirement,
)
from mailkeep.sasl.credentials import make_scram_verifier
from mailkeep.sasl.scram import ScramServer
from mailkeep.servers import tlsio
from mailkeep.smtp import (
    NEED_DATA,
    AuthResponse,
    AuthStart,
    BodyData,
    BodyEnd,
    ConnectionClosed,
    DataStart,
    Hello,
    MailFrom,
    RcptTo,
    Reply,
    Reset,
    ServerConnection,
    SessionConfig,
    StartTLS,
)
from mailkeep.smtp.client import ClientLimits

HELO = "client.mailkeep.test"
WAIT = 10.0          # no single test step may take longer than this


# --- certificates and TLS contexts ---------------------------------------------------------------

@dataclass
class Pki:
    ca: TestCA
    other_ca: TestCA
    server_context: ssl.SSLContext     # certificate "mx.example.test" from ``ca``
    other_context: ssl.SSLContext      # same name, signed by ``other_ca``


def _server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = TestCA.create(base / "ca")
    other = TestCA.create(base / "other", name="Some Other CA")
    good = ca.issue(["mx.example.test"])
    rogue = other.issue(["mx.example.test"])
    return Pki(ca, other, _server_context(good.cert_file, good.key_file),
               _server_context(rogue.cert_file, rogue.key_file))


def message_file(tmp_path: Path, content: bytes, name: str = "msg") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def outbound(path: Path, *recipients: str, sender: str = "sender@example.org",
             **kwargs) -> OutboundMessage:
    rcpts = tuple(r if isinstance(r, OutboundRecipient) else OutboundRecipient(r)
                  for r in (recipients or ("rcpt@example.test",)))
    return OutboundMessage(sender, rcpts, path, path.stat().st_size if path.exists() else 0,
                           **kwargs)


def normalized(body: bytes) -> bytes:
    import re

    body = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    return body if not body or body.endswith(b"\r\n") else body + b"\r\n"


# --- Mailkeep's own server as a peer ------------------------------------------------------------

@dataclass
class Received:
    mail: MailFrom
    rcpts: list[RcptTo]
    body: bytes
    chunking: bool
    problem: str | None


@dataclass
class MailkeepPeer:
    """Mailkeep's SMTP core on a socket; records transactions and AUTH outcomes.

    Recipients whose local part starts with "reject" get 550 5.1.1, "defer" 450 4.2.0.
    ``users`` maps user name to password for AUTH (offered only under TLS).
    """

    tls_context: ssl.SSLContext | None = None
    users: dict[str, str] = field(default_factory=dict)
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN")
    config: dict = field(default_factory=dict)
    messages: list[Received] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    auth_results: list[tuple[str, bool]] = field(default_factory=list)
    wire: bytearray = field(default_factory=bytearray)     # every octet received (plaintext)
    port: int = 0

    async def __aenter__(self) -> MailkeepPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _config(self, tls_active: bool) -> SessionConfig:
        return SessionConfig("mx.example.test", starttls_available=self.tls_context is not None,
                             tls_active=tls_active, bare_newlines="reject",
                             auth_mechanisms=self.mechanisms if tls_active and self.users else (),
                             **self.config)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConnection(self._config(False))
        conn.greet()
        mail: MailFrom | None = None
        rcpts: list[RcptTo] = []
        body = bytearray()
        chunking = False
        scram: ScramServer | None = None
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    writer.write(conn.data_to_send())
                    data = await asyncio.wait_for(reader.read(65536), WAIT)
                    if data:
                        self.wire += data
                        conn.receive_data(data)
                    else:
                        conn.receive_eof()
                    continue
                self.events.append(type(event).__name__)
                if isinstance(event, ConnectionClosed):
                    writer.write(conn.data_to_send())
                    break
                if isinstance(event, Hello | DataStart):
                    if isinstance(event, DataStart):
                        chunking = event.chunking
                    conn.accept()
                elif isinstance(event, MailFrom):
                    mail, rcpts, body = event, [], bytearray()
                    conn.accept()
                elif isinstance(event, RcptTo):
                    local = event.recipient.local
                    if local.startswith("reject"):
                        conn.reject(Reply(550, "5.1.1", "No such user"))
                    elif local.startswith("defer"):
                        conn.reject(Reply(450, "4.2.0", "Try later"))
                    else:
                        rcpts.append(event)
                        conn.accept()
                elif isinstance(event, BodyData):
                    body += event.data
                elif isinstance(event, BodyEnd):
                    assert mail is not None
                    self.messages.append(Received(mail, rcpts, bytes(body), chunking,
                                                  event.problem))
                    if event.problem:
                        conn.reject(event.suggested)
                    else:
                        conn.accept()
                elif isinstance(event, StartTLS):
                    assert self.tls_context is not None
                    conn.accept()
                    writer.write(conn.data_to_send())
                    await writer.start_tls(self.tls_context)
                    conn.tls_started(self._config(True))
                elif isinstance(event, AuthStart):
                    scram = self._auth_start(conn, writer, event)
                elif isinstance(event, AuthResponse):
                    scram = self._auth_step(conn, scram, event)
                elif isinstance(event, Reset):
                    mail = None
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _auth_start(self, conn: ServerConnection, writer: asyncio.StreamWriter,
                    event: AuthStart) -> ScramServer | None:
        initial = base64.b64decode(event.initial_response or "")
        if event.mechanism == "PLAIN":
            _, user, password = initial.decode().split("\0")
            self._auth_done(conn, "PLAIN", self.users.get(user) == password)
            return None
        transport = writer.transport
        bindings = {k: v for k, v in tlsio.channel_bindings(transport).items()
                    if k == "tls-server-end-point"}
        scram = ScramServer(event.mechanism, channel_bindings=bindings,
                            server_nonce=secrets.token_hex(12))
        try:
            first = scram.receive_client_first(initial)
            password = self.users.get(first.username, secrets.token_hex(8))
            verifier = make_scram_verifier(password, "SCRAM-SHA-256", 4096)
            conn.auth_challenge(base64.b64encode(scram.server_first(verifier)).decode())
        except Exception:
            self._auth_done(conn, event.mechanism, False)
            return None
        return scram

    def _auth_step(self, conn: ServerConnection, scram: ScramServer | None,
                   event: AuthResponse) -> ScramServer | None:
        assert scram is not None
        if not event.line:        # the client's empty line after our server-final
            self._auth_done(conn, scram.mechanism, True)
            return None
        try:
            final = scram.receive_client_final(base64.b64decode(event.line))
        except Exception:
            self._auth_done(conn, scram.mechanism, False)
            return None
        conn.auth_challenge(base64.b64encode(final).decode())
        return scram

    def _auth_done(self, conn: ServerConnection, mechanism: str, ok: bool) -> None:
        self.auth_results.append((mechanism, ok))
        if ok:
            conn.accept()
        else:
            conn.reject(Reply(535, "5.7.8", "Authentication credentials invalid"))


async def connect(port: int, *, tls: TlsRequirement | None = None,
                  credentials: Credentials | None = None, host: str = "mx.example.test",
                  timeouts: ClientTimeouts | None = None,
                  limits: ClientLimits | None = None) -> ClientSession:
    return await asyncio.wait_for(ClientSession.connect(
        host, port, address="127.0.0.1", helo_name=HELO, tls=tls or TlsRequirement("may"),
        credentials=credentials, timeouts=timeouts, limits=limits), WAIT)


# A body that exercises everything: dot lines, a smuggling attempt, bare CR and LF, 8-bit
# text, a line of dots right at the 64 KiB read boundary, and no final line break.
def tricky_body(size: int = 200_000) -> bytes:
    head = (b"From: a@example.org\r\nSubject: dots\r\n\r\n.\r\n..\r\n.leading\r\n"
            b"smuggle\n.\nMAIL FROM:<x@evil>\r\nbare\rcr and bare\nlf\r\n\xc3\xa9t\xc3\xa9\r\n")
    filler = b"".join(b".line %06d of filler text\r\n" % i for i in range(size // 28))
    boundary = 64 * 1024
    content = head + filler
    content = content[:boundary - 1] + b"\r\n.\r\n" + content[boundary - 1:]
    return content + b"...last line without CRLF"


@pytest.mark.parametrize(("pipelining", "chunking"), [(True, False), (False, False),
                                                      (True, True), (False, True)])
async def test_exact_bytes_arrive_whatever_the_transfer_method(tmp_path, pipelining, chunking):
    body = tricky_body()
    path = message_file(tmp_path, body)
    async with MailkeepPeer(config={"pipelining": pipelining, "chunking": chunking}) as peer:
        session = await connect(peer.port)
        assert ("PIPELINING" in session.capabilities) == pipelining
        result = await session.send(outbound(path, "one@example.test", "two@example.test",
                                             body_type="8BITMIME"))
        await session.quit()
    (received,) = peer.messages
    assert received.problem is None, "the client sent a bare CR or LF"
    assert received.body == normalized(body)
    assert received.chunking == chunking
    assert received.mail.params.body == "8BITMIME"
    assert received.mail.params.size == len(body)
    assert [str(r.recipient) for r in received.rcpts] == ["one@example.test", "two@example.test"]
    assert result.message_reply is not None and result.message_reply.code == 250
    assert {a: r.code for a, r in result.recipients.items()} == {
        "one@example.test": 250, "two@example.test": 250}


async def test_small_chunks_and_empty_message(tmp_path):
    limits = ClientLimits(chunk_size=7)
    async with MailkeepPeer(config={"chunking": True}) as peer:
        session = await connect(peer.port, limits=limits)
        for content in (b"a\r\n.\r\nb\rc\n", b"", b"\r"):
            await session.send(outbound(message_file(tmp_path, content)))
        await session.quit()
    assert [m.body for m in peer.messages] == [b"a\r\n.\r\nb\r\nc\r\n", b"", b"\r\n"]
    assert all(m.problem is None for m in peer.messages)


async def test_dsn_smtputf8_parameters_reach_the_server(tmp_path):
    path = message_file(tmp_path, b"Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n\r\nhi\r\n")
    message = outbound(path, OutboundRecipient("jürgen@example.test", ("SUCCESS", "DELAY"),
                                               ("rfc822", "jürgen@example.test")),
                       OutboundRecipient("plain@example.test", ("NEVER",)),
                       sender="sénder@example.org", envid="id+ 1", ret="HDRS", smtputf8=True)
    async with MailkeepPeer() as peer:
        session = await connect(peer.port)
        result = await session.send(message)
        await session.quit()
    assert {r.code for r in result.recipients.values()} == {250}
    (received,) = peer.messages
    params = received.mail.params
    assert (params.envid, params.ret, params.smtputf8) == ("id+ 1", "HDRS", True)
    assert received.mail.sender is not None and received.mail.sender.local == "sénder"
    first, second = received.rcpts
    assert first.params.notify == ("SUCCESS", "DELAY")
    assert first.params.orcpt == ("UTF-8", "jürgen@example.test")
    assert second.params.notify == ("NEVER",) and second.params.orcpt is None


async def test_without_dsn_no_dsn_parameters_are_sent(tmp_path):
    path = message_file(tmp_path, b"x\r\n")
    message = outbound(path, OutboundRecipient("a@example.test", ("NEVER",),
                                               ("rfc822", "a@example.test")),
                       envid="e1", ret="FULL")
    async with MailkeepPeer(config={"dsn": False}) as peer:
        session = await connect(peer.port)
        result = await session.send(message)
        await session.quit()
    assert result.recipients["a@example.test"].code == 250     # else: 555 from the peer
    assert peer.messages[0].mail.params.envid is None


@pytest.mark.parametrize("pipelining", [True, False])
async def test_per_recipient_outcomes(tmp_path, pipelining):
    path = message_file(tmp_path, b"hello\r\n")
    async with MailkeepPeer(config={"pipelining": pipelining}) as peer:
        session = await connect(peer.port)
        result = await session.send(outbound(path, "reject1@example.test", "ok@example.test",
                                             "defer@example.test"))
        await session.quit()
    codes = {a: (r.code, r.enhanced) for a, r in result.recipients.items()}
    assert codes == {"reject1@example.test": (550, "5.1.1"), "ok@example.test": (250, "2.0.0"),
                     "defer@example.test": (450, "4.2.0")}
    assert result.message_reply is not None and result.message_reply.code == 250
    assert [str(r.recipient) for r in peer.messages[0].rcpts] == ["ok@example.test"]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_no_accepted_recipient_means_no_data_and_the_session_goes_on(tmp_path, pipelining):
    path = message_file(tmp_path, b"never sent\r\n")
    async with MailkeepPeer(config={"pipelining": pipelining, "chunking": False}) as peer:
        session = await connect(peer.port)
        refused = await session.send(outbound(path, "reject1@example.test", "defer@example.test"))
        accepted = await session.send(outbound(path, "ok@example.test"))
        await session.quit()
    assert {r.code for r in refused.recipients.values()} == {550, 450}
    assert refused.message_reply is None
    assert accepted.recipients["ok@example.test"].code == 250
    assert len(peer.messages) == 1
    # RFC 2920: with PIPELINING, DATA went out in the group and the server refused it
    # (554 no valid recipients); without, DATA was never sent. Then RSET before the next.
    assert peer.wire.count(b"\r\nDATA\r\n") == (2 if pipelining else 1)
    assert b"never sent" in peer.wire and peer.wire.count(b"never sent") == 1
    assert b"\r\nRSET\r\nMAIL FROM:" in peer.wire


async def test_several_messages_share_a_connection_with_rset_between(tmp_path):
    async with MailkeepPeer() as peer:
        session = await connect(peer.port)
        for n in range(3):
            path = message_file(tmp_path, b"message %d\r\n" % n, f"m{n}")
            result = await session.send(outbound(path))
            assert result.message_reply is not None and result.message_reply.code == 250
        assert session.messages_sent == 3
        await session.quit()
    assert [m.body for m in peer.messages] == [b"message 0\r\n", b"message 1\r\n",
                                               b"message 2\r\n"]
    assert peer.events.count("Reset") == 2
    assert peer.events[-1] == "ConnectionClosed"


async def test_size_limit_refuses_before_any_command(tmp_path):
    path = message_file(tmp_path, b"x" * 5000 + b"\r\n")
    async with MailkeepPeer(config={"max_message_size": 4096}) as peer:
        session = await connect(peer.port)
        result = await session.send(outbound(path, "a@example.test", "b@example.test"))
        await session.quit()
    assert {(r.code, r.enhanced) for r in result.recipients.values()} == {(552, "5.3.4")}
    assert result.message_reply is None
    assert "MailFrom" not in peer.events


async def test_smtputf8_address_to_a_peer_without_smtputf8(tmp_path):
    path = message_file(tmp_path, b"x\r\n")
    async with MailkeepPeer(config={"smtputf8": False}) as peer:
        session = await connect(peer.port)
        result = await session.send(outbound(path, "jürgen@example.test"))
        await session.quit()
    assert result.recipients["jürgen@example.test"].enhanced == "5.6.7"
    assert "MailFrom" not in peer.events


async def test_missing_queue_file_touches_nothing(tmp_path):
    async with MailkeepPeer() as peer:
        session = await connect(peer.port)
        with pytest.raises(MessageFileError, match="cannot read message file"):
            await session.send(outbound(tmp_path / "gone", "a@example.test"))
        # Nothing was sent, so the connection is still good.
        ok = await session.send(outbound(message_file(tmp_path, b"y\r\n"), "a@example.test"))
        await session.quit()
    assert ok.message_reply is not None and ok.message_reply.code == 250
    assert peer.events.count("MailFrom") == 1


async def test_starttls_verify_and_requiretls(tmp_path, pki):
    path = message_file(tmp_path, b"Subject: secret\r\n\r\nbody\r\n")
    tls = TlsRequirement("verify", verify_names=("mx.example.test",), ca_file=str(pki.ca.ca_file))
    async with MailkeepPeer(pki.server_context, config={"requiretls": True}) as peer:
        session = await connect(peer.port, tls=tls)
        assert session.tls_info.verified and session.tls_info.version in ("TLSv1.2", "TLSv1.3")
        assert "REQUIRETLS" in session.capabilities      # offered only after STARTTLS
        result = await session.send(outbound(path, requiretls=True))
        await session.quit()
    assert result.message_reply is not None and result.message_reply.code == 250
    assert peer.messages[0].mail.params.requiretls


async def test_requiretls_refused_without_verified_tls(tmp_path, pki):
    path = message_file(tmp_path, b"x\r\n")
    async with MailkeepPeer(pki.server_context, config={"requiretls": True}) as peer:
        session = await connect(peer.port, tls=TlsRequirement("may"))
        assert session.tls_info.version is not None and not session.tls_info.verified
        result = await session.send(outbound(path, requiretls=True))
        await session.quit()
    assert result.recipients["rcpt@example.test"].enhanced == "5.7.30"
    assert "MailFrom" not in peer.events


async def test_verify_fails_on_name_mismatch_and_foreign_ca(pki):
    async with MailkeepPeer(pki.server_context) as peer:
        with pytest.raises(SessionError) as wrong_name:
            await connect(peer.port, tls=TlsRequirement(
                "verify", verify_names=("smtp.elsewhere.test",), ca_file=str(pki.ca.ca_file)))
    assert wrong_name.value.stage == "tls" and wrong_name.value.tls_failed
    assert "not valid for smtp.elsewhere.test" in str(wrong_name.value)
    async with MailkeepPeer(pki.other_context) as peer:
        with pytest.raises(SessionError) as foreign:
            await connect(peer.port, tls=TlsRequirement(
                "verify", verify_names=("mx.example.test",), ca_file=str(pki.ca.ca_file)))
    assert foreign.value.stage == "tls" and foreign.value.tls_failed
    assert foreign.value.temporary
    assert "certificate verification failed" in str(foreign.value)


async def test_wildcard_certificate_matches_one_label(tmp_path, pki):
    wildcard = pki.ca.issue(["*.example.test"], stem="wild")
    context = _server_context(wildcard.cert_file, wildcard.key_file)
    async with MailkeepPeer(context) as peer:
        ok = await connect(peer.port, tls=TlsRequirement(
            "verify", verify_names=("mx.example.test",), ca_file=str(pki.ca.ca_file)))
        assert ok.tls_info.verified
        await ok.quit()
        with pytest.raises(SessionError, match="not valid"):
            await connect(peer.port, tls=TlsRequirement(
                "verify", verify_names=("a.b.example.test",), ca_file=str(pki.ca.ca_file)))


async def test_dane_level_lets_verify_peer_decide(pki):
    seen: list[bytes] = []

    def accept(sslobj: ssl.SSLObject) -> str | None:
        seen.append(sslobj.getpeercert(binary_form=True))
        return None

    async with MailkeepPeer(pki.server_context) as peer:
        session = await connect(peer.port, tls=TlsRequirement("dane", verify_peer=accept))
        assert session.tls_info.verified and session.tls_info.level == "dane"
        await session.quit()
        with pytest.raises(SessionError, match="no TLSA record matches") as caught:
            await connect(peer.port, tls=TlsRequirement(
                "dane", verify_peer=lambda s: "no TLSA record matches"))
        assert caught.value.tls_failed
        with pytest.raises(SessionError, match="DANE check failed: RuntimeError"):
            await connect(peer.port, tls=TlsRequirement(
                "dane", verify_peer=lambda s: (_ for _ in ()).throw(RuntimeError("bug"))))
    assert seen and seen[0]


async def test_auth_scram_over_starttls_plus_only_when_asked(pki):
    async with MailkeepPeer(pki.server_context, users={"relay": "pässwörd"}) as peer:
        # The peer offers SCRAM-SHA-256-PLUS; by default plain SCRAM-SHA-256 is used
        # (gs2 flag "n"), which a -PLUS server accepts.
        session = await connect(peer.port, credentials=Credentials("relay", "pässwörd"))
        assert session.authenticated_as == "relay"
        assert session.auth_mechanism == "SCRAM-SHA-256"
        await session.quit()
        bound = await asyncio.wait_for(ClientSession.connect(
            "mx.example.test", peer.port, address="127.0.0.1", helo_name=HELO,
            tls=TlsRequirement("may"), credentials=Credentials("relay", "pässwörd"),
            channel_binding=True), WAIT)
        assert bound.auth_mechanism == "SCRAM-SHA-256-PLUS"
        await bound.quit()
    assert peer.auth_results == [("SCRAM-SHA-256", True), ("SCRAM-SHA-256-PLUS", True)]


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
async def test_auth_mechanisms_and_wrong_password(pki, mechanism):
    async with MailkeepPeer(pki.server_context, users={"relay": "right"},
                            mechanisms=(mechanism,)) as peer:
        session = await connect(peer.port, credentials=Credentials("relay", "right"))
        assert session.auth_mechanism == mechanism
        await session.quit()
        with pytest.raises(SessionError) as caught:
            await connect(peer.port, credentials=Credentials("relay", "wrong"))
    error = caught.value
    assert error.stage == "auth" and not error.temporary
    assert error.reply is not None and error.reply.code == 535
    assert peer.auth_results == [(mechanism, True), (mechanism, False)]


# --- scripted peers ---------------------------------------------------------------------------------

class PeerConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), WAIT)
        self.received += line
        return line

    async def expect(self, prefix: bytes) -> bytes:
        line = await self.line()
        assert line.upper().startswith(prefix.upper()), (prefix, line)
        return line

    async def hello(self, *keywords: bytes) -> None:
        await self.send(b"220 peer.test ESMTP\r\n")
        await self.expect(b"EHLO ")
        await self.send(b"".join(b"250-" + k + b"\r\n" for k in (b"peer.test", *keywords[:-1]))
                        + b"250 " + (keywords[-1] if keywords else b"peer.test") + b"\r\n")


Script = Callable[[PeerConnection], Awaitable[None]]


class ScriptedPeer:
    """One-connection server running ``script``; its assertion errors fail the test."""

    def __init__(self, script: Script, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.ssl_context = ssl_context
        self.error: BaseException | None = None
        self.done = asyncio.Event()
        self.connection: PeerConnection | None = None

    async def __aenter__(self) -> ScriptedPeer:
        self.server = await asyncio.start_server(self._run, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connection = PeerConnection(reader, writer)
        try:
            await asyncio.wait_for(self.script(self.connection), WAIT)
        except BaseException as exc:     # reported at __aexit__
            self.error = exc
        finally:
            writer.close()
            self.done.set()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(self.done.wait(), WAIT)
        self.server.close()
        await self.server.wait_closed()
        if self.error is not None and not isinstance(self.error, ConnectionError | EOFError):
            raise self.error


async def test_response_injection_after_starttls_is_discarded(pki):
    async def script(c: PeerConnection) -> None:
        await c.hello(b"STARTTLS")
        await c.expect(b"STARTTLS")
        # An attacker on the path appends a reply to the 220, in the same segment.
        await c.send(b"220 go\r\n250 injected\r\n")
        await c.writer.start_tls(pki.server_context)
        await c.expect(b"EHLO ")
        await c.send(b"250-peer.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n")
        await c.expect(b"QUIT")
        await c.send(b"221 bye\r\n")

    async with ScriptedPeer(script) as peer:
        session = await connect(peer.port, tls=TlsRequirement("encrypt"))
        assert session.capabilities == {"PIPELINING": "", "SIZE": "1000"}
        assert session.tls_info.version is not None
        await session.quit()


async def test_replies_split_into_single_bytes(tmp_path):
    async def script(c: PeerConnection) -> None:
        for byte in b"220-peer.test\r\n220 slow ESMTP\r\n":
            await c.send(bytes([byte]))
        await c.expect(b"EHLO ")
        for byte in b"250-peer.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n":
            await c.send(bytes([byte]))
        await c.expect(b"MAIL FROM:<sender@example.org>")
        await c.send(b"250 2.1.0 ok\r\n")
        await c.expect(b"RCPT TO:<rcpt@example.test>")
        for byte in b"250-2.1.5 first\r\n250 2.1.5 second\r\n":
            await c.send(bytes([byte]))
        await c.expect(b"DATA")
        await c.send(b"354 go\r\n")
        while await c.line() != b".\r\n":
            pass
        await c.send(b"250 2.0.0 queued as X\r\n")
        await c.expect(b"QUIT")
        await c.send(b"221 2.0.0 bye\r\n")

    async with ScriptedPeer(script) as peer:
        session = await connect(peer.port)
        assert set(session.capabilities) == {"8BITMIME", "ENHANCEDSTATUSCODES"}
        result = await session.send(outbound(message_file(tmp_path, b"hi\r\n")))
        await session.quit()
    assert result.message_reply == Reply(250, "2.0.0", "queued as X")


async def test_lock_step_without_pipelining(tmp_path):
    async def script(c: PeerConnection) -> None:
        await c.hello(b"SIZE 100000")
        for command, reply in ((b"MAIL", b"250 ok\r\n"), (b"RCPT", b"250 ok\r\n"),
                               (b"RCPT", b"550 no\r\n"), (b"DATA", b"354 go\r\n")):
            await c.expect(command)
            # Nothing may arrive before this reply has been sent.
            await asyncio.sleep(0.05)
            assert not c.reader._buffer, f"client pipelined after {command!r}"  # type: ignore[attr-defined]
            await c.send(reply)
        while await c.line() != b".\r\n":
            pass
        await c.send(b"250 done\r\n")
        await c.expect(b"QUIT")
        await c.send(b"221 bye\r\n")

    async with ScriptedPeer(script) as peer:
        session = await connect(peer.port)
        result = await session.send(outbound(message_file(tmp_path, b"x\r\n"),
                                             "a@example.test", "b@example.test"))
        await session.quit()
    assert result.recipients["a@example.test"].lines == ("done",)
    assert result.recipients["b@example.test"].code == 550


async def test_pipelined_354_without_recipients_gets_an_empty_message(tmp_path):
    async def script(c: PeerConnection) -> None:
        await c.hello(b"PIPELINING")
        for prefix in (b"MAIL", b"RCPT", b"DATA"):
            await c.expect(prefix)
        # A broken server: refuses the recipient, then accepts DATA anyway.
        await c.send(b"250 ok\r\n550 no such user\r\n354 go ahead\r\n")
        assert await c.line() == b".\r\n"          # nothing of the message
        await c.send(b"554 no valid recipients\r\n")
        await c.expect(b"QUIT")
        await c.send(b"221 bye\r\n")

    async with ScriptedPeer(script) as peer:
        session = await connect(peer.port)
        result = await session.send(outbound(message_file(tmp_path, b"secret\r\n")))
        await session.quit()
    assert result.recipients["rcpt@example.test"].code == 550
    assert result.message_reply is None
    assert b"secret" not in peer.connection.received


async def test_garbage_reply_is_a_temporary_session_error():
    async def script(c: PeerConnection) -> None:
        await c.send(b"220 peer.test ESMTP\r\n")
        await c.expect(b"EHLO")
        await c.send(b"HTTP/1.0 200 OK\r\n\r\n")
        await asyncio.sleep(0.2)

    async with ScriptedPeer(script) as peer:
        with pytest.raises(SessionError) as caught:
            await connect(peer.port)
    assert caught.value.stage == "ehlo" and caught.value.temporary
    assert "invalid reply to EHLO" in str(caught.value) and "HTTP/1.0" in str(caught.value)


async def test_peer_closing_mid_data_is_temporary(tmp_path):
    async def script(c: PeerConnection) -> None:
        await c.hello(b"8BITMIME")
        for command, reply in ((b"MAIL", b"250 ok\r\n"), (b"RCPT", b"250 ok\r\n"),
                               (b"DATA", b"354 go\r\n")):
            await c.expect(command)
            await c.send(reply)
        await c.reader.readexactly(100_000)
        c.writer.transport.abort()

    async with ScriptedPeer(script) as peer:
        session = await connect(peer.port)
        with pytest.raises(SessionError) as caught:
            await session.send(outbound(message_file(tmp_path, (b"z" * 78 + b"\r\n") * 40_000)))
    assert caught.value.stage == "data" and caught.value.temporary
    assert caught.value.recipients["rcpt@example.test"].code == 250


async def test_silent_peer_times_out(tmp_path):
    async def script(c: PeerConnection) -> None:
        await c.hello()
        await c.expect(b"MAIL")
        await asyncio.sleep(0.6)            # no answer

    async with ScriptedPeer(script) as peer:
        session = await connect(peer.port, timeouts=ClientTimeouts(mail=0.3))
        with pytest.raises(SessionError) as caught:
            await session.send(outbound(message_file(tmp_path, b"x\r\n")))
    assert caught.value.stage == "timeout" and caught.value.temporary
    assert "did not answer MAIL FROM within 0.3 s" in str(caught.value)


@pytest.mark.parametrize(("greeting", "temporary"), [(b"554 5.7.1 go away\r\n", False),
                                                     (b"421 4.3.2 busy\r\n", True)])
async def test_refused_greeting(greeting, temporary):
    async def script(c: PeerConnection) -> None:
        await c.send(greeting)
        if not temporary:
            await c.expect(b"QUIT")          # RFC 5321 §3.1: the client says QUIT

    async with ScriptedPeer(script) as peer:
        with pytest.raises(SessionError) as caught:
            await connect(peer.port)
    assert caught.value.stage == "greeting"
    assert caught.value.temporary == temporary
    assert caught.value.reply is not None and caught.value.reply.code == int(greeting[:3])


async def test_helo_fallback_only_where_tls_is_optional():
    async def script(c: PeerConnection) -> None:
        await c.send(b"220 old.test SMTP\r\n")
        await c.expect(b"EHLO")
        await c.send(b"502 what?\r\n")
        line = await c.line()
        if line.startswith(b"HELO "):
            await c.send(b"250 old.test\r\n")
            await c.expect(b"QUIT")
            await c.send(b"221 bye\r\n")

    async with ScriptedPeer(script) as peer:
        session = await connect(peer.port, tls=TlsRequirement("may"))
        assert session.capabilities == {}
        await session.quit()
    assert peer.connection.received.startswith(b"EHLO " + HELO.encode() + b"\r\nHELO ")
    async with ScriptedPeer(script) as peer:
        with pytest.raises(SessionError) as caught:
            await connect(peer.port, tls=TlsRequirement("encrypt"))
    assert caught.value.stage == "ehlo" and not caught.value.temporary


async def test_required_tls_without_starttls():
    async def script(c: PeerConnection) -> None:
        await c.hello(b"8BITMIME")
        await c.expect(b"QUIT")

    async with ScriptedPeer(script) as peer:
        with pytest.raises(SessionError) as caught:
            await connect(peer.port, tls=TlsRequirement("encrypt"))
    assert caught.value.stage == "starttls" and caught.value.temporary
    assert "does not offer STARTTLS" in str(caught.value)


async def test_refused_starttls_goes_on_in_plaintext_for_may():
    async def script(c: PeerConnection) -> None:
        await c.hello(b"STARTTLS")
        await c.expect(b"STARTTLS")
        await c.send(b"454 4.7.0 TLS not available\r\n")
        await c.expect(b"QUIT")
        await c.send(b"221 bye\r\n")

    async with ScriptedPeer(script) as peer:
        session = await connect(peer.port, tls=TlsRequirement("may"))
        assert session.tls_info.version is None
        assert "STARTTLS refused: 454 4.7.0" in (session.tls_info.error or "")
        await session.quit()


async def test_failed_handshake_is_reported_as_tls_failure():
    async def script(c: PeerConnection) -> None:
        await c.hello(b"STARTTLS")
        await c.expect(b"STARTTLS")
        await c.send(b"220 go\r\n")
        await asyncio.sleep(0.05)
        await c.send(b"this is not a TLS record\r\n" * 4)
        await asyncio.sleep(0.2)

    async with ScriptedPeer(script) as peer:
        with pytest.raises(SessionError) as caught:
            await connect(peer.port, tls=TlsRequirement("may"))
    assert caught.value.stage == "tls" and caught.value.tls_failed and caught.value.temporary


async def test_credentials_are_never_sent_without_tls():
    async def script(c: PeerConnection) -> None:
        await c.hello(b"AUTH PLAIN LOGIN")
        await c.expect(b"QUIT")

    async with ScriptedPeer(script) as peer:
        with pytest.raises(SessionError) as caught:
            await connect(peer.port, tls=TlsRequirement("may"),
                          credentials=Credentials("user", "hunter2"))
    assert caught.value.stage == "auth" and not caught.value.temporary
    assert "unencrypted" in str(caught.value)
    assert b"AUTH" not in peer.connection.received
    assert b"hunter2" not in peer.connection.received


@pytest.mark.parametrize(("reply", "temporary"), [(b"454 4.7.0 try later\r\n", True),
                                                  (b"535 5.7.8 bad credentials\r\n", False)])
async def test_auth_failures(pki, reply, temporary):
    async def script(c: PeerConnection) -> None:
        await c.hello(b"STARTTLS")
        await c.expect(b"STARTTLS")
        await c.send(b"220 go\r\n")
        await c.writer.start_tls(pki.server_context)
        await c.expect(b"EHLO")
        await c.send(b"250-peer.test\r\n250 AUTH LOGIN\r\n")
        await c.expect(b"AUTH LOGIN")
        await c.send(b"334 VXNlcm5hbWU6\r\n")
        assert base64.b64decode(await c.line()) == b"user"
        await c.send(b"334 UGFzc3dvcmQ6\r\n")
        assert base64.b64decode(await c.line()) == b"pw"
        await c.send(reply)
        await c.expect(b"QUIT")

    async with ScriptedPeer(script) as peer:
        with pytest.raises(SessionError) as caught:
            await connect(peer.port, tls=TlsRequirement("encrypt"),
                          credentials=Credentials("user", "pw"))
    assert caught.value.stage == "auth" and caught.value.temporary == temporary


async def test_implicit_tls(pki, tmp_path):
    async def script(c: PeerConnection) -> None:
        await c.hello(b"AUTH PLAIN")
        line = await c.expect(b"AUTH PLAIN ")
        assert base64.b64decode(line.split()[2]) == b"\0user\0pw"
        await c.send(b"235 2.7.0 ok\r\n")
        await c.expect(b"QUIT")
        await c.send(b"221 bye\r\n")

    tls = TlsRequirement("verify", verify_names=("mx.example.test",),
                         ca_file=str(pki.ca.ca_file), implicit=True)
    async with ScriptedPeer(script, ssl_context=pki.server_context) as peer:
        session = await connect(peer.port, tls=tls, credentials=Credentials("user", "pw"))
        assert session.tls_info.verified and session.auth_mechanism == "PLAIN"
        await session.quit()


async def test_connection_refused_is_temporary():
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]        # bound, not listening: connection refused
        with pytest.raises(SessionError) as caught:
            await connect(port)
    assert caught.value.stage == "connect" and caught.value.temporary


def test_tls_requirement_validation():
    with pytest.raises(ValueError, match="verify_peer"):
        TlsRequirement("dane")
    with pytest.raises(ValueError, match="level"):
        TlsRequirement("sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="implicit"):
        TlsRequirement("none", implicit=True)
    assert "hunter2" not in repr(Credentials("u", "hunter2"))
    with pytest.raises(ValueError):
        dataclasses.replace(ClientTimeouts(), mail=0)
