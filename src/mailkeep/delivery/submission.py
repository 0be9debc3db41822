"""Message submission (RFC 6409): what an authenticated sender may send, and where it goes.

The path of a submitted message, in the order the submission listeners (587 STARTTLS,
465 implicit TLS, RFC 8314) and the local ``sendmail`` pickup call it:

1. ``mail_from``: the account's send mode (allow / hold / block, seed 002's "this account is
   not allowed to send"), the sender login map (an account sends only as its own addresses,
   its aliases and addresses granted in ``[submission] senders``; seed 004's
   reject_sender_login_mismatch), and the hourly message rate.
2. ``rcpt_to``: our domains resolve like inbound mail (unknown users refused now, not
   bounced later); other domains are accepted for relaying (the client authenticated),
   within the per-message recipient limit and the per-day new-recipient limit.
3. ``submit`` at end of data: fix-ups (Message-ID, Date, privacy headers; ``fixups``),
   the From: check, a Received line without the client's address, DKIM signatures for the
   From: domain (``mailkeep.dkim``), then local recipients go straight into the store
   through the inbound pipeline and the others into the durable outbound queue. The reply
   is positive only when both are on disk.

Rate limits live in memory (a restart forgets them); they contain a compromised account
for hours, not forever, which is their purpose.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailkeep.addressing import Resolver, split_subaddress
from mailkeep.config import Config
from mailkeep.config.names import lookup_address
from mailkeep.delivery.fixups import HeaderTooLarge, signing_domain, submitted_header
from mailkeep.delivery.pipeline import (
    AcceptedRecipient,
    Envelope,
    Pipeline,
    SessionInfo,
    combine_smtp_reply,
    rfc5322_date,
)
from mailkeep.dkim.keys import DkimKeyError
from mailkeep.dkim.sign import DkimSignError, sign_message
from mailkeep.logfmt import log
from mailkeep.smtp.address import Address
from mailkeep.smtp.reply import Reply

logger = logging.getLogger("mailkeep.submission")

AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
NULL_SENDER_REFUSED = Reply(553, "5.7.1", "Sender address <> is not allowed for submission")
RATE_LIMITED = Reply(450, "4.7.1", "Sending rate limit reached for this account; "
                     "try again later")
RECIPIENT_RATE_LIMITED = Reply(450, "4.7.1", "Too many new recipients today for this "
                               "account; try again later")
HEADER_TOO_LARGE = Reply(552, "5.3.4", "Message header too large")
QUEUE_FAILED = Reply(451, "4.3.0", "Temporary local problem, please try again later")
EIGHT_BIT_REFUSED = Reply(554, "5.6.1", "Message contains 8-bit data; declare BODY=8BITMIME")
DEFAULT_BLOCK_TEXT = "This account is not allowed to send mail"
#: Submitted messages up to this size are rewritten in memory, larger ones in a spool file.
MEMORY_REWRITE_LIMIT = 1 << 20
#: Seconds a domain's signing keys are reused before the key directory is looked at again:
#: a key created or rotated by ``mailkeep dkim`` signs mail submitted at most this much
#: later (an old selector stays published while queued mail names it). Looking every time
#: would cost a system call per message in the event loop.
DKIM_KEYS_RECHECK_SECONDS = 1.0
#: Domains whose signing keys are remembered (From: domains an account may use).
MAX_REMEMBERED_DKIM_DOMAINS = 1000


def remote_recipient(address: Address) -> AcceptedRecipient:
    """A recipient outside our domains: it goes to the queue (no local targets)."""
    return AcceptedRecipient(address, ())


class SenderPolicy:
    """The sender login map: which envelope and From: addresses each account may use."""

    def __init__(self, config: Config, resolver: Resolver) -> None:
        self._domains = config.domains
        self._own: dict[str, set[str]] = {}
        for account in config.accounts.values():
            self._own[account.address] = {account.address, *account.aliases}
        for address, owners in config.submission.senders.items():
            for owner in owners:
                self._own.setdefault(owner, set()).add(address)
        # An alias that delivers to exactly one account (postmaster@ -> me) is that
        # account's address too; a list alias or a catch-all is nobody's.
        for alias in config.aliases:
            resolution = resolver.resolve(alias)
            accounts = {t.account for t in resolution.targets}
            if resolution.kind == "deliver" and len(accounts) == 1:
                self._own.setdefault(accounts.pop(), set()).add(alias)

    def may_send_as(self, account: str, address: str) -> bool:
        own = self._own.get(account)
        parsed = lookup_address(address)
        if not own or parsed is None:
            return False
        local, domain, raw_local = parsed
        if f"{local}@{domain}" in own:
            return True
        settings = self._domains.get(domain)
        split = split_subaddress(raw_local, settings.subaddress_separator) if settings else None
        return split is not None and f"{split[0].lower()}@{domain}" in own

    def addresses(self, account: str) -> list[str]:
        return sorted(self._own.get(account, ()))


class RateLimiter:
    """Per-account rolling windows: messages per hour, distinct new recipients per day."""

    HOUR = 3600.0
    DAY = 86400.0

    def __init__(self) -> None:
        self._messages: dict[str, deque[float]] = {}
        self._recipients: dict[str, dict[str, float]] = {}

    def message_allowed(self, account: str, limit: int, now: float) -> bool:
        if limit <= 0:
            return True
        times = self._messages.setdefault(account, deque())
        while times and times[0] <= now - self.HOUR:
            times.popleft()
        return len(times) < limit

    def count_message(self, account: str, now: float) -> None:
        self._messages.setdefault(account, deque()).append(now)

    def recipient_allowed(self, account: str, recipient: str, limit: int, now: float) -> bool:
        if limit <= 0:
            return True
        seen = self._recipients.setdefault(account, {})
        if recipient in seen and seen[recipient] > now - self.DAY:
            return True
        if len(seen) >= limit:
            for name in [n for n, t in seen.items() if t <= now - self.DAY]:
                del seen[name]
        return len(seen) < limit

    def count_recipient(self, account: str, recipient: str, now: float) -> None:
        self._recipients.setdefault(account, {})[recipient] = now


@dataclass
class SubmitRequest:
    """One message handed to ``Submission.submit``."""

    session: SessionInfo
    #: The authenticated account; None for local submission (sendmail), which has no
    #: login map: the local user is named by ``local_user`` for logs.
    account: str | None
    envelope: Envelope
    source: bytes | Path
    size: int
    msg_id: str
    local_user: str | None = None
    #: Queue every recipient, ours too (the sendmail pickup: the queue then delivers local
    #: recipients and bounces what fails, as Postfix's pickup → qmgr path does).
    queue_local: bool = False


class Submission:
    """The submission service of one configuration snapshot (rebuilt on reload)."""

    def __init__(self, config: Config, pipeline: Pipeline, queue, *, spool_dir: Path,
                 dkim=None, rates: RateLimiter | None = None, wake=None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.queue = queue            # mailkeep.queue.store.QueueStore
        self.spool_dir = spool_dir
        self.dkim = dkim              # mailkeep.dkim.keys.DkimKeys or None
        self.rates = rates or RateLimiter()
        self.policy = SenderPolicy(config, pipeline.resolver)
        self._remove = frozenset(name.lower() for name in config.submission.remove_headers)
        self._wake = wake             # called with the entries just queued
        self._dkim_seen: dict[str, tuple[float, list]] = {}

    # -- MAIL FROM -----------------------------------------------------------------------

    def _limit(self, account: str, name: str) -> int:
        acct = self.config.accounts.get(account)
        own = getattr(acct, name, None) if acct is not None else None
        return own if own is not None else getattr(self.config.submission, name)

    def mail_from(self, account: str | None, sender: Address | None) -> Reply | None:
        """None when the transaction may start, else the refusal."""
        if account is None:
            return AUTH_REQUIRED
        acct = self.config.accounts.get(account)
        if acct is None:
            return Reply(554, "5.7.1", "This account no longer exists")
        if acct.send == "block":
            text = acct.send_message or DEFAULT_BLOCK_TEXT
            return Reply(554, "5.7.1", text)
        if sender is None:
            return NULL_SENDER_REFUSED
        if not self.policy.may_send_as(account, str(sender)):
            return Reply(553, "5.7.1", f"<{sender}>: Sender address rejected: not owned by "
                         f"user {account}")
        if not self.rates.message_allowed(account, self._limit(account, "max_messages_per_hour"),
                                          time.time()):
            log(logger, "rate limited", logging.WARNING, account=account, limit="messages")
            return RATE_LIMITED
        return None

    # -- RCPT TO -------------------------------------------------------------------------

    def rcpt_to(self, account: str | None, address: Address, size_hint: int | None,
                count: int) -> tuple[Reply, AcceptedRecipient | None]:
        """The reply for one recipient and, when positive, how to deliver it."""
        if count >= self.config.submission.max_recipients:
            return Reply(452, "4.5.3", "Too many recipients"), None
        domain = address.domain
        if self.pipeline.resolver.is_local_domain(domain):
            reply, targets = self.pipeline.recipient_decision(address, size_hint)
            if reply.code >= 300:
                return reply, None
            return reply, AcceptedRecipient(address, targets)
        if account is not None:
            limit = self._limit(account, "max_recipients_per_day")
            if not self.rates.recipient_allowed(account, str(address).lower(), limit,
                                                time.time()):
                log(logger, "rate limited", logging.WARNING, account=account,
                    limit="recipients")
                return RECIPIENT_RATE_LIMITED, None
        return Reply(250, "2.1.5", "OK"), remote_recipient(address)

    # -- end of data ---------------------------------------------------------------------

    def _received(self, request: SubmitRequest) -> bytes:
        """A trace field without the client's address or name (privacy, seeds 001/004)."""
        session = request.session
        protocol = "ESMTPSA" if session.tls else "ESMTPA"
        if request.account is None:
            protocol = "local"
        lines = [f"Received: by {self.config.hostname} (Mailkeep) with {protocol}"
                 f" id {request.msg_id};", "\t" + rfc5322_date()]
        return ("\r\n".join(lines) + "\r\n").encode()

    def _rewrite(self, header: bytes, source: bytes | Path, body_offset: int) -> bytes | Path:
        if isinstance(source, bytes):
            return header + source[body_offset:]
        fd, name = tempfile.mkstemp(prefix="sub-", dir=self.spool_dir)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                out.write(header)
                src.seek(body_offset)
                shutil.copyfileobj(src, out, 1 << 20)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def _signing_keys(self, domain: str) -> list:
        """``DkimKeys.signing_keys``, looked up again only every
        ``DKIM_KEYS_RECHECK_SECONDS``. Raises DkimKeyError."""
        now = time.monotonic()
        seen = self._dkim_seen.get(domain)
        if seen is not None and now - seen[0] < DKIM_KEYS_RECHECK_SECONDS:
            return seen[1]
        keys = self.dkim.signing_keys(domain)
        if len(self._dkim_seen) >= MAX_REMEMBERED_DKIM_DOMAINS:
            self._dkim_seen.clear()
        self._dkim_seen[domain] = (now, keys)
        return keys

    @staticmethod
    def _sign(header: bytes, content: bytes | Path, body_offset: int,
              keys: list) -> tuple[bytes, tuple[str, ...]]:
        signature = sign_message(header, content, body_offset, keys, domain=keys[0].domain)
        return signature, tuple(f"{key.domain}:{key.selector}" for key in keys)

    async def submit(self, request: SubmitRequest) -> Reply:
        """Deliver locally and queue the rest; the reply to the end of data."""
        envelope = request.envelope
        try:
            fixed = submitted_header(request.source, hostname=self.config.hostname,
                                     message_id_stem=f"{request.msg_id}.{os.getpid()}",
                                     remove=self._remove)
        except HeaderTooLarge:
            return HEADER_TOO_LARGE
        account = request.account
        if account is not None:
            if not fixed.from_addresses:
                return Reply(550, "5.6.0", "Message has no From: address")
            for address in fixed.from_addresses:
                if not self.policy.may_send_as(account, address):
                    log(logger, "sender refused", logging.WARNING, id=request.msg_id,
                        account=account, header_from=address)
                    return Reply(553, "5.7.1", f"<{address}>: From: address rejected: not "
                                 f"owned by user {account}")
        held = False
        if account is not None:
            acct = self.config.accounts.get(account)
            held = acct is not None and acct.send == "hold"
        if isinstance(request.source, Path):
            # A spooled (large) message is copied in a thread: the loop serves others.
            content = await asyncio.to_thread(self._rewrite, fixed.header, request.source,
                                              fixed.body_offset)
        else:
            content = self._rewrite(fixed.header, request.source, fixed.body_offset)
        try:
            header_len = len(fixed.header)
            domain = signing_domain(fixed)
            loop = asyncio.get_running_loop()
            try:
                signature, selectors = b"", ()
                keys = (self._signing_keys(domain) if self.dkim is not None
                        and domain is not None else [])
                if keys:
                    signature, selectors = await loop.run_in_executor(
                        None, self._sign, fixed.header, content, header_len, keys)
            except DkimKeyError as exc:
                # A damaged key file: the operator must fix it; the client retries.
                log(logger, "dkim keys unusable", logging.ERROR, id=request.msg_id,
                    domain=domain, error=str(exc))
                return Reply(451, "4.3.0", "Temporary local problem (signing keys), "
                             "please try again later")
            except DkimSignError as exc:
                log(logger, "cannot sign", logging.WARNING, id=request.msg_id, error=str(exc))
                return Reply(550, "5.6.0", f"Message cannot be signed: {exc}")
            prefix = self._received(request) + signature
            direct = not held and not request.queue_local
            local = [r for r in envelope.recipients if r.targets and direct]
            remote = [r for r in envelope.recipients if not r.targets or not direct]
            jobs = []
            if local:
                local_env = Envelope(sender=envelope.sender, recipients=local,
                                     smtputf8=envelope.smtputf8, body_type=envelope.body_type,
                                     envid=envelope.envid, ret=envelope.ret)
                jobs.append(self.pipeline.deliver(request.session, local_env, content,
                                                  request.size, request.msg_id,
                                                  received=prefix))
            if remote:
                jobs.append(self._enqueue(request, remote, prefix, content, selectors, held))
            # Only local or only remote recipients (the usual case): no task of its own.
            results = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)
        finally:
            if isinstance(content, Path):
                content.unlink(missing_ok=True)
        replies: list[Reply] = []
        for result in results:
            replies.extend(result)
        reply = combine_smtp_reply(replies)
        if reply.code < 300:
            if account is not None:
                now = time.time()
                self.rates.count_message(account, now)
                for rcpt in remote:
                    self.rates.count_recipient(account, str(rcpt.address).lower(), now)
            reply = Reply(250, "2.0.0", f"OK queued as {request.msg_id}")
        log(logger, "submitted", id=request.msg_id, account=account or "",
            user=request.local_user or "", from_=str(envelope.sender or ""),
            local=len(local), remote=len(remote), held=held, dkim=",".join(selectors),
            added=",".join(fixed.added), removed=",".join(fixed.removed), code=reply.code)
        return reply

    async def _enqueue(self, request: SubmitRequest, recipients: Sequence[AcceptedRecipient],
                       prefix: bytes, content: bytes | Path, selectors: tuple[str, ...],
                       held: bool) -> list[Reply]:
        from mailkeep.queue.store import NewMessage, QueuedRecipient

        envelope = request.envelope
        message = NewMessage(
            queue_id=request.msg_id, sender=str(envelope.sender or ""),
            recipients=[QueuedRecipient(str(r.address), orcpt=r.orcpt, notify=r.notify)
                        for r in recipients],
            prefix=prefix, source=content, envid=envelope.envid, ret=envelope.ret,
            smtputf8=envelope.smtputf8, body_type=envelope.body_type,
            requiretls=getattr(envelope, "requiretls", False), account=request.account,
            dkim_selectors=selectors, hold=held)
        try:
            queued = await self.queue.enqueue([message])
        except Exception as exc:
            log(logger, "queue failed", logging.ERROR, id=request.msg_id, error=str(exc))
            return [QUEUE_FAILED] * len(recipients)
        if self._wake is not None and not held:
            self._wake(queued)
        return [Reply(250, "2.0.0", "queued")] * len(recipients)
