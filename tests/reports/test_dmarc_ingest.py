"""Reports arriving by mail: found in the MIME structure whatever the reporter's packaging
(xml, gzip, zip, octet-stream with a file name), decompressed within hard limits, stored
once; every bad input gets a defined outcome."""

from __future__ import annotations

import gzip
import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmarc_samples import (
    SEED_003,
    dmarcbis_report,
    google_report,
    gzipped,
    microsoft_report,
    report_message,
    zipped,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.reports.dmarc_ingest import (
    MAX_ZIP_ENTRIES,
    IngestStatus,
    extract_report_xml,
    ingest_file,
    ingest_message,
)
from mailkeep.reports.dmarc_store import DmarcStore
from mailkeep.reports.dmarc_xml import MAX_REPORT_BYTES, ReportError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DmarcStore]:
    db = DmarcStore.for_data_dir(tmp_path)
    yield db
    db.close()


@pytest.mark.parametrize(("content_type", "filename", "packed"), [
    ("application/zip", "google.com!example.org!1767225600!1767311999.zip",
     zipped(google_report(), "google.com!example.org!1767225600!1767311999.xml")),
    ("application/x-zip-compressed", "report.zip", zipped(google_report())),
    ("application/gzip", "enterprise.protection.outlook.com!example.org!1767225600!"
     "1767312000.xml.gz", gzipped(google_report())),
    ("application/xml", "report.xml", google_report()),
    ("text/xml", "report.xml", google_report()),
    ("application/octet-stream", "report.xml.gz", gzipped(google_report())),
    ("application/octet-stream", "REPORT.ZIP", zipped(google_report())),
    # What the headers claim does not matter: the bytes say what they are.
    ("application/gzip", "report.xml.gz", zipped(google_report())),
])
def test_report_packagings(store: DmarcStore, content_type: str, filename: str,
                           packed: bytes) -> None:
    message = report_message(packed, content_type=content_type, filename=filename)
    outcome = ingest_message(message, store, source="Q1")
    assert outcome.status == IngestStatus.STORED, outcome.reason
    assert (outcome.org_name, outcome.domain, outcome.records, outcome.messages) == (
        "google.com", "example.org", 2, 15)
    assert outcome.attachment == filename
    assert [r.report_id for r in store.received_reports(since=0)] == ["5717107811868587391"]


def test_ingest_is_idempotent(store: DmarcStore) -> None:
    message = report_message(gzipped(microsoft_report()), content_type="application/gzip",
                             filename="r.xml.gz")
    assert ingest_message(message, store).status == IngestStatus.STORED
    again = ingest_message(message, store)
    assert again.status == IngestStatus.DUPLICATE and again.ok
    assert again.report_id == "3f0c3b0e6a8d4c1f9e2b7a5d4c3b2a10"
    # The same report as a bare file (imported by hand): still one report.
    assert ingest_file(_write(store, "r.xml", microsoft_report()), store).status == \
        IngestStatus.DUPLICATE
    assert len(store.received_reports(since=0)) == 1
    assert len(store.summary(since=0)) == 2


def _write(store: DmarcStore, name: str, data: bytes) -> Path:
    path = store.path.parent / name
    path.write_bytes(data)
    return path


def test_files_by_hand(store: DmarcStore) -> None:
    assert ingest_file(_write(store, "seed.xml", SEED_003), store).status == IngestStatus.STORED
    assert ingest_file(_write(store, "bis.xml.gz", gzipped(dmarcbis_report())),
                       store).status == IngestStatus.STORED
    eml = report_message(zipped(google_report()), content_type="application/zip",
                         filename="r.zip")
    assert ingest_file(_write(store, "g.eml", eml), store).status == IngestStatus.STORED
    missing = ingest_file(store.path.parent / "nope.xml", store)
    assert missing.status == IngestStatus.FAILED and "nope.xml" in missing.reason
    assert len(store.received_reports(since=0)) == 3


def test_a_forwarded_report_message_counts(store: DmarcStore) -> None:
    inner = report_message(zipped(google_report()), content_type="application/zip",
                           filename="r.zip")
    forwarded = (b"From: me@example.org\r\nTo: dmarc-reports@example.org\r\n"
                 b"Subject: Fwd: Report domain\r\nMIME-Version: 1.0\r\n"
                 b'Content-Type: multipart/mixed; boundary="fwd"\r\n\r\n'
                 b"--fwd\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                 b"--fwd\r\nContent-Type: message/rfc822\r\n\r\n" + inner +
                 b"\r\n--fwd--\r\n")
    assert ingest_message(forwarded, store).status == IngestStatus.STORED


def test_messages_without_reports(store: DmarcStore) -> None:
    plain = b"From: a@example.net\r\nSubject: hello\r\n\r\njust text\r\n"
    assert ingest_message(plain, store).status == IngestStatus.NOT_A_REPORT
    pdf = report_message(b"%PDF-1.4", content_type="application/pdf", filename="x.pdf")
    assert ingest_message(pdf, store).status == IngestStatus.NOT_A_REPORT
    assert ingest_message(b"", store).status == IngestStatus.NOT_A_REPORT
    assert ingest_message(b"\x00\xff" * 1000, store).status == IngestStatus.NOT_A_REPORT


def test_a_bad_attachment_does_not_hide_a_good_one(store: DmarcStore) -> None:
    good = report_message(zipped(google_report()), content_type="application/zip",
                          filename="good.zip")
    two = good.replace(b"--000000000000b0b1\r\nContent-Type: application/zip",
                       b"--000000000000b0b1\r\nContent-Type: application/xml; name=bad.xml\r\n"
                       b"\r\n<feedback>broken\r\n"
                       b"--000000000000b0b1\r\nContent-Type: application/zip", 1)
    outcome = ingest_message(two, store)
    assert outcome.status == IngestStatus.STORED and outcome.attachment == "good.zip"
    bad_only = report_message(b"<feedback>broken", content_type="application/xml",
                              filename="bad.xml")
    outcome = ingest_message(bad_only, store)
    assert outcome.status == IngestStatus.INVALID and "not well-formed" in outcome.reason


def test_zip_bomb_is_capped() -> None:
    # 64 MiB of zeros deflate to about 64 KiB; reading stops just past the cap.
    bomb = zipped(b"\0" * (64 * 1024 * 1024), "report.xml")
    assert len(bomb) < 200_000
    started = time.monotonic()
    with pytest.raises(ReportError, match=f"larger than {MAX_REPORT_BYTES} bytes"):
        extract_report_xml(bomb)
    assert time.monotonic() - started < 5.0


def test_gzip_bomb_is_capped_and_reaches_nobody(store: DmarcStore) -> None:
    bomb = gzip.compress(b"<" * (64 * 1024 * 1024), compresslevel=9)
    message = report_message(bomb, content_type="application/gzip", filename="r.xml.gz")
    outcome = ingest_message(message, store)
    assert outcome.status == IngestStatus.INVALID
    assert f"larger than {MAX_REPORT_BYTES} bytes" in outcome.reason
    assert store.received_reports(since=0) == []


def test_archive_limits_and_damage() -> None:
    crowded = zipped(google_report(), extra={f"f{n}.txt": b"x" for n in range(MAX_ZIP_ENTRIES)})
    with pytest.raises(ReportError, match="more than"):
        extract_report_xml(crowded)
    # No .xml entry among several: nothing to read.
    with pytest.raises(ReportError, match=r"without an \.xml entry"):
        extract_report_xml(zipped(b"a", "a.txt", extra={"b.txt": b"b"}))
    # A single entry of any name is the report (some reporters name it oddly).
    assert extract_report_xml(zipped(SEED_003, "report")) == SEED_003
    with pytest.raises(ReportError, match="damaged archive"):
        extract_report_xml(zipped(SEED_003)[:-30])
    with pytest.raises(ReportError, match="truncated gzip"):
        extract_report_xml(gzipped(SEED_003)[:-12])
    with pytest.raises(ReportError, match="damaged archive"):
        extract_report_xml(b"\x1f\x8b" + b"garbage" * 10)
    # Several gzip members (RFC 1952 §2.2) are one stream.
    half = len(SEED_003) // 2
    assert extract_report_xml(gzipped(SEED_003[:half]) + gzipped(SEED_003[half:])) == SEED_003
    # An encrypted entry is refused, not guessed at.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("report.xml")
        archive.writestr(info, SEED_003)
    data = bytearray(buffer.getvalue())
    data[6] |= 0x1                     # local header: general purpose flag, bit 0
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1           # central directory: the same flag
    with pytest.raises(ReportError, match="encrypted"):
        extract_report_xml(bytes(data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=3000), st.sampled_from(["application/gzip", "application/zip",
                                                   "application/xml", "text/plain"]))
def test_fuzz_ingest_never_raises(store: DmarcStore, junk: bytes, content_type: str) -> None:
    message = report_message(junk, content_type=content_type, filename="r.xml.gz")
    outcome = ingest_message(message, store)
    assert outcome.status in (IngestStatus.INVALID, IngestStatus.NOT_A_REPORT)
    raw = ingest_message(junk, store)
    assert raw.status in (IngestStatus.INVALID, IngestStatus.NOT_A_REPORT,
                          IngestStatus.STORED, IngestStatus.DUPLICATE)


def test_only_reports_about_our_domains_when_asked(store: DmarcStore) -> None:
    about_them = report_message(zipped(google_report(domain="elsewhere.example")),
                                content_type="application/zip", filename="r.zip")
    outcome = ingest_message(about_them, store, our_domains={"example.org"})
    assert outcome.status == IngestStatus.INVALID
    assert outcome.reason == "a report about elsewhere.example, not one of our domains"
    # Our domain, a subdomain of it, and the organizational domain of one of ours.
    for domain, ours in (("example.org", {"example.org"}),
                         ("shop.example.org", {"example.org"}),
                         ("example.net", {"mail.example.net"})):
        message = report_message(zipped(google_report(domain=domain, report_id=domain)),
                                 content_type="application/zip", filename="r.zip")
        assert ingest_message(message, store, our_domains=ours).status == IngestStatus.STORED
    assert {r.domain for r in store.received_reports(since=0)} == {
        "example.org", "shop.example.org", "example.net"}
