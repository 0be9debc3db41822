"""rspamd, optionally: ask a running rspamd what to do with a message, and apply its answer.

rspamd's scanner speaks HTTP ("Rspamd protocol", rspamd.com/doc/developers/protocol.html):
the message is POSTed to ``/checkv2`` on the normal worker (port 11333 by default) with the
SMTP envelope in request headers — ``IP``, ``Helo``, ``Hostname`` (the client's verified
reverse name), ``From``, one ``Rcpt`` per recipient, ``Queue-Id``, ``User`` (the SASL
user), ``MTA-Name``, ``Settings-ID`` — and the reply is a JSON object: ``action`` (one of
"no action", "greylist", "add header", "rewrite subject", "soft reject", "reject"),
``score``, ``required_score``, ``symbols`` (name → {score, ...}), ``subject`` (the new
Subject for "rewrite subject"), ``messages.smtp_message`` (text for the SMTP reply),
``milter.add_headers`` / ``milter.remove_headers`` (header edits rspamd's milter_headers
module asks for) and ``is_skipped`` (rspamd stopped early; the action still stands).

Two halves, as everywhere in Mailkeep's policy:

* :class:`RspamdClient` does the I/O: one HTTP exchange per message, with one time limit
  for the whole of it, the body streamed from the spool file in chunks (memory stays
  bounded however large the message), the reply read up to :data:`MAX_REPLY_BYTES`.
  Messages above ``max_size`` are not sent (result "skipped"). It never raises for
  network, HTTP or JSON trouble: :attr:`RspamdResult.error` says what went wrong and the
  action is "no action", so that the configured ``on_error`` choice decides.
* :func:`rspamd_verdict` is pure: it turns a result into the SMTP reply (or none), the
  header fields to add, the fields to remove and the new Subject. See its docstring and
  docs/rspamd.md for what each action does.

Everything rspamd sends back is treated as untrusted input: header names must be RFC 5322
§3.6.8 field names, values lose control characters and are cut and folded (RFC 5322
§2.2.3), non-ASCII text becomes RFC 2047 encoded-words, and fields that carry the
message's identity, trace or authentication (From, Received, DKIM-Signature, ...) are
never added or removed on rspamd's say-so.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from multidict import CIMultiDict

from mailkeep.logfmt import log
from mailkeep.smtp.reply import Reply

__all__ = [
    "ACTION_ADD_HEADER",
    "ACTION_GREYLIST",
    "ACTION_NO_ACTION",
    "ACTION_REJECT",
    "ACTION_REWRITE_SUBJECT",
    "ACTION_SOFT_REJECT",
    "RESULT_HEADER",
    "SPAM_HEADER",
    "OnError",
    "RspamdClient",
    "RspamdResult",
    "RspamdVerdict",
    "rspamd_verdict",
]

_log = logging.getLogger(__name__)

#: Where Debian's rspamd normal worker listens (worker "normal" in /etc/rspamd/rspamd.conf).
DEFAULT_URL = "http://127.0.0.1:11333"
#: Seconds one check may take in all: connect, send, rspamd's scan, reply. rspamd's own
#: task_timeout is 8 s, so 20 s is only reached when rspamd is stuck or overloaded.
DEFAULT_TIMEOUT = 20.0
#: Messages larger than this (bytes) are not sent; rspamd's own limit is 50 MiB.
DEFAULT_MAX_SIZE = 20 * 1024 * 1024
#: Largest reply body read (bytes). A reply lists every symbol that fired, with options;
#: real ones are a few KB, 2 MiB is generous and still bounds memory.
MAX_REPLY_BYTES = 2 * 1024 * 1024
#: Bytes read from the reply per call, while counting towards MAX_REPLY_BYTES.
REPLY_READ_CHUNK = 64 * 1024
#: Symbols kept from one reply (rspamd's stock rules fire a few dozen at most).
MAX_SYMBOLS = 500
#: Longest symbol name kept (rspamd's are well under 64 characters).
MAX_SYMBOL_NAME = 128
#: Header edits taken from one reply's milter block (each of add and remove).
MAX_MILTER_HEADERS = 32
#: Longest header field name accepted from rspamd.
MAX_HEADER_NAME = 64
#: Longest header value accepted from rspamd (characters, after cleaning). With a name of
#: at most MAX_HEADER_NAME, even an unbreakable value fits RFC 5322 §2.1.1's 998 octets.
MAX_HEADER_VALUE = 900
#: Longest new Subject (characters).
MAX_SUBJECT = 900
#: Longest reply text taken from rspamd's smtp_message (RFC 5321 §4.5.3.1.5 bounds the
#: whole reply line at 512 octets).
MAX_REPLY_TEXT = 400
#: Longest value sent in one request header (HELO, addresses, user...).
MAX_REQUEST_FIELD = 998
#: Recipients sent at most (rspamd's max_recipients default is 1024).
MAX_RECIPIENTS = 1000
#: Longest error text kept in a result (characters).
MAX_ERROR_TEXT = 300
#: Lines of header fields we write are folded before this column (RFC 5322 §2.1.1).
FOLD_COLUMN = 78
#: Symbols listed in the result header at most; the rest are counted.
MAX_RESULT_SYMBOLS = 60
#: Longest result header value (characters); symbols beyond it are counted, not listed.
MAX_RESULT_HEADER = 2000

ACTION_NO_ACTION = "no action"
ACTION_GREYLIST = "greylist"
ACTION_ADD_HEADER = "add header"
ACTION_REWRITE_SUBJECT = "rewrite subject"
ACTION_SOFT_REJECT = "soft reject"
ACTION_REJECT = "reject"
#: rspamd's other built-in actions. Mailkeep never drops or holds mail on a filter's
#: word: both are treated as "add header" (the message is delivered, marked as spam).
ACTION_DISCARD = "discard"
ACTION_QUARANTINE = "quarantine"
_SPAM_ACTIONS = frozenset({ACTION_ADD_HEADER, ACTION_REWRITE_SUBJECT, ACTION_REJECT,
                           ACTION_DISCARD, ACTION_QUARANTINE})

#: The result header Mailkeep writes on every checked message (rspamd's own name for it).
RESULT_HEADER = "X-Spamd-Result"
#: Added with the value "Yes" when rspamd says the message is spam but may be delivered.
SPAM_HEADER = "X-Spam"
#: rspamd's default Subject template for "rewrite subject" (%s is the old subject).
DEFAULT_SUBJECT_TEMPLATE = "*** SPAM *** %s"

REJECT_TEXT = "Message rejected as spam"
SOFT_REJECT_TEXT = "Try again later"
GREYLIST_TEXT = "Greylisted, please try again later"
UNAVAILABLE_TEXT = "Spam filter unavailable, please try again later"

#: Fields rspamd may neither add nor remove: the message's identity and content
#: description (RFC 5322 §3.6, RFC 2045), its trace (RFC 5321 §4.4) and the
#: authentication Mailkeep records itself (RFC 6376, RFC 8617, RFC 8601), plus the two
#: fields Mailkeep writes from the result (they are removed from incoming mail always).
PROTECTED_HEADERS = frozenset({
    "date", "from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to",
    "references", "subject", "resent-date", "resent-from", "resent-sender", "resent-to",
    "resent-cc", "resent-bcc", "resent-message-id", "return-path", "received",
    "delivered-to", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition", "content-id", "content-description", "dkim-signature",
    "arc-seal", "arc-message-signature", "arc-authentication-results",
    "authentication-results", "received-spf", RESULT_HEADER.lower(), SPAM_HEADER.lower(),
})

OnError = Literal["tempfail", "accept"]

# RFC 5322 §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126.
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# Control characters (C0, DEL and C1) in text that goes into a header or a request field.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SYMBOL_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_WSP_RUN = re.compile(r"\s+")
# RFC 2047 §2: an encoded-word is at most 75 characters; "=?UTF-8?B?" and "?=" take 12,
# leaving 63 for base64, i.e. 45 octets of UTF-8 (a multiple of 3 pads nothing).
_ENCODED_WORD_OCTETS = 45


@dataclass(frozen=True)
class RspamdResult:
    """What rspamd said about one message (or why it could not say).

    ``add_headers`` are (name, value) pairs in rspamd's order, ``remove_headers`` names
    whose every occurrence rspamd wants gone; both already validated (see the module
    docstring). ``smtp_message`` is rspamd's text for the SMTP reply, if it gave one.
    ``error`` is set when rspamd could not be asked or its answer could not be read; the
    action is then "no action". ``skipped`` is set when the message was not sent because
    it is larger than ``max_size``: not an error, the message passes unscanned.
    """

    action: str
    score: float
    required_score: float
    symbols: dict[str, float]
    subject: str | None
    add_headers: list[tuple[str, str]]
    remove_headers: list[str]
    error: str | None
    smtp_message: str | None = None
    skipped: str | None = None

    @property
    def is_spam(self) -> bool:
        """rspamd's own "is spam" (True/False in its logs and result header)."""
        return self.error is None and self.skipped is None and self.action in _SPAM_ACTIONS


def _failed(error: str) -> RspamdResult:
    return RspamdResult(action=ACTION_NO_ACTION, score=0.0, required_score=0.0, symbols={},
                        subject=None, add_headers=[], remove_headers=[],
                        error=_clip(_clean_text(error), MAX_ERROR_TEXT))


def _skipped(reason: str) -> RspamdResult:
    return RspamdResult(action=ACTION_NO_ACTION, score=0.0, required_score=0.0, symbols={},
                        subject=None, add_headers=[], remove_headers=[], error=None,
                        skipped=reason)


class RspamdClient:
    """An rspamd normal worker (or proxy in self-scan mode) reached over HTTP.

    ``url`` is the worker's base URL (``http://host:port``, optionally with a path prefix
    to which ``/checkv2`` and ``/ping`` are appended); ``password`` is sent as the
    ``Password`` header (only the controller asks for one). A client holds no connection
    between checks, so one instance serves any number of concurrent checks and survives
    an rspamd restart.
    """

    def __init__(self, url: str = DEFAULT_URL, *, timeout: float = DEFAULT_TIMEOUT,
                 max_size: int = DEFAULT_MAX_SIZE, password: str | None = None) -> None:
        # A path is allowed (rspamd behind a reverse proxy); /checkv2 is appended to it.
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", url):
            raise ValueError(f"rspamd url must be http://host:port, not {url!r}")
        if not timeout > 0:
            raise ValueError(f"rspamd timeout must be positive, not {timeout!r}")
        if max_size < 0:
            raise ValueError(f"rspamd max_size must not be negative, not {max_size!r}")
        if password is not None and (_CONTROLS.search(password) or not password):
            raise ValueError("rspamd password must be one line of text")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.max_size = max_size
        self._password = password

    async def ping(self) -> bool:
        """True if the worker answers ``GET /ping`` with "pong" within the timeout."""
        try:
            async with (aiohttp.ClientSession(timeout=self._client_timeout()) as session,
                        session.get(self.url + "/ping") as response):
                body = await response.content.read(64)
                return response.status == 200 and body.strip() == b"pong"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False

    async def check(self, message: bytes | os.PathLike[str] | str, *, client_ip: str | None,
                    helo: str | None, mail_from: str, recipients: Sequence[str],
                    queue_id: str | None, hostname: str | None = None,
                    user: str | None = None, mta_name: str | None = None,
                    settings_id: str | None = None) -> RspamdResult:
        """Scan ``message`` (the bytes, or the path of the spool file holding them) and
        return rspamd's result; never raises for network, HTTP or reply problems (see
        RspamdResult).

        ``mail_from`` is the reverse-path without brackets ("" for the null sender),
        ``hostname`` the client's forward-confirmed reverse DNS name if it has one (rspamd
        counts a missing one against the sender), ``user`` the SASL user of an
        authenticated client, ``mta_name`` our own host name, ``settings_id`` selects a
        settings rule in rspamd's configuration.
        """
        started = time.monotonic()
        try:
            size = (len(message) if isinstance(message, bytes | bytearray | memoryview)
                    else os.stat(message).st_size)
        except (OSError, TypeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            return self._logged(_failed(f"cannot read the message: {reason}"),
                                queue_id, started)
        if size > self.max_size:
            return self._logged(_skipped(f"message of {size} bytes is larger than the "
                                         f"{self.max_size} bytes rspamd is given"),
                                queue_id, started)
        try:
            headers = self._request_headers(
                client_ip=client_ip, helo=helo, mail_from=mail_from, recipients=recipients,
                queue_id=queue_id, hostname=hostname, user=user, mta_name=mta_name,
                settings_id=settings_id)
            result = await self._exchange(message, headers)
        except TimeoutError:
            result = _failed(f"no answer within {self.timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            result = _failed(f"cannot connect: {exc.os_error.strerror or exc.os_error}")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            result = _failed(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug here must not fail the SMTP transaction
            log(_log, "spam check failed unexpectedly", logging.ERROR, queue_id=queue_id,
                error=repr(exc))
            result = _failed(f"internal error: {type(exc).__name__}")
        return self._logged(result, queue_id, started)

    def _client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout)

    def _request_headers(self, *, client_ip: str | None, helo: str | None, mail_from: str,
                         recipients: Sequence[str], queue_id: str | None,
                         hostname: str | None, user: str | None, mta_name: str | None,
                         settings_id: str | None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        if client_ip is not None:
            try:
                headers["IP"] = str(ipaddress.ip_address(client_ip.strip("[]")))
            except ValueError:
                pass  # not an address: rspamd is told nothing rather than nonsense
        # rspamd reads "<>" (and an empty value) as the null reverse-path of a bounce.
        optional = (("Helo", helo), ("Hostname", hostname), ("From", mail_from or "<>"),
                    ("Queue-Id", queue_id), ("User", user), ("MTA-Name", mta_name),
                    ("Settings-ID", settings_id), ("Password", self._password))
        for name, value in optional:
            clean = _request_value(value)
            if clean:
                headers[name] = clean
        for recipient in recipients[:MAX_RECIPIENTS]:
            clean = _request_value(recipient)
            if clean:
                headers.add("Rcpt", clean)
        return headers

    async def _exchange(self, message: bytes | os.PathLike[str] | str,
                        headers: CIMultiDict[str]) -> RspamdResult:
        async with aiohttp.ClientSession(timeout=self._client_timeout()) as session:
            if isinstance(message, bytes | bytearray | memoryview):
                return await self._post(session, message, headers)
            # aiohttp sends an open file as a Content-Length body, read in 64 KiB pieces
            # as the socket takes them: a large spool file is never in memory whole.
            with open(message, "rb") as body:
                return await self._post(session, body, headers)

    async def _post(self, session: aiohttp.ClientSession, body: Any,
                    headers: CIMultiDict[str]) -> RspamdResult:
        # A redirect is an error like any other unexpected status: re-sending the message
        # to wherever a Location points is not something a scanner should ask for.
        async with session.post(self.url + "/checkv2", data=body, headers=headers,
                                allow_redirects=False) as response:
            if response.content_length is not None and response.content_length > MAX_REPLY_BYTES:
                return _failed(f"reply of {response.content_length} bytes is larger than "
                               f"{MAX_REPLY_BYTES}")
            chunks: list[bytes] = []
            received = 0
            while True:
                chunk = await response.content.read(REPLY_READ_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > MAX_REPLY_BYTES:
                    return _failed(f"reply larger than {MAX_REPLY_BYTES} bytes")
                chunks.append(chunk)
            raw = b"".join(chunks)
            if response.status != 200:
                return _failed(f"HTTP {response.status}: {_error_text(raw)}")
            return parse_reply(raw)

    def _logged(self, result: RspamdResult, queue_id: str | None, started: float
                ) -> RspamdResult:
        elapsed_ms = round((time.monotonic() - started) * 1000)
        if result.error is not None:
            log(_log, "spam check failed", logging.WARNING, queue_id=queue_id,
                url=self.url, error=result.error, elapsed_ms=elapsed_ms)
        elif result.skipped is not None:
            log(_log, "spam check skipped", logging.INFO, queue_id=queue_id,
                reason=result.skipped)
        else:
            log(_log, "spam checked", logging.DEBUG, queue_id=queue_id,
                action=result.action, score=result.score,
                required_score=result.required_score, elapsed_ms=elapsed_ms)
        return result


# --- the reply -----------------------------------------------------------------------------

def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_reply(raw: bytes) -> RspamdResult:
    """Read a ``/checkv2`` reply body; anything malformed is an error result, never raised."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return _failed(f"reply is not JSON: {type(exc).__name__}")
    if not isinstance(data, dict):
        return _failed("reply is not a JSON object")
    if isinstance(data.get("error"), str):
        return _failed(f"rspamd error: {_clean_text(data['error'])}")
    # "is_skipped" only says rspamd stopped early (a pre-result such as GTUBE's reject or
    # an allow-list's accept); the action it reports still stands.
    action = data.get("action")
    if not isinstance(action, str) or not action.strip():
        return _failed("reply has no action")
    score = _number(data.get("score"))
    required = _number(data.get("required_score"))
    if score is None or required is None:
        return _failed("reply has no valid score or required_score")
    messages = data.get("messages")
    smtp_message = None
    if isinstance(messages, dict) and isinstance(messages.get("smtp_message"), str):
        smtp_message = _clip(_clean_text(messages["smtp_message"]), MAX_REPLY_TEXT) or None
    subject = data.get("subject")
    milter = data.get("milter")
    add_headers, remove_headers = _milter_edits(milter if isinstance(milter, dict) else {})
    return RspamdResult(
        action=_clean_text(action).lower()[:64], score=score, required_score=required,
        symbols=_symbols(data.get("symbols")),
        subject=_clip(_clean_text(subject), MAX_SUBJECT) if isinstance(subject, str) else None,
        add_headers=add_headers, remove_headers=remove_headers, error=None,
        smtp_message=smtp_message)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float: JSON allows any number of digits
        return None
    return number if math.isfinite(number) else None


def _symbols(value: object) -> dict[str, float]:
    """name → score from ``{"NAME": {"name": ..., "score": 1.5, ...}, ...}``."""
    symbols: dict[str, float] = {}
    if not isinstance(value, dict):
        return symbols
    for name, entry in value.items():
        if len(symbols) >= MAX_SYMBOLS:
            break
        clean = _SYMBOL_UNSAFE.sub("", str(name))[:MAX_SYMBOL_NAME]
        score = _number(entry.get("score")) if isinstance(entry, dict) else _number(entry)
        if clean and score is not None:
            symbols[clean] = score
    return symbols


def _milter_edits(milter: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """The header fields rspamd asks to add and remove, validated.

    ``add_headers`` maps a name to a value, to ``{"value": ..., "order": n}``, or to a list
    of those (several fields of one name); ``order`` (where milter would insert) is not
    used: Mailkeep puts every added field at the top. ``remove_headers`` maps a name to
    the occurrence to remove (0 = all); Mailkeep removes all occurrences.
    """
    added: list[tuple[str, str]] = []
    additions = milter.get("add_headers")
    if isinstance(additions, dict):
        for name, spec in additions.items():
            if not _editable(name):
                continue
            entries = spec if isinstance(spec, list) else [spec]
            for entry in entries:
                value = entry.get("value") if isinstance(entry, dict) else entry
                if isinstance(value, str) and len(added) < MAX_MILTER_HEADERS:
                    added.append((name, _clip(_clean_text(value), MAX_HEADER_VALUE)))
    removed: list[str] = []
    removals = milter.get("remove_headers")
    if isinstance(removals, dict):
        for name in removals:
            if _editable(name) and name.lower() not in {r.lower() for r in removed}:
                removed.append(name)
                if len(removed) >= MAX_MILTER_HEADERS:
                    break
    return added, removed


def _editable(name: object) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_HEADER_NAME
            and _FIELD_NAME.fullmatch(name) is not None
            and name.lower() not in PROTECTED_HEADERS)


def _clean_text(text: str) -> str:
    """One line of text: control characters become spaces, runs of white space one."""
    return _WSP_RUN.sub(" ", _CONTROLS.sub(" ", text)).strip()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _request_value(value: str | None) -> str:
    if value is None:
        return ""
    return _clip(_clean_text(value), MAX_REQUEST_FIELD)


def _error_text(raw: bytes) -> str:
    """rspamd's error text from a non-200 reply (``{"error": "..."}``), or an excerpt."""
    text = raw[:MAX_ERROR_TEXT * 2].decode("utf-8", "replace")
    try:
        data = json.loads(raw.decode("utf-8"))
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            text = data["error"]
    except (UnicodeDecodeError, ValueError, RecursionError):
        pass
    return _clip(_clean_text(text), MAX_ERROR_TEXT) or "(no text)"


# --- the verdict ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RspamdVerdict:
    """What the receiver does with a message, from rspamd's result.

    ``reply`` refuses the message (None: accept it). If accepted, the receiver first
    removes every field named in ``remove_headers`` (case-insensitive), then replaces the
    Subject field(s) with one whose value is ``subject`` if set, then puts the
    ``add_headers`` fields at the top of the header, in their order. Values are ready to
    write after ``"Name: "``: ASCII, cleaned, already folded (CRLF + white space) where
    long; :meth:`header_fields` and :meth:`subject_field` give the complete fields.
    ``reason`` is a short text for the log ("reject", "error: ...").
    """

    reply: Reply | None
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    subject: str | None = None
    action: str = ACTION_NO_ACTION
    reason: str = ""

    def header_fields(self) -> list[bytes]:
        """The fields to add, each complete and ending in CRLF."""
        return [f"{name}: {value}\r\n".encode("ascii") for name, value in self.add_headers]

    def subject_field(self) -> bytes | None:
        """The new Subject field, complete and ending in CRLF, or None."""
        if self.subject is None:
            return None
        return f"Subject: {self.subject}\r\n".encode("ascii")


def rspamd_verdict(result: RspamdResult, on_error: OnError, *,
                   original_subject: str | None = None) -> RspamdVerdict:
    """Turn rspamd's result into the reply, header edits and Subject for one message.

    * reject → 554 5.7.1 with rspamd's message (or "Message rejected as spam");
    * soft reject → 451 4.7.1 with rspamd's message (or "Try again later");
    * greylist → 451 4.7.1 "Greylisted, please try again later" (or rspamd's message);
    * rewrite subject → the Subject becomes rspamd's ``subject`` (or
      :data:`DEFAULT_SUBJECT_TEMPLATE` applied to ``original_subject``, the decoded
      current Subject, when rspamd sent none) and ``X-Spam: Yes`` is added;
    * add header (and rspamd's discard and quarantine) → ``X-Spam: Yes`` is added;
    * no action (and any action Mailkeep does not know) → nothing more.

    Every accepted message gets an ``X-Spamd-Result`` field with rspamd's verdict, score
    and symbols, the fields rspamd's milter block asks for, and loses any ``X-Spamd-Result``
    and ``X-Spam`` fields it arrived with (only ours can be trusted). If rspamd could not
    be asked, ``on_error`` decides: "tempfail" → 451 4.7.1; "accept" → accepted with
    ``X-Spamd-Result: unavailable (...)``. A message too large to send is accepted with
    ``X-Spamd-Result: skipped (...)``.
    """
    owned = (RESULT_HEADER, SPAM_HEADER)
    if result.error is not None:
        if on_error == "tempfail":
            return RspamdVerdict(reply=Reply(451, "4.7.1", UNAVAILABLE_TEXT),
                                 reason=f"error: {result.error}")
        return RspamdVerdict(
            reply=None, remove_headers=owned, reason=f"error: {result.error}",
            add_headers=(_header(RESULT_HEADER, f"unavailable ({result.error})"),))
    if result.skipped is not None:
        return RspamdVerdict(
            reply=None, remove_headers=owned, reason=f"skipped: {result.skipped}",
            add_headers=(_header(RESULT_HEADER, f"skipped ({result.skipped})"),))

    action = result.action
    message = result.smtp_message
    if action == ACTION_REJECT:
        return RspamdVerdict(reply=Reply(554, "5.7.1", message or REJECT_TEXT),
                             action=action, reason=action)
    if action == ACTION_SOFT_REJECT:
        return RspamdVerdict(reply=Reply(451, "4.7.1", message or SOFT_REJECT_TEXT),
                             action=action, reason=action)
    if action == ACTION_GREYLIST:
        return RspamdVerdict(reply=Reply(451, "4.7.1", message or GREYLIST_TEXT),
                             action=action, reason=action)

    added = [(RESULT_HEADER, _result_value(result))]
    subject = None
    if action in _SPAM_ACTIONS:
        added.append((SPAM_HEADER, "Yes"))
    if action == ACTION_REWRITE_SUBJECT:
        new_subject = result.subject
        if new_subject is None and original_subject is not None:
            new_subject = DEFAULT_SUBJECT_TEMPLATE.replace("%s", _clean_text(original_subject))
        if new_subject is not None:
            subject = _header("Subject", _clip(new_subject, MAX_SUBJECT))[1]
    added.extend(_header(name, value) for name, value in result.add_headers)
    removed = list(owned)
    removed.extend(name for name in result.remove_headers
                   if name.lower() not in {r.lower() for r in removed})
    return RspamdVerdict(reply=None, add_headers=tuple(added), remove_headers=tuple(removed),
                         subject=subject, action=action, reason=action)


def _result_value(result: RspamdResult) -> str:
    """``default: False [7.30 / 15.00]; SYM(1.00); ...`` as rspamd's milter_headers module
    writes X-Spamd-Result (without symbol options, which carry text from the message),
    most significant symbols first, bounded by MAX_RESULT_SYMBOLS and MAX_RESULT_HEADER."""
    head = (f"default: {'True' if result.is_spam else 'False'} "
            f"[{result.score:.2f} / {result.required_score:.2f}]")
    ordered = sorted(result.symbols.items(), key=lambda item: (-abs(item[1]), item[0]))
    pieces = [head]
    length = len(head)
    for index, (name, score) in enumerate(ordered):
        piece = f"{name}({score:.2f})"
        if index >= MAX_RESULT_SYMBOLS or length + len(piece) + 2 > MAX_RESULT_HEADER:
            pieces.append(f"MORE({len(ordered) - index})")
            break
        pieces.append(piece)
        length += len(piece) + 2
    # One symbol per line, the way rspamd folds it: easy to read in a mail client.
    return ";\r\n\t".join(pieces)


def _header(name: str, value: str) -> tuple[str, str]:
    """``(name, value)`` with the value cleaned, folded at white space (RFC 5322 §2.2.3)
    so that no line of the field is longer than FOLD_COLUMN where words allow, and
    non-ASCII text turned into RFC 2047 encoded-words."""
    value = _clean_text(value)
    words = value.split(" ") if value.isascii() else _encoded_words(value)
    lines: list[str] = []
    line = ""
    used = len(name) + 2  # "Name: " before the first word
    for word in words:
        if line and used + len(line) + 1 + len(word) > FOLD_COLUMN:
            # Folding puts CRLF before the single space between two words, so unfolding
            # (RFC 5322 §2.2.3: remove the CRLF) gives the value back unchanged.
            lines.append(line)
            line, used = " " + word, 0
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return name, "\r\n".join(lines)


def _encoded_words(text: str) -> list[str]:
    """``text`` as UTF-8 'B' encoded-words (RFC 2047 §4.1), each at most 75 characters and
    never splitting a character (§5: each word must decode on its own)."""
    words = []
    chunk = b""
    for char in text:
        encoded = char.encode("utf-8", "replace")
        if len(chunk) + len(encoded) > _ENCODED_WORD_OCTETS:
            words.append(chunk)
            chunk = b""
        chunk += encoded
    if chunk:
        words.append(chunk)
    return ["=?UTF-8?B?" + base64.b64encode(w).decode("ascii") + "?=" for w in words]
