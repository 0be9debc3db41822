"""The PLAIN SASL mechanism (RFC 4616): authzid NUL authcid NUL password, in one message.

PLAIN sends the password itself, so the authenticator offers it only on secured
connections. Mailkeep does not do proxy authentication: the authorization identity must be
empty or equal to the authentication identity (RFC 4616 §2 lets a server refuse any other).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailkeep.sasl.common import (
    MalformedResponse,
    SaslLimits,
    check_identity,
    check_password,
)

MECHANISM = "PLAIN"


@dataclass(frozen=True)
class PlainCredentials:
    """What a PLAIN message carries; ``authzid`` is "" when the client sent none."""

    authzid: str
    authcid: str
    password: bytes

    def __repr__(self) -> str:  # never put a password into a log or a traceback
        return f"PlainCredentials(authzid={self.authzid!r}, authcid={self.authcid!r})"


def parse_plain(message: bytes, limits: SaslLimits = SaslLimits()) -> PlainCredentials:
    """Parse ``[authzid] NUL authcid NUL passwd`` (RFC 4616 §2); raises MalformedResponse."""
    if len(message) > limits.max_response_bytes:
        raise MalformedResponse(f"PLAIN message longer than {limits.max_response_bytes} bytes")
    parts = message.split(b"\0")
    # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd; none of them may
    # contain NUL, so there are exactly two separators.
    if len(parts) != 3:
        raise MalformedResponse(f"PLAIN message has {len(parts) - 1} NUL separators, not 2")
    authzid_bytes, authcid_bytes, password = parts
    authzid = check_identity(authzid_bytes, limits, "authorization identity") if authzid_bytes else ""
    authcid = check_identity(authcid_bytes, limits)
    check_password(password, limits)
    # RFC 4616 §2: passwd is UTF-8 text.
    try:
        password.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse("PLAIN password is not UTF-8") from None
    return PlainCredentials(authzid, authcid, password)
