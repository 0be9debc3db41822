"""The inbound policy at work: who may send us mail, and what we make of each message.

One :class:`InboundPolicy` per configuration snapshot holds what every session shares
(the compiled rules of each listener, the DNS resolver and its cache, the DNSBL checker,
greylist, scanners). The SMTP receiver asks it for a :class:`PolicySession` per
connection and calls that at each step of the transaction, in this order:

1. connect — :meth:`InboundPolicy.start`: trusted networks skip everything; otherwise the
   iprev and DNSBL lookups start at once, in parallel with the greeting (postscreen);
   :meth:`PolicySession.greet_wait` tells whether to test for talkers before the greeting;
2. HELO, MAIL — recorded; MAIL starts the SPF check of the sender in the background;
3. each RCPT — :meth:`PolicySession.check_recipient`: the connect, HELO and MAIL rules
   once per transaction (Postfix's smtpd_delay_reject), then the RCPT rules (tables,
   greylisting) for this recipient;
4. end of data — :meth:`PolicySession.check_message`: SPF, DKIM, ARC, DMARC and iprev
   together under one deadline, then the data rules in their order (own-domain spoofing,
   DMARC enforcement, header/body checks, clamd, rspamd); the result is the reply, where
   the message goes (inbox, Junk, hold, nowhere) and the header fields to add, starting
   with our Authentication-Results (RFC 8601) after any forged copy was removed.

Rules follow the list order; the first that decides ends it (see
:mod:`mailkeep.policy.rules`). Nothing here writes to a socket: replies are returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailkeep.dkim.sign import parse_header_fields
from mailkeep.logfmt import log
from mailkeep.policy.actions import ActionKind, ReplyClass, access_reply
from mailkeep.policy.rules import Rule, Stage
from mailkeep.policy.tables import (
    TableHit,
    check_client_access,
    check_helo_access,
    check_mail_access,
)
from mailkeep.smtp.address import canonical_domain
from mailkeep.smtp.reply import Reply

logger = logging.getLogger("mailkeep.policy")

#: The first bytes of a spooled message read for header and body checks (a larger
#: message is inspected on this much; Postfix inspects 50 KB of each body part).
CONTENT_CHECK_BYTES = 1 << 20
#: Header block read from a spool file for DKIM/DMARC/From checks and A-R stripping.
HEADER_READ_LIMIT = 256 * 1024
#: Clients remembered as having passed the pregreet test (postscreen's cache).
PREGREET_CACHE_SIZE = 100_000
#: Results of the sender-domain existence check kept (domain → reply or None).
DOMAIN_CACHE_SIZE = 10_000
DOMAIN_CACHE_TTL = 300.0
#: Verification results reused for the same inputs: a busy sender opens many connections
#: a minute from one address with one envelope sender. Short next to usual DNS TTLs
#: (300 s and up), so a changed record is seen within a minute; errors are not kept.
RESULT_CACHE_SIZE = 20_000
RESULT_CACHE_TTL = 60.0
#: DNS lookups the end-of-data verification of one message may make (DKIM keys, ARC keys,
#: DMARC policies), cache hits included; beyond it each lookup is a temporary error. SPF
#: has its own limits (RFC 7208 §4.6.4), iprev its own (mailkeep.trust.iprev).
MESSAGE_DNS_BUDGET = 40


class BudgetResolver:
    """A resolver that allows a fixed number of lookups, then fails them (a message with
    hundreds of DKIM signatures or ARC sets cannot make us query without end)."""

    def __init__(self, resolver: Any, budget: int) -> None:
        self._resolver = resolver
        self.left = budget

    async def resolve(self, *args: Any, **kwargs: Any) -> Any:
        import dns.exception

        if self.left <= 0:
            raise dns.exception.DNSException("DNS query budget of this message exhausted")
        self.left -= 1
        return await self._resolver.resolve(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resolver, name)

_FQDN_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z", re.IGNORECASE)


def _reply(code: int, status: str, text: str) -> Reply:
    return Reply(code, status, text)


def valid_hostname(name: str) -> bool:
    """RFC 1035 §2.3.1 host name syntax (letters, digits, hyphens; labels ≤ 63; ≤ 253),
    with internationalized names in A-label form; a final dot allowed."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return False
    return all(_FQDN_LABEL.match(label) for label in name.split("."))


def address_literal(text: str) -> str | None:
    """The IP address of an RFC 5321 §4.1.3 address literal ("[192.0.2.1]",
    "[IPv6:2001:db8::1]"), or None when ``text`` is not one (or not a valid one)."""
    if not text.startswith("["):
        return None
    try:
        literal = canonical_domain(text)   # validates "[...]" as RFC 5321 §4.1.3 says
    except ValueError:
        return None
    inner = literal[1:-1]
    return inner[5:] if inner.startswith("IPv6:") else inner


def helo_problem(helo: str, *, check_fqdn: bool) -> Reply | None:
    """reject_invalid_helo_hostname / reject_non_fqdn_helo_hostname (Postfix's replies)."""
    shown = helo[:255]
    if address_literal(helo) is not None:
        return None
    if not valid_hostname(helo):
        return _reply(501, "5.5.2", f"<{shown}>: Helo command rejected: Invalid name")
    if check_fqdn and "." not in helo.rstrip("."):
        return _reply(504, "5.5.2", f"<{shown}>: Helo command rejected: "
                      "need fully-qualified hostname")
    return None


class TtlCache:
    """A bounded map whose entries expire; cleared whole when full (cheap, and the
    entries are cheap to relearn)."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self.size, self.ttl, self.clock = size, ttl, clock
        self._entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() - entry[0] >= self.ttl:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: Any, value: Any) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (self.clock(), value)


@dataclass
class DataVerdict:
    """What to do with a message at the end of DATA.

    ``reply`` refuses it (4xx or 5xx) when set. Otherwise ``disposition`` says where it
    goes: "deliver" (the inbox or the folder the address names), "junk", "hold" (the
    queue, held for review) or "discard" (acknowledged, then dropped). ``headers`` go on
    top of the message (after our Received field); ``source`` replaces the message when a
    check rewrote it (forged Authentication-Results removed, header_checks edits).
    """

    reply: Reply | None = None
    disposition: str = "deliver"
    headers: bytes = b""
    source: bytes | Path | None = None
    size: int | None = None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Transaction:
    sender: str = ""                         # the reverse-path, "" for <>
    spf: asyncio.Task | None = None
    early: Reply | None = None               # the connect/helo/mail verdict, once known
    early_done: bool = False
    permitted: bool = False                  # a rule said OK: skip all after it
    discard: bool = False
    hold: bool = False
    defer_if_permit: Reply | None = None
    defer_if_reject: Reply | None = None
    prepend: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class InboundPolicy:
    """The policy machinery of one configuration snapshot (rebuilt on reload)."""

    def __init__(self, config: Any, *, resolver: Any, greylist: Any = None,
                 dnsbl: Any = None, clamd: Any = None, rspamd: Any = None,
                 dmarc_reports: Any = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.config = config
        self.settings = config.policy
        self.resolver = resolver
        self.greylist = greylist
        self.dnsbl = dnsbl
        self.clamd = clamd
        self.rspamd = rspamd
        self.dmarc_reports = dmarc_reports
        self.clock = clock
        self.authserv_id = self.settings.authserv_id or config.hostname
        self.trusted = tuple(ipaddress.ip_network(n) for n in self.settings.trusted_networks)
        self.our_names = {config.hostname.lower().rstrip(".")}
        self.our_domains = tuple(config.domains)
        # postscreen's temporary allow-list: client → monotonic time it passed.
        self._greet_passed: dict[str, float] = {}
        self._domain_cache: dict[str, tuple[float, Reply | None]] = {}
        #: header_checks/body_checks compiled once per rule (rules live as long as this).
        self.checkers: dict[int, Any] = {}
        self._iprev_cache = TtlCache(RESULT_CACHE_SIZE, RESULT_CACHE_TTL, clock)
        self._spf_cache = TtlCache(RESULT_CACHE_SIZE, RESULT_CACHE_TTL, clock)
        self._dmarc_cache = TtlCache(RESULT_CACHE_SIZE, RESULT_CACHE_TTL, clock)

    # -- verification with short-lived result caches -------------------------------------

    async def iprev(self, ip: str) -> Any:
        """iprev (RFC 8601 §2.7.3) of a client address."""
        cached = self._iprev_cache.get(ip)
        if cached is not None:
            return cached
        from mailkeep.trust.iprev import iprev

        result = await iprev(ip, self.resolver)
        if str(result.result) != "temperror":
            self._iprev_cache.put(ip, result)
        return result

    async def spf(self, ip: str, sender: str, helo: str) -> Any:
        """SPF for MAIL FROM (RFC 7208 §2.4); the result depends on exactly these."""
        key = (ip, sender, helo)
        cached = self._spf_cache.get(key)
        if cached is not None:
            return cached
        from mailkeep.trust.spf import spf_for_mail_from

        result = await spf_for_mail_from(ip, sender, helo=helo, resolver=self.resolver,
                                         receiver=self.authserv_id)
        if str(result.result) != "temperror":
            self._spf_cache.put(key, result)
        return result

    async def dmarc_policy(self, domain: str) -> Any:
        """DMARC policy discovery (RFC 7489 §6.6.3) for an author domain."""
        cached = self._dmarc_cache.get(domain)
        if cached is not None:
            return cached
        from mailkeep.trust.dmarc import discover_policy

        found = await discover_policy(domain, resolver=self.resolver)
        if str(found.status) != "temperror":
            self._dmarc_cache.put(domain, found)
        return found

    # -- connect ---------------------------------------------------------------------

    def rules_for(self, listener_policy: str) -> tuple[Rule, ...] | None:
        """The compiled rules of a listener's policy; None for "none"."""
        if listener_policy == "none":
            return None
        return self.settings.compiled.get(listener_policy, ())

    def is_trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ip == "local"   # a Unix-socket client is on this machine
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def start(self, rules: tuple[Rule, ...], client_ip: str, local_ip: str | None
              ) -> PolicySession:
        return PolicySession(self, rules, client_ip, local_ip)

    def greet_passed(self, ip: str) -> bool:
        when = self._greet_passed.get(ip)
        return when is not None and self.clock() - when < self.settings.greet_ttl

    def note_greet_pass(self, ip: str) -> None:
        if len(self._greet_passed) >= PREGREET_CACHE_SIZE:
            self._greet_passed.clear()   # crude but bounded; entries are cheap to relearn
        self._greet_passed[ip] = self.clock()

    # -- shared lookups -----------------------------------------------------------------

    async def sender_domain_problem(self, domain: str) -> Reply | None:
        """reject_unknown_sender_domain: the domain must have an MX, A or AAAA record
        (RFC 5321 §5.1: mail to it must be deliverable) and no null MX (RFC 7505 §4.2)."""
        from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, query

        now = self.clock()
        cached = self._domain_cache.get(domain)
        if cached is not None and now - cached[0] < DOMAIN_CACHE_TTL:
            return cached[1]
        result: Reply | None
        try:
            mx = await query(self.resolver, domain, "MX")
            if len(mx.records) == 1 and str(mx.records[0].exchange) in ("", "."):
                result = _reply(550, "5.7.27", "Sender address rejected: "
                                f"domain {domain} does not accept mail (null MX)")
            elif mx.records:
                result = None
            else:
                found = False
                for rdtype in ("A", "AAAA"):
                    answer = await query(self.resolver, domain, rdtype)
                    if answer.records:
                        found = True
                        break
                result = None if found else _reply(
                    550, "5.1.8", f"Sender address rejected: Domain {domain} not found")
        except DnsNameError:
            result = _reply(550, "5.1.8", f"Sender address rejected: Domain {domain} not found")
        except DnsTemporaryError:
            return _reply(450, "4.1.8", "Sender address rejected: "
                          f"cannot look up domain {domain} now, try again later")
        if len(self._domain_cache) >= DOMAIN_CACHE_SIZE:
            self._domain_cache.clear()
        self._domain_cache[domain] = (now, result)
        return result

    def is_our_domain(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain in self.config.domains


class PolicySession:
    """The policy's view of one SMTP connection (see the module text for the steps)."""

    def __init__(self, policy: InboundPolicy, rules: tuple[Rule, ...], client_ip: str,
                 local_ip: str | None) -> None:
        self.policy = policy
        self.rules = rules
        self.client_ip = client_ip
        self.local_ip = local_ip
        self.trusted = policy.is_trusted(client_ip)
        names = {rule.name for rule in rules}
        self.names = names
        self.helo = ""
        self.esmtp = False
        self.pregreet = False
        self.unauth_pipelining = False
        self.txn = _Transaction()
        self._iprev: asyncio.Task | None = None
        self._dnsbl: asyncio.Task | None = None
        if self.trusted and "permit_trusted_networks" in names:
            return
        loop = asyncio.get_running_loop()
        if client_ip != "local":
            self._iprev = loop.create_task(policy.iprev(client_ip))
            if "dnsbl" in names and policy.dnsbl is not None:
                self._dnsbl = loop.create_task(policy.dnsbl.score(client_ip))

    @property
    def active(self) -> bool:
        """False when the client is trusted and the policy lets trusted clients through."""
        return not (self.trusted and "permit_trusted_networks" in self.names)

    def close(self) -> None:
        for task in (self._iprev, self._dnsbl, self.txn.spf):
            if task is not None and not task.done():
                task.cancel()

    # -- connect: postscreen's tests ---------------------------------------------------------

    def drop_possible(self) -> bool:
        """A DNSBL verdict may drop this client before the greeting."""
        return self._dnsbl is not None and self.policy.settings.dnsbl.action == "drop"

    def greet_wait(self) -> float:
        """Seconds to wait after "220-" for a pregreet test; 0 for none."""
        if not self.active or "reject_pregreet" not in self.names:
            return 0.0
        if self.policy.greet_passed(self.client_ip):
            return 0.0
        return self.policy.settings.greet_wait

    def pregreet_result(self, talked: bool) -> None:
        if talked:
            self.pregreet = True
            log(logger, "pregreet", logging.INFO, client=self.client_ip)
        else:
            self.policy.note_greet_pass(self.client_ip)

    async def drop_at_greeting(self) -> Reply | None:
        """DNSBL with action drop: a listed client gets 521 in place of the greeting."""
        if not self.active or self._dnsbl is None:
            return None
        if self.policy.settings.dnsbl.action != "drop":
            return None
        reply = await self._dnsbl_reply()
        if reply is None:
            return None
        return _reply(521, "5.7.1", reply.text)

    async def _dnsbl_reply(self) -> Reply | None:
        assert self._dnsbl is not None
        try:
            result = await self._dnsbl
        except Exception as exc:  # never let a lookup problem refuse mail
            log(logger, "dnsbl failed", logging.WARNING, client=self.client_ip, error=repr(exc))
            return None
        if not result.blocked:
            return None
        zones = ",".join(zone for zone, _answer in result.listed)
        log(logger, "dnsbl listed", logging.INFO, client=self.client_ip, score=result.score,
            zones=zones)
        if self.policy.settings.dnsbl.action == "ignore":
            return None
        first = result.listed[0][0] if result.listed else "a DNS blocklist"
        return _reply(554, "5.7.1", f"Service unavailable; client [{self.client_ip}] "
                      f"blocked using {first}")

    # -- HELO, MAIL ---------------------------------------------------------------------

    def hello(self, verb: str, domain: str) -> None:
        self.helo = domain
        self.esmtp = verb.upper() in ("EHLO", "LHLO")

    def command_with_input_after(self) -> None:
        """A command arrived with more input behind it. Without PIPELINING (HELO
        clients) that is unauthorized pipelining (Postfix reject_unauth_pipelining)."""
        if not self.esmtp:
            self.unauth_pipelining = True

    def data_with_input_after(self) -> None:
        """DATA arrived with input behind it: the client did not wait for 354
        (RFC 2920 §3.1: DATA ends a group of pipelined commands)."""
        self.unauth_pipelining = True

    def mail_from(self, sender: str) -> None:
        self.reset()
        self.txn.sender = sender
        if not self.active:
            return
        helo = self.helo or "unknown"
        self.txn.spf = asyncio.get_running_loop().create_task(
            self.policy.spf(self.client_ip, sender, helo))

    def reset(self) -> None:
        if self.txn.spf is not None and not self.txn.spf.done():
            self.txn.spf.cancel()
        self.txn = _Transaction()

    # -- RCPT -----------------------------------------------------------------------------

    async def check_recipient(self, recipient: str) -> Reply | None:
        """The policy's reply for one RCPT (None: no objection)."""
        if not self.active:
            return None
        txn = self.txn
        if not txn.early_done:
            txn.early = await self._early_rules()
            txn.early_done = True
        if txn.early is not None:
            return txn.early
        if txn.permitted:
            return None
        for rule in self.rules:
            if rule.stage is not Stage.RCPT:
                continue
            reply = await self._rcpt_rule(rule, recipient)
            if reply is not None:
                return self._settle(reply)
            if txn.permitted:
                return None
        if txn.defer_if_permit is not None:
            return txn.defer_if_permit
        return None

    def _settle(self, reply: Reply) -> Reply:
        """DEFER_IF_REJECT seen earlier: a permanent refusal becomes a temporary one."""
        if reply.code >= 500 and self.txn.defer_if_reject is not None:
            return self.txn.defer_if_reject
        return reply

    async def _early_rules(self) -> Reply | None:
        """Connect, HELO and MAIL rules, in order; the first that decides ends them."""
        txn = self.txn
        for rule in self.rules:
            if rule.stage > Stage.MAIL:
                break
            reply = await self._early_rule(rule)
            if reply is not None:
                reply = self._settle(reply)
                log(logger, "refused", logging.INFO, client=self.client_ip, helo=self.helo,
                    from_=txn.sender, rule=str(rule), code=reply.code, reason=reply.text)
                return reply
            if txn.permitted:
                return None
        return None

    async def _early_rule(self, rule: Rule) -> Reply | None:
        name = rule.name
        helo = self.helo
        sender = self.txn.sender
        if name == "permit_trusted_networks":
            if self.trusted:
                self.txn.permitted = True
            return None
        if name == "reject_pregreet":
            if self.pregreet:
                return _reply(550, "5.5.1", "Protocol error: client talked before "
                              "the server greeting")
            return None
        if name == "reject_unauth_pipelining":
            if self.unauth_pipelining:
                return _reply(554, "5.5.0", "Error: improper use of SMTP command pipelining")
            return None
        if name == "dnsbl":
            if self._dnsbl is None or self.policy.settings.dnsbl.action == "drop":
                return None
            return await self._dnsbl_reply()
        if name == "reject_unknown_client_hostname":
            result = await self._iprev_result()
            if result is None or result.result == "pass":
                return None
            if result.result == "temperror":
                return _reply(450, "4.7.25", f"Client host rejected: cannot find your "
                              f"hostname, [{self.client_ip}]")
            return _reply(550, "5.7.25", f"Client host rejected: cannot find your hostname, "
                          f"[{self.client_ip}]")
        if name == "check_client_access":
            result = await self._iprev_result()
            hostname = result.names[0] if result is not None and result.names else None
            hit = check_client_access(rule.table, address=self.client_ip, hostname=hostname)
            return self._access(hit, rule, hostname or self.client_ip, ReplyClass.CLIENT)
        if name == "reject_invalid_helo_hostname":
            return helo_problem(helo, check_fqdn=False)
        if name == "reject_non_fqdn_helo_hostname":
            return helo_problem(helo, check_fqdn=True)
        if name == "reject_our_helo":
            return self._our_helo(helo)
        if name == "reject_unknown_helo_hostname":
            if address_literal(helo) is not None or not valid_hostname(helo):
                return None   # the syntax rules above judge these
            problem = await self.policy.sender_domain_problem(helo.lower().rstrip("."))
            if problem is None:
                return None
            code, status = (450, "4.7.1") if problem.code < 500 else (550, "5.7.1")
            return _reply(code, status, f"<{helo[:255]}>: Helo command rejected: "
                          "Host not found")
        if name == "check_helo_access":
            hit = check_helo_access(rule.table, helo)
            return self._access(hit, rule, helo, ReplyClass.HELO)
        if name == "reject_non_fqdn_sender":
            if sender and not self._fqdn_address(sender):
                return _reply(504, "5.5.2", f"<{sender}>: Sender address rejected: "
                              "need fully-qualified address")
            return None
        if name == "reject_unknown_sender_domain":
            if not sender:
                return None
            domain = sender.rpartition("@")[2].lower()
            if address_literal(domain) is not None or self.policy.is_our_domain(domain):
                return None
            problem = await self.policy.sender_domain_problem(domain)
            if problem is None:
                return None
            return _reply(problem.code, problem.enhanced or "", f"<{sender}>: {problem.text}")
        if name == "check_sender_access":
            hit = check_mail_access(rule.table, sender)
            return self._access(hit, rule, sender, ReplyClass.SENDER)
        if name == "reject_spf_fail":
            spf = await self._spf_result()
            if spf is None:
                return None
            if spf.result == "fail":
                why = spf.explanation or f"{spf.domain} does not designate {self.client_ip} " \
                                         "as permitted sender"
                return _reply(550, "5.7.23", f"<{sender}>: SPF validation failed: {why}"[:400])
            if spf.result == "temperror":
                return _reply(451, "4.7.24", f"<{sender}>: SPF validation error, "
                              "try again later")
            return None
        raise AssertionError(f"unhandled early rule {name}")

    async def _rcpt_rule(self, rule: Rule, recipient: str) -> Reply | None:
        if rule.name == "check_recipient_access":
            hit = check_mail_access(rule.table, recipient)
            return self._access(hit, rule, recipient, ReplyClass.RECIPIENT)
        if rule.name == "greylist":
            return await self._greylist(recipient)
        raise AssertionError(f"unhandled rcpt rule {rule.name}")

    async def _greylist(self, recipient: str) -> Reply | None:
        greylist = self.policy.greylist
        if greylist is None:
            return None
        sender = self.txn.sender
        domain = sender.rpartition("@")[2].lower() if sender else ""
        if domain and greylist.dkim_domain_known(domain):
            return None
        decision = greylist.check(self.client_ip, sender or "<>", recipient)
        if decision.passed:
            return None
        log(logger, "greylisted", client=self.client_ip, from_=sender, to=recipient,
            reason=decision.reason, retry_after=round(decision.retry_after))
        return decision.reply

    def _access(self, hit: TableHit | None, rule: Rule, name: str,
                reply_class: ReplyClass) -> Reply | None:
        """Carry out a table result (access(5) ACCEPT/REJECT/OTHER ACTIONS)."""
        if hit is None:
            return None
        action = hit.action
        kind = action.kind
        txn = self.txn
        where = f"{hit.source}:{hit.line}"
        if kind is ActionKind.OK:
            txn.permitted = True
            return None
        if kind in (ActionKind.DUNNO,):
            return None
        if kind in (ActionKind.WARN, ActionKind.INFO):
            log(logger, "policy warning" if kind is ActionKind.WARN else "policy info",
                logging.WARNING if kind is ActionKind.WARN else logging.INFO,
                client=self.client_ip, rule=str(rule), table=where, key=name,
                text=action.text)
            return None
        if kind is ActionKind.DISCARD:
            txn.discard = True
            txn.permitted = True
            log(logger, "policy discard", client=self.client_ip, rule=str(rule), table=where,
                key=name)
            return None
        if kind is ActionKind.HOLD:
            txn.hold = True
            log(logger, "policy hold", client=self.client_ip, rule=str(rule), table=where,
                key=name)
            return None
        if kind is ActionKind.PREPEND:
            txn.prepend.append(action.text)
            return None
        answer = access_reply(action, name=name, reply_class=reply_class)
        if answer is None:
            return None
        reply = Reply(answer.code, answer.status, answer.text)
        if kind is ActionKind.DEFER_IF_PERMIT:
            # Applies only if the evaluation would otherwise end in acceptance.
            txn.defer_if_permit = reply
            return None
        if kind is ActionKind.DEFER_IF_REJECT:
            txn.defer_if_reject = reply   # a later reject becomes this defer
            return None
        return reply

    def _our_helo(self, helo: str) -> Reply | None:
        """A client from outside that names us in HELO (seed 000's helo_reject_domains)."""
        name = helo.lower().rstrip(".")
        literal = address_literal(helo)
        ours = False
        if literal is not None:
            ours = literal == self.local_ip
        elif name in self.policy.our_names or self.local_ip == name:
            ours = True
        else:
            ours = any(name == d or name.endswith("." + d) for d in self.policy.our_domains)
        if not ours:
            return None
        return _reply(550, "5.7.1", f"<{helo[:255]}>: Helo command rejected: "
                      "you are not this server")

    @staticmethod
    def _fqdn_address(address: str) -> bool:
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return False
        if address_literal(domain) is not None:
            return True
        return valid_hostname(domain) and "." in domain.rstrip(".")

    async def _iprev_result(self) -> Any:
        if self._iprev is None:
            return None
        try:
            return await self._iprev
        except Exception as exc:
            log(logger, "iprev failed", logging.WARNING, client=self.client_ip, error=repr(exc))
            return None

    async def _spf_result(self) -> Any:
        task = self.txn.spf
        if task is None:
            return None
        try:
            return await task
        except Exception as exc:
            log(logger, "spf failed", logging.WARNING, client=self.client_ip, error=repr(exc))
            return None

    def data_start(self) -> Reply | None:
        """At DATA: refuse a client that pipelined without PIPELINING or did not wait for
        354, when the policy asks (Postfix's smtpd_data_restrictions)."""
        if (self.active and not self.txn.permitted and self.unauth_pipelining
                and "reject_unauth_pipelining" in self.names):
            return _reply(554, "5.5.0", "Error: improper use of SMTP command pipelining")
        return None

    # -- end of data ----------------------------------------------------------------------

    async def check_message(self, source: bytes | Path, size: int, *, msg_id: str,
                            recipients: list[str], spool_dir: Path) -> DataVerdict:
        """Verification, then the data rules; see the module text."""
        verdict = DataVerdict()
        txn = self.txn
        if not self.active:
            return verdict
        header = (_header_block(source) if isinstance(source, bytes)
                  else await asyncio.to_thread(_header_block, source))
        checks = await self._verify(source, header, msg_id)
        results = [checks.authres_method(m) for m in ("iprev", "spf", "dkim", "arc", "dmarc")]
        headers: list[bytes] = []
        from mailkeep.trust.authres import build_header, strip_our_results

        headers.append(build_header(self.policy.authserv_id,
                                    [r for group in results for r in group]))
        if self.policy.settings.received_spf and checks.spf is not None:
            from mailkeep.trust.spf import received_spf_header

            headers.append(_header_line(received_spf_header(
                checks.spf, receiver=self.policy.authserv_id)))
        for text in txn.prepend:
            headers.append(_header_line(text))
        self._learn(checks)
        stripped = strip_our_results(header, self.policy.authserv_id)
        if stripped != header:
            log(logger, "forged authentication-results removed", id=msg_id,
                client=self.client_ip)
            source, size = await asyncio.to_thread(_rewrite, source, stripped, len(header),
                                                   spool_dir)
            header = stripped
        verdict.source, verdict.size = source, size
        if txn.discard:
            verdict.disposition = "discard"
        elif txn.hold:
            verdict.disposition = "hold"
        if not txn.permitted:
            for rule in self.rules:
                if rule.stage is not Stage.DATA:
                    continue
                reply = await self._data_rule(rule, verdict, checks, headers, msg_id,
                                              recipients, spool_dir)
                if reply is not None:
                    verdict.reply = reply
                    log(logger, "message refused", logging.INFO, id=msg_id,
                        client=self.client_ip, from_=txn.sender, rule=str(rule),
                        code=reply.code, reason=reply.text)
                    break
                if verdict.disposition == "discard":
                    break
        if verdict.reply is None and txn.defer_if_permit is not None:
            verdict.reply = txn.defer_if_permit
        verdict.headers = b"".join(headers)
        verdict.notes.update(checks.notes())
        self._report_dmarc(checks, verdict, recipients)
        return verdict

    def _report_dmarc(self, checks: Checks, verdict: DataVerdict,
                      recipients: list[str]) -> None:
        """Our aggregate reports (RFC 7489 §7.2) say what we did with the domain's mail."""
        store = self.policy.dmarc_reports
        if store is None or checks.dmarc is None or not recipients:
            return
        applied = ("reject" if verdict.reply is not None and verdict.reply.code >= 500
                   else "quarantine" if verdict.disposition == "junk" else "none")
        override = None
        if verdict.notes.get("dmarc_override") == "trusted_arc":
            from mailkeep.reports.dmarc_xml import PolicyOverride

            override = PolicyOverride("trusted_forwarder", "ARC chain from a trusted sealer")
        try:
            store.record_evaluation(
                source_ip=self.client_ip, envelope_from=self.txn.sender,
                envelope_to=recipients[0], spf=checks.spf, dkim=checks.dkim,
                dmarc=checks.dmarc,
                disposition=applied if applied != str(checks.dmarc.disposition) else None,
                override=override)
        except Exception as exc:   # reports are a courtesy; never fail the message
            log(logger, "dmarc record failed", logging.WARNING, error=repr(exc))

    async def _verify(self, source: bytes | Path, header: bytes, msg_id: str = "") -> Checks:
        from mailkeep.trust.arc import verify_arc
        from mailkeep.trust.dkim_verify import dmarc_inputs, verify_dkim
        from mailkeep.trust.dmarc import author_domains, check_message

        resolver = BudgetResolver(self.policy.resolver, MESSAGE_DNS_BUDGET)
        checks = Checks(client_ip=self.client_ip, helo=self.helo, sender=self.txn.sender)
        authors = author_domains(header)
        author = authors.domains[0] if getattr(authors, "domains", None) else None
        try:
            async with asyncio.timeout(self.policy.settings.verify_timeout):
                dkim_task = asyncio.ensure_future(verify_dkim(
                    source, resolver=resolver, author_domain=author))
                arc_task = asyncio.ensure_future(verify_arc(source, resolver=resolver))
                checks.iprev = await self._iprev_result()
                checks.spf = await self._spf_result()
                checks.dkim = await dkim_task
                checks.arc = await arc_task
                spf_pair = None
                if checks.spf is not None:
                    spf_pair = (str(checks.spf.result), checks.spf.domain)
                checks.dmarc = await check_message(header, spf_pair,
                                                   dmarc_inputs(checks.dkim),
                                                   resolver=resolver,
                                                   discover=self.policy.dmarc_policy)
        except TimeoutError:
            checks.timed_out = True
            log(logger, "verification timed out", logging.WARNING, id=msg_id,
                client=self.client_ip, seconds=self.policy.settings.verify_timeout)
        checks.from_domains = tuple(getattr(authors, "domains", ()) or ())
        return checks

    def _learn(self, checks: Checks) -> None:
        """Greylisting skips senders whose domain was seen with a DKIM pass."""
        greylist = self.policy.greylist
        if greylist is None or not checks.dkim:
            return
        sender_domain = self.txn.sender.rpartition("@")[2].lower()
        for result in checks.dkim:
            if (result.result == "pass" and not result.testing and result.domain
                    and sender_domain and (sender_domain == result.domain
                                           or sender_domain.endswith("." + result.domain))):
                greylist.note_dkim_pass(sender_domain)

    async def _data_rule(self, rule: Rule, verdict: DataVerdict, checks: Checks,
                         headers: list[bytes], msg_id: str, recipients: list[str],
                         spool_dir: Path) -> Reply | None:
        name = rule.name
        if name == "reject_spoofed_own_domain":
            return self._spoofed_own_domain(checks)
        if name == "dmarc":
            return self._dmarc(checks, verdict)
        if name in ("header_checks", "body_checks"):
            if isinstance(verdict.source, Path):
                return await asyncio.to_thread(self._content, rule, verdict, spool_dir,
                                               msg_id)
            return self._content(rule, verdict, spool_dir, msg_id)
        if name == "clamav":
            return await self._clamav(verdict, headers, msg_id)
        if name == "rspamd":
            return await self._rspamd(verdict, headers, msg_id, recipients, spool_dir)
        raise AssertionError(f"unhandled data rule {name}")

    def _spoofed_own_domain(self, checks: Checks) -> Reply | None:
        """Seed 001's check_sender_domain, made safe for our own mail that comes back
        through the Internet: our domain as envelope sender or From from an outsider is
        refused unless SPF passes for it or an aligned DKIM signature verifies."""
        sender = self.txn.sender
        claimed = []
        sender_domain = sender.rpartition("@")[2].lower() if sender else ""
        if sender_domain and self.policy.is_our_domain(sender_domain):
            claimed.append((sender, sender_domain))
        for domain in checks.from_domains:
            if self.policy.is_our_domain(domain):
                claimed.append((f"From: {domain}", domain))
        for shown, domain in claimed:
            if checks.authenticated_for(domain):
                continue
            return _reply(550, "5.7.1", f"<{shown}>: Sender address rejected: mail from "
                          f"{domain} must come from its servers or carry its DKIM signature")
        return None

    def _dmarc(self, checks: Checks, verdict: DataVerdict) -> Reply | None:
        """RFC 7489 §6.7 / §10.3: reject → 550 5.7.1, quarantine → Junk, none → record."""
        dmarc = checks.dmarc
        if dmarc is None or str(dmarc.result) != "fail":
            return None
        disposition = str(dmarc.disposition)
        if disposition == "none":
            return None
        arc = checks.arc
        if arc is not None and str(arc.result) == "pass":
            sealers = set(self.policy.settings.trusted_arc_sealers)
            if sealers and any(d in sealers for d in arc.domains):
                # RFC 8617 §7.2: a local policy may trust a sealer's record; deliver to
                # Junk rather than refuse, so nothing a trusted list forwards is lost.
                verdict.disposition = "junk"
                verdict.notes["dmarc_override"] = "trusted_arc"
                return None
        if disposition == "reject":
            return _reply(550, "5.7.1", f"Email rejected per DMARC policy for "
                          f"{dmarc.from_domain}")
        if disposition == "quarantine" and verdict.disposition == "deliver":
            verdict.disposition = "junk"
        return None

    def _content(self, rule: Rule, verdict: DataVerdict, spool_dir: Path,
                 msg_id: str = "") -> Reply | None:
        from mailkeep.policy.checks import ContentChecker, Decision

        checker = self.policy.checkers.get(id(rule))
        if checker is None:
            checker = (ContentChecker(header_checks=rule.table) if rule.name == "header_checks"
                       else ContentChecker(body_checks=rule.table))
            self.policy.checkers[id(rule)] = checker
        source = verdict.source
        assert source is not None
        data, rest = _content_prefix(source)
        result = checker.check_message(data)
        for hit in result.hits:
            log(logger, "content check", logging.INFO, id=msg_id, rule=str(rule),
                table=f"{hit.hit.source}:{hit.hit.line}", where=hit.where,
                action=str(hit.hit.action.kind), text=hit.text[:200])
        decision = result.decision
        if decision in (Decision.REJECT, Decision.DEFER) and result.reply is not None:
            return Reply(result.reply.code, result.reply.status, result.reply.text)
        if decision is Decision.DISCARD:
            verdict.disposition = "discard"
            return None
        if decision is Decision.HOLD and verdict.disposition == "deliver":
            verdict.disposition = "hold"
        if result.message is not None and result.message != data:
            verdict.source, verdict.size = _rewrite(source, result.message, rest, spool_dir)
        return None

    async def _clamav(self, verdict: DataVerdict, headers: list[bytes],
                      msg_id: str) -> Reply | None:
        client = self.policy.clamd
        if client is None:
            return None
        from mailkeep.policy.clamd import clamd_verdict

        assert verdict.source is not None
        result = await client.scan(verdict.source)
        decision = clamd_verdict(result, self.policy.settings.clamav.on_error)
        if result.status != "clean":
            log(logger, "clamd", logging.INFO if result.status == "infected" else
                logging.WARNING, id=msg_id, client=self.client_ip, status=result.status,
                signature=result.signature or "", detail=result.detail)
        if decision.header:
            headers.append(_header_line(decision.header))
        return decision.reply

    async def _rspamd(self, verdict: DataVerdict, headers: list[bytes], msg_id: str,
                      recipients: list[str], spool_dir: Path) -> Reply | None:
        client = self.policy.rspamd
        if client is None:
            return None
        from mailkeep.policy.rspamd import rspamd_verdict

        iprev = await self._iprev_result()
        hostname = iprev.names[0] if iprev is not None and iprev.names else None
        assert verdict.source is not None
        result = await client.check(verdict.source, client_ip=self.client_ip, helo=self.helo,
                                    mail_from=self.txn.sender, recipients=recipients,
                                    queue_id=msg_id, hostname=hostname,
                                    mta_name=self.policy.config.hostname)
        decision = rspamd_verdict(result, self.policy.settings.rspamd.on_error)
        log(logger, "rspamd", id=msg_id, client=self.client_ip, action=result.action,
            score=result.score, error=result.error or "")
        if decision.reply is not None:
            return decision.reply
        for name, value in decision.add_headers:
            headers.append(_header_line(f"{name}: {value}"))
        present = {name.lower().decode("latin-1")
                   for name, _value in parse_header_fields(_header_block(verdict.source))}
        if (decision.subject is not None
                or any(name.lower() in present for name in decision.remove_headers)):
            verdict.source, verdict.size = await asyncio.to_thread(
                _edit_headers, verdict.source, spool_dir, remove=decision.remove_headers,
                subject=decision.subject)
        return None


@dataclass
class Checks:
    """What verification found for one message (for Authentication-Results, the data
    rules, the greylist and the DMARC reports)."""

    client_ip: str
    helo: str
    sender: str
    iprev: Any = None
    spf: Any = None
    dkim: list[Any] = field(default_factory=list)
    arc: Any = None
    dmarc: Any = None
    from_domains: tuple[str, ...] = ()
    timed_out: bool = False

    def authres_method(self, method: str) -> list[Any]:
        from mailkeep.trust import authres

        if method == "iprev" and self.iprev is not None:
            return [authres.iprev_result(str(self.iprev.result), self.client_ip,
                                         reason=self.iprev.problem or None)]
        if method == "spf" and self.spf is not None:
            spf = self.spf
            mailfrom = self.sender or f"postmaster@{self.helo}"
            return [authres.spf_result(str(spf.result), mailfrom=mailfrom,
                                       reason=spf.problem or None)]
        if method == "dkim":
            if not self.dkim:
                return [authres.MethodResult("dkim", "none")]
            return [authres.dkim_result(r) for r in self.dkim]
        if method == "arc" and self.arc is not None:
            return [authres.arc_result(str(self.arc.result), remote_ip=self.client_ip,
                                       oldest_pass=self.arc.oldest_pass,
                                       reason=self.arc.reason or None)]
        if method == "dmarc" and self.dmarc is not None:
            return [authres.dmarc_result(self.dmarc)]
        return []

    def authenticated_for(self, domain: str) -> bool:
        """SPF pass for this domain, or a verified DKIM signature aligned with it
        (relaxed: the same organizational domain)."""
        from mailkeep.trust.dmarc import aligned

        if self.spf is not None and str(self.spf.result) == "pass" and \
                aligned(self.spf.domain, domain, "r"):
            return True
        return any(str(r.result) == "pass" and not r.testing and r.domain
                   and aligned(r.domain, domain, "r") for r in self.dkim)

    def notes(self) -> dict[str, str]:
        out = {}
        if self.spf is not None:
            out["spf"] = str(self.spf.result)
        if self.dkim:
            out["dkim"] = ",".join(str(r.result) for r in self.dkim)
        if self.dmarc is not None:
            out["dmarc"] = str(self.dmarc.result)
        if self.arc is not None and str(self.arc.result) != "none":
            out["arc"] = str(self.arc.result)
        return out


# -- message bytes -------------------------------------------------------------------------


def _header_line(text: str | bytes) -> bytes:
    """One header field, CRLF-terminated, bare line ends turned into folding."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    data = data.rstrip(b"\r\n").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = data.split(b"\n")
    folded = [lines[0]] + [(b"\t" + ln.lstrip(b" \t")) for ln in lines[1:] if ln.strip()]
    return b"\r\n".join(folded) + b"\r\n"


def _header_block(source: bytes | Path) -> bytes:
    """The header block with its ending blank line (or what is there, when none)."""
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            data = handle.read(HEADER_READ_LIMIT)
    else:
        data = source[:HEADER_READ_LIMIT]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    return data[:end + 4]


def _content_prefix(source: bytes | Path) -> tuple[bytes, int]:
    """The part of the message content checks see, and where the rest starts."""
    if isinstance(source, Path):
        with open(source, "rb") as handle:
            data = handle.read(CONTENT_CHECK_BYTES)
        return data, len(data)
    return source, len(source)


def _spool_copy(prefix: bytes, source: Path, offset: int, spool_dir: Path) -> tuple[Path, int]:
    fd, name = tempfile.mkstemp(prefix="pol-", dir=spool_dir)
    size = len(prefix)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        out.write(prefix)
        src.seek(offset)
        while chunk := src.read(1 << 16):
            out.write(chunk)
            size += len(chunk)
    return Path(name), size


def _rewrite(source: bytes | Path, new_prefix: bytes, old_prefix_length: int,
             spool_dir: Path) -> tuple[bytes | Path, int]:
    """The message with its first ``old_prefix_length`` bytes replaced by ``new_prefix``
    (in memory, or as a new spool file), and its size."""
    if isinstance(source, bytes):
        data = new_prefix + source[old_prefix_length:]
        return data, len(data)
    return _spool_copy(new_prefix, source, old_prefix_length, spool_dir)


def _edit_headers(source: bytes | Path, spool_dir: Path, *, remove: Iterable[str] = (),
                  subject: str | None = None) -> tuple[bytes | Path, int]:
    """Remove header fields by name and/or set the Subject (rspamd's rewrite)."""
    header = _header_block(source)
    names = {n.lower().encode() for n in remove}
    out: list[bytes] = []
    fields = _split_fields(header)
    replaced = False
    for raw in fields:
        name = raw.split(b":", 1)[0].strip().lower()
        if name in names:
            continue
        if subject is not None and name == b"subject":
            if replaced:
                continue
            out.append(_header_line("Subject: " + subject))
            replaced = True
            continue
        out.append(raw)
    if subject is not None and not replaced:
        out.append(_header_line("Subject: " + subject))
    new_header = b"".join(out) + b"\r\n"
    return _rewrite(source, new_header, len(header), spool_dir)


def _split_fields(header: bytes) -> list[bytes]:
    """Header fields with their folded lines, without the blank line that ends the block."""
    fields: list[bytes] = []
    for line in header.split(b"\r\n")[:-1]:
        if not line:
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def cleanup_source(original: bytes | Path, final: bytes | Path | None) -> None:
    """Remove a spool copy the policy made (never the receiver's own file)."""
    if isinstance(final, Path) and final != original:
        with contextlib.suppress(OSError):
            final.unlink()
