"""The throwaway Postfix harness works: mail sent to it with real clients lands where expected.

Every other test and benchmark that uses Postfix as a peer relies on this harness, so these
tests check what a user of it notices: messages sent with smtplib and swaks appear in the
Maildir, the instance refuses to relay or to accept unknown users, the LMTP and smart-host
modes really hand mail on, and nothing (process, port, directory) is left behind.

Postfix missing is a failure with instructions (run `make test`), never a skip.
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.postfix import (
    PostfixUnavailable,
    ThrowawayPostfix,
    bracketed_nexthop,
    parse_postconf_output,
    require_postfix,
)
from tests.support.procs import (
    free_port,
    pid_is_alive,
    port_is_open,
    run_command,
    start_process,
    stop_process,
    wait_for_port,
    wait_until,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

DOMAIN = "bench.test"
USER = "demo"
ADDRESS = f"{USER}@{DOMAIN}"
SWAKS = "/usr/bin/swaks"
SMTP_SINK = "/usr/sbin/smtp-sink"


def _require_tools() -> None:
    try:
        require_postfix()
    except PostfixUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    for tool in (SWAKS, SMTP_SINK):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make test`, which installs postfix "
                        "and swaks", pytrace=False)


@pytest.fixture(scope="module")
def maildir_postfix() -> Iterator[ThrowawayPostfix]:
    _require_tools()
    with ThrowawayPostfix.virtual_maildir(DOMAIN, USER) as instance:
        yield instance


def _message(subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "sender@client.test"
    message["To"] = ADDRESS
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@client.test>"
    message.set_content(body)
    return message


def _delivered_containing(instance: ThrowawayPostfix, marker: str) -> list[bytes]:
    return [m for m in instance.maildir_messages() if marker.encode() in m]


def test_smtplib_messages_land_in_maildir(maildir_postfix: ThrowawayPostfix) -> None:
    run = uuid.uuid4().hex[:8]
    before = maildir_postfix.maildir_count()
    with smtplib.SMTP("127.0.0.1", maildir_postfix.port, timeout=10) as client:
        for n in range(3):
            refused = client.send_message(_message(f"smtplib {run} #{n}", f"body {run} {n}\n"))
            assert refused == {}

    maildir_postfix.wait_for_maildir_count(before + 3, timeout=30)
    delivered = _delivered_containing(maildir_postfix, run)
    assert len(delivered) == 3
    for n in range(3):
        (message,) = [m for m in delivered if f"smtplib {run} #{n}".encode() in m]
        assert f"body {run} {n}".encode() in message
        # virtual(8) records the envelope, as a real mailbox would show it.
        assert message.startswith(b"Return-Path: <sender@client.test>")
        assert f"Delivered-To: {ADDRESS}".encode() in message
    maildir_postfix.wait_for_queue_empty(timeout=30)


def test_swaks_messages_land_in_maildir(maildir_postfix: ThrowawayPostfix) -> None:
    run = uuid.uuid4().hex[:8]
    before = maildir_postfix.maildir_count()
    for n in range(3):
        result = run_command(
            [SWAKS, "--server", f"127.0.0.1:{maildir_postfix.port}", "--from",
             "swaks@client.test", "--to", ADDRESS, "--header", f"Subject: swaks {run} #{n}",
             "--body", f"swaks body {run} {n}", "--timeout", "10"],
            timeout=30,
        )
        assert b"250 2.0.0 Ok: queued" in result.stdout

    maildir_postfix.wait_for_maildir_count(before + 3, timeout=30)
    delivered = _delivered_containing(maildir_postfix, run)
    assert sorted(m.count(b"Subject: swaks") for m in delivered) == [1, 1, 1]
    assert all(f"swaks body {run}".encode() in m for m in delivered)


def test_unknown_users_and_relaying_are_refused(maildir_postfix: ThrowawayPostfix) -> None:
    with smtplib.SMTP("127.0.0.1", maildir_postfix.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("sender@client.test")[0] == 250
        code, text = client.rcpt(f"nobody-here@{DOMAIN}")
        assert code == 550 and b"User unknown" in text
        # Secure by default even towards localhost: no open relay to outside domains.
        code, text = client.rcpt("victim@example.org")
        assert code == 554 and b"Relay access denied" in text


def test_log_and_configuration_belong_to_the_private_instance(
    maildir_postfix: ThrowawayPostfix,
) -> None:
    # postlogd writes asynchronously: the master's start-up line may still be in flight.
    wait_until(lambda: f"configuration {maildir_postfix.config_dir}" in maildir_postfix.log_text(),
               timeout=10, description="the master's start-up line in the private log")
    values = maildir_postfix.postconf("inet_interfaces", "mydestination", "queue_directory")
    assert values == {
        "inet_interfaces": "127.0.0.1",
        "mydestination": "",
        "queue_directory": str(maildir_postfix.queue_dir),
    }
    # The only listener is ours: nothing on port 25 came from this instance.
    master_cf = (maildir_postfix.config_dir / "master.cf").read_text()
    assert f"127.0.0.1:{maildir_postfix.port} inet" in master_cf
    assert "\nsmtp inet" not in master_cf


def test_stop_leaves_nothing_behind() -> None:
    _require_tools()
    instance = ThrowawayPostfix.virtual_maildir(DOMAIN, USER)
    with instance:
        root, port, pid = instance.root, instance.port, instance.master_pid
        assert root is not None and pid is not None and pid_is_alive(pid)
        assert port_is_open(port)
    assert not pid_is_alive(pid)
    assert not port_is_open(port)
    assert not root.exists()


@pytest.fixture
def sink_dir() -> Iterator[Path]:
    """A directory smtp-sink can write to after dropping to ``nobody``.

    Not pytest's tmp_path: its parent directories are private to root, and the sink (like
    Postfix's delivery agents) runs unprivileged.
    """
    with tempfile.TemporaryDirectory(prefix="mailkeep-sink-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def _start_sink(directory: Path, *, lmtp: bool) -> tuple[int, Path, subprocess.Popen[bytes]]:
    """Start smtp-sink (LMTP or SMTP) saving each message it accepts as a file."""
    dumps = directory / "dumps"
    dumps.mkdir()
    shutil.chown(dumps, "nobody")
    port = free_port()
    argv = [SMTP_SINK, *(["-L"] if lmtp else []), "-u", "nobody", "-d", f"{dumps}/msg.",
            f"127.0.0.1:{port}", "10"]
    log = directory / "sink.log"
    sink = start_process(argv, log_path=log)
    wait_for_port(port, timeout=10, process=sink, log_path=log)
    return port, dumps, sink


def _dumped(dumps: Path, marker: str) -> list[bytes]:
    return [p.read_bytes() for p in dumps.iterdir() if marker.encode() in p.read_bytes()]


def test_relay_lmtp_hands_mail_to_the_lmtp_server(sink_dir: Path) -> None:
    _require_tools()
    port, dumps, sink = _start_sink(sink_dir, lmtp=True)
    run = uuid.uuid4().hex[:8]
    try:
        with ThrowawayPostfix.relay_lmtp("store.test", f"inet:127.0.0.1:{port}") as instance:
            with smtplib.SMTP("127.0.0.1", instance.port, timeout=10) as client:
                client.sendmail("sender@client.test", ["anyone@store.test"],
                                f"Subject: lmtp {run}\r\n\r\nhello\r\n")
            wait_until(lambda: _dumped(dumps, run), timeout=30,
                       description="the LMTP server to receive the message")
            instance.wait_for_queue_empty(timeout=30)
            assert f"relay=127.0.0.1[127.0.0.1]:{port}" in instance.log_text()
            assert "status=sent" in instance.log_text()
    finally:
        stop_process(sink)


def test_relayhost_sends_everything_to_the_smart_host(sink_dir: Path) -> None:
    _require_tools()
    port, dumps, sink = _start_sink(sink_dir, lmtp=False)
    run = uuid.uuid4().hex[:8]
    try:
        with ThrowawayPostfix.relayhost(f"127.0.0.1:{port}") as instance:
            with smtplib.SMTP("127.0.0.1", instance.port, timeout=10) as client:
                client.sendmail("sender@client.test", ["someone@example.org"],
                                f"Subject: outbound {run}\r\n\r\nhello\r\n")
            wait_until(lambda: _dumped(dumps, run), timeout=30,
                       description="the smart host to receive the message")
            instance.wait_for_queue_empty(timeout=30)
            (dump,) = _dumped(dumps, run)
            assert b"someone@example.org" in dump
    finally:
        stop_process(sink)


# ----------------------------------------------------------------------------------------
# The harness's own small parsers (no Postfix needed).

_hostnames = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,30}[A-Za-z0-9])?", fullmatch=True)
_ports = st.integers(min_value=1, max_value=65535)


@settings(max_examples=200, deadline=None)
@given(host=_hostnames, port=_ports)
def test_nexthop_brackets_host_and_keeps_port(host: str, port: int) -> None:
    assert bracketed_nexthop(f"{host}:{port}") == f"[{host}]:{port}"
    assert bracketed_nexthop(host) == f"[{host}]"
    # Already bracketed (how IPv6 must be written) passes through unchanged.
    assert bracketed_nexthop(f"[{host}]:{port}") == f"[{host}]:{port}"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_nexthop_output_is_always_one_safe_main_cf_token(text: str) -> None:
    try:
        result = bracketed_nexthop(text)
    except ValueError:
        return
    assert result.startswith("[")
    assert not any(ch.isspace() or ch in ",=" for ch in result)
    assert bracketed_nexthop(result) == result


_parameter_names = st.from_regex(r"[a-z][a-z0-9_]{0,40}", fullmatch=True)
_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60
).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(entries=st.dictionaries(_parameter_names, _values, max_size=8))
def test_postconf_output_round_trips(entries: dict[str, str]) -> None:
    text = "".join(f"{name} = {value}".rstrip() + "\n" for name, value in entries.items())
    assert parse_postconf_output(text) == entries


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_postconf_parser_never_fails_and_names_have_no_equals(text: str) -> None:
    for name in parse_postconf_output(text):
        assert "=" not in name and name == name.strip() and name


def test_missing_postfix_is_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.support.postfix as harness

    monkeypatch.setattr(harness, "POSTFIX", "/nonexistent/postfix")
    with pytest.raises(PostfixUnavailable, match=r"make test"):
        require_postfix()
    # The harness refuses to start rather than half-starting something.
    with pytest.raises(PostfixUnavailable):
        ThrowawayPostfix.virtual_maildir(DOMAIN, USER).start()


def test_unsafe_names_are_refused_before_anything_is_written() -> None:
    with pytest.raises(ValueError):
        ThrowawayPostfix.virtual_maildir(DOMAIN, "../../etc")
    with pytest.raises(ValueError):
        ThrowawayPostfix.relay_lmtp("store.test", "inet:127.0.0.1:24\nrelayhost = evil")
    with pytest.raises(ValueError):
        ThrowawayPostfix.relayhost("127.0.0.1:25 evil")
