"""The full-text index behind IMAP SEARCH TEXT/BODY/HEADER, and the text it is built from.

IMAP SEARCH matches strings as case-insensitive substrings, not words (RFC 9051 §6.4.4:
"a message matches the key if the string is a substring of the associated text"). SQLite's
FTS5 with the ``trigram`` tokenizer answers exactly that: a phrase of three or more
characters matches a document iff it occurs in it as a substring. So the index gives the
same answers as reading every message, only faster, provided both see the same text. This
module therefore owns two things:

* **The searchable text of a message** (:func:`analyse_message`, :func:`load_message`): the
  header fields with RFC 2047 encoded-words decoded (and the raw value too when it differs),
  and the body text of the text parts with their Content-Transfer-Encoding and charset
  decoded (RFC 2045 §6, RFC 2046 §4.1.2), HTML reduced to its text, plus the header blocks of
  the body parts (attachment names, forwarded messages' headers). Everything is put through
  :func:`fold` (NFC, Unicode case folding), and so is every search string. The IMAP search
  layer scans with this same text when the index cannot answer, so both paths agree.
  Text is capped per message (:class:`TextLimits`): what lies beyond the cap is not
  searchable, by either path.
* **The index** (:class:`FullTextIndex`): one SQLite file per account under
  ``data_dir/fts/`` (WAL), one FTS5 table per mailbox named after its UIDVALIDITY, with
  the UID as rowid. The store never reuses a UIDVALIDITY (one store-wide counter), so a
  row can never be confused with a message of another mailbox, and renaming a mailbox keeps
  its index. A plain table next to it holds the few header facts SORT and THREAD need
  (:class:`MessageFacts`), so sorting a big mailbox reads no message files.

Indexing is lazy and catches up: :meth:`FullTextIndex.catch_up` indexes the messages of a
mailbox view that are not indexed yet, in bounded batches, each batch one transaction. The
IMAP search calls it first (with a small budget), the server after deliveries. UIDs only
grow, so "indexed" is a high-water mark per mailbox; messages that could not be read are
remembered and scanned by the search instead. Rows of expunged messages are ignored (the
search intersects with its view) and pruned. The index is a cache: durability is not
needed (synchronous=NORMAL), and a corrupt or foreign file is deleted and rebuilt.
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import hashlib
import html
import logging
import os
import re
import sqlite3
import threading
import unicodedata
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from mailkeep import mime
from mailkeep.logfmt import log
from mailkeep.mime.charset import decode_charset
from mailkeep.mime.header import header_fields, unfold
from mailkeep.mime.structure import Part
from mailkeep.mime.transfer import decode_body
from mailkeep.store.api import MessageInfo, NoSuchMessage, Store, StoreError

logger = logging.getLogger("mailkeep.fts")

#: Version of the extracted text and of the database layout. An index written with another
#: version is deleted and rebuilt, so changing what is extracted never leaves stale answers.
FTS_FORMAT = 1

#: The header fields that have a column of their own (the IMAP keys FROM, TO, CC, BCC and
#: SUBJECT, RFC 9051 §6.4.4), so that those searches are exact index look-ups.
FIELD_COLUMNS: dict[str, str] = {
    "subject": "f_subject",
    "from": "f_from",
    "to": "f_to",
    "cc": "f_cc",
    "bcc": "f_bcc",
}
#: What :meth:`FullTextIndex.search_text` can search: the whole text, the body, one field.
TEXT_TARGETS = ("text", "body", *FIELD_COLUMNS)
#: The FTS5 trigram tokenizer needs three characters to use the index (shorter strings are
#: matched by scanning the stored text).
TRIGRAM = 3


@dataclass(frozen=True)
class TextLimits:
    """How much of a message is searchable (the same for the index and for scans)."""

    #: Characters of header text per message (decoded fields, "name: value" lines).
    max_header_chars: int = 256 * 1024
    #: Characters of body text per message: the documented cap of what TEXT/BODY can find.
    #: Text past it (in a huge text part or a late attachment) is not searchable.
    max_body_chars: int = 1_000_000
    #: Bytes read from one text part at most; base64 and quoted-printable expand text, and
    #: a charset may need up to four bytes per character.
    max_part_bytes: int = 4_000_000
    #: Header fields read from one header block.
    max_fields: int = 1000


@dataclass(frozen=True)
class FtsLimits:
    """Named settings of the index (safe defaults; see docs/imap.md, "Search")."""

    #: Messages indexed in one transaction.
    batch_messages: int = 500
    #: Characters of text in one transaction, so a batch of huge messages stays bounded.
    batch_chars: int = 16_000_000
    #: SQLite page cache per open account index, in KiB, while it answers searches.
    cache_kib: int = 8192
    #: The same while a catch-up indexes: merging trigram segments is much faster when they
    #: fit (about a third less time with 64 MiB than with 2 MiB at 30,000 messages).
    build_cache_kib: int = 65536
    #: Account indexes kept open at once (one SQLite connection each).
    max_open_accounts: int = 16
    text: TextLimits = TextLimits()


class IndexUnavailable(Exception):
    """The index cannot answer right now (I/O error, locked, being rebuilt); the caller
    scans the messages instead."""


# -- the searchable text of a message ---------------------------------------------------


def fold(text: str) -> str:
    """The normal form both indexed text and search strings are put in before a substring
    test: NFC (a composed and a decomposed "é" are the same), full Unicode case folding
    (RFC 9051 §6.4.4 asks for at least ASCII case-insensitivity), NUL as a space (SQLite
    text) and no lone surrogates."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = text.casefold()
    if "\r" in text:
        text = text.replace("\r\n", "\n")  # a CRLF in a literal matches a line end
    if "\x00" in text:
        text = text.replace("\x00", " ")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


@dataclass(frozen=True, slots=True)
class MessageText:
    """The folded searchable text of one message.

    ``head`` is the top-level header as lines ``"\\n" + name + ": " + value`` (names lower
    case; a field with encoded-words appears twice, decoded and raw, so both match).
    ``body`` is None when only the header was read. ``fields`` has the values of the
    FIELD_COLUMNS fields joined with ``"\\n"`` (None when the field is absent)."""

    head: str
    body: str | None
    fields: dict[str, str | None]

    def contains(self, target: str, needle: str) -> bool:
        """Whether ``needle`` (folded) occurs in TEXT, BODY or one FIELD_COLUMNS field."""
        if target == "text":
            return needle in self.head or (self.body is not None and needle in self.body)
        if target == "body":
            return self.body is not None and needle in self.body
        value = self.fields[target]
        # Values are unfolded: a string with a line break cannot be in one of them.
        return value is not None and "\n" not in needle and needle in value


def header_contains(head: str, name: str, needle: str) -> bool:
    """HEADER ``name`` ``needle`` (both folded) on a :attr:`MessageText.head`: some field
    of that name has ``needle`` in its value; the empty string matches any such field
    (RFC 9051 §6.4.4)."""
    if "\n" in needle:
        return False
    prefix = "\n" + name + ": "
    pos = head.find(prefix)
    while pos >= 0:
        start = pos + len(prefix)
        end = head.find("\n", start)
        if end < 0:
            end = len(head)
        if needle in head[start:end]:
            return True
        pos = head.find(prefix, end)
    return False


class MessageFacts(NamedTuple):
    """What SORT (RFC 5256 §3, RFC 5957) and THREAD (RFC 5256 §3) and the SENT* search keys
    need from a message's header, decoded. (A named tuple: SORT makes 100,000 of them.)"""

    #: The Date: field as seconds since the epoch (UTC), None when missing or unparseable.
    sent: float | None = None
    #: The Date: field's calendar date in its own zone ("YYYY-MM-DD"), for SENTON & co.
    sent_day: str | None = None
    #: The decoded Subject ("" when absent).
    subject: str = ""
    #: addr-mailbox of the first From/To/Cc address (RFC 5256 SORT FROM/TO/CC).
    from_mailbox: str = ""
    to_mailbox: str = ""
    cc_mailbox: str = ""
    #: RFC 5957 §3 display value of the first From/To address.
    display_from: str = ""
    display_to: str = ""
    #: Message-ID without angle brackets, None when there is no valid one.
    message_id: str | None = None
    #: RFC 5256 §3 REFERENCES: the References ids, else the first In-Reply-To id.
    references: tuple[str, ...] = ()

    def encode(self) -> str:
        """The stored form: fields separated by US (0x1F), which no field contains (they
        are sanitised when extracted), so reading 100,000 of them for a SORT is a split
        each, not a JSON parse."""
        return _SEP.join((
            "" if self.sent is None else repr(self.sent), self.sent_day or "", self.subject,
            self.from_mailbox, self.to_mailbox, self.cc_mailbox, self.display_from,
            self.display_to, "" if self.message_id is None else self.message_id,
            " ".join(self.references)))

    @classmethod
    def decode(cls, text: str) -> MessageFacts:
        v = text.split(_SEP)
        if len(v) != 10:
            raise ValueError("not a stored MessageFacts")
        return cls(float(v[0]) if v[0] else None, v[1] or None, v[2], v[3], v[4], v[5], v[6],
                   v[7], v[8] or None, tuple(v[9].split()))


_SEP = "\x1f"
# Control characters that cannot be kept in stored facts (and mean nothing in a subject).
_FACT_JUNK = re.compile(r"[\x1f\r\n]")


def _clean(text: str) -> str:
    return _FACT_JUNK.sub(" ", text) if ("\x1f" in text or "\n" in text or "\r" in text) \
        else text


_MSG_ID = re.compile(rb"<([^<>\s]+)>")
_LINE_BREAKS = re.compile(r"[\r\n]+")
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_HTML_HIDDEN = re.compile(r"<(script|style|head|title)\b[^>]*>.*?(?:</\1\s*>|\Z)", re.S | re.I)
_HTML_BLOCK = re.compile(
    r"</?(?:p|div|br|tr|td|th|li|ul|ol|table|h[1-6]|blockquote|pre|hr|section|article)"
    r"\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_SPACE = re.compile(r"[ \t\r\f\v\u00a0]+")
_HTML_LINES = re.compile(r"\s*\n\s*")


def _html_text(markup: str) -> str:
    """The text a reader sees in an HTML part: no tags, comments, scripts or styles;
    entities decoded; white space collapsed as a browser does."""
    markup = _HTML_COMMENT.sub(" ", markup)
    markup = _HTML_HIDDEN.sub(" ", markup)
    markup = _HTML_BLOCK.sub("\n", markup)
    markup = _HTML_TAG.sub("", markup)
    markup = html.unescape(markup)
    markup = _HTML_SPACE.sub(" ", markup)
    return _HTML_LINES.sub("\n", markup).strip()


def _fields(block: bytes, max_fields: int) -> list[tuple[str, bytes]]:
    """(lower-case name, unfolded raw value) of each field of a header block."""
    out = []
    for name, start, end in header_fields(block, 0, len(block)):
        if not name:
            continue
        colon = block.find(b":", start, end)
        value = unfold(block[colon + 1:end]).strip(b" \t")
        out.append((name.decode("utf-8", "replace"), value))
        if len(out) >= max_fields:
            break
    return out


def _field_lines(fields: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
    """(folded name, folded value) lines: the decoded value, and the raw one if different."""
    for name, raw in fields:
        decoded = _LINE_BREAKS.sub(" ", mime.decode_header_value(raw))
        yield fold(name), fold(decoded)
        raw_text = raw.decode("utf-8", "replace")
        if raw_text != decoded:
            yield fold(name), fold(_LINE_BREAKS.sub(" ", raw_text))


def _first(fields: list[tuple[str, bytes]], name: str) -> bytes | None:
    for field_name, value in fields:
        if field_name == name:
            return value
    return None


def _message_ids(raw: bytes | None) -> list[str]:
    if not raw:
        return []
    return [m.decode("utf-8", "replace") for m in _MSG_ID.findall(raw)]


def _sent(raw: bytes | None) -> tuple[float | None, str | None]:
    """The Date: field as a UTC timestamp and as the date in its own zone."""
    if not raw:
        return None, None
    try:
        parsed = email.utils.parsedate_tz(raw.decode("latin-1"))
        if parsed is None:
            return None, None
        day = datetime.date(parsed[0], parsed[1], parsed[2])
        stamp = calendar.timegm((*parsed[:6], 0, 1, -1)) - (parsed[9] or 0)
        datetime.datetime.fromtimestamp(stamp, datetime.UTC)  # in range?
    except (ValueError, OverflowError, OSError, IndexError, TypeError):
        return None, None
    return float(stamp), day.isoformat()


def _address_facts(addresses: list[Any]) -> tuple[str, str]:
    """(addr-mailbox, RFC 5957 §3 display value) of the first address of an ENVELOPE list;
    group markers (host NIL) are not addresses."""
    for address in addresses:
        if address.host is None:
            continue
        mailbox = (address.mailbox or b"").decode("utf-8", "replace")
        host = address.host.decode("utf-8", "replace")
        display = mime.decode_header_value(address.name) if address.name else ""
        if not display:
            display = f"{mailbox}@{host}" if address.mailbox is not None else ""
        return mailbox, display
    return "", ""


def _facts(root: Part, fields: list[tuple[str, bytes]]) -> MessageFacts:
    sent, sent_day = _sent(_first(fields, "date"))
    subject = _first(fields, "subject")
    envelope = root.envelope
    from_mailbox, display_from = _address_facts(envelope.from_ if envelope else [])
    to_mailbox, display_to = _address_facts(envelope.to if envelope else [])
    cc_mailbox, _ = _address_facts(envelope.cc if envelope else [])
    own = _message_ids(_first(fields, "message-id"))
    # RFC 5256 §3 (REFERENCES step 1): the References ids; without any valid one, the first
    # valid id of In-Reply-To is the only reference.
    references = _message_ids(_first(fields, "references"))
    if not references:
        references = _message_ids(_first(fields, "in-reply-to"))[:1]
    return MessageFacts(
        sent=sent, sent_day=sent_day,
        subject=_clean(mime.decode_header_value(subject)) if subject is not None else "",
        from_mailbox=_clean(from_mailbox), to_mailbox=_clean(to_mailbox),
        cc_mailbox=_clean(cc_mailbox), display_from=_clean(display_from),
        display_to=_clean(display_to),
        message_id=_clean(own[0]) if own else None,
        references=tuple(_clean(r) for r in references),
    )


Reader = Callable[[int, int], bytes]


def _file_reader(f: BinaryIO) -> Reader:
    def read(start: int, end: int) -> bytes:
        f.seek(start)
        return f.read(max(0, end - start))

    return read


def analyse_message(read: Reader, root: Part, limits: TextLimits = TextLimits(), *,
                    body: bool = True) -> tuple[MessageText, MessageFacts]:
    """The searchable text and the facts of a message, from its MIME index ``root`` and
    ``read(start, end)`` returning bytes of the stored message. Never raises on bad
    content; ``body=False`` reads only the top-level header."""
    fields = _fields(read(root.header_start, root.body_start), limits.max_fields)
    lines: list[tuple[str, str]] = []
    head_parts: list[str] = []
    size = 0
    for name, value in _field_lines(fields):
        line = "\n" + name + ": " + value
        size += len(line)
        if size > limits.max_header_chars:
            break
        lines.append((name, value))
        head_parts.append(line)
    columns: dict[str, str | None] = {}
    for field in FIELD_COLUMNS:
        values = [value for name, value in lines if name == field]
        columns[field] = "\n".join(values) if values else None
    text = MessageText("".join(head_parts), _body_text(read, root, limits) if body else None,
                       columns)
    return text, _facts(root, fields)


def _body_text(read: Reader, root: Part, limits: TextLimits) -> str:
    pieces: list[str] = []
    budget = limits.max_body_chars
    for part in mime.iter_parts(root):
        if budget <= 0:
            break
        if part is not root and part.body_start > part.header_start:
            # MIME headers of body parts and headers of attached messages are body text
            # (RFC 9051 §6.4.4: BODY searches the body, which holds them).
            block = read(part.header_start, part.body_start)
            piece = "\n".join(n + ": " + v for n, v in
                              _field_lines(_fields(block, limits.max_fields)))
            pieces.append(piece[:budget])
            budget -= len(pieces[-1]) + 1
        if part.content_type.startswith("text/") and part.body_end > part.body_start:
            # Never read much more than the text budget left can use.
            wanted = min(limits.max_part_bytes, 4 * budget + 64)
            end = min(part.body_end, part.body_start + wanted)
            raw = read(part.body_start, end)
            data = decode_body(raw, part.encoding)
            if data is None:  # an unknown encoding: index what is there
                data = raw
            content = decode_charset(data, part.params.get("charset"))
            if part.content_type == "text/html":
                content = _html_text(content)
            content = fold(content.replace("\r\n", "\n"))
            pieces.append(content[:budget])
            budget -= len(pieces[-1]) + 1
    return "\n".join(pieces)


def load_message(store: Store, account: str, mailbox: str, uid: int,
                 limits: TextLimits = TextLimits(), *,
                 body: bool = True) -> tuple[MessageText, MessageFacts]:
    """:func:`analyse_message` of a stored message: its structure from the store and one
    read per part. Raises the store's errors (NoSuchMessage once it is expunged)."""
    blob = store.get_structure(account, mailbox, uid)
    try:
        root: Part | None = mime.from_json(blob)
    except (mime.IndexFormatError, ValueError):
        root = None  # an older or foreign blob: index the bytes again
    with store.open_message(account, mailbox, uid) as f:
        if root is None:
            data = f.read()
            root = mime.index_message(data)
            return analyse_message(lambda s, e: data[s:e], root, limits, body=body)
        return analyse_message(_file_reader(f), root, limits, body=body)


# -- the index --------------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """Which UIDs of a mailbox the index answered for: every UID up to ``high`` except the
    ``unindexed`` ones (which could not be read when indexing)."""

    high: int = 0
    unindexed: frozenset[int] = frozenset()

    def covers(self, uid: int) -> bool:
        return uid <= self.high and uid not in self.unindexed


@dataclass(frozen=True)
class IndexAnswer:
    """UIDs the index found; only meaningful for UIDs the coverage covers."""

    matches: frozenset[int]
    coverage: Coverage


@dataclass(frozen=True)
class IndexFacts:
    facts: dict[int, MessageFacts]
    coverage: Coverage


_CORRUPTION = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CORRUPT_VTAB", "SQLITE_CORRUPT_INDEX",
               "SQLITE_CORRUPT_SEQUENCE"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS boxes (
    uidvalidity INTEGER PRIMARY KEY,
    high        INTEGER NOT NULL DEFAULT 0,   -- every UID up to here was looked at
    docs        INTEGER NOT NULL DEFAULT 0    -- rows in the box's table
);
CREATE TABLE IF NOT EXISTS unindexed (
    uidvalidity INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    PRIMARY KEY (uidvalidity, uid)
) WITHOUT ROWID;
"""


def _table(uidvalidity: int) -> str:
    return f"box_{int(uidvalidity)}"


def _facts_table(uidvalidity: int) -> str:
    return f"facts_{int(uidvalidity)}"


def _phrase(needle: str) -> str:
    """An FTS5 string: any characters, double quotes doubled."""
    return '"' + needle.replace('"', '""') + '"'


class _ForeignIndex(Exception):
    """The file is an index of another format version or another account: rebuilt."""


class _AccountIndex:
    """One account's database: a connection and the lock that serialises its use."""

    def __init__(self, path: Path, account: str, limits: FtsLimits) -> None:
        self.path = path
        self.account = account
        self.limits = limits
        self.lock = threading.RLock()
        self.closed = False
        #: Mailboxes (UIDVALIDITY) a catch-up is running for; another caller does not wait.
        self.indexing: set[int] = set()
        self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except (sqlite3.DatabaseError, _ForeignIndex) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and not _is_corruption(exc):
                raise
            log(logger, "full-text index unreadable; rebuilding it", logging.WARNING,
                account=self.account, path=str(self.path), error=str(exc))
            _remove_database(self.path)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # A cache that can be rebuilt: no fsync per commit (WAL stays consistent).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{int(self.limits.cache_kib)}")
            # One transaction: a reader never sees a half-initialised file.
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [("format", FTS_FORMAT), ("account", self.account)])
            conn.execute("COMMIT")
            if rows and (rows.get("format") != FTS_FORMAT
                         or rows.get("account") != self.account):
                raise _ForeignIndex(f"index of format {rows.get('format')} for"
                                    f" {rows.get('account')!r}")
        except BaseException:
            conn.close()
            raise
        return conn

    def rebuild(self) -> None:
        with self.lock:
            self.conn.close()
            _remove_database(self.path)
            self.indexing.clear()
            self.conn = self._connect()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.conn.close()

    # all methods below are called with the lock held

    def box(self, uidvalidity: int) -> tuple[int, int]:
        """(high, docs) of a mailbox, creating its table on first use."""
        row = self.conn.execute("SELECT high, docs FROM boxes WHERE uidvalidity = ?",
                                (uidvalidity,)).fetchone()
        if row is not None:
            return row[0], row[1]
        columns = ", ".join(FIELD_COLUMNS.values())
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {_table(uidvalidity)} USING fts5("
                f"{columns}, head, body,"
                " tokenize='trigram case_sensitive 1', detail=full, columnsize=0)")
            # The facts in a plain table: SORT reads them all without touching the text.
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {_facts_table(uidvalidity)}"
                              " (uid INTEGER PRIMARY KEY, facts TEXT NOT NULL)")
            self.conn.execute("INSERT INTO boxes (uidvalidity) VALUES (?)", (uidvalidity,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return 0, 0

    def coverage(self, uidvalidity: int) -> Coverage:
        high, _ = self.box(uidvalidity)
        unindexed = frozenset(r[0] for r in self.conn.execute(
            "SELECT uid FROM unindexed WHERE uidvalidity = ?", (uidvalidity,)))
        return Coverage(high, unindexed)


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", None)
    if name in _CORRUPTION:
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass


class FullTextIndex:
    """The full-text index of a store (see the module docstring). Safe to use from several
    threads; each account's database is used by one thread at a time."""

    def __init__(self, store: Store, directory: str | os.PathLike[str],
                 limits: FtsLimits | None = None) -> None:
        self.store = store
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.limits = limits or FtsLimits()
        self._accounts: OrderedDict[str, _AccountIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._opening = threading.Lock()
        self._closed = False

    @classmethod
    def for_data_dir(cls, store: Store, data_dir: str | os.PathLike[str],
                     limits: FtsLimits | None = None) -> FullTextIndex:
        """The index of the store under ``data_dir`` (it lives in ``data_dir/fts``)."""
        return cls(store, Path(data_dir) / "fts", limits)

    def path_of(self, account: str) -> Path:
        """The database file of an account (named by a hash: account names are addresses)."""
        digest = hashlib.sha256(account.encode("utf-8", "surrogateescape")).hexdigest()
        return self.directory / f"{digest[:40]}.sqlite"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            accounts = list(self._accounts.values())
            self._accounts.clear()
        for index in accounts:
            index.close()

    # -- plumbing ---------------------------------------------------------------------

    def _index(self, account: str) -> _AccountIndex:
        with self._lock:
            if self._closed:
                raise IndexUnavailable("the full-text index is closed")
            index = self._accounts.get(account)
            if index is not None:
                self._accounts.move_to_end(account)
                return index
        # One opening at a time: two connections initialising (or rebuilding) the same new
        # file at once could each take the other's half-written file for a foreign one.
        with self._opening:
            with self._lock:
                index = self._accounts.get(account)
            if index is not None:  # another thread opened it meanwhile
                return index
            try:
                index = _AccountIndex(self.path_of(account), account, self.limits)
            except sqlite3.Error as exc:
                raise IndexUnavailable(f"cannot open the full-text index: {exc}") from exc
            evicted = []
            with self._lock:
                self._accounts[account] = index
                while len(self._accounts) > max(1, self.limits.max_open_accounts):
                    evicted.append(self._accounts.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return index

    @contextmanager
    def _using(self, account: str) -> Iterator[_AccountIndex]:
        """The account's index with its lock held; database errors become
        IndexUnavailable, and corruption rebuilds the file first."""
        index = self._index(account)
        with index.lock:
            if index.closed:  # evicted by another thread meanwhile: use a fresh one
                raise IndexUnavailable("the account's index was closed; try again")
            try:
                yield index
            except sqlite3.DatabaseError as exc:
                try:
                    if index.conn.in_transaction:
                        index.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if _is_corruption(exc):
                    log(logger, "full-text index corrupt; rebuilding it", logging.WARNING,
                        account=account, path=str(index.path), error=str(exc))
                    try:
                        index.rebuild()
                    except sqlite3.Error as again:
                        raise IndexUnavailable(f"cannot rebuild the index: {again}") from again
                    raise IndexUnavailable("the full-text index was corrupt and is rebuilt") \
                        from exc
                raise IndexUnavailable(f"full-text index error: {exc}") from exc
            except sqlite3.Error as exc:
                raise IndexUnavailable(f"full-text index error: {exc}") from exc

    def _uidvalidity(self, account: str, mailbox: str) -> int:
        try:
            return self.store.get_mailbox(account, mailbox).uidvalidity
        except StoreError as exc:
            raise IndexUnavailable(f"no mailbox to index: {exc}") from exc

    # -- indexing -----------------------------------------------------------------------

    def catch_up(self, account: str, mailbox: str, infos: Sequence[MessageInfo], *,
                 max_messages: int | None = None) -> int:
        """Index the messages of ``infos`` (a mailbox view in UID order, all of it) that are
        not indexed yet, at most ``max_messages`` of them (None: all), in batches of
        :attr:`FtsLimits.batch_messages`, each committed on its own. Prunes rows of
        messages no longer in the view. Returns how many messages are left to index (0 when
        the view is fully indexed). If another thread is indexing this mailbox, returns
        at once. Raises IndexUnavailable."""
        uidvalidity = self._uidvalidity(account, mailbox)
        uids = [m.uid for m in infos]
        with self._using(account) as index:
            if uidvalidity in index.indexing:
                return len(uids) - bisect_right(uids, index.box(uidvalidity)[0])
            high, docs = index.box(uidvalidity)
            coverage = index.coverage(uidvalidity)
            self._prune(index, uidvalidity, uids, coverage, docs)
            retry = sorted(u for u in coverage.unindexed if u <= high)
            todo = retry + uids[bisect_right(uids, high):]
            index.indexing.add(uidvalidity)
            if todo:
                index.conn.execute(f"PRAGMA cache_size=-{int(self.limits.build_cache_kib)}")
        try:
            budget = len(todo) if max_messages is None else max(0, max_messages)
            done = 0
            while done < min(budget, len(todo)):
                take = min(budget, len(todo)) - done
                batch = self._read_batch(account, mailbox, todo[done:done + take])
                done += len(batch)
                with self._using(account) as index:
                    self._write_batch(index, uidvalidity, batch)
            return len(todo) - done
        finally:
            with self._lock:
                index = self._accounts.get(account)
            if index is not None:
                with index.lock:
                    index.indexing.discard(uidvalidity)
                    if not index.indexing and not index.closed:
                        # Back to the small cache: SQLite frees the pages above it.
                        try:
                            index.conn.execute(
                                f"PRAGMA cache_size=-{int(self.limits.cache_kib)}")
                        except sqlite3.Error:
                            pass

    def _read_batch(self, account: str, mailbox: str, uids: list[int]
                    ) -> list[tuple[int, tuple[MessageText, MessageFacts] | str | None]]:
        """Read up to one batch (by count and by characters). Each entry is the text and
        facts, None for a message that is gone, or an error text for one that could not be
        read."""
        limits = self.limits
        out: list[tuple[int, tuple[MessageText, MessageFacts] | str | None]] = []
        chars = 0
        for uid in uids[:max(1, limits.batch_messages)]:
            try:
                loaded = load_message(self.store, account, mailbox, uid, limits.text)
            except NoSuchMessage:
                out.append((uid, None))
                continue
            except (StoreError, OSError) as exc:
                out.append((uid, str(exc)))
                continue
            except Exception as exc:  # a bug on hostile content: keep the message searchable
                log(logger, "cannot extract the text of a message", logging.ERROR,
                    account=account, mailbox=mailbox, uid=uid, error=repr(exc))
                out.append((uid, repr(exc)))
                continue
            out.append((uid, loaded))
            chars += len(loaded[0].head) + len(loaded[0].body or "")
            if chars >= limits.batch_chars:
                break
        return out

    def _write_batch(self, index: _AccountIndex, uidvalidity: int,
                     batch: list[tuple[int, tuple[MessageText, MessageFacts] | str | None]]
                     ) -> None:
        conn = index.conn
        table = _table(uidvalidity)
        high, _ = index.box(uidvalidity)
        columns = ", ".join(FIELD_COLUMNS.values())
        marks = ", ".join("?" for _ in FIELD_COLUMNS)
        conn.execute("BEGIN IMMEDIATE")
        added = 0
        for uid, loaded in batch:
            # Another catch-up may have indexed it meanwhile (rows are never replaced).
            exists = conn.execute(f"SELECT 1 FROM {table} WHERE rowid = ?", (uid,)).fetchone()
            if isinstance(loaded, str):
                log(logger, "message not indexed; searches will read it", logging.WARNING,
                    account=index.account, uidvalidity=uidvalidity, uid=uid, error=loaded)
                conn.execute("INSERT OR IGNORE INTO unindexed (uidvalidity, uid) VALUES (?, ?)",
                             (uidvalidity, uid))
            else:
                conn.execute("DELETE FROM unindexed WHERE uidvalidity = ? AND uid = ?",
                             (uidvalidity, uid))
                if loaded is not None and exists is None:
                    text, facts = loaded
                    conn.execute(
                        f"INSERT INTO {table} (rowid, {columns}, head, body)"
                        f" VALUES (?, {marks}, ?, ?)",
                        (uid, *(text.fields[f] for f in FIELD_COLUMNS), text.head,
                         text.body or ""))
                    conn.execute(f"INSERT OR REPLACE INTO {_facts_table(uidvalidity)}"
                                 " (uid, facts) VALUES (?, ?)", (uid, facts.encode()))
                    added += 1
            high = max(high, uid)
        conn.execute("UPDATE boxes SET high = ?, docs = docs + ? WHERE uidvalidity = ?",
                     (high, added, uidvalidity))
        conn.execute("COMMIT")

    def _prune(self, index: _AccountIndex, uidvalidity: int, uids: list[int],
               coverage: Coverage, docs: int) -> None:
        """Delete rows (and unindexed marks) of messages that left the view. Only UIDs up
        to the view's last one are judged: a session that has not seen new mail yet must
        not delete its rows."""
        last = uids[-1] if uids else 0
        in_view = bisect_right(uids, coverage.high)
        expected = in_view - sum(1 for u in coverage.unindexed if u <= coverage.high
                                 and _contains(uids, u))
        gone_marks = [u for u in coverage.unindexed if u <= last and not _contains(uids, u)]
        if docs <= expected and not gone_marks:
            return
        conn = index.conn
        table = _table(uidvalidity)
        view = set(uids)
        stale = [r[0] for r in conn.execute(f"SELECT rowid FROM {table} WHERE rowid <= ?",
                                            (last,)) if r[0] not in view]
        if not stale and not gone_marks:
            return
        conn.execute("BEGIN IMMEDIATE")
        for start in range(0, len(stale), 500):
            chunk = stale[start:start + 500]
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM {table} WHERE rowid IN ({marks})", chunk)
            conn.execute(f"DELETE FROM {_facts_table(uidvalidity)} WHERE uid IN ({marks})",
                         chunk)
        for uid in gone_marks:
            conn.execute("DELETE FROM unindexed WHERE uidvalidity = ? AND uid = ?",
                         (uidvalidity, uid))
        conn.execute("UPDATE boxes SET docs = docs - ? WHERE uidvalidity = ?",
                     (len(stale), uidvalidity))
        conn.execute("COMMIT")

    def prune_account(self, account: str) -> int:
        """Drop the tables of mailboxes that no longer exist (deleted, or re-created with a
        new UIDVALIDITY). Returns how many were dropped."""
        try:
            live = {m.uidvalidity for m in self.store.list_mailboxes(account)}
        except StoreError:
            live = set()
        with self._using(account) as index:
            known = [r[0] for r in index.conn.execute("SELECT uidvalidity FROM boxes")]
            dead = [uv for uv in known if uv not in live and uv not in index.indexing]
            for uv in dead:
                index.conn.execute("BEGIN IMMEDIATE")
                index.conn.execute(f"DROP TABLE IF EXISTS {_table(uv)}")
                index.conn.execute(f"DROP TABLE IF EXISTS {_facts_table(uv)}")
                index.conn.execute("DELETE FROM boxes WHERE uidvalidity = ?", (uv,))
                index.conn.execute("DELETE FROM unindexed WHERE uidvalidity = ?", (uv,))
                index.conn.execute("COMMIT")
        return len(dead)

    def drop_account(self, account: str) -> None:
        """Forget an account's index (its database file is deleted)."""
        with self._lock:
            index = self._accounts.pop(account, None)
        if index is not None:
            index.close()
        _remove_database(self.path_of(account))

    # -- answering ----------------------------------------------------------------------

    def coverage(self, account: str, mailbox: str) -> Coverage:
        uidvalidity = self._uidvalidity(account, mailbox)
        with self._using(account) as index:
            return index.coverage(uidvalidity)

    def search_text(self, account: str, mailbox: str, target: str, needle: str) -> IndexAnswer:
        """UIDs whose TEXT, BODY or FIELD_COLUMNS field (``target``) contains ``needle``
        (already folded), exactly as :meth:`MessageText.contains` would say."""
        if target not in TEXT_TARGETS:
            raise ValueError(f"not a text target: {target}")
        uidvalidity = self._uidvalidity(account, mailbox)
        table = _table(uidvalidity)
        if target == "text":
            columns = ("head", "body")
        elif target == "body":
            columns = ("body",)
        else:
            columns = (FIELD_COLUMNS[target],)
        with self._using(account) as index:
            coverage = index.coverage(uidvalidity)
            conn = index.conn
            if target in FIELD_COLUMNS and "\n" in needle:
                rows: Any = []
            elif not needle:
                condition = "1" if target in ("text", "body") else f"{columns[0]} IS NOT NULL"
                rows = conn.execute(f"SELECT rowid FROM {table} WHERE {condition}")
            elif len(needle) < TRIGRAM:
                condition = " OR ".join(f"instr({c}, ?) > 0" for c in columns)
                rows = conn.execute(f"SELECT rowid FROM {table} WHERE {condition}",
                                    (needle,) * len(columns))
            else:
                query = "{" + " ".join(columns) + "} : " + _phrase(needle)
                rows = conn.execute(f"SELECT rowid FROM {table} WHERE {table} MATCH ?",
                                    (query,))
            return IndexAnswer(frozenset(r[0] for r in rows), coverage)

    def search_header(self, account: str, mailbox: str, name: str, needle: str) -> IndexAnswer:
        """UIDs with a header field ``name`` (folded) whose value contains ``needle``
        (folded), exactly as :func:`header_contains` says: the index narrows the candidates,
        the stored header text decides."""
        uidvalidity = self._uidvalidity(account, mailbox)
        table = _table(uidvalidity)
        with self._using(account) as index:
            coverage = index.coverage(uidvalidity)
            conn = index.conn
            if "\n" in needle:
                return IndexAnswer(frozenset(), coverage)
            if len(needle) >= TRIGRAM:
                rows = conn.execute(f"SELECT rowid, head FROM {table} WHERE {table} MATCH ?",
                                    ("head : " + _phrase(needle),))
            else:
                rows = conn.execute(f"SELECT rowid, head FROM {table} WHERE instr(head, ?) > 0",
                                    ("\n" + name + ":",))
            matches = frozenset(uid for uid, head in rows if header_contains(head, name, needle))
            return IndexAnswer(matches, coverage)

    def facts(self, account: str, mailbox: str, uids: Collection[int]) -> IndexFacts:
        """The stored facts of those of ``uids`` that are indexed (a stored entry that
        cannot be read is left out: the caller reads that message)."""
        uidvalidity = self._uidvalidity(account, mailbox)
        table = _facts_table(uidvalidity)
        with self._using(account) as index:
            coverage = index.coverage(uidvalidity)
            conn = index.conn
            _, docs = index.box(uidvalidity)
            if len(uids) * 4 >= docs:
                wanted = uids if isinstance(uids, (set, frozenset)) else set(uids)
                rows: Any = [r for r in conn.execute(f"SELECT uid, facts FROM {table}")
                             if r[0] in wanted]
            else:
                ordered = sorted(uids)
                rows = []
                for start in range(0, len(ordered), 500):
                    chunk = ordered[start:start + 500]
                    rows += conn.execute(f"SELECT uid, facts FROM {table} WHERE uid IN"
                                         f" ({','.join('?' * len(chunk))})", chunk).fetchall()
        found: dict[int, MessageFacts] = {}
        decode = MessageFacts.decode
        for uid, stored in rows:
            try:
                found[uid] = decode(stored)
            except ValueError:
                continue
        return IndexFacts(found, coverage)


def _contains(sorted_uids: list[int], uid: int) -> bool:
    pos = bisect_right(sorted_uids, uid)
    return pos > 0 and sorted_uids[pos - 1] == uid
