"""The migration plan: what a Postfix + Dovecot setup becomes in Mailkeep, and what does not.

``build_plan`` reads the old configuration (``mailkeep.migrate.postfix``,
``mailkeep.migrate.dovecot``) and decides everything before anything is written:

* domains: mydestination (the host name and localhost excluded unless accounts live there),
  virtual_mailbox_domains, virtual_alias_domains;
* accounts: the users of the passwd-files, with their hashes as they are; an account has a
  mailbox when virtual_mailbox_maps lists it (virtual domains) or, in local domains, unless
  its uid equals its gid (the seed 000 vumap convention for SASL-only users); keys of
  virtual_mailbox_maps without a passwd entry become accounts without a password;
* aliases from virtual_alias_maps and alias_maps: ``@domain`` and regular expressions that
  catch a whole domain become ``catch_all``, ``/^.*me@example\\.com$/ me@example.com``
  rules become ``personalized_catch_all``, entries that map an address to itself only
  declare the mailbox; targets are checked the way the configuration loader checks them;
* burned addresses (a check_recipient_access list of our addresses), sender grants
  (smtpd_sender_login_maps), send modes (check_sasl_access HOLD/REJECT), the relay host
  with its credentials, limits, the inbound policy's tables, listeners, quotas;
* the mail to import: each mailbox account's Maildir, found through mail_location.

What cannot be mapped is an ``Unmapped(item, reason)``; what maps with a caveat is a note.
The plan holds a relay password in memory only; ``describe`` never prints it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from mailkeep.auth.passwd_file import PasswdEntry
from mailkeep.auth.passwords import PasswordHashError, password_scheme, weak_scheme
from mailkeep.config.load import parse_config_text
from mailkeep.config.names import InvalidName, canonical_address, canonical_domain
from mailkeep.config.schema import (
    DEFAULT_POLICY_RULES,
    DEFAULT_PRIVACY_HEADERS,
    DEFAULT_SUBADDRESS_SEPARATOR,
    ConfigError,
)
from mailkeep.migrate import catalog
from mailkeep.migrate.dovecot import (
    DovecotConf,
    Maildir,
    PasswdSource,
    UnusableMailLocation,
    detect_layout,
    expand_mail_path,
    find_maildir,
    load_dovecot_conf,
    maildir_folders,
    parse_mail_location,
    read_passwd_source,
    unsupported_format_hint,
)
from mailkeep.migrate.postfix import (
    MAX_TABLES_PER_PARAMETER,
    LookupTable,
    MasterService,
    PostfixConfig,
    RegexEntry,
    TableEntry,
    UnreadableTable,
    parse_aliases,
    read_table,
    split_list,
)
from mailkeep.migrate.sources import MigrateError, OutsideRoot, SourceTree
from mailkeep.policy.rules import RULES, Stage
from mailkeep.policy.tables import TableError, load_table
from mailkeep.store.api import DEFAULT_MAILBOXES

#: Where copies of the Postfix tables the inbound policy uses go, next to the config.
POLICY_TABLE_DIR = "postfix-tables"
_POSTFIX_TIME = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
# Regular expressions of catch-all rules: "^.*@example\.com$", "^.+@example\.com$", "@x\.com$".
# Dots may be escaped or not (vumap writes them bare; "." then matches any character, a
# superset the probes in _classify_rule accept).
_DOMAIN_RE = r"(?P<domain>(?:[A-Za-z0-9-]+(?:\\\.|\.))+[A-Za-z0-9-]+)"
_ANY_LOCAL = r"(?:\.\*|\.\+|\[\^@\]\*|\[\^@\]\+|\(\.\*\)|\(\.\+\)|\(\[\^@\]\+\))"
_CATCH_ALL_PATTERN = re.compile(rf"^(?:\^{_ANY_LOCAL}?|{_ANY_LOCAL}?)@{_DOMAIN_RE}\$$")
_PERSONALIZED_PATTERN = re.compile(
    rf"^\^{_ANY_LOCAL}(?P<local>(?:[A-Za-z0-9_+=-]|\\\.|\.)+?)@{_DOMAIN_RE}\$$")
_HEADER_IGNORE_PATTERN = re.compile(r"^\^(?P<name>[A-Za-z0-9-]+):")
# Dovecot quota rule "*:storage=1G" (also "*:messages=1000", "*:ignore").
_QUOTA_RULE = re.compile(r"^\*:(?P<what>storage|messages|bytes)=(?P<value>\d+[a-zA-Z%]*)$")
_DOVECOT_SIZE = re.compile(r"^(\d+)([bkmgt]?)b?$", re.IGNORECASE)


@dataclass(frozen=True)
class Unmapped:
    """Something of the old setup that is not carried over, and why (what to do instead)."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


@dataclass
class PlannedAccount:
    address: str
    relay_only: bool = False
    #: The hash as it was in the passwd-file (None: no usable password).
    password_hash: str | None = None
    password_scheme: str | None = None
    #: Where the account came from ("users:3", "virtual_mailbox_maps").
    origin: str = ""
    quota: str | None = None
    quota_messages: int | None = None
    send: str = "allow"
    send_message: str = ""
    mail: Maildir | None = None
    #: Default mailbox -> the old name that carries its special use ("Sent" -> "Sent
    #: Messages", from the Dovecot namespace): the default is renamed before the import.
    special_use_renames: dict[str, str] = field(default_factory=dict)


@dataclass
class PlannedDomain:
    name: str
    catch_all: str | None = None
    personalized_catch_all: bool = False
    burned: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedRelay:
    name: str
    host: str
    tls: str
    username: str | None = None
    #: The secret, written to its own 0600 file by apply; never printed.
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class MigrationSources:
    """Where the old setup is (all paths already in the source tree, see SourceTree)."""

    postfix_dir: Path
    tree: SourceTree = field(default_factory=SourceTree)
    dovecot_conf: Path | None = None
    passwd_files: tuple[Path, ...] = ()
    mail_location: str | None = None
    maildir_root: Path | None = None
    #: The new server's host name; None: myhostname of main.cf.
    hostname: str | None = None
    #: myhostname when main.cf does not set it (Postfix would use the machine's name).
    fallback_hostname: str = "localhost"


@dataclass
class Plan:
    hostname: str
    domains: dict[str, PlannedDomain] = field(default_factory=dict)
    accounts: dict[str, PlannedAccount] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    senders: dict[str, list[str]] = field(default_factory=dict)
    subaddress_separator: str = DEFAULT_SUBADDRESS_SEPARATOR
    relay: PlannedRelay | None = None
    #: Settings by section ("smtp", "queue", "auth", "policy", "policy.dnsbl", "tls", ...).
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The [policy] rules, when the old policy adds to Mailkeep's default.
    policy_rules: list[str] | None = None
    #: Table files the rules use: source file -> file name in POLICY_TABLE_DIR.
    policy_tables: dict[Path, str] = field(default_factory=dict)
    listeners: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unmapped: list[Unmapped] = field(default_factory=list)
    #: Settings that need nothing in Mailkeep: (item, why).
    builtin: list[tuple[str, str]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def mailbox_accounts(self) -> list[PlannedAccount]:
        return [a for a in self.accounts.values() if not a.relay_only]

    def message_count(self) -> int:
        return sum(a.mail.message_count() for a in self.accounts.values() if a.mail)

    def to_config(self, *, data_dir: str | None, relay_secret: str | None,
                  tables_at_source: bool = False) -> dict[str, Any]:
        """The configuration this plan writes, as a TOML-ready dict (key order kept).

        ``relay_secret`` is the path written as the relay's password_file. With
        ``tables_at_source`` the policy rules name the original table files instead of the
        copies (which do not exist yet when the result is validated before writing).
        """
        doc: dict[str, Any] = {"hostname": self.hostname}
        if data_dir is not None:
            doc["data_dir"] = data_dir
        for section in ("tls", "smtp", "auth", "submission", "queue"):
            values = dict(self.settings.get(section, {}))
            if section == "submission" and self.senders:
                values["senders"] = {k: list(v) for k, v in self.senders.items()}
            if values:
                doc[section] = values
        if self.relay is not None:
            relay: dict[str, Any] = {"host": self.relay.host, "tls": self.relay.tls}
            if self.relay.username and relay_secret:
                relay["username"] = self.relay.username
                relay["password_file"] = relay_secret
            doc["delivery"] = {"relayhost": self.relay.name}
            doc["relays"] = {self.relay.name: relay}
        policy = dict(self.settings.get("policy", {}))
        if self.policy_rules is not None:
            rules = list(self.policy_rules)
            if tables_at_source:
                for source, name in self.policy_tables.items():
                    copy = f":{POLICY_TABLE_DIR}/{name}"
                    rules = [_replace_table(rule, copy, f":{source}") for rule in rules]
            policy["rules"] = rules
        dnsbl = self.settings.get("policy.dnsbl", {})
        if dnsbl:
            policy["dnsbl"] = dict(dnsbl)
        if policy:
            doc["policy"] = policy
        if self.listeners:
            doc["listeners"] = [dict(item) for item in self.listeners]
        domains: dict[str, Any] = {}
        for name, domain in self.domains.items():
            settings: dict[str, Any] = {}
            if domain.catch_all:
                settings["catch_all"] = domain.catch_all
            if domain.personalized_catch_all:
                settings["personalized_catch_all"] = True
            if self.subaddress_separator != DEFAULT_SUBADDRESS_SEPARATOR:
                settings["subaddress_separator"] = self.subaddress_separator
            if domain.burned:
                settings["burned"] = sorted(domain.burned)
            domains[name] = settings
        if domains:
            doc["domains"] = domains
        accounts: dict[str, Any] = {}
        for address, account in self.accounts.items():
            settings = {}
            if account.relay_only:
                settings["relay_only"] = True
            if account.quota and not account.relay_only:
                settings["quota"] = account.quota
            if account.quota_messages and not account.relay_only:
                settings["quota_messages"] = account.quota_messages
            if account.send != "allow":
                settings["send"] = account.send
                if account.send_message:
                    settings["send_message"] = account.send_message
            accounts[address] = settings
        if accounts:
            doc["accounts"] = accounts
        if self.aliases:
            doc["aliases"] = {k: v[0] if len(v) == 1 else list(v)
                              for k, v in self.aliases.items()}
        return doc


def build_plan(sources: MigrationSources) -> Plan:
    """Read the old setup and decide everything. Raises MigrateError when the essential
    input (main.cf, a passwd-file given by name) cannot be read."""
    return _Planner(sources).run()


class _Planner:
    def __init__(self, sources: MigrationSources) -> None:
        self.sources = sources
        self.tree = sources.tree
        self.postfix = PostfixConfig.load(sources.postfix_dir, self.tree,
                                          fallback_hostname=sources.fallback_hostname)
        self.dovecot: DovecotConf | None = None
        if sources.dovecot_conf is not None:
            self.dovecot = load_dovecot_conf(sources.dovecot_conf, self.tree)
        self.plan = Plan(hostname="")
        self.local_domains: list[str] = []
        self.virtual_mailbox_domains: set[str] = set()
        self.mailbox_map: set[str] | None = None
        self.mailbox_map_values: dict[str, str] = {}
        self.users: dict[str, PasswdEntry] = {}
        self.user_origin: dict[str, str] = {}
        self.handled: set[str] = set()
        self.extra_rules: list[tuple[Stage, str]] = []
        self.old_hostname = ""
        #: Weak password scheme -> the accounts that use it (one note for all).
        self.weak_schemes: dict[str, list[str]] = {}

    # -- helpers ---------------------------------------------------------------------------

    def unmapped(self, item: str, reason: str) -> None:
        self.plan.unmapped.append(Unmapped(item, reason))

    def note(self, text: str) -> None:
        self.plan.notes.append(text)

    def builtin(self, item: str, reason: str) -> None:
        self.plan.builtin.append((item, reason))

    def setting_item(self, name: str) -> str:
        raw = self.postfix.raw(name)
        value = raw if raw is not None else self.postfix.get(name)
        shown = value if len(value) <= 80 else value[:77] + "..."
        return f"{self.postfix.where(name)} = {shown}"

    def table(self, name: str, origin: str) -> LookupTable | None:
        try:
            table = read_table(name, self.postfix)
        except UnreadableTable as exc:
            self.unmapped(f"{origin}: {name}", str(exc))
            return None
        for line, problem in table.problems:
            self.unmapped(f"{table.source}:{line}", problem)
        return table

    def tables(self, parameter: str) -> list[LookupTable]:
        """The tables a parameter lists, in order (those that cannot be read reported)."""
        names = self.postfix.get_list(parameter)
        if len(names) > MAX_TABLES_PER_PARAMETER:
            raise MigrateError(f"{self.postfix.where(parameter)} lists {len(names)} tables; "
                               f"at most {MAX_TABLES_PER_PARAMETER} are read")
        found = []
        for name in names:
            table = self.table(name, self.postfix.where(parameter))
            if table is not None:
                found.append(table)
        return found

    def literal(self, table: LookupTable, parameter: str, reason: str) -> bool:
        """True for a literal table of ``parameter``; a pattern table is reported as not
        migrated, for ``reason``."""
        if table.kind == "literal":
            return True
        self.unmapped(f"{self.postfix.where(parameter)}: {table.name}", reason)
        return False

    def qualify(self, target: str) -> str:
        """A bare local name as Postfix qualifies it: name@$myorigin."""
        if "@" in target:
            return target
        return f"{target}@{self.postfix.get('myorigin')}"

    # -- the steps -------------------------------------------------------------------------

    def run(self) -> Plan:
        plan = self.plan
        plan.sources.append(str(self.postfix.directory / "main.cf"))
        if self.dovecot is not None:
            plan.sources.append(str(self.dovecot.path))
        for warning in self.postfix.warnings:
            self.note(warning)
        self._hostname()
        self._domains()
        self._users()
        self._accounts()
        self._quotas()
        self._aliases()
        self._sender_logins()
        self._restrictions()
        self._policy_settings()
        self._relay()
        self._limits()
        self._tls()
        self._listeners_and_services()
        self._auth()
        self._mail()
        self._remaining_main_cf()
        self._remaining_dovecot()
        self._drop_what_the_loader_refuses()
        return plan

    def _hostname(self) -> None:
        """The old host name (Postfix's myhostname) and the new one (the same, unless
        --hostname names another)."""
        self.handled.update({"myhostname", "mydomain", "myorigin"})
        old = self.postfix.get("myhostname").strip().rstrip(".")
        new = self.sources.hostname or old
        if not self.postfix.is_set("myhostname") and self.sources.hostname is None:
            self.note(f"main.cf does not set myhostname; using {old!r} (this machine's "
                      "name); change hostname in the configuration if that is wrong")
        for name, where in ((old, self.postfix.where("myhostname")), (new, "--hostname")):
            try:
                if name != "localhost":
                    canonical_domain(name)
            except InvalidName as exc:
                raise MigrateError(f"{where}: {name!r} is not a host name: {exc}") from None
        self.old_hostname = old if old == "localhost" else canonical_domain(old)
        self.plan.hostname = new if new == "localhost" else canonical_domain(new)

    def _domain_list(self, parameter: str) -> list[str]:
        """The domains a parameter lists: names, /file/name contents, table keys."""
        names: list[str] = []
        for item in self.postfix.get_list(parameter):
            if item.startswith("/"):
                try:
                    text = self.tree.read_text(self.postfix.path(item),
                                               what=f"the file named by {parameter}")
                except MigrateError as exc:
                    self.unmapped(self.postfix.where(parameter), str(exc))
                    continue
                for line in text.splitlines():
                    line = line.split("#", 1)[0]
                    names.extend(split_list(line))
            elif ":" in item:
                table = self.table(item, self.postfix.where(parameter))
                if table is not None:
                    if table.kind != "literal":
                        self.unmapped(f"{self.postfix.where(parameter)}: {item}",
                                      "domains listed by pattern cannot be migrated; list "
                                      "them in [domains]")
                        continue
                    names.extend(entry.key for entry in table.entries)
            else:
                names.append(item)
        return names

    def _add_domain(self, raw: str, origin: str) -> str | None:
        try:
            name = canonical_domain(raw.rstrip("."))
        except InvalidName as exc:
            self.unmapped(f"{origin}: {raw}", f"not a usable mail domain: {exc}")
            return None
        self.plan.domains.setdefault(name, PlannedDomain(name))
        return name

    def _domains(self) -> None:
        self.handled.update({"mydestination", "virtual_mailbox_domains", "virtual_alias_domains"})
        for raw in self._domain_list("mydestination"):
            lowered = raw.lower().rstrip(".")
            if lowered == "localhost" or lowered.startswith("localhost."):
                continue
            try:
                name = canonical_domain(lowered)
            except InvalidName as exc:
                self.unmapped(f"{self.postfix.where('mydestination')}: {raw}",
                              f"not a usable mail domain: {exc}")
                continue
            if name not in self.local_domains:
                self.local_domains.append(name)
        for raw in self._domain_list("virtual_mailbox_domains"):
            name = self._add_domain(raw, self.postfix.where("virtual_mailbox_domains"))
            if name is not None:
                self.virtual_mailbox_domains.add(name)
        for raw in self._domain_list("virtual_alias_domains"):
            self._add_domain(raw, self.postfix.where("virtual_alias_domains"))
        # Local domains are added once the users are known (_accounts): the host name is
        # only a mail domain here if accounts live in it (else it is system mail, root@host).

    def _passwd_sources(self) -> list[PasswdSource]:
        """--dovecot-passwd files, else the passwd-files dovecot.conf's databases name."""
        given = [PasswdSource(path, origin="--dovecot-passwd")
                 for path in self.sources.passwd_files]
        found: list[PasswdSource] = []
        for database in (*self.dovecot.passdbs, *self.dovecot.userdbs) if self.dovecot else ():
            spec = database.passwd_file()
            if spec is None:
                if database.driver in ("static", "prefetch") and database.kind == "userdb":
                    continue  # no users or hashes in it
                item = f"{database.where}: {database.kind} driver = {database.driver}"
                if given:
                    self.note(f"{item}: not read; the users and hashes come from "
                              "--dovecot-passwd")
                else:
                    self.unmapped(item, "only passwd-file databases are read; export the "
                                  "users and hashes into a passwd-file (user:{SCHEME}hash, "
                                  "docs/migration.md) and give it with --dovecot-passwd")
                continue
            path_text, options = spec
            if "%" in path_text:
                self.unmapped(f"{database.where}: args = {database.args}",
                              "a passwd-file per domain or user (%d, %u) is not read; give "
                              "each file with --dovecot-passwd")
                continue
            try:
                path = self.tree.path(path_text, relative_to=self.dovecot.path.parent)
            except OutsideRoot as exc:  # a passwd-file outside --root is never read
                self.unmapped(f"{database.where}: args = {database.args}", str(exc))
                continue
            if any(source.path == path for source in found):
                continue
            found.append(PasswdSource(path, options.get("scheme", "CRYPT"),
                                      origin=database.where))
        return given or found

    def _users(self) -> None:
        realm = self.dovecot.get("auth_default_realm") if self.dovecot else ""
        for source in self._passwd_sources():
            self.plan.sources.append(str(source.path))
            entries, problems = read_passwd_source(source, self.tree)
            for number, problem in problems:
                self.unmapped(f"{source.path}:{number}", f"line not read: {problem}")
            for entry in entries:
                origin = f"{source.path}: {entry.user}"
                user = entry.user
                if "@" not in user:
                    if not realm:
                        self.unmapped(origin, "a login without a domain; Mailkeep logins "
                                      "are addresses (set auth_default_realm, or rename it)")
                        continue
                    user = f"{user}@{realm}"
                try:
                    address = canonical_address(user)
                except InvalidName as exc:
                    self.unmapped(origin, f"not a usable address: {exc}")
                    continue
                previous = self.users.get(address)
                if previous is None:
                    self.users[address] = entry
                    self.user_origin[address] = origin
                    continue
                # A later file (a userdb after the passdb) fills in what the first lacked.
                merged = PasswdEntry(
                    previous.user, previous.hash or entry.hash, previous.uid or entry.uid,
                    previous.gid or entry.gid, previous.gecos or entry.gecos,
                    previous.home or entry.home, previous.shell or entry.shell,
                    " ".join(x for x in (previous.extra, entry.extra) if x))
                self.users[address] = merged

    def _accounts(self) -> None:
        plan = self.plan
        self.handled.add("virtual_mailbox_maps")
        if self.postfix.get("virtual_mailbox_maps"):
            self.mailbox_map = set()
            for table in self.tables("virtual_mailbox_maps"):
                if not self.literal(table, "virtual_mailbox_maps", "mailboxes listed by "
                                    "pattern cannot be migrated; list the accounts by address"):
                    continue
                for entry in table.entries:
                    if entry.key.startswith("@"):
                        self.unmapped(f"{table.source}:{entry.line}: {entry.key}",
                                      "a mailbox for a whole domain; use an account and "
                                      "catch_all for that domain")
                        continue
                    try:
                        address = canonical_address(entry.key)
                    except InvalidName as exc:
                        self.unmapped(f"{table.source}:{entry.line}: {entry.key}", str(exc))
                        continue
                    self.mailbox_map.add(address)
                    self.mailbox_map_values.setdefault(address, entry.value)
        # The host name is a mail domain here only when accounts live in it.
        user_domains = {a.rpartition("@")[2] for a in (*self.users, *(self.mailbox_map or ()))}
        for name in self.local_domains:
            if name == self.old_hostname and name not in user_domains:
                self.unmapped(f"{self.postfix.where('mydestination')}: {name}",
                              "the host name receives only system mail (root@, ...) in "
                              "Postfix; it is not a Mailkeep domain. If mail is addressed to "
                              f"it, run 'mailkeep domain add {name}' and add aliases")
                continue
            plan.domains.setdefault(name, PlannedDomain(name))
        for address, entry in self.users.items():
            origin = self.user_origin[address]
            domain = address.rpartition("@")[2]
            if domain not in plan.domains:
                self.unmapped(origin, f"{domain} is not a domain Postfix receives mail for "
                              "(mydestination, virtual_mailbox_domains, "
                              "virtual_alias_domains); add it with 'mailkeep domain add' and "
                              "migrate again")
                continue
            account = PlannedAccount(address, origin=origin)
            if domain in self.virtual_mailbox_domains and self.mailbox_map is not None:
                account.relay_only = address not in self.mailbox_map
                if account.relay_only:
                    self.note(f"{address}: relay-only (in the passwd-file but not in "
                              "virtual_mailbox_maps, so Postfix received no mail for it)")
            elif entry.uid and entry.uid == entry.gid:
                account.relay_only = True
                self.note(f"{address}: relay-only (uid = gid = {entry.uid}: a login that "
                          "sends but has no mailbox)")
            self._password(account, entry)
            plan.accounts[address] = account
        for scheme, addresses in self.weak_schemes.items():
            shown = ", ".join(addresses[:5]) + (", ..." if len(addresses) > 5 else "")
            self.note(f"{len(addresses)} password(s) use the weak scheme {{{scheme}}} "
                      f"({shown}): imported as they are, each replaced by Argon2id at the "
                      "user's next login")
        for address in sorted(self.mailbox_map or ()):
            if address in plan.accounts:
                continue
            domain = address.rpartition("@")[2]
            if domain not in plan.domains:
                self.unmapped(f"virtual_mailbox_maps: {address}",
                              f"{domain} is not in virtual_mailbox_domains")
                continue
            plan.accounts[address] = PlannedAccount(address, origin="virtual_mailbox_maps")
            self.note(f"{address}: no password in the passwd-files; set one with "
                      f"'mailkeep account passwd {address}'")

    def _password(self, account: PlannedAccount, entry: PasswdEntry) -> None:
        if not entry.hash:
            self.note(f"{account.address}: no password in the passwd-files; set one with "
                      f"'mailkeep account passwd {account.address}'")
            return
        try:
            scheme = password_scheme(entry.hash)
        except PasswordHashError as exc:
            self.unmapped(f"{account.origin} (password)",
                          f"{exc}; set a new one with 'mailkeep account passwd "
                          f"{account.address}'")
            return
        account.password_hash = entry.hash
        account.password_scheme = scheme
        if weak_scheme(entry.hash):
            self.weak_schemes.setdefault(scheme, []).append(account.address)

    def _quotas(self) -> None:
        default_rule = self.dovecot.plugin.get("quota_rule", "") if self.dovecot else ""
        default = self._quota(default_rule, "dovecot.conf: plugin quota_rule") \
            if default_rule else None
        for account in self.plan.mailbox_accounts:
            entry = self.users.get(account.address)
            fields = entry.extra_fields() if entry is not None else {}
            rule = fields.get("userdb_quota_rule") or fields.get("quota_rule")
            quota = self._quota(rule, f"{account.origin}: quota_rule") if rule else default
            if quota is not None:
                kind, value = quota
                if kind == "storage":
                    account.quota = value
                else:
                    account.quota_messages = int(value)
        if self.dovecot is not None and self.dovecot.plugin.get("quota_grace"):
            grace = self.dovecot.plugin["quota_grace"].strip()
            match = re.fullmatch(r"(\d+)\s*%", grace)
            if match and int(match.group(1)) <= 100:
                self.plan.settings.setdefault("policy", {})["quota_grace"] = int(match.group(1))
            else:
                self.unmapped(f"dovecot.conf: plugin quota_grace = {grace}",
                              "only a percentage (such as 10%) maps to [policy] quota_grace")

    def _quota(self, rule: str, origin: str) -> tuple[str, str] | None:
        match = _QUOTA_RULE.match(rule.strip())
        if match is None:
            self.unmapped(f"{origin} = {rule}", "only '*:storage=SIZE' and '*:messages=N' "
                          "map to quota and quota_messages")
            return None
        what, value = match.group("what"), match.group("value")
        if what == "messages":
            return ("messages", value) if value.isdigit() else None
        size = _DOVECOT_SIZE.match(value)
        if size is None:
            self.unmapped(f"{origin} = {rule}", "the size is not a number with B, k, M, G or T")
            return None
        number, unit = size.groups()
        if int(number) == 0:
            return None  # 0 is unlimited in both
        return ("storage", f"{number}{unit.upper()}" if unit else number)

    # -- aliases and catch-alls --------------------------------------------------------------

    def _aliases(self) -> None:
        plan = self.plan
        self.handled.update({"virtual_alias_maps", "virtual_maps", "alias_maps"})
        raw: list[tuple[str, str, list[str]]] = []  # (origin, key, targets)
        catch_alls: dict[str, tuple[str, list[str]]] = {}
        personalized: dict[str, list[str]] = {}
        for table in self.tables("virtual_alias_maps"):
            if table.kind == "regex":
                self._regex_aliases(table, catch_alls, personalized)
                continue
            for entry in table.entries:
                origin = f"{table.source}:{entry.line}: {entry.key}"
                targets = [self.qualify(t) for t in split_list(entry.value)]
                if not targets:
                    self.unmapped(origin, "no target")
                    continue
                key = entry.key
                if key.startswith("@"):
                    domain = self._our_domain(key[1:], origin)
                    if domain is not None and domain not in catch_alls:
                        catch_alls[domain] = (origin, targets)
                    continue
                if key.startswith("*@"):
                    self.unmapped(origin, f"Postfix reads '{key}' as a literal address, not a "
                                  f"wildcard (that is '@{key[2:]}'), so it never caught "
                                  "anything; if you want a catch-all, set catch_all in "
                                  f"[domains.\"{key[2:]}\"]")
                    continue
                if "@" not in key:
                    for domain in self.local_domains:
                        if domain in plan.domains:
                            raw.append((origin, f"{key}@{domain}", targets))
                    continue
                raw.append((origin, key, targets))
        for table in self._alias_tables():
            if not self.literal(table, "alias_maps", "pattern alias tables are not migrated"):
                continue
            self._local_aliases(table, raw)
        self._resolve_aliases(raw)
        self._catch_alls(catch_alls)
        self._personalized(personalized)

    def _alias_tables(self) -> list[LookupTable]:
        """alias_maps; Postfix's default (hash:/etc/aliases) may be missing from a copy."""
        if self.postfix.is_set("alias_maps"):
            return self.tables("alias_maps")
        found = []
        for name in self.postfix.get_list("alias_maps"):
            try:
                found.append(read_table(name, self.postfix))
            except UnreadableTable as exc:
                self.note(f"local aliases (alias_maps default {name}) not migrated: {exc}")
        return found

    def _local_aliases(self, table: LookupTable, raw: list[tuple[str, str, list[str]]]) -> None:
        """aliases(5) entries: name@ each local domain -> targets (names@$myorigin)."""
        try:
            text = self.tree.read_text(Path(table.source), what="the aliases file")
        except MigrateError as exc:
            self.unmapped(f"alias_maps: {table.name}", str(exc))
            return
        entries, problems = parse_aliases(text, table.source)
        for number, problem in problems:
            self.unmapped(f"{table.source}:{number}", problem)
        local_domains = [d for d in self.local_domains if d in self.plan.domains]
        for entry in entries:
            origin = f"{table.source}:{entry.line}: {entry.name}"
            targets: list[str] = []
            for target in entry.targets:
                if target.startswith(("|", '"|', "/", '"/', ":include:")):
                    self.unmapped(f"{origin}: {target}", "delivery to a program, a file or an "
                                  "include list has no equivalent")
                    continue
                targets.append(self.qualify(target.strip('"')))
            if not targets:
                continue
            for domain in local_domains:
                raw.append((origin, f"{entry.name}@{domain}", targets))

    def _our_domain(self, raw: str, origin: str) -> str | None:
        try:
            domain = canonical_domain(raw.rstrip("."))
        except InvalidName as exc:
            self.unmapped(origin, f"not a usable domain: {exc}")
            return None
        if domain not in self.plan.domains:
            self.unmapped(origin, f"{domain} is not one of our domains; Mailkeep only "
                          "handles addresses in its own domains")
            return None
        return domain

    def _regex_aliases(self, table: LookupTable, catch_alls: dict[str, tuple[str, list[str]]],
                       personalized: dict[str, list[str]]) -> None:
        """Recognise catch-all and personalized catch-all rules; report the rest."""
        caught: set[str] = set()  # domains an earlier rule catches entirely
        for rule in table.rules:
            origin = f"{table.source}:{rule.line}: /{rule.pattern}/{rule.flags}"
            target = rule.value.strip()
            kind = self._classify_rule(rule, target)
            if kind is None:
                self.unmapped(f"{origin} {target}", "this regular expression has no "
                              "equivalent; add the addresses it meant as [aliases]")
                continue
            what, domain, local = kind
            if domain not in self.plan.domains:
                self.unmapped(f"{origin} {target}", f"{domain} is not one of our domains")
                continue
            if domain in caught:
                self.unmapped(f"{origin} {target}", "never used in Postfix: an earlier rule "
                              f"catches every address in {domain}")
                continue
            if what == "identity":
                continue
            if what == "catch_all":
                caught.add(domain)
                if domain not in catch_alls:
                    catch_alls[domain] = (origin, [self.qualify(target)])
                continue
            personalized.setdefault(domain, []).append(f"{local}@{domain}")

    def _classify_rule(self, rule: RegexEntry, target: str) -> tuple[str, str, str] | None:
        """("catch_all" | "personalized" | "identity", domain, local) or None."""
        if rule.negated or rule.flags.replace("i", ""):
            return None
        match = _CATCH_ALL_PATTERN.match(rule.pattern)
        if match is not None:
            domain = match.group("domain").replace("\\.", ".").lower()
            if not self._probe(rule, [f"x@{domain}", f"someone.else@{domain}"],
                               [f"x@other-{domain}", f"x@{domain}.other"]):
                return None
            if re.fullmatch(r"\$\{?1\}?@" + re.escape(domain), target, re.IGNORECASE) \
                    and "(" in rule.pattern:
                return ("identity", domain, "")
            if not target or "$" in target:
                return None
            return ("catch_all", domain, "")
        match = _PERSONALIZED_PATTERN.match(rule.pattern)
        if match is not None:
            domain = match.group("domain").replace("\\.", ".").lower()
            local = match.group("local").replace("\\.", ".")
            try:
                expected = canonical_address(f"{local}@{domain}")
                actual = canonical_address(self.qualify(target))
            except InvalidName:
                return None
            if expected != actual or not self._probe(
                    rule, [f"{local}@{domain}", f"shop{local}@{domain}"],
                    [f"{local}x@{domain}", f"{local}@other-{domain}"]):
                return None
            return ("personalized", domain, local.lower())
        return None

    @staticmethod
    def _probe(rule: RegexEntry, hits: Iterable[str], misses: Iterable[str]) -> bool:
        """Check the recognised meaning against the compiled pattern itself."""
        return all(rule.matches(s) for s in hits) and not any(rule.matches(s) for s in misses)

    def _resolve_aliases(self, raw: list[tuple[str, str, list[str]]]) -> None:
        plan = self.plan
        aliases: dict[str, tuple[str, list[str]]] = {}
        for origin, key, targets in raw:
            try:
                address = canonical_address(key)
            except InvalidName as exc:
                self.unmapped(origin, f"not a usable address: {exc}")
                continue
            if address.rpartition("@")[2] not in plan.domains:
                self.unmapped(origin, f"{address} is not in one of our domains; Mailkeep "
                              "does not rewrite mail for other domains")
                continue
            if address in aliases:
                continue  # the first table (and the first line) wins, as in Postfix
            canonical_targets: list[str] = []
            for target in targets:
                try:
                    canonical_targets.append(canonical_address(target))
                except InvalidName as exc:
                    self.unmapped(f"{origin} -> {target}", f"not a usable address: {exc}")
            if address in plan.accounts:
                if set(canonical_targets) <= {address}:
                    continue  # "me@x me@x": declares the mailbox, which the account is
                others = [t for t in canonical_targets if t != address]
                copy = "also sent copies of its mail to" if address in canonical_targets \
                    else "redirected its mail to"
                self.unmapped(origin, f"{address} is an account and Postfix {copy} "
                              f"{', '.join(others)}; in Mailkeep an address is an account or "
                              "an alias, not both")
                continue
            canonical_targets = [t for t in canonical_targets if t != address]
            if not canonical_targets:
                self.unmapped(origin, f"{address} maps only to itself but has no account in "
                              "the passwd-files")
                continue
            aliases[address] = (origin, canonical_targets)
        # Drop targets that do not exist, until nothing changes (dropping an alias can
        # leave another without targets).
        changed = True
        while changed:
            changed = False
            for address in list(aliases):
                origin, targets = aliases[address]
                kept = []
                for target in targets:
                    problem = self._target_problem(target, aliases)
                    if problem is None:
                        kept.append(target)
                    else:
                        self.unmapped(f"{origin} -> {target}", problem)
                        changed = True
                if not kept:
                    self.unmapped(origin, f"alias {address} is left without a target")
                    del aliases[address]
                    changed = True
                else:
                    aliases[address] = (origin, kept)
        for address in _aliases_in_loops({a: t for a, (_, t) in aliases.items()}):
            origin, _targets = aliases.pop(address)
            self.unmapped(origin, f"alias {address} is part of a loop")
        for address, (_origin, targets) in aliases.items():
            plan.aliases[address] = targets
            outside = [t for t in targets if t.rpartition("@")[2] not in plan.domains]
            if outside:
                self.note(f"{address} forwards to {', '.join(outside)} outside our domains: "
                          "Mailkeep answers such mail with a temporary failure until "
                          "forwarding is available (docs/configuration.md)")

    def _target_problem(self, target: str, aliases: dict[str, Any]) -> str | None:
        """None if ``target`` is deliverable in the migrated setup, else why not."""
        local, _, domain = target.rpartition("@")
        if domain not in self.plan.domains:
            if domain in self.local_domains or domain == self.old_hostname or \
                    domain == "localhost" or domain.startswith("localhost."):
                return (f"{target} is a system user of the old server's host name, which is "
                        "not a Mailkeep domain")
            return None  # outside: kept (a note says what happens)
        candidates = [target]
        separator = self.postfix.get("recipient_delimiter")
        for char in separator:
            if char in local:
                candidates.append(f"{local.split(char, 1)[0]}@{domain}")
        for candidate in candidates:
            account = self.plan.accounts.get(candidate)
            if account is not None:
                if account.relay_only:
                    return f"{candidate} is a relay-only account (no mailbox)"
                return None
            if candidate in aliases:
                return None
        return (f"{target} is neither an account nor an alias (Postfix would have bounced "
                "this mail)")

    def _catch_alls(self, catch_alls: dict[str, tuple[str, list[str]]]) -> None:
        for domain, (origin, targets) in catch_alls.items():
            if len(targets) != 1:
                self.unmapped(origin, "a catch-all with several targets; create an alias "
                              "with those targets and set catch_all to it")
                continue
            try:
                target = canonical_address(targets[0])
            except InvalidName as exc:
                self.unmapped(origin, f"not a usable target: {exc}")
                continue
            if target.rpartition("@")[2] not in self.plan.domains:
                self.unmapped(origin, f"the catch-all goes to {target} outside our domains; "
                              "a catch_all must be an account or alias here")
                continue
            problem = self._target_problem(target, self.plan.aliases)
            if problem is not None:
                self.unmapped(origin, problem)
                continue
            self.plan.domains[domain].catch_all = target

    def _personalized(self, personalized: dict[str, list[str]]) -> None:
        for domain, listed in personalized.items():
            usable = [a for a in listed if a in self.plan.accounts
                      and not self.plan.accounts[a].relay_only]
            for address in listed:
                if address not in usable:
                    self.unmapped(f"personalized catch-all {address}",
                                  f"{address} is not an account with a mailbox")
            if not usable:
                continue
            self.plan.domains[domain].personalized_catch_all = True
            others = sorted(a.address for a in self.plan.mailbox_accounts
                            if a.address.endswith("@" + domain) and a.address not in usable)
            if others:
                self.note(f"{domain}: the personalized catch-all applies to every account of "
                          f"the domain in Mailkeep, now also to {', '.join(others)}")

    # -- sending ------------------------------------------------------------------------------

    def _sender_logins(self) -> None:
        self.handled.add("smtpd_sender_login_maps")
        for table in self.tables("smtpd_sender_login_maps"):
            if not self.literal(table, "smtpd_sender_login_maps", "sender login rules by "
                                "pattern are not migrated; grant addresses in [submission] "
                                "senders"):
                continue
            for entry in table.entries:
                origin = f"{table.source}:{entry.line}: {entry.key}"
                if entry.key.startswith("@"):
                    self.unmapped(origin, "a whole domain cannot be granted; list the "
                                  "addresses in [submission] senders")
                    continue
                try:
                    sender = canonical_address(entry.key)
                except InvalidName as exc:
                    self.unmapped(origin, str(exc))
                    continue
                if sender.rpartition("@")[2] not in self.plan.domains:
                    self.unmapped(origin, "Mailkeep grants only addresses in its own domains")
                    continue
                owners: list[str] = []
                for raw_owner in split_list(entry.value):
                    try:
                        owner = canonical_address(self.qualify(raw_owner))
                    except InvalidName as exc:
                        self.unmapped(f"{origin} -> {raw_owner}", str(exc))
                        continue
                    if owner not in self.plan.accounts:
                        self.unmapped(f"{origin} -> {raw_owner}", f"{owner} is not an account")
                        continue
                    if owner != sender and owner not in owners:
                        owners.append(owner)
                if owners:
                    granted = self.plan.senders.setdefault(sender, [])
                    granted.extend(o for o in owners if o not in granted)

    def _sasl_access(self, name: str, origin: str) -> None:
        """check_sasl_access: HOLD -> send = "hold"; REJECT / 5xx -> send = "block"."""
        table = self.table(name, origin)
        if table is None:
            return
        if table.kind != "literal":
            self.unmapped(f"{origin}: check_sasl_access {name}", "pattern tables are not "
                          "migrated; set send per account")
            return
        for entry in table.entries:
            where = f"{table.source}:{entry.line}: {entry.key}"
            try:
                address = canonical_address(self.qualify(entry.key))
            except InvalidName as exc:
                self.unmapped(where, str(exc))
                continue
            account = self.plan.accounts.get(address)
            if account is None:
                self.unmapped(where, f"{address} is not an account")
                continue
            action, _, text = entry.value.partition(" ")
            action = action.upper()
            if action == "HOLD":
                account.send = "hold"
            elif action == "REJECT" or re.fullmatch(r"5\d\d", action):
                account.send = "block"
                account.send_message = re.sub(r"^\d\.\d{1,3}\.\d{1,3}\s+", "", text.strip())[:400]
            elif action in ("OK", "DUNNO", "PERMIT"):
                continue
            else:
                self.unmapped(where, f"{entry.value}: only HOLD and REJECT map to an "
                              "account's send mode")

    def _relay(self) -> None:
        self.handled.update({"relayhost", "smtp_sasl_auth_enable", "smtp_sasl_password_maps",
                             "smtp_tls_security_level", "smtp_tls_wrappermode",
                             "smtp_sasl_security_options", "smtp_sasl_tls_security_options",
                             "smtp_sasl_mechanism_filter"})
        relayhost = self.postfix.get("relayhost").strip()
        if not relayhost:
            return
        match = re.fullmatch(r"(\[(?P<bracketed>[^\]]+)\]|(?P<plain>[^:\[\]]+))"
                             r"(?::(?P<port>[A-Za-z0-9]+))?", relayhost)
        if match is None:
            self.unmapped(self.setting_item("relayhost"), "not a host name with an optional "
                          "port")
            return
        host = match.group("bracketed") or match.group("plain")
        port = match.group("port") or ""
        labels = [label for label in host.split(".") if label]
        base = labels[-2] if len(labels) >= 2 else labels[0] if labels else "relay"
        name = re.sub(r"[^A-Za-z0-9_-]", "-", base) or "relay"
        if name == "direct":
            name = "relay"
        wrapper = self.postfix.get("smtp_tls_wrappermode").lower() == "yes"
        level = self.postfix.get("smtp_tls_security_level").lower()
        if port in ("465", "smtps", "submissions") or wrapper:
            tls = "implicit"
        elif level in ("verify", "secure", "dane", "dane-only"):
            tls = "verify"
        elif level == "encrypt":
            tls = "verify"
            self.note(f"relay {host}: Postfix's smtp_tls_security_level = encrypt did not check "
                      "the relay's certificate; Mailkeep does (tls = \"verify\"). If the "
                      "certificate is not valid, set tls = \"encrypt\" in "
                      f"[relays.{name}]")
        else:
            tls = "may"
        username = password = None
        if self.postfix.get("smtp_sasl_auth_enable").lower() == "yes":
            username, password = self._relay_credentials(relayhost, host, port)
            if username is not None and tls == "may":
                tls = "verify"
                self.note(f"relay {host}: credentials are only ever sent over TLS in "
                          "Mailkeep, so the relay's TLS is now required and verified")
        elif self.postfix.get("smtp_sasl_password_maps"):
            self.note("smtp_sasl_password_maps is set but smtp_sasl_auth_enable is not: the "
                      "relay is used without a login, as Postfix did")
        mechanisms = self.postfix.get("smtp_sasl_mechanism_filter")
        if mechanisms:
            self.builtin(self.setting_item("smtp_sasl_mechanism_filter"),
                         "Mailkeep picks the login mechanism itself, always inside TLS")
        self.plan.relay = PlannedRelay(name, relayhost, tls, username, password)

    def _relay_credentials(self, relayhost: str, host: str, port: str
                           ) -> tuple[str | None, str | None]:
        keys = [relayhost, f"[{host}]:{port}" if port else f"[{host}]", f"[{host}]", host]
        for table in self.tables("smtp_sasl_password_maps"):
            if table.kind != "literal":
                continue
            for key in keys:
                value = table.lookup(key)
                if value is None:
                    continue
                username, colon, password = value.partition(":")
                if not colon or not username or not password:
                    self.unmapped(f"{table.source}: {key}", "expected username:password")
                    return None, None
                return username, password
        self.unmapped(self.setting_item("smtp_sasl_password_maps"),
                      f"no credentials found for {relayhost}; add username and password_file "
                      "to the relay by hand")
        return None, None

    # -- the inbound policy --------------------------------------------------------------------

    def _restrictions(self) -> None:
        smtp = self.postfix.service("smtp")
        for parameter, stage in catalog.RESTRICTION_PARAMETERS:
            self.handled.add(parameter)
            value = self.postfix.service_option(smtp, parameter) if smtp is not None \
                else self.postfix.get(parameter)
            tokens = split_list(value)
            index = 0
            while index < len(tokens):
                name = tokens[index].lower()
                argument = ""
                if name in catalog.RESTRICTIONS_WITH_ARGUMENT and index + 1 < len(tokens):
                    argument = tokens[index + 1]
                    index += 1
                index += 1
                self._restriction(parameter, stage, name, argument)
        for parameter, rule in (("header_checks", "header_checks"),
                                ("body_checks", "body_checks")):
            self.handled.add(parameter)
            for name in self.postfix.get_list(parameter):
                self._table_rule(rule, name, self.postfix.where(parameter), Stage.DATA)

    def _restriction(self, parameter: str, stage: Stage, name: str, argument: str) -> None:
        item = f"{self.postfix.where(parameter)}: {name} {argument}".rstrip()
        origin = f"{self.postfix.where(parameter)}: {name}"  # the table helpers add the table
        if name in catalog.SAME_RULE:
            rule = catalog.SAME_RULE[name]
            if rule not in DEFAULT_POLICY_RULES:
                self._add_rule(RULES[rule][0], rule)
            return
        if name in catalog.BUILTIN_RESTRICTIONS:
            self.builtin(item, catalog.BUILTIN_RESTRICTIONS[name])
            return
        if name == "check_recipient_access":
            self._recipient_access(argument, origin)
            return
        if name in catalog.TABLE_RULES:
            self._table_rule(name, argument, origin, RULES[name][0])
            return
        if name == "check_sasl_access":
            self._sasl_access(argument, origin)
            return
        if name == "reject_rbl_client":
            sites = self.plan.settings.setdefault("policy.dnsbl", {}).setdefault("sites", [])
            if argument and argument not in sites:
                sites.append(argument)
            return
        if name == "check_policy_service":
            lowered = argument.lower()
            if any(word in lowered for word in ("grey", "gray", "postgrey")):
                self.builtin(item, "greylisting is the built-in greylist rule "
                             "(docs/greylisting.md)")
            elif "spf" in lowered:
                self.builtin(item, "SPF is verified for every message (Authentication-"
                             "Results); add reject_spf_fail to [policy] rules to refuse "
                             "SPF failures")
            elif "quota" in lowered:
                self.builtin(item, "quotas are checked at RCPT time ([policy] quota_grace)")
            else:
                self.unmapped(item, "no equivalent for this policy service")
            return
        self.unmapped(item, "no equivalent restriction in Mailkeep's policy "
                      "(docs/inbound-policy.md lists the rules)")

    def _add_rule(self, stage: Stage, text: str) -> None:
        if all(existing != text for _, existing in self.extra_rules):
            self.extra_rules.append((stage, text))

    def _table_rule(self, rule: str, name: str, origin: str, stage: Stage,
                    bare_keys: bool = False) -> None:
        """A rule that uses a table: the table is checked now and copied by apply."""
        kind, _, path_text = name.partition(":")
        kind = kind.lower()
        if kind == "proxy":
            kind, _, path_text = path_text.partition(":")
        purpose = {"header_checks": "header", "body_checks": "body"}.get(rule, "access")
        if kind not in ("hash", "btree", "lmdb", "cdb", "texthash", "cidr", "pcre", "regexp"):
            self.unmapped(f"{origin}: {name}", f"{kind}: tables cannot be used by Mailkeep's "
                          "policy; export them into a text table (texthash:, pcre:)")
            return
        try:
            # Resolved and confined to --root: apply copies this file into the new
            # configuration directory, so it must be a file of the old server.
            source = self.postfix.path(path_text)
        except OutsideRoot as exc:
            self.unmapped(f"{origin}: {name}", f"the table is not copied: {exc}")
            return
        option = " bare_keys=REJECT" if bare_keys else ""
        try:
            load_table(f"{kind}:{source}", purpose=purpose,  # type: ignore[arg-type]
                       bare_key_value="REJECT" if bare_keys else None)
        except TableError as exc:
            self.unmapped(f"{origin}: {name}", f"the table cannot be used: {exc}")
            return
        file_name = self.plan.policy_tables.get(source)
        if file_name is None:
            file_name = source.name
            taken = set(self.plan.policy_tables.values())
            counter = 2
            while file_name in taken:
                file_name = f"{source.name}-{counter}"
                counter += 1
            self.plan.policy_tables[source] = file_name
        self._add_rule(stage, f"{rule} {kind}:{POLICY_TABLE_DIR}/{file_name}{option}")

    def _recipient_access(self, name: str, origin: str) -> None:
        """A list of our addresses to refuse -> burned; any other table -> a rule."""
        table = self.table(name, origin)
        if table is None:
            return
        burnable: list[tuple[TableEntry, str]] = []
        bare = False
        for entry in table.entries if table.kind == "literal" else ():
            action = entry.value.split(None, 1)[0].upper() if entry.value else ""
            if action and action != "REJECT" and not re.fullmatch(r"5\d\d", action):
                break
            try:
                address = canonical_address(entry.key)
            except InvalidName:
                break
            if address.rpartition("@")[2] not in self.plan.domains:
                break
            bare = bare or not entry.value
            burnable.append((entry, address))
        else:
            if table.kind == "literal" and burnable:
                self._burn(table, burnable)
                return
        self._table_rule("check_recipient_access", name, origin, Stage.RCPT,
                         bare_keys=any(not e.value for e in table.entries))

    def _burn(self, table: LookupTable, entries: list[tuple[TableEntry, str]]) -> None:
        for entry, address in entries:
            where = f"{table.source}:{entry.line}: {entry.key}"
            if address in self.plan.accounts or address in self.plan.aliases:
                self.unmapped(where, f"{address} is an account or alias, which cannot be "
                              "burned; Postfix refused its mail from outside")
                continue
            domain = self.plan.domains[address.rpartition("@")[2]]
            if address not in domain.burned:
                domain.burned.append(address)
        self.builtin(f"check_recipient_access {table.name}", "the addresses are burned in "
                     "[domains] (refused with 550 5.1.1)")

    def _policy_settings(self) -> None:
        plan = self.plan
        self.handled.update({"mynetworks", "postscreen_dnsbl_sites", "postscreen_dnsbl_threshold",
                             "postscreen_dnsbl_action", "postscreen_dnsbl_whitelist_threshold",
                             "postscreen_dnsbl_allowlist_threshold", "postscreen_greet_wait"})
        if self.postfix.is_set("mynetworks"):
            networks: list[str] = []
            for item in self.postfix.get_list("mynetworks"):
                text = item.replace("[", "").replace("]", "")
                try:
                    networks.append(str(ipaddress.ip_network(text, strict=False)))
                except ValueError:
                    self.unmapped(f"{self.postfix.where('mynetworks')}: {item}",
                                  "only network addresses map to [policy] trusted_networks")
            loopback = {"127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104", "127.0.0.1/32"}
            if networks and not set(networks) <= loopback:
                plan.settings.setdefault("policy", {})["trusted_networks"] = networks
                self.note("mynetworks -> [policy] trusted_networks: those clients skip the "
                          "inbound checks, but Mailkeep never relays for an address; they must "
                          "log in on the submission port (or use sendmail)")
        sites = self.postfix.get_list("postscreen_dnsbl_sites")
        if sites:
            dnsbl = plan.settings.setdefault("policy.dnsbl", {})
            # reject_rbl_client zones (read with the restrictions) come after postscreen's.
            dnsbl["sites"] = [*sites, *(s for s in dnsbl.get("sites", []) if s not in sites)]
        for parameter, key in (("postscreen_dnsbl_threshold", "threshold"),
                               ("postscreen_dnsbl_whitelist_threshold", "allow_threshold"),
                               ("postscreen_dnsbl_allowlist_threshold", "allow_threshold")):
            if self.postfix.is_set(parameter):
                value = self.postfix.get(parameter).strip()
                if re.fullmatch(r"-?\d+", value):
                    plan.settings.setdefault("policy.dnsbl", {})[key] = int(value)
                else:
                    self.unmapped(self.setting_item(parameter), "not a number")
        if self.postfix.is_set("postscreen_dnsbl_action"):
            action = {"enforce": "reject", "drop": "drop", "ignore": "ignore"}.get(
                self.postfix.get("postscreen_dnsbl_action").strip().lower())
            if action:
                plan.settings.setdefault("policy.dnsbl", {})["action"] = action
            else:
                self.unmapped(self.setting_item("postscreen_dnsbl_action"),
                              "only enforce, drop and ignore map to [policy.dnsbl] action")
        if self.postfix.is_set("postscreen_greet_wait"):
            value = self.postfix.get("postscreen_greet_wait")
            seconds = _postfix_time(value, "s")
            if seconds is None:
                self.unmapped(self.setting_item("postscreen_greet_wait"), "not a time value")
            else:
                plan.settings.setdefault("policy", {})["greet_wait"] = seconds
        self._finish_rules()

    def _finish_rules(self) -> None:
        """Mailkeep's default list plus the old policy's extra rules, stage by stage."""
        if not self.extra_rules:
            return
        rules: list[str] = []
        by_stage: dict[Stage, list[str]] = {}
        for stage, text in self.extra_rules:
            by_stage.setdefault(stage, []).append(text)
        for stage in Stage:
            rules.extend(r for r in DEFAULT_POLICY_RULES if RULES[r][0] == stage)
            rules.extend(by_stage.get(stage, []))
        self.plan.policy_rules = rules

    # -- limits, TLS, listeners, services ------------------------------------------------------

    def _limits(self) -> None:
        plan = self.plan
        self.handled.update({"recipient_delimiter", "message_size_limit"})
        delimiter = self.postfix.get("recipient_delimiter")
        if delimiter != DEFAULT_SUBADDRESS_SEPARATOR:
            plan.subaddress_separator = delimiter
            if not delimiter:
                self.note("recipient_delimiter is not set, so sub-addresses (me+shop@) were "
                          "unknown; they stay off (subaddress_separator = \"\"); remove those "
                          "lines to use Mailkeep's default \"+\"")
        if self.postfix.is_set("message_size_limit"):
            value = self.postfix.get("message_size_limit").strip()
            if value.isdigit() and int(value) > 0:
                plan.settings.setdefault("smtp", {})["message_size_limit"] = int(value)
            else:
                self.unmapped(self.setting_item("message_size_limit"),
                              "0 (no limit) is not allowed; Mailkeep's limit stays 100M")
        wanted: dict[str, dict[str, Any]] = {}
        parameter_of: dict[tuple[str, str], str] = {}
        for parameter, (section, key, kind) in catalog.NUMERIC_SETTINGS.items():
            self.handled.add(parameter)
            if not self.postfix.is_set(parameter):
                continue
            value = self.postfix.get(parameter).strip()
            if kind == "int":
                converted: Any = int(value) if re.fullmatch(r"\d+", value) else None
            else:
                converted = _postfix_time(value, catalog.TIME_DEFAULT_UNIT.get(parameter, "s"))
            if converted is None:
                self.unmapped(self.setting_item(parameter), "not a number or time value")
                continue
            wanted.setdefault(section, {})[key] = converted
            parameter_of[(section, key)] = parameter
        # The loader checks values against each other (maximal_backoff_time >= minimal):
        # check each section as a whole, drop what it refuses, until the rest is accepted.
        for section, values in wanted.items():
            while values:
                refused = _refused_settings(section, values)
                if not refused:
                    break
                for key, problem in refused.items():
                    self.unmapped(self.setting_item(parameter_of[(section, key)]), problem)
                    del values[key]
            if values:
                plan.settings.setdefault(section, {}).update(values)

    def _tls(self) -> None:
        self.handled.update({"smtpd_tls_cert_file", "smtpd_tls_key_file",
                             "smtpd_tls_security_level"})
        level = self.postfix.get("smtpd_tls_security_level").lower()
        if level == "encrypt":
            self.unmapped(self.setting_item("smtpd_tls_security_level"),
                          "Mailkeep offers STARTTLS on port 25 but never requires it: a "
                          "public MX must accept mail without TLS (RFC 3207 §4); submission "
                          "and IMAP always require TLS before a login")
        cert = self.postfix.get("smtpd_tls_cert_file")
        key = self.postfix.get("smtpd_tls_key_file")
        origin = "main.cf: smtpd_tls_cert_file"
        if not (cert and key) and self.dovecot is not None:
            cert = self.dovecot.get("ssl_cert").lstrip("<").strip()
            key = self.dovecot.get("ssl_key").lstrip("<").strip()
            origin = "dovecot.conf: ssl_cert"
        if not (cert and key):
            self.note("no certificate in the old configuration: Mailkeep makes a self-signed "
                      "one; set [tls] cert and key, or enable [acme]")
            return
        if self.tree.root is not None:
            self.unmapped(f"{origin} = {cert}", "the old server's files are read below --root; "
                          "copy the certificate to this machine and set [tls] cert and key, "
                          "or enable [acme] (Mailkeep renews certificates itself)")
            return
        if not (Path(cert).is_file() and Path(key).is_file()):
            self.unmapped(f"{origin} = {cert}", "the certificate or key file is not on this "
                          "machine; set [tls] cert and key once it is, or enable [acme]")
            return
        self.plan.settings.setdefault("tls", {}).update({"cert": cert, "key": key})
        if "letsencrypt" in cert:
            self.note("the certificate comes from certbot; it keeps working, or let Mailkeep "
                      "renew it with [acme] enabled = true (docs/certificates.md)")

    def _listeners_and_services(self) -> None:
        plan = self.plan
        self.handled.update({"inet_interfaces", "inet_protocols"})
        interfaces = self.postfix.get_list("inet_interfaces")
        host = "0.0.0.0"
        if interfaces and [i.lower() for i in interfaces] not in (["all"],):
            if [i.lower() for i in interfaces] in (["loopback-only"], ["127.0.0.1"],
                                                  ["localhost"]):
                host = "127.0.0.1"
            else:
                self.unmapped(self.setting_item("inet_interfaces"), "listeners are written "
                              "for 0.0.0.0; change their address to bind other interfaces")
        protocols = self.postfix.get("inet_protocols").lower()
        if "ipv6" in protocols or protocols == "all":
            self.note("Postfix listened on IPv6 too: add [[listeners]] with address "
                      "\"[::]:PORT\" for each port if this server has IPv6")

        def listen(protocol: str, port: int) -> None:
            entry = {"protocol": protocol, "address": f"{host}:{port}"}
            if entry not in plan.listeners:
                plan.listeners.append(entry)

        listen("smtp", 25)
        services = self.postfix.services
        for service in services:
            item = f"master.cf:{service.line}: {service.name} {service.type} {service.command}"
            if service.type == "inet" and service.command in ("smtpd", "postscreen"):
                port = _service_port(service.name)
                if port == 25:
                    continue
                if port == 587:
                    listen("submission", 587)
                    self._submission_service(service)
                elif port == 465:
                    listen("submissions", 465)
                    self._submission_service(service)
                else:
                    self.unmapped(item, "an SMTP server on another port; add a [[listeners]] "
                                  "entry by hand if it is needed")
                continue
            if service.name in catalog.STANDARD_SERVICES:
                continue
            self._custom_service(service, item)
        protocols_dovecot = (self.dovecot.get("protocols", "imap pop3 lmtp").split()
                             if self.dovecot is not None else ["imap"])
        if "imap" in protocols_dovecot:
            listen("imap", 143)
            listen("imaps", 993)
        if "pop3" in protocols_dovecot:
            listen("pop3", 110)
            listen("pop3s", 995)
            self.note("POP3 clients will download every message once more: message UIDLs "
                      "change with the move (IMAP clients resynchronise by themselves)")
        for protocol in protocols_dovecot:
            if protocol in ("sieve", "managesieve"):
                self.unmapped(f"dovecot.conf: protocols = {' '.join(protocols_dovecot)}",
                              "ManageSieve and Sieve filters are not available in Mailkeep "
                              "yet; move filters to the mail clients")

    def _submission_service(self, service: MasterService) -> None:
        """-o cleanup_service_name=X whose header_checks IGNORE headers -> remove_headers."""
        cleanup_name = service.options.get("cleanup_service_name")
        if not cleanup_name:
            return
        cleanup = self.postfix.service(self.postfix.expand(cleanup_name))
        if cleanup is None or "header_checks" not in cleanup.options:
            return
        remove: list[str] = []
        for name in split_list(self.postfix.expand(cleanup.options["header_checks"])):
            table = self.table(name, f"master.cf:{cleanup.line}: {cleanup.name} header_checks")
            if table is None:
                continue
            for rule in table.rules:
                match = _HEADER_IGNORE_PATTERN.match(rule.pattern)
                where = f"{table.source}:{rule.line}: /{rule.pattern}/ {rule.value}"
                if match is None or rule.value.upper() != "IGNORE" or rule.negated:
                    self.unmapped(where, "only rules that remove a header map to [submission] "
                                  "remove_headers")
                    continue
                header = match.group("name")
                if header.lower() == "received":
                    self.builtin(where, "Mailkeep never writes the client's address into "
                                 "Received on submission")
                elif header.lower() not in {h.lower() for h in (*DEFAULT_PRIVACY_HEADERS,
                                                                *remove)}:
                    remove.append(header)
        if remove:
            self.plan.settings.setdefault("submission", {})["remove_headers"] = [
                *DEFAULT_PRIVACY_HEADERS, *remove]
        self.builtin(f"master.cf:{cleanup.line}: {cleanup.name}",
                     "submitted mail loses privacy headers by default ([submission] "
                     "remove_headers)")

    def _custom_service(self, service: MasterService, item: str) -> None:
        text = " ".join((service.name, service.command, *service.args)).lower()
        if "policyd-spf" in text or "policy-spf" in text:
            self.builtin(item, "SPF is verified for every message (docs/inbound-policy.md)")
        elif any(word in text for word in ("greyfix", "postgrey", "greylist")):
            self.builtin(item, "greylisting is built in (docs/greylisting.md)")
        elif "dovecot" in text or "deliver" in text:
            self.builtin(item, "Mailkeep delivers into its own store")
        elif service.command == "cleanup":
            return  # a cleanup variant: read with the submission service that uses it
        elif "amavis" in text or "spamassassin" in text or "spamc" in text:
            self.unmapped(item, "content filters are not needed: clamd and rspamd are "
                          "policy rules (docs/virus-scanning.md, docs/rspamd.md)")
        else:
            self.unmapped(item, "a custom service has no equivalent")

    def _auth(self) -> None:
        mechanisms = (self.dovecot.get("auth_mechanisms", "plain").lower().split()
                      if self.dovecot is not None else [])
        cram = [a.address for a in self.plan.accounts.values()
                if a.password_scheme == "CRAM-MD5"]
        if "cram-md5" in mechanisms or (self.dovecot is None and cram):
            self.plan.settings.setdefault("auth", {})["cram_md5"] = True
            self.note("CRAM-MD5 stays available ([auth] cram_md5 = true) so that clients set "
                      "up for it keep working; turn it off once every client uses SCRAM or "
                      "PLAIN over TLS (docs/auth.md)")
        if "digest-md5" in mechanisms:
            self.unmapped("dovecot.conf: auth_mechanisms = digest-md5",
                          "DIGEST-MD5 is obsolete (RFC 6331) and not offered; clients fall "
                          "back to SCRAM or PLAIN over TLS")
        if cram and "cram-md5" not in mechanisms and self.dovecot is not None:
            self.note("CRAM-MD5 hashes are imported but the old server did not offer "
                      "CRAM-MD5; they verify PLAIN logins until the next login rehashes them")

    # -- mail ----------------------------------------------------------------------------------

    def _mail(self) -> None:
        plan = self.plan
        location_text = self.sources.mail_location
        if location_text is None and self.dovecot is not None:
            location_text = self.dovecot.get("mail_location") or None
        userdb_fields: dict[str, str] = {}
        if self.dovecot is not None:
            for database in self.dovecot.userdbs:
                userdb_fields.update(database.fields)
        where = "--mail-location" if self.sources.mail_location else "dovecot.conf: mail_location"
        if self.sources.mail_location is None and "mail" in userdb_fields:
            location_text = userdb_fields["mail"]
            where = "dovecot.conf: userdb override_fields mail"
        location = None
        if location_text is not None and self.sources.maildir_root is None:
            try:
                location = parse_mail_location(location_text)
            except UnusableMailLocation as exc:
                self.unmapped(f"{where} = {location_text}", str(exc))
                return
            if location.format not in ("maildir", ""):
                self.unmapped(f"{where} = {location_text}", unsupported_format_hint(location))
                return
            for option in location.options:
                if option not in ("LAYOUT", "INBOX", "UTF-8", "INDEX", "CONTROL", "VOLATILEDIR",
                                  "ITERINDEX", "NO-NOSELECT", "FULLDIRNAME", "DIRNAME"):
                    self.note(f"mail_location option {option} is ignored")
        base = self.postfix.get("virtual_mailbox_base")
        if location is None and self.sources.maildir_root is None and not base:
            if plan.mailbox_accounts:
                self.unmapped("mail", "no mail location is known (no --mail-location, "
                              "--maildir-root or dovecot.conf mail_location): no mail is "
                              "imported; migrate again with one of them to import it")
            return
        special = self.dovecot.special_use if self.dovecot is not None else {}
        missing: list[str] = []
        for account in self.plan.accounts.values():
            try:
                maildir = self._find_account_maildir(account, location, userdb_fields, base)
            except (UnusableMailLocation, MigrateError) as exc:
                self.unmapped(f"mail of {account.address}", str(exc))
                continue
            if maildir is None:
                if not account.relay_only:
                    missing.append(account.address)
                continue
            if account.relay_only:
                self.unmapped(f"mail of {account.address}", f"a relay-only account has mail "
                              f"at {maildir.root}, which is not imported")
                continue
            account.mail = maildir
            names = {name for name, _ in maildir.folders}
            for name, use in special.items():
                default = next((d for d, u in DEFAULT_MAILBOXES if u == use), None)
                if default is not None and name != default and name in names:
                    account.special_use_renames[default] = name
        if missing:
            self.note(f"no mail found for {len(missing)} account(s) ({', '.join(missing[:5])}"
                      f"{', ...' if len(missing) > 5 else ''}): nothing to import for them")

    def _find_account_maildir(self, account: PlannedAccount, location: Any,
                              userdb_fields: dict[str, str], base: str) -> Maildir | None:
        address = account.address
        entry = self.users.get(address)
        layout = None
        utf8 = False
        inbox = None
        if self.sources.maildir_root is not None:
            local, _, domain = address.rpartition("@")
            root = self.sources.maildir_root
            candidates = [root / address, root / domain / local, root / local]
        elif location is not None:
            home_template = (entry.home if entry is not None and entry.home
                             else userdb_fields.get("home", ""))
            home = expand_mail_path(home_template, address, None) if home_template else None
            path = expand_mail_path(location.path, address, home)
            candidates = [self.tree.path(path)]
            layout = location.layout
            utf8 = location.utf8
            if location.options.get("INBOX"):
                inbox = self.tree.path(expand_mail_path(location.options["INBOX"], address,
                                                        home))
        else:
            value = self.mailbox_map_values.get(address, "")
            if not value.endswith("/"):
                return None  # virtual(8) mbox files are not read
            # The map's value may hold "..": the Maildir must stay below --root too.
            candidates = [self.tree.confine(self.tree.path(base).joinpath(value))]
        for candidate in candidates:
            root_dir = find_maildir(candidate)
            if root_dir is None:
                continue
            chosen = layout or detect_layout(root_dir)
            return maildir_folders(root_dir, chosen, utf8=utf8, inbox=inbox)
        return None

    # -- whatever is left ----------------------------------------------------------------------

    def _drop_what_the_loader_refuses(self) -> None:
        """Last line of defence: check the plan with the configuration loader and report
        (instead of writing) the aliases, catch-alls, grants and burned addresses it
        refuses for reasons the steps above did not foresee."""
        plan = self.plan
        for _ in range(50):
            fragment = plan.to_config(data_dir="/nonexistent", relay_secret="relay.secret",
                                      tables_at_source=True)
            try:
                parse_config_text(tomlkit.dumps(fragment), Path("/nonexistent/mailkeep.toml"),
                                  label="migrated")
                return
            except ConfigError as exc:
                if not any(self._drop_refused(issue.key, str(issue)) for issue in exc.errors):
                    return  # not ours to fix here: prepare reports it in full

    def _drop_refused(self, key: str, problem: str) -> bool:
        parts = _key_parts(key)
        plan = self.plan
        reason = problem.split(": ", 2)[-1]
        if len(parts) >= 2 and parts[0] == "aliases":
            address = _canonical_or(parts[1])
            if plan.aliases.pop(address, None) is not None:
                self.unmapped(f"alias {address}", reason)
                return True
        if len(parts) >= 2 and parts[0] == "domains":
            domain = plan.domains.get(_canonical_domain_or(parts[1]))
            if domain is None:
                return False
            if parts[2:3] == ["catch_all"] and domain.catch_all:
                self.unmapped(f"catch-all of {domain.name}", reason)
                domain.catch_all = None
                return True
            if parts[2:3] == ["burned"] and domain.burned:
                self.unmapped(f"burned addresses of {domain.name}", reason)
                domain.burned = []
                return True
            postmaster = f"postmaster@{domain.name}"
            if len(parts) == 2 and postmaster in plan.aliases:
                del plan.aliases[postmaster]
                self.unmapped(f"alias {postmaster}", reason + "; Mailkeep's own postmaster "
                              "rule (docs/configuration.md) applies instead")
                return True
        if parts[:2] == ["submission", "senders"] and len(parts) >= 3:
            address = _canonical_or(parts[2])
            if plan.senders.pop(address, None) is not None:
                self.unmapped(f"sender grant {address}", reason)
                return True
        return False

    def _remaining_main_cf(self) -> None:
        for name in self.postfix.settings:
            if name in self.handled or name in catalog.MAPPED_MAIN_CF:
                continue
            item = self.setting_item(name)
            if name in catalog.BUILTIN:
                self.builtin(item, catalog.BUILTIN[name])
            elif name in catalog.NOT_MIGRATED:
                self.unmapped(item, catalog.NOT_MIGRATED[name])
            elif name.endswith("_time_limit") or name.endswith("_destination_recipient_limit"):
                self.builtin(item, "belongs to a Postfix service that Mailkeep does not need")
            elif name.startswith("mua_") or name.endswith("_restrictions"):
                self.builtin(item, "submission requires a login and checks the sender "
                             "(docs/sending.md)")
            else:
                self.unmapped(item, "no Mailkeep equivalent known to the migration")
        for name in ("smtpd_milters", "non_smtpd_milters"):
            if name in self.postfix.settings:
                self._milters(name)

    def _milters(self, name: str) -> None:
        if name == "non_smtpd_milters" and self.postfix.get(name) == self.postfix.get(
                "smtpd_milters"):
            return
        for milter in self.postfix.get_list(name):
            item = f"{self.postfix.where(name)} = {milter}"
            lowered = milter.lower()
            if "opendkim" in lowered or lowered.endswith(":8891"):
                domains = " ".join(sorted(self.plan.domains)) or "DOMAIN"
                self.unmapped(item, "OpenDKIM milter: Mailkeep signs (and verifies) DKIM "
                              f"itself; run 'mailkeep dkim keygen {domains}' and publish the "
                              "records it prints (docs/dkim.md)")
            elif "opendmarc" in lowered or lowered.endswith(":8893"):
                self.unmapped(item, "OpenDMARC milter: DMARC is the built-in dmarc rule "
                              "(docs/inbound-policy.md)")
            elif "clam" in lowered:
                self.unmapped(item, "clamav-milter: Mailkeep talks to clamd directly; set "
                              "[policy.clamav] socket to clamd's LocalSocket "
                              "(docs/virus-scanning.md)")
            elif "rspamd" in lowered or lowered.endswith(":11332"):
                self.unmapped(item, "rspamd milter: set [policy.rspamd] url to rspamd's "
                              "normal worker (docs/rspamd.md)")
            elif "spamass" in lowered:
                self.unmapped(item, "spamass-milter: use rspamd ([policy.rspamd], "
                              "docs/rspamd.md)")
            else:
                self.unmapped(item, "milters are not supported; see docs/inbound-policy.md "
                              "for the built-in checks")

    def _remaining_dovecot(self) -> None:
        if self.dovecot is None:
            return
        for name, value in self.dovecot.settings.items():
            item = f"dovecot.conf: {name} = {value}"
            if name in catalog.DOVECOT_MAPPED:
                continue
            if name in catalog.DOVECOT_BUILTIN:
                self.builtin(item, catalog.DOVECOT_BUILTIN[name])
            elif name == "pop3_uidl_format":
                self.builtin(item, "POP3 UIDLs are Mailkeep's own")
            else:
                self.unmapped(item, "no Mailkeep equivalent known to the migration")
        for name, value in self.dovecot.plugin.items():
            item = f"dovecot.conf: plugin {name} = {value}"
            if name in ("quota_rule", "quota_grace"):
                continue
            if name.startswith("sieve"):
                self.unmapped(item, "Sieve filters are not available in Mailkeep yet; move "
                              "filters to the mail clients")
            elif name.startswith("quota"):
                self.builtin(item, "quotas are per account (quota, quota_messages) and "
                             "checked at RCPT time")
            else:
                self.unmapped(item, "no Mailkeep equivalent known to the migration")
        if "sieve" in self.dovecot.get("mail_plugins", "").split():
            self.unmapped("dovecot.conf: mail_plugins = sieve", "Sieve filters are not "
                          "available in Mailkeep yet; move filters to the mail clients")


def _key_parts(key: str) -> list[str]:
    """``domains."example.com".burned[2]`` -> ["domains", "example.com", "burned"]."""
    parts: list[str] = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"|([^."\[\]]+)', key):
        parts.append(match.group(1) if match.group(1) is not None else match.group(2))
    return parts


def _canonical_or(text: str) -> str:
    try:
        return canonical_address(text)
    except InvalidName:
        return text


def _canonical_domain_or(text: str) -> str:
    try:
        return canonical_domain(text)
    except InvalidName:
        return text


def _replace_table(rule: str, old: str, new: str) -> str:
    """``rule`` with its table reference ``old`` (a whole word) replaced by ``new``."""
    name, _, rest = rule.partition(" ")
    table, _, option = rest.partition(" ")
    kind, colon, path = table.partition(":")
    if colon and f":{path}" == old:
        table = kind + new
    return " ".join(part for part in (name, table, option) if part)


def _aliases_in_loops(aliases: dict[str, list[str]]) -> list[str]:
    """Aliases whose expansion comes back to themselves."""
    looping: list[str] = []
    for start in aliases:
        stack = list(aliases[start])
        seen: set[str] = set()
        while stack:
            current = stack.pop()
            if current == start:
                looping.append(start)
                break
            if current in seen or current not in aliases:
                continue
            seen.add(current)
            stack.extend(aliases[current])
    return looping


def _service_port(name: str) -> int | None:
    """The port of a master.cf inet service name: "smtp", "submission", "127.0.0.1:10025"."""
    port = name.rpartition(":")[2]
    if port.isdigit():
        return int(port)
    return {"smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}.get(port)


def _postfix_time(value: str, default_unit: str) -> str | None:
    """A Postfix time value as Mailkeep writes durations: "120s", "5d"."""
    match = _POSTFIX_TIME.match(value)
    if match is None:
        return None
    return f"{match.group(1)}{match.group(2) or default_unit}"


def _refused_settings(section: str, values: dict[str, Any]) -> dict[str, str]:
    """The keys of [section] the configuration loader refuses, with its own message."""
    text = tomlkit.dumps({"hostname": "localhost", section: values})
    try:
        parse_config_text(text, Path("/nonexistent/mailkeep.toml"), label="migrated")
    except ConfigError as exc:
        refused: dict[str, str] = {}
        for issue in exc.errors:
            key = issue.key.removeprefix(f"{section}.")
            if key in values:
                refused[key] = issue.message + (f" (allowed: {issue.allowed})"
                                                if issue.allowed else "")
        # An error that names no key of ours would loop forever: refuse everything.
        return refused or {key: str(exc) for key in values}
    return {}

