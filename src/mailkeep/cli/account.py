"""`mailkeep account add|list|remove|passwd|import-passwd`: users, mailboxes and passwords.

An account lives in three places, changed in this order so that an interrupted command
leaves nothing dangerous behind: the configuration (``[accounts."me@example.com"]``,
validated before it is written), the password file (``data_dir/passwd``) and the store (the
mailbox, created at once so that IMAP shows it before the first message arrives).

Passwords never come from the command line, where ``ps`` and shell history would show them:
they are typed twice at a prompt, read as one line from standard input with
``--password-stdin``, or - when there is no terminal - generated and printed once.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from mailkeep.auth.passwd_file import MAX_PASSWD_FILE_BYTES, PasswdFile, parse_passwd_text
from mailkeep.auth.passwords import (
    MAX_PASSWORD_BYTES,
    PasswordHashError,
    generate_password,
    hash_password,
    password_scheme,
    weak_scheme,
)
from mailkeep.cli.config_cmd import HelpFormatter, fail, load_or_report, run_edit
from mailkeep.cli.main import add_config_argument
from mailkeep.config import Config
from mailkeep.config.edit import add_account, add_domain, remove_account
from mailkeep.config.names import InvalidName, canonical_address, canonical_domain
from mailkeep.sasl.credentials import write_credentials
from mailkeep.units import format_size, parse_size

# Passwords chosen by people must be at least this long; generated ones are 20 characters.
MIN_PASSWORD_LENGTH = 8
_FORMAT = HelpFormatter


class PasswordInputError(Exception):
    """No usable password was given."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "account", help="add, list or remove accounts, set passwords, import a passwd-file",
        description="Manage accounts: the users who log in, each with a mailbox (unless "
        "relay-only). Configuration changes are validated before they are written and make "
        "a running server reload. Passwords are never accepted as command-line arguments.",
        epilog="Examples:\n  mailkeep account add me@example.com --name 'Me' --quota 2G\n"
        "  mailkeep account list\n  mailkeep account passwd me@example.com\n"
        "  mailkeep account remove old@example.com\n"
        "  mailkeep account import-passwd /etc/dovecot/users --dry-run",
        formatter_class=_FORMAT, allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="account_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    add = commands.add_parser(
        "add", help="add an account",
        description="Add an account to the configuration, store its password and create its "
        "mailbox. The password is asked twice at the terminal, or read as one line from "
        "standard input with --password-stdin; without a terminal and without "
        "--password-stdin a strong password is generated and printed once.",
        epilog="Examples:\n  mailkeep account add me@example.com --name 'Me' --quota 2G\n"
        "  printf '%s\\n' \"$PW\" | mailkeep account add me@example.com --password-stdin\n"
        "  mailkeep account add relay1@example.com --relay-only",
        formatter_class=_FORMAT, allow_abbrev=False)
    add.add_argument("address", metavar="ADDRESS")
    add.add_argument("--name", help="display name")
    add.add_argument("--quota", metavar="SIZE", help="storage limit such as 2G (default: unlimited)")
    add.add_argument("--quota-messages", metavar="N", type=int,
                     help="limit on the number of messages (default: unlimited)")
    add.add_argument("--relay-only", action="store_true",
                     help="the account may log in and send, but has no mailbox")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password as one line from standard input")
    add_config_argument(add)
    add.set_defaults(func=cmd_add)

    listing = commands.add_parser(
        "list", help="list accounts with their usage",
        description="List the accounts: address, name, storage used / limit, messages, "
        "relay-only, and the scheme of the stored password (weak schemes are marked).",
        epilog="Example:\n  mailkeep account list", formatter_class=_FORMAT, allow_abbrev=False)
    add_config_argument(listing)
    listing.set_defaults(func=cmd_list)

    remove = commands.add_parser(
        "remove", help="remove an account",
        description="Remove an account from the configuration and its password; it also "
        "disappears from alias targets. Its mail is kept unless --purge is given (--purge "
        "also works for an account that was removed earlier).",
        epilog="Examples:\n  mailkeep account remove old@example.com\n"
        "  mailkeep account remove old@example.com --purge",
        formatter_class=_FORMAT, allow_abbrev=False)
    remove.add_argument("address", metavar="ADDRESS")
    remove.add_argument("--purge", action="store_true", help="also delete all of the account's mail")
    add_config_argument(remove)
    remove.set_defaults(func=cmd_remove)

    passwd = commands.add_parser(
        "passwd", help="set an account's password",
        description="Set the password of an account: asked twice at the terminal, or read as "
        "one line from standard input with --password-stdin.",
        epilog="Examples:\n  mailkeep account passwd me@example.com\n"
        "  printf '%s\\n' \"$PW\" | mailkeep account passwd me@example.com --password-stdin",
        formatter_class=_FORMAT, allow_abbrev=False)
    passwd.add_argument("address", metavar="ADDRESS")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password as one line from standard input")
    add_config_argument(passwd)
    passwd.set_defaults(func=cmd_passwd)

    imp = commands.add_parser(
        "import-passwd", help="import accounts and password hashes from a Dovecot passwd-file",
        description="Read a Dovecot passwd-file (user:{SCHEME}hash:uid:gid:...) and add the "
        "accounts that are missing, with their hashes as they are: they are verified with "
        "their own scheme and rehashed to Argon2id at the next successful login. An entry "
        "whose uid equals its gid is imported as relay-only (the vumap convention). uid, gid, "
        "home and extra fields are otherwise ignored. Weak schemes are reported.",
        epilog="Examples:\n  mailkeep account import-passwd /usr/local/etc/dovecot/users --dry-run\n"
        "  mailkeep account import-passwd /etc/dovecot/passwd --domain-create",
        formatter_class=_FORMAT, allow_abbrev=False)
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--domain-create", action="store_true",
                     help="add the domains of imported accounts that are not configured yet")
    imp.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
    add_config_argument(imp)
    imp.set_defaults(func=cmd_import)


# -- helpers -------------------------------------------------------------------------------

def read_new_password(args: argparse.Namespace, *, allow_generate: bool) -> tuple[str, bool]:
    """``(password, generated)`` from stdin, the terminal, or the generator."""
    if args.password_stdin:
        line = sys.stdin.readline(MAX_PASSWORD_BYTES + 2)
        if line and not line.endswith("\n") and sys.stdin.read(1):
            raise PasswordInputError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
        password = line.rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Retype new password: ") != password:
            raise PasswordInputError("the passwords do not match")
    elif allow_generate:
        return generate_password(), True
    else:
        raise PasswordInputError("no terminal to ask for the password; use --password-stdin")
    if not password:
        raise PasswordInputError("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordInputError(f"the password is shorter than {MIN_PASSWORD_LENGTH} characters")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise PasswordInputError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in password):
        raise PasswordInputError("the password contains control characters")
    return password, False


def store_password(config: Config, address: str, password_hash: str, password: str) -> None:
    """Write the hash together with the SCRAM verifiers (and the CRAM-MD5 state when
    ``[auth] cram_md5`` is on) derived from the same password, in one rewrite; other
    extra fields of the entry are kept (docs/auth.md)."""
    write_credentials(PasswdFile(config.passwd_file), address, password_hash, password,
                      scram_iterations=config.auth.scram_iterations,
                      cram_md5=config.auth.cram_md5)


def open_store(config: Config) -> Any | None:
    """The mail store of ``config``, or None when this installation has none yet."""
    try:
        from mailkeep.store import open_store as open_mail_store
    except ImportError:
        return None
    return open_mail_store(config.data_dir)


def _canonical(address: str) -> str | None:
    try:
        return canonical_address(address)
    except InvalidName as exc:
        fail(str(exc))
        return None


# -- commands ------------------------------------------------------------------------------

def cmd_add(args: argparse.Namespace) -> int:
    address = _canonical(args.address)
    if address is None:
        return 1
    if args.quota is not None:
        try:
            parse_size(args.quota)
        except ValueError as exc:
            return fail(f"--quota: {exc}")
    if args.quota_messages is not None and args.quota_messages < 0:
        return fail("--quota-messages cannot be negative")
    try:
        password, generated = read_new_password(args, allow_generate=True)
    except PasswordInputError as exc:
        return fail(str(exc))
    # Hash before touching anything: an interrupted prompt or hash leaves no half account.
    password_hash = hash_password(password)
    result = run_edit(args, lambda doc: add_account(
        doc, address, name=args.name, quota=args.quota, quota_messages=args.quota_messages,
        relay_only=args.relay_only))
    if result is None:
        return 1
    config = result.config
    try:
        store_password(config, address, password_hash, password)
    except OSError as exc:
        return fail(f"the account was added, but its password could not be stored ({exc}); "
                    f"run 'mailkeep account passwd {address}'")
    if not args.relay_only:
        store = open_store(config)
        if store is not None:
            try:
                store.ensure_account(address)
            finally:
                store.close()
    print(f"added account {address}" + (" (relay-only: no mailbox)" if args.relay_only else ""))
    if generated:
        print(f"generated password (shown only now): {password}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    passwd = PasswdFile(config.passwd_file)
    store = open_store(config) if config.data_dir.exists() else None
    rows = [("ADDRESS", "NAME", "USAGE", "MESSAGES", "RELAY-ONLY", "PASSWORD")]
    try:
        for address, account in config.accounts.items():
            usage_text = messages_text = "-"
            if store is not None and not account.relay_only:
                try:
                    usage = store.usage(address)
                except _store_error_types():
                    usage = None  # no mailbox yet: created at the first delivery
                if usage is not None:
                    limit = format_size(account.quota) if account.quota else "unlimited"
                    usage_text = f"{format_size(usage.bytes)} / {limit}"
                    messages_text = str(usage.messages) + (
                        f" / {account.quota_messages}" if account.quota_messages else "")
            rows.append((address, account.name or "-", usage_text, messages_text,
                         "yes" if account.relay_only else "no", _scheme_label(passwd, address)))
    finally:
        if store is not None:
            store.close()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _scheme_label(passwd: PasswdFile, address: str) -> str:
    entry = passwd.get(address)
    if entry is None or not entry.hash:
        return "none"
    try:
        scheme = password_scheme(entry.hash)
    except PasswordHashError:
        return "unusable"
    return scheme + (" (weak)" if weak_scheme(entry.hash) else "")


def _store_error_types() -> tuple[type[BaseException], ...]:
    try:
        from mailkeep.store.api import NoSuchAccount
    except ImportError:
        return (LookupError,)
    return (LookupError, NoSuchAccount)


def cmd_remove(args: argparse.Namespace) -> int:
    address = _canonical(args.address)
    if address is None:
        return 1
    config = load_or_report(args)
    if config is None:
        return 1
    if address in config.accounts:
        result = run_edit(args, lambda doc: remove_account(doc, address))
        if result is None:
            return 1
        config = result.config
        for note in result.value:
            print(note)
        PasswdFile(config.passwd_file).remove(address)
        print(f"removed account {address}")
    elif args.purge:
        # An account removed earlier without --purge: delete its leftover mail.
        print(f"{address} is not configured; deleting its mail data only")
    else:
        return fail(f"{address} is not an account")
    if not args.purge:
        print(f"its mail is kept; 'mailkeep account remove {address} --purge' deletes it")
        return 0
    store = open_store(config) if config.data_dir.exists() else None
    if store is None:
        print("no mail store: nothing to delete")
        return 0
    try:
        store.delete_account(address)
    except _store_error_types():
        print(f"{address} has no mail data")
        return 0
    finally:
        store.close()
    print(f"deleted all mail of {address}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    address = _canonical(args.address)
    if address is None:
        return 1
    config = load_or_report(args)
    if config is None:
        return 1
    if address not in config.accounts:
        return fail(f"{address} is not an account")
    try:
        password, _ = read_new_password(args, allow_generate=False)
    except PasswordInputError as exc:
        return fail(str(exc))
    store_password(config, address, hash_password(password), password)
    print(f"password of {address} changed")
    return 0


# -- import --------------------------------------------------------------------------------

def cmd_import(args: argparse.Namespace) -> int:
    config = load_or_report(args)
    if config is None:
        return 1
    source = Path(args.file)
    try:
        with open(source, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read(MAX_PASSWD_FILE_BYTES + 1)
    except OSError as exc:
        return fail(f"cannot read {source}: {exc.strerror}")
    if len(text) > MAX_PASSWD_FILE_BYTES:
        return fail(f"{source} is larger than {MAX_PASSWD_FILE_BYTES} bytes")
    entries, problems = parse_passwd_text(text)
    errors = [f"{source}:{number}: {problem}" for number, problem in problems]
    notes: list[str] = []
    passwd = PasswdFile(config.passwd_file)

    new_domains: list[str] = []
    new_accounts: dict[str, bool] = {}  # address -> relay_only
    hashes: dict[str, tuple[str, None]] = {}
    seen: set[str] = set()
    for entry in entries:
        where = f"{source}: {entry.user}"
        try:
            address = canonical_address(entry.user)
        except InvalidName as exc:
            errors.append(f"{where}: skipped: {exc}")
            continue
        if address in seen:
            errors.append(f"{where}: skipped: listed twice")
            continue
        seen.add(address)
        domain = canonical_domain(address.rpartition("@")[2])
        if domain not in config.domains and domain not in new_domains:
            if not args.domain_create:
                errors.append(f"{where}: skipped: {domain} is not a domain of this server "
                              "(use --domain-create)")
                continue
            new_domains.append(domain)
        scheme = None
        if entry.hash:
            try:
                scheme = password_scheme(entry.hash)
            except PasswordHashError as exc:
                errors.append(f"{where}: password not imported: {exc}")
        if entry.extra.strip():
            notes.append(f"{where}: extra fields ignored: {entry.extra.strip()}")
        relay_only = bool(entry.uid) and entry.uid == entry.gid
        if address in config.accounts:
            if scheme is None:
                continue
            if passwd.get(address) is not None:
                notes.append(f"{where}: already an account with a password; left unchanged")
                continue
        elif address in config.aliases or any(address in a.aliases for a in config.accounts.values()):
            errors.append(f"{where}: skipped: {address} is an alias in the configuration")
            continue
        else:
            new_accounts[address] = relay_only
        if scheme is not None:
            hashes[address] = (entry.hash, None)
            if weak_scheme(entry.hash):
                notes.append(f"{where}: weak password scheme {{{scheme}}}; it is rehashed at the "
                             "next login")
        elif address in new_accounts:
            notes.append(f"{where}: no usable password; set one with 'mailkeep account passwd {address}'")

    verb = "would add" if args.dry_run else "added"
    for message in notes:
        print(message)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if not args.dry_run and (new_domains or new_accounts):
        def change(document: Any) -> None:
            for domain in new_domains:
                add_domain(document, domain)
            for address, relay_only in new_accounts.items():
                add_account(document, address, relay_only=relay_only)

        result = run_edit(args, change)
        if result is None:
            return 1
        config = result.config
    if not args.dry_run and hashes:
        passwd.update(hashes)
    if not args.dry_run and new_accounts:
        store = open_store(config)
        if store is not None:
            try:
                for address, relay_only in new_accounts.items():
                    if not relay_only:
                        store.ensure_account(address)
            finally:
                store.close()
    for domain in new_domains:
        print(f"{verb} domain {domain}")
    for address, relay_only in new_accounts.items():
        print(f"{verb} account {address}" + (" (relay-only)" if relay_only else ""))
    updated = [a for a in hashes if a not in new_accounts]
    for address in updated:
        print(f"{verb} the password of existing account {address}")
    print(f"{len(new_accounts)} account(s), {len(new_domains)} domain(s), {len(hashes)} "
          f"password(s) {'to import' if args.dry_run else 'imported'}; {len(errors)} problem(s)")
    return 1 if errors else 0

