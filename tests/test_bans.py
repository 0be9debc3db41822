"""Brute-force bans and connection rates: the rule, the persistent list (a real SQLite file,
shared by two instances as the server and the CLI share it), the gate in front of a real
listener socket, the authenticator's hook, the CLI, and the token bucket."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.auth import passwords
from mailkeep.auth.passwd_file import PasswdFile
from mailkeep.bans import (
    BANNED_TEXT,
    MAX_REFUSALS_TRACKED,
    BanList,
    BanPolicy,
    NotBannable,
    ban_refusal,
    client_key,
    parse_networks,
)
from mailkeep.cli.main import main as cli_main
from mailkeep.config import Account
from mailkeep.sasl import Authenticator, AuthPolicy, ClientInfo
from mailkeep.servers.listener import (
    RATE_PERIOD,
    ConnectionCounts,
    ConnectionRate,
    SessionListener,
)

pytestmark = pytest.mark.timeout(60)

HOUR = 3600.0
NO_ALLOW = BanPolicy(after_failures=3, window=600, duration=100, max_duration=350, allow=())


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def policy(**changes: object) -> BanPolicy:
    values = {"after_failures": 3, "window": 600.0, "duration": 100.0, "max_duration": 350.0,
              **changes}
    return BanPolicy(**values)  # type: ignore[arg-type]


def fail(bans: BanList, ip: str, times: int):
    result = None
    for _ in range(times):
        result = bans.record_failure(ip)
    return result


# -- keys ----------------------------------------------------------------------------------


def test_client_key_is_the_address_for_ipv4_and_the_64_for_ipv6():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4-mapped: the IPv4 address
    assert client_key("local") is None
    assert client_key("") is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_refused_cleanly_by_ban_and_lift(text):
    bans = BanList(None, policy(allow=()))
    try:
        bans.ban(text, "x", 60, "test")
    except ValueError:
        pass
    try:
        bans.lift(text)
    except ValueError:
        pass
    bans.record_failure(text)  # never raises
    bans.is_banned(text)


# -- the rule ------------------------------------------------------------------------------


def test_failures_within_the_window_ban_the_address(clock, caplog):
    bans = BanList(None, policy(allow=()), clock=clock)
    caplog.set_level(logging.INFO, logger="mailkeep.bans")
    assert fail(bans, "198.51.100.7", 2) is None
    assert bans.failures("198.51.100.7") == 2
    assert bans.is_banned("198.51.100.7") is None
    ban = bans.record_failure("198.51.100.7")
    assert ban is not None and ban.until == clock.now + 100 and ban.source == "auth"
    assert bans.is_banned("198.51.100.7") == ban
    assert bans.is_banned("198.51.100.8") is None
    (record,) = [r for r in caplog.records if r.getMessage() == "ip banned"]
    assert record.levelno == logging.WARNING
    assert record.ip == "198.51.100.7" and record.failures == 3
    assert record.until == "2023-11-14T22:15:00Z"


def test_failures_older_than_the_window_do_not_count(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    for _ in range(5):
        bans.record_failure("198.51.100.7")
        clock.now += 301  # two failures never share a 600 s window with a third
    assert bans.is_banned("198.51.100.7") is None
    assert bans.failures("198.51.100.7") == 1


def test_a_ban_expires(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    fail(bans, "198.51.100.7", 3)
    clock.now += 99
    assert bans.is_banned("198.51.100.7") is not None
    clock.now += 1
    assert bans.is_banned("198.51.100.7") is None
    assert bans.active() == []
    assert not bans.has_active


def test_zero_failures_turns_the_rule_off(clock):
    bans = BanList(None, policy(after_failures=0, allow=()), clock=clock)
    assert fail(bans, "198.51.100.7", 100) is None
    assert bans.active() == []


def test_failures_while_banned_are_not_counted(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    fail(bans, "198.51.100.7", 3)
    assert fail(bans, "198.51.100.7", 10) is None
    clock.now += 100
    assert bans.failures("198.51.100.7") == 0  # starts afresh after the ban


def test_ipv6_is_counted_and_banned_per_64(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    bans.record_failure("2001:db8:1:2::1")
    bans.record_failure("2001:db8:1:2::2")
    ban = bans.record_failure("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert ban is not None and ban.network == "2001:db8:1:2::/64"
    assert bans.is_banned("2001:db8:1:2:1234::5") == ban
    assert bans.is_banned("2001:db8:1:3::1") is None


def test_repeat_offenders_get_double_up_to_the_maximum(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    lengths = []
    for _ in range(4):
        ban = fail(bans, "198.51.100.7", 3)
        assert ban is not None
        lengths.append(ban.until - ban.created)
        clock.now = ban.until + 10
    assert lengths == [100, 200, 350, 350]  # doubled, capped at max_duration
    # Remembered for max_duration after the last ban's end; after that, a first ban again.
    clock.now += 350
    bans.refresh()
    ban = fail(bans, "198.51.100.7", 3)
    assert ban is not None and ban.until - ban.created == 100 and ban.offences == 1


def test_allow_list_defaults_to_loopback(clock):
    bans = BanList(None, policy(), clock=clock)
    assert fail(bans, "127.0.0.1", 10) is None
    assert fail(bans, "::1", 10) is None
    with pytest.raises(NotBannable):
        bans.ban("127.0.0.2", "x", 60, "cli")
    assert bans.allowed("127.0.0.1") and bans.allowed("local")
    assert not bans.allowed("192.0.2.1")
    assert fail(bans, "192.0.2.1", 3) is not None


def test_allow_list_networks_and_a_single_ipv6_protects_its_64(clock):
    bans = BanList(None, policy(allow=parse_networks(["10.0.0.0/8", "2001:db8::5"])),
                   clock=clock)
    assert fail(bans, "10.1.2.3", 5) is None
    assert fail(bans, "2001:db8::77", 5) is None  # same /64 as the allowed address
    with pytest.raises(NotBannable):
        bans.ban("2001:db8::9", "x", 60, "cli")
    assert fail(bans, "127.0.0.1", 3) is not None  # loopback is bannable when not listed


def test_reload_that_allows_an_address_unbans_it(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    fail(bans, "192.0.2.1", 3)
    bans.configure(policy(allow=parse_networks(["192.0.2.0/24"])))
    assert bans.is_banned("192.0.2.1") is None


def test_failure_counters_are_bounded(clock):
    bans = BanList(None, BanPolicy(after_failures=5, window=600, allow=(), max_tracked=100),
                   clock=clock)
    for i in range(1000):
        bans.record_failure(f"198.51.{i // 256}.{i % 256}")
    assert len(bans._failures) <= 100


# -- administration ------------------------------------------------------------------------


def test_ban_by_hand_replaces_and_lift_removes(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    first = bans.ban("192.0.2.1", "spam", 60, "cli")
    second = bans.ban("192.0.2.1", "worse", 600, "cli")
    assert bans.active() == [second] and first != second
    assert [b.network for b in bans.lift("192.0.2.1")] == ["192.0.2.1"]
    assert bans.is_banned("192.0.2.1") is None
    assert bans.lift("192.0.2.1") == []


def test_lift_by_network_and_by_any_address_of_a_64(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    for ip in ("10.0.0.1", "10.9.9.9", "11.0.0.1", "2001:db8:0:1::1", "2001:db8:0:2::1"):
        bans.ban(ip, "x", 60, "cli")
    assert {b.network for b in bans.lift("10.0.0.0/8")} == {"10.0.0.1", "10.9.9.9"}
    assert [b.network for b in bans.lift("2001:db8:0:1::abcd")] == ["2001:db8:0:1::/64"]
    assert {b.network for b in bans.active()} == {"11.0.0.1", "2001:db8:0:2::/64"}
    with pytest.raises(ValueError):
        bans.lift("not an address")
    with pytest.raises(ValueError):
        bans.ban("10.0.0.0/8", "too wide", 60, "cli")


def test_lift_forgets_earlier_offences(clock):
    bans = BanList(None, policy(allow=()), clock=clock)
    fail(bans, "192.0.2.1", 3)
    bans.lift("192.0.2.1")
    ban = fail(bans, "192.0.2.1", 3)
    assert ban is not None and ban.offences == 1 and ban.until - ban.created == 100


# -- persistence ---------------------------------------------------------------------------


def test_bans_survive_a_restart(tmp_path, clock):
    bans = BanList(tmp_path / "bans.db", policy(allow=()), clock=clock)
    fail(bans, "192.0.2.1", 3)
    bans.ban("2001:db8::1", "by hand", 1000, "cli")
    bans.close()
    mode = sqlite3.connect(tmp_path / "bans.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    again = BanList(tmp_path / "bans.db", policy(allow=()), clock=clock)
    assert {b.network for b in again.active()} == {"192.0.2.1", "2001:db8::/64"}
    assert again.is_banned("192.0.2.1").offences == 1
    clock.now += 100
    assert again.is_banned("192.0.2.1") is None  # expired while "down"
    # The remembered offence doubles the next ban, across the restart.
    assert (fail(again, "192.0.2.1", 3).until - clock.now) == 200
    again.close()


def test_another_process_change_is_seen_on_refresh(tmp_path, clock, caplog):
    caplog.set_level(logging.INFO, logger="mailkeep.bans")
    server = BanList(tmp_path / "bans.db", policy(allow=()), clock=clock)
    cli = BanList(tmp_path / "bans.db", policy(allow=()), clock=clock)
    assert server.refresh() is False  # nothing changed: no re-read
    cli.ban("198.51.100.9", "by hand", 60, "cli")
    assert server.is_banned("198.51.100.9") is None
    assert server.refresh() is True
    assert server.is_banned("198.51.100.9").source == "cli"
    assert any(r.getMessage() == "ip banned" and r.source == "cli" for r in caplog.records)
    fail(server, "198.51.100.10", 2)
    cli2 = BanList(tmp_path / "bans.db", policy(allow=()), clock=clock)
    fail(server, "198.51.100.10", 1)  # banned by the server, seen by a new reader
    assert BanList(tmp_path / "bans.db", policy(allow=()), clock=clock).is_banned(
        "198.51.100.10") is not None
    cli2.lift("198.51.100.10")
    server.refresh()
    assert server.is_banned("198.51.100.10") is None
    assert server.failures("198.51.100.10") == 0
    assert any(r.getMessage() == "ban lifted" for r in caplog.records)
    for b in (server, cli, cli2):
        b.close()


def test_a_locked_file_keeps_the_ban_in_memory_and_saves_it_later(tmp_path, clock):
    path = tmp_path / "bans.db"
    bans = BanList(path, policy(allow=()), clock=clock, busy_timeout=0.01)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    fail(bans, "192.0.2.1", 3)
    assert bans.is_banned("192.0.2.1") is not None and bans.pending_writes() == 1
    blocker.execute("COMMIT")
    bans.refresh()
    assert bans.pending_writes() == 0
    assert BanList(path, policy(allow=()), clock=clock).is_banned("192.0.2.1") is not None
    blocker.close()
    bans.close()


def test_an_unusable_file_gives_a_list_in_memory(tmp_path, caplog):
    (tmp_path / "bans.db").write_bytes(b"this is not a database" * 100)
    bans = BanList.open(tmp_path, policy(allow=()))
    assert bans.path is None
    assert "ban list not persistent" in caplog.text
    bans.ban("192.0.2.1", "x", 60, "cli")
    assert bans.is_banned("192.0.2.1") is not None


# -- what banned clients see ---------------------------------------------------------------


def test_refusals_in_each_protocol():
    assert ban_refusal("smtp", "mx.example.test", False) == (
        f"421 4.7.1 mx.example.test {BANNED_TEXT}\r\n".encode())
    assert ban_refusal("imap", "mx", False) == f"* BYE [UNAVAILABLE] {BANNED_TEXT}\r\n".encode()
    assert ban_refusal("pop3", "mx", False) == f"-ERR [SYS/TEMP] {BANNED_TEXT}\r\n".encode()
    assert ban_refusal("imap", "mx", True) == b""


def test_refused_clients_are_logged_once_a_minute_per_address(clock, caplog):
    caplog.set_level(logging.INFO, logger="mailkeep.bans")
    bans = BanList(None, policy(allow=()), clock=clock)
    bans.ban("192.0.2.1", "x", 600, "cli")
    for _ in range(5):
        bans.note_refusal("192.0.2.1", "imap:127.0.0.1:143")
        clock.now += 10
    bans.note_refusal("192.0.2.2", "imap:127.0.0.1:143")
    clock.now += 20
    bans.note_refusal("192.0.2.1", "imap:127.0.0.1:143")
    refused = [r for r in caplog.records if r.getMessage() == "connection refused"]
    assert [(r.client, r.levelno) for r in refused] == [
        ("192.0.2.1", logging.INFO), ("192.0.2.2", logging.INFO), ("192.0.2.1", logging.INFO)]
    for i in range(MAX_REFUSALS_TRACKED + 50):
        bans.note_refusal(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "x")
    assert len(bans._refusals_logged) <= MAX_REFUSALS_TRACKED


class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"hello\r\n")

    def data_received(self, data):
        self.transport.write(data)


class _EchoListener(SessionListener):
    def new_session(self):
        return _Echo()


async def _exchange(port: int, send: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if send:
        writer.write(send)
    data = b""
    try:
        while b"\n" not in data or (send and send not in data):
            chunk = await asyncio.wait_for(reader.read(1024), 5)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    return data


async def test_the_gate_refuses_banned_clients_before_any_session():
    bans = BanList(None, BanPolicy(allow=()))
    listener = _EchoListener("echo", None)
    made: list[int] = []
    original = listener.new_session
    listener.new_session = lambda: made.append(1) or original()  # type: ignore[method-assign]
    listener.enforce_bans(bans, lambda: b"-ERR go away\r\n")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    await listener.start(sock)
    try:
        assert await _exchange(port, b"ping\r\n") == b"hello\r\nping\r\n"
        bans.ban("127.0.0.1", "test", 60, "test")
        assert await _exchange(port) == b"-ERR go away\r\n"
        assert made == [1]  # no session for the refused client
        bans.lift("127.0.0.1")
        # With a ban in force elsewhere, the gate hands the connection to a session.
        bans.ban("192.0.2.1", "test", 60, "test")
        assert await _exchange(port, b"pong\r\n") == b"hello\r\npong\r\n"
        assert made == [1, 1]
    finally:
        await listener.stop()


# -- the authenticator's hook ----------------------------------------------------------------


@pytest.fixture
def cheap_argon2() -> Iterator[None]:
    """Argon2id with small parameters: the same code path, milliseconds per check."""
    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                                  hash_len=passwords.ARGON2_HASH_LEN,
                                  salt_len=passwords.ARGON2_SALT_LEN, type=argon2.Type.ID)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passwords, "_hasher", cheap)
        yield


async def test_authentication_failures_ban_and_a_ban_refuses_even_the_right_password(
        tmp_path, cheap_argon2, clock):
    passwd = PasswdFile(tmp_path / "passwd")
    passwd.update({"me@example.com": (passwords.hash_password("right"), "")})
    bans = BanList(None, policy(allow=()), clock=clock)

    async def no_sleep(_seconds: float) -> None:
        return None

    auth = Authenticator(passwd, {"me@example.com": Account("me@example.com")},
                         AuthPolicy(max_failures_per_ip=100), secret=b"s" * 32,
                         sleep=no_sleep, bans=bans)
    imap = ClientInfo("imap", "192.0.2.50", True, "TLSv1.3")
    smtp = ClientInfo("smtp", "192.0.2.50", True, "TLSv1.3")
    assert (await auth.login("me@example.com", "wrong", imap)).kind == "failure"
    exchange = auth.start("PLAIN", smtp)  # failures of every protocol count together
    assert (await exchange.step(b"\0me@example.com\0wrong")).kind == "failure"
    assert bans.is_banned("192.0.2.50") is None
    assert (await auth.login("nobody@example.com", "x", imap)).kind == "failure"
    assert bans.is_banned("192.0.2.50") is not None
    step = await auth.login("me@example.com", "right", imap)
    assert step.kind == "failure" and step.reason == "throttled"
    step = await auth.start("PLAIN", smtp).step(b"\0me@example.com\0right")
    assert step.kind == "failure" and step.reason == "throttled"
    # Another address is untouched.
    other = ClientInfo("pop3", "192.0.2.51", True, "TLSv1.3")
    assert (await auth.login("me@example.com", "right", other)).kind == "success"


# -- connection rate -----------------------------------------------------------------------


def test_the_rate_refuses_beyond_the_limit_and_refills(clock):
    rate = ConnectionRate(clock=clock)
    assert [rate.allow("192.0.2.1", 3) for _ in range(4)] == [True, True, True, False]
    assert rate.allow("192.0.2.2", 3)  # per address
    assert rate.allow("2001:db8::1", 1) and not rate.allow("2001:db8::2", 1)  # per /64
    clock.now += RATE_PERIOD / 3  # one token back
    assert rate.allow("192.0.2.1", 3) and not rate.allow("192.0.2.1", 3)
    assert rate.allow("local", 1) and rate.allow("local", 1)


def test_the_rate_memory_is_bounded(clock):
    rate = ConnectionRate(max_tracked=100, clock=clock)
    for i in range(1000):
        rate.allow(f"198.51.{i // 256}.{i % 256}", 5)
    assert rate.tracked() <= 100
    clock.now += RATE_PERIOD
    rate.allow("192.0.2.1", 5)
    assert rate.tracked() == 1  # full buckets are forgotten


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 20),
       gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=200))
def test_the_rate_never_admits_more_than_a_burst_plus_the_refill(limit, gaps):
    clock = Clock(0.0)
    rate = ConnectionRate(clock=clock)
    admitted: list[float] = []
    for gap in gaps:
        clock.now += gap
        if rate.allow("192.0.2.1", limit):
            admitted.append(clock.now)
    # In any interval of length T at most limit + limit * T / 60 connections get in.
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            assert j - i + 1 <= limit + limit * span / RATE_PERIOD + 1e-6


def test_connection_counts_apply_the_rate_with_the_allow_list(clock):
    counts = ConnectionCounts(rate=ConnectionRate(clock=clock))
    for _ in range(5):  # without a ban list, loopback is exempt
        assert counts.admit("127.0.0.1", 100, 100, 2) is None
    assert counts.admit("192.0.2.1", 100, 100, 2) is None
    assert counts.admit("192.0.2.1", 100, 100, 2) is None
    assert counts.admit("192.0.2.1", 100, 100, 2) == "max_connection_rate_per_ip"
    assert counts.per_ip["192.0.2.1"] == 2 and counts.total == 7  # refused: not counted
    assert counts.admit("192.0.2.9", 100, 100, 0) is None  # 0: no limit
    strict = ConnectionCounts(bans=BanList(None, BanPolicy(allow=())),
                              rate=ConnectionRate(clock=clock))
    assert strict.admit("127.0.0.1", 100, 100, 1) is None
    assert strict.admit("127.0.0.1", 100, 100, 1) == "max_connection_rate_per_ip"
    assert strict.admit("local", 100, 100, 1) is None and strict.admit("local", 100, 100, 1) is None


# -- the CLI -------------------------------------------------------------------------------


def _config(tmp_path: Path, allow: str = "") -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(f'hostname = "mx.example.test"\ndata_dir = "data"\n[auth]\n'
                    f'ban_duration = "2h"\n{allow}')
    (tmp_path / "data").mkdir(exist_ok=True)
    return path


def test_cli_list_add_lift(tmp_path, capsys):
    config = str(_config(tmp_path))
    assert cli_main(["ban", "list", "-c", config]) == 0
    assert capsys.readouterr().out == "No bans in force\n"
    assert not (tmp_path / "data" / "bans.db").exists()  # listing creates nothing
    assert cli_main(["ban", "add", "198.51.100.7", "-c", config, "--reason", "spraying"]) == 0
    assert capsys.readouterr().out.startswith("banned 198.51.100.7 until ")
    assert cli_main(["ban", "add", "2001:db8::1", "--for", "30m", "-c", config]) == 0
    assert "(30m)" in capsys.readouterr().out
    assert cli_main(["ban", "list", "-c", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ADDRESS", "UNTIL", "LEFT", "SOURCE", "BANS", "REASON"]
    assert out[1].startswith("2001:db8::/64 ") and " 30m " in out[1]
    assert out[2].startswith("198.51.100.7 ") and " 2h " in out[2] and out[2].endswith("spraying")
    assert out[3] == "-- 2 bans in force"
    assert cli_main(["ban", "lift", "198.51.100.7", "-c", config]) == 0
    assert capsys.readouterr().out == "lifted 198.51.100.7\n"
    assert cli_main(["ban", "lift", "198.51.100.7", "-c", config]) == 1
    assert "no ban in force" in capsys.readouterr().err
    stored = BanList(tmp_path / "data" / "bans.db", BanPolicy())
    assert [b.network for b in stored.active()] == ["2001:db8::/64"]
    stored.close()


def test_cli_refusals(tmp_path, capsys):
    config = str(_config(tmp_path))
    assert cli_main(["ban", "add", "127.0.0.1", "-c", config]) == 1
    assert "ban_allow" in capsys.readouterr().err
    assert cli_main(["ban", "add", "not-an-ip", "-c", config]) == 2
    assert "not an IP address" in capsys.readouterr().err
    assert cli_main(["ban", "add", "192.0.2.1", "--for", "soon", "-c", config]) == 2
    assert cli_main(["ban", "lift", "300.1.1.1", "-c", config]) == 2
    assert cli_main(["ban", "list", "-c", str(tmp_path / "missing.toml")]) == 78
    capsys.readouterr()
    assert cli_main(["ban"]) == 2  # no action: the help, and a usage error
