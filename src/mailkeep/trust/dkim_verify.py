"""DKIM verification of received mail (RFC 6376; RFC 8301 algorithms and key sizes; RFC 8463
Ed25519; RFC 6008 header.b).

:func:`verify_dkim` checks every DKIM-Signature field of a message (up to a limit) and
returns one :class:`DkimResult` per signature, with the result names of RFC 8601 §2.7.1
so that they go into Authentication-Results as they are. The division of labour:

- Mailkeep parses the DKIM-Signature tag list and the key record (RFC 6376 §3.2, §3.5,
  §3.6.1), applies every rule of §6.1.1 and §6.1.2 (required tags, i= within d=, From
  signed, t=/x=, key type, hash and service restrictions, revoked keys, strict-subdomain
  flag, key sizes), fetches the keys through our own asynchronous resolver
  (:mod:`mailkeep.outbound.dns`), and computes the body hashes (§3.7) in a stream, once per
  distinct (canonicalization, hash, l=) combination, with ``mailkeep.dkim.canon``.
- dkimpy checks the cryptographic signature over the header fields (§3.7, §5.4), given
  the header block only and the key record we already fetched, through its ``dnsfunc``.
  Handing it the header block alone, with our body hash already compared, means a large
  message is never held in memory: the body is read from the spool file in chunks.

Limits (all in :class:`DkimLimits`): at most :data:`MAX_SIGNATURES` signatures are
verified (RFC 6376 §6.1 lets a verifier limit them; those whose d= is related to the
author's domain go first); messages above :data:`MAX_MESSAGE_BYTES` are not verified at
all and get one result ``none`` saying so; a header block above :data:`MAX_HEADER_BYTES`
is treated the same way.

The l= tag (§3.5, §8.2): a signature covering only the first l= octets of the body is
verified over those octets; when the body is longer the result says how many octets are
not covered, and is ``policy`` (default) rather than ``pass``, because anyone may append
content to such a message without breaking the signature.

Results, and when they occur (RFC 8601 §2.7.1):

- ``pass``: the signature verified;
- ``fail``: the body hash or the signature does not match, the signature has expired
  (x=), or l= is larger than the body;
- ``policy``: unacceptable to us whatever the cryptography says: rsa-sha1 (RFC 8301
  §3.1), an RSA key below the minimum size (RFC 8301 §3.2), a body longer than l=;
- ``neutral``: the DKIM-Signature field is malformed (tag-list syntax, a required tag
  missing, unknown version, algorithm, canonicalization or query method, From not
  signed, i= outside d=, t= in the future, x= before t=);
- ``permerror``: the key cannot be used: no key record, revoked key (empty p=, §3.6.1),
  not a DKIM key, key type or hash not allowed, service type not email, the strict
  subdomain flag (t=s) violated, or a header block that cannot be parsed;
- ``temperror``: the key lookup failed temporarily (SERVFAIL, timeout), or the spool file
  could not be read;
- ``none``: the message was too large to verify.

An unsigned message gives an empty list.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import dns.asyncresolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import dkim
from dkim import DKIMException
from mailkeep.config.names import InvalidName, canonical_domain
from mailkeep.dkim.canon import RelaxedBodyHasher
from mailkeep.mime.header import find_header_end
from mailkeep.outbound.dns import DnsNameError, DnsTemporaryError, query

#: At most this many DKIM-Signature fields are verified per message (RFC 6376 §6.1 allows
#: a limit); each costs a DNS lookup and a signature check.
MAX_SIGNATURES = 8
#: Larger messages are not verified (one result ``none``): hashing costs CPU time in
#: proportion to the size, and a mail server's size limit is usually below this anyway.
MAX_MESSAGE_BYTES = 50 * 1024 * 1024
#: A header block larger than this is not verified (result ``none``); dkimpy parses it
#: in memory, and every signature hashes a selection of its fields.
MAX_HEADER_BYTES = 1024 * 1024
#: Most header fields a verified message may have; header hashing costs time in
#: proportion to (fields x h= entries), so both are bounded.
MAX_HEADER_FIELDS = 2000
#: Most entries in one h= tag (our own signer writes at most 256).
MAX_SIGNED_HEADER_NAMES = 256
#: Longest DKIM-Signature field or key record parsed as a tag list.
MAX_TAG_LIST_BYTES = 64 * 1024
#: RFC 8301 §3.2: verifiers MUST NOT consider signatures with RSA keys below 1024 bits.
MIN_RSA_BITS = 1024
#: Keys above this size are refused (permerror): RFC 8301 §3.2 only asks verifiers to
#: handle up to 4096 bits, and dkimpy checks RSA signatures in pure Python.
MAX_RSA_BITS = 8192
#: An RSA public exponent longer than this is refused: a huge exponent makes a pure
#: Python signature check arbitrarily slow. Real keys use 65537 (17 bits).
MAX_RSA_EXPONENT_BITS = 64
#: Seconds of clock difference tolerated for t= (in the future) and x= (expired).
CLOCK_SKEW = 300
#: RFC 6008 §4: header.b carries at least the first eight characters of b=, more when
#: that is needed to tell two signatures of the message apart.
HEADER_B_CHARS = 8
#: The body is read and hashed in chunks of this size.
BODY_READ_CHUNK = 1024 * 1024
#: Messages up to this size are verified on the event loop; larger ones in a worker
#: thread, so a big message does not stall other sessions while it is hashed.
INLINE_VERIFY_BYTES = 256 * 1024

# RFC 6376 §3.2 tag-name: ALPHA *ALNUMPUNC (ALNUMPUNC = ALPHA / DIGIT / "_").
_TAG_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]*\Z")
# Bytes allowed in a tag value besides folding white space: VALCHAR (%x21-3A / %x3C-7E);
# 8-bit bytes are tolerated (RFC 8616 puts UTF-8 in some values).
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f;]")
_FWS_BYTES = b" \t\r\n"
_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_DIGITS = re.compile(rb"[0-9]{1,76}\Z")  # §3.5 l=, t=, x=: at most 76 digits
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}\Z")
# §3.1 selector: sub-domain *("." sub-domain); underscores tolerated as seen in the wild.
_SELECTOR = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                       rb"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\Z")
_BARE_LF = re.compile(rb"(?<!\r)\n")

_log = logging.getLogger(__name__)


class DkimStatus(StrEnum):
    """RFC 8601 §2.7.1 result values; equal to their names as strings."""

    PASS = "pass"
    FAIL = "fail"
    POLICY = "policy"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    NONE = "none"


@dataclass(frozen=True)
class DkimLimits:
    """The limits of one verification; the defaults are the module constants.

    ``unsigned_body`` is the result of a signature that verifies but whose l= leaves part
    of the body unsigned: ``policy`` (default) or ``pass``.
    """

    max_signatures: int = MAX_SIGNATURES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    max_header_fields: int = MAX_HEADER_FIELDS
    min_rsa_bits: int = MIN_RSA_BITS
    max_rsa_bits: int = MAX_RSA_BITS
    clock_skew: int = CLOCK_SKEW
    unsigned_body: Literal["policy", "pass"] = "policy"


DEFAULT_LIMITS = DkimLimits()


@dataclass(frozen=True)
class DkimResult:
    """The verdict on one DKIM-Signature field.

    ``index`` is the field's position among the message's DKIM-Signature fields (0 is the
    topmost; -1 for a result about the whole message). ``domain`` is d= (A-labels, lower
    case), ``selector`` s=, ``header_b`` the start of b= (RFC 6008), ``identity`` i=.
    ``body_length`` is l= when present and ``unsigned_body_octets`` how much of the
    canonicalized body comes after it (not covered by the signature). ``testing`` is true
    when the key record has t=y (RFC 6376 §3.6.1: such results must not be treated
    differently from unsigned mail; see :func:`dmarc_inputs`). ``reason`` says why, for
    logs and the Authentication-Results comment.
    """

    result: DkimStatus
    domain: str = ""
    selector: str = ""
    header_b: str = ""
    algorithm: str = ""
    identity: str = ""
    reason: str = ""
    index: int = -1
    body_length: int | None = None
    unsigned_body_octets: int = 0
    testing: bool = False
    key_bits: int | None = None

    @property
    def covers_whole_body(self) -> bool:
        return self.unsigned_body_octets == 0


def dmarc_inputs(results: Iterable[DkimResult]) -> list[tuple[str, str]]:
    """``(result, domain)`` pairs for :func:`mailkeep.trust.dmarc.evaluate`.

    A pass from a key in testing mode (t=y) is given as ``neutral``: RFC 6376 §3.6.1 says
    such mail must be treated like unsigned mail, so it cannot make DMARC pass.
    """
    pairs = []
    for result in results:
        if not result.domain:
            continue
        status = str(result.result)
        if status == DkimStatus.PASS and result.testing:
            status = str(DkimStatus.NEUTRAL)
        pairs.append((status, result.domain))
    return pairs


class TagListError(ValueError):
    """A tag list (RFC 6376 §3.2) that cannot be parsed."""


def parse_tag_list(data: bytes, *, max_bytes: int = MAX_TAG_LIST_BYTES) -> dict[str, bytes]:
    """The tags of a DKIM tag list (RFC 6376 §3.2) as ``{name: value}``.

    Values have the folding white space around them removed; white space inside a value
    is kept (the tag decides what it means). Tag names are case-sensitive. Raises
    :class:`TagListError` for a malformed list, a duplicate tag ("the entire tag-list is
    invalid", §3.2) or one longer than ``max_bytes``.
    """
    if len(data) > max_bytes:
        raise TagListError(f"longer than {max_bytes} bytes")
    specs = data.split(b";")
    if not specs[-1].strip(_FWS_BYTES):
        specs.pop()  # §3.2: a trailing ";" is allowed
    tags: dict[str, bytes] = {}
    for spec in specs:
        name, equals, value = spec.partition(b"=")
        name = name.strip(_FWS_BYTES)
        if not equals or not _TAG_NAME.match(name):
            shown = spec.strip(_FWS_BYTES)[:40].decode("ascii", "replace")
            raise TagListError(f"malformed tag {shown!r}")
        value = value.strip(_FWS_BYTES)
        if _BAD_VALUE_BYTE.search(value):
            raise TagListError(f"control character in the value of {name.decode()}=")
        key = name.decode("ascii")
        if key in tags:
            raise TagListError(f"duplicate tag {key}=")
        tags[key] = value
    return tags


def _b64decode(value: bytes) -> bytes | None:
    """Base64 with folding white space anywhere (RFC 6376 §3.5 b=, bh=, §3.6.1 p=)."""
    compact = _WHITESPACE.sub(b"", value)
    if not _BASE64.match(compact) or len(compact) % 4:
        return None
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


# -- key records (RFC 6376 §3.6.1) -------------------------------------------------------


class KeyRecordError(ValueError):
    """A key record that cannot be used (RFC 6376 §6.1.2: PERMFAIL)."""


@dataclass(frozen=True)
class KeyRecord:
    """A parsed DKIM key record. ``public_key`` is the decoded p= (empty: revoked)."""

    key_type: str
    public_key: bytes
    hashes: tuple[str, ...] | None
    services: tuple[str, ...]
    flags: tuple[str, ...]
    text: bytes

    @property
    def revoked(self) -> bool:
        return not self.public_key

    @property
    def testing(self) -> bool:
        return "y" in self.flags

    @property
    def strict_subdomains(self) -> bool:
        return "s" in self.flags


def _colon_list(value: bytes) -> tuple[str, ...]:
    return tuple(part.strip(_FWS_BYTES).decode("ascii", "replace").lower()
                 for part in value.split(b":") if part.strip(_FWS_BYTES))


def parse_key_record(text: bytes) -> KeyRecord:
    """Parse a DKIM key record (RFC 6376 §3.6.1); KeyRecordError if it is unusable."""
    try:
        tags = parse_tag_list(text)
    except TagListError as exc:
        raise KeyRecordError(f"malformed key record: {exc}") from None
    # §3.6.1 v=: MUST be first when present; any other version is discarded.
    if "v" in tags and (next(iter(tags)) != "v" or tags["v"] != b"DKIM1"):
        raise KeyRecordError("not a DKIM1 key record")
    if "p" not in tags:
        raise KeyRecordError("key record without p=")
    key_type = tags.get("k", b"rsa").decode("ascii", "replace").lower()
    if key_type not in ("rsa", "ed25519"):
        raise KeyRecordError(f"unknown key type k={key_type}")
    public_key = b""
    if tags["p"]:
        decoded = _b64decode(tags["p"])
        if decoded is None:
            raise KeyRecordError("p= is not valid base64")
        public_key = decoded
    hashes = _colon_list(tags["h"]) if "h" in tags else None
    services = _colon_list(tags["s"]) if "s" in tags else ("*",)
    flags = _colon_list(tags.get("t", b""))
    return KeyRecord(key_type, public_key, hashes, services, flags, text)


def _rsa_key_size(der: bytes) -> int:
    """Modulus size of an RSA public key in SubjectPublicKeyInfo or RSAPublicKey form
    (RFC 6376 §3.6.1 names the latter; publishers use both)."""
    try:
        key = serialization.load_der_public_key(der)
    except Exception as exc:  # cryptography raises several types for malformed DER
        raise KeyRecordError(f"unreadable RSA public key ({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyRecordError("p= does not hold an RSA public key")
    if key.public_numbers().e.bit_length() > MAX_RSA_EXPONENT_BITS:
        raise KeyRecordError("RSA public exponent too large")
    return key.key_size


# -- DKIM-Signature fields (RFC 6376 §3.5) -----------------------------------------------


class _Refused(Exception):
    """A signature that gets a result before any cryptography."""

    def __init__(self, result: DkimStatus, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass
class _Signature:
    index: int                  # among DKIM-Signature fields
    header_index: int           # among all header fields (dkimpy's list)
    raw: bytes                  # field value
    tags: dict[str, bytes] = field(default_factory=dict)
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    identity: str = ""
    b_text: str = ""
    header_canon: str = "simple"
    body_canon: str = "simple"
    signed_names: list[bytes] = field(default_factory=list)
    body_hash: bytes = b""
    length: int | None = None
    refused: _Refused | None = None

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def hash_name(self) -> str:
        return "sha1" if self.algorithm == "rsa-sha1" else "sha256"

    @property
    def body_spec(self) -> tuple[str, str, int | None]:
        return (self.body_canon, self.hash_name, self.length)


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


def _parse_signature(sig: _Signature, now: int, limits: DkimLimits) -> None:
    """Fill ``sig`` from its field value, or set ``sig.refused`` (RFC 6376 §6.1.1)."""
    neutral = DkimStatus.NEUTRAL
    try:
        tags = parse_tag_list(sig.raw)
    except TagListError as exc:
        raise _Refused(neutral, f"malformed DKIM-Signature: {exc}") from None
    sig.tags = tags
    # Identify the signature as far as possible before any other check, for the result.
    if "d" in tags:
        sig.domain = _text(tags["d"]).lower()
    if "s" in tags:
        sig.selector = _text(tags["s"])
    if "a" in tags:
        sig.algorithm = _text(tags["a"]).lower()
    if "b" in tags:
        sig.b_text = _text(_WHITESPACE.sub(b"", tags["b"]))
    if "i" in tags:
        sig.identity = _text(tags["i"])
    if tags.get("v") != b"1":
        raise _Refused(neutral, "missing or unsupported v= (RFC 6376 §3.5: v=1)")
    missing = [name for name in ("a", "b", "bh", "d", "h", "s") if name not in tags]
    if missing:
        raise _Refused(neutral, "required tag missing: " + ", ".join(f"{m}=" for m in missing))
    try:
        sig.domain = canonical_domain(_text(tags["d"]))
    except InvalidName:
        raise _Refused(neutral, f"d={_text(tags['d'])[:80]} is not a domain name") from None
    if not _SELECTOR.match(tags["s"]):
        raise _Refused(neutral, f"s={_text(tags['s'])[:80]} is not a valid selector")
    sig.selector = _text(tags["s"]).lower()
    if sig.algorithm == "rsa-sha1":
        # RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid.
        raise _Refused(DkimStatus.POLICY, "rsa-sha1 is not accepted (RFC 8301 §3.1)")
    if sig.algorithm not in ("rsa-sha256", "ed25519-sha256"):
        raise _Refused(neutral, f"unknown algorithm a={sig.algorithm[:40]}")
    canon = _text(tags.get("c", b"simple/simple")).lower()
    header_canon, _, body_canon = canon.partition("/")
    body_canon = body_canon or "simple"  # §3.5 c=: "relaxed" alone is relaxed/simple
    if header_canon not in ("simple", "relaxed") or body_canon not in ("simple", "relaxed"):
        raise _Refused(neutral, f"unknown canonicalization c={canon[:40]}")
    sig.header_canon, sig.body_canon = header_canon, body_canon
    if "q" in tags and "dns/txt" not in _colon_list(tags["q"]):
        raise _Refused(neutral, "no supported query method in q= (RFC 6376 §3.5: dns/txt)")
    names = [part.strip(_FWS_BYTES).lower() for part in tags["h"].split(b":")]
    if not all(names):
        raise _Refused(neutral, "empty header field name in h=")
    if len(names) > MAX_SIGNED_HEADER_NAMES:
        raise _Refused(neutral, f"more than {MAX_SIGNED_HEADER_NAMES} names in h=")
    if b"from" not in names:
        raise _Refused(neutral, "From is not signed (RFC 6376 §6.1.1)")
    sig.signed_names = names
    if "i" in tags:
        identity_domain = _text(tags["i"]).rpartition("@")[2].lower().rstrip(".")
        if "@" not in sig.identity or not (
                identity_domain == sig.domain or identity_domain.endswith("." + sig.domain)):
            raise _Refused(neutral, "i= is not within d= (RFC 6376 §6.1.1)")
    else:
        sig.identity = "@" + sig.domain  # §3.5 i= default
    body_hash = _b64decode(tags["bh"])
    if body_hash is None or not body_hash:
        raise _Refused(neutral, "bh= is not valid base64")
    sig.body_hash = body_hash
    if _b64decode(tags["b"]) in (None, b""):
        raise _Refused(neutral, "b= is not valid base64")
    if "l" in tags:
        if not _DIGITS.match(tags["l"]):
            raise _Refused(neutral, "l= is not a number")
        sig.length = int(tags["l"])
    timestamp = expiry = None
    for name in ("t", "x"):
        if name in tags and not _DIGITS.match(tags[name]):
            raise _Refused(neutral, f"{name}= is not a number")
    if "t" in tags:
        timestamp = int(tags["t"])
        if timestamp > now + limits.clock_skew:
            raise _Refused(neutral, "t= is in the future (RFC 6376 §3.5)")
    if "x" in tags:
        expiry = int(tags["x"])
        if timestamp is not None and expiry < timestamp:
            raise _Refused(neutral, "x= is before t= (RFC 6376 §3.5)")
        if expiry < now - limits.clock_skew:
            raise _Refused(DkimStatus.FAIL, "signature expired (x=, RFC 6376 §3.5)")


def _check_key(sig: _Signature, record: KeyRecord, limits: DkimLimits) -> int | None:
    """Apply the key record's restrictions (RFC 6376 §6.1.2); the RSA size or None."""
    permerror = DkimStatus.PERMERROR
    if record.revoked:
        raise _Refused(permerror, "key revoked (empty p=, RFC 6376 §3.6.1)")
    wanted_type = "ed25519" if sig.algorithm.startswith("ed25519") else "rsa"
    if record.key_type != wanted_type:
        raise _Refused(permerror, f"key type k={record.key_type} does not match "
                                  f"a={sig.algorithm}")
    if record.hashes is not None and sig.hash_name not in record.hashes:
        raise _Refused(permerror, f"key does not allow {sig.hash_name} (h= of the key)")
    if not {"*", "email"} & set(record.services):
        raise _Refused(permerror, "key is not for email (s= of the key)")
    if record.strict_subdomains:
        identity_domain = sig.identity.rpartition("@")[2].lower().rstrip(".")
        if identity_domain != sig.domain:
            raise _Refused(permerror, "key forbids subdomains in i= (t=s)")
    if record.key_type == "ed25519":
        if len(record.public_key) != 32:  # RFC 8463 §4.2: the raw 32-byte key
            raise _Refused(permerror, "Ed25519 key is not 32 bytes")
        return None
    try:
        bits = _rsa_key_size(record.public_key)
    except KeyRecordError as exc:
        raise _Refused(permerror, str(exc)) from None
    if bits < limits.min_rsa_bits:
        raise _Refused(DkimStatus.POLICY, f"RSA key of {bits} bits is below "
                                          f"{limits.min_rsa_bits} (RFC 8301 §3.2)")
    if bits > limits.max_rsa_bits:
        raise _Refused(permerror, f"RSA key of {bits} bits is above {limits.max_rsa_bits}")
    return bits


# -- key lookup --------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyLookup:
    record: KeyRecord | None
    error: _Refused | None


async def _fetch_key(resolver: dns.asyncresolver.Resolver, name: str) -> _KeyLookup:
    """The key record at ``name`` (RFC 6376 §3.6.2.2, §6.1.2)."""
    try:
        answer = await query(resolver, name, "TXT")
    except DnsTemporaryError as exc:
        return _KeyLookup(None, _Refused(DkimStatus.TEMPERROR, f"key lookup failed: {exc}"))
    except DnsNameError:
        return _KeyLookup(None, _Refused(DkimStatus.PERMERROR, f"no key record at {name}"))
    records = [b"".join(rdata.strings) for rdata in answer.records]
    if not records:
        return _KeyLookup(None, _Refused(DkimStatus.PERMERROR, f"no key record at {name}"))
    first_error = ""
    # §6.1.2: with several records the verifier may choose; the first usable one wins.
    for text in records:
        try:
            return _KeyLookup(parse_key_record(text), None)
        except KeyRecordError as exc:
            first_error = first_error or str(exc)
    return _KeyLookup(None, _Refused(DkimStatus.PERMERROR, f"{name}: {first_error}"))


# -- body hashing (RFC 6376 §3.4.3, §3.4.4, §3.7) -----------------------------------------


class _CountedHash:
    """A hash over the first ``limit`` octets fed (all when None), counting them all."""

    def __init__(self, name: str, limit: int | None):
        self._hash = hashlib.new(name)
        self._limit = limit
        self.total = 0

    def update(self, data: bytes | memoryview) -> None:
        size = len(data)
        if self._limit is None:
            self._hash.update(data)
        elif self.total < self._limit:
            self._hash.update(data[:self._limit - self.total])
        self.total += size

    def digest(self) -> bytes:
        return self._hash.digest()


def _trailing_crlf_pairs(data: bytes) -> int:
    """How many CRLF pairs ``data`` ends with."""
    tail = data[len(data.rstrip(b"\r\n")):]
    count = 0
    end = len(tail)
    # The run is short in practice; a run of a million CRLFs costs one slice compare each
    # 64 KiB, because whole blocks are checked at once.
    block = b"\r\n" * 32768
    while end >= len(block) and tail[end - len(block):end] == block:
        count += 32768
        end -= len(block)
    while end >= 2 and tail[end - 2:end] == b"\r\n":
        count += 1
        end -= 2
    return count


class _SimpleBodyHasher:
    """RFC 6376 §3.4.3 "simple" body: empty lines at the end are dropped; the body then
    ends with exactly one CRLF (an empty body becomes a single CRLF)."""

    def __init__(self, hash_factory: Callable[[], Any]):
        self._hash = hash_factory()
        self._pending = 0       # CRLFs held back: dropped if nothing but CRLFs follows
        self._carry = b""       # a final CR that may start a CRLF

    def update(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        if data.endswith(b"\r"):
            self._carry, data = b"\r", data[:-1]
        pairs = _trailing_crlf_pairs(data)
        head = data[:len(data) - 2 * pairs]
        if head:
            self._hash.update(b"\r\n" * self._pending)
            self._hash.update(head)
            self._pending = pairs
        else:
            self._pending += pairs

    def digest(self) -> bytes:
        if self._carry:
            self._hash.update(b"\r\n" * self._pending + self._carry)
        # Content ends with the first held-back CRLF (or gets one); an empty body is CRLF.
        self._hash.update(b"\r\n")
        return bytes(self._hash.digest())


class _LineEnds:
    """Turns bare LF into CRLF across chunks: the spool holds wire format (CRLF), but a
    message that reached us with bare LFs is verified the way dkimpy and most verifiers
    do, as if each LF were a CRLF."""

    def __init__(self) -> None:
        self._after_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        starts_pair = self._after_cr and chunk[:1] == b"\n"
        self._after_cr = chunk.endswith(b"\r")
        if chunk.count(b"\n") == chunk.count(b"\r\n") + (1 if starts_pair else 0):
            return chunk
        converted = _BARE_LF.sub(b"\r\n", chunk)
        return converted[1:] if starts_pair else converted


BodySpec = tuple[str, str, int | None]  # (canonicalization, hash name, l=)


def hash_body(chunks: Iterable[bytes], specs: Iterable[BodySpec]) -> dict[BodySpec, tuple[bytes, int]]:
    """``{spec: (digest, canonical body length)}`` for every spec, in one pass."""
    counters: dict[BodySpec, _CountedHash] = {}
    hashers: dict[BodySpec, Any] = {}
    for spec in specs:
        canon, hash_name, limit = spec
        counter = _CountedHash(hash_name, limit)
        counters[spec] = counter
        # The canonicalizer writes into our counter, which hashes and counts.
        hashers[spec] = (RelaxedBodyHasher(lambda c=counter: c) if canon == "relaxed"
                         else _SimpleBodyHasher(lambda c=counter: c))
    line_ends = _LineEnds()
    for chunk in chunks:
        data = line_ends.feed(chunk)
        for hasher in hashers.values():
            hasher.update(data)
    results = {}
    for spec, hasher in hashers.items():
        hasher.digest()
        results[spec] = (counters[spec].digest(), counters[spec].total)
    return results


# -- the message -------------------------------------------------------------------------


class MessageError(Exception):
    def __init__(self, result: DkimStatus, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass
class LoadedMessage:
    header_block: bytes
    body_start: int
    size: int
    data: bytes | None = None   # the message in memory, or
    path: Path | None = None    # the spool file holding it

    def body_chunks(self) -> Iterable[bytes]:
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(self.body_start, self.size, BODY_READ_CHUNK):
                yield bytes(view[start:start + BODY_READ_CHUNK])
            return
        assert self.path is not None
        with open(self.path, "rb") as handle:
            handle.seek(self.body_start)
            while chunk := handle.read(BODY_READ_CHUNK):
                yield chunk


def load_message(message: bytes | Path, limits: DkimLimits) -> LoadedMessage:
    """The header block and where the body is; never more than the header in memory."""
    too_large = f"message larger than {limits.max_message_bytes} bytes: not verified"
    if isinstance(message, (bytes, bytearray, memoryview)):
        data = bytes(message)
        if len(data) > limits.max_message_bytes:
            raise MessageError(DkimStatus.NONE, too_large)
        head, size, path = data, len(data), None
    else:
        path = Path(message)
        data = None
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > limits.max_message_bytes:
                    raise MessageError(DkimStatus.NONE, too_large)
                # Two bytes more than the limit: enough to see a blank line right at it.
                head = handle.read(limits.max_header_bytes + 2)
        except OSError as exc:
            raise MessageError(DkimStatus.TEMPERROR,
                                f"cannot read the message: {exc.strerror or exc}") from None
    fields_end, body_start, truncated = find_header_end(head, 0, len(head),
                                                        limits.max_header_bytes)
    if truncated or fields_end > limits.max_header_bytes:
        raise MessageError(DkimStatus.NONE, f"header larger than {limits.max_header_bytes} "
                                             "bytes: not verified")
    return LoadedMessage(head[:fields_end], body_start, size, data=data, path=path)


def _header_fields(header_block: bytes) -> list[list[bytes]]:
    """The header fields as dkimpy sees them: ``[name, value]`` with the value's folding
    and final CRLF kept. Raises DKIMException for a line that is not a field."""
    headers, _body = dkim.rfc822_parse(header_block + b"\r\n")
    return headers


def _lenient_signature_values(header_block: bytes) -> list[bytes]:
    """DKIM-Signature values of a header dkimpy cannot parse (for the results only)."""
    values: list[bytearray] = []
    current: bytearray | None = None
    for line in re.split(rb"\r?\n", header_block):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.extend(b"\r\n" + line)
            continue
        name, colon, value = line.partition(b":")
        current = None
        if colon and name.strip(b" \t").lower() == b"dkim-signature":
            current = bytearray(value)
            values.append(current)
    return [bytes(v) for v in values]


def _header_b_prefixes(signatures: Sequence[_Signature]) -> dict[int, str]:
    """RFC 6008 §4: at least eight characters of b=, more where two differ only later."""
    texts = {s.index: s.b_text for s in signatures}
    prefixes = {}
    for index, text in texts.items():
        length = HEADER_B_CHARS
        others = [t for i, t in texts.items() if i != index and t != text]
        while length < len(text) and any(t[:length] == text[:length] for t in others):
            length += 1
        prefixes[index] = text[:length]
    return prefixes


def _related(domain: str, author_domain: str) -> bool:
    return (domain == author_domain or author_domain.endswith("." + domain)
            or domain.endswith("." + author_domain))


def _choose(signatures: list[_Signature], limit: int, author_domain: str | None) -> list[_Signature]:
    """At most ``limit`` signatures, those related to the author's domain first (they
    are the ones DMARC can use), then from the top; returned in header order."""
    if len(signatures) <= limit:
        return signatures
    author = (author_domain or "").lower().rstrip(".")

    def priority(sig: _Signature) -> tuple[int, int]:
        domain = _text(sig.tags.get("d", b"")).lower() if sig.tags else ""
        return (0 if author and domain and _related(domain, author) else 1, sig.index)

    chosen = sorted(signatures, key=priority)[:limit]
    return sorted(chosen, key=lambda s: s.index)


def _result(sig: _Signature, status: DkimStatus, reason: str, prefixes: dict[int, str],
            **extra: Any) -> DkimResult:
    return DkimResult(result=status, domain=sig.domain, selector=sig.selector,
                      header_b=prefixes.get(sig.index, sig.b_text[:HEADER_B_CHARS]),
                      algorithm=sig.algorithm, identity=sig.identity, reason=reason,
                      index=sig.index, body_length=sig.length, **extra)


def _verify_header_signature(headers: list[list[bytes]], sig: _Signature,
                             record: KeyRecord, min_bits: int) -> bool:
    """dkimpy's check of b= over the signed header fields (RFC 6376 §3.7 second half).

    The tags it is given leave out bh=, so it does not look at the body (which it does
    not have): we compared the body hash already. The DKIM-Signature field itself is
    hashed from its raw text, bh= included, so the body hash stays covered.
    """
    verifier = dkim.DKIM(minkey=min_bits)
    verifier.headers = [list(h) for h in headers]
    tags = {b"v": b"1", b"a": sig.algorithm.encode(), b"b": sig.tags["b"],
            b"c": f"{sig.header_canon}/{sig.body_canon}".encode(),
            b"d": sig.tags["d"], b"s": sig.tags["s"]}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record.text  # already fetched through our resolver

    header = headers[sig.header_index]
    return bool(verifier.verify_sig(tags, list(sig.signed_names), (header[0], header[1]),
                                    dnsfunc))


def _verify_all(message: LoadedMessage, headers: list[list[bytes]], chosen: list[_Signature],
                keys: dict[str, _KeyLookup], limits: DkimLimits,
                prefixes: dict[int, str]) -> list[DkimResult]:
    """The CPU part: body hashes and signature checks (run in a thread for big mail)."""
    results: dict[int, DkimResult] = {}
    usable: list[tuple[_Signature, KeyRecord, int | None]] = []
    for sig in chosen:
        if sig.refused is not None:
            results[sig.index] = _result(sig, sig.refused.result, sig.refused.reason, prefixes)
            continue
        lookup = keys[sig.key_name]
        try:
            if lookup.error is not None:
                raise lookup.error
            assert lookup.record is not None
            bits = _check_key(sig, lookup.record, limits)
        except _Refused as refused:
            testing = lookup.record.testing if lookup.record is not None else False
            results[sig.index] = _result(sig, refused.result, refused.reason, prefixes,
                                         testing=testing)
            continue
        usable.append((sig, lookup.record, bits))
    if usable:
        try:
            bodies = hash_body(message.body_chunks(), {s.body_spec for s, _r, _b in usable})
        except OSError as exc:
            reason = f"cannot read the message body: {exc.strerror or exc}"
            for sig, _record, _bits in usable:
                results[sig.index] = _result(sig, DkimStatus.TEMPERROR, reason, prefixes)
            usable = []
    for sig, record, bits in usable:
        extra: dict[str, Any] = {"testing": record.testing, "key_bits": bits}
        digest, total = bodies[sig.body_spec]
        if sig.length is not None and sig.length > total:
            results[sig.index] = _result(
                sig, DkimStatus.FAIL, f"l={sig.length} is more than the {total} octets of "
                "the canonicalized body (RFC 6376 §3.5)", prefixes, **extra)
            continue
        if digest != sig.body_hash:
            results[sig.index] = _result(sig, DkimStatus.FAIL, "body hash mismatch (the body "
                                         "was changed, RFC 6376 §6.1.3)", prefixes, **extra)
            continue
        try:
            good = _verify_header_signature(headers, sig, record, limits.min_rsa_bits)
        except DKIMException as exc:
            results[sig.index] = _result(sig, DkimStatus.PERMERROR,
                                         f"cannot verify: {exc}", prefixes, **extra)
            continue
        except Exception as exc:  # dkimpy on hostile input: nothing may escape
            _log.warning("dkimpy failed on a signature of %s: %r", sig.domain, exc)
            results[sig.index] = _result(sig, DkimStatus.PERMERROR,
                                         f"cannot verify: {type(exc).__name__}", prefixes,
                                         **extra)
            continue
        if not good:
            results[sig.index] = _result(sig, DkimStatus.FAIL, "signature did not verify "
                                         "(header fields changed or wrong key)", prefixes,
                                         **extra)
            continue
        unsigned = total - sig.length if sig.length is not None else 0
        status, reason = DkimStatus.PASS, "signature verified"
        if unsigned:
            status = DkimStatus(limits.unsigned_body)
            reason = (f"signature covers only {sig.length} of {total} body octets (l=); "
                      f"{unsigned} octets are unsigned")
        if record.testing:
            reason += "; key in testing mode (t=y)"
        results[sig.index] = _result(sig, status, reason, prefixes,
                                     unsigned_body_octets=unsigned, **extra)
    return [results[sig.index] for sig in chosen]


async def verify_dkim(message: bytes | Path, *, resolver: dns.asyncresolver.Resolver,
                      limits: DkimLimits = DEFAULT_LIMITS, now: float | None = None,
                      author_domain: str | None = None) -> list[DkimResult]:
    """Verify the DKIM-Signature fields of ``message`` (RFC 6376 §6).

    ``message`` is the whole message in wire form (CRLF line ends), as bytes or as the
    path of a spool file. Keys are looked up with ``resolver`` (concurrently, one lookup
    per distinct key). ``author_domain`` (the From: domain) decides which signatures are
    verified first when there are more than ``limits.max_signatures``. ``now`` (Unix time)
    is for t= and x=; default the current time.

    Returns one result per verified signature in header order (empty for an unsigned
    message), or a single result with ``index`` -1 when the message as a whole cannot be
    verified (too large: ``none``; unreadable: ``temperror``). Never raises for anything
    the message or DNS contains.
    """
    moment = int(time.time() if now is None else now)
    try:
        loaded = load_message(message, limits)
    except MessageError as exc:
        return [DkimResult(result=exc.result, reason=exc.reason)]
    try:
        headers = _header_fields(loaded.header_block)
    except DKIMException as exc:
        values = _lenient_signature_values(loaded.header_block)[:limits.max_signatures]
        reason = f"header cannot be parsed: {exc}"[:200]
        out = []
        for index, value in enumerate(values):
            sig = _Signature(index=index, header_index=-1, raw=value)
            try:
                _parse_signature(sig, moment, limits)
            except _Refused:
                pass
            out.append(_result(sig, DkimStatus.PERMERROR, reason, {}))
        return out
    signatures = [_Signature(index=count, header_index=position, raw=value)
                  for count, (position, value) in enumerate(
                      (i, h[1]) for i, h in enumerate(headers) if h[0].lower() == b"dkim-signature")]
    if not signatures:
        return []
    if len(headers) > limits.max_header_fields:
        return [DkimResult(result=DkimStatus.NONE, reason=f"more than {limits.max_header_fields}"
                                                         " header fields: not verified")]
    for sig in signatures:
        try:
            _parse_signature(sig, moment, limits)
        except _Refused as refused:
            sig.refused = refused
    chosen = _choose(signatures, limits.max_signatures, author_domain)
    prefixes = _header_b_prefixes(chosen)
    names = sorted({sig.key_name for sig in chosen if sig.refused is None})
    lookups = await asyncio.gather(*(_fetch_key(resolver, name) for name in names))
    keys = dict(zip(names, lookups, strict=True))
    if loaded.size > INLINE_VERIFY_BYTES:
        return await asyncio.to_thread(_verify_all, loaded, headers, chosen, keys, limits,
                                       prefixes)
    return _verify_all(loaded, headers, chosen, keys, limits, prefixes)


__all__ = [
    "DEFAULT_LIMITS", "DkimLimits", "DkimResult", "DkimStatus", "KeyRecord", "KeyRecordError",
    "TagListError", "dmarc_inputs", "parse_key_record", "parse_tag_list", "verify_dkim",
]
