"""Fixtures for the store tests: a fresh store per test with a trivial indexer (the real
one, mailkeep.mime, is tested in its own package)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailkeep.store import SQLiteStore, open_store

ACCOUNT = "me@example.com"


def tiny_indexer(data: bytes) -> bytes:
    """A stand-in structure blob: enough to see that it was computed from the bytes."""
    return b"size=%d" % len(data)


def message(subject: str = "hello", body: str = "body text") -> bytes:
    return (f"From: a@example.org\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\n\r\n"
            f"{body}\r\n").encode()


def message_files(account_dir: Path) -> list[Path]:
    """The files in an account directory that hold data: while a store is open, the
    directory also holds a few empty spare files (the pool, see docs/store.md)."""
    return [p for p in account_dir.iterdir() if p.stat().st_size]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[SQLiteStore]:
    s = open_store(data_dir, indexer=tiny_indexer)
    s.ensure_account(ACCOUNT)
    try:
        yield s
    finally:
        s.close()
