"""`mailkeep dkim keygen|list|rotate|remove|dns`, run in-process with a temporary
configuration. The outbound queue is replaced by a fake that says which selectors queued
messages are signed with (``QueueStore.selectors_in_use()``)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import ClassVar

import pytest

from mailkeep.cli import main as cli_main
from mailkeep.dkim.keys import DkimKeys

CONFIG = """\
hostname = "mail.example.com"
data_dir = "data"

[domains."example.com"]

[domains."example.org"]
"""


@pytest.fixture(autouse=True)
def _commands(monkeypatch: pytest.MonkeyPatch) -> None:
    available = [m for m in cli_main.COMMAND_MODULES if importlib.util.find_spec(m) is not None]
    if "mailkeep.cli.dkim_cmd" not in available:
        available.append("mailkeep.cli.dkim_cmd")
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", available)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(CONFIG)
    monkeypatch.setenv("MAILKEEP_CONFIG", str(path))
    return tmp_path / "data"


class FakeQueue:
    """What the queue answers; ``error`` makes opening it fail."""

    in_use: ClassVar[set[str]] = set()
    error: ClassVar[Exception | None] = None
    opened: ClassVar[list[Path]] = []
    closed: ClassVar[int] = 0

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> FakeQueue:
        if cls.error is not None:
            raise cls.error
        cls.opened.append(Path(data_dir))
        return cls()

    def selectors_in_use(self) -> set[str]:
        return set(self.in_use)

    def close(self) -> None:
        FakeQueue.closed += 1


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> type[FakeQueue]:
    module = ModuleType("mailkeep.queue.store")
    module.QueueStore = FakeQueue  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mailkeep.queue.store", module)
    if importlib.util.find_spec("mailkeep.queue") is None:
        monkeypatch.setitem(sys.modules, "mailkeep.queue", ModuleType("mailkeep.queue"))
    monkeypatch.setattr(FakeQueue, "in_use", set())
    monkeypatch.setattr(FakeQueue, "error", None)
    monkeypatch.setattr(FakeQueue, "opened", [])
    monkeypatch.setattr(FakeQueue, "closed", 0)
    (data_dir / "queue").mkdir(parents=True)  # something was queued once
    return FakeQueue


def run(*argv: str) -> int:
    return cli_main.main(list(argv))


def selectors(data_dir: Path, domain: str = "example.com") -> list[tuple[str, str]]:
    return [(s.name, s.status) for s in DkimKeys.for_data_dir(data_dir).selectors(domain)]


def test_keygen_creates_keys_and_prints_records(data_dir: Path, capsys: pytest.CaptureFixture[str]):
    assert run("dkim", "keygen", "example.com", "--rsa-bits", "1024", "--selector", "s1") == 0
    out = capsys.readouterr().out
    assert "created DKIM keys for example.com: s1r (rsa 1024), s1e (ed25519)" in out
    assert re.search(r"^  s1r\._domainkey\.example\.com  TXT  v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]+$",
                     out, re.M)
    assert re.search(r"^  s1e\._domainkey\.example\.com  TXT  v=DKIM1; k=ed25519; p=[A-Za-z0-9+/=]{44}$",
                     out, re.M)
    assert 's1r._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=' in out
    assert selectors(data_dir) == [("s1r", "active"), ("s1e", "active")]


def test_keygen_2048_prints_split_zone_record(data_dir: Path, capsys: pytest.CaptureFixture[str]):
    assert run("dkim", "keygen", "example.com", "--selector", "big") == 0
    out = capsys.readouterr().out
    zone = out[out.index("bigr._domainkey.example.com. IN TXT ("):]
    strings = re.findall(r'"([^"]*)"', zone.split(")")[0])
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    record = dict(DkimKeys.for_data_dir(data_dir).dns_records("example.com"))
    assert "".join(strings) == record["bigr._domainkey.example.com"]


def test_keygen_refuses_unknown_domain_unless_forced(data_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]):
    assert run("dkim", "keygen", "other.net", "--rsa-bits", "1024") == 1
    assert "other.net is not a domain of this server" in capsys.readouterr().err
    assert not (data_dir / "dkim" / "other.net").exists()
    assert run("dkim", "keygen", "other.net", "--rsa-bits", "1024", "--force") == 0
    assert len(selectors(data_dir, "other.net")) == 2


def test_keygen_refuses_second_keygen_and_bad_input(data_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]):
    assert run("dkim", "keygen", "example.com", "--rsa-bits", "1024") == 0
    capsys.readouterr()
    assert run("dkim", "keygen", "example.com", "--rsa-bits", "1024") == 1
    assert "use 'mailkeep dkim rotate example.com'" in capsys.readouterr().err
    assert run("dkim", "keygen", "example.org", "--rsa-bits", "1000") == 1
    assert "1000 is not a supported RSA key size" in capsys.readouterr().err
    assert run("dkim", "keygen", "exa mple.org") == 1
    assert "not a valid domain" in capsys.readouterr().err
    assert run("dkim", "keygen", "example.org", "--selector", "bad_name") == 1
    assert "'bad_namer' is not a valid selector" in capsys.readouterr().err


def test_rotate_prints_new_records_and_old_ones_to_keep(data_dir: Path, queue: type[FakeQueue],
                                                        capsys: pytest.CaptureFixture[str]):
    assert run("dkim", "keygen", "example.com", "--rsa-bits", "1024", "--selector", "old") == 0
    queue.in_use = {"example.com:oldr"}
    capsys.readouterr()
    assert run("dkim", "rotate", "example.com", "--selector", "new") == 0
    out = capsys.readouterr().out
    assert "signing with newr (rsa 1024), newe (ed25519) from now on" in out
    assert "retired oldr (rsa 1024), olde (ed25519)" in out
    assert "newr._domainkey.example.com  TXT  v=DKIM1; k=rsa; p=" in out
    assert "oldr._domainkey.example.com  TXT" not in out  # not offered for publishing again
    assert "oldr._domainkey.example.com  (still needed by queued mail)" in out
    assert "olde._domainkey.example.com  (not needed by queued mail now)" in out
    assert selectors(data_dir) == [("oldr", "retired"), ("olde", "retired"),
                                   ("newr", "active"), ("newe", "active")]
    assert queue.closed == len(queue.opened) == 1


def test_list_says_which_retired_records_are_still_needed(data_dir: Path, queue: type[FakeQueue],
                                                          capsys: pytest.CaptureFixture[str]):
    run("dkim", "keygen", "example.com", "--rsa-bits", "1024", "--selector", "old")
    run("dkim", "rotate", "example.com", "--selector", "new")
    queue.in_use = {"example.com:olde", "other.net:x"}
    capsys.readouterr()
    assert run("dkim", "list") == 0
    rows = [line.split("  ") for line in capsys.readouterr().out.splitlines()]
    table = {(r[0], r[1].strip()): [c.strip() for c in r if c.strip()] for r in rows[1:]}
    assert table[("example.com", "oldr")][2:4] == ["rsa 1024", "retired"]
    assert table[("example.com", "oldr")][-1] == "can be removed"
    assert table[("example.com", "olde")][-1] == "keep: queued mail is signed with it"
    assert table[("example.com", "newr")][-1] == "publish"
    assert table[("example.org", "-")][-1] == "none (mailkeep dkim keygen example.org)"
    assert run("dkim", "list", "example.org") == 1
    assert "example.org has no DKIM keys" in capsys.readouterr().err


def test_remove_refuses_active_and_needed_selectors(data_dir: Path, queue: type[FakeQueue],
                                                    capsys: pytest.CaptureFixture[str]):
    run("dkim", "keygen", "example.com", "--rsa-bits", "1024", "--selector", "old")
    run("dkim", "rotate", "example.com", "--selector", "new")
    queue.in_use = {"example.com:oldr"}
    capsys.readouterr()
    assert run("dkim", "remove", "example.com", "newr") == 1
    assert "newr of example.com is active" in capsys.readouterr().err
    assert run("dkim", "remove", "example.com", "oldr") == 1
    assert "oldr of example.com is still needed: queued mail is signed" in capsys.readouterr().err
    assert run("dkim", "remove", "example.com", "nosuch") == 1
    assert "example.com has no selector 'nosuch'" in capsys.readouterr().err
    assert run("dkim", "remove", "example.com", "olde") == 0
    assert ("delete its DNS record olde._domainkey.example.com (TXT) too"
            in capsys.readouterr().out)
    assert run("dkim", "remove", "example.com", "oldr", "--force") == 0
    assert selectors(data_dir) == [("newr", "active"), ("newe", "active")]
    assert not list((data_dir / "dkim" / "example.com").glob("old*"))


def test_unreadable_queue_is_reported_not_guessed(data_dir: Path, queue: type[FakeQueue],
                                                  capsys: pytest.CaptureFixture[str]):
    run("dkim", "keygen", "example.com", "--rsa-bits", "1024", "--selector", "old")
    run("dkim", "rotate", "example.com", "--selector", "new")
    queue.error = OSError("queue.db is locked")
    capsys.readouterr()
    assert run("dkim", "list", "example.com") == 0
    out = capsys.readouterr().out
    assert "keep: queue unknown" in out
    assert "warning: cannot tell which retired selectors queued mail needs: OSError: queue.db is locked" in out
    assert run("dkim", "remove", "example.com", "oldr") == 1
    assert "cannot tell whether queued mail needs selector oldr (OSError" in capsys.readouterr().err
    assert run("dkim", "remove", "example.com", "oldr", "--force") == 0


def test_no_queue_yet_means_nothing_is_needed(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]):
    # No data_dir/queue: nothing was ever queued, and the queue is not created by asking.
    broken = ModuleType("mailkeep.queue.store")
    broken.QueueStore = SimpleNamespace(for_data_dir=lambda d: pytest.fail("queue opened"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mailkeep.queue.store", broken)
    run("dkim", "keygen", "example.com", "--rsa-bits", "1024", "--selector", "old")
    run("dkim", "rotate", "example.com", "--selector", "new")
    assert run("dkim", "remove", "example.com", "oldr") == 0
    assert not (data_dir / "queue").exists()


def test_dns_prints_active_and_retired_records(data_dir: Path, queue: type[FakeQueue],
                                               capsys: pytest.CaptureFixture[str]):
    run("dkim", "keygen", "example.com", "--rsa-bits", "1024", "--selector", "old")
    run("dkim", "rotate", "example.com", "--selector", "new")
    capsys.readouterr()
    assert run("dkim", "dns", "example.com") == 0
    out = capsys.readouterr().out
    assert out.startswith("DNS TXT records for example.com (retired, keep until removed: oldr, olde):")
    for name in ("newr", "newe", "oldr", "olde"):
        assert f"  {name}._domainkey.example.com  TXT  v=DKIM1;" in out
        assert f"{name}._domainkey.example.com. IN TXT" in out
    assert run("dkim", "dns", "example.org") == 1
    assert "example.org has no DKIM keys" in capsys.readouterr().err


def test_bad_configuration_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "broken.toml"
    path.write_text('hostname = "mail.example.com"\ndata_dir = "data"\n[smtpp]\n')
    assert run("dkim", "list", "-c", str(path)) == 1
    assert "smtpp" in capsys.readouterr().err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        run("dkim", "keygen", "--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "mailkeep dkim keygen example.com --selector mail2026 --rsa-bits 3072" in out
    assert run("dkim") == 2


def test_real_queue_keeps_a_selector_until_its_message_is_gone(
        data_dir: Path, capsys: pytest.CaptureFixture[str]):
    # The contract with the queue, without a fake: a queued message records the
    # "domain:selector" strings of its signatures, exactly as SigningKey names them.
    from mailkeep.delivery.pipeline import new_message_id
    from mailkeep.queue.store import NewMessage, QueuedRecipient, QueueStore

    run("dkim", "keygen", "example.com", "--rsa-bits", "1024", "--selector", "old")
    keys = DkimKeys.for_data_dir(data_dir).signing_keys("example.com")
    run("dkim", "rotate", "example.com", "--selector", "new")
    queue_id = new_message_id()
    store = QueueStore.for_data_dir(data_dir, fsync=False)
    try:
        store.enqueue_sync([NewMessage(
            queue_id=queue_id, sender="alice@example.com",
            recipients=[QueuedRecipient("bob@example.org")], prefix=b"",
            source=b"From: alice@example.com\r\n\r\nhi\r\n",
            dkim_selectors=tuple(f"{k.domain}:{k.selector}" for k in keys))])
    finally:
        store.close()
    capsys.readouterr()
    assert run("dkim", "remove", "example.com", "oldr") == 1
    assert "oldr of example.com is still needed" in capsys.readouterr().err
    store = QueueStore.for_data_dir(data_dir, fsync=False)
    try:
        assert store.delete([queue_id]) == 1
    finally:
        store.close()
    assert run("dkim", "remove", "example.com", "oldr") == 0
    assert run("dkim", "remove", "example.com", "olde") == 0
