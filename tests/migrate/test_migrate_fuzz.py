"""The migration's parsers on arbitrary input: they either parse or refuse with
MigrateError (a message for the administrator), never crash or hang."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.migrate.dovecot import (
    UnusableMailLocation,
    expand_mail_path,
    parse_dovecot_conf,
    parse_mail_location,
)
from mailkeep.migrate.postfix import (
    PostfixConfig,
    parse_aliases,
    parse_main_cf,
    parse_master_cf,
    split_list,
)
from mailkeep.migrate.sources import MigrateError, SourceTree

# Text built from the characters these formats give meaning to, plus some noise.
SYNTAX = st.text(alphabet=st.sampled_from([*"ab =$${}():,#\"'\\\t\n!%~@/.-_<", "é"]),
                 max_size=300)
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(SYNTAX)
def test_main_cf_and_expansion(text: str) -> None:
    try:
        settings_, _warnings = parse_main_cf(text, "main.cf")
    except MigrateError:
        return
    config = PostfixConfig(Path("/nonexistent"), SourceTree(), settings_, [], [],
                           fallback_hostname="host.example")
    for name in settings_:
        try:
            value = config.get(name)
        except MigrateError:
            continue
        assert isinstance(split_list(value), list)


@FUZZ
@given(SYNTAX)
def test_master_cf_and_aliases(text: str) -> None:
    services, _ = parse_master_cf(text, "master.cf")
    assert all(service.name and service.command for service in services)
    entries, _problems = parse_aliases(text, "aliases")
    assert all(entry.name and entry.targets for entry in entries)


@FUZZ
@given(SYNTAX)
def test_dovecot_conf(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("conf") / "dovecot.conf"
    path.write_text(text, encoding="utf-8")
    try:
        parse_dovecot_conf(path, SourceTree())
    except MigrateError:
        pass


@FUZZ
@given(SYNTAX, st.sampled_from(["me@x.test", "me", "a@b@c.test"]))
def test_mail_location(text: str, user: str) -> None:
    try:
        location = parse_mail_location(text)
        expand_mail_path(location.path, user, "/home/me")
    except UnusableMailLocation:
        pass
