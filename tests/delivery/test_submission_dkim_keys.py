"""Submission looks at a domain's DKIM keys again only every DKIM_KEYS_RECHECK_SECONDS
(not at every message, which would cost a system call in the event loop): a key made by
`mailkeep dkim keygen` signs the mail submitted from then on, at most that much later."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import mailkeep.delivery.submission as submission_module
from mailkeep.config import parse_config_text
from mailkeep.delivery.pipeline import AcceptedRecipient, Envelope, Pipeline, SessionInfo
from mailkeep.delivery.submission import DKIM_KEYS_RECHECK_SECONDS, Submission, SubmitRequest
from mailkeep.dkim.keys import DkimKeys
from mailkeep.queue.store import QueueStore
from mailkeep.smtp.address import parse_address

CONFIG = """
hostname = "mail.example.com"

[domains."example.com"]

[accounts."me@example.com"]
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _submit(sub: Submission, msg_id: str) -> int:
    source = (f"From: <me@example.com>\r\nTo: <you@elsewhere.test>\r\nSubject: {msg_id}\r\n"
              f"\r\nhello\r\n").encode()
    envelope = Envelope(sender=parse_address("me@example.com"),
                        recipients=[AcceptedRecipient(parse_address("you@elsewhere.test"), ())])
    reply = asyncio.run(sub.submit(SubmitRequest(
        session=SessionInfo(client_ip="192.0.2.9", tls="TLSv1.3"), account="me@example.com",
        envelope=envelope, source=source, size=len(source), msg_id=msg_id)))
    return reply.code


def test_a_new_key_signs_after_the_recheck_interval(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    # Only the submission module's clock moves (asyncio keeps the real one).
    monkeypatch.setattr(submission_module, "time", SimpleNamespace(monotonic=clock,
                                                                   time=time.time))
    config = parse_config_text(CONFIG, "test.toml")
    keys = DkimKeys(tmp_path / "dkim")
    queue = QueueStore(tmp_path / "queue")
    sub = Submission(config, Pipeline(config, store=None), queue, spool_dir=tmp_path, dkim=keys)
    try:
        assert _submit(sub, "UNSIGNED01") == 250
        keys.keygen("example.com")
        clock.now += DKIM_KEYS_RECHECK_SECONDS / 2
        assert _submit(sub, "UNSIGNED02") == 250   # the answer "no keys" is still fresh
        clock.now += DKIM_KEYS_RECHECK_SECONDS
        assert _submit(sub, "SIGNED0001") == 250
        signatures = {msg_id: queue.message_path(msg_id).read_bytes().count(b"DKIM-Signature:")
                      for msg_id in ("UNSIGNED01", "UNSIGNED02", "SIGNED0001")}
        assert signatures == {"UNSIGNED01": 0, "UNSIGNED02": 0, "SIGNED0001": 2}
        assert queue.get("SIGNED0001").dkim_selectors == tuple(
            f"example.com:{s.name}" for s in keys.active("example.com"))
    finally:
        queue.close()
