"""`mailkeep alias add|list|remove`: addresses that deliver to other addresses ([aliases])."""

from __future__ import annotations

import argparse

from mailkeep.cli.config_cmd import HelpFormatter, load_or_report, run_edit
from mailkeep.cli.main import add_config_argument
from mailkeep.config.edit import add_alias, remove_alias
from mailkeep.config.names import InvalidName, canonical_address

_FORMAT = HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "alias", help="add, list or remove aliases",
        description="Manage aliases ([aliases] in the configuration): an address in one of "
        "our domains that delivers to one or more accounts or other aliases. Loops and "
        "targets that do not exist are refused. Forwarding to addresses outside this server "
        "is accepted in the file, but such mail is answered with a temporary failure until "
        "forwarding is implemented.",
        epilog="Examples:\n  mailkeep alias add info@example.com me@example.com she@example.com\n"
        "  mailkeep alias list\n  mailkeep alias remove info@example.com she@example.com",
        formatter_class=_FORMAT, allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="alias_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    add = commands.add_parser(
        "add", help="create an alias or add targets to it",
        description="Create an alias, or add targets to an existing one.",
        epilog="Examples:\n  mailkeep alias add info@example.com me@example.com\n"
        "  mailkeep alias add team@example.com me@example.com she@example.com",
        formatter_class=_FORMAT, allow_abbrev=False)
    add.add_argument("address", metavar="ADDRESS")
    add.add_argument("targets", metavar="TARGET", nargs="+")
    add_config_argument(add)
    add.set_defaults(func=cmd_add)

    listing = commands.add_parser(
        "list", help="list aliases",
        description="List the aliases of [aliases] with their targets, then the extra "
        "addresses of accounts (accounts.X.aliases).",
        epilog="Example:\n  mailkeep alias list", formatter_class=_FORMAT, allow_abbrev=False)
    add_config_argument(listing)
    listing.set_defaults(func=cmd_list)

    remove = commands.add_parser(
        "remove", help="remove an alias or one of its targets",
        description="Remove an alias, or only one of its targets (the alias goes when its "
        "last target goes).",
        epilog="Examples:\n  mailkeep alias remove info@example.com\n"
        "  mailkeep alias remove team@example.com she@example.com",
        formatter_class=_FORMAT, allow_abbrev=False)
    remove.add_argument("address", metavar="ADDRESS")
    remove.add_argument("target", metavar="TARGET", nargs="?")
    add_config_argument(remove)
    remove.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace) -> int:
    result = run_edit(args, lambda doc: add_alias(doc, args.address, list(args.targets)))
    if result is None:
        return 1
    address = canonical_address(args.address)
    print(f"{address} -> {', '.join(result.config.aliases[address])}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    for alias, targets in config.aliases.items():
        external = [t for t in targets if t.rpartition("@")[2] not in config.domains]
        note = "  (forwarding outside this server is not enabled yet)" if external else ""
        print(f"{alias} -> {', '.join(targets)}{note}")
    for account in config.accounts.values():
        for alias in account.aliases:
            print(f"{alias} -> {account.address}  (account alias)")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    result = run_edit(args, lambda doc: remove_alias(doc, args.address, args.target))
    if result is None:
        return 1
    try:
        address = canonical_address(args.address)
    except InvalidName:  # pragma: no cover - remove_alias has already checked it
        address = args.address
    if result.value:
        print(f"removed alias {address}")
    else:
        print(f"{address} -> {', '.join(result.config.aliases[address])}")
    return 0
