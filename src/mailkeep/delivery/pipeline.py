"""Inbound delivery: decide each recipient, then store the message durably for each.

The order of work for one message, as the receivers call it:

1. ``recipient_decision`` at RCPT time: resolve the address (``addressing.Resolver``),
   refuse what is not ours (never an open relay), refuse a full mailbox early.
2. ``deliver`` at end of data: build the trace headers (Return-Path, Delivered-To,
   Received: RFC 5321 §4.4), group recipients by target mailbox (one copy per mailbox,
   like Postfix's duplicate filter), hand everything to the store in one batch, and return
   one reply per recipient. The store returns only when the messages are durable, so a
   positive reply is never sent for mail that a crash could lose.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.addressing import Resolver, Target
from mailkeep.logfmt import log
from mailkeep.smtp.address import Address
from mailkeep.smtp.reply import Reply
from mailkeep.store import DeliveryRequest

logger = logging.getLogger("mailkeep.delivery")

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


# Per-process random start and a counter: unique without a syscall per message (getrandom
# can cost over 100 µs on a busy VM).
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_message_id() -> str:
    """A short, unique, log-friendly id that follows a message through every log line.

    Eight characters of milliseconds (sortable by time), then six of a per-process counter
    that starts at a random value.
    """
    stamp = int(time.time() * 1000)
    n = next(_id_counter)
    out = []
    for _ in range(8):
        stamp, rem = divmod(stamp, 31)
        out.append(_ALPHABET[rem])
    out.reverse()
    for _ in range(6):
        n, rem = divmod(n, 31)
        out.append(_ALPHABET[rem])
    return "".join(out)


_date_cache: tuple[int, str] = (-1, "")


def rfc5322_date() -> str:
    """The current date for trace headers, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


@dataclass
class SessionInfo:
    """What the receiver knows about the client, for trace headers and logs."""

    client_ip: str
    client_port: int = 0
    helo: str = ""
    protocol: str = "ESMTP"          # RFC 3848 "with" keyword: ESMTP, ESMTPS, LMTP, ...
    tls: str | None = None           # "TLSv1.3 TLS_AES_256_GCM_SHA384 256"
    authenticated: str | None = None
    listener: str = "smtp"


@dataclass
class AcceptedRecipient:
    address: Address
    targets: tuple[Target, ...]
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None


@dataclass
class Envelope:
    sender: Address | None
    recipients: list[AcceptedRecipient] = field(default_factory=list)
    smtputf8: bool = False
    body_type: str | None = None
    envid: str | None = None
    ret: str | None = None
    requiretls: bool = False


RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
# A recipient that passed the quota check at RCPT time may exceed its quota by a share
# ([policy] quota_grace, default 10 %) at end of data: SMTP has a single reply for all
# recipients, and refusing one of them then would make the sender resend to all
# (duplicates). Dovecot's quota_grace does the same.
# Remember the size of a message an account refused for quota this long, so that the
# retry is refused at RCPT time for that account alone.
QUOTA_MEMORY_SECONDS = 3600.0
TEMP_FAILURE = Reply(451, "4.3.0", "Temporary local problem, please try again later")


class Pipeline:
    def __init__(self, config, store, resolver: Resolver | None = None):
        self.config = config
        self.store = store
        self.resolver = resolver or Resolver(config)
        self._quota_refusals: dict[str, tuple[int, float]] = {}

    # -- RCPT time ---------------------------------------------------------------------

    def recipient_decision(self, address: Address, size_hint: int | None = None
                           ) -> tuple[Reply, tuple[Target, ...]]:
        """Reply for one RCPT TO and, when positive, where the message will go."""
        res = self.resolver.resolve(str(address))
        shown = f"<{address}>"
        if res.kind == "foreign_domain":
            return RELAY_DENIED, ()
        if res.kind in ("unknown", "burned"):
            # Burned addresses get the same answer as unknown ones: disclose nothing.
            return Reply(550, "5.1.1", f"{shown}: Recipient address rejected: User unknown"), ()
        if res.kind == "remote_unsupported":
            return Reply(451, "4.3.0", f"{shown}: forwards to an address outside this server, "
                         "and forwarding is not enabled yet; try again later"), ()
        if res.kind != "deliver" or not res.targets:
            return Reply(550, "5.1.1", f"{shown}: Recipient address rejected: User unknown"), ()
        for target in res.targets:
            if self._over_quota(target.account, size_hint or 0):
                return Reply(552, "5.2.2", f"{shown}: Mailbox full"), ()
        return Reply(250, "2.1.5", "OK"), res.targets

    def _quota(self, account: str) -> tuple[int | None, int | None]:
        acct = self.config.accounts.get(account)
        if acct is None:
            return None, None
        return (acct.quota or None), (acct.quota_messages or None)

    def _over_quota(self, account: str, incoming: int) -> bool:
        qbytes, qmsgs = self._quota(account)
        if qbytes is None and qmsgs is None:
            return False
        refused = self._quota_refusals.get(account)
        if refused is not None:
            if time.monotonic() - refused[1] < QUOTA_MEMORY_SECONDS:
                incoming = max(incoming, refused[0])
            else:
                del self._quota_refusals[account]
        usage = self.store.usage(account)
        if qbytes is not None and usage.bytes + incoming > qbytes:
            return True
        return qmsgs is not None and usage.messages + 1 > qmsgs

    # -- end of data -------------------------------------------------------------------

    def received_header(self, session: SessionInfo, envelope: Envelope, msg_id: str,
                        for_address: Address | None) -> bytes:
        """RFC 5321 §4.4 trace field; TLS details as Postfix's smtpd_tls_received_header."""
        helo = _sanitize(session.helo) or "unknown"
        protocol = session.protocol
        if envelope.smtputf8 and protocol.startswith("ESMTP"):
            protocol = "UTF8SMTP" + protocol[5:]  # RFC 6531 §3.7.3 (UTF8SMTPS, UTF8SMTPA...)
        client = "localhost" if session.client_ip == "local" else f"[{session.client_ip}]"
        lines = [f"Received: from {helo} ({client})",
                 f"\tby {self.config.hostname} (Mailkeep) with {protocol} id {msg_id}"]
        if for_address is not None:
            lines[-1] += f"\r\n\tfor <{for_address}>"
        if session.tls:
            lines.append(f"\t(using {session.tls})")
        lines[-1] += ";"
        lines.append("\t" + rfc5322_date())
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    async def deliver(self, session: SessionInfo, envelope: Envelope, body: bytes | Path,
                      size: int, msg_id: str, *, received: bytes | None = None,
                      extra_headers: bytes = b"", folder: str | None = None) -> list[Reply]:
        """Store the message for every accepted recipient; one reply per recipient.

        ``received`` replaces the Received field built from the session (submission writes
        its own, without the client's address, followed by its DKIM signatures).
        ``extra_headers`` follow it (the inbound policy's Authentication-Results...);
        ``folder`` overrides every target's folder (the policy's "Junk").
        """
        # One copy per (account, folder), as Postfix's duplicate filter does.
        groups: dict[Target, list[int]] = {}
        for index, rcpt in enumerate(envelope.recipients):
            for target in rcpt.targets:
                if folder is not None:
                    target = Target(target.account, folder)
                groups.setdefault(target, []).append(index)
        return_path = f"Return-Path: <{envelope.sender or ''}>\r\n".encode()
        single = envelope.recipients[0].address if len(envelope.recipients) == 1 else None
        if received is None:
            received = self.received_header(session, envelope, msg_id, single)
        requests = []
        grace = self.config.policy.quota_grace
        for target in groups:
            qbytes, qmsgs = self._quota(target.account)
            if qbytes is not None:
                qbytes += int(qbytes * grace)
            if qmsgs is not None:
                qmsgs += max(1, int(qmsgs * grace)) if grace > 0 else 0
            prefix = (return_path + f"Delivered-To: {target.account}\r\n".encode() + received
                      + extra_headers)
            requests.append(DeliveryRequest(
                account=target.account, mailbox=target.folder, prefix=prefix, source=body,
                quota_bytes=qbytes, quota_messages=qmsgs))
        started = time.perf_counter()
        try:
            results = await self.store.deliver(requests)
        except Exception as exc:  # the store failed as a whole (disk full, I/O error)
            log(logger, "store failed", logging.ERROR, id=msg_id, error=repr(exc))
            return [TEMP_FAILURE] * len(envelope.recipients)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        replies: list[Reply | None] = [None] * len(envelope.recipients)
        for target, result in zip(groups, results, strict=True):
            if result.ok:
                reply = Reply(250, "2.0.0", f"OK id={msg_id}")
            elif result.error == "quota":
                reply = Reply(552, "5.2.2", "Mailbox full")
                self._quota_refusals[target.account] = (size, time.monotonic())
            else:
                reply = TEMP_FAILURE
            for index in groups[target]:
                # A recipient with several targets succeeds only if every copy was stored.
                prev = replies[index]
                if prev is None or prev.code < 300 <= reply.code:
                    replies[index] = reply
            log(logger, "stored" if result.ok else "store refused",
                logging.DEBUG if result.ok else logging.WARNING, id=msg_id,
                account=target.account, mailbox=result.mailbox, uid=result.uid,
                error=result.error, ms=elapsed_ms)
        return [r or TEMP_FAILURE for r in replies]


def combine_smtp_reply(replies: Sequence[Reply]) -> Reply:
    """SMTP has one reply after DATA for all recipients (unlike LMTP).

    All stored → 250. All refused permanently → the first refusal. Any temporary failure,
    or a mix, → 451 for the whole message: the client retries, and a recipient that was
    stored may get a second copy. Delivering twice beats losing once. (A recipient refused
    for quota is refused at RCPT time on the retry, so the retry converges.)
    """
    if all(r.code < 300 for r in replies):
        return replies[0]
    if all(r.code >= 500 for r in replies):
        return replies[0]
    return Reply(451, "4.3.0", "Not all recipients could be stored; please try again later")


def _sanitize(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in "()\\")[:255]
