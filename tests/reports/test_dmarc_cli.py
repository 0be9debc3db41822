"""`mailkeep dmarc reports|import|send` against a temporary configuration and data
directory: the summary seed 003's author wished for, imports by hand, reports sent now."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
from dmarc_samples import (
    SEED_003,
    dkim,
    dmarc_result,
    google_report,
    gzipped,
    microsoft_report,
    report_message,
    spf,
    zipped,
)

from mailkeep.cli import main as cli_main
from mailkeep.queue.store import QueueStore
from mailkeep.reports.dmarc_store import DAY, DmarcStore

CONFIG = """\
hostname = "mail.example.com"
data_dir = "data"

[domains."example.org"]

[accounts."me@example.org"]

[dmarc]
send_reports = {send}
org_name = "Example Org Mail"
"""


@pytest.fixture(autouse=True)
def _available_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # Other command modules may be in the making while these tests run.
    available = [m for m in cli_main.COMMAND_MODULES if importlib.util.find_spec(m) is not None]
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", available)


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, send: bool = True) -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(CONFIG.format(send="true" if send else "false"))
    monkeypatch.setenv("MAILKEEP_CONFIG", str(path))
    return tmp_path / "data"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return configure(tmp_path, monkeypatch)


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    status = cli_main.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_import_then_summarize(tmp_path: Path, data_dir: Path,
                               capsys: pytest.CaptureFixture) -> None:
    recent = int(time.time() // DAY - 2) * DAY
    files = {
        "seed.xml": SEED_003,
        "google.zip": zipped(google_report(begin=recent)),
        "outlook.eml": report_message(gzipped(microsoft_report(begin=recent)),
                                      content_type="application/gzip", filename="r.xml.gz"),
        "junk.xml.gz": b"\x1f\x8bnot really gzip",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    status, out, err = run(["dmarc", "import", *(str(tmp_path / n) for n in files)], capsys)
    assert status == 1
    assert out.count(": stored: report ") == 3
    assert "seed.xml: stored: report 121341234 from google.com about moff.tech, 2016-06-25 " \
        "to 2016-06-25, 1 record, 1 message" in out
    assert "seed.xml: warning: record 1: source_ip '64.x.x.x' is not an IP address" in out
    assert "junk.xml.gz: invalid: damaged archive" in err

    status, out, _ = run(["dmarc", "import", str(tmp_path / "google.zip")], capsys)
    assert status == 0 and ": already stored: report 5717107811868587391" in out

    status, out, _ = run(["dmarc", "reports"], capsys)
    assert status == 0
    assert "DMARC aggregate reports received in the last 30 days:" in out
    assert "example.org: 2 reports from 2 organizations" in out
    assert "20 messages, 16 passed DMARC, 4 failed" in out
    assert "moff.tech" not in out   # 2016 is outside the last 30 days
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines()
            if line.startswith("  ") and not line.strip().startswith("SOURCE")}
    # SOURCE IP, REPORTER, then MESSAGES, PASS, FAIL, SPF ALIGNED, DKIM ALIGNED, DISPOSITION.
    assert rows[("192.0.2.25", "google.com")] == ["12", "12", "0", "12", "12", "none", "12"]
    assert rows[("203.0.113.66", "google.com")] == ["3", "0", "3", "0", "0", "quarantine",
                                                    "3"]
    assert rows[("2001:db8:400::1f", "Enterprise")][:6] == ["Outlook", "1", "0", "1", "0", "0"]

    status, out, _ = run(["dmarc", "reports", "--json", "--days", "36500"], capsys)
    data = json.loads(out)
    domains = {d["domain"]: d for d in data["domains"]}
    assert set(domains) == {"example.org", "moff.tech"}
    seed = domains["moff.tech"]
    assert (seed["reports"], seed["messages"], seed["dmarc_pass"], seed["dmarc_fail"]) == (
        1, 1, 1, 0)
    [source] = seed["sources"]
    assert source == {"source_ip": "64.x.x.x", "org_name": "google.com", "reports": 1,
                      "messages": 1, "dmarc_pass": 1, "dmarc_fail": 0, "spf_aligned": 1,
                      "dkim_aligned": 0,
                      "disposition": {"none": 1, "quarantine": 0, "reject": 0},
                      "header_from": ["moff.tech"]}
    assert domains["example.org"]["organizations"] == ["Enterprise Outlook", "google.com"]

    status, out, _ = run(["dmarc", "reports", "--domain", "MOFF.tech", "--days", "36500"],
                         capsys)
    assert status == 0 and "moff.tech: 1 report from 1 organization" in out
    assert "example.org" not in out


def test_reports_edge_cases(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    status, out, _ = run(["dmarc", "reports", "--days", "7"], capsys)
    assert status == 0 and out == "No DMARC aggregate reports received in the last 7 days.\n"
    status, _, err = run(["dmarc", "reports", "--days", "0"], capsys)
    assert status == 1 and "--days must be between" in err
    status, _, err = run(["dmarc", "reports", "--domain", "no such domain"], capsys)
    assert status == 1 and "is not a domain name" in err


def _evaluations(data_dir: Path, day: int) -> None:
    same_org = "v=DMARC1; p=quarantine; rua=mailto:dmarc@sender.test"
    with DmarcStore.for_data_dir(data_dir) as store:
        for n, passing in enumerate((True, True, False)):
            result = "pass" if passing else "fail"
            checked_spf, checked_dkim = spf(result, "sender.test"), [dkim(result, "sender.test")]
            verdict = dmarc_result("sender.test", spf=checked_spf, dkim=checked_dkim,
                                   record=same_org)
            store.record_evaluation(source_ip=f"198.51.100.{n}", envelope_from="sender.test",
                                    envelope_to="me@example.org", spf=checked_spf,
                                    dkim=checked_dkim, dmarc=verdict, when=day + 60 * n)


def test_send_dry_run_then_for_real(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    yesterday = int(time.time() // DAY - 1) * DAY
    _evaluations(data_dir, yesterday)
    day = time.strftime("%Y-%m-%d", time.gmtime(yesterday))

    status, out, _ = run(["dmarc", "send", "--dry-run"], capsys)
    assert status == 0
    assert out.startswith(f"sender.test {day}: dry-run (3 records, 3 messages, ")
    assert "  to dmarc@sender.test" in out
    assert "<org_name>Example Org Mail</org_name>" in out
    assert "<disposition>quarantine</disposition>" in out
    assert not (data_dir / "queue").exists()

    status, out, _ = run(["dmarc", "send"], capsys)
    assert status == 0, out
    assert f"sender.test {day}: queued (3 records, 3 messages, " in out
    with QueueStore.for_data_dir(data_dir) as queue:
        [entry] = queue.list()
        assert entry.sender == "postmaster@mail.example.com"
        assert [r.address for r in entry.recipients] == ["dmarc@sender.test"]
        assert f", queue id {entry.queue_id}" in out
    status, out, _ = run(["dmarc", "send"], capsys)
    assert status == 0 and out == ("No reports to send: no unreported evaluations of a "
                                   "complete day.\n")


def test_send_is_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture) -> None:
    data_dir = configure(tmp_path, monkeypatch, send=False)
    _evaluations(data_dir, int(time.time() // DAY - 1) * DAY)
    status, _, err = run(["dmarc", "send"], capsys)
    assert status == 1 and "send_reports = false" in err
    status, out, _ = run(["dmarc", "send", "--dry-run"], capsys)
    assert status == 0 and "dry-run" in out


def test_help_has_examples(capsys: pytest.CaptureFixture) -> None:
    for argv in (["dmarc"], ["dmarc", "reports"], ["dmarc", "import"], ["dmarc", "send"]):
        with pytest.raises(SystemExit) as info:
            cli_main.main([*argv, "--help"])
        assert info.value.code == 0
        assert "Example" in capsys.readouterr().out
    assert cli_main.main(["dmarc"]) == 2
