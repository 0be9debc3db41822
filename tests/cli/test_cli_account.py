"""`mailkeep account ...`, run in-process against a temporary configuration."""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailkeep.auth.passwd_file import PasswdFile
from mailkeep.auth.passwords import verify_password
from mailkeep.cli import account as account_cmd
from mailkeep.cli import main as cli_main
from mailkeep.config import load_config

CONFIG = """\
# my server
hostname = "mail.example.com"
data_dir = "data"

[domains."example.com"]

[accounts."me@example.com"]
name = "Me"   # the first one
quota = "1G"
quota_messages = 100

[aliases]
"abuse@example.com" = "me@example.com"
"""


@dataclass
class FakeUsage:
    bytes: int
    messages: int


class FakeStore:
    """Records what the CLI asks of the store (the real one is tested with the store)."""

    def __init__(self) -> None:
        self.accounts: dict[str, FakeUsage] = {}
        self.closed = 0

    def ensure_account(self, account: str) -> bool:
        created = account not in self.accounts
        self.accounts.setdefault(account, FakeUsage(0, 0))
        return created

    def usage(self, account: str) -> FakeUsage:
        return self.accounts[account]

    def delete_account(self, account: str) -> None:
        del self.accounts[account]

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(autouse=True)
def _available_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    available = [m for m in cli_main.COMMAND_MODULES if importlib.util.find_spec(m) is not None]
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", available)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore()
    monkeypatch.setattr(account_cmd, "open_store", lambda config: fake)
    return fake


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("MAILKEEP_CONFIG", str(path))
    return path


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*argv: str) -> int:
    return cli_main.main(list(argv))


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def passwd_of(config_file: Path) -> PasswdFile:
    return PasswdFile(load_config(config_file).passwd_file)


def test_add_with_password_from_stdin(config_file: Path, store: FakeStore,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]):
    stdin(monkeypatch, "s3cret-passphrase\n")
    assert run("account", "add", "She@Example.com", "--name", "She", "--quota", "2G",
               "--password-stdin") == 0
    assert capsys.readouterr().out == "added account she@example.com\n"
    config = load_config(config_file)
    assert config.accounts["she@example.com"].name == "She"
    assert config.accounts["she@example.com"].quota == 2 * 1024**3
    entry = passwd_of(config_file).get("she@example.com")
    assert entry is not None and entry.hash.startswith("{ARGON2ID}")
    assert verify_password(entry.hash, "s3cret-passphrase")
    assert "she@example.com" in store.accounts and store.closed == 1
    assert "# the first one" in config_file.read_text()


def test_add_asks_twice_at_a_terminal(config_file: Path, store: FakeStore,
                                      monkeypatch: pytest.MonkeyPatch):
    answers = iter(["typed-password", "typed-password"])
    monkeypatch.setattr("sys.stdin", FakeTTY())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert run("account", "add", "she@example.com") == 0
    assert verify_password(passwd_of(config_file).get("she@example.com").hash, "typed-password")


def test_add_with_mismatched_confirmation_changes_nothing(config_file: Path, store: FakeStore,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]):
    answers = iter(["typed-password", "typo-password"])
    monkeypatch.setattr("sys.stdin", FakeTTY())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    before = config_file.read_text()
    assert run("account", "add", "she@example.com") == 1
    assert capsys.readouterr().err == "mailkeep: error: the passwords do not match\n"
    assert config_file.read_text() == before
    assert not store.accounts


def test_add_without_terminal_generates_a_password_shown_once(config_file: Path, store: FakeStore,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]):
    stdin(monkeypatch, "")
    assert run("account", "add", "she@example.com") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "added account she@example.com"
    prefix = "generated password (shown only now): "
    assert lines[1].startswith(prefix)
    password = lines[1][len(prefix):]
    assert len(password) == 20
    assert verify_password(passwd_of(config_file).get("she@example.com").hash, password)


@pytest.mark.parametrize("argv", [["--password", "hunter2hunter2"], ["--password=hunter2hunter2"],
                                  ["--pass", "hunter2hunter2"], ["hunter2hunter2"]])
def test_password_is_never_accepted_from_argv(config_file: Path, store: FakeStore, argv: list[str],
                                              capsys: pytest.CaptureFixture[str]):
    before = config_file.read_text()
    with pytest.raises(SystemExit) as info:
        run("account", "add", "she@example.com", *argv)
    assert info.value.code == 2
    assert config_file.read_text() == before
    assert not (config_file.parent / "data" / "passwd").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("\n", "the password is empty"),
    ("short\n", "the password is shorter than 8 characters"),
    ("x" * 5000 + "\n", "the password is longer than 4096 bytes"),
    ("with\tcontrol-char\n", "the password contains control characters"),
])
def test_bad_passwords_from_stdin(config_file: Path, store: FakeStore, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], text: str, message: str):
    stdin(monkeypatch, text)
    assert run("account", "add", "she@example.com", "--password-stdin") == 1
    assert capsys.readouterr().err == f"mailkeep: error: {message}\n"
    assert "she@example.com" not in load_config(config_file).accounts


def test_add_errors(config_file: Path, store: FakeStore, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]):
    stdin(monkeypatch, "")
    assert run("account", "add", "ME@example.com") == 1
    assert capsys.readouterr().err == "mailkeep: error: me@example.com is already an account\n"
    assert run("account", "add", "x@example.org") == 1
    assert "example.org is not a domain of this server; add it first" in capsys.readouterr().err
    assert run("account", "add", "abuse@example.com") == 1
    assert "already an alias" in capsys.readouterr().err
    assert run("account", "add", "not-an-address") == 1
    assert "is not an address" in capsys.readouterr().err
    assert run("account", "add", "x@example.com", "--quota", "lots") == 1
    assert "--quota: 'lots' is not a size" in capsys.readouterr().err


def test_relay_only_account_gets_no_mailbox(config_file: Path, store: FakeStore,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]):
    stdin(monkeypatch, "relay-password\n")
    assert run("account", "add", "relay1@example.com", "--relay-only", "--password-stdin") == 0
    assert capsys.readouterr().out == "added account relay1@example.com (relay-only: no mailbox)\n"
    assert load_config(config_file).accounts["relay1@example.com"].relay_only
    assert "relay1@example.com" not in store.accounts
    assert passwd_of(config_file).get("relay1@example.com") is not None


def test_list(config_file: Path, store: FakeStore, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]):
    stdin(monkeypatch, "")
    run("account", "add", "she@example.com")
    run("account", "add", "relay@example.com", "--relay-only")
    passwd_of(config_file).set("me@example.com", "{PLAIN}oldpassword")
    store.accounts["me@example.com"] = FakeUsage(300 * 1024 * 1024, 42)
    capsys.readouterr()
    assert run("account", "list") == 0
    rows = [line.split("  ") for line in capsys.readouterr().out.splitlines()]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert rows == [
        ["ADDRESS", "NAME", "USAGE", "MESSAGES", "RELAY-ONLY", "PASSWORD"],
        ["me@example.com", "Me", "300.0M / 1.0G", "42 / 100", "no", "PLAIN (weak)"],
        ["she@example.com", "-", "0B / unlimited", "0", "no", "ARGON2ID"],
        ["relay@example.com", "-", "-", "-", "yes", "ARGON2ID"],
    ]


def test_remove_keeps_mail_unless_purge(config_file: Path, store: FakeStore,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]):
    stdin(monkeypatch, "")
    run("account", "add", "she@example.com")
    run("alias", "add", "team@example.com", "me@example.com", "she@example.com")
    capsys.readouterr()
    assert run("account", "remove", "she@example.com") == 0
    out = capsys.readouterr().out
    assert "removed 1 target(s) from alias team@example.com" in out
    assert "its mail is kept" in out
    assert "she@example.com" in store.accounts
    assert passwd_of(config_file).get("she@example.com") is None
    assert load_config(config_file).aliases["team@example.com"] == ("me@example.com",)
    # Purging later deletes the leftover mail of the removed account.
    assert run("account", "remove", "she@example.com", "--purge") == 0
    assert "deleted all mail of she@example.com" in capsys.readouterr().out
    assert "she@example.com" not in store.accounts


def test_remove_unknown_account(config_file: Path, store: FakeStore,
                                capsys: pytest.CaptureFixture[str]):
    assert run("account", "remove", "ghost@example.com") == 1
    assert capsys.readouterr().err == "mailkeep: error: ghost@example.com is not an account\n"


def test_passwd(config_file: Path, store: FakeStore, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]):
    passwd_of(config_file).set("me@example.com", "{PLAIN}old-password", extra="k=v")
    stdin(monkeypatch, "brand-new-password\r\n")
    assert run("account", "passwd", "Me@Example.com", "--password-stdin") == 0
    assert capsys.readouterr().out == "password of me@example.com changed\n"
    entry = passwd_of(config_file).get("me@example.com")
    assert verify_password(entry.hash, "brand-new-password") and entry.extra_fields()["k"] == "v"
    assert "scram-sha-256" in entry.extra_fields()
    stdin(monkeypatch, "")
    assert run("account", "passwd", "me@example.com") == 1
    assert "use --password-stdin" in capsys.readouterr().err
    assert run("account", "passwd", "ghost@example.com", "--password-stdin") == 1
    assert capsys.readouterr().err == "mailkeep: error: ghost@example.com is not an account\n"


SEED_USERS = """\
# seed 000: vumap output (uid == gid: relay-only)
rolf@example.com:{CRAM-MD5}cf8527ae5867fc08068952261363c49f0bcc0d1d5f166bbd20d3783b3e97f828:10001:10000:
relay1@example.com:{SHA512-CRYPT}$6$saltsalt$.HRIoz9yMrdUtaVQWf3xmz/babGB/GbtgX6L4r1zXGYabecV/EDkCtHbbC3peQCDTOpL24/Gj3qakxOGWVQFU0:10000:10000:
# seed 004
user@example.net:{BLF-CRYPT}$2a$08$6U9XVhAdBjylRGg96P9i.esHQYhrGHHv.OpCpqqAPYtAYFOePAe9O::::::userdb_quota_rule=*:storage=1G
me@example.com:{PLAIN}would-replace-nothing::::::
broken@example.com:{NTLM}0cb6948805f797bf2a82807973b89537::::::
"""


def test_import_passwd_dry_run_changes_nothing(config_file: Path, store: FakeStore, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]):
    users = tmp_path / "users"
    users.write_text(SEED_USERS)
    before = config_file.read_text()
    assert run("account", "import-passwd", str(users), "--dry-run", "--domain-create") == 1
    out = capsys.readouterr().out
    assert "would add account relay1@example.com (relay-only)" in out
    assert "would add domain example.net" in out
    assert config_file.read_text() == before
    assert not (config_file.parent / "data" / "passwd").exists()


def test_import_passwd(config_file: Path, store: FakeStore, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]):
    users = tmp_path / "users"
    users.write_text(SEED_USERS)
    passwd_of(config_file).set("me@example.com", "{PLAIN}existing-password")
    assert run("account", "import-passwd", str(users)) == 1  # some entries need attention
    captured = capsys.readouterr()
    assert ("error: " + f"{users}: user@example.net: skipped: example.net is not a domain of this "
            "server (use --domain-create)") in captured.err
    assert f"{users}: broken@example.com: password not imported: unknown password scheme {{NTLM}}" in captured.err
    assert f"{users}: rolf@example.com: weak password scheme {{CRAM-MD5}}" in captured.out
    assert f"{users}: me@example.com: already an account with a password; left unchanged" in captured.out
    config = load_config(config_file)
    assert set(config.accounts) == {"me@example.com", "rolf@example.com", "relay1@example.com",
                                    "broken@example.com"}
    assert config.accounts["relay1@example.com"].relay_only
    assert not config.accounts["rolf@example.com"].relay_only
    passwd = passwd_of(config_file)
    # Hashes are stored as they are and verify with their own scheme.
    assert verify_password(passwd.get("rolf@example.com").hash, "rolfheinrich")
    assert verify_password(passwd.get("relay1@example.com").hash, "relaypass")
    assert passwd.get("me@example.com").hash == "{PLAIN}existing-password"
    assert passwd.get("broken@example.com") is None
    assert set(store.accounts) == {"rolf@example.com", "broken@example.com"}
    assert "# my server" in config_file.read_text()


def test_import_passwd_domain_create(config_file: Path, store: FakeStore, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]):
    users = tmp_path / "users"
    users.write_text(SEED_USERS.replace("broken@example.com:{NTLM}0cb6948805f797bf2a82807973b89537::::::\n", ""))
    assert run("account", "import-passwd", str(users), "--domain-create") == 0
    out = capsys.readouterr().out
    assert "extra fields ignored: userdb_quota_rule=*:storage=1G" in out
    config = load_config(config_file)
    assert "example.net" in config.domains
    assert verify_password(passwd_of(config_file).get("user@example.net").hash, "insecure")


def test_account_help_has_examples(capsys: pytest.CaptureFixture[str]):
    for sub in ("add", "list", "remove", "passwd", "import-passwd"):
        with pytest.raises(SystemExit):
            run("account", sub, "--help")
        out = capsys.readouterr().out
        assert "Example" in out and "mailkeep account" in out


def _real_store_available() -> bool:
    try:
        from mailkeep.store import open_store  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _real_store_available(), reason="mailkeep.store.open_store not available yet")
def test_with_the_real_store(config_file: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]):
    stdin(monkeypatch, "")
    assert run("account", "add", "she@example.com", "--quota", "2G") == 0
    capsys.readouterr()
    assert run("account", "list") == 0
    out = capsys.readouterr().out
    assert any(line.startswith("she@example.com") and "0B / 2.0G" in line for line in out.splitlines())
    assert run("account", "remove", "she@example.com", "--purge") == 0
    assert "deleted all mail of she@example.com" in capsys.readouterr().out
