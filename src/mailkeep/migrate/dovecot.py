"""Dovecot's side of a migration: dovecot.conf, passwd-files, mail_location and Maildirs.

dovecot.conf (Dovecot "Config file syntax"): ``key = value`` lines, ``section [name] {``
... ``}`` blocks, ``!include`` / ``!include_try`` (globs, relative to the including file),
``#`` comments outside quotes, a trailing backslash continues a line, ``%%`` is a percent
sign. The migration needs a handful of settings (``DovecotConf``): mail_location, the
passdb/userdb passwd-files and their override fields, auth_mechanisms, protocols, the
special-use mailboxes of the namespaces, quota rules and the TLS files.

mail_location (Dovecot "Mail location"): ``FORMAT:PATH[:KEY=VALUE]...``, with ``%u``
(user), ``%n`` (local part), ``%d`` (domain), ``%h`` or a leading ``~`` (home) and the
``L``/``U`` case modifiers. Only Maildir is read; mbox, sdbox and mdbox are reported with
the ``doveadm`` command that converts them.

Maildir layouts: Maildir++ (the default: ``.Sent``, ``.Archive.2024``, each level in
modified UTF-7, see ``mailkeep.store.maildir``) and ``LAYOUT=fs`` (``Sent/``,
``Archive/2024/``); ``UTF-8`` means folder names are stored as UTF-8 instead of modified
UTF-7. Without an explicit LAYOUT the layout is recognised from the directories.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.auth.passwd_file import MAX_PASSWD_FILE_BYTES, PasswdEntry, parse_passwd_text
from mailkeep.migrate.sources import MigrateError, OutsideRoot, SourceTree
from mailkeep.store import mutf7
from mailkeep.store.api import INBOX, SEPARATOR, SPECIAL_USES
from mailkeep.store.maildir import folder_to_mailbox

#: How deep !include may nest, and how many files one configuration may pull in.
MAX_INCLUDE_DEPTH = 16
MAX_INCLUDED_FILES = 500
#: How deep sections may nest.
MAX_SECTION_DEPTH = 32
#: Folders of one Maildir, and directory levels below its root (LAYOUT=fs).
MAX_FOLDERS = 10_000
MAX_FOLDER_DEPTH = 32
#: Names under a Maildir root that are not folders.
_MAILDIR_PARTS = frozenset({"cur", "new", "tmp"})


@dataclass
class Section:
    """One block of dovecot.conf: ``passdb { ... }``, ``namespace inbox { ... }``, ..."""

    kind: str
    name: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    children: list[Section] = field(default_factory=list)
    #: Where the block starts, for messages ("dovecot.conf:12").
    where: str = ""

    def sections(self, kind: str) -> list[Section]:
        return [child for child in self.children if child.kind == kind]


def parse_dovecot_conf(path: Path, tree: SourceTree) -> Section:
    """Parse a dovecot.conf (with its includes) into a tree of sections."""
    root = Section("", where=str(path))
    stack = [root]
    seen: list[int] = [0]
    _parse_file(path, tree, stack, seen, depth=0, required=True)
    if len(stack) > 1:
        raise MigrateError(f"{path}: the section opened at {stack[-1].where} is not closed "
                           "with '}'")
    return root


def _parse_file(path: Path, tree: SourceTree, stack: list[Section], seen: list[int], *,
                depth: int, required: bool) -> None:
    if depth > MAX_INCLUDE_DEPTH:
        raise MigrateError(f"{path}: !include nests more than {MAX_INCLUDE_DEPTH} levels")
    seen[0] += 1
    if seen[0] > MAX_INCLUDED_FILES:
        raise MigrateError(f"{path}: more than {MAX_INCLUDED_FILES} included files")
    try:
        text = tree.read_text(path, what="the Dovecot configuration file")
    except MigrateError:
        if required:
            raise
        return
    for number, line in _logical_lines(text):
        where = f"{path}:{number}"
        if line.startswith("!include"):
            command, _, argument = line.partition(" ")
            if command not in ("!include", "!include_try"):
                raise MigrateError(f"{where}: unknown directive {command}")
            try:
                pattern = str(tree.path(_unquote(argument.strip()), relative_to=path.parent))
                matches = sorted(glob.glob(pattern))
                if not matches and command == "!include":
                    raise MigrateError(f"{where}: !include {argument.strip()}: no such file")
                # A match may be a symbolic link: it must stay below --root too.
                included_files = [tree.confine(Path(m)) for m in matches]
            except OutsideRoot as exc:
                raise MigrateError(f"{where}: {line}: {exc}") from None
            for included in included_files:
                _parse_file(included, tree, stack, seen, depth=depth + 1,
                            required=command == "!include")
            continue
        if line == "}":
            if len(stack) == 1:
                raise MigrateError(f"{where}: '}}' without an open section")
            stack.pop()
            continue
        if line.endswith("{"):
            header = line[:-1].strip().split(None, 1)
            if not header:
                raise MigrateError(f"{where}: a section needs a name before '{{'")
            section = Section(header[0], _unquote(header[1]) if len(header) > 1 else "",
                              where=where)
            stack[-1].children.append(section)
            stack.append(section)
            if len(stack) > MAX_SECTION_DEPTH:
                raise MigrateError(f"{where}: sections nest more than {MAX_SECTION_DEPTH} deep")
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            raise MigrateError(f"{where}: expected 'key = value', found {line[:60]!r}")
        stack[-1].settings[key.strip()] = _unquote(value.strip()).replace("%%", "%") \
            if not value.strip().startswith("<") else value.strip()


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, text) with comments removed and backslash continuations joined."""
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if pending:
            line = pending + " " + line
        else:
            start = number
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = ""
        if line:
            yield start, line
    if pending:
        yield start, pending


def _strip_comment(line: str) -> str:
    """The line without its ``#`` comment (a ``#`` inside quotes is kept)."""
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif quote:
            if char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:index]
    return line


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


# --- the settings the migration uses ------------------------------------------------------


@dataclass(frozen=True)
class AuthDatabase:
    """A passdb or userdb block: its driver and arguments."""

    kind: str  # "passdb" or "userdb"
    driver: str
    args: str
    where: str
    #: userdb override_fields / default_fields (key=value), e.g. home=/var/mail/%d/%n.
    fields: dict[str, str] = field(default_factory=dict)

    def passwd_file(self) -> tuple[str, dict[str, str]] | None:
        """(path, options) of a passwd-file database; None for other drivers.

        Dovecot: ``args = [scheme=X] [username_format=%u] PATH``.
        """
        if self.driver != "passwd-file":
            return None
        options: dict[str, str] = {}
        path = ""
        for word in self.args.split():
            key, eq, value = word.partition("=")
            if eq and not word.startswith("/"):
                options[key] = value
            else:
                path = word
        return (path, options) if path else None


@dataclass(frozen=True)
class DovecotConf:
    """What the migration takes from a dovecot.conf."""

    path: Path
    settings: dict[str, str]
    passdbs: tuple[AuthDatabase, ...]
    userdbs: tuple[AuthDatabase, ...]
    #: Mailbox name -> special use (\\Sent, ...), from the namespaces' mailbox blocks.
    special_use: dict[str, str]
    #: plugin { } settings (quota_rule, quota_grace, sieve, ...).
    plugin: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.settings.get(name, default)


def load_dovecot_conf(path: Path, tree: SourceTree) -> DovecotConf:
    root = parse_dovecot_conf(path, tree)
    databases: dict[str, list[AuthDatabase]] = {"passdb": [], "userdb": []}
    for kind, found in databases.items():
        for section in _walk(root, kind):
            fields: dict[str, str] = {}
            for name in ("default_fields", "override_fields"):
                for item in section.settings.get(name, "").split():
                    key, eq, value = item.partition("=")
                    if eq:
                        fields[key] = value
            found.append(AuthDatabase(kind, section.settings.get("driver", section.name),
                                      section.settings.get("args", ""), section.where, fields))
    special: dict[str, str] = {}
    for namespace in _walk(root, "namespace"):
        for mailbox in namespace.sections("mailbox"):
            use = mailbox.settings.get("special_use", "").split()
            known = [u for u in use if u.lower() in {s.lower() for s in SPECIAL_USES}]
            if known:
                canonical = {s.lower(): s for s in SPECIAL_USES}[known[0].lower()]
                special[mailbox.name] = canonical
    plugin: dict[str, str] = {}
    for section in _walk(root, "plugin"):
        plugin.update(section.settings)
    return DovecotConf(path, dict(root.settings), tuple(databases["passdb"]),
                       tuple(databases["userdb"]), special, plugin)


def _walk(section: Section, kind: str) -> Iterator[Section]:
    """Blocks of ``kind`` anywhere (passdb may sit inside protocol or auth blocks)."""
    for child in section.children:
        if child.kind == kind:
            yield child
        yield from _walk(child, kind)


# --- passwd-files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PasswdSource:
    """A passwd-file to read users (and hashes) from."""

    path: Path
    #: Dovecot's default scheme for hashes without {SCHEME} (passdb ``scheme=``).
    default_scheme: str = "CRYPT"
    #: Where it was named ("--dovecot-passwd", "dovecot.conf:12").
    origin: str = ""


def read_passwd_source(source: PasswdSource, tree: SourceTree
                       ) -> tuple[list[PasswdEntry], list[tuple[int, str]]]:
    """Entries of a passwd-file (hashes given their default scheme) and bad lines."""
    text = tree.read_text(source.path, what="the passwd-file",
                          limit=MAX_PASSWD_FILE_BYTES)
    entries, problems = parse_passwd_text(text)
    if source.default_scheme.upper() != "CRYPT":
        prefix = "{" + source.default_scheme.upper() + "}"
        entries = [e if not e.hash or e.hash.startswith("{")
                   else PasswdEntry(e.user, prefix + e.hash, e.uid, e.gid, e.gecos, e.home,
                                    e.shell, e.extra)
                   for e in entries]
    return entries, problems


# --- mail_location ---------------------------------------------------------------------------

_VARIABLE = re.compile(r"%(?P<mods>[LU]?)(?:\{(?P<long>[a-z_]+)\}|(?P<short>[a-zA-Z%]))")
_LONG_NAMES = {"user": "u", "username": "n", "domain": "d", "home": "h"}


@dataclass(frozen=True)
class MailLocation:
    """A parsed mail_location: ``maildir:~/Maildir:LAYOUT=fs``."""

    text: str
    format: str
    path: str
    options: dict[str, str]

    @property
    def layout(self) -> str | None:
        layout = self.options.get("LAYOUT")
        return layout.lower() if layout else None

    @property
    def utf8(self) -> bool:
        return "UTF-8" in self.options


class UnusableMailLocation(MigrateError):
    """A mail_location the migration cannot read mail from (message: why, what to do)."""


def parse_mail_location(text: str) -> MailLocation:
    """Parse ``FORMAT:PATH[:KEY=VALUE...]``; a bare path is Maildir when it says so."""
    text = text.strip()
    if not text:
        raise UnusableMailLocation("mail_location is empty")
    head, colon, rest = text.partition(":")
    if colon and head in ("maildir", "mbox", "sdbox", "mdbox", "dbox", "imapc", "pop3c",
                          "obox", "cydir", "raw", "shared", "fail", "virtual"):
        fmt = head
    else:
        fmt, rest = "", text
    parts = rest.split(":")
    options: dict[str, str] = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        options[key.upper() if eq else part.upper()] = value if eq else ""
    return MailLocation(text, fmt, parts[0], options)


def expand_mail_path(template: str, user: str, home: str | None) -> str:
    """Expand Dovecot's %variables (and a leading ~) for ``user``.

    Raises UnusableMailLocation for a variable the migration does not know, or a home
    directory that is needed but unknown.
    """
    local, _, domain = user.rpartition("@") if "@" in user else (user, "", "")
    values = {"u": user, "n": local, "d": domain, "%": "%"}

    def replace(match: re.Match[str]) -> str:
        name = match.group("short") or _LONG_NAMES.get(match.group("long") or "", "")
        if name == "h":
            if not home:
                raise UnusableMailLocation(f"{template!r} needs the home directory (%h) of "
                                           f"{user}, and none is known")
            value = home
        elif name in values:
            value = values[name]
        else:
            raise UnusableMailLocation(f"{template!r}: the variable {match.group(0)} is not "
                                       "supported by the migration; give --mail-location "
                                       "with %u, %n, %d or %h")
        mods = match.group("mods")
        return value.lower() if mods == "L" else value.upper() if mods == "U" else value

    expanded = _VARIABLE.sub(replace, template)
    if expanded == "~" or expanded.startswith("~/"):
        if not home:
            raise UnusableMailLocation(f"{template!r} is relative to the home directory of "
                                       f"{user}, and none is known")
        expanded = home.rstrip("/") + expanded[1:]
    return expanded


def unsupported_format_hint(location: MailLocation) -> str:
    """Why a non-Maildir format is not read, and the command that converts it."""
    if location.format in ("sdbox", "mdbox", "dbox", "mbox"):
        return (f"{location.format} is not read by the migration; convert each user to "
                f"Maildir on the old server first: doveadm backup -u USER "
                f"'maildir:~/Maildir-export:LAYOUT=fs', then migrate with --mail-location "
                f"'maildir:~/Maildir-export:LAYOUT=fs' (or import mbox files with "
                f"'mailkeep import --format mbox')")
    return f"{location.format or 'this'} mail storage is not read by the migration"


# --- Maildirs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Maildir:
    """A user's Maildir: its folders as (mailbox name, directory), INBOX first."""

    root: Path
    layout: str  # "maildir++" or "fs"
    folders: tuple[tuple[str, Path], ...]

    def message_count(self) -> int:
        return sum(count_folder_messages(path) for _, path in self.folders)


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() or (path / "new").is_dir()


def find_maildir(path: Path) -> Path | None:
    """``path`` if it is a Maildir, else ``path/Maildir`` if that is one, else None."""
    if is_maildir(path):
        return path
    nested = path / "Maildir"
    if is_maildir(nested):
        return nested
    return None


def detect_layout(root: Path) -> str:
    """"maildir++" when dot-folders exist (or nothing but INBOX), "fs" for plain folders."""
    dotted = plain = False
    for entry in _subdirectories(root):
        if entry.name.startswith("."):
            dotted = dotted or is_maildir(Path(entry.path))
        elif entry.name not in _MAILDIR_PARTS and _holds_maildir(Path(entry.path)):
            plain = True
    return "fs" if plain and not dotted else "maildir++"


def _holds_maildir(path: Path, depth: int = 0) -> bool:
    if is_maildir(path):
        return True
    if depth >= 3:
        return False
    return any(_holds_maildir(Path(e.path), depth + 1) for e in _subdirectories(path)
               if not e.name.startswith(".") and e.name not in _MAILDIR_PARTS)


def _subdirectories(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return sorted((e for e in entries if e.is_dir(follow_symlinks=False)),
                          key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def maildir_folders(root: Path, layout: str, *, utf8: bool = False,
                    inbox: Path | None = None) -> Maildir:
    """The folders of the Maildir at ``root`` in ``layout`` ("maildir++" or "fs")."""
    if layout not in ("maildir++", "fs"):
        raise UnusableMailLocation(f"LAYOUT={layout} is not supported by the migration "
                                   "(Maildir++ and fs are)")
    folders: list[tuple[str, Path]] = []
    inbox_dir = inbox if inbox is not None else root
    if is_maildir(inbox_dir):
        folders.append((INBOX, inbox_dir))
    if layout == "maildir++":
        for entry in _subdirectories(root):
            path = Path(entry.path)
            if not entry.name.startswith(".") or entry.name in (".", "..") \
                    or not is_maildir(path):
                continue
            if utf8:
                name = SEPARATOR.join(level or "_" for level in entry.name[1:].split("."))
            else:
                name = folder_to_mailbox(entry.name)
            folders.append((name, path))
            _check_folder_count(root, folders)
    else:
        for levels, path in _fs_folders(root, []):
            decoded = [level if utf8 else _decode_level(level) for level in levels]
            folders.append((SEPARATOR.join(decoded), path))
            _check_folder_count(root, folders)
    inbox_first = [f for f in folders if f[0] == INBOX] + [f for f in folders if f[0] != INBOX]
    return Maildir(root, layout, tuple(inbox_first))


def _check_folder_count(root: Path, folders: list[tuple[str, Path]]) -> None:
    if len(folders) > MAX_FOLDERS:
        raise MigrateError(f"{root} has more than {MAX_FOLDERS} folders; is it a Maildir?")


def _fs_folders(path: Path, levels: list[str]) -> Iterator[tuple[list[str], Path]]:
    if len(levels) >= MAX_FOLDER_DEPTH:
        return
    for entry in _subdirectories(path):
        if entry.name.startswith(".") or (entry.name in _MAILDIR_PARTS and is_maildir(path)):
            continue
        child = Path(entry.path)
        if is_maildir(child):
            yield [*levels, entry.name], child
        yield from _fs_folders(child, [*levels, entry.name])


def _decode_level(level: str) -> str:
    try:
        text = mutf7.decode(level, strict=False)
    except ValueError:
        text = level
    return "".join("_" if c in "*%" or ord(c) < 0x20 or ord(c) == 0x7F else c for c in text) \
        or "_"


def count_folder_messages(folder: Path) -> int:
    """Message files in a folder's cur/ and new/ (what an import reads)."""
    total = 0
    for sub in ("cur", "new"):
        try:
            with os.scandir(folder / sub) as entries:
                total += sum(1 for e in entries
                             if not e.name.startswith(".") and e.is_file(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total
