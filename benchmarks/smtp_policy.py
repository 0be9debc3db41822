"""What the inbound policy costs: Mailkeep with the full default policy against Mailkeep
with the policy off, same load, same machine, same run (issue 5: at most 30 %).

"Policy on" is port 25 as a server on the Internet runs it: loopback is not trusted
(``trusted_networks = []``), so every message goes through every default rule —
pregreet test, DNSBL (seed 002's zen.spamhaus.org and bl.spamcop.net), HELO and sender
restrictions with their DNS lookups, greylisting, own-domain and DMARC checks — and gets
SPF, DKIM, ARC, DMARC and iprev verification and an Authentication-Results header. DNS is
a real local authoritative server behind a validating resolver (nsd + unbound, as the
tests use) serving the sender's SPF/DMARC/MX records and empty blocklist zones; the
resolver cache is warm after the warm-up, as it is on a busy server. The greylist is
passed once in the warm-up (one-second delay), as a regular correspondent would have.
"Policy off" is the same server as ``make run`` configures it: loopback is a trusted
network, so ``permit_trusted_networks`` lets the benchmark's client past every rule and
no verification runs.

Both send the same stream with Postfix's smtp-source (one message per connection) and
are timed until the last 250, which Mailkeep sends only once the message is durable.

Usage: .venv/bin/python benchmarks/smtp_policy.py [--messages 3000] [--sessions 20,1]
       [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import smtplib
import sys
import time

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
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.procs import group_cpu_seconds

SENDER = "sender@bench.test"
HELO = "client.bench.test"
ZONES = [
    Zone("bench.test", "\n".join([
        "@ MX 10 client", "client A 127.0.0.1",
        '@ TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@bench.test"'])),
    # The blocklists exist and list nobody we send from.
    Zone("zen.spamhaus.org", "2.0.0.127 A 127.0.0.2"),
    Zone("bl.spamcop.net", "2.0.0.127 A 127.0.0.2"),
]
MODES = ("off", "on")
MAX_MESSAGES = 1_000_000


def policy_config(mode: str, resolver: str) -> str:
    if mode == "off":
        return ""
    return f"""
[delivery]
resolvers = ["{resolver}"]

[policy]
trusted_networks = []
greet_wait = "1s"

[policy.dnsbl]
check_private_addresses = true

[policy.greylist]
delay = "1s"
"""


def warm_greylist(port: int) -> None:
    """One correspondent's first message: deferred, retried after the delay, passed."""
    for _attempt in range(3):
        with smtplib.SMTP("127.0.0.1", port, local_hostname=HELO, timeout=30) as client:
            client.ehlo()
            code, text = client.mail(SENDER)
            if code != 250:
                raise BenchmarkError(f"warm-up MAIL got {code} {text!r}")
            code, text = client.rcpt(DEMO_ACCOUNT)
            if code == 250:
                client.rset()
                return
            if code != 450:
                raise BenchmarkError(f"warm-up RCPT got {code} {text!r}")
        time.sleep(1.3)
    raise BenchmarkError("greylisting still defers after 3 attempts")


def run_round(mode: str, resolver: str, args: argparse.Namespace, sessions: int
              ) -> tuple[float, float]:
    """(messages per second, server CPU ms per message) for one mode."""
    server = MailkeepServer(extra_config=policy_config(mode, resolver))
    try:
        server.start()
        if mode == "on":
            warm_greylist(server.port)
        run_smtp_source(server.port, messages=args.warmup, size=args.size,
                        sessions=min(sessions, args.warmup), sender=SENDER,
                        timeout=args.timeout)
        assert server.process is not None
        pid = server.process.pid
        cpu_before = group_cpu_seconds(pid)
        began = time.perf_counter()
        run_smtp_source(server.port, messages=args.messages, size=args.size,
                        sessions=sessions, sender=SENDER, timeout=args.timeout)
        elapsed = time.perf_counter() - began
        cpu = group_cpu_seconds(pid) - cpu_before
        server.stop()
        expected = args.warmup + args.messages
        found = server.message_count(DEMO_ACCOUNT)
        if found != expected:
            raise BenchmarkError(f"the store holds {found} messages, expected {expected}")
        last = server.messages(DEMO_ACCOUNT)[-1]
        verified = b"dmarc=pass" in last and b"spf=pass" in last
        if verified != (mode == "on"):
            raise BenchmarkError(f"policy {mode}, but the last message {'lacks' if verified else 'has'}"
                                 " Authentication-Results with spf=pass and dmarc=pass")
        return args.messages / elapsed, 1000.0 * cpu / args.messages
    except (BenchmarkError, ProcessError, TimeoutError) as exc:
        raise BenchmarkError(f"{exc}\n--- Mailkeep log (tail) ---\n{server.log_tail()}") from None
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--sessions", default="20,1",
                        help="comma-separated concurrent session counts (default 20,1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= MAX_MESSAGES or not 1 <= args.rounds <= 50 \
            or not 1 <= args.warmup <= 10_000:
        parser.error("--messages 1..1000000, --rounds 1..50, --warmup 1..10000")
    sessions_list = [int(s) for s in args.sessions.split(",")]
    common.require_tools(SMTP_SOURCE, MAILKEEP)
    print(f"inbound policy cost: {args.messages} messages x {args.size} bytes, sessions "
          f"{args.sessions}, {args.rounds} round(s); machine: {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}\n", flush=True)
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    with ThrowawayDNS(ZONES) as dns_server:
        host, port = dns_server.resolver_address
        resolver = f"{host}:{port}"
        for sessions in sessions_list:
            for round_number in range(args.rounds):
                order = MODES if round_number % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    os.sync()
                    try:
                        rate, cpu = run_round(mode, resolver, args, sessions)
                    except (BenchmarkError, common.ProcessError) as exc:
                        print(f"smtp_policy: policy {mode}, {sessions} sessions: {exc}",
                              file=sys.stderr)
                        return 1
                    results.setdefault((sessions, mode), []).append((rate, cpu))
                    print(f"  {sessions:>3} sessions  round {round_number + 1}  policy "
                          f"{mode:<3}  {rate:8.1f} msgs/s  {cpu:.2f} ms CPU/msg", flush=True)
    rows = []
    summary = []
    for sessions in sessions_list:
        for mode in MODES:
            runs = results[(sessions, mode)]
            rows.append([str(sessions), mode, f"{median([r for r, _ in runs]):.1f}",
                         " ".join(f"{r:.1f}" for r, _ in runs),
                         f"{median([c for _, c in runs]):.2f}"])
        on = median([r for r, _ in results[(sessions, "on")]])
        off = median([r for r, _ in results[(sessions, "off")]])
        summary.append(f"{sessions} sessions {on / off:.2f}x ({100 * (1 - on / off):.0f} % cost)")
    print()
    print(format_table(["sessions", "policy", "msgs/s (median)", "each round",
                        "server CPU ms/msg"], rows))
    print(f"\nratio policy on/off: {', '.join(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
