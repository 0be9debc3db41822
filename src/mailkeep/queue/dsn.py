"""Delivery status notifications: bounces, delay warnings and success reports.

A DSN is a ``multipart/report; report-type=delivery-status`` message (RFC 6522) from
MAILER-DAEMON, sent with the null sender so that it can never cause another DSN
(RFC 5321 §4.5.5, RFC 3461 §6.2). Its three parts (RFC 3464 §2):

1. a human-readable explanation (what happened to which recipient, the last reply);
2. ``message/delivery-status`` with the per-message fields (Reporting-MTA,
   Original-Envelope-Id, Arrival-Date) and one block per recipient (Final-Recipient,
   Original-Recipient from ORCPT, Action, Status, Remote-MTA, Diagnostic-Code,
   Last-Attempt-Date, Will-Retry-Until);
3. the original: its header as ``text/rfc822-headers`` (RET=HDRS, or no RET), or the whole
   message as ``message/rfc822`` (RET=FULL, up to a size limit; headers only above it).

For a message sent with SMTPUTF8, parts 2 and 3 use the internationalized types of
RFC 6533 (``message/global-delivery-status``, ``message/global-headers``,
``message/global``) with UTF-8 addresses written as they are; otherwise a non-ASCII
address is written as ``utf-8`` address type in its ``\\x{HEX}`` form (RFC 6533 §3).

Who gets a DSN follows RFC 3461 §4.1 (NOTIFY) and §6.2: see ``should_notify``.

Everything here is pure except reading the original message file.
"""

from __future__ import annotations

import email.utils
import quopri
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from mailkeep.mime.header import collect_fields, decode_header_value, find_header_end
from mailkeep.queue.store import NewMessage, QueuedRecipient, QueueEntry, RecipientState

#: RET=FULL: originals up to this size (bytes) are returned whole; larger ones only with
#: their header (the sender has the message; a bounce should not double a big mailbox).
DEFAULT_MAX_ORIGINAL = 1 << 20
#: Most bytes of the original's header that are returned.
MAX_ORIGINAL_HEADER_BYTES = 256 * 1024
#: Longest reply or error text quoted per recipient (characters).
MAX_DIAGNOSTIC_CHARS = 1000
#: Longest line of a generated field before it is folded (RFC 5322 §2.1.1 "SHOULD 78").
FOLD_AT = 78

KINDS = ("failure", "delay", "success")
_ACTION = {"failure": "failed", "delay": "delayed", "success": "delivered"}
_SUBJECT = {
    "failure": "Undelivered Mail Returned to Sender",
    "delay": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}
# RFC 3463 §2: class.subject.detail, the class matching the reply code's first digit.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def should_notify(entry: QueueEntry, recipient: RecipientState, kind: str) -> bool:
    """Whether the sender gets a DSN of ``kind`` ("failure", "delay", "success") for
    ``recipient`` (RFC 3461 §4.1 and §6.2).

    Never for the null sender or for a DSN (a bounce is never bounced); NOTIFY=NEVER: never;
    a failure DSN unless NOTIFY was given without FAILURE; a delay warning unless NOTIFY
    was given without DELAY; a success DSN only when NOTIFY asked for SUCCESS.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown DSN kind {kind!r}")
    if entry.sender == "" or entry.kind != "normal":
        return False
    notify = recipient.notify
    if notify is not None and "NEVER" in notify:
        return False
    if kind == "failure":
        return notify is None or "FAILURE" in notify
    if kind == "delay":
        return notify is None or "DELAY" in notify
    return notify is not None and "SUCCESS" in notify


def status_code(recipient: RecipientState, action: str) -> str:
    """The RFC 3463 status for a recipient: the enhanced code the peer gave (when its class
    matches the reply code), else derived from the reply code (5.0.0, 4.0.0), else from the
    outcome when there was no reply at all (DNS or connection failures)."""
    text = _reply_text(recipient)
    match = _ENHANCED.match(text)
    code = recipient.last_code
    if match and (code is None or str(code)[0] == match.group(1)):
        return match.group(0)
    if code is not None and 200 <= code < 600:
        return f"{code // 100}.0.0"
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")


def build_bounce(entry: QueueEntry, failed: list[RecipientState], *, reporting_mta: str,
                 original: Path, kind: str = "failure", postmaster: str | None = None,
                 now: float | None = None, retry_until: float | None = None,
                 max_original: int = DEFAULT_MAX_ORIGINAL,
                 message_id: str | None = None) -> bytes:
    """The DSN of ``kind`` about ``failed`` (the recipients it reports on) of ``entry``,
    addressed to its sender, as CRLF bytes ready to queue with the null sender.

    ``original`` is the queued message file (its header or all of it is returned; if it is
    gone, the DSN has no third part). ``retry_until``: for delay warnings, when the queue
    gives up (Will-Retry-Until). ``postmaster``: an address named in the text for help.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown DSN kind {kind!r}")
    if not failed:
        raise ValueError("a DSN must report on at least one recipient")
    now = time.time() if now is None else now
    global_types = entry.smtputf8
    action = _ACTION[kind]
    header, whole = _read_original(original, entry, max_original)
    boundary = f"=_mailkeep-report-{secrets.token_hex(12)}"
    message_id = message_id or f"<{int(now)}.{secrets.token_hex(8)}@{reporting_mta}>"

    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{entry.sender}>",
        f"Subject: {_SUBJECT[kind]}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: {message_id}",
        # RFC 3834 §5: an automatic response; vacation responders must not answer it.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
    ]
    out = bytearray("\r\n".join(lines).encode("utf-8") + b"\r\n")

    # Part 1: for people (RFC 3464 §2: "human-readable explanation").
    text = _explanation(entry, failed, kind, reporting_mta, header, whole is not None,
                        postmaster, retry_until)
    out += f"--{boundary}\r\n".encode()
    out += _text_part(text)

    # Part 2: for programs (RFC 3464 §2.1-2.3).
    status_type = "message/global-delivery-status" if global_types else "message/delivery-status"
    fields = _per_message_fields(entry, reporting_mta)
    blocks = [fields]
    for rcpt in failed:
        blocks.append(_per_recipient_fields(rcpt, action, now, retry_until, global_types))
    report = "\r\n".join("\r\n".join(block) + "\r\n" for block in blocks).encode("utf-8")
    out += f"--{boundary}\r\n".encode()
    out += f"Content-Type: {status_type}\r\n".encode()
    out += f"Content-Transfer-Encoding: {'8bit' if not report.isascii() else '7bit'}\r\n\r\n".encode()
    out += report

    # Part 3: the original (RFC 3464 §2, RFC 6522 §3), if there is still one to show.
    if whole is not None:
        part_type = "message/global" if global_types else "message/rfc822"
        out += f"\r\n--{boundary}\r\n".encode()
        out += f"Content-Type: {part_type}\r\n".encode()
        out += f"Content-Transfer-Encoding: {_cte(whole)}\r\n\r\n".encode()
        out += whole if whole.endswith(b"\r\n") else whole + b"\r\n"
    elif header is not None:
        part_type = "message/global-headers" if global_types else "text/rfc822-headers"
        out += f"\r\n--{boundary}\r\n".encode()
        out += f"Content-Type: {part_type}\r\n".encode()
        out += f"Content-Transfer-Encoding: {_cte(header)}\r\n\r\n".encode()
        out += header
    out += f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)


def notice_message(entry: QueueEntry, dsn: bytes, kind: str,
                   new_id: Callable[[], str] | None = None) -> NewMessage:
    """Wrap DSN bytes into a message for the queue: null sender, to the original sender."""
    if new_id is None:
        from mailkeep.delivery.pipeline import new_message_id as new_id
    eight_bit = not dsn.isascii()
    return NewMessage(
        queue_id=new_id(), sender="", recipients=[QueuedRecipient(entry.sender)],
        prefix=b"", source=dsn,
        # Raw UTF-8 in the header (an internationalized sender or original) needs SMTPUTF8
        # on the way back (RFC 6533 §6); any other 8-bit content, 8BITMIME.
        smtputf8=entry.smtputf8 or not entry.sender.isascii(),
        body_type="8BITMIME" if eight_bit else None,
        kind="delay" if kind == "delay" else "bounce")


def notices_for_attempt(before: QueueEntry, after: QueueEntry, *, reporting_mta: str,
                        original: Path, postmaster: str | None = None,
                        now: float | None = None,
                        max_original: int = DEFAULT_MAX_ORIGINAL,
                        new_id: Callable[[], str] | None = None) -> list[NewMessage]:
    """The DSNs an attempt calls for: one failure DSN for the recipients it failed, one
    success DSN for those it delivered that asked for one (NOTIFY=SUCCESS). ``after`` is
    ``store.apply_outcomes(before, outcomes)``; pass the result to
    ``QueueStore.record_attempt(..., notices=...)`` so they are queued atomically."""
    was_pending = {id_: r.status == "pending" for id_, r in enumerate(before.recipients)}
    failed, delivered = [], []
    for index, rcpt in enumerate(after.recipients):
        if not was_pending.get(index):
            continue
        if rcpt.status == "failed" and should_notify(after, rcpt, "failure"):
            failed.append(rcpt)
        elif rcpt.status == "delivered" and should_notify(after, rcpt, "success"):
            delivered.append(rcpt)
    notices = []
    for kind, rcpts in (("failure", failed), ("success", delivered)):
        if rcpts:
            dsn = build_bounce(after, rcpts, reporting_mta=reporting_mta, original=original,
                               kind=kind, postmaster=postmaster, now=now,
                               max_original=max_original)
            notices.append(notice_message(after, dsn, kind, new_id))
    return notices


def delay_notice(entry: QueueEntry, *, reporting_mta: str, original: Path,
                 retry_until: float | None, postmaster: str | None = None,
                 now: float | None = None,
                 new_id: Callable[[], str] | None = None) -> NewMessage | None:
    """The delay warning for the still-pending recipients that want one, or None. Pass it
    to ``QueueStore.mark_warned(..., notices=[...])``."""
    waiting = [r for r in entry.pending() if should_notify(entry, r, "delay")]
    if not waiting:
        return None
    dsn = build_bounce(entry, waiting, reporting_mta=reporting_mta, original=original,
                       kind="delay", postmaster=postmaster, now=now, retry_until=retry_until,
                       max_original=0)  # RFC 3461 §4.3: a delay DSN returns the header only
    return notice_message(entry, dsn, "delay", new_id)


# -- the parts ---------------------------------------------------------------------------


def _read_original(path: Path, entry: QueueEntry,
                   max_original: int) -> tuple[bytes | None, bytes | None]:
    """(header block, whole message or None); (None, None) if the file is gone."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            # RFC 3461 §4.3: RET=FULL asks for the whole message, RET=HDRS (or nothing,
            # our choice) for the header. BINARYMIME content cannot travel inside a
            # multipart that a 7bit/8bit MTA must carry, so only its header comes back.
            if entry.ret == "FULL" and size <= max_original and entry.body_type != "BINARYMIME":
                whole = f.read(size)
                return _header_of(whole), whole
            head = f.read(MAX_ORIGINAL_HEADER_BYTES)
    except FileNotFoundError:
        return None, None
    return _header_of(head), None


def _header_of(data: bytes) -> bytes:
    fields_end, _, _ = find_header_end(data, 0, len(data), MAX_ORIGINAL_HEADER_BYTES)
    header = data[:fields_end]
    if header and not header.endswith(b"\n"):
        # Cut inside a line: keep whole lines only.
        cut = header.rfind(b"\n")
        header = header[:cut + 1] if cut >= 0 else b""
    return header


def _explanation(entry: QueueEntry, rcpts: list[RecipientState], kind: str,
                 reporting_mta: str, header: bytes | None, returned_whole: bool,
                 postmaster: str | None, retry_until: float | None) -> str:
    lines = [f"This is the mail system at {reporting_mta}.", ""]
    if kind == "failure":
        lines += ["Your message could not be delivered to the recipients below, and the",
                  "mail system has stopped trying. The reason is given for each of them."]
    elif kind == "delay":
        lines += ["Your message has not been delivered yet to the recipients below. This is",
                  "only a warning: the mail system keeps trying"
                  + (f" until {_date(retry_until)}." if retry_until else ".")
                  + " You do not need to",
                  "send the message again."]
    else:
        lines += ["Your message was delivered to the recipients below, as you asked to be",
                  "told."]
    lines.append("")
    for rcpt in rcpts:
        lines.append(f"<{rcpt.address}>:")
        reason = _reason(rcpt)
        if reason:
            lines.append(f"    {reason}")
    lines.append("")
    about = _summary(header) if header is not None else []
    lines.append("About your message:")
    lines.append(f"    Queue ID: {entry.queue_id}")
    lines.append(f"    Received by the mail system: {_date(entry.created)}")
    lines += [f"    {line}" for line in about]
    lines.append("")
    if header is None:
        lines.append("The message itself is no longer available.")
    elif returned_whole:
        lines.append("Your message is attached.")
    else:
        lines.append("The header of your message is attached.")
    if postmaster:
        lines.append(f"For help, write to <{postmaster}> and include this report.")
    return "\n".join(lines) + "\n"


def _reason(rcpt: RecipientState) -> str:
    text = _reply_text(rcpt)
    if rcpt.last_code is not None:
        said = f"{rcpt.last_code} {text}".strip()
        who = rcpt.remote_mta or "the remote server"
        return f"{who} said: {said}"
    return text


def _summary(header: bytes) -> list[str]:
    wanted = frozenset({b"subject", b"date", b"to", b"message-id"})
    values, _ = collect_fields(header, 0, len(header), wanted, 1000)
    out = []
    for name, label in ((b"subject", "Subject"), (b"date", "Date"), (b"to", "To"),
                        (b"message-id", "Message-ID")):
        if name in values:
            value = _CONTROL.sub(" ", decode_header_value(values[name]))
            out.append(f"{label}: {_clip(value, 200)}")
    return out


def _text_part(text: str) -> bytes:
    data = text.encode("utf-8")
    if data.isascii():
        head = "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit"
        body = data
    else:
        # Quoted-printable keeps the part 7-bit, so the DSN travels through any MTA.
        head = ("Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: quoted-printable")
        body = quopri.encodestring(data)
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return head.encode() + b"\r\nContent-Description: Notification\r\n\r\n" + body + b"\r\n"


def _per_message_fields(entry: QueueEntry, reporting_mta: str) -> list[str]:
    # RFC 3464 §2.2: Original-Envelope-Id, Reporting-MTA, Arrival-Date, then extensions.
    fields = []
    if entry.envid is not None:
        # RFC 3464 §2.2.1: the ENVID as given, xtext-decoded (RFC 3461 §4.4).
        fields.append(_field("Original-Envelope-Id", _printable(entry.envid)))
    fields.append(f"Reporting-MTA: dns; {reporting_mta}")
    fields.append(f"Arrival-Date: {_date(entry.created)}")
    # An extension field (RFC 3464 §2.4): which queue entry this is about.
    fields.append(f"X-Mailkeep-Queue-ID: {entry.queue_id}")
    return fields


def _per_recipient_fields(rcpt: RecipientState, action: str, now: float,
                          retry_until: float | None, global_types: bool) -> list[str]:
    fields = []
    if rcpt.orcpt is not None:
        # RFC 3464 §2.3.1: address-type and address exactly as ORCPT gave them.
        addr_type, address = rcpt.orcpt
        fields.append(_field("Original-Recipient",
                             f"{_address(addr_type, address, global_types)}"))
    fields.append(_field("Final-Recipient", _address("rfc822", rcpt.address, global_types)))
    fields.append(f"Action: {action}")
    fields.append(f"Status: {status_code(rcpt, action)}")
    if rcpt.remote_mta:
        fields.append(_field("Remote-MTA", f"dns; {_printable(rcpt.remote_mta)}"))
    if rcpt.last_code is not None:
        # RFC 3464 §2.3.6: the SMTP reply, code first.
        fields.append(_field("Diagnostic-Code",
                             f"smtp; {rcpt.last_code} {_printable(_reply_text(rcpt))}".rstrip()))
    elif rcpt.last_text:
        # No SMTP reply (DNS, connection, TLS failures): an extension diagnostic type.
        fields.append(_field("Diagnostic-Code",
                             f"X-Mailkeep; {_printable(_reply_text(rcpt))}"))
    if rcpt.attempts:
        fields.append(f"Last-Attempt-Date: {_date(now)}")
    if action == "delayed" and retry_until is not None:
        fields.append(f"Will-Retry-Until: {_date(retry_until)}")
    return fields


def _address(addr_type: str, address: str, global_types: bool) -> str:
    """An address-type ";" address pair (RFC 3464 §2.3.2); non-ASCII per RFC 6533 §3."""
    address = _CONTROL.sub("", address)
    addr_type = re.sub(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~-]", "", addr_type) or "unknown"
    if address.isascii():
        return f"{addr_type}; {address}"
    if global_types:
        return f"utf-8; {address}"  # utf-8-addr-unitext
    # utf-8-addr-xtext: non-ASCII, "\", "+" and "=" as \x{HEX}.
    escaped = "".join(c if c.isascii() and c not in "\\+=" and c.isprintable()
                      else f"\\x{{{ord(c):X}}}" for c in address)
    return f"utf-8; {escaped}"


def _reply_text(rcpt: RecipientState) -> str:
    """The reply text without a repeated reply code, on one line, bounded."""
    text = _CONTROL.sub(" ", rcpt.last_text or "").strip()
    if rcpt.last_code is not None:
        for sep in (" ", "-"):
            prefix = f"{rcpt.last_code}{sep}"
            if text.startswith(prefix):
                text = text[len(prefix):].lstrip()
    return _clip(text, MAX_DIAGNOSTIC_CHARS)


def _printable(text: str) -> str:
    return _CONTROL.sub(" ", text)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _field(name: str, value: str) -> str:
    """``name: value``, folded at spaces so lines stay near FOLD_AT (RFC 5322 §2.2.3)."""
    line = f"{name}: {value}"
    if len(line) <= FOLD_AT:
        return line
    out: list[str] = []
    current = ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > FOLD_AT:
            out.append(current)
            current = " " + word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\r\n".join(out)


def _cte(data: bytes) -> str:
    return "7bit" if data.isascii() else "8bit"


def _date(stamp: float) -> str:
    return email.utils.formatdate(stamp, localtime=True)
