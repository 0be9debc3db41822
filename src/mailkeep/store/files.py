"""Message files on disk: writing them durably, and knowing which ones a crash left behind.

Each message is one file in its account's directory, written under its final name and
fsync'd *before* the metadata row that makes it visible is committed. Why not write to a
tmp/ directory and rename? The file is invisible until its row commits anyway, so a rename
would only add a system call and a second directory to fsync on the hot path. What a crash
can leave is a complete or partial file with no row: an orphan. Orphans are found by name.

Every process that writes holds a *writer token* (random, 16 hex digits) for its lifetime,
registered as ``writers/<token>.lock`` with an exclusive ``flock``; every file it creates is
named ``<token>-<n>``. At open, a lock file that can be locked belongs to a process that
died; its files without a committed row are orphans and are removed. Files of live writers
(the server, while the CLI opens the store) are never touched. This needs a local
filesystem with working ``flock`` (not NFS).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from mailkeep.durable import copy_fd, fsync_dir
from mailkeep.store.api import MessageTooLarge

logger = logging.getLogger("mailkeep.store")

FILE_MODE = 0o600
DIR_MODE = 0o700


class WriterToken:
    """This process's writer registration (see module docstring)."""

    def __init__(self, writers_dir: Path) -> None:
        self.dir = writers_dir
        # Lock under a temporary name, then rename: another process scanning writers/ must
        # never see a ".lock" file of ours unlocked, or it would take us for dead. A scanner
        # that catches the temporary file between its creation and our flock removes it as
        # the leftover of a dead start-up; we notice (the lock or the rename fails) and
        # start again with a new token.
        for _attempt in range(10):
            self.token = secrets.token_hex(8)
            self.path = writers_dir / f"{self.token}.lock"
            tmp = writers_dir / f".{self.token}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.rename(tmp, self.path)
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            break
        else:
            raise OSError(errno.EBUSY, f"cannot register a writer in {writers_dir}")
        self._fd: int | None = fd
        self._counter = itertools.count(1)
        self._counter_lock = threading.Lock()
        self.prefix = f"{self.token}-"

    def new_name(self) -> str:
        with self._counter_lock:
            return f"{self.token}-{next(self._counter)}"

    def release(self, *, clean: bool) -> None:
        """Give the token up. ``clean`` means no orphan of ours can exist: forget the token.
        Otherwise the lock file stays (unlocked) and the next open() recovers our files."""
        if self._fd is None:
            return
        if clean:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def dead_writers(writers_dir: Path, own: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """Tokens of writers that are gone, each with a function that forgets the token once its
    orphans are removed. The dead writer's lock is held (by us) while we recover it, so two
    processes opening at once never recover the same writer concurrently."""
    try:
        entries = sorted(writers_dir.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp"):
            # A registration that died between create and rename; nothing was written.
            fd = _try_lock(entry)
            if fd is not None:
                entry.unlink(missing_ok=True)
                os.close(fd)
            continue
        if not name.endswith(".lock") or name == f"{own}.lock":
            continue
        fd = _try_lock(entry)
        if fd is None:
            continue  # alive
        token = name[: -len(".lock")]

        def forget(entry: Path = entry, fd: int = fd) -> None:
            entry.unlink(missing_ok=True)
            os.close(fd)

        try:
            yield token, forget
        except BaseException:
            os.close(fd)
            raise


def _try_lock(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def write_message_file(path: str | os.PathLike[str], prefix: bytes,
                       source: bytes | str | os.PathLike[str], max_bytes: int, *,
                       sync: bool = True, create: bool = True,
                       before_sync: Callable[[int], None] | None = None) -> int:
    """Create ``path`` holding ``prefix`` + the message, fsync it, return its size.

    A spool file is copied by the kernel (copy_file_range, else sendfile), never read into
    Python; what is copied is the spool file as large as it was when its size was checked
    against ``max_bytes``. On any error the partial file is removed and the error raised
    (MessageTooLarge, OSError). ``sync=False`` leaves the fsync to the caller
    (``sync_filesystem`` for a whole batch). ``create=False`` writes into an existing file
    instead (a spare from ``pool.FilePool``), emptied first.

    ``before_sync(size)`` runs once the data is written and before the fsync, with the
    kernel already writing it out (``sync_file_range``), so that work done there (the MIME
    indexer) overlaps the disk's; the fsync still follows, and decides durability.

    Few system calls on purpose: each one lets another thread take Python's GIL, and under
    load every such hand-over costs more than the call itself.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        total = len(prefix) + len(source)
        if total > max_bytes:
            raise MessageTooLarge(f"message of {total} bytes is over the limit of {max_bytes}")
        src_fd = None
    else:
        src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        total = len(prefix) + os.fstat(src_fd).st_size
        if total > max_bytes:
            os.close(src_fd)
            raise MessageTooLarge(f"message of {total} bytes is over the limit of {max_bytes}")
    # A spare is empty, but O_TRUNC makes sure we never append to anything.
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (
        os.O_CREAT | os.O_EXCL if create else os.O_TRUNC)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except BaseException:
        if src_fd is not None:
            os.close(src_fd)
        raise
    try:
        if src_fd is None:
            _write_parts(fd, prefix, source)  # type: ignore[arg-type]
            size = total
        else:
            _write_parts(fd, prefix)
            size = len(prefix) + copy_fd(src_fd, fd, total - len(prefix))
        if before_sync is not None:
            if sync and _sync_file_range is not None:
                # Start the write-out now (SYNC_FILE_RANGE_WRITE: initiate, do not wait);
                # only the fsync below promises anything.
                _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
            before_sync(size)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        if src_fd is not None:
            os.close(src_fd)
    os.close(fd)
    return size


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux, or no libc symbol
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _load_syncfs()
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def can_sync_filesystem() -> bool:
    return _syncfs is not None


def sync_filesystem(path: Path) -> None:
    """Make everything written to the filesystem holding ``path`` durable, at once.

    Linux syncfs(2): one device flush for a whole batch of files instead of one fsync per
    file; used by bulk imports, where it is many times faster. Writeback errors are
    reported since Linux 5.8. Raises OSError.
    """
    if _syncfs is None:
        raise OSError(errno.ENOSYS, "syncfs is not available on this system")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _write_parts(fd: int, *parts: bytes | bytearray | memoryview) -> None:
    """Write every part, in one writev(2) when the kernel takes it all (the usual case)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views) if len(views) > 1 else os.write(fd, views[0])
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def remove_orphans(accounts_dir: Path, prefix: str,
                   is_committed: Callable[[str, str], bool]) -> list[Path]:
    """Remove files named ``prefix*`` that no committed row references; return them.

    ``is_committed(account_dir_name, file_name)`` asks the database. Directories touched are
    fsync'd so that the removals are durable before the writer token is forgotten.
    """
    removed: list[Path] = []
    try:
        account_dirs = list(os.scandir(accounts_dir))
    except FileNotFoundError:
        return removed
    for account_dir in account_dirs:
        if not account_dir.is_dir(follow_symlinks=False):
            continue
        touched = False
        with os.scandir(account_dir.path) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and not is_committed(account_dir.name,
                                                                      entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    removed.append(Path(entry.path))
                    touched = True
        if touched:
            fsync_dir(account_dir.path)
    return removed
