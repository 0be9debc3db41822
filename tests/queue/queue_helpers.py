"""Builders shared by the queue tests."""

from __future__ import annotations

from mailkeep.queue.store import NewMessage, QueuedRecipient

CONFIG = """\
hostname = "mail.example.com"
data_dir = "data"

[domains."example.com"]

[accounts."me@example.com"]
"""


def body(subject: str = "hello", text: str = "body text") -> bytes:
    return (f"From: me@example.com\r\nTo: you@example.net\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.com>\r\n\r\n{text}\r\n").encode()


def new_message(queue_id: str, *recipients: str, sender: str = "me@example.com",
                **kwargs) -> NewMessage:
    rcpts = [QueuedRecipient(r) for r in (recipients or ("you@example.net",))]
    kwargs.setdefault("prefix", b"Received: by mail.example.com\r\n")
    kwargs.setdefault("source", body(queue_id))
    return NewMessage(queue_id=queue_id, sender=sender, recipients=rcpts, **kwargs)
