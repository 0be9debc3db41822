"""DKIM signing (RFC 6376) with rsa-sha256 and ed25519-sha256 (RFC 8463).

``sign_message`` returns the DKIM-Signature header fields to put in front of a message,
one per key: Mailkeep signs every message twice, with RSA (which every verifier knows)
and Ed25519 (short keys, fast; RFC 8463 §4 recommends dual signing meanwhile).

Choices, all of them what RFC 6376 recommends:

- c=relaxed/relaxed (§3.4.2, §3.4.4): survives the whitespace and folding changes that
  relays make; no l= (§8.2: an l= lets anyone append content);
- the signed header fields are those of §5.4.1 that are present, plus MIME-Version,
  Content-*, Message-ID and Sender; From, To, Subject and Date are *oversigned*, listed
  once more than they occur (§5.4.2, §8.15), so nobody can add a second From: or a To:
  that the message lacked without breaking the signature;
- t= is always set; x= only when an expiry is configured.

The body is hashed in a stream (``mailkeep.dkim.canon``), so a message of any size in a
spool file costs a fixed amount of memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailkeep.config.names import InvalidName, canonical_domain
from mailkeep.dkim.canon import CRLF, RelaxedBodyHasher, relaxed_header
from mailkeep.dkim.keys import SigningKey

#: Header fields signed when present, in the order they are listed in h= (RFC 6376
#: §5.4.1's recommendations plus the fields that decide how the body is displayed).
SIGNED_FIELDS: tuple[str, ...] = (
    "from", "sender", "reply-to", "subject", "date", "to", "cc", "message-id",
    "in-reply-to", "references", "mime-version", "content-type",
    "content-transfer-encoding",
)
#: Field name prefixes signed too: Resent-* (§5.4.1) and the RFC 2369 / RFC 2919 list
#: fields (List-Id, List-Unsubscribe, ...; RFC 8058 List-Unsubscribe-Post).
SIGNED_PREFIXES: tuple[str, ...] = ("resent-", "list-")
#: Listed once more than they occur (§8.15): adding one later breaks the signature.
OVERSIGNED_FIELDS: frozenset[str] = frozenset({"from", "to", "subject", "date"})

#: A message with more instances of one signed field than this is refused: its h= tag
#: would be enormous and such a message is an attack or a bug, not correspondence.
MAX_SIGNED_FIELD_INSTANCES = 64
#: The same for the h= list as a whole (many distinct List-* or Resent-* names).
MAX_SIGNED_FIELDS = 256
#: Bytes read from a spool file at a time while hashing the body.
BODY_READ_CHUNK = 1 << 20
#: Lines of the DKIM-Signature field are folded before this column (RFC 5322 §2.1.1
#: recommends at most 78 characters).
FOLD_WIDTH = 78

_FIELD_NAME = re.compile(rb"^[!-9;-~]+$")  # RFC 5322 §3.6.8 ftext
_LINE_END = re.compile(rb"\r\n|\n")
# RFC 6376 §2.11 dkim-safe-char: printable ASCII except ";" and "="; anything else in
# i= is written as =XX.
_QP_SAFE = frozenset(range(0x21, 0x7F)) - {0x3B, 0x3D}


class DkimSignError(Exception):
    """The message cannot be signed; the message says why (suitable for an SMTP reply)."""


def sign_message(
    header_block: bytes,
    body: bytes | Path,
    body_offset: int,
    keys: Sequence[SigningKey],
    *,
    domain: str,
    now: float | None = None,
    identity: str | None = None,
    expire_after: int | None = None,
    max_signed_field_instances: int = MAX_SIGNED_FIELD_INSTANCES,
) -> bytes:
    """DKIM-Signature fields (CRLF-terminated, folded) to prepend, one per key.

    ``header_block`` is the message's header (with or without the empty line that ends
    it). The body is ``body[body_offset:]`` when ``body`` is bytes, or the file ``body``
    from byte ``body_offset`` on (a spool file holding the whole message). ``identity``
    sets i= (an address at ``domain`` or a subdomain); ``expire_after`` seconds set x=.
    Returns b"" when ``keys`` is empty.
    """
    if not keys:
        return b""
    try:
        signing_domain = canonical_domain(domain)
    except InvalidName as exc:
        raise DkimSignError(f"cannot sign for {domain!r}: {exc}") from None
    for key in keys:
        if key.domain != signing_domain:
            raise DkimSignError(f"key {key.selector} belongs to {key.domain}, not to {signing_domain}")
    if body_offset < 0:
        raise DkimSignError("the body offset cannot be negative")
    timestamp = int(time.time() if now is None else now)

    fields = parse_header_fields(header_block)
    signed_names = choose_signed_fields(fields, max_instances=max_signed_field_instances)
    canonical_headers = canonical_signed_headers(fields, signed_names)
    body_hash = body_hash_relaxed(body, body_offset)

    tags: list[tuple[str, str]] = [("v", "1"), ("a", ""), ("c", "relaxed/relaxed"),
                                   ("d", signing_domain), ("s", ""), ("t", str(timestamp))]
    if expire_after is not None:
        if expire_after <= 0:
            raise DkimSignError("the signature expiry must be a positive number of seconds")
        tags.append(("x", str(timestamp + expire_after)))  # §3.5: x= greater than t=
    if identity is not None:
        tags.append(("i", _identity_tag(identity, signing_domain)))

    out = []
    for key in keys:
        key_tags = [(name, key.signature_algorithm if name == "a" else
                     key.selector if name == "s" else value) for name, value in tags]
        unsigned = _fold_signature_field(key_tags, signed_names,
                                         base64.b64encode(body_hash).decode("ascii"))
        # §3.7: the hash covers the signed fields, then this DKIM-Signature field with an
        # empty b= value, canonicalized like the others but without its final CRLF.
        name, _, value = unsigned.partition(b":")
        data = canonical_headers + relaxed_header(name, value)[:-2]
        signature = _sign(key, data)
        out.append(unsigned + _fold_base64(base64.b64encode(signature).decode("ascii")) + CRLF)
    return b"".join(out)


def parse_header_fields(header_block: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields as ``(name, value)``, value being everything after the colon
    with its folding kept. Stops at the empty line that ends the header.

    Lenient on purpose, never raising: a line that is neither a field nor a continuation
    is skipped (it cannot be signed; the submission path should not let one through),
    and a bare LF ends a line as CRLF does.
    """
    fields: list[tuple[bytes, bytearray]] = []
    for line in _LINE_END.split(header_block):
        if not line:
            break  # the empty line ending the header
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1].extend(CRLF + line)
            continue
        name, colon, value = line.partition(b":")
        # RFC 5322 §4.5.1 (obsolete syntax) allows WSP before the colon.
        name = name.rstrip(b" \t")
        if colon and _FIELD_NAME.match(name):
            fields.append((name, bytearray(value)))
    return [(name, bytes(value)) for name, value in fields]


def choose_signed_fields(fields: Sequence[tuple[bytes, bytes]], *,
                         max_instances: int = MAX_SIGNED_FIELD_INSTANCES) -> list[str]:
    """The h= list: each signed field name as many times as it occurs (oversigned ones
    once more, even when absent)."""
    counts: dict[str, int] = {}
    for name, _value in fields:
        lowered = name.decode("ascii").lower()
        counts[lowered] = counts.get(lowered, 0) + 1
    prefixed = [n for n in counts if n.startswith(SIGNED_PREFIXES)]  # in order of appearance
    names: list[str] = []
    for name in (*SIGNED_FIELDS, *prefixed):
        count = counts.get(name, 0)
        if count > max_instances:
            raise DkimSignError(f"the message has {count} {name!r} header fields; at most "
                                f"{max_instances} can be signed")
        names.extend([name] * (count + 1 if name in OVERSIGNED_FIELDS else count))
    if len(names) > MAX_SIGNED_FIELDS:
        raise DkimSignError(f"the message has {len(names)} header fields to sign; at most "
                            f"{MAX_SIGNED_FIELDS} can be signed")
    return names


def canonical_signed_headers(fields: Sequence[tuple[bytes, bytes]], signed: Iterable[str]) -> bytes:
    """The signed fields in relaxed form, in h= order. §5.4.2: a name listed n times
    takes its instances from the bottom of the header up; a name listed more times than
    it occurs contributes nothing for the extra ones (that is what oversigning relies on)."""
    by_name: dict[str, list[tuple[bytes, bytes]]] = {}
    for name, value in fields:
        by_name.setdefault(name.decode("ascii").lower(), []).append((name, value))
    out = []
    for name in signed:
        instances = by_name.get(name)
        if instances:
            field_name, value = instances.pop()  # bottom-most not yet used
            out.append(relaxed_header(field_name, value))
    return b"".join(out)


def body_hash_relaxed(body: bytes | Path, body_offset: int = 0) -> bytes:
    """SHA-256 of the relaxed-canonicalized body (the bh= value before base64)."""
    hasher = RelaxedBodyHasher()
    if isinstance(body, (bytes, bytearray, memoryview)):
        view = memoryview(body)[body_offset:]
        for start in range(0, len(view), BODY_READ_CHUNK):
            hasher.update(view[start:start + BODY_READ_CHUNK])
        return hasher.digest()
    try:
        with open(body, "rb") as handle:
            handle.seek(body_offset)
            while chunk := handle.read(BODY_READ_CHUNK):
                hasher.update(chunk)
    except OSError as exc:
        raise DkimSignError(f"cannot read the message body from {os.fspath(body)}: "
                            f"{exc.strerror or exc}") from None
    return hasher.digest()


def _sign(key: SigningKey, data: bytes) -> bytes:
    private = key.private_key
    if isinstance(private, rsa.RSAPrivateKey):
        # RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 over the SHA-256 hash.
        return private.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private, ed25519.Ed25519PrivateKey):
        # RFC 8463 §3: PureEdDSA Ed25519 signs the SHA-256 *hash* of the data (the same
        # hash rsa-sha256 would compute), not the data itself.
        return private.sign(hashlib.sha256(data).digest())
    raise DkimSignError(f"key {key.selector}: unsupported key type {type(private).__name__}")


def _identity_tag(identity: str, domain: str) -> str:
    """i= (§3.5): the agent or user; its domain must be d= or a subdomain of it."""
    local, at, identity_domain = identity.rpartition("@")
    if not at:
        raise DkimSignError(f"the signing identity {identity!r} is not an address")
    try:
        identity_domain = canonical_domain(identity_domain)
    except InvalidName as exc:
        raise DkimSignError(f"the signing identity {identity!r}: {exc}") from None
    if identity_domain != domain and not identity_domain.endswith("." + domain):
        raise DkimSignError(f"the signing identity {identity!r} is not in {domain} "
                            "(RFC 6376 §3.5, i=)")
    quoted = "".join(chr(b) if b in _QP_SAFE else f"={b:02X}" for b in local.encode("utf-8"))
    return f"{quoted}@{identity_domain}"


def _fold_signature_field(tags: Sequence[tuple[str, str]], signed_names: Sequence[str],
                          body_hash: str) -> bytes:
    """The DKIM-Signature field up to and including "b=", folded at FOLD_WIDTH.

    Pieces are joined with a space, or a line break when the line would be too long;
    inside h= the names are joined with ":" alone, breaking only when needed (FWS is
    allowed around the colons, §3.5).
    """
    pieces: list[tuple[str, bool]] = [(f"{name}={value};", True) for name, value in tags]
    for index, name in enumerate(signed_names):
        last = index == len(signed_names) - 1
        text = ("h=" if index == 0 else "") + name + (";" if last else ":")
        pieces.append((text, index == 0))
    pieces += [(f"bh={body_hash};", True), ("b=", True)]
    lines: list[str] = []
    line = "DKIM-Signature:"
    for text, spaced in pieces:
        joined = line + (" " if spaced else "") + text
        if len(joined) <= FOLD_WIDTH:
            line = joined
        else:
            lines.append(line)
            line = "\t" + text
    lines.append(line)
    return "\r\n".join(lines).encode("ascii")


def _fold_base64(value: str) -> bytes:
    """The b= value on lines of its own (FWS is allowed inside base64, §3.5)."""
    width = FOLD_WIDTH - 2
    chunks = [value[i:i + width] for i in range(0, len(value), width)]
    return "".join("\r\n\t" + chunk for chunk in chunks).encode("ascii")
