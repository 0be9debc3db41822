"""The DMARC report store (data_dir/dmarc.db): received reports stored once, summaries,
evaluations buffered off the hot path and committed by the writer thread, claims that keep
two senders apart, retention."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmarc_samples import SEED_003, dkim, dmarc_result, google_report, microsoft_report, spf
from tests.support.procs import wait_until

from mailkeep.reports.dmarc_store import (
    DAY,
    FLUSH_INTERVAL,
    RECEIVED_RETENTION_DAYS,
    REPORTED_RETENTION_DAYS,
    UNREPORTED_RETENTION_DAYS,
    DmarcStore,
)
from mailkeep.reports.dmarc_xml import DkimAuth, PolicyOverride, SpfAuth, parse_aggregate_report


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DmarcStore]:
    db = DmarcStore.for_data_dir(tmp_path)
    yield db
    db.close()


def test_a_report_is_stored_once(tmp_path: Path, store: DmarcStore) -> None:
    report = parse_aggregate_report(google_report())
    first = store.add_report(report, source="msg-1")
    again = store.add_report(report, source="msg-2")
    assert first.stored and not again.stored and again.report_row == first.report_row
    # Another process (the CLI) sees the same single report.
    with DmarcStore.for_data_dir(tmp_path) as other:
        listed = other.received_reports(since=0)
    assert [(r.org_name, r.report_id, r.records, r.messages) for r in listed] == [
        ("google.com", "5717107811868587391", 2, 15)]
    assert (tmp_path / "dmarc.db").stat().st_mode & 0o777 == 0o600


def test_summary_per_domain_source_and_reporter(store: DmarcStore) -> None:
    store.add_report(parse_aggregate_report(google_report()))
    store.add_report(parse_aggregate_report(microsoft_report()))
    store.add_report(parse_aggregate_report(SEED_003))
    rows = {(r.domain, r.source_ip, r.org_name): r for r in store.summary(since=0)}
    assert set(rows) == {
        ("example.org", "192.0.2.25", "google.com"),
        ("example.org", "203.0.113.66", "google.com"),
        ("example.org", "192.0.2.25", "Enterprise Outlook"),
        ("example.org", "2001:db8:400::1f", "Enterprise Outlook"),
        ("moff.tech", "64.x.x.x", "google.com"),
    }
    good = rows[("example.org", "192.0.2.25", "google.com")]
    assert (good.messages, good.dmarc_pass, good.dmarc_fail) == (12, 12, 0)
    assert (good.spf_aligned, good.dkim_aligned, good.disposition_none) == (12, 12, 12)
    spoofer = rows[("example.org", "203.0.113.66", "google.com")]
    assert (spoofer.dmarc_pass, spoofer.dmarc_fail, spoofer.disposition_quarantine) == (0, 3, 3)
    forwarded = rows[("example.org", "192.0.2.25", "Enterprise Outlook")]
    assert (forwarded.dmarc_pass, forwarded.spf_aligned, forwarded.dkim_aligned) == (4, 0, 4)
    rejected = rows[("example.org", "2001:db8:400::1f", "Enterprise Outlook")]
    assert (rejected.dmarc_fail, rejected.disposition_reject) == (1, 1)
    seed = rows[("moff.tech", "64.x.x.x", "google.com")]
    assert (seed.messages, seed.dmarc_pass, seed.spf_aligned, seed.dkim_aligned) == (1, 1, 1, 0)
    # Most messages first within a domain.
    assert [r.source_ip for r in store.summary(since=0, domain="example.org")][0] == "192.0.2.25"
    assert {r.domain for r in store.summary(since=0, domain="moff.tech")} == {"moff.tech"}
    # The period filter is on the end of the report's period.
    assert store.summary(since=1466899200, domain="moff.tech") == []


def record(store: DmarcStore, *, ip: str = "192.0.2.10", when: float, from_domain: str =
           "sender.test", spf_result: str = "pass", dkim_result: str = "pass",
           **kwargs) -> bool:
    spf_checked = spf(spf_result, "bounces.sender.test")
    dkim_checked = [dkim(dkim_result, "sender.test", "s1"), dkim("fail", "other.test", "x")]
    verdict = dmarc_result(from_domain, spf=spf_checked, dkim=dkim_checked,
                           **kwargs.pop("verdict", {}))
    return store.record_evaluation(source_ip=ip, envelope_from="bounce@bounces.sender.test",
                                   envelope_to="me@example.com", spf=spf_checked,
                                   dkim=dkim_checked, dmarc=verdict, when=when, **kwargs)


def test_evaluations_are_buffered_then_committed_by_the_writer(tmp_path: Path,
                                                               store: DmarcStore) -> None:
    when = 1767225600 + 3600
    assert record(store, when=when)
    reader = DmarcStore.for_data_dir(tmp_path)
    try:
        # The hot path wrote nothing itself; the writer thread commits within its interval.
        found = wait_until(lambda: reader.evaluations("sender.test", 1767225600,
                                                      1767225600 + DAY),
                           timeout=FLUSH_INTERVAL * 5, description="the writer's commit")
    finally:
        reader.close()
    [evaluation] = found
    assert (evaluation.source_ip, evaluation.header_from, evaluation.envelope_from,
            evaluation.envelope_to) == ("192.0.2.10", "sender.test", "bounces.sender.test",
                                        "example.com")
    assert evaluation.spf == SpfAuth("bounces.sender.test", "pass", "mfrom")
    assert evaluation.dkim == (DkimAuth("sender.test", "pass", "s1"),
                               DkimAuth("other.test", "fail", "x"))
    # SPF passed for another subdomain (relaxed alignment), DKIM aligned too.
    assert (evaluation.dmarc_result, evaluation.dmarc_dkim, evaluation.dmarc_spf,
            evaluation.disposition) == ("pass", "pass", "pass", "none")
    assert evaluation.policy.domain == "sender.test" and evaluation.policy.p == "reject"
    assert [u.address for u in evaluation.rua] == ["dmarc@sender.test", "agg@collector.test"]
    assert evaluation.rua[1].max_bytes == 100 * 1024


def test_close_commits_what_is_buffered(tmp_path: Path) -> None:
    db = DmarcStore.for_data_dir(tmp_path)
    for n in range(30):
        assert record(db, when=1767225600 + n, ip=f"192.0.2.{n}")
    db.close()
    with DmarcStore.for_data_dir(tmp_path) as again:
        assert len(again.evaluations("sender.test", 1767225600, 1767225600 + DAY)) == 30


def test_what_is_not_recorded(store: DmarcStore) -> None:
    when = 1767225600.0
    no_rua = {"record": "v=DMARC1; p=reject"}
    assert not record(store, when=when, verdict=no_rua)
    assert not record(store, when=when, verdict={"record": "v=DMARC1; p=none; "
                                                 "rua=https://reports.example/"})
    assert not record(store, when=when, ip="local")
    # The receiver's own choices: a local override, an applied disposition.
    assert record(store, when=when, spf_result="fail", dkim_result="fail",
                  disposition="none", override=PolicyOverride("local_policy", "arc=pass"))
    # pct= sampled out: reported as such (RFC 7489 Appendix C sampled_out).
    assert record(store, when=when + 1, spf_result="fail", dkim_result="fail",
                  verdict={"record": "v=DMARC1; p=reject; pct=10; rua=mailto:d@sender.test",
                           "random": 0.5})
    store.flush()
    overridden, sampled = store.evaluations("sender.test", 1767225600, 1767225600 + DAY)
    assert (overridden.dmarc_result, overridden.disposition) == ("fail", "none")
    assert overridden.reasons == (PolicyOverride("local_policy", "arc=pass"),)
    assert (sampled.disposition, sampled.reasons) == ("quarantine",
                                                      (PolicyOverride("sampled_out"),))


def test_pending_days_claims_and_marking(tmp_path: Path, store: DmarcStore) -> None:
    day1, day2 = 1767225600, 1767225600 + DAY
    for when in (day1 + 10, day1 + 20, day2 + 30):
        record(store, when=when)
    store.flush()
    assert store.pending_days(before=day2 + DAY, since=0) == [("sender.test", day1),
                                                              ("sender.test", day2)]
    assert store.pending_days(before=day2, since=0) == [("sender.test", day1)]
    now = day2 + DAY + 600
    with DmarcStore.for_data_dir(tmp_path) as other:
        assert store.claim_report("sender.test", day1, day2, "r1", now=now)
        # Another sender (the CLI next to the server) cannot take the same day.
        assert not other.claim_report("sender.test", day1, day2, "r2", now=now)
        ids = [e.id for e in store.evaluations("sender.test", day1, day2)]
        store.finish_report("sender.test", day1, status="queued", evaluation_ids=ids,
                            now=now, queue_id="Q1", recipients=["dmarc@sender.test"],
                            messages=2)
        assert other.evaluations("sender.test", day1, day2) == []
        assert store.pending_days(before=day2 + DAY, since=0) == [("sender.test", day2)]
        # A late evaluation of a reported day is not reported a second time.
        record(store, when=day1 + 500)
        store.flush()
        assert not other.claim_report("sender.test", day1, day2, "r3", now=now)
        assert store.pending_days(before=day2 + DAY, since=0) == [("sender.test", day2)]
        # A released claim can be taken again; a stale one is taken over.
        assert store.claim_report("sender.test", day2, day2 + DAY, "r4", now=now)
        store.release_report("sender.test", day2)
        assert other.claim_report("sender.test", day2, day2 + DAY, "r5", now=now)
        assert not store.claim_report("sender.test", day2, day2 + DAY, "r6", now=now + 60)
        assert store.claim_report("sender.test", day2, day2 + DAY, "r7", now=now + 7200)
    [entry] = [e for e in store.sent_reports(since=0) if e.begin == day1]
    assert (entry.status, entry.queue_id, entry.recipients, entry.messages) == (
        "queued", "Q1", ("dmarc@sender.test",), 2)


def test_purge_keeps_each_kind_for_its_retention(store: DmarcStore) -> None:
    now = time.time()
    store.add_report(parse_aggregate_report(google_report(
        begin=int(now - (RECEIVED_RETENTION_DAYS + 2) * DAY), report_id="old")))
    store.add_report(parse_aggregate_report(google_report(begin=int(now - 3 * DAY),
                                                          report_id="recent")))
    record(store, when=now - (UNREPORTED_RETENTION_DAYS + 1) * DAY, ip="192.0.2.1")
    record(store, when=now - 2 * DAY, ip="192.0.2.2")
    record(store, when=now - (REPORTED_RETENTION_DAYS + 3) * DAY, ip="192.0.2.3")
    store.flush()
    [old_reported] = [e for e in store.evaluations("sender.test", 0, int(now))
                      if e.source_ip == "192.0.2.3"]
    day = int(old_reported.time // DAY) * DAY
    store.claim_report("sender.test", day, day + DAY, "x", now=old_reported.time + DAY)
    store.finish_report("sender.test", day, status="queued", evaluation_ids=[old_reported.id],
                        now=old_reported.time + DAY)
    counts = store.purge(now)
    assert counts == {"reports": 1, "evaluations": 2, "sent_reports": 0}
    assert [r.report_id for r in store.received_reports(since=0)] == ["recent"]
    assert [e.source_ip for e in store.evaluations("sender.test", 0, int(now))] == ["192.0.2.2"]
