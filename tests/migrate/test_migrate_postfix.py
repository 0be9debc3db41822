"""Reading Postfix's configuration: main.cf syntax and $name expansion (checked against the
real postconf(1)), master.cf, lookup tables and aliases(5)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tests.migrate.conftest import SEEDS

from mailkeep.migrate.postfix import (
    PostfixConfig,
    UnreadableTable,
    parse_aliases,
    parse_main_cf,
    parse_master_cf,
    read_table,
    split_list,
)
from mailkeep.migrate.sources import MigrateError, SourceTree

POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"


def config_from(tmp_path: Path, main_cf: str, master_cf: str = "") -> PostfixConfig:
    (tmp_path / "main.cf").write_text(main_cf)
    if master_cf:
        (tmp_path / "master.cf").write_text(master_cf)
    return PostfixConfig.load(tmp_path, SourceTree(), fallback_hostname="host.example.org")


def postconf(directory: Path, name: str) -> str:
    """The value the real Postfix gives ``name`` with this main.cf (expanded)."""
    if not Path(POSTCONF).exists():
        pytest.fail("postconf is not installed: install the Debian package postfix "
                    "(make test does)")
    result = subprocess.run([POSTCONF, "-c", str(directory), "-h", "-x", name],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- main.cf syntax ------------------------------------------------------------------------


def test_continuation_lines_comments_and_the_last_setting_wins() -> None:
    settings, warnings = parse_main_cf(
        "# header\n"
        "virtual_alias_maps = hash:/a,\n"
        "# a comment between a line and its continuation\n"
        "\n"
        "    pcre:/b\n"
        "smtpd_banner = $myhostname # not a comment: part of the value\n"
        "relayhost = [old]\n"
        "relayhost = [new]:587\n", "main.cf")
    assert settings["virtual_alias_maps"].value == "hash:/a, pcre:/b"
    assert settings["virtual_alias_maps"].line == 2
    assert settings["smtpd_banner"].value == "$myhostname # not a comment: part of the value"
    assert settings["relayhost"].value == "[new]:587"
    assert warnings == ["main.cf:8: relayhost is set again (line 7); the last setting wins"]


def test_a_line_that_is_not_a_setting_is_refused_with_its_line() -> None:
    with pytest.raises(MigrateError, match=r"main.cf:2: expected 'name = value'"):
        parse_main_cf("myhostname = a.example\nthis is not a setting\n", "main.cf")


def test_expansion_of_references_and_conditionals(tmp_path: Path) -> None:
    config = config_from(tmp_path, (
        "mydomain = example.com\nmyhostname = mail.$mydomain\n"
        "a = ${mydomain}|$(myhostname)|${mydomain?{set $mydomain}}|${unset_name:{fallback}}\n"
        "b = ${unset_name?{never}}x$$y\n"))
    assert config.get("a") == "example.com|mail.example.com|set example.com|fallback"
    assert config.get("b") == "x$y"
    # Postfix's defaults, expanded like any value.
    assert config.get("myorigin") == "mail.example.com"
    assert split_list(config.get("mydestination")) == [
        "mail.example.com", "localhost.example.com", "localhost"]


def test_mydomain_and_myhostname_defaults(tmp_path: Path) -> None:
    config = config_from(tmp_path, "relayhost =\n")
    assert config.get("myhostname") == "host.example.org"
    assert config.get("mydomain") == "example.org"


def test_a_reference_loop_is_an_error(tmp_path: Path) -> None:
    config = config_from(tmp_path, "a = $b\nb = x $a\n")
    with pytest.raises(MigrateError, match="refers to itself"):
        config.get("a")


def test_nesting_is_bounded(tmp_path: Path) -> None:
    config = config_from(tmp_path, "x = 1\ndeep = " + "${x?{" * 500 + "y" + "}}" * 500 + "\n")
    with pytest.raises(MigrateError, match=r"\$deep nests more than 100 levels deep"):
        config.get("deep")


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_expanded_values_match_postconf(name: str) -> None:
    """The seeds' main.cf as the real Postfix reads it: every value the migration maps."""
    seed = SEEDS[name]
    directory = seed.root() / seed.postfix
    ours = PostfixConfig.load(directory, SourceTree(seed.root()),
                              fallback_hostname="unused.example")
    checked = 0
    for parameter in ("myhostname", "mydomain", "myorigin", "mydestination",
                      "virtual_mailbox_domains", "virtual_alias_maps", "virtual_mailbox_maps",
                      "smtpd_sender_login_maps", "smtpd_client_restrictions",
                      "smtpd_helo_restrictions", "smtpd_sender_restrictions",
                      "smtpd_recipient_restrictions", "smtpd_data_restrictions",
                      "header_checks", "relayhost", "smtp_sasl_password_maps",
                      "message_size_limit", "recipient_delimiter", "smtpd_milters",
                      "maximal_queue_lifetime", "smtpd_error_sleep_time", "alias_maps"):
        if parameter == "alias_maps" and not ours.is_set(parameter):
            continue  # Postfix's default also names nis:, which the migration leaves out
        assert split_list(ours.get(parameter)) == split_list(postconf(directory, parameter)), \
            parameter
        checked += 1
    assert checked > 15


# --- master.cf --------------------------------------------------------------------------------


def test_master_cf_services_and_overrides() -> None:
    seed = SEEDS["seed001"]
    text = (seed.root() / seed.postfix / "master.cf").read_text()
    services, warnings = parse_master_cf(text, "master.cf")
    assert warnings == []
    submission = services[1]
    assert (submission.name, submission.type, submission.command) == (
        "submission", "inet", "smtpd")
    assert submission.options["smtpd_recipient_restrictions"] == "$mua_recipient_restrictions"
    assert submission.options["smtpd_helo_restrictions"] == ""
    assert submission.options["cleanup_service_name"] == "submission-header-cleanup"
    cleanup = services[2]
    assert cleanup.command == "cleanup"
    assert cleanup.options == {"header_checks": "regexp:/etc/postfix/submission_header_cleanup"}


def test_master_cf_spawn_arguments_and_short_lines() -> None:
    services, warnings = parse_master_cf(
        "greyfix unix - n n - - spawn\n  user=nobody argv=/usr/local/sbin/greyfix -/ 24\n"
        "broken inet n\n", "master.cf")
    assert services[0].args == ("user=nobody", "argv=/usr/local/sbin/greyfix", "-/", "24")
    assert warnings == ["master.cf:3: a service needs 8 fields (service type private unpriv "
                        "chroot wakeup maxproc command); line ignored"]


def test_service_overrides_are_expanded_with_main_cf(tmp_path: Path) -> None:
    config = config_from(tmp_path, "mua = permit_sasl_authenticated, reject\n",
                         "submission inet n - n - - smtpd\n  -o smtpd_client_restrictions=$mua\n")
    service = config.service("submission")
    assert service is not None
    assert config.service_option(service, "smtpd_client_restrictions") == \
        "permit_sasl_authenticated, reject"
    assert config.service_option(service, "relayhost") == ""


# --- tables -------------------------------------------------------------------------------------


def test_literal_tables_read_the_postmap_source(tmp_path: Path) -> None:
    (tmp_path / "virtual").write_text("# comment\nInfo@Example.NET  a@example.net,\n"
                                      "   b@example.net\n@example.net c@example.net\n")
    config = config_from(tmp_path, "")
    table = read_table(f"hash:{tmp_path}/virtual", config)
    assert [(e.line, e.key, split_list(e.value)) for e in table.entries] == [
        (2, "Info@Example.NET", ["a@example.net", "b@example.net"]),
        (4, "@example.net", ["c@example.net"])]
    assert split_list(table.lookup("info@example.net") or "") == ["a@example.net",
                                                                  "b@example.net"]
    assert read_table(f"proxy:texthash:{tmp_path}/virtual", config).entries == table.entries


def test_regex_tables_compile_each_rule(tmp_path: Path) -> None:
    (tmp_path / "catchall.pcre").write_text(
        "/^.*me@example\\.com$/ me@example.com\n/^(a|b/ broken\n/^.+@example\\.com$/ x@y\n")
    table = read_table(f"pcre:{tmp_path}/catchall.pcre", config_from(tmp_path, ""))
    assert [rule.pattern for rule in table.rules] == ["^.*me@example\\.com$",
                                                      "^.+@example\\.com$"]
    assert table.rules[0].matches("shopme@example.com")
    assert not table.rules[0].matches("me@example.org")
    assert [line for line, _ in table.problems] == [2]


def test_inline_tables(tmp_path: Path) -> None:
    table = read_table("inline:{ a@x.test=b@x.test, { c@x.test = d@x.test } }",
                       config_from(tmp_path, ""))
    assert [(e.key, e.value) for e in table.entries] == [("a@x.test", "b@x.test"),
                                                         ("c@x.test", "d@x.test")]


def test_unreadable_tables_say_what_to_do(tmp_path: Path) -> None:
    config = config_from(tmp_path, "")
    with pytest.raises(UnreadableTable, match="mysql: tables are not read"):
        read_table("mysql:/etc/postfix/mysql-virtual.cf", config)
    (tmp_path / "virtual.db").write_bytes(b"\0compiled")
    with pytest.raises(UnreadableTable, match=r"only the compiled .*postmap -s hash:"):
        read_table(f"hash:{tmp_path}/virtual", config)
    with pytest.raises(UnreadableTable, match="does not exist"):
        read_table(f"texthash:{tmp_path}/missing", config)


# --- aliases(5) ------------------------------------------------------------------------------


def test_aliases_file() -> None:
    entries, problems = parse_aliases(
        '# comment\nroot: rolf\npostmaster:root\nteam: a@x.test,\n  "b c"@x.test, |/usr/bin/cmd\n'
        '"quoted name": x@x.test\nno colon here\n', "aliases")
    assert [(e.line, e.name, e.targets) for e in entries] == [
        (2, "root", ("rolf",)), (3, "postmaster", ("root",)),
        (4, "team", ("a@x.test", '"b c"@x.test', "|/usr/bin/cmd")),
        (6, "quoted name", ("x@x.test",))]
    assert problems == [(7, "expected 'name: value, ...'")]


def test_split_list_keeps_groups() -> None:
    assert split_list("a, b\tc,,d {x, y} inline:{ k=v, l=w }") == [
        "a", "b", "c", "d", "{x, y}", "inline:{ k=v, l=w }"]
