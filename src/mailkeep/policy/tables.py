"""Postfix lookup tables, read in Postfix's own syntax so the seeds' files work as they are.

Table types (the ``type:`` prefix of a Postfix table name, :func:`load_table`):

* ``hash:``, ``btree:``, ``lmdb:``, ``texthash:`` — ``key value`` lines
  (:func:`parse_literal_table`). Mailkeep reads the source text file that postmap(1)
  would compile; keys are case-folded (access(5) "CASE FOLDING").
* ``cidr:`` — ``network/prefix result`` lines tried in file order, with ``!`` negation and
  ``if``/``endif`` blocks (cidr_table(5), :func:`parse_cidr_table`).
* ``pcre:`` and ``regexp:`` — ``/pattern/flags result`` lines tried in file order, with
  ``!/pattern/``, ``if /pattern/`` ... ``endif`` and ``$1`` substitution (pcre_table(5),
  regexp_table(5), :func:`parse_regex_table`). Patterns are translated to Python's ``re``
  where the meaning is the same and refused, with file and line, where it is not.

Common syntax (all types): blank lines and lines whose first non-blank character is ``#``
are ignored; a line that starts with whitespace continues the logical line before it
(the line break is dropped, the leading whitespace kept, as postmap does).

Where Postfix only logs a warning and skips a line (a key without value, an unknown
action, an ``endif`` without ``if``, a bad pattern), mailkeep refuses the table with a
:class:`TableError` naming file and line: a rule that silently does nothing is worse than a
server that says why it will not start. Duplicate keys keep the first value, as postmap
does, and are reported in :attr:`LiteralTable.warnings`.

Hostile regular expressions. Python's ``re`` backtracks and cannot be interrupted, so a
table pattern must not be able to stall the server on hostile input. Every pattern is
analysed when the table is loaded (:func:`analyse_pattern`):

1. Exponential backtracking is refused: a repeated group that contains another variable
   quantifier (``(a+)+``, ``(\\w+\\s?)*``, ``(a?){20}``) or alternatives that can start
   with the same character (``(a|ab)*``).
2. Polynomial backtracking is bounded: the analysis estimates the *degree* of a pattern,
   how many unbounded quantifiers can trade characters among each other (plus one for an
   unanchored search, which retries at every position); ``^Cc: .*ama.*@`` has degree 2.
   A pattern of degree d examines at most ``MAX_MATCH_STEPS ** (1/d)`` characters of its
   subject (4096 for d = 2), so its worst case stays near ``MAX_MATCH_STEPS`` steps (tens
   of milliseconds); a pattern whose window would fall below what its use needs (a
   header line, a body line, an address) is refused.
3. Subjects are capped anyway (:data:`HEADER_SIZE_LIMIT`, :data:`LINE_LENGTH_LIMIT`,
   :data:`ACCESS_SUBJECT_LIMIT`).

The estimate is an over-approximation with two known imprecisions (docs/policy.md): it
refuses some harmless patterns (``(ab|ac)*``), and it treats backreferences as consuming
nothing. The checkers in :mod:`mailkeep.policy.checks` add a time budget per message.
"""

from __future__ import annotations

import ipaddress
import re
import re._constants as _sre  # private, stable within 3.11: see analyse_pattern
import re._parser as _sre_parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mailkeep.policy.actions import (
    UNSUPPORTED_KINDS,
    Action,
    ActionError,
    ActionKind,
    parse_access_action,
    parse_content_action,
)

# --- limits -------------------------------------------------------------------------

#: Largest table file read (bytes).
MAX_TABLE_BYTES = 16 * 1024 * 1024
#: Longest logical line (characters, continuation lines joined).
MAX_LOGICAL_LINE = 64 * 1024
#: Most entries or rules in one table.
MAX_TABLE_RULES = 200_000
#: Deepest ``if``/``endif`` nesting.
MAX_IF_NESTING = 64
#: Longest regular expression (characters between the delimiters).
MAX_PATTERN_LENGTH = 8 * 1024
#: Budget of backtracking steps a pattern may take on one subject, worst case. At roughly
#: 2-6 ns per step in Python's matcher this is tens of milliseconds.
MAX_MATCH_STEPS = 1 << 24
#: Postfix header_size_limit: a logical header is matched on at most this many characters.
HEADER_SIZE_LIMIT = 102_400
#: Postfix line_length_limit: body lines are matched in chunks of this many characters.
LINE_LENGTH_LIMIT = 2048
#: Longest access-table subject (address, host name, HELO argument) matched; RFC 5321
#: §4.5.3.1 allows 64 + 1 + 255 octets for an address, 256 for a path.
ACCESS_SUBJECT_LIMIT = 1024
#: A pattern must be allowed to see at least this much of a header or body line: RFC 5322
#: §2.1.1 lines are at most 998 characters.
MIN_LINE_WINDOW = 998
#: ... and at least this much of an access subject (RFC 5321 §4.5.3.1.3 path length).
MIN_ACCESS_WINDOW = 256
#: Bounded quantifiers with at most this many choices ({m,n}, n - m <= this) count as
#: constants, not as a source of backtracking, in the degree estimate.
SMALL_REPEAT_RANGE = 16
#: Candidates kept while estimating a pattern's degree (bounds the analysis itself).
_MAX_CHAIN_CANDIDATES = 64

TablePurpose = Literal["access", "header", "body"]

_WHITESPACE = " \t\n\r\f\v"


@dataclass(frozen=True, slots=True)
class MatchContext:
    """Where a regex table is used: how long its subjects are, how much a pattern must see."""

    subject_limit: int
    minimum_window: int


CONTEXTS: dict[str, MatchContext] = {
    "access": MatchContext(ACCESS_SUBJECT_LIMIT, MIN_ACCESS_WINDOW),
    "header": MatchContext(HEADER_SIZE_LIMIT, MIN_LINE_WINDOW),
    "body": MatchContext(LINE_LENGTH_LIMIT, MIN_LINE_WINDOW),
}


# --- errors and results -------------------------------------------------------------


class TableError(ValueError):
    """A table that cannot be used, with the file (or table name) and line at fault."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class TableWarning:
    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class TableHit:
    """A lookup that found something: where, what matched, the result and its action.

    ``key`` is the literal key or CIDR pattern, or the regular expression as written.
    ``value`` is the result text, with ``$n`` substitutions done. A DUNNO hit ends the
    search of this table without a decision (access(5) "DUNNO").
    """

    source: str
    line: int
    key: str
    value: str
    action: Action


# --- logical lines ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogicalLine:
    number: int
    text: str


def logical_lines(text: str, source: str) -> list[LogicalLine]:
    """Split table text into logical lines, Postfix readllines() style.

    Comments and blank lines are dropped (also between a line and its continuation, as
    postmap does); continuation lines are appended without their line break; trailing
    whitespace is trimmed. A file that starts with an indented line is an error: Postfix
    ignores such a line with a warning.
    """
    if "\x00" in text:
        raise TableError(source, text[: text.index("\x00")].count("\n") + 1,
                         "NUL character in table text")
    result: list[LogicalLine] = []
    parts: list[str] = []
    start = 0
    length = 0

    def flush() -> None:
        if parts:
            result.append(LogicalLine(start, "".join(parts).rstrip(_WHITESPACE)))

    for number, raw in enumerate(text.split("\n"), 1):
        stripped = raw.lstrip(_WHITESPACE)
        if not stripped or stripped.startswith("#"):
            continue
        if raw.endswith("\r"):
            raw = raw[:-1]
        if raw[0] in _WHITESPACE:
            if not parts:
                raise TableError(source, number, "line starts with whitespace but there is "
                                 "no line before it to continue; remove the indentation")
            parts.append(raw)
            length += len(raw)
        else:
            flush()
            parts = [raw]
            start = number
            length = len(raw)
        if length > MAX_LOGICAL_LINE:
            raise TableError(source, start, f"logical line longer than {MAX_LOGICAL_LINE} "
                             "characters")
        if len(result) >= MAX_TABLE_RULES:
            raise TableError(source, number, f"more than {MAX_TABLE_RULES} entries")
    flush()
    return result


def _split_first_word(text: str) -> tuple[str, str]:
    for index, char in enumerate(text):
        if char in _WHITESPACE:
            return text[:index], text[index:].lstrip(_WHITESPACE)
    return text, ""


def _action_for(value: str, purpose: TablePurpose) -> Action:
    if purpose == "access":
        action = parse_access_action(value)
    else:
        action = parse_content_action(value, where=purpose)
    if action.kind in UNSUPPORTED_KINDS:
        raise ActionError(f"{action.kind.value} is not supported by mailkeep "
                          f"({action.kind.value} {action.text})")
    return action


# --- hash/texthash ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiteralEntry:
    line: int
    key: str
    value: str
    action: Action


@dataclass(frozen=True)
class LiteralTable:
    """A ``key value`` table (hash:, texthash:, ...); keys are stored lower-case."""

    source: str
    entries: dict[str, LiteralEntry]
    warnings: tuple[TableWarning, ...] = ()

    def get(self, key: str) -> TableHit | None:
        """One exact lookup, case-insensitive (postmap -q semantics)."""
        entry = self.entries.get(key.lower())
        if entry is None:
            return None
        return TableHit(self.source, entry.line, entry.key, entry.value, entry.action)


def parse_literal_table(text: str, source: str, *,
                        bare_key_value: str | None = None) -> LiteralTable:
    """Parse a hash:/texthash: style access table.

    A key without a value is an error (postmap skips it with "expected format: key
    whitespace value", so the line silently does nothing). Lists of bare keys, like seed
    000's invalid_recipients, load with ``bare_key_value``, e.g. ``"REJECT"``.
    """
    entries: dict[str, LiteralEntry] = {}
    found_warnings: list[TableWarning] = []
    for line in logical_lines(text, source):
        key, value = _split_first_word(line.text)
        if not value:
            if bare_key_value is None:
                raise TableError(source, line.number,
                                 f"key {key!r} has no value; Postfix would ignore this line "
                                 "(expected format: key whitespace value)")
            value = bare_key_value
        folded = key.lower()
        try:
            action = _action_for(value, "access")
        except ActionError as error:
            raise TableError(source, line.number, f"{key}: {error}") from None
        if folded in entries:
            first = entries[folded].line
            found_warnings.append(TableWarning(
                source, line.number, f"duplicate entry {folded!r}: the one on line {first} "
                "is used"))
            continue
        entries[folded] = LiteralEntry(line.number, key, value, action)
    return LiteralTable(source, entries, tuple(found_warnings))


# --- rules with if/endif (cidr, pcre, regexp) ---------------------------------------

_RULE_MATCH, _RULE_IF, _RULE_ENDIF = 0, 1, 2


def _keyword(text: str, word: str) -> str | None:
    """``text`` starts with the keyword (case-insensitive, then not alphanumeric): the rest."""
    if text[: len(word)].lower() == word and not text[len(word): len(word) + 1].isalnum():
        return text[len(word):].lstrip(_WHITESPACE)
    return None


def _link_blocks(kinds: list[int], lines: list[int], source: str) -> list[int]:
    """For every ``if`` rule, the index of its ``endif``; errors for unbalanced blocks."""
    ends = [0] * len(kinds)
    stack: list[int] = []
    for index, kind in enumerate(kinds):
        if kind == _RULE_IF:
            stack.append(index)
            if len(stack) > MAX_IF_NESTING:
                raise TableError(source, lines[index], f"if/endif nested deeper than "
                                 f"{MAX_IF_NESTING}")
        elif kind == _RULE_ENDIF:
            if not stack:
                raise TableError(source, lines[index], "endif without if")
            ends[stack.pop()] = index
    if stack:
        raise TableError(source, lines[stack[-1]], "if without endif")
    return ends


# --- cidr ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CidrRule:
    kind: int
    line: int
    negated: bool = False
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    key: str = ""
    value: str = ""
    action: Action | None = None
    end: int = 0


def _parse_network(text: str, source: str, line: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" in bare:
        raise TableError(source, line, f"address {text!r}: zone identifiers are not allowed")
    if re.match(r"(?:\d+\.)*0\d", bare.split("/")[0]) and ":" not in bare:
        raise TableError(source, line, f"bad address pattern: {text!r}: leading zeros are "
                         "ambiguous (Postfix reads them as octal); write the octets in "
                         "decimal without leading zeros")
    try:
        return ipaddress.ip_network(bare, strict=True)
    except ValueError as error:
        message = str(error)
        if "has host bits set" in message:
            loose = ipaddress.ip_network(bare, strict=False)
            message = f"non-null host address bits in {text!r}, perhaps {str(loose)!r}"
        raise TableError(source, line, f"bad address pattern: {message}") from None


class CidrTable:
    """A cidr: table; rules are tried in file order (cidr_table(5) "TABLE SEARCH ORDER")."""

    def __init__(self, source: str, rules: list[_CidrRule]) -> None:
        self.source = source
        self._rules = rules

    def lookup(self, address: str) -> TableHit | None:
        """The first rule matching ``address`` (a bare IPv4/IPv6 address), or None."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        rules = self._rules
        index = 0
        while index < len(rules):
            rule = rules[index]
            if rule.kind == _RULE_ENDIF:
                index += 1
                continue
            assert rule.network is not None
            inside = ip.version == rule.network.version and ip in rule.network
            if rule.kind == _RULE_IF:
                index = index + 1 if inside != rule.negated else rule.end + 1
                continue
            if inside != rule.negated:
                assert rule.action is not None
                return TableHit(self.source, rule.line, rule.key, rule.value, rule.action)
            index += 1
        return None


def _negations(text: str) -> tuple[bool, str]:
    """Leading ``!`` operators (each toggles; blanks between allowed, as in Postfix)."""
    negated = False
    index = 0
    while index < len(text) and (text[index] == "!" or text[index] in _WHITESPACE):
        if text[index] == "!":
            negated = not negated
        index += 1
    return negated, text[index:]


def parse_cidr_table(text: str, source: str) -> CidrTable:
    """Parse a cidr: access table (cidr_table(5))."""
    rules: list[_CidrRule] = []
    for line in logical_lines(text, source):
        rest = _keyword(line.text, "endif")
        if rest is not None:
            if rest:
                raise TableError(source, line.number, f"text after endif: {rest!r}")
            rules.append(_CidrRule(_RULE_ENDIF, line.number))
            continue
        rest = _keyword(line.text, "if")
        if rest is not None:
            negated, pattern = _negations(rest)
            pattern, extra = _split_first_word(pattern)
            if extra:
                raise TableError(source, line.number, f"text after if pattern: {extra!r}")
            if not pattern:
                raise TableError(source, line.number, "if without an address pattern")
            network = _parse_network(pattern, source, line.number)
            rules.append(_CidrRule(_RULE_IF, line.number, negated, network, pattern))
            continue
        negated, body = _negations(line.text)
        pattern, value = _split_first_word(body)
        if not value:
            raise TableError(source, line.number, f"{pattern!r} has no result; expected "
                             "format: network/prefix result")
        network = _parse_network(pattern, source, line.number)
        try:
            action = _action_for(value, "access")
        except ActionError as error:
            raise TableError(source, line.number, f"{pattern}: {error}") from None
        rules.append(_CidrRule(_RULE_MATCH, line.number, negated, network, pattern, value,
                               action))
    ends = _link_blocks([rule.kind for rule in rules], [rule.line for rule in rules], source)
    linked = [
        _CidrRule(r.kind, r.line, r.negated, r.network, r.key, r.value, r.action, ends[i])
        for i, r in enumerate(rules)
    ]
    return CidrTable(source, linked)


# --- regular expressions: PCRE and POSIX ERE to Python ------------------------------


class PatternError(ValueError):
    """A pattern mailkeep cannot use: Python cannot express it, or it could stall matching."""


Dialect = Literal["pcre", "regexp"]

#: POSIX bracket classes ([[:alpha:]]), as ranges for Python, ASCII meaning (PCRE's
#: default "C" locale tables; glibc's in the C locale).
_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z",
    "lower": "a-z", "space": r" \t\n\r\f\v", "blank": r" \t", "xdigit": "0-9A-Fa-f",
    "punct": r"!-/:-@\[-`{-~", "cntrl": r"\x00-\x1f\x7f", "graph": "!-~", "print": " -~",
    "word": r"\w", "ascii": r"\x00-\x7f",
}
_HSPACE = r"\t \xa0"  # PCRE \h without UTF: tab, space, no-break space
_VSPACE = r"\n\x0b\f\r\x85"  # PCRE \v without UTF
_PCRE_SIMPLE_ESCAPES = {
    "d": r"\d", "D": r"\D", "s": r"\s", "S": r"\S", "w": r"\w", "W": r"\W",
    "b": r"\b", "B": r"\B", "A": r"\A", "z": r"\Z", "Z": r"(?=\n?\Z)",
    "a": r"\a", "f": r"\f", "n": r"\n", "r": r"\r", "t": r"\t", "e": r"\x1b",
    "h": f"[{_HSPACE}]", "H": f"[^{_HSPACE}]", "v": f"[{_VSPACE}]", "V": f"[^{_VSPACE}]",
    "R": rf"(?:\r\n|[{_VSPACE}])",
}
_PCRE_CLASS_ESCAPES = {
    "d": r"\d", "D": r"\D", "s": r"\s", "S": r"\S", "w": r"\w", "W": r"\W",
    "a": r"\a", "f": r"\f", "n": r"\n", "r": r"\r", "t": r"\t", "e": r"\x1b",
    "b": r"\x08", "h": _HSPACE, "v": _VSPACE,
}
_ERE_ESCAPES = {
    "w": r"\w", "W": r"\W", "s": r"\s", "S": r"\S", "b": r"\b", "B": r"\B",
    "<": r"\b(?=\w)", ">": r"\b(?<=\w)", "`": r"\A", "'": r"\Z",
}
_UNSUPPORTED_PCRE_ESCAPES = {
    "G": "\\G (match start)", "K": "\\K (reset match start)", "X": "\\X (grapheme)",
    "C": "\\C (single code unit)", "N": "\\N", "p": "\\p{...} (Unicode property)",
    "P": "\\P{...} (Unicode property)", "l": "\\l", "L": "\\L", "u": "\\u", "U": "\\U",
}
_QUANTIFIER = re.compile(r"\{(\d{1,9})(,(\d{0,9}))?\}")
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_ERE_FLAGS = "imx"
_PCRE_FLAGS = "imsxAEUX"


@dataclass(slots=True)
class _Options:
    """Per-pattern options, Postfix's defaults first (pcre_table(5), regexp_table(5))."""

    caseless: bool = True
    multiline: bool = False
    dotall: bool = True
    extended: bool = False
    anchored: bool = False
    dollar_endonly: bool = False
    ungreedy: bool = False


@dataclass(frozen=True, slots=True)
class Translation:
    """A table pattern as Python ``re`` source, flags, and whether to anchor at the start."""

    source: str
    flags: int
    anchored: bool


class _Translator:
    """One pass over a PCRE or POSIX ERE pattern, writing the equivalent Python pattern.

    Only constructs whose meaning is the same in Python pass through; the rest are
    rewritten (``\\z``, ``[[:xdigit:]]``, ``(?<name>``, ``\\Q..\\E``, the ``x`` and ``U``
    options, ...) or refused with a :class:`PatternError` that says what and where.
    """

    def __init__(self, pattern: str, dialect: Dialect, options: _Options) -> None:
        self.p = pattern
        self.dialect = dialect
        self.options = options
        self.pos = 0
        self.out: list[str] = []
        # (extended, ungreedy) for each open group; the outermost entry is the pattern's.
        self.modes: list[tuple[bool, bool]] = [(options.extended, options.ungreedy)]
        self.at_start = True

    def fail(self, message: str, at: int | None = None) -> PatternError:
        where = self.pos if at is None else at
        return PatternError(f"{message} (at offset {where})")

    def run(self) -> str:
        p = self.p
        while self.pos < len(p):
            char = p[self.pos]
            extended = self.modes[-1][0]
            if extended and char in _WHITESPACE:
                self.pos += 1
                continue
            if extended and char == "#":
                newline = p.find("\n", self.pos)
                self.pos = len(p) if newline < 0 else newline + 1
                continue
            if char == "\\":
                self.out.append(self.escape())
            elif char == "[":
                self.out.append(self.bracket())
            elif char == "(":
                self.group()
                continue  # group() decides about at_start
            elif char == ")":
                if len(self.modes) > 1:
                    self.modes.pop()
                self.out.append(")")
                self.pos += 1
            elif char in "*+?":
                self.pos += 1
                self.out.append(char + self.quantifier_suffix())
            elif char == "{":
                self.brace()
            elif char == "$":
                self.pos += 1
                self.out.append(self.dollar())
            else:
                self.pos += 1
                self.out.append(re.escape(char) if char in "#&~ \t\n\r\f\v" else char)
            self.at_start = False
        return "".join(self.out)

    def dollar(self) -> str:
        if self.options.multiline:
            return "$"
        if self.dialect == "regexp" or self.options.dollar_endonly:
            # POSIX without REG_NEWLINE, and PCRE's E option: only at the very end.
            return r"\Z"
        return "$"  # PCRE default: end, or before a final newline, like Python's "$"

    def quantifier_suffix(self) -> str:
        """Laziness/possessiveness after a quantifier, with the U option applied."""
        p = self.p
        ungreedy = self.modes[-1][1]
        suffix = p[self.pos] if self.pos < len(p) else ""
        if self.dialect == "regexp":
            if suffix in ("?", "+"):
                raise self.fail(f"'{suffix}' after a quantifier is not POSIX (regexp: tables "
                                "have no lazy or possessive quantifiers)")
            return ""
        if suffix == "+":
            self.pos += 1
            return "+"
        if suffix == "?":
            self.pos += 1
            return "" if ungreedy else "?"
        return "?" if ungreedy else ""

    def brace(self) -> None:
        if re.compile(r"\{\d*,?\d{10}").match(self.p, self.pos):
            raise self.fail("repeat count above 65535")
        match = _QUANTIFIER.match(self.p, self.pos)
        if match is None and self.dialect == "regexp":
            # glibc reads "{,n}" as "{0,n}" in POSIX extended expressions.
            upper = re.compile(r"\{,(\d+)\}").match(self.p, self.pos)
            if upper is not None:
                self.pos = upper.end()
                self.out.append(f"{{0,{upper.group(1)}}}" + self.quantifier_suffix())
                return
        if match is None:
            # "{,n}" and other non-quantifier braces are literal in PCRE2 10.42 (Debian 12);
            # Python would read "{,n}" as {0,n}.
            self.pos += 1
            self.out.append(r"\{")
            return
        self.pos = match.end()
        low = int(match.group(1))
        high = match.group(3)
        if low > 65535 or (high and int(high) > 65535):
            raise self.fail("repeat count above 65535")
        if high and int(high) < low:
            raise self.fail("numbers out of order in {} quantifier")
        self.out.append(match.group(0) + self.quantifier_suffix())

    # -- escapes -----------------------------------------------------------------------

    def escape(self) -> str:
        p = self.p
        start = self.pos
        if start + 1 >= len(p):
            raise self.fail("pattern ends with a backslash")
        char = p[start + 1]
        self.pos = start + 2
        if self.dialect == "regexp":
            return self.ere_escape(char, start)
        if char in _PCRE_SIMPLE_ESCAPES:
            return _PCRE_SIMPLE_ESCAPES[char]
        if char == "Q":
            end = p.find("\\E", self.pos)
            literal = p[self.pos:] if end < 0 else p[self.pos:end]
            self.pos = len(p) if end < 0 else end + 2
            return re.escape(literal)
        if char == "E":
            return ""  # \E without \Q is ignored by PCRE
        if char in "xoc0":
            return self.char_escape(char, start)
        if char.isdigit():
            digits = char
            while self.pos < len(p) and p[self.pos].isdigit():
                digits += p[self.pos]
                self.pos += 1
            return f"(?:\\{digits})" if len(digits) == 1 else self.refuse_ambiguous(digits, start)
        if char == "g":
            return self.pcre_g_reference(start)
        if char == "k":
            return self.pcre_k_reference(start)
        if char in _UNSUPPORTED_PCRE_ESCAPES:
            raise self.fail(f"{_UNSUPPORTED_PCRE_ESCAPES[char]} has no equivalent in "
                            "Python's re", start)
        if char.isascii() and char.isalnum():
            raise self.fail(f"unknown escape \\{char}", start)
        return re.escape(char)

    def refuse_ambiguous(self, digits: str, start: int) -> str:
        raise self.fail(f"\\{digits} is ambiguous (back reference or octal); write "
                        f"\\g{{{digits}}} for a back reference or \\o{{...}} for a character",
                        start)

    def char_escape(self, char: str, start: int) -> str:
        """\\xhh, \\x{h..}, \\o{o..}, \\0oo, \\cX: one character, written as Python escape."""
        p = self.p
        if char == "x":
            if self.pos < len(p) and p[self.pos] == "{":
                end = p.find("}", self.pos)
                digits = p[self.pos + 1:end] if end > 0 else ""
                if end < 0 or not re.fullmatch(r"[0-9A-Fa-f]{1,6}", digits):
                    raise self.fail("bad \\x{...} escape", start)
                self.pos = end + 1
                value = int(digits, 16)
            else:
                match = re.compile(r"[0-9A-Fa-f]{0,2}").match(p, self.pos)
                assert match is not None
                self.pos = match.end()
                value = int(match.group(0) or "0", 16)
        elif char == "o":
            end = p.find("}", self.pos)
            digits = p[self.pos + 1:end] if end > 0 and p[self.pos:self.pos + 1] == "{" else ""
            if not re.fullmatch(r"[0-7]{1,8}", digits):
                raise self.fail("bad \\o{...} escape", start)
            self.pos = end + 1
            value = int(digits, 8)
        elif char == "0":
            match = re.compile(r"[0-7]{0,2}").match(p, self.pos)
            assert match is not None
            self.pos = match.end()
            value = int(match.group(0) or "0", 8)
        else:  # "c": control character
            if self.pos >= len(p) or not p[self.pos].isascii():
                raise self.fail("\\c needs an ASCII character after it", start)
            value = ord(p[self.pos].upper()) ^ 0x40
            self.pos += 1
        if value > 0x10FFFF:
            raise self.fail("character value out of range", start)
        return re.escape(chr(value))

    def pcre_g_reference(self, start: int) -> str:
        match = re.compile(r"\{(\d+)\}|(\d+)").match(self.p, self.pos)
        if match is None:
            raise self.fail("only \\g{N} and \\gN back references are supported", start)
        self.pos = match.end()
        number = match.group(1) or match.group(2)
        if len(number) > 2 or number.startswith("0"):
            # Python reads at most two digits as a group number (and \0.. as octal).
            raise self.fail(f"back reference \\g{{{number}}} out of range (1-99)", start)
        return f"(?:\\{number})"

    def pcre_k_reference(self, start: int) -> str:
        match = re.compile(r"<([^>]*)>|\{([^}]*)\}|'([^']*)'").match(self.p, self.pos)
        name = None if match is None else next(g for g in match.groups() if g is not None)
        if match is None or name is None or not _GROUP_NAME.fullmatch(name):
            raise self.fail("bad \\k<name> back reference", start)
        self.pos = match.end()
        return f"(?P={name})"

    def ere_escape(self, char: str, start: int) -> str:
        if char in _ERE_ESCAPES:
            return _ERE_ESCAPES[char]
        if char in "123456789":
            return f"(?:\\{char})"
        if char.isascii() and char.isalnum():
            raise self.fail(f"\\{char} is undefined in POSIX regular expressions (regexp: "
                            "tables); use a pcre: table or a bracket expression", start)
        return re.escape(char)

    # -- bracket expressions -------------------------------------------------------------

    def bracket(self) -> str:
        p = self.p
        start = self.pos
        self.pos += 1
        negated = False
        if self.pos < len(p) and p[self.pos] == "^":
            negated = True
            self.pos += 1
        items: list[str] = []
        first = True
        while True:
            if self.pos >= len(p):
                raise self.fail("missing ] at the end of a bracket expression", start)
            char = p[self.pos]
            if char == "]" and not first:
                self.pos += 1
                break
            first = False
            if char == "[" and p[self.pos + 1:self.pos + 2] in (":", "=", "."):
                items.append(self.posix_class(start))
                continue
            if char == "\\" and self.dialect == "pcre":
                items.append(self.class_escape(start))
                continue
            self.pos += 1
            # Escape what Python might read as set syntax ([, &&, ~~, ||) or as an escape
            # (a POSIX backslash is an ordinary character inside brackets).
            items.append("\\" + char if char in "[]\\&~|" else char)
        body = "".join(items)
        if negated and self.dialect == "regexp" and self.options.multiline:
            body += r"\n"  # REG_NEWLINE: a non-matching list does not match a newline
        return f"[{'^' if negated else ''}{body}]"

    def posix_class(self, start: int) -> str:
        p = self.p
        kind = p[self.pos + 1]
        end = p.find(kind + "]", self.pos + 2)
        if end < 0:
            raise self.fail(f"unterminated [{kind}...{kind}] in a bracket expression", start)
        name = p[self.pos + 2:end]
        self.pos = end + 2
        if kind != ":":
            raise self.fail(f"collating elements and equivalence classes ([{kind}{name}{kind}])"
                            " are not supported", start)
        if name.startswith("^"):
            raise self.fail(f"negated class [:{name}:] inside brackets is not supported; "
                            "use a negated bracket expression", start)
        if name not in _POSIX_CLASSES:
            raise self.fail(f"unknown character class [:{name}:]", start)
        return _POSIX_CLASSES[name]

    def class_escape(self, start: int) -> str:
        p = self.p
        if self.pos + 1 >= len(p):
            raise self.fail("pattern ends with a backslash", start)
        char = p[self.pos + 1]
        here = self.pos
        self.pos += 2
        if char in _PCRE_CLASS_ESCAPES:
            return _PCRE_CLASS_ESCAPES[char]
        if char in "xoc0":
            return self.char_escape(char, here)
        if char in "1234567":
            # Inside a class PCRE reads \1..\7 as octal characters.
            match = re.compile(r"[0-7]{0,2}").match(p, self.pos)
            assert match is not None
            self.pos = match.end()
            return re.escape(chr(int(char + match.group(0), 8)))
        if char == "Q":
            end = p.find("\\E", self.pos)
            literal = p[self.pos:] if end < 0 else p[self.pos:end]
            self.pos = len(p) if end < 0 else end + 2
            return "".join("\\" + c if c in "[]\\^-&~|" else c for c in literal)
        if char == "E":
            return ""
        if char.isascii() and char.isalnum():
            raise self.fail(f"escape \\{char} inside brackets is not supported", here)
        return "\\" + char if char.isascii() else char

    # -- groups ----------------------------------------------------------------------------

    def group(self) -> None:
        p = self.p
        start = self.pos
        extended, ungreedy = self.modes[-1]
        nxt = p[start + 1:start + 2]
        if nxt == "*":
            raise self.fail("PCRE verbs like (*VERB) are not supported", start)
        if nxt != "?":
            self.modes.append((extended, ungreedy))
            self.out.append("(")
            self.pos += 1
            self.at_start = False
            return
        if self.dialect == "regexp":
            raise self.fail("'(?' is not POSIX; use a pcre: table for extensions", start)
        rest = p[start + 2:]
        simple = ("?:", "?=", "?!", "?<=", "?<!", "?>")
        for opener in simple:
            if p.startswith("(" + opener, start):
                self.modes.append((extended, ungreedy))
                self.out.append("(" + opener)
                self.pos = start + 1 + len(opener)
                self.at_start = False
                return
        if rest.startswith("#"):
            end = p.find(")", start)
            if end < 0:
                raise self.fail("unterminated (?# comment", start)
            self.pos = end + 1
            return
        named = re.compile(r"\(\?(?:P?<([^>]*)>|'([^']*)')").match(p, start)
        if named is not None:
            name = named.group(1) if named.group(1) is not None else named.group(2)
            if not _GROUP_NAME.fullmatch(name or ""):
                raise self.fail(f"bad group name {name!r}", start)
            self.modes.append((extended, ungreedy))
            self.out.append(f"(?P<{name}>")
            self.pos = named.end()
            self.at_start = False
            return
        backref = re.compile(r"\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)").match(p, start)
        if backref is not None:
            self.out.append(backref.group(0))
            self.pos = backref.end()
            self.at_start = False
            return
        if rest.startswith("("):
            self.conditional(start)
            return
        if re.compile(r"\(\?(?:R|[+-]?\d+|&\w+|P>\w+)\)").match(p, start):
            raise self.fail("recursion and subroutine calls have no Python equivalent", start)
        flags = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])").match(p, start)
        if flags is None:
            raise self.fail("group syntax not supported (recursion, subroutine calls, branch "
                            "reset and callouts have no Python equivalent)", start)
        self.option_group(flags, start)

    def conditional(self, start: int) -> None:
        match = re.compile(r"\(\?\((?:(\d+)|<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)'|([A-Za-z_]\w*))\)"
                           ).match(self.p, start)
        if match is None or match.group(4) in ("R", "DEFINE"):
            raise self.fail("only (?(N)...) and (?(name)...) conditions are supported", start)
        reference = next(g for g in match.groups() if g is not None)
        self.modes.append(self.modes[-1])
        self.out.append(f"(?({reference})")
        self.pos = match.end()
        self.at_start = False

    def option_group(self, match: re.Match[str], start: int) -> None:
        on, off, close = match.group(1), match.group(2) or "", match.group(3)
        for letter in on + off:
            if letter not in "imsxU":
                raise self.fail(f"option letter {letter!r} in (?...) is not supported", start)
        extended, ungreedy = self.modes[-1]
        if "x" in on:
            extended = True
        if "x" in off:
            extended = False
        if "U" in on:
            ungreedy = True
        if "U" in off:
            ungreedy = False
        python_on = "".join(c for c in on if c in "ims")
        python_off = "".join(c for c in off if c in "ims")
        self.pos = match.end()
        if close == ")":
            # PCRE lets (?i) change the rest of the enclosing group; Python only accepts
            # such options at the very start of the pattern.
            if not (self.at_start and len(self.modes) == 1):
                raise self.fail("an option setting like (?i) is only supported at the start "
                                "of the pattern; use the scoped form (?i:...)", start)
            self.modes[-1] = (extended, ungreedy)
            if python_off:
                for letter in python_off:
                    setattr(self.options, {"i": "caseless", "m": "multiline",
                                           "s": "dotall"}[letter], False)
            for letter in python_on:
                setattr(self.options, {"i": "caseless", "m": "multiline",
                                       "s": "dotall"}[letter], True)
            return
        self.modes.append((extended, ungreedy))
        if python_on or python_off:
            self.out.append(f"(?{python_on}{'-' + python_off if python_off else ''}:")
        else:
            self.out.append("(?:")
        self.at_start = False


def _parse_options(letters: str, dialect: Dialect) -> _Options:
    options = _Options()
    allowed = _PCRE_FLAGS if dialect == "pcre" else _ERE_FLAGS
    for letter in letters:
        if letter not in allowed:
            raise PatternError(f"unknown {dialect} option {letter!r} (allowed: {allowed})")
        if letter == "i":
            options.caseless = not options.caseless
        elif letter == "m":
            options.multiline = not options.multiline
            if dialect == "regexp":
                # REG_NEWLINE: "." no longer matches a newline (regexp_table(5) "m").
                options.dotall = not options.multiline
        elif letter == "s":
            options.dotall = not options.dotall
        elif letter == "x":
            if dialect == "regexp":
                raise PatternError("the x option turns off POSIX extended syntax; basic "
                                   "regular expressions are not supported")
            options.extended = not options.extended
        elif letter == "A":
            options.anchored = not options.anchored
        elif letter == "E":
            options.dollar_endonly = not options.dollar_endonly
        elif letter == "U":
            options.ungreedy = not options.ungreedy
        # "X" (PCRE_EXTRA): unknown escapes are errors here anyway; PCRE2 ignores it too.
    return options


def translate_pattern(pattern: str, flags: str, dialect: Dialect) -> Translation:
    """Translate a table pattern and its option letters to Python ``re`` source and flags."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"pattern longer than {MAX_PATTERN_LENGTH} characters")
    options = _parse_options(flags, dialect)
    translator = _Translator(pattern, dialect, options)
    source = translator.run()
    re_flags = re.ASCII
    if options.caseless:
        re_flags |= re.IGNORECASE
    if options.multiline:
        re_flags |= re.MULTILINE
    if options.dotall:
        re_flags |= re.DOTALL
    return Translation(source, re_flags, options.anchored)


def compile_translation(translation: Translation) -> re.Pattern[str]:
    """Compile, turning Python's warnings about future syntax changes into refusals."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return re.compile(translation.source, translation.flags)
        except (re.error, FutureWarning, DeprecationWarning, RecursionError,
                OverflowError) as error:
            raise PatternError(f"invalid pattern: {error}") from None


# --- backtracking analysis ------------------------------------------------------------

_ALL = (1 << 257) - 1  # characters 0..255 plus one bit for "any other character"
_OTHER = 1 << 256


def _bits(chars: str) -> int:
    mask = 0
    for char in chars:
        code = ord(char)
        mask |= (1 << code) if code < 256 else _OTHER
    return mask


def _range_bits(low: int, high: int) -> int:
    mask = 0
    if low <= 255:
        mask = ((1 << (min(high, 255) + 1)) - 1) & ~((1 << low) - 1)
    if high > 255:
        mask |= _OTHER
    return mask


_DIGITS = _bits("0123456789")
_SPACES = _bits(" \t\n\r\f\v")
_WORD = _range_bits(48, 57) | _range_bits(65, 90) | _range_bits(97, 122) | _bits("_")
_CATEGORY_BITS = {
    _sre.CATEGORY_DIGIT: _DIGITS, _sre.CATEGORY_NOT_DIGIT: _ALL & ~_DIGITS,
    _sre.CATEGORY_SPACE: _SPACES, _sre.CATEGORY_NOT_SPACE: _ALL & ~_SPACES,
    _sre.CATEGORY_WORD: _WORD, _sre.CATEGORY_NOT_WORD: _ALL & ~_WORD,
    _sre.CATEGORY_LINEBREAK: _bits("\n"), _sre.CATEGORY_NOT_LINEBREAK: _ALL & ~_bits("\n"),
}
_UPPER = _range_bits(65, 90)
_LOWER = _range_bits(97, 122)


def _fold(mask: int) -> int:
    """Add the other ASCII case of every letter (re.IGNORECASE with re.ASCII)."""
    return mask | ((mask & _UPPER) << 32) | ((mask & _LOWER) >> 32)


_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)


@dataclass(slots=True)
class _Flags:
    caseless: bool
    dotall: bool


def _flags_after(flags: _Flags, add: int, remove: int) -> _Flags:
    caseless = (flags.caseless or bool(add & re.IGNORECASE)) and not remove & re.IGNORECASE
    dotall = (flags.dotall or bool(add & re.DOTALL)) and not remove & re.DOTALL
    return _Flags(caseless, dotall)


def _item_bits(op: object, av: object, flags: _Flags) -> int | None:
    """The characters a single-character item can match, or None if not such an item."""
    if op is _sre.LITERAL:
        mask = _bits(chr(av))  # type: ignore[arg-type]
    elif op is _sre.NOT_LITERAL:
        mask = _ALL & ~_fold(_bits(chr(av))) if flags.caseless else _ALL & ~_bits(chr(av))  # type: ignore[arg-type]
        return mask
    elif op is _sre.ANY:
        return _ALL if flags.dotall else _ALL & ~_bits("\n")
    elif op is _sre.IN:
        mask = 0
        negate = False
        for sub_op, sub_av in av:  # type: ignore[attr-defined]
            if sub_op is _sre.NEGATE:
                negate = True
            elif sub_op is _sre.LITERAL:
                mask |= _bits(chr(sub_av))
            elif sub_op is _sre.RANGE:
                mask |= _range_bits(*sub_av)
            elif sub_op is _sre.CATEGORY:
                mask |= _CATEGORY_BITS.get(sub_av, _ALL)
            else:
                mask = _ALL
        if flags.caseless:
            mask = _fold(mask)
        return _ALL & ~mask if negate else mask
    else:
        return None
    return _fold(mask) if flags.caseless else mask


def _chars_of(items: list[tuple[object, object]], flags: _Flags) -> int:
    """Every character the sub-pattern could consume (a safe over-approximation)."""
    mask = 0
    for op, av in items:
        bits = _item_bits(op, av, flags)
        if bits is not None:
            mask |= bits
        elif op is _sre.SUBPATTERN:
            _group, add, remove, sub = av  # type: ignore[misc]
            mask |= _chars_of(sub.data, _flags_after(flags, add, remove))
        elif op is _sre.BRANCH:
            for alternative in av[1]:  # type: ignore[index]
                mask |= _chars_of(alternative.data, flags)
        elif op in _REPEATS:
            mask |= _chars_of(av[2].data, flags)  # type: ignore[index]
        elif op is _sre.ATOMIC_GROUP:
            mask |= _chars_of(av.data, flags)  # type: ignore[attr-defined]
        elif op is _sre.GROUPREF_EXISTS:
            mask |= _chars_of(av[1].data, flags)  # type: ignore[index]
            if av[2] is not None:  # type: ignore[index]
                mask |= _chars_of(av[2].data, flags)  # type: ignore[index]
        elif op is _sre.GROUPREF:
            mask = _ALL
    return mask


def _first_chars(items: list[tuple[object, object]], flags: _Flags) -> tuple[int, bool]:
    """Characters a sub-pattern can start with, and whether it can match the empty string."""
    mask = 0
    for op, av in items:
        bits = _item_bits(op, av, flags)
        if bits is not None:
            return mask | bits, False
        if op is _sre.SUBPATTERN:
            _group, add, remove, sub = av  # type: ignore[misc]
            first, nullable = _first_chars(sub.data, _flags_after(flags, add, remove))
        elif op is _sre.BRANCH:
            first, nullable = 0, False
            for alternative in av[1]:  # type: ignore[index]
                alt_first, alt_nullable = _first_chars(alternative.data, flags)
                first |= alt_first
                nullable = nullable or alt_nullable
        elif op in _REPEATS:
            first, nullable = _first_chars(av[2].data, flags)  # type: ignore[index]
            nullable = nullable or av[0] == 0  # type: ignore[index]
        elif op is _sre.ATOMIC_GROUP:
            first, nullable = _first_chars(av.data, flags)  # type: ignore[attr-defined]
        elif op is _sre.GROUPREF:
            first, nullable = _ALL, True
        elif op is _sre.GROUPREF_EXISTS:
            first, nullable = _first_chars(av[1].data, flags)  # type: ignore[index]
            if av[2] is None:  # type: ignore[index]
                nullable = True
            else:
                other_first, other_nullable = _first_chars(av[2].data, flags)  # type: ignore[index]
                first |= other_first
                nullable = nullable or other_nullable
        else:  # anchors and lookarounds consume nothing
            continue
        mask |= first
        if not nullable:
            return mask, False
    return mask, True


def _is_variable(low: int, high: int) -> bool:
    return high == _sre.MAXREPEAT or high - low > SMALL_REPEAT_RANGE


def _check_exponential(items: list[tuple[object, object]], flags: _Flags,
                       inside_repeat: bool) -> None:
    """Refuse the shapes that backtrack exponentially (point 1 of the module docstring)."""
    for op, av in items:
        if op is _sre.SUBPATTERN:
            _group, add, remove, sub = av  # type: ignore[misc]
            _check_exponential(sub.data, _flags_after(flags, add, remove), inside_repeat)
        elif op is _sre.BRANCH:
            alternatives = av[1]  # type: ignore[index]
            if inside_repeat:
                seen = 0
                for alternative in alternatives:
                    first, nullable = _first_chars(alternative.data, flags)
                    if nullable or first & seen:
                        raise PatternError(
                            "alternatives inside a repeated group can match the same text in "
                            "more than one way, which can take exponential time on hostile "
                            "input; make the alternatives start differently, e.g. "
                            "a(?:b|c) instead of (ab|ac)")
                    seen |= first
            for alternative in alternatives:
                _check_exponential(alternative.data, flags, inside_repeat)
        elif op in _REPEATS:
            low, high, sub = av  # type: ignore[misc]
            if inside_repeat and op is not _sre.POSSESSIVE_REPEAT and low != high:
                raise PatternError(
                    "nested quantifiers: a repeated group contains another quantifier (like "
                    "(a+)+ or (\\w+\\s?)*), which can take exponential time on hostile input; "
                    "rewrite it without the nesting, e.g. a+ or [\\w\\s]*")
            repeated = op is not _sre.POSSESSIVE_REPEAT and high > 1
            _check_exponential(sub.data, flags, inside_repeat or repeated)
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            _check_exponential(av[1].data, flags, inside_repeat)  # type: ignore[index]
        elif op is _sre.ATOMIC_GROUP:
            _check_exponential(av.data, flags, False)  # type: ignore[attr-defined]
        elif op is _sre.GROUPREF_EXISTS:
            _check_exponential(av[1].data, flags, inside_repeat)  # type: ignore[index]
            if av[2] is not None:  # type: ignore[index]
                _check_exponential(av[2].data, flags, inside_repeat)  # type: ignore[index]


# A chain candidate: (degree, characters its loop can take, for each mandatory item since
# it the characters both it and the loop can take).
_Candidate = tuple[int, int, tuple[int, ...]]
#: Items remembered per candidate; forgetting one only makes the estimate higher (safer).
_MAX_SEEN_ITEMS = 8


@dataclass(slots=True)
class _Degree:
    value: int = 0


def _absorb(state: list[_Candidate], chars: int) -> list[_Candidate]:
    """A mandatory item: a loop before it keeps varying only if it could consume what the
    item matches, i.e. if some character fits both (``[a-z]*[^;]`` on "aaaa": either may
    take the last "a")."""
    return [(degree, loop, _seen_with(seen, chars & loop))
            for degree, loop, seen in state if chars & loop]


def _seen_with(seen: tuple[int, ...], chars: int) -> tuple[int, ...]:
    if chars in seen:
        return seen
    return (*seen, chars)[-_MAX_SEEN_ITEMS:]


def _can_trade(loop: int, chars: int, seen: tuple[int, ...]) -> bool:
    """Whether a loop taking ``loop`` can trade characters with an earlier one taking
    ``chars`` across the mandatory items between them: one string fits all three."""
    return bool(chars & loop) and all(item & loop for item in seen)


def _merge(*states: list[_Candidate]) -> list[_Candidate]:
    merged = sorted(set().union(*states), key=lambda c: -c[0])
    return merged[:_MAX_CHAIN_CANDIDATES]


def _chain(items: list[tuple[object, object]], state: list[_Candidate], flags: _Flags,
           degree: _Degree) -> list[_Candidate]:
    """Estimate polynomial backtracking (point 2 of the module docstring).

    Walking the sequence, every variable loop gets a degree: 1, plus the highest degree of
    an earlier loop that can trade characters with it, i.e. whose characters overlap its own
    and where every mandatory item in between can match a character both loops can take.
    ``.*ama.*@``: the second ``.*`` can give back what the first takes, through "ama":
    degree 2.
    """
    for op, av in items:
        bits = _item_bits(op, av, flags)
        if bits is not None:
            state = _absorb(state, bits)
        elif op is _sre.SUBPATTERN:
            _group, add, remove, sub = av  # type: ignore[misc]
            state = _chain(sub.data, state, _flags_after(flags, add, remove), degree)
        elif op is _sre.BRANCH:
            state = _merge(*(_chain(alt.data, state, flags, degree) for alt in av[1]))  # type: ignore[index]
        elif op in _REPEATS:
            low, high, sub = av  # type: ignore[misc]
            if high == 0:
                continue
            if op is _sre.POSSESSIVE_REPEAT or not _is_variable(low, high):
                # No backtracking choices of its own: like its body, once (optional if 0).
                taken = _chain(sub.data, state, flags, degree)
                state = _merge(state, taken) if low == 0 else taken
                continue
            loop = _chars_of(sub.data, flags)
            own = 1 + max((d for d, chars, seen in state if _can_trade(loop, chars, seen)),
                          default=0)
            degree.value = max(degree.value, own)
            survivors = state if low == 0 else _absorb(state, loop)
            state = _merge(survivors, [(own, loop, ())])
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            # A lookaround runs at every point the search reaches; its own cost multiplies.
            reach = max((d for d, _c, _s in state), default=0)
            inner = _Degree()
            _chain(av[1].data, [], flags, inner)  # type: ignore[index]
            degree.value = max(degree.value, reach + inner.value)
        elif op is _sre.ATOMIC_GROUP:
            reach = max((d for d, _c, _s in state), default=0)
            inner = _Degree()
            _chain(av.data, [], flags, inner)  # type: ignore[attr-defined]
            degree.value = max(degree.value, reach + inner.value)
            state = _merge(state, _absorb(state, _chars_of(av.data, flags)))  # type: ignore[attr-defined]
        elif op is _sre.GROUPREF_EXISTS:
            yes = _chain(av[1].data, state, flags, degree)  # type: ignore[index]
            no = _chain(av[2].data, state, flags, degree) if av[2] is not None else state  # type: ignore[index]
            state = _merge(yes, no)
        # AT (anchors) and GROUPREF consume nothing we can account for: state unchanged.
    return state


def _anchored_at_start(items: list[tuple[object, object]], multiline: bool) -> bool:
    for op, av in items:
        if op is _sre.AT:
            if av is _sre.AT_BEGINNING_STRING or (av is _sre.AT_BEGINNING and not multiline):
                return True
            continue
        if op is _sre.SUBPATTERN:
            _group, add, remove, sub = av  # type: ignore[misc]
            scoped = (multiline or bool(add & re.MULTILINE)) and not remove & re.MULTILINE
            return _anchored_at_start(sub.data, scoped)
        if op is _sre.BRANCH:
            return all(_anchored_at_start(alt.data, multiline) for alt in av[1])  # type: ignore[index]
        return False
    return False


@dataclass(frozen=True, slots=True)
class PatternCost:
    """What :func:`analyse_pattern` found: the degree, the subject window allowed, and
    the longest literal text every match must contain (lower-case ASCII; b"" if none)."""

    degree: int
    window: int
    literal: bytes = b""


def _literal_runs(items: list[tuple[object, object]], runs: list[str], run: list[str]) -> None:
    """Collect runs of literal characters that every match contains, in order."""
    for op, av in items:
        if op is _sre.LITERAL and av < 128 and chr(av) not in "\r\n":  # type: ignore[operator]
            run.append(chr(av))  # type: ignore[arg-type]
            continue
        if op is _sre.AT:
            continue  # zero-width: the characters around it are still adjacent
        if op is _sre.SUBPATTERN and not any(
                sub_op in (_sre.BRANCH, _sre.GROUPREF_EXISTS) for sub_op, _ in av[3].data):  # type: ignore[index]
            _literal_runs(av[3].data, runs, run)  # type: ignore[index]
            continue
        runs.append("".join(run))
        run.clear()


def required_literal(tree_items: list[tuple[object, object]]) -> bytes:
    """The longest ASCII literal a match must contain, lower-case, for a cheap
    ``literal in message.lower()`` test before running the pattern at all."""
    runs: list[str] = []
    run: list[str] = []
    _literal_runs(tree_items, runs, run)
    runs.append("".join(run))
    best = max(runs, key=len)
    return best.lower().encode("ascii") if len(best) >= 2 else b""


def analyse_pattern(translation: Translation, context: MatchContext) -> PatternCost:
    """Check a translated pattern for catastrophic backtracking; :class:`PatternError` if so.

    The tree walked is that of Python's own regex parser (``re._parser``): private, but
    stable within a Python minor version (the project pins 3.11), and
    tests/policy/test_policy_tables.py::test_degree_estimates fails if its shape changes.

    Returns the pattern's estimated degree and how many characters of a subject it may
    examine (see the module docstring).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = _sre_parse.parse(translation.source, translation.flags)
    except (re.error, RecursionError, OverflowError) as error:
        raise PatternError(f"invalid pattern: {error}") from None
    flags = _Flags(bool(translation.flags & re.IGNORECASE), bool(translation.flags & re.DOTALL))
    if tree.state.flags & re.IGNORECASE:
        flags.caseless = True
    if tree.state.flags & re.DOTALL:
        flags.dotall = True
    try:
        _check_exponential(tree.data, flags, False)
        multiline = bool((translation.flags | tree.state.flags) & re.MULTILINE)
        anchored = translation.anchored or _anchored_at_start(tree.data, multiline)
        degree = _Degree(0 if anchored else 1)
        start: list[_Candidate] = [] if anchored else [(1, _ALL, ())]
        _chain(tree.data, start, flags, degree)
        literal = required_literal(tree.data)
    except RecursionError:
        raise PatternError("pattern nested too deeply to analyse") from None
    if degree.value <= 1:
        return PatternCost(degree.value, context.subject_limit, literal)
    window = int(MAX_MATCH_STEPS ** (1 / degree.value))
    while (window + 1) ** degree.value <= MAX_MATCH_STEPS:  # float rounding
        window += 1
    while window ** degree.value > MAX_MATCH_STEPS:
        window -= 1
    window = min(window, context.subject_limit)
    if window < context.minimum_window:
        raise PatternError(
            f"pattern may backtrack polynomially: about n^{degree.value} steps on a hostile "
            f"subject of n characters (quantifiers like .* that can trade characters with "
            f"each other, or a pattern that starts with one without ^); it could only be "
            f"allowed to see {window} characters, less than the {context.minimum_window} "
            "needed here. Anchor it with ^, use fewer unbounded wildcards, or split it into "
            "an if /.../ block")
    return PatternCost(degree.value, window, literal)


# --- regex tables ---------------------------------------------------------------------

_Template = tuple[str | int, ...]


def parse_template(text: str) -> _Template:
    """Split result text into literal parts and ``$n``/``${n}``/``$(n)`` group numbers."""
    parts: list[str | int] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "$":
            literal.append(char)
            index += 1
            continue
        nxt = text[index + 1:index + 2]
        if nxt == "$":
            literal.append("$")
            index += 2
            continue
        match = re.compile(r"\$(?:\{([^}]*)\}|\(([^)]*)\)|([A-Za-z0-9_]+))").match(text, index)
        if match is None:
            literal.append("$")  # a lone "$" is literal, as in Postfix's mac_parse()
            index += 1
            continue
        name = next(g for g in match.groups() if g is not None)
        if not name.isdigit() or not name.isascii():
            raise PatternError(f"non-numeric replacement ${name}; only $1, ${{1}}, $(1) and "
                               "$$ are allowed")
        number = int(name)
        if number < 1:
            raise PatternError(f"replacement index ${name} out of range")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(number)
        index = match.end()
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def _expand(template: _Template, match: re.Match[str]) -> str:
    out: list[str] = []
    for part in template:
        if isinstance(part, int):
            group = match.group(part) or ""
            # Substituted text must not smuggle line breaks into a reply or a header.
            out.append(group.replace("\r", " ").replace("\n", " "))
        else:
            out.append(part)
    return "".join(out)


@dataclass(slots=True)
class _RegexRule:
    kind: int
    line: int
    pattern: str = ""
    negated: bool = False
    test: Callable[[str], re.Match[str] | None] | None = None
    window: int = 0
    template: _Template = ()
    value: str = ""
    action: Action | None = None
    end: int = 0
    #: Lower-case ASCII text every match contains (b"": no such text known).
    literal: bytes = b""


def _split_pattern(text: str) -> tuple[bool, str, str, str, str]:
    """``[!]/pattern/flags rest`` -> (negated, delimiter, pattern, flags, rest).

    Postfix dict_pcre_get_pattern(): any number of ``!`` (each toggles) and blanks, then
    a delimiter (not alphanumeric, not blank); a backslash protects the delimiter.
    """
    negated, text = _negations(text)
    if not text:
        raise PatternError("no pattern")
    delimiter = text[0]
    if (delimiter.isascii() and delimiter.isalnum()) or delimiter == "\\":
        raise PatternError(f"a pattern must start with a delimiter such as '/', not "
                           f"{delimiter!r}")
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == delimiter:
            break
        index += 1
    if index >= len(text):
        raise PatternError(f"no closing delimiter {delimiter!r}")
    pattern = text[1:index]
    flags, rest = _split_first_word(text[index + 1:])
    return negated, delimiter, pattern, flags, rest


#: Narrowed copies of a table kept for reuse (one per set of literals found in messages).
MAX_PREFILTER_VIEWS = 256
#: Literals are indexed by at most this many leading characters (a shorter prefix is still
#: text every match contains; it only keeps the index regex small).
LITERAL_INDEX_LENGTH = 24


def _trie_source(keys: list[bytes]) -> bytes:
    """A regex matching any of ``keys``, shaped as a trie so that each position of the
    subject costs one step per character in common instead of one try per key."""
    root: dict[int | None, dict] = {}  # type: ignore[type-arg]
    for key in keys:
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = {}

    def emit(node: dict[int | None, dict]) -> bytes:  # type: ignore[type-arg]
        branches = [re.escape(bytes([byte])) + emit(child)
                    for byte, child in sorted((k, v) for k, v in node.items() if k is not None)]
        if not branches:
            return b""
        body = b"(?:" + b"|".join(branches) + b")"
        return body + b"?" if None in node else body

    return emit(root)


class _LiteralIndex:
    """Which rule literals occur in a text, found with one regex pass over it."""

    def __init__(self, literals: set[bytes]) -> None:
        self._keys = {literal[:LITERAL_INDEX_LENGTH] for literal in literals if literal}
        self._finder = (re.compile(b"(?=(" + _trie_source(sorted(self._keys)) + b"))")
                        if self._keys else None)

    def present(self, haystack: bytes) -> set[bytes]:
        """The indexed keys that occur in ``haystack``."""
        if self._finder is None:
            return set()
        keys = self._keys
        present: set[bytes] = set()
        # At each position the trie regex reports the longest key there; shorter keys
        # that also match there are its prefixes.
        for longest in set(self._finder.findall(haystack)):
            for length in range(1, len(longest) + 1):
                if longest[:length] in keys:
                    present.add(longest[:length])
        return present


class RegexTable:
    """A pcre: or regexp: table, compiled once; rules are tried in file order."""

    def __init__(self, source: str, dialect: Dialect, purpose: TablePurpose,
                 rules: list[_RegexRule]) -> None:
        self.source = source
        self.dialect = dialect
        self.purpose = purpose
        self._rules = rules
        self._index: _LiteralIndex | None = None
        # Messages mostly contain the same few literals: the narrowed tables are reused.
        self._views: dict[frozenset[bytes], RegexTable] = {}

    def __len__(self) -> int:
        return sum(1 for rule in self._rules if rule.kind == _RULE_MATCH)

    @property
    def max_window(self) -> int:
        """The most characters of a subject any rule examines (see analyse_pattern)."""
        return max((rule.window for rule in self._rules if rule.kind != _RULE_ENDIF),
                   default=0)

    def rules(self) -> Iterator[tuple[int, str]]:
        """(line, pattern) of every match rule, for diagnostics."""
        for rule in self._rules:
            if rule.kind == _RULE_MATCH:
                yield rule.line, rule.pattern

    def prefiltered(self, haystack: bytes) -> RegexTable:
        """This table without the rules that cannot match any subject taken from
        ``haystack``, the lower-cased bytes those subjects come from.

        A rule whose pattern needs literal text absent from the haystack is dropped (an
        ``if`` block with its whole body); negated rules always stay. Checking a message
        then costs one substring search per rule plus the patterns that can match,
        instead of every pattern on every line.
        """
        rules = self._rules
        if self._index is None:
            self._index = _LiteralIndex({rule.literal for rule in rules if not rule.negated})
        present = frozenset(self._index.present(haystack))
        view = self._views.get(present)
        if view is None:
            if len(self._views) >= MAX_PREFILTER_VIEWS:
                self._views.clear()
            view = self._views[present] = self._without_absent(present)
        return view

    def _without_absent(self, present: frozenset[bytes]) -> RegexTable:
        rules = self._rules
        kept: list[_RegexRule] = []
        open_ifs: list[int] = []
        index = 0
        while index < len(rules):
            rule = rules[index]
            if rule.kind == _RULE_ENDIF:
                kept[open_ifs.pop()].end = len(kept)
                kept.append(rule)
                index += 1
                continue
            absent = (not rule.negated and rule.literal != b""
                      and rule.literal[:LITERAL_INDEX_LENGTH] not in present)
            if absent:
                index = rule.end + 1 if rule.kind == _RULE_IF else index + 1
                continue
            if rule.kind == _RULE_IF:
                open_ifs.append(len(kept))
                kept.append(replace(rule))
            else:
                kept.append(rule)
            index += 1
        return RegexTable(self.source, self.dialect, self.purpose, kept)

    def lookup(self, subject: str) -> TableHit | None:
        """The first rule that applies to ``subject`` (Postfix first-match semantics)."""
        rules = self._rules
        count = len(rules)
        index = 0
        while index < count:
            rule = rules[index]
            kind = rule.kind
            if kind == _RULE_ENDIF:
                index += 1
                continue
            seen = subject if len(subject) <= rule.window else subject[: rule.window]
            match = rule.test(seen)  # type: ignore[misc]
            if kind == _RULE_IF:
                index = index + 1 if (match is None) == rule.negated else rule.end + 1
                continue
            if (match is None) == rule.negated:
                return self._hit(rule, match)
            index += 1
        return None

    def _hit(self, rule: _RegexRule, match: re.Match[str] | None) -> TableHit:
        if rule.action is not None:
            return TableHit(self.source, rule.line, rule.pattern, rule.value, rule.action)
        assert match is not None
        value = _expand(rule.template, match)
        try:
            action = _action_for(value, self.purpose)
        except ActionError:
            # The action word is fixed at load time; only text that a substitution turned
            # into something unusable (a PREPEND without header label) gets here.
            action = Action(ActionKind.DUNNO)
        return TableHit(self.source, rule.line, rule.pattern, value, action)


def parse_regex_table(text: str, source: str, *, dialect: Dialect = "pcre",
                      purpose: TablePurpose = "access") -> RegexTable:
    """Parse and compile a pcre: or regexp: table for access, header or body checks.

    Every pattern is translated (:func:`translate_pattern`), compiled and analysed
    (:func:`analyse_pattern`); every result is parsed as an action of ``purpose``. Any
    problem is a :class:`TableError` with the line.
    """
    context = CONTEXTS[purpose]
    rules: list[_RegexRule] = []
    for line in logical_lines(text, source):
        try:
            rules.append(_parse_regex_line(line, dialect, purpose, context))
        except PatternError as error:
            raise TableError(source, line.number, str(error)) from None
        except ActionError as error:
            raise TableError(source, line.number, str(error)) from None
    ends = _link_blocks([rule.kind for rule in rules], [rule.line for rule in rules], source)
    for rule, end in zip(rules, ends, strict=True):
        rule.end = end
    return RegexTable(source, dialect, purpose, rules)


def _compile_rule(negated: bool, pattern: str, flags: str, dialect: Dialect,
                  context: MatchContext, line: int, kind: int) -> _RegexRule:
    translation = translate_pattern(pattern, flags, dialect)
    compiled = compile_translation(translation)
    cost = analyse_pattern(translation, context)
    test = compiled.match if translation.anchored else compiled.search
    return _RegexRule(kind, line, pattern=pattern, negated=negated, test=test,
                      window=cost.window, literal=cost.literal)


def _parse_regex_line(line: LogicalLine, dialect: Dialect, purpose: TablePurpose,
                      context: MatchContext) -> _RegexRule:
    text = line.text
    if text[:1].isalnum():
        rest = _keyword(text, "endif")
        if rest is not None:
            if rest:
                raise PatternError(f"text after endif: {rest!r}")
            return _RegexRule(_RULE_ENDIF, line.number)
        rest = _keyword(text, "if")
        if rest is None:
            raise PatternError(f"unrecognized line {text[:40]!r}: expected /pattern/ result, "
                               "if /pattern/ or endif")
        negated, _delimiter, pattern, flags, extra = _split_pattern(rest)
        if extra:
            raise PatternError(f"text after the if pattern: {extra[:40]!r} (do not indent "
                               "the lines between if and endif)")
        return _compile_rule(negated, pattern, flags, dialect, context, line.number, _RULE_IF)
    negated, _delimiter, pattern, flags, result = _split_pattern(text)
    if not result:
        raise PatternError("no result after the pattern")
    rule = _compile_rule(negated, pattern, flags, dialect, context, line.number, _RULE_MATCH)
    template = parse_template(result)
    groups = [part for part in template if isinstance(part, int)]
    if groups:
        if negated:
            raise PatternError("$number in the result of a negated (!) pattern: there is "
                               "no match to take it from")
        assert rule.test is not None
        highest = max(groups)
        group_count = rule.test.__self__.groups  # type: ignore[attr-defined]
        if highest > group_count:
            raise PatternError(f"${highest} but the pattern has {group_count} group(s)")
        word, _rest = _split_first_word(result)
        if "$" in word:
            raise PatternError("the action must be written out, not substituted")
        # Validate the action now with stand-in text; the real text is known per match.
        sample = "".join("x" if isinstance(part, int) else part for part in template)
        _action_for(sample, purpose)
        rule.template = template
    else:
        rule.value = "".join(part for part in template if isinstance(part, str))
        rule.action = _action_for(rule.value, purpose)
    return rule


# --- access(5) search orders ----------------------------------------------------------

AccessTable = LiteralTable | CidrTable | RegexTable


def _lookup(table: AccessTable, key: str, full: bool) -> TableHit | None:
    """One lookup. Pattern tables (cidr, pcre, regexp) answer only the full subject:
    Postfix does not try parent domains, networks or address parts against them."""
    if isinstance(table, LiteralTable):
        return table.get(key)
    if not full:
        return None
    if isinstance(table, CidrTable):
        return table.lookup(key)
    return table.lookup(key)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def domain_search_keys(domain: str, *, parent_matches_subdomains: bool = True) -> list[str]:
    """access(5) HOST NAME PATTERNS order: the name, then its parents.

    With ``parent_matches_subdomains`` (Postfix's default: smtpd_access_maps is in
    parent_domain_matches_subdomains) a parent is looked up as ``example.com``, otherwise
    as ``.example.com``. A numerical address is looked up as-is only.
    """
    name = domain[:-1] if domain.endswith(".") else domain
    keys = [name]
    if not name or name.startswith("[") or _is_address(name):
        return keys
    dot = name.find(".", 1)
    while dot >= 0:
        keys.append(name[dot + 1:] if parent_matches_subdomains else name[dot:])
        dot = name.find(".", dot + 1)
    return keys


def address_search_keys(address: str) -> list[str]:
    """access(5) network order: 1.2.3.4, 1.2.3, 1.2, 1 (and the IPv6 equivalent)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return [address]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 clients this way
    text = str(ip)
    delimiter = ":" if ip.version == 6 else "."
    keys = [text]
    while delimiter in text:
        text = text[: text.rindex(delimiter)]
        if text:
            keys.append(text)
    return keys


def _first_hit(table: AccessTable, keys: list[tuple[str, bool]]) -> TableHit | None:
    for key, full in keys:
        hit = _lookup(table, key, full)
        if hit is not None:
            return hit  # DUNNO too: it stops the search (access(5) "DUNNO")
    return None


def check_domain_access(table: AccessTable, domain: str, *,
                        parent_matches_subdomains: bool = True) -> TableHit | None:
    """Look up a host name (HELO argument, client name) in access(5) order."""
    keys = domain_search_keys(domain, parent_matches_subdomains=parent_matches_subdomains)
    return _first_hit(table, [(key, index == 0) for index, key in enumerate(keys)])


def check_helo_access(table: AccessTable, helo: str, *,
                      parent_matches_subdomains: bool = True) -> TableHit | None:
    """Postfix check_helo_access: the HELO argument as a host name."""
    return check_domain_access(table, helo, parent_matches_subdomains=parent_matches_subdomains)


def check_client_access(table: AccessTable, *, address: str, hostname: str | None = None,
                        parent_matches_subdomains: bool = True) -> TableHit | None:
    """Postfix check_client_access: the client name and parents, then its address and
    networks (access(5) HOST NAME/ADDRESS PATTERNS). ``hostname`` None: no verified name."""
    if hostname:
        hit = check_domain_access(table, hostname,
                                  parent_matches_subdomains=parent_matches_subdomains)
        if hit is not None:
            return hit
    keys = address_search_keys(address)
    return _first_hit(table, [(key, index == 0) for index, key in enumerate(keys)])


def mail_search_keys(address: str, *, recipient_delimiter: str = "",
                     parent_matches_subdomains: bool = True,
                     null_sender_key: str = "<>") -> list[tuple[str, bool]]:
    """access(5) EMAIL ADDRESS PATTERNS order, with (key, is-full-lookup) pairs.

    user+foo@domain, user@domain, domain and its parents, user+foo@, user@ (the
    extension steps only with a ``recipient_delimiter``). The null sender is looked up as
    ``null_sender_key`` (Postfix smtpd_null_access_lookup_key).
    """
    if not address:
        return [(null_sender_key, True)]
    at = address.rfind("@")
    if at < 0:
        return [(address, True)]
    local, domain = address[:at], address[at + 1:]
    bare_local = local
    if recipient_delimiter:
        cut = min((i for i, c in enumerate(local) if c in recipient_delimiter),
                  default=len(local))
        if 0 < cut < len(local):
            bare_local = local[:cut]
    keys: list[tuple[str, bool]] = [(address, True)]
    if bare_local != local:
        keys.append((f"{bare_local}@{domain}", False))
    keys.extend((key, False) for key in domain_search_keys(
        domain, parent_matches_subdomains=parent_matches_subdomains))
    keys.append((f"{local}@", False))
    if bare_local != local:
        keys.append((f"{bare_local}@", False))
    return keys


def check_mail_access(table: AccessTable, address: str, *, recipient_delimiter: str = "",
                      parent_matches_subdomains: bool = True,
                      null_sender_key: str = "<>") -> TableHit | None:
    """Postfix check_sender_access/check_recipient_access for one envelope address."""
    keys = mail_search_keys(address, recipient_delimiter=recipient_delimiter,
                            parent_matches_subdomains=parent_matches_subdomains,
                            null_sender_key=null_sender_key)
    return _first_hit(table, keys)


# --- loading by Postfix table name -----------------------------------------------------

_LITERAL_TYPES = frozenset({"hash", "btree", "lmdb", "dbm", "cdb", "texthash"})


def read_table_text(path: str | Path, source: str) -> str:
    """Read a table file: at most :data:`MAX_TABLE_BYTES`, UTF-8 with undecodable bytes
    kept (surrogateescape), the way subjects are decoded, so bytes match bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TABLE_BYTES + 1)
    except OSError as error:
        raise TableError(source, 0, f"cannot read table: {error.strerror or error}") from None
    if len(data) > MAX_TABLE_BYTES:
        raise TableError(source, 0, f"table larger than {MAX_TABLE_BYTES} bytes")
    return data.decode("utf-8", "surrogateescape")


def load_table(name: str, *, purpose: TablePurpose = "access", base_dir: Path | None = None,
               bare_key_value: str | None = None) -> AccessTable:
    """Load a table by its Postfix name, e.g. ``pcre:/etc/postfix/header_checks.pcre``.

    ``hash:``-like types read the source file itself (the text postmap compiles); a
    relative path is taken relative to ``base_dir``. Only regex tables can serve header
    and body checks.
    """
    kind, sep, path_text = name.partition(":")
    if not sep or not path_text:
        raise TableError(name, 0, "table name must look like type:/path/to/file")
    kind = kind.lower()
    path = Path(path_text)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    source = str(path)
    if kind in ("pcre", "regexp"):
        text = read_table_text(path, source)
        return parse_regex_table(text, source, dialect=kind, purpose=purpose)  # type: ignore[arg-type]
    if purpose != "access":
        raise TableError(name, 0, f"{kind}: tables cannot be used for {purpose} checks; "
                         "use pcre: or regexp:")
    if kind == "cidr":
        return parse_cidr_table(read_table_text(path, source), source)
    if kind in _LITERAL_TYPES:
        return parse_literal_table(read_table_text(path, source), source,
                                   bare_key_value=bare_key_value)
    raise TableError(name, 0, f"unsupported table type {kind!r} (supported: cidr, pcre, "
                     f"regexp, {', '.join(sorted(_LITERAL_TYPES))})")
