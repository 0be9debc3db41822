"""Greylisting (RFC 6647): defer the first attempt of an unknown triplet, accept its retry.

A triplet is (client network, envelope sender, envelope recipient), RFC 6647 §2.2's
SMTP-command-level greylisting as seed 000's greyfix does it. The first attempt of a new
triplet gets a 4xx reply (:data:`GREYLIST_REPLY`); a real MTA keeps the message queued and
retries (RFC 5321 §4.5.4.1), ratware that fires and forgets does not. A retry after
``delay`` passes, and the triplet is then allowed without delay for ``auto_allow`` after
its last pass (each pass extends it). A triplet not retried within ``retry_window`` of its
first attempt is forgotten, so its next attempt starts over.

The triplet is built to survive what legitimate senders change between attempts:

* the client address is reduced to its network (IPv4 /24, IPv6 /64): large senders retry
  from another host of the same pool;
* the envelope sender is normalised (:func:`normalize_sender`) so bounce addresses that
  encode a per-attempt tag, hash, timestamp or message number (sub-addresses, VERP, BATV,
  SRS) still name the same triplet;
* the recipient is only lower-cased.

Besides triplets, two kinds of senders skip greylisting as a whole:

* a client network that passed greylisting :data:`CLIENT_AUTO_ALLOW_PASSES` times (with
  different triplets) within ``auto_allow`` has shown it retries (postgrey's client
  auto-whitelisting): :meth:`Greylist.check` passes it at once;
* a sender domain seen with a DKIM pass within ``auto_allow``: the receiver records passes
  with :meth:`Greylist.note_dkim_pass` and asks :meth:`Greylist.dkim_domain_known` before
  calling :meth:`Greylist.check`.

State lives in a SQLite database (``data_dir/greylist.db``) in WAL mode, so the CLI can
read it while the server writes. The server calls every method from its event loop, so
each is a few dictionary probes on the hot path: recent decisions are kept in bounded LRU
caches (this process is the only writer, so the caches are authoritative), writes happen
only when the state changes (a new triplet, a first pass) or to refresh a pass time at most
every :data:`PASS_REFRESH_INTERVAL`, no write waits for an fsync, and checkpoints run on a
background thread. Expired rows are purged in small batches from :meth:`Greylist.check`.

Failure is open: when the database cannot be read or written, :meth:`Greylist.check`
logs a warning and passes the message (reason ``"error"``). Greylisting is a filter, not
a gate; a broken disk must not hold mail back for days.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

from mailkeep.logfmt import log
from mailkeep.smtp.reply import Reply
from mailkeep.sqlite_schema import init_schema

__all__ = [
    "CLIENT_AUTO_ALLOW_PASSES",
    "DB_FILENAME",
    "DEFAULT_AUTO_ALLOW",
    "DEFAULT_DELAY",
    "DEFAULT_RETRY_WINDOW",
    "GREYLIST_REPLY",
    "Greylist",
    "GreylistDecision",
    "GreylistError",
    "client_network",
    "greylist_reply",
    "normalize_domain",
    "normalize_recipient",
    "normalize_sender",
]

logger = logging.getLogger("mailkeep.greylist")

# --- limits and defaults ------------------------------------------------------------------

#: Seconds a new triplet is deferred (greyfix and postgrey: 5 minutes).
DEFAULT_DELAY = 300.0
#: Seconds after its first attempt within which a deferred triplet must be retried.
DEFAULT_RETRY_WINDOW = 2 * 86400.0
#: Seconds a passed triplet, client network or DKIM domain stays allowed after its last pass.
DEFAULT_AUTO_ALLOW = 35 * 86400.0
#: Client addresses are grouped into networks of this size: a sender's pool of outbound
#: hosts usually shares a /24, and one IPv6 host usually owns a whole /64.
IPV4_PREFIX = 24
IPV6_PREFIX = 64
#: Successful retries (of different triplets) after which a client network skips greylisting.
CLIENT_AUTO_ALLOW_PASSES = 5
#: Longest sender or recipient kept, in characters: RFC 5321 §4.5.3.1.3 limits a path to
#: 256 octets. Longer input is cut (two over-long addresses may then share a triplet).
MAX_FIELD_LENGTH = 256
#: Longest domain kept (RFC 1035 §2.3.4: 255 octets on the wire, 253 as text).
MAX_DOMAIN_LENGTH = 253
#: Entries of the in-memory caches (LRU): triplets, client networks, DKIM domains.
MAX_CACHED_TRIPLETS = 20_000
MAX_CACHED_CLIENTS = 10_000
MAX_CACHED_DKIM_DOMAINS = 10_000
#: A pass time already stored is rewritten at most this often (seconds): a hot triplet
#: costs no SQL, and after a restart its allowance ends at most this much early.
PASS_REFRESH_INTERVAL = 3600.0
#: Seconds between purges of expired rows started by :meth:`Greylist.check`.
PURGE_INTERVAL = 3600.0
#: Rows deleted per table by one purge step, so that a step stays short on the event loop;
#: when a step was full the next one follows after :data:`PURGE_CONTINUE_INTERVAL`.
PURGE_BATCH_ROWS = 100
PURGE_CONTINUE_INTERVAL = 1.0
#: Seconds between WAL checkpoints by the background thread (only after writes).
CHECKPOINT_INTERVAL = 30.0
#: The WAL file is truncated to this size after a checkpoint (bytes).
WAL_SIZE_LIMIT = 4 * 1024 * 1024
#: Seconds a statement waits for a lock another writer (an operator's sqlite3 shell) holds
#: before the check fails open: short, because the caller is the event loop.
BUSY_TIMEOUT = 0.05
#: Seconds between two warnings about a failing database (the rest are counted).
ERROR_LOG_INTERVAL = 60.0
#: The database's file name inside the data directory.
DB_FILENAME = "greylist.db"

SCHEMA_VERSION = 1
# Times are Unix seconds (REAL). ``last_pass`` is NULL while a triplet waits for its retry.
# WITHOUT ROWID: every lookup is by the whole primary key, which then is the table itself.
_SCHEMA = """
CREATE TABLE triplets (
    client TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_pass REAL,
    PRIMARY KEY (client, sender, recipient)
) WITHOUT ROWID;
CREATE INDEX triplets_waiting ON triplets (first_seen) WHERE last_pass IS NULL;
CREATE INDEX triplets_passed ON triplets (last_pass) WHERE last_pass IS NOT NULL;
CREATE TABLE clients (
    client TEXT PRIMARY KEY,
    passes INTEGER NOT NULL,
    last_pass REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX clients_last_pass ON clients (last_pass);
CREATE TABLE dkim_domains (
    domain TEXT PRIMARY KEY,
    last_pass REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX dkim_domains_last_pass ON dkim_domains (last_pass)
"""

Reason = Literal["new", "too-early", "retried", "known", "error"]


class GreylistError(Exception):
    """The greylist database cannot be opened (raised by the constructor only)."""


# --- replies ------------------------------------------------------------------------------

def greylist_reply(retry_after: float = DEFAULT_DELAY) -> Reply:
    """The 450 4.7.1 reply for a deferred triplet, telling the client when to come back.

    450 is a transient failure (RFC 5321 §4.2.1): the client keeps the message and retries.
    4.7.1 is RFC 3463's "delivery not authorized" with a temporary class.
    """
    seconds = math.ceil(retry_after) if math.isfinite(retry_after) else math.ceil(DEFAULT_DELAY)
    seconds = max(1, seconds)
    return Reply(450, "4.7.1",
                 f"Greylisted: first delivery attempt from this sender, please retry in "
                 f"{seconds} seconds")


#: The reply for a triplet seen for the first time with the default delay.
GREYLIST_REPLY = greylist_reply(DEFAULT_DELAY)


@dataclass(frozen=True, slots=True)
class GreylistDecision:
    """What :meth:`Greylist.check` decided for one recipient.

    ``reason``: ``new`` (first attempt, deferred), ``too-early`` (retried before the delay
    was over, deferred), ``retried`` (retried after the delay: passes, and the triplet is
    allowed from now on), ``known`` (an allowed triplet, or with ``client_allowed`` a client
    network that has retried often enough), ``error`` (the database failed; passes).
    ``retry_after``: seconds until a retry can pass, 0 when ``passed``.
    """

    passed: bool
    reason: Reason
    retry_after: float
    client_allowed: bool = False

    @property
    def reply(self) -> Reply | None:
        """The SMTP reply for a deferral, None when the recipient passed."""
        return None if self.passed else greylist_reply(self.retry_after)


_FAIL_OPEN = GreylistDecision(True, "error", 0.0)
_PASSED_KNOWN = GreylistDecision(True, "known", 0.0)
_PASSED_CLIENT = GreylistDecision(True, "known", 0.0, client_allowed=True)
_PASSED_RETRIED = GreylistDecision(True, "retried", 0.0)


# --- triplet normalisation (pure) ---------------------------------------------------------

# C0 controls and DEL never belong in an address; they are replaced so that rows stay
# printable for the CLI. Lone surrogates cannot be stored as UTF-8 and are replaced too.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: object, limit: int) -> str:
    """``text`` as a storable, bounded, lower-case string without surrounding space."""
    if not isinstance(text, str):
        text = str(text)
    # Cut before any other work: bounded input means bounded work below.
    text = text[: limit * 2]
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROLS.sub("?", text).strip().lower()


def client_network(client_ip: object) -> str:
    """The network a client address is grouped in: ``192.0.2.0/24``, ``2001:db8:1:2::/64``.

    An IPv4-mapped IPv6 address counts as its IPv4 address. Text that is not an address
    (a Unix-socket peer, garbage) is its own group, prefixed with ``?``.
    """
    text = _clean(client_ip, MAX_FIELD_LENGTH)
    candidate = text.removeprefix("[").removesuffix("]").removeprefix("ipv6:")
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return "?" + text[:MAX_FIELD_LENGTH]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        host_bits = 32 - IPV4_PREFIX
        base = int(address) >> host_bits << host_bits
        return f"{ipaddress.IPv4Address(base)}/{IPV4_PREFIX}"
    # Built from the integer, which also drops a zone index (fe80::1%eth0).
    host_bits = 128 - IPV6_PREFIX
    base = int(address) >> host_bits << host_bits
    return f"{ipaddress.IPv6Address(base)}/{IPV6_PREFIX}"


# Shevek's Sender Rewriting Scheme, as postsrsd and pfix-srsd write it:
#   SRS0=HHH=TT=orig-domain=orig-local@forwarder
#   SRS1=HHH=first-forwarder==HHH=TT=orig-domain=orig-local@forwarder
# The separator after SRS0/SRS1 may be "=", "+" or "-". HHH (hash) and TT (day stamp)
# change from day to day; the original domain and local part, and the forwarders, do not.
_SRS0 = re.compile(r"srs0[=+-][^=]*=[^=]*=([^=]*)=(.+)", re.DOTALL)
_SRS1 = re.compile(r"srs1[=+-][^=]*=([^=]*)=[=+-][^=]*=[^=]*=([^=]*)=(.+)", re.DOTALL)
# Bounce Address Tag Validation (draft-levine-smtp-batv-01 §4.1 "prvs=TAG=local") and
# the variants big senders use ("msprvs1=TAG=local", Barracuda's "btv1==TAG==local"):
# the tag is new for every message or day.
_BATV = re.compile(r"(?:prvs|msprvs\d*|btv\d+)=+[0-9a-z]+=+(.+)", re.DOTALL)
# A UUID (RFC 9562 §4 text form), as in Amazon SES's per-message bounce addresses.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN = re.compile(r"[0-9a-z]+")
_HEX_TOKEN = re.compile(r"[0-9a-f]+")
_DIGIT = re.compile(r"[0-9]")
#: A token with a digit this long or longer is an identifier even if it is not hexadecimal
#: (base32/base36 message ids); shorter ones ("user7", "mc5") are kept.
_LONG_TOKEN = 12
#: What replaces a variable part of an address.
_VARIABLE = "#"


def _variable_token(match: re.Match[str]) -> str:
    token = match.group(0)
    if _DIGIT.search(token) and (len(token) >= _LONG_TOKEN or _HEX_TOKEN.fullmatch(token)):
        return _VARIABLE
    return token


def _normalize_plain_local(local: str) -> str:
    """Strip an RFC 5233 sub-address ("+tag") and replace VERP-style variable parts."""
    plus = local.find("+")
    if plus > 0:  # a leading "+" is not a separator: there would be no base left
        local = local[:plus]
    local = _UUID.sub(_VARIABLE, local)
    return _TOKEN.sub(_variable_token, local)


def _normalize_local(local: str) -> str:
    batv = _BATV.fullmatch(local)
    if batv:
        local = batv.group(1)
    srs1 = _SRS1.fullmatch(local)
    if srs1:
        first_forwarder, domain, original = srs1.groups()
        return f"srs1={first_forwarder}={domain}={_normalize_plain_local(original)}"
    srs0 = _SRS0.fullmatch(local)
    if srs0:
        domain, original = srs0.groups()
        return f"srs0={domain}={_normalize_plain_local(original)}"
    return _normalize_plain_local(local)


def normalize_sender(sender: object) -> str:
    """The envelope sender as greylisting compares it.

    Lower-cased; angle brackets and an RFC 5321 §4.1.2 source route removed; the null
    reverse-path (RFC 5321 §4.5.5) is ``<>`` whether given as ``<>`` or empty. In the
    local part: a BATV tag (``prvs=TAG=local``, ``msprvs1=TAG=local``,
    ``btv1==TAG==local``) is removed; SRS addresses keep their forwarders and original
    address but lose hash and timestamp (``srs0=orig-domain=orig-local@fwd``,
    ``srs1=first-fwd=orig-domain=orig-local@fwd``); an RFC 5233 sub-address (from the
    first ``+``) is removed; UUIDs, and alphanumeric runs that contain a digit and are
    hexadecimal or at least 12 long (``bounce-1234-5678``, ``0100018c3d4e5f6a``), become
    ``#``. The domain is only lower-cased (trailing dot removed).
    """
    text = _clean(sender, MAX_FIELD_LENGTH)
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if text.startswith("@") and ":" in text:  # "@relay1,@relay2:user@domain"
        text = text.split(":", 1)[1]
    if not text:
        return "<>"
    local, at, domain = text.rpartition("@")
    if not at:  # no domain ("postmaster")
        return _normalize_local(text)[:MAX_FIELD_LENGTH]
    domain = domain.rstrip(".")
    return f"{_normalize_local(local)}@{domain}"[:MAX_FIELD_LENGTH]


def normalize_recipient(recipient: object) -> str:
    """The envelope recipient as greylisting compares it: lower-cased, without brackets."""
    text = _clean(recipient, MAX_FIELD_LENGTH)
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text[:MAX_FIELD_LENGTH]


def normalize_domain(domain: object) -> str:
    """A domain (or the domain of an address) lower-cased, without trailing dot; or ""."""
    text = _clean(domain, MAX_DOMAIN_LENGTH).strip("<>")
    text = text.rpartition("@")[2].strip().rstrip(".")
    return text[:MAX_DOMAIN_LENGTH]


# --- in-memory state ----------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A dictionary that forgets its least recently used entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


class _Triplet:
    """One triplet's state. ``stored_pass`` is the pass time in the database, ``last_pass``
    the latest pass seen (newer by less than PASS_REFRESH_INTERVAL)."""

    __slots__ = ("first_seen", "last_pass", "stored_pass")

    def __init__(self, first_seen: float, last_pass: float | None) -> None:
        self.first_seen = first_seen
        self.last_pass = last_pass
        self.stored_pass = last_pass


class _Seen:
    """A client network's or DKIM domain's state; ``last_pass`` None: never seen."""

    __slots__ = ("last_pass", "passes", "stored_pass")

    def __init__(self, passes: int, last_pass: float | None) -> None:
        self.passes = passes
        self.last_pass = last_pass
        self.stored_pass = last_pass


# --- the greylist -------------------------------------------------------------------------

class Greylist:
    """Greylisting state in ``path`` (a database file, or a directory that gets
    :data:`DB_FILENAME`), used from one server process.

    ``delay``: seconds a new triplet is deferred; ``retry_window``: seconds after the first
    attempt within which the retry must come (else the triplet is forgotten);
    ``auto_allow``: seconds a triplet, client network or DKIM domain stays allowed after
    its last pass; ``clock``: Unix time now (injectable for tests).

    Raises :class:`GreylistError` when the database cannot be opened and ``ValueError`` for
    inconsistent times; after that, no method raises. Call :meth:`close` at shutdown.
    """

    def __init__(self, path: Path, *, delay: float = DEFAULT_DELAY,
                 retry_window: float = DEFAULT_RETRY_WINDOW,
                 auto_allow: float = DEFAULT_AUTO_ALLOW,
                 clock: Callable[[], float] = time.time) -> None:
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"greylist delay must be a finite number >= 0, not {delay!r}")
        if not (math.isfinite(retry_window) and retry_window > delay):
            raise ValueError(f"greylist retry_window ({retry_window!r}) must be longer than "
                             f"the delay ({delay!r}), or no retry could ever pass")
        if not (math.isfinite(auto_allow) and auto_allow > 0):
            raise ValueError(f"greylist auto_allow must be a positive number, not {auto_allow!r}")
        path = Path(path)
        if path.is_dir():
            path = path / DB_FILENAME
        self.path = path
        self.delay = float(delay)
        self.retry_window = float(retry_window)
        self.auto_allow = float(auto_allow)
        self._clock = clock
        self._triplets: _Lru[tuple[str, str, str], _Triplet] = _Lru(MAX_CACHED_TRIPLETS)
        self._clients: _Lru[str, _Seen] = _Lru(MAX_CACHED_CLIENTS)
        self._dkim: _Lru[str, _Seen] = _Lru(MAX_CACHED_DKIM_DOMAINS)
        self._next_purge = -math.inf
        self._last_error_log = -math.inf
        self._errors_unlogged = 0
        self._conn = self._open(path)
        self._checkpointer = _Checkpointer(path)
        self._checkpointer.start()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise GreylistError(f"cannot open the greylist database {path}: {exc}") from exc
        try:
            init_schema(conn, _SCHEMA, SCHEMA_VERSION, what="greylist", error=GreylistError)
            # synchronous=NORMAL in WAL mode: a commit survives a crash of this process but
            # not a power loss, and costs no fsync. Greylist state lost that way only means
            # one more deferral for the triplets written last, so it is not worth an fsync
            # on the event loop for every new triplet.
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints (which do fsync) run on the background thread, not in a commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        except (sqlite3.Error, GreylistError) as exc:
            conn.close()
            if isinstance(exc, GreylistError):
                raise
            raise GreylistError(f"cannot open the greylist database {path}: {exc}") from exc
        return conn

    def close(self) -> None:
        """Stop the checkpoint thread and close the database (idempotent)."""
        self._checkpointer.stop()
        self._conn.close()
        self._triplets.clear()
        self._clients.clear()
        self._dkim.clear()

    def __enter__(self) -> Greylist:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the checks -----------------------------------------------------------------------

    def check(self, client_ip: str, sender: str, recipient: str) -> GreylistDecision:
        """Decide for one recipient of a transaction from ``client_ip`` (RFC 6647 §2.2).

        Skipping greylisting (authenticated clients, allow-lists, DKIM-known senders) is
        the caller's business; this decides from the triplet and the client network only.
        """
        try:
            now = self._now()
            network = client_network(client_ip)
            key = (network, normalize_sender(sender), normalize_recipient(recipient))
            if now >= self._next_purge:
                self._purge_step(now)
            if self._client_allowed(network, now):
                return _PASSED_CLIENT
            return self._check_triplet(key, now)
        except Exception as exc:
            self._report_error("check", exc)
            return _FAIL_OPEN

    def _check_triplet(self, key: tuple[str, str, str], now: float) -> GreylistDecision:
        entry = self._triplets.get(key)
        if entry is None:
            row = self._conn.execute(
                "SELECT first_seen, last_pass FROM triplets"
                " WHERE client = ? AND sender = ? AND recipient = ?", key).fetchone()
            if row is not None:
                entry = _Triplet(row[0], row[1])
                self._triplets.put(key, entry)
        if entry is None or self._forgotten(entry, now):
            return self._first_attempt(key, now)
        if entry.last_pass is None:
            waited = now - entry.first_seen
            if waited < self.delay:
                # The timer runs from the first attempt; an early retry does not restart it.
                return GreylistDecision(False, "too-early", self.delay - waited)
            return self._first_pass(key, entry, now)
        if now - (entry.stored_pass or 0.0) >= PASS_REFRESH_INTERVAL:
            self._conn.execute(
                "INSERT INTO triplets (client, sender, recipient, first_seen, last_pass)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (client, sender, recipient)"
                " DO UPDATE SET last_pass = excluded.last_pass",
                (*key, entry.first_seen, now))
            entry.stored_pass = now
            self._checkpointer.wrote()
        entry.last_pass = max(entry.last_pass, now)
        return _PASSED_KNOWN

    def _forgotten(self, entry: _Triplet, now: float) -> bool:
        if entry.last_pass is None:
            # A clock that went back before the first attempt restarts the triplet rather
            # than deferring it until the clock catches up.
            return now - entry.first_seen > self.retry_window or now < entry.first_seen
        return now - entry.last_pass > self.auto_allow

    def _first_attempt(self, key: tuple[str, str, str], now: float) -> GreylistDecision:
        # An upsert: the row may exist, expired, or have been purged under the cache.
        self._conn.execute(
            "INSERT INTO triplets (client, sender, recipient, first_seen, last_pass)"
            " VALUES (?, ?, ?, ?, NULL) ON CONFLICT (client, sender, recipient) DO UPDATE"
            " SET first_seen = excluded.first_seen, last_pass = NULL", (*key, now))
        self._checkpointer.wrote()
        self._triplets.put(key, _Triplet(now, None))
        return GreylistDecision(False, "new", self.delay)

    def _first_pass(self, key: tuple[str, str, str], entry: _Triplet,
                    now: float) -> GreylistDecision:
        network = key[0]
        client = self._client_entry(network)
        expired = client.last_pass is None or now - client.last_pass > self.auto_allow
        passes = 1 if expired else client.passes + 1
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO triplets (client, sender, recipient, first_seen, last_pass)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (client, sender, recipient)"
                " DO UPDATE SET last_pass = excluded.last_pass",
                (*key, entry.first_seen, now))
            conn.execute(
                "INSERT INTO clients (client, passes, last_pass) VALUES (?, ?, ?)"
                " ON CONFLICT (client) DO UPDATE SET passes = excluded.passes,"
                " last_pass = excluded.last_pass", (network, passes, now))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._checkpointer.wrote()
        entry.last_pass = entry.stored_pass = now
        client.passes = passes
        client.last_pass = client.stored_pass = now
        return _PASSED_RETRIED

    def _client_entry(self, network: str) -> _Seen:
        entry = self._clients.get(network)
        if entry is None:
            row = self._conn.execute(
                "SELECT passes, last_pass FROM clients WHERE client = ?", (network,)).fetchone()
            entry = _Seen(row[0], row[1]) if row else _Seen(0, None)
            self._clients.put(network, entry)
        return entry

    def _client_allowed(self, network: str, now: float) -> bool:
        entry = self._client_entry(network)
        if (entry.passes < CLIENT_AUTO_ALLOW_PASSES or entry.last_pass is None
                or now - entry.last_pass > self.auto_allow):
            return False
        if now - (entry.stored_pass or 0.0) >= PASS_REFRESH_INTERVAL:
            self._conn.execute(
                "INSERT INTO clients (client, passes, last_pass) VALUES (?, ?, ?)"
                " ON CONFLICT (client) DO UPDATE SET last_pass = excluded.last_pass",
                (network, entry.passes, now))
            entry.stored_pass = now
            self._checkpointer.wrote()
        entry.last_pass = max(entry.last_pass, now)
        return True

    # --- DKIM-known domains ---------------------------------------------------------------

    def note_dkim_pass(self, domain: str) -> None:
        """Record that a message signed by ``domain`` (or an address in it) passed DKIM."""
        try:
            name = normalize_domain(domain)
            if not name:
                return
            now = self._now()
            entry = self._dkim_entry(name)
            if entry.stored_pass is None or now - entry.stored_pass >= PASS_REFRESH_INTERVAL:
                self._conn.execute(
                    "INSERT INTO dkim_domains (domain, last_pass) VALUES (?, ?)"
                    " ON CONFLICT (domain) DO UPDATE SET last_pass = excluded.last_pass",
                    (name, now))
                entry.stored_pass = now
                self._checkpointer.wrote()
            entry.last_pass = now if entry.last_pass is None else max(entry.last_pass, now)
        except Exception as exc:
            self._report_error("note_dkim_pass", exc)

    def dkim_domain_known(self, domain: str) -> bool:
        """Whether ``domain`` (or an address's domain) passed DKIM within ``auto_allow``."""
        try:
            name = normalize_domain(domain)
            if not name:
                return False
            now = self._now()
            entry = self._dkim_entry(name)
            return entry.last_pass is not None and now - entry.last_pass <= self.auto_allow
        except Exception as exc:
            self._report_error("dkim_domain_known", exc)
            return False

    def _dkim_entry(self, name: str) -> _Seen:
        entry = self._dkim.get(name)
        if entry is None:
            row = self._conn.execute(
                "SELECT last_pass FROM dkim_domains WHERE domain = ?", (name,)).fetchone()
            entry = _Seen(0, row[0] if row else None)
            self._dkim.put(name, entry)
        return entry

    # --- maintenance ----------------------------------------------------------------------

    def purge(self) -> int:
        """Delete every expired row now; the number of rows deleted.

        :meth:`check` does this by itself in small steps; this is for commands and tests.
        Raises ``sqlite3.Error`` when the database fails.
        """
        now = self._now()
        total = 0
        while True:
            deleted = self._purge_batch(now)
            total += deleted
            if deleted == 0:
                return total

    def _purge_step(self, now: float) -> None:
        """One bounded purge batch, scheduled by :meth:`check`; never raises."""
        try:
            deleted = self._purge_batch(now)
        except Exception as exc:
            self._report_error("purge", exc)
            self._next_purge = now + PURGE_INTERVAL
            return
        full = deleted >= PURGE_BATCH_ROWS
        self._next_purge = now + (PURGE_CONTINUE_INTERVAL if full else PURGE_INTERVAL)
        if deleted:
            log(logger, "greylist purge", logging.DEBUG, rows=deleted, more=full)

    def _purge_batch(self, now: float) -> int:
        """Delete up to PURGE_BATCH_ROWS expired rows of each table in one transaction.

        Rows whose cached state is newer than the stored one (a pass refreshed in memory
        only) may go; the next write for them is an upsert and puts them back.
        """
        waiting_before = now - self.retry_window
        passed_before = now - self.auto_allow
        limit = PURGE_BATCH_ROWS
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = conn.execute(
                "DELETE FROM triplets WHERE (client, sender, recipient) IN"
                " (SELECT client, sender, recipient FROM triplets"
                "  WHERE last_pass IS NULL AND first_seen < ? LIMIT ?)",
                (waiting_before, limit)).rowcount
            deleted += conn.execute(
                "DELETE FROM triplets WHERE (client, sender, recipient) IN"
                " (SELECT client, sender, recipient FROM triplets"
                "  WHERE last_pass IS NOT NULL AND last_pass < ? LIMIT ?)",
                (passed_before, limit)).rowcount
            deleted += conn.execute(
                "DELETE FROM clients WHERE client IN"
                " (SELECT client FROM clients WHERE last_pass < ? LIMIT ?)",
                (passed_before, limit)).rowcount
            deleted += conn.execute(
                "DELETE FROM dkim_domains WHERE domain IN"
                " (SELECT domain FROM dkim_domains WHERE last_pass < ? LIMIT ?)",
                (passed_before, limit)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if deleted:
            self._checkpointer.wrote()
        return deleted

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL into the database now (PASSIVE: never waits for anyone).

        The background thread does this every :data:`CHECKPOINT_INTERVAL` after writes;
        returns (frames in the WAL, frames checkpointed). Raises ``sqlite3.Error``.
        """
        return self._checkpointer.checkpoint()

    # --- helpers --------------------------------------------------------------------------

    def _now(self) -> float:
        now = float(self._clock())
        if not math.isfinite(now):
            raise ValueError(f"the clock returned {now!r}")
        return now

    def _report_error(self, operation: str, exc: Exception) -> None:
        """Log a failure, at most one warning per ERROR_LOG_INTERVAL (the rest counted)."""
        now = time.monotonic()
        if now - self._last_error_log < ERROR_LOG_INTERVAL:
            self._errors_unlogged += 1
            return
        log(logger, "greylist failed, passing", logging.WARNING, operation=operation,
            error=f"{type(exc).__name__}: {exc}", path=str(self.path),
            suppressed=self._errors_unlogged)
        self._last_error_log = now
        self._errors_unlogged = 0


class _Checkpointer:
    """Runs PASSIVE WAL checkpoints on a daemon thread with its own connection.

    A checkpoint fsyncs the WAL and the database; off the event loop it costs the server
    nothing. PASSIVE never blocks the writer: the writer keeps appending to the WAL while
    frames already committed are copied.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()        # one checkpoint at a time, close waits
        self._stop = threading.Event()
        self._dirty = False                  # set by the loop thread, read by this one
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mailkeep-greylist-wal",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wrote(self) -> None:
        self._dirty = True

    def checkpoint(self) -> tuple[int, int]:
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the greylist is closed")
            if self._conn is None:
                self._conn = sqlite3.connect(self._path, timeout=0, isolation_level=None,
                                             check_same_thread=False)
            self._dirty = False
            _busy, frames, copied = self._conn.execute(
                "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return frames, copied

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_INTERVAL):
            if not self._dirty:
                continue
            try:
                self.checkpoint()
            except sqlite3.Error as exc:
                log(logger, "greylist checkpoint failed", logging.WARNING,
                    error=str(exc), path=str(self._path))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
