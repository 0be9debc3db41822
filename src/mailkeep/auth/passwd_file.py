"""The password store: ``data_dir/passwd`` in Dovecot passwd-file format.

One line per user: ``user:password:uid:gid:gecos:home:shell:extra_fields`` (Dovecot
"Passwd-file" documentation). Mailkeep writes ``user:{ARGON2ID}...::::::`` - the system
fields stay empty because accounts are virtual - and keeps everything it does not
understand: comment lines, unknown extra fields (SCRAM verifiers and the CRAM-MD5 state
sit there next to the hash, see ``mailkeep.sasl.credentials``), even lines it cannot
parse. The file can be read by Dovecot tooling and imported from it.

Writers take an exclusive ``fcntl.flock`` on ``passwd.lock``, re-read the file, change it
and replace it atomically (``mailkeep.durable``) with mode 0600, so concurrent ``mailkeep
account passwd`` runs cannot lose each other's changes and readers never see half a file.
Readers (the server) notice a changed file by its inode, size and mtime and re-read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mailkeep.durable import atomic_write_bytes

log = logging.getLogger("mailkeep.auth")

# The file is refused beyond this size (a million accounts fit in far less), and a line
# beyond this length is kept but not parsed.
MAX_PASSWD_FILE_BYTES = 256 * 1024 * 1024
MAX_PASSWD_LINE_BYTES = 64 * 1024
PASSWD_FILE_MODE = 0o600
_FIELDS = 7  # user, password, uid, gid, gecos, home, shell; extra_fields is the rest


class PasswdFileError(OSError):
    """The passwd file cannot be read or written; the message says which and why."""


@dataclass(frozen=True)
class PasswdEntry:
    """One user line: ``hash`` is the password field (``{SCHEME}value``, may be empty);
    ``extra`` holds the extra fields verbatim (space-separated key=value)."""

    user: str
    hash: str
    uid: str = ""
    gid: str = ""
    gecos: str = ""
    home: str = ""
    shell: str = ""
    extra: str = ""

    def to_line(self) -> str:
        fields = (self.user, self.hash, self.uid, self.gid, self.gecos, self.home,
                  self.shell, self.extra)
        return ":".join(fields)

    def extra_fields(self) -> dict[str, str]:
        """The extra fields as a dict (a field without "=" has the value "")."""
        result: dict[str, str] = {}
        for item in self.extra.split():
            key, _, value = item.partition("=")
            result.setdefault(key, value)
        return result


def parse_passwd_line(line: str) -> PasswdEntry | None:
    """One line of a passwd-file: an entry, or None for a blank or comment line.

    Missing trailing fields are empty (Dovecot accepts ``user:password``). Raises ValueError
    for a line without a user name or longer than MAX_PASSWD_LINE_BYTES.
    """
    line = line.rstrip("\r\n")
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    if len(line.encode("utf-8", "surrogateescape")) > MAX_PASSWD_LINE_BYTES:
        raise ValueError(f"line longer than {MAX_PASSWD_LINE_BYTES} bytes")
    parts = line.split(":", _FIELDS)
    if not parts[0]:
        raise ValueError("the user name is empty")
    parts += [""] * (_FIELDS + 1 - len(parts))
    return PasswdEntry(*parts)


def parse_passwd_text(text: str) -> tuple[list[PasswdEntry], list[tuple[int, str]]]:
    """All entries of a passwd-file, and (line number, problem) for lines that are not."""
    entries: list[PasswdEntry] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            entry = parse_passwd_line(line)
        except ValueError as exc:
            problems.append((number, str(exc)))
            continue
        if entry is not None:
            entries.append(entry)
    return entries, problems


def _check_field(name: str, value: str, *, allow_colon: bool = False) -> None:
    bad = "\r\n\0" if allow_colon else ":\r\n\0"
    if any(ch in bad for ch in value):
        raise ValueError(f"the {name} cannot contain a colon, a line break or a NUL")


def _check_changes(changes: Mapping[str, tuple[str, str | None] | None]) -> None:
    for user, change in changes.items():
        _check_field("user name", user)
        if not user or user.lstrip().startswith("#"):
            raise ValueError("a user name cannot be empty or start with #")
        if change is not None:
            _check_field("password hash", change[0])
            if change[1] is not None:
                _check_field("extra fields", change[1], allow_colon=True)


class PasswdFile:
    """Read and change a passwd-file. Thread-safe; safe against concurrent processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._mutex = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._lines: list[str] = []
        self._entries: dict[str, PasswdEntry] = {}
        self._problems: list[tuple[int, str]] = []

    # -- reading ------------------------------------------------------------------------

    def get(self, user: str) -> PasswdEntry | None:
        """The entry of ``user`` (exact match, as stored), or None."""
        with self._mutex:
            self._refresh()
            return self._entries.get(user)

    def entries(self) -> list[PasswdEntry]:
        """Every entry, in file order (the first line wins for a duplicated user)."""
        with self._mutex:
            self._refresh()
            return list(self._entries.values())

    def problems(self) -> list[tuple[int, str]]:
        """Lines that could not be parsed or repeat a user: (line number, problem)."""
        with self._mutex:
            self._refresh()
            return list(self._problems)

    def __contains__(self, user: object) -> bool:
        return isinstance(user, str) and self.get(user) is not None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PasswdFileError(exc.errno, f"cannot read {self.path}: {exc.strerror}") from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self, force: bool = False) -> None:
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return
        if stamp is None:
            self._lines, self._entries, self._problems = [], {}, []
            self._stamp = None
            return
        if stamp[1] > MAX_PASSWD_FILE_BYTES:
            raise PasswdFileError(f"{self.path} is larger than {MAX_PASSWD_FILE_BYTES} bytes")
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read(MAX_PASSWD_FILE_BYTES + 1)
                stamp = self._fstat(handle.fileno())
        except FileNotFoundError:
            self._lines, self._entries, self._problems, self._stamp = [], {}, [], None
            return
        except OSError as exc:
            raise PasswdFileError(exc.errno, f"cannot read {self.path}: {exc.strerror}") from None
        self._lines = text.splitlines()
        self._entries, self._problems = {}, []
        for number, line in enumerate(self._lines, start=1):
            try:
                entry = parse_passwd_line(line)
            except ValueError as exc:
                self._problems.append((number, str(exc)))
                continue
            if entry is None:
                continue
            if entry.user in self._entries:
                self._problems.append((number, f"{entry.user!r} repeats an earlier line; "
                                       "the first one is used"))
                continue
            self._entries[entry.user] = entry
        if self._problems:
            log.warning("%s: %d line(s) cannot be used", self.path, len(self._problems))
        self._stamp = stamp

    @staticmethod
    def _fstat(fd: int) -> tuple[int, int, int]:
        st = os.fstat(fd)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    # -- writing ------------------------------------------------------------------------

    def set(self, user: str, password_hash: str, extra: str | None = None) -> None:
        """Create or replace the password of ``user``.

        ``extra`` replaces the extra fields; None keeps the existing ones (so that fields
        written by other parts of Mailkeep survive a password change).
        """
        self.update({user: (password_hash, extra)})

    def remove(self, user: str) -> bool:
        """Delete ``user`` (every line of it); False if there was none."""
        with self._mutex:
            self._refresh()
            present = user in self._entries
        if present:
            self.update({user: None})
        return present

    def update(self, changes: Mapping[str, tuple[str, str | None] | None]) -> None:
        """Apply several changes in one rewrite: user -> (hash, extra) to set, None to remove."""
        _check_changes(changes)
        if all(change is None for change in changes.values()):
            # Only removals: nothing to do (and no file or directory to create) when none of
            # the users is present.
            with self._mutex:
                self._refresh()
                if not any(user in self._entries for user in changes):
                    return
        with self._mutex, self._locked():
            self._refresh(force=True)
            self._apply(changes)

    def modify(self, user: str,
               change: Callable[[PasswdEntry | None], tuple[str, str] | None]) -> bool:
        """Read-modify-write one user under the file lock; True if the file was rewritten.

        ``change`` gets the current entry (None if there is none) as it is on disk while
        the lock is held, and returns ``(hash, extra)`` to store or None to leave the file
        alone. A compare-and-set: the login code upgrades a hash only if it is still the
        one it verified, and merges its extra fields into whatever is there now.
        """
        _check_changes({user: ("", None)})
        with self._mutex, self._locked():
            self._refresh(force=True)
            result = change(self._entries.get(user))
            if result is None:
                return False
            _check_changes({user: result})
            self._apply({user: result})
            return True

    def _apply(self, changes: Mapping[str, tuple[str, str | None] | None]) -> None:
        """Rewrite the file with ``changes``; the caller holds the mutex and the file lock."""
        lines = list(self._lines)
        done: set[str] = set()
        out: list[str] = []
        for line in lines:
            try:
                entry = parse_passwd_line(line)
            except ValueError:
                entry = None
            if entry is None or entry.user not in changes:
                out.append(line)
                continue
            change = changes[entry.user]
            if change is None or entry.user in done:
                continue  # removed, or a duplicate line of a user we just rewrote
            password_hash, extra = change
            out.append(replace(entry, hash=password_hash,
                               extra=entry.extra if extra is None else extra).to_line())
            done.add(entry.user)
        for user, change in changes.items():
            if change is not None and user not in done:
                out.append(PasswdEntry(user, change[0], extra=change[1] or "").to_line())
        self._write(out)
        self._refresh(force=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, PASSWD_FILE_MODE)
        try:
            if os.geteuid() == 0:
                # root (the CLI) must not leave a lock file the server's user cannot open.
                parent = os.stat(self.path.parent)
                if os.fstat(fd).st_uid != parent.st_uid:
                    os.fchown(fd, parent.st_uid, parent.st_gid)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, lines: list[str]) -> None:
        try:
            previous = os.stat(self.path)
            owner: tuple[int, int] | None = (previous.st_uid, previous.st_gid)
        except FileNotFoundError:
            # A new file belongs to whoever owns the data directory (the server's user).
            parent = os.stat(self.path.parent)
            owner = (parent.st_uid, parent.st_gid)
        # Lines we could not decode are written back byte for byte (surrogateescape).
        data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
        atomic_write_bytes(self.path, data, mode=PASSWD_FILE_MODE)
        if owner is not None and os.geteuid() == 0:
            current = os.stat(self.path)
            if (current.st_uid, current.st_gid) != owner:
                os.chown(self.path, *owner)
