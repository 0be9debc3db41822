"""The pickup: mail that ``mailkeep sendmail`` dropped into ``queue/maildrop/`` enters here.

Like Postfix's pickup(8): a local program writes a drop file (``maildrop.write_drop``:
durable, any local user may write, nobody may read another's), and the running server
takes each one, attributes it to the user who owns the file, runs it through the same
submission path as port 587 (fix-ups, DKIM, ``Submission.submit`` with every recipient
queued, so that local recipients are delivered and failures bounced by the queue), and
removes the drop file only once the message is durably queued. A crash in between queues
it twice at worst, never loses it.

The drop box is scanned once a second and at once on SIGUSR1 (``wake``); a file that is not
a valid drop, or a message the submission path refuses for good, is moved to
``queue/maildrop-failed/`` with a log line, so it is neither lost nor retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailkeep.delivery.fixups import HeaderTooLarge, read_header_block
from mailkeep.delivery.pipeline import AcceptedRecipient, Envelope, SessionInfo, new_message_id
from mailkeep.delivery.submission import SubmitRequest
from mailkeep.durable import fsync_dir
from mailkeep.logfmt import log
from mailkeep.mime.header import header_fields
from mailkeep.queue.maildrop import DropError, ensure_maildrop, list_drops, read_drop, remove_drop
from mailkeep.smtp.address import AddressError, parse_address

logger = logging.getLogger("mailkeep.pickup")

SCAN_INTERVAL = 1.0
#: Wait before trying a drop again after a temporary failure (queue or disk trouble).
RETRY_DELAY = 30.0


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


class Pickup:
    def __init__(self, maildrop_dir: Path, submission: Callable[[], Any]) -> None:
        self.maildrop_dir = maildrop_dir
        self.failed_dir = maildrop_dir.parent / "maildrop-failed"
        self._submission = submission      # returns the current Submission service
        self._event = asyncio.Event()
        self._stopping = False
        self._retry_after: dict[str, float] = {}
        #: Messages taken in are counted here (mailkeep.metrics.ServerMetrics), if set.
        self.metrics: Any = None

    def wake(self) -> None:
        self._event.set()

    def stop(self) -> None:
        self._stopping = True
        self._event.set()

    async def run(self) -> None:
        await asyncio.to_thread(ensure_maildrop, self.maildrop_dir)
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._event.clear()
            for path in await asyncio.to_thread(list_drops, self.maildrop_dir):
                if self._stopping:
                    break
                if self._retry_after.get(path.name, 0) > loop.time():
                    continue
                try:
                    await self.take(path)
                except Exception:
                    logger.exception("pickup failed", extra={"file": path.name})
                    self._retry_after[path.name] = loop.time() + RETRY_DELAY
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), SCAN_INTERVAL)

    async def take(self, path: Path) -> None:
        """Submit one drop file; remove it once queued, set it aside if it cannot be."""
        try:
            drop = await asyncio.to_thread(read_drop, path)
        except DropError as exc:
            if not path.exists():
                return
            await asyncio.to_thread(self._set_aside, path, str(exc))
            return
        submission = self._submission()
        config = submission.config
        user = user_name(drop.uid)
        sender_text = drop.sender if drop.sender is not None else f"{user}@{config.hostname}"
        msg_id = new_message_id()
        try:
            sender = parse_address(sender_text) if sender_text else None
            recipients = [AcceptedRecipient(parse_address(r), (),
                                            notify=drop.notify) for r in drop.recipients]
        except AddressError as exc:
            await asyncio.to_thread(self._set_aside, path, f"bad address: {exc}")
            return
        source = await asyncio.to_thread(self._copy_message, drop, sender_text,
                                         submission.spool_dir)
        try:
            envelope = Envelope(sender=sender, recipients=recipients,
                                body_type=drop.body_type, envid=drop.envid, ret=drop.ret)
            reply = await submission.submit(SubmitRequest(
                session=SessionInfo(client_ip="local", protocol="local", listener="pickup"),
                account=None, envelope=envelope, source=source,
                size=source.stat().st_size, msg_id=msg_id, local_user=user,
                queue_local=True))
        finally:
            source.unlink(missing_ok=True)
        if self.metrics is not None:
            self.metrics.message_received("sendmail", "accepted" if reply.code < 300 else
                                          "rejected" if reply.code >= 500 else "deferred")
        if reply.code < 300:
            await asyncio.to_thread(remove_drop, path)
            self._retry_after.pop(path.name, None)
            log(logger, "picked up", id=msg_id, user=user, from_=sender_text,
                to=",".join(drop.recipients), size=drop.size)
        elif reply.code >= 500:
            await asyncio.to_thread(self._set_aside, path, reply.one_line())
        else:
            self._retry_after[path.name] = asyncio.get_running_loop().time() + RETRY_DELAY
            log(logger, "pickup deferred", logging.WARNING, id=msg_id, file=path.name,
                code=reply.code, reason=reply.one_line())

    def _copy_message(self, drop: Any, sender: str, spool_dir: Path) -> Path:
        """The message of a drop file as a spool file; a From: is added when missing."""
        fd, name = tempfile.mkstemp(prefix="pick-", dir=spool_dir)
        out_path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, open(drop.path, "rb") as src:
                src.seek(drop.offset)
                head = src.read(1 << 16)
                src.seek(drop.offset)
                try:
                    header, _ = read_header_block(head)
                except HeaderTooLarge:
                    header = head
                names = {name for name, _, _ in header_fields(header, 0, len(header))}
                if b"from" not in names and sender:
                    display = (drop.full_name or "").replace('"', "").replace("\\", "")
                    field = f'From: "{display}" <{sender}>' if display else f"From: <{sender}>"
                    out.write(field.encode() + b"\r\n")
                shutil.copyfileobj(src, out, 1 << 20)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
        return out_path

    def _set_aside(self, path: Path, reason: str) -> None:
        self.failed_dir.mkdir(mode=0o700, exist_ok=True)
        target = self.failed_dir / path.name
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
            fsync_dir(self.failed_dir)
        log(logger, "drop set aside", logging.ERROR, file=path.name, reason=reason,
            moved_to=str(target))
