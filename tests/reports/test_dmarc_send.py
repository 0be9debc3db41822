"""Our daily aggregate reports: built from recorded evaluations, destinations checked
against a real local DNS (NSD + Unbound, RFC 7489 §7.1), queued through a real Submission
service and QueueStore (DKIM-signed, verified back against the same DNS), marked only once
queued, and retried when DNS or the queue fails."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmarc_samples import dkim, dmarc_result, spf
from tests.support.dns import ThrowawayDNS, Zone

import mailkeep.reports.dmarc_send as dmarc_send
from mailkeep.config import parse_config_text
from mailkeep.delivery.pipeline import Pipeline
from mailkeep.delivery.submission import Submission
from mailkeep.dkim.keys import DkimKeys, zone_file_record
from mailkeep.outbound.dns import make_resolver
from mailkeep.queue.store import QueueStore
from mailkeep.reports.dmarc_send import (
    SEND_AFTER_MIDNIGHT,
    SEND_JITTER,
    DmarcReporter,
    ReportSettings,
    check_destination,
    send_reports,
)
from mailkeep.reports.dmarc_store import DAY, DmarcStore
from mailkeep.reports.dmarc_xml import DkimAuth, SpfAuth, parse_aggregate_report
from mailkeep.trust.dkim_verify import verify_dkim
from mailkeep.trust.dmarc import ReportUri

CONFIG = """
hostname = "mail.example.com"

[domains."example.com"]

[accounts."me@example.com"]
"""

SETTINGS = ReportSettings(submitter="mail.example.com", org_name="Example Mail",
                          report_from="dmarc-noreply@example.com")
POLICY = ("v=DMARC1; p=reject; rua=mailto:dmarc@sender.test,mailto:agg@collector.test!100k,"
          "mailto:x@nothanks.test,mailto:tiny@collector.test!500,mailto:w@wrong.test")
NOW = 1767225600 + 10 * DAY + 700.0    # 00:11:40 UTC on 2026-01-11
TODAY = 1767225600 + 10 * DAY
YESTERDAY = TODAY - DAY


@pytest.fixture(scope="module")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> DkimKeys:
    keys = DkimKeys(tmp_path_factory.mktemp("keys") / "dkim")
    keys.keygen("example.com")
    return keys


@pytest.fixture(scope="module")
def dns_server(dkim_keys: DkimKeys) -> Iterator[ThrowawayDNS]:
    key_records = "\n".join(zone_file_record(name, value)
                            for name, value in dkim_keys.dns_records("example.com"))
    with ThrowawayDNS([
            Zone("example.com", key_records),
            Zone("collector.test", 'sender.test._report._dmarc TXT "v=DMARC1"'),
            Zone("nothanks.test", "www A 127.0.0.1"),
            Zone("wrong.test", 'sender.test._report._dmarc TXT "v=spf1 -all"'),
    ], lame_zones=["lame.test"]) as server:
        yield server


@pytest.fixture(scope="module")
def resolver(dns_server: ThrowawayDNS):
    host, port = dns_server.resolver_address
    return make_resolver([host], port, timeout=3.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DmarcStore]:
    db = DmarcStore.for_data_dir(tmp_path)
    yield db
    db.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[QueueStore]:
    q = QueueStore(tmp_path / "queue")
    yield q
    q.close()


def submission(tmp_path: Path, queue: QueueStore, keys: DkimKeys) -> Submission:
    config = parse_config_text(CONFIG, "test.toml")
    return Submission(config, Pipeline(config, store=None), queue, spool_dir=tmp_path,
                      dkim=keys)


def evaluate_into(store: DmarcStore, when: float, *, ip: str = "192.0.2.10",
                  passing: bool = True, policy: str = POLICY) -> None:
    spf_checked = spf("pass" if passing else "fail", "sender.test")
    dkim_checked = [dkim("pass" if passing else "fail", "sender.test", "s1")]
    verdict = dmarc_result("sender.test", spf=spf_checked, dkim=dkim_checked, record=policy)
    assert store.record_evaluation(source_ip=ip, envelope_from="bounce@sender.test",
                                   envelope_to="me@example.com", spf=spf_checked,
                                   dkim=dkim_checked, dmarc=verdict, when=when)


def test_destinations_rfc7489_7_1(resolver) -> None:
    async def check(uri: str) -> tuple[bool, str, bool]:
        address = uri.removeprefix("mailto:")
        found = await check_destination("sender.test", ReportUri(uri, address, None), resolver)
        return found.accepted, found.reason, found.temporary

    async def all_checks():
        return await asyncio.gather(*(check(u) for u in (
            "mailto:dmarc@sender.test", "mailto:dmarc@reports.sender.test",
            "mailto:agg@collector.test", "mailto:x@nothanks.test", "mailto:w@wrong.test",
            "mailto:r@x.lame.test")))

    same, subdomain, authorized, missing, wrong, lame = asyncio.run(all_checks())
    assert same[0] and subdomain[0] and authorized[0]
    assert not missing[0] and "no TXT record at sender.test._report._dmarc.nothanks.test" \
        in missing[1] and not missing[2]
    assert not wrong[0] and "no v=DMARC1 record" in wrong[1]
    assert not lame[0] and lame[2]


def test_report_is_built_checked_signed_and_queued(tmp_path: Path, store: DmarcStore,
                                                   queue: QueueStore, dkim_keys: DkimKeys,
                                                   resolver) -> None:
    evaluate_into(store, YESTERDAY + 100)
    evaluate_into(store, YESTERDAY + 200)
    evaluate_into(store, YESTERDAY + 300, ip="203.0.113.9", passing=False)
    evaluate_into(store, TODAY + 100)  # today is not complete: not reported yet
    service = submission(tmp_path, queue, dkim_keys)

    [sent] = asyncio.run(send_reports(store, lambda: service, SETTINGS, resolver=resolver,
                                      now=NOW))
    assert sent.status == "queued", sent
    assert sent.recipients == ("dmarc@sender.test", "agg@collector.test")
    refused = {d.address: d.reason for d in sent.destinations if not d.accepted}
    assert set(refused) == {"x@nothanks.test", "tiny@collector.test", "w@wrong.test"}
    assert "not authorized" in refused["x@nothanks.test"]
    assert "over its size limit (500)" in refused["tiny@collector.test"]
    assert (sent.records, sent.messages) == (2, 3)

    entry = queue.get(sent.queue_id)
    assert entry.sender == "dmarc-noreply@example.com"
    assert [r.address for r in entry.recipients] == ["dmarc@sender.test", "agg@collector.test"]
    raw = queue.message_path(sent.queue_id).read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    # RFC 7489 §7.2.1.1: the subject and the attachment's name.
    assert message["Subject"] == (f"Report Domain: sender.test Submitter: mail.example.com "
                                  f"Report-ID: <{sent.report_id}>")
    assert message["From"] == "dmarc-noreply@example.com"
    assert message["To"].addresses[1].addr_spec == "agg@collector.test"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/gzip"
    assert attachment.get_filename() == (f"mail.example.com!sender.test!{YESTERDAY}!"
                                         f"{YESTERDAY + DAY - 1}.xml.gz")
    report = parse_aggregate_report(gzip.decompress(attachment.get_content()))
    assert (report.metadata.org_name, report.metadata.email) == (
        "Example Mail", "dmarc-noreply@example.com")
    assert report.metadata.report_id == sent.report_id
    assert (report.metadata.begin, report.metadata.end) == (YESTERDAY, YESTERDAY + DAY - 1)
    assert (report.policy.domain, report.policy.p, report.policy.sp, report.policy.pct) == (
        "sender.test", "reject", "reject", 100)
    good, bad = report.records
    assert (good.source_ip, good.count, good.disposition, good.dkim, good.spf) == (
        "192.0.2.10", 2, "none", "pass", "pass")
    assert (bad.source_ip, bad.count, bad.disposition, bad.dkim, bad.spf) == (
        "203.0.113.9", 1, "reject", "fail", "fail")
    assert (good.header_from, good.envelope_from, good.envelope_to) == (
        "sender.test", "sender.test", "example.com")
    assert good.dkim_results == (DkimAuth("sender.test", "pass", "s1"),)
    assert bad.spf_results == (SpfAuth("sender.test", "fail", "mfrom"),)

    # Signed like any local mail, with the keys DNS publishes.
    results = asyncio.run(verify_dkim(raw, resolver=resolver))
    assert {(str(r.result), r.domain) for r in results} == {("pass", "example.com")}
    assert len(results) == 2

    # Marked reported: a second run sends nothing; today's evaluation waits for tomorrow.
    assert asyncio.run(send_reports(store, lambda: service, SETTINGS, resolver=resolver,
                                    now=NOW)) == []
    assert queue.count() == 1
    [logged] = store.sent_reports(since=0)
    assert (logged.status, logged.queue_id, logged.messages) == ("queued", sent.queue_id, 3)
    assert store.pending_days(before=TODAY + DAY, since=0) == [("sender.test", TODAY)]


def test_dns_failure_defers_and_refusal_is_final(tmp_path: Path, store: DmarcStore,
                                                 queue: QueueStore, dkim_keys: DkimKeys,
                                                 resolver) -> None:
    lame = "v=DMARC1; p=none; rua=mailto:r@x.lame.test"
    evaluate_into(store, YESTERDAY + 100, policy=lame)
    service = submission(tmp_path, queue, dkim_keys)
    [sent] = asyncio.run(send_reports(store, lambda: service, SETTINGS, resolver=resolver,
                                      now=NOW))
    assert sent.status == "deferred" and queue.count() == 0
    # Nothing marked, no claim left behind: the next run tries again.
    assert store.pending_days(before=TODAY, since=0) == [("sender.test", YESTERDAY)]
    assert store.sent_reports(since=0) == []

    other = tmp_path / "other"
    with DmarcStore.for_data_dir(other) as refusing:
        evaluate_into(refusing, YESTERDAY + 100,
                      policy="v=DMARC1; p=none; rua=mailto:x@nothanks.test")
        [sent] = asyncio.run(send_reports(refusing, lambda: service, SETTINGS,
                                          resolver=resolver, now=NOW))
        assert sent.status == "no destination"
        assert refusing.pending_days(before=TODAY, since=0) == []
        assert refusing.sent_reports(since=0)[0].status == "no destination"


def test_queue_failure_defers_until_the_queue_accepts(tmp_path: Path, store: DmarcStore,
                                                      dkim_keys: DkimKeys, resolver) -> None:
    evaluate_into(store, YESTERDAY + 100)
    broken = QueueStore(tmp_path / "broken-queue")
    broken.close()
    [sent] = asyncio.run(send_reports(store, lambda: submission(tmp_path, broken, dkim_keys),
                                      SETTINGS, resolver=resolver, now=NOW))
    assert sent.status == "deferred" and sent.detail.startswith("451")
    assert store.pending_days(before=TODAY, since=0) == [("sender.test", YESTERDAY)]
    with QueueStore(tmp_path / "queue") as working:
        [sent] = asyncio.run(send_reports(store, lambda: submission(tmp_path, working,
                                                                    dkim_keys),
                                          SETTINGS, resolver=resolver, now=NOW + 3600))
        assert sent.status == "queued" and working.count() == 1


def test_dry_run_catch_up_and_record_cap(tmp_path: Path, store: DmarcStore,
                                         monkeypatch: pytest.MonkeyPatch, resolver) -> None:
    same_org = "v=DMARC1; p=quarantine; rua=mailto:dmarc@sender.test"
    evaluate_into(store, TODAY - 5 * DAY, policy=same_org)  # beyond MAX_CATCH_UP_DAYS
    for n in range(3):
        evaluate_into(store, TODAY - 2 * DAY + n, ip=f"192.0.2.{n}", policy=same_org)
    evaluate_into(store, YESTERDAY + 5, policy=same_org)
    monkeypatch.setattr(dmarc_send, "MAX_OUTGOING_RECORDS", 2)

    def no_submission():
        raise AssertionError("a dry run submits nothing")

    sent = asyncio.run(send_reports(store, no_submission, SETTINGS, resolver=resolver,
                                    now=NOW, dry_run=True))
    assert [(s.begin, s.status, s.records, s.messages) for s in sent] == [
        (TODAY - 2 * DAY, "dry-run", 2, 2), (YESTERDAY, "dry-run", 1, 1)]
    report = parse_aggregate_report(sent[0].xml)
    assert report.metadata.errors == ("1 records (1 messages) left out: more than 2 records",)
    assert b"Report Domain: sender.test" in sent[0].message
    # Nothing claimed or marked: the real run still has all of it.
    assert store.sent_reports(since=0) == []
    assert len(store.pending_days(before=TODAY, since=TODAY - 3 * DAY)) == 2


def test_reporter_runs_at_start_and_then_after_midnight(tmp_path: Path, store: DmarcStore,
                                                        queue: QueueStore,
                                                        dkim_keys: DkimKeys, resolver,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmarc_send, "STARTUP_DELAY", 0.0)
    monkeypatch.setattr(dmarc_send, "STARTUP_JITTER", 0.0)
    evaluate_into(store, YESTERDAY + 100, policy="v=DMARC1; p=none; rua=mailto:d@sender.test")
    service = submission(tmp_path, queue, dkim_keys)
    reporter = DmarcReporter(store, lambda: service, SETTINGS, resolver, clock=lambda: NOW,
                             random=lambda: 0.5)
    next_run = reporter.next_run(NOW)
    assert next_run == TODAY + DAY + SEND_AFTER_MIDNIGHT + 0.5 * SEND_JITTER

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(reporter.run(stop))
        for _ in range(200):
            if queue.count():
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(go())
    assert queue.count() == 1
    assert store.sent_reports(since=0)[0].status == "queued"
