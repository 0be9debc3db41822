"""ARC verification of received mail (RFC 8617, the Authenticated Received Chain).

A forwarder or mailing list that changes a message breaks its DKIM signatures and SPF,
and so its DMARC. ARC lets each intermediary record what it verified
(ARC-Authentication-Results, AAR), sign the message as it passes it on
(ARC-Message-Signature, AMS) and seal the chain of those records so far (ARC-Seal, AS).
A receiver that trusts a sealer can then use the sealer's record in a DMARC decision
(RFC 8617 §7.2): :attr:`ArcResult.oldest_pass` and the per-instance domains and AAR
payloads are what such a local policy needs.

:func:`verify_arc` implements the validator actions of §5.2, in order:

1. collect the ARC header fields; none gives ``none``; more than 50 sets gives ``fail``;
2. a chain whose newest ARC-Seal says ``cv=fail`` is ``fail``;
3. structure: exactly one AAR, AMS and AS per instance, instances 1..N without gaps,
   ``cv=none`` at instance 1 and ``cv=pass`` above it (§5.2 step 3);
4. the newest AMS must verify (like a DKIM signature, §4.1.2, §5.1.2);
5. oldest-pass: the AMS of older sets are verified from N-1 down; ``oldest_pass`` is the
   instance above the first that fails, or 0 when every AMS verifies (§5.2 step 5,
   the ``header.oldest-pass`` property of §10.1);
6. every ARC-Seal must verify, N down to 1 (§5.1.1);
7. otherwise the chain passes.

The division of labour: Mailkeep parses the fields, applies every rule above, selects and
canonicalizes the header fields each signature covers (RFC 6376 §3.4, §5.4.2; the seal
always with "relaxed", RFC 8617 §5.1.1), computes the body hashes in a stream with the
DKIM verifier's hasher (:mod:`mailkeep.trust.dkim_verify`), fetches the keys through our
own resolver (:mod:`mailkeep.outbound.dns`), and checks the RSA signatures with
``cryptography``. dkimpy is not used here (tests use its independent signer).

RFC 8601 registers only ``none``, ``pass`` and ``fail`` for ``arc=`` (RFC 8617 §10.1),
so a key lookup that failed temporarily, or an unreadable spool file, gives ``fail`` with
:attr:`ArcResult.temporary` set: the caller may defer instead of trusting nothing.

Choices where the RFC leaves room, each documented in docs/trust.md:

- only ``a=rsa-sha256`` is accepted (the one algorithm ARC sealers use; RFC 8301 keeps
  rsa-sha1 out); any other algorithm makes that signature fail;
- the AMS follows DKIM-Signature semantics (§4.1.2): From must be signed, ``x=`` expiry
  is honoured, ``c=`` defaults to simple/simple, ``l=`` limits the body hash; an AMS that
  signs ARC-Seal fields fails (§4.1.2);
- an ARC-Seal with an ``h=`` tag fails (§4.1.3);
- keys follow the DKIM key rules (RFC 6376 §3.6.1, RFC 8301 §3.2 sizes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import dns.asyncresolver
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailkeep.config.names import InvalidName, canonical_domain
from mailkeep.dkim.canon import relaxed_header
from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, query
from mailkeep.trust import authres
from mailkeep.trust.dkim_verify import (
    INLINE_VERIFY_BYTES,
    MAX_HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_RSA_BITS,
    MAX_RSA_EXPONENT_BITS,
    MIN_RSA_BITS,
    DkimLimits,
    DkimStatus,
    KeyRecordError,
    LoadedMessage,
    MessageError,
    TagListError,
    load_message,
    parse_key_record,
    parse_tag_list,
)
from mailkeep.trust.dkim_verify import hash_body as hash_bodies

#: RFC 8617 §4.2.1 and §5.2 step 1: at most 50 ARC sets; more make the chain fail.
MAX_INSTANCES = 50
#: Most header fields a verified message may have (result ``none`` beyond): selecting
#: the fields a signature covers costs time in proportion to (fields x h= entries).
MAX_HEADER_FIELDS = 2000
#: Most entries in one AMS h= tag (as for DKIM-Signature).
MAX_SIGNED_HEADER_NAMES = 256
#: Most distinct keys (selector, domain) looked up for one chain; a chain naming more
#: fails. Real chains have one key per hop and rarely more than five hops.
MAX_KEY_LOOKUPS = 16
#: Seconds all key lookups of one message may take together (the resolver's own timeout
#: bounds each one); beyond it the chain fails, marked temporary.
LOOKUP_BUDGET = 20.0
#: Seconds of clock difference tolerated for an AMS x= (expiry).
CLOCK_SKEW = 300
#: Longest reason text kept from a field (for logs and the Authentication-Results field).
MAX_REASON_CHARS = 200

ARC_SEAL = b"arc-seal"
ARC_MESSAGE_SIGNATURE = b"arc-message-signature"
ARC_AUTHENTICATION_RESULTS = b"arc-authentication-results"
_ARC_NAMES = {ARC_AUTHENTICATION_RESULTS: "aar", ARC_MESSAGE_SIGNATURE: "ams", ARC_SEAL: "as"}
#: §5.1.1: within an ARC set the seal covers AAR, then AMS, then AS.
_SET_ORDER = ("aar", "ams", "as")
_FIELD_TITLES = {"aar": "ARC-Authentication-Results", "ams": "ARC-Message-Signature",
                 "as": "ARC-Seal"}

# §4.1.1 arc-info: instance [CFWS] ";" authres-payload, instance = "i" "=" 1*2DIGIT.
# Three digits are read so that "i=100" is recognised as too large rather than malformed.
_AAR_INSTANCE = re.compile(rb"[ \t\r\n]*i[ \t\r\n]*=[ \t\r\n]*([0-9]{1,3})[ \t\r\n]*;")
_INSTANCE_VALUE = re.compile(rb"[0-9]{1,3}\Z")
_DIGITS = re.compile(rb"[0-9]{1,76}\Z")
_FWS_BYTES = b" \t\r\n"
_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}\Z")
# RFC 6376 §3.1 selector (underscores tolerated as seen in the wild).
_SELECTOR = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       rb"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\Z")
# RFC 5322 §3.6.8 field name: printable ASCII except ":"; obsolete WSP before the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*\Z")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")

_log = logging.getLogger(__name__)
_ANY_ARC_FIELD = re.compile(rb"(?im)^arc-(?:seal|message-signature|authentication-results)"
                            rb"[ \t]*:")


class ArcStatus(StrEnum):
    """RFC 8617 §10.1 (``arc=`` in Authentication-Results); equal to their names."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True)
class ArcLimits:
    """The limits of one verification; the defaults are the module constants."""

    max_instances: int = MAX_INSTANCES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    max_header_fields: int = MAX_HEADER_FIELDS
    max_key_lookups: int = MAX_KEY_LOOKUPS
    lookup_budget: float = LOOKUP_BUDGET
    min_rsa_bits: int = MIN_RSA_BITS
    max_rsa_bits: int = MAX_RSA_BITS
    clock_skew: int = CLOCK_SKEW


DEFAULT_LIMITS = ArcLimits()


@dataclass(frozen=True)
class ArcSet:
    """What one ARC set (one instance) says and whether its signatures verified.

    ``seal_domain``/``seal_selector`` are the ARC-Seal's d= and s= (the sealer),
    ``signature_domain``/``signature_selector`` the AMS's. ``authserv_id`` and
    ``authentication_results`` come from the AAR: the sealer's authserv-id and its whole
    payload (unfolded), e.g. ``"lists.example.org; dkim=pass header.d=example.com"``.
    ``signature_valid``/``seal_valid`` are None when that check was not reached.
    """

    instance: int
    cv: str = ""
    seal_domain: str = ""
    seal_selector: str = ""
    signature_domain: str = ""
    signature_selector: str = ""
    authserv_id: str = ""
    authentication_results: str = ""
    signature_valid: bool | None = None
    seal_valid: bool | None = None


@dataclass(frozen=True)
class ArcResult:
    """The chain validation status of a message (RFC 8617 §5.2).

    ``instances`` is N (the highest instance; 0 without ARC). ``failed_instance`` is the
    instance whose field made the chain fail, when one did. ``oldest_pass`` is set for a
    ``pass``: 0 when every AMS verified, else the lowest instance from which all AMS up
    to N verify (§5.2 step 5). ``sets`` describe instances 1..N (empty when the chain
    could not be parsed). ``temporary`` marks a ``fail`` caused by DNS or I/O trouble
    rather than by the message.
    """

    result: ArcStatus
    instances: int = 0
    failed_instance: int | None = None
    reason: str = ""
    oldest_pass: int | None = None
    sets: tuple[ArcSet, ...] = ()
    temporary: bool = False

    @property
    def domains(self) -> tuple[str, ...]:
        """The sealers' domains (ARC-Seal d=), instance 1 first."""
        return tuple(s.seal_domain for s in self.sets)

    @property
    def oldest_valid_instance(self) -> int | None:
        """The lowest instance whose AMS (and every newer one) verified, for a pass."""
        if self.oldest_pass is None:
            return None
        return self.oldest_pass or 1


# -- header fields -------------------------------------------------------------------------


class _Malformed(Exception):
    pass


class _TooManyFields(Exception):
    pass


def _split_fields(header_block: bytes, max_fields: int) -> list[tuple[bytes, bytes]]:
    """``(name as written, value after the colon with its CRLF)`` for every field.

    Bare LFs count as CRLF (as the DKIM verifier treats them). Raises _Malformed for a
    line that is neither a field nor a continuation, _TooManyFields beyond ``max_fields``.
    """
    if _BARE_LF.search(header_block):
        header_block = _BARE_LF.sub(b"\r\n", header_block)
    fields: list[list[bytes]] = []
    for match in _LINE.finditer(header_block):
        line = match.group()
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise _Malformed("the header starts with a continuation line")
            fields[-1][1] += line
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.match(name):
            raise _Malformed("a header line is not a field")
        fields.append([name, value])
        if len(fields) > max_fields:
            raise _TooManyFields(f"more than {max_fields} header fields")
    return [(name, value) for name, value in fields]


def _field_key(name: bytes) -> bytes:
    return name.rstrip(b" \t").lower()


def _canonical(name: bytes, value: bytes, canon: str) -> bytes:
    """RFC 6376 §3.4.1 (simple: as is) or §3.4.2 (relaxed) form, CRLF-terminated."""
    if canon == "relaxed":
        return relaxed_header(name, value)
    return name + b":" + value


def _without_b_value(value: bytes) -> bytes:
    """The field value with the b= tag's value and its surrounding white space deleted
    (RFC 6376 §3.7; RFC 8617 §5.1.1 and §5.1.2 use the same rule). Tag values cannot
    contain ";", so splitting on it finds the tag exactly."""
    specs = value.split(b";")
    for position, spec in enumerate(specs):
        name, equals, _rest = spec.partition(b"=")
        if equals and name.strip(_FWS_BYTES) == b"b":
            specs[position] = name + b"="
    return b";".join(specs)


def _signature_input(name: bytes, value: bytes, canon: str) -> bytes:
    """The signature's own field as hashed: b= emptied, no final CRLF (RFC 6376 §3.7)."""
    data = _canonical(name, _without_b_value(value), canon)
    return data[:-2] if data.endswith(b"\r\n") else data


def _select(fields: Sequence[tuple[bytes, bytes]], names: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
    """RFC 6376 §5.4.2: each name in h= takes the next instance of that field from the
    bottom; a name with no (further) instance contributes nothing."""
    keys = [_field_key(n) for n, _v in fields]
    next_from: dict[bytes, int] = {}
    chosen = []
    for wanted in names:
        position = next_from.get(wanted, len(fields))
        while position > 0:
            position -= 1
            if keys[position] == wanted:
                chosen.append(fields[position])
                break
        next_from[wanted] = position
    return chosen


def _b64decode(value: bytes) -> bytes | None:
    compact = _WHITESPACE.sub(b"", value)
    if not compact or not _BASE64.match(compact) or len(compact) % 4:
        return None
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


def _text(value: bytes, limit: int = MAX_REASON_CHARS) -> str:
    return value.decode("ascii", "replace")[:limit]


# -- the chain -----------------------------------------------------------------------------


@dataclass
class _Member:
    """One ARC header field."""

    kind: str                   # "aar", "ams" or "as"
    position: int               # index among all header fields
    name: bytes
    value: bytes
    instance: int | None = None
    tags: dict[str, bytes] = field(default_factory=dict)
    problem: str = ""           # why it cannot be used (a structural failure)


@dataclass
class _Signed:
    """An AMS or AS ready for verification, or the reason it cannot verify."""

    member: _Member
    domain: str = ""
    selector: str = ""
    canon_header: str = "relaxed"
    canon_body: str = "simple"
    signed_names: list[bytes] = field(default_factory=list)
    body_hash: bytes = b""
    length: int | None = None
    signature: bytes = b""
    invalid: str = ""

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def body_spec(self) -> tuple[str, str, int | None]:
        return (self.canon_body, "sha256", self.length)


class _ChainFail(Exception):
    def __init__(self, reason: str, instance: int | None = None, *, temporary: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.instance = instance
        self.temporary = temporary


def _members(fields: Sequence[tuple[bytes, bytes]]) -> list[_Member]:
    members = []
    for position, (name, value) in enumerate(fields):
        kind = _ARC_NAMES.get(_field_key(name))
        if kind is None:
            continue
        member = _Member(kind, position, name, value)
        title = _FIELD_TITLES[kind]
        if kind == "aar":
            match = _AAR_INSTANCE.match(value)
            if match is None:
                member.problem = f"{title} without a leading i= instance"
            else:
                member.instance = int(match.group(1))
        else:
            try:
                member.tags = parse_tag_list(value)
            except TagListError as exc:
                member.problem = f"malformed {title}: {exc}"
            else:
                raw = member.tags.get("i", b"")
                if _INSTANCE_VALUE.match(raw):
                    member.instance = int(raw)
                else:
                    member.problem = f"{title} without a valid i= instance"
        members.append(member)
    return members


def _structure(members: list[_Member], limits: ArcLimits) -> dict[int, dict[str, _Member]]:
    """Steps 1 to 3 of RFC 8617 §5.2; the sets by instance, or _ChainFail."""
    highest = max((m.instance for m in members if m.instance is not None), default=0)
    # Step 1: more sets than allowed (counted by instance, or by fields when the
    # instances are unreadable) end the validation.
    if highest > limits.max_instances or len(members) > 3 * limits.max_instances:
        raise _ChainFail(f"more than {limits.max_instances} ARC sets (highest instance "
                         f"i={highest}, {len(members)} ARC fields; RFC 8617 §5.2 step 1)")
    # Step 2: the newest sealer already saw a failed chain.
    newest_seals = [m for m in members if m.kind == "as" and m.instance == highest]
    if len(newest_seals) == 1 and newest_seals[0].tags.get("cv", b"").strip() == b"fail":
        raise _ChainFail(f"ARC-Seal i={highest} reports cv=fail: the chain failed before "
                         "it reached us", highest)
    # Step 3: exactly one AAR, AMS and AS per instance 1..N.
    for member in members:
        if member.problem:
            raise _ChainFail(member.problem, member.instance)
    sets: dict[int, dict[str, _Member]] = {}
    for member in members:
        assert member.instance is not None
        if not 1 <= member.instance <= limits.max_instances:
            raise _ChainFail(f"{_FIELD_TITLES[member.kind]} has instance i={member.instance}"
                             " outside 1..50 (RFC 8617 §4.2.1)", member.instance)
        slot = sets.setdefault(member.instance, {})
        if member.kind in slot:
            raise _ChainFail(f"two {_FIELD_TITLES[member.kind]} fields with i={member.instance}",
                             member.instance)
        slot[member.kind] = member
    for instance in range(1, highest + 1):
        slot = sets.get(instance, {})
        if not slot:
            raise _ChainFail(f"ARC set i={instance} is missing (instances must run 1..{highest}"
                             " without gaps)", instance)
        for kind in _SET_ORDER:
            if kind not in slot:
                raise _ChainFail(f"ARC set i={instance} has no {_FIELD_TITLES[kind]}", instance)
        cv = slot["as"].tags.get("cv", b"").strip()
        wanted = b"none" if instance == 1 else b"pass"
        if cv != wanted:
            raise _ChainFail(f"ARC-Seal i={instance} has cv={_text(cv, 20)}; it must be "
                             f"{wanted.decode()} (RFC 8617 §5.2 step 3)", instance)
    return sets


def _signed(member: _Member, now: int, limits: ArcLimits) -> _Signed:
    """Parse an AMS or AS for verification; ``invalid`` says why it cannot verify."""
    tags = member.tags
    signed = _Signed(member)
    title = _FIELD_TITLES[member.kind]
    required = ("a", "b", "bh", "d", "h", "s") if member.kind == "ams" else ("a", "b", "d", "s")
    missing = [name for name in required if name not in tags]
    if missing:
        signed.invalid = f"{title} lacks " + ", ".join(f"{m}=" for m in missing)
        return signed
    try:
        signed.domain = canonical_domain(_text(tags["d"]))
    except InvalidName:
        signed.invalid = f"{title} d={_text(tags['d'], 80)} is not a domain name"
        return signed
    if not _SELECTOR.match(tags["s"]):
        signed.invalid = f"{title} s={_text(tags['s'], 80)} is not a valid selector"
        return signed
    signed.selector = _text(tags["s"]).lower()
    algorithm = _text(tags["a"], 40).lower()
    if algorithm != "rsa-sha256":
        signed.invalid = f"{title} uses a={algorithm}; only rsa-sha256 is accepted"
        return signed
    signature = _b64decode(tags["b"])
    if signature is None:
        signed.invalid = f"{title} b= is not valid base64"
        return signed
    signed.signature = signature
    if member.kind == "as":
        if "h" in tags:
            signed.invalid = "ARC-Seal has an h= tag (RFC 8617 §4.1.3 forbids it)"
        return signed
    canon = _text(tags.get("c", b"simple/simple"), 40).lower()
    header_canon, _, body_canon = canon.partition("/")
    body_canon = body_canon or "simple"
    if header_canon not in ("simple", "relaxed") or body_canon not in ("simple", "relaxed"):
        signed.invalid = f"ARC-Message-Signature has unknown c={canon}"
        return signed
    signed.canon_header, signed.canon_body = header_canon, body_canon
    names = [part.strip(_FWS_BYTES).lower() for part in tags["h"].split(b":")]
    if not all(names) or len(names) > MAX_SIGNED_HEADER_NAMES:
        signed.invalid = "ARC-Message-Signature h= is empty, has an empty name or too many"
        return signed
    if ARC_SEAL in names:
        signed.invalid = "ARC-Message-Signature signs ARC-Seal (RFC 8617 §4.1.2 forbids it)"
        return signed
    if b"from" not in names:
        signed.invalid = "ARC-Message-Signature does not sign From (RFC 6376 §6.1.1)"
        return signed
    signed.signed_names = names
    body_hash = _b64decode(tags["bh"])
    if body_hash is None:
        signed.invalid = "ARC-Message-Signature bh= is not valid base64"
        return signed
    signed.body_hash = body_hash
    if "l" in tags:
        if not _DIGITS.match(tags["l"]):
            signed.invalid = "ARC-Message-Signature l= is not a number"
            return signed
        signed.length = int(tags["l"])
    if "x" in tags:
        if not _DIGITS.match(tags["x"]):
            signed.invalid = "ARC-Message-Signature x= is not a number"
            return signed
        if int(tags["x"]) < now - limits.clock_skew:
            signed.invalid = "ARC-Message-Signature expired (x=)"
    return signed


# -- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    public_key: rsa.RSAPublicKey | None
    error: str = ""
    temporary: bool = False


def _usable_key(text: bytes, limits: ArcLimits) -> _Key:
    """The RSA key of a DKIM key record (RFC 6376 §3.6.1, §6.1.2; RFC 8301 §3.2)."""
    record = parse_key_record(text)
    if record.revoked:
        raise KeyRecordError("key revoked (empty p=)")
    if record.key_type != "rsa":
        raise KeyRecordError(f"key type k={record.key_type} cannot verify rsa-sha256")
    if record.hashes is not None and "sha256" not in record.hashes:
        raise KeyRecordError("key does not allow sha256 (h= of the key)")
    if not {"*", "email"} & set(record.services):
        raise KeyRecordError("key is not for email (s= of the key)")
    try:
        key = serialization.load_der_public_key(record.public_key)
    except Exception as exc:  # cryptography raises several types for malformed DER
        raise KeyRecordError(f"unreadable RSA public key ({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyRecordError("p= does not hold an RSA public key")
    if key.public_numbers().e.bit_length() > MAX_RSA_EXPONENT_BITS:
        raise KeyRecordError("RSA public exponent too large")
    if not limits.min_rsa_bits <= key.key_size <= limits.max_rsa_bits:
        raise KeyRecordError(f"RSA key of {key.key_size} bits is outside "
                             f"{limits.min_rsa_bits}..{limits.max_rsa_bits} (RFC 8301 §3.2)")
    return _Key(key)


async def _fetch_key(resolver: dns.asyncresolver.Resolver, name: str, limits: ArcLimits) -> _Key:
    try:
        answer = await query(resolver, name, "TXT")
    except DnsTemporaryError as exc:
        return _Key(None, f"key lookup failed: {exc}", temporary=True)
    except DnsNameError:
        return _Key(None, f"no key record at {name}")
    records = [b"".join(rdata.strings) for rdata in answer.records]
    first_error = f"no key record at {name}"
    # RFC 6376 §6.1.2: with several records the verifier may choose; the first usable wins.
    for index, text in enumerate(records):
        try:
            return _usable_key(text, limits)
        except KeyRecordError as exc:
            if index == 0:
                first_error = f"{name}: {exc}"
    return _Key(None, first_error)


async def _fetch_keys(resolver: dns.asyncresolver.Resolver, names: Iterable[str],
                      limits: ArcLimits) -> dict[str, _Key]:
    wanted = sorted(set(names))
    if not wanted:
        return {}
    try:
        async with asyncio.timeout(limits.lookup_budget):
            found = await asyncio.gather(*(_fetch_key(resolver, n, limits) for n in wanted))
    except TimeoutError:
        slow = _Key(None, f"key lookups took more than {limits.lookup_budget:g}s",
                    temporary=True)
        return dict.fromkeys(wanted, slow)
    return dict(zip(wanted, found, strict=True))


# -- signatures ----------------------------------------------------------------------------


def _rsa_verifies(key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    except Exception as exc:  # the crypto library on hostile input: nothing may escape
        _log.warning("RSA verification raised %r; counted as not verified", exc)
        return False
    return True


def _check_ams(signed: _Signed, fields: Sequence[tuple[bytes, bytes]],
               bodies: dict[tuple[str, str, int | None], tuple[bytes, int]],
               keys: dict[str, _Key]) -> tuple[bool, str, bool]:
    """RFC 8617 §5.1.2 (DKIM verification, RFC 6376 §6.1.3); (valid, why not, temporary)."""
    if signed.invalid:
        return False, signed.invalid, False
    key = keys[signed.key_name]
    if key.public_key is None:
        return False, key.error, key.temporary
    digest, total = bodies[signed.body_spec]
    if signed.length is not None and signed.length > total:
        return False, f"AMS l={signed.length} is more than the {total} body octets", False
    if digest != signed.body_hash:
        return False, "body hash mismatch (the body changed after this hop)", False
    member = signed.member
    data = b"".join(_canonical(n, v, signed.canon_header)
                    for n, v in _select(fields, signed.signed_names))
    data += _signature_input(member.name, member.value, signed.canon_header)
    if not _rsa_verifies(key.public_key, signed.signature, data):
        return False, "signature did not verify (signed header fields changed or wrong key)", \
            False
    return True, "", False


def _check_seal(signed: _Signed, sets: dict[int, dict[str, _Member]],
                keys: dict[str, _Key]) -> tuple[bool, str, bool]:
    """RFC 8617 §5.1.1: the seal of instance k covers sets 1..k, each in AAR, AMS, AS order,
    relaxed canonicalization, its own b= emptied."""
    if signed.invalid:
        return False, signed.invalid, False
    key = keys[signed.key_name]
    if key.public_key is None:
        return False, key.error, key.temporary
    own = signed.member
    assert own.instance is not None
    parts = []
    for instance in range(1, own.instance + 1):
        for kind in _SET_ORDER:
            member = sets[instance][kind]
            if member is own:
                parts.append(_signature_input(member.name, member.value, "relaxed"))
            else:
                parts.append(relaxed_header(member.name, member.value))
    if not _rsa_verifies(key.public_key, signed.signature, b"".join(parts)):
        return False, "seal did not verify (an ARC field changed or wrong key)", False
    return True, "", False


# -- verification ----------------------------------------------------------------------------


def _set_info(sets: dict[int, dict[str, _Member]], instance: int,
              signatures: dict[int, _Signed], seals: dict[int, _Signed],
              ams_valid: dict[int, bool], as_valid: dict[int, bool]) -> ArcSet:
    slot = sets[instance]
    payload = slot["aar"].value
    match = _AAR_INSTANCE.match(payload)
    text = authres.unfold(payload[match.end():] if match else payload).strip()
    parsed = authres.parse(text)
    return ArcSet(
        instance=instance,
        cv=_text(slot["as"].tags.get("cv", b""), 20).strip(),
        seal_domain=seals[instance].domain or _text(slot["as"].tags.get("d", b""), 253).lower(),
        seal_selector=seals[instance].selector,
        signature_domain=(signatures[instance].domain
                          or _text(slot["ams"].tags.get("d", b""), 253).lower()),
        signature_selector=signatures[instance].selector,
        authserv_id=parsed.authserv_id if parsed is not None else "",
        authentication_results=text[:authres.MAX_PARSE_CHARS],
        signature_valid=ams_valid.get(instance),
        seal_valid=as_valid.get(instance),
    )


def _clean(reason: str) -> str:
    return reason[:MAX_REASON_CHARS]


async def verify_arc(message: bytes | Path, *, resolver: dns.asyncresolver.Resolver,
                     limits: ArcLimits = DEFAULT_LIMITS, now: float | None = None) -> ArcResult:
    """Validate the ARC chain of ``message`` (RFC 8617 §5.2).

    ``message`` is the whole message in wire form, as bytes or the path of a spool file
    (the body is read in chunks, never held whole). Keys are looked up with ``resolver``;
    ``now`` (Unix time) is for AMS x=. Never raises for anything the message or DNS holds.
    """
    moment = int(time.time() if now is None else now)
    try:
        loaded = load_message(message, DkimLimits(max_message_bytes=limits.max_message_bytes,
                                                  max_header_bytes=limits.max_header_bytes))
    except MessageError as exc:
        if exc.result == DkimStatus.NONE:
            return ArcResult(ArcStatus.NONE, reason=exc.reason.replace("verified", "validated"))
        return ArcResult(ArcStatus.FAIL, reason=_clean(exc.reason), temporary=True)
    try:
        fields = _split_fields(loaded.header_block, limits.max_header_fields)
    except _TooManyFields as exc:
        return ArcResult(ArcStatus.NONE, reason=f"{exc}: not validated")
    except _Malformed as exc:
        # A header we cannot split is no chain we could validate; if it carries ARC
        # fields, they cannot pass.
        if _ANY_ARC_FIELD.search(loaded.header_block):
            return ArcResult(ArcStatus.FAIL, reason=f"header cannot be parsed: {exc}")
        return ArcResult(ArcStatus.NONE, reason="no ARC sets")
    members = _members(fields)
    if not members:
        return ArcResult(ArcStatus.NONE, reason="no ARC sets")
    highest = max((m.instance for m in members if m.instance is not None), default=0)
    try:
        sets = _structure(members, limits)
    except _ChainFail as fail:
        return ArcResult(ArcStatus.FAIL, instances=highest, failed_instance=fail.instance,
                         reason=_clean(fail.reason))
    return await _validate(sets, fields, loaded, resolver, limits, moment)


async def _validate(sets: dict[int, dict[str, _Member]], fields: list[tuple[bytes, bytes]],
                    loaded: LoadedMessage, resolver: dns.asyncresolver.Resolver, limits: ArcLimits,
                    moment: int) -> ArcResult:
    """Steps 4 to 7 of RFC 8617 §5.2 over a structurally valid chain."""
    top = max(sets)
    signatures = {i: _signed(sets[i]["ams"], moment, limits) for i in sets}
    seals = {i: _signed(sets[i]["as"], moment, limits) for i in sets}
    ams_valid: dict[int, bool] = {}
    as_valid: dict[int, bool] = {}

    def result(status: ArcStatus, reason: str = "", failed: int | None = None,
               oldest: int | None = None, temporary: bool = False) -> ArcResult:
        infos = tuple(_set_info(sets, i, signatures, seals, ams_valid, as_valid)
                      for i in range(1, top + 1))
        return ArcResult(status, instances=top, failed_instance=failed, reason=_clean(reason),
                         oldest_pass=oldest, sets=infos, temporary=temporary)

    key_names = {s.key_name for s in (*signatures.values(), *seals.values()) if not s.invalid}
    if len(key_names) > limits.max_key_lookups:
        return result(ArcStatus.FAIL, f"the chain names {len(key_names)} keys, more than "
                      f"{limits.max_key_lookups}")
    newest = signatures[top]
    # Step 4 needs one key; the others are only fetched when it verifies.
    keys = await _fetch_keys(resolver, [] if newest.invalid else [newest.key_name], limits)
    specs = {s.body_spec for s in signatures.values() if not s.invalid}
    try:
        if loaded.size > INLINE_VERIFY_BYTES:
            # A big body is hashed in a worker thread so other sessions are not stalled.
            bodies = await asyncio.to_thread(hash_bodies, loaded.body_chunks(), specs)
        else:
            bodies = hash_bodies(loaded.body_chunks(), specs)
    except OSError as exc:
        return result(ArcStatus.FAIL, f"cannot read the message body: {exc.strerror or exc}",
                      temporary=True)
    valid, why, temporary = _check_ams(newest, fields, bodies, keys)
    ams_valid[top] = valid
    if not valid:
        return result(ArcStatus.FAIL, f"ARC-Message-Signature i={top}: {why}", top,
                      temporary=temporary)
    keys.update(await _fetch_keys(resolver, key_names - set(keys), limits))
    # Step 5: oldest-pass, from N-1 down to the first AMS that does not verify.
    oldest = 0
    for instance in range(top - 1, 0, -1):
        valid, _why, _temporary = _check_ams(signatures[instance], fields, bodies, keys)
        ams_valid[instance] = valid
        if not valid:
            oldest = instance + 1
            break
    # Step 6: every seal, N down to 1.
    for instance in range(top, 0, -1):
        valid, why, temporary = _check_seal(seals[instance], sets, keys)
        as_valid[instance] = valid
        if not valid:
            return result(ArcStatus.FAIL, f"ARC-Seal i={instance}: {why}", instance,
                          temporary=temporary)
    return result(ArcStatus.PASS, "chain verified", oldest=oldest)


__all__ = [
    "DEFAULT_LIMITS", "MAX_INSTANCES", "ArcLimits", "ArcResult", "ArcSet", "ArcStatus",
    "verify_arc",
]
