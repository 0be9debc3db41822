"""CRAM-MD5 (RFC 2195) from Dovecot's stored "intermediate state" ({CRAM-MD5} hashes).

CRAM-MD5 proves knowledge of a password by answering a challenge with
HMAC-MD5(password, challenge) (RFC 2104). A server that does not store the password can
still compute that answer if it stores the two MD5 states HMAC starts from: the state after
absorbing ``key XOR opad`` and the state after absorbing ``key XOR ipad`` (RFC 2104 §4,
"implementation note"). Dovecot's ``{CRAM-MD5}`` scheme stores exactly that: the outer state,
then the inner state, each as MD5's four 32-bit words A, B, C, D in little-endian order,
64 hex digits in all.

Python's hashlib does not expose MD5's internal state, so this module carries the MD5
compression function for one 64-byte block and the final padding (RFC 1321 §3). Speed
does not matter here: one HMAC is four compressions.

Such a state is password-equivalent for CRAM-MD5 and cheap to brute-force (MD5), which is
why ``mailkeep.auth.passwords`` flags it as a weak scheme.
"""

from __future__ import annotations

import hmac
import math
import struct

_MASK = 0xFFFFFFFF
# RFC 1321 §3.3: the initial state (words A, B, C, D).
MD5_INITIAL_STATE = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
# RFC 1321 §3.4: T[i] = floor(2**32 * abs(sin(i))), i = 1..64.
_T = tuple(int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64))
# RFC 1321 §3.4: per-step left-rotation amounts of rounds 1 to 4.
_S = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
_BLOCK = 64
# The state is 2 x 16 bytes (outer, inner) = 64 hex digits.
STATE_BYTES = 32
# A challenge is made by our own server (RFC 2195 §2: "<pid.clock@hostname>"); anything
# much longer is a programming error, not a login.
MAX_CHALLENGE_BYTES = 4096


def md5_compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    """Absorb one 64-byte block into an MD5 state (RFC 1321 §3.4)."""
    if len(block) != _BLOCK:
        raise ValueError("an MD5 block is exactly 64 bytes")
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f = (b & c) | (~b & d)
            g = i
        elif i < 32:
            f = (d & b) | (~d & c)
            g = (5 * i + 1) % 16
        elif i < 48:
            f = b ^ c ^ d
            g = (3 * i + 5) % 16
        else:
            f = c ^ (b | (~d & _MASK))
            g = (7 * i) % 16
        f = (f + a + _T[i] + x[g]) & _MASK
        a, d, c = d, c, b
        b = (b + ((f << _S[i]) | (f >> (32 - _S[i])))) & _MASK
    return ((state[0] + a) & _MASK, (state[1] + b) & _MASK,
            (state[2] + c) & _MASK, (state[3] + d) & _MASK)


def md5_finish(state: tuple[int, int, int, int], data: bytes, already: int) -> bytes:
    """The MD5 digest of (``already`` bytes absorbed into ``state``) followed by ``data``.

    ``already`` must be a multiple of 64. RFC 1321 §3.1-3.2: pad with 0x80, zeros, then the
    total length in bits as a little-endian 64-bit number.
    """
    if already % _BLOCK:
        raise ValueError("the absorbed length must be a multiple of 64 bytes")
    total_bits = ((already + len(data)) * 8) & 0xFFFFFFFFFFFFFFFF
    padded = data + b"\x80" + b"\0" * ((55 - len(data)) % _BLOCK) + struct.pack("<Q", total_bits)
    for offset in range(0, len(padded), _BLOCK):
        state = md5_compress(state, padded[offset:offset + _BLOCK])
    return struct.pack("<4I", *state)


def md5_digest(data: bytes) -> bytes:
    """Plain MD5 (used for keys longer than 64 bytes, RFC 2104 §2)."""
    return md5_finish(MD5_INITIAL_STATE, data, 0)


def cram_md5_state(password: str | bytes) -> bytes:
    """The 32-byte HMAC-MD5 intermediate state for ``password``: outer state, inner state.

    ``.hex()`` of the result is what Dovecot stores after ``{CRAM-MD5}``.
    """
    key = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if len(key) > _BLOCK:
        key = md5_digest(key)  # RFC 2104 §2: longer keys are hashed first
    key = key.ljust(_BLOCK, b"\0")
    outer = md5_compress(MD5_INITIAL_STATE, bytes(k ^ 0x5C for k in key))
    inner = md5_compress(MD5_INITIAL_STATE, bytes(k ^ 0x36 for k in key))
    return struct.pack("<4I", *outer) + struct.pack("<4I", *inner)


def parse_cram_md5_state(text: str) -> bytes:
    """Decode the 64 hex digits stored after ``{CRAM-MD5}``; raises ValueError."""
    if len(text) != STATE_BYTES * 2:
        raise ValueError(f"a CRAM-MD5 state is {STATE_BYTES * 2} hex digits, not {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError("a CRAM-MD5 state must be hexadecimal") from None


def cram_md5_response(state: bytes, challenge: bytes) -> str:
    """The expected CRAM-MD5 answer (hex HMAC-MD5, RFC 2195 §2) to ``challenge``."""
    if len(state) != STATE_BYTES:
        raise ValueError(f"a CRAM-MD5 state is {STATE_BYTES} bytes")
    if len(challenge) > MAX_CHALLENGE_BYTES:
        raise ValueError(f"a CRAM-MD5 challenge is at most {MAX_CHALLENGE_BYTES} bytes")
    outer = struct.unpack("<4I", state[:16])
    inner = struct.unpack("<4I", state[16:])
    # RFC 2104 §2: H(K XOR opad, H(K XOR ipad, text)); both pads already absorbed.
    inner_digest = md5_finish(inner, challenge, _BLOCK)  # type: ignore[arg-type]
    return md5_finish(outer, inner_digest, _BLOCK).hex()  # type: ignore[arg-type]


def verify_cram_md5_response(state: bytes, challenge: bytes, response: str | bytes) -> bool:
    """True if ``response`` (the client's hex digest) answers ``challenge`` correctly."""
    if isinstance(response, bytes):
        try:
            response = response.decode("ascii")
        except UnicodeDecodeError:
            return False
    expected = cram_md5_response(state, challenge)
    return hmac.compare_digest(expected, response.lower())
