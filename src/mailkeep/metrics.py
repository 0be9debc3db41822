"""Prometheus metrics of one server process, written in the text exposition format 0.0.4.

Two layers:

- :class:`Registry`: counters, gauges and histograms with labels, and collectors that
  compute values at scrape time; :meth:`Registry.render` writes the exposition text
  (format: prometheus.io/docs/instrumenting/exposition_formats, "Text-based format").
- :class:`ServerMetrics`: every metric Mailkeep exposes (docs/operations.md lists them)
  and the few calls the servers make to update them.

One registry per server object, never a process-wide one: tests run several servers in
one process, and a reload must not lose counts.

Cost on the hot paths: an increment is an attribute update on an object found with one
dict lookup, with no lock; such metrics are only updated from the event loop thread.
Histograms observed from worker threads (commit latency) take their own small lock.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mailkeep import __version__

#: The Content-Type of the exposition (format version 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Label combinations kept per metric at most. Every label value comes from a fixed set
#: in our code, so this is only a guard: a combination past it is counted but not shown.
MAX_SERIES_PER_METRIC = 1000

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


# -- the text format ---------------------------------------------------------------------


def escape_label_value(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote and line feed
    are escaped (``\\\\``, ``\\"``, ``\\n``); everything else is written as is (UTF-8)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text: only backslash and line feed are escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, floats in Python's shortest form,
    and the special values the format names ``+Inf``, ``-Inf`` and ``NaN``."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _label_text(names: Sequence[str], values: Sequence[str],
                extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


# -- one time series each ------------------------------------------------------------------


class Counter:
    """A count that only goes up. Update from the event loop thread only (no lock)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter cannot decrease")
        self.value += amount


class Gauge:
    """A value that goes up and down. Update from the event loop thread only."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class Histogram:
    """Counts of observations per bucket (upper bounds, inclusive), their sum and count.
    Buckets are kept per bucket and made cumulative when written. With ``threadsafe``
    every observation takes a lock, for values observed from worker threads."""

    __slots__ = ("_lock", "bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float], *, threadsafe: bool = False) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum: float = 0.0
        self._lock = threading.Lock() if threadsafe else None

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket ("le").
        index = bisect.bisect_left(self.bounds, value)
        if self._lock is None:
            self.counts[index] += 1
            self.sum += value
            return
        with self._lock:
            self.counts[index] += 1
            self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        """(cumulative counts per bound then +Inf, sum), consistent with each other."""
        if self._lock is None:
            counts, total = list(self.counts), self.sum
        else:
            with self._lock:
                counts, total = list(self.counts), self.sum
        running = 0
        cumulative = []
        for count in counts:
            running += count
            cumulative.append(running)
        return cumulative, total


# -- families ------------------------------------------------------------------------------


class Family:
    """A metric name with its HELP, TYPE and label names; one child per label values."""

    def __init__(self, name: str, help: str, kind: str, labelnames: Sequence[str],
                 make: Callable[[], Any]) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        self.name = name
        self.help = help
        self.kind = kind
        self.labelnames = tuple(labelnames)
        self._make = make
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        """The child for these label values (in the order of the label names)."""
        child = self.children.get(values)
        if child is None:
            child = self._new_child(values)
        return child

    def _new_child(self, values: tuple[str, ...]) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        child = self._make()
        if len(self.children) < MAX_SERIES_PER_METRIC:
            self.children[tuple(str(v) for v in values)] = child
        return child

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for values, child in list(self.children.items()):
            if self.kind == "histogram":
                _render_histogram(out, self.name, self.labelnames, values, child)
            else:
                out.append(f"{self.name}{_label_text(self.labelnames, values)} "
                           f"{format_value(child.value)}")


def _render_histogram(out: list[str], name: str, labelnames: Sequence[str],
                      values: Sequence[str], histogram: Histogram) -> None:
    cumulative, total = histogram.snapshot()
    for bound, count in zip(histogram.bounds, cumulative, strict=False):
        le = ("le", format_value(float(bound)))
        out.append(f"{name}_bucket{_label_text(labelnames, values, le)} {count}")
    out.append(f"{name}_bucket{_label_text(labelnames, values, ('le', '+Inf'))} "
               f"{cumulative[-1]}")
    out.append(f"{name}_sum{_label_text(labelnames, values)} {format_value(total)}")
    out.append(f"{name}_count{_label_text(labelnames, values)} {cumulative[-1]}")


@dataclass(frozen=True)
class Sample:
    """One value a collector computed at scrape time."""

    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class Collected:
    """A gauge or counter family computed at scrape time (by a collector)."""

    name: str
    help: str
    kind: str
    labelnames: tuple[str, ...]
    samples: tuple[Sample, ...]

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for sample in self.samples:
            out.append(f"{self.name}{_label_text(self.labelnames, sample.labels)} "
                       f"{format_value(sample.value)}")


Collector = Callable[[], Iterable[Collected]]


class Registry:
    """The metrics of one process (or one test): families in the order registered, then
    what the collectors compute at scrape time."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._collectors: list[Collector] = []

    def _add(self, family: Family) -> Family:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} registered twice")
        self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Family:
        return self._add(Family(name, help, "counter", labelnames, Counter))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Family:
        return self._add(Family(name, help, "gauge", labelnames, Gauge))

    def histogram(self, name: str, help: str, buckets: Sequence[float],
                  labelnames: Sequence[str] = (), *, threadsafe: bool = False) -> Family:
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct and finite")
        return self._add(Family(name, help, "histogram", labelnames,
                                lambda: Histogram(bounds, threadsafe=threadsafe)))

    def collector(self, collect: Collector) -> None:
        """Add a function called at each scrape for values computed then."""
        self._collectors.append(collect)

    def render(self) -> str:
        """The exposition text of everything registered."""
        out: list[str] = []
        for family in list(self._families.values()):
            family.render(out)
        for collect in self._collectors:
            for collected in collect():
                collected.render(out)
        return "\n".join(out) + "\n"


# -- what Mailkeep exposes -------------------------------------------------------------------

RECEIVE_PROTOCOLS = ("smtp", "submission", "lmtp", "sendmail")
RECEIVE_OUTCOMES = ("accepted", "rejected", "deferred", "discarded", "held", "junk")
OUTBOUND_OUTCOMES = ("delivered", "deferred", "bounced", "expired")
LOCAL_OUTCOMES = ("stored", "over_quota", "failed")
CONNECTION_PROTOCOLS = ("smtp", "submission", "lmtp", "imap", "pop3", "http")
CONNECTION_REFUSALS = ("max_connections", "max_connections_per_ip",
                       "max_connection_rate_per_ip")
AUTH_PROTOCOLS = ("submission", "imap", "pop3")
AUTH_REASONS = ("invalid", "throttled", "malformed", "cancelled", "unavailable")
QUEUE_STATES = ("active", "deferred", "held")
COMMIT_STORES = ("mailbox", "queue")

#: Queue arrival → delivered: a second (local) to days (retries).
DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600,
                    86400, 5 * 86400)
#: One group commit (directory fsyncs, the transaction, the WAL fsync).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                  2.5, 5, 10)

#: Listener protocols by the name the metrics use (TLS or not is the same service).
_SERVICE = {"smtp": "smtp", "submission": "submission", "submissions": "submission",
            "lmtp": "lmtp", "imap": "imap", "imaps": "imap", "pop3": "pop3", "pop3s": "pop3",
            "http": "http", "https": "http"}
#: The authenticator's protocols by metric label (AUTH exists only on submission).
_AUTH_PROTOCOL = {"smtp": "submission", "imap": "imap", "pop3": "pop3"}


def service_of(listener: str) -> str:
    """The ``protocol`` label of a listener named "protocol:address"."""
    return _SERVICE.get(listener.partition(":")[0], "smtp")


class ConnectionStats:
    """What a ``servers.listener.ConnectionCounts`` reports to: connections let in and
    refused by limit, for one protocol label. ``counts`` is read at scrape time for the
    connections open now."""

    __slots__ = ("__weakref__", "counts", "opened", "protocol", "refused")

    def __init__(self, protocol: str, counts: Any, opened: Counter,
                 refused: dict[str, Counter]) -> None:
        self.protocol = protocol
        self.counts = weakref.ref(counts)
        self.opened = opened
        self.refused = refused

    def refuse(self, reason: str) -> None:
        counter = self.refused.get(reason)
        if counter is not None:
            counter.value += 1


@dataclass(frozen=True)
class QueueState:
    """The queue's messages in one state (``QueueStore.state_summary``)."""

    messages: int
    oldest_created: float | None


class ServerMetrics:
    """Every metric of a Mailkeep server; ``services["metrics"]`` of the web listeners."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started = clock()
        r = self.registry = Registry()
        self.received = r.counter(
            "mailkeep_messages_received_total",
            "Messages received, by protocol and outcome (one per message, whatever the "
            "number of recipients).", ("protocol", "outcome"))
        self.outbound = r.counter(
            "mailkeep_outbound_deliveries_total",
            "Delivery attempts of queued mail, one per recipient and attempt, by outcome.",
            ("outcome",))
        self.local = r.counter(
            "mailkeep_local_deliveries_total",
            "Message copies written into mailboxes by the store, by outcome.", ("outcome",))
        self.connections = r.counter(
            "mailkeep_connections_opened_total",
            "Client connections accepted, by protocol.", ("protocol",))
        self.refusals = r.counter(
            "mailkeep_connections_refused_total",
            "Client connections refused by a connection limit, by protocol and limit.",
            ("protocol", "limit"))
        self.auth_failures = r.counter(
            "mailkeep_auth_failures_total",
            "Failed authentications, by protocol and reason.", ("protocol", "reason"))
        self.logins = r.counter(
            "mailkeep_logins_total", "Successful authentications, by protocol.",
            ("protocol",))
        self.bans = r.counter(
            "mailkeep_bans_total",
            "Client addresses banned, by source (auth: too many failed logins; manual: "
            "mailkeep ban add).", ("source",))
        self.ban_refusals = r.counter(
            "mailkeep_ban_refusals_total",
            "Connections refused because the client address is banned.")
        self.delivery_restarts = r.counter(
            "mailkeep_delivery_process_restarts_total",
            "Times the delivery process died and was started again.")
        self.delivery_seconds = r.histogram(
            "mailkeep_delivery_latency_seconds",
            "Time from a message's arrival in the queue to its delivery, per recipient.",
            DELIVERY_BUCKETS)
        self.commit_seconds = r.histogram(
            "mailkeep_commit_duration_seconds",
            "Duration of one group commit (directory fsyncs, transaction, WAL fsync), by "
            "store.", COMMIT_BUCKETS, ("store",), threadsafe=True)
        for protocol in RECEIVE_PROTOCOLS:
            for outcome in RECEIVE_OUTCOMES:
                self.received.labels(protocol, outcome)
        for outcome in OUTBOUND_OUTCOMES:
            self.outbound.labels(outcome)
        for outcome in LOCAL_OUTCOMES:
            self.local.labels(outcome)
        for protocol in AUTH_PROTOCOLS:
            self.logins.labels(protocol)
            for reason in AUTH_REASONS:
                self.auth_failures.labels(protocol, reason)
        for source in ("auth", "manual"):
            self.bans.labels(source)
        for store in COMMIT_STORES:
            self.commit_seconds.labels(store)
        for protocol in CONNECTION_PROTOCOLS:
            self.connections.labels(protocol)
            for reason in CONNECTION_REFUSALS:
                self.refusals.labels(protocol, reason)
        self.delivery_seconds.labels()
        self._ban_refusals = self.ban_refusals.labels()
        self._delivery_restarts = self.delivery_restarts.labels()
        self._connection_stats: list[ConnectionStats] = []
        self._queue: Any = None
        self._bans: Any = None
        self._delivery: Any = None
        self._queue_states: dict[str, QueueState] = {}
        r.collector(self._collect)

    # -- what the servers call ---------------------------------------------------------

    def message_received(self, protocol: str, outcome: str) -> None:
        self.received.labels(protocol, outcome).value += 1

    def delivery_process_restarted(self) -> None:
        self._delivery_restarts.value += 1

    def outbound_outcome(self, outcome: str) -> None:
        self.outbound.labels(outcome).value += 1

    def delivered_after(self, seconds: float) -> None:
        self.delivery_seconds.labels().observe(max(0.0, seconds))

    def local_delivery(self, outcome: str, count: int = 1) -> None:
        self.local.labels(outcome).value += count

    def auth_outcome(self, protocol: str, result: str, reason: str) -> None:
        label = _AUTH_PROTOCOL.get(protocol, protocol)
        if result == "success":
            self.logins.labels(label).value += 1
        else:
            self.auth_failures.labels(label, reason or "invalid").value += 1

    def banned(self, source: str) -> None:
        self.bans.labels("auth" if source == "auth" else "manual").value += 1

    def ban_refused(self) -> None:
        self._ban_refusals.value += 1

    def commit_observer(self, store: str) -> Callable[[float], None]:
        """The function a group committer calls with each commit's duration (thread-safe)."""
        return self.commit_seconds.labels(store).observe

    def connection_stats(self, listener: str, counts: Any) -> ConnectionStats:
        """The stats object for a listener's ``ConnectionCounts`` (shared counts, as the
        IMAP and POP3 listeners have, get one object)."""
        for stats in self._connection_stats:
            if stats.counts() is counts:
                return stats
        protocol = service_of(listener)
        stats = ConnectionStats(
            protocol, counts, self.connections.labels(protocol),
            {reason: self.refusals.labels(protocol, reason) for reason in CONNECTION_REFUSALS})
        self._connection_stats = [s for s in self._connection_stats if s.counts() is not None]
        self._connection_stats.append(stats)
        return stats

    # -- scrape-time sources -------------------------------------------------------------

    def watch(self, *, queue: Any = None, bans: Any = None, delivery: Any = None) -> None:
        """Read the queue (``state_summary``), the ban list (``active``) and the delivery
        process (``pid``, ``ready``: mailkeep.queue.agent.DeliveryProcess) at each scrape."""
        self._queue = queue
        self._bans = bans
        self._delivery = delivery

    async def exposition(self) -> str:
        """The text for a scrape. The queue is read in a worker thread (a large queue takes
        a moment to count); everything else is read on the event loop."""
        queue = self._queue
        if queue is not None:
            try:
                summary = await asyncio.to_thread(queue.state_summary, self.clock())
                self._queue_states = {state: QueueState(*values)
                                      for state, values in summary.items()}
            except Exception:  # a closed or broken queue: report nothing rather than fail
                self._queue_states = {}
        return self.registry.render()

    def _collect(self) -> Iterable[Collected]:
        now = self.clock()
        if self._queue is not None:
            states = self._queue_states
            yield Collected(
                "mailkeep_queue_messages", "Messages in the outbound queue, by state "
                "(active: due now or in delivery; deferred: waiting for a retry; held).",
                "gauge", ("state",),
                tuple(Sample((s,), states[s].messages if s in states else 0)
                      for s in QUEUE_STATES))
            yield Collected(
                "mailkeep_queue_oldest_message_age_seconds",
                "Age of the oldest message in the queue, by state (0 when there is none).",
                "gauge", ("state",),
                tuple(Sample((s,), _age(states.get(s), now)) for s in QUEUE_STATES))
        open_now = dict.fromkeys(CONNECTION_PROTOCOLS, 0)
        for stats in self._connection_stats:
            counts = stats.counts()
            if counts is not None:
                open_now[stats.protocol] = open_now.get(stats.protocol, 0) + counts.total
        yield Collected("mailkeep_connections_open", "Client connections open now, by "
                        "protocol.", "gauge", ("protocol",),
                        tuple(Sample((p,), n) for p, n in open_now.items()))
        if self._bans is not None:
            yield Collected("mailkeep_bans_active", "Bans in force now.", "gauge", (),
                            (Sample((), len(self._bans.active())),))
        if self._delivery is not None:
            yield from _delivery_process_metrics(self._delivery)
        from mailkeep.logfmt import dropped_lines

        yield Collected("mailkeep_log_lines_dropped_total", "Log lines that could not be "
                        "written anywhere (the log target failed and so did standard error, "
                        "or the backlog was full).", "counter", (),
                        (Sample((), dropped_lines()),))
        yield Collected("mailkeep_build_info", "Mailkeep's version (the value is always 1).",
                        "gauge", ("version",), (Sample((__version__,), 1),))
        yield Collected("mailkeep_start_time_seconds", "When the server started, in seconds "
                        "since the Unix epoch.", "gauge", (), (Sample((), self.started),))
        yield from _process_metrics()


def _age(state: QueueState | None, now: float) -> float:
    if state is None or state.oldest_created is None:
        return 0.0
    return max(0.0, round(now - state.oldest_created, 3))


def _delivery_process_metrics(delivery: Any) -> Iterable[Collected]:
    """Whether the delivery process runs, and its CPU time and memory (0 while none runs;
    its CPU counter starts again from 0 when it is started again)."""
    pid = delivery.pid
    usage = _usage_of(pid) if pid is not None and delivery.ready.is_set() else None
    cpu, resident = usage if usage is not None else (0.0, 0)
    yield Collected("mailkeep_delivery_process_up", "1 while the delivery process runs and "
                    "has said it is ready, else 0.", "gauge", (),
                    (Sample((), 1 if usage is not None else 0),))
    yield Collected("mailkeep_delivery_process_cpu_seconds_total", "CPU time used by the "
                    "running delivery process, user and system, in seconds.", "counter", (),
                    (Sample((), cpu),))
    yield Collected("mailkeep_delivery_process_resident_memory_bytes", "Resident memory of "
                    "the delivery process in bytes.", "gauge", (), (Sample((), resident),))


def _usage_of(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a process from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return round(ticks, 3), _resident_bytes(str(pid))
    except (OSError, ValueError, IndexError):
        return None


def _resident_bytes(pid: str) -> int:
    """Resident memory of process ``pid`` ("self" for this one), from /proc."""
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _process_metrics() -> Iterable[Collected]:
    """The standard process_* metrics every Prometheus client library exposes (Linux)."""
    times = os.times()
    yield Collected("process_cpu_seconds_total", "CPU time used by the process, user and "
                    "system, in seconds.", "counter", (),
                    (Sample((), round(times.user + times.system, 3)),))
    try:
        yield Collected("process_resident_memory_bytes", "Resident memory size in bytes.",
                        "gauge", (), (Sample((), _resident_bytes("self")),))
        yield Collected("process_open_fds", "Open file descriptors.", "gauge", (),
                        (Sample((), len(os.listdir("/proc/self/fd"))),))
    except (OSError, ValueError, IndexError):
        return
