"""Inbound SMTP throughput: Mailkeep against a stock Postfix, same load, same machine, same run.

Both servers receive the same stream from Postfix's ``smtp-source`` (one message per
connection unless ``--reuse-connections``) and are timed until the mail is *durably in the
mailbox*, which is what a user cares about:

- Postfix (a throwaway private instance, ``tests/support/postfix.py``): smtpd → cleanup
  (queue file fsync'd before 250) → qmgr → virtual(8) into a Maildir. Timed from the start of
  smtp-source until ``new/`` holds every message.
- Mailkeep (``mailkeep localserve``): answers 250 only after the store commit is durable
  (docs/architecture.md, "Durability rule"), so it is timed until smtp-source returns; the
  store is then opened and the count verified.

Each round uses fresh instances so both mailboxes start empty; the order of the two servers
alternates between rounds so that slow drift of the machine does not favour either. A short
warm-up (not timed) lets Postfix spawn its daemons and Python import its modules first.

Usage: .venv/bin/python benchmarks/smtp_inbound.py [--messages 5000] [--size 2048]
       [--sessions 20,1] [--rounds 3]        (see --help; README.md explains the output)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import common
from common import (
    DEMO_ACCOUNT,
    MAILKEEP,
    SMTP_SOURCE,
    BenchmarkError,
    MailkeepServer,
    ProcessError,
    format_table,
    median,
    run_smtp_source,
)
from tests.support.postfix import PostfixUnavailable, ThrowawayPostfix, require_postfix
from tests.support.procs import group_cpu_seconds

SERVERS = ("postfix", "mailkeep")
#: Input bounds: a benchmark that would run for hours is a typo, not a measurement.
MAX_MESSAGES = 1_000_000
MAX_SIZE = 10_000_000
MAX_SESSIONS = 500
MAX_ROUNDS = 50


@dataclass(frozen=True)
class Measurement:
    messages: int
    #: Seconds from the start of smtp-source until the last message was durably stored.
    delivered_seconds: float
    #: Seconds until smtp-source had its last 250 (equal to the above for Mailkeep).
    acknowledged_seconds: float
    #: CPU seconds the server's processes used in that time (user + system).
    server_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.delivered_seconds

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000.0 * self.server_cpu_seconds / self.messages


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value
    return parse


def _session_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of numbers, e.g. 20,1") from None
    if not values or any(not 1 <= v <= MAX_SESSIONS for v in values):
        raise argparse.ArgumentTypeError(f"each session count must be between 1 and {MAX_SESSIONS}")
    return values


def _server_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(names) - set(SERVERS)
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SERVERS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Inbound SMTP throughput of Mailkeep relative to Postfix (msgs/s until "
        "the message is durably in the mailbox).",
        epilog="Example: .venv/bin/python benchmarks/smtp_inbound.py --messages 500 --rounds 1",
    )
    parser.add_argument("--messages", type=_bounded_int(1, MAX_MESSAGES), default=5000,
                        help="messages per timed run (default 5000)")
    parser.add_argument("--size", type=_bounded_int(0, MAX_SIZE), default=2048,
                        help="payload bytes per message, headers excluded (default 2048)")
    parser.add_argument("--sessions", type=_session_list, default=[20, 1],
                        help="parallel SMTP sessions, a list: one table row each (default 20,1)")
    parser.add_argument("--rounds", type=_bounded_int(1, MAX_ROUNDS), default=3,
                        help="rounds per setting; the median is reported (default 3)")
    parser.add_argument("--warmup", type=_bounded_int(0, 10_000), default=20,
                        help="untimed messages sent first to each fresh server (default 20)")
    parser.add_argument("--reuse-connections", action="store_true",
                        help="send every message of a session over one connection "
                        "(smtp-source -d); default is one connection per message")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to pause (after flushing the page cache to disk) "
                        "before each timed run, so that one server's write-back does not "
                        "land in the next one's measurement (default 1)")
    parser.add_argument("--servers", type=_server_list, default=list(SERVERS),
                        help="which servers to run (default postfix,mailkeep)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="limit in seconds for each timed run and each wait (default 600)")
    parser.add_argument("--postfix-option", action="append", default=[], metavar="NAME=VALUE",
                        help="extra main.cf setting for the Postfix instance, repeatable "
                        "(default: none; the reference is Postfix as shipped)")
    parser.add_argument("--keep", action="store_true",
                        help="keep Mailkeep's temporary directories (logs) for inspection")
    args = parser.parse_args(argv)
    if not 0 < args.timeout <= 86_400:
        parser.error("--timeout must be between 0 and 86400 seconds")
    if not 0 <= args.settle <= 60:
        parser.error("--settle must be between 0 and 60 seconds")
    args.postfix_settings = {}
    for option in args.postfix_option:
        name, sep, value = option.partition("=")
        if not sep or not name.strip():
            parser.error(f"--postfix-option wants NAME=VALUE, got {option!r}")
        args.postfix_settings[name.strip()] = value.strip()
    return args


def settle(seconds: float) -> None:
    """Let the disk catch up with the previous run (its deleted files, its log) first."""
    os.sync()
    time.sleep(max(0.0, seconds))


def _send(port: int, args: argparse.Namespace, sessions: int, messages: int) -> float:
    return run_smtp_source(port, messages=messages, size=args.size, sessions=sessions,
                           recipient=DEMO_ACCOUNT, reuse_connections=args.reuse_connections,
                           timeout=args.timeout)


def postfix_round(args: argparse.Namespace, sessions: int) -> Measurement:
    # Same recipient address as Mailkeep's localserve, so both see identical SMTP traffic.
    local, _, domain = DEMO_ACCOUNT.partition("@")
    with ThrowawayPostfix.virtual_maildir(domain, local,
                                          extra_main_cf=args.postfix_settings) as postfix:
        try:
            return _timed_postfix_run(postfix, args, sessions)
        except (BenchmarkError, ProcessError) as exc:
            raise BenchmarkError(
                f"{exc}\n--- Postfix log (tail) ---\n{postfix.log_text()[-3000:]}"
            ) from None


def _timed_postfix_run(postfix: ThrowawayPostfix, args: argparse.Namespace,
                       sessions: int) -> Measurement:
    if args.warmup:
        _send(postfix.port, args, min(sessions, args.warmup), args.warmup)
        postfix.wait_for_maildir_count(args.warmup, timeout=args.timeout)
    expected = args.warmup + args.messages
    master = postfix.master_pid
    if master is None:
        raise BenchmarkError("cannot find the Postfix master's pid")
    cpu_before = group_cpu_seconds(master)
    began = time.perf_counter()
    acknowledged = _send(postfix.port, args, sessions, args.messages)
    # Counting 5000 directory entries costs ~1 ms: polling every 50 ms keeps the
    # observer's CPU use small next to the server's, at 50 ms resolution.
    postfix.wait_for_maildir_count(expected, timeout=args.timeout, interval=0.05)
    delivered = time.perf_counter() - began
    cpu = group_cpu_seconds(master) - cpu_before
    found = postfix.maildir_count()
    if found != expected:
        raise BenchmarkError(f"Postfix Maildir holds {found} messages, expected {expected}")
    return Measurement(args.messages, delivered, acknowledged, cpu)


def mailkeep_round(args: argparse.Namespace, sessions: int) -> Measurement:
    server = MailkeepServer(keep_dir=args.keep)
    try:
        server.start()
        if args.warmup:
            _send(server.port, args, min(sessions, args.warmup), args.warmup)
        if server.process is None:
            raise BenchmarkError("Mailkeep is not running after its warm-up")
        pid = server.process.pid  # the leader of its own process group
        cpu_before = group_cpu_seconds(pid)
        began = time.perf_counter()
        _send(server.port, args, sessions, args.messages)
        # Every 250 came after the store commit: smtp-source's exit is the delivery time.
        delivered = time.perf_counter() - began
        cpu = group_cpu_seconds(pid) - cpu_before
        code = server.stop()
        if code not in (0, None):
            raise BenchmarkError(f"Mailkeep exited with status {code} after SIGTERM")
        expected = args.warmup + args.messages
        found = server.message_count(DEMO_ACCOUNT)
        if found != expected:
            raise BenchmarkError(f"Mailkeep's store holds {found} messages, expected {expected}")
        return Measurement(args.messages, delivered, delivered, cpu)
    except (BenchmarkError, ProcessError, TimeoutError) as exc:
        raise BenchmarkError(f"{exc}\n--- Mailkeep log (tail) ---\n{server.log_tail()}") from None
    finally:
        server.cleanup()
        if args.keep:
            print(f"  kept {server.directory}", file=sys.stderr)


ROUND_FUNCTIONS: dict[str, Callable[[argparse.Namespace, int], Measurement]] = {
    "postfix": postfix_round,
    "mailkeep": mailkeep_round,
}


def _postfix_version() -> str:
    result = common.run_command(["/usr/sbin/postconf", "-dh", "mail_version"], check=False)
    return result.stdout.decode().strip() or "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_postfix()
    except PostfixUnavailable as exc:
        raise SystemExit(f"smtp_inbound: {exc}") from None
    common.require_tools(SMTP_SOURCE, *([MAILKEEP] if "mailkeep" in args.servers else []))

    print(f"inbound SMTP: {args.messages} messages x {args.size} bytes, sessions "
          f"{','.join(map(str, args.sessions))}, {args.rounds} round(s), warm-up {args.warmup}, "
          f"{'one connection per session' if args.reuse_connections else 'one connection per message'}")
    if args.postfix_settings:
        print("postfix main.cf overrides: "
              + ", ".join(f"{k} = {v}" for k, v in args.postfix_settings.items()))
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
          f"{platform.python_version()}, Postfix {_postfix_version()}\n", flush=True)

    results: dict[tuple[int, str], list[Measurement]] = {}
    for sessions in args.sessions:
        for round_number in range(args.rounds):
            # Alternate which server goes first, so drift of the machine cancels out.
            order = args.servers if round_number % 2 == 0 else list(reversed(args.servers))
            for name in order:
                settle(args.settle)
                try:
                    measurement = ROUND_FUNCTIONS[name](args, sessions)
                except (BenchmarkError, TimeoutError, common.ProcessError) as exc:
                    print(f"\nsmtp_inbound: {name}, {sessions} sessions, round "
                          f"{round_number + 1}: {exc}", file=sys.stderr)
                    return 1
                results.setdefault((sessions, name), []).append(measurement)
                plural = "s" if sessions != 1 else " "
                print(f"  {sessions:>3} session{plural}  round {round_number + 1}  {name:<8}  "
                      f"{measurement.rate:9.1f} msgs/s  ({measurement.delivered_seconds:.2f} s)",
                      flush=True)

    rows = []
    for sessions in args.sessions:
        for name in args.servers:
            runs = results[(sessions, name)]
            rows.append([
                f"{sessions}", name, f"{median([m.rate for m in runs]):.1f}",
                " ".join(f"{m.rate:.1f}" for m in runs),
                f"{median([m.messages / m.acknowledged_seconds for m in runs]):.1f}",
                f"{median([m.cpu_ms_per_message for m in runs]):.2f}",
            ])
    print()
    print(format_table(["sessions", "server", "delivered msgs/s (median)", "each round",
                        "250s msgs/s", "server CPU ms/msg"], rows))

    if set(SERVERS) <= set(args.servers):
        ratios = []
        for sessions in args.sessions:
            ratio = (median([m.rate for m in results[(sessions, "mailkeep")]])
                     / median([m.rate for m in results[(sessions, "postfix")]]))
            label = "session" if sessions == 1 else "sessions"
            ratios.append(f"{sessions} {label} {ratio:.2f}x")
        print(f"\nratio mailkeep/postfix: {', '.join(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
