"""`mailkeep ban`: list, add and lift brute-force bans (what ``fail2ban-client`` did for
the seeds).

The bans live in ``data_dir/bans.db`` (``mailkeep.bans``); a running server notices a
change within a second (it watches the file's version), so no reload or signal is needed.
Run it as the user the server runs as.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import TextIO

from mailkeep.cli.main import add_config_argument, config_path

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

EXAMPLES = """\
Examples:
  mailkeep ban list
  mailkeep ban add 198.51.100.7 --for 1d --reason "password spraying"
  mailkeep ban add 2001:db8:1:2::9           (bans the whole /64)
  mailkeep ban lift 198.51.100.7
  mailkeep ban lift 10.0.0.0/8               (every ban inside the network)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ban",
        help="list, add and lift bans of client addresses",
        description="Addresses that failed to log in too often ([auth] ban_after_failures) "
        "are refused by every listener for a while. List the bans in force, ban an address "
        "by hand, or lift a ban. A running server applies changes within a second.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="ban_action", metavar="ACTION")

    q = actions.add_parser("list", help="list the bans in force",
                           description="List the bans in force, soonest ending first.",
                           epilog="Example:\n  mailkeep ban list",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(q)
    q.set_defaults(func=cmd_ban, ban_action="list")

    q = actions.add_parser(
        "add", help="ban an address",
        description="Ban an IPv4 address, or the /64 of an IPv6 address, from every "
        "listener. An address in [auth] ban_allow cannot be banned. A ban the address already "
        "has is replaced.",
        epilog="Example:\n  mailkeep ban add 198.51.100.7 --for 12h --reason spam",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(q)
    q.add_argument("address", metavar="IP", help="an IPv4 or IPv6 address (or an IPv6 /64)")
    q.add_argument("--for", dest="duration", default=None, metavar="DURATION",
                   help="how long, e.g. 30m, 12h, 7d (default: [auth] ban_duration)")
    q.add_argument("--reason", default="banned by hand", help="shown by 'ban list'")
    q.set_defaults(func=cmd_ban, ban_action="add")

    q = actions.add_parser(
        "lift", help="lift a ban",
        description="Lift the ban of an address (its /64 for IPv6), or every ban inside a "
        "network. The address's earlier bans are forgotten too: its next ban is a first one.",
        epilog="Example:\n  mailkeep ban lift 198.51.100.7",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(q)
    q.add_argument("target", metavar="IP|NETWORK", help="an address or a network in CIDR form")
    q.set_defaults(func=cmd_ban, ban_action="lift")
    p.set_defaults(func=_missing_action, ban_parser=p)


def _missing_action(args: argparse.Namespace) -> int:
    args.ban_parser.print_help()
    return EX_USAGE


def cmd_ban(args: argparse.Namespace) -> int:
    from mailkeep.bans import BANS_FILE, CLI_BUSY_TIMEOUT, BanList, BanListError, BanPolicy
    from mailkeep.config import ConfigError, load_config

    who = f"mailkeep ban {args.ban_action}"
    try:
        config = load_config(config_path(args))
    except (ConfigError, OSError) as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return EX_CONFIG
    policy = BanPolicy.from_config(config.auth)
    duration = policy.duration
    if args.ban_action == "add" and args.duration is not None:
        from mailkeep.units import parse_duration

        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            print(f"{who}: --for: {exc}", file=sys.stderr)
            return EX_USAGE
    path = config.data_dir / BANS_FILE
    if args.ban_action == "list" and not path.exists():
        print("No bans in force")  # nothing was ever banned; do not create the file
        return EX_OK
    try:
        bans = BanList(path, policy, busy_timeout=CLI_BUSY_TIMEOUT)
    except BanListError as exc:
        permission = isinstance(exc.__cause__, PermissionError) or "readonly" in str(exc) \
            or "unable to open" in str(exc)
        print(f"{who}: {exc}" + ("; run this as the user the server runs as" if permission
                                 else ""), file=sys.stderr)
        return EX_NOPERM if permission else EX_TEMPFAIL
    try:
        if args.ban_action == "list":
            print_bans(bans.active(), sys.stdout, time.time())
            return EX_OK
        if args.ban_action == "add":
            return _add(bans, who, args.address, duration, args.reason)
        return _lift(bans, who, args.target)
    finally:
        bans.close()


def _add(bans, who: str, address: str, duration: float, reason: str) -> int:
    from mailkeep.bans import NotBannable

    try:
        ban = bans.ban(address, reason, duration, "cli")
    except NotBannable as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return EX_FAILURE
    except ValueError as exc:
        print(f"{who}: {_clean(str(exc))}", file=sys.stderr)
        return EX_USAGE
    if bans.pending_writes():
        print(f"{who}: the ban list is busy; the ban was not saved, try again",
              file=sys.stderr)
        return EX_TEMPFAIL
    print(f"banned {ban.network} until {_when(ban.until)} ({_span(duration)})")
    return EX_OK


def _lift(bans, who: str, target: str) -> int:
    try:
        lifted = bans.lift(target)
    except ValueError as exc:
        print(f"{who}: {_clean(str(exc))}", file=sys.stderr)
        return EX_USAGE
    if bans.pending_writes():
        print(f"{who}: the ban list is busy; nothing was lifted, try again", file=sys.stderr)
        return EX_TEMPFAIL
    if not lifted:
        print(f"{who}: no ban in force for {_clean(target)}", file=sys.stderr)
        return EX_FAILURE
    for ban in lifted:
        print(f"lifted {ban.network}")
    return EX_OK


def print_bans(bans: list, out: TextIO, now: float) -> None:
    """One row per ban: address, end, time left, who banned it, how many times, why."""
    if not bans:
        out.write("No bans in force\n")
        return
    rows = [("ADDRESS", "UNTIL", "LEFT", "SOURCE", "BANS", "REASON")]
    for ban in bans:
        rows.append((ban.network, _when(ban.until), _span(ban.until - now), _clean(ban.source),
                     str(ban.offences) if ban.offences else "-", _clean(ban.reason)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
                  + "  " + row[-1] + "\n")
    out.write(f"-- {len(bans)} ban{'s' if len(bans) != 1 else ''} in force\n")


def _span(seconds: float) -> str:
    """A duration for people: 45s, 59m, 3h20m, 6d23h."""
    seconds = max(0, int(seconds + 0.5))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(stamp))


def _clean(text: str) -> str:
    """Text from the file or the network, safe for a terminal (no escape sequences)."""
    return _UNPRINTABLE.sub("?", text)
