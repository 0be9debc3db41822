"""Opening SQLite databases and creating their schema, shared by the store and the outbound queue.

Both keep their metadata in a SQLite database in WAL mode (readers never block the one
writer) whose ``user_version`` is the schema version: 0 means a new file, to be created
in one transaction; a version above the code's means a newer Mailkeep wrote it, which this
one refuses to touch rather than misread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path, busy_timeout: float, *, readonly: bool = False,
            durable: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from any thread.

    ``durable``: synchronous=FULL, so in WAL mode the WAL is fsync'd at every commit and a
    commit that returned survives power loss (NORMAL only protects against process
    crashes); off only for tests and benchmarks that measure something else.
    """
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


def init_schema(conn: sqlite3.Connection, schema: str, version: int, *, what: str,
                error: type[Exception]) -> None:
    """Put ``conn``'s database in WAL mode and create ``schema`` if it is new.

    ``schema`` is ";"-separated statements; ``what`` names the database in messages
    ("store", "queue"); ``error`` is the exception class raised for a refusal.
    """
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise error(f"cannot put the {what} database in WAL mode (got {mode})")
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found == 0:
            for statement in schema.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
        elif found > version:
            raise error(f"the {what} was written by a newer Mailkeep (schema {found}, "
                        f"this version reads {version}); upgrade Mailkeep")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
