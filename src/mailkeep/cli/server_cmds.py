"""`mailkeep localserve` and `mailkeep serve`: run the server in the foreground."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from mailkeep.cli.main import add_config_argument, config_path

LOCALSERVE_PORTS = {
    # Fixed ports of localserve; each protocol's issue fills its own in.
    "smtp": 1025,
    "submission": 1587,
    "submissions": 1465,
    "imap": 1143,
    "imaps": 1993,
    "pop3": 1110,
    "pop3s": 1995,
    "http": 1080,
}
DEMO_ACCOUNT = "demo@localhost"

LOCALSERVE_CONFIG = """\
# Written once by `mailkeep localserve`. A complete server on 127.0.0.1 for trying Mailkeep:
# the same policy as a production MX (no trusted IPs), for the domain "localhost".
# Edit freely, or delete this file to start again from the defaults.
hostname = "localhost"
data_dir = "data"

[log]
format = "logfmt"
level = "info"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{smtp}"

[[listeners]]
protocol = "submission"
address = "127.0.0.1:{submission}"

[[listeners]]
protocol = "submissions"
address = "127.0.0.1:{submissions}"

[[listeners]]
protocol = "lmtp"
address = "unix:{lmtp_socket}"

[[listeners]]
protocol = "imap"
address = "127.0.0.1:{imap}"

[[listeners]]
protocol = "imaps"
address = "127.0.0.1:{imaps}"

[[listeners]]
protocol = "pop3"
address = "127.0.0.1:{pop3}"

[[listeners]]
protocol = "pop3s"
address = "127.0.0.1:{pop3s}"

[[listeners]]
# Client autoconfiguration, the MTA-STS policy and /metrics (from loopback).
protocol = "http"
address = "127.0.0.1:{http}"

[auth]
# As Dovecot does, treat loopback as secured: plaintext LOGIN/PLAIN without TLS is allowed
# from 127.0.0.1 only. `mailkeep serve` never allows it unless this is set.
allow_plaintext_loopback = true

[domains.localhost]

[accounts."demo@localhost"]
name = "Demo User"

[aliases]
# RFC 2142 role address; postmaster@ always reaches the first account of a domain.
"abuse@localhost" = "demo@localhost"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localserve",
        help="run a complete local server on 127.0.0.1 for trying Mailkeep out",
        description="Run a complete Mailkeep server on 127.0.0.1 with embedded defaults: no "
        "external service, a self-signed certificate generated on first start, and one demo "
        "account demo@localhost. Runs in the foreground; Ctrl-C or SIGTERM stops it cleanly.",
        epilog="Ports: SMTP 1025 (mail for @localhost, exactly as a production MX would "
        "accept it), submission 1587 (STARTTLS, AUTH) and 1465 (implicit TLS), IMAP 1143 (STARTTLS), IMAPS 1993, POP3 1110 (STLS), POP3S 1995, HTTP 1080 (autoconfiguration, metrics). "
        "Plaintext login is allowed from loopback only.\n\nExamples:\n  mailkeep localserve\n  mailkeep localserve --dir /tmp/mk "
        "--password secret\n  swaks --server 127.0.0.1:1025 --to demo@localhost",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", default="localserve", metavar="DIR",
                   help="configuration and data directory (default: ./localserve)")
    p.add_argument("--password", metavar="PW",
                   help="password of demo@localhost (default: generated once and kept in DIR)")
    p.set_defaults(func=cmd_localserve)

    p = sub.add_parser(
        "serve",
        help="run the production server",
        description="Run Mailkeep with the listeners of the config (port 25 etc.). Binds "
        "privileged ports first, then switches to the configured run_as user. SIGHUP reloads "
        "the config without dropping sessions; SIGTERM stops cleanly.",
        epilog="Examples:\n  mailkeep serve --config /etc/mailkeep/mailkeep.toml\n"
        "  systemctl start mailkeep   (see packaging/mailkeep.service)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from mailkeep.servers.daemon import run_server

    path = Path(config_path(args))
    if not path.exists():
        print(f"mailkeep: config file {path} does not exist", file=sys.stderr)
        return 78
    return run_server(path)


def prepare_localserve(directory: Path, password: str | None) -> tuple[Path, str]:
    """Create DIR with its config and demo account once; return (config path, password)."""
    from mailkeep.auth.passwd_file import PasswdFile
    from mailkeep.auth.passwords import hash_password, verify_password
    from mailkeep.cli.account import store_password
    from mailkeep.config import load_config
    from mailkeep.durable import atomic_write_text

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_file = directory / "mailkeep.toml"
    if not config_file.exists():
        atomic_write_text(config_file, LOCALSERVE_CONFIG.format(
            lmtp_socket=directory / "lmtp.sock", **LOCALSERVE_PORTS))
    password_file = directory / "demo-password"
    if password is None:
        if password_file.exists():
            password = password_file.read_text().strip()
        else:
            password = secrets.token_urlsafe(12)
    if not password_file.exists() or password_file.read_text().strip() != password:
        atomic_write_text(password_file, password + "\n", mode=0o600)
    config = load_config(config_file)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    passwd = PasswdFile(config.passwd_file)
    entry = passwd.get(DEMO_ACCOUNT)
    if entry is None or not verify_password(entry.hash, password) \
            or "scram-sha-256" not in entry.extra_fields():
        # The hash and the SCRAM verifiers together, so every mechanism works at once.
        store_password(config, DEMO_ACCOUNT, hash_password(password), password)
    return config_file, password


def cmd_localserve(args: argparse.Namespace) -> int:
    from mailkeep.servers.daemon import run_server

    config_file, password = prepare_localserve(Path(args.dir), args.password)

    def banner(config) -> None:
        lines = [
            "",
            "Mailkeep is running (localserve). Ctrl-C stops it.",
            f"  directory : {config_file.parent}",
            f"  account   : {DEMO_ACCOUNT}",
            f"  password  : {password}",
            "  address   : 127.0.0.1",
        ]
        for lst in config.listeners:
            lines.append(f"  {lst.protocol:<10}: {lst.address}"
                         + (f" (TLS: {lst.tls})" if lst.tls != "none" else ""))
        lines.append(f"  try       : swaks --server 127.0.0.1:{LOCALSERVE_PORTS['smtp']} "
                     f"--to {DEMO_ACCOUNT}")
        lines.append(f"              swaks --server 127.0.0.1:{LOCALSERVE_PORTS['submission']} "
                     f"--tls --auth-user {DEMO_ACCOUNT} --auth-password '{password}' "
                     f"--from {DEMO_ACCOUNT} --to {DEMO_ACCOUNT}")
        lines.append(f"              mutt -f imaps://{DEMO_ACCOUNT.replace('@', '%40')}"
                     f"@127.0.0.1:{LOCALSERVE_PORTS['imaps']}/   (self-signed certificate)")
        print("\n".join(lines) + "\n", flush=True)

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_server(config_file, banner=banner)
