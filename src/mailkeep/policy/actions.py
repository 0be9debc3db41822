"""What a Postfix table result means: typed actions and the SMTP replies they produce.

A table lookup returns text such as ``REJECT Your email got a date in the future.`` or
``554 User unknown in local recipient table``. This module turns that text into an
:class:`Action`, once, when the table is loaded, so a typo becomes a load error with the
table's file and line instead of a surprise on the wire.

Two vocabularies, as in Postfix:

* access(5) results, for client, HELO, sender and recipient lookups
  (:func:`parse_access_action`): OK, all-numerical (= OK), RELAY, DUNNO, REJECT, DEFER,
  DEFER_IF_REJECT, DEFER_IF_PERMIT, explicit ``4NN``/``5NN`` replies, DISCARD, HOLD, WARN,
  INFO, PREPEND, and FILTER, REDIRECT and BCC (parsed, but refused by the table loaders:
  mailkeep has no content-filter transport and does not rewrite recipients here);
* header_checks(5)/body_checks(5) results (:func:`parse_content_action`): DUNNO (and OK,
  which Postfix has always treated as DUNNO), REJECT, DISCARD, HOLD, WARN, INFO, IGNORE,
  STRIP, PREPEND, REPLACE, PASS, and again FILTER, REDIRECT and BCC (parsed, refused).

Action names are case-insensitive and end at the first blank; the rest is the optional
text. Replies follow Postfix's defaults: access_map_reject_code 554 and
access_map_defer_code 450 with the RFC 3463 codes 5.7.1/4.7.1 unless the text starts with
its own enhanced status code (RFC 3463 §2; RFC 2034 §4 puts it right after the reply
code), and Postfix's smtpd_dsn_fix() adjustment of address status codes to what is being
rejected. Header/body REJECT replies with 550 (451 when its status code is 4.x.x).

One deliberate difference: a bare three-digit ``4NN``/``5NN`` result without text is a
reject with the generic text here; Postfix treats it as all-numerical, i.e. OK, which turns
a table meant to refuse into one that accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

#: Postfix ``access_map_reject_code``: the reply code of an access-table REJECT.
ACCESS_MAP_REJECT_CODE = 554
#: Postfix ``access_map_defer_code``: the reply code of DEFER and DEFER_IF_* results.
ACCESS_MAP_DEFER_CODE = 450
#: Reply code when header/body checks reject a message (Postfix cleanup "content rejected").
CONTENT_REJECT_CODE = 550
#: Reply code when header/body checks reject with a 4.x.x status code (a temporary failure).
CONTENT_DEFER_CODE = 451
#: Longest reply text kept (characters). RFC 5321 §4.5.3.1.5 limits a reply line to 512
#: octets including code, enhanced code and CRLF; a ``$1`` substitution can make text of
#: any length, so it is cut here rather than on the wire.
MAX_REPLY_TEXT = 450

REJECT_STATUS = "5.7.1"
DEFER_STATUS = "4.7.1"
#: Postfix's generic texts when a table result has none.
ACCESS_DENIED_TEXT = "Access denied"
SERVICE_UNAVAILABLE_TEXT = "Service unavailable"
CONTENT_REJECTED_TEXT = "message content rejected"


class ActionError(ValueError):
    """A table result that is not a valid action; the loaders add file and line."""


class ActionKind(StrEnum):
    OK = "OK"
    DUNNO = "DUNNO"
    REJECT = "REJECT"
    DEFER = "DEFER"
    DEFER_IF_REJECT = "DEFER_IF_REJECT"
    DEFER_IF_PERMIT = "DEFER_IF_PERMIT"
    #: An explicit ``4NN text`` or ``5NN text`` result (access(5) "REJECT ACTIONS").
    REPLY = "REPLY"
    DISCARD = "DISCARD"
    HOLD = "HOLD"
    WARN = "WARN"
    INFO = "INFO"
    PREPEND = "PREPEND"
    REPLACE = "REPLACE"
    IGNORE = "IGNORE"
    STRIP = "STRIP"
    PASS = "PASS"
    FILTER = "FILTER"
    REDIRECT = "REDIRECT"
    BCC = "BCC"


#: Parsed so that the error can say what the line means, but not carried out by mailkeep:
#: the table loaders refuse them with the file and line.
UNSUPPORTED_KINDS = frozenset({ActionKind.FILTER, ActionKind.REDIRECT, ActionKind.BCC})

_ACCESS_KEYWORDS = frozenset({
    "OK", "RELAY", "DUNNO", "REJECT", "DEFER", "DEFER_IF_REJECT", "DEFER_IF_PERMIT",
    "DISCARD", "HOLD", "WARN", "INFO", "PREPEND", "FILTER", "REDIRECT", "BCC",
})
_CONTENT_KEYWORDS = frozenset({
    "OK", "DUNNO", "REJECT", "DISCARD", "HOLD", "WARN", "INFO", "PREPEND", "REPLACE",
    "IGNORE", "STRIP", "PASS", "FILTER", "REDIRECT", "BCC",
})
#: Lower-case words Postfix would evaluate as a restriction list (access(5) "restriction...").
_RESTRICTION_WORD = re.compile(r"(?:permit|reject|defer|warn_if_reject|check|sleep)(?:_\w+)?\Z")
#: RFC 3463 §2: class.subject.detail; Postfix's dsn_valid() allows 1-3 digit fields.
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=[ \t]|\Z)")
#: A header label for PREPEND/REPLACE: RFC 5322 §2.2 field name, then a colon.
_HEADER_LABEL = re.compile(r"[!-9;-~]+[ \t]*:")
_BLANKS = " \t"


@dataclass(frozen=True, slots=True)
class Action:
    """One table result, parsed.

    ``text`` is the optional text after the action name (reply text, log text, header
    text or argument), without an enhanced status code at its start; that code is in
    ``status``. ``code`` is set for :attr:`ActionKind.REPLY` only.
    """

    kind: ActionKind
    text: str = ""
    code: int | None = None
    status: str | None = None

    @property
    def disconnects(self) -> bool:
        """421 and 521 replies close the connection after replying (access(5))."""
        return self.kind is ActionKind.REPLY and self.code in (421, 521)


class ReplyClass(StrEnum):
    """What an access table lookup was about; Postfix names it in the reply text."""

    CLIENT = "Client host"
    HELO = "Helo command"
    SENDER = "Sender address"
    RECIPIENT = "Recipient address"


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, RFC 3463 enhanced status code and text."""

    code: int
    status: str
    text: str

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


def _split_word(value: str) -> tuple[str, str]:
    """The action word and the rest with leading blanks removed (Postfix's strcspn split)."""
    value = value.strip(_BLANKS)
    for index, char in enumerate(value):
        if char in _BLANKS:
            return value[:index], value[index:].lstrip(_BLANKS)
    return value, ""


def split_status(text: str) -> tuple[str | None, str]:
    """Postfix's dsn_split(): a leading RFC 3463 status code, and the text after it."""
    stripped = text.lstrip(_BLANKS)
    match = _STATUS.match(stripped)
    if match is None:
        return None, text
    return match.group(0), stripped[match.end():].lstrip(_BLANKS)


def is_header_text(text: str) -> bool:
    """Does ``text`` start with a header label ("Name:"), as PREPEND/REPLACE need?"""
    return _HEADER_LABEL.match(text) is not None


def _common_action(word: str, rest: str, where: str) -> Action | None:
    """The actions whose syntax is the same for access and content tables."""
    if word in ("DISCARD", "HOLD", "WARN", "INFO"):
        return Action(ActionKind(word), rest)
    if word == "FILTER":
        # access(5)/header_checks(5): "FILTER transport:destination".
        if ":" not in rest:
            raise ActionError(f"FILTER needs transport:destination, got {rest!r}")
        return Action(ActionKind.FILTER, rest)
    if word in ("REDIRECT", "BCC"):
        if "@" not in rest:
            raise ActionError(f"{word} needs a user@domain address, got {rest!r}")
        return Action(ActionKind(word), rest)
    if word == "PREPEND":
        if not rest:
            raise ActionError("PREPEND needs text")
        if where != "body" and not is_header_text(rest):
            raise ActionError(f"PREPEND needs 'headername: headervalue', got {rest!r}")
        return Action(ActionKind.PREPEND, rest)
    return None


def parse_access_action(value: str) -> Action:
    """Parse an access(5) table result into an :class:`Action`; :class:`ActionError` if bad."""
    word, rest = _split_word(value)
    if not word:
        raise ActionError("empty result; an access table entry needs an action")
    upper = word.upper()
    if word.isdigit() and word.isascii():
        if len(word) == 3 and word[0] in "45":
            return _explicit_reply(int(word), rest)
        # access(5): "An all-numerical result is treated as OK".
        return Action(ActionKind.OK)
    if upper in ("OK", "RELAY"):
        return Action(ActionKind.OK)
    if upper == "DUNNO":
        return Action(ActionKind.DUNNO)
    if upper in ("REJECT", "DEFER", "DEFER_IF_REJECT", "DEFER_IF_PERMIT"):
        status, text = split_status(rest)
        return Action(ActionKind(upper), text, status=status)
    common = _common_action(upper, rest, "access")
    if common is not None:
        return common
    # Restriction lists are separated by blanks or commas (Postfix RESTRICTION_SEPARATORS).
    if _RESTRICTION_WORD.match(word.split(",")[0]):
        raise ActionError(
            f"{word.split(',')[0]!r} is a Postfix restriction name; restriction lists as table results "
            "are not supported, use an action such as REJECT or OK"
        )
    raise ActionError(f"unknown action {word!r} (access(5) actions: "
                      f"{', '.join(sorted(_ACCESS_KEYWORDS))}, 4NN text, 5NN text)")


def _explicit_reply(code: int, rest: str) -> Action:
    status, text = split_status(rest)
    return Action(ActionKind.REPLY, text, code=code, status=status)


def parse_content_action(value: str, *, where: Literal["header", "body"]) -> Action:
    """Parse a header_checks(5)/body_checks(5) result; :class:`ActionError` if bad.

    ``where`` matters for PREPEND and REPLACE, whose text must be a header in a header
    check (header_checks(5) "ACTIONS").
    """
    word, rest = _split_word(value)
    if not word:
        raise ActionError("empty result; a header/body check needs an action")
    upper = word.upper()
    if upper in ("DUNNO", "OK"):
        return Action(ActionKind.DUNNO)
    if upper == "IGNORE":
        return Action(ActionKind.IGNORE)
    if upper in ("STRIP", "PASS"):
        return Action(ActionKind(upper), rest)
    if upper == "REJECT":
        status, text = split_status(rest)
        return Action(ActionKind.REJECT, text, status=status)
    if upper == "REPLACE":
        if not rest:
            raise ActionError("REPLACE needs text")
        if where == "header" and not is_header_text(rest):
            raise ActionError(f"REPLACE needs 'headername: headervalue', got {rest!r}")
        return Action(ActionKind.REPLACE, rest)
    common = _common_action(upper, rest, where)
    if common is not None:
        return common
    if word.isdigit():
        raise ActionError(
            f"explicit reply codes like {word!r} are not header/body check actions; "
            "write REJECT 5.x.y text (or 4.x.y for a temporary failure)"
        )
    raise ActionError(f"unknown action {word!r} (header/body check actions: "
                      f"{', '.join(sorted(_CONTENT_KEYWORDS))})")


#: Postfix smtpd_dsn_fix.c: X.1.<detail> as a sender and as a recipient status.
_SENDER_STATUS = {"1": "4.1.7", "2": "4.1.8", "3": "4.1.7", "4": "4.1.7", "5": "4.1.0",
                  "6": "4.1.7", "7": "4.1.7", "8": "4.1.8"}
_RECIPIENT_STATUS = {"1": "4.1.1", "2": "4.1.2", "3": "4.1.3", "4": "4.1.4", "5": "4.1.5",
                     "6": "4.1.6", "7": "4.1.3", "8": "4.1.2"}


def _fix_status(status: str, reply_class: ReplyClass) -> str:
    """Postfix smtpd_dsn_fix(): make an address status code fit what is rejected.

    X.1.1-X.1.6 describe a recipient and X.1.7/X.1.8 a sender (RFC 3463 §3.2); a table
    shared between sender and recipient checks would otherwise send the wrong one, and a
    HELO or client rejection gets the neutral X.0.0.
    """
    klass, subject, detail = status.split(".")
    if subject != "1":
        return status
    if reply_class is ReplyClass.SENDER:
        fixed = _SENDER_STATUS.get(detail, "4.1.0")
    elif reply_class is ReplyClass.RECIPIENT:
        fixed = _RECIPIENT_STATUS.get(detail, "4.1.0")
    else:
        fixed = "4.0.0"
    return klass + fixed[1:]


def _clip(text: str) -> str:
    # Replies are one line: a substituted "$1" could carry a line break from a header.
    one_line = text.replace("\r", " ").replace("\n", " ")
    return one_line[:MAX_REPLY_TEXT]


def access_reply(action: Action, *, name: str, reply_class: ReplyClass) -> Reply | None:
    """The reply an access-table action gives, or None if it does not refuse.

    ``name`` is what was looked up (client name, HELO argument, address); the text has
    Postfix's shape ``<name>: Sender address rejected: text``, as in seed 002's log line
    ``554 5.7.1 <testuser2@example.org>: Sender address rejected: ...``. DEFER_IF_REJECT
    and DEFER_IF_PERMIT give their would-be reply; whether it applies depends on the
    restrictions that follow, which is the caller's business.
    """
    kind = action.kind
    if kind is ActionKind.REJECT:
        code, default_status, default_text = ACCESS_MAP_REJECT_CODE, REJECT_STATUS, ACCESS_DENIED_TEXT
    elif kind is ActionKind.DEFER:
        code, default_status, default_text = ACCESS_MAP_DEFER_CODE, DEFER_STATUS, ACCESS_DENIED_TEXT
    elif kind in (ActionKind.DEFER_IF_REJECT, ActionKind.DEFER_IF_PERMIT):
        code, default_status, default_text = (
            ACCESS_MAP_DEFER_CODE, DEFER_STATUS, SERVICE_UNAVAILABLE_TEXT)
    elif kind is ActionKind.REPLY:
        assert action.code is not None
        code = action.code
        default_status = f"{str(code)[0]}.7.1"
        default_text = ACCESS_DENIED_TEXT
    else:
        return None
    status = _fix_status(action.status or default_status, reply_class)
    # The reply code decides permanent or temporary; the status class must agree with it
    # (RFC 3463 §3.1: "the class ... must match the reply code").
    status = str(code)[0] + status[1:]
    text = f"<{name}>: {reply_class.value} rejected: {action.text or default_text}"
    return Reply(code, status, _clip(text))


def content_reply(action: Action) -> Reply | None:
    """The reply a header/body check REJECT gives (Postfix cleanup), or None otherwise.

    The text may start with an RFC 3463 code; 4.x.x makes it a temporary failure (451),
    and, as in Postfix, a 2.x.x code is turned into 4.x.x rather than accepted.
    """
    if action.kind is not ActionKind.REJECT:
        return None
    status = action.status or REJECT_STATUS
    if status[0] == "2":
        status = "4" + status[1:]
    code = CONTENT_DEFER_CODE if status[0] == "4" else CONTENT_REJECT_CODE
    return Reply(code, status, _clip(action.text or CONTENT_REJECTED_TEXT))
