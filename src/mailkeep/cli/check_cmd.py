"""`mailkeep check`: verify DNS, certificates, reputation and relaying, as others see them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
from pathlib import Path

from mailkeep.checker import CheckOptions, exit_status, run_checks
from mailkeep.checker.context import TOTAL_TIMEOUT
from mailkeep.checker.report import json_report, text_report
from mailkeep.cli.config_cmd import HelpFormatter, fail, load_or_report
from mailkeep.cli.dns_cmd import chosen_domains
from mailkeep.cli.main import add_config_argument
from mailkeep.outbound.dns import parse_nameserver

#: Exit status when the check could not run at all (bad configuration or options).
EXIT_UNUSABLE = 2
#: Bounds of --timeout (seconds).
MIN_TIMEOUT, MAX_TIMEOUT = 5.0, 3600.0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "check", help="check DNS, certificates, blocklists and relaying from outside",
        description="Check DOMAIN (every configured domain when left out) and this server "
        "the way the rest of the Internet sees them: every record of 'mailkeep dns "
        "records' (MX, SPF, DKIM, DMARC, MTA-STS, TLS reporting, TLSA, SRV, CAA...), the "
        "reverse DNS of the server's addresses, the certificate on every TLS listener "
        "(trusted, right name, not expiring), TLSA against the key port 25 serves, the "
        "MTA-STS policy as senders fetch it, the server's addresses on DNS blocklists, the "
        "DKIM key sizes, and an open-relay test against its own port 25. Each finding is "
        "OK, WARN or FAIL, and says how to fix it. Exit status: 0 without FAIL, 1 with "
        "one, 2 when the check could not run.",
        epilog="Examples:\n  mailkeep check\n  mailkeep check example.com --json\n"
        "  mailkeep check --resolver 127.0.0.1:5353 --no-relay-test",
        formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("domain", metavar="DOMAIN", nargs="?")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--resolver", metavar="IP[:PORT]",
                        help="DNS server to ask (default: [delivery] resolvers, else "
                        "/etc/resolv.conf)")
    parser.add_argument("--no-relay-test", dest="relay_test", action="store_false",
                        help="do not run the open-relay test against port 25")
    parser.add_argument("--ca-file", metavar="FILE", type=Path,
                        help="extra CA certificates (PEM) to trust, e.g. a private CA")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=TOTAL_TIMEOUT,
                        help=f"time limit of the whole check (default {TOTAL_TIMEOUT:g})")
    add_config_argument(parser)
    parser.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return EXIT_UNUSABLE
    try:
        domains = chosen_domains(config, args.domain)
    except ValueError as exc:
        return fail(str(exc), EXIT_UNUSABLE)
    if args.resolver is not None:
        try:
            parse_nameserver(args.resolver)
        except ValueError as exc:
            return fail(f"--resolver: {exc}", EXIT_UNUSABLE)
    if args.ca_file is not None:
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(args.ca_file))
        except (OSError, ssl.SSLError) as exc:
            return fail(f"--ca-file {args.ca_file}: not a readable PEM file of CA "
                        f"certificates ({exc})", EXIT_UNUSABLE)
    if not MIN_TIMEOUT <= args.timeout <= MAX_TIMEOUT:
        return fail(f"--timeout: give {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} seconds",
                    EXIT_UNUSABLE)
    options = CheckOptions(resolver=args.resolver, relay_test=args.relay_test,
                           ca_file=args.ca_file, total_timeout=args.timeout)
    # What the modules the checks reuse would log (a failed policy fetch, a refusing
    # blocklist) is in the findings already; the report is the whole output.
    logging.getLogger("mailkeep").addHandler(logging.NullHandler())
    findings = asyncio.run(run_checks(config, domains, options))
    if args.json:
        print(json_report(findings, hostname=config.hostname, domains=domains), end="")
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        title = (f"mailkeep check of {', '.join(domains)} and the server {config.hostname}")
        print(text_report(findings, colour=colour, title=title), end="")
    return exit_status(findings)
