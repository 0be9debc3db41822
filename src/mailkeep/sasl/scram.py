"""The SCRAM server (RFC 5802; SHA-256 from RFC 7677) with TLS channel binding.

SCRAM proves knowledge of a password without sending it, and the server checks the proof
with stored verifiers (salt, iteration count, StoredKey, ServerKey - see
``mailkeep.sasl.credentials``), never the password. It is also mutual: the server-final
message proves that the server knows ServerKey.

The -PLUS variants bind the exchange to the TLS connection (RFC 5802 §6): the client puts
data only the two TLS endpoints know into its final message, so a man in the middle who
terminates TLS with another certificate cannot relay the login. Types supported here:
"tls-exporter" (RFC 9266, the default for TLS 1.3; not used on TLS 1.2, where it is only
safe with the extended master secret we cannot check) and "tls-server-end-point"
(RFC 5929 §4, a hash of our certificate; any TLS version). The TLS layer computes the
data; this module compares bytes.

``ScramServer`` is a pure state machine: feed it the decoded client messages, give it the
user's verifier (or a fake one) between the first two, take the messages to send back.
Syntax errors raise ``MalformedResponse``; a well-formed exchange that must fail (wrong
proof, channel-binding mismatch, downgrade) raises ``ScramRejected``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mailkeep.sasl.common import MalformedResponse, SaslLimits, check_identity
from mailkeep.sasl.credentials import SCRAM_HASHES, ScramVerifier

# Strongest first: what the authenticator advertises, in this order.
MECHANISMS = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1")
# Channel-binding types we accept, in order of preference.
CHANNEL_BINDING_TYPES = ("tls-exporter", "tls-server-end-point")
# RFC 9266 §3: tls-exporter without TLS 1.3 needs the extended master secret (RFC 7627);
# we cannot see whether it was negotiated, so it is not used below TLS 1.3.
_BEFORE_TLS13 = frozenset({"SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2"})

# RFC 5802 §7: cb-name = 1*(ALPHA / DIGIT / "." / "-").
_CB_NAME = re.compile(r"[A-Za-z0-9.-]+")
# RFC 5802 §7: attr-val = ALPHA "=" value, for extensions we ignore.
_EXTENSION = re.compile(r"[A-Za-z]=[^,]*")


class ScramRejected(Exception):
    """A well-formed exchange that must fail; the message says why (for the log)."""


def usable_channel_bindings(channel_bindings: Mapping[str, bytes],
                            tls_version: str | None) -> dict[str, bytes]:
    """The channel-binding types we accept on this connection, with their data."""
    usable: dict[str, bytes] = {}
    for name in CHANNEL_BINDING_TYPES:
        data = channel_bindings.get(name)
        if not data:
            continue
        if name == "tls-exporter" and tls_version in _BEFORE_TLS13:
            continue
        usable[name] = bytes(data)
    return usable


@dataclass(frozen=True)
class ClientFirst:
    """client-first-message (RFC 5802 §7)."""

    #: "n": the client does not support channel binding; "y": it does, but thinks the
    #: server does not; "p": it uses ``cbind_type``.
    cbind_flag: str
    cbind_type: str | None
    authzid: str  # "" when absent
    username: str
    nonce: str
    gs2_header: bytes  # as sent, for the "c=" check
    bare: bytes  # client-first-message-bare, for AuthMessage


@dataclass(frozen=True)
class ClientFinal:
    """client-final-message (RFC 5802 §7)."""

    channel_binding: bytes  # decoded "c=": gs2-header + cbind-data
    nonce: str
    proof: bytes
    without_proof: bytes


def _text(message: bytes, limits: SaslLimits) -> str:
    if len(message) > limits.max_response_bytes:
        raise MalformedResponse(f"SCRAM message longer than {limits.max_response_bytes} bytes")
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse("SCRAM message is not UTF-8") from None


def decode_saslname(value: str, limits: SaslLimits, what: str) -> str:
    """RFC 5802 §5.1: "=2C" is ",", "=3D" is "="; any other "=" is an error."""
    out: list[str] = []
    index = 0
    while index < len(value):
        ch = value[index]
        if ch == "=":
            escape = value[index + 1:index + 3].upper()
            if escape == "2C":
                out.append(",")
            elif escape == "3D":
                out.append("=")
            else:
                raise MalformedResponse(f"bad escape in the SCRAM {what}")
            index += 3
            continue
        out.append(ch)
        index += 1
    return check_identity("".join(out).encode("utf-8"), limits, what)


def encode_saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _check_nonce(nonce: str) -> str:
    # RFC 5802 §7: printable = %x21-2B / %x2D-7E (ASCII without "," and space).
    if not nonce or not all("!" <= ch <= "~" and ch != "," for ch in nonce):
        raise MalformedResponse("SCRAM nonce is empty or has characters outside printable ASCII")
    return nonce


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedResponse(f"SCRAM {what} is not base64") from None


def _check_extensions(attributes: list[str]) -> None:
    for attribute in attributes:
        if not _EXTENSION.fullmatch(attribute):
            raise MalformedResponse("SCRAM message has a malformed attribute")


def parse_client_first(message: bytes, limits: SaslLimits = SaslLimits()) -> ClientFirst:
    """Parse client-first-message (RFC 5802 §7); raises MalformedResponse."""
    text = _text(message, limits)
    # gs2-header = gs2-cbind-flag "," [ authzid ] ","
    cbind_type: str | None = None
    if text.startswith(("n,", "y,")):
        flag, rest = text[0], text[2:]
    elif text.startswith("p="):
        cbind_type, comma, rest = text[2:].partition(",")
        if not comma or not _CB_NAME.fullmatch(cbind_type):
            raise MalformedResponse("SCRAM channel-binding name is malformed")
        flag = "p"
    else:
        raise MalformedResponse("SCRAM message does not start with a GS2 header (n, y or p=)")
    authz_part, comma, bare = rest.partition(",")
    if not comma:
        raise MalformedResponse("SCRAM GS2 header is not terminated")
    authzid = ""
    if authz_part:
        if not authz_part.startswith("a="):
            raise MalformedResponse("SCRAM GS2 header has a malformed authzid")
        authzid = decode_saslname(authz_part[2:], limits, "authorization identity")
    gs2_header = text[:len(text) - len(bare)].encode("utf-8")
    attributes = bare.split(",")
    if attributes[0].startswith("m="):
        # RFC 5802 §5.1: an unknown mandatory extension means authentication must fail.
        raise MalformedResponse("SCRAM mandatory extension (m=) is not supported")
    if len(attributes) < 2 or not attributes[0].startswith("n=") or not attributes[1].startswith("r="):
        raise MalformedResponse("SCRAM client-first needs n= and r= attributes, in that order")
    username = decode_saslname(attributes[0][2:], limits, "user name")
    nonce = _check_nonce(attributes[1][2:])
    _check_extensions(attributes[2:])
    return ClientFirst(flag, cbind_type, authzid, username, nonce, gs2_header, bare.encode("utf-8"))


def parse_client_final(message: bytes, limits: SaslLimits = SaslLimits()) -> ClientFinal:
    """Parse client-final-message (RFC 5802 §7); raises MalformedResponse."""
    text = _text(message, limits)
    attributes = text.split(",")
    if (len(attributes) < 3 or not attributes[0].startswith("c=")
            or not attributes[1].startswith("r=") or not attributes[-1].startswith("p=")):
        raise MalformedResponse("SCRAM client-final needs c=, r= ... p= attributes")
    channel_binding = _b64(attributes[0][2:], "channel binding")
    nonce = _check_nonce(attributes[1][2:])
    _check_extensions(attributes[2:-1])
    proof = _b64(attributes[-1][2:], "proof")
    without_proof = text[:len(text) - len(attributes[-1]) - 1].encode("utf-8")
    return ClientFinal(channel_binding, nonce, proof, without_proof)


class ScramServer:
    """The server side of one SCRAM exchange.

    ``channel_bindings`` are the usable types on this connection
    (``usable_channel_bindings``): non-empty means the -PLUS mechanisms were advertised.
    ``server_nonce`` is fresh randomness from the caller (printable ASCII without ",").
    """

    def __init__(self, mechanism: str, *, channel_bindings: Mapping[str, bytes],
                 server_nonce: str, limits: SaslLimits = SaslLimits()) -> None:
        self.mechanism = mechanism
        self.plus = mechanism.endswith("-PLUS")
        self.hash_name = SCRAM_HASHES[mechanism.removesuffix("-PLUS")]
        self._bindings = dict(channel_bindings)
        self._server_nonce = _check_nonce(server_nonce)
        self._limits = limits
        self._client_first: ClientFirst | None = None
        self._verifier: ScramVerifier | None = None
        self._server_first = b""
        self._nonce = ""

    @property
    def base_mechanism(self) -> str:
        """The mechanism without -PLUS: which stored verifier to use."""
        return self.mechanism.removesuffix("-PLUS")

    def receive_client_first(self, message: bytes) -> ClientFirst:
        """Parse and check the client-first message; raises MalformedResponse or ScramRejected."""
        if self._client_first is not None:
            raise RuntimeError("client-first already received")
        first = parse_client_first(message, self._limits)
        # RFC 5802 §6: how the flag must match what was negotiated.
        if self.plus:
            if first.cbind_flag != "p":
                raise ScramRejected(f"{self.mechanism} without channel binding (flag "
                                    f"{first.cbind_flag!r})")
            if first.cbind_type not in self._bindings:
                raise MalformedResponse(f"unsupported channel binding type {first.cbind_type}")
        elif first.cbind_flag == "p":
            raise MalformedResponse(f"channel binding requested with {self.mechanism}, "
                                    "not the -PLUS mechanism")
        elif first.cbind_flag == "y" and self._bindings:
            # RFC 5802 §6: "y" means the client supports channel binding but believes the
            # server does not; we advertised -PLUS, so someone removed it on the way.
            raise ScramRejected("channel binding downgrade: client sent 'y' although -PLUS "
                                "was advertised")
        self._client_first = first
        return first

    def server_first(self, verifier: ScramVerifier) -> bytes:
        """server-first-message: combined nonce, salt and iteration count (RFC 5802 §7)."""
        if self._client_first is None or self._verifier is not None:
            raise RuntimeError("server-first out of order")
        self._verifier = verifier
        self._nonce = self._client_first.nonce + self._server_nonce
        salt = base64.b64encode(verifier.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={verifier.iterations}".encode("ascii")
        return self._server_first

    def receive_client_final(self, message: bytes) -> bytes:
        """Check the client's proof; returns server-final-message ("v=" ServerSignature).

        Raises MalformedResponse or ScramRejected.
        """
        first, verifier = self._client_first, self._verifier
        if first is None or verifier is None:
            raise RuntimeError("client-final out of order")
        final = parse_client_final(message, self._limits)
        # RFC 5802 §7: c= is base64(gs2-header [cbind-data]); cbind-data only with "p".
        expected = first.gs2_header
        if first.cbind_flag == "p":
            assert first.cbind_type is not None
            expected += self._bindings[first.cbind_type]
        if not hmac.compare_digest(final.channel_binding, expected):
            raise ScramRejected("channel binding data does not match" if first.cbind_flag == "p"
                                else "GS2 header in c= differs from client-first")
        if not hmac.compare_digest(final.nonce.encode("ascii"), self._nonce.encode("ascii")):
            raise ScramRejected("nonce differs from the server-first nonce")
        size = hashlib.new(self.hash_name).digest_size
        if len(final.proof) != size:
            raise MalformedResponse(f"SCRAM proof is not {size} bytes")
        # RFC 5802 §3: AuthMessage = client-first-bare "," server-first "," client-final
        # without proof; ClientKey = proof XOR HMAC(StoredKey, AuthMessage), and the client
        # knows the password iff H(ClientKey) == StoredKey.
        auth_message = first.bare + b"," + self._server_first + b"," + final.without_proof
        signature = hmac.digest(verifier.stored_key, auth_message, self.hash_name)
        client_key = bytes(a ^ b for a, b in zip(final.proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self.hash_name, client_key).digest(),
                                   verifier.stored_key):
            raise ScramRejected("wrong proof (wrong password)")
        server_signature = hmac.digest(verifier.server_key, auth_message, self.hash_name)
        return b"v=" + base64.b64encode(server_signature)
