"""`mailkeep import` and `mailkeep export`: move an account's mail in and out as Maildir++
(Dovecot's layout) or mbox (mboxrd). The formats are described in
``mailkeep.store.maildir`` and ``mailkeep.store.mbox``; see also docs/store.md.

Both commands may run while the server runs: they open the same store, and SQLite and the
store's locks keep the two processes out of each other's way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from mailkeep.cli.main import add_config_argument, config_path

EX_OK, EX_FAILED, EX_USAGE = 0, 1, 2

IMPORT_EPILOG = """\
examples:
  mailkeep import me@example.com --format maildir /home/me/Maildir
      Every folder of a Dovecot-style Maildir++ (INBOX at the root, .Sent, .Archive.2024
      as Archive/2024), with flags, keywords, dates and subscriptions.
  mailkeep import me@example.com --format mbox ~/export/
      A tree of *.mbox files (Archive/2024.mbox becomes Archive/2024), or Thunderbird's
      profile folder (Inbox, Archive.sbd/2024).
  mailkeep import me@example.com --format mbox old.mbox --mailbox "Old mail"
      One mbox file into one mailbox.

An import can be interrupted (Ctrl-C, --limit) and run again: messages already imported
are recognised and skipped, so nothing is imported twice.
"""

EXPORT_EPILOG = """\
examples:
  mailkeep export me@example.com --format maildir /backup/me-maildir
      Maildir++ as Dovecot reads it (LF line ends, flags in file names, dovecot-keywords).
  mailkeep export me@example.com --format mbox /backup/me-mbox
      One mboxrd file per mailbox: INBOX.mbox, Sent.mbox, Archive/2024.mbox ...

DEST must not exist or be empty. The export is a consistent snapshot even while the
server keeps delivering.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    imp = subparsers.add_parser(
        "import", help="import mail from a Maildir or mbox into an account",
        description="Import mail from a Maildir++ tree or mbox files into an account.",
        epilog=IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("account", metavar="ACCOUNT", help="the account's address")
    imp.add_argument("--format", "-f", required=True, choices=("maildir", "mbox"),
                     help="the source format")
    imp.add_argument("source", metavar="SRC", help="Maildir directory, mbox file or tree")
    imp.add_argument("--mailbox", metavar="NAME",
                     help="import into this mailbox (a single mbox file) or below it")
    imp.add_argument("--limit", type=int, metavar="N",
                     help="stop after N new messages (run again to continue)")
    imp.add_argument("--max-message-size", default="256M", metavar="SIZE",
                     help="skip (and report) messages larger than this (default: 256M)")
    imp.add_argument("--create-account", action="store_true",
                     help="create the account in the store if it is not there (needed with "
                          "--data-dir for an account the store does not know yet)")
    common_arguments(imp)
    imp.set_defaults(func=cmd_import)

    exp = subparsers.add_parser(
        "export", help="export an account's mail as Maildir or mbox",
        description="Export every mailbox of an account as Maildir++ or mbox files.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("account", metavar="ACCOUNT", help="the account's address")
    exp.add_argument("--format", "-f", required=True, choices=("maildir", "mbox"),
                     help="the format to write")
    exp.add_argument("dest", metavar="DEST", help="directory to create")
    common_arguments(exp)
    exp.set_defaults(func=cmd_export)


def common_arguments(parser: argparse.ArgumentParser, data_dir_help: str =
                     "use this data directory instead of the one in the configuration"
                     ) -> None:
    """--config, --data-dir and --progress, shared with `mailkeep backup` and `restore`."""
    add_config_argument(parser)
    parser.add_argument("--data-dir", metavar="DIR", help=data_dir_help)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar (default: when stderr is a terminal)")


def command_fail(command: str, text: str, code: int = EX_FAILED) -> int:
    """Print ``mailkeep COMMAND: TEXT`` on stderr; return the exit code ``code``."""
    print(f"mailkeep {command}: {text}", file=sys.stderr)
    return code


def _canonical_account(name: str) -> str:
    from mailkeep.config.names import InvalidName, canonical_address

    try:
        return canonical_address(name)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None


def _open_store(command: str, args: argparse.Namespace, *, may_create: bool):
    """(store, account) or an exit code."""
    try:
        account = _canonical_account(args.account)
    except ValueError as exc:
        return command_fail(command, f"{args.account!r} is not an account address: {exc}", EX_USAGE)
    configured = False
    if args.data_dir:
        data_dir = Path(args.data_dir)
    else:
        from mailkeep.config import ConfigError, load_config

        try:
            config = load_config(config_path(args))
        except (ConfigError, OSError) as exc:
            return command_fail(command, str(exc), EX_USAGE)
        data_dir = config.data_dir
        configured = account in config.accounts
    from mailkeep.store import StoreError, open_store

    try:
        store = open_store(data_dir)
    except (StoreError, OSError) as exc:
        return command_fail(command, f"cannot open the store in {data_dir}: {exc}")
    if account not in store.list_accounts():
        if configured or (may_create and args.create_account):
            store.ensure_account(account)
        else:
            store.close()
            hint = ("add it to the configuration first" if not args.data_dir
                    else "pass --create-account to create it" if may_create
                    else "check the name")
            return command_fail(command, f"no account {account} in the store; {hint}")
    return store, account


def progress_bar(args: argparse.Namespace, label: str, **kwargs):
    from mailkeep.progress import Progress

    return Progress(label, enabled=args.progress, **kwargs)


def cmd_import(args: argparse.Namespace) -> int:
    from mailkeep.store import StoreError
    from mailkeep.store.maildir import count_messages, import_maildir
    from mailkeep.store.mbox import import_mbox
    from mailkeep.units import parse_size

    try:
        max_size = parse_size(args.max_message_size)
    except ValueError as exc:
        return command_fail("import", f"--max-message-size: {exc}", EX_USAGE)
    if args.limit is not None and args.limit < 1:
        return command_fail("import", "--limit must be at least 1", EX_USAGE)
    source = Path(args.source)
    if not source.exists():
        return command_fail("import", f"{source} does not exist", EX_USAGE)
    if args.format == "maildir" and not source.is_dir():
        return command_fail("import", f"{source} is not a Maildir directory", EX_USAGE)
    opened = _open_store("import", args, may_create=True)
    if isinstance(opened, int):
        return opened
    store, account = opened
    started = time.monotonic()
    try:
        if args.format == "maildir":
            with progress_bar(args, "Importing", total=count_messages(source),
                              unit="msg") as progress:
                report = asyncio.run(import_maildir(
                    store, account, source, progress=progress, limit=args.limit,
                    max_message_bytes=max_size, mailbox_prefix=args.mailbox))
        else:
            with progress_bar(args, "Importing", byte_units=True) as progress:
                report = asyncio.run(import_mbox(
                    store, account, source, progress=progress, limit=args.limit,
                    max_message_bytes=max_size, mailbox=args.mailbox))
    except KeyboardInterrupt:
        print("\nmailkeep import: interrupted; what was committed stays. Run the same "
              "command again to continue.", file=sys.stderr)
        raise
    except (StoreError, OSError, ValueError) as exc:
        return command_fail("import", str(exc))
    finally:
        store.close()
    elapsed = time.monotonic() - started
    print(f"Imported {report.imported} messages into {len(report.mailboxes)} mailboxes of "
          f"{account} in {elapsed:.1f} s ({report.skipped} already imported, "
          f"{report.failed} failed).")
    for error in report.errors:
        print(f"  {error}", file=sys.stderr)
    if report.failed > len(report.errors):
        print(f"  ... and {report.failed - len(report.errors)} more", file=sys.stderr)
    if report.incomplete:
        print(f"Stopped after --limit {args.limit}; run the same command again to continue.")
    return EX_FAILED if report.failed else EX_OK


def cmd_export(args: argparse.Namespace) -> int:
    from mailkeep.store import StoreError
    from mailkeep.store.maildir import export_maildir
    from mailkeep.store.mbox import export_mbox

    dest = Path(args.dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        return command_fail("export", f"{dest} exists and is not an empty directory", EX_USAGE)
    opened = _open_store("export", args, may_create=False)
    if isinstance(opened, int):
        return opened
    store, account = opened
    started = time.monotonic()
    exporter = export_maildir if args.format == "maildir" else export_mbox
    try:
        with progress_bar(args, "Exporting", unit="msg") as progress:
            report = exporter(store, account, dest, progress=progress)
    except (StoreError, OSError) as exc:
        return command_fail("export", str(exc))
    finally:
        store.close()
    elapsed = time.monotonic() - started
    print(f"Exported {report.exported} messages in {report.mailboxes} mailboxes of {account} "
          f"to {dest} ({args.format}) in {elapsed:.1f} s.")
    for warning in report.warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    return EX_OK
