"""`mailkeep quickstart ADDRESS`: set up a production server in one command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mailkeep.cli.config_cmd import HelpFormatter, fail


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="set up a production server for your domain in one command",
        description="Write the configuration and data directory, create your account with a "
        "strong random password (shown once), generate DKIM keys (RSA and Ed25519), obtain "
        "certificates by ACME on port 80 (or fall back to a self-signed one, with a warning), "
        "write the systemd unit, and print the DNS zone to publish, one comment per record. "
        "Safe to run again: what exists is kept, and the DNS zone is printed again.",
        epilog="Examples:\n"
        "  mailkeep quickstart you@example.com\n"
        "  mailkeep quickstart you@example.com --hostname mx.example.com --ipv4 203.0.113.5\n"
        "  mailkeep quickstart you@example.com --no-acme --config ./mk/mailkeep.toml "
        "--data-dir ./mk/data --no-systemd\n\n"
        "Then: publish the DNS records, `systemctl enable --now mailkeep`, and run "
        "`mailkeep check` until it shows no FAIL.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("address", help="your email address; its domain is the server's first domain")
    p.add_argument("--hostname", metavar="NAME",
                   help="the server's name in DNS, its MX (default: mail.DOMAIN)")
    p.add_argument("-c", "--config", default="/etc/mailkeep/mailkeep.toml", metavar="FILE",
                   help="configuration file to write (default: /etc/mailkeep/mailkeep.toml)")
    p.add_argument("--data-dir", default="/var/lib/mailkeep", metavar="DIR",
                   help="data directory (default: /var/lib/mailkeep)")
    p.add_argument("--run-as", default="mailkeep", metavar="USER",
                   help="unprivileged user the server switches to, created when missing "
                   "(default: mailkeep; 'none' to run as the starting user)")
    p.add_argument("--listen", action="append", default=[], metavar="IP",
                   help="address to listen on, repeatable (default: 0.0.0.0 and :: when "
                   "IPv6 works)")
    p.add_argument("--ipv4", action="append", default=[], metavar="IP",
                   help="public IPv4 address of the server, for the A record (repeatable)")
    p.add_argument("--ipv6", action="append", default=[], metavar="IP",
                   help="public IPv6 address of the server, for the AAAA record (repeatable)")
    p.add_argument("--no-acme", action="store_true",
                   help="do not use ACME; a self-signed certificate until you set [tls]")
    p.add_argument("--acme-directory", metavar="URL",
                   help="ACME directory (default: Let's Encrypt production)")
    p.add_argument("--acme-ca-file", metavar="FILE",
                   help="CA certificates for a private ACME server's HTTPS")
    p.add_argument("--acme-http-address", metavar="IP:PORT",
                   help="where to answer the HTTP-01 challenge during quickstart (default: "
                   "the HTTP listener, port 80)")
    p.add_argument("--systemd-unit", default="/etc/systemd/system/mailkeep.service",
                   metavar="FILE", help="where to write the systemd unit "
                   "(default: /etc/systemd/system/mailkeep.service)")
    p.add_argument("--no-systemd", action="store_true", help="do not write a systemd unit")
    p.add_argument("--password-stdin", action="store_true",
                   help="read your password from standard input instead of generating one")
    p.set_defaults(func=cmd_quickstart)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from mailkeep.quickstart import Options, QuickstartError, quickstart

    password = None
    if args.password_stdin:
        from mailkeep.cli.account import PasswordInputError, read_new_password

        try:
            password, _ = read_new_password(args, allow_generate=False)
        except PasswordInputError as exc:
            return fail(str(exc))
    opts = Options(
        address=args.address, hostname=args.hostname, config_path=Path(args.config),
        data_dir=Path(args.data_dir),
        run_as=None if args.run_as in ("", "none") else args.run_as,
        listen=tuple(args.listen), ipv4=tuple(args.ipv4), ipv6=tuple(args.ipv6),
        acme=not args.no_acme, acme_directory=args.acme_directory,
        acme_ca_file=Path(args.acme_ca_file).absolute() if args.acme_ca_file else None,
        acme_http_address=args.acme_http_address,
        unit_path=None if args.no_systemd else Path(args.systemd_unit),
        password=password)
    try:
        outcome = quickstart(opts)
    except QuickstartError as exc:
        return fail(str(exc))
    except (OSError, ValueError) as exc:
        return fail(f"quickstart stopped: {exc}. What was done is kept; fix the cause and "
                    "run the same command again.")
    config = outcome.config
    out = sys.stdout
    print(f"{'Wrote' if outcome.created_config else 'Kept'} the configuration: "
          f"{config.path}", file=out)
    print(f"Data directory: {config.data_dir}", file=out)
    if outcome.password is not None:
        print(f"\nAccount {outcome.account}\n  password (shown only now): {outcome.password}",
              file=out)
    else:
        print(f"\nAccount {outcome.account} exists; its password is unchanged "
              f"(`mailkeep account passwd {outcome.account}` sets a new one).", file=out)
    if outcome.dkim_created:
        print(f"DKIM keys created: {', '.join(outcome.dkim_created)}", file=out)
    print(f"Certificate: {outcome.certificate} ({outcome.certificate_note})", file=out)
    if outcome.unit_path is not None:
        print(f"systemd unit: {outcome.unit_path}\n  start it: systemctl daemon-reload && "
              "systemctl enable --now mailkeep", file=out)
    for warning in outcome.warnings:
        print(f"\nWARNING: {warning}", file=sys.stderr)
    print("\nPublish these DNS records (then run `mailkeep check` until nothing FAILs):\n",
          file=out)
    print(outcome.zone, file=out)
    return 0
