"""The delivery process (mailkeep.queue.agent): started, fed and supervised by the server.

These run the real delivery process (``python -m mailkeep.queue.agent``) against a queue in
a temporary directory; the server's side is ``DeliveryProcess`` in this test's event loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from queue_helpers import CONFIG, new_message
from tests.support.logs import reset_logging, wait_for_text

from mailkeep.config import parse_config_text
from mailkeep.logfmt import setup_logging
from mailkeep.queue import agent
from mailkeep.queue.agent import DeliveryProcess
from mailkeep.queue.channel import Decoder, encode
from mailkeep.queue.store import QueueStore, RecipientOutcome


class Metrics:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def outbound_outcome(self, outcome: str) -> None:
        self.calls.append(("outcome", outcome))

    def delivered_after(self, seconds: float) -> None:
        self.calls.append(("latency", seconds))

    def commit_observer(self, store: str):
        return lambda seconds: self.calls.append(("commit", store))

    def delivery_process_restarted(self) -> None:
        self.calls.append(("restarted",))

    def message_received(self, *args) -> None:  # not one the delivery process may call
        self.calls.append(("received", args))


@pytest.fixture
def config(tmp_path: Path):
    return parse_config_text(CONFIG, tmp_path / "mailkeep.toml")


@pytest.fixture
def server_log(tmp_path: Path):
    path = tmp_path / "server.log"
    setup_logging("logfmt", "info", str(path))
    yield path
    reset_logging()


async def _until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_queued_local_mail_is_stored_by_the_server_and_reported_back(config, server_log):
    async def main() -> None:
        queue = QueueStore.for_data_dir(config.data_dir)
        asked: list = []

        async def local(entry, rcpts):
            asked.append((entry.queue_id, [r.address for r in rcpts],
                          queue.message_path(entry.queue_id).read_bytes()))
            return [RecipientOutcome(r.address, "delivered", 250, "2.0.0 stored")
                    for r in rcpts]

        metrics = Metrics()
        process = DeliveryProcess(config, local=local, metrics=metrics)
        process.start()
        try:
            await asyncio.wait_for(process.ready.wait(), 30)
            assert process.pid not in (None, os.getpid())
            entries = await queue.enqueue([new_message("AGENT1", "me@example.com")])
            process.notify_new(entries)
            await _until(lambda: queue.count() == 0, what="the queue to empty")
            await _until(lambda: ("outcome", "delivered") in metrics.calls,
                         what="the outcome in the server's metrics")
        finally:
            await process.stop()
            queue.close()
        assert [(qid, rcpts) for qid, rcpts, _ in asked] == [("AGENT1", ["me@example.com"])]
        assert b"Subject: AGENT1" in asked[0][2]
        assert ("commit", "queue") in metrics.calls
        assert not any(call[0] == "received" for call in metrics.calls)
        assert process.pid is None and process.starts == 1

    asyncio.run(main())
    # The delivery process's log lines are written by the server.
    wait_for_text(server_log, "msg=delivery id=AGENT1 to=me@example.com status=delivered")
    wait_for_text(server_log, 'msg="delivery process started"')


def test_mail_queued_while_no_delivery_process_runs_is_found_when_one_starts(config):
    async def main() -> None:
        queue = QueueStore.for_data_dir(config.data_dir)
        await queue.enqueue([new_message("BEFORE", "me@example.com")])
        stored: list = []

        async def local(entry, rcpts):
            stored.append(entry.queue_id)
            return [RecipientOutcome(r.address, "delivered", 250, "ok") for r in rcpts]

        process = DeliveryProcess(config, local=local)
        process.notify_new(await queue.enqueue([new_message("EARLY", "me@example.com")]))
        process.start()
        try:
            await _until(lambda: queue.count() == 0, what="the queue to empty")
        finally:
            await process.stop()
            queue.close()
        assert sorted(stored) == ["BEFORE", "EARLY"]

    asyncio.run(main())


def test_a_delivery_process_that_dies_is_started_again(config, monkeypatch, server_log):
    monkeypatch.setattr(agent, "RESTART_DELAYS", (0.1,))

    async def main() -> None:
        async def local(entry, rcpts):
            return [RecipientOutcome(r.address, "delivered", 250, "ok") for r in rcpts]

        queue = QueueStore.for_data_dir(config.data_dir)
        metrics = Metrics()
        process = DeliveryProcess(config, local=local, metrics=metrics)
        process.start()
        try:
            await asyncio.wait_for(process.ready.wait(), 30)
            first = process.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await _until(lambda: process.pid not in (None, first), what="a new process")
            assert process.starts == 2 and metrics.calls.count(("restarted",)) == 1
            # The new one delivers.
            process.notify_new(await queue.enqueue([new_message("AFTER", "me@example.com")]))
            await _until(lambda: queue.count() == 0, what="the queue to empty")
        finally:
            await process.stop()
            queue.close()

    asyncio.run(main())
    wait_for_text(server_log, 'msg="delivery process exited; starting it again"')


async def _never_local(entry, rcpts):
    raise AssertionError("a stand-in delivery process never asks for local delivery")


def _started_twice(config, script: str, *, ready_first: bool = False) -> float:
    """Run ``python -c script`` as the delivery process until the server has started it a
    second time, then stop; the seconds between the first start and the second."""
    async def main() -> float:
        process = DeliveryProcess(config, local=_never_local,
                                  command=[sys.executable, "-c", script])
        process.start()
        began = time.monotonic()
        try:
            if ready_first:
                await asyncio.wait_for(process.ready.wait(), 20)
            await _until(lambda: process.starts >= 2, timeout=20, what="a second start")
            return time.monotonic() - began
        finally:
            await asyncio.wait_for(process.stop(), 20)
            assert not process.ready.is_set()

    return asyncio.run(main())


def test_a_command_that_keeps_failing_is_retried_with_a_delay_and_stops_cleanly(config):
    assert _started_twice(config, "raise SystemExit(3)") >= agent.RESTART_DELAYS[0] * 0.9


def test_the_delivery_process_stops_when_the_server_has_gone(config):
    ours, theirs = socket.socketpair()
    child = subprocess.Popen([sys.executable, "-m", "mailkeep.queue.agent",
                              str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                             stderr=subprocess.PIPE, text=True)
    theirs.close()
    try:
        ours.sendall(encode(("config", config)))
        decoder = Decoder()
        ours.settimeout(30)
        messages: list = []
        while not any(m[0] == "ready" for m in messages):
            data = ours.recv(65536)
            assert data, f"the delivery process exited early: {child.poll()}"
            messages += decoder.feed(data)
        # Signals from a terminal or systemd reach the whole group: the server decides.
        child.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert child.poll() is None
        ours.close()  # the server died
        assert child.wait(timeout=30) == 0
        # With nobody to forward them to, its last lines went to stderr.
        assert child.stderr is not None
        assert 'msg="the server has gone; delivery process stopping"' in child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_only_known_metrics_are_applied() -> None:
    async def main() -> None:
        metrics = Metrics()

        async def local(entry, rcpts):
            return []

        process = DeliveryProcess(None, local=local, metrics=metrics)
        process._apply_metrics([("message_received", ("smtp", "accepted")),
                                ("outbound_outcome", ("bounced",)),
                                ("delivered_after", (1.5,)), ("commit", ("queue", 0.01))])
        assert metrics.calls == [("outcome", "bounced"), ("latency", 1.5),
                                 ("commit", "queue")]

    asyncio.run(main())


def test_a_delivery_process_that_never_gets_ready_is_killed_and_started_again(
        config, monkeypatch):
    monkeypatch.setattr(agent, "READY_TIMEOUT", 0.5)
    monkeypatch.setattr(agent, "RESTART_DELAYS", (0.1,))
    _started_twice(config, "import time; time.sleep(60)")


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, *message) -> bool:
        self.sent.append(message)
        return True


def test_a_late_answer_goes_to_the_process_that_asked_never_to_its_successor(config):
    async def main() -> None:
        release = asyncio.Event()

        async def local(entry, rcpts):
            await release.wait()
            return [RecipientOutcome(r.address, "delivered", 250, "ok") for r in rcpts]

        process = DeliveryProcess(config, local=local)
        asker, successor = Recorder(), Recorder()
        entry = new_message("LATE", "me@example.com")
        process._channel = asker  # type: ignore[assignment]
        process._on_message(("local", 1, entry, entry.recipients), asker)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        process._channel = successor  # type: ignore[assignment]  # the asker died meanwhile
        release.set()
        await asyncio.wait(process._requests, timeout=5)
        assert [m[:2] for m in asker.sent] == [("local-done", 1)]
        assert successor.sent == []

    asyncio.run(main())


def test_the_delivery_process_does_not_import_from_the_current_directory(
        config, tmp_path, monkeypatch):
    # `mailkeep serve` started from a directory someone else can write to must not run
    # their selectors.py in the delivery process.
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "ran"
    (planted / "selectors.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(planted)

    _run_ready(config, 0)
    assert not marker.exists()


def test_a_delivery_process_that_falls_silent_is_killed_and_started_again(
        config, monkeypatch, server_log):
    # Ready, then never a word again: its event loop is stuck.
    monkeypatch.setattr(agent, "SILENCE_TIMEOUT", 1.0)
    monkeypatch.setattr(agent, "WATCH_INTERVAL", 0.2)
    monkeypatch.setattr(agent, "RESTART_DELAYS", (0.1,))
    script = ("import os, socket, sys, time\n"
              "from mailkeep.queue.channel import encode\n"
              "sock = socket.socket(fileno=int(sys.argv[1]))\n"
              "sock.sendall(encode(('ready', os.getpid())))\n"
              "time.sleep(60)\n")
    _started_twice(config, script, ready_first=True)
    wait_for_text(server_log, 'msg="delivery process stopped answering; killing it"')


def test_a_healthy_delivery_process_keeps_saying_it_is_alive(config, monkeypatch):
    # Longer than its heartbeat interval, and with nothing else to say.
    monkeypatch.setattr(agent, "SILENCE_TIMEOUT", agent.HEARTBEAT_INTERVAL + 1.5)
    monkeypatch.setattr(agent, "WATCH_INTERVAL", 0.2)

    process = _run_ready(config, agent.SILENCE_TIMEOUT + 1.5)
    assert process.starts == 1


def _run_ready(config, seconds: float) -> DeliveryProcess:
    """Start the real delivery process, wait until it is ready, let it run ``seconds``
    more (it must still be ready then), stop it."""
    async def main() -> DeliveryProcess:
        process = DeliveryProcess(config, local=_never_local)
        process.start()
        try:
            await asyncio.wait_for(process.ready.wait(), 30)
            await asyncio.sleep(seconds)
            assert process.ready.is_set()
        finally:
            await process.stop()
        return process

    return asyncio.run(main())


class InlineScheduler:
    def __init__(self, config) -> None:
        self.calls: list[tuple] = [("built", config)]
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        await self._stopped.wait()

    def notify_new(self, entries) -> None:
        self.calls.append(("new", entries))

    def wake(self) -> None:
        self.calls.append(("wake",))

    def update(self, config, pipeline) -> None:
        self.calls.append(("update", config, pipeline))

    async def stop(self) -> None:
        self.calls.append(("stop",))
        self._stopped.set()


def test_without_a_runnable_program_the_server_schedules_itself(config, server_log):
    # E.g. run_as may not execute an interpreter installed under /root.
    async def main() -> None:
        built: list = []

        def inline(cfg):
            built.append(InlineScheduler(cfg))
            return built[-1]

        process = DeliveryProcess(config, local=_never_local, inline=inline,
                                  command=["/nonexistent/python3"])
        process.start()
        await _until(lambda: process.inline_scheduler is not None, what="the fallback")
        process.notify_new(["entry"])
        process.wake()
        process.update("new config", "new pipeline")
        await asyncio.wait_for(process.stop(), 10)
        assert built[0].calls == [("built", config), ("new", ["entry"]), ("wake",),
                                  ("update", "new config", "new pipeline"), ("stop",)]
        assert process.starts == 0 and not process.ready.is_set()

    asyncio.run(main())
    wait_for_text(server_log, "the server sends queued mail itself")
