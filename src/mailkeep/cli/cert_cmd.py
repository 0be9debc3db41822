"""`mailkeep cert status|renew`: the TLS certificates the server presents.

``status`` reads what is on disk (the [tls] files, the ACME pairs in ``data_dir/acme``, or
the self-signed fallback in ``data_dir/tls``) and the last ACME check's outcome; it never
changes anything.

``renew`` asks the running server to renew now: it leaves a request in
``data_dir/acme/renew-request`` and signals the server (SIGHUP, a reload, which makes the
certificate manager look at once), then waits for the outcome the server records in
``data_dir/acme/state.json``. With no server running it obtains the certificates itself,
answering the challenges on the http/https listener addresses of the configuration (ports
80 and 443 need root).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time
from pathlib import Path
from typing import Any

from mailkeep.cli.config_cmd import HelpFormatter, fail, load_or_report
from mailkeep.cli.main import add_config_argument
from mailkeep.config import Config

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
#: How long `cert renew` waits for the running server's outcome, by default (seconds).
DEFAULT_WAIT = 600.0
POLL_INTERVAL = 0.5


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cert", help="show and renew the TLS certificates",
        description="Show which certificates the server presents (from [tls] files, from "
        "ACME, or self-signed), and renew the ACME ones now.",
        epilog="Examples:\n  mailkeep cert status\n  mailkeep cert renew\n"
        "  mailkeep cert renew --force",
        formatter_class=HelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="cert_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or EX_USAGE)

    status = commands.add_parser(
        "status", help="show the certificates, their names and expiry",
        description="For each certificate: where it comes from (acme, files, self-signed), "
        "its key type, names, issuer, expiry and days left; for ACME also the last check, "
        "its error if any, the next check and names left out for lack of DNS. Exits 1 when "
        "a certificate has expired.",
        epilog="Example:\n  mailkeep cert status", formatter_class=HelpFormatter)
    add_config_argument(status)
    status.set_defaults(func=cmd_status)

    renew = commands.add_parser(
        "renew", help="renew the ACME certificates now",
        description="Ask the running server to renew what is due (names missing, expiring "
        "within [acme] renew_before), or everything with --force, and wait for the outcome. "
        "With no server running, obtain the certificates directly, answering the CA on the "
        "configured http (port 80) and https (port 443) addresses: run it as root then.",
        epilog="Examples:\n  mailkeep cert renew\n  mailkeep cert renew --force\n"
        "  mailkeep cert renew --force --wait 0     (do not wait for the outcome)",
        formatter_class=HelpFormatter)
    add_config_argument(renew)
    renew.add_argument("--force", action="store_true",
                       help="renew even certificates that are not due")
    renew.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                       help=f"how long to wait for the server (default {DEFAULT_WAIT:g}; "
                       "0: only ask)")
    renew.set_defaults(func=cmd_renew)


# -- status ----------------------------------------------------------------------------------


def _when(moment: datetime.datetime | float | None) -> str:
    if moment is None:
        return "-"
    if isinstance(moment, int | float):
        moment = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _describe(out: list[str], label: str, source: str, path: Path, info: Any,
              renew_before: float | None, now: datetime.datetime) -> bool:
    """Lines for one certificate; True when it has expired."""
    from mailkeep.acme.manager import time_left

    left = (info.not_after - now).total_seconds()
    out.append(f"{label} ({source})")
    out.append(f"  names:     {', '.join(info.names) or '-'}")
    out.append(f"  issuer:    {info.issuer}")
    out.append(f"  serial:    {info.serial}")
    out.append(f"  not after: {_when(info.not_after)} "
               + (f"({time_left(left)})" if left > 0 else "(EXPIRED)"))
    if renew_before is not None:
        out.append(f"  renews:    {_when(info.renewal_time(renew_before))}")
    out.append(f"  file:      {path}")
    return left <= 0


def status_lines(config: Config, now: datetime.datetime | None = None) -> tuple[list[str], bool]:
    """What `cert status` prints, and whether a certificate has expired."""
    from mailkeep.acme.certs import CertificateInfo
    from mailkeep.acme.manager import wanted_names
    from mailkeep.acme.storage import AcmeStorage

    now = now or datetime.datetime.now(datetime.UTC)
    out: list[str] = []
    expired = False
    if config.tls.cert and config.tls.key:
        out.append("Certificates from the files in [tls] (reloaded when they change)")
        try:
            info = CertificateInfo.from_pem(Path(config.tls.cert).read_bytes())
        except (OSError, ValueError) as exc:
            out.append(f"  cannot read {config.tls.cert}: {exc}")
            return out, True
        expired = _describe(out, info.key_type, "files", Path(config.tls.cert), info, None,
                            now)
        return out, expired
    fallback = {}
    for kind in ("ecdsa", "rsa"):
        path = config.tls_dir / f"selfsigned-{kind}.pem"
        try:
            fallback[kind] = (path, CertificateInfo.from_pem(path.read_bytes()))
        except (OSError, ValueError):
            continue
    if not config.acme.enabled:
        out.append("ACME is off ([acme] enabled = false): self-signed certificates "
                   "(clients warn; set [acme] enabled = true or [tls] cert/key)")
        for kind, (path, info) in fallback.items():
            expired |= _describe(out, kind, "self-signed", path, info, None, now)
        if not fallback:
            out.append("  none yet: the server creates them when it starts")
        return out, expired
    storage = AcmeStorage(config.data_dir)
    out.append(f"ACME from {config.acme.directory}")
    out.append(f"  wanted names: {', '.join(wanted_names(config))}")
    for kind in config.acme.key_types:
        stored = storage.current(kind)
        if stored is not None:
            # The stable path (the link), for other programs to use.
            expired |= _describe(out, kind, "acme", storage.link(kind) / "cert.pem",
                                 stored.info, config.acme.renew_before, now)
        elif kind in fallback:
            path, info = fallback[kind]
            out.append(f"{kind}: no ACME certificate yet, serving the self-signed one")
            expired |= _describe(out, kind, "self-signed", path, info, None, now)
        else:
            out.append(f"{kind}: no certificate yet")
    state = storage.read_state()
    if state.get("last_check"):
        out.append(f"Last check: {_when(state.get('last_check'))}: "
                   + (f"FAILED: {state['last_error']}" if state.get("last_error")
                      else str(state.get("last_result") or "ok")))
    if state.get("next_check"):
        out.append(f"Next check: {_when(state.get('next_check'))}")
    dropped = state.get("dropped") or {}
    if isinstance(dropped, dict) and dropped:
        out.append("Left out for now (the CA could not validate them; fix their DNS):")
        out += [f"  {name} (since {_when(when)})" for name, when in sorted(dropped.items())
                if isinstance(when, int | float)]
    return out, expired


def cmd_status(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return EX_CONFIG
    lines, expired = status_lines(config)
    print("\n".join(lines))
    return EX_FAILURE if expired else EX_OK


# -- renew -----------------------------------------------------------------------------------


def cmd_renew(args: argparse.Namespace) -> int:
    from mailkeep.acme.storage import AcmeStorage
    from mailkeep.config.edit import notify_server

    config = load_or_report(args)
    if config is None:
        return EX_CONFIG
    if not config.acme.enabled:
        return fail("ACME is not enabled: set [acme] enabled = true (the certificates now "
                    "come from [tls] files or are self-signed)", EX_CONFIG)
    if args.wait < 0:
        return fail("--wait cannot be negative", EX_USAGE)
    storage = AcmeStorage(config.data_dir)
    try:
        request_id = storage.request_renewal(args.force)
    except PermissionError:
        return fail(f"cannot write in {storage.root}: run this as root or as the user the "
                    "server runs as", EX_NOPERM)
    except OSError as exc:
        return fail(f"cannot write in {storage.root}: {exc.strerror or exc}", EX_TEMPFAIL)
    if notify_server(config):
        if args.wait == 0:
            print("asked the running server to renew; `mailkeep cert status` shows the outcome")
            return EX_OK
        return _wait_for_server(storage, request_id, args.wait)
    storage.withdraw_request(request_id)
    return _renew_standalone(config, args.force)


def _wait_for_server(storage: Any, request_id: str, wait: float) -> int:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        request = storage.read_state().get("request")
        if isinstance(request, dict) and request.get("id") == request_id:
            message = str(request.get("message") or "")
            if request.get("ok"):
                print(message or "done")
                return EX_OK
            return fail(f"renewal failed: {message}")
        time.sleep(POLL_INTERVAL)
    print(f"mailkeep: the server has not finished within {wait:g}s; it goes on in the "
          "background (see `mailkeep cert status` and the server log)", file=sys.stderr)
    return EX_TEMPFAIL


def _renew_standalone(config: Config, force: bool) -> int:
    from mailkeep.acme.manager import obtain_standalone
    from mailkeep.logfmt import setup_logging

    print("no server is running: obtaining the certificates directly", file=sys.stderr)
    setup_logging(config.log.format, "info", stream=sys.stderr)
    result = asyncio.run(obtain_standalone(config, force=force))
    if not result.ok:
        return fail(result.message)
    print(result.message)
    return EX_OK
