"""Outbound throughput: the same load submitted to Mailkeep and to Postfix, both relaying to
Postfix's ``smtp-sink``, same machine, same run.

What is timed, for each server: from the first connection of the submitting client until
smtp-sink has received every message (its ``-M COUNT`` makes it exit then). That covers the
whole path a user's mail takes: submission (durable queue file before the 250), queue
manager, SMTP client, the peer's 250.

- Postfix: a throwaway private instance (``tests/support/postfix.py`` relayhost mode):
  smtpd (mail from 127.0.0.1 relayed, as ``mynetworks`` allows) → cleanup (fsync) → qmgr →
  smtp(8) to ``[127.0.0.1]:SINK``.
- Mailkeep: ``mailkeep localserve`` with ``[delivery] relayhost`` pointing at the sink; the
  client authenticates (AUTH PLAIN on loopback), which Postfix's client does not have to
  do, so Mailkeep pays a little more per session.

The submitting client is the same small asyncio program for both (pipelined MAIL/RCPT/DATA,
one connection per session reused for its share of the messages). Rounds alternate the
order of the servers; medians and the ratio are printed.

Usage: .venv/bin/python benchmarks/smtp_outbound.py [--messages 5000] [--size 2048]
       [--sessions 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import subprocess
import sys
import time

import common
from common import BenchmarkError, MailkeepServer, format_table, median
from tests.support.postfix import PostfixUnavailable, ThrowawayPostfix, require_postfix
from tests.support.procs import free_port, group_cpu_seconds

SMTP_SINK = "/usr/sbin/smtp-sink"
PASSWORD = common.LOCALSERVE_PASSWORD
SENDER = "demo@localhost"
RECIPIENT = "someone@bench-destination.test"
MAX_MESSAGES = 1_000_000
MAX_SESSIONS = 500


def _payload(size: int, n: int, sender: str) -> bytes:
    header = (f"From: <{sender}>\r\nTo: <{RECIPIENT}>\r\nSubject: outbound {n}\r\n"
              f"Message-ID: <bench.{n}.{time.time_ns()}@bench.test>\r\n"
              "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n").encode()
    line = b"x" * 70 + b"\r\n"
    body = line * max(1, (size - len(header)) // len(line))
    return header + body


async def _session(port: int, count: int, first: int, size: int,
                   auth: tuple[str, str] | None, sender: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise BenchmarkError("server closed the connection")
            if line[3:4] != b"-":
                return line

    async def expect(prefix: bytes) -> None:
        line = await reply()
        if not line.startswith(prefix):
            raise BenchmarkError(f"unexpected reply {line!r}")

    await expect(b"220")
    writer.write(b"EHLO client.bench.test\r\n")
    await expect(b"250")
    if auth is not None:
        token = base64.b64encode(f"\0{auth[0]}\0{auth[1]}".encode()).decode()
        writer.write(f"AUTH PLAIN {token}\r\n".encode())
        await expect(b"235")
    sent = 0
    for n in range(first, first + count):
        writer.write(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
        await expect(b"250")
        await expect(b"250")
        await expect(b"354")
        writer.write(_payload(size, n, sender) + b".\r\n")
        await expect(b"250")
        sent += 1
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()
    return sent


async def _submit(port: int, messages: int, sessions: int, size: int,
                  auth: tuple[str, str] | None, sender: str) -> int:
    share, extra = divmod(messages, sessions)
    jobs, first = [], 0
    for i in range(sessions):
        count = share + (1 if i < extra else 0)
        if count:
            jobs.append(_session(port, count, first, size, auth, sender))
        first += count
    return sum(await asyncio.gather(*jobs))


class Sink:
    """smtp-sink that exits after ``count`` messages: its exit is the finish line."""

    def __init__(self, count: int) -> None:
        self.port = free_port()
        self.count = count
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-M", str(count), f"127.0.0.1:{self.port}", "500"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        common.wait_for_smtp_greeting(self.port, timeout=10, process=self.proc)

    def wait(self, timeout: float) -> float:
        began = time.perf_counter()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            raise BenchmarkError(f"smtp-sink did not receive {self.count} messages in "
                                 f"{timeout:.0f} s") from exc
        return time.perf_counter() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _run(server: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """(seconds until every 250, seconds until the sink had everything, CPU seconds)."""
    total = args.messages + args.warmup
    sink = Sink(total)
    try:
        if server == "postfix":
            with ThrowawayPostfix.relayhost(
                    f"127.0.0.1:{sink.port}",
                    extra_main_cf={"smtp_tls_security_level": "none",
                                   "default_destination_concurrency_limit": "20",
                                   "smtpd_client_connection_count_limit": "0"}) as postfix:
                if args.warmup:
                    asyncio.run(_submit(postfix.port, args.warmup, 1, args.size, None,
                                        "sender@bench.test"))
                pid = postfix.master_pid
                cpu0 = group_cpu_seconds(pid)
                began = time.perf_counter()
                asyncio.run(_submit(postfix.port, args.messages, args.sessions, args.size,
                                    None, "sender@bench.test"))
                accepted = time.perf_counter() - began
                sink.wait(args.timeout)
                done = time.perf_counter() - began
                return accepted, done, group_cpu_seconds(pid) - cpu0
        extra = (f"\n[relays.sink]\nhost = \"[127.0.0.1]:{sink.port}\"\ntls = \"may\"\n"
                 "\n[delivery]\nrelayhost = \"sink\"\nmta_sts = false\ndane = false\n"
                 "\n[submission]\nmax_messages_per_hour = 0\nmax_recipients_per_day = 0\n")
        with MailkeepServer(extra_config=extra) as mk:
            port = mk.ports["submission"]
            auth = (SENDER, PASSWORD)
            if args.warmup:
                asyncio.run(_submit(port, args.warmup, 1, args.size, auth, SENDER))
            assert mk.process is not None
            cpu0 = group_cpu_seconds(mk.process.pid)
            began = time.perf_counter()
            asyncio.run(_submit(port, args.messages, args.sessions, args.size, auth, SENDER))
            accepted = time.perf_counter() - began
            sink.wait(args.timeout)
            done = time.perf_counter() - began
            return accepted, done, group_cpu_seconds(mk.process.pid) - cpu0
    finally:
        sink.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= MAX_MESSAGES or not 1 <= args.sessions <= MAX_SESSIONS:
        parser.error("--messages 1..1000000, --sessions 1..500")
    if not os.access(SMTP_SINK, os.X_OK):
        raise SystemExit("smtp-sink is missing: run `make test` once (installs postfix)")
    try:
        require_postfix()
    except PostfixUnavailable as exc:
        raise SystemExit(str(exc)) from exc
    results: dict[str, list[tuple[float, float, float]]] = {"postfix": [], "mailkeep": []}
    for round_no in range(args.rounds):
        order = ("postfix", "mailkeep") if round_no % 2 == 0 else ("mailkeep", "postfix")
        for server in order:
            accepted, done, cpu = _run(server, args)
            results[server].append((accepted, done, cpu))
            print(f"round {round_no + 1} {server:8}: {args.messages / done:8.1f} msgs/s "
                  f"delivered, {args.messages / accepted:8.1f} msgs/s accepted, "
                  f"{cpu * 1000 / args.messages:.2f} ms CPU/msg", flush=True)
    rows = []
    rate = {}
    for server, runs in results.items():
        done = median([r[1] for r in runs])
        accepted = median([r[0] for r in runs])
        cpu = median([r[2] for r in runs])
        rate[server] = args.messages / done
        rows.append([server, f"{args.messages / accepted:.1f}", f"{rate[server]:.1f}",
                     f"{cpu * 1000 / args.messages:.2f}"])
    print()
    print(f"{args.messages} messages of {args.size} bytes, {args.sessions} sessions, "
          f"{args.rounds} rounds, {platform.machine()} {os.cpu_count()} CPUs; medians")
    print(format_table(["server", "accepted msgs/s", "delivered msgs/s", "CPU ms/msg"], rows))
    print(f"\nratio Mailkeep/Postfix (delivered msgs/s): "
          f"{rate['mailkeep'] / rate['postfix']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
