"""`mailkeep migrate`: move a Postfix + Dovecot server to Mailkeep in one command.

Reads main.cf and master.cf (with the tables they name), Dovecot's passwd-files and
dovecot.conf, and the users' Maildirs; prints the plan, then what it could not carry over
and why; then writes the configuration, the passwords and the mail (``--dry-run`` stops
after printing). Safe to run again: see ``mailkeep.migrate.apply``.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mailkeep.cli.config_cmd import HelpFormatter, fail
from mailkeep.cli.main import add_config_argument, config_path

if TYPE_CHECKING:
    from mailkeep.migrate.plan import Plan

EPILOG = """\
examples:
  mailkeep migrate --postfix /etc/postfix --dovecot-conf /etc/dovecot/dovecot.conf \\
      --config /etc/mailkeep/mailkeep.toml --dry-run
      Show what would be migrated, and what cannot be, without writing anything.
  mailkeep migrate --postfix /usr/local/etc/postfix \\
      --dovecot-passwd /usr/local/etc/dovecot/users \\
      --mail-location 'maildir:/var/mail/users/%u' --config /etc/mailkeep/mailkeep.toml
      Seed 000's layout: CRAM-MD5 passwd-file, Maildir++ per user.
  mailkeep migrate --root /mnt/old --postfix /mnt/old/etc/postfix \\
      --dovecot-conf /mnt/old/etc/dovecot/dovecot.conf --config ./mailkeep.toml
      From a copy of the old server: paths in its configuration are looked up below
      /mnt/old.

Run it again at any time: what is already there is skipped, an interrupted mail import
continues without duplicates, and an existing configuration is merged (differences are
refused unless --force). docs/migration.md has the full story.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "migrate", help="migrate a Postfix + Dovecot server (config, accounts, mail)",
        description="Migrate a Postfix + Dovecot setup: domains, accounts with their password "
        "hashes, aliases, catch-alls, burned addresses, sender grants, the relay host, "
        "limits and policy tables, and every user's Maildir. Prints the plan and "
        "everything it could not map (with the reason), then writes.",
        epilog=EPILOG, formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--postfix", required=True, metavar="DIR",
                        help="the Postfix configuration directory (holding main.cf)")
    parser.add_argument("--dovecot-conf", metavar="FILE",
                        help="dovecot.conf (or 'doveconf -n' output): passwd-files, "
                             "mail_location, special-use folders, quotas, mechanisms")
    parser.add_argument("--dovecot-passwd", action="append", default=[], metavar="FILE",
                        help="a Dovecot passwd-file (user:{SCHEME}hash:uid:gid:...); may be "
                             "repeated, the first file with a hash for a user wins (default: "
                             "the passwd-files named in --dovecot-conf)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--mail-location", metavar="LOCATION",
                       help="Dovecot mail_location of the users' mail, e.g. "
                            "'maildir:/var/vmail/%%d/%%n' or 'maildir:~/Maildir:LAYOUT=fs' "
                            "(default: the one in --dovecot-conf)")
    where.add_argument("--maildir-root", metavar="DIR",
                       help="a directory holding each user's Maildir as ADDRESS, DOMAIN/LOCAL "
                            "or LOCAL (optionally with a Maildir/ inside); the layout is "
                            "recognised")
    parser.add_argument("--root", metavar="DIR",
                        help="the old server's files are a copy below DIR: absolute paths in "
                             "its configuration are looked up there")
    parser.add_argument("--hostname", metavar="NAME",
                        help="the new server's host name (default: myhostname of main.cf)")
    add_config_argument(parser)
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory for a new configuration (default: "
                             "/var/lib/mailkeep, or the existing configuration's)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and what cannot be migrated; write nothing")
    parser.add_argument("--force", action="store_true",
                        help="replace values of an existing configuration, passwords and "
                             "files that differ from the migration")
    parser.add_argument("--no-mail", action="store_true",
                        help="migrate the configuration and passwords, not the mail")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also list the settings that need nothing in Mailkeep")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar (default: when stderr is a terminal)")
    parser.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from mailkeep.migrate.apply import ApplyOptions, apply, prepare
    from mailkeep.migrate.plan import MigrationSources, build_plan
    from mailkeep.migrate.sources import MigrateError, SourceTree

    root = Path(args.root).absolute() if args.root else None
    if root is not None and not root.is_dir():
        return fail(f"--root {args.root} is not a directory")
    tree = SourceTree(root)
    sources = MigrationSources(
        postfix_dir=Path(args.postfix).absolute(), tree=tree,
        dovecot_conf=Path(args.dovecot_conf).absolute() if args.dovecot_conf else None,
        passwd_files=tuple(Path(p).absolute() for p in args.dovecot_passwd),
        mail_location=args.mail_location,
        maildir_root=Path(args.maildir_root).absolute() if args.maildir_root else None,
        hostname=args.hostname,
        fallback_hostname=socket.getfqdn() if root is None else "localhost")
    try:
        plan = build_plan(sources)
    except MigrateError as exc:
        return fail(str(exc))
    print_plan(plan, verbose=args.verbose)
    options = ApplyOptions(
        config_path=Path(config_path(args)),
        data_dir=Path(args.data_dir).absolute() if args.data_dir else None,
        force=args.force, import_mail=not args.no_mail, progress=args.progress)
    try:
        prepared = prepare(plan, options)
    except MigrateError as exc:
        return fail(str(exc))
    for note in prepared.notes:
        print(f"note: {note}")
    if args.dry_run:
        action = "merge into" if prepared.existing else "write"
        print(f"\nDry run: nothing was written. Without --dry-run this would {action} "
              f"{options.config_path}, store {len(prepared.passwords)} password hash(es) in "
              f"{prepared.config.passwd_file}"
              + ("" if args.no_mail else f" and import {plan.message_count()} message(s)")
              + ".")
        return 0
    print()
    try:
        result = apply(plan, prepared, options)
    except MigrateError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("\nmailkeep migrate: interrupted; what was written stays. Run the same command "
              "again to continue (nothing is imported twice).", file=sys.stderr)
        raise
    for item in result.renamed:
        print(f"renamed {item} (the old server's name for that special-use folder)")
    for item in result.imports:
        print(f"{item.address}: {item.imported} message(s) imported into {item.mailboxes} "
              f"mailbox(es), {item.skipped} already there, {item.failed} failed")
        for error in item.errors:
            print(f"  {error}", file=sys.stderr)
    if result.failed:
        print(f"mailkeep migrate: {result.failed} message(s) could not be imported (see above); "
              "fix them and run the same command again", file=sys.stderr)
        return 1
    print("Migration complete. Next: 'mailkeep config check', then stop Postfix and Dovecot "
          "and start 'mailkeep serve' (docs/migration.md).")
    return 0


def print_plan(plan: Plan, *, verbose: bool = False) -> None:
    """The plan summary, the notes, what is not migrated (and, verbose, what is built in)."""
    accounts = list(plan.accounts.values())
    relay_only = sum(1 for a in accounts if a.relay_only)
    schemes: dict[str, int] = {}
    for account in accounts:
        if account.password_scheme:
            schemes[account.password_scheme] = schemes.get(account.password_scheme, 0) + 1
    scheme_text = ", ".join(f"{name} x{count}" for name, count in sorted(schemes.items()))
    catch_alls = [f"{d.name} -> {d.catch_all}" for d in plan.domains.values() if d.catch_all]
    personalized = [d.name for d in plan.domains.values() if d.personalized_catch_all]
    burned = sum(len(d.burned) for d in plan.domains.values())
    with_mail = [a for a in accounts if a.mail is not None]
    rows = [
        ("sources", ", ".join(plan.sources)),
        ("host name", plan.hostname),
        (f"domains ({len(plan.domains)})", ", ".join(plan.domains) or "-"),
        (f"accounts ({len(accounts)})", f"{len(accounts) - relay_only} with a mailbox, "
         f"{relay_only} relay-only; {sum(schemes.values())} password hash(es)"
         + (f" ({scheme_text})" if scheme_text else "")),
        (f"aliases ({len(plan.aliases)})", ", ".join(list(plan.aliases)[:6])
         + (", ..." if len(plan.aliases) > 6 else "") or "-"),
        ("catch-alls", "; ".join(catch_alls) or "-"),
        ("personalized", ", ".join(personalized) or "-"),
        ("burned", f"{burned} address(es)"),
        ("sender grants", ", ".join(f"{k} -> {', '.join(v)}" for k, v in plan.senders.items())
         or "-"),
        ("relay host", f"{plan.relay.name} = {plan.relay.host} (tls {plan.relay.tls}"
         + (f", user {plan.relay.username})" if plan.relay.username else ")")
         if plan.relay else "- (direct delivery)"),
        ("policy", f"{len(plan.policy_rules)} rules ({len(plan.policy_tables)} table(s) "
         "copied)" if plan.policy_rules is not None else "Mailkeep's default rules"),
        ("listeners", ", ".join(f"{entry['protocol']} {entry['address']}"
                                for entry in plan.listeners)),
        ("mail", f"{len(with_mail)} account(s), "
         f"{sum(len(a.mail.folders) for a in with_mail if a.mail)} folder(s), "
         f"{plan.message_count()} message(s)"),
    ]
    width = max(len(label) for label, _ in rows)
    print("Migration plan")
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    if plan.notes:
        print(f"\nNotes ({len(plan.notes)}):")
        for note in plan.notes:
            print(f"  - {note}")
    print(f"\nNot migrated ({len(plan.unmapped)}):" if plan.unmapped
          else "\nNot migrated: nothing")
    for item in plan.unmapped:
        print(f"  - {item.item}\n      {item.reason}")
    if verbose and plan.builtin:
        print(f"\nBuilt in, nothing to configure ({len(plan.builtin)}):")
        for item, reason in plan.builtin:
            print(f"  - {item}: {reason}")
    elif plan.builtin:
        print(f"\n{len(plan.builtin)} setting(s) need nothing in Mailkeep (built in); "
              "--verbose lists them.")
