"""Keeps the full-text index (``mailkeep.store.fts``) caught up in the background.

SEARCH indexes what is missing itself (a bounded number of messages per search), so this
is an optimisation, not a requirement: mailboxes that received mail are indexed once they
have been quiet for a while, so that the first TEXT search after a burst of mail is fast.
Waiting for a quiet mailbox keeps indexing from competing with deliveries during a burst
(indexing costs about as much CPU as a delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from mailkeep.logfmt import log
from mailkeep.store import api as S

logger = logging.getLogger("mailkeep.fts")

#: A mailbox is indexed once no change has arrived for this long.
QUIET_SECONDS = 10.0
#: Messages indexed per mailbox per round; the rest waits for the next round.
BATCH = 2000


class BackgroundIndexer:
    def __init__(self, store: Any, fts: Any, *, quiet: float = QUIET_SECONDS,
                 batch: int = BATCH) -> None:
        self.store = store
        self.fts = fts
        self.quiet = quiet
        self.batch = batch
        self._dirty: dict[tuple[str, str], float] = {}
        self._subscriptions: dict[str, Any] = {}
        self._task: asyncio.Task | None = None

    def watch(self, accounts: Iterable[str]) -> None:
        """Follow these accounts (and stop following the others)."""
        wanted = set(accounts)
        for account in list(self._subscriptions):
            if account not in wanted:
                self._subscriptions.pop(account).cancel()
        for account in wanted - set(self._subscriptions):
            self._subscriptions[account] = self.store.subscribe(
                account, lambda event, a=account: self._on_event(a, event))

    def _on_event(self, account: str, event: Any) -> None:
        if isinstance(event, S.MessageAdded):
            self._dirty[(account, event.mailbox)] = time.monotonic()
        elif isinstance(event, S.MailboxesChanged):
            if event.change == "account-deleted":
                self._dirty = {k: v for k, v in self._dirty.items() if k[0] != account}
                self._run_soon(self.fts.drop_account, account)
            elif event.change == "deleted":
                self._run_soon(self.fts.prune_account, account)

    def _run_soon(self, func: Any, *args: Any) -> None:
        async def run() -> None:
            try:
                await asyncio.to_thread(func, *args)
            except Exception as exc:  # the index is rebuildable: log, never fail the server
                log(logger, "index maintenance failed", logging.WARNING, error=repr(exc))
        asyncio.get_running_loop().create_task(run())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for sub in self._subscriptions.values():
            sub.cancel()
        self._subscriptions.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.quiet / 2)
            now = time.monotonic()
            ready = [key for key, last in self._dirty.items() if now - last >= self.quiet]
            for key in ready:
                self._dirty.pop(key, None)
                left = await self._index(*key)
                if left:
                    # More to do: come back next round (keeps each round short).
                    self._dirty.setdefault(key, now - self.quiet)

    async def _index(self, account: str, mailbox: str) -> int:
        def work() -> int:
            infos = self.store.list_messages(account, mailbox)
            return self.fts.catch_up(account, mailbox, infos, max_messages=self.batch)
        try:
            return await asyncio.to_thread(work)
        except S.StoreError:
            return 0  # the mailbox or account went away meanwhile
        except Exception as exc:
            log(logger, "background indexing failed", logging.WARNING, account=account,
                mailbox=mailbox, error=repr(exc))
            return 0
