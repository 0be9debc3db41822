"""Editing mailkeep.toml: comments survive, invalid edits are refused, servers are told."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tomlkit

from mailkeep.config import ConfigError, load_config
from mailkeep.config.edit import (
    EditError,
    add_account,
    add_alias,
    add_domain,
    edit_config,
    notify_server,
    remove_account,
    remove_alias,
    remove_domain,
)

CONFIG = """\
# Mailkeep for the family.
hostname = "mail.example.com"   # the MX
data_dir = "data"

[domains."example.com"]   # our main domain
catch_all = "me@example.com"

[accounts."me@example.com"]
name = "Me"   # that's me
quota = "2G"

[accounts."she@example.com"]

[aliases]
# who reads info@
"info@example.com" = ["me@example.com", "she@example.com"]
"abuse@example.com" = "me@example.com"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(CONFIG)
    path.chmod(0o640)
    return path


def test_comments_and_layout_survive_edits(config_file: Path):
    edit_config(config_file, lambda doc: add_domain(doc, "example.org"))
    edit_config(config_file, lambda doc: add_account(doc, "New@Example.org", name="New", quota="1G"))
    edit_config(config_file, lambda doc: add_alias(doc, "team@example.org", ["new@example.org"]))
    text = config_file.read_text()
    for comment in ("# Mailkeep for the family.", "# the MX", "# our main domain",
                    "# that's me", "# who reads info@"):
        assert comment in text
    assert text.startswith(CONFIG.split("[accounts")[0].split('[domains."example.com"]')[0])
    config = load_config(config_file)
    assert config.accounts["new@example.org"].name == "New"
    assert config.accounts["new@example.org"].quota == 1024**3
    assert config.aliases["team@example.org"] == ("new@example.org",)
    assert '[accounts."new@example.org"]\nname = "New"\nquota = "1G"\n' in text


def test_invalid_edit_is_refused_and_nothing_is_written(config_file: Path):
    before = config_file.read_bytes()
    with pytest.raises(ConfigError) as info:
        edit_config(config_file, lambda doc: add_alias(doc, "x@example.com", ["typo@example.com"]))
    assert "'typo@example.com' is not an account or alias of this server" in str(info.value)
    assert config_file.read_bytes() == before


def test_edit_keeps_the_file_mode(config_file: Path):
    edit_config(config_file, lambda doc: add_domain(doc, "example.net"))
    assert config_file.stat().st_mode & 0o777 == 0o640


def test_unchanged_document_is_not_rewritten(config_file: Path):
    inode = config_file.stat().st_ino
    result = edit_config(config_file, lambda doc: None)
    assert not result.changed and config_file.stat().st_ino == inode


def test_concurrent_edits_are_serialised(config_file: Path):
    names = [f"d{i}.example" for i in range(8)]
    failures: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            edit_config(config_file, lambda doc: add_domain(doc, name), notify=False)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert set(names) <= set(load_config(config_file).domains)


def test_add_domain_twice_and_idna(config_file: Path):
    result = edit_config(config_file, lambda doc: add_domain(doc, "BÜCHER.example"))
    assert result.value == "xn--bcher-kva.example"
    assert '[domains."bücher.example"]' in config_file.read_text()
    with pytest.raises(EditError, match="already a domain"):
        edit_config(config_file, lambda doc: add_domain(doc, "xn--bcher-kva.example"))


def test_remove_domain_refuses_while_in_use(config_file: Path):
    with pytest.raises(EditError, match=r"still has 2 account\(s\) and 2 alias\(es\)"):
        edit_config(config_file, lambda doc: remove_domain(doc, "example.com"))


def test_remove_domain_force_removes_its_accounts_and_targets(config_file: Path):
    edit_config(config_file, lambda doc: add_domain(doc, "example.org"))
    edit_config(config_file, lambda doc: add_account(doc, "x@example.org"))
    edit_config(config_file, lambda doc: add_alias(doc, "info@example.com", ["x@example.org"]))
    result = edit_config(config_file, lambda doc: remove_domain(doc, "example.org", force=True))
    assert result.value == ["x@example.org"]
    config = result.config
    assert "example.org" not in config.domains
    assert config.aliases["info@example.com"] == ("me@example.com", "she@example.com")


def test_remove_account_updates_aliases(config_file: Path):
    result = edit_config(config_file, lambda doc: remove_account(doc, "SHE@example.com"))
    assert result.value == ["removed 1 target(s) from alias info@example.com"]
    assert "she@example.com" not in result.config.accounts
    assert result.config.aliases["info@example.com"] == ("me@example.com",)


def test_removing_the_catch_all_account_is_refused(config_file: Path):
    with pytest.raises(ConfigError) as info:
        edit_config(config_file, lambda doc: remove_account(doc, "me@example.com"))
    assert ("domains.\"example.com\".catch_all: 'me@example.com' is not an account or alias"
            in str(info.value))


def test_add_account_errors(config_file: Path):
    with pytest.raises(EditError, match="already an account"):
        edit_config(config_file, lambda doc: add_account(doc, "ME@example.com"))
    with pytest.raises(EditError, match="already an alias"):
        edit_config(config_file, lambda doc: add_account(doc, "info@example.com"))
    with pytest.raises(EditError, match="not a domain of this server"):
        edit_config(config_file, lambda doc: add_account(doc, "me@example.org"))
    with pytest.raises(EditError, match="is not a size"):
        edit_config(config_file, lambda doc: add_account(doc, "new@example.com", quota="lots"))


def test_alias_targets_are_added_and_removed(config_file: Path):
    result = edit_config(config_file, lambda doc: add_alias(doc, "abuse@example.com", ["she@example.com"]))
    assert result.config.aliases["abuse@example.com"] == ("me@example.com", "she@example.com")
    with pytest.raises(EditError, match="already points to"):
        edit_config(config_file, lambda doc: add_alias(doc, "abuse@example.com", ["SHE@example.com"]))
    result = edit_config(config_file, lambda doc: remove_alias(doc, "abuse@example.com", "me@example.com"))
    assert result.value is False
    assert result.config.aliases["abuse@example.com"] == ("she@example.com",)
    result = edit_config(config_file, lambda doc: remove_alias(doc, "info@example.com"))
    assert result.value is True and "info@example.com" not in result.config.aliases
    with pytest.raises(EditError, match="is not an alias"):
        edit_config(config_file, lambda doc: remove_alias(doc, "info@example.com"))


def test_out_of_order_tables_and_inline_tables(tmp_path: Path):
    path = tmp_path / "mailkeep.toml"
    path.write_text('hostname = "mx.example.com"\n[accounts."a@a.example"]\n[domains."a.example"]\n'
                    '[accounts."b@a.example"]\n')
    edit_config(path, lambda doc: remove_account(doc, "a@a.example"))
    edit_config(path, lambda doc: add_account(doc, "c@a.example"))
    assert set(load_config(path).accounts) == {"b@a.example", "c@a.example"}
    path.write_text('hostname = "mx.example.com"\ndomains = { "a.example" = {} }\n'
                    'accounts = { "a@a.example" = { name = "A" } }\n')
    edit_config(path, lambda doc: add_account(doc, "b@a.example", name="B"))
    assert load_config(path).accounts["b@a.example"].name == "B"


def test_edit_of_invalid_toml_is_a_config_error(tmp_path: Path):
    path = tmp_path / "mailkeep.toml"
    path.write_text("hostname = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        edit_config(path, lambda doc: add_domain(doc, "example.com"))


def test_documents_can_be_edited_without_a_file():
    doc = tomlkit.parse('hostname = "mx.example.com"\n')
    add_domain(doc, "example.com")
    add_account(doc, "me@example.com", relay_only=True)
    assert tomlkit.dumps(doc).endswith('[accounts."me@example.com"]\nrelay_only = true\n\n')


# -- telling the server ---------------------------------------------------------------------

def _write_pid(config_file: Path, pid: int | str) -> None:
    config = load_config(config_file)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.pidfile.write_text(f"{pid}\n")


def test_notify_without_pidfile(config_file: Path):
    assert notify_server(load_config(config_file)) is False


@pytest.mark.parametrize("content", ["garbage", "0", "1", "-1", ""])
def test_notify_ignores_bad_pidfiles(config_file: Path, content: str):
    _write_pid(config_file, content)
    assert notify_server(load_config(config_file)) is False


def test_notify_sends_sighup_to_a_running_mailkeep(config_file: Path, tmp_path: Path):
    marker = tmp_path / "got-hup"
    script = (
        "import signal, sys, time, pathlib\n"
        f"def hup(*a): pathlib.Path({str(marker)!r}).write_text('hup'); sys.exit(0)\n"
        "signal.signal(signal.SIGHUP, hup)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", script, "mailkeep-serve"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        _write_pid(config_file, child.pid)
        result = edit_config(config_file, lambda doc: add_domain(doc, "example.net"))
        assert result.notified is True
        child.wait(timeout=10)
        assert marker.read_text() == "hup"
    finally:
        child.kill()
        child.wait()


def test_notify_leaves_a_foreign_process_alone(config_file: Path):
    # A stale pid file whose number now belongs to another program must not kill it.
    child = subprocess.Popen(["sleep", "30"])
    try:
        _write_pid(config_file, child.pid)
        assert notify_server(load_config(config_file)) is False
        time.sleep(0.1)
        assert child.poll() is None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_lock_file_is_next_to_the_config(config_file: Path):
    edit_config(config_file, lambda doc: add_domain(doc, "example.net"))
    assert (config_file.parent / "mailkeep.toml.lock").exists()
    assert os.stat(config_file.parent / "mailkeep.toml.lock").st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_edit_keeps_the_owner(config_file: Path):
    os.chown(config_file, 0, 23456)
    edit_config(config_file, lambda doc: add_domain(doc, "example.net"))
    assert (config_file.stat().st_uid, config_file.stat().st_gid) == (0, 23456)
