"""`mailkeep quickstart`: a complete setup in one command, safe to repeat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dns.zone
import pytest

from mailkeep.auth.passwd_file import PasswdFile
from mailkeep.auth.passwords import verify_password
from mailkeep.config import load_config
from mailkeep.dkim.keys import DkimKeys
from mailkeep.quickstart import Options, QuickstartError, quickstart
from mailkeep.systemd import unit_text

REPO = Path(__file__).resolve().parents[1]
MAILKEEP = str(Path(sys.executable).with_name("mailkeep"))


def _options(tmp_path: Path, **overrides) -> Options:
    values = dict(address="Me@Example.COM", config_path=tmp_path / "etc" / "mailkeep.toml",
                  data_dir=tmp_path / "data", run_as=None, acme=False,
                  unit_path=tmp_path / "systemd" / "mailkeep.service")
    values.update(overrides)
    return Options(**values)


def test_fresh_setup_writes_everything(tmp_path: Path) -> None:
    outcome = quickstart(_options(tmp_path, ipv4=("203.0.113.5",)))
    config = load_config(tmp_path / "etc" / "mailkeep.toml")
    assert outcome.created_config and outcome.account == "me@example.com"
    assert config.hostname == "mail.example.com"
    assert "example.com" in config.domains and "me@example.com" in config.accounts
    assert config.dns.ipv4 == ("203.0.113.5",)
    assert config.dmarc.report_address == "dmarc-reports@example.com"
    ports = {(lst.protocol, lst.port) for lst in config.listeners if lst.port}
    for wanted in [("smtp", 25), ("submission", 587), ("submissions", 465), ("imaps", 993),
                   ("pop3s", 995), ("http", 80), ("https", 443)]:
        assert wanted in ports
    # Plaintext IMAP and POP3 are not offered (RFC 8314).
    assert not {p for p, _ in ports} & {"imap", "pop3"}
    # The password works and is strong; it is shown once.
    entry = PasswdFile(config.passwd_file).get("me@example.com")
    assert entry is not None and outcome.password and len(outcome.password) >= 20
    assert verify_password(entry.hash, outcome.password)
    # Two DKIM keys: RSA 2048 and Ed25519 (RFC 8463).
    algorithms = sorted(s.algorithm for s in DkimKeys.for_data_dir(config.data_dir)
                        .active("example.com"))
    assert len(algorithms) == 2 and any("ed25519" in a for a in algorithms)
    assert outcome.certificate == "self-signed"
    assert (config.tls_dir / "selfsigned-ecdsa.pem").exists()
    assert any("self-signed" in w for w in outcome.warnings)
    unit = (tmp_path / "systemd" / "mailkeep.service").read_text()
    assert f"--config {tmp_path / 'etc' / 'mailkeep.toml'}" in unit
    assert f"ReadWritePaths={tmp_path / 'data'} " in unit
    # The zone is valid zone-file syntax with the essential records.
    zone = dns.zone.from_text(outcome.zone, origin="example.com.", relativize=False,
                              check_origin=False)
    types = {(str(name), rdataset.rdtype.name) for name, node in zone.nodes.items()
             for rdataset in node.rdatasets}
    assert ("example.com.", "MX") in types
    assert ("_dmarc.example.com.", "TXT") in types
    assert ("mail.example.com.", "A") in types


def test_rerun_converges_and_keeps_the_password(tmp_path: Path) -> None:
    first = quickstart(_options(tmp_path))
    before = (tmp_path / "etc" / "mailkeep.toml").read_bytes()
    second = quickstart(_options(tmp_path))
    assert second.password is None and not second.created_config
    assert second.dkim_created == []
    assert (tmp_path / "etc" / "mailkeep.toml").read_bytes() == before
    assert second.zone == first.zone
    entry = PasswdFile(second.config.passwd_file).get("me@example.com")
    assert entry is not None and verify_password(entry.hash, first.password)


def test_malformed_existing_config_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "mailkeep.toml"
    path.parent.mkdir(parents=True)
    path.write_text('hostname = "mail.example.com"\n[smtp\n')
    with pytest.raises(QuickstartError, match="not a valid configuration"):
        quickstart(_options(tmp_path))
    assert path.read_text() == 'hostname = "mail.example.com"\n[smtp\n'
    assert not (tmp_path / "data").exists()


def test_existing_config_for_another_account_is_refused(tmp_path: Path) -> None:
    quickstart(_options(tmp_path))
    with pytest.raises(QuickstartError, match=r"mailkeep account add other@example\.org"):
        quickstart(_options(tmp_path, address="other@example.org"))


def test_acme_failure_falls_back_to_self_signed(tmp_path: Path) -> None:
    calls = []

    def unreachable(config, http_address):
        calls.append((config.acme.enabled, http_address))
        return False, "cannot reach https://acme.invalid/directory (connection refused)"

    outcome = quickstart(_options(tmp_path, acme=True), obtain=unreachable)
    assert calls == [(True, None)]
    assert outcome.certificate == "self-signed"
    assert "connection refused" in outcome.certificate_note
    assert (outcome.config.tls_dir / "selfsigned-rsa.pem").exists()


@pytest.mark.parametrize("address", ["not-an-address", "me@localhost"])
def test_bad_address(tmp_path: Path, address: str) -> None:
    with pytest.raises(QuickstartError):
        quickstart(_options(tmp_path, address=address))
    assert not (tmp_path / "etc").exists()


def test_command_line(tmp_path: Path) -> None:
    args = [MAILKEEP, "quickstart", "me@example.com", "--no-acme", "--run-as", "none",
            "--config", str(tmp_path / "mk.toml"), "--data-dir", str(tmp_path / "data"),
            "--no-systemd", "--listen", "127.0.0.1"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "password (shown only now)" in first.stdout
    assert "IN MX" in first.stdout or " MX " in first.stdout
    assert "self-signed" in first.stderr
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "password (shown only now)" not in again.stdout
    assert "its password is unchanged" in again.stdout
    help_text = subprocess.run([MAILKEEP, "quickstart", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    assert "Examples:" in help_text and "--hostname" in help_text


def test_shipped_unit_is_the_default_unit() -> None:
    assert (REPO / "packaging" / "mailkeep.service").read_text() == unit_text()


def test_unit_refuses_paths_systemd_would_split() -> None:
    with pytest.raises(ValueError):
        unit_text("/usr/bin/mailkeep", "/etc/mail keep/mailkeep.toml", "/var/lib/mailkeep")
