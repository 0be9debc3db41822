"""The login cache: proof of a recent successful password check, never the password.

Argon2id costs a few hundred milliseconds per check by design; clients that reconnect
every few minutes (phones, mbsync, several IMAP connections per client) would pay it every
time. After a successful check the authenticator remembers, per user,

    HMAC-SHA256(key, user NUL password NUL stored-hash)

with ``key`` random per process and never written anywhere. A later login whose digest
matches skips the hash. Someone who reads the process memory learns nothing usable: the
digest cannot be reversed without the key, and with it an attacker would still have to
guess the password - at the speed of HMAC, which is why entries expire (``ttl``) and why
the key is never stored. Because the stored hash is part of the digest, a password change
(a new hash) invalidates the entry without any bookkeeping.

Bounded: at most ``max_entries`` users (least recently used forgotten first). Pure state:
the caller passes the time.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict

# RFC 2104 §3 recommends a key at least as long as the hash output.
KEY_BYTES = 32
MAX_ENTRIES = 10_000


class LoginCache:
    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES, key: bytes | None = None) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = key if key is not None else secrets.token_bytes(KEY_BYTES)
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # user -> (digest, expiry)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def configure(self, ttl: float, max_entries: int = MAX_ENTRIES) -> None:
        """New limits (configuration reload): entries stay, within the new bounds."""
        self.ttl, self.max_entries = ttl, max_entries
        if not self.enabled:
            self._entries.clear()
        while len(self._entries) > max(max_entries, 0):
            self._entries.popitem(last=False)

    def _digest(self, user: str, password: bytes, stored_hash: str) -> bytes:
        message = (user.encode("utf-8", "surrogateescape") + b"\0" + password + b"\0"
                   + stored_hash.encode("utf-8", "surrogateescape"))
        return hmac.digest(self._key, message, "sha256")

    def remember(self, user: str, password: bytes, stored_hash: str, now: float) -> None:
        """Record that ``password`` matched ``stored_hash`` for ``user`` at ``now``."""
        if not self.enabled:
            return
        self._entries[user] = (self._digest(user, password, stored_hash), now + self.ttl)
        self._entries.move_to_end(user)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def check(self, user: str, password: bytes, stored_hash: str, now: float) -> bool:
        """True if this exact password was verified against this exact hash recently."""
        entry = self._entries.get(user)
        if entry is None or not self.enabled:
            return False
        digest, expiry = entry
        if now >= expiry or expiry > now + self.ttl:
            # Expired, or remembered under a longer TTL than the current one.
            del self._entries[user]
            return False
        if not hmac.compare_digest(digest, self._digest(user, password, stored_hash)):
            # A wrong password, or the hash changed: keep the entry (an attacker's guess
            # must not evict the owner's) - a changed hash can never match it again anyway.
            return False
        self._entries.move_to_end(user)
        return True

    def forget(self, user: str) -> None:
        self._entries.pop(user, None)

    def __len__(self) -> int:
        return len(self._entries)
