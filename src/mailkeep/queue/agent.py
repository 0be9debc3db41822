"""The delivery process: the queue manager and the SMTP client in a process of their own.

Why a second process: one Python process runs one thread at a time, and receiving mail
(SMTP server, submission, the durable queue write) and sending it (queue manager, SMTP
client, DNS, MTA-STS, DSNs) both want a CPU. Postfix runs smtpd, cleanup, qmgr and smtp(8)
as separate processes for the same reason. Here the server process keeps everything that
receives and stores; the delivery process, started and supervised by the server, runs the
``Scheduler`` (mailkeep.queue.scheduler) on another CPU.

What the two share, and how:

- The queue: both open it (``QueueStore``: SQLite and files; several processes may, as the
  CLI always could). The server writes new mail; the delivery process records attempts,
  queues DSNs and removes what is done.
- A socketpair (mailkeep.queue.channel) for everything else. Server → delivery process:

  - ``("config", Config)``: first, and after every reload;
  - ``("new", [QueueEntry, ...])``: mail just queued, to start on at once;
  - ``("wake",)``: rescan the queue (SIGUSR1 from ``mailkeep queue ...``);
  - ``("local-done", n, outcomes, error)``: the answer to ``("local", n, ...)``;
  - ``("stop",)``: finish the attempts in flight (bounded) and exit.

  Delivery process → server:

  - ``("ready", pid)``, then ``("alive",)`` every HEARTBEAT_INTERVAL (a process silent for
    SILENCE_TIMEOUT is killed and started again);
  - ``("local", n, entry, recipients)``: store this message for these recipients in our
    own domains. The store stays in the server, so that IMAP IDLE and the search indexer
    see the new mail at once (a DSN to a local sender, a retried local delivery);
  - ``("metrics", [(name, args), ...])``: outcome counts, delivery latencies, commit
    times, merged into the server's /metrics;
  - ``("logs", [Record, ...])``: log lines, written by the server (one writer per log
    file, its rotation, its syslog or journal connection); batched per loop turn.

Lifecycle: the server starts the delivery process after dropping privileges (it runs as the
same user), restarts it with a growing delay if it dies, sends it every reloaded config, and
stops it before closing the store. The delivery process ignores SIGINT, SIGTERM, SIGHUP and
SIGUSR1 (a Ctrl-C or systemd's stop reaches the whole process group; the server decides) and
stops when told or when the server has gone (end of file on the socketpair). Nothing is lost
when either dies at any moment: mail is in the queue until an attempt's outcome is
recorded, and a message whose outcome was not recorded is sent again (at least once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import site
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mailkeep
from mailkeep.logfmt import emit_record, forward_logging, log, record_line, setup_logging
from mailkeep.queue.channel import Channel, FrameError
from mailkeep.queue.scheduler import LocalDelivery

logger = logging.getLogger("mailkeep.queue")

#: Seconds between two batches of metrics from the delivery process.
METRICS_INTERVAL = 0.25
#: Seconds the server waits before starting a delivery process again after it died: 1 s,
#: then longer each time it dies within a minute of starting.
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: A delivery process that ran this long before dying starts again after the first delay.
STABLE_SECONDS = 60.0
#: Seconds the delivery process waits for its first config before giving up.
CONFIG_TIMEOUT = 60.0
#: Seconds the server waits for the delivery process to stop (it gives attempts in flight
#: 30 s, as Scheduler.stop) before killing it.
STOP_TIMEOUT = 40.0
#: Seconds the server then gives local deliveries it is still making for it.
REQUEST_GRACE = 10.0
#: Seconds a new delivery process has to say it is ready before it is killed (and started
#: again): it imports, opens the queue (recovery included) and builds its scheduler.
READY_TIMEOUT = 120.0
#: The delivery process says it is alive this often, whatever else it has to say...
HEARTBEAT_INTERVAL = 5.0
#: ...and one silent this long is taken as stuck (its event loop no longer runs), killed
#: and started again.
SILENCE_TIMEOUT = 60.0
#: How often the server checks the two deadlines above.
WATCH_INTERVAL = 1.0
#: Seconds the server keeps reading from a delivery process that exited: its last log
#: lines and metrics are still on the way.
DRAIN_SECONDS = 5.0
#: Queue entries per "new" message (a busy loop turn can queue many; each entry may carry
#: its message, up to 64 KiB, so that the first attempt sends it from memory).
NEW_BATCH = 200
#: Bytes of notifications the delivery process has not read yet beyond which the server
#: sends a rescan request instead (the delivery process is busy; the queue has it all).
MAX_BUFFERED = 4 << 20
#: The metrics calls the delivery process may ask the server to make.
METRIC_CALLS = frozenset({"outbound_outcome", "delivered_after", "commit"})


# -- the server's side -------------------------------------------------------------------------

class DeliveryProcess:
    """The server's handle on its delivery process: starts it, keeps it running, passes it
    new mail, rescans, configs, and answers its requests."""

    def __init__(self, config: Any, *, local: LocalDelivery, metrics: Any = None,
                 command: list[str] | None = None,
                 inline: Callable[[Any], Any] | None = None) -> None:
        self.config = config
        self.local = local
        self.metrics = metrics
        #: Builds a Scheduler in this process from a config: used, with a warning, when
        #: no delivery process can be started at all (see _supervise).
        self.inline = inline
        #: That scheduler, once in use.
        self.inline_scheduler: Any = None
        # -P: the current directory (wherever `mailkeep serve` was started, perhaps a
        # directory others can write to) is not put on the child's module path.
        self.command = command or [sys.executable, "-P", "-m", "mailkeep.queue.agent"]
        #: Set while a delivery process has said it is ready; cleared when it goes.
        self.ready = asyncio.Event()
        self.pid: int | None = None
        #: How many times a delivery process was started (1 if it never died).
        self.starts = 0
        self._channel: Channel | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._outbox: list[Any] = []
        self._flush_pending = False
        self._requests: set[asyncio.Task] = set()
        self._observers: dict[str, Callable[[float], None]] = {}
        self._last_heard = 0.0

    def start(self) -> None:
        """Start the delivery process and keep it running until ``stop``."""
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    # -- what the server tells it ------------------------------------------------------------

    def notify_new(self, entries: list[Any]) -> None:
        """Mail was just queued (Submission's ``wake``): pass it on, batched per loop turn."""
        if self.inline_scheduler is not None:
            self.inline_scheduler.notify_new(entries)
            return
        if not entries:
            return
        self._outbox.extend(entries)
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        entries, self._outbox = self._outbox, []
        channel = self._channel
        if channel is None or not channel.is_open:
            return  # a delivery process reads the whole queue when it starts
        if channel.buffered() > MAX_BUFFERED:
            channel.send("wake")
            return
        try:
            for start in range(0, len(entries), NEW_BATCH):
                channel.send("new", entries[start:start + NEW_BATCH])
        except FrameError:  # cannot happen with NEW_BATCH entries; a rescan finds them
            channel.send("wake")

    def wake(self) -> None:
        """Rescan the queue (the CLI changed it)."""
        if self.inline_scheduler is not None:
            self.inline_scheduler.wake()
        elif self._channel is not None:
            self._channel.send("wake")

    def update(self, config: Any, pipeline: Any = None) -> None:
        """A reloaded config (and the server's pipeline for it): the next attempts use it."""
        self.config = config
        if self.inline_scheduler is not None:
            self.inline_scheduler.update(config, pipeline)
        elif self._channel is not None:
            self._channel.send("config", config)

    async def stop(self) -> None:
        """Stop the delivery process (attempts in flight may finish) and wait for it:
        at most STOP_TIMEOUT, then it is killed; then the local deliveries still under
        way for it get REQUEST_GRACE before they are cancelled (the store closes next)."""
        self._stop.set()
        if self._channel is not None:
            self._channel.send("stop")
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            if not done:
                process = self._process
                log(logger, "delivery process did not stop; killing it", logging.ERROR,
                    pid=process.pid if process is not None else "")
                if process is not None and process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._requests:
            _, pending = await asyncio.wait(list(self._requests), timeout=REQUEST_GRACE)
            for request in pending:
                request.cancel()

    # -- running it --------------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                code: int | None = await self._run_once()
            except _CannotExecute as exc:
                if self.inline is not None:
                    # E.g. run_as cannot execute the interpreter (one installed under
                    # /root), or it went away in an upgrade: sending must go on all the
                    # same, from this process, until the server is restarted.
                    log(logger, "cannot start a delivery process; the server sends queued "
                        "mail itself", logging.WARNING, command=self.command[0],
                        error=str(exc.__cause__ or exc))
                    await self._run_inline()
                    return
                log(logger, "cannot start the delivery process", logging.ERROR,
                    error=repr(exc.__cause__ or exc))
                code = None
            except Exception as exc:
                log(logger, "cannot start the delivery process", logging.ERROR,
                    error=repr(exc))
                code = None
            if self._stop.is_set():
                break
            if time.monotonic() - started >= STABLE_SECONDS:
                failures = 0
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            log(logger, "delivery process exited; starting it again", logging.ERROR,
                exit_code="" if code is None else code, restart_in=delay)
            if self.metrics is not None:
                self.metrics.delivery_process_restarted()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_inline(self) -> None:
        assert self.inline is not None
        scheduler = self.inline_scheduler = self.inline(self.config)
        running = asyncio.get_running_loop().create_task(scheduler.run())
        try:
            await self._stop.wait()
        finally:
            await scheduler.stop()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running

    async def _run_once(self) -> int:
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, str(theirs.fileno()), pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, env=_child_environment())
        except OSError as exc:  # the program cannot be run (permissions, missing)
            ours.close()
            raise _CannotExecute(self.command[0]) from exc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.starts += 1
        self._process = process
        self._last_heard = asyncio.get_running_loop().time()
        watchdog = asyncio.get_running_loop().create_task(self._watch(process))
        channel: Channel | None = None
        try:
            # Each message names the channel it came on: a late answer to a process that
            # died must never reach its successor (request numbers start again at 1).
            channel = await Channel.open(ours, lambda message: self._on_message(message,
                                                                                channel))
            self._channel = channel
            channel.send("config", self.config)
            if self._stop.is_set():
                channel.send("stop")
            code = await process.wait()
            # What it wrote before exiting (its last log lines and metrics) is read first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.closed.wait(), DRAIN_SECONDS)
            return code
        finally:
            watchdog.cancel()
            self._channel = None
            self.ready.clear()
            self.pid = None
            if channel is not None:
                channel.close()
            else:
                ours.close()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        """Kill a delivery process that is not ready in time, or that fell silent once
        ready (killed, it is started again like one that died)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while process.returncode is None:
            await asyncio.sleep(WATCH_INTERVAL)
            now = loop.time()
            if not self.ready.is_set():
                if now - started < READY_TIMEOUT:
                    continue
                problem, seconds = "delivery process not ready in time", READY_TIMEOUT
            elif now - self._last_heard > SILENCE_TIMEOUT:
                problem, seconds = "delivery process stopped answering", SILENCE_TIMEOUT
            else:
                continue
            if process.returncode is None:
                log(logger, f"{problem}; killing it", logging.ERROR, pid=process.pid,
                    seconds=seconds)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            return

    def _on_message(self, message: tuple[Any, ...], channel: Channel | None) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        kind = message[0]
        if kind == "alive":
            pass
        elif kind == "logs":
            for record in message[1]:
                emit_record(record)
        elif kind == "metrics":
            self._apply_metrics(message[1])
        elif kind == "local":
            _, number, entry, rcpts = message
            task = asyncio.get_running_loop().create_task(
                self._answer_local(channel, number, entry, rcpts))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
        elif kind == "ready":
            self.pid = message[1]
            self.ready.set()
            log(logger, "delivery process started", pid=self.pid)
        else:
            log(logger, "delivery process sent an unknown message", logging.ERROR,
                kind=kind)

    async def _answer_local(self, channel: Channel | None, number: int, entry: Any,
                            rcpts: list) -> None:
        try:
            outcomes = await self.local(entry, rcpts)
        except Exception as exc:
            logger.exception("local delivery failed", extra={"id": entry.queue_id})
            reply: tuple[Any, ...] = ("local-done", number, None, repr(exc))
        else:
            reply = ("local-done", number, outcomes, None)
        if channel is not None:
            channel.send(*reply)  # nothing if that process has gone: it retries the mail

    def _apply_metrics(self, calls: list[tuple[str, tuple]]) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        for name, args in calls:
            if name not in METRIC_CALLS:
                continue
            if name == "commit":
                store, seconds = args
                observe = self._observers.get(store)
                if observe is None:
                    observe = self._observers[store] = metrics.commit_observer(store)
                observe(seconds)
            else:
                getattr(metrics, name)(*args)


class _CannotExecute(Exception):
    """The delivery process's program could not be executed."""


def _child_environment() -> dict[str, str]:
    """The server's environment, plus what the child needs to import this very package
    when it does not come from an installed location (a source checkout)."""
    env = dict(os.environ)
    root = str(Path(mailkeep.__file__).resolve().parent.parent)
    installed = {str(Path(p).resolve()) for p in
                 (*site.getsitepackages(), site.getusersitepackages())}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), root) if p)
    return env


# -- the delivery process's side ---------------------------------------------------------------

class _ForwardedMetrics:
    """The ``ServerMetrics`` calls the scheduler and the queue make, kept for the server
    (sent every METRICS_INTERVAL). Thread-safe: commits are timed on a committer thread."""

    def __init__(self) -> None:
        self.calls: collections.deque[tuple[str, tuple]] = collections.deque()

    def outbound_outcome(self, outcome: str) -> None:
        self.calls.append(("outbound_outcome", (outcome,)))

    def delivered_after(self, seconds: float) -> None:
        self.calls.append(("delivered_after", (seconds,)))

    def commit_observer(self, store: str) -> Callable[[float], None]:
        return lambda seconds: self.calls.append(("commit", (store, seconds)))

    def take(self) -> list[tuple[str, tuple]]:
        return _drain(self.calls)


def _drain(items: collections.deque) -> list:
    """Everything in ``items`` (appended to by other threads meanwhile), oldest first."""
    out = []
    with contextlib.suppress(IndexError):
        while True:
            out.append(items.popleft())
    return out


class Agent:
    """Runs the scheduler for the server at the other end of ``sock``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.channel: Channel | None = None
        self.config: Any = None
        self.scheduler: Any = None
        self.metrics = _ForwardedMetrics()
        self._configured = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pending: dict[int, asyncio.Future] = {}
        self._numbers = 0
        # Log records for the server, sent together once per loop turn: one frame (one
        # system call here and one there) for all a turn logged, not one per line.
        self._logs: collections.deque[Any] = collections.deque()
        self._logs_flush_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._logging_to_stderr = False

    async def run(self) -> int:
        from mailkeep.queue.store import QueueStore

        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.channel = channel = await Channel.open(self.sock, self._on_message)
        gone = asyncio.create_task(channel.closed.wait())
        first = asyncio.create_task(self._configured.wait())
        await asyncio.wait({gone, first}, timeout=CONFIG_TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        first.cancel()
        if not self._configured.is_set():
            gone.cancel()
            return 1
        forward_logging(self._log, self.config.log.level)
        queue = await asyncio.to_thread(QueueStore.for_data_dir, self.config.data_dir)
        queue.instrument(self.metrics)
        # The latest config: a reload may have come while the queue was being opened.
        forward_logging(self._log, self.config.log.level)
        self.scheduler = self._scheduler(self.config, queue)
        from mailkeep.runtime import tune_for_serving

        tune_for_serving()
        channel.send("ready", os.getpid())
        loop = asyncio.get_running_loop()
        running = loop.create_task(self.scheduler.run())
        reporting = loop.create_task(self._report_metrics())
        stop = loop.create_task(self._stopping.wait())
        await asyncio.wait({gone, stop}, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            self._flush_logs()  # from now on to stderr
            log(logger, "the server has gone; delivery process stopping", logging.WARNING)
        await self.scheduler.stop()
        for task in (running, reporting, stop, gone):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(queue.close)
        self._send_metrics()
        self._flush_logs()
        channel.close()  # after what is buffered has been written
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.closed.wait(), 5)
        return 0

    def _scheduler(self, config: Any, queue: Any) -> Any:
        from mailkeep.queue.scheduler import Scheduler

        return Scheduler(config, queue, self._pipeline(config), data_dir=config.data_dir,
                         metrics=self.metrics, local=self.deliver_local)

    @staticmethod
    def _pipeline(config: Any) -> Any:
        # Routing only (which domains are ours): mail for them is stored by the server.
        from mailkeep.addressing import Resolver
        from mailkeep.delivery.pipeline import Pipeline

        return Pipeline(config, None, Resolver(config))

    def _log(self, record: Any) -> None:
        """A log record for the server (any thread; see logfmt.forward_logging)."""
        self._logs.append(record)
        if self._logs_flush_pending or self._loop is None:
            return
        self._logs_flush_pending = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._flush_logs)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._flush_logs)

    def _flush_logs(self) -> None:
        self._logs_flush_pending = False
        records = _drain(self._logs)
        if not records:
            return
        channel = self.channel
        if channel is not None and channel.is_open:
            if channel.buffered() <= MAX_BUFFERED:
                channel.send("logs", records)
                return
            # The server has not read the last MAX_BUFFERED bytes: these lines go to
            # stderr (the journal, under systemd) rather than pile up here.
        elif self.config is not None and not self._logging_to_stderr:
            # The server has gone: from now on, log to stderr directly.
            self._logging_to_stderr = True
            setup_logging(self.config.log.format, self.config.log.level)
        fmt = self.config.log.format if self.config is not None else "logfmt"
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write("".join(record_line(record, fmt) + "\n" for record in records))
            sys.stderr.flush()

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "config":
            self.config = message[1]
            if self.scheduler is None:
                self._configured.set()
            else:
                forward_logging(self._log, self.config.log.level)
                self.scheduler.update(self.config, self._pipeline(self.config))
        elif kind == "new":
            if self.scheduler is not None:
                self.scheduler.notify_new(message[1])
        elif kind == "wake":
            if self.scheduler is not None:
                self.scheduler.wake()
        elif kind == "local-done":
            _, number, outcomes, error = message
            future = self._pending.pop(number, None)
            if future is not None and not future.done():
                if error is not None:
                    future.set_exception(RuntimeError(f"the server could not deliver "
                                                      f"locally: {error}"))
                else:
                    future.set_result(outcomes)
        elif kind == "stop":
            self._stopping.set()
        else:
            log(logger, "server sent an unknown message", logging.ERROR, kind=kind)

    async def deliver_local(self, entry: Any, rcpts: list) -> list:
        """The scheduler's local delivery: the server stores the message."""
        channel = self.channel
        number = self._numbers = self._numbers + 1
        future = asyncio.get_running_loop().create_future()
        if channel is None or not channel.send("local", number, entry, rcpts):
            raise ConnectionError("the server has gone")
        self._pending[number] = future
        closed = asyncio.ensure_future(channel.closed.wait())
        try:
            await asyncio.wait({future, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not future.done():
            self._pending.pop(number, None)
            raise ConnectionError("the server went away during a local delivery")
        return future.result()

    async def _report_metrics(self) -> None:
        loop = asyncio.get_running_loop()
        last_beat = loop.time()
        while True:
            await asyncio.sleep(METRICS_INTERVAL)
            self._send_metrics()
            self._flush_logs()
            if loop.time() - last_beat >= HEARTBEAT_INTERVAL and self.channel is not None:
                last_beat = loop.time()
                self.channel.send("alive")

    def _send_metrics(self) -> None:
        calls = self.metrics.take()
        if calls and self.channel is not None:
            self.channel.send("metrics", calls)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the delivery process: ``python -m mailkeep.queue.agent FD``, where FD
    is its end of the socketpair. Started by the server, not by hand."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m mailkeep.queue.agent FD (started by `mailkeep serve`)",
              file=sys.stderr)
        return 64
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    return asyncio.run(Agent(sock).run())


if __name__ == "__main__":
    sys.exit(main())
