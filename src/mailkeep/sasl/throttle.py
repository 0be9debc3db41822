"""Failed-login throttling, shared by every protocol that authenticates (IMAP, POP3, SMTP).

Password guessing is slowed in three ways, all counted in a sliding window
(``failure_window``):

- every failure is answered after a delay that doubles with the number of recent failures
  of the client's address or of the account (``first_failure_delay`` up to
  ``max_failure_delay``), so a client in a loop gets a few guesses per minute;
- an address with ``max_failures_per_ip`` failures is refused outright ("throttled")
  without its password being checked, until its failures age out of the window;
- an account with ``max_failures_per_account`` failures (a guesser spread over many
  addresses) is locked against every address that has failed recently, while a client on
  a clean address - most likely its owner - may still log in, answered after the maximum
  delay. A lock against everyone would let any stranger lock a user out.

A success forgets the failures of that address for that account (a user who mistyped),
but not its failures for other accounts: logging in to one's own account does not buy
more guesses at someone else's.

IPv6 clients are counted per /64, the smallest block a subscriber usually gets. Memory is
bounded: at most ``max_tracked`` addresses and accounts each; the least recently failing
are forgotten first. Pure state: the caller passes the time and does the sleeping.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

# How many addresses and how many accounts are remembered (each entry is a few hundred
# bytes at most: a deque of at most max_failures_* timestamps).
MAX_TRACKED = 10_000
# A key longer than this (a user name from the wire) is cut: it only has to be distinct.
MAX_KEY_LENGTH = 320

Verdict = Literal["allow", "throttled", "slow"]


@dataclass(frozen=True)
class ThrottlePolicy:
    max_failures_per_ip: int = 10
    max_failures_per_account: int = 20
    failure_window: float = 900.0
    first_failure_delay: float = 0.5
    max_failure_delay: float = 15.0
    max_tracked: int = MAX_TRACKED


def address_key(ip: str) -> str:
    """The counting key of a client address: IPv4 as is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return ip[:MAX_KEY_LENGTH]  # "local" (Unix socket) or something the caller made up
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Throttle:
    """Failure counters per address and per account; all times in seconds of one clock."""

    def __init__(self, policy: ThrottlePolicy = ThrottlePolicy()) -> None:
        self.policy = policy
        # key -> failures (time, the other key), oldest first; dicts ordered by last failure.
        self._ips: OrderedDict[str, deque[tuple[float, str | None]]] = OrderedDict()
        self._accounts: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()

    def set_policy(self, policy: ThrottlePolicy) -> None:
        """New limits (configuration reload); the counters are kept."""
        self.policy = policy

    # -- questions -------------------------------------------------------------------

    def ip_failures(self, ip: str, now: float) -> int:
        return len(self._recent(self._ips, address_key(ip), now))

    def account_failures(self, account: str, now: float) -> int:
        return len(self._recent(self._accounts, account[:MAX_KEY_LENGTH], now))

    def check(self, ip: str, account: str | None, now: float) -> Verdict:
        """May this attempt proceed? "throttled": refuse without checking the password;
        "slow": check it, but answer (success or failure) after the maximum delay."""
        self._expire(now)
        ip_failures = self.ip_failures(ip, now)
        if ip_failures >= self.policy.max_failures_per_ip:
            return "throttled"
        if account is not None and (self.account_failures(account, now)
                                    >= self.policy.max_failures_per_account):
            return "throttled" if ip_failures else "slow"
        return "allow"

    def delay_for(self, failures: int) -> float:
        """The delay before answering the ``failures``-th recent failure (1-based)."""
        if failures <= 0 or self.policy.first_failure_delay <= 0:
            return 0.0
        exponent = min(failures - 1, 32)  # 2**32 half-seconds is far beyond any maximum
        return min(self.policy.max_failure_delay, self.policy.first_failure_delay * 2**exponent)

    def longest_delay(self) -> float:
        """The delay for answers to a locked account ("slow") and to throttled clients."""
        return self.policy.max_failure_delay if self.policy.first_failure_delay > 0 else 0.0

    # -- events ----------------------------------------------------------------------

    def failure(self, ip: str, account: str | None, now: float) -> float:
        """Count a failure; returns how long to wait before answering it."""
        self._expire(now)
        ip_key = address_key(ip)
        account_key = account[:MAX_KEY_LENGTH] if account is not None else None
        ip_count = self._add(self._ips, ip_key, (now, account_key),
                             self.policy.max_failures_per_ip, now)
        account_count = 0
        if account_key is not None:
            account_count = self._add(self._accounts, account_key, (now, ip_key),
                                      self.policy.max_failures_per_account, now)
        return self.delay_for(max(ip_count, account_count))

    def success(self, ip: str, account: str) -> None:
        """Forget the failures of this address for this account (and only those)."""
        ip_key, account_key = address_key(ip), account[:MAX_KEY_LENGTH]
        failures = self._ips.get(ip_key)
        if failures is not None:
            kept = deque((t, a) for t, a in failures if a != account_key)
            if kept:
                self._ips[ip_key] = deque(kept, maxlen=failures.maxlen)
            else:
                del self._ips[ip_key]
        attempts = self._accounts.get(account_key)
        if attempts is not None:
            kept_attempts = deque((t, i) for t, i in attempts if i != ip_key)
            if kept_attempts:
                self._accounts[account_key] = deque(kept_attempts, maxlen=attempts.maxlen)
            else:
                del self._accounts[account_key]

    def tracked(self) -> tuple[int, int]:
        """(addresses, accounts) currently remembered."""
        return len(self._ips), len(self._accounts)

    # -- bookkeeping -----------------------------------------------------------------

    def _recent(self, table: OrderedDict, key: str, now: float) -> deque:
        failures = table.get(key)
        if failures is None:
            return deque()
        horizon = now - self.policy.failure_window
        while failures and failures[0][0] <= horizon:
            failures.popleft()
        if not failures:
            del table[key]
        return failures

    def _add(self, table: OrderedDict, key: str, item: tuple, limit: int, now: float) -> int:
        failures = self._recent(table, key, now)
        if key not in table:
            # Only as many failures as the limit are needed: beyond it the answer is
            # "throttled" anyway, and the oldest drop out of the window first.
            failures = deque(maxlen=max(limit, 1))
            table[key] = failures
            while len(table) > self.policy.max_tracked:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        failures.append(item)
        return len(failures)

    def _expire(self, now: float) -> None:
        """Drop keys whose last failure left the window (cheap: they are at the front)."""
        horizon = now - self.policy.failure_window
        for table in (self._ips, self._accounts):
            while table:
                key, failures = next(iter(table.items()))
                if failures and failures[-1][0] > horizon:
                    break
                del table[key]
