"""The sans-IO IMAP command parser: client bytes in, :mod:`mailkeep.imap.commands` out.

Follows the formal syntax of RFC 9051 §9 (IMAP4rev2) and RFC 3501 §9 (IMAP4rev1), with the
extended syntax of RFC 4466 and the grammar of every extension listed in ``commands.py``.
``CommandParser`` is fed whatever the socket delivered (``receive_data``) and hands back one
event at a time (``next_event``): a command, a :class:`ParseError` to answer with BAD, a
:class:`ContinuationRequest` to answer with ``+``, or, in the modes the session switches on,
the ``DONE`` of IDLE (RFC 2177) and the lines of an AUTHENTICATE exchange (RFC 9051 §6.2.2).
It never touches a socket, a clock or a file.

Framing (RFC 9051 §4.3, RFC 7888, RFC 3516 §4.4):

* A command is one line, or several lines joined by literals. A line ends with CRLF; a bare
  LF is accepted too (some clients send it, Dovecot accepts it), a bare CR never ends one.
* ``{n}`` is a synchronising literal: once its line is in, the parser emits a
  ContinuationRequest and then reads exactly n octets. ``{n+}`` (LITERAL+) is read without a
  continuation. ``~{n}`` / ``~{n+}`` is a literal8 (BINARY), which may hold NUL.
* Every limit is checked before anything is buffered: a literal announces its size, so an
  oversized one is refused from its header alone and nothing is ever allocated for it. An
  oversized synchronising literal is answered ``BAD [TOOBIG]`` and the client, which waits
  for ``+``, abandons the command (RFC 7888 §4), so the parser simply goes on with the next
  line. An oversized non-synchronising literal is already on its way: it is skipped by
  counting octets, without storing them, up to ``max_command_bytes`` (after login) or
  ``max_literal_unauthenticated`` (before); a larger one cannot be skipped in reasonable
  time and is fatal (``* BYE``).
* An over-long line is answered BAD as soon as it is detected and the rest of it is dropped
  as it arrives, never buffered; if it ended with a non-synchronising literal, that literal
  is skipped too, so the client's data is never read as commands.

Leniency, chosen where real clients differ from the grammar: empty lines are ignored (a
stray CRLF after a literal would otherwise earn a BAD nobody expects); astrings and mailbox
patterns may carry 8-bit octets unquoted (UTF-8 names from clients that do not quote them;
the session decides whether the name is valid); APPEND accepts NUL inside a plain literal.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable

from mailkeep.imap.commands import (
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Compress,
    ContinuationRequest,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    IdleDone,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    ParseError,
    ParserEvent,
    ParserLimits,
    QResyncParameters,
    Rename,
    SaslResponse,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceSet,
    SetQuota,
    Sort,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Thread,
    Unselect,
    Unsubscribe,
)

__all__ = ["CommandParser", "parse_sequence_set"]

# -- lexical classes (RFC 9051 §9) ----------------------------------------------------------

# ATOM-CHAR: any CHAR (0x01-0x7f) except atom-specials: "(" ")" "{" SP CTL "%" "*" DQUOTE
# "\" and "]" (resp-specials).
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
# ASTRING-CHAR is ATOM-CHAR or "]". 8-bit octets are let through (see the module docstring).
_ASTRING_ATOM = re.compile(rb'[^\x00-\x20\x7f(){%*"\\]+')
# list-char = ATOM-CHAR / list-wildcards / resp-specials (RFC 9051 §9), 8-bit as above.
_LIST_ATOM = re.compile(rb'[^\x00-\x20\x7f(){"\\]+')
# tag = 1*<any ASTRING-CHAR except "+">
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
# quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR excludes CR and LF and escapes only
# DQUOTE and "\"; RFC 9051 adds UTF-8, so 8-bit octets pass. NUL is no CHAR.
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE = re.compile(rb'\\(["\\])')
# literal / literal8 header; it must end its line (the reader checks that).
_LITERAL = re.compile(rb"(~?)\{(\d+)(\+?)\}")
# flag = "\" atom (system flags and flag-extension) / flag-keyword (an atom)
_FLAG = re.compile(rb'\\?[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_DIGITS = re.compile(rb"\d+")
# The characters of a sequence-set token; its structure is checked afterwards.
_SEQUENCE_TOKEN = re.compile(rb"[0-9:*,$]+")
_SEQUENCE_SYNTAX = re.compile(
    r"(?:[1-9][0-9]*|\*)(?::(?:[1-9][0-9]*|\*))?(?:,(?:[1-9][0-9]*|\*)(?::(?:[1-9][0-9]*|\*))?)*"
)
# fetch-att names, section specs and partials (RFC 9051 §9 fetch-att, section, partial)
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_SPEC = re.compile(rb"[A-Za-z0-9.]*")
_PARTIAL = re.compile(rb"<(\d+)\.(\d+)>")
# date = date-text / DQUOTE date-text DQUOTE; date-text = date-day "-" date-month "-" date-year
_DATE = re.compile(rb'(")?(\d{1,2})-([A-Za-z]{3})-(\d{4})(?(1)")')
# date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE.
# date-day-fixed is (SP DIGIT) / 2DIGIT; a single digit without the space is accepted too.
_DATE_TIME = re.compile(
    rb'" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"'
)
# initial-resp = base64 / "=" (RFC 4959 §7); the SASL layer decodes and checks it.
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+=*|=")
_STORE_ITEM = re.compile(rb"[+-]?[A-Za-z.]+")
_PREVIEW_LAZY = re.compile(rb"(?i) \(LAZY[ )]")

_MONTHS = {
    name: number for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}

# nz-number is a 32-bit number; number64 and mod-sequence-value are 63-bit (RFC 9051 §9,
# RFC 7162 §7).
MAX_NUMBER = 2**32 - 1
MAX_NUMBER64 = 2**63 - 1
# A literal header with more digits than this is far over any limit; it is not converted.
_MAX_LITERAL_DIGITS = 20
# How much of a dropped over-long line is kept to see whether it ended with a literal.
_DISCARD_TAIL = 40

# System flags are case-insensitive; they are stored in their RFC 9051 §2.3.2 spelling.
_SYSTEM_FLAGS = {
    f.lower(): f
    for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
# RFC 6154 §2 special-use attributes, normalised the same way for CREATE (USE (...)).
_USE_ATTRIBUTES = {
    a.lower(): a
    for a in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}
# STATUS items (RFC 9051 §6.3.11, RFC 7162 §3.1.8 HIGHESTMODSEQ, RFC 7889 APPENDLIMIT,
# RFC 3501 RECENT).
_STATUS_ITEMS = frozenset((
    "MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT",
    "HIGHESTMODSEQ", "APPENDLIMIT",
))
# ESEARCH RETURN options (RFC 4731 §3.1) and SAVE (RFC 5182 §2.1).
_SEARCH_RETURNS = frozenset(("MIN", "MAX", "ALL", "COUNT", "SAVE"))
# RFC 5256 §3 sort-key, plus DISPLAYFROM / DISPLAYTO (RFC 5957).
_SORT_KEYS = frozenset((
    "ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO",
))
_THREAD_ALGORITHMS = frozenset(("ORDEREDSUBJECT", "REFERENCES"))
# LIST-EXTENDED selection options (RFC 5258 §3, RFC 6154 §5.1) and return options
# (RFC 5258 §3, RFC 5819, RFC 6154 §5.2).
_LIST_SELECTION = frozenset(("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"))
_LIST_RETURNS = frozenset(("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"))

# Fetch macros (RFC 9051 §6.4.5).
_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_SIMPLE = frozenset((
    "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
    "RFC822.TEXT", "BODYSTRUCTURE", "UID", "MODSEQ", "SAVEDATE",
))
_SECTION_TEXTS = frozenset(("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"))

# Search keys without arguments, and the flag keys (RFC 9051 §6.4.4).
_SEARCH_FLAG_KEYS = {
    "ANSWERED": ("FLAG", "\\Answered"), "UNANSWERED": ("NOFLAG", "\\Answered"),
    "DELETED": ("FLAG", "\\Deleted"), "UNDELETED": ("NOFLAG", "\\Deleted"),
    "DRAFT": ("FLAG", "\\Draft"), "UNDRAFT": ("NOFLAG", "\\Draft"),
    "FLAGGED": ("FLAG", "\\Flagged"), "UNFLAGGED": ("NOFLAG", "\\Flagged"),
    "SEEN": ("FLAG", "\\Seen"), "UNSEEN": ("NOFLAG", "\\Seen"),
}
_SEARCH_HEADER_KEYS = frozenset(("FROM", "TO", "CC", "BCC", "SUBJECT"))
_SEARCH_DATE_KEYS = frozenset((
    "BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
    "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE",
))
_RECENT = SearchKey("RECENT")


class _Bad(Exception):
    """A command that does not follow the grammar: answered ``tag BAD text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


# -- sequence sets --------------------------------------------------------------------------


def parse_sequence_set(text: str, *, max_items: int = ParserLimits.max_items) -> SequenceSet:
    """Parse ``1:4,7,9:*`` or ``$`` (RFC 9051 §9 sequence-set, RFC 5182 §2.1).

    Numbers are nz-numbers (1 to 2**32-1, no leading zero); ``*`` becomes None. Raises
    ValueError for anything else or for more than ``max_items`` ranges.
    """
    if text == "$":
        return SequenceSet(saved=True)
    if _SEQUENCE_SYNTAX.fullmatch(text) is None:
        raise ValueError("invalid sequence set")
    pieces = text.split(",")
    if len(pieces) > max_items:
        raise ValueError("too many ranges in the sequence set")
    ranges: list[tuple[int | None, int | None]] = []
    for piece in pieces:
        first, _, last = piece.partition(":")
        if len(first) > 10 or len(last) > 10:
            raise ValueError("sequence number out of range")
        a = None if first == "*" else int(first)
        b = a if not last else (None if last == "*" else int(last))
        if (a is not None and a > MAX_NUMBER) or (b is not None and b > MAX_NUMBER):
            raise ValueError("sequence number out of range")
        ranges.append((a, b))
    return SequenceSet(tuple(ranges))


# -- the token reader -----------------------------------------------------------------------


class _Reader:
    """A cursor over one assembled command: its line segments and the literals that join
    them. ``segments[i]`` ends with the header of ``literals[i]``."""

    __slots__ = ("_index", "_literals", "_segments", "items", "limits", "pos", "text")

    def __init__(self, segments: list[bytes], literals: list[bytes], limits: ParserLimits):
        self._segments = segments
        self._literals = literals
        self._index = 0
        self.text = segments[0]
        self.pos = 0
        self.limits = limits
        self.items = 0

    # -- primitives

    def at_end(self) -> bool:
        return self.pos >= len(self.text) and self._index == len(self._segments) - 1

    def peek(self) -> int:
        """The next octet, or -1 at the end of the current segment."""
        return self.text[self.pos] if self.pos < len(self.text) else -1

    def count(self, n: int = 1) -> None:
        self.items += n
        if self.items > self.limits.max_items:
            raise _Bad("Too many items in the command")

    def sp(self) -> None:
        if self.pos < len(self.text) and self.text[self.pos] == 0x20:
            self.pos += 1
        elif self.at_end():
            raise _Bad("Missing argument")
        else:
            raise _Bad("Expected a space")

    def expect(self, char: int, what: str) -> None:
        if self.peek() != char:
            raise _Bad(f"Expected {what}")
        self.pos += 1

    def match(self, regex: re.Pattern[bytes]) -> bytes | None:
        m = regex.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def atom(self) -> bytes:
        value = self.match(_ATOM)
        if value is None:
            raise _Bad("Missing argument" if self.at_end() else "Expected an atom")
        return value

    def keyword(self) -> str:
        """An atom, upper-cased (RFC 9051 §9: keywords of the grammar are case-insensitive)."""
        return self.atom().decode("ascii").upper()

    def peek_keyword(self) -> str:
        m = _ATOM.match(self.text, self.pos)
        return m.group().decode("ascii").upper() if m else ""

    def number(self, *, limit: int = MAX_NUMBER, nonzero: bool = False) -> int:
        digits = self.match(_DIGITS)
        if digits is None:
            raise _Bad("Expected a number")
        if len(digits) > 20 or int(digits) > limit:
            raise _Bad("Number out of range")
        value = int(digits)
        if nonzero and value == 0:
            raise _Bad("Expected a non-zero number")
        return value

    def literal(self) -> tuple[bytes, bool]:
        """A literal or literal8 at the cursor: (data, is_literal8)."""
        m = _LITERAL.match(self.text, self.pos)
        if m is None or m.end() != len(self.text) or self._index >= len(self._literals):
            raise _Bad("Invalid literal")
        data = self._literals[self._index]
        self._index += 1
        self.text = self._segments[self._index]
        self.pos = 0
        return data, m.group(1) == b"~"

    def string(self) -> bytes:
        """string = quoted / literal (RFC 9051 §9)."""
        c = self.peek()
        if c == 0x22:
            m = _QUOTED.match(self.text, self.pos)
            if m is None:
                raise _Bad("Invalid quoted string")
            self.pos = m.end()
            value = m.group(1)
            return _QUOTED_ESCAPE.sub(rb"\1", value) if b"\\" in value else value
        if c == 0x7B:
            data, binary = self.literal()
            # A literal is CHAR8 (no NUL); only literal8 may carry NUL (RFC 3516 §4.4), and
            # never where a string is expected.
            if binary or b"\x00" in data:
                raise _Bad("NUL is not allowed in a string")
            return data
        if c == 0x7E:
            raise _Bad("A literal8 is not allowed here")
        raise _Bad("Missing argument" if self.at_end() else "Expected a string")

    def astring(self) -> bytes:
        """astring = 1*ASTRING-CHAR / string."""
        value = self.match(_ASTRING_ATOM)
        if value is not None:
            return value
        return self.string()

    def nstring(self) -> bytes | None:
        if self.peek_keyword() == "NIL":
            self.pos += 3
            return None
        return self.string()

    def mailbox(self) -> bytes:
        """mailbox = "INBOX" / astring; INBOX is case-insensitive (RFC 9051 §5.1), so any
        spelling of it is reported as ``INBOX``."""
        name = self.astring()
        if len(name) == 5 and name.upper() == b"INBOX":
            return b"INBOX"
        return name

    def list_mailbox(self) -> bytes:
        """list-mailbox = 1*list-char / string (RFC 9051 §9)."""
        value = self.match(_LIST_ATOM)
        if value is not None:
            return value
        return self.string()

    def sequence_set(self) -> SequenceSet:
        token = self.match(_SEQUENCE_TOKEN)
        if token is None:
            raise _Bad("Missing sequence set" if self.at_end() else "Expected a sequence set")
        try:
            result = parse_sequence_set(token.decode("ascii"), max_items=self.limits.max_items)
        except ValueError:
            raise _Bad("Invalid sequence set") from None
        self.count(max(len(result.ranges), 1))
        return result

    def flag(self) -> str:
        raw = self.match(_FLAG)
        if raw is None:
            raise _Bad("Missing flag" if self.at_end() else "Invalid flag")
        flag = raw.decode("ascii")
        self.count()
        if flag[0] == "\\":
            return _SYSTEM_FLAGS.get(flag.lower(), flag)
        return flag

    def flag_list(self) -> tuple[str, ...]:
        """flag-list = "(" [flag *(SP flag)] ")"."""
        self.expect(0x28, "(")
        flags: list[str] = []
        if self.peek() != 0x29:
            flags.append(self.flag())
            while self.peek() == 0x20:
                self.pos += 1
                flags.append(self.flag())
        self.expect(0x29, ")")
        return tuple(flags)

    def paren_list(self, item: Callable[[_Reader], object]) -> list:
        """ "(" [item *(SP item)] ")" """
        self.expect(0x28, "(")
        values = []
        if self.peek() != 0x29:
            values.append(item(self))
            self.count()
            while self.peek() == 0x20:
                self.pos += 1
                values.append(item(self))
                self.count()
        self.expect(0x29, ")")
        return values

    def end(self) -> None:
        if not self.at_end():
            raise _Bad("Unexpected extra arguments")


def _keyword(r: _Reader) -> str:
    return r.keyword()


def _ascii(value: bytes, what: str) -> str:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise _Bad(f"Invalid {what}") from None
    if not text.isprintable() or not text:
        raise _Bad(f"Invalid {what}")
    return text


def _date(r: _Reader) -> datetime.date:
    m = _DATE.match(r.text, r.pos)
    if m is None:
        raise _Bad("Invalid date")
    r.pos = m.end()
    month = _MONTHS.get(m.group(3).decode("ascii").upper())
    if month is None:
        raise _Bad("Invalid date")
    try:
        return datetime.date(int(m.group(4)), month, int(m.group(2)))
    except ValueError:
        raise _Bad("Invalid date") from None


def _date_time(r: _Reader) -> datetime.datetime:
    m = _DATE_TIME.match(r.text, r.pos)
    if m is None:
        raise _Bad("Invalid date-time")
    r.pos = m.end()
    day, month_name, year, hour, minute, second, sign, zh, zm = m.groups()
    month = _MONTHS.get(month_name.decode("ascii").upper())
    try:
        if month is None or int(zm) > 59:
            raise ValueError
        offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
        zone = datetime.timezone(-offset if sign == b"-" else offset)
        return datetime.datetime(
            int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=zone
        )
    except ValueError:
        raise _Bad("Invalid date-time") from None


# -- SEARCH (RFC 9051 §6.4.4, RFC 3501 §6.4.4 and extensions) -------------------------------


def _search_key(r: _Reader, depth: int) -> SearchKey:
    if depth > r.limits.max_depth:
        raise _Bad("Search program nested too deeply")
    r.count()
    c = r.peek()
    if c == 0x28:  # "(" search-key *(SP search-key) ")"
        r.pos += 1
        keys = [_search_key(r, depth + 1)]
        while r.peek() == 0x20:
            r.pos += 1
            keys.append(_search_key(r, depth + 1))
        r.expect(0x29, ")")
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    if 0x30 <= c <= 0x39 or c in (0x2A, 0x24):  # digit, "*", "$"
        return SearchKey("SEQUENCE", (r.sequence_set(),))
    name = r.keyword()
    flag = _SEARCH_FLAG_KEYS.get(name)
    if flag is not None:
        return SearchKey(flag[0], (flag[1],))
    if name == "ALL":
        return SearchKey("ALL")
    if name in _SEARCH_HEADER_KEYS:
        r.sp()
        return SearchKey("HEADER", (name, r.astring()))
    if name in _SEARCH_DATE_KEYS:
        r.sp()
        return SearchKey(name, (_date(r),))
    if name in ("BODY", "TEXT"):
        r.sp()
        return SearchKey(name, (r.astring(),))
    if name in ("KEYWORD", "UNKEYWORD"):
        r.sp()
        keyword = r.atom().decode("ascii")
        return SearchKey("FLAG" if name == "KEYWORD" else "NOFLAG", (keyword,))
    if name == "HEADER":
        r.sp()
        field = _ascii(r.astring(), "header field name").upper()
        r.sp()
        return SearchKey("HEADER", (field, r.astring()))
    if name in ("LARGER", "SMALLER"):
        r.sp()
        return SearchKey(name, (r.number(limit=MAX_NUMBER64),))
    if name in ("OLDER", "YOUNGER"):  # RFC 5032 §3
        r.sp()
        return SearchKey(name, (r.number(nonzero=True),))
    if name == "NOT":
        r.sp()
        return SearchKey("NOT", (_search_key(r, depth + 1),))
    if name == "OR":
        r.sp()
        first = _search_key(r, depth + 1)
        r.sp()
        return SearchKey("OR", (first, _search_key(r, depth + 1)))
    if name == "UID":
        r.sp()
        return SearchKey("UID", (r.sequence_set(),))
    if name == "NEW":
        return SearchKey("AND", (_RECENT, SearchKey("NOFLAG", ("\\Seen",))))
    if name == "OLD":
        return SearchKey("NOT", (_RECENT,))
    if name == "RECENT":
        return _RECENT
    if name == "SAVEDATESUPPORTED":  # RFC 8514 §4
        return SearchKey(name)
    if name == "MODSEQ":
        # RFC 7162 §3.1.5: MODSEQ [SP entry-name SP entry-type-req] SP mod-sequence-valzer;
        # the entry only narrows per-flag modseqs, which this server does not keep.
        r.sp()
        if r.peek() == 0x22:
            r.string()
            r.sp()
            if r.keyword() not in ("PRIV", "SHARED", "ALL"):
                raise _Bad("Invalid MODSEQ entry type")
            r.sp()
        return SearchKey("MODSEQ", (r.number(limit=MAX_NUMBER64),))
    raise _Bad(f"Unknown search key {name}")


def _search_program(r: _Reader) -> SearchKey:
    """1*(SP search-key) after the leading SP: one key stays itself, several are an AND."""
    keys = [_search_key(r, 1)]
    while not r.at_end():
        r.sp()
        keys.append(_search_key(r, 1))
    return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))


def _return_options(r: _Reader, allowed: frozenset[str]) -> tuple[str, ...]:
    """ "(" [opt *(SP opt)] ")" of ESEARCH / ESORT (RFC 4731 §3.1, RFC 5267 §3.2)."""
    options = tuple(r.paren_list(_keyword))
    for option in options:
        if option not in allowed:
            raise _Bad(f"Unknown RETURN option {option}")
    return options


def _charset(r: _Reader) -> str:
    return _ascii(r.astring(), "charset")


def _search(r: _Reader, tag: str, uid: bool) -> Command:
    r.sp()
    returns: tuple[str, ...] | None = None
    if r.peek_keyword() == "RETURN":
        r.atom()
        r.sp()
        returns = _return_options(r, _SEARCH_RETURNS)
        r.sp()
    charset = None
    if r.peek_keyword() == "CHARSET":
        r.atom()
        r.sp()
        charset = _charset(r)
        r.sp()
    return Search(tag, uid, _search_program(r), charset, returns)


def _sort(r: _Reader, tag: str, uid: bool) -> Command:
    """RFC 5256 §3: SORT SP sort-criteria SP charset 1*(SP search-key); RETURN per RFC 5267."""
    r.sp()
    returns: tuple[str, ...] | None = None
    if r.peek_keyword() == "RETURN":
        r.atom()
        r.sp()
        returns = _return_options(r, _SEARCH_RETURNS)
        r.sp()
    r.expect(0x28, "(")
    criteria: list[tuple[str, bool]] = []
    while True:
        name = r.keyword()
        reverse = name == "REVERSE"
        if reverse:
            r.sp()
            name = r.keyword()
        if name not in _SORT_KEYS:
            raise _Bad(f"Unknown sort key {name}")
        criteria.append((name, reverse))
        r.count()
        if r.peek() != 0x20:
            break
        r.pos += 1
    r.expect(0x29, ")")
    r.sp()
    charset = _charset(r)
    r.sp()
    return Sort(tag, uid, tuple(criteria), charset, _search_program(r), returns)


def _thread(r: _Reader, tag: str, uid: bool) -> Command:
    r.sp()
    algorithm = r.keyword()
    if algorithm not in _THREAD_ALGORITHMS:
        raise _Bad(f"Unknown threading algorithm {algorithm}")
    r.sp()
    charset = _charset(r)
    r.sp()
    return Thread(tag, uid, algorithm, charset, _search_program(r))


# -- FETCH (RFC 9051 §6.4.5, RFC 3516, RFC 7162, RFC 8514, RFC 8970) ------------------------


def _section(r: _Reader) -> Section:
    """section = "[" [section-spec] "]" (the "[" already read)."""
    spec = r.match(_SECTION_SPEC) or b""
    part: list[int] = []
    text: str | None = None
    if spec:
        components = spec.decode("ascii").upper().split(".")
        i = 0
        while i < len(components) and components[i].isdigit():
            number = components[i]
            if number.startswith("0") or len(number) > 10 or int(number) > MAX_NUMBER:
                raise _Bad("Invalid section part")
            part.append(int(number))
            i += 1
        if len(part) > r.limits.max_depth:
            raise _Bad("Section part nested too deeply")
        if i < len(components):
            text = ".".join(components[i:])
            if text not in _SECTION_TEXTS or (text == "MIME" and not part):
                raise _Bad("Invalid section")
    fields: list[str] = []
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        r.sp()
        fields = [
            _ascii(name, "header field name").upper()
            for name in r.paren_list(_Reader.astring)
        ]
        if not fields:
            raise _Bad("Missing header field names")
    r.expect(0x5D, "]")
    return Section(tuple(part), text, tuple(fields))


def _partial(r: _Reader) -> tuple[int, int] | None:
    """partial = "<" number64 "." nz-number64 ">" (RFC 9051 §9)."""
    if r.peek() != 0x3C:
        return None
    m = _PARTIAL.match(r.text, r.pos)
    if m is None:
        raise _Bad("Invalid partial")
    r.pos = m.end()
    offset, length = m.group(1), m.group(2)
    if len(offset) > 19 or len(length) > 19:
        raise _Bad("Invalid partial")
    offset_value, length_value = int(offset), int(length)
    if offset_value > MAX_NUMBER64 or not 0 < length_value <= MAX_NUMBER64:
        raise _Bad("Invalid partial")
    return offset_value, length_value


def _fetch_att(r: _Reader) -> FetchAttribute:
    raw = r.match(_FETCH_NAME)
    if raw is None:
        raise _Bad("Missing fetch item" if r.at_end() else "Invalid fetch item")
    name = raw.decode("ascii").upper()
    r.count()
    if name in _FETCH_SIMPLE:
        return FetchAttribute(name)
    if name in ("BODY", "BODY.PEEK"):
        if r.peek() != 0x5B:
            if name == "BODY":  # the non-extensible BODYSTRUCTURE
                return FetchAttribute("BODY")
            raise _Bad("BODY.PEEK needs a section")
        r.pos += 1
        section = _section(r)
        return FetchAttribute("BODY", section, name == "BODY.PEEK", _partial(r))
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        # section-binary = "[" [section-part] "]" (RFC 3516 §4.2): parts only
        r.expect(0x5B, "[")
        section = _section(r)
        if section.text is not None:
            raise _Bad("BINARY takes a part number only")
        if name == "BINARY.SIZE":
            return FetchAttribute(name, section)
        return FetchAttribute("BINARY", section, name == "BINARY.PEEK", _partial(r))
    if name == "PREVIEW":
        # RFC 8970 §3: "PREVIEW" [SP "(" preview-mod *(SP preview-mod) ")"]; look ahead
        # for a known modifier, as "(" may also open the fetch modifiers.
        lazy = False
        if _PREVIEW_LAZY.match(r.text, r.pos):
            r.pos += 1
            for mod in r.paren_list(_keyword):
                if mod != "LAZY":
                    raise _Bad(f"Unknown PREVIEW modifier {mod}")
                lazy = True
        return FetchAttribute("PREVIEW", lazy=lazy)
    if name in _FETCH_MACROS:
        raise _Bad(f"{name} cannot be combined with other fetch items")
    raise _Bad(f"Unknown fetch item {name}")


def _fetch(r: _Reader, tag: str, uid: bool) -> Command:
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    items: list[FetchAttribute]
    if r.peek() == 0x28:
        r.pos += 1
        items = [_fetch_att(r)]
        while r.peek() == 0x20:
            r.pos += 1
            items.append(_fetch_att(r))
        r.expect(0x29, ")")
    else:
        macro = _FETCH_MACROS.get(r.peek_keyword())
        if macro is not None:
            r.atom()
            items = [FetchAttribute(name) for name in macro]
        else:
            items = [_fetch_att(r)]
    changed_since: int | None = None
    vanished = False
    if not r.at_end():
        # fetch-modifiers (RFC 4466 §2.4, RFC 7162 §3.1.4.1 and §3.2.6)
        r.sp()
        r.expect(0x28, "(")
        while True:
            modifier = r.keyword()
            if modifier == "CHANGEDSINCE" and changed_since is None:
                r.sp()
                changed_since = r.number(limit=MAX_NUMBER64, nonzero=True)
            elif modifier == "VANISHED" and not vanished:
                vanished = True
            else:
                raise _Bad(f"Invalid FETCH modifier {modifier}")
            if r.peek() != 0x20:
                break
            r.pos += 1
        r.expect(0x29, ")")
        # RFC 7162 §3.2.6: VANISHED only in UID FETCH, and only with CHANGEDSINCE.
        if vanished and (not uid or changed_since is None):
            raise _Bad("VANISHED needs UID FETCH and CHANGEDSINCE")
    return Fetch(tag, uid, sequence, tuple(items), changed_since, vanished)


# -- the other selected-state commands ------------------------------------------------------


def _store(r: _Reader, tag: str, uid: bool) -> Command:
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    unchanged_since: int | None = None
    if r.peek() == 0x28:  # store-modifiers (RFC 7162 §3.1.3)
        r.pos += 1
        if r.keyword() != "UNCHANGEDSINCE":
            raise _Bad("Invalid STORE modifier")
        r.sp()
        unchanged_since = r.number(limit=MAX_NUMBER64)  # mod-sequence-valzer
        r.expect(0x29, ")")
        r.sp()
    raw = r.match(_STORE_ITEM)
    item = raw.decode("ascii").upper() if raw else ""
    mode = {"+": "add", "-": "remove"}.get(item[:1], "set")
    base = item.lstrip("+-")
    if base not in ("FLAGS", "FLAGS.SILENT") or len(item) - len(base) > 1:
        raise _Bad("Expected FLAGS, +FLAGS or -FLAGS")
    r.sp()
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        flag_items = [r.flag()]
        while r.peek() == 0x20:
            r.pos += 1
            flag_items.append(r.flag())
        flags = tuple(flag_items)
    return Store(tag, uid, sequence, mode, base.endswith(".SILENT"), flags, unchanged_since)


def _copy(r: _Reader, tag: str, uid: bool) -> Command:
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    return Copy(tag, uid, sequence, r.mailbox())


def _move(r: _Reader, tag: str, uid: bool) -> Command:
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    return Move(tag, uid, sequence, r.mailbox())


def _expunge(r: _Reader, tag: str, uid: bool) -> Command:
    if not uid:
        return Expunge(tag)
    r.sp()
    return Expunge(tag, r.sequence_set())


# -- authenticated-state commands -----------------------------------------------------------


def _select(r: _Reader, tag: str, readonly: bool) -> Command:
    r.sp()
    mailbox = r.mailbox()
    condstore = False
    qresync: QResyncParameters | None = None
    if not r.at_end():
        # select-params (RFC 4466 §2.1): CONDSTORE (RFC 7162 §3.1.8), QRESYNC (§3.2.5)
        r.sp()
        r.expect(0x28, "(")
        while True:
            param = r.keyword()
            if param == "CONDSTORE" and not condstore:
                condstore = True
            elif param == "QRESYNC" and qresync is None:
                r.sp()
                qresync = _qresync(r)
            else:
                raise _Bad(f"Invalid SELECT parameter {param}")
            if r.peek() != 0x20:
                break
            r.pos += 1
        r.expect(0x29, ")")
    return Select(tag, mailbox, readonly, condstore, qresync)


def _known_set(r: _Reader) -> SequenceSet:
    sequence = r.sequence_set()
    # RFC 7162 §7: "*" and "$" are not allowed in known-uids and seq-match-data.
    if sequence.saved or any(a is None or b is None for a, b in sequence.ranges):
        raise _Bad("Invalid QRESYNC sequence set")
    return sequence


def _qresync(r: _Reader) -> QResyncParameters:
    """ "(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")" """
    r.expect(0x28, "(")
    uidvalidity = r.number(nonzero=True)
    r.sp()
    modseq = r.number(limit=MAX_NUMBER64, nonzero=True)
    known_uids = known_sequence = known_uid_match = None
    if r.peek() == 0x20:
        r.pos += 1
        if r.peek() != 0x28:
            known_uids = _known_set(r)
            if r.peek() == 0x20:
                r.pos += 1
                r.expect(0x28, "(")
            elif r.peek() == 0x29:
                r.pos += 1
                return QResyncParameters(uidvalidity, modseq, known_uids)
            else:
                raise _Bad("Invalid QRESYNC parameters")
        else:
            r.pos += 1
        known_sequence = _known_set(r)
        r.sp()
        known_uid_match = _known_set(r)
        r.expect(0x29, ")")
    r.expect(0x29, ")")
    return QResyncParameters(uidvalidity, modseq, known_uids, known_sequence, known_uid_match)


def _create(r: _Reader, tag: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    special_use: list[str] = []
    if not r.at_end():
        # create-params (RFC 4466 §2.2); USE (RFC 6154 §3)
        r.sp()
        r.expect(0x28, "(")
        if r.keyword() != "USE":
            raise _Bad("Invalid CREATE parameter")
        r.sp()
        for flag in r.flag_list():
            if not flag.startswith("\\"):
                raise _Bad("Invalid special-use attribute")
            special_use.append(_USE_ATTRIBUTES.get(flag.lower(), flag))
        r.expect(0x29, ")")
    return Create(tag, mailbox, tuple(special_use))


def _status_items(r: _Reader) -> tuple[str, ...]:
    items = tuple(r.paren_list(_keyword))
    if not items:
        raise _Bad("Missing status items")
    for item in items:
        if item not in _STATUS_ITEMS:
            raise _Bad(f"Unknown status item {item}")
    return items


def _status(r: _Reader, tag: str) -> Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    return Status(tag, mailbox, _status_items(r))


def _list(r: _Reader, tag: str) -> Command:
    """RFC 9051 §6.3.9 with RFC 5258 §6 (LIST-EXTENDED) and RFC 5819 (LIST-STATUS)."""
    r.sp()
    extended = False
    selection: tuple[str, ...] = ()
    if r.peek() == 0x28:
        extended = True
        selection = tuple(r.paren_list(_keyword))
        for option in selection:
            if option not in _LIST_SELECTION:
                raise _Bad(f"Unknown LIST selection option {option}")
        # RFC 5258 §3: RECURSIVEMATCH needs a base option; alone (or with REMOTE) it is BAD.
        if "RECURSIVEMATCH" in selection and not {"SUBSCRIBED", "SPECIAL-USE"} & set(selection):
            raise _Bad("RECURSIVEMATCH needs another selection option")
        r.sp()
    reference = r.mailbox()
    r.sp()
    if r.peek() == 0x28:
        extended = True
        patterns = tuple(r.paren_list(_Reader.list_mailbox))
        if not patterns:
            raise _Bad("Missing mailbox pattern")
    else:
        patterns = (r.list_mailbox(),)
    returns: list[str] = []
    status_items: tuple[str, ...] = ()
    if not r.at_end():
        r.sp()
        if r.keyword() != "RETURN":
            raise _Bad("Expected RETURN")
        extended = True
        r.sp()
        r.expect(0x28, "(")
        if r.peek() != 0x29:
            while True:
                option = r.keyword()
                if option not in _LIST_RETURNS or option in returns:
                    raise _Bad(f"Invalid LIST return option {option}")
                returns.append(option)
                r.count()
                if option == "STATUS":  # RFC 5819 §6: "STATUS" SP "(" status-att ... ")"
                    r.sp()
                    status_items = _status_items(r)
                if r.peek() != 0x20:
                    break
                r.pos += 1
        r.expect(0x29, ")")
    return List(tag, reference, patterns, selection, tuple(returns), status_items, extended)


def _lsub(r: _Reader, tag: str) -> Command:
    r.sp()
    reference = r.mailbox()
    r.sp()
    return Lsub(tag, reference, r.list_mailbox())


def _append(r: _Reader, tag: str) -> Command:
    """append = "APPEND" SP mailbox 1*append-message (RFC 3502 §6.3.11 MULTIAPPEND), with
    literal8 (RFC 3516 §4.4) and the UTF8 data extension (RFC 6855 §4)."""
    r.sp()
    mailbox = r.mailbox()
    messages: list[AppendMessage] = []
    while True:
        r.sp()
        flags: tuple[str, ...] = ()
        internal_date: datetime.datetime | None = None
        if r.peek() == 0x28:
            flags = r.flag_list()
            r.sp()
        if r.peek() == 0x22:
            internal_date = _date_time(r)
            r.sp()
        utf8 = False
        if r.peek_keyword() == "UTF8":
            r.atom()
            r.sp()
            r.expect(0x28, "(")
            data, binary = r.literal()
            r.expect(0x29, ")")
            utf8 = True
        elif r.peek() in (0x7B, 0x7E):
            data, binary = r.literal()
        else:
            raise _Bad("Missing message literal" if r.at_end() else "Expected a literal")
        messages.append(AppendMessage(flags, internal_date, data, binary, utf8))
        if len(messages) > r.limits.max_append_messages:
            raise _Bad("Too many messages in one APPEND")
        if r.at_end():
            return Append(tag, mailbox, tuple(messages))


def _enable(r: _Reader, tag: str) -> Command:
    capabilities = []
    r.sp()
    capabilities.append(r.keyword())
    while not r.at_end():
        r.sp()
        capabilities.append(r.keyword())
        r.count()
    return Enable(tag, tuple(capabilities))


def _id(r: _Reader, tag: str) -> Command:
    """RFC 2971 §4: "ID" SP ("(" string SP nstring *(SP string SP nstring) ")" / NIL)."""
    r.sp()
    if r.peek_keyword() == "NIL":
        r.atom()
        return Id(tag, None)
    r.expect(0x28, "(")
    params: list[tuple[bytes, bytes | None]] = []
    if r.peek() != 0x29:
        while True:
            field = r.astring()
            r.sp()
            params.append((field, r.nstring()))
            r.count()
            if r.peek() != 0x20:
                break
            r.pos += 1
    r.expect(0x29, ")")
    return Id(tag, tuple(params))


def _setquota(r: _Reader, tag: str) -> Command:
    """RFC 9208 §4.2: SETQUOTA quota-root SP "(" [resource SP number64 *(...)] ")"."""
    r.sp()
    root = r.astring()
    r.sp()
    r.expect(0x28, "(")
    limits: list[tuple[str, int]] = []
    if r.peek() != 0x29:
        while True:
            resource = r.keyword()
            r.sp()
            limits.append((resource, r.number(limit=MAX_NUMBER64)))
            r.count()
            if r.peek() != 0x20:
                break
            r.pos += 1
    r.expect(0x29, ")")
    return SetQuota(tag, root, tuple(limits))


def _authenticate(r: _Reader, tag: str) -> Command:
    r.sp()
    mechanism = r.keyword()
    initial: bytes | None = None
    if not r.at_end():
        r.sp()  # SASL-IR (RFC 4959 §7)
        initial = r.match(_BASE64)
        if initial is None:
            raise _Bad("Invalid initial response")
    return Authenticate(tag, mechanism, initial)


def _login(r: _Reader, tag: str) -> Command:
    r.sp()
    username = r.astring()
    r.sp()
    return Login(tag, username, r.astring())


def _one_mailbox(kind: Callable[[str, bytes], Command]) -> Callable[[_Reader, str], Command]:
    def parse(r: _Reader, tag: str) -> Command:
        r.sp()
        return kind(tag, r.mailbox())

    return parse


def _one_astring(kind: Callable[[str, bytes], Command]) -> Callable[[_Reader, str], Command]:
    def parse(r: _Reader, tag: str) -> Command:
        r.sp()
        return kind(tag, r.astring())

    return parse


def _no_arguments(kind: Callable[[str], Command]) -> Callable[[_Reader, str], Command]:
    def parse(r: _Reader, tag: str) -> Command:
        return kind(tag)

    return parse


def _rename(r: _Reader, tag: str) -> Command:
    r.sp()
    old = r.mailbox()
    r.sp()
    return Rename(tag, old, r.mailbox())


def _compress(r: _Reader, tag: str) -> Command:
    r.sp()
    return Compress(tag, r.keyword())


def _uid(r: _Reader, tag: str) -> Command:
    r.sp()
    name = r.keyword()
    handler = _UID_COMMANDS.get(name)
    if handler is None:
        raise _Bad(f"Unknown UID command {name}")
    return handler(r, tag, True)


_COMMANDS: dict[str, Callable[[_Reader, str], Command]] = {
    "CAPABILITY": _no_arguments(Capability),
    "NOOP": _no_arguments(Noop),
    "LOGOUT": _no_arguments(Logout),
    "ID": _id,
    "STARTTLS": _no_arguments(StartTLS),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "SELECT": lambda r, tag: _select(r, tag, False),
    "EXAMINE": lambda r, tag: _select(r, tag, True),
    "CREATE": _create,
    "DELETE": _one_mailbox(Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _no_arguments(Namespace),
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_arguments(Idle),
    "GETQUOTA": _one_astring(GetQuota),
    "GETQUOTAROOT": _one_mailbox(GetQuotaRoot),
    "SETQUOTA": _setquota,
    "COMPRESS": _compress,
    "CHECK": _no_arguments(Check),
    "CLOSE": _no_arguments(Close),
    "UNSELECT": _no_arguments(Unselect),
    "EXPUNGE": lambda r, tag: _expunge(r, tag, False),
    "SEARCH": lambda r, tag: _search(r, tag, False),
    "FETCH": lambda r, tag: _fetch(r, tag, False),
    "STORE": lambda r, tag: _store(r, tag, False),
    "COPY": lambda r, tag: _copy(r, tag, False),
    "MOVE": lambda r, tag: _move(r, tag, False),
    "SORT": lambda r, tag: _sort(r, tag, False),
    "THREAD": lambda r, tag: _thread(r, tag, False),
    "UID": _uid,
}

_UID_COMMANDS: dict[str, Callable[[_Reader, str, bool], Command]] = {
    "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _move, "SEARCH": _search,
    "EXPUNGE": _expunge, "SORT": _sort, "THREAD": _thread,
}


def _tag_of(line: bytes) -> str:
    """The tag at the start of a command line (it must be followed by a space), or ``*``."""
    m = _TAG.match(line)
    if m is None or line[m.end():m.end() + 1] != b" ":
        return "*"
    return m.group().decode("ascii")


def _parse_command(segments: list[bytes], literals: list[bytes],
                   limits: ParserLimits) -> Command | ParseError:
    first = segments[0]
    m = _TAG.match(first)
    if m is None or m.end() == len(first) or first[m.end()] != 0x20:
        if m is not None and m.end() == len(first) and len(segments) == 1:
            return ParseError(m.group().decode("ascii"), "Missing command")
        return ParseError("*", "Invalid tag")
    tag = m.group().decode("ascii")
    r = _Reader(segments, literals, limits)
    r.pos = m.end() + 1
    try:
        if r.at_end():
            return ParseError(tag, "Missing command")
        name = r.keyword()
        handler = _COMMANDS.get(name)
        if handler is None:
            return ParseError(tag, "Unknown command")
        command = handler(r, tag)
        r.end()
        return command
    except _Bad as error:
        return ParseError(tag, error.text, error.code)


# -- framing --------------------------------------------------------------------------------

_S_LINE, _S_LITERAL, _S_SKIP, _S_DISCARD, _S_DEAD = range(5)
_NEED_DATA = object()
_MODE_COMMAND, _MODE_IDLE, _MODE_SASL = range(3)


def _literal_header(line: bytes) -> tuple[int, bool] | None:
    """(size, non-synchronising) when ``line`` ends with a literal header (RFC 9051 §4.3,
    RFC 7888 §3). Sizes too long to matter are reported as larger than any limit."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    if start < 0:
        return None
    inner = line[start + 1:-1]
    nonsync = inner.endswith(b"+")
    if nonsync:
        inner = inner[:-1]
    if not inner or not inner.isdigit():
        return None
    size = int(inner) if len(inner) <= _MAX_LITERAL_DIGITS else 1 << 80
    return size, nonsync


class CommandParser:
    """Incremental IMAP command parser; see the module docstring.

    ``authenticated`` is set by the session after a successful login: it selects the
    literal size limits. ``expect_idle_done`` and ``expect_sasl_response`` make the next
    line an :class:`IdleDone` or a :class:`SaslResponse`; the parser then returns to
    commands by itself.
    """

    def __init__(self, limits: ParserLimits = ParserLimits()) -> None:
        self.limits = limits
        self.authenticated = False
        self._buffer = bytearray()
        self._scanned = 0  # how much of the buffer is known to hold no LF
        self._state = _S_LINE
        self._mode = _MODE_COMMAND
        # the command being assembled
        self._segments: list[bytes] = []
        self._literals: list[bytes] = []
        self._text_length = 0
        self._literal_total = 0
        # the literal being read or skipped
        self._chunks: list[bytes] = []
        self._remaining = 0
        # the end of a line being dropped
        self._tail = b""
        self._idle_tag = "*"

    # -- the session's controls

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client. Nothing is parsed until :meth:`next_event`."""
        if self._state == _S_DEAD or not data:
            return
        if self._state in (_S_LITERAL, _S_SKIP) and not self._buffer:
            # Literal data straight from the socket: no detour through the buffer.
            take = min(self._remaining, len(data))
            if self._state == _S_LITERAL:
                whole = take == len(data) and type(data) is bytes
                self._chunks.append(data if whole else bytes(data[:take]))
            self._remaining -= take
            data = data[take:]
            if self._remaining == 0:
                self._end_literal()
        if data:
            self._buffer += data

    def expect_idle_done(self) -> None:
        """The next line ends IDLE: ``DONE`` gives IdleDone, anything else a ParseError
        (RFC 2177 §3); either way the parser returns to commands."""
        self._mode = _MODE_IDLE

    def expect_sasl_response(self) -> None:
        """The next line is a SASL response (RFC 9051 §6.2.2): base64 text, or ``*`` to
        cancel."""
        self._mode = _MODE_SASL

    def discard_buffer(self) -> int:
        """Drop everything received but not yet parsed, and any command half assembled.

        Called when STARTTLS is accepted: plaintext pipelined behind it must not be read as
        if it came over TLS (RFC 9051 §6.2.1, CVE-2011-0411). Returns the octets dropped.
        """
        dropped = len(self._buffer) + self._text_length + sum(map(len, self._literals))
        dropped += sum(map(len, self._chunks))
        self._buffer.clear()
        self._scanned = 0
        self._reset_command()
        if self._state != _S_DEAD:
            self._state = _S_LINE
        self._mode = _MODE_COMMAND
        return dropped

    @property
    def buffered(self) -> int:
        """Octets held: unparsed input plus the command being assembled."""
        return (len(self._buffer) + self._text_length + sum(map(len, self._literals))
                + sum(map(len, self._chunks)))

    # -- events

    def next_event(self) -> ParserEvent | None:
        """The next event, or None when more data is needed."""
        while True:
            state = self._state
            if state == _S_LINE:
                result = self._next_line()
            elif state == _S_LITERAL:
                result = self._read_literal()
            elif state == _S_SKIP:
                result = self._skip_literal()
            elif state == _S_DISCARD:
                result = self._discard_line()
            else:  # _S_DEAD: the fatal error has been reported, nothing more is read
                return None
            if result is _NEED_DATA:
                return None
            if result is not None:
                return result  # type: ignore[return-value]

    # -- internals: each step returns an event, None (progress made) or _NEED_DATA

    def _reset_command(self) -> None:
        self._segments = []
        self._literals = []
        self._chunks = []
        self._text_length = 0
        self._literal_total = 0
        self._remaining = 0

    def _end_literal(self) -> None:
        if self._state == _S_LITERAL:
            chunks = self._chunks
            self._literals.append(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self._chunks = []
            self._state = _S_LINE
        else:  # a skipped literal: the rest of its command is dropped too
            self._state = _S_DISCARD
            self._tail = b""

    def _read_literal(self) -> object:
        buffer = self._buffer
        take = min(self._remaining, len(buffer))
        if take:
            self._chunks.append(bytes(buffer[:take]))
            del buffer[:take]
            self._scanned = 0
            self._remaining -= take
        if self._remaining:
            return _NEED_DATA
        self._end_literal()
        return None

    def _skip_literal(self) -> object:
        take = min(self._remaining, len(self._buffer))
        if take:
            del self._buffer[:take]
            self._scanned = 0
            self._remaining -= take
        if self._remaining:
            return _NEED_DATA
        self._end_literal()
        return None

    def _error_tag(self) -> str:
        if self._mode == _MODE_IDLE:
            return self._idle_tag
        if self._mode == _MODE_SASL:
            return "*"
        if self._segments:
            return _tag_of(self._segments[0])
        # Only as much of the line as is surely there (more than max_line octets are), so
        # the tag found does not depend on how the input was split.
        return _tag_of(bytes(self._buffer[:min(self.limits.max_line, 256)]))

    def _too_long(self) -> ParseError:
        """The line being read is over max_line: answer now, drop the rest as it comes."""
        tag = self._error_tag()
        self._reset_command()
        self._mode = _MODE_COMMAND
        self._state = _S_DISCARD
        self._tail = b""
        return ParseError(tag, "Command line too long")

    def _next_line(self) -> object:
        buffer = self._buffer
        end = buffer.find(b"\n", self._scanned)
        if end < 0:
            # One more octet is allowed: it may be the CR of a CRLF that is not in yet.
            if self._text_length + len(buffer) > self.limits.max_line + 1:
                return self._too_long()
            self._scanned = len(buffer)
            return _NEED_DATA
        length = end - 1 if end and buffer[end - 1] == 0x0D else end
        if self._text_length + length > self.limits.max_line:
            return self._too_long()
        line = bytes(buffer[:length])
        del buffer[:end + 1]
        self._scanned = 0
        return self._handle_line(line)

    def _handle_line(self, line: bytes) -> ParserEvent | None:
        if not self._segments:
            if self._mode == _MODE_IDLE:
                self._mode = _MODE_COMMAND
                if line.upper() == b"DONE":
                    return IdleDone()
                return ParseError(self._idle_tag, "Expected DONE")
            if self._mode == _MODE_SASL:
                self._mode = _MODE_COMMAND
                if line == b"*":
                    return SaslResponse(line, cancelled=True)
                return SaslResponse(line)
            if not line:
                return None
        self._segments.append(line)
        self._text_length += len(line)
        header = _literal_header(line)
        if header is None:
            return self._complete()
        size, nonsync = header
        limits = self.limits
        if self.authenticated:
            limit = limits.max_literal
        elif nonsync:
            limit = min(limits.max_nonsync_literal_unauthenticated,
                        limits.max_literal_unauthenticated)
        else:
            limit = limits.max_literal_unauthenticated
        if size > limit or self._literal_total + size > limits.max_command_bytes:
            tag = _tag_of(self._segments[0])
            self._reset_command()
            if not nonsync:
                # RFC 7888 §4: the client waits for "+", gets BAD and drops the command.
                return ParseError(tag, "Literal too big", code="TOOBIG")
            return self._refuse_nonsync(tag, size)
        self._literal_total += size
        self._remaining = size
        self._state = _S_LITERAL
        if not nonsync:
            return ContinuationRequest()
        return None

    def _refuse_nonsync(self, tag: str, size: int) -> ParseError:
        """A non-synchronising literal over the limit is coming anyway (RFC 7888 §4): skip
        it by counting octets if that is cheap enough, else give up on the connection."""
        cap = (self.limits.max_command_bytes if self.authenticated
               else self.limits.max_literal_unauthenticated)
        if size > cap:
            self._state = _S_DEAD
            self._buffer.clear()
            return ParseError(tag, "Literal too big", code="TOOBIG", fatal=True)
        self._remaining = size
        self._state = _S_SKIP
        return ParseError(tag, "Literal too big", code="TOOBIG")

    def _complete(self) -> ParserEvent:
        segments, literals = self._segments, self._literals
        self._reset_command()
        event = _parse_command(segments, literals, self.limits)
        if isinstance(event, Idle):
            self._idle_tag = event.tag
        return event

    def _discard_line(self) -> object:
        """Drop input up to the end of the current line. If the dropped line ended with a
        non-synchronising literal, that literal is skipped as well."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            # One octet more than needed: the last may be the CR of the line end.
            keep = _DISCARD_TAIL + 1
            self._tail = (self._tail + bytes(buffer[-keep:]))[-keep:]
            buffer.clear()
            self._scanned = 0
            return _NEED_DATA
        tail = self._tail + bytes(buffer[max(0, end - _DISCARD_TAIL - 1):end])
        del buffer[:end + 1]
        self._scanned = 0
        self._tail = b""
        if tail.endswith(b"\r"):
            tail = tail[:-1]
        tail = tail[-_DISCARD_TAIL:]
        header = _literal_header(tail)
        if (header is None and len(tail) == _DISCARD_TAIL and tail.endswith(b"+}")
                and tail[:-2].isdigit()):
            header = (1 << 80, True)  # a header longer than the tail: absurdly large
        if header is not None and header[1]:
            size = header[0]
            cap = (self.limits.max_command_bytes if self.authenticated
                   else self.limits.max_literal_unauthenticated)
            if size > cap:
                self._state = _S_DEAD
                buffer.clear()
                return ParseError("*", "Literal too big", code="TOOBIG", fatal=True)
            self._remaining = size
            self._state = _S_SKIP
            return None
        # Line over (a synchronising literal is never sent: the client got its BAD).
        self._state = _S_LINE
        return None
