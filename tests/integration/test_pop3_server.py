"""The POP3 server over real sockets, with a real store and the real SASL layer; Python's
poplib (and raw sockets where poplib hides the bytes) as the client.

Each test starts ``POP3Listener``s in-process on 127.0.0.1 (port 0); the blocking clients
run in a thread so the server's event loop keeps running.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import poplib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scramp import ScramClient

from mailkeep.auth.passwd_file import PasswdFile
from mailkeep.auth.passwords import hash_password
from mailkeep.config.schema import Account, Pop3Config
from mailkeep.sasl import Authenticator, AuthPolicy
from mailkeep.sasl.credentials import write_credentials
from mailkeep.servers import tlsio
from mailkeep.servers.pop3 import POP3Context, POP3Listener
from mailkeep.servers.tls import generate_self_signed, server_context
from mailkeep.store import open_store

pytestmark = pytest.mark.timeout(60)

HOST = "pop.example.test"
USER = "me@example.test"
RELAY = "relay@example.test"
PASSWORD = "correct horse"
WAIT = 10.0

MESSAGES = [
    b"From: a@example.net\r\nSubject: first\r\n\r\nHello\r\n",
    b"From: b@example.net\r\nSubject: dots\r\n\r\n.leading\r\n..two\r\n.\r\nend\r\n",
    b"From: c@example.net\r\nSubject: third\r\n\r\nline 1\r\nline 2\r\nline 3\r\n",
]


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory) -> ssl.SSLContext:
    return server_context(generate_self_signed(tmp_path_factory.mktemp("tls"), HOST))


@pytest.fixture(scope="module")
def passwd_text(tmp_path_factory) -> str:
    """The passwd file (Argon2id + SCRAM verifiers), computed once for the module."""
    path = tmp_path_factory.mktemp("passwd") / "passwd"
    passwd = PasswdFile(path)
    password_hash = hash_password(PASSWORD)
    for user in (USER, RELAY):
        write_credentials(passwd, user, password_hash, PASSWORD, scram_iterations=4096,
                          cram_md5=False)
    return path.read_text()


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Harness:
    def __init__(self, tmp_path: Path, tls_ctx: ssl.SSLContext, passwd_text: str):
        self.store = open_store(tmp_path / "data")
        self.store.ensure_account(USER)
        passwd_path = tmp_path / "passwd"
        passwd_path.write_text(passwd_text)
        self.accounts = {USER: Account(USER), RELAY: Account(RELAY, relay_only=True)}
        # Failure delays kept short so the tests stay fast (the policy is tested elsewhere).
        self.authenticator = Authenticator(
            PasswdFile(passwd_path), self.accounts,
            AuthPolicy(first_failure_delay=0.01, max_failure_delay=0.02,
                       max_failures_per_ip=1000, max_failures_per_account=1000))
        self.tls_ctx = tls_ctx
        self.listeners: list[POP3Listener] = []

    async def start(self, *, implicit: bool = False, preauth_timeout: float = 60.0,
                    allow_plaintext_loopback: bool = False, **limits: Any) -> int:
        context = POP3Context(
            store=self.store, authenticator=self.authenticator, hostname=HOST,
            limits=Pop3Config(**limits), accounts=self.accounts, tls_context=self.tls_ctx,
            implicit_tls=implicit, preauth_timeout=preauth_timeout,
            allow_plaintext_loopback=allow_plaintext_loopback)
        listener = POP3Listener("test", context)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await listener.start(sock)
        self.listeners.append(listener)
        return sock.getsockname()[1]

    async def deliver(self, *messages: bytes) -> list[int]:
        return [await self.store.append(USER, "INBOX", m) for m in messages]

    def inbox(self) -> list[tuple[bytes, tuple[str, ...]]]:
        return [(self.store.read_message(USER, "INBOX", m.uid), m.flags)
                for m in self.store.list_messages(USER, "INBOX")]

    async def close(self) -> None:
        for listener in self.listeners:
            await listener.stop(grace=2)
        self.store.close()


@pytest.fixture
async def harness(tmp_path, tls_context, passwd_text):
    h = Harness(tmp_path, tls_context, passwd_text)
    yield h
    await h.close()


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), WAIT * 2)


def stls_login(port: int) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
    p.stls(insecure())
    p.user(USER)
    p.pass_(PASSWORD)
    return p


def pops_login(port: int) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL("127.0.0.1", port, context=insecure(), timeout=WAIT)
    p.user(USER)
    p.pass_(PASSWORD)
    return p


def command(p: poplib.POP3, line: str) -> bytes:
    """Send one command with poplib's plumbing and return its status line."""
    p._putcmd(line)
    return p._getline()[0]


class Raw:
    """A byte-exact client, for what poplib hides (dot-stuffing, pipelining, STLS)."""

    def __init__(self, port: int, implicit: bool = False):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock: socket.socket = (insecure().wrap_socket(sock, server_hostname=HOST)
                                    if implicit else sock)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until_dot(self) -> bytes:
        """The rest of a multi-line response, raw (still dot-stuffed), with its end."""
        while b"\r\n.\r\n" not in b"\r\n" + self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buf!r}")
            self.buf += chunk
        data = b"\r\n" + self.buf
        end = data.index(b"\r\n.\r\n") + 5
        self.buf = data[end:]
        return data[2:end]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def starttls(self) -> None:
        assert not self.buf
        self.sock = insecure().wrap_socket(self.sock, server_hostname=HOST)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


# -- authentication --------------------------------------------------------------------------


async def test_plaintext_user_is_refused_before_stls_and_works_after(harness):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def client():
        p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        capa = p.capa()
        assert "STLS" in capa and "USER" not in capa
        assert capa["SASL"] == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
        with pytest.raises(poplib.error_proto) as refused:
            p.user(USER)
        assert refused.value.args[0].startswith(b"-ERR [AUTH] Plaintext authentication")
        p.stls(insecure())
        capa = p.capa()
        assert "STLS" not in capa and "USER" in capa
        assert capa["SASL"][0] == "SCRAM-SHA-256-PLUS" and "PLAIN" in capa["SASL"]
        assert p.user(USER) == b"+OK Send the password with PASS"
        assert p.pass_(PASSWORD).startswith(b"+OK Logged in")
        assert p.stat() == (3, sum(map(len, MESSAGES)))
        p.quit()

    await in_thread(client)


async def test_loopback_may_be_treated_as_secured(harness):
    port = await harness.start(allow_plaintext_loopback=True)

    def client():
        p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        capa = p.capa()
        assert "USER" in capa and "PLAIN" in capa["SASL"] and "STLS" in capa
        p.user(USER)
        assert p.pass_(PASSWORD).startswith(b"+OK Logged in")
        p.quit()

    await in_thread(client)


async def test_wrong_password_gets_auth_code(harness):
    port = await harness.start()

    def client():
        p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        p.stls(insecure())
        p.user(USER)
        with pytest.raises(poplib.error_proto) as failed:
            p.pass_("wrong")
        assert failed.value.args[0].startswith(b"-ERR [AUTH] ")
        p.user(USER)
        assert p.pass_(PASSWORD).startswith(b"+OK")
        p.quit()

    await in_thread(client)


async def test_auth_plain_after_stls(harness):
    port = await harness.start()
    await harness.deliver(MESSAGES[0])

    def client():
        p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        assert command(p, "AUTH PLAIN " + plain).startswith(b"-ERR [AUTH] Plaintext")
        p.stls(insecure())
        assert command(p, "AUTH PLAIN " + plain).startswith(b"+OK")
        assert p.stat()[0] == 1
        p.quit()

    await in_thread(client)


def scram_login(p: poplib.POP3, mechanism: str, channel_binding: Any = None) -> bytes:
    client = ScramClient([mechanism], USER, PASSWORD, channel_binding=channel_binding)
    first = base64.b64encode(client.get_client_first().encode()).decode()
    challenge = command(p, f"AUTH {mechanism} {first}")
    assert challenge.startswith(b"+ "), challenge
    client.set_server_first(base64.b64decode(challenge[2:]).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    server_final = command(p, final)
    assert server_final.startswith(b"+ "), server_final
    client.set_server_final(base64.b64decode(server_final[2:]).decode())  # verifies server
    return command(p, "")


async def test_auth_scram_sha_256_without_tls_and_plus_over_pop3s(harness):
    port = await harness.start()
    pops = await harness.start(implicit=True)
    await harness.deliver(*MESSAGES)

    def client():
        p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        assert scram_login(p, "SCRAM-SHA-256").startswith(b"+OK Logged in")
        assert p.stat()[0] == 3
        p.quit()
        p = poplib.POP3_SSL("127.0.0.1", pops, context=insecure(), timeout=WAIT)
        # scramp has no tls-exporter; the server accepts either binding type on TLS 1.3.
        binding = tlsio.channel_bindings(p.sock)["tls-server-end-point"]
        reply = scram_login(p, "SCRAM-SHA-256-PLUS", ("tls-server-end-point", binding))
        assert reply.startswith(b"+OK Logged in")
        p.quit()

    await in_thread(client)


async def test_scram_with_wrong_password_fails_with_auth_code(harness):
    port = await harness.start()

    def client():
        p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        c = ScramClient(["SCRAM-SHA-256"], USER, "wrong")
        first = base64.b64encode(c.get_client_first().encode()).decode()
        challenge = command(p, f"AUTH SCRAM-SHA-256 {first}")
        c.set_server_first(base64.b64decode(challenge[2:]).decode())
        final = base64.b64encode(c.get_client_final().encode()).decode()
        assert command(p, final).startswith(b"-ERR [AUTH] ")
        assert command(p, "AUTH SCRAM-SHA-256") == b"+ "
        assert command(p, "*").startswith(b"-ERR [AUTH] ")
        p.quit()

    await in_thread(client)


async def test_relay_only_account_has_no_mailbox(harness):
    port = await harness.start()

    def client():
        p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        p.stls(insecure())
        p.user(RELAY)
        with pytest.raises(poplib.error_proto) as refused:
            p.pass_(PASSWORD)
        assert refused.value.args[0] == b"-ERR [AUTH] This account has no mailbox"
        p.quit()

    await in_thread(client)


async def test_login_delay_is_announced_and_enforced(harness):
    port = await harness.start(login_delay=300)

    def client():
        p = stls_login(port)
        assert p.capa()["LOGIN-DELAY"] == ["300"]
        p.quit()
        p = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        p.stls(insecure())
        p.user(USER)
        with pytest.raises(poplib.error_proto) as refused:
            p.pass_(PASSWORD)
        assert refused.value.args[0].startswith(b"-ERR [LOGIN-DELAY] ")
        p.quit()

    await in_thread(client)


# -- reading ------------------------------------------------------------------------------------


async def test_retr_is_byte_exact_and_dot_stuffed_on_the_wire(harness):
    port = await harness.start(implicit=True)
    await harness.deliver(*MESSAGES)

    def client():
        p = pops_login(port)
        for number, message in enumerate(MESSAGES, 1):
            resp, lines, _ = p.retr(number)
            assert resp == f"+OK {len(message)} octets".encode()
            assert b"\r\n".join(lines) + b"\r\n" == message
        p.quit()
        raw = Raw(port, implicit=True)
        assert raw.line().startswith(b"+OK")
        raw.send(f"USER {USER}\r\nPASS {PASSWORD}\r\nRETR 2\r\n".encode())
        assert raw.line().startswith(b"+OK") and raw.line().startswith(b"+OK Logged in")
        assert raw.line() == f"+OK {len(MESSAGES[1])} octets".encode()
        assert raw.until_dot() == (b"From: b@example.net\r\nSubject: dots\r\n\r\n"
                                   b"..leading\r\n...two\r\n..\r\nend\r\n.\r\n")
        raw.close()

    await in_thread(client)


async def test_large_message_streams_intact(harness):
    port = await harness.start(implicit=True)
    line = b"." + b"x" * 97 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * 60_000   # about 6 MB, every line stuffed
    await harness.deliver(big)

    def client():
        p = pops_login(port)
        resp, lines, _ = p.retr(1)
        assert resp == f"+OK {len(big)} octets".encode()
        assert b"\r\n".join(lines) + b"\r\n" == big
        p.quit()

    await in_thread(client)


async def test_top_and_list_and_uidl(harness):
    port = await harness.start()
    uids = await harness.deliver(*MESSAGES)

    def client():
        p = stls_login(port)
        assert p.top(3, 2)[1] == [b"From: c@example.net", b"Subject: third", b"",
                                  b"line 1", b"line 2"]
        assert p.top(3, 0)[1] == [b"From: c@example.net", b"Subject: third", b""]
        assert p.list()[1] == [f"{i} {len(m)}".encode() for i, m in enumerate(MESSAGES, 1)]
        uidvalidity = harness.store.get_mailbox(USER, "INBOX").uidvalidity
        assert p.uidl()[1] == [f"{i} {uidvalidity}.{uid}".encode()
                               for i, uid in enumerate(uids, 1)]
        assert p.uidl(2) == f"+OK 2 {uidvalidity}.{uids[1]}".encode()
        p.quit()

    await in_thread(client)
    # TOP does not mark messages read.
    assert all("\\Seen" not in flags for _, flags in harness.inbox())


async def test_uidl_is_stable_across_sessions(harness):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def first_session():
        p = stls_login(port)
        listing = p.uidl()[1]
        p.dele(1)
        p.quit()
        return [line.split()[1] for line in listing]

    before = await in_thread(first_session)
    await harness.deliver(b"Subject: new\r\n\r\nnew\r\n")

    def second_session():
        p = stls_login(port)
        listing = [line.split()[1] for line in p.uidl()[1]]
        p.quit()
        return listing

    after = await in_thread(second_session)
    assert after[:2] == before[1:]
    assert len(after) == 3 and after[2] not in before
    assert len(set(after)) == 3


# -- UPDATE state (RFC 1939 §6) ---------------------------------------------------------------------


async def test_dele_and_quit_remove_and_retr_marks_seen(harness):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def client():
        p = stls_login(port)
        p.retr(1)
        p.dele(2)
        assert p.quit() == b"+OK Logging out, 1 messages deleted"

    await in_thread(client)
    inbox = harness.inbox()
    assert [m for m, _ in inbox] == [MESSAGES[0], MESSAGES[2]]
    assert "\\Seen" in inbox[0][1] and "\\Seen" not in inbox[1][1]


async def test_dropped_connection_changes_nothing(harness):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def client():
        p = stls_login(port)
        p.retr(1)
        p.dele(1)
        p.dele(2)
        p.close()   # no QUIT

    await in_thread(client)
    await asyncio.sleep(0.2)
    assert harness.inbox() == [(m, ()) for m in MESSAGES]


async def test_rset_undeletes(harness):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def client():
        p = stls_login(port)
        p.dele(1)
        p.dele(3)
        assert p.stat() == (1, len(MESSAGES[1]))
        assert p.rset().startswith(b"+OK Maildrop has 3 messages")
        p.dele(2)
        p.quit()

    await in_thread(client)
    assert [m for m, _ in harness.inbox()] == [MESSAGES[0], MESSAGES[2]]


async def test_concurrent_sessions_may_delete_the_same_message(harness):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def client():
        a, b = stls_login(port), stls_login(port)
        a.dele(1)
        assert a.quit().startswith(b"+OK")
        # Message 1 is gone: RETR says so, and b's deletion of it is a no-op.
        with pytest.raises(poplib.error_proto) as gone:
            b.retr(1)
        assert gone.value.args[0] == b"-ERR Message 1 was removed by another session"
        b.dele(1)
        b.dele(2)
        assert b.quit() == b"+OK Logging out, 2 messages deleted"

    await in_thread(client)
    assert [m for m, _ in harness.inbox()] == [MESSAGES[2]]


# -- STLS, pipelining ---------------------------------------------------------------------------


async def test_stls_discards_pipelined_plaintext(harness):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def client():
        raw = Raw(port)
        assert raw.line().startswith(b"+OK")
        # An attacker's injected commands, sent in the same packet as STLS.
        raw.send(f"STLS\r\nUSER {USER}\r\nPASS {PASSWORD}\r\nDELE 1\r\nQUIT\r\n".encode())
        assert raw.line() == b"+OK Begin TLS negotiation"
        raw.starttls()
        raw.send(b"STAT\r\nPASS x\r\nNOOP\r\n")
        assert raw.line() == b"-ERR Command not valid in this state"   # not logged in
        assert raw.line() == b"-ERR Send USER first"
        assert raw.line() == b"-ERR Command not valid in this state"
        raw.close()

    await in_thread(client)
    await asyncio.sleep(0.1)
    assert len(harness.inbox()) == 3


async def test_pipelined_commands_get_replies_in_order(harness):
    port = await harness.start(implicit=True)
    await harness.deliver(*MESSAGES)

    def client():
        raw = Raw(port, implicit=True)
        assert raw.line().startswith(b"+OK")
        raw.send(f"CAPA\r\nUSER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nTOP 1 0\r\nDELE 3\r\n"
                 "LIST\r\nQUIT\r\n".encode())
        assert raw.line() == b"+OK Capability list follows"
        capa = raw.until_dot()
        assert b"PIPELINING\r\n" in capa and b"USER\r\n" in capa and b"STLS" not in capa
        assert raw.line().startswith(b"+OK")
        assert raw.line().startswith(b"+OK Logged in")
        assert raw.line() == f"+OK 3 {sum(map(len, MESSAGES))}".encode()
        assert raw.line() == b"+OK Top of message follows"
        assert raw.until_dot() == b"From: a@example.net\r\nSubject: first\r\n\r\n.\r\n"
        assert raw.line() == b"+OK Message 3 deleted"
        assert raw.line() == f"+OK 2 messages ({len(MESSAGES[0]) + len(MESSAGES[1])} octets)".encode()
        raw.until_dot()
        assert raw.line() == b"+OK Logging out, 1 messages deleted"
        assert raw.closed_by_server()
        raw.close()

    await in_thread(client)
    assert [m for m, _ in harness.inbox()] == MESSAGES[:2]


# -- limits ---------------------------------------------------------------------------------------


async def test_connections_per_ip_are_limited(harness):
    port = await harness.start(max_connections_per_ip=2)

    def client():
        first, second = Raw(port), Raw(port)
        assert first.line().startswith(b"+OK") and second.line().startswith(b"+OK")
        third = Raw(port)
        assert third.line() == b"-ERR [SYS/TEMP] Too many connections from your address"
        assert third.closed_by_server()
        first.send(b"QUIT\r\n")
        assert first.line() == b"+OK Logging out" and first.closed_by_server()
        for _ in range(50):     # the slot is given back when the server sees the close
            fourth = Raw(port)
            if fourth.line().startswith(b"+OK"):
                break
            fourth.close()
        else:
            raise AssertionError("the freed connection slot was not reused")
        for c in (second, third, first, fourth):
            c.close()

    await in_thread(client)


async def test_sessions_per_account_are_limited(harness):
    port = await harness.start(max_connections_per_account=1, allow_plaintext_loopback=True)

    def client():
        first = Raw(port)
        assert first.line().startswith(b"+OK")
        first.send(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        assert first.line().startswith(b"+OK")
        assert first.line().startswith(b"+OK Logged in")
        second = Raw(port)
        assert second.line().startswith(b"+OK")
        second.send(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        assert second.line().startswith(b"+OK")
        assert second.line() == b"-ERR [IN-USE] Too many sessions for this account"
        first.send(b"QUIT\r\n")
        assert first.line().startswith(b"+OK") and first.closed_by_server()
        time.sleep(0.2)  # the slot is given back when the server sees the close
        second.send(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        assert second.line().startswith(b"+OK")
        assert second.line().startswith(b"+OK Logged in")
        first.close()
        second.close()

    await in_thread(client)


async def test_long_lines_and_errors_are_limited(harness):
    port = await harness.start(max_line=300, max_errors=3)

    def client():
        raw = Raw(port)
        raw.line()
        raw.send(b"NOOP " + b"x" * 10_000 + b"\r\n")
        assert raw.line() == b"-ERR Line too long"
        raw.send(b"CAPA\r\n")
        assert raw.line() == b"+OK Capability list follows"
        raw.until_dot()
        raw.send(b"FOO\r\nBAR\r\nBAZ\r\n")
        assert raw.line() == b"-ERR Unknown command"
        assert raw.line() == b"-ERR Unknown command"
        assert raw.line() == b"-ERR Too many errors, closing connection"
        assert raw.closed_by_server()
        raw.close()

    await in_thread(client)


async def test_idle_clients_are_disconnected(harness):
    port = await harness.start(timeout=0.5, preauth_timeout=0.3)

    def client():
        raw = Raw(port)
        raw.line()
        assert raw.line() == b"-ERR Disconnected for inactivity"
        assert raw.closed_by_server()
        raw.close()

    await in_thread(client)


async def test_shutdown_ends_idle_sessions_without_committing(harness):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def client_logs_in():
        p = stls_login(port)
        p.dele(1)
        return p

    p = await in_thread(client_logs_in)
    await harness.listeners[0].stop(grace=5)

    def client_sees_shutdown():
        return p._getline()[0]

    assert await in_thread(client_sees_shutdown) == (
        b"-ERR [SYS/TEMP] Server shutting down, try again later")
    p.close()
    assert len(harness.inbox()) == 3


async def test_one_log_line_per_session(harness, caplog):
    port = await harness.start()
    await harness.deliver(*MESSAGES)

    def client():
        p = stls_login(port)
        p.retr(2)
        p.dele(3)
        p.quit()

    with caplog.at_level(logging.INFO, logger="mailkeep.pop3"):
        await in_thread(client)
        for _ in range(50):
            sessions = [r for r in caplog.records if r.getMessage() == "session"]
            if sessions:
                break
            await asyncio.sleep(0.02)
    assert len(sessions) == 1
    record = sessions[0]
    assert (record.account, record.retrieved, record.deleted, record.outcome) == (
        USER, 1, 1, "quit")
    assert record.bytes == len(MESSAGES[1]) and record.client == "127.0.0.1"
    assert record.tls.startswith("TLSv1")


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def test_client_that_stops_reading_a_retr_is_disconnected(harness, caplog):
    # Loopback treated as secured (policy) keeps this client raw and simple.
    port = await harness.start(timeout=0.5, allow_plaintext_loopback=True)
    await harness.deliver(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 6000)
    listener = harness.listeners[0]

    def client():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", port))
        sock.recv(100)
        return sock

    sock = await in_thread(client)
    try:
        with caplog.at_level(logging.INFO, logger="mailkeep.pop3"):
            sock.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\nRETR 1\r\n".encode())
            # The server stops reading the file when the client's window is full (flow
            # control), waits for the timeout, then drops the session and its slot.
            assert await wait_until(lambda: listener.counter.total == 0)
            assert not listener.sessions
    finally:
        sock.close()
    timeouts = [r for r in caplog.records if r.getMessage() == "timeout"]
    assert [r.state for r in timeouts] == ["writing"]


async def test_failed_tls_handshake_releases_the_connection(harness):
    port = await harness.start(implicit=True)
    listener = harness.listeners[0]

    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"USER me\r\n" * 20)
            try:
                return sock.recv(100)
            except ConnectionError:
                return b""

    assert await in_thread(client) == b""   # not a single plaintext byte comes back
    assert await wait_until(lambda: listener.counter.total == 0)
    p = await in_thread(pops_login, port)   # and the listener still serves
    await in_thread(p.quit)
