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
