"""SQLite schema of the embedded store (metadata only; message bodies are files).

Design notes:

* ``files`` is one row per message file, with a reference count: COPY adds a message row
  pointing at the same file (files are immutable, so sharing is safe), EXPUNGE decrements.
  When the count reaches zero the row is deleted and the file's path goes to ``garbage`` in
  the same transaction; the file is unlinked after the commit. A crash in between leaves a
  ``garbage`` row that the next open() finishes. So a committed ``files`` row always has a
  complete file, and a file is only ever removed once no row can reach it.
* ``messages`` is keyed (mailbox_id, uid) WITHOUT ROWID: FETCH and SEARCH walk a mailbox in
  UID order. The (mailbox_id, modseq) index serves CHANGEDSINCE (RFC 7162 §3.1.4.1).
* Per-mailbox counters (messages, unseen, deleted, size) and per-account usage are kept up
  to date in the same transactions that change messages, so STATUS and quota checks never
  scan a mailbox.
* ``expunged`` remembers every expunged UID with its mod-sequence for QRESYNC VANISHED
  (RFC 7162 §3.2.5.1); it is never pruned, so the server can always answer exactly.
* ``imported`` holds hashed keys of messages imported from Maildir/mbox, committed with the
  messages themselves: a rerun or a resumed import skips them.
* There is no foreign key from ``messages.file_id`` to ``files``: SQLite would need an
  index on messages(file_id) to check it on every delete; the reference count does the job.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value ANY
) WITHOUT ROWID;

CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    dir           TEXT NOT NULL UNIQUE,
    created       REAL NOT NULL,
    used_bytes    INTEGER NOT NULL DEFAULT 0,
    used_messages INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE mailboxes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    special_use   TEXT,
    uidvalidity   INTEGER NOT NULL,
    uidnext       INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    messages      INTEGER NOT NULL DEFAULT 0,
    unseen        INTEGER NOT NULL DEFAULT 0,
    deleted       INTEGER NOT NULL DEFAULT 0,
    size          INTEGER NOT NULL DEFAULT 0,
    keywords      TEXT NOT NULL DEFAULT '',
    created       REAL NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;

CREATE TABLE files (
    id         INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    refs       INTEGER NOT NULL,
    structure  BLOB
);
CREATE UNIQUE INDEX files_by_name ON files (account_id, name);

CREATE TABLE messages (
    mailbox_id    INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid           INTEGER NOT NULL,
    file_id       INTEGER NOT NULL,
    modseq        INTEGER NOT NULL,
    flags         INTEGER NOT NULL DEFAULT 0,
    keywords      TEXT NOT NULL DEFAULT '',
    internal_date REAL NOT NULL,
    save_date     REAL NOT NULL,
    size          INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX messages_by_modseq ON messages (mailbox_id, modseq);

CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid        INTEGER NOT NULL,
    modseq     INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;

CREATE TABLE imported (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    PRIMARY KEY (account_id, key)
) WITHOUT ROWID;

CREATE TABLE garbage (
    path TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('file', 'dir'))
) WITHOUT ROWID;
"""
