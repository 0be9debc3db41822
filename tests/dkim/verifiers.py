"""dkimpy as the verifier of the DKIM tests.

dkimpy (an independent DKIM implementation) verifies what we sign, with the TXT records
our key store produced handed to it instead of DNS. For ed25519-sha256 it needs PyNaCl
(its "ed25519" extra, in the test requirements).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

import dkim

DOMAIN = "example.com"
# One time for all signatures of a run. Not a fixed date: verifiers refuse t= values
# far in the future, so signatures must be made at about the real time.
NOW = int(time.time())


def require_pynacl() -> None:
    try:
        import nacl.signing  # noqa: F401
    except ImportError:
        pytest.fail("PyNaCl is not installed: dkimpy needs it to verify ed25519-sha256 "
                    "(pip install -r requirements.lock)")


def dns_from(records: dict[str, str]) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc: the TXT record of a name, from our records instead of DNS."""
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode("ascii").rstrip("."))
        return None if value is None else value.encode("ascii")
    return lookup


def signature_count(message: bytes) -> int:
    return len(re.findall(rb"(?im)^dkim-signature:", message.split(b"\r\n\r\n", 1)[0]))


def dkimpy_results(message: bytes, records: dict[str, str]) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of ``message``, top one first."""
    require_pynacl()
    lookup = dns_from(records)
    results = []
    for index in range(signature_count(message)):
        try:
            results.append(bool(dkim.DKIM(message).verify(idx=index, dnsfunc=lookup)))
        except dkim.DKIMException:  # e.g. "body hash mismatch": dkim.verify() says False
            results.append(False)
    return results
