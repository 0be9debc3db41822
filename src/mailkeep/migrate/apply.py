"""Carrying out a migration plan: configuration, passwords, secrets, tables, then the mail.

``prepare`` decides every write without making one: it loads an existing configuration
(refusing, with the loader's messages, one that is not valid), merges the plan into it,
validates the result with the server's own validator, and compares each file the plan
writes with what is there. A value that differs from what the existing file says is a
conflict: the migration stops before writing anything unless ``force`` is given. A dry
run stops after ``prepare``.

``apply`` then writes in an order that leaves a safe state at every step, and can be run
again at any time (a rerun converges: what is already there is skipped):

1. the relay password file (0600) and the copies of the policy tables, which the
   configuration refers to;
2. the password hashes into ``data_dir/passwd``, as they are (Argon2id at the next login);
   a user whose password already exists there keeps it (it may have been changed or
   rehashed since): only ``force`` replaces it;
3. the configuration, atomically; an existing file is edited in place under its lock,
   keeping its comments, and a running server is told to reload;
4. the accounts in the store, default mailboxes renamed to the names the old server gave
   their special use (Sent -> "Sent Messages");
5. the mail, through the Maildir importer, which records an import key per message in the
   same commit as the message, so an interrupted import resumes without duplicates. A
   state file (``data_dir/migrate-state.json``) says whether an earlier run was
   interrupted, and which accounts were complete.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from mailkeep.auth.passwd_file import PasswdFile, PasswdFileError
from mailkeep.config.edit import EditError, config_lock, edit_config
from mailkeep.config.load import MAX_CONFIG_BYTES, load_config, parse_config_text
from mailkeep.config.names import InvalidName, canonical_address, canonical_domain
from mailkeep.config.schema import DEFAULT_DATA_DIR, Config, ConfigError
from mailkeep.durable import atomic_write_bytes, atomic_write_text
from mailkeep.logfmt import log
from mailkeep.migrate.plan import POLICY_TABLE_DIR, Plan, PlannedAccount
from mailkeep.migrate.sources import MigrateError, SourceTree
from mailkeep.progress import Progress
from mailkeep.store.maildir import import_maildir

logger = logging.getLogger("mailkeep.migrate")

STATE_FILE = "migrate-state.json"
SECRET_FILE_MODE = 0o600
#: The copies of the old server's policy tables: they may list private addresses, and the
#: original's mode (0644 for a copy of /etc/shadow...) is never carried over.
TABLE_FILE_MODE = 0o640
CONFIG_FILE_MODE = 0o644
#: Sections whose keys are names (compared in canonical form when merging).
_ADDRESS_TABLES = frozenset({"accounts", "aliases"})
#: Lists merged as sets: the union is written, never a conflict.
_UNION_LISTS = frozenset({("domains", "*", "burned"), ("submission", "senders", "*")})


class ConflictError(MigrateError):
    """The existing files say something else than the plan; nothing was written."""

    def __init__(self, conflicts: list[str]) -> None:
        self.conflicts = conflicts
        super().__init__("the existing configuration differs from the migration in "
                         f"{len(conflicts)} place(s) (nothing was written; --force replaces "
                         "them):\n" + "\n".join(f"  {c}" for c in conflicts))


@dataclass(frozen=True)
class ApplyOptions:
    config_path: Path
    #: --data-dir; None: the existing configuration's, or /var/lib/mailkeep.
    data_dir: Path | None = None
    force: bool = False
    import_mail: bool = True
    progress: bool | None = None


@dataclass
class Prepared:
    """Every write ``apply`` will make, decided and validated."""

    config_path: Path
    config_text: str
    config: Config
    existing: bool
    config_changed: bool
    data_dir: Path
    #: (path, content) of the relay password file, when there is one to write.
    secret: tuple[Path, str] | None = None
    #: (destination, content) of the policy tables to copy.
    tables: list[tuple[Path, str]] = field(default_factory=list)
    #: address -> hash to store.
    passwords: dict[str, str] = field(default_factory=dict)
    #: Accounts whose existing password is kept.
    passwords_kept: list[str] = field(default_factory=list)
    #: Notes about the merge (listeners kept, ...).
    notes: list[str] = field(default_factory=list)


@dataclass
class AccountImport:
    address: str
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    mailboxes: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class ApplyResult:
    accounts_created: int = 0
    renamed: list[str] = field(default_factory=list)
    imports: list[AccountImport] = field(default_factory=list)
    resumed: bool = False

    @property
    def failed(self) -> int:
        return sum(item.failed for item in self.imports)


# --- prepare -------------------------------------------------------------------------------


def prepare(plan: Plan, options: ApplyOptions) -> Prepared:
    """Decide and validate every write. Raises MigrateError (ConflictError for conflicts)."""
    path = options.config_path
    notes: list[str] = []
    conflicts: list[str] = []
    relay_secret = f"relay-{plan.relay.name}.secret" if plan.relay and plan.relay.password \
        else None
    if path.exists():
        try:
            current = load_config(path)
        except ConfigError as exc:
            raise MigrateError(f"the existing configuration {path} is not valid; fix it first "
                               f"(nothing was written):\n{exc}") from None
        text = _read_config_text(path)
        document = tomlkit.parse(text)
        data_dir = options.data_dir or current.data_dir
        if options.data_dir is not None and \
                options.data_dir.resolve() != current.data_dir.resolve():
            conflicts.append(f"data_dir: the configuration says {current.data_dir}, "
                             f"--data-dir says {options.data_dir}")
        fragment = plan.to_config(data_dir=None, relay_secret=relay_secret)
        _merge(document, fragment, (), conflicts, notes, force=options.force)
        new_text = tomlkit.dumps(document)
        # The same merge with the rules naming the original tables, which the validator
        # can read now (the copies are written by apply).
        checked = tomlkit.parse(text)
        _merge(checked, plan.to_config(data_dir=None, relay_secret=relay_secret,
                                       tables_at_source=True), (), [], [], force=options.force)
        check_text = tomlkit.dumps(checked)
        existing = True
        changed = new_text != text
    else:
        data_dir = (options.data_dir or Path(DEFAULT_DATA_DIR)).absolute()
        fragment = plan.to_config(data_dir=str(data_dir), relay_secret=relay_secret)
        new_text = render_new_config(fragment, plan)
        check_text = render_new_config(plan.to_config(
            data_dir=str(data_dir), relay_secret=relay_secret, tables_at_source=True), plan)
        existing = False
        changed = True
    config_dir = path.absolute().parent
    prepared = Prepared(path, new_text, _validate(check_text, path), existing, changed,
                        Path(data_dir), notes=notes)
    if relay_secret is not None and plan.relay is not None and plan.relay.password:
        secret_path = config_dir / relay_secret
        content = plan.relay.password + "\n"
        if _differs(secret_path, content, conflicts, options.force,
                    f"{secret_path}: holds another relay password"):
            prepared.secret = (secret_path, content)
    for source, name in plan.policy_tables.items():
        destination = config_dir / POLICY_TABLE_DIR / name
        # Size-limited, as every file of the old server (sources.py); ``source`` was
        # resolved and confined to --root when the plan was made.
        content = SourceTree().read_text(source, what="the table")
        if _differs(destination, content, conflicts, options.force,
                    f"{destination}: differs from {source}"):
            prepared.tables.append((destination, content))
    passwd = PasswdFile(prepared.config.passwd_file)
    try:
        for account in plan.accounts.values():
            if account.password_hash is None:
                continue
            entry = passwd.get(account.address)
            if entry is None or not entry.hash or options.force:
                if entry is None or entry.hash != account.password_hash:
                    prepared.passwords[account.address] = account.password_hash
            elif entry.hash != account.password_hash:
                prepared.passwords_kept.append(account.address)
    except PasswdFileError as exc:
        raise MigrateError(str(exc)) from None
    if conflicts:
        raise ConflictError(conflicts)
    return prepared


def _read_config_text(path: Path) -> str:
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    return data.decode("utf-8")


def _validate(text: str, path: Path) -> Config:
    try:
        return parse_config_text(text, path)
    except ConfigError as exc:
        raise MigrateError("the migrated configuration would not be valid (nothing was "
                           f"written):\n{exc}") from None


def _differs(path: Path, content: str, conflicts: list[str], force: bool, message: str) -> bool:
    """True if ``path`` must be written; a different existing file is a conflict."""
    try:
        current = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise MigrateError(f"cannot read {path}: {exc.strerror}") from None
    if current == content:
        return False
    if not force:
        conflicts.append(message)
    return True


# --- the configuration document --------------------------------------------------------------


def render_new_config(fragment: dict[str, Any], plan: Plan) -> str:
    """A new configuration file: the plan's settings, with a header saying where from."""
    document = tomlkit.document()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    document.add(tomlkit.comment(f"Migrated from Postfix and Dovecot by 'mailkeep migrate' "
                                 f"on {stamp}"))
    for source in plan.sources:
        document.add(tomlkit.comment(f"  from {source}"))
    document.add(tomlkit.comment("See docs/configuration.md for every setting and "
                                 "docs/migration.md for what was not migrated."))
    document.add(tomlkit.nl())
    for key, value in fragment.items():
        document[key] = _to_toml(value, (key,))
    return tomlkit.dumps(document)


def _to_toml(value: Any, path: tuple[str, ...]) -> Any:
    """tomlkit items shaped like hand-written files: [domains."x"] headers, [[listeners]]."""
    if isinstance(value, dict):
        super_table = len(path) == 1 and path[0] in ("domains", "accounts", "relays")
        inline = path[:2] == ("submission", "senders") and len(path) == 2
        table: Any = tomlkit.inline_table() if inline else tomlkit.table(
            is_super_table=super_table)
        for key, item in value.items():
            table[key] = _to_toml(item, (*path, key))
        return table
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        array = tomlkit.aot()
        for item in value:
            array.append(_to_toml(item, path))
        return array
    if isinstance(value, list) and len(value) > 1 and sum(len(str(v)) + 4 for v in value) > 72:
        # Long lists (policy rules, burned addresses) one item per line.
        items = tomlkit.array()
        items.extend(value)
        items.multiline(True)
        return items
    return value


def _canonical_key(section: tuple[str, ...], key: str) -> str:
    try:
        if section == ("domains",):
            return canonical_domain(key)
        if section and section[0] in _ADDRESS_TABLES and len(section) == 1:
            return canonical_address(key)
        if section == ("submission", "senders"):
            return canonical_address(key)
    except InvalidName:
        return key
    return key


def _find(container: Any, section: tuple[str, ...], key: str) -> str | None:
    wanted = _canonical_key(section, key)
    for existing in container:
        if existing == key or _canonical_key(section, existing) == wanted:
            return existing
    return None


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _union_list(path: tuple[str, ...]) -> bool:
    return any(len(path) == len(pattern) and all(p in ("*", q) for p, q in zip(pattern, path,
                                                                                strict=True))
               for pattern in _UNION_LISTS)


def _merge(container: Any, fragment: dict[str, Any], path: tuple[str, ...],
           conflicts: list[str], notes: list[str], *, force: bool) -> None:
    """Merge ``fragment`` into the tomlkit ``container``; differences are conflicts."""
    for key, value in fragment.items():
        here = (*path, key)
        existing_key = _find(container, path, key)
        if existing_key is None:
            container[key] = _to_toml(value, here)
            continue
        current = container[existing_key]
        shown = ".".join(f'"{p}"' if "." in p or "@" in p else p for p in here)
        if key == "listeners" and not path:
            if _plain(current) != value:
                notes.append("[[listeners]] of the existing configuration are kept as they are")
            continue
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value, here, conflicts, notes, force=force)
            continue
        plain = _plain(current)
        if isinstance(value, list) and isinstance(plain, list) and _union_list(here):
            missing = [v for v in value if v not in plain]
            if missing:
                container[existing_key] = [*plain, *missing]
            continue
        if _same(plain, value, here):
            continue
        if force:
            container[existing_key] = _to_toml(value, here)
        else:
            conflicts.append(f"{shown}: the configuration has {json.dumps(plain)}, the "
                             f"migration would write {json.dumps(value)}")


def _same(current: Any, wanted: Any, path: tuple[str, ...]) -> bool:
    if path[:1] == ("aliases",) and len(path) == 2:
        def targets(value: Any) -> set[str]:
            items = [value] if isinstance(value, str) else list(value)
            out = set()
            for item in items:
                try:
                    out.add(canonical_address(item))
                except InvalidName:
                    out.add(item)
            return out
        return targets(current) == targets(wanted)
    if path[-1:] in (("catch_all",),):
        try:
            return canonical_address(current) == canonical_address(wanted)
        except (InvalidName, TypeError):
            return current == wanted
    return bool(current == wanted)


# --- apply ------------------------------------------------------------------------------------


def apply(plan: Plan, prepared: Prepared, options: ApplyOptions,
          say: Callable[[str], None] = print) -> ApplyResult:
    """Write everything ``prepare`` decided, then import the mail (see the module text)."""
    result = ApplyResult()
    if prepared.secret is not None:
        path, content = prepared.secret
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, content, mode=SECRET_FILE_MODE)
        os.chmod(path, SECRET_FILE_MODE)
        say(f"wrote the relay password to {path} (mode 0600)")
    for destination, content in prepared.tables:
        destination.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(destination, content.encode("utf-8", "surrogateescape"),
                           mode=TABLE_FILE_MODE)
    if prepared.tables:
        say(f"copied {len(prepared.tables)} Postfix table(s) to "
            f"{prepared.tables[0][0].parent}")
    prepared.data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    if prepared.passwords:
        try:
            PasswdFile(prepared.config.passwd_file).update(
                {address: (hash_, None) for address, hash_ in prepared.passwords.items()})
        except (PasswdFileError, ValueError) as exc:
            raise MigrateError(f"cannot store the passwords: {exc}") from None
        say(f"stored {len(prepared.passwords)} password hash(es) in "
            f"{prepared.config.passwd_file}")
    for address in prepared.passwords_kept:
        say(f"kept the existing password of {address} (use --force to replace it)")
    config = _write_config(plan, prepared, options, say)
    log(logger, "migration configuration written", logging.INFO, event="migrate",
        config=str(prepared.config_path), accounts=len(plan.accounts),
        aliases=len(plan.aliases))
    _store_and_mail(plan, config, options, result, say)
    return result


def _write_config(plan: Plan, prepared: Prepared, options: ApplyOptions,
                  say: Callable[[str], None]) -> Config:
    path = prepared.config_path
    if not prepared.existing:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with config_lock(path):
                if path.exists():
                    raise MigrateError(f"{path} appeared while migrating; run the migration "
                                       "again to merge into it")
                atomic_write_text(path, prepared.config_text, mode=CONFIG_FILE_MODE)
        except EditError as exc:
            raise MigrateError(str(exc)) from None
        say(f"wrote {path}")
        return prepared.config
    if not prepared.config_changed:
        say(f"{path} already holds everything; unchanged")
        return prepared.config
    relay_secret = f"relay-{plan.relay.name}.secret" if plan.relay and plan.relay.password \
        else None
    fragment = plan.to_config(data_dir=None, relay_secret=relay_secret)

    def change(document: tomlkit.TOMLDocument) -> None:
        conflicts: list[str] = []
        _merge(document, fragment, (), conflicts, [], force=options.force)
        if conflicts:
            raise EditError("the configuration changed while migrating:\n" + "\n".join(conflicts))

    try:
        edited = edit_config(path, change)
    except EditError as exc:
        raise MigrateError(str(exc)) from None
    except ConfigError as exc:
        raise MigrateError(f"the merged configuration would not be valid (nothing was "
                           f"written):\n{exc}") from None
    except TOMLKitError as exc:
        raise MigrateError(f"{path}: {exc}") from None
    say(f"merged the migration into {path}")
    if edited.notified:
        say("the running server was told to reload its configuration")
    return edited.config


# --- store and mail ---------------------------------------------------------------------------


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "unreadable"}
    return data if isinstance(data, dict) else {"status": "unreadable"}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(state, indent=1, sort_keys=True) + "\n", mode=0o600)


def _store_and_mail(plan: Plan, config: Config, options: ApplyOptions, result: ApplyResult,
                    say: Callable[[str], None]) -> None:
    from mailkeep.store import MailboxError, StoreError, open_store

    mailbox_accounts = [a for a in plan.accounts.values() if not a.relay_only]
    if not mailbox_accounts:
        return
    state_path = config.data_dir / STATE_FILE
    previous = _read_state(state_path)
    if previous is not None and previous.get("status") != "complete":
        result.resumed = True
        done = previous.get("accounts_done") or []
        say(f"an earlier migration was interrupted (started {previous.get('started', '?')}; "
            f"{len(done)} account(s) complete); continuing: messages already imported are "
            "skipped")
    try:
        store = open_store(config.data_dir)
    except (StoreError, OSError) as exc:
        raise MigrateError(f"cannot open the store in {config.data_dir}: {exc}") from None
    try:
        for account in mailbox_accounts:
            if store.ensure_account(account.address):
                result.accounts_created += 1
            for default, old_name in account.special_use_renames.items():
                try:
                    renamed = _rename_special(store, account, default, old_name)
                except MailboxError as exc:
                    say(f"{account.address}: {default} keeps its name ({exc})")
                    continue
                if renamed:
                    result.renamed.append(f"{account.address}: {default} -> {old_name}")
        if result.accounts_created:
            say(f"created {result.accounts_created} mailbox account(s) in the store")
        with_mail = [a for a in mailbox_accounts if a.mail is not None]
        if not options.import_mail or not with_mail:
            return
        state = {"version": 1, "status": "importing",
                 "started": (previous or {}).get("started") if result.resumed else None,
                 "accounts": len(with_mail), "accounts_done": []}
        state["started"] = state["started"] or _now()
        _write_state(state_path, state)
        total = sum(a.mail.message_count() for a in with_mail if a.mail is not None)
        with Progress("Importing mail", total=total, unit="msg",
                      enabled=options.progress) as progress:
            asyncio.run(_import_all(store, with_mail, progress, result, state, state_path))
        state["status"] = "complete"
        state["finished"] = _now()
        _write_state(state_path, state)
        log(logger, "migration import complete", logging.INFO, event="migrate",
            imported=sum(i.imported for i in result.imports), failed=result.failed)
    finally:
        store.close()


async def _import_all(store: Any, accounts: list[PlannedAccount], progress: Progress,
                      result: ApplyResult, state: dict[str, Any], state_path: Path) -> None:
    for account in accounts:
        maildir = account.mail
        assert maildir is not None
        report = await import_maildir(store, account.address, maildir.root,
                                      folders=maildir.folders, progress=progress)
        result.imports.append(AccountImport(account.address, report.imported, report.skipped,
                                            report.failed, len(report.mailboxes),
                                            list(report.errors)))
        if not report.failed:
            state["accounts_done"].append(account.address)
            _write_state(state_path, state)


def _rename_special(store: Any, account: PlannedAccount, default: str, old_name: str) -> bool:
    """Rename the empty default mailbox (Sent) to the old name of its special use."""
    from mailkeep.store import NoSuchMailbox

    names = {box.name: box for box in store.list_mailboxes(account.address)}
    if old_name in names or default not in names:
        return False
    box = names[default]
    if box.messages or box.special_use is None:
        return False
    try:
        store.rename_mailbox(account.address, default, old_name)
    except NoSuchMailbox:
        return False
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
