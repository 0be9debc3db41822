"""`mailkeep domain add|list|remove`: the domains this server receives mail for."""

from __future__ import annotations

import argparse

from mailkeep.cli.config_cmd import HelpFormatter, load_or_report, run_edit
from mailkeep.cli.main import add_config_argument
from mailkeep.config.edit import add_domain, remove_domain
from mailkeep.config.names import display_domain

_FORMAT = HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "domain", help="add, list or remove mail domains",
        description="Manage the domains this server receives mail for ([domains] in the "
        "configuration). Changes are validated before they are written, keep the file's "
        "comments, and make a running server reload.",
        epilog="Examples:\n  mailkeep domain add example.com\n  mailkeep domain list\n"
        "  mailkeep domain remove example.org",
        formatter_class=_FORMAT, allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="domain_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    add = commands.add_parser(
        "add", help="add a domain",
        description="Add a domain. Internationalised names may be written in Unicode; they "
        "are stored and compared in their IDNA form.",
        epilog="Examples:\n  mailkeep domain add example.com\n  mailkeep domain add bücher.example",
        formatter_class=_FORMAT, allow_abbrev=False)
    add.add_argument("domain", metavar="DOMAIN")
    add_config_argument(add)
    add.set_defaults(func=cmd_add)

    listing = commands.add_parser(
        "list", help="list the domains",
        description="List the domains with their number of accounts and aliases and their "
        "catch-all settings.",
        epilog="Example:\n  mailkeep domain list", formatter_class=_FORMAT, allow_abbrev=False)
    add_config_argument(listing)
    listing.set_defaults(func=cmd_list)

    remove = commands.add_parser(
        "remove", help="remove a domain",
        description="Remove a domain. Refused while accounts or aliases of the domain exist, "
        "unless --force, which removes them from the configuration too (and the accounts' "
        "passwords). Mail data is never deleted here: see 'mailkeep account remove --purge'.",
        epilog="Examples:\n  mailkeep domain remove example.org\n"
        "  mailkeep domain remove example.org --force",
        formatter_class=_FORMAT, allow_abbrev=False)
    remove.add_argument("domain", metavar="DOMAIN")
    remove.add_argument("--force", action="store_true",
                        help="also remove the domain's accounts and aliases from the configuration")
    add_config_argument(remove)
    remove.set_defaults(func=cmd_remove)


def cmd_add(args: argparse.Namespace) -> int:
    result = run_edit(args, lambda doc: add_domain(doc, args.domain))
    if result is None:
        return 1
    print(f"added domain {display_domain(result.value)}")
    for warning in result.config.warnings:
        if warning.key.startswith("domains"):
            print(f"warning: {warning}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    rows = [("DOMAIN", "ACCOUNTS", "ALIASES", "CATCH-ALL", "OPTIONS")]
    for name, domain in config.domains.items():
        suffix = "@" + name
        accounts = sum(1 for a in config.accounts if a.endswith(suffix))
        aliases = sum(1 for a in config.aliases if a.endswith(suffix))
        options = []
        if domain.personalized_catch_all:
            options.append("personalized-catch-all")
        if domain.subaddress_separator:
            options.append(f"subaddress={domain.subaddress_separator}"
                           + ("->folder" if domain.subaddress_to_folder else ""))
        if domain.burned:
            options.append(f"burned={len(domain.burned)}")
        shown = display_domain(name)
        if shown != name:
            shown = f"{shown} ({name})"
        rows.append((shown, str(accounts), str(aliases), domain.catch_all or "-",
                     " ".join(options) or "-"))
    _print_table(rows)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    result = run_edit(args, lambda doc: remove_domain(doc, args.domain, force=args.force))
    if result is None:
        return 1
    removed = result.value
    if removed:
        from mailkeep.auth.passwd_file import PasswdFile

        PasswdFile(result.config.passwd_file).update(dict.fromkeys(removed))
        print(f"removed {len(removed)} account(s): {', '.join(removed)} (their mail is kept)")
    print(f"removed domain {args.domain}")
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
