"""IMAP commands as data: what the parser produces and the session executes.

One frozen dataclass per command of RFC 9051 §6 and RFC 3501 §6, plus the extensions
Mailkeep announces (IDLE RFC 2177, NAMESPACE RFC 2342, ID RFC 2971, ENABLE RFC 5161, UNSELECT
RFC 3691, UIDPLUS RFC 4315, MOVE RFC 6851, LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819,
CREATE-SPECIAL-USE RFC 6154, ESEARCH RFC 4731, SEARCHRES RFC 5182, CONDSTORE/QRESYNC
RFC 7162, QUOTA RFC 9208, BINARY RFC 3516, MULTIAPPEND RFC 3502, SORT/THREAD RFC 5256,
COMPRESS RFC 4978, WITHIN RFC 5032, SAVEDATE RFC 8514, PREVIEW RFC 8970).

Conventions:

* Mailbox names are the raw ``astring`` bytes from the wire. Whether they are modified
  UTF-7 (IMAP4rev1) or UTF-8 (IMAP4rev2, UTF8=ACCEPT) depends on the session, which decodes
  them; the parser does not guess.
* Atoms that the RFCs define as case-insensitive (command names, fetch items, search keys,
  status items, flags' system names) are upper-cased by the parser, except flags and
  keywords, which keep their case (system flags are normalised to ``\\Seen`` etc.).
* Search strings are the raw bytes of the ``astring``; they are decoded with the command's
  CHARSET by the search layer.
* ``*`` in a sequence set is ``None``; the session resolves it against the mailbox.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

# -- sequence sets (RFC 9051 §9 sequence-set, RFC 5182 "$") --------------------------------


@dataclass(frozen=True)
class SequenceSet:
    """``1:4,7,9:*``. Each range is ``(first, last)`` as written (not ordered); ``None``
    stands for ``*``. ``saved`` is the SEARCHRES ``$`` (RFC 5182 §2.1), which has no
    ranges."""

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False


# -- FETCH (RFC 9051 §6.4.5) ----------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A ``section`` of BODY[...] / BINARY[...]: a part path and an optional text part.

    ``part`` is ``(1, 2)`` for ``1.2``, ``()`` for the whole message. ``text`` is None (the
    whole part), "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME".
    ``fields`` holds the header names of HEADER.FIELDS(.NOT), upper-cased, in order.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchAttribute:
    """One fetch item. ``name`` is upper-case: FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE,
    BODYSTRUCTURE, BODY (the non-extensible structure, when ``section`` is None), UID,
    MODSEQ, SAVEDATE, PREVIEW, RFC822, RFC822.HEADER, RFC822.TEXT, BINARY.SIZE, and BODY /
    BINARY with a section. Macros (ALL, FAST, FULL) are expanded by the parser.

    ``peek`` is BODY.PEEK / BINARY.PEEK. ``partial`` is ``<offset.length>`` (RFC 9051
    §6.4.5), ``(offset, length)``. ``lazy`` is PREVIEW (LAZY) (RFC 8970 §3.1).
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None
    lazy: bool = False


# -- SEARCH (RFC 9051 §6.4.4, RFC 3501 §6.4.4, RFC 5032, RFC 7162, RFC 8514) --------------


@dataclass(frozen=True)
class SearchKey:
    """One node of a search program. ``kind`` and ``args``:

    ========================  ================================================================
    ALL                       ()
    AND                       (SearchKey, SearchKey, ...)  a parenthesised list or a program
    OR                        (SearchKey, SearchKey)
    NOT                       (SearchKey,)
    SEQUENCE                  (SequenceSet,)               a bare sequence set
    UID                       (SequenceSet,)
    FLAG / NOFLAG             ("\\\\Seen",) or a keyword   ANSWERED/UNANSWERED, DELETED, DRAFT,
                                                           FLAGGED, SEEN/UNSEEN, KEYWORD/UNKEYWORD
    RECENT                    ()  matches nothing (no \\\\Recent in this server); NEW = AND(RECENT,
                                  NOFLAG \\\\Seen); OLD = NOT(RECENT)
    HEADER                    (field name upper-cased str, value bytes); FROM, TO, CC, BCC
                              and SUBJECT are HEADER of that field
    BODY / TEXT               (bytes,)
    BEFORE / ON / SINCE       (datetime.date,)              internal date
    SENTBEFORE / SENTON / SENTSINCE  (datetime.date,)       Date: header
    SAVEDBEFORE / SAVEDON / SAVEDSINCE  (datetime.date,)    RFC 8514
    SAVEDATESUPPORTED         ()
    LARGER / SMALLER          (int,)
    OLDER / YOUNGER           (int seconds,)                RFC 5032
    MODSEQ                    (int,)                        RFC 7162 §3.1.5 (entry ignored)
    ========================  ================================================================
    """

    kind: str
    args: tuple = ()


#: RETURN options of ESEARCH (RFC 4731 §3.1) and SEARCHRES (RFC 5182): MIN, MAX, ALL,
#: COUNT, SAVE. An empty tuple after ``RETURN ()`` means ALL.
SearchReturn = tuple[str, ...]


# -- the commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    tag: str


# any state (RFC 9051 §6.1)
@dataclass(frozen=True)
class Capability(Command):
    pass


@dataclass(frozen=True)
class Noop(Command):
    pass


@dataclass(frozen=True)
class Logout(Command):
    pass


@dataclass(frozen=True)
class Id(Command):
    """RFC 2971: ``params`` is None for ``ID NIL``."""

    params: tuple[tuple[bytes, bytes | None], ...] | None = None


# not authenticated (RFC 9051 §6.2)
@dataclass(frozen=True)
class StartTLS(Command):
    pass


@dataclass(frozen=True)
class Authenticate(Command):
    """``initial_response`` (SASL-IR, RFC 4959) is the base64 text as sent; ``b"="`` is an
    empty initial response; None means none was sent."""

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True)
class Login(Command):
    username: bytes
    password: bytes


# authenticated (RFC 9051 §6.3)
@dataclass(frozen=True)
class Enable(Command):
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class QResyncParameters:
    """SELECT (QRESYNC (uidvalidity modseq [known-uids [(seq-match uid-match)]]))."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    known_sequence: SequenceSet | None = None
    known_uid_match: SequenceSet | None = None


@dataclass(frozen=True)
class Select(Command):
    """SELECT, or EXAMINE when ``readonly``."""

    mailbox: bytes
    readonly: bool = False
    condstore: bool = False
    qresync: QResyncParameters | None = None


@dataclass(frozen=True)
class Create(Command):
    mailbox: bytes
    #: CREATE-SPECIAL-USE (RFC 6154 §3): ("\\Sent",)
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete(Command):
    mailbox: bytes


@dataclass(frozen=True)
class Rename(Command):
    old: bytes
    new: bytes


@dataclass(frozen=True)
class Subscribe(Command):
    mailbox: bytes


@dataclass(frozen=True)
class Unsubscribe(Command):
    mailbox: bytes


@dataclass(frozen=True)
class List(Command):
    """LIST with LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), SPECIAL-USE (RFC 6154).

    ``selection``: upper-cased selection options (SUBSCRIBED, REMOTE, RECURSIVEMATCH,
    SPECIAL-USE). ``returns``: upper-cased return options (SUBSCRIBED, CHILDREN,
    SPECIAL-USE, STATUS). ``status_items`` are the items of RETURN (STATUS (...)).
    ``extended`` is True when either list of options was given (the reply then follows
    RFC 5258 rules).
    """

    reference: bytes
    patterns: tuple[bytes, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    extended: bool = False


@dataclass(frozen=True)
class Lsub(Command):
    reference: bytes
    pattern: bytes


@dataclass(frozen=True)
class Namespace(Command):
    pass


@dataclass(frozen=True)
class Status(Command):
    """``items`` upper-cased: MESSAGES, UIDNEXT, UIDVALIDITY, UNSEEN, DELETED, SIZE,
    RECENT, HIGHESTMODSEQ, APPENDLIMIT."""

    mailbox: bytes
    items: tuple[str, ...]


@dataclass(frozen=True)
class AppendMessage:
    flags: tuple[str, ...] = ()
    internal_date: datetime.datetime | None = None
    data: bytes = b""
    #: Sent as literal8 ``~{n}`` (BINARY, RFC 3516 §4.4): may hold NUL.
    binary: bool = False
    #: UTF8 (data) form of APPEND (RFC 9051 §6.3.12, RFC 6855 §4).
    utf8: bool = False


@dataclass(frozen=True)
class Append(Command):
    """APPEND with MULTIAPPEND (RFC 3502): one or more messages."""

    mailbox: bytes
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True)
class Idle(Command):
    pass


@dataclass(frozen=True)
class GetQuota(Command):
    root: bytes


@dataclass(frozen=True)
class GetQuotaRoot(Command):
    mailbox: bytes


@dataclass(frozen=True)
class SetQuota(Command):
    root: bytes
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Compress(Command):
    mechanism: str


# selected (RFC 9051 §6.4)
@dataclass(frozen=True)
class Check(Command):
    pass


@dataclass(frozen=True)
class Close(Command):
    pass


@dataclass(frozen=True)
class Unselect(Command):
    pass


@dataclass(frozen=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE (RFC 4315 §2.1) with ``uids``."""

    uids: SequenceSet | None = None


@dataclass(frozen=True)
class Search(Command):
    """SEARCH / UID SEARCH. ``returns`` is None for the plain form (untagged SEARCH) and a
    tuple for ESEARCH ``RETURN (...)``."""

    uid: bool
    key: SearchKey
    charset: str | None = None
    returns: SearchReturn | None = None


@dataclass(frozen=True)
class Fetch(Command):
    uid: bool
    sequence_set: SequenceSet
    items: tuple[FetchAttribute, ...]
    #: CONDSTORE CHANGEDSINCE (RFC 7162 §3.1.4.1)
    changed_since: int | None = None
    #: QRESYNC VANISHED (RFC 7162 §3.2.6), UID FETCH only
    vanished: bool = False


@dataclass(frozen=True)
class Store(Command):
    uid: bool
    sequence_set: SequenceSet
    #: "set" (FLAGS), "add" (+FLAGS), "remove" (-FLAGS)
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True)
class Copy(Command):
    uid: bool
    sequence_set: SequenceSet
    mailbox: bytes


@dataclass(frozen=True)
class Move(Command):
    uid: bool
    sequence_set: SequenceSet
    mailbox: bytes


@dataclass(frozen=True)
class Sort(Command):
    """RFC 5256 SORT. ``criteria``: (key, reverse) with key in ARRIVAL, CC, DATE, FROM,
    SIZE, SUBJECT, TO (and DISPLAYFROM/DISPLAYTO, RFC 5957)."""

    uid: bool
    criteria: tuple[tuple[str, bool], ...]
    charset: str
    key: SearchKey
    returns: SearchReturn | None = None


@dataclass(frozen=True)
class Thread(Command):
    """RFC 5256 THREAD: ``algorithm`` is ORDEREDSUBJECT or REFERENCES."""

    uid: bool
    algorithm: str
    charset: str
    key: SearchKey


# -- what the parser reports besides commands --------------------------------------------


@dataclass(frozen=True)
class ParseError:
    """A command line that cannot be parsed: answered ``tag BAD text`` (``tag`` is ``*``
    when no tag could be read). ``code`` is an optional response code (e.g. TOOBIG,
    CLIENTBUG). ``fatal`` means the connection cannot be resynchronised (answered with
    ``* BYE`` and closed)."""

    tag: str
    text: str
    code: str | None = None
    fatal: bool = False


@dataclass(frozen=True)
class ContinuationRequest:
    """The client sent a synchronising literal ``{n}``: the server must answer ``+`` (or
    refuse it, which the parser already did with a ParseError) before the client goes on."""

    text: str = "Ready for literal data"


@dataclass(frozen=True)
class IdleDone:
    """The ``DONE`` line that ends IDLE (RFC 2177)."""


@dataclass(frozen=True)
class SaslResponse:
    """A line sent during AUTHENTICATE: base64 text, or ``*`` to cancel (RFC 9051 §6.2.2)."""

    data: bytes
    cancelled: bool = False


@dataclass(frozen=True)
class ParserLimits:
    """Every input limit of the IMAP parser (named settings, see docs/imap.md)."""

    #: Longest command line without its literals (Dovecot uses 64 KiB).
    max_line: int = 65536
    #: Largest literal before authentication (LOGIN, AUTHENTICATE strings).
    max_literal_unauthenticated: int = 8192
    #: Largest literal once authenticated (APPEND's message: APPENDLIMIT).
    max_literal: int = 64 * 1024 * 1024
    #: Largest non-synchronising literal (RFC 7888 §5: LITERAL- caps it at 4096; we
    #: announce LITERAL+ but still cap pre-auth use).
    max_nonsync_literal_unauthenticated: int = 4096
    #: Nesting of parenthesised lists (search programs, BODY section lists).
    max_depth: int = 32
    #: Messages in one MULTIAPPEND.
    max_append_messages: int = 1000
    #: Total size of the literals of one command (MULTIAPPEND).
    max_command_bytes: int = 256 * 1024 * 1024
    #: Items in one sequence set, search program or fetch list.
    max_items: int = 10000


ParserEvent = (Command | ParseError | ContinuationRequest | IdleDone | SaslResponse)
