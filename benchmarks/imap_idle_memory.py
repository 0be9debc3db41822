"""Memory of many idle IMAPS sessions: N clients log in with SCRAM-SHA-256 and sit in IDLE.

Issue 3's target: 10,000 concurrent IMAPS sessions in IDLE with the server's resident
memory (all its processes) under 500 MB. This script opens the sessions, waits until every
one has seen "+ idling", and then reads the memory of the server's whole process tree
from /proc: the sum of VmRSS (what the issue asks for; shared pages of several
processes count once per process) and the sum of Pss (shared pages divided among the
processes that map them: the fairer figure for multi-process servers such as Dovecot).

Each session does what a mail client that keeps a folder open does: implicit TLS
(RFC 8314), AUTHENTICATE SCRAM-SHA-256 (RFC 7677, with SASL-IR when offered, RFC 4959),
SELECT INBOX, IDLE (RFC 2177). The client side uses Mailkeep's lean TLS transport
(asyncio's would cost the client 2.5 GB of buffers for 10,000 connections) and derives
the salted SCRAM password once (PBKDF2 is deliberately slow, RFC 5802 §3).

Connections come from several loopback source addresses (127.0.0.2 and up) so that
per-IP limits (Mailkeep's ``imap.max_connections_per_ip``, Dovecot's
``mail_max_userip_connections``) hold as configured instead of being raised.

Targets (any combination, measured one after the other in the same run):

  --port P --pid PID [--host H --user U --password W]   a server that is already running
  --start-mailkeep    a fresh `mailkeep serve` in a temporary directory (config written
                      here, password set with `mailkeep account passwd --password-stdin`)
  --dovecot           a throwaway Dovecot 2.3 (tests/support/dovecot.py), default process
                      model: one imap-login and one imap process per session

Examples:

  .venv/bin/python benchmarks/imap_idle_memory.py --start-mailkeep            # 10,000
  .venv/bin/python benchmarks/imap_idle_memory.py --start-mailkeep --sessions 2000 \\
      --dovecot --dovecot-sessions 200

Every wait is bounded (--timeout for the whole run, --step-timeout per protocol step);
sessions that fail are counted by reason and do not count as idle.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import functools
import math
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.support when run as a script

import scramp.core  # noqa: E402
from scramp import ScramClient  # noqa: E402
from tests.support.procs import (  # noqa: E402
    ProcessError,
    WaitTimeout,
    free_port,
    run_command,
    start_process,
    stop_process,
    wait_for_port,
)

from mailkeep.servers import tlsio  # noqa: E402

MAILKEEP = Path(sys.executable).with_name("mailkeep")
BENCH_USER = "idle@bench.test"
BENCH_PASSWORD = "idle-bench-password-1"
#: Mailkeep's default imap.max_connections_per_ip, kept in the generated config.
MAILKEEP_PER_IP = 100
#: Dovecot's default mail_max_userip_connections (per user and client address).
DOVECOT_PER_IP = 10
#: Sessions that log in and out before the baseline is read, so lazy imports, caches and
#: Dovecot's first processes are in the baseline, not in the per-session figure.
WARMUP_SESSIONS = 10
#: The IMAP responses we wait for are short; anything longer is an error, not a reason
#: to buffer without bound.
MAX_RESPONSE_LINE = 64 * 1024

# RFC 5802 §3: SaltedPassword = Hi(password, salt, i) is the deliberately slow step, the
# same for every session of one account: compute it once. (scramp looks ``hi`` up in its
# module at call time.)
_scramp_hi = scramp.core.hi


@functools.lru_cache(maxsize=16)
def _salted_password(hf, password: bytes, salt: bytes, iterations: int) -> bytes:
    return _scramp_hi(hf, password, salt, iterations)


scramp.core.hi = lambda hf, password, salt, i: _salted_password(hf, password, salt, int(i))


class SessionFailed(Exception):
    """One session did not reach IDLE; the message is the reason counted in the summary."""


# -- one IMAP session ---------------------------------------------------------------------

class IdleClient(asyncio.Protocol):
    """Reads CRLF-terminated response lines; after IDLE it only discards input."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._closed: BaseException | None = None
        self.idling = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.idling:
            return  # untagged updates during IDLE: not needed here, not kept
        self._buffer += data
        if len(self._buffer) > MAX_RESPONSE_LINE and b"\n" not in self._buffer:
            self._fail(SessionFailed("response line too long"))
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SessionFailed("server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SessionFailed(f"connection lost: {exc}" if exc else "connection closed"))

    def _fail(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def readline(self, timeout: float) -> str:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 2]
                return line.decode("utf-8", "replace")
            if self._closed is not None:
                raise self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise SessionFailed("timeout waiting for the server")
            try:
                await asyncio.wait_for(self._waiter, left)
            except TimeoutError:
                raise SessionFailed("timeout waiting for the server") from None
            finally:
                self._waiter = None

    def send(self, line: str) -> None:
        assert self.transport is not None
        self.transport.write(line.encode() + b"\r\n")

    async def tagged(self, tag: str, timeout: float) -> str:
        """Skip untagged responses; return the tagged one (or raise on NO/BAD)."""
        while True:
            line = await self.readline(timeout)
            if line.startswith(tag + " "):
                status = line[len(tag) + 1:].split(" ", 1)[0].upper()
                if status != "OK":
                    raise SessionFailed(f"{tag}: {line[len(tag) + 1:][:80]}")
                return line


async def open_idle_session(host: str, port: int, user: str, password: str,
                            source: str | None, context: ssl.SSLContext,
                            step_timeout: float, select: bool) -> IdleClient:
    try:
        transport, protocol = await asyncio.wait_for(tlsio.open_tls_connection(
            IdleClient, host, port, context, server_hostname="localhost",
            handshake_timeout=step_timeout,
            local_addr=(source, 0) if source else None), step_timeout)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise SessionFailed(f"connect/TLS: {type(exc).__name__}: {exc}"[:120]) from None
    client = protocol
    assert isinstance(client, IdleClient)
    try:
        greeting = await client.readline(step_timeout)
        if not greeting.startswith("* OK"):
            raise SessionFailed(f"greeting: {greeting[:80]}")
        await authenticate_scram(client, user, password, greeting, step_timeout)
        if select:
            client.send("a2 SELECT INBOX")
            await client.tagged("a2", step_timeout)
        client.send("a3 IDLE")
        while True:
            line = await client.readline(step_timeout)
            if line.startswith("+"):
                break
            if line.startswith("a3 "):
                raise SessionFailed(f"IDLE: {line[3:][:80]}")
        client.idling = True
        client._buffer = bytearray()
    except BaseException:
        transport.abort()
        raise
    return client


async def authenticate_scram(client: IdleClient, user: str, password: str, greeting: str,
                             timeout: float) -> None:
    """RFC 7677 SCRAM-SHA-256 through IMAP AUTHENTICATE (RFC 9051 §6.2.2)."""
    scram = ScramClient(["SCRAM-SHA-256"], user, password)
    first = base64.b64encode(scram.get_client_first().encode()).decode()
    if "SASL-IR" in greeting.upper():
        client.send(f"a1 AUTHENTICATE SCRAM-SHA-256 {first}")  # RFC 4959
    else:
        client.send("a1 AUTHENTICATE SCRAM-SHA-256")
        await _continuation(client, timeout)
        client.send(first)
    server_first = await _continuation(client, timeout)
    scram.set_server_first(server_first)
    client.send(base64.b64encode(scram.get_client_final().encode()).decode())
    while True:
        line = await client.readline(timeout)
        if line.startswith("+"):
            # The server's final message (v=ServerSignature) as a challenge; an empty
            # answer completes the exchange.
            scram.set_server_final(base64.b64decode(line[1:].strip()).decode())
            client.send("")
            continue
        if line.startswith("a1 "):
            if not line[3:].upper().startswith("OK"):
                raise SessionFailed(f"AUTHENTICATE: {line[3:][:80]}")
            return


async def _continuation(client: IdleClient, timeout: float) -> str:
    while True:
        line = await client.readline(timeout)
        if line.startswith("+"):
            return base64.b64decode(line[1:].strip()).decode()
        if line.startswith("a1 "):
            raise SessionFailed(f"AUTHENTICATE: {line[3:][:80]}")


# -- memory of a process tree --------------------------------------------------------------

def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: parse after the last ")".
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children[ppid].append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


@dataclass
class Memory:
    rss_kib: int = 0
    pss_kib: int = 0
    processes: int = 0

    @classmethod
    def of_tree(cls, root: int) -> Memory:
        memory = cls()
        for pid in process_tree(root):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue  # exited meanwhile
            memory.rss_kib += _kib_field(status, "VmRSS:")
            memory.pss_kib += _kib_field(rollup, "Pss:")
            memory.processes += 1
        return memory


def _kib_field(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    return 0  # kernel threads and zombies have no such line


def own_rss_kib() -> int:
    return _kib_field(Path("/proc/self/status").read_text(), "VmRSS:")


# -- the measurement --------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    host: str
    port: int
    user: str
    password: str
    pid: int
    per_ip: int


@dataclass
class Result:
    target: Target
    wanted: int
    idle: int = 0
    still_idle: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)
    setup_seconds: float = 0.0
    baseline: Memory = field(default_factory=Memory)
    loaded: Memory = field(default_factory=Memory)
    client_rss_kib: int = 0

    def per_session_kib(self, attr: str) -> float:
        if not self.still_idle:
            return float("nan")
        return (getattr(self.loaded, attr) - getattr(self.baseline, attr)) / self.still_idle


def source_addresses(sessions: int, per_ip: int) -> list[str]:
    """127.0.0.2, 127.0.0.3, ...: enough that no address carries more than ``per_ip``."""
    count = max(1, math.ceil(sessions / per_ip))
    if count > 250 * 250:
        raise SystemExit(f"{sessions} sessions at {per_ip} per address need too many addresses")
    return [f"127.0.{i // 250}.{i % 250 + 2}" for i in range(count)]


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    # A benchmark of memory, not of certificate checking: both servers use throwaway
    # certificates.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def measure(target: Target, sessions: int, *, concurrency: int, step_timeout: float,
                  settle: float, deadline: float, select: bool) -> Result:
    result = Result(target, sessions)
    context = client_context()
    sources = source_addresses(sessions, target.per_ip)
    loop = asyncio.get_running_loop()

    async def one(index: int) -> IdleClient:
        return await open_idle_session(target.host, target.port, target.user, target.password,
                                       sources[index % len(sources)], context, step_timeout,
                                       select)

    print(f"[{target.name}] warm-up: {WARMUP_SESSIONS} sessions", flush=True)
    warm = await asyncio.gather(*(one(i) for i in range(WARMUP_SESSIONS)),
                                return_exceptions=True)
    for item in warm:
        if isinstance(item, BaseException):
            raise SystemExit(f"[{target.name}] a warm-up session failed: {item}")
        item.send("DONE")
        item.send("a9 LOGOUT")
        assert item.transport is not None
        item.transport.close()
    await asyncio.sleep(settle)
    result.baseline = Memory.of_tree(target.pid)

    clients: list[IdleClient] = []
    limit = asyncio.Semaphore(concurrency)
    began = time.monotonic()
    last_report = began

    async def limited(index: int) -> None:
        nonlocal last_report
        async with limit:
            if loop.time() > deadline:
                result.failures["run time limit reached"] += 1
                return
            try:
                clients.append(await one(index))
            except SessionFailed as exc:
                result.failures[str(exc)] += 1
        now = time.monotonic()
        if now - last_report >= 5:
            last_report = now
            print(f"[{target.name}] {len(clients)} idle, {sum(result.failures.values())} "
                  f"failed, {now - began:.0f} s", flush=True)

    print(f"[{target.name}] opening {sessions} sessions from {len(sources)} source "
          f"address(es), {concurrency} at a time", flush=True)
    await asyncio.gather(*(limited(i) for i in range(sessions)))
    result.setup_seconds = time.monotonic() - began
    result.idle = len(clients)
    await asyncio.sleep(settle)
    result.still_idle = sum(1 for c in clients
                            if c.transport is not None and not c.transport.is_closing())
    result.loaded = Memory.of_tree(target.pid)
    result.client_rss_kib = own_rss_kib()
    for client in clients:
        if client.transport is not None:
            client.transport.abort()
    await asyncio.sleep(0.5)  # let the aborts go out before the server is stopped
    return result


# -- servers this script starts ---------------------------------------------------------------

MAILKEEP_CONFIG = """\
# Written by benchmarks/imap_idle_memory.py for one run.
hostname = "localhost"
data_dir = "data"

[log]
level = "warning"
file = "{log}"

[imap]
max_connections = {max_connections}
max_connections_per_ip = {per_ip}
max_connections_per_account = {max_connections}

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:{port}"

[domains."bench.test"]

[accounts."{user}"]
"""


class MailkeepIMAP:
    """`mailkeep serve` with one IMAPS listener and one account, in a temporary directory."""

    def __init__(self, sessions: int, keep: bool) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mailkeep-idle-"))
        self.keep = keep
        self.port = free_port()
        self.config = self.directory / "mailkeep.toml"
        self.log = self.directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.config.write_text(MAILKEEP_CONFIG.format(
            log=self.log, max_connections=sessions + WARMUP_SESSIONS + 100,
            per_ip=MAILKEEP_PER_IP, port=self.port, user=BENCH_USER))

    def start(self) -> Target:
        if not os.access(MAILKEEP, os.X_OK):
            raise SystemExit(f"{MAILKEEP} not found: run with the project's .venv/bin/python")
        run_command([MAILKEEP, "account", "passwd", "--password-stdin", "-c", self.config,
                     BENCH_USER], input_bytes=(BENCH_PASSWORD + "\n").encode(), timeout=60)
        self.process = start_process([MAILKEEP, "serve", "-c", self.config],
                                     log_path=self.directory / "serve.out",
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for_port(self.port, timeout=60, process=self.process, log_path=self.log)
        return Target("mailkeep", "127.0.0.1", self.port, BENCH_USER, BENCH_PASSWORD,
                      self.process.pid, MAILKEEP_PER_IP)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=60, sig=signal.SIGTERM)
            self.process = None
        if self.keep:
            print(f"[mailkeep] kept {self.directory}")
        else:
            shutil.rmtree(self.directory, ignore_errors=True)


def dovecot_instance(sessions: int, keep: bool):  # type: ignore[no-untyped-def]
    """A throwaway Dovecot whose process limits admit ``sessions`` sessions.

    Everything else is Dovecot's default, including high-security mode (an imap-login
    process per connection, which also terminates its TLS) and the per-user-and-address
    limit of 10 connections.
    """
    from tests.support.dovecot import DovecotUnavailable, ThrowawayDovecot

    total = sessions + WARMUP_SESSIONS
    settings = {
        # Each session is an imap-login and an imap process (defaults allow 100 of each).
        "default_process_limit": str(total + 50),
        # The auth, anvil and log services get a connection from each of those processes.
        "default_client_limit": str(max(1000, 2 * total + 100)),
    }
    try:
        return ThrowawayDovecot({BENCH_USER: BENCH_PASSWORD}, settings=settings,
                                keep_dir=keep)
    except DovecotUnavailable as exc:
        raise SystemExit(str(exc)) from None


# -- reporting ------------------------------------------------------------------------------------

def report(results: list[Result], limit_mb: float) -> None:
    print()
    header = ("server", "idle", "failed", "setup s", "procs", "RSS base MB", "RSS MB",
              "RSS/session KiB", "PSS MB", "PSS/session KiB")
    rows = []
    for r in results:
        rows.append((r.target.name, f"{r.still_idle}/{r.wanted}", sum(r.failures.values()),
                     f"{r.setup_seconds:.1f}", r.loaded.processes,
                     f"{r.baseline.rss_kib / 1024:.1f}", f"{r.loaded.rss_kib / 1024:.1f}",
                     f"{r.per_session_kib('rss_kib'):.1f}", f"{r.loaded.pss_kib / 1024:.1f}",
                     f"{r.per_session_kib('pss_kib'):.1f}"))
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(cell).rjust(w) if i else str(cell).ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    for r in results:
        for reason, count in r.failures.most_common(5):
            print(f"  {r.target.name}: {count} x {reason}")
        print(f"  {r.target.name}: benchmark client RSS {r.client_rss_kib / 1024:.0f} MB")
    by_name = {r.target.name: r for r in results}
    mk, dc = by_name.get("mailkeep"), by_name.get("dovecot")
    if mk is not None and dc is not None:
        print(f"per-session RSS mailkeep/dovecot: "
              f"{mk.per_session_kib('rss_kib') / dc.per_session_kib('rss_kib'):.3f}x, "
              f"PSS {mk.per_session_kib('pss_kib') / dc.per_session_kib('pss_kib'):.3f}x")
    for r in results:
        if r.target.name != "dovecot":
            verdict = "under" if r.loaded.rss_kib / 1024 < limit_mb else "OVER"
            print(f"{r.target.name}: {r.still_idle} idle sessions, RSS "
                  f"{r.loaded.rss_kib / 1024:.0f} MB, {verdict} the {limit_mb:.0f} MB target")


def raise_fd_limit(sessions: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = sessions + WARMUP_SESSIONS + 1000
    if soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = new_soft
    if soft < sessions + WARMUP_SESSIONS + 100:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is too low for {sessions} "
                         "sessions; raise it (ulimit -Hn) or use --sessions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000,
                        help="idle sessions against Mailkeep (default 10000)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="IMAPS port of a running server")
    parser.add_argument("--pid", type=int, help="pid of that server (its tree is measured)")
    parser.add_argument("--user", default=BENCH_USER)
    parser.add_argument("--password", default=BENCH_PASSWORD)
    parser.add_argument("--per-ip", type=int, default=MAILKEEP_PER_IP,
                        help="sessions per source address for --port (default 100)")
    parser.add_argument("--start-mailkeep", action="store_true",
                        help="start a fresh `mailkeep serve` and measure it")
    parser.add_argument("--dovecot", action="store_true",
                        help="also measure a throwaway Dovecot in the same run")
    parser.add_argument("--dovecot-sessions", type=int, default=200,
                        help="idle sessions against Dovecot (default 200: ~2 processes each)")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="sessions being set up at the same time (default 100)")
    parser.add_argument("--no-select", action="store_true",
                        help="IDLE in the authenticated state instead of after SELECT INBOX")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait before each memory reading (default 3)")
    parser.add_argument("--step-timeout", type=float, default=60.0,
                        help="limit for each protocol step of a session (default 60 s)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="limit for the whole run (default 30 min)")
    parser.add_argument("--limit-mb", type=float, default=500.0,
                        help="the RSS target to compare with (default 500 MB)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args()
    if args.port is not None and args.pid is None:
        parser.error("--port needs --pid (the server whose memory is measured)")
    if not (args.port or args.start_mailkeep or args.dovecot):
        parser.error("nothing to measure: give --port/--pid, --start-mailkeep or --dovecot")
    raise_fd_limit(max(args.sessions, args.dovecot_sessions))
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    options = {"concurrency": args.concurrency, "step_timeout": args.step_timeout,
               "settle": args.settle, "deadline": deadline, "select": not args.no_select}
    results: list[Result] = []
    try:
        if args.port is not None:
            target = Target("server", args.host, args.port, args.user, args.password,
                            args.pid, args.per_ip)
            results.append(await measure(target, args.sessions, **options))
        if args.start_mailkeep:
            server = MailkeepIMAP(args.sessions, args.keep)
            try:
                target = await asyncio.to_thread(server.start)
                results.append(await measure(target, args.sessions, **options))
            finally:
                await asyncio.to_thread(server.stop)
        if args.dovecot:
            dovecot = dovecot_instance(args.dovecot_sessions, args.keep)
            await asyncio.to_thread(dovecot.start)
            try:
                assert dovecot.pid is not None
                target = Target("dovecot", "127.0.0.1", dovecot.ports.imaps, BENCH_USER,
                                BENCH_PASSWORD, dovecot.pid, DOVECOT_PER_IP)
                results.append(await measure(target, args.dovecot_sessions, **options))
            finally:
                await asyncio.to_thread(dovecot.stop)
    except (ProcessError, WaitTimeout) as exc:
        raise SystemExit(f"a server did not start: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            if results:
                report(results, args.limit_mb)


if __name__ == "__main__":
    main()
