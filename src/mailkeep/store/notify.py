"""In-process change notifications, so that IMAP IDLE (RFC 2177) can push within a second.

The committing thread publishes events after the commit is durable; each subscriber's callback
runs on the asyncio loop it subscribed from (``loop.call_soon_threadsafe``), so IMAP
session code never runs on a committing thread and never needs a lock. A subscriber whose
loop has closed is dropped silently.

Changes made by another process (the CLI importing while the server runs) are not seen
here; IMAP sessions pick them up at their next command.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable

from mailkeep.store.api import StoreEvent

logger = logging.getLogger("mailkeep.store")

Callback = Callable[[StoreEvent], object]


class _Subscription:
    __slots__ = ("_notifier", "account", "callback", "loop")

    def __init__(self, notifier: Notifier, account: str, callback: Callback,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._notifier = notifier
        self.account = account
        self.callback = callback
        self.loop = loop

    def cancel(self) -> None:
        self._notifier._remove(self)

    __call__ = cancel

    def __enter__(self) -> _Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Notifier:
    """Registry of per-account subscribers; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[_Subscription]] = {}

    def subscribe(self, account: str, callback: Callback,
                  loop: asyncio.AbstractEventLoop | None = None) -> _Subscription:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                # A callback without a loop would run on a committing thread and stall commits.
                raise RuntimeError(
                    "subscribe() needs a running asyncio loop, or pass loop=") from None
        sub = _Subscription(self, account, callback, loop)
        with self._lock:
            self._subscribers.setdefault(account, []).append(sub)
        return sub

    def _remove(self, sub: _Subscription) -> None:
        with self._lock:
            subs = self._subscribers.get(sub.account)
            if subs and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subscribers[sub.account]

    def has_subscribers(self, account: str) -> bool:
        return account in self._subscribers

    def publish(self, events: Iterable[StoreEvent]) -> None:
        """Hand each event to the subscribers of its account (called after commit)."""
        for event in events:
            with self._lock:
                subs = list(self._subscribers.get(event.account, ()))
            for sub in subs:
                try:
                    sub.loop.call_soon_threadsafe(_invoke, sub, event)
                except RuntimeError:  # the loop is closed: its sessions are gone
                    self._remove(sub)


def _invoke(sub: _Subscription, event: StoreEvent) -> None:
    try:
        sub.callback(event)
    except Exception:  # one broken session must not silence the others
        logger.exception("store event callback failed for %s", sub.account)
