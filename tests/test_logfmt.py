"""Log lines: logfmt quoting, the buffered writer the server uses, and logrotate."""

from __future__ import annotations

import logging
import os

import pytest
from tests.support.logs import reset_logging, wait_for_text

from mailkeep import logfmt
from mailkeep.logfmt import LineWriter, log, setup_logging


@pytest.fixture
def restore_logging():
    yield
    reset_logging()


def test_buffered_lines_match_the_formatter_and_keep_their_order(tmp_path, restore_logging):
    path = tmp_path / "server.log"
    setup_logging("logfmt", "debug", str(path), buffered=True)
    logger = logging.getLogger("mailkeep.queue")
    log(logger, "delivery", id="ABC", to="a b@example.test", code=250, tls=None, ok=True,
        name="reserved field")
    logger.info("through logging", extra={"n": 1})
    log(logger, "warned", logging.WARNING, reason='say "no"\nnow')
    content = path.read_text()  # the warning was written at once, with what came before
    lines = content.splitlines()
    assert [line.split(" msg=")[1].split(" ")[0] for line in lines] == [
        "delivery", '"through', "warned"]
    assert lines[0].split(" ", 1)[1] == ('level=info subsystem=queue msg=delivery id=ABC '
                                         'to="a b@example.test" code=250 tls="" ok=true '
                                         'name_="reserved field"')
    assert lines[2].endswith('reason="say \\"no\\"\\nnow"')


def test_info_lines_arrive_within_the_flush_interval(tmp_path, restore_logging):
    path = tmp_path / "server.log"
    setup_logging("logfmt", "info", str(path), buffered=True)
    log(logging.getLogger("mailkeep.smtp"), "message", id="X1")
    wait_for_text(path, "msg=message id=X1", timeout=logfmt.FLUSH_INTERVAL * 20)


def test_logrotate_moving_the_file_is_followed(tmp_path):
    path = tmp_path / "server.log"
    writer = LineWriter(str(path))
    try:
        writer.write("first", urgent=True)
        os.rename(path, tmp_path / "server.log.1")
        writer.write("second", urgent=True)
        assert (tmp_path / "server.log.1").read_text() == "first\n"
        assert path.read_text() == "second\n"
    finally:
        writer.close()


def test_close_writes_everything_pending(tmp_path):
    path = tmp_path / "server.log"
    writer = LineWriter(str(path))
    for n in range(1000):
        writer.write(f"line {n}")
    writer.close()
    assert path.read_text().splitlines() == [f"line {n}" for n in range(1000)]


@pytest.mark.parametrize("fmt,buffered", [("logfmt", True), ("logfmt", False),
                                          ("json", True)])
def test_records_forwarded_from_another_process_are_written_as_if_logged_here(
        tmp_path, restore_logging, fmt, buffered):
    # The delivery process forwards its records (logfmt.forward_logging); the server writes
    # them (logfmt.emit_record): same fields, the time they were made, errors kept.
    forwarded: list = []
    logfmt.forward_logging(forwarded.append, "info")
    logger = logging.getLogger("mailkeep.queue")
    log(logger, "delivery", id="ABC", to="a b@example.test", code=250, name="reserved")
    log(logger, "not forwarded", logging.DEBUG)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("attempt failed", extra={"id": "DEF"})
    assert [r[3] for r in forwarded] == ["delivery", "attempt failed"]
    made = forwarded[0][0]
    path = tmp_path / "server.log"
    setup_logging(fmt, "info", str(path), buffered=buffered)
    for record in forwarded:
        logfmt.emit_record(record)
    text = wait_for_text(path, "attempt failed")
    lines = text.splitlines()
    assert len(lines) == 2
    if fmt == "json":
        import json

        first, second = (json.loads(line) for line in lines)
        assert first["msg"] == "delivery" and first["to"] == "a b@example.test"
        assert first["subsystem"] == "queue" and first["code"] == 250
        assert first["ts"] == logfmt._timestamp(made)
        assert "ValueError: boom" in second["error"] and second["id"] == "DEF"
    else:
        assert lines[0].split(" ", 1)[1] == ('level=info subsystem=queue msg=delivery id=ABC '
                                             'to="a b@example.test" code=250 '
                                             'name_=reserved')
        assert lines[1].startswith(f"ts={logfmt._timestamp(forwarded[1][0])} level=error")
        assert "ValueError: boom" in lines[1] and "id=DEF" in lines[1]
