"""The outbound queue: mail accepted for remote recipients, kept durably until it is
delivered, bounced or deleted.

- ``store``: the queue on disk (SQLite metadata + one file per message) and its API.
- ``dsn``: delivery status notifications (RFC 3464 bounces, delay warnings, success reports).
- ``maildrop``: the drop box where ``mailkeep sendmail`` leaves mail for the server.

The scheduler that delivers from the queue lives in ``scheduler`` (written separately).
See docs/queue.md.
"""

from mailkeep.queue.store import (
    NewMessage,
    QueuedRecipient,
    QueueEntry,
    QueueError,
    QueueIOError,
    QueueStore,
    RecipientOutcome,
    RecipientState,
    apply_outcomes,
)

__all__ = [
    "NewMessage",
    "QueueEntry",
    "QueueError",
    "QueueIOError",
    "QueueStore",
    "QueuedRecipient",
    "RecipientOutcome",
    "RecipientState",
    "apply_outcomes",
]
