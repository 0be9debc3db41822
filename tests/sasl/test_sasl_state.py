"""Stored credentials, the throttle and the login cache (pure state, fake clocks)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mailkeep.auth.passwd_file import PasswdEntry, PasswdFile
from mailkeep.sasl.cache import LoginCache
from mailkeep.sasl.credentials import (
    ScramVerifier,
    cram_md5_secret,
    credential_fields,
    fake_scram_verifier,
    make_scram_verifier,
    merge_extra,
    missing_credentials,
    scram_verifier,
    write_credentials,
)
from mailkeep.sasl.throttle import Throttle, ThrottlePolicy, address_key

ROLF_STATE = "cf8527ae5867fc08068952261363c49f0bcc0d1d5f166bbd20d3783b3e97f828"  # "rolfheinrich"

# -- credentials ---------------------------------------------------------------------------


def test_verifier_field_has_dovecot_scram_shape():
    verifier = make_scram_verifier("pencil", "SCRAM-SHA-256", 4096,
                                   salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    text = verifier.to_field()
    iterations, salt, stored, server = text.split(",")
    assert (iterations, salt) == ("4096", "W22ZaJ0SNY7soEsUEjb6gQ==")
    assert len(base64.b64decode(stored)) == len(base64.b64decode(server)) == 32
    assert ScramVerifier.parse(text, "sha256") == verifier


@pytest.mark.parametrize("text", [
    "", "4096,a,b", "x,c2FsdA==,AAAA,AAAA", "100,c2FsdA==," + "A" * 44 + "," + "A" * 44,
    "4096,!!,AAAA,AAAA", "4096,c2FsdA==,AAAA,AAAA",
])
def test_damaged_verifiers_are_refused(text: str):
    with pytest.raises(ValueError):
        ScramVerifier.parse(text, "sha256")
    entry = PasswdEntry("me@example.com", "{PLAIN}x", extra=f"scram-sha-256={text}")
    assert scram_verifier(entry, "SCRAM-SHA-256") is None


def test_credential_fields_and_merge_keep_foreign_fields():
    fields = credential_fields("pencil-pencil", scram_iterations=4096, cram_md5=False)
    assert set(fields) == {"scram-sha-256", "scram-sha-1", "cram-md5"} and fields["cram-md5"] is None
    extra = merge_extra("userdb_quota_rule=*:storage=1G cram-md5=" + ROLF_STATE + " nopassword", fields)
    assert extra.startswith("userdb_quota_rule=*:storage=1G nopassword scram-sha-256=4096,")
    assert "cram-md5" not in extra  # the stale weak secret is removed when CRAM-MD5 is off
    entry = PasswdEntry("me@example.com", "{PLAIN}x", extra=extra)
    assert scram_verifier(entry, "SCRAM-SHA-1") is not None
    assert not missing_credentials(entry, scram_iterations=4096, cram_md5=False)
    assert missing_credentials(entry, scram_iterations=8192, cram_md5=False)  # policy raised
    assert missing_credentials(entry, scram_iterations=4096, cram_md5=True)


def test_cram_md5_secret_from_field_or_imported_hash():
    state = bytes.fromhex(ROLF_STATE)
    assert cram_md5_secret(PasswdEntry("u", "{ARGON2ID}x", extra=f"cram-md5={ROLF_STATE}")) == state
    assert cram_md5_secret(PasswdEntry("u", "{CRAM-MD5}" + ROLF_STATE)) == state
    assert cram_md5_secret(PasswdEntry("u", "{cram-md5.hex}" + ROLF_STATE)) == state
    assert cram_md5_secret(PasswdEntry("u", "{CRAM-MD5.B64}" + base64.b64encode(state).decode())) == state
    assert cram_md5_secret(PasswdEntry("u", "{CRAM-MD5}abc")) is None
    assert cram_md5_secret(PasswdEntry("u", "{SHA512-CRYPT}$6$x$y")) is None


def test_fake_verifier_is_stable_per_user_and_secret():
    a = fake_scram_verifier(b"k" * 32, "SCRAM-SHA-256", "nobody@example.com", 4096)
    assert a == fake_scram_verifier(b"k" * 32, "SCRAM-SHA-256", "nobody@example.com", 4096)
    assert a.salt != fake_scram_verifier(b"k" * 32, "SCRAM-SHA-256", "other@example.com", 4096).salt
    assert a.salt != fake_scram_verifier(b"j" * 32, "SCRAM-SHA-256", "nobody@example.com", 4096).salt
    assert len(fake_scram_verifier(b"k", "SCRAM-SHA-1", "x", 4096).stored_key) == 20


def test_write_credentials_is_a_compare_and_set(tmp_path: Path):
    passwd = PasswdFile(tmp_path / "passwd")
    passwd.set("me@example.com", "{PLAIN}old", extra="keep=1")
    assert not write_credentials(passwd, "me@example.com", "{PLAIN}new", "new",
                                 scram_iterations=4096, cram_md5=True, expected_hash="{PLAIN}other")
    assert passwd.get("me@example.com") == PasswdEntry("me@example.com", "{PLAIN}old", extra="keep=1")
    assert write_credentials(passwd, "me@example.com", "{PLAIN}new", "new",
                             scram_iterations=4096, cram_md5=True, expected_hash="{PLAIN}old")
    entry = passwd.get("me@example.com")
    assert entry is not None and entry.hash == "{PLAIN}new"
    fields = entry.extra_fields()
    assert fields["keep"] == "1" and fields["scram-sha-256"].startswith("4096,")
    assert bytes.fromhex(fields["cram-md5"]) == cram_md5_secret(entry)
    # Without expected_hash it creates the entry.
    assert write_credentials(passwd, "new@example.com", "{PLAIN}x", "x", scram_iterations=4096,
                             cram_md5=False)
    assert "scram-sha-1" in passwd.get("new@example.com").extra_fields()


# -- throttle --------------------------------------------------------------------------------

POLICY = ThrottlePolicy(max_failures_per_ip=4, max_failures_per_account=6, failure_window=100.0,
                        first_failure_delay=0.5, max_failure_delay=3.0)


def test_delay_doubles_up_to_the_maximum():
    throttle = Throttle(POLICY)
    delays = [throttle.failure("192.0.2.1", "me@example.com", now=t) for t in range(4)]
    assert delays == [0.5, 1.0, 2.0, 3.0]


def test_ip_is_throttled_at_the_limit_until_failures_age_out():
    throttle = Throttle(POLICY)
    for t in range(4):
        assert throttle.check("192.0.2.1", None, now=t) == "allow"
        throttle.failure("192.0.2.1", f"u{t}@example.com", now=t)
    assert throttle.check("192.0.2.1", None, now=5) == "throttled"
    assert throttle.check("192.0.2.2", None, now=5) == "allow"
    assert throttle.check("192.0.2.1", None, now=100.5) == "allow"  # the first failure aged out


def test_account_lock_spares_clean_addresses():
    throttle = Throttle(POLICY)
    for n in range(6):  # a guesser spread over many addresses
        throttle.failure(f"198.51.100.{n}", "me@example.com", now=1)
    assert throttle.check("198.51.100.0", "me@example.com", now=2) == "throttled"
    assert throttle.check("203.0.113.9", "me@example.com", now=2) == "slow"
    assert throttle.check("203.0.113.9", "other@example.com", now=2) == "allow"


def test_success_forgets_only_that_accounts_failures():
    throttle = Throttle(POLICY)
    throttle.failure("192.0.2.1", "me@example.com", now=1)
    throttle.failure("192.0.2.1", "victim@example.com", now=1)
    throttle.failure("192.0.2.1", "me@example.com", now=1)
    throttle.success("192.0.2.1", "me@example.com")
    assert throttle.ip_failures("192.0.2.1", now=2) == 1
    assert throttle.account_failures("me@example.com", now=2) == 0
    assert throttle.account_failures("victim@example.com", now=2) == 1


def test_ipv6_is_counted_per_64():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("local") == "local"
    throttle = Throttle(POLICY)
    for n in range(4):
        throttle.failure(f"2001:db8:1:2::{n + 1}", None, now=0)
    assert throttle.check("2001:db8:1:2:ffff::9", None, now=1) == "throttled"


def test_memory_is_bounded():
    throttle = Throttle(ThrottlePolicy(max_tracked=50, failure_window=1000))
    for n in range(1000):
        throttle.failure(f"10.0.{n // 256}.{n % 256}", f"user{n}@example.com", now=n / 1000)
    assert throttle.tracked() == (50, 50)
    assert throttle.ip_failures("10.0.3.231", now=1) == 1  # the newest are kept
    assert throttle.ip_failures("10.0.0.0", now=1) == 0


def test_old_entries_expire():
    throttle = Throttle(POLICY)
    throttle.failure("192.0.2.1", "me@example.com", now=0)
    throttle.check("192.0.2.9", None, now=500)
    assert throttle.tracked() == (0, 0)


def test_zero_delay_policy_for_tests():
    throttle = Throttle(ThrottlePolicy(first_failure_delay=0))
    assert throttle.failure("192.0.2.1", None, now=0) == 0


# -- login cache -----------------------------------------------------------------------------


def test_cache_hit_until_ttl():
    cache = LoginCache(ttl=60)
    cache.remember("me@example.com", b"pw", "{ARGON2ID}h1", now=0)
    assert cache.check("me@example.com", b"pw", "{ARGON2ID}h1", now=59)
    assert not cache.check("me@example.com", b"pw", "{ARGON2ID}h1", now=61)
    assert not cache.check("me@example.com", b"pw", "{ARGON2ID}h1", now=62)  # dropped


def test_cache_miss_on_wrong_password_or_changed_hash():
    cache = LoginCache(ttl=60)
    cache.remember("me@example.com", b"pw", "{ARGON2ID}h1", now=0)
    assert not cache.check("me@example.com", b"wrong", "{ARGON2ID}h1", now=1)
    assert not cache.check("me@example.com", b"pw", "{ARGON2ID}h2", now=1)  # password changed
    assert not cache.check("other@example.com", b"pw", "{ARGON2ID}h1", now=1)
    assert cache.check("me@example.com", b"pw", "{ARGON2ID}h1", now=1)  # a wrong guess evicts nothing


def test_cache_never_holds_the_password():
    cache = LoginCache(ttl=60, key=b"k" * 32)
    cache.remember("me@example.com", b"hunter2-hunter2", "{ARGON2ID}h1", now=0)
    assert b"hunter2" not in repr(cache._entries).encode()


def test_cache_is_lru_bounded_and_can_be_off():
    cache = LoginCache(ttl=60, max_entries=3)
    for n in range(5):
        cache.remember(f"u{n}", b"pw", "h", now=0)
    assert len(cache) == 3 and not cache.check("u0", b"pw", "h", now=1)
    assert cache.check("u4", b"pw", "h", now=1)
    off = LoginCache(ttl=0)
    off.remember("u", b"pw", "h", now=0)
    assert not off.check("u", b"pw", "h", now=0)
    cache.configure(ttl=0)
    assert len(cache) == 0
