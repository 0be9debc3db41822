"""SMTP replies: the value type, its wire form, and the catalogue of standard replies.

A reply is a three-digit code (RFC 5321 §4.2), an optional enhanced status code
(RFC 3463, announced with ENHANCEDSTATUSCODES per RFC 2034) and one or more lines of text.
Every reply the server sends is built here, so the wire format is produced in one place and
text that came from elsewhere (a policy message, an echoed argument) can never inject a
line break or a fake reply into the stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "Reply",
    "closing",
    "ehlo_reply",
    "greeting",
    "helo_reply",
]

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including the code and CRLF.
MAX_REPLY_LINE = 512

# RFC 3463 §2: class.subject.detail; class is 2, 4 or 5, subject and detail 1-3 digits.
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
# RFC 5321 §4.2: textstring = 1*(%d09 / %d32-126). Anything else a caller hands us (CR, LF,
# other controls, DEL) is replaced by a space so it can neither end nor forge a line.
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply, possibly multi-line.

    ``code`` is the basic reply code (200-599), ``enhanced`` the RFC 3463 status code without
    decoration ("2.1.5") or None for replies that must not carry one (the greeting, the EHLO
    and HELO responses, 354 and 334, per RFC 2034 §3), and ``text`` either one line or a tuple
    of lines.
    """

    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.code, int) or not 200 <= self.code <= 599:
            raise ValueError(f"reply code must be 200-599, not {self.code!r}")
        if self.enhanced is not None:
            if not _ENHANCED.match(self.enhanced):
                raise ValueError(f"malformed enhanced status code {self.enhanced!r}")
            # RFC 3463 §2: the class digit repeats the first digit of the basic code.
            if self.enhanced[0] != str(self.code)[0]:
                raise ValueError(
                    f"enhanced code {self.enhanced} does not match reply code {self.code}"
                )

    @property
    def lines(self) -> tuple[str, ...]:
        """The text as a tuple of lines (at least one, possibly empty)."""
        if isinstance(self.text, str):
            return (self.text,)
        return self.text or ("",)

    @property
    def is_positive(self) -> bool:
        """2yz (completion) or 3yz (intermediate), RFC 5321 §4.2.1."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        """4yz: the client may try again later (RFC 5321 §4.2.1)."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5yz: the client must not repeat the same request (RFC 5321 §4.2.1)."""
        return self.code >= 500

    def to_bytes(self) -> bytes:
        """The reply on the wire: see ``_wire``; computed once per reply object."""
        return self._wire

    @cached_property
    def _wire(self) -> bytes:
        """The reply on the wire: ``250-first\\r\\n250 last\\r\\n``.

        RFC 5321 §4.2.1: every line but the last has a hyphen after the code. RFC 2034 §3:
        the enhanced code is repeated at the start of every line. Unsafe characters become
        spaces and lines longer than RFC 5321 §4.5.3.1.5 allows are cut.
        """
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        lines = self.lines
        out = []
        last = len(lines) - 1
        for index, line in enumerate(lines):
            clean = _UNSAFE_TEXT.sub(" ", line)
            head = prefix if index == last else prefix[:3] + "-" + prefix[4:]
            encoded = (head + clean).encode("utf-8", "replace")
            if len(encoded) > MAX_REPLY_LINE - 2:
                encoded = encoded[: MAX_REPLY_LINE - 2].decode("utf-8", "ignore").encode()
            out.append(encoded + b"\r\n")
        return b"".join(out)

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace").rstrip("\r\n")

    def one_line(self) -> str:
        """The reply on one line, as mailq, logs and DSNs show it: "550 5.1.1 User unknown"."""
        return " ".join(part for part in (str(self.code), self.enhanced or "",
                                          " ".join(self.lines)) if part)


# --- factories ----------------------------------------------------------------------------

def greeting(hostname: str, text: str) -> Reply:
    """The 220 connection greeting (RFC 5321 §4.3.1); no enhanced code (RFC 2034 §3)."""
    return Reply(220, None, f"{hostname} {text}")


def helo_reply(hostname: str) -> Reply:
    """250 answer to HELO: just our name (RFC 5321 §4.1.1.1)."""
    return Reply(250, None, hostname)


def ehlo_reply(hostname: str, keywords: list[str] | tuple[str, ...]) -> Reply:
    """250 answer to EHLO/LHLO: our name, then one extension keyword per line (RFC 5321 §4.1.1.1)."""
    return Reply(250, None, (hostname, *keywords))


def closing(hostname: str | None = None) -> Reply:
    """221 answer to QUIT (RFC 5321 §4.1.1.10)."""
    return Reply(221, "2.0.0", f"{hostname} closing connection" if hostname else "Bye")


# --- catalogue ----------------------------------------------------------------------------
# Positive completions.
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "OK")
RESET_OK = Reply(250, "2.0.0", "Reset state")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(
    214,
    "2.0.0",
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
)
LMTP_HELP = Reply(
    214, "2.0.0", "Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
)
# RFC 5321 §3.5.3: 252 when the server will not say whether a user exists.
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
AUTH_SUCCEEDED = Reply(235, "2.7.0", "Authentication successful")   # RFC 4954 §6
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")           # RFC 3207 §4

# Positive intermediates: no enhanced code (RFC 2034 §3).
START_MAIL_INPUT = Reply(354, None, "End data with <CR><LF>.<CR><LF>")

# Transient failures.
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands, closing connection")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")   # RFC 5321 §4.5.3.1.10
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")      # RFC 3207 §4
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
STORAGE_FULL = Reply(452, "4.3.1", "Insufficient system storage")

# Permanent failures: syntax (RFC 5321 §4.2.2, RFC 3463 §3.6).
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BARE_NEWLINE_IN_COMMAND = Reply(500, "5.5.2", "Bare CR or LF in command; lines end with CRLF")
NUL_IN_COMMAND = Reply(500, "5.5.2", "NUL character in command")
NOT_UTF8_COMMAND = Reply(500, "5.5.2", "Command is not valid UTF-8")
NOT_SMTP = Reply(554, "5.5.1", "This is an SMTP server, not an HTTP proxy; goodbye")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
PARAM_NOT_RECOGNIZED = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameters not recognized or not implemented")

# Permanent failures: transaction and content.
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
# RFC 5321 §2.3.8 only CRLF ends a line; messages with bare CR or LF are refused outright
# rather than guessed at, which defeats SMTP smuggling (CVE-2023-51764 and relatives).
BARE_NEWLINE_IN_BODY = Reply(550, "5.6.11", "Message contains bare CR or LF; lines must end with CRLF")
DATA_LINE_TOO_LONG = Reply(554, "5.6.0", "Message contains a line that is too long")
NUL_IN_BODY = Reply(554, "5.6.0", "Message contains NUL characters")
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
UTF8_REQUIRED = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")   # RFC 6531 §3.5

# AUTH (RFC 4954 §4, §6).
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64 response")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
AUTH_ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
