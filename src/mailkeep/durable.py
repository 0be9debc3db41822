"""Durable file writes: the one place that knows how to make bytes survive a crash.

Every write that Mailkeep acknowledges goes through here: write to a temporary name,
fsync the data, rename into place, fsync the directory (POSIX rename is atomic, but the
directory entry is only durable once the directory itself is fsync'd).
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Readers see either the old content or the new, never a mix; after return the new
    content survives a crash.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    replace_durably(tmp, target)


def replace_durably(tmp: Path, target: Path) -> None:
    """Rename the prepared ``tmp`` (a file or a symlink) over ``target`` in the same
    directory, then fsync the directory; ``tmp`` is removed if the rename fails."""
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


# Copies go through the kernel (copy_file_range, else sendfile) in chunks of at most 16
# times this; plain read/write when neither works between the two files (old kernels
# across filesystems, some FUSE and network filesystems).
_COPY_CHUNK = 1 << 20
_NO_FAST_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF,
                 errno.ENOTSUP}


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def copy_fd(src: int, dst: int, size: int) -> int:
    """Copy ``size`` bytes (fewer if the source is shorter); returns the count copied."""
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(src, dst, min(size - copied, _COPY_CHUNK * 16))
            if n == 0:
                return copied
            copied += n
        return copied
    except OSError as exc:
        if exc.errno not in _NO_FAST_COPY or copied:
            raise
    try:
        while copied < size:
            n = os.sendfile(dst, src, None, min(size - copied, _COPY_CHUNK * 16))
            if n == 0:
                return copied
            copied += n
        return copied
    except OSError as exc:
        if exc.errno not in _NO_FAST_COPY or copied:
            raise
    while copied < size:
        chunk = os.read(src, min(size - copied, _COPY_CHUNK))
        if not chunk:
            return copied
        write_all(dst, chunk)
        copied += len(chunk)
    return copied
