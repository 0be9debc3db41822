"""Carrying out the plans: the configuration loads, passwords verify, the mail arrives with
its flags in the right mailboxes; reruns converge, interruptions resume without
duplicates, and bad existing state is refused before anything is written."""

from __future__ import annotations

import email
import os
import shutil
import stat
from pathlib import Path

import pytest
from tests.migrate.conftest import PASSWORDS, SEEDS, Seed

from mailkeep.auth.passwd_file import PasswdFile
from mailkeep.auth.passwords import verify_password
from mailkeep.config import load_config
from mailkeep.migrate import apply as apply_module
from mailkeep.migrate.apply import STATE_FILE, ApplyOptions, ConflictError, apply, prepare
from mailkeep.migrate.plan import Plan, build_plan
from mailkeep.migrate.sources import MigrateError
from mailkeep.store import open_store


def migrate(seed: Seed, target: Path, *, force: bool = False,
            messages: list[str] | None = None) -> tuple[Plan, Path]:
    """Plan and apply ``seed`` into ``target``/mailkeep.toml with data in ``target``/data."""
    plan = build_plan(seed.sources())
    options = ApplyOptions(config_path=target / "mailkeep.toml", data_dir=target / "data",
                           force=force, progress=False)
    prepared = prepare(plan, options)
    say = messages.append if messages is not None else (lambda text: None)
    apply(plan, prepared, options, say=say)
    return plan, target / "mailkeep.toml"


def mailbox_contents(data_dir: Path, account: str) -> dict[str, dict[str, set[str]]]:
    """Mailbox -> {Subject: flags} as the store has them."""
    store = open_store(data_dir)
    try:
        result: dict[str, dict[str, set[str]]] = {}
        for box in store.list_mailboxes(account):
            messages = {}
            for info in store.list_messages(account, box.name):
                parsed = email.message_from_bytes(store.read_message(account, box.name, info.uid))
                messages[str(parsed["Subject"])] = set(info.flags)
            result[box.name] = messages
        return result
    finally:
        store.close()


def counts(data_dir: Path, account: str) -> dict[str, int]:
    return {name: len(messages) for name, messages in mailbox_contents(data_dir, account).items()
            if messages}


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` and its content (store files by size only)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.endswith(".lock"):
            found[str(path.relative_to(directory))] = (
                path.read_bytes() if "store" not in path.parts else b"%d" % path.stat().st_size)
    return found


# --- what a migration produces ----------------------------------------------------------------


def test_migrated_configuration_loads_and_passwords_verify(seed: Seed, tmp_path: Path) -> None:
    plan, config_path = migrate(seed, tmp_path)
    config = load_config(config_path)
    assert set(config.accounts) == set(plan.accounts)
    assert set(config.aliases) == set(plan.aliases)
    passwd = PasswdFile(config.passwd_file)
    assert stat.S_IMODE(os.stat(config.passwd_file).st_mode) == 0o600
    for address, account in plan.accounts.items():
        entry = passwd.get(address)
        if account.password_hash is None:
            assert entry is None
            continue
        assert entry is not None and entry.hash == account.password_hash
        assert verify_password(entry.hash, PASSWORDS[address]), address
        assert not verify_password(entry.hash, PASSWORDS[address] + "x"), address


def test_messages_arrive_with_their_flags(seed: Seed, tmp_path: Path) -> None:
    migrate(seed, tmp_path)
    for account, expected in seed.mail.items():
        assert counts(tmp_path / "data", account) == expected, account


def test_seed000_flags_keywords_and_special_use(tmp_path: Path) -> None:
    migrate(SEEDS["seed000"], tmp_path)
    contents = mailbox_contents(tmp_path / "data", "rolf@example.com")
    assert contents["INBOX"] == {
        "Seen in the inbox": {"\\Seen"},
        "Flagged and answered": {"\\Flagged", "\\Answered", "\\Seen"},
        "With a keyword": {"\\Seen", "$Label1"},
        "Unread, to a personalized address": set()}
    assert contents["Deleted Messages"] == {"Deleted": {"\\Seen", "\\Deleted"}}
    assert contents["Drafts"] == {"Draft": {"\\Draft", "\\Seen"}}
    store = open_store(tmp_path / "data")
    try:
        uses = {box.name: box.special_use for box in store.list_mailboxes("rolf@example.com")}
        # The old names of the special-use folders are kept (clients were set up with them),
        # and carry the special use; Mailkeep's default names are not created beside them.
        assert uses["Sent Messages"] == "\\Sent"
        assert uses["Deleted Messages"] == "\\Trash"
        assert "Sent" not in uses and "Trash" not in uses
        assert "Sent Messages" in store.list_subscriptions("rolf@example.com")
    finally:
        store.close()


def test_seed000_relay_secret_and_policy_tables(tmp_path: Path) -> None:
    migrate(SEEDS["seed000"], tmp_path)
    secret = tmp_path / "relay-maildomainhoster.secret"
    assert secret.read_text() == "plaintext-password\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    config = load_config(tmp_path / "mailkeep.toml")
    relay = config.delivery.relays["maildomainhoster"]
    assert (relay.host, relay.port, relay.mx_lookup, relay.username, relay.password_file) == (
        "smtp.maildomainhoster.net", 587, False, "admin_user@example.com", secret)
    assert config.delivery.relayhost == "maildomainhoster"
    source = SEEDS["seed000"].root() / "usr/local/etc/postfix/header_checks.pcre"
    assert (tmp_path / "postfix-tables/header_checks.pcre").read_bytes() == source.read_bytes()
    assert "header_checks pcre:postfix-tables/header_checks.pcre" in config.policy.rules
    domain = config.domains["example.com"]
    assert domain.catch_all == "rolf@example.com" and domain.personalized_catch_all
    assert "adobe@example.com" in domain.burned
    assert config.accounts["relay1@example.com"].relay_only
    assert config.auth.cram_md5


def test_seed004_send_modes_senders_and_quota(tmp_path: Path) -> None:
    migrate(SEEDS["seed004"], tmp_path)
    config = load_config(tmp_path / "mailkeep.toml")
    assert config.accounts["brian@example.net"].send == "hold"
    assert config.accounts["notbrian@example.net"].send == "block"
    assert config.accounts["brian@example.net"].quota == 1024 ** 3
    assert config.submission.senders["info@example.net"] == (
        "brian@example.net", "notbrian@example.net")
    assert config.policy.quota_grace == pytest.approx(0.10)


# --- reruns and interruptions -----------------------------------------------------------------


def test_a_rerun_changes_nothing(seed: Seed, tmp_path: Path) -> None:
    migrate(seed, tmp_path)
    before = snapshot(tmp_path)
    messages: list[str] = []
    migrate(seed, tmp_path, messages=messages)
    after = snapshot(tmp_path)
    state = after.pop(f"data/{STATE_FILE}")
    before.pop(f"data/{STATE_FILE}")
    assert b'"status": "complete"' in state
    store_files = {k for k in before if k.startswith("data/store/")}
    assert {k: v for k, v in after.items() if k not in store_files and "store" not in k} == \
        {k: v for k, v in before.items() if k not in store_files}
    assert any("already holds everything; unchanged" in m for m in messages)
    for account, expected in seed.mail.items():
        assert counts(tmp_path / "data", account) == expected


def test_an_interrupted_migration_resumes_without_duplicates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = SEEDS["seed000"]
    real_import = apply_module.import_maildir
    calls: list[str] = []

    async def crash_on_second_account(store: object, account: str, *args: object,
                                      **kwargs: object) -> object:
        calls.append(account)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second account is imported
        return await real_import(store, account, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(apply_module, "import_maildir", crash_on_second_account)
    with pytest.raises(KeyboardInterrupt):
        migrate(seed, tmp_path)
    assert b'"status": "importing"' in (tmp_path / "data" / STATE_FILE).read_bytes()
    assert counts(tmp_path / "data", "rolf@example.com") == seed.mail["rolf@example.com"]
    assert counts(tmp_path / "data", "user1@example.com") == {}
    monkeypatch.setattr(apply_module, "import_maildir", real_import)
    messages: list[str] = []
    migrate(seed, tmp_path, messages=messages)
    assert any("earlier migration was interrupted" in m for m in messages)
    for account, expected in seed.mail.items():
        assert counts(tmp_path / "data", account) == expected
    assert b'"status": "complete"' in (tmp_path / "data" / STATE_FILE).read_bytes()


def test_a_crash_inside_a_large_folder_resumes_without_duplicates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough messages that some batches are committed before the crash."""
    seed = SEEDS["seed000"]
    shutil.copytree(seed.root(), tmp_path / seed.name)
    inbox = seed.root(tmp_path) / "var/mail/users/user1@example.com/cur"
    total = 450
    for n in range(total):
        (inbox / f"{1600000000 + n}.M{n}P9.host:2,S").write_text(
            f"From: a@example.org\nSubject: bulk {n}\n\nBody {n}\n")
    from mailkeep.store import maildir as maildir_module

    real_read = maildir_module._read_item
    reads = 0

    def crash_late(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        if reads == 430:  # rolf's 11, then user1: two batches of 200 are sent by then
            raise RuntimeError("simulated crash")
        return real_read(*args, **kwargs)

    monkeypatch.setattr(maildir_module, "_read_item", crash_late)
    sources = seed.sources(tmp_path)
    options = ApplyOptions(config_path=tmp_path / "mailkeep.toml", data_dir=tmp_path / "data",
                           progress=False)
    plan = build_plan(sources)
    with pytest.raises(RuntimeError, match="simulated crash"):
        apply(plan, prepare(plan, options), options, say=lambda text: None)
    partial = counts(tmp_path / "data", "user1@example.com").get("INBOX", 0)
    assert 0 < partial < total + 2  # some batches were committed before the crash
    monkeypatch.setattr(maildir_module, "_read_item", real_read)
    plan = build_plan(sources)
    apply(plan, prepare(plan, options), options, say=lambda text: None)
    contents = mailbox_contents(tmp_path / "data", "user1@example.com")["INBOX"]
    assert len(contents) == total + 2  # the bulk messages plus the fixture's two
    store = open_store(tmp_path / "data")
    try:
        assert len(store.list_messages("user1@example.com", "INBOX")) == total + 2
    finally:
        store.close()


# --- existing configurations ------------------------------------------------------------------


EXISTING = """\
# my own settings, kept by the migration
hostname = "mail.example.com"
data_dir = "data"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:2525"

[domains."example.com"]

[accounts."rolf@example.com"]
name = "Rolf"
"""


def test_merging_into_an_existing_configuration(tmp_path: Path) -> None:
    config_path = tmp_path / "mailkeep.toml"
    config_path.write_text(EXISTING)
    seed = SEEDS["seed000"]
    plan = build_plan(seed.sources())
    options = ApplyOptions(config_path=config_path, progress=False)
    prepared = prepare(plan, options)
    assert prepared.existing and prepared.data_dir == tmp_path / "data"
    assert any("listeners" in note for note in prepared.notes)
    apply(plan, prepared, options, say=lambda text: None)
    text = config_path.read_text()
    assert text.startswith("# my own settings, kept by the migration\n")
    config = load_config(config_path)
    assert [(x.protocol, x.address) for x in config.listeners] == [("smtp", "127.0.0.1:2525")]
    assert config.accounts["rolf@example.com"].name == "Rolf"
    assert set(config.accounts) == set(plan.accounts)
    assert config.data_dir == tmp_path / "data"
    assert counts(tmp_path / "data", "rolf@example.com") == seed.mail["rolf@example.com"]
    # A second run finds nothing to change.
    again = prepare(build_plan(seed.sources()), options)
    assert not again.config_changed and not again.passwords and not again.secret


def test_conflicts_are_refused_unless_forced(tmp_path: Path) -> None:
    config_path = tmp_path / "mailkeep.toml"
    config_path.write_text(EXISTING.replace('hostname = "mail.example.com"',
                                            'hostname = "new.example.com"')
                           + '\n[aliases]\n"root@example.com" = "user1@example.com"\n'
                           + '\n[accounts."user1@example.com"]\n')
    before = config_path.read_text()
    plan = build_plan(SEEDS["seed000"].sources())
    with pytest.raises(ConflictError) as raised:
        prepare(plan, ApplyOptions(config_path=config_path))
    assert raised.value.conflicts == [
        'hostname: the configuration has "new.example.com", the migration would write '
        '"mail.example.com"',
        'aliases."root@example.com": the configuration has "user1@example.com", the migration '
        'would write "rolf@example.com"']
    assert config_path.read_text() == before
    assert not (tmp_path / "data").exists()
    options = ApplyOptions(config_path=config_path, force=True, progress=False)
    apply(plan, prepare(plan, options), options, say=lambda text: None)
    config = load_config(config_path)
    assert config.hostname == "mail.example.com"
    assert config.aliases["root@example.com"] == ("rolf@example.com",)


def test_an_existing_password_is_kept_unless_forced(tmp_path: Path) -> None:
    seed = SEEDS["seed000"]
    migrate(seed, tmp_path)
    passwd = PasswdFile(tmp_path / "data" / "passwd")
    passwd.set("rolf@example.com", "{PLAIN}changed-since")
    plan = build_plan(seed.sources())
    options = ApplyOptions(config_path=tmp_path / "mailkeep.toml", progress=False)
    prepared = prepare(plan, options)
    assert prepared.passwords_kept == ["rolf@example.com"] and not prepared.passwords
    forced = prepare(plan, ApplyOptions(config_path=tmp_path / "mailkeep.toml", force=True))
    assert forced.passwords == {"rolf@example.com": plan.accounts["rolf@example.com"]
                                .password_hash}


@pytest.mark.parametrize("broken", [
    'hostname = "unterminated\n',
    'hostname = "mail.example.com"\n[smtp]\nmax_recipient = 5\n',
])
def test_a_malformed_existing_configuration_is_refused_and_nothing_written(
        tmp_path: Path, broken: str) -> None:
    config_path = tmp_path / "mailkeep.toml"
    config_path.write_text(broken)
    before = snapshot(tmp_path)
    plan = build_plan(SEEDS["seed000"].sources())
    with pytest.raises(MigrateError, match=r"the existing configuration .* is not valid; fix "
                                           r"it first \(nothing was written\)") as raised:
        prepare(plan, ApplyOptions(config_path=config_path, data_dir=tmp_path / "data"))
    assert "mailkeep.toml" in str(raised.value)
    assert snapshot(tmp_path) == before
