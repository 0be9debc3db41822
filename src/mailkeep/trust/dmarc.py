"""DMARC (RFC 7489): policy records, policy discovery, identifier alignment and the
verdict on one message.

The pieces, in the order a receiver uses them:

- :func:`author_domains` finds the RFC5322.From domain(s) in the header (§6.6.1), with a
  defined outcome for every malformed case;
- :func:`discover_policy` finds the policy record (§6.6.3): ``_dmarc.<From domain>``,
  else ``_dmarc.<Organizational Domain>`` (§3.2, from the Public Suffix List shipped in the
  ``publicsuffixlist`` package), through our asynchronous resolver;
- :func:`parse_record` reads a record (§6.3, §6.4): permissive where the RFC says so
  (unknown tags ignored, bad optional values replaced by their defaults), with a defined
  result for everything else;
- :func:`evaluate` applies identifier alignment (§3.1) to the SPF and DKIM results and
  the record's policy, p= or sp= (§6.3), with pct= sampling (§6.6.4) through an
  injectable random source;
- :func:`check_message` does all of that for a message header, evaluating each author
  domain of a multi-address From and keeping the strictest failure (§6.6.1).

Results are those of RFC 7489 §11.2 for Authentication-Results: pass, fail, none,
temperror, permerror. The *disposition* is what the receiver should do: ``none``,
``quarantine`` (deliver to Junk) or ``reject``; it is only ever stricter than ``none`` for
a ``fail``. ``temperror`` leaves the choice to the caller (RFC 7489 §6.6.3 lets a receiver
defer the message).

A From header that breaks RFC 5322 (no From, several From fields, an address without a
domain) never hides a failing domain: every domain that can be found is evaluated and a
failure among them wins. :attr:`DmarcResult.from_problem` flags such headers; RFC 7489
§6.6.1 allows rejecting them.
"""

from __future__ import annotations

import asyncio
import random as random_module
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache
from urllib.parse import unquote

import dns.asyncresolver
from publicsuffixlist import PublicSuffixList

from mailkeep.config.names import InvalidName, canonical_domain
from mailkeep.dkim.sign import parse_header_fields
from mailkeep.mime.address_list import Group, parse_address_list
from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, query

#: Longest policy record parsed; DMARC records are a few hundred characters at most.
MAX_RECORD_BYTES = 4096
#: At most this many rua= / ruf= URIs are kept per tag (§6.2: receivers may limit them,
#: but must accept at least two).
MAX_REPORT_URIS = 8
#: Size limits on report URIs (``!10m``) with more digits than this are invalid.
MAX_SIZE_DIGITS = 15
#: At most this many distinct author domains of one From header are evaluated (each
#: costs up to two DNS lookups); more is a From problem (result permerror).
MAX_AUTHOR_DOMAINS = 8
#: Longest mailto address kept from a report URI (RFC 5321 §4.5.3.1.3 path limit).
MAX_REPORT_ADDRESS = 254
#: §6.3 ri= default: one aggregate report a day.
DEFAULT_REPORT_INTERVAL = 86400
_MAX_UINT32 = 2**32 - 1

# §6.4: dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31 ("DMARC1", exact).
_VERSION = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*\Z")
_TAG_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S")
_SIZE = re.compile(rf"([0-9]{{1,{MAX_SIZE_DIGITS}}})([kmgt]?)\Z", re.IGNORECASE)
# §6.2: the size units are powers of two.
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_WSP = " \t"


class DmarcStatus(StrEnum):
    """RFC 7489 §11.2 result values; equal to their names as strings."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class Policy(StrEnum):
    """Requested handling (§6.3 p=, sp=) and the disposition we apply."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


_STRICTNESS = {Policy.NONE: 0, Policy.QUARANTINE: 1, Policy.REJECT: 2}
# §6.6.4: a message not selected by pct= gets the next less strict policy.
_LESS_STRICT = {Policy.REJECT: Policy.QUARANTINE, Policy.QUARANTINE: Policy.NONE,
                Policy.NONE: Policy.NONE}


# -- records (§6.3, §6.4) ----------------------------------------------------------------


@dataclass(frozen=True)
class ReportUri:
    """One rua=/ruf= destination (§6.2). ``address`` is the mailto address (None for
    other schemes, kept but not used), ``max_bytes`` the size limit (None: no limit)."""

    uri: str
    address: str | None
    max_bytes: int | None


@dataclass(frozen=True)
class DmarcRecord:
    """A parsed policy record.

    ``problem`` is set when the record cannot be applied (not a DMARC record, no valid
    p= and no reporting address to fall back on: §6.6.3 step 6). ``warnings`` list the
    values that were ignored or replaced by their defaults (§6.3: syntax errors in the
    rest of the record are discarded in favour of defaults).
    """

    text: str
    policy: Policy | None = None
    subdomain_policy: Policy | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = DEFAULT_REPORT_INTERVAL
    rua: tuple[ReportUri, ...] = ()
    ruf: tuple[ReportUri, ...] = ()
    warnings: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None and self.policy is not None

    def policy_for(self, subdomain: bool) -> Policy:
        """p=, or sp= (when given) for a From domain below the one the record is at."""
        assert self.policy is not None
        if subdomain and self.subdomain_policy is not None:
            return self.subdomain_policy
        return self.policy


def is_dmarc_record(text: str | bytes) -> bool:
    """True if ``text`` starts with the v=DMARC1 tag (§6.6.3 step 2: others are discarded)."""
    value = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return bool(_VERSION.match(value.split(";", 1)[0]))


def _policy(value: str) -> Policy | None:
    try:
        return Policy(value.strip(_WSP).lower())
    except ValueError:
        return None


def _report_uris(value: str, tag: str, warnings: list[str]) -> tuple[ReportUri, ...]:
    """§6.4 dmarc-uri list: URI [ "!" size [unit] ], comma-separated."""
    uris: list[ReportUri] = []
    for piece in value.split(","):
        piece = piece.strip(_WSP)
        if not piece:
            continue
        if len(uris) == MAX_REPORT_URIS:
            warnings.append(f"{tag}: more than {MAX_REPORT_URIS} URIs; the rest ignored")
            break
        uri, max_bytes = piece, None
        if "!" in piece:  # "!" inside the URI itself must be percent-encoded (§6.4)
            uri, _, size = piece.rpartition("!")
            match = _SIZE.match(size)
            if match is None:
                warnings.append(f"{tag}: invalid size limit in {piece[:80]!r}; URI ignored")
                continue
            max_bytes = int(match.group(1)) * _UNITS[match.group(2).lower()]
        if not _URI_SCHEME.match(uri):
            warnings.append(f"{tag}: {uri[:80]!r} is not a URI; ignored")
            continue
        address = None
        if uri[:7].lower() == "mailto:":
            address = _mailto_address(uri[7:])
            if address is None:
                warnings.append(f"{tag}: {uri[:80]!r} is not a usable mailto URI; ignored")
                continue
        uris.append(ReportUri(uri, address, max_bytes))
    return tuple(uris)


def _mailto_address(rest: str) -> str | None:
    """The address of a mailto URI (RFC 6068): percent-decoded, domain canonical."""
    address = unquote(rest.split("?", 1)[0], errors="replace")
    local, at, domain = address.rpartition("@")
    if not at or not local or len(address) > MAX_REPORT_ADDRESS or any(
            c in address for c in " \t\r\n,;<>"):
        return None
    try:
        return f"{local}@{canonical_domain(domain)}"
    except InvalidName:
        return None


def parse_record(text: str | bytes) -> DmarcRecord:
    """Parse a DMARC policy record (RFC 7489 §6.3, §6.4); never raises.

    Tag names and keyword values are case-insensitive (ABNF strings), except the version
    "DMARC1". The first instance of a repeated tag counts (the others give a warning).
    """
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    if len(raw) > MAX_RECORD_BYTES:
        return DmarcRecord(text=raw[:MAX_RECORD_BYTES],
                           problem=f"record longer than {MAX_RECORD_BYTES} characters")
    parts = raw.split(";")
    if not _VERSION.match(parts[0]):
        return DmarcRecord(text=raw, problem="not a DMARC record (must start with v=DMARC1)")
    warnings: list[str] = []
    tags: dict[str, str] = {}
    for part in parts[1:]:
        if not part.strip(_WSP):
            continue
        name, equals, value = part.partition("=")
        name = name.strip(_WSP).lower()
        if not equals or not _TAG_NAME.match(name):
            warnings.append(f"malformed tag {part.strip(_WSP)[:40]!r} ignored")
            continue
        if name in tags:
            warnings.append(f"repeated tag {name}= ignored")
            continue
        tags[name] = value.strip(_WSP)

    modes = {"adkim": "r", "aspf": "r"}
    for name in modes:
        if name in tags:
            mode = tags[name].lower()
            if mode in ("r", "s"):
                modes[name] = mode
            else:
                warnings.append(f"invalid {name}={tags[name][:20]}; relaxed used")
    pct = 100
    if "pct" in tags:
        if re.fullmatch(r"[0-9]{1,3}", tags["pct"]) and int(tags["pct"]) <= 100:
            pct = int(tags["pct"])
        else:
            warnings.append(f"invalid pct={tags['pct'][:20]}; 100 used")
    fo: tuple[str, ...] = ("0",)
    if "fo" in tags:
        options = tuple(o.strip(_WSP).lower() for o in tags["fo"].split(":"))
        if all(o in ("0", "1", "d", "s") for o in options):
            fo = options
        else:
            warnings.append(f"invalid fo={tags['fo'][:20]}; 0 used")
    rf: tuple[str, ...] = ("afrf",)
    if "rf" in tags:
        formats = tuple(f.strip(_WSP).lower() for f in tags["rf"].split(":"))
        if "afrf" in formats:
            rf = formats
        else:
            warnings.append(f"invalid rf={tags['rf'][:20]}; afrf used")
    ri = DEFAULT_REPORT_INTERVAL
    if "ri" in tags:
        if re.fullmatch(r"[0-9]{1,10}", tags["ri"]) and int(tags["ri"]) <= _MAX_UINT32:
            ri = int(tags["ri"])
        else:
            warnings.append(f"invalid ri={tags['ri'][:20]}; {DEFAULT_REPORT_INTERVAL} used")
    rua = _report_uris(tags["rua"], "rua", warnings) if "rua" in tags else ()
    ruf = _report_uris(tags["ruf"], "ruf", warnings) if "ruf" in tags else ()

    policy = _policy(tags["p"]) if "p" in tags else None
    subdomain_policy = _policy(tags["sp"]) if "sp" in tags else None
    sp_invalid = "sp" in tags and subdomain_policy is None
    problem = None
    if policy is None or sp_invalid:
        what = ("no p= tag" if "p" not in tags else
                f"invalid p={tags['p'][:20]}" if policy is None else
                f"invalid sp={tags['sp'][:20]}")
        if rua:
            # §6.6.3 step 6: with a valid reporting URI, act as if p=none was published.
            warnings.append(f"{what}: treated as p=none because rua= is valid "
                            "(RFC 7489 §6.6.3)")
            policy, subdomain_policy = Policy.NONE, None
        else:
            problem = f"{what} (RFC 7489 §6.3) and no valid rua="
            policy = subdomain_policy = None
    return DmarcRecord(text=raw, policy=policy, subdomain_policy=subdomain_policy,
                       adkim=modes["adkim"], aspf=modes["aspf"], pct=pct, fo=fo, rf=rf,
                       ri=ri, rua=rua, ruf=ruf, warnings=tuple(warnings), problem=problem)


# -- organizational domains and alignment (§3.1, §3.2) -----------------------------------


@lru_cache(maxsize=1)
def _public_suffix_list() -> PublicSuffixList:
    # Loaded once, on first use (about 0.1 s): the list shipped with publicsuffixlist,
    # ICANN and private sections both (RFC 7489 §3.2 uses the list as published).
    return PublicSuffixList()


def normalize_domain(domain: str) -> str | None:
    """``domain`` in A-labels, lower case, without a final dot; None if it is not a
    domain name (an address literal, bad labels...)."""
    text = domain.strip().rstrip(".") if domain else ""
    if not text:
        return None
    try:
        return canonical_domain(text)
    except InvalidName:
        return None


def organizational_domain(domain: str) -> str:
    """The Organizational Domain (§3.2): the public suffix plus one label. A name that
    is itself a public suffix is its own organizational domain."""
    name = domain.lower().rstrip(".")
    return _public_suffix_list().privatesuffix(name) or name


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Identifier alignment (§3.1.1, §3.1.2): strict (``s``) needs the same name,
    relaxed (``r``) the same Organizational Domain."""
    left = normalize_domain(identifier)
    right = normalize_domain(from_domain)
    if left is None or right is None:
        return False
    if left == right:
        return True
    return mode != "s" and organizational_domain(left) == organizational_domain(right)


# -- policy discovery (§6.6.3) -----------------------------------------------------------


class DiscoveryStatus(StrEnum):
    FOUND = "found"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class PolicyDiscovery:
    """Where the policy for ``from_domain`` was found, if anywhere.

    ``record_domain`` is the domain whose ``_dmarc`` name held the record: the From
    domain itself or its organizational domain (then sp= applies, §6.3).
    """

    status: DiscoveryStatus
    from_domain: str
    organizational_domain: str = ""
    record: DmarcRecord | None = None
    record_domain: str = ""
    reason: str = ""


async def _dmarc_records(resolver: dns.asyncresolver.Resolver,
                         domain: str) -> list[str] | DnsTemporaryError:
    """The DMARC records at _dmarc.<domain> (others discarded, §6.6.3 step 2)."""
    try:
        answer = await query(resolver, f"_dmarc.{domain}", "TXT")
    except DnsTemporaryError as exc:
        return exc
    except DnsNameError:
        return []
    texts = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.records]
    return [text for text in texts if is_dmarc_record(text)]


async def discover_policy(from_domain: str, *,
                          resolver: dns.asyncresolver.Resolver) -> PolicyDiscovery:
    """Find the DMARC record for ``from_domain`` (RFC 7489 §6.6.3). At most two lookups."""
    domain = normalize_domain(from_domain)
    if domain is None:
        return PolicyDiscovery(DiscoveryStatus.PERMERROR, from_domain,
                               reason=f"author domain {from_domain[:80]!r} is not a domain name")
    org = organizational_domain(domain)
    for candidate in (domain, org) if org != domain else (domain,):
        found = await _dmarc_records(resolver, candidate)
        if isinstance(found, DnsTemporaryError):
            return PolicyDiscovery(DiscoveryStatus.TEMPERROR, domain, org,
                                   reason=f"policy lookup failed: {found}")
        if not found:
            continue  # §6.6.3 step 3: none here, ask the organizational domain
        if len(found) > 1:
            # Step 5: several records end discovery; no DMARC processing.
            return PolicyDiscovery(DiscoveryStatus.PERMERROR, domain, org,
                                   record_domain=candidate,
                                   reason=f"{len(found)} DMARC records at _dmarc.{candidate}")
        record = parse_record(found[0])
        if not record.usable:
            return PolicyDiscovery(DiscoveryStatus.PERMERROR, domain, org, record, candidate,
                                   reason=f"_dmarc.{candidate}: {record.problem}")
        return PolicyDiscovery(DiscoveryStatus.FOUND, domain, org, record, candidate)
    return PolicyDiscovery(DiscoveryStatus.NONE, domain, org,
                           reason=f"no DMARC record for {domain}")


# -- evaluation (§6.6.2, §6.6.4) ----------------------------------------------------------


@dataclass(frozen=True)
class DmarcResult:
    """The DMARC verdict on a message.

    ``policy`` is what the domain asks for (p= or sp=), ``disposition`` what to apply
    (after pct= sampling: ``sampled_out`` says the policy was relaxed one step).
    ``aligned_dkim_domains`` are the d= domains that passed and aligned.
    """

    result: DmarcStatus
    from_domain: str
    policy: Policy = Policy.NONE
    disposition: Policy = Policy.NONE
    record_domain: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    aligned_dkim_domains: tuple[str, ...] = ()
    sampled_out: bool = False
    from_problem: bool = False
    reasons: tuple[str, ...] = ()
    record: DmarcRecord | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def evaluate(from_domain: str, spf: tuple[str, str] | None,
             dkim: Iterable[tuple[str, str]], policy: PolicyDiscovery, *,
             random: Callable[[], float] | None = None) -> DmarcResult:
    """The DMARC result for one author domain (RFC 7489 §6.6.2).

    ``spf`` is ``(result, domain)`` of the SPF check of the MAIL FROM domain (or of the
    HELO domain when MAIL FROM was empty), None when SPF was not checked; ``dkim`` the
    ``(result, d= domain)`` of each DKIM signature (see
    :func:`mailkeep.trust.dkim_verify.dmarc_inputs`). ``policy`` comes from
    :func:`discover_policy`. ``random`` returns a float in [0, 1) for pct= sampling
    (default :func:`random.random`); it is only called when pct is below 100.
    """
    domain = normalize_domain(from_domain) or from_domain
    record = policy.record if policy.status == DiscoveryStatus.FOUND else None
    adkim = record.adkim if record else "r"
    aspf = record.aspf if record else "r"
    reasons: list[str] = []
    spf_aligned = False
    if spf is not None:
        spf_result, spf_domain = spf
        if str(spf_result).lower() == "pass":
            spf_aligned = aligned(spf_domain, domain, aspf)
            reasons.append(f"SPF pass for {spf_domain} " +
                           ("aligned" if spf_aligned else f"not aligned (aspf={aspf})"))
    aligned_domains = []
    for dkim_result, dkim_domain in dkim:
        if (str(dkim_result).lower() == "pass" and aligned(dkim_domain, domain, adkim)
                and dkim_domain.lower() not in aligned_domains):
            aligned_domains.append(dkim_domain.lower())
    if aligned_domains:
        reasons.append("DKIM pass aligned: " + ", ".join(aligned_domains))
    common = {"from_domain": domain, "spf_aligned": spf_aligned,
              "dkim_aligned": bool(aligned_domains),
              "aligned_dkim_domains": tuple(aligned_domains),
              "record_domain": policy.record_domain, "record": policy.record}
    if policy.status != DiscoveryStatus.FOUND or record is None:
        status = {DiscoveryStatus.NONE: DmarcStatus.NONE,
                  DiscoveryStatus.TEMPERROR: DmarcStatus.TEMPERROR}.get(
                      policy.status, DmarcStatus.PERMERROR)
        return DmarcResult(result=status, reasons=(policy.reason, *reasons), **common)
    requested = record.policy_for(subdomain=policy.record_domain != domain)
    if spf_aligned or aligned_domains:
        return DmarcResult(result=DmarcStatus.PASS, policy=requested, reasons=tuple(reasons),
                           **common)
    reasons.append("no aligned SPF or DKIM pass")
    disposition, sampled_out = requested, False
    if record.pct < 100 and requested != Policy.NONE:
        draw = (random or random_module.random)()
        if draw * 100 >= record.pct:
            # §6.6.4: not selected; apply the next less strict policy.
            disposition, sampled_out = _LESS_STRICT[requested], True
            reasons.append(f"pct={record.pct}: not sampled, {requested} relaxed to "
                           f"{disposition}")
    return DmarcResult(result=DmarcStatus.FAIL, policy=requested, disposition=disposition,
                       sampled_out=sampled_out, reasons=tuple(reasons), **common)


# -- the From header (§6.6.1) and whole messages -----------------------------------------


@dataclass(frozen=True)
class AuthorDomains:
    """The author domains of a header, and what is wrong with its From, if anything."""

    domains: tuple[str, ...]
    problem: str | None = None


def author_domains(header_block: bytes) -> AuthorDomains:
    """The distinct RFC5322.From domains (§6.6.1) of ``header_block``; never raises.

    Every From field is read, so that a second From or a malformed address cannot hide a
    domain; ``problem`` says what breaks RFC 5322 §3.6 (which wants exactly one From).
    """
    values = [value for name, value in parse_header_fields(header_block)
              if name.lower() == b"from"]
    problems = []
    if not values:
        return AuthorDomains((), "no From header field (RFC 5322 §3.6)")
    if len(values) > 1:
        problems.append(f"{len(values)} From header fields (RFC 5322 §3.6 allows one)")
    domains: list[str] = []
    for value in values:
        entries = parse_address_list(value)
        mailboxes = [m for entry in entries
                     for m in (entry.members if isinstance(entry, Group) else (entry,))]
        if not mailboxes:
            problems.append("a From field without an address")
        for mailbox in mailboxes:
            raw = (mailbox.domain or b"").decode("utf-8", "replace")
            domain = normalize_domain(raw) if raw else None
            if domain is None:
                problems.append(f"From address without a usable domain "
                                f"({mailbox.addr_spec[:80].decode('utf-8', 'replace')!r})")
                continue
            if domain not in domains:
                domains.append(domain)
    if len(domains) > MAX_AUTHOR_DOMAINS:
        problems.append(f"more than {MAX_AUTHOR_DOMAINS} author domains")
    return AuthorDomains(tuple(domains), "; ".join(problems) or None)


def combine(results: Sequence[DmarcResult]) -> DmarcResult:
    """One result for several author domains (§6.6.1): the strictest failure if any,
    else temperror, else permerror, else pass, else none."""
    if not results:
        raise ValueError("no results to combine")
    failures = [r for r in results if r.result == DmarcStatus.FAIL]
    if failures:
        return max(failures, key=lambda r: (_STRICTNESS[r.disposition], _STRICTNESS[r.policy]))
    for status in (DmarcStatus.TEMPERROR, DmarcStatus.PERMERROR, DmarcStatus.PASS):
        for result in results:
            if result.result == status:
                return result
    return results[0]


async def check_message(header_block: bytes, spf: tuple[str, str] | None,
                        dkim: Iterable[tuple[str, str]], *,
                        resolver: dns.asyncresolver.Resolver,
                        random: Callable[[], float] | None = None,
                        discover: Callable[[str], Awaitable[PolicyDiscovery]] | None = None,
                        ) -> DmarcResult:
    """DMARC for a message: author domains, policy discovery and evaluation for each
    (concurrently), combined (§6.6.1). Never raises for anything in the header or DNS.

    ``discover`` replaces :func:`discover_policy` (a receiver's cache of discoveries).

    With no usable author domain, or more than :data:`MAX_AUTHOR_DOMAINS`, the result is
    permerror with ``from_problem`` set; any other From problem is flagged the same way
    on the combined result.
    """
    authors = author_domains(header_block)
    dkim_pairs = list(dkim)
    if not authors.domains or len(authors.domains) > MAX_AUTHOR_DOMAINS:
        return DmarcResult(result=DmarcStatus.PERMERROR, from_domain="", from_problem=True,
                           reasons=(authors.problem or "no author domain",))
    if discover is None:
        async def discover(domain: str) -> PolicyDiscovery:
            return await discover_policy(domain, resolver=resolver)
    discoveries = await asyncio.gather(*(discover(d) for d in authors.domains))
    results = [evaluate(domain, spf, dkim_pairs, found, random=random)
               for domain, found in zip(authors.domains, discoveries, strict=True)]
    chosen = combine(results)
    if authors.problem:
        chosen = replace(chosen, from_problem=True,
                         reasons=(*chosen.reasons, f"From problem: {authors.problem}"))
    return chosen


__all__ = [
    "DEFAULT_REPORT_INTERVAL", "MAX_AUTHOR_DOMAINS", "MAX_RECORD_BYTES", "MAX_REPORT_URIS",
    "AuthorDomains", "DiscoveryStatus", "DmarcRecord", "DmarcResult", "DmarcStatus",
    "Policy", "PolicyDiscovery", "ReportUri", "aligned", "author_domains", "check_message",
    "combine", "discover_policy", "evaluate", "is_dmarc_record", "normalize_domain",
    "organizational_domain", "parse_record",
]
