"""Keeps the full-text index (``mailkeep.store.fts``) caught up in the background.

SEARCH indexes what is missing itself (a bounded number of messages per search), so this
is an optimisation, not a requirement: mailboxes that received mail are indexed once they
have been quiet for a while, so that the first TEXT search after a burst of mail is fast.
Waiting for a quiet mailbox keeps indexing from competing with deliveries during a burst
(indexing costs about as much CPU as a delivery).

The indexer polls the store (each mailbox's UIDNEXT, from a worker thread) rather than
subscribing to its change notifications: a subscription would cost every delivery a
cross-thread wake-up of the event loop, which shows in SMTP throughput, while a poll every
few seconds costs nothing per message. It also sees mail that another process (``mailkeep
import``, ``mailkeep deliver``) stored.
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

#: A mailbox is indexed once no message has arrived for this long.
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
        self.accounts: list[str] = []
        #: (account, mailbox) -> (UIDNEXT last seen, when it last changed, UIDNEXT indexed)
        self._seen: dict[tuple[str, str], tuple[int, float, int]] = {}
        self._task: asyncio.Task | None = None

    def watch(self, accounts: Iterable[str]) -> None:
        """Keep these accounts' mailboxes indexed (called at start and on reload)."""
        self.accounts = sorted(set(accounts))
        wanted = set(self.accounts)
        self._seen = {k: v for k, v in self._seen.items() if k[0] in wanted}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.quiet / 2)
            try:
                await asyncio.to_thread(self.run_once)
            except Exception as exc:  # the index is rebuildable: log, never fail the server
                log(logger, "background indexing failed", logging.WARNING, error=repr(exc))

    def run_once(self, now: float | None = None) -> int:
        """One round (in a worker thread): note new mail, index quiet mailboxes. Returns
        how many mailboxes were indexed."""
        now = time.monotonic() if now is None else now
        indexed = 0
        for account in list(self.accounts):
            try:
                boxes = self.store.list_mailboxes(account)
            except S.StoreError:
                continue
            names = {box.name for box in boxes}
            gone = [k for k in self._seen if k[0] == account and k[1] not in names]
            for key in gone:
                del self._seen[key]
            if gone:
                self.fts.prune_account(account)
            for box in boxes:
                key = (account, box.name)
                uidnext, changed, done = self._seen.get(key, (0, now, 0))
                if box.uidnext != uidnext:
                    self._seen[key] = (box.uidnext, now, done)
                    continue
                if done >= uidnext or now - changed < self.quiet:
                    continue
                if box.messages == 0:
                    self._seen[key] = (uidnext, changed, uidnext)  # nothing to index
                    continue
                left = self._index(account, box.name)
                indexed += 1
                # All indexed: remember it; more to do: come back next round.
                self._seen[key] = (uidnext, changed, uidnext if left == 0 else done)
        return indexed

    def _index(self, account: str, mailbox: str) -> int:
        try:
            infos = self.store.list_messages(account, mailbox)
            return self.fts.catch_up(account, mailbox, infos, max_messages=self.batch)
        except S.StoreError:
            return 0  # the mailbox or account went away meanwhile
