"""Online, consistent backups of a data directory, verified restores from them
(``mailkeep backup``, ``mailkeep restore``; docs/backup.md).

A backup is one directory, complete once it has its final name::

    DEST/mailkeep-20250102T030405Z/
        manifest.json   format, versions, host, time, counts; and for every file its path,
                        size, mode and SHA-256
        data/...        the data directory: databases, message files, keys, certificates
        config/<name>   the configuration file, when known

It is written under a temporary name (``.mailkeep-….partial-…``) and renamed at the very
end, after everything in it is durable: a backup that crashed never looks complete, and the
next run removes what it left.

**Consistency while the server runs.** Every SQLite database is copied with SQLite's
online backup API in a single step, which reads the whole database inside one read
transaction: the copy is the database as of one commit, however many writers commit
meanwhile (WAL: they never wait for us). The message files are the other half of the
store and of the outbound queue, and two properties of those make a copy of them match
the copied databases exactly:

* a message file is written under a new name and never modified once a committed row
  names it (store/files.py, queue/store.py), so copying it later gives the committed bytes;
* a file is removed only after the commit that dropped its last row, and only with the
  data's *pin lock* held exclusively (``store/pin.lock``: the store's janitor and recovery;
  ``queue/pin.lock``: the queue's unlinker and recovery).

The backup takes both pin locks *shared* before it copies the two databases and keeps
them until it has copied every file the copies name. A file removed before the pin was
taken had already lost its row, so the copied database does not name it; a file named by
the copied database cannot be removed until the backup lets go. Removals simply wait (the
store retries within 30 s, the queue's unlinker polls). Files no copied row names (spare
files, deliveries in progress, a crashed writer's leftovers) are not copied at all.

Not copied: the full-text index (``fts/``, a cache rebuilt from the store), the incoming
spool (``spool/``, SMTP transactions in progress that no client was told were accepted),
the pid file, lock files, SQLite's ``-wal``/``-shm`` files (their committed content is in
the copied database), sockets, and symbolic links (never followed: a link planted in the
data directory must not make root copy a file from elsewhere).

Restore checks every checksum before it writes anything, copies into a temporary directory
beside the target, opens the restored store and queue once (their recovery runs, and the
counts must match the manifest; every message file must be there with its size), makes
everything durable and only then renames the directory into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mailkeep import __version__
from mailkeep.durable import atomic_write_bytes, fsync_dir, write_all
from mailkeep.logfmt import log
from mailkeep.store import files as msgfiles

logger = logging.getLogger("mailkeep.backup")

FORMAT = "mailkeep-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Where the data directory and the configuration file go inside a backup.
DATA = "data"
CONFIG = "config"
#: Largest manifest read (about 6 million files); a bigger one is not ours.
MAX_MANIFEST_BYTES = 1 << 30
#: Longest relative path accepted from a manifest.
MAX_PATH_CHARS = 4096
#: How long the backup waits for a pin lock that a removal holds (seconds); removals hold
#: it for one batch of unlinks, so this is only ever reached when something is stuck.
PIN_TIMEOUT_SECONDS = 60.0
#: How long copying a database waits for SQLite locks (a checkpoint in progress).
BUSY_TIMEOUT_SECONDS = 60.0
_CHUNK = 1 << 20
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SIDECARS = ("-wal", "-shm", "-journal")
_NAME_FORMAT = "mailkeep-%Y%m%dT%H%M%SZ"
_BACKUP_NAME = re.compile(r"^mailkeep-\d{8}T\d{6}Z(?:-\d+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: The most permission a file, a directory and the configuration file get from a backup:
#: a manifest is data (a backup may come from anywhere, and restore runs as root), so a
#: recorded mode is masked, never applied as is. The server itself makes its files 0600 and
#: its directories 0700 (store/files.py), the data directory 0750 and the configuration
#: 0640 (quickstart.py). Never setuid or setgid, nor writable by group or others, except:
MAX_FILE_MODE = 0o640
MAX_DIR_MODE = 0o750
MAX_CONFIG_MODE = 0o640
#: the two directories local users reach, as the queue makes them: queue/ 0711
#: (queue/store.py QUEUE_DIR_MODE) and the drop box queue/maildrop/ 1733, sticky
#: (queue/maildrop.py MAILDROP_MODE).
_DIR_MODE_LIMITS = {"data/queue": MAX_DIR_MODE | 0o711, "data/queue/maildrop": 0o1733}

#: What a file of a backup is (FileEntry.kind).
KINDS = ("database", "message", "queued", "file", "config")

STORE_DB = "store/mailkeep.sqlite3"
STORE_PIN = "store/pin.lock"
STORE_ACCOUNTS = "store/accounts"
QUEUE_DB = "queue/queue.db"
QUEUE_PIN = "queue/pin.lock"
QUEUE_MESSAGES = "queue/messages"
MAILDROP = "queue/maildrop"
#: Directories of the data directory that are not backed up, and why (docs/backup.md).
EXCLUDED_DIRS = {
    "fts": "full-text index, rebuilt from the store",
    "spool": "SMTP transactions in progress",
    "store/writers": "lock files of running processes",
    "queue/tmp": "partial writes",
}
EXCLUDED_FILES = {
    "mailkeep.pid": "process id of the running server",
    STORE_PIN: "lock file",
    QUEUE_PIN: "lock file",
}


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


class CorruptBackup(BackupError):
    """A backup whose files do not match its manifest (or that has no valid manifest)."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{path} is damaged: {shown}{more}")


class ProgressLike(Protocol):
    """What the copy loops report to (``mailkeep.progress.Progress`` in the CLI)."""

    def set_total(self, total: int | None) -> None: ...

    def update(self, advance: int = 1, *, note: str | None = None) -> None: ...

    def close(self) -> None: ...


class _NoProgress:
    def set_total(self, total: int | None) -> None:
        pass

    def update(self, advance: int = 1, *, note: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def _no_progress(label: str) -> ProgressLike:
    return _NoProgress()


# -- the manifest --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a backup: ``path`` is relative to the backup directory ("/"-separated)."""

    path: str
    size: int
    sha256: str
    mode: int
    #: "database", "message" (store), "queued" (outbound queue), "file", "config"
    kind: str


@dataclass(frozen=True, slots=True)
class DirEntry:
    path: str
    mode: int


@dataclass
class Manifest:
    created: str
    hostname: str
    data_dir: str
    config_path: str | None = None
    mailkeep_version: str = __version__
    format_version: int = FORMAT_VERSION
    #: accounts, mailboxes, messages, message_files, queue_entries (from the copied databases)
    counts: dict[str, int] = field(default_factory=dict)
    files: list[FileEntry] = field(default_factory=list)
    dirs: list[DirEntry] = field(default_factory=list)
    #: What was left out of the data directory, with the reason.
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def config_entry(self) -> FileEntry | None:
        return next((f for f in self.files if f.kind == "config"), None)

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "format_version": self.format_version,
            "mailkeep_version": self.mailkeep_version,
            "hostname": self.hostname,
            "created": self.created,
            "data_dir": self.data_dir,
            "config_path": self.config_path,
            "counts": self.counts,
            "excluded": self.excluded,
            "dirs": [dataclasses.asdict(d) for d in self.dirs],
            "files": [dataclasses.asdict(f) for f in self.files],
        }
        return (json.dumps(body, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and check a manifest; raises ValueError saying what is wrong."""
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ValueError("not a Mailkeep backup manifest")
        version = body.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise ValueError("no valid format_version")
        if version > FORMAT_VERSION:
            raise ValueError(f"written by a newer Mailkeep (format {version}, this version "
                             f"reads {FORMAT_VERSION}); restore with that version or newer")
        try:
            files = [FileEntry(**_fields(f, FileEntry)) for f in body["files"]]
            dirs = [DirEntry(**_fields(d, DirEntry)) for d in body["dirs"]]
            manifest = cls(
                created=_typed(body["created"], str), hostname=_typed(body["hostname"], str),
                data_dir=_typed(body["data_dir"], str),
                config_path=_typed(body.get("config_path"), str, optional=True),
                mailkeep_version=_typed(body["mailkeep_version"], str),
                format_version=version,
                counts={_typed(k, str): _typed(v, int)
                        for k, v in _typed(body["counts"], dict).items()},
                files=files, dirs=dirs,
                excluded={_typed(k, str): _typed(v, str)
                          for k, v in _typed(body.get("excluded", {}), dict).items()})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or malformed field ({exc})") from None
        seen: set[str] = set()
        for f in files:
            _check_relative(f.path, (CONFIG,) if f.kind == "config" else (DATA,))
            if f.kind not in KINDS:
                raise ValueError(f"unknown kind {f.kind!r} of {f.path!r}")
            if f.path in seen:
                raise ValueError(f"{f.path!r} is listed twice")
            seen.add(f.path)
            if f.size < 0 or not _SHA256.match(f.sha256) or not 0 <= f.mode <= 0o7777:
                raise ValueError(f"bad size, checksum or mode for {f.path!r}")
        for d in dirs:
            if d.path != DATA:
                _check_relative(d.path, (DATA,))
            if not 0 <= d.mode <= 0o7777:
                raise ValueError(f"bad mode for {d.path!r}")
        if sum(f.kind == "config" for f in files) > 1:
            raise ValueError("more than one configuration file")
        return manifest


def _dir_mode(path: str, mode: int) -> int:
    """The mode a directory of a backup (``path`` as in the manifest) records and restores
    with: ``mode`` masked (MAX_DIR_MODE, _DIR_MODE_LIMITS)."""
    return stat.S_IMODE(mode) & _DIR_MODE_LIMITS.get(path, MAX_DIR_MODE)


def _fields(value: Any, kind: type) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{kind.__name__} entry is not an object")
    names = {f.name: f.type for f in dataclasses.fields(kind)}
    if set(value) != set(names):
        raise TypeError(f"{kind.__name__} entry has fields {sorted(value)}")
    return {k: _typed(v, int if names[k] == "int" else str) for k, v in value.items()}


def _typed(value: Any, kind: type, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    # bool is an int in Python, never in a manifest.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{value!r} is not a {kind.__name__}")
    return value


def _check_relative(path: str, roots: tuple[str, ...]) -> None:
    """A manifest path must stay inside the backup (and the restore target)."""
    parts = path.split("/")
    if (len(path) > MAX_PATH_CHARS or "\x00" in path or "\\" in path
            or parts[0] not in roots or len(parts) < 2
            or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"unsafe path {path!r}")


def read_manifest(backup: Path) -> Manifest:
    """The manifest of the backup directory ``backup``; CorruptBackup if it has none or a
    damaged one, BackupError if ``backup`` is not a backup at all."""
    path = backup / MANIFEST
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if backup.is_dir():
            inside = list_backups(backup)
            if inside:
                raise BackupError(
                    f"{backup} holds backups but is not one; pick one, e.g. the newest: "
                    f"{inside[-1]}") from None
        raise BackupError(f"{backup} is not a Mailkeep backup (no {MANIFEST})") from None
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise CorruptBackup(backup, [f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes"])
    try:
        return Manifest.from_json(data)
    except ValueError as exc:
        raise CorruptBackup(backup, [f"{MANIFEST}: {exc}"]) from None


def list_backups(dest: Path) -> list[Path]:
    """Complete backups in ``dest``, oldest first (their names sort by time)."""
    try:
        entries = sorted(os.scandir(dest), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(e.path) for e in entries
            if _BACKUP_NAME.match(e.name) and e.is_dir(follow_symlinks=False)
            and os.path.isfile(os.path.join(e.path, MANIFEST))]


# -- copying -------------------------------------------------------------------------------


def _open_source(path: Path | str, *, dir_fd: int | None = None, follow: bool = False) -> int:
    """A descriptor on a regular file, not through a symbolic link unless ``follow``
    (O_NONBLOCK: a FIFO put there must not hang us)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd


class _SourceTree:
    """Opens files below the data directory one component at a time, never following a
    symbolic link: the data directory belongs to the server's user, and a link planted
    there (even as a directory in the middle of a path) must not make a backup run as root
    copy a file from elsewhere. The last directory stays open, as files are copied
    directory by directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dir: tuple[str, int] | None = None

    def open(self, rel: str) -> int:
        parent, _, name = rel.rpartition("/")
        return _open_source(name, dir_fd=self._dir_fd(parent))

    def _dir_fd(self, rel: str) -> int:
        if self._dir is not None and self._dir[0] == rel:
            return self._dir[1]
        self.close()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in rel.split("/") if rel else ():
                if part in ("", ".", ".."):
                    raise OSError(errno.EINVAL, f"unsafe path {rel!r}")
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._dir = (rel, fd)
        return fd

    def close(self) -> None:
        if self._dir is not None:
            os.close(self._dir[1])
            self._dir = None


def _copy_fd(src: int, dst_path: Path, progress: ProgressLike, *, limit: int | None = None,
             sync: bool = True) -> tuple[int, str]:
    """Copy ``src`` into the new file ``dst_path`` (mode 0600), hashing on the way; returns
    (size, SHA-256). At most ``limit`` + 1 bytes are read, so a caller that expects a size
    notices a longer file without reading all of it. The partial file goes on error."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        while limit is None or size <= limit:
            want = _CHUNK if limit is None else min(_CHUNK, limit + 1 - size)
            chunk = os.read(src, want)
            if not chunk:
                break
            digest.update(chunk)
            write_all(fd, chunk)
            size += len(chunk)
            progress.update(len(chunk))
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(dst_path)
        raise
    os.close(fd)
    return size, digest.hexdigest()


def _hash_file(path: Path) -> tuple[int, str]:
    return _hash_fd(_open_source(path))


def _hash_fd(fd: int) -> tuple[int, str]:
    """(size, SHA-256) of what ``fd`` reads; closes it."""
    try:
        digest = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def _is_sqlite(tree: _SourceTree, rel: str) -> bool:
    try:
        fd = tree.open(rel)
    except OSError:
        return False
    try:
        return os.read(fd, len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    finally:
        os.close(fd)


def _copy_database(source: Path, target: Path) -> None:
    """Copy a live SQLite database with the online backup API, in one step (one read
    transaction, so one consistent state), into a self-contained file (rollback journal
    mode: readable without -wal/-shm files, even from read-only media), and check it."""
    uri = "file:" + urllib.parse.quote(str(source)) + "?mode=rw"
    try:
        # Read-write but query-only: a read-only connection would leave -wal and -shm
        # files behind (owned by whoever runs the backup); this one removes them if it is
        # the last user, as every Mailkeep connection does.
        src = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS,
                              isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open the database {source}: {exc}") from None
    try:
        src.execute("PRAGMA query_only=ON")
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            src.backup(dst)  # pages=-1: everything in one step
            dst.execute("PRAGMA journal_mode=DELETE")
            check = dst.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the database {source}: {exc}") from None
    finally:
        src.close()
    if check != "ok":
        raise BackupError(f"the copy of {source} fails SQLite's check ({check}); the source "
                          "database may be damaged: see `sqlite3 {source} 'PRAGMA "
                          "integrity_check'`")
    os.chmod(target, 0o600)


@contextlib.contextmanager
def _pin(path: Path, timeout: float) -> Iterator[None]:
    """Hold a pin lock shared (see the module docstring); creates the lock file, owned
    like its directory, if the store or queue never ran with pins."""
    if not path.parent.is_dir():
        yield
        return
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _give_to_owner(path)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BackupError(f"{path} stayed locked for {timeout:.0f} s (a process "
                                      "removing files is stuck?); try again") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _give_to_owner(path: Path) -> None:
    """Run as root, leave a file we created in the data directory to its owner (the
    server's user), who must be able to open it."""
    if os.geteuid() != 0:
        return
    owner = path.parent.stat()
    info = path.lstat()
    if info.st_uid != owner.st_uid or info.st_gid != owner.st_gid:
        os.lchown(path, owner.st_uid, owner.st_gid)


def _sync_tree(root: Path, dirs: list[Path], *, files_synced: bool) -> None:
    """Make a freshly written tree durable: one syncfs(2) when available (files were
    written without fsync), else an fsync of every directory (files had theirs)."""
    if not files_synced:
        msgfiles.sync_filesystem(root)
        return
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)


# -- backup --------------------------------------------------------------------------------


@dataclass
class BackupReport:
    path: Path
    manifest: Manifest
    #: Files of the data directory that were not copied: (relative path, reason).
    skipped: list[tuple[str, str]] = field(default_factory=list)
    removed_old: list[Path] = field(default_factory=list)
    stale_removed: list[Path] = field(default_factory=list)


@dataclass
class _Survey:
    dirs: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _survey(data_dir: Path, tree: _SourceTree) -> _Survey:
    """What to copy: directories, databases and plain files (the message trees of the
    store and the queue are listed from their copied databases instead)."""
    found = _Survey()
    for top, dirnames, filenames in os.walk(data_dir):
        rel_top = os.path.relpath(top, data_dir)
        rel_top = "" if rel_top == "." else rel_top.replace(os.sep, "/")
        found.dirs.append(rel_top)
        keep = []
        for name in sorted(dirnames):
            rel = f"{rel_top}/{name}" if rel_top else name
            if os.path.islink(os.path.join(top, name)):
                found.skipped.append((rel, "symbolic link"))
            elif rel in EXCLUDED_DIRS:
                continue
            elif rel in (STORE_ACCOUNTS, QUEUE_MESSAGES):
                found.dirs.append(rel)  # contents come from the databases
            else:
                keep.append(name)
        dirnames[:] = keep
        names = set(filenames)
        for name in sorted(filenames):
            rel = f"{rel_top}/{name}" if rel_top else name
            path = Path(top, name)
            if rel in EXCLUDED_FILES:
                continue
            if any(name.endswith(s) and name[: -len(s)] in names for s in _SIDECARS):
                continue  # SQLite's; the copy of the database holds what they committed
            if rel_top == MAILDROP and name.startswith("."):
                continue  # a drop file still being written (queue/maildrop.py)
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                found.skipped.append((rel, "symbolic link"))
            elif not stat.S_ISREG(mode):
                if not stat.S_ISSOCK(mode):
                    found.skipped.append((rel, "not a regular file"))
            elif _is_sqlite(tree, rel):
                found.databases.append(rel)
            else:
                found.files.append(rel)
    return found


class _Writer:
    """Copies into the staging directory and records the manifest entries."""

    def __init__(self, data_dir: Path, staging: Path, progress: ProgressLike) -> None:
        self.data_dir = data_dir
        self.tree = _SourceTree(data_dir)
        self.staging = staging
        self.progress = progress
        self.skipped: list[tuple[str, str]] = []
        # With syncfs the whole tree is flushed once at the end; else each file now.
        self.sync_each = not msgfiles.can_sync_filesystem()
        self.files: list[FileEntry] = []
        self.dirs: list[DirEntry] = []
        self.made_dirs: list[Path] = [staging]

    def mkdir(self, rel: str, mode: int) -> None:
        target = self.staging / DATA / rel if rel else self.staging / DATA
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.made_dirs.append(target)
        path = f"{DATA}/{rel}" if rel else DATA
        self.dirs.append(DirEntry(path, _dir_mode(path, mode)))  # as restore will apply it

    def database(self, rel: str) -> Path:
        target = self.staging / DATA / rel
        # SQLite opens by name; make sure that name is a file of the data directory.
        os.close(self.tree.open(rel))
        _copy_database(self.data_dir / rel, target)
        size, digest = _hash_file(target)
        if self.sync_each:
            _fsync_file(target)
        mode = (self.data_dir / rel).stat().st_mode
        self.files.append(FileEntry(f"{DATA}/{rel}", size, digest,
                                    stat.S_IMODE(mode) & MAX_FILE_MODE, "database"))
        self.progress.update(size)
        return target

    def copy(self, rel: str, kind: str, *, expected_size: int | None = None,
             source: Path | None = None, vanish_ok: bool = False) -> bool:
        """Copy one file of the data directory (or ``source``, the configuration file);
        False if it vanished and ``vanish_ok``."""
        src_path = source if source is not None else self.data_dir / rel
        try:
            fd = _open_source(source, follow=True) if source else self.tree.open(rel)
        except FileNotFoundError:
            if vanish_ok:
                return False
            raise BackupError(f"{src_path} is missing, though the database copy names it; "
                              "something outside Mailkeep removed it (run the server once: "
                              "its recovery reports what is lost), then back up again"
                              ) from None
        try:
            mode = os.fstat(fd).st_mode
            prefix = DATA if kind != "config" else CONFIG
            target = self.staging / prefix / rel
            size, digest = _copy_fd(fd, target, self.progress, limit=expected_size,
                                    sync=self.sync_each)
        finally:
            os.close(fd)
        if expected_size is not None and size != expected_size:
            actual = f"{size}" if size < expected_size else f"more than {expected_size}"
            raise BackupError(f"{src_path} has {actual} bytes where the database says "
                              f"{expected_size}: it was changed or damaged outside Mailkeep")
        # Recorded as restore will apply it (MAX_FILE_MODE, MAX_CONFIG_MODE).
        limit = MAX_CONFIG_MODE if kind == "config" else MAX_FILE_MODE
        self.files.append(FileEntry(f"{prefix}/{rel}", size, digest, stat.S_IMODE(mode) & limit,
                                    kind))
        return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _reading(db: Path) -> Iterator[sqlite3.Connection]:
    """A query-only connection to a copied database. Read-write mode, so that it removes
    the -wal/-shm files it may create when it closes (a read-only one leaves them)."""
    conn = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=rw", uri=True,
                           isolation_level=None)
    try:
        conn.execute("PRAGMA query_only=ON")
        yield conn
    finally:
        conn.close()


# What the backup reads from the copied store database (schema: store/schema.py). Files are
# listed account by account (the files_by_name index: no sort), so that the directory of
# the previous file is still open for the next.
_STORE_COUNTS = {
    "accounts": "SELECT COUNT(*) FROM accounts",
    "mailboxes": "SELECT COUNT(*) FROM mailboxes",
    "messages": "SELECT COUNT(*) FROM messages",
    "message_files": "SELECT COUNT(*) FROM files",
}
_STORE_FILES = ("SELECT a.dir, f.name, f.size FROM files f JOIN accounts a"
                " ON a.id = f.account_id ORDER BY f.account_id, f.name")


def _store_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {key: conn.execute(sql).fetchone()[0] for key, sql in _STORE_COUNTS.items()}


def _store_account_dirs(conn: sqlite3.Connection) -> list[str]:
    return [f"{STORE_ACCOUNTS}/{_component(d)}"
            for (d,) in conn.execute("SELECT dir FROM accounts ORDER BY id")]


def _store_files(conn: sqlite3.Connection) -> Iterator[tuple[str, int]]:
    """Every message file (relative to the data directory) with its size."""
    for dir_name, name, size in conn.execute(_STORE_FILES):
        yield f"{STORE_ACCOUNTS}/{_component(dir_name)}/{_component(name)}", size


def _queue_files(conn: sqlite3.Connection) -> Iterator[tuple[str, int]]:
    """Every queued message's file (queue/store.py) with its size."""
    for queue_id, size in conn.execute("SELECT id, size FROM messages ORDER BY id"):
        yield f"{QUEUE_MESSAGES}/{_component(queue_id)}", size


def _total_size(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT COALESCE(SUM(size), 0) FROM {table}").fetchone()[0]


def _component(name: object) -> str:
    """A file or directory name read from a database: one plain path component."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name
            or "\x00" in name):
        raise BackupError(f"the database names a file {name!r}, which is not a plain file "
                          "name; refusing to follow it")
    return name


def create_backup(data_dir: Path, dest: Path, *, config_path: Path | None = None,
                  keep: int | None = None, progress: ProgressLike | None = None,
                  now: Callable[[], datetime.datetime] | None = None) -> BackupReport:
    """Back up ``data_dir`` (and the configuration file ``config_path``) into a new
    directory in ``dest``; with ``keep``, remove all but the ``keep`` newest backups there
    afterwards. Safe while the server runs. Raises BackupError."""
    progress = progress or _NoProgress()
    data_dir = Path(os.path.abspath(data_dir))
    dest = Path(os.path.abspath(dest))
    if keep is not None and keep < 1:
        raise BackupError("--keep must be at least 1 (the backup just made)")
    if not data_dir.is_dir():
        raise BackupError(f"the data directory {data_dir} does not exist")
    if dest.resolve().is_relative_to(data_dir.resolve()):
        raise BackupError(f"{dest} is inside the data directory {data_dir}; back up to "
                          "another place (ideally another disk or machine)")
    try:
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {dest}: {exc.strerror}") from None
    created = (now or (lambda: datetime.datetime.now(datetime.UTC)))()
    name = created.strftime(_NAME_FORMAT)
    stale = _remove_stale(dest, ".mailkeep-", ".partial-")
    staging = dest / f".{name}.partial-{secrets.token_hex(4)}"
    lock = _make_staging(staging)
    writer = _Writer(data_dir, staging, progress)
    try:
        manifest = _fill_backup(writer, data_dir, config_path, created)
        skipped = writer.skipped
        manifest_data = manifest.to_json()
        atomic_write_bytes(staging / MANIFEST, manifest_data, mode=0o600)
        _sync_tree(staging, writer.made_dirs, files_synced=writer.sync_each)
        final = _rename_unique(staging, dest, name)
        fsync_dir(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        writer.tree.close()
        os.close(lock)
    log(logger, "backup complete", path=str(final), files=len(manifest.files),
        bytes=manifest.total_bytes, **manifest.counts)
    report = BackupReport(final, manifest, skipped, stale_removed=stale)
    if keep is not None:
        try:
            report.removed_old = prune_backups(dest, keep, protect=final)
        except OSError as exc:
            raise BackupError(f"the backup {final} is complete, but old backups could not be "
                              f"removed: {exc}") from None
    return report


def _fill_backup(writer: _Writer, data_dir: Path, config_path: Path | None,
                 created: datetime.datetime) -> Manifest:
    survey = _survey(data_dir, writer.tree)
    writer.skipped = survey.skipped
    for rel in survey.dirs:
        writer.mkdir(rel, (data_dir / rel).stat().st_mode if rel else data_dir.stat().st_mode)
    total = sum(_size(data_dir / r) for r in survey.databases + survey.files)
    progress = writer.progress
    progress.set_total(total)
    counts: dict[str, int] = {}
    databases = set(survey.databases)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_pin(data_dir / STORE_PIN, PIN_TIMEOUT_SECONDS))
        stack.enter_context(_pin(data_dir / QUEUE_PIN, PIN_TIMEOUT_SECONDS))
        # Both pins are held: from here on no file named by either copy can be removed.
        store = queue = None
        if STORE_DB in databases:
            store = stack.enter_context(_reading(writer.database(STORE_DB)))
            counts.update(_store_counts(store))
            total += _total_size(store, "files")
        if QUEUE_DB in databases:
            queue = stack.enter_context(_reading(writer.database(QUEUE_DB)))
            counts["queue_entries"] = queue.execute("SELECT COUNT(*) FROM messages"
                                                    ).fetchone()[0]
            total += _total_size(queue, "messages")
        progress.set_total(total)
        if store is not None:
            for rel in _store_account_dirs(store):
                path = data_dir / rel
                # Recovery creates one that a crash lost; 0700 as the store makes them.
                writer.mkdir(rel, path.lstat().st_mode if path.is_dir() else 0o700)
            for rel, size in _store_files(store):
                writer.copy(rel, "message", expected_size=size)
        if queue is not None:
            for rel, size in _queue_files(queue):
                writer.copy(rel, "queued", expected_size=size)
    for rel in survey.databases:
        if rel not in (STORE_DB, QUEUE_DB):
            writer.database(rel)
    for rel in survey.files:
        # Plain files are replaced atomically by their writers (keys, certificates, the
        # password file); one that is gone now (a drop file picked up) is simply not there.
        writer.copy(rel, "file", vanish_ok=True)
    config_text = None
    if config_path is not None:
        config_path = Path(os.path.abspath(config_path))
        (writer.staging / CONFIG).mkdir(mode=0o700)
        writer.made_dirs.append(writer.staging / CONFIG)
        writer.copy(config_path.name, "config", source=config_path)
        config_text = str(config_path)
    return Manifest(created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    hostname=socket.gethostname(), data_dir=str(data_dir),
                    config_path=config_text, counts=counts, files=writer.files,
                    dirs=writer.dirs,
                    excluded={**EXCLUDED_DIRS, **EXCLUDED_FILES,
                              "*-wal, *-shm": "SQLite's; their committed content is in the "
                                              "copied database"})


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _make_staging(staging: Path) -> int:
    """Create the directory ``staging`` (0700) and lock it (:func:`_lock_dir`); returns the
    lock's descriptor."""
    try:
        staging.mkdir(mode=0o700)
        return _lock_dir(staging)
    except OSError as exc:
        raise BackupError(f"cannot write in {staging.parent}: {exc.strerror}") from None


def _lock_dir(path: Path) -> int:
    """Hold an exclusive flock on a directory we are filling: how a later run tells our
    work in progress from a crashed run's leftovers."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _remove_stale(parent: Path, prefix: str, marker: str) -> list[Path]:
    """Remove directories ``<prefix>…<marker>…`` in ``parent`` that nobody holds locked
    (left by a run that crashed)."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(prefix) and marker in entry.name
                and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another run's work in progress
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
            log(logger, "removed the leftovers of an interrupted run", path=entry.path)
        finally:
            os.close(fd)
    return removed


def _rename_unique(staging: Path, dest: Path, name: str) -> Path:
    """Rename ``staging`` to ``dest/name`` (``name-2``, … if taken: two backups within a
    second)."""
    for n in range(1, 1000):
        final = dest / (name if n == 1 else f"{name}-{n}")
        if final.exists():
            continue
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        return final
    raise BackupError(f"too many backups named {name} in {dest}")


def prune_backups(dest: Path, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Remove all but the ``keep`` newest complete backups in ``dest`` (never ``protect``).
    Each is first renamed out of the backup name pattern, so that one half removed never
    looks like a backup."""
    backups = [b for b in list_backups(dest) if b != protect]
    room = keep - (1 if protect is not None else 0)
    doomed = backups[: max(len(backups) - room, 0)]
    removed = []
    for backup in doomed:
        trash = dest / f".{backup.name}.deleting-{secrets.token_hex(4)}"
        os.rename(backup, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(backup)
        log(logger, "removed an old backup", path=str(backup))
    if removed:
        fsync_dir(dest)
    _remove_stale(dest, ".mailkeep-", ".deleting-")
    return removed


# -- verify --------------------------------------------------------------------------------


def verify_backup(backup: Path, *, progress: ProgressLike | None = None) -> Manifest:
    """Check every file of ``backup`` against its manifest (size and SHA-256). Returns the
    manifest; raises CorruptBackup listing what is wrong, BackupError if it is not one."""
    progress = progress or _NoProgress()
    backup = Path(os.path.abspath(backup))
    manifest = read_manifest(backup)
    progress.set_total(manifest.total_bytes)
    problems = []
    # Every component is opened without following a symbolic link (_SourceTree): a link
    # inside a backup, even as a directory in the middle of a path, is refused, so that
    # verify and restore never read (or report the size of) a file outside the backup.
    tree = _SourceTree(backup)
    try:
        for entry in manifest.files:
            try:
                size, digest = _hash_fd(tree.open(entry.path))
            except FileNotFoundError:
                problems.append(f"{entry.path} is missing")
                continue
            except OSError as exc:
                problems.append(f"{entry.path} cannot be read ({_open_problem(exc)})")
                continue
            finally:
                progress.update(entry.size)
            if size != entry.size:
                problems.append(f"{entry.path} has {size} bytes, not {entry.size}")
            elif digest != entry.sha256:
                problems.append(f"{entry.path} does not match its checksum")
    finally:
        tree.close()
    if problems:
        raise CorruptBackup(backup, problems)
    return manifest


def _open_problem(exc: OSError) -> str:
    """Why a file of a backup cannot be opened; ELOOP/ENOTDIR from O_NOFOLLOW mean a
    symbolic link somewhere on its path."""
    if exc.errno == errno.ELOOP:
        return "a symbolic link is on its path; backups hold none"
    if exc.errno == errno.ENOTDIR:
        return "a symbolic link or a file is on its path where a directory should be"
    return exc.strerror or str(exc)


# -- restore -------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    target: Path
    manifest: Manifest
    config_written: Path | None = None
    #: The restored configuration's data_dir differs from the target: edit it.
    config_data_dir: Path | None = None
    stale_removed: list[Path] = field(default_factory=list)


def restore_backup(backup: Path, target: Path, *, config_out: Path | None = None,
                   new_uidvalidity: bool = False,
                   progress: Callable[[str], ProgressLike] = _no_progress) -> RestoreReport:
    """Restore ``backup`` into ``target``, which must be empty or not exist; with
    ``config_out``, write the backed-up configuration file there too (if it exists, it
    must hold the same bytes); with ``new_uidvalidity``, give every mailbox a new
    UIDVALIDITY (see ``_renew_uidvalidity``). Nothing is written unless every checksum
    matches; the data directory appears complete or not at all. ``progress(label)`` makes a
    progress bar for each phase ("Verifying", "Restoring"). Raises BackupError
    (CorruptBackup)."""
    backup = Path(os.path.abspath(backup))
    target = Path(os.path.abspath(target))
    _check_target(target)
    bar = progress("Verifying")
    try:
        manifest = verify_backup(backup, progress=bar)
    finally:
        bar.close()
    config_entry = manifest.config_entry
    config_bytes = None
    if config_out is not None:
        config_out = Path(os.path.abspath(config_out))
        if config_entry is None:
            raise BackupError(f"{backup} has no configuration file to write to {config_out}")
        config_bytes = _read_verified(backup, config_entry)
        if config_out.exists():
            if config_out.read_bytes() != config_bytes:
                raise BackupError(f"{config_out} exists and differs from the backed-up "
                                  "configuration; move it aside or choose another path")
            config_bytes = None  # already there (a rerun): nothing to write
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {parent}: {exc.strerror}") from None
    stale = _remove_stale(parent, f".{target.name}.restore-", ".restore-")
    staging = parent / f".{target.name}.restore-{secrets.token_hex(4)}"
    lock = _make_staging(staging)
    try:
        bar = progress("Restoring")
        try:
            _copy_back(backup, manifest, staging, bar)
        finally:
            bar.close()
        if new_uidvalidity and (staging / STORE_DB).exists():
            _renew_uidvalidity(staging / STORE_DB)
        _check_restored(staging, manifest)
        # Everything, including what opening the store and the queue created, durable.
        if msgfiles.can_sync_filesystem():
            msgfiles.sync_filesystem(staging)
        else:
            _sync_tree(staging, [Path(p) for p, _, _ in os.walk(staging)], files_synced=True)
        if config_out is not None and config_bytes is not None:
            assert config_entry is not None
            # Masked: never more than MAX_CONFIG_MODE, whatever the manifest says.
            atomic_write_bytes(config_out, config_bytes,
                               mode=config_entry.mode & MAX_CONFIG_MODE)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    log(logger, "restore complete", source=str(backup), target=str(target),
        **manifest.counts)
    report = RestoreReport(target, manifest, stale_removed=stale)
    if config_out is not None:
        report.config_written = config_out
        report.config_data_dir = _configured_data_dir(config_out, target)
    return report


def _check_target(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir() or target.is_symlink():
        raise BackupError(f"{target} exists and is not a directory")
    with os.scandir(target) as entries:
        names = sorted(e.name for e in entries)
    if names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise BackupError(f"{target} is not empty (it holds {shown}); restore only into an "
                          "empty or new directory: stop the server and move the old one "
                          "aside first")
    if os.path.ismount(target):
        raise BackupError(f"{target} is a mount point, which cannot be replaced in one "
                          f"step; restore into a new directory below it (e.g. "
                          f"{target / 'mailkeep'}) and set data_dir to that")


def _read_verified(backup: Path, entry: FileEntry) -> bytes:
    tree = _SourceTree(backup)  # no symbolic link anywhere on the path
    try:
        fd = tree.open(entry.path)
    except OSError as exc:
        raise CorruptBackup(backup, [f"{entry.path} cannot be read ({_open_problem(exc)})"]
                            ) from None
    finally:
        tree.close()
    with os.fdopen(fd, "rb") as f:
        data = f.read(entry.size + 1)
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CorruptBackup(backup, [f"{entry.path} changed since it was verified"])
    return data


def _copy_back(backup: Path, manifest: Manifest, staging: Path, progress: ProgressLike) -> None:
    progress.set_total(sum(f.size for f in manifest.files if f.kind != "config"))
    sync_each = not msgfiles.can_sync_filesystem()
    for d in sorted(manifest.dirs, key=lambda d: d.path.count("/")):
        path = staging if d.path == DATA else staging / d.path.removeprefix(f"{DATA}/")
        path.mkdir(mode=0o700, exist_ok=True)
    tree = _SourceTree(backup)  # no symbolic link anywhere on a path (see verify_backup)
    try:
        for entry in manifest.files:
            if entry.kind == "config":
                continue
            rel = entry.path.removeprefix(f"{DATA}/")
            target = staging / rel
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = tree.open(entry.path)
            except OSError as exc:
                raise CorruptBackup(backup, [f"{entry.path} cannot be read "
                                             f"({_open_problem(exc)})"]) from None
            try:
                size, digest = _copy_fd(fd, target, progress, limit=entry.size,
                                        sync=sync_each)
            finally:
                os.close(fd)
            if size != entry.size or digest != entry.sha256:
                raise CorruptBackup(backup, [f"{entry.path} changed since it was verified"])
            # Masked: a manifest's mode is data; never setuid/setgid or writable by others.
            os.chmod(target, entry.mode & MAX_FILE_MODE)
    finally:
        tree.close()
    # Modes last, deepest first: a directory without write permission for us (none of
    # Mailkeep's) must not stop its own contents from being created. Masked like files.
    for d in sorted(manifest.dirs, key=lambda d: d.path.count("/"), reverse=True):
        path = staging if d.path == DATA else staging / d.path.removeprefix(f"{DATA}/")
        os.chmod(path, _dir_mode(d.path, d.mode))


def _renew_uidvalidity(db: Path) -> None:
    """Give every mailbox of a restored store a new UIDVALIDITY, greater than any it had.

    A backup is older than the server it replaces: IMAP clients may have seen UIDs and
    MODSEQs given after it was made, which the restored store would give again to other
    messages. RFC 9051 §2.3.1.1 forbids reusing a UID under the same UIDVALIDITY; a new one
    makes clients drop their cache of the mailbox and fetch it again (RFC 7162 §3.2.5.2
    likewise for QRESYNC). Values follow the store's own counter (``meta.uidvalidity``,
    see ``SQLiteStore._next_uidvalidity``): above the last one given, and not below the
    clock.
    """
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        ids = [r[0] for r in conn.execute("SELECT id FROM mailboxes ORDER BY id")]
        first = max(int(time.time()), (int(row[0]) if row else 0) + 1)
        if first + len(ids) > 0xFFFFFFFF:
            raise BackupError("no UIDVALIDITY values are left to give")
        conn.executemany("UPDATE mailboxes SET uidvalidity = ? WHERE id = ?",
                         [(first + n, box_id) for n, box_id in enumerate(ids)])
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('uidvalidity', ?)",
                     (first + len(ids) - 1,))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _check_restored(staging: Path, manifest: Manifest) -> None:
    """Open the restored store and queue once (their recovery runs, as at a server start)
    and check them against the manifest: the counts, and every message file's size."""
    from mailkeep.queue.store import QueueError, QueueStore
    from mailkeep.store import StoreError, open_store

    counts = manifest.counts
    problems = []
    if (staging / STORE_DB).exists():
        try:
            open_store(staging).close()
        except (StoreError, OSError) as exc:
            raise BackupError(f"the restored store does not open: {exc}") from None
        with _reading(staging / STORE_DB) as conn:
            for key, value in _store_counts(conn).items():
                if counts.get(key) != value:
                    problems.append(f"{value} {key} restored, the manifest says "
                                    f"{counts.get(key)}")
            for rel, size in _store_files(conn):
                try:
                    actual = (staging / rel).stat().st_size
                except FileNotFoundError:
                    problems.append(f"message file {rel} is missing")
                    continue
                if actual != size:
                    problems.append(f"message file {rel} has {actual} bytes, not {size}")
    if (staging / QUEUE_DB).exists():
        try:
            queue = QueueStore(staging / "queue")
        except (QueueError, OSError) as exc:
            raise BackupError(f"the restored queue does not open: {exc}") from None
        try:
            entries = queue.count()
        finally:
            queue.close()
        if entries != counts.get("queue_entries"):
            problems.append(f"{entries} queue entries restored, the manifest says "
                            f"{counts.get('queue_entries')}")
    if problems:
        raise CorruptBackup(staging, problems)


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished directory to ``target``: over it if it is an empty directory
    (keeping its owner and mode, e.g. a packaged /var/lib/mailkeep), else new."""
    if target.is_dir():
        info = target.stat()
        os.chmod(staging, stat.S_IMODE(info.st_mode))
        if os.geteuid() == 0:
            os.chown(staging, info.st_uid, info.st_gid)
    try:
        os.rename(staging, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise BackupError(f"{target} was filled by something else during the restore; "
                              "nothing was changed") from None
        raise BackupError(f"cannot move the restored data to {target}: {exc.strerror}"
                          ) from None
    fsync_dir(target.parent)


def _configured_data_dir(config_file: Path, target: Path) -> Path | None:
    """The restored configuration's data_dir, if it is not ``target``."""
    from mailkeep.config import ConfigError, load_config

    try:
        configured = load_config(config_file).data_dir
    except (ConfigError, OSError):
        return None
    if os.path.abspath(configured) == os.path.abspath(target):
        return None
    return Path(configured)
