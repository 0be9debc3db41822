"""`mailkeep config check`, `mailkeep domain ...` and `mailkeep alias ...`, run in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mailkeep.cli import main as cli_main
from mailkeep.config import load_config

CONFIG = """\
# hand-written, keep my comments
hostname = "mail.example.com"
data_dir = "data"

[domains."example.com"]  # main
catch_all = "me@example.com"

[accounts."me@example.com"]
name = "Me"

[accounts."she@example.com"]

[aliases]
"abuse@example.com" = "me@example.com"  # RFC 2142
"""


@pytest.fixture(autouse=True)
def _available_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # Command modules of features still being written are skipped, so that these tests
    # exercise exactly the commands that exist.
    available = [m for m in cli_main.COMMAND_MODULES if importlib.util.find_spec(m) is not None]
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", available)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("MAILKEEP_CONFIG", str(path))
    return path


def run(*argv: str) -> int:
    return cli_main.main(list(argv))


# -- config check --------------------------------------------------------------------------

def test_config_check_ok(config_file: Path, capsys: pytest.CaptureFixture[str]):
    assert run("config", "check") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"OK: {config_file} (1 domain(s), 2 account(s), 1 alias(es))"
    assert "data_dir" in out  # warning: the data directory does not exist yet


def test_config_check_reports_every_error(config_file: Path, capsys: pytest.CaptureFixture[str]):
    config_file.write_text(CONFIG.replace('catch_all = "me@example.com"', 'catch_all = "me@exmaple.com"')
                           + "[smtp]\nmax_recipient = 5\n")
    assert run("config", "check", "--config", str(config_file)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {config_file}: smtp.max_recipient: unknown key; did you mean 'max_recipients'?",
        f"error: {config_file}: domains.\"example.com\".catch_all: 'me@exmaple.com' is not an "
        "account or alias of this server (allowed: an address in accounts or aliases)",
    ]


def test_config_check_reads_the_passwd_file(config_file: Path, capsys: pytest.CaptureFixture[str]):
    data = config_file.parent / "data"
    data.mkdir()
    (data / "passwd").write_text("me@example.com:{PLAIN}secret::::::\n"
                                 "she@example.com:{NTLM}abc::::::\n"
                                 "ghost@example.com:{PLAIN}x::::::\n")
    assert run("config", "check") == 1
    captured = capsys.readouterr()
    assert f"error: {data / 'passwd'}: she@example.com: unknown password scheme {{NTLM}}" in captured.err
    assert "me@example.com: the password is stored with the weak scheme {PLAIN}" in captured.out
    assert "ghost@example.com: has a password but no account" in captured.out


def test_help_has_examples(capsys: pytest.CaptureFixture[str]):
    for argv in (["config", "check"], ["domain", "add"], ["domain", "remove"], ["alias", "add"],
                 ["alias", "list"], ["alias", "remove"], ["domain"], ["alias"]):
        with pytest.raises(SystemExit) as info:
            run(*argv, "--help")
        assert info.value.code == 0
        assert "Example" in capsys.readouterr().out


# -- domain ---------------------------------------------------------------------------------

def test_domain_add_list_remove(config_file: Path, capsys: pytest.CaptureFixture[str]):
    assert run("domain", "add", "Bücher.Example") == 0
    assert capsys.readouterr().out.startswith("added domain bücher.example\n")
    assert "# hand-written, keep my comments" in config_file.read_text()
    assert "# RFC 2142" in config_file.read_text()
    assert run("domain", "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["DOMAIN", "ACCOUNTS", "ALIASES", "CATCH-ALL", "OPTIONS"]
    assert out[1].split() == ["example.com", "2", "1", "me@example.com", "subaddress=+"]
    assert out[2].split()[:4] == ["bücher.example", "(xn--bcher-kva.example)", "0", "0"]
    assert run("domain", "remove", "xn--bcher-kva.example") == 0
    assert "xn--bcher-kva.example" not in load_config(config_file).domains


def test_domain_add_twice_fails(config_file: Path, capsys: pytest.CaptureFixture[str]):
    assert run("domain", "add", "EXAMPLE.COM") == 1
    assert capsys.readouterr().err == "mailkeep: error: example.com is already a domain of this server\n"


def test_domain_remove_in_use_is_refused_unless_forced(config_file: Path,
                                                       capsys: pytest.CaptureFixture[str]):
    before = config_file.read_text()
    assert run("domain", "remove", "example.com") == 1
    assert "still has 2 account(s) and 1 alias(es)" in capsys.readouterr().err
    assert config_file.read_text() == before
    data = config_file.parent / "data"
    data.mkdir()
    (data / "passwd").write_text("me@example.com:{PLAIN}x::::::\nother@example.org:{PLAIN}y::::::\n")
    assert run("domain", "remove", "example.com", "--force") == 0
    out = capsys.readouterr().out
    assert "removed 2 account(s): me@example.com, she@example.com (their mail is kept)" in out
    config = load_config(config_file)
    assert not config.domains and not config.accounts and not config.aliases
    # The removed accounts can no longer log in.
    assert (data / "passwd").read_text() == "other@example.org:{PLAIN}y::::::\n"


def test_domain_with_invalid_name(config_file: Path, capsys: pytest.CaptureFixture[str]):
    assert run("domain", "add", "bad_domain.example") == 1
    assert "is not a valid domain name" in capsys.readouterr().err


# -- alias ----------------------------------------------------------------------------------

def test_alias_add_list_remove(config_file: Path, capsys: pytest.CaptureFixture[str]):
    assert run("alias", "add", "Info@example.com", "me@example.com", "she@example.com") == 0
    assert capsys.readouterr().out == "info@example.com -> me@example.com, she@example.com\n"
    assert run("alias", "add", "info@example.com", "friend@elsewhere.example") == 0
    capsys.readouterr()
    assert run("alias", "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert "abuse@example.com -> me@example.com" in out
    assert ("info@example.com -> me@example.com, she@example.com, friend@elsewhere.example  "
            "(forwarding outside this server is not enabled yet)") in out
    assert run("alias", "remove", "info@example.com", "friend@elsewhere.example") == 0
    assert capsys.readouterr().out == "info@example.com -> me@example.com, she@example.com\n"
    assert run("alias", "remove", "info@example.com") == 0
    assert capsys.readouterr().out == "removed alias info@example.com\n"
    assert "# RFC 2142" in config_file.read_text()


def test_alias_to_nonexistent_local_address_is_refused(config_file: Path,
                                                        capsys: pytest.CaptureFixture[str]):
    before = config_file.read_bytes()
    assert run("alias", "add", "sales@example.com", "typo@example.com") == 1
    err = capsys.readouterr().err
    assert "the change was refused" in err
    assert "'typo@example.com' is not an account or alias of this server" in err
    assert config_file.read_bytes() == before


def test_alias_loop_is_refused(config_file: Path, capsys: pytest.CaptureFixture[str]):
    assert run("alias", "add", "a@example.com", "me@example.com") == 0
    assert run("alias", "add", "b@example.com", "a@example.com") == 0
    assert run("alias", "add", "a@example.com", "b@example.com") == 1
    assert "aliases form a loop" in capsys.readouterr().err


def test_alias_cannot_shadow_an_account(config_file: Path, capsys: pytest.CaptureFixture[str]):
    assert run("alias", "add", "me@example.com", "she@example.com") == 1
    assert capsys.readouterr().err == "mailkeep: error: me@example.com is already an account\n"
