"""Fixtures for the queue tests: a fresh queue per test and message builders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from queue_helpers import CONFIG

from mailkeep.queue.store import QueueStore


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[QueueStore]:
    store = QueueStore(tmp_path / "queue")
    yield store
    store.close()


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("MAILKEEP_CONFIG", str(path))
    return path
