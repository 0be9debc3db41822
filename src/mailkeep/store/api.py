"""The mail store interface: the only way protocol code touches mail.

Accounts own mailboxes; mailboxes hold messages. This module defines the contract — a
``typing.Protocol`` (``Store``), the dataclasses that cross it, the change events and one
exception hierarchy — so that a second engine (PostgreSQL) can be added later without
touching SMTP, LMTP, IMAP or POP3 code. The embedded engine is ``sqlite_engine``.

What the contract promises (designed for the IMAP server, RFC 9051 / RFC 3501):

* UIDs (RFC 9051 §2.3.1.1) are strictly ascending per mailbox and never reused; each
  mailbox has a UIDVALIDITY that never changes while it exists, and a mailbox created again
  under an old name gets a new one (RFC 9051 §6.3.6, "...MUST be preserved so that a new
  mailbox created with the same name will not reuse the identifiers...").
* Every change to a message (arrival, flag change, expunge) gets a mod-sequence greater than
  any before it in that mailbox; HIGHESTMODSEQ never goes down (RFC 7162 §3.1.1, §3.1.2).
  A flag STORE that changes nothing does not consume a mod-sequence. Expunged UIDs are
  remembered with the mod-sequence of their expunge so that QRESYNC can report them
  (RFC 7162 §3.2.5.1, VANISHED).
* Message files hold the message exactly as IMAP serves it (CRLF line ends); they never
  change after delivery (RFC 9051 §2.3.1.1: messages are immutable).
* Writes are durable when they return: message files, their directory entries and the
  metadata commit are fsync'd. Concurrent writers share fsyncs (group commit).

Calling conventions. Message writes used by protocol sessions (``deliver``, ``append``,
``store_flags``, ``copy``, ``move``, ``expunge``, ``import_messages``) are coroutines, so
that hundreds of sessions can wait for one shared commit without a thread each. Account and
mailbox management (``ensure_account``, ``create_mailbox``, ``rename_mailbox`` ...) is
synchronous and blocks the calling thread until the change is durable (a millisecond or so;
use ``asyncio.to_thread`` if that matters). Reads are synchronous and cheap, and safe from
any thread. Everything is safe to use from several threads, and from a second process (the
CLI) while the server runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, runtime_checkable

#: The primary mailbox, case-insensitive (RFC 9051 §5.1).
INBOX = "INBOX"
#: The hierarchy separator of every account's mailbox names.
SEPARATOR = "/"

#: System flags (RFC 9051 §2.3.2) and their bits in the stored flag mask.
SYSTEM_FLAG_BITS: dict[str, int] = {
    "\\Seen": 1,
    "\\Answered": 2,
    "\\Flagged": 4,
    "\\Deleted": 8,
    "\\Draft": 16,
}
SEEN = SYSTEM_FLAG_BITS["\\Seen"]
DELETED = SYSTEM_FLAG_BITS["\\Deleted"]

#: Special-use attributes a mailbox may carry (RFC 6154 §2). ``\All`` and ``\Flagged`` are
#: virtual mailboxes, which this store does not offer.
SPECIAL_USES = ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")

#: Mailboxes every account starts with: names that Apple Mail, Thunderbird and Outlook
#: recognise even without SPECIAL-USE, with the attribute for those that support it.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
)

#: Computes the MIME structure blob kept per message from the message bytes.
Indexer = Callable[[bytes], bytes]

FlagMode = Literal["set", "add", "remove"]


@dataclass(frozen=True)
class StoreLimits:
    """Named limits on everything the store accepts (safe defaults; see docs/store.md)."""

    #: Largest message the store accepts, in bytes (SMTP and IMAP have their own, lower
    #: limits; this one is the backstop).
    max_message_bytes: int = 256 * 1024 * 1024
    #: Mailboxes per account.
    max_mailboxes: int = 10_000
    #: Length of a full mailbox name in UTF-8 bytes.
    max_mailbox_name_bytes: int = 1000
    #: Levels of hierarchy in a mailbox name.
    max_mailbox_depth: int = 32
    #: Length of one keyword.
    max_keyword_length: int = 128
    #: Keywords on one message.
    max_keywords_per_message: int = 64
    #: Distinct keywords in one mailbox (RFC 9051 §7.1: servers may limit them; the
    #: PERMANENTFLAGS response lists them all).
    max_keywords_per_mailbox: int = 1000
    #: Writes merged into one commit; bounds the latency one commit adds to the others.
    max_commit_batch: int = 1000
    #: Empty files kept ready per account that receives mail, so a delivery creates no file
    #: on its critical path (see docs/store.md); 0 turns the pool off.
    pool_files_per_account: int = 64
    #: Spare files in the whole process, over all accounts.
    max_pool_files: int = 1024


# -- errors ------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of every error the store raises. ``reason`` is a short machine-readable code,
    mapped once by each protocol to its replies; the message is for people."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class NoSuchAccount(StoreError):
    reason = "no-account"


class NoSuchMailbox(StoreError):
    """IMAP: NO [NONEXISTENT], or [TRYCREATE] for APPEND/COPY/MOVE (RFC 9051 §7.1)."""

    reason = "no-mailbox"


class MailboxExists(StoreError):
    """IMAP: NO [ALREADYEXISTS] (RFC 9051 §7.1)."""

    reason = "exists"


class MailboxError(StoreError):
    """A mailbox operation that is refused. ``reason`` says why: "invalid-name",
    "special-use" (deleting a special-use mailbox), "inbox" (deleting INBOX),
    "has-children", "too-many", "bad-special-use"."""

    reason = "refused"


class QuotaExceeded(StoreError):
    """IMAP: NO [OVERQUOTA] (RFC 9208 §4.3); SMTP: 552 5.2.2."""

    reason = "quota"

    def __init__(self, message: str, *, resource: str = "STORAGE") -> None:
        super().__init__(message)
        #: RFC 9208 resource name: "STORAGE" or "MESSAGE".
        self.resource = resource


class NoSuchMessage(StoreError):
    """The UID does not exist (any more) in the mailbox."""

    reason = "no-message"


class InvalidFlag(StoreError):
    """A flag or keyword that cannot be stored (syntax, ``\\Recent``, or a limit)."""

    reason = "bad-flag"


class MessageTooLarge(StoreError):
    reason = "too-big"


class StoreIOError(StoreError):
    """The disk or the database failed (full, read-only, I/O error). Temporary."""

    reason = "io"


# -- delivery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRequest:
    """One copy of one message for one account (an SMTP transaction with N recipients is
    N requests in one ``deliver`` call)."""

    account: str
    #: None delivers to INBOX.
    mailbox: str | None
    #: Header lines to put in front (Return-Path, Delivered-To, Received), CRLF-terminated.
    prefix: bytes
    #: A spool file holding the message in CRLF form, or the message bytes.
    source: str | os.PathLike[str] | bytes
    flags: tuple[str, ...] = ()
    #: Seconds since the epoch; None means now.
    internal_date: float | None = None
    #: If ``mailbox`` does not exist: create it (True) or deliver to INBOX (False). Used for
    #: sub-address folders ("me+lists@" -> "lists").
    create_mailbox: bool = False
    #: Limits checked atomically at commit; the request fails with error "quota" if the
    #: account would go over, the others in the same call still succeed.
    quota_bytes: int | None = None
    quota_messages: int | None = None


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    account: str
    #: The mailbox the message went to (or would have gone to).
    mailbox: str
    uid: int | None
    #: None on success; else "quota", "no-account", "too-big", "bad-flag" or "io".
    error: str | None
    #: For people (logs, SMTP reply text).
    message: str


# -- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Quota accounting (RFC 9208 STORAGE and MESSAGE): sums over all mailboxes; a message
    copied to two mailboxes counts twice."""

    bytes: int
    messages: int


@dataclass(frozen=True)
class MailboxInfo:
    """What SELECT, STATUS (RFC 9051 §6.3.11) and LIST need about one mailbox.

    There is no RECENT count: IMAP4rev2 removed ``\\Recent`` and this store does not track
    it; an IMAP4rev1 server reports 0 (RFC 3501 allows any session to see none).
    """

    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    unseen: int
    #: Messages with \\Deleted (STATUS DELETED, RFC 9051 §6.3.11).
    deleted: int
    #: Sum of message sizes (STATUS SIZE, RFC 9051 §6.3.11).
    size: int
    subscribed: bool
    #: Keywords in use in this mailbox (for the FLAGS and PERMANENTFLAGS responses).
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class MessageInfo:
    uid: int
    modseq: int
    #: System flags (fixed order) then keywords.
    flags: tuple[str, ...]
    #: INTERNALDATE, seconds since the epoch.
    internal_date: float
    #: SAVEDATE (RFC 8514): when the message was stored in this mailbox.
    save_date: float
    #: RFC822.SIZE: the size of the stored (CRLF) message in bytes.
    size: int


@dataclass(frozen=True)
class FlagUpdate:
    """A message's flags after a STORE (or a change another session made)."""

    uid: int
    modseq: int
    flags: tuple[str, ...]
    #: False if the STORE asked for what was already there (no new mod-sequence).
    changed: bool = True


@dataclass(frozen=True)
class StoreFlagsResult:
    #: Every existing UID of the request that passed the UNCHANGEDSINCE test, in UID order.
    updated: tuple[FlagUpdate, ...]
    #: UIDs that failed UNCHANGEDSINCE (RFC 7162 §3.1.3: the MODIFIED response code).
    modified: tuple[int, ...] = ()


@dataclass(frozen=True)
class CopyResult:
    """What COPYUID needs (RFC 4315 §3): the destination UIDVALIDITY and, in source UID
    order, (source uid, destination uid) pairs."""

    uidvalidity: int
    uids: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ImportItem:
    """One message for ``import_messages`` (Maildir/mbox import, restores)."""

    mailbox: str
    #: CRLF message bytes, or a file holding them.
    source: bytes | str | os.PathLike[str]
    flags: tuple[str, ...] = ()
    internal_date: float | None = None
    #: Identifies the source message; an item whose key was imported before is skipped,
    #: which makes an interrupted import resumable without duplicates.
    key: str | None = None


# -- change notifications ----------------------------------------------------------------


@dataclass(frozen=True)
class MessageAdded:
    account: str
    mailbox: str
    uid: int
    modseq: int


@dataclass(frozen=True)
class FlagsChanged:
    account: str
    mailbox: str
    updates: tuple[FlagUpdate, ...]


@dataclass(frozen=True)
class Expunged:
    account: str
    mailbox: str
    uids: tuple[int, ...]
    modseq: int


@dataclass(frozen=True)
class MailboxesChanged:
    """The mailbox list changed. ``change`` is "created", "deleted", "renamed" (``names`` is
    (old, new)), "subscribed", "unsubscribed" or "account-deleted"."""

    account: str
    change: str
    names: tuple[str, ...] = ()


StoreEvent = MessageAdded | FlagsChanged | Expunged | MailboxesChanged


class Subscription(Protocol):
    """Handle returned by ``Store.subscribe``."""

    def cancel(self) -> None:
        """Stop receiving events (idempotent)."""


# -- consistent reads --------------------------------------------------------------------


class Snapshot(Protocol):
    """A consistent, read-only view of one account, as of when it was taken.

    Message files referenced by the snapshot stay readable until it is closed, even if the
    messages are expunged meanwhile. Used by export (and later online backup)."""

    def list_mailboxes(self) -> list[MailboxInfo]: ...

    def iter_messages(self, mailbox: str) -> Iterator[MessageInfo]: ...

    def subscriptions(self) -> list[str]: ...

    def open_message(self, mailbox: str, uid: int) -> BinaryIO: ...


# -- the interface -----------------------------------------------------------------------


@runtime_checkable
class Store(Protocol):
    """Everything protocol code may do with mail. See the module docstring for the calling
    conventions (coroutines for message writes, blocking calls for the rest)."""

    def close(self) -> None:
        """Finish pending writes and release resources; the store cannot be used after."""

    # accounts

    def list_accounts(self) -> list[str]: ...

    def ensure_account(self, account: str) -> bool:
        """Create the account with INBOX and the special-use mailboxes (DEFAULT_MAILBOXES),
        subscribed. Idempotent: returns True if it was created, False if it existed."""

    def delete_account(self, account: str) -> None:
        """Remove the account and all its mail. Raises NoSuchAccount."""

    def usage(self, account: str) -> Usage: ...

    # mailboxes

    def list_mailboxes(self, account: str) -> list[MailboxInfo]: ...

    def get_mailbox(self, account: str, mailbox: str) -> MailboxInfo: ...

    def create_mailbox(self, account: str, mailbox: str,
                       special_use: str | None = None) -> MailboxInfo:
        """Create a mailbox, and any missing superiors (RFC 9051 §6.3.4). Raises
        MailboxExists, MailboxError (invalid name, too many mailboxes, bad special use)."""

    def rename_mailbox(self, account: str, old: str, new: str) -> None:
        """Rename a mailbox and its inferiors (RFC 9051 §6.3.6), keeping UIDVALIDITY, UIDs
        and subscriptions. Renaming INBOX moves its messages to a new mailbox and leaves
        INBOX empty; INBOX's inferiors stay."""

    def delete_mailbox(self, account: str, mailbox: str) -> None:
        """Delete a mailbox and its messages. Refused (MailboxError) for INBOX, special-use
        mailboxes and mailboxes with inferiors. Subscriptions are kept (RFC 9051 §6.3.9)."""

    def subscribe_mailbox(self, account: str, mailbox: str) -> None: ...

    def unsubscribe_mailbox(self, account: str, mailbox: str) -> None: ...

    def list_subscriptions(self, account: str) -> list[str]:
        """Subscribed names, which may include names that do not exist (RFC 9051 §6.3.9)."""

    # messages

    async def deliver(self, requests: Sequence[DeliveryRequest]) -> list[DeliveryResult]:
        """Store every request; one result per request, in order. Returns only when every
        successful message is durable. Per-request failures are results, not exceptions."""

    async def append(self, account: str, mailbox: str,
                     message: bytes | str | os.PathLike[str],
                     flags: Iterable[str] = (), internal_date: float | None = None, *,
                     quota_bytes: int | None = None,
                     quota_messages: int | None = None) -> int:
        """IMAP APPEND: store one message, return its UID (durable on return). Raises
        NoSuchMailbox, QuotaExceeded, InvalidFlag, MessageTooLarge, StoreIOError."""

    def list_messages(self, account: str, mailbox: str,
                      since_modseq: int | None = None) -> list[MessageInfo]:
        """Messages in UID order; with ``since_modseq`` only those whose mod-sequence is
        greater (FETCH CHANGEDSINCE, RFC 7162 §3.1.4.1)."""

    def get_message(self, account: str, mailbox: str, uid: int) -> MessageInfo: ...

    def message_files(self, account: str, mailbox: str,
                      uids: Sequence[int]) -> dict[int, tuple[Path, bytes | None]]:
        """For FETCH of many messages: each existing UID's file and its structure blob
        (None if not cached), in one lookup. A file may disappear once its message is
        expunged: opening it then raises FileNotFoundError."""

    def message_path(self, account: str, mailbox: str, uid: int) -> Path:
        """The file holding the message. It may disappear once the message is expunged;
        prefer ``open_message`` which holds it open."""

    def open_message(self, account: str, mailbox: str, uid: int) -> BinaryIO: ...

    def read_message(self, account: str, mailbox: str, uid: int) -> bytes: ...

    def get_structure(self, account: str, mailbox: str, uid: int) -> bytes:
        """The MIME structure blob computed by the indexer at delivery."""

    async def store_flags(self, account: str, mailbox: str, uids: Iterable[int],
                          flags: Iterable[str], mode: FlagMode = "add",
                          unchanged_since: int | None = None) -> StoreFlagsResult:
        """STORE / UID STORE (RFC 9051 §6.4.6) with UNCHANGEDSINCE (RFC 7162 §3.1.3).
        UIDs that do not exist are ignored."""

    async def copy(self, account: str, source: str, uids: Iterable[int], destination: str, *,
                   quota_bytes: int | None = None,
                   quota_messages: int | None = None) -> CopyResult:
        """COPY (RFC 9051 §6.4.7): flags and internal date are kept. UIDs that do not
        exist are ignored. Raises NoSuchMailbox, QuotaExceeded."""

    async def move(self, account: str, source: str, uids: Iterable[int],
                   destination: str) -> CopyResult:
        """MOVE (RFC 6851): atomic copy + expunge of the source messages."""

    async def expunge(self, account: str, mailbox: str,
                      uids: Iterable[int] | None = None) -> list[int]:
        """EXPUNGE (all messages with \\Deleted) or UID EXPUNGE (RFC 4315 §2.1: only the
        given UIDs that have \\Deleted). Returns the expunged UIDs in order."""

    def vanished_since(self, account: str, mailbox: str, modseq: int) -> list[int]:
        """UIDs expunged with a mod-sequence greater than ``modseq`` (RFC 7162 §3.2.5.1)."""

    # notifications

    def subscribe(self, account: str, callback: Callable[[StoreEvent], object],
                  loop: object | None = None) -> Subscription:
        """Call ``callback(event)`` for every change of the account, on the asyncio loop
        that subscribed (or ``loop``), after the change is durable. Changes made by another
        process (the CLI) are not reported."""

    # import / export

    async def import_messages(self, account: str,
                              items: Sequence[ImportItem]) -> list[int | None]:
        """Store a batch in one commit, creating missing mailboxes. Returns the UID of each
        item, or None for items whose key had already been imported."""

    def imported_keys(self, account: str, keys: Iterable[str]) -> set[str]:
        """Which of these import keys were imported before."""

    def snapshot(self, account: str) -> AbstractContextManager[Snapshot]: ...


@dataclass
class RecoveryReport:
    """What ``open_store`` found and repaired (also logged)."""

    orphan_files: int = 0
    dead_writers: list[str] = field(default_factory=list)
    garbage_removed: int = 0
    directories_created: int = 0
