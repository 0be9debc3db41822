"""`mailkeep account add|passwd` store SCRAM verifiers (and, if enabled, the CRAM-MD5
state) with the hash, so that SCRAM works from the first login."""

from __future__ import annotations

import asyncio
import importlib.util
import io
from pathlib import Path

import pytest
import scramp

from mailkeep.auth.cram_md5 import cram_md5_state
from mailkeep.auth.passwd_file import PasswdFile
from mailkeep.auth.passwords import verify_password
from mailkeep.cli import account as account_cmd
from mailkeep.cli import main as cli_main
from mailkeep.config import load_config
from mailkeep.sasl import Authenticator, ClientInfo
from mailkeep.sasl.credentials import scram_verifier
from mailkeep.sasl.throttle import ThrottlePolicy

CONFIG = """\
hostname = "mail.example.com"
data_dir = "data"
{auth}
[domains."example.com"]

[accounts."me@example.com"]
"""


@pytest.fixture(autouse=True)
def _cli(monkeypatch: pytest.MonkeyPatch) -> None:
    available = [m for m in cli_main.COMMAND_MODULES if importlib.util.find_spec(m) is not None]
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", available)
    monkeypatch.setattr(account_cmd, "open_store", lambda config: None)


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str = "") -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(CONFIG.format(auth=auth))
    monkeypatch.setenv("MAILKEEP_CONFIG", str(path))
    return path


def set_password(monkeypatch: pytest.MonkeyPatch, *argv: str, password: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert cli_main.main(["account", *argv, "--password-stdin"]) == 0


def scram_logs_in(config_path: Path, user: str, password: str) -> bool:
    async def exchange() -> bool:
        auth = Authenticator.from_config(load_config(config_path))
        auth.throttle.set_policy(ThrottlePolicy(first_failure_delay=0))  # no real sleeping
        client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        session = auth.start("SCRAM-SHA-256", ClientInfo("imap", "192.0.2.1", False))
        step = await session.step(client.get_client_first().encode())
        client.set_server_first(step.data.decode())
        step = await session.step(client.get_client_final().encode())
        return step.kind == "success"

    return asyncio.run(exchange())


def test_passwd_writes_verifiers_and_keeps_other_fields(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    config_path = write_config(tmp_path, monkeypatch)
    passwd = PasswdFile(load_config(config_path).passwd_file)
    passwd.set("me@example.com", "{PLAIN}old-password", extra="k=v cram-md5=" + "00" * 32)
    set_password(monkeypatch, "passwd", "me@example.com", password="brand-new-password")
    entry = passwd.get("me@example.com")
    assert entry is not None and verify_password(entry.hash, "brand-new-password")
    fields = entry.extra_fields()
    assert fields["k"] == "v"
    assert "cram-md5" not in fields  # CRAM-MD5 is off: the old weak secret is gone
    for mechanism, field in (("SCRAM-SHA-256", "scram-sha-256"), ("SCRAM-SHA-1", "scram-sha-1")):
        assert fields[field].startswith("4096,")
        assert scram_verifier(entry, mechanism) is not None
    assert scram_logs_in(config_path, "me@example.com", "brand-new-password")
    assert not scram_logs_in(config_path, "me@example.com", "old-password")


def test_add_writes_cram_md5_state_only_when_enabled(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    config_path = write_config(tmp_path, monkeypatch,
                               auth="[auth]\ncram_md5 = true\nscram_iterations = 5000\n")
    set_password(monkeypatch, "add", "new@example.com", password="a-new-password")
    entry = PasswdFile(load_config(config_path).passwd_file).get("new@example.com")
    assert entry is not None
    fields = entry.extra_fields()
    assert fields["cram-md5"] == cram_md5_state("a-new-password").hex()
    assert fields["scram-sha-256"].startswith("5000,") and fields["scram-sha-1"].startswith("5000,")
    assert scram_logs_in(config_path, "new@example.com", "a-new-password")
