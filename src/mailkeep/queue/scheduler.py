"""The queue manager: takes due mail from the durable queue and delivers it.

What happens to a queued message, top-down:

1. ``run`` wakes when mail is queued (``wake``), when the CLI asks (SIGUSR1 → ``wake``),
   or when the next retry is due, and starts an attempt for every due message not already
   in flight (``QueueStore.due``).
2. ``_attempt`` groups the pending recipients by route (``Router``): our own domains go
   into the store through the inbound pipeline; a domain with a transport entry, or every
   domain when a relayhost is set, goes to that relay; the rest directly to the domain's
   MX hosts (RFC 5321 §5).
3. ``_deliver_remote`` finds the hosts (MX, or the relay), decides the TLS each needs
   (DANE from DNSSEC-validated TLSA records, RFC 7672; MTA-STS, RFC 8461; otherwise
   opportunistic STARTTLS), and sends over a pooled SMTP connection (``ConnectionPool``).
   Each recipient gets its own outcome: delivered, failed (5xx) or deferred (4xx, timeouts,
   DNS trouble, TLS that policy requires and the peer does not provide).
4. ``QueueStore.record_attempt`` writes the outcomes in one transaction; deferred
   recipients get the next retry time (exponential backoff between minimal and maximal
   backoff time), and recipients still deferred after the queue lifetime fail.
5. Failed recipients get one DSN (RFC 3464) to the sender, from the null sender; mail with
   the null sender never gets one (never bounce a bounce). Optional delay warnings.

At-least-once: the outcome is recorded after the peer's reply, so a crash in between
means the message is sent again after restart; it is never lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailkeep.config import Config
from mailkeep.delivery.pipeline import (
    AcceptedRecipient,
    Envelope,
    Pipeline,
    SessionInfo,
    new_message_id,
)
from mailkeep.logfmt import log
from mailkeep.queue import dsn
from mailkeep.queue.store import QueueEntry, RecipientOutcome, apply_outcomes
from mailkeep.smtp.address import AddressError, parse_address

logger = logging.getLogger("mailkeep.queue")

# Seconds an idle outbound connection is kept for the next message to the same host
# (Postfix smtp_connection_cache_time_limit is 2 s).
IDLE_CONNECTION_SECONDS = 5.0
# Messages taken from the queue per scan beyond those already in flight.
SCAN_BATCH = 500
# Queue ids of ended attempts remembered (see Scheduler.notify_new).
RECENTLY_FINISHED = 10_000


@dataclass(frozen=True)
class Route:
    kind: str              # "local" | "relay" | "direct"
    key: str               # concurrency key: the domain, or "relay:NAME"
    relay: Any = None      # mailkeep.config.schema.Relay for kind "relay"


class Router:
    """Where mail for a domain goes (Postfix's transport map and relayhost)."""

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        self.delivery = config.delivery
        self.resolver = pipeline.resolver

    def route(self, domain: str) -> Route:
        domain = domain.lower()
        if self.resolver.is_local_domain(domain):
            return Route("local", "local")
        transport = self.delivery.transport
        target = transport.get(domain)
        if target is None:
            parts = domain.split(".")
            for i in range(1, len(parts)):
                target = transport.get("." + ".".join(parts[i:]))
                if target is not None:
                    break
        if target is None:
            target = self.delivery.relayhost or "direct"
        if target == "direct":
            return Route("direct", domain)
        return Route("relay", f"relay:{target}", self.delivery.relays[target])


def _may_need_notice(entry: Any, outcomes: list) -> bool:
    """Whether an attempt can call for a DSN at all: a failure, or a delivery to a
    recipient who asked for success notices (NOTIFY=SUCCESS)."""
    if not entry.sender or entry.kind != "normal":
        return False
    if any(o.status == "failed" for o in outcomes):
        return True
    asked = {r.address for r in entry.recipients if r.notify and "SUCCESS" in r.notify}
    return any(o.status == "delivered" and o.address in asked for o in outcomes)


def backoff(attempts: int, minimal: float, maximal: float) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones (Postfix doubles)."""
    return min(maximal, minimal * (2 ** max(0, attempts - 1)))


class TlsResults:
    """Per-destination TLS outcomes, one JSON line each, for TLS reporting (RFC 8460)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def record(self, domain: str, mx: str, policy: str, result: str, detail: str = "") -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        line = json.dumps({"time": int(time.time()), "domain": domain, "mx": mx,
                           "policy": policy, "result": result, "detail": detail})
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / f"{day}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError as exc:
            log(logger, "tls result not recorded", logging.WARNING, error=str(exc))


class ConnectionPool:
    """Idle SMTP client sessions kept for reuse, keyed by peer and TLS settings."""

    def __init__(self) -> None:
        self._idle: dict[tuple, list[tuple[Any, asyncio.TimerHandle]]] = {}

    def take(self, key: tuple) -> Any | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        session, timer = idle.pop()
        timer.cancel()
        return session

    def give(self, key: tuple, session: Any) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(IDLE_CONNECTION_SECONDS, self._expire, key, session)
        self._idle.setdefault(key, []).append((session, timer))

    def _expire(self, key: tuple, session: Any) -> None:
        idle = self._idle.get(key, [])
        for i, (s, _) in enumerate(idle):
            if s is session:
                del idle[i]
                break
        asyncio.get_running_loop().create_task(_quit(session))

    async def close(self) -> None:
        sessions = [s for idle in self._idle.values() for s, _ in idle]
        for idle in self._idle.values():
            for _, timer in idle:
                timer.cancel()
        self._idle.clear()
        await asyncio.gather(*(_quit(s) for s in sessions), return_exceptions=True)


async def deliver_local(pipeline: Pipeline, message: Path, entry: Any,
                        rcpts: list) -> list[RecipientOutcome]:
    """Store a queued message for recipients in our own domains, through the same pipeline
    as inbound mail (addressing, quota, Sieve); one outcome per recipient."""
    accepted: list[AcceptedRecipient] = []
    outcomes: list[RecipientOutcome] = []
    for rcpt in rcpts:
        try:
            address = parse_address(rcpt.address)
        except AddressError as exc:
            outcomes.append(RecipientOutcome(rcpt.address, "failed", 553, str(exc)))
            continue
        reply, targets = pipeline.recipient_decision(address, entry.size)
        if reply.code >= 300:
            status = "failed" if reply.code >= 500 else "deferred"
            outcomes.append(RecipientOutcome(rcpt.address, status, reply.code,
                                             reply.one_line()))
            continue
        accepted.append(AcceptedRecipient(address, targets))
    if accepted:
        sender = None
        if entry.sender:
            with contextlib.suppress(AddressError):
                sender = parse_address(entry.sender)
        envelope = Envelope(sender=sender, recipients=accepted, smtputf8=entry.smtputf8)
        session = SessionInfo(client_ip="local", protocol="local", listener="queue")
        replies = await pipeline.deliver(session, envelope, message, entry.size,
                                         entry.queue_id, received=b"")
        for rcpt, reply in zip(accepted, replies, strict=True):
            status = ("delivered" if reply.code < 300 else
                      "failed" if reply.code >= 500 else "deferred")
            outcomes.append(RecipientOutcome(str(rcpt.address), status, reply.code,
                                             reply.one_line()))
    return outcomes


async def _quit(session: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(session.quit(), 5)
    with contextlib.suppress(Exception):
        session.close()


#: How the delivery process stores mail for local recipients: it asks the server, which
#: owns the store (mailkeep.queue.agent). Takes the entry and its local recipients.
LocalDelivery = Callable[[Any, list], Awaitable[list[RecipientOutcome]]]


class Scheduler:
    """Delivers queued mail; one per server, in its delivery process (mailkeep.queue.agent).

    ``local``: how recipients in our own domains are stored; by default through
    ``pipeline`` in this process (``deliver_local``)."""

    def __init__(self, config: Config, queue: Any, pipeline: Pipeline, *,
                 data_dir: Path, clock: Callable[[], float] = time.time,
                 metrics: Any = None, local: LocalDelivery | None = None) -> None:
        self.queue = queue
        self.local = local
        self.clock = clock
        #: Outcomes and delivery latency are counted here (mailkeep.metrics.ServerMetrics).
        self.metrics = metrics
        self.data_dir = data_dir
        self._event = asyncio.Event()
        self._active: set[str] = set()
        # Ids whose attempt ended lately: a notice of new mail that arrives after its
        # attempt already ended (a rescan found the mail first) is stale, not new mail.
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._backlog = False      # due mail was left for lack of room: rescan when a slot frees
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._pool = ConnectionPool()
        self._dest_limits: dict[str, asyncio.Semaphore] = {}
        self.tls_results = TlsResults(data_dir / "tls-results")
        self._dns: Any = None
        self._sts: Any = None
        self.update(config, pipeline)

    # -- configuration ---------------------------------------------------------------------

    def update(self, config: Config, pipeline: Pipeline) -> None:
        """A reloaded configuration applies to the next attempt."""
        self.config = config
        self.pipeline = pipeline
        self.router = Router(config, pipeline)
        self._relay_plans: dict[str, list[dict]] = {}
        self._global = asyncio.Semaphore(config.queue.max_concurrency)
        self._dest_limits.clear()
        self._dns = None
        if self._sts is not None:   # its HTTP session belongs to the old settings
            asyncio.get_running_loop().create_task(self._sts.aclose())
        self._sts = None

    def _resolver(self):
        if self._dns is None:
            from mailkeep.outbound.dns import make_resolver

            self._dns = make_resolver(list(self.config.delivery.resolvers) or None)
        return self._dns

    def _mta_sts(self):
        if self._sts is None and self.config.delivery.mta_sts:
            from mailkeep.outbound.mta_sts import MtaStsResolver

            ca = self.config.delivery.ca_file
            self._sts = MtaStsResolver(self._resolver(), self.data_dir / "mta-sts",
                                       https_port=self.config.delivery.mta_sts_port,
                                       ca_file=str(ca) if ca else None)
        return self._sts

    # -- the loop --------------------------------------------------------------------------

    def wake(self) -> None:
        """Scan the queue soon (the CLI changed it, a DSN was queued)."""
        self._event.set()

    def notify_new(self, entries: list[QueueEntry]) -> None:
        """Mail was just queued (``QueueStore.enqueue`` returned these entries): start on
        it at once, without reading the queue again (a scan reads every due entry, those
        in flight too; per message that would cost more the busier the queue is)."""
        for entry in entries:
            if (entry.queue_id in self._active or entry.queue_id in self._finished
                    or self._stopping):
                continue
            if len(self._active) >= self._max_active():
                self._backlog = True
                self._event.set()
                return
            if not entry.hold and entry.next_attempt <= self.clock():
                self._start(entry)

    def _max_active(self) -> int:
        return self.config.queue.max_concurrency * 4

    async def run(self) -> None:
        while not self._stopping:
            self._event.clear()
            try:
                self._start_due()
            except Exception:
                logger.exception("queue scan failed")
            timeout = self.config.queue.queue_run_delay
            upcoming = self.queue.next_due_time()
            if upcoming is not None:
                wait = upcoming - self.clock()
                if wait > 0:
                    timeout = min(timeout, wait)
                elif len(self._active) < self.queue.count():
                    timeout = min(timeout, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), max(0.05, timeout))

    def _start_due(self) -> None:
        self._backlog = False
        room = self._max_active() - len(self._active)
        if room <= 0:
            self._backlog = True
            return
        batch = min(room, SCAN_BATCH)
        entries = self.queue.due(self.clock(), len(self._active) + batch)
        started = 0
        for entry in entries:
            if entry.queue_id in self._active:
                continue
            if started >= room:
                self._backlog = True
                break
            self._start(entry)
            started += 1
        else:
            # A full batch may hide more due mail behind it: look again when there is room.
            self._backlog = len(entries) >= len(self._active) + batch

    def _start(self, entry: Any) -> None:
        self._active.add(entry.queue_id)
        task = asyncio.get_running_loop().create_task(self._attempt(entry))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if self._backlog:
            self._event.set()

    async def stop(self) -> None:
        """Stop starting attempts; let those in flight finish (bounded), close connections."""
        self._stopping = True
        self._event.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)
        for task in list(self._tasks):
            task.cancel()
        await self._pool.close()
        if self._sts is not None:
            with contextlib.suppress(Exception):
                await self._sts.aclose()

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(self, entry: Any) -> None:
        try:
            groups: dict[Route, list] = {}
            for rcpt in entry.pending():
                domain = rcpt.address.rpartition("@")[2]
                groups.setdefault(self.router.route(domain), []).append(rcpt)
            jobs = []
            for route, rcpts in groups.items():
                if route.kind == "local":
                    jobs.append(self._deliver_local(entry, rcpts))
                else:
                    jobs.append(self._deliver_remote(entry, route, rcpts))
            outcomes: list = []
            # One destination (the usual case) needs no task of its own.
            results = ([await _result_or_error(jobs[0])] if len(jobs) == 1
                       else await asyncio.gather(*jobs, return_exceptions=True))
            for result in results:
                if isinstance(result, BaseException):
                    logger.error("delivery attempt failed", exc_info=result,
                                 extra={"id": entry.queue_id})
                    continue
                outcomes.extend(result)
            done = {o.address for o in outcomes}
            for rcpt in entry.pending():
                if rcpt.address not in done:
                    outcomes.append(RecipientOutcome(rcpt.address, "deferred", None,
                                                     "internal error during delivery"))
            await self._record(entry, outcomes)
        except Exception:
            logger.exception("queue attempt failed", extra={"id": entry.queue_id})
        finally:
            self._active.discard(entry.queue_id)
            finished = self._finished
            finished[entry.queue_id] = None
            if len(finished) > RECENTLY_FINISHED:
                finished.popitem(last=False)

    async def _record(self, entry: Any, outcomes: list) -> None:
        now = self.clock()
        qcfg = self.config.queue
        lifetime = qcfg.bounce_queue_lifetime if not entry.sender else qcfg.maximal_queue_lifetime
        expired = now - entry.created >= lifetime
        final: list = []
        if self.metrics is not None:
            self._count(outcomes, expired, now - entry.created)
        for outcome in outcomes:
            if outcome.status == "deferred" and expired:
                outcome = RecipientOutcome(outcome.address, "failed", outcome.code,
                                           f"{outcome.text} (gave up after "
                                           f"{round(lifetime / 86400, 1)} days)",
                                           remote_mta=outcome.remote_mta)
            final.append(outcome)
        deferred = any(o.status == "deferred" for o in final)
        next_attempt = now + jitter(backoff(entry.attempts + 1, qcfg.minimal_backoff_time,
                                            qcfg.maximal_backoff_time)) if deferred else None
        errors = [o.text for o in final if o.status == "deferred"]
        for outcome in final:
            log(logger, "delivery", id=entry.queue_id, to=outcome.address,
                status=outcome.status, code=outcome.code or "", reason=outcome.text,
                attempt=entry.attempts + 1)
        # The DSNs this attempt calls for are built now, while the message file still
        # exists, and queued in the same transaction as the outcomes: a crash can neither
        # lose a bounce nor send it twice.
        notices = []
        if _may_need_notice(entry, final):
            notices = await asyncio.to_thread(
                dsn.notices_for_attempt, entry, apply_outcomes(entry, final),
                reporting_mta=self.config.hostname,
                original=self.queue.message_path(entry.queue_id),
                postmaster=self.config.postmaster, now=now,
                max_original=qcfg.max_bounce_size, new_id=new_message_id)
        updated = await self.queue.record_attempt(entry.queue_id, final, next_attempt,
                                                  errors[0] if errors else None,
                                                  notices=notices)
        if notices:
            log(logger, "dsn queued", id=entry.queue_id, to=entry.sender,
                dsn_ids=",".join(n.queue_id for n in notices))
            self.wake()
        if (updated is not None and deferred and qcfg.delay_warning_time
                and not entry.warned and now - entry.created >= qcfg.delay_warning_time):
            warning = await asyncio.to_thread(
                dsn.delay_notice, updated, reporting_mta=self.config.hostname,
                original=self.queue.message_path(entry.queue_id),
                retry_until=entry.created + lifetime,
                postmaster=self.config.postmaster, now=now, new_id=new_message_id)
            await self.queue.mark_warned(entry.queue_id,
                                         notices=[warning] if warning else [])
            if warning is not None:
                self.wake()

    def _count(self, outcomes: list, expired: bool, age: float) -> None:
        """One count per recipient and attempt; the latency of those delivered."""
        for outcome in outcomes:
            status = outcome.status
            if status == "delivered":
                self.metrics.outbound_outcome("delivered")
                self.metrics.delivered_after(age)
            elif status == "failed":
                self.metrics.outbound_outcome("bounced")
            else:
                self.metrics.outbound_outcome("expired" if expired else "deferred")

    # -- local recipients ------------------------------------------------------------------

    async def _deliver_local(self, entry: Any, rcpts: list) -> list:
        if self.local is not None:  # the delivery process asks the server (queue.agent)
            return await self.local(entry, rcpts)
        return await deliver_local(self.pipeline, self.queue.message_path(entry.queue_id),
                                   entry, rcpts)

    # -- remote recipients -----------------------------------------------------------------

    def _limit(self, key: str) -> asyncio.Semaphore:
        sem = self._dest_limits.get(key)
        if sem is None:
            sem = self._dest_limits[key] = asyncio.Semaphore(
                self.config.queue.destination_concurrency_limit)
        return sem

    async def _deliver_remote(self, entry: Any, route: Route, rcpts: list) -> list:
        async with self._limit(route.key), self._global:
            try:
                plans = await self._plan(route)
            except _Permanent as exc:
                return [RecipientOutcome(r.address, "failed", exc.code, exc.text) for r in rcpts]
            except _Temporary as exc:
                return [RecipientOutcome(r.address, "deferred", exc.code, exc.text)
                        for r in rcpts]
            return await self._send_plans(entry, route, plans, rcpts)

    async def _plan(self, route: Route) -> list[dict]:
        """The hosts to try, in order, each with the TLS it must achieve."""
        from mailkeep.outbound.client import Credentials, TlsRequirement

        delivery = self.config.delivery
        ca = str(delivery.ca_file) if delivery.ca_file else None
        if route.kind == "relay":
            cached = self._relay_plans.get(route.key)
            if cached is not None:
                return cached
            relay = route.relay
            creds = None
            if relay.username and relay.password_file:
                try:
                    password = relay.password_file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise _Temporary(None, f"cannot read the relay password: {exc}") from exc
                creds = Credentials(relay.username, password)
            level = {"verify": "verify", "encrypt": "encrypt", "implicit": "verify",
                     "may": "may"}[relay.tls]
            tls = TlsRequirement(level=level, verify_names=(relay.host,), ca_file=ca,
                                 implicit=relay.tls == "implicit")
            if not relay.mx_lookup:
                plans = [{"host": relay.host, "port": relay.port, "address": None,
                          "tls": tls, "credentials": creds, "policy": "relay"}]
                if creds is None:
                    # Nothing to read again (a password file may change): the same hosts
                    # until the configuration does.
                    self._relay_plans[route.key] = plans
                return plans
            mx = await self._mx(relay.host)
            return [{"host": h.name, "port": relay.port, "address": a, "tls": tls,
                     "credentials": creds, "policy": "relay"}
                    for h in mx.hosts for a in h.addresses]
        domain = route.key
        mx = await self._mx(domain)
        if mx.null_mx:
            raise _Permanent(556, f"556 5.1.10 {domain} does not accept mail (null MX, "
                             "RFC 7505)")
        sts = None
        sts_client = self._mta_sts()
        if sts_client is not None:
            try:
                sts = await sts_client.policy_for(domain)
            except Exception as exc:  # a broken policy fetch must not stop delivery
                log(logger, "mta-sts lookup failed", logging.WARNING, domain=domain,
                    error=str(exc))
        plans = []
        # Why each host was left out: the deferral reason `mailkeep queue list` shows.
        skipped: list[str] = []
        from mailkeep.outbound.mta_sts import tls_for_mx

        for host in mx.hosts:
            policy = "none"
            if sts is not None and sts.policy is not None:
                decision = tls_for_mx(sts, host.name)
                if not decision.allowed:
                    log(logger, "mx not in mta-sts policy", logging.WARNING, domain=domain,
                        mx=host.name, reason=decision.reason)
                    self.tls_results.record(domain, host.name, "sts", "failure",
                                            "validation-failure: mx not in policy")
                    skipped.append(decision.reason or f"{host.name}: not in the MTA-STS "
                                   "policy")
                    continue
                if decision.require_verified_tls:
                    policy = "sts"
                elif decision.report_failures:
                    policy = "sts-testing"
            tls = TlsRequirement(level="may", ca_file=ca)
            if delivery.dane and host.secure:
                from mailkeep.outbound.dane import dane_verifier, lookup_tlsa

                tlsa = await lookup_tlsa(self._resolver(), host, delivery.smtp_port,
                                         next_hop=domain)
                if tlsa.tls_level == "defer":
                    # RFC 7672 §2.2: a failed TLSA lookup makes this host unusable for now.
                    log(logger, "tlsa lookup failed", logging.WARNING, domain=domain,
                        mx=host.name, error=tlsa.error)
                    self.tls_results.record(domain, host.name, "tlsa", "failure",
                                            f"tlsa-invalid: {tlsa.error}")
                    skipped.append(f"TLSA lookup for {host.name} failed: {tlsa.error}")
                    continue
                if tlsa.tls_level == "dane":
                    tls = TlsRequirement(level="dane", verify_peer=dane_verifier(
                        tlsa.usable, names=tlsa.names), ca_file=ca)
                    policy = "tlsa"
                elif tlsa.tls_level == "encrypt":
                    tls = TlsRequirement(level="encrypt", ca_file=ca)
            if policy == "sts" and tls.level not in ("dane",):
                tls = TlsRequirement(level="verify", verify_names=(host.name,), ca_file=ca)
            for address in host.addresses:
                plans.append({"host": host.name, "port": delivery.smtp_port, "address": address,
                              "tls": tls, "credentials": None, "policy": policy,
                              "domain": domain})
        if not plans:
            detail = "; ".join(skipped)
            raise _Temporary(None, f"no usable mail exchanger for {domain}"
                             + (f" ({detail})" if detail else ""))
        return plans

    async def _mx(self, domain: str):
        from mailkeep.outbound.dns import DnsError
        from mailkeep.outbound.mx import resolve_mx

        try:
            return await resolve_mx(self._resolver(), domain,
                                    families=self.config.delivery.address_families,
                                    own_names=(self.config.hostname,))
        except DnsError as exc:
            # NXDOMAIN (5.1.2), no host with an address (5.4.4), we are the best MX
            # (5.4.6) bounce now; SERVFAIL, timeouts, bogus DNSSEC (4.4.3) wait.
            if exc.permanent:
                raise _Permanent(550, f"550 {exc.enhanced_code} {exc}") from exc
            raise _Temporary(None, f"{exc.enhanced_code} DNS lookup for {domain} "
                             f"failed: {exc}") from exc

    async def _send_plans(self, entry: Any, route: Route, plans: list[dict], rcpts: list
                          ) -> list:
        from mailkeep.outbound.client import (
            OutboundMessage,
            OutboundRecipient,
            SessionError,
        )
        message = OutboundMessage(
            sender=entry.sender,
            recipients=tuple(OutboundRecipient(r.address, notify=r.notify, orcpt=r.orcpt)
                             for r in rcpts),
            path=self.queue.message_path(entry.queue_id), size=entry.size,
            envid=entry.envid, ret=entry.ret, smtputf8=entry.smtputf8,
            body_type=entry.body_type, requiretls=entry.requiretls,
            content=entry.content)
        last_error = "no mail exchanger reachable"
        for plan in plans:
            try:
                result = await self._send_one(plan, message)
            except SessionError as exc:
                last_error = str(exc)  # names the peer already: "host[addr]:port ..."
                if exc.stage in ("connect", "timeout"):
                    # The client logs failures after the connection is up; a refused or
                    # silent address would otherwise leave no trace when the next one works.
                    log(logger, "connection failed", logging.INFO, id=entry.queue_id,
                        peer=f"{plan['host']}[{plan['address'] or plan['host']}]:"
                             f"{plan['port']}", stage=exc.stage, error=str(exc))
                if exc.stage == "auth":
                    # A refused relay login is a configuration problem: the mail waits
                    # (Postfix's smtp_sasl_auth_soft_bounce) instead of bouncing.
                    log(logger, "relay authentication failed", logging.ERROR,
                        id=entry.queue_id, host=plan["host"], error=str(exc))
                continue
            except OSError as exc:
                last_error = f"{plan['host']}: {exc}"
                log(logger, "delivery to host failed", logging.WARNING, id=entry.queue_id,
                    host=plan["host"], error=str(exc))
                continue
            outcomes = []
            for rcpt in rcpts:
                reply = result.recipients.get(rcpt.address)
                if reply is None:
                    outcomes.append(RecipientOutcome(rcpt.address, "deferred", None,
                                                     "no reply for this recipient"))
                    continue
                status = ("delivered" if reply.code < 300 else
                          "failed" if reply.code >= 500 else "deferred")
                text = reply.one_line()
                outcomes.append(RecipientOutcome(rcpt.address, status, reply.code,
                                                 " ".join(text.split()),
                                                 remote_mta=plan["host"]))
            if all(o.status == "deferred" for o in outcomes) and plan is not plans[-1] \
                    and result.message_reply is None:
                # Every recipient got 4xx at RCPT from this host: try the next MX.
                last_error = outcomes[0].text
                continue
            return outcomes
        return [RecipientOutcome(r.address, "deferred", None, last_error) for r in rcpts]

    async def _send_one(self, plan: dict, message: Any) -> Any:
        from mailkeep.outbound.client import ClientSession, SessionError, TlsRequirement

        tls = plan["tls"]
        key = (plan["host"], plan["address"], plan["port"], tls.level,
               plan["credentials"].username if plan["credentials"] else None)
        session = self._pool.take(key)
        if session is not None:
            try:
                result = await session.send(message)
            except (SessionError, OSError):
                session.close()
                session = None
            else:
                self._keep(key, session)
                return result
        helo = self.config.delivery.helo_name or self.config.hostname
        try:
            session = await ClientSession.connect(
                plan["host"], plan["port"], address=plan["address"], helo_name=helo,
                tls=tls, credentials=plan["credentials"])
        except SessionError as exc:
            if exc.tls_failed and tls.level == "may":
                # Opportunistic TLS (RFC 7435): a failed handshake falls back to plaintext,
                # as Postfix's "may" level does.
                self._tls_record(plan, "failure", f"starttls handshake: {exc}")
                session = await ClientSession.connect(
                    plan["host"], plan["port"], address=plan["address"], helo_name=helo,
                    tls=TlsRequirement(level="none"), credentials=None)
            else:
                if exc.stage in ("tls", "starttls"):
                    self._tls_record(plan, "failure", str(exc))
                raise
        info = session.tls_info
        self._tls_record(plan, "success" if info.version else "no-tls",
                         f"{info.version or ''} {info.cipher or ''}".strip())
        try:
            result = await session.send(message)
        except BaseException:
            session.close()
            raise
        self._keep(key, session)
        return result

    def _keep(self, key: tuple, session: Any) -> None:
        if session.messages_sent >= self.config.queue.max_messages_per_connection \
                or self._stopping:
            asyncio.get_running_loop().create_task(_quit(session))
        else:
            self._pool.give(key, session)

    def _tls_record(self, plan: dict, result: str, detail: str) -> None:
        if plan.get("policy") == "relay":
            return
        self.tls_results.record(plan.get("domain", ""), plan["host"], plan.get("policy", "none"),
                                result, detail)


class _Permanent(Exception):
    def __init__(self, code: int | None, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


class _Temporary(Exception):
    def __init__(self, code: int | None, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


async def _result_or_error(job: Any) -> Any:
    """``await job``, an exception returned rather than raised (as gather's
    ``return_exceptions``)."""
    try:
        return await job
    except Exception as exc:
        return exc


def jitter(seconds: float) -> float:
    """Spread retries a little so a burst of failures does not retry as a burst."""
    return seconds * random.uniform(0.9, 1.1)
