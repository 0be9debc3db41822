"""GET /metrics on a real `mailkeep serve`: mail received over SMTP and submission, failed
logins, a message queued for a relay that does not answer; the numbers are read back with
the reference Prometheus parser. Also: 403 to a client outside [metrics] allow, 404 once
metrics are disabled by a reload, and `mailkeep log trace` over the per-subsystem files."""

from __future__ import annotations

import base64
import gzip
import http.client
import imaplib
import re
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.conftest import MAILKEEP, RunningServer, free_ports

PASSWORD = "correct horse battery"
CONFIG = """\
hostname = "mx.example.test"
data_dir = "data"

[log]
dir = "{logs}"
level = "info"

[smtp]
message_size_limit = "64K"

[auth]
allow_plaintext_loopback = true
max_failure_delay = "0.1s"

[relays.nowhere]
host = "[127.0.0.1]:{closed}"
tls = "may"

[delivery]
relayhost = "nowhere"
mta_sts = false
dane = false

[queue]
queue_run_delay = "1s"
minimal_backoff_time = "1h"
maximal_backoff_time = "2h"

[metrics]
allow = ["127.0.0.1/32"]

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{smtp}"

[[listeners]]
protocol = "submission"
address = "127.0.0.1:{submission}"

[[listeners]]
protocol = "imap"
address = "127.0.0.1:{imap}"

[[listeners]]
protocol = "http"
address = "127.0.0.1:{http}"

[domains."example.test"]

[accounts."demo@example.test"]
"""


@pytest.fixture(scope="module")
def mk(tmp_path_factory):
    directory = tmp_path_factory.mktemp("metrics")
    smtp, submission, imap, http_port, closed = free_ports(5)
    logs = directory / "logs"
    config = directory / "mailkeep.toml"
    config.write_text(CONFIG.format(logs=logs, smtp=smtp, submission=submission, imap=imap,
                                    http=http_port, closed=closed))
    server = RunningServer(directory, config, smtp, 0, directory / "unused.sock",
                           logs / "server.log", imap_port=imap, submission_port=submission)
    server.http_port = http_port  # type: ignore[attr-defined]
    server.set_password("demo@example.test", PASSWORD)
    server.start()
    yield server
    server.stop()


def scrape(mk: RunningServer, source: str = "127.0.0.1",
           gzip_ok: bool = False) -> tuple[int, str, str]:
    """(status, Content-Type, body) of GET /metrics from ``source``."""
    port = mk.http_port  # type: ignore[attr-defined]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(source, 0))
    try:
        conn.request("GET", "/metrics",
                     headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
        response = conn.getresponse()
        body = response.read()
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        elif gzip_ok:
            raise AssertionError("gzip was accepted but not used")
        return response.status, response.getheader("Content-Type") or "", body.decode()
    finally:
        conn.close()


def values(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample, by name and sorted labels, through the reference parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def wait_for_metrics(mk: RunningServer, check, what: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, _, text = scrape(mk)
        assert status == 200
        found = values(text)
        if check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never showed {what}:\n{text}")
        time.sleep(0.2)


def test_metrics_count_what_the_server_did(mk: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", mk.smtp_port, timeout=20) as client:
        for n in range(2):
            client.sendmail("someone@sender.test", ["demo@example.test"],
                            f"Subject: hello {n}\r\n\r\nhi\r\n".encode())
        # Too big, found only at the end of DATA (no SIZE= announced): a refused message.
        client.mail("someone@sender.test")
        client.rcpt("demo@example.test")
        code, _ = client.data(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 1000)
        assert code == 552
    with smtplib.SMTP("127.0.0.1", mk.submission_port, timeout=20) as client:
        client.ehlo()
        code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(
            b"\0demo@example.test\0wrong password").decode())
        assert code == 535
    imap = imaplib.IMAP4("127.0.0.1", mk.imap_port, timeout=20)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            imap.login("demo@example.test", "also wrong")
    finally:
        imap.shutdown()
    with smtplib.SMTP("127.0.0.1", mk.submission_port, timeout=20) as client:
        client.login("demo@example.test", PASSWORD)
        client.sendmail("demo@example.test", ["friend@far.test"],
                        b"From: demo@example.test\r\nTo: friend@far.test\r\n"
                        b"Subject: for a relay that is down\r\n\r\nhello\r\n")

    found = wait_for_metrics(
        mk, lambda f: metric(f, "mailkeep_queue_messages", state="deferred") == 1,
        "the queued message deferred")
    assert metric(found, "mailkeep_messages_received_total",
                  protocol="smtp", outcome="accepted") == 2
    assert metric(found, "mailkeep_messages_received_total",
                  protocol="smtp", outcome="rejected") == 1
    assert metric(found, "mailkeep_messages_received_total",
                  protocol="submission", outcome="accepted") == 1
    assert metric(found, "mailkeep_local_deliveries_total", outcome="stored") == 2
    assert metric(found, "mailkeep_auth_failures_total",
                  protocol="submission", reason="invalid") == 1
    assert metric(found, "mailkeep_auth_failures_total",
                  protocol="imap", reason="invalid") == 1
    assert metric(found, "mailkeep_logins_total", protocol="submission") == 1
    assert metric(found, "mailkeep_outbound_deliveries_total", outcome="deferred") >= 1
    assert metric(found, "mailkeep_outbound_deliveries_total", outcome="delivered") == 0
    assert metric(found, "mailkeep_queue_messages", state="active") == 0
    assert metric(found, "mailkeep_queue_messages", state="held") == 0
    assert metric(found, "mailkeep_queue_oldest_message_age_seconds", state="deferred") > 0
    assert metric(found, "mailkeep_delivery_latency_seconds_count") == 0
    # SMTP: the start-up probe that waits for the greeting, then our session.
    assert metric(found, "mailkeep_connections_opened_total", protocol="smtp") == 2
    assert metric(found, "mailkeep_connections_opened_total", protocol="submission") == 2
    assert metric(found, "mailkeep_connections_opened_total", protocol="imap") == 1
    assert metric(found, "mailkeep_connections_opened_total", protocol="http") >= 1
    # The scrape's own connection is open while the numbers are taken.
    assert metric(found, "mailkeep_connections_open", protocol="http") >= 1
    assert metric(found, "mailkeep_connections_open", protocol="smtp") == 0
    for store in ("mailbox", "queue"):
        count = metric(found, "mailkeep_commit_duration_seconds_count", store=store)
        assert count >= 1
        buckets = sorted(((float(dict(labels)["le"]), value) for (name, labels), value
                          in found.items() if name == "mailkeep_commit_duration_seconds_bucket"
                          and dict(labels)["store"] == store))
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert buckets[-1] == (float("inf"), count)
    assert metric(found, "process_open_fds") > 0
    assert metric(found, "mailkeep_start_time_seconds") <= time.time()
    # The delivery process (docs/queue.md) runs and reports its own usage.
    assert metric(found, "mailkeep_delivery_process_up") == 1
    assert metric(found, "mailkeep_delivery_process_cpu_seconds_total") > 0
    assert metric(found, "mailkeep_delivery_process_resident_memory_bytes") > 10_000_000
    assert metric(found, "mailkeep_delivery_process_restarts_total") == 0


def test_the_content_type_is_the_text_format_and_others_are_refused(mk: RunningServer) -> None:
    status, content_type, _ = scrape(mk)
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    status, _, text = scrape(mk, gzip_ok=True)
    assert status == 200 and values(text)  # compressed, and still the same format
    # From 127.0.0.2: loopback, but outside [metrics] allow = ["127.0.0.1/32"].
    status, _, body = scrape(mk, source="127.0.0.2")
    assert status == 403
    assert "mailkeep_" not in body


def test_trace_follows_the_queued_message_through_the_subsystem_files(mk: RunningServer) -> None:
    logs = mk.log.parent
    queue_log = logs / "queue.log"
    deadline = time.monotonic() + 20
    while "msg=delivery" not in (queue_log.read_text() if queue_log.exists() else ""):
        assert time.monotonic() < deadline, "no delivery attempt in queue.log"
        time.sleep(0.1)
    submitted = [line for line in (logs / "submission.log").read_text().splitlines()
                 if "msg=submitted" in line and "remote=1" in line]
    assert submitted, "the submission log has no submitted line"
    queue_id = re.search(r" id=(\S+)", submitted[-1]).group(1)
    result = subprocess.run([MAILKEEP, "log", "trace", queue_id, "--config", str(mk.config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    events = [(re.search(r"subsystem=(\S+)", line).group(1),
               re.search(r"msg=(\"[^\"]*\"|\S+)", line).group(1))
              for line in result.stdout.splitlines()]
    # Accepted at submission, durably queued, attempted: in that order, from three files.
    assert ("submission", "submitted") in events
    assert events.index(("queue", "queued")) < events.index(("queue", "delivery"))
    assert all(f"id={queue_id}" in line for line in result.stdout.splitlines())
    assert {"auth.log", "imap.log", "queue.log", "server.log", "smtp.log",
            "submission.log"} <= {p.name for p in Path(logs).iterdir()}


def test_disabled_metrics_answer_404_after_a_reload(mk: RunningServer) -> None:
    text = mk.config.read_text().replace('[metrics]\n', '[metrics]\nenabled = false\n')
    mk.config.write_text(text)
    assert mk.proc is not None
    mk.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:
        status, _, _ = scrape(mk)
        if status == 404:
            break
        assert time.monotonic() < deadline, f"still {status} after the reload"
        time.sleep(0.1)
    assert "msg=reloaded" in mk.log_text()
