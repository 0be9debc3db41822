"""Shared set-up of the interoperability tests (real third-party programs as peers)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Registered here rather than in pyproject.toml: the marker belongs to these tests only,
    # and --strict-markers makes an unregistered marker an error.
    config.addinivalue_line(
        "markers",
        "dovecot: runs against a throwaway Dovecot (tests/support/dovecot.py); select with "
        "-m dovecot, skip with -m 'not dovecot'",
    )


#: How much of a server's log a failed client test shows (characters, the end of it).
SERVER_LOG_EXCERPT = 4000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Show the end of the server's log under a failed test that used a ``server`` fixture.

    A real client failing says what it saw; the server's side (the auth outcome, a
    session ended early) is in its log, which is gone once the temporary directory is.
    """
    report = yield
    server = getattr(item, "funcargs", {}).get("server")
    if report.failed and callable(getattr(server, "log_text", None)):
        text = server.log_text()
        if len(text) > SERVER_LOG_EXCERPT:
            text = "...\n" + text[-SERVER_LOG_EXCERPT:]
        report.sections.append((f"{getattr(server, 'name', 'server')} log", text))
    return report
