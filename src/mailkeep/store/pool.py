"""Pre-created message files: a small pool of empty files per account directory, so that a
delivery never creates a file or fsyncs a directory while the sender waits.

Creating a file is the most expensive step of storing a small message: the kernel
allocates an inode (on ext4 without a journal up to a millisecond of CPU), and the new
directory entry is only durable once the directory itself is fsync'd (Linux fsync(2):
"an explicit fsync() on a file descriptor for the directory is also needed"). Paid on the
delivery's critical path, that is a creation and a directory fsync in sequence with the
message's own fsync and the metadata commit; paid here, ahead of time, it is neither.

A background thread creates empty files ahead of time, in batches, and makes each batch's
directory entries durable with one ``fsync`` of the directory. Only then are their names
handed out. A delivery takes a name, writes the message into that existing file and
fsyncs the file: the file's data, size and directory entry are then all durable, which is
exactly what the commit that makes the message visible requires.

Pool files are named like every other file of this writer (``<token>-<n>``, see
``files.WriterToken``) and never have a row in the database, so they are never visible as
messages, and a crash leaves them to recovery like any other orphan: the dead writer's
uncommitted files are removed. A clean ``close()`` removes the files it did not use.

Bounds: a pool is started for an account directory on its second miss (so a one-shot
process such as the LDA never builds one), begins small and doubles each time it runs dry,
up to ``per_account`` files; at most ``max_files`` pool files exist at once in the whole
process, and the least recently used pools give way to busier ones.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.durable import fsync_dir
from mailkeep.store.files import FILE_MODE

logger = logging.getLogger("mailkeep.store")

#: A new pool starts with this many files and doubles when it runs dry.
INITIAL_POOL_FILES = 8
#: Directories remembered as "missed once" before a pool is started for them.
_MAX_REMEMBERED_MISSES = 4096
#: After a failed refill (disk full, too many open files), wait this long before retrying.
_RETRY_SECONDS = 5.0
#: Files created between two directory fsyncs: each group is handed out as soon as it is
#: durable, so a delivery waiting for the pool waits for a few files, not a whole refill.
_PUBLISH_EVERY = 8


@dataclass
class _DirPool:
    """The ready files of one account directory."""

    #: Names whose directory entries are durable, oldest first.
    ready: deque[str] = field(default_factory=deque)
    #: How many ready files the pool aims for; grows while deliveries find it empty.
    target: int = INITIAL_POOL_FILES
    #: A refill for this directory is queued or running.
    scheduled: bool = False
    #: monotonic() before which no refill is tried (after an error).
    retry_after: float = 0.0


class FilePool:
    """Per-directory pools of empty, durably named files (see the module docstring).

    ``take`` is called from any thread, does no I/O and waits for a refill only as long
    as it is told to; one background thread, started on first need, creates the files.
    """

    def __init__(self, accounts_dir: Path, new_name: Callable[[], str], *,
                 per_account: int, max_files: int) -> None:
        self.accounts_dir = accounts_dir
        self._new_name = new_name
        self.per_account = max(0, per_account)
        self.max_files = max(0, max_files)
        self.enabled = self.per_account > 0 and self.max_files > 0
        self._lock = threading.Lock()
        #: Wakes the refill thread (work queued, or closing).
        self._wake = threading.Condition(self._lock)
        #: Wakes deliveries waiting in ``take`` (files published, or a refill gave up).
        self._published = threading.Condition(self._lock)
        #: Pools by account directory name, least recently used first.
        self._pools: OrderedDict[str, _DirPool] = OrderedDict()
        self._missed: OrderedDict[str, None] = OrderedDict()
        self._todo: deque[str] = deque()
        #: Files that exist and are not handed out: ready plus being created.
        self._files = 0
        #: Directories in which pool files were removed (fsync'd by the owner at close).
        self.touched_dirs: set[str] = set()
        self._thread: threading.Thread | None = None
        #: The directory the refill thread is creating files in, if any.
        self._busy: str | None = None
        self._stopping = False
        self._errors = 0

    # -- used by deliveries ------------------------------------------------------------

    def take(self, dir_name: str, wait: float = 0.0) -> str | None:
        """A ready file name in ``dir_name`` (its entry is durable and the file is empty),
        or None: the caller creates its own file. Asks for a refill when the pool runs low.

        If the pool is empty while a refill is running, wait up to ``wait`` seconds for it:
        files of one directory are created one at a time by the kernel (the directory is
        locked), so creating one more ourselves would not be faster, only burn a second
        CPU spinning on that lock."""
        if not self.enabled:
            return None
        with self._lock:
            if self._stopping:
                return None
            pool = self._pools.get(dir_name)
            if pool is None:
                # Start a pool on the second miss only: a process that delivers once (the
                # LDA) should not create files it will never use.
                if dir_name in self._missed:
                    del self._missed[dir_name]
                    pool = self._pools[dir_name] = _DirPool(
                        target=min(INITIAL_POOL_FILES, self.per_account))
                    self._schedule(dir_name, pool)
                else:
                    self._missed[dir_name] = None
                    if len(self._missed) > _MAX_REMEMBERED_MISSES:
                        self._missed.popitem(last=False)
                return None
            self._pools.move_to_end(dir_name)
            if not pool.ready:
                pool.target = min(pool.target * 2, self.per_account)
                self._schedule(dir_name, pool)
                if wait > 0 and pool.scheduled:
                    deadline = time.monotonic() + wait
                    while not pool.ready and pool.scheduled and not self._stopping:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or self._pools.get(dir_name) is not pool:
                            break
                        self._published.wait(remaining)
                if not pool.ready or self._pools.get(dir_name) is not pool:
                    return None
            name = pool.ready.popleft()
            self._files -= 1
            if len(pool.ready) * 2 < pool.target:
                self._schedule(dir_name, pool)
            return name

    def forget(self, dir_name: str, *, wait: bool = False) -> None:
        """Drop the pool of a directory that is gone or going (its account was deleted).
        With ``wait``, also wait for a refill running in it to finish (it then removes
        what it made), so that nothing new appears in the directory afterwards."""
        with self._lock:
            pool = self._pools.pop(dir_name, None)
            if pool is not None:
                self._files -= len(pool.ready)
                pool.ready.clear()
            self._missed.pop(dir_name, None)
            while wait and self._busy == dir_name:
                self._published.wait()

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> bool:
        """Stop the refill thread and remove every file not handed out. Returns True if all
        were removed (the caller fsyncs ``touched_dirs`` before forgetting its token)."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            self._published.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            leftovers = [(d, list(p.ready)) for d, p in self._pools.items() if p.ready]
            self._pools.clear()
            self._files = 0
        return self._remove(leftovers)

    def ready_count(self, dir_name: str | None = None) -> int:
        """Files ready to be handed out (in one directory, or in all)."""
        with self._lock:
            if dir_name is None:
                return sum(len(p.ready) for p in self._pools.values())
            pool = self._pools.get(dir_name)
            return len(pool.ready) if pool is not None else 0

    # -- the refill thread ---------------------------------------------------------------

    def _schedule(self, dir_name: str, pool: _DirPool) -> None:
        # Called with the lock held.
        if pool.scheduled or time.monotonic() < pool.retry_after:
            return
        pool.scheduled = True
        self._todo.append(dir_name)
        if self._thread is None:
            self._thread = threading.Thread(target=self._refill_loop,
                                            name="mailkeep-store-pool", daemon=True)
            self._thread.start()
        self._wake.notify()

    def _refill_loop(self) -> None:
        while True:
            with self._lock:
                while not self._todo and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                dir_name = self._todo.popleft()
                pool = self._pools.get(dir_name)
                if pool is None:
                    continue
                want = min(pool.target - len(pool.ready), _PUBLISH_EVERY)
                evicted = self._make_room(dir_name, want)
                want = min(want, self.max_files - self._files)
                if want <= 0:
                    pool.scheduled = False
                    self._published.notify_all()  # waiters give up and create their own
                    continue
                self._files += want  # reserved: counted while being created
                names = [self._new_name() for _ in range(want)]
                self._busy = dir_name
            try:
                self._remove(evicted)
                created, error = self._create(dir_name, names)
            except BaseException:  # a bug must not leave the pool "scheduled" forever
                logger.exception("refilling the message file pool failed")
                created, error = [], True
            with self._lock:
                self._files -= len(names) - len(created)
                pool = self._pools.get(dir_name)
                if pool is None or self._stopping:
                    # Forgotten or closing meanwhile: remove what was made (rarely more
                    # than a few files), before anyone waiting in forget() goes on.
                    self._files -= len(created)
                    self._remove([(dir_name, created)])
                else:
                    pool.ready.extend(created)
                    pool.scheduled = False
                    if error:
                        pool.retry_after = time.monotonic() + _RETRY_SECONDS
                    elif len(pool.ready) < pool.target:
                        # Fill up to the target, one durable group at a time; the queue
                        # is FIFO, so busy directories take turns.
                        self._schedule(dir_name, pool)
                self._busy = None
                self._published.notify_all()

    def _make_room(self, dir_name: str, want: int) -> list[tuple[str, list[str]]]:
        """With the lock held: take ready files away from the least recently used other
        pools until ``want`` more fit under ``max_files``; returns them for removal."""
        evicted: list[tuple[str, list[str]]] = []
        for other in list(self._pools):
            if self._files + want <= self.max_files:
                break
            if other == dir_name:
                continue
            pool = self._pools.pop(other)
            if pool.ready:
                evicted.append((other, list(pool.ready)))
                self._files -= len(pool.ready)
        return evicted

    def _create(self, dir_name: str, names: list[str]) -> tuple[list[str], bool]:
        """Create the files, then make their entries durable with one directory fsync.
        Returns the names that are ready, and whether an error stopped the batch."""
        directory = self.accounts_dir / dir_name
        created: list[str] = []
        error = False
        for name in names:
            try:
                fd = os.open(directory / name,
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                             FILE_MODE)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    self.forget(dir_name)  # the account was deleted
                else:
                    self._log_error(f"cannot create a spare message file in {directory}: {exc}")
                error = True
                break
            os.close(fd)
            created.append(name)
        if not created:
            return created, error
        try:
            # The one directory fsync that makes the whole batch's entries durable; a name
            # is handed out only after it.
            fsync_dir(directory)
        except OSError as exc:
            self._log_error(f"cannot make spare message files durable in {directory}: {exc}")
            self._remove([(dir_name, created)])
            return [], True
        return created, error

    def _remove(self, batches: list[tuple[str, list[str]]]) -> bool:
        ok = True
        for dir_name, names in batches:
            if not names:
                continue
            directory = self.accounts_dir / dir_name
            for name in names:
                try:
                    os.unlink(directory / name)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    ok = False
                    self._log_error(f"cannot remove spare message file {directory / name}: "
                                    f"{exc}")
            self.touched_dirs.add(str(directory))
        return ok

    def _log_error(self, text: str) -> None:
        # A full disk would otherwise log the same error for every refill.
        self._errors += 1
        if self._errors <= 3 or self._errors % 1000 == 0:
            logger.error("%s (error %d)", text, self._errors)
