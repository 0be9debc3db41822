"""Postfix's configuration as the migration reads it: main.cf, master.cf, lookup tables, aliases.

main.cf (postconf(5) "SYNTAX"): ``name = value`` lines; a line that starts with whitespace
continues the previous one; blank lines and lines whose first non-blank character is ``#``
are ignored, even between a line and its continuation (a ``#`` later in a line is part of
the value); the last setting of a name wins. Values refer to other parameters as
``$name``, ``${name}`` or ``$(name)``, and ``${name?value}`` / ``${name:value}`` (also
``${name?{value}}``) expand ``value`` when ``name`` is set / not set. Expansion happens
when a value is used, with Postfix's built-in defaults for parameters main.cf leaves out
(``DEFAULTS``; the migration only needs the defaults of what it maps).

master.cf (master(5)): one service per logical line, ``service type private unpriv chroot
wakeup maxproc command args``, with ``-o name=value`` overrides among the arguments.

Lookup tables (``type:name``): ``hash:``, ``btree:``, ``lmdb:``, ``cdb:``, ``dbm:``,
``texthash:`` are read from the text file postmap(1) compiles, as
``mailkeep.policy.tables`` does for access tables; ``pcre:`` and ``regexp:`` are read rule
by rule with that module's line and pattern syntax; ``inline:{...}`` and ``proxy:`` are
understood. Other types (SQL, LDAP, ...) need a server and are reported, not read.

aliases(5): ``name: value, value`` with continuation lines, as newaliases reads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.migrate.sources import MigrateError, OutsideRoot, SourceTree
from mailkeep.policy.tables import (
    PatternError,
    TableError,
    _split_pattern,  # the "[!]/pattern/flags result" syntax of pcre/regexp tables
    compile_translation,
    logical_lines,
    translate_pattern,
)

#: How deep ``$name`` references may nest before the value is taken as a loop.
MAX_EXPANSION_DEPTH = 100
#: The longest expanded value (a reference loop that doubles would otherwise grow forever).
MAX_EXPANDED_LENGTH = 1024 * 1024
#: Most tables one parameter may list.
MAX_TABLES_PER_PARAMETER = 100

# Postfix's built-in values (postconf -d, Postfix 3.7) of the parameters the migration maps
# when main.cf does not set them. myhostname's default is the machine's name, which the
# caller supplies: on a copy of the old server it is not ours to guess.
DEFAULTS: Mapping[str, str] = {
    "mydomain": "",          # computed from myhostname, see PostfixConfig.get
    "myorigin": "$myhostname",
    "mydestination": "$myhostname, localhost.$mydomain, localhost",
    "alias_maps": "hash:/etc/aliases",
    "virtual_alias_maps": "$virtual_maps",
    "virtual_maps": "",
    "virtual_alias_domains": "",
    "virtual_mailbox_domains": "",
    "virtual_mailbox_maps": "",
    "virtual_mailbox_base": "",
    "relay_domains": "",
    "recipient_delimiter": "",
    "message_size_limit": "10240000",
    "queue_run_delay": "300s",
    "minimal_backoff_time": "300s",
    "maximal_backoff_time": "4000s",
    "maximal_queue_lifetime": "5d",
    "bounce_queue_lifetime": "5d",
    "delay_warning_time": "0h",
    "smtpd_error_sleep_time": "1s",
    "relayhost": "",
    "smtp_sasl_auth_enable": "no",
    "smtp_sasl_password_maps": "",
    "smtp_tls_security_level": "",
    "smtp_tls_wrappermode": "no",
    "smtpd_sender_login_maps": "",
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "",
    "smtpd_recipient_restrictions": "",
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
                                "defer_unauth_destination",
    "smtpd_data_restrictions": "",
    "smtpd_end_of_data_restrictions": "",
    "header_checks": "",
    "body_checks": "",
    "mynetworks": "",
    "smtpd_milters": "",
    "non_smtpd_milters": "",
    "content_filter": "",
    "inet_protocols": "all",
    "inet_interfaces": "all",
    "smtpd_tls_cert_file": "",
    "smtpd_tls_key_file": "",
}

# "$name", "${name}", "$(name)", "${name?text}", "${name:text}", "${name?{text}}".
_NAME_CHARS = r"[A-Za-z0-9_]+"
_SETTING_LINE = re.compile(r"^([A-Za-z0-9_.-]+)\s*=\s*(.*)$", re.DOTALL)
_LITERAL_TYPES = frozenset({"hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash"})


@dataclass(frozen=True)
class Setting:
    """One main.cf parameter as written: its value (continuations joined) and line."""

    name: str
    value: str
    line: int


def parse_main_cf(text: str, source: str) -> tuple[dict[str, Setting], list[str]]:
    """The settings of a main.cf text, and warnings (file:line: text) for odd lines.

    Raises MigrateError for a line that is not ``name = value``: Postfix refuses to start
    with such a file ("missing '=' after attribute name").
    """
    settings: dict[str, Setting] = {}
    warnings: list[str] = []

    def orphan(number: int) -> None:
        warnings.append(f"{source}:{number}: a continuation line with nothing to "
                        "continue is ignored (as Postfix does)")

    for start, logical in _joined_lines(text, orphan):
        match = _SETTING_LINE.match(logical)
        if match is None:
            raise MigrateError(f"{source}:{start}: expected 'name = value', found "
                               f"{logical[:60]!r}")
        name, value = match.group(1), match.group(2).strip()
        if name in settings:
            warnings.append(f"{source}:{start}: {name} is set again (line "
                            f"{settings[name].line}); the last setting wins")
        settings[name] = Setting(name, value, start)
    return settings, warnings


def _joined_lines(text: str, orphan: Callable[[int], None] | None = None
                  ) -> Iterator[tuple[int, str]]:
    """(first line number, logical line) of a main.cf, master.cf or aliases(5) text.

    Blank and ``#`` lines are skipped (also between a line and its continuation); a line
    that starts with whitespace continues the previous one, the parts stripped and joined
    by a space. A continuation with nothing before it is passed to ``orphan`` (its line
    number) and otherwise dropped.
    """
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t":
            if current:
                current.append(stripped)
            elif orphan is not None:
                orphan(number)
            continue
        if current:
            yield start, " ".join(current)
        current, start = [stripped], number
    if current:
        yield start, " ".join(current)


def split_list(value: str) -> list[str]:
    """Split a Postfix list: separators are whitespace and commas; ``{...}`` groups
    (``inline:{ a=b, c=d }``, ``-o { name = value }``) stay in one item."""
    return _split_outside_braces(value, " \t\r\n,")


def _split_outside_braces(text: str, separators: str) -> list[str]:
    """Split ``text`` at any of ``separators`` outside ``{...}`` groups; no empty items."""
    items: list[str] = []
    word: list[str] = []
    depth = 0
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        if depth == 0 and char in separators:
            if word:
                items.append("".join(word))
                word = []
            continue
        word.append(char)
    if word:
        items.append("".join(word))
    return items


@dataclass(frozen=True)
class MasterService:
    """One master.cf service: ``smtp inet n - y - - smtpd -o name=value``."""

    name: str
    type: str
    command: str
    args: tuple[str, ...]
    options: Mapping[str, str]
    line: int


def parse_master_cf(text: str, source: str) -> tuple[list[MasterService], list[str]]:
    """Services of a master.cf text, and warnings for lines that cannot be read."""
    services: list[MasterService] = []
    warnings: list[str] = []
    for start, logical in _joined_lines(text):
        fields = split_master_fields(logical)
        if len(fields) < 8:
            warnings.append(f"{source}:{start}: a service needs 8 fields (service type "
                            "private unpriv chroot wakeup maxproc command); line ignored")
            continue
        name, kind = fields[0], fields[1]
        command, rest = fields[7], fields[8:]
        options: dict[str, str] = {}
        args: list[str] = []
        index = 0
        while index < len(rest):
            item = rest[index]
            if item == "-o" and index + 1 < len(rest):
                setting = rest[index + 1].strip()
                if setting.startswith("{") and setting.endswith("}"):
                    setting = setting[1:-1]
                key, eq, val = setting.partition("=")
                if eq:
                    options[key.strip()] = val.strip()
                index += 2
                continue
            if item.startswith("-o") and "=" in item[2:]:
                key, _, val = item[2:].partition("=")
                options[key.strip()] = val.strip()
            else:
                args.append(item)
            index += 1
        services.append(MasterService(name, kind, command, tuple(args), options, start))
    return services, warnings


def split_master_fields(line: str) -> list[str]:
    """master.cf fields: whitespace-separated, ``{ ... }`` kept together (master(5))."""
    return _split_outside_braces(line, " \t")


class PostfixConfig:
    """main.cf and master.cf of one Postfix instance, with $name expansion and defaults."""

    def __init__(self, directory: Path, tree: SourceTree, settings: dict[str, Setting],
                 services: list[MasterService], warnings: list[str], *,
                 fallback_hostname: str) -> None:
        self.directory = directory
        self.tree = tree
        self.settings = settings
        self.services = services
        self.warnings = warnings
        self.fallback_hostname = fallback_hostname

    @classmethod
    def load(cls, directory: Path, tree: SourceTree, *, fallback_hostname: str) -> PostfixConfig:
        """Read ``directory/main.cf`` (required) and ``directory/master.cf`` (optional)."""
        if not directory.is_dir():
            raise MigrateError(f"the Postfix configuration directory {directory} does not "
                               "exist or is not a directory (give the one holding main.cf)")
        main_cf = directory / "main.cf"
        settings, warnings = parse_main_cf(tree.read_text(main_cf, what="the Postfix main.cf"),
                                           str(main_cf))
        services: list[MasterService] = []
        master_cf = directory / "master.cf"
        if master_cf.exists():
            services, master_warnings = parse_master_cf(
                tree.read_text(master_cf, what="the Postfix master.cf"), str(master_cf))
            warnings.extend(master_warnings)
        return cls(directory, tree, settings, services, warnings,
                   fallback_hostname=fallback_hostname)

    # -- values ---------------------------------------------------------------------------

    def is_set(self, name: str) -> bool:
        return name in self.settings

    def raw(self, name: str) -> str | None:
        setting = self.settings.get(name)
        return None if setting is None else setting.value

    def where(self, name: str) -> str:
        """``main.cf:12: name`` for messages (``main.cf: name (default)`` when unset)."""
        setting = self.settings.get(name)
        if setting is None:
            return f"main.cf: {name} (Postfix default)"
        return f"main.cf:{setting.line}: {name}"

    def _unexpanded(self, name: str) -> str | None:
        if name in self.settings:
            return self.settings[name].value
        if name == "myhostname":
            return self.fallback_hostname
        if name == "mydomain":
            host = self.get("myhostname")
            return host.partition(".")[2] if "." in host else "localdomain"
        return DEFAULTS.get(name)

    def get(self, name: str) -> str:
        """The value of ``name`` with every ``$reference`` expanded ("" when unknown)."""
        value = self._unexpanded(name)
        return "" if value is None else self.expand(value, _stack=(name,))

    def get_list(self, name: str) -> list[str]:
        return split_list(self.get(name))

    def expand(self, text: str, *, _stack: tuple[str, ...] = ()) -> str:
        """Expand ``$name`` references in ``text`` (mac_expand(3) syntax)."""
        if len(_stack) > MAX_EXPANSION_DEPTH:
            raise MigrateError(f"main.cf: ${_stack[0]} nests more than "
                               f"{MAX_EXPANSION_DEPTH} levels deep")
        out: list[str] = []
        index = 0
        length = len(text)
        while index < length:
            char = text[index]
            if char != "$" or index + 1 >= length:
                out.append(char)
                index += 1
                continue
            nxt = text[index + 1]
            if nxt == "$":
                out.append("$")
                index += 2
                continue
            if nxt in "{(":
                close = _matching(text, index + 1)
                if close < 0:
                    out.append(text[index:])
                    break
                body = text[index + 2:close]
                out.append(self._expand_braced(body, _stack))
                index = close + 1
                continue
            match = re.compile(_NAME_CHARS).match(text, index + 1)
            if match is None:
                out.append(char)
                index += 1
                continue
            out.append(self._reference(match.group(0), _stack))
            index = match.end()
            if sum(len(part) for part in out) > MAX_EXPANDED_LENGTH:
                what = f"${_stack[0]}" if _stack else "a value"
                raise MigrateError(f"main.cf: {what} grows beyond {MAX_EXPANDED_LENGTH} "
                                   "characters when expanded")
        return "".join(out)

    def _expand_braced(self, body: str, stack: tuple[str, ...]) -> str:
        match = re.compile(rf"({_NAME_CHARS})([?:])(.*)$", re.DOTALL).match(body)
        if match is None:
            return self._reference(body.strip(), stack)
        name, operator, rest = match.groups()
        rest = rest.strip()
        if rest.startswith("{") and rest.endswith("}"):
            rest = rest[1:-1].strip()
        defined = bool(self._unexpanded(name))
        if (operator == "?") == defined:
            # "{" counts as a level, so that nested conditionals are bounded too.
            return self.expand(rest, _stack=(*stack, "{"))
        return ""

    def _reference(self, name: str, stack: tuple[str, ...]) -> str:
        if name in stack:
            raise MigrateError(f"main.cf: ${name} refers to itself (through "
                               f"{' -> '.join(stack)})")
        value = self._unexpanded(name)
        if value is None:
            return ""
        return self.expand(value, _stack=(*stack, name))

    # -- derived values -------------------------------------------------------------------

    def service(self, name: str) -> MasterService | None:
        """The master.cf service called ``name`` (the first one, as master does)."""
        for service in self.services:
            if service.name == name:
                return service
        return None

    def service_option(self, service: MasterService, name: str) -> str:
        """A ``-o`` override of ``service`` (expanded), else main.cf's value."""
        if name in service.options:
            return self.expand(service.options[name])
        return self.get(name)

    def path(self, written: str) -> Path:
        """A file named in main.cf, in the source tree (relative: to the config directory)."""
        return self.tree.path(written, relative_to=self.directory)


def _matching(text: str, open_index: int) -> int:
    """Index of the bracket closing the one at ``open_index`` (-1 if none)."""
    opening = text[open_index]
    closing = "}" if opening == "{" else ")"
    depth = 0
    for index in range(open_index, len(text)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return index
    return -1


# --- lookup tables ------------------------------------------------------------------------


class UnreadableTable(MigrateError):
    """A table the migration cannot read; the message says why and what to do."""


@dataclass(frozen=True)
class TableEntry:
    """One ``key value`` line of a literal table (the key as written)."""

    line: int
    key: str
    value: str


@dataclass(frozen=True)
class RegexEntry:
    """One ``/pattern/flags result`` rule of a pcre: or regexp: table."""

    line: int
    pattern: str
    flags: str
    value: str
    compiled: re.Pattern[str]
    anchored: bool
    negated: bool = False

    def matches(self, subject: str) -> bool:
        test = self.compiled.match if self.anchored else self.compiled.search
        return (test(subject) is None) == self.negated


@dataclass(frozen=True)
class LookupTable:
    """A table read for migration: literal entries, or regex rules in file order."""

    name: str  # as written in main.cf, e.g. "hash:/etc/postfix/virtual"
    kind: str  # "literal" or "regex"
    source: str  # the file read ("inline" for inline: tables)
    entries: tuple[TableEntry, ...] = ()
    rules: tuple[RegexEntry, ...] = ()
    #: Lines that could not be read (line, problem); the rest of the table is used.
    problems: tuple[tuple[int, str], ...] = field(default=())

    def lookup(self, key: str) -> str | None:
        """The value for ``key`` (case-insensitive, the first entry wins)."""
        folded = key.lower()
        for entry in self.entries:
            if entry.key.lower() == folded:
                return entry.value
        return None


def read_table(name: str, config: PostfixConfig) -> LookupTable:
    """Read the table ``type:name`` named in ``config``. Raises UnreadableTable."""
    kind, sep, rest = name.partition(":")
    kind = kind.lower()
    if not sep or not rest:
        raise UnreadableTable(f"{name!r} is not a Postfix table (type:name)")
    if kind == "proxy":
        return read_table(rest, config)
    if kind == "inline":
        return _inline_table(name, rest)
    if kind in _LITERAL_TYPES:
        path = _table_path(config, name, rest)
        if not path.exists() and path.with_name(path.name + ".db").exists():
            raise UnreadableTable(f"{name}: only the compiled {path}.db is there; on the old "
                                  f"server run 'postmap -s {name} > {path}' and migrate again")
        entries = _literal_entries(_read(config, path, name), str(path))
        return LookupTable(name, "literal", str(path), entries=tuple(entries))
    if kind in ("pcre", "regexp"):
        path = _table_path(config, name, rest)
        text = _read(config, path, name)
        rules, problems = _regex_entries(text, str(path), kind)
        return LookupTable(name, "regex", str(path), rules=tuple(rules),
                           problems=tuple(problems))
    raise UnreadableTable(f"{name}: {kind}: tables are not read by the migration; export "
                          "the table into a text file (key value per line) and point main.cf "
                          "at texthash:FILE, or add the entries by hand afterwards")


def _table_path(config: PostfixConfig, name: str, rest: str) -> Path:
    """The file of a table, in the source tree; not one outside --root (sources.py)."""
    try:
        return config.path(rest)
    except OutsideRoot as exc:
        raise UnreadableTable(f"{name}: {exc}") from None


def _read(config: PostfixConfig, path: Path, name: str) -> str:
    try:
        return config.tree.read_text(path, what=f"the table {name}:")
    except MigrateError as exc:
        raise UnreadableTable(str(exc)) from None


def _literal_entries(text: str, source: str) -> list[TableEntry]:
    try:
        lines = logical_lines(text, source)
    except TableError as exc:
        raise UnreadableTable(str(exc)) from None
    entries: list[TableEntry] = []
    for line in lines:
        parts = line.text.split(None, 1)
        entries.append(TableEntry(line.number, parts[0], parts[1].strip() if len(parts) > 1
                                  else ""))
    return entries


def _regex_entries(text: str, source: str, dialect: str
                   ) -> tuple[list[RegexEntry], list[tuple[int, str]]]:
    rules: list[RegexEntry] = []
    problems: list[tuple[int, str]] = []
    try:
        lines = logical_lines(text, source)
    except TableError as exc:
        raise UnreadableTable(str(exc)) from None
    for line in lines:
        lowered = line.text.lower()
        if lowered.startswith(("if ", "if\t", "if/", "if!")) or lowered == "endif":
            problems.append((line.number, "if/endif blocks are not migrated"))
            continue
        try:
            negated, _delimiter, pattern, flags, result = _split_pattern(line.text)
            translation = translate_pattern(pattern, flags, dialect)  # type: ignore[arg-type]
            compiled = compile_translation(translation)
        except PatternError as exc:
            problems.append((line.number, str(exc)))
            continue
        rules.append(RegexEntry(line.number, pattern, flags, result.strip(), compiled,
                                translation.anchored, negated))
    return rules, problems


def _inline_table(name: str, body: str) -> LookupTable:
    body = body.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise UnreadableTable(f"{name}: expected inline:{{ key=value, ... }}")
    entries = []
    for item in split_list(body[1:-1]):
        item = item.strip("{} ")
        key, eq, value = item.partition("=")
        if not eq:
            raise UnreadableTable(f"{name}: {item!r} is not key=value")
        entries.append(TableEntry(0, key.strip(), value.strip()))
    return LookupTable(name, "literal", "inline", entries=tuple(entries))


# --- aliases(5) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AliasEntry:
    line: int
    name: str
    targets: tuple[str, ...]


def parse_aliases(text: str, source: str) -> tuple[list[AliasEntry], list[tuple[int, str]]]:
    """Entries of an aliases(5) file, and (line, problem) for lines that are not."""
    entries: list[AliasEntry] = []
    problems: list[tuple[int, str]] = []

    def orphan(number: int) -> None:
        problems.append((number, "continuation line with nothing to continue"))

    for start, logical in _joined_lines(text, orphan):
        name, value = _alias_name(logical)
        if name is None:
            problems.append((start, "expected 'name: value, ...'"))
            continue
        targets = tuple(t for t in _alias_values(value) if t)
        if not targets:
            problems.append((start, f"{name}: no value"))
            continue
        entries.append(AliasEntry(start, name, targets))
    return entries, problems


def _alias_name(line: str) -> tuple[str | None, str]:
    if line.startswith('"'):
        end = line.find('"', 1)
        if end < 0 or line[end + 1:end + 2] != ":":
            return None, ""
        return line[1:end], line[end + 2:]
    name, colon, value = line.partition(":")
    if not colon or not name.strip() or any(c in name for c in " \t,"):
        return None, ""
    return name.strip(), value


def _alias_values(value: str) -> Iterator[str]:
    """Comma-separated values; a double-quoted value may contain commas and blanks."""
    item: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
            item.append(char)
        elif char == "," and not quoted:
            yield "".join(item).strip()
            item = []
        else:
            item.append(char)
    yield "".join(item).strip()
