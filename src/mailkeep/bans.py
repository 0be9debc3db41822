"""Brute-force bans: an address that fails to log in too often is refused at connect by
every listener (SMTP, submission, IMAP, POP3) for a while - what the seeds ran fail2ban
for, done natively (docs/auth.md, "Bans").

Three parts, one module:

- the rule: failed logins per address (IPv6 per /64) over a sliding window
  (``ban_window``); at ``ban_after_failures`` the address is banned for ``ban_duration``,
  doubled for each earlier ban that ended less than ``ban_max_duration`` ago, up to
  ``ban_max_duration``;
- the list: bans are rows of ``data_dir/bans.db`` (SQLite, WAL) so they survive restarts,
  mirrored in a dict that the connection path reads without any SQL; the server re-reads
  the table within ``REFRESH_INTERVAL`` of a change made by ``mailkeep ban`` (SQLite's
  ``data_version`` tells it, without reading the table);
- the refusal each protocol sends a banned client before closing (``ban_refusal``).

Addresses in the allow-list (``ban_allow``; loopback by default) are never banned, and are
also exempt from the per-address connection rate limits (``mailkeep.servers.listener``),
like Postfix's ``smtpd_client_event_limit_exceptions``. Memory is bounded everywhere: the
failure counters, the rows kept and the refusal-log throttle each have a named maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailkeep.imap.response import bye as imap_bye
from mailkeep.logfmt import log
from mailkeep.pop3.server import Reply as Pop3Reply
from mailkeep.smtp.reply import Reply as SmtpReply
from mailkeep.sqlite_schema import connect, init_schema

if TYPE_CHECKING:
    from mailkeep.config.schema import AuthConfig

logger = logging.getLogger("mailkeep.bans")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BANS_FILE = "bans.db"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE bans (
    network  TEXT PRIMARY KEY,   -- "192.0.2.7" or "2001:db8:1:2::/64" (client_key)
    reason   TEXT NOT NULL,
    source   TEXT NOT NULL,      -- "auth" (the rule), "cli", ...
    created  REAL NOT NULL,      -- Unix time
    until    REAL NOT NULL,      -- Unix time, an expired row is kept to double the next ban
    offences INTEGER NOT NULL DEFAULT 0  -- automatic bans of this address so far
)
"""

#: The networks never banned unless the configuration says otherwise: a local webmail,
#: proxy or monitoring check that logs in for many users must not lock everyone out.
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
#: How often the running server looks for changes made by ``mailkeep ban`` (seconds).
REFRESH_INTERVAL = 1.0
#: How often expired bans leave the in-memory set and forgotten rows leave the file.
SWEEP_INTERVAL = 60.0
#: A refused banned client is logged at most this often per address (seconds).
REFUSAL_LOG_INTERVAL = 60.0
#: Addresses whose failures are counted at most; the least recently failing go first.
MAX_TRACKED_ADDRESSES = 10_000
#: Rows (active bans and remembered past ones) kept at most; expired ones go first.
MAX_BANS = 100_000
#: Addresses remembered for the refusal-log throttle.
MAX_REFUSALS_TRACKED = 10_000
#: The longest ban anyone can set (ten years): a typo must not overflow a timestamp.
MAX_BAN_DURATION = 10 * 365 * 86400.0
MAX_REASON_LENGTH = 200
MAX_SOURCE_LENGTH = 32
#: The server waits at most this long for the file's write lock (held by the CLI for a
#: moment); it never blocks its event loop longer. The CLI waits longer.
SERVER_BUSY_TIMEOUT = 0.2
CLI_BUSY_TIMEOUT = 10.0

#: What a banned client is told before the connection is closed.
BANNED_TEXT = "Your address is blocked for repeated authentication failures"


class BanListError(Exception):
    """The ban file cannot be opened or was written by a newer Mailkeep."""


class NotBannable(ValueError):
    """The address is in the allow-list (``ban_allow``)."""


@dataclass(frozen=True)
class Ban:
    """One ban of one address (IPv4) or /64 (IPv6)."""

    network: str
    reason: str
    source: str
    created: float
    until: float
    offences: int = 0

    def active(self, now: float) -> bool:
        return self.until > now


@dataclass(frozen=True)
class BanPolicy:
    """The ban rule (``[auth] ban_*`` in the configuration, docs/auth.md)."""

    #: Failed logins from one address within ``window`` that ban it; 0 turns the rule off.
    after_failures: int = 20
    window: float = 3600.0
    duration: float = 3600.0
    max_duration: float = 7 * 86400.0
    allow: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in LOOPBACK_NETWORKS)
    max_tracked: int = MAX_TRACKED_ADDRESSES

    @classmethod
    def from_config(cls, auth: AuthConfig) -> BanPolicy:
        return cls(after_failures=auth.ban_after_failures, window=auth.ban_window,
                   duration=auth.ban_duration, max_duration=auth.ban_max_duration,
                   allow=parse_networks(auth.ban_allow))

    def duration_for(self, offences: int) -> float:
        """How long the ``offences``-th automatic ban lasts (1-based): doubling."""
        exponent = min(max(offences - 1, 0), 62)  # 2**62 times anything is past the cap
        return min(self.max_duration, self.duration * 2**exponent)


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """Networks from "10.0.0.0/8", "2001:db8::/32" or single addresses; raises ValueError.
    Host bits are allowed ("192.0.2.7/24" means 192.0.2.0/24), as in Postfix's mynetworks."""
    return tuple(ipaddress.ip_network(text.strip(), strict=False) for text in texts)


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])  # drop an IPv6 zone index
    except ValueError:
        return None  # "local" (a Unix socket) or garbage
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(ip: str) -> str | None:
    """The key an address is counted and banned under: IPv4 as is, IPv6 by its /64 (the
    smallest block a subscriber usually gets, so a client cannot dodge a ban by changing
    the low bits). None for anything that is not an IP address (a Unix-socket client)."""
    address = _address(ip)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _key_network(key: str) -> Network:
    return ipaddress.ip_network(key, strict=False)


def ban_refusal(family: str, hostname: str, implicit_tls: bool) -> bytes:
    """What a banned client is told at connect, in its protocol; empty on implicit TLS
    ports (a plaintext line would only garble a TLS handshake, and refusing before the
    handshake costs the server nothing)."""
    if implicit_tls:
        return b""
    if family == "imap":
        # RFC 9051 §7.1.5: BYE at connect; RFC 5530 UNAVAILABLE: try again later.
        return imap_bye(BANNED_TEXT, "UNAVAILABLE")
    if family == "pop3":
        # RFC 1939 §4 greeting replaced by -ERR; RFC 3206 SYS/TEMP: a temporary refusal.
        return Pop3Reply(False, BANNED_TEXT, "SYS/TEMP").to_bytes()
    # RFC 5321 §3.1/§4.2.4: 421 instead of the greeting, then close. RFC 3463 X.7.1:
    # refused for a security reason.
    return SmtpReply(421, "4.7.1", f"{hostname} {BANNED_TEXT}").to_bytes()


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


class BanList:
    """The server's bans: the rule, the persistent list and the fast lookup.

    One instance per process, shared by the authenticator (which reports failures) and
    every listener (which asks ``is_banned`` at connect). All times are Unix seconds of
    ``clock``; bans are stored with absolute end times so they survive restarts.
    """

    def __init__(self, path: Path | None, policy: BanPolicy = BanPolicy(), *,
                 clock: Callable[[], float] = time.time,
                 busy_timeout: float = SERVER_BUSY_TIMEOUT) -> None:
        self.path = path
        self.policy = policy
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        # Every row of the file (active and remembered bans), and the active ones: the
        # connection path reads only ``_active``.
        self._rows: dict[str, Ban] = {}
        self._active: dict[str, Ban] = {}
        # Changes the file has not taken yet (it was locked): key -> row, None to delete.
        self._pending: dict[str, Ban | None] = {}
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._refusals_logged: OrderedDict[str, float] = OrderedDict()
        self._data_version: int | None = None
        self._last_sweep = 0.0
        #: Bans and refusals are counted here (mailkeep.metrics.ServerMetrics), if set.
        self.metrics: Any = None
        if path is not None:
            try:
                self._conn = connect(path, busy_timeout)
                init_schema(self._conn, SCHEMA, SCHEMA_VERSION, what="ban list",
                            error=BanListError)
                # A ban lost in a power cut is re-earned; NORMAL keeps commits off fsync
                # (WAL still survives a crash of the process).
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._load()
            except (sqlite3.Error, OSError) as exc:
                self.close()
                raise BanListError(f"cannot open {path}: {exc}") from exc
            except BanListError:
                self.close()
                raise

    @classmethod
    def open(cls, data_dir: Path, policy: BanPolicy = BanPolicy(), *,
             clock: Callable[[], float] = time.time) -> BanList:
        """The server's list in ``data_dir/bans.db``. If the file cannot be used, bans are
        kept in memory only (logged as an error): a broken file must not stop the server."""
        try:
            return cls(data_dir / BANS_FILE, policy, clock=clock)
        except BanListError as exc:
            log(logger, "ban list not persistent; bans last until the server stops",
                logging.ERROR, event="bans", error=str(exc))
            return cls(None, policy, clock=clock)

    def configure(self, policy: BanPolicy) -> None:
        """New rule (configuration reload); bans and counters are kept, but an address
        newly in the allow-list is unbanned at once."""
        self.policy = policy
        now = self.clock()
        self._active = {k: b for k, b in self._rows.items()
                        if b.active(now) and not self._allowed_key(k)}

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._flush_pending()
            self._conn.close()
            self._conn = None

    # -- the connection path ---------------------------------------------------------

    @property
    def has_active(self) -> bool:
        """Is anyone banned at all? (Listeners skip the lookup when not.)"""
        return bool(self._active)

    def is_banned(self, ip: str) -> Ban | None:
        """The ban covering ``ip``, or None: a dict lookup, no SQL."""
        if not self._active:
            return None
        # asyncio reports IPv4 peers in canonical form, which is their key.
        key = ip if ":" not in ip else client_key(ip)
        ban = self._active.get(key) if key is not None else None
        if ban is None:
            return None
        if ban.until <= self.clock():
            del self._active[key]  # type: ignore[arg-type]
            return None
        return ban

    def allowed(self, ip: str) -> bool:
        """In the allow-list (never banned, exempt from connection rates). A client that is
        not on an IP address (Unix socket) counts as allowed."""
        address = _address(ip)
        if address is None:
            return True
        return any(address in network for network in self.policy.allow)

    def note_refusal(self, ip: str, listener: str) -> None:
        """Log a refused banned client, at most once per ``REFUSAL_LOG_INTERVAL`` per address
        (a bot reconnecting in a loop must not flood the log)."""
        if self.metrics is not None:
            self.metrics.ban_refused()
        key = client_key(ip) or ip
        now = self.clock()
        last = self._refusals_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return
        self._refusals_logged[key] = now
        self._refusals_logged.move_to_end(key)
        while len(self._refusals_logged) > MAX_REFUSALS_TRACKED:
            self._refusals_logged.popitem(last=False)
        ban = self._active.get(key)
        log(logger, "connection refused", logging.INFO, event="ban", reason="banned",
            client=ip, listener=listener, until=_when(ban.until) if ban else "")

    # -- the rule --------------------------------------------------------------------

    def record_failure(self, ip: str) -> Ban | None:
        """Count a failed login of ``ip``; returns the ban it earned, if any. Failures of
        an address already banned, allowed or not on IP are not counted."""
        policy = self.policy
        if policy.after_failures <= 0:
            return None
        key = client_key(ip)
        if key is None or self._allowed_key(key):
            return None
        now = self.clock()
        if key in self._active and self._active[key].active(now):
            return None
        failures = self._failures.get(key)
        if failures is None or failures.maxlen != policy.after_failures:
            failures = deque(failures or (), maxlen=policy.after_failures)
            self._failures[key] = failures
        self._failures.move_to_end(key)
        horizon = now - policy.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        failures.append(now)
        self._forget_old_failures(horizon)
        if len(failures) < policy.after_failures:
            return None
        count = len(failures)
        del self._failures[key]
        previous = self._rows.get(key)
        offences = (previous.offences if previous is not None else 0) + 1
        duration = policy.duration_for(offences)
        ban = Ban(key, f"{count} failed logins within {policy.window:g} s", "auth", now,
                  now + duration, offences)
        self._store(ban)
        if self.metrics is not None:
            self.metrics.banned(ban.source)
        log(logger, "ip banned", logging.WARNING, event="ban", ip=key, failures=count,
            until=_when(ban.until), duration=round(duration), offences=offences)
        return ban

    def failures(self, ip: str) -> int:
        """Recent failures counted for ``ip`` (for tests and diagnostics)."""
        key = client_key(ip)
        failures = self._failures.get(key) if key is not None else None
        if not failures:
            return 0
        horizon = self.clock() - self.policy.window
        return sum(1 for stamp in failures if stamp > horizon)

    def _forget_old_failures(self, horizon: float) -> None:
        # The least recently failing are at the front: drop those whose last failure left
        # the window, then any beyond the cap.
        while self._failures:
            key, stamps = next(iter(self._failures.items()))
            if stamps and stamps[-1] > horizon and len(self._failures) <= self.policy.max_tracked:
                break
            del self._failures[key]

    def _allowed_key(self, key: str) -> bool:
        # Overlap, not containment: an allowed single IPv6 address protects its whole /64,
        # since a ban of the /64 would refuse it too.
        network = _key_network(key)
        return any(network.overlaps(allowed) for allowed in self.policy.allow)

    # -- administration (``mailkeep ban``) ---------------------------------------------

    def ban(self, ip: str, reason: str, duration: float, source: str) -> Ban:
        """Ban the address (or IPv6 /64) of ``ip`` for ``duration`` seconds from now,
        replacing a ban it has. Raises NotBannable for an allowed address and ValueError
        for anything else that is not an address or /64."""
        key = _target_key(ip)
        if self._allowed_key(key):
            raise NotBannable(f"{key} is in ban_allow and is never banned")
        self.refresh()  # act on the file as it is now, not as this instance last read it
        if not 0 < duration <= MAX_BAN_DURATION:
            raise ValueError(f"a ban lasts more than 0 s and at most {MAX_BAN_DURATION:g} s")
        now = self.clock()
        previous = self._rows.get(key)
        ban = Ban(key, _clean(reason, MAX_REASON_LENGTH), _clean(source, MAX_SOURCE_LENGTH),
                  now, now + duration, previous.offences if previous is not None else 0)
        self._store(ban)
        self._failures.pop(key, None)
        return ban

    def lift(self, ip_or_network: str) -> list[Ban]:
        """Lift the ban of an address (its /64 for IPv6), or every ban inside a network
        ("10.0.0.0/8"); forgets their earlier offences and counted failures too (a lift
        says the ban was a mistake). Returns the active bans lifted. Raises ValueError."""
        target = _parse_target(ip_or_network)
        self.refresh()  # act on the file as it is now, not as this instance last read it
        now = self.clock()
        lifted = []
        for key in [k for k in self._rows if _matches(k, target)]:
            ban = self._rows.pop(key)
            self._active.pop(key, None)
            self._write(key, None)
            if ban.active(now):
                lifted.append(ban)
        for key in [k for k in self._failures if _matches(k, target)]:
            del self._failures[key]
        return sorted(lifted, key=lambda b: b.until)

    def pending_writes(self) -> int:
        """Changes the file has not taken yet (it stayed locked); 0 when all are saved."""
        return len(self._pending)

    def active(self) -> list[Ban]:
        """Bans in force, soonest ending first."""
        now = self.clock()
        return sorted((b for b in self._rows.values() if b.active(now)), key=lambda b: b.until)

    # -- persistence -----------------------------------------------------------------

    def _store(self, ban: Ban) -> None:
        self._rows[ban.network] = ban
        self._active[ban.network] = ban
        if len(self._rows) > MAX_BANS:
            self._evict()
        self._write(ban.network, ban)

    def _evict(self) -> None:
        """Over MAX_BANS rows: forget expired ones first, then the soonest ending; a tenth
        at once, so that a flood of new bans does not sort the list for each one."""
        now = self.clock()
        excess = len(self._rows) - MAX_BANS + MAX_BANS // 10
        order = sorted(self._rows.values(), key=lambda b: (b.active(now), b.until))
        for ban in order[:excess]:
            del self._rows[ban.network]
            self._active.pop(ban.network, None)
            self._write(ban.network, None)

    def _write(self, key: str, ban: Ban | None) -> None:
        """Save one row now, or later if the file is busy; never raises."""
        if self._conn is None:
            return
        self._pending[key] = ban
        try:
            self._flush_pending()
        except sqlite3.Error as exc:
            log(logger, "cannot save the ban list now; will retry", logging.WARNING,
                event="bans", error=str(exc), pending=len(self._pending))

    def _flush_pending(self) -> None:
        if self._conn is None or not self._pending:
            return
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for key, ban in self._pending.items():
                if ban is None:
                    conn.execute("DELETE FROM bans WHERE network = ?", (key,))
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO bans (network, reason, source, created, until,"
                        " offences) VALUES (?, ?, ?, ?, ?, ?)",
                        (ban.network, ban.reason, ban.source, ban.created, ban.until,
                         ban.offences))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._pending.clear()

    def _load(self, *, announce: bool = False) -> None:
        """Read the whole table (at open, and after another process changed it; then
        ``announce`` logs the bans that process added and lifted, so the server's log
        records what ``mailkeep ban`` did)."""
        assert self._conn is not None
        rows: dict[str, Ban] = {}
        for network, reason, source, created, until, offences in self._conn.execute(
                "SELECT network, reason, source, created, until, offences FROM bans"
                " ORDER BY until DESC LIMIT ?", (MAX_BANS,)):
            try:
                key = _target_key(network)
            except ValueError:
                continue  # not written by us; ignore rather than fail the server
            rows[key] = Ban(key, str(reason), str(source), float(created), float(until),
                            int(offences))
        for key, ban in self._pending.items():  # ours, not saved yet: they win
            if ban is None:
                rows.pop(key, None)
            else:
                rows[key] = ban
        for key in set(self._rows) - set(rows):
            self._failures.pop(key, None)  # lifted elsewhere: start counting afresh
        now = self.clock()
        before = self._active
        self._rows = rows
        self._active = {k: b for k, b in rows.items()
                        if b.active(now) and not self._allowed_key(k)}
        self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if announce:
            for key, ban in self._active.items():
                if before.get(key) != ban:
                    if self.metrics is not None:
                        self.metrics.banned(ban.source)
                    log(logger, "ip banned", logging.WARNING, event="ban", ip=key,
                        source=ban.source, until=_when(ban.until), reason=ban.reason)
            for key in before.keys() - self._active.keys():
                if before[key].active(now):
                    log(logger, "ban lifted", logging.INFO, event="ban", ip=key)

    def refresh(self) -> bool:
        """Take in changes made by another process (the CLI); retry unsaved writes; drop
        expired bans. Cheap when nothing changed (one PRAGMA). True if the table was
        re-read. Never raises."""
        now = self.clock()
        if now - self._last_sweep >= SWEEP_INTERVAL:
            self._sweep(now)
        if self._conn is None:
            return False
        try:
            if self._pending:
                self._flush_pending()
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return False
            self._load(announce=True)
            return True
        except sqlite3.Error as exc:
            log(logger, "cannot read the ban list", logging.WARNING, event="bans",
                error=str(exc))
            return False

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for key in [k for k, b in self._active.items() if not b.active(now)]:
            del self._active[key]
        # A past ban is remembered for ban_max_duration after its end, to double the next.
        forget = now - self.policy.max_duration
        for key in [k for k, b in self._rows.items() if b.until < forget]:
            del self._rows[key]
            self._write(key, None)

    async def watch(self, interval: float = REFRESH_INTERVAL) -> None:
        """Run ``refresh`` every ``interval`` seconds until cancelled (the server's task)."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.refresh()
            except Exception as exc:  # a bug here must not end the refreshes for good
                log(logger, "ban list refresh failed", logging.ERROR, event="bans",
                    error=f"{type(exc).__name__}: {exc}")


def _clean(text: str, limit: int) -> str:
    """Free text for the table and the log: printable, one line, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _target_key(text: str) -> str:
    """The key of one bannable target: an address, or an IPv6 /64 written as a network.
    Raises ValueError for anything else."""
    text = text.strip()
    if "/" not in text:
        key = client_key(text)
        if key is None:
            raise ValueError(f"{text!r} is not an IP address")
        return key
    network = ipaddress.ip_network(text, strict=False)
    if network.version == 4 and network.prefixlen == 32:
        return str(network.network_address)
    if network.version == 6 and network.prefixlen == 64:
        return str(network)
    raise ValueError(f"{text!r}: a ban covers one IPv4 address or one IPv6 /64")


def _parse_target(text: str) -> str | Network:
    """For ``lift``: an address (-> its key) or any network (-> the network)."""
    text = text.strip()
    if "/" not in text:
        key = client_key(text)
        if key is None:
            raise ValueError(f"{text!r} is not an IP address or network")
        return key
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 64:
        return str(ipaddress.IPv6Network((network.network_address, 64), strict=False))
    if isinstance(network, ipaddress.IPv4Network) and network.prefixlen == 32:
        return str(network.network_address)
    return network


def _matches(key: str, target: str | Network) -> bool:
    """Is the banned key ``key`` the lift target, or inside the target network?"""
    if isinstance(target, str):
        return key == target
    network = _key_network(key)
    return network.version == target.version and network.subnet_of(target)  # type: ignore[arg-type]


__all__ = [
    "BANS_FILE", "Ban", "BanList", "BanListError", "BanPolicy", "NotBannable", "ban_refusal",
    "client_key", "parse_networks",
]
