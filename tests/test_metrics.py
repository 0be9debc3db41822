"""The Prometheus exposition, read back with the reference parser (prometheus_client's), and
the counting of ServerMetrics fed by the real pieces that report to it."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailkeep import __version__
from mailkeep.metrics import (
    CONTENT_TYPE,
    MAX_SERIES_PER_METRIC,
    Registry,
    ServerMetrics,
    escape_label_value,
    format_value,
)
from mailkeep.servers.listener import ConnectionCounts


def parse(text: str) -> dict[str, object]:
    """Families by name, as the reference parser reads them."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_counters_and_gauges_parse_back_with_their_labels_help_and_type():
    registry = Registry()
    sent = registry.counter("demo_sent_total", "Messages sent.", ("outcome",))
    queue = registry.gauge("demo_queue_messages", "Messages waiting.")
    sent.labels("delivered").inc(3)
    sent.labels("deferred").inc()
    queue.labels().set(7.5)
    families = parse(registry.render())
    # The reference parser names a counter family without its _total suffix.
    assert families["demo_sent"].type == "counter"
    assert families["demo_sent"].documentation == "Messages sent."
    assert samples(families["demo_sent"]) == {
        ("demo_sent_total", (("outcome", "delivered"),)): 3.0,
        ("demo_sent_total", (("outcome", "deferred"),)): 1.0,
    }
    assert families["demo_queue_messages"].type == "gauge"
    assert samples(families["demo_queue_messages"]) == {("demo_queue_messages", ()): 7.5}


@pytest.mark.parametrize("value", [
    'say "hi"', "back\\slash", "two\nlines", "ünïcödé ✉", "trailing\\", '\\"', "",
    "a=b,c}{",
])
def test_label_values_are_escaped_so_the_parser_reads_the_original(value):
    registry = Registry()
    registry.counter("demo_total", "x", ("v",)).labels(value).inc()
    text = registry.render()
    assert "\n" not in text.splitlines()[-1]  # the line feed was escaped, not written
    family = parse(text)["demo"]
    assert [s.labels["v"] for s in family.samples] == [value]


def test_escaping_rules_are_those_of_the_format():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    registry = Registry()
    registry.gauge("demo_g", "first line\nsecond \\ line")
    assert "# HELP demo_g first line\\nsecond \\\\ line\n" in registry.render()
    assert parse(registry.render())["demo_g"].documentation == "first line\nsecond \\ line"


def test_histogram_buckets_are_cumulative_and_end_with_inf_equal_to_count():
    registry = Registry()
    latency = registry.histogram("demo_latency_seconds", "x", (0.1, 1, 10), ("store",))
    child = latency.labels("queue")
    for value in (0.05, 0.1, 0.5, 1, 2, 50, 0.01):
        child.observe(value)
    family = parse(registry.render())["demo_latency_seconds"]
    assert family.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in family.samples
               if s.name == "demo_latency_seconds_bucket"]
    # A value equal to a bound counts in that bucket (le: "less or equal").
    assert buckets == [("0.1", 3.0), ("1", 5.0), ("10", 6.0), ("+Inf", 7.0)]
    values = samples(family)
    assert values[("demo_latency_seconds_count", (("store", "queue"),))] == 7.0
    assert math.isclose(values[("demo_latency_seconds_sum", (("store", "queue"),))],
                        53.66)
    counts = [count for _le, count in buckets]
    assert counts == sorted(counts)


def test_threadsafe_histogram_loses_no_observation_under_concurrent_threads():
    registry = Registry()
    child = registry.histogram("demo_commit_seconds", "x", (0.5,), threadsafe=True).labels()
    per_thread, threads = 20_000, 4

    def work() -> None:
        for _ in range(per_thread):
            child.observe(0.25)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    cumulative, total = child.snapshot()
    assert cumulative == [per_thread * threads, per_thread * threads]
    assert total == pytest.approx(0.25 * per_thread * threads)


def test_special_values_and_integers_are_written_as_the_format_names_them():
    assert [format_value(v) for v in (3, 2.0, 0.25, math.inf, -math.inf)] == [
        "3", "2", "0.25", "+Inf", "-Inf"]
    assert format_value(math.nan) == "NaN"


def test_invalid_names_and_duplicate_registrations_are_refused():
    registry = Registry()
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.gauge("0bad", "x")
    with pytest.raises(ValueError, match="must end in _total"):
        registry.counter("demo_sent", "x")
    with pytest.raises(ValueError, match="invalid label name"):
        registry.gauge("demo_g", "x", ("__reserved",))
    with pytest.raises(ValueError, match="invalid label name"):
        registry.histogram("demo_h", "x", (1,), ("le",))
    registry.gauge("demo_g", "x")
    with pytest.raises(ValueError, match="registered twice"):
        registry.gauge("demo_g", "x")
    with pytest.raises(ValueError, match="a counter cannot decrease"):
        registry.counter("demo_total", "x").labels().inc(-1)


def test_label_combinations_are_capped():
    registry = Registry()
    family = registry.counter("demo_total", "x", ("n",))
    for n in range(MAX_SERIES_PER_METRIC + 50):
        family.labels(str(n)).inc()
    assert len(parse(registry.render())["demo"].samples) == MAX_SERIES_PER_METRIC


def test_server_metrics_exposition_is_valid_and_names_every_documented_metric():
    metrics = ServerMetrics()
    metrics.message_received("smtp", "accepted")
    metrics.message_received("submission", "rejected")
    metrics.outbound_outcome("deferred")
    metrics.delivered_after(12.0)
    metrics.local_delivery("stored", 2)
    metrics.auth_outcome("imap", "failure", "invalid")
    metrics.auth_outcome("smtp", "failure", "throttled")
    metrics.auth_outcome("pop3", "success", "")
    metrics.banned("auth")
    metrics.ban_refused()
    metrics.commit_observer("mailbox")(0.004)
    text = asyncio.run(metrics.exposition())
    families = parse(text)
    expected = {
        "mailkeep_messages_received", "mailkeep_outbound_deliveries",
        "mailkeep_local_deliveries", "mailkeep_connections_opened",
        "mailkeep_connections_refused", "mailkeep_auth_failures", "mailkeep_logins",
        "mailkeep_bans", "mailkeep_ban_refusals", "mailkeep_delivery_latency_seconds",
        "mailkeep_commit_duration_seconds", "mailkeep_connections_open",
        "mailkeep_log_lines_dropped", "mailkeep_build_info", "mailkeep_start_time_seconds",
        "process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"}
    assert expected <= set(families)
    received = samples(families["mailkeep_messages_received"])
    assert received[("mailkeep_messages_received_total",
                     (("outcome", "accepted"), ("protocol", "smtp")))] == 1
    assert received[("mailkeep_messages_received_total",
                     (("outcome", "rejected"), ("protocol", "submission")))] == 1
    # Every known combination is there from the start, at 0, so rate() works at once.
    assert received[("mailkeep_messages_received_total",
                     (("outcome", "junk"), ("protocol", "lmtp")))] == 0
    failures = samples(families["mailkeep_auth_failures"])
    assert failures[("mailkeep_auth_failures_total",
                     (("protocol", "imap"), ("reason", "invalid")))] == 1
    # AUTH exists on submission listeners only: the authenticator's "smtp" is submission.
    assert failures[("mailkeep_auth_failures_total",
                     (("protocol", "submission"), ("reason", "throttled")))] == 1
    assert samples(families["mailkeep_logins"])[
        ("mailkeep_logins_total", (("protocol", "pop3"),))] == 1
    assert samples(families["mailkeep_build_info"]) == {
        ("mailkeep_build_info", (("version", __version__),)): 1}
    commits = samples(families["mailkeep_commit_duration_seconds"])
    assert commits[("mailkeep_commit_duration_seconds_count", (("store", "mailbox"),))] == 1
    assert commits[("mailkeep_commit_duration_seconds_count", (("store", "queue"),))] == 0
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_connection_counts_report_opened_refused_and_open_connections():
    metrics = ServerMetrics()
    imap = ConnectionCounts()
    imap.stats = metrics.connection_stats("imaps:127.0.0.1:993", imap)
    # The IMAP and IMAPS listeners share one ConnectionCounts: one stats object.
    assert metrics.connection_stats("imap:127.0.0.1:143", imap) is imap.stats
    assert imap.admit("192.0.2.1", max_total=10, max_per_ip=2) is None
    assert imap.admit("192.0.2.1", max_total=10, max_per_ip=2) is None
    assert imap.admit("192.0.2.1", max_total=10, max_per_ip=2) == "max_connections_per_ip"
    imap.release("192.0.2.1")
    families = parse(asyncio.run(metrics.exposition()))
    opened = samples(families["mailkeep_connections_opened"])
    assert opened[("mailkeep_connections_opened_total", (("protocol", "imap"),))] == 2
    refused = samples(families["mailkeep_connections_refused"])
    assert refused[("mailkeep_connections_refused_total",
                    (("limit", "max_connections_per_ip"), ("protocol", "imap")))] == 1
    open_now = samples(families["mailkeep_connections_open"])
    assert open_now[("mailkeep_connections_open", (("protocol", "imap"),))] == 1
    assert open_now[("mailkeep_connections_open", (("protocol", "smtp"),))] == 0


def test_a_broken_queue_leaves_the_queue_gauges_at_zero_instead_of_failing_the_scrape():
    class BrokenQueue:
        def state_summary(self, now: float):
            raise OSError("disk gone")

    metrics = ServerMetrics()
    metrics.watch(queue=BrokenQueue())
    families = parse(asyncio.run(metrics.exposition()))
    assert set(samples(families["mailkeep_queue_messages"]).values()) == {0}
