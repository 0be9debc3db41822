"""What every SASL mechanism and every protocol using them share (RFC 4422).

``ClientInfo`` describes the connection a login arrives on, ``SaslStep`` is the one answer
type every exchange produces (a challenge, a success or a failure), and ``SaslLimits`` holds
the input limits the mechanism parsers enforce. The mechanism modules raise
``MalformedResponse`` for input they cannot accept; the authenticator maps it to a failure
with reason "malformed" so that no client ever sees a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

# RFC 4616 §2: servers must accept identities and passwords of up to 255 octets; longer
# user names are never ours (an address is at most 254 octets, RFC 5321 §4.5.3.1.3).
MAX_USERNAME_BYTES = 255
# Generous for pass phrases, small enough that a single verification stays cheap.
MAX_PASSWORD_BYTES = 1024
# One decoded client response; a SCRAM client-final with a SHA-256 proof is ~150 bytes.
MAX_RESPONSE_BYTES = 8 * 1024

StepKind = Literal["challenge", "success", "failure"]
FailureReason = Literal["", "invalid", "malformed", "throttled", "unavailable", "cancelled"]


@dataclass(frozen=True)
class SaslLimits:
    """Input limits of the mechanism parsers (every limit is a named setting)."""

    max_username_bytes: int = MAX_USERNAME_BYTES
    max_password_bytes: int = MAX_PASSWORD_BYTES
    max_response_bytes: int = MAX_RESPONSE_BYTES


def _no_bindings() -> Mapping[str, bytes]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ClientInfo:
    """The connection a login arrives on.

    ``secured`` is true when TLS is active (or loopback is trusted by policy);
    ``channel_bindings`` maps channel-binding type names ("tls-exporter",
    "tls-server-end-point") to the data the TLS layer computed for this connection.
    """

    protocol: str
    ip: str
    secured: bool
    tls_version: str | None = None
    channel_bindings: Mapping[str, bytes] = field(default_factory=_no_bindings)


@dataclass(frozen=True)
class SaslStep:
    """The next thing to tell the client.

    challenge: send ``data`` (the protocol base64-encodes it) and wait for a response.
    success: the client is ``account``; non-empty ``data`` is "additional data with
    success" (RFC 4422 §5: SCRAM's server-final) that the protocol sends before its OK.
    failure: ``reason`` is "invalid" (wrong user or password), "malformed" (bad exchange
    syntax), "throttled" (too many failures, try later), "unavailable" (temporary server
    problem) or "cancelled"; ``message`` is human text for the reply.
    """

    kind: StepKind
    data: bytes = b""
    account: str | None = None
    reason: FailureReason = ""
    message: str = ""


class UnsupportedMechanism(Exception):
    """The client asked for a mechanism this server does not offer on this connection
    (unknown, disabled by policy, or PLAIN/LOGIN/-PLUS where they are not allowed)."""


class MalformedResponse(ValueError):
    """A client message that does not follow the mechanism's syntax or our limits.

    The message says what is wrong, for the log; clients get a generic reply.
    """


def challenge(data: bytes) -> SaslStep:
    return SaslStep("challenge", data)


FAILURE_MESSAGES: Mapping[str, str] = MappingProxyType({
    "invalid": "Authentication failed",
    "malformed": "Invalid authentication exchange",
    "throttled": "Too many failed logins; try again later",
    "unavailable": "Authentication temporarily unavailable; try again later",
    "cancelled": "Authentication cancelled",
})


def failure(reason: FailureReason, message: str = "") -> SaslStep:
    return SaslStep("failure", reason=reason, message=message or FAILURE_MESSAGES.get(reason, ""))


def check_identity(name: bytes, limits: SaslLimits, what: str = "user name") -> str:
    """A user name from the wire: UTF-8, not empty, no NUL, within the limit."""
    if not name:
        raise MalformedResponse(f"empty {what}")
    if len(name) > limits.max_username_bytes:
        raise MalformedResponse(f"{what} longer than {limits.max_username_bytes} bytes")
    if b"\0" in name:
        raise MalformedResponse(f"NUL in the {what}")
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse(f"{what} is not UTF-8") from None


def check_password(password: bytes, limits: SaslLimits) -> bytes:
    """A password from the wire: not empty, no NUL, within the limit (kept as bytes: an
    imported hash may have been made from a password in another encoding)."""
    if not password:
        raise MalformedResponse("empty password")
    if len(password) > limits.max_password_bytes:
        raise MalformedResponse(f"password longer than {limits.max_password_bytes} bytes")
    if b"\0" in password:
        raise MalformedResponse("NUL in the password")
    return password
