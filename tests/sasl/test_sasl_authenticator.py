"""The authenticator end to end: every mechanism against a real passwd file, throttling
with a fake clock, the login cache, upgrades of imported hashes, and the log lines."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from pathlib import Path

import pytest
import scramp
import scramp.core
from passlib.hash import sha512_crypt

from mailkeep.auth.passwd_file import PasswdFile
from mailkeep.auth.passwords import hash_password, verify_password
from mailkeep.config import Account, AuthConfig, Config
from mailkeep.sasl import (
    Authenticator,
    AuthPolicy,
    ClientInfo,
    SaslStep,
    UnsupportedMechanism,
)
from mailkeep.sasl import authenticator as authenticator_module
from mailkeep.sasl.credentials import credential_fields, merge_extra

PASSWORD = "correct-horse-battery"
ROLF_CRAM = "{CRAM-MD5}cf8527ae5867fc08068952261363c49f0bcc0d1d5f166bbd20d3783b3e97f828"  # rolfheinrich
EXPORTER = b"\x11" * 32
END_POINT = b"\x22" * 32
ACCOUNTS = {name: Account(name) for name in (
    "me@example.com", "rolf@example.com", "old@example.com", "bare@example.com",
    "nopass@example.com")}

TLS13 = ClientInfo("imap", "192.0.2.10", True, "TLSv1.3",
                   {"tls-exporter": EXPORTER, "tls-server-end-point": END_POINT})
TLS12 = ClientInfo("imap", "192.0.2.10", True, "TLSv1.2", {"tls-server-end-point": END_POINT})
PLAIN_TCP = ClientInfo("pop3", "192.0.2.20", False)


@pytest.fixture(scope="module")
def argon_hash() -> str:
    return hash_password(PASSWORD)


class FakeTime:
    """The authenticator's clock and sleep: sleeping advances the clock, instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def passwd(tmp_path: Path, argon_hash: str) -> PasswdFile:
    passwd = PasswdFile(tmp_path / "passwd")
    fields = credential_fields(PASSWORD, scram_iterations=4096, cram_md5=True)
    passwd.update({
        "me@example.com": (argon_hash, merge_extra("", fields)),
        "rolf@example.com": (ROLF_CRAM, ""),
        "old@example.com": ("{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash(PASSWORD), ""),
        "bare@example.com": (argon_hash, ""),  # argon2id, but no SCRAM verifiers yet
    })
    return passwd


def make_auth(passwd: PasswdFile, fake_time: FakeTime, **policy: object) -> Authenticator:
    settings = {"cram_md5": True, "hostname": "mail.example.com", **policy}
    return Authenticator(passwd, ACCOUNTS, AuthPolicy(**settings),  # type: ignore[arg-type]
                         secret=b"s" * 32, clock=fake_time.clock, sleep=fake_time.sleep,
                         wall_clock=lambda: 1_700_000_000)


@pytest.fixture
def auth(passwd: PasswdFile, fake_time: FakeTime) -> Authenticator:
    return make_auth(passwd, fake_time)


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the expensive password verifications the authenticator starts."""
    calls: list[str] = []
    real = authenticator_module.verify_password_async

    async def counting(stored: str, password: str | bytes) -> bool:
        calls.append(stored)
        return await real(stored, password)

    monkeypatch.setattr(authenticator_module, "verify_password_async", counting)
    return calls


@pytest.fixture
def scramp_knows_tls_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    # scramp 1.5 refuses the name "tls-exporter"; on the SCRAM level it is only bytes.
    monkeypatch.setattr(scramp.core.CbName, "SUPPORTED_TYPES",
                        scramp.core.CbName.SUPPORTED_TYPES | {"tls-exporter"})
    monkeypatch.setattr(scramp.core.CbName, "UNSUPPORTED_TYPES", frozenset())


async def scram_login(auth: Authenticator, client: ClientInfo, mechanism: str, *,
                      user: str = "me@example.com", password: str = PASSWORD,
                      client_mechanisms: list[str] | None = None,
                      binding: tuple[str, bytes] | None = None) -> SaslStep:
    """Log in with scramp's client; checks the server signature on success."""
    scram_client = scramp.ScramClient(client_mechanisms or [mechanism], user, password,
                                      channel_binding=binding)
    exchange = auth.start(mechanism, client)
    step = await exchange.step(None)
    if step != SaslStep("challenge", b""):
        return step  # throttled before anything else
    step = await exchange.step(scram_client.get_client_first().encode())
    if step.kind != "challenge":
        return step
    scram_client.set_server_first(step.data.decode())
    step = await exchange.step(scram_client.get_client_final().encode())
    if step.kind == "success":
        scram_client.set_server_final(step.data.decode())  # mutual authentication
    return step


def cram_answer(challenge: bytes, user: str, password: str) -> bytes:
    return f"{user} {hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()}".encode()


# -- what is offered -------------------------------------------------------------------------


def test_mechanisms_depend_on_tls_and_policy(auth: Authenticator, passwd: PasswdFile,
                                             fake_time: FakeTime):
    assert auth.mechanisms(TLS13) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256",
                                      "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"]
    assert auth.mechanisms(PLAIN_TCP) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5"]
    # tls-exporter alone is not usable on TLS 1.2: no -PLUS advertised.
    tls12_exporter_only = ClientInfo("imap", "192.0.2.1", True, "TLSv1.2", {"tls-exporter": EXPORTER})
    assert "SCRAM-SHA-256-PLUS" not in auth.mechanisms(tls12_exporter_only)
    assert "CRAM-MD5" not in make_auth(passwd, fake_time, cram_md5=False).mechanisms(TLS13)
    assert auth.plaintext_allowed(TLS13) and not auth.plaintext_allowed(PLAIN_TCP)


@pytest.mark.parametrize("mechanism,client", [
    ("PLAIN", PLAIN_TCP), ("LOGIN", PLAIN_TCP), ("SCRAM-SHA-256-PLUS", PLAIN_TCP),
    ("DIGEST-MD5", TLS13), ("", TLS13),
])
def test_unsupported_mechanisms(auth: Authenticator, mechanism: str, client: ClientInfo):
    with pytest.raises(UnsupportedMechanism):
        auth.start(mechanism, client)


def test_cram_md5_only_when_enabled(passwd: PasswdFile, fake_time: FakeTime):
    with pytest.raises(UnsupportedMechanism):
        make_auth(passwd, fake_time, cram_md5=False).start("CRAM-MD5", TLS13)


# -- PLAIN and LOGIN -------------------------------------------------------------------------


async def test_plain_success_and_failure(auth: Authenticator, fake_time: FakeTime):
    exchange = auth.start("plain", TLS13)
    assert exchange.mechanism == "PLAIN"
    assert await exchange.step(None) == SaslStep("challenge", b"")
    step = await exchange.step(f"\0Me@Example.COM\0{PASSWORD}".encode())
    assert step == SaslStep("success", b"", account="me@example.com")
    assert fake_time.sleeps == []
    step = await auth.start("PLAIN", TLS13).step(b"\0me@example.com\0wrong-password")
    assert (step.kind, step.reason, step.account) == ("failure", "invalid", None)
    assert step.message == "Authentication failed"
    assert fake_time.sleeps == [0.5]


async def test_plain_authzid_must_be_the_user(auth: Authenticator):
    same = await auth.start("PLAIN", TLS13).step(f"me@example.com\0me@example.com\0{PASSWORD}".encode())
    assert same.kind == "success"
    other = await auth.start("PLAIN", TLS13).step(f"rolf@example.com\0me@example.com\0{PASSWORD}".encode())
    assert (other.kind, other.reason) == ("failure", "invalid")


@pytest.mark.parametrize("message", [b"garbage", b"\0me@example.com\0", b"\0\0pw",
                                     b"\0me@example.com\0" + b"p" * 9000])
async def test_plain_malformed(auth: Authenticator, message: bytes):
    step = await auth.start("PLAIN", TLS13).step(message)
    assert (step.kind, step.reason) == ("failure", "malformed")


async def test_login_mechanism(auth: Authenticator, fake_time: FakeTime):
    exchange = auth.start("LOGIN", TLS12)
    assert await exchange.step(None) == SaslStep("challenge", b"Username:")
    assert await exchange.step(b"me@example.com") == SaslStep("challenge", b"Password:")
    assert (await exchange.step(PASSWORD.encode())).account == "me@example.com"
    exchange = auth.start("LOGIN", TLS12)
    assert await exchange.step(b"me@example.com") == SaslStep("challenge", b"Password:")
    assert (await exchange.step(b"nope-nope")).reason == "invalid"
    assert fake_time.sleeps == [0.5]


async def test_login_command(auth: Authenticator, fake_time: FakeTime):
    assert (await auth.login("me@example.com", PASSWORD, TLS13)).account == "me@example.com"
    assert (await auth.login(b"me@example.com", b"wrong-password", TLS13)).reason == "invalid"
    assert (await auth.login("me@example.com", "pw\0x", TLS13)).reason == "malformed"
    refused = await auth.login("me@example.com", PASSWORD, PLAIN_TCP)
    assert (refused.kind, refused.reason) == ("failure", "malformed")
    assert "TLS" in refused.message
    assert fake_time.sleeps == [0.5, 1.0]  # the refusal without TLS is not a guess


async def test_cancel_and_steps_after_the_end(auth: Authenticator, fake_time: FakeTime):
    exchange = auth.start("LOGIN", TLS13)
    await exchange.step(None)
    assert exchange.cancel() == SaslStep("failure", reason="cancelled",
                                         message="Authentication cancelled")
    assert (await exchange.step(b"x")).reason == "malformed"
    assert fake_time.sleeps == []


# -- CRAM-MD5 --------------------------------------------------------------------------------


async def test_cram_md5_with_an_imported_hash_and_a_stored_state(auth: Authenticator):
    exchange = auth.start("CRAM-MD5", PLAIN_TCP)
    step = await exchange.step(None)
    assert step.kind == "challenge"
    assert step.data.startswith(b"<") and step.data.endswith(b".1700000000@mail.example.com>")
    step = await exchange.step(cram_answer(step.data, "rolf@example.com", "rolfheinrich"))
    assert step == SaslStep("success", b"", account="rolf@example.com")

    exchange = auth.start("CRAM-MD5", PLAIN_TCP)
    challenge = (await exchange.step(None)).data
    assert (await exchange.step(cram_answer(challenge, "me@example.com", PASSWORD))).kind == "success"


async def test_cram_md5_failures(auth: Authenticator):
    for user, password in (("rolf@example.com", "rolfheinrichX"), ("old@example.com", PASSWORD),
                           ("ghost@example.com", "x")):
        exchange = auth.start("CRAM-MD5", PLAIN_TCP)
        challenge = (await exchange.step(None)).data
        step = await exchange.step(cram_answer(challenge, user, password))
        assert (step.kind, step.reason) == ("failure", "invalid"), user
    # CRAM-MD5 is server-first: an initial response is a protocol error.
    step = await auth.start("CRAM-MD5", PLAIN_TCP).step(b"rolf@example.com 00")
    assert step.reason == "malformed"


# -- SCRAM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
async def test_scram_success_and_wrong_password(auth: Authenticator, fake_time: FakeTime,
                                                mechanism: str, verify_calls: list[str]):
    step = await scram_login(auth, PLAIN_TCP, mechanism)
    assert (step.kind, step.account) == ("success", "me@example.com")
    assert step.data.startswith(b"v=")  # server-final, sent as success data
    failed = await scram_login(auth, PLAIN_TCP, mechanism, password="wrong-password")
    assert (failed.kind, failed.reason) == ("failure", "invalid")
    assert fake_time.sleeps == [0.5]
    assert verify_calls == []  # SCRAM never runs Argon2


@pytest.mark.usefixtures("scramp_knows_tls_exporter")
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
@pytest.mark.parametrize("client,binding", [
    (TLS13, ("tls-exporter", EXPORTER)),
    (TLS13, ("tls-server-end-point", END_POINT)),
    (TLS12, ("tls-server-end-point", END_POINT)),
])
async def test_scram_plus_with_both_binding_types(auth: Authenticator, mechanism: str,
                                                  client: ClientInfo, binding: tuple[str, bytes]):
    step = await scram_login(auth, client, mechanism, binding=binding)
    assert (step.kind, step.account) == ("success", "me@example.com")


@pytest.mark.usefixtures("scramp_knows_tls_exporter")
async def test_scram_plus_with_wrong_binding_data_fails(auth: Authenticator, caplog):
    caplog.set_level(logging.INFO, logger="mailkeep.auth")
    step = await scram_login(auth, TLS13, "SCRAM-SHA-256-PLUS",
                             binding=("tls-exporter", b"\x99" * 32))
    assert (step.kind, step.reason) == ("failure", "invalid")
    assert caplog.records[-1].detail == "channel binding data does not match"


async def test_scram_plus_with_tls_exporter_on_tls12_fails(auth: Authenticator,
                                                          scramp_knows_tls_exporter: None):
    step = await scram_login(auth, TLS12, "SCRAM-SHA-256-PLUS", binding=("tls-exporter", EXPORTER))
    assert (step.kind, step.reason) == ("failure", "malformed")


async def test_scram_downgrade_is_detected(auth: Authenticator, caplog):
    # A man in the middle removed -PLUS from the capabilities; the client, able to bind,
    # says "y" (RFC 5802 §6) and the server, which did advertise -PLUS, must refuse.
    caplog.set_level(logging.INFO, logger="mailkeep.auth")
    step = await scram_login(auth, TLS12, "SCRAM-SHA-256",
                             binding=("tls-server-end-point", END_POINT))
    assert (step.kind, step.reason) == ("failure", "invalid")
    assert "downgrade" in caplog.records[-1].detail
    # Without binding data on the connection nothing was advertised: "y" is fine.
    ok = await scram_login(auth, PLAIN_TCP, "SCRAM-SHA-256",
                           binding=("tls-server-end-point", END_POINT))
    assert ok.kind == "success"


async def test_scram_unknown_user_looks_like_a_real_one(auth: Authenticator, caplog):
    caplog.set_level(logging.INFO, logger="mailkeep.auth")

    async def server_first(user: str) -> tuple[str, str]:
        exchange = auth.start("SCRAM-SHA-256", PLAIN_TCP)
        step = await exchange.step(f"n,,n={user},r=clientnonce".encode())
        assert step.kind == "challenge"
        attributes = dict(part.split("=", 1) for part in step.data.decode().split(","))
        assert attributes["r"].startswith("clientnonce") and len(attributes["r"]) > 20
        return attributes["s"], attributes["i"]

    ghost = await server_first("ghost@example.com")
    assert ghost == await server_first("ghost@example.com")  # stable, like a real salt
    assert len(base64.b64decode(ghost[0])) == 16 and ghost[1] == "4096"
    assert ghost != await server_first("phantom@example.com")
    step = await scram_login(auth, PLAIN_TCP, "SCRAM-SHA-256", user="ghost@example.com")
    assert (step.kind, step.reason) == ("failure", "invalid")
    assert caplog.records[-1].detail == "unknown user"


async def test_scram_without_stored_verifier_fails_like_a_wrong_password(auth: Authenticator):
    step = await scram_login(auth, PLAIN_TCP, "SCRAM-SHA-256", user="bare@example.com")
    assert (step.kind, step.reason) == ("failure", "invalid")


async def test_scram_rejects_proxy_authorization_and_garbage(auth: Authenticator):
    step = await auth.start("SCRAM-SHA-1", PLAIN_TCP).step(b"n,a=rolf@example.com,n=me@example.com,r=x")
    assert step.reason == "invalid"
    step = await auth.start("SCRAM-SHA-1", PLAIN_TCP).step(b"n,,n=me@example.com")
    assert step.reason == "malformed"
    exchange = auth.start("SCRAM-SHA-1", PLAIN_TCP)
    assert (await exchange.step(b"n,,n=me@example.com,r=x")).kind == "challenge"
    assert (await exchange.step(b"c=biws,p=AAAA")).reason == "malformed"


# -- unknown users, unavailable password file --------------------------------------------------


async def test_unknown_user_and_account_without_password(auth: Authenticator,
                                                        verify_calls: list[str]):
    for user in ("ghost@example.com", "nopass@example.com", "not an address"):
        step = await auth.login(user, PASSWORD, TLS13)
        assert (step.kind, step.reason) == ("failure", "invalid")
    # A decoy hash is verified so that unknown users take as long as known ones.
    assert len(verify_calls) == 3 and all(call.startswith("{ARGON2ID}") for call in verify_calls)


async def test_unreadable_password_file_is_unavailable(tmp_path: Path, fake_time: FakeTime):
    (tmp_path / "passwd").mkdir()
    auth = make_auth(PasswdFile(tmp_path / "passwd"), fake_time)
    step = await auth.login("me@example.com", PASSWORD, TLS13)
    assert (step.kind, step.reason) == ("failure", "unavailable")
    assert fake_time.sleeps == []  # our problem, not a failed guess


# -- throttling ------------------------------------------------------------------------------


async def test_failures_slow_down_then_the_ip_is_throttled(passwd: PasswdFile, fake_time: FakeTime,
                                                         verify_calls: list[str]):
    auth = make_auth(passwd, fake_time, max_failures_per_ip=3, failure_window=60.0)
    pop3 = ClientInfo("pop3", "192.0.2.99", True)
    for _ in range(3):
        assert (await auth.login("me@example.com", "guess-guess", pop3)).reason == "invalid"
    assert fake_time.sleeps == [0.5, 1.0, 2.0]
    assert len(verify_calls) == 3
    # Shared across protocols: the same address over IMAP is now refused, and the right
    # password is not even checked.
    imap = ClientInfo("imap", "192.0.2.99", True)
    step = await auth.start("PLAIN", imap).step(f"\0me@example.com\0{PASSWORD}".encode())
    assert (step.kind, step.reason) == ("failure", "throttled")
    assert step.message == "Too many failed logins; try again later"
    assert (await scram_login(auth, imap, "SCRAM-SHA-256")).reason == "throttled"
    assert len(verify_calls) == 3
    # Another address is unaffected; after the window the address may try again.
    assert (await auth.login("me@example.com", PASSWORD, TLS13)).kind == "success"
    fake_time.now += 61
    assert (await auth.login("me@example.com", PASSWORD, imap)).kind == "success"


async def test_delay_is_capped(passwd: PasswdFile, fake_time: FakeTime):
    auth = make_auth(passwd, fake_time, max_failures_per_ip=100, max_failure_delay=3.0)
    for _ in range(5):
        await auth.start("SCRAM-SHA-256", PLAIN_TCP).step(b"bogus")
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_locked_account_still_lets_its_owner_in_from_a_clean_address(
        passwd: PasswdFile, fake_time: FakeTime):
    auth = make_auth(passwd, fake_time, max_failures_per_account=4, max_failure_delay=8.0)
    for n in range(4):
        attacker = ClientInfo("imap", f"198.51.100.{n}", True)
        assert (await auth.login("me@example.com", f"guess-{n}", attacker)).reason == "invalid"
    attacker = ClientInfo("imap", "198.51.100.0", True)
    assert (await auth.login("me@example.com", PASSWORD, attacker)).reason == "throttled"
    fake_time.sleeps.clear()
    owner = ClientInfo("imap", "203.0.113.7", True)
    assert (await auth.login("me@example.com", PASSWORD, owner)).kind == "success"
    assert fake_time.sleeps == [8.0]  # answered after the longest delay


async def test_counters_survive_a_reload(passwd: PasswdFile, fake_time: FakeTime, tmp_path: Path):
    auth = make_auth(passwd, fake_time, max_failures_per_ip=2)
    for _ in range(2):
        await auth.login("me@example.com", "guess-guess", TLS13)
    config = Config(path=tmp_path / "mailkeep.toml", hostname="mail.example.com",
                    data_dir=tmp_path, accounts=ACCOUNTS,
                    auth=AuthConfig(max_failures_per_ip=2, login_cache_ttl=0))
    auth.update(config)
    assert auth.policy.max_failures_per_ip == 2 and not auth.cache.enabled
    assert (await auth.login("me@example.com", PASSWORD, TLS13)).reason == "throttled"


# -- login cache -----------------------------------------------------------------------------


async def test_cache_hit_skips_argon2_and_a_new_hash_invalidates(
        auth: Authenticator, passwd: PasswdFile, fake_time: FakeTime, verify_calls: list[str]):
    for _ in range(3):
        assert (await auth.login("me@example.com", PASSWORD, TLS13)).kind == "success"
    assert len(verify_calls) == 1
    # A wrong password is still checked for real.
    assert (await auth.login("me@example.com", "wrong-password", TLS13)).reason == "invalid"
    assert len(verify_calls) == 2
    # The administrator sets a new password: the old one no longer works, cache or not.
    entry = passwd.get("me@example.com")
    passwd.set("me@example.com", hash_password("new-password-42"), entry.extra)
    assert (await auth.login("me@example.com", PASSWORD, TLS13)).reason == "invalid"
    assert (await auth.login("me@example.com", "new-password-42", TLS13)).kind == "success"
    assert len(verify_calls) == 4
    # The entry expires after the TTL (3600 s by default).
    fake_time.now += 3601
    assert (await auth.login("me@example.com", "new-password-42", TLS13)).kind == "success"
    assert len(verify_calls) == 5


# -- upgrade on login ------------------------------------------------------------------------


async def test_imported_sha512_crypt_is_upgraded_at_login(auth: Authenticator, passwd: PasswdFile):
    # Before: SCRAM cannot work, there is no verifier.
    assert (await scram_login(auth, PLAIN_TCP, "SCRAM-SHA-256", user="old@example.com")).kind == "failure"
    step = await auth.start("PLAIN", TLS13).step(f"\0old@example.com\0{PASSWORD}".encode())
    assert step.kind == "success"
    await auth.wait_for_upgrades()
    entry = passwd.get("old@example.com")
    assert entry is not None and entry.hash.startswith("{ARGON2ID}$argon2id$")
    assert verify_password(entry.hash, PASSWORD)
    fields = entry.extra_fields()
    assert {"scram-sha-256", "scram-sha-1", "cram-md5"} <= set(fields)
    # After: SCRAM and CRAM-MD5 work, and the password still does.
    assert (await scram_login(auth, PLAIN_TCP, "SCRAM-SHA-1", user="old@example.com")).kind == "success"
    assert (await auth.login("old@example.com", PASSWORD, TLS13)).kind == "success"


async def test_verifiers_are_added_without_rehashing(auth: Authenticator, passwd: PasswdFile,
                                                     argon_hash: str):
    assert (await auth.login("bare@example.com", PASSWORD, TLS13)).kind == "success"
    await auth.wait_for_upgrades()
    entry = passwd.get("bare@example.com")
    assert entry.hash == argon_hash and "scram-sha-256" in entry.extra_fields()
    assert (await scram_login(auth, PLAIN_TCP, "SCRAM-SHA-256", user="bare@example.com")).kind == "success"


async def test_imported_cram_md5_keeps_working_after_the_upgrade(auth: Authenticator,
                                                                 passwd: PasswdFile):
    assert (await auth.login("rolf@example.com", "rolfheinrich", TLS13)).kind == "success"
    await auth.wait_for_upgrades()
    entry = passwd.get("rolf@example.com")
    assert entry.hash.startswith("{ARGON2ID}")
    exchange = auth.start("CRAM-MD5", PLAIN_TCP)
    challenge = (await exchange.step(None)).data
    step = await exchange.step(cram_answer(challenge, "rolf@example.com", "rolfheinrich"))
    assert step.kind == "success"


async def test_upgrade_does_not_overwrite_a_password_changed_meanwhile(
        auth: Authenticator, passwd: PasswdFile, monkeypatch: pytest.MonkeyPatch):
    real_hash = authenticator_module.hash_password_async

    async def slow_hash(password: str) -> str:
        passwd.set("old@example.com", "{PLAIN}set-by-the-admin")  # lands during the upgrade
        return await real_hash(password)

    monkeypatch.setattr(authenticator_module, "hash_password_async", slow_hash)
    assert (await auth.login("old@example.com", PASSWORD, TLS13)).kind == "success"
    await auth.wait_for_upgrades()
    assert passwd.get("old@example.com").hash == "{PLAIN}set-by-the-admin"


async def test_failed_upgrade_is_only_logged(auth: Authenticator, passwd: PasswdFile,
                                             monkeypatch: pytest.MonkeyPatch, caplog):
    caplog.set_level(logging.INFO, logger="mailkeep.auth")

    def broken(*args: object, **kwargs: object) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(authenticator_module, "write_credentials", broken)
    assert (await auth.login("bare@example.com", PASSWORD, TLS13)).kind == "success"
    await auth.wait_for_upgrades()
    assert "scram-sha-256" not in passwd.get("bare@example.com").extra_fields()
    assert any("No space left" in getattr(record, "error", "") for record in caplog.records)


# -- logging and construction ------------------------------------------------------------------


async def test_every_outcome_is_logged_with_the_client(auth: Authenticator, caplog):
    caplog.set_level(logging.INFO, logger="mailkeep.auth")
    pop3 = ClientInfo("pop3", "2001:db8::7", True)
    await auth.login("me@example.com", PASSWORD, pop3)
    await auth.start("PLAIN", pop3).step(b"\0me@example.com\0wrong-password")
    await auth.start("PLAIN", pop3).step(b"\0evil\nname\0pw")
    success, wrong, evil = caplog.records[-3:]
    assert (success.levelno, success.msg, success.result, success.protocol, success.ip,
            success.mechanism, success.account) == (
        logging.INFO, "login", "success", "pop3", "2001:db8::7", "USER-PASS", "me@example.com")
    assert (wrong.levelno, wrong.result, wrong.mechanism, wrong.account, wrong.reason,
            wrong.detail, wrong.delay) == (
        logging.WARNING, "failure", "PLAIN", "me@example.com", "invalid", "wrong password", 0.5)
    assert evil.account == "evil?name" and evil.reason == "invalid"


def test_from_config_keeps_a_persistent_secret(tmp_path: Path):
    config = Config(path=tmp_path / "mailkeep.toml", hostname="mail.example.com",
                    data_dir=tmp_path, accounts=ACCOUNTS,
                    auth=AuthConfig(cram_md5=True, scram_iterations=8192, max_failure_delay=5))
    first = Authenticator.from_config(config)
    assert (tmp_path / "auth.secret").stat().st_mode & 0o777 == 0o600
    assert Authenticator.from_config(config).secret == first.secret
    assert first.passwd.path == config.passwd_file
    assert (first.policy.cram_md5, first.policy.scram_iterations, first.policy.max_failure_delay,
            first.policy.hostname) == (True, 8192, 5, "mail.example.com")
