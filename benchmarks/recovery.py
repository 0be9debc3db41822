"""Crash recovery under load: kill -9 Mailkeep at random moments, lose no acknowledged mail.

Mailkeep's durability rule (docs/architecture.md) is that a 250 is sent only after the
store commit is durable, so a crash at any instant loses nothing that was acknowledged; a
crash may at worst make a message arrive twice (the client never saw the 250 and retries).

This script checks that from the outside. Several client threads send uniquely numbered
messages with smtplib, and record each one for which they received a 250. At a random
moment the server is killed with SIGKILL (no shutdown code runs), restarted (its start-up
recovery runs), and loaded again, several times over. At the end every acknowledged message
must be in the store, byte for byte as it was sent (after the trace headers Mailkeep
prepends). The result line reads ``acknowledged N, found M, lost K``; the exit status is 1
if anything was lost or altered.

What it does not test: a kernel crash or power cut (the page cache survives a killed
process, so an fsync missing from the code would go unnoticed here).

Usage: .venv/bin/python benchmarks/recovery.py [--cycles 5] [--threads 4] [--seed N]
"""

from __future__ import annotations

import argparse
import email.utils
import random
import re
import smtplib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import common
from common import DEMO_ACCOUNT, MAILKEEP, BenchmarkError, MailkeepServer

#: Input bounds, so that a typo cannot start an endless run.
MAX_CYCLES = 100
MAX_THREADS = 64
MAX_TOTAL_MESSAGES = 200_000
MAX_MESSAGE_SIZE = 1_000_000
#: Per-operation socket timeout of the clients (seconds).
CLIENT_TIMEOUT = 15.0
#: Longest a client thread may take to notice the crash and finish (seconds).
JOIN_TIMEOUT = 30.0

SENDER = "recovery@bench.test"
ID_HEADER = b"X-Bench-Id"
_ID_PATTERN = re.compile(rb"^X-Bench-Id: ([A-Za-z0-9-]+)\r?$", re.MULTILINE)


@dataclass
class Ledger:
    """What the clients sent and what the server acknowledged (shared by the threads)."""

    acknowledged: dict[str, bytes] = field(default_factory=dict)
    attempted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_number(self, limit: int) -> int | None:
        """Reserve the next message number, or None once ``limit`` messages were tried."""
        with self.lock:
            if self.attempted >= limit:
                return None
            self.attempted += 1
            return self.attempted

    def acknowledge(self, message_id: str, data: bytes) -> None:
        with self.lock:
            self.acknowledged[message_id] = data


def build_message(message_id: str, rng: random.Random, max_size: int) -> bytes:
    """A message with a unique id and a body that exercises the DATA reader.

    The body mixes lines starting with "." (dot-stuffed on the wire, RFC 5321 §4.5.2, and
    restored by the server), empty lines and long lines below the 998-octet limit
    (RFC 5322 §2.1.1), so "byte-exact" covers more than plain text.
    """
    header = (
        # Date and From are the two mandatory fields (RFC 5322 §3.6): a server must not need
        # to add anything inside the message for it to be complete.
        f"Date: {email.utils.formatdate()}\r\n"
        f"From: Recovery <{SENDER}>\r\n"
        f"To: <{DEMO_ACCOUNT}>\r\n"
        f"Subject: recovery {message_id}\r\n"
        f"Message-ID: <{message_id}@bench.test>\r\n"
        f"{ID_HEADER.decode()}: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    target = rng.randint(64, max(64, max_size))
    lines: list[bytes] = []
    size = len(header)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 .,-"
    while size < target:
        kind = rng.random()
        if kind < 0.1:
            line = b"." + bytes(rng.choices(alphabet, k=rng.randint(0, 40)))
        elif kind < 0.15:
            line = b""
        elif kind < 0.2:
            line = bytes(rng.choices(alphabet, k=rng.randint(500, 990)))
        else:
            line = bytes(rng.choices(alphabet, k=rng.randint(1, 76)))
        lines.append(line)
        size += len(lines[-1]) + 2
    lines.append(f"end of {message_id}".encode())
    return header + b"\r\n".join(lines) + b"\r\n"


def client_loop(port: int, ledger: Ledger, stop: threading.Event, run_id: str, cycle: int,
                thread_number: int, args: argparse.Namespace, seed: int) -> None:
    """Send messages until told to stop; record every one that got a 250."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=CLIENT_TIMEOUT) as client:
                client.ehlo("recovery.bench.test")
                # Some connections carry one message, some several (RFC 5321 §3.3 allows
                # any number of transactions per session): both paths must be crash-safe.
                for _ in range(rng.randint(1, 8)):
                    number = ledger.next_number(args.max_messages)
                    if number is None or stop.is_set():
                        return
                    message_id = f"{run_id}-{cycle}-{thread_number}-{number}"
                    data = build_message(message_id, rng, args.max_size)
                    refused = client.sendmail(SENDER, [DEMO_ACCOUNT], data)
                    if not refused:
                        ledger.acknowledge(message_id, data)
        except (OSError, smtplib.SMTPException):
            # The server died (or is not up yet): whatever was in flight is unacknowledged.
            if not stop.is_set():
                time.sleep(0.05)


def stored_by_id(messages: list[bytes]) -> dict[str, list[bytes]]:
    """Group stored messages by their X-Bench-Id header (in the header section only)."""
    found: dict[str, list[bytes]] = {}
    for message in messages:
        head = message.split(b"\r\n\r\n", 1)[0]
        match = _ID_PATTERN.search(head)
        if match:
            found.setdefault(match.group(1).decode(), []).append(message)
    return found


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="kill -9 Mailkeep repeatedly under SMTP load; check that every "
        "acknowledged message survives, byte-exact.",
    )
    parser.add_argument("--cycles", type=_bounded_int(1, MAX_CYCLES), default=5,
                        help="how many times to kill and restart the server (default 5)")
    parser.add_argument("--threads", type=_bounded_int(1, MAX_THREADS), default=4,
                        help="concurrent SMTP clients (default 4)")
    parser.add_argument("--min-delay", type=float, default=0.3,
                        help="earliest kill, seconds after the load starts (default 0.3)")
    parser.add_argument("--max-delay", type=float, default=2.5,
                        help="latest kill, seconds after the load starts (default 2.5)")
    parser.add_argument("--max-messages", type=_bounded_int(1, MAX_TOTAL_MESSAGES),
                        default=20_000, help="stop sending after this many (default 20000)")
    parser.add_argument("--max-size", type=_bounded_int(64, MAX_MESSAGE_SIZE), default=20_000,
                        help="largest message in bytes; sizes are random (default 20000)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed, to replay a run (default: random, printed)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="limit for the whole run in seconds (default 600)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the server's temporary directory for inspection")
    args = parser.parse_args(argv)
    if not 0 <= args.min_delay <= args.max_delay <= 60:
        parser.error("need 0 <= --min-delay <= --max-delay <= 60")
    return args


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    run_id = f"r{seed:x}"
    print(f"recovery: {args.cycles} kill -9 cycles, {args.threads} clients, seed {seed}",
          flush=True)
    deadline = time.monotonic() + args.timeout
    ledger = Ledger()
    server = MailkeepServer(keep_dir=args.keep)
    try:
        for cycle in range(1, args.cycles + 1):
            if time.monotonic() > deadline:
                raise BenchmarkError(f"--timeout {args.timeout:g}s reached in cycle {cycle}")
            server.start()
            before = len(ledger.acknowledged)
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=client_loop, name=f"client-{n}", daemon=True,
                    args=(server.port, ledger, stop, run_id, cycle, n, args,
                          rng.randrange(2**32)),
                )
                for n in range(args.threads)
            ]
            for thread in threads:
                thread.start()
            delay = rng.uniform(args.min_delay, args.max_delay)
            time.sleep(delay)
            server.crash()
            stop.set()
            for thread in threads:
                thread.join(JOIN_TIMEOUT)
                if thread.is_alive():
                    raise BenchmarkError(f"{thread.name} did not stop within {JOIN_TIMEOUT}s")
            print(f"  cycle {cycle}: killed after {delay:.2f}s, "
                  f"{len(ledger.acknowledged) - before} acknowledged", flush=True)
        # A last clean start lets the server's own recovery run, as after a real crash.
        server.start()
        server.stop()
        stored = stored_by_id(server.messages(DEMO_ACCOUNT))
    except BenchmarkError as exc:
        print(f"recovery: {exc}\n--- Mailkeep log (tail) ---\n{server.log_tail()}",
              file=sys.stderr)
        return 1
    finally:
        server.cleanup()
        if args.keep:
            print(f"kept {server.directory}", file=sys.stderr)

    acknowledged = ledger.acknowledged
    lost = sorted(i for i in acknowledged if i not in stored)
    # Mailkeep prepends trace fields (Return-Path, Delivered-To, Received); everything the
    # client sent must follow them unchanged.
    altered = sorted(i for i in acknowledged if i in stored
                     and not any(copy.endswith(acknowledged[i]) for copy in stored[i]))
    found = len(acknowledged) - len(lost)
    unacknowledged_stored = sum(1 for i in stored if i not in acknowledged)
    duplicated = sum(1 for copies in stored.values() if len(copies) > 1)
    print(f"\nattempted {ledger.attempted}; stored without a 250 seen by the client "
          f"{unacknowledged_stored} (allowed: crash between commit and reply); "
          f"duplicates {duplicated}; altered {len(altered)}")
    print(f"acknowledged {len(acknowledged)}, found {found}, lost {len(lost)}")
    for message_id in (lost + altered)[:20]:
        print(f"  {'LOST' if message_id in lost else 'ALTERED'}: {message_id}")
    if not acknowledged:
        print("recovery: no message was acknowledged; raise --min-delay", file=sys.stderr)
        return 1
    return 1 if lost or altered else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.require_tools(MAILKEEP)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
