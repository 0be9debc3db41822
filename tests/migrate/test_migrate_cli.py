"""`mailkeep migrate` as an administrator runs it: the report, --dry-run, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.migrate.conftest import SEEDS, Seed

from mailkeep.cli import main as cli_main
from mailkeep.config import load_config


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_dry_run_prints_the_plan_and_writes_nothing(
        seed: Seed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "new"
    target.mkdir()
    fixture_files = tree(seed.root())
    code, out, err = run([*seed.argv(target / "mailkeep.toml", target / "data"), "--dry-run"],
                         capsys)
    assert code == 0, err
    assert out.startswith("Migration plan\n")
    assert "Dry run: nothing was written." in out
    assert tree(target) == []
    assert tree(seed.root()) == fixture_files


def test_seed004_report_names_what_is_not_migrated_and_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = SEEDS["seed004"]
    code, out, _ = run(seed.argv(tmp_path / "mailkeep.toml", tmp_path / "data"), capsys)
    assert code == 0
    lines = out.splitlines()
    start = lines.index("Not migrated (9):")
    report = "\n".join(lines[start:])
    assert ("  - main.cf:46: smtpd_milters = unix:/var/db/opendkim/opendkim.sock\n"
            "      OpenDKIM milter: Mailkeep signs (and verifies) DKIM itself; run 'mailkeep "
            "dkim keygen another-example.com example.net'") in report
    assert "*@example.net\n      Postfix reads '*@example.net' as a literal address" in report
    assert "brian@example.net: 5 message(s) imported into 3 mailbox(es)" in out
    assert "Migration complete." in out
    assert load_config(tmp_path / "mailkeep.toml").accounts["brian@example.net"].send == "hold"


def test_verbose_lists_what_is_built_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = SEEDS["seed000"]
    code, out, _ = run([*seed.argv(tmp_path / "m.toml", tmp_path / "d"), "--dry-run", "-v"],
                       capsys)
    assert code == 0
    assert "Built in, nothing to configure (" in out
    assert "greyfix" in out and "greylist" in out


def test_rerun_reports_what_was_already_there(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = SEEDS["seed001"]
    argv = seed.argv(tmp_path / "mailkeep.toml", tmp_path / "data")
    assert run(argv, capsys)[0] == 0
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "already holds everything; unchanged" in out
    assert "example@domain.tld: 0 message(s) imported into 0 mailbox(es), 4 already there" in out


def test_malformed_existing_config_gives_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "mailkeep.toml"
    config.write_text('hostname = "mail.example.com"\n[domains."example.com"\ncatch_all = 1\n')
    seed = SEEDS["seed000"]
    code, _, err = run(seed.argv(config, tmp_path / "data"), capsys)
    assert code == 1
    assert err.startswith(f"mailkeep: error: the existing configuration {config} is not valid; "
                          "fix it first (nothing was written):\n")
    assert "not valid TOML" in err
    assert tree(tmp_path) == ["mailkeep.toml"]


def test_missing_postfix_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["migrate", "--postfix", str(tmp_path / "nope"), "--config",
                        str(tmp_path / "m.toml"), "--dry-run"], capsys)
    assert code == 1
    assert "the Postfix configuration directory" in err and "holding main.cf" in err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["migrate", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--dry-run" in out and "examples:" in out and "docs/migration.md" in out
