"""The CRAM-MD5 SASL mechanism (RFC 2195): a challenge, answered with HMAC-MD5.

The server sends a unique challenge in msg-id form (``<random.time@hostname>``, RFC 2195
§2); the client answers ``user SP hex(HMAC-MD5(password, challenge))``. The server checks
the answer with the HMAC-MD5 intermediate state it stores (``mailkeep.auth.cram_md5``), so
the password never crosses the wire - but that state is as good as the password for
CRAM-MD5 and fast to brute-force, which is why this mechanism is an opt-in
(``[auth] cram_md5``, docs/auth.md).

This module is the pure part: building the challenge from values the caller supplies
(randomness and time are passed in) and parsing the answer.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from mailkeep.auth.cram_md5 import verify_cram_md5_response
from mailkeep.sasl.common import MalformedResponse, SaslLimits, check_identity

MECHANISM = "CRAM-MD5"
# RFC 2195 §2: the digest is 16 octets written as 32 lower-case hex digits.
DIGEST_HEX_LENGTH = 32
_HEX = frozenset(string.hexdigits.encode("ascii"))


def make_challenge(random_part: int, timestamp: int, hostname: str) -> bytes:
    """The challenge ``<random.timestamp@hostname>`` (RFC 2195 §2, the msg-id syntax of
    RFC 5322 §3.6.4); ``random_part`` makes it unique, the time is informational."""
    host = hostname.encode("idna") if not hostname.isascii() else hostname.encode("ascii")
    return b"<%d.%d@%s>" % (random_part, timestamp, host)


@dataclass(frozen=True)
class CramMd5Response:
    username: str
    digest: str  # 32 lower-case hex digits


def parse_response(message: bytes, limits: SaslLimits = SaslLimits()) -> CramMd5Response:
    """Split ``user SP digest`` (RFC 2195 §2); raises MalformedResponse.

    The user name is everything before the last space, so names with spaces survive.
    """
    if len(message) > limits.max_response_bytes:
        raise MalformedResponse(f"response longer than {limits.max_response_bytes} bytes")
    username, space, digest = message.rpartition(b" ")
    if not space:
        raise MalformedResponse("CRAM-MD5 response has no space between user and digest")
    if len(digest) != DIGEST_HEX_LENGTH or not all(byte in _HEX for byte in digest):
        raise MalformedResponse(f"CRAM-MD5 digest is not {DIGEST_HEX_LENGTH} hex digits")
    return CramMd5Response(check_identity(username, limits), digest.decode("ascii").lower())


def verify(state: bytes, challenge: bytes, response: CramMd5Response) -> bool:
    """True if ``response`` answers ``challenge`` for the stored HMAC-MD5 ``state``."""
    return verify_cram_md5_response(state, challenge, response.digest)
