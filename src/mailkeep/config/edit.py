"""Safe, comment-preserving changes to ``mailkeep.toml``.

The administrator's file is the source of truth, so the CLI edits it in place instead of
keeping a database: with tomlkit, comments, blank lines and key order survive an edit.
Every edit follows the same steps (``edit_config``):

1. take an exclusive ``fcntl.flock`` on ``<config>.lock`` (two ``mailkeep`` commands cannot
   interleave their read-modify-write cycles);
2. read and parse the current file, apply the change;
3. validate the new text with the very validator the server uses (``parse_config_text``)
   and refuse the edit, leaving the file untouched, if it is invalid;
4. write it atomically and durably (``mailkeep.durable``), keeping its mode and owner;
5. send SIGHUP to a running server (``notify_server``) so it reloads.

The functions ``add_domain``, ``remove_account`` and friends change a parsed document and
are meant to be called from the ``change`` callback of ``edit_config``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import InlineTable, Table

from mailkeep.config.load import MAX_CONFIG_BYTES, parse_config_text
from mailkeep.config.names import (
    InvalidName,
    canonical_address,
    canonical_domain,
    display_domain,
)
from mailkeep.config.schema import Config, ConfigError
from mailkeep.durable import atomic_write_text
from mailkeep.units import parse_size

log = logging.getLogger("mailkeep.config")

T = TypeVar("T")

# How long an edit waits for another one to finish before giving up.
LOCK_TIMEOUT_SECONDS = 30.0


class EditError(Exception):
    """The requested change makes no sense (the account exists, the alias does not, ...)."""


@dataclass(frozen=True)
class EditResult(Generic[T]):
    """The outcome of ``edit_config``: the new configuration and the change's return value."""

    config: Config
    value: T
    changed: bool
    notified: bool


@contextlib.contextmanager
def config_lock(path: str | os.PathLike[str], timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the exclusive edit lock of the configuration file at ``path``."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise EditError(f"cannot create the lock file {lock_path}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise EditError(f"another mailkeep command is editing {path}; try again") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def edit_config(path: str | os.PathLike[str], change: Callable[[tomlkit.TOMLDocument], T], *,
                notify: bool = True) -> EditResult[T]:
    """Apply ``change`` to the configuration file, validate, write, and notify the server.

    ``change`` receives the parsed document, modifies it in place and may raise EditError.
    Raises ConfigError (the new text would be invalid; nothing is written) or EditError.
    """
    file = Path(path)
    label = str(path)
    with config_lock(file):
        try:
            with open(file, "rb") as handle:
                raw = handle.read(MAX_CONFIG_BYTES + 1)
                st = os.fstat(handle.fileno())
        except OSError as exc:
            raise ConfigError(label, "", f"cannot read the configuration file: {exc.strerror}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(label, "", f"the file is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
            document = tomlkit.parse(text)
        except UnicodeDecodeError as exc:
            raise ConfigError(label, "", f"the file is not UTF-8 (byte {exc.start})") from None
        except TOMLKitError as exc:
            raise ConfigError(label, "", f"not valid TOML: {exc}") from None
        value = change(document)
        new_text = tomlkit.dumps(document)
        config = parse_config_text(new_text, file, label=label)
        if new_text == text:
            return EditResult(config, value, changed=False, notified=False)
        atomic_write_text(file, new_text, mode=stat.S_IMODE(st.st_mode))
        _keep_owner(file, st)
    notified = notify_server(config) if notify else False
    return EditResult(config, value, changed=True, notified=notified)


def _keep_owner(path: Path, before: os.stat_result) -> None:
    """Give the rewritten file its previous owner and group (root rewriting a 0640
    root:mailkeep file must not lock the server out of its own configuration)."""
    current = os.stat(path)
    if (current.st_uid, current.st_gid) == (before.st_uid, before.st_gid):
        return
    try:
        os.chown(path, before.st_uid, before.st_gid)
    except PermissionError:
        log.warning("%s: could not restore owner %d:%d", path, before.st_uid, before.st_gid)


def notify_server(config: Config) -> bool:
    """Ask a running server to reload (SIGHUP). True if a server was signalled.

    The pid file may be stale and its number reused by another program, which SIGHUP would
    likely kill; so the process must look like Mailkeep (on Linux, "mailkeep" appears in its
    command line) before it is signalled.
    """
    try:
        text = config.pidfile.read_text(encoding="ascii", errors="replace")[:32]
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot read %s: %s", config.pidfile, exc.strerror)
        return False
    try:
        pid = int(text.strip())
    except ValueError:
        log.warning("%s does not hold a process id", config.pidfile)
        return False
    if pid <= 1:
        # Never 0, -1 or init: kill() would signal a process group or every process.
        return False
    if not _looks_like_mailkeep(pid):
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal the server (pid %d); reload it by hand", pid)
        return False
    return True


def _looks_like_mailkeep(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if not Path("/proc/self").exists():  # no procfs: trust a live pid
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False  # no such process
    except PermissionError:
        return True
    if b"mailkeep" not in cmdline:
        log.warning("pid file names process %d, which is not Mailkeep; not signalling it", pid)
        return False
    return True


# -- document helpers --------------------------------------------------------------------------

def _section(document: tomlkit.TOMLDocument, name: str, *, create: bool,
             super_table: bool = True) -> Any:
    """The top-level table ``name`` (created when ``create``), or None if it is absent."""
    if name in document:
        section = document[name]
        if not isinstance(section, dict):
            raise EditError(f"'{name}' in the configuration is not a table")
        return section
    if not create:
        return None
    table = tomlkit.table(is_super_table=super_table)
    document[name] = table
    return document[name]


def _new_child(parent: Any, settings: dict[str, Any] | None = None) -> Any:
    """A table holding ``settings``, suited to ``parent``: inline inside inline tables,
    else a [section] followed by a blank line, like hand-written files."""
    table: Any = tomlkit.inline_table() if isinstance(parent, InlineTable) else tomlkit.table()
    for key, value in (settings or {}).items():
        table[key] = value
    if isinstance(table, Table):
        table.add(tomlkit.nl())
    return table


def _find_key(table: Any, canonical: str, canon: Callable[[str], str]) -> str | None:
    """The key of ``table`` that is ``canonical`` once canonicalised (the file may differ in
    case or use a U-label)."""
    if table is None:
        return None
    for key in table:
        try:
            if canon(key) == canonical:
                return key
        except InvalidName:
            continue
    return None


def _address_of(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        return canonical_address(text)
    except InvalidName:
        return None


def _written_address(address: str) -> str:
    """How a new address key is written: canonical local part, Unicode domain."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{display_domain(domain)}"


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def _checked_address(address: str) -> str:
    try:
        return canonical_address(address)
    except InvalidName as exc:
        raise EditError(str(exc)) from None


def _checked_domain(domain: str) -> str:
    try:
        return canonical_domain(domain)
    except InvalidName as exc:
        raise EditError(str(exc)) from None


def _address_owner(document: tomlkit.TOMLDocument, address: str) -> str | None:
    """What already answers to ``address``: "an account", "an alias", ... or None."""
    accounts = _section(document, "accounts", create=False)
    if _find_key(accounts, address, canonical_address) is not None:
        return "an account"
    for key in accounts or {}:
        settings = accounts[key]
        own = settings.get("aliases", []) if isinstance(settings, dict) else []
        own = [own] if isinstance(own, str) else own
        if any(_address_of(alias) == address for alias in own):
            return f"an alias of account {key}"
    aliases = _section(document, "aliases", create=False)
    if _find_key(aliases, address, canonical_address) is not None:
        return "an alias"
    return None


# -- domains -------------------------------------------------------------------------------

def add_domain(document: tomlkit.TOMLDocument, domain: str) -> str:
    """Add ``[domains."<domain>"]``; returns the canonical name."""
    name = _checked_domain(domain)
    domains = _section(document, "domains", create=True)
    if _find_key(domains, name, canonical_domain) is not None:
        raise EditError(f"{display_domain(name)} is already a domain of this server")
    domains[display_domain(name)] = _new_child(domains)
    return name


def domain_users(document: tomlkit.TOMLDocument, name: str) -> tuple[list[str], list[str]]:
    """Keys of the accounts and aliases (as written) whose address is in domain ``name``."""
    found: dict[str, list[str]] = {"accounts": [], "aliases": []}
    for section_name, keys in found.items():
        section = _section(document, section_name, create=False)
        for key in section or {}:
            address = _address_of(key)
            if address is not None and _domain_of(address) == name:
                keys.append(key)
    return found["accounts"], found["aliases"]


def remove_domain(document: tomlkit.TOMLDocument, domain: str, *, force: bool = False) -> list[str]:
    """Remove a domain. Refuses while accounts or aliases use it, unless ``force``: then
    those accounts and aliases go too, as do alias targets and account aliases in the
    domain. Returns the canonical addresses of the removed accounts."""
    name = _checked_domain(domain)
    domains = _section(document, "domains", create=False)
    key = _find_key(domains, name, canonical_domain)
    if key is None:
        raise EditError(f"{display_domain(name)} is not a domain of this server")
    account_keys, alias_keys = domain_users(document, name)
    if (account_keys or alias_keys) and not force:
        users = ", ".join([*account_keys, *alias_keys][:5])
        more = ", …" if len(account_keys) + len(alias_keys) > 5 else ""
        raise EditError(
            f"{display_domain(name)} still has {len(account_keys)} account(s) and "
            f"{len(alias_keys)} alias(es) ({users}{more}); remove them first, or use --force "
            "to remove them with the domain (mail data is kept)")
    removed = [canonical_address(k) for k in account_keys]
    accounts = _section(document, "accounts", create=False)
    aliases = _section(document, "aliases", create=False)
    for account_key in account_keys:
        del accounts[account_key]
    for alias_key in alias_keys:
        del aliases[alias_key]
    gone = set(removed)
    _drop_targets(document, lambda target: target in gone or _domain_of(target) == name)
    _drop_account_aliases(document, lambda alias: _domain_of(alias) == name)
    del domains[key]
    return removed


# -- accounts ------------------------------------------------------------------------------

def add_account(document: tomlkit.TOMLDocument, address: str, *, name: str | None = None,
                quota: str | int | None = None, quota_messages: int | None = None,
                relay_only: bool = False) -> str:
    """Add ``[accounts."<address>"]`` with the given settings; returns the canonical address."""
    canonical = _checked_address(address)
    owner = _address_owner(document, canonical)
    if owner is not None:
        raise EditError(f"{canonical} is already {owner}")
    domains = _section(document, "domains", create=False)
    if _find_key(domains, _domain_of(canonical), canonical_domain) is None:
        raise EditError(f"{display_domain(_domain_of(canonical))} is not a domain of this server; "
                        "add it first with 'mailkeep domain add'")
    if quota is not None:
        try:
            parse_size(quota)
        except ValueError as exc:
            raise EditError(f"quota: {exc}") from None
    settings: dict[str, Any] = {}
    if name:
        settings["name"] = name
    if quota not in (None, 0, "0", ""):
        settings["quota"] = quota
    if quota_messages:
        settings["quota_messages"] = quota_messages
    if relay_only:
        settings["relay_only"] = True
    accounts = _section(document, "accounts", create=True)
    accounts[_written_address(canonical)] = _new_child(accounts, settings)
    return canonical


def remove_account(document: tomlkit.TOMLDocument, address: str) -> list[str]:
    """Remove an account; it also disappears from alias targets, and aliases left without
    a target are removed. Returns a description of each such side effect."""
    canonical = _checked_address(address)
    accounts = _section(document, "accounts", create=False)
    key = _find_key(accounts, canonical, canonical_address)
    if key is None:
        raise EditError(f"{canonical} is not an account")
    settings = accounts[key]
    own = settings.get("aliases", []) if isinstance(settings, dict) else []
    own = [own] if isinstance(own, str) else own
    gone = {canonical} | {a for a in (_address_of(x) for x in own) if a}
    del accounts[key]
    return _drop_targets(document, lambda target: target in gone)


def _drop_targets(document: tomlkit.TOMLDocument, doomed: Callable[[str], bool]) -> list[str]:
    notes: list[str] = []
    aliases = _section(document, "aliases", create=False)
    for key in list(aliases or {}):
        value = aliases[key]
        targets = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []
        kept = [t for t in targets if not ((a := _address_of(t)) and doomed(a))]
        if len(kept) == len(targets):
            continue
        if not kept:
            del aliases[key]
            notes.append(f"removed alias {key} (it had no other target)")
        else:
            aliases[key] = kept[0] if isinstance(value, str) or len(kept) == 1 else kept
            notes.append(f"removed {len(targets) - len(kept)} target(s) from alias {key}")
    return notes


def _drop_account_aliases(document: tomlkit.TOMLDocument, doomed: Callable[[str], bool]) -> None:
    accounts = _section(document, "accounts", create=False)
    for key in list(accounts or {}):
        settings = accounts[key]
        if not isinstance(settings, dict) or "aliases" not in settings:
            continue
        own = settings["aliases"]
        own_list = [own] if isinstance(own, str) else list(own)
        kept = [a for a in own_list if not ((c := _address_of(a)) and doomed(c))]
        if len(kept) != len(own_list):
            if kept:
                settings["aliases"] = kept
            else:
                del settings["aliases"]


# -- aliases -------------------------------------------------------------------------------

def add_alias(document: tomlkit.TOMLDocument, address: str, targets: list[str]) -> list[str]:
    """Create an alias or add targets to it; returns the canonical targets actually added."""
    canonical = _checked_address(address)
    wanted = [_checked_address(t) for t in targets]
    if not wanted:
        raise EditError("an alias needs at least one target")
    owner = _address_owner(document, canonical)
    if owner is not None and owner != "an alias":
        raise EditError(f"{canonical} is already {owner}")
    aliases = _section(document, "aliases", create=True, super_table=False)
    key = _find_key(aliases, canonical, canonical_address)
    existing: list[str] = []
    if key is not None:
        value = aliases[key]
        existing = [value] if isinstance(value, str) else list(value)
    known = {_address_of(t) for t in existing}
    added: list[str] = []
    for target in wanted:
        if target not in known and target not in added:
            added.append(target)
    if not added:
        raise EditError(f"{canonical} already points to {', '.join(wanted)}")
    written = [*existing, *(_written_address(t) for t in added)]
    value_out: Any = written[0] if len(written) == 1 else written
    aliases[key if key is not None else _written_address(canonical)] = value_out
    return added


def remove_alias(document: tomlkit.TOMLDocument, address: str, target: str | None = None) -> bool:
    """Remove an alias, or one of its targets. Returns True if the whole alias is gone."""
    canonical = _checked_address(address)
    aliases = _section(document, "aliases", create=False)
    key = _find_key(aliases, canonical, canonical_address)
    if key is None:
        raise EditError(f"{canonical} is not an alias")
    if target is None:
        del aliases[key]
        return True
    unwanted = _checked_address(target)
    value = aliases[key]
    targets = [value] if isinstance(value, str) else list(value)
    kept = [t for t in targets if _address_of(t) != unwanted]
    if len(kept) == len(targets):
        raise EditError(f"{canonical} does not point to {unwanted}")
    if not kept:
        del aliases[key]
        return True
    aliases[key] = kept[0] if len(kept) == 1 else kept
    return False
