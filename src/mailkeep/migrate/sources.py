"""Reading the old server's files: path mapping below ``--root``, bounded reads, one error type.

A migration often runs on the new machine against a copy (or a read-only mount) of the old
one: ``/mnt/old/etc/postfix/main.cf`` names its tables as ``/etc/postfix/virtual``. A
``SourceTree`` with ``root=/mnt/old`` turns every absolute path found in the old
configuration into the path of the copy; without a root, paths are used as they are.

With a root, a path from the old configuration must not lead out of it: the migration often
runs as root, and the old tree may come from a compromised machine. Every mapped path is
normalised and resolved (``..``, symbolic links), and one that ends outside the resolved
root is refused with ``OutsideRoot`` (the plan reports it as not migrated). Without a root
(migrating in place on the old host) the paths are the host's own and used as they are.

Every file is read with a size limit, so a wrong argument (a mail spool given as a table)
fails with a message instead of filling memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The largest configuration file, table or passwd-file read (bytes).
MAX_SOURCE_FILE_BYTES = 64 * 1024 * 1024


class MigrateError(Exception):
    """The migration cannot go on; the message says what is wrong and what to do."""


class OutsideRoot(MigrateError):
    """A path of the old configuration leads out of ``--root`` (``..``, a symbolic link)."""


@dataclass(frozen=True)
class SourceTree:
    """Where the old server's files are. ``root`` None: the paths are used as written."""

    root: Path | None = None

    def path(self, written: str | os.PathLike[str], *, relative_to: Path | None = None) -> Path:
        """The file a path in the old configuration names, in this tree.

        A relative path is taken relative to ``relative_to`` (already a path in the tree:
        the directory of the file that names it). Raises OutsideRoot if, with a root, the
        path leads out of it (see the module text).
        """
        path = Path(written)
        if not path.is_absolute():
            return self.confine((relative_to / path) if relative_to is not None else path)
        if self.root is None:
            return path
        # On the old host "/../etc" is "/etc": normalise before joining, so that ".." cannot
        # climb above the root (Path keeps ".." as it is).
        return self.confine(self.root / os.path.normpath(path).lstrip("/"))

    def confine(self, path: Path) -> Path:
        """``path`` resolved (``..`` and symbolic links, os.path.realpath) if it stays
        inside the resolved root; OutsideRoot otherwise. Without a root: ``path`` as is.
        The resolved path is returned, so that what is read later is what was checked."""
        if self.root is None:
            return path
        root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise OutsideRoot(f"{path} leads outside --root {self.root} (to {real}, through "
                              "'..' or a symbolic link); it is not read. Copy the file itself "
                              "into the tree if it is needed")
        return Path(real)

    def read_text(self, path: Path, *, what: str,
                  limit: int = MAX_SOURCE_FILE_BYTES) -> str:
        """The text of ``path`` (UTF-8, undecodable bytes kept as surrogates).

        Raises MigrateError naming ``what`` ("the Postfix main.cf") and the reason.
        """
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            raise MigrateError(f"{what} {path} does not exist") from None
        except IsADirectoryError:
            raise MigrateError(f"{what} {path} is a directory, not a file") from None
        except OSError as exc:
            raise MigrateError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
        if len(data) > limit:
            raise MigrateError(f"{what} {path} is larger than {limit} bytes; is it the "
                               "right file?")
        if b"\0" in data:
            raise MigrateError(f"{what} {path} contains NUL bytes; is it a compiled .db "
                               "file? Give the text file it was made from")
        return data.decode("utf-8", "surrogateescape")
