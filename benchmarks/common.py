"""Shared parts of the benchmark scripts: running Mailkeep and smtp-source, timing, tables.

The benchmarks are scripts, not tests: run them with the project's interpreter, e.g.
``.venv/bin/python benchmarks/smtp_inbound.py``. Process helpers come from
``tests/support/procs.py`` and the reference Postfix from ``tests/support/postfix.py``, so
the benchmarks and the interop tests drive exactly the same harness.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # Scripts run as `python benchmarks/x.py` have only benchmarks/ on the path.
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.procs import (  # noqa: E402  (needs the path set above)
    ProcessError,
    WaitTimeout,
    free_port,
    kill_hard,
    port_is_open,
    run_command,
    start_process,
    stop_process,
    wait_for_port,
    wait_for_smtp_greeting,
    wait_until,
)

__all__ = [
    "DEMO_ACCOUNT",
    "MAILKEEP",
    "REPO_ROOT",
    "SMTP_SOURCE",
    "BenchmarkError",
    "MailkeepServer",
    "ProcessError",
    "WaitTimeout",
    "format_table",
    "free_port",
    "kill_hard",
    "median",
    "port_is_open",
    "run_command",
    "run_smtp_source",
    "start_process",
    "stop_process",
    "wait_for_port",
    "wait_for_smtp_greeting",
    "wait_until",
]

MAILKEEP = REPO_ROOT / ".venv" / "bin" / "mailkeep"
SMTP_SOURCE = "/usr/sbin/smtp-source"
DEMO_ACCOUNT = "demo@localhost"
LOCALSERVE_PASSWORD = "benchpass"
#: The port localserve uses when we cannot choose one (its built-in default).
LOCALSERVE_DEFAULT_SMTP_PORT = 1025
#: Time limits (seconds) for a server to start listening and to stop after SIGTERM.
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 60.0


class BenchmarkError(RuntimeError):
    """The benchmark could not produce a trustworthy figure; the message says why."""


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def require_tools(*paths: str | os.PathLike[str]) -> None:
    """Exit with a clear message if a program the benchmark drives is missing."""
    missing = [os.fspath(p) for p in paths if not os.access(p, os.X_OK)]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: run `make test` once (it installs postfix, whose "
            "package provides smtp-source, and creates the .venv with the mailkeep command)"
        )


def run_smtp_source(
    port: int,
    *,
    messages: int,
    size: int,
    sessions: int,
    recipient: str = DEMO_ACCOUNT,
    sender: str = "sender@bench.test",
    reuse_connections: bool = False,
    timeout: float = 600.0,
) -> float:
    """Send ``messages`` messages of ``size`` payload bytes with Postfix's smtp-source.

    Returns the wall-clock seconds until smtp-source exited. smtp-source aborts on any
    unexpected reply, so a zero exit status means every message got its 250.
    """
    argv = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", sender, "-t", recipient, "-M", "client.bench.test"]
    if reuse_connections:
        argv.append("-d")
    argv.append(f"127.0.0.1:{port}")
    began = time.perf_counter()
    result = run_command(argv, timeout=timeout, check=False)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise BenchmarkError(
            f"smtp-source failed (status {result.returncode}) against 127.0.0.1:{port}: "
            f"{(result.stderr + result.stdout).decode('utf-8', 'replace').strip()[-2000:]}"
        )
    return elapsed


def _open_store(data_dir: Path):  # type: ignore[no-untyped-def]
    """Open Mailkeep's store the way the CLI does (a second process while a server runs)."""
    try:
        from mailkeep.store import open_store
    except ImportError as exc:
        raise BenchmarkError(
            f"cannot read Mailkeep's store: {exc}; run the benchmark with .venv/bin/python"
        ) from exc
    return open_store(data_dir)


class MailkeepServer:
    """``mailkeep localserve --dir DIR --password benchpass`` in a fresh temporary directory.

    Before the first start we write DIR/mailkeep.toml from localserve's own template (which
    localserve then keeps), changing only two things: the SMTP port, so that a benchmark
    never collides with a localserve someone else is running on 1025, and
    ``smtp.max_connections_per_ip``, because every benchmark connection comes from
    127.0.0.1 (Postfix likewise exempts $mynetworks from its per-client limits,
    ``smtpd_client_event_limit_exceptions``).
    """

    def __init__(self, *, keep_dir: bool = False, per_ip_limit: int = 500,
                 extra_config: str = "") -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mailkeep-bench-"))
        self.log_path = self.directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._keep_dir = keep_dir
        self.ports: dict[str, int] = {}
        self.port = self._write_config(per_ip_limit, extra_config)

    def _write_config(self, per_ip_limit: int, extra_config: str = "") -> int:
        try:
            from mailkeep.cli.server_cmds import LOCALSERVE_CONFIG, LOCALSERVE_PORTS
        except ImportError:
            # No template to adapt: let localserve write its defaults (port 1025).
            return LOCALSERVE_DEFAULT_SMTP_PORT
        # Every listener of the template on a free port, so that a running localserve (or a
        # second benchmark) cannot collide with this one.
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(LOCALSERVE_PORTS):
            ports = {name: free_port() for name in LOCALSERVE_PORTS}
        port = ports["smtp"]
        self.ports = ports
        text = LOCALSERVE_CONFIG.format(lmtp_socket=self.directory / "lmtp.sock", **ports)
        text += ("\n# Added by the benchmark: all load comes from 127.0.0.1.\n"
                 f"[smtp]\nmax_connections_per_ip = {per_ip_limit}\n") + extra_config
        (self.directory / "mailkeep.toml").write_text(text)
        return port

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the Mailkeep server is already running")
        if port_is_open(self.port):
            raise BenchmarkError(f"127.0.0.1:{self.port} is already taken by another program")
        self.process = start_process(
            [MAILKEEP, "localserve", "--dir", self.directory, "--password", LOCALSERVE_PASSWORD],
            log_path=self.log_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            # Callers quote the log themselves (log_tail), so it is not passed here.
            wait_for_smtp_greeting(self.port, timeout=SERVER_START_TIMEOUT, process=self.process)
        except (ProcessError, WaitTimeout) as exc:
            self.stop()
            raise BenchmarkError(f"Mailkeep did not start: {exc}") from exc

    def stop(self) -> int | None:
        """SIGTERM (deliveries in flight finish), then wait; SIGKILL only after the timeout."""
        if self.process is None:
            return None
        code = stop_process(self.process, timeout=SERVER_STOP_TIMEOUT, sig=signal.SIGTERM)
        self.process = None
        return code

    def crash(self) -> None:
        """kill -9: no chance to finish anything, as in a power cut of the process."""
        if self.process is not None:
            kill_hard(self.process)
            self.process = None

    def message_count(self, account: str = DEMO_ACCOUNT) -> int:
        store = _open_store(self.data_dir)
        try:
            return int(store.usage(account).messages)
        finally:
            store.close()

    def messages(self, account: str = DEMO_ACCOUNT, mailbox: str = "INBOX") -> list[bytes]:
        store = _open_store(self.data_dir)
        try:
            return [store.read_message(account, mailbox, info.uid)
                    for info in store.list_messages(account, mailbox)]
        finally:
            store.close()

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        if not self._keep_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
