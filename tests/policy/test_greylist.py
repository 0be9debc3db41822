"""Greylisting: the triplet state machine with an injected clock, what counts as the same
triplet, the DKIM and client-network shortcuts, persistence, purging, the reply, and that
nothing a client sends can make a check raise."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.policy.greylist import (
    CLIENT_AUTO_ALLOW_PASSES,
    DB_FILENAME,
    GREYLIST_REPLY,
    PASS_REFRESH_INTERVAL,
    PURGE_BATCH_ROWS,
    PURGE_INTERVAL,
    Greylist,
    GreylistDecision,
    GreylistError,
    client_network,
    normalize_domain,
    normalize_recipient,
    normalize_sender,
)

DELAY = 300.0
WINDOW = 2 * 86400.0
ALLOW = 35 * 86400.0
START = 1_800_000_000.0
DAY = 86400.0

CLIENT = "192.0.2.10"
SENDER = "alice@example.org"
RCPT = "bob@example.net"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def greylist(tmp_path: Path, clock: Clock) -> Iterator[Greylist]:
    with Greylist(tmp_path, delay=DELAY, retry_window=WINDOW, auto_allow=ALLOW,
                  clock=clock) as instance:
        yield instance


def reopen(tmp_path: Path, clock: Clock) -> Greylist:
    return Greylist(tmp_path / DB_FILENAME, delay=DELAY, retry_window=WINDOW,
                    auto_allow=ALLOW, clock=clock)


def pass_through(greylist: Greylist, clock: Clock, client: str, sender: str,
                 recipient: str = RCPT) -> GreylistDecision:
    """Greylist one triplet and retry it after the delay."""
    first = greylist.check(client, sender, recipient)
    assert (first.passed, first.reason) == (False, "new")
    clock.advance(DELAY + 1)
    return greylist.check(client, sender, recipient)


def rows(path: Path, table: str) -> int:
    """Rows of ``table`` as a reader beside the server (the CLI) sees them."""
    with closing(sqlite3.connect(path / DB_FILENAME)) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# --- the state machine --------------------------------------------------------------------

def test_first_attempt_is_deferred_for_the_delay(greylist: Greylist) -> None:
    decision = greylist.check(CLIENT, SENDER, RCPT)
    assert decision == GreylistDecision(False, "new", DELAY)
    reply = decision.reply
    assert reply is not None
    assert reply.to_bytes() == (b"450 4.7.1 Greylisted: first delivery attempt from this "
                                b"sender, please retry in 300 seconds\r\n")


def test_early_retries_are_deferred_and_do_not_restart_the_timer(
        greylist: Greylist, clock: Clock) -> None:
    greylist.check(CLIENT, SENDER, RCPT)
    clock.advance(100)
    early = greylist.check(CLIENT, SENDER, RCPT)
    assert (early.passed, early.reason, early.retry_after) == (False, "too-early", 200)
    clock.advance(199.5)
    later = greylist.check(CLIENT, SENDER, RCPT)
    assert (later.passed, later.reason, later.retry_after) == (False, "too-early", 0.5)
    assert later.reply is not None and b"retry in 1 seconds" in later.reply.to_bytes()
    clock.advance(0.5)  # exactly the delay after the first attempt
    assert greylist.check(CLIENT, SENDER, RCPT) == GreylistDecision(True, "retried", 0.0)


def test_retry_after_delay_passes_then_known(greylist: Greylist, clock: Clock) -> None:
    assert pass_through(greylist, clock, CLIENT, SENDER) == GreylistDecision(True, "retried", 0)
    clock.advance(3 * DAY)
    known = greylist.check(CLIENT, SENDER, RCPT)
    assert known == GreylistDecision(True, "known", 0.0)
    assert known.reply is None


def test_triplet_not_retried_within_window_is_forgotten(greylist: Greylist,
                                                        clock: Clock) -> None:
    greylist.check(CLIENT, SENDER, RCPT)
    clock.advance(WINDOW + 1)
    assert greylist.check(CLIENT, SENDER, RCPT).reason == "new"
    # The delay runs again from the new first attempt.
    clock.advance(DELAY - 1)
    assert greylist.check(CLIENT, SENDER, RCPT).reason == "too-early"
    clock.advance(1)
    assert greylist.check(CLIENT, SENDER, RCPT).reason == "retried"


def test_retry_at_the_end_of_the_window_still_passes(greylist: Greylist,
                                                     clock: Clock) -> None:
    greylist.check(CLIENT, SENDER, RCPT)
    clock.advance(WINDOW)
    assert greylist.check(CLIENT, SENDER, RCPT).reason == "retried"


def test_auto_allow_expires_after_last_pass_and_each_pass_extends_it(
        greylist: Greylist, clock: Clock, tmp_path: Path) -> None:
    pass_through(greylist, clock, CLIENT, SENDER)
    clock.advance(ALLOW - DAY)
    assert greylist.check(CLIENT, SENDER, RCPT).reason == "known"
    clock.advance(ALLOW - DAY)          # 68 days after the retry, 34 after the last pass
    assert greylist.check(CLIENT, SENDER, RCPT).reason == "known"
    # The extension was stored: a restarted server agrees.
    greylist.close()
    with reopen(tmp_path, clock) as again:
        clock.advance(ALLOW - DAY)
        assert again.check(CLIENT, SENDER, RCPT).reason == "known"
        clock.advance(ALLOW + 1)
        assert again.check(CLIENT, SENDER, RCPT) == GreylistDecision(False, "new", DELAY)


def test_extension_within_refresh_interval_is_kept_in_memory(
        greylist: Greylist, clock: Clock, tmp_path: Path) -> None:
    pass_through(greylist, clock, CLIENT, SENDER)
    with closing(sqlite3.connect(tmp_path / DB_FILENAME)) as reader:
        stored = reader.execute("SELECT last_pass FROM triplets").fetchone()[0]
        clock.advance(PASS_REFRESH_INTERVAL / 2)
        greylist.check(CLIENT, SENDER, RCPT)
        assert reader.execute("SELECT last_pass FROM triplets").fetchone()[0] == stored
        clock.advance(PASS_REFRESH_INTERVAL)
        greylist.check(CLIENT, SENDER, RCPT)
        assert reader.execute("SELECT last_pass FROM triplets").fetchone()[0] == clock.now


def test_triplet_parts_are_all_compared(greylist: Greylist, clock: Clock) -> None:
    pass_through(greylist, clock, CLIENT, SENDER)
    assert greylist.check(CLIENT, SENDER, RCPT).reason == "known"
    assert greylist.check(CLIENT, "carol@example.org", RCPT).reason == "new"
    assert greylist.check(CLIENT, SENDER, "dave@example.net").reason == "new"
    assert greylist.check("198.51.100.1", SENDER, RCPT).reason == "new"


def test_clock_going_back_restarts_a_waiting_triplet(greylist: Greylist, clock: Clock) -> None:
    greylist.check(CLIENT, SENDER, RCPT)
    clock.advance(-DAY)
    assert greylist.check(CLIENT, SENDER, RCPT) == GreylistDecision(False, "new", DELAY)


# --- what is the same triplet -------------------------------------------------------------

@pytest.mark.parametrize(("first", "retry"), [
    ("192.0.2.10", "192.0.2.250"),
    ("192.0.2.10", "::ffff:192.0.2.99"),
    ("2001:db8:1:2::25", "2001:db8:1:2:ffff:ffff:ffff:1"),
    ("2001:DB8:1:2::25", "[IPv6:2001:db8:1:2::26]"),
])
def test_retry_from_same_network_passes(greylist: Greylist, clock: Clock, first: str,
                                        retry: str) -> None:
    greylist.check(first, SENDER, RCPT)
    clock.advance(DELAY)
    assert greylist.check(retry, SENDER, RCPT).reason == "retried"


@pytest.mark.parametrize(("first", "retry"), [
    ("192.0.2.10", "192.0.3.10"),
    ("2001:db8:1:2::25", "2001:db8:1:3::25"),
    ("192.0.2.10", "2001:db8::c000:20a"),
])
def test_retry_from_another_network_is_new(greylist: Greylist, clock: Clock, first: str,
                                           retry: str) -> None:
    greylist.check(first, SENDER, RCPT)
    clock.advance(DELAY)
    assert greylist.check(retry, SENDER, RCPT).reason == "new"


def test_client_network_forms() -> None:
    assert client_network("192.0.2.77") == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("::ffff:203.0.113.9") == "203.0.113.0/24"
    assert client_network("fe80::1%eth0") == "fe80::/64"
    assert client_network("not an address") == "?not an address"


# Pairs of envelope senders a legitimate sender may use for the same message on two
# attempts: each pair must name one triplet.
SAME_SENDER = [
    ("Alice@Example.ORG", "alice@example.org"),
    ("<alice@example.org>", "alice@example.org."),
    ("alice+newsletter@example.org", "alice+other@example.org"),
    ("<>", ""),
    # VERP with message and attempt numbers.
    ("bounce-1234-5678@lists.example.org", "bounce-99-1@lists.example.org"),
    ("owner-list+M12345=bob=example.net@lists.example.org",
     "owner-list+M12346=bob=example.net@lists.example.org"),
    # BATV (draft-levine-smtp-batv-01) and its variants.
    ("prvs=0123abcdef=alice@example.org", "prvs=1456fedcba=alice@example.org"),
    ("prvs=0123abcdef=alice@example.org", "alice@example.org"),
    ("msprvs1=17785KeDnBYvJ=bounces-3@example.org", "msprvs1=18001AbCdEfGh=bounces-4@example.org"),
    ("btv1==0d1a3b9f6a7==alice@example.org", "btv1==99ffa0c2==alice@example.org"),
    # SRS: hash and day stamp change, forwarders and the original address do not.
    ("SRS0=HHH1=T2=example.org=alice@forwarder.net", "SRS0=zz/+=X9=example.org=alice@forwarder.net"),
    ("SRS0+HHH1=T2=example.org=alice@forwarder.net", "srs0=abcd=q4=example.org=alice@forwarder.net"),
    ("SRS1=HHH=first.example==ABC=T2=example.org=alice@second.example",
     "SRS1=JJJ=first.example==DEF=T3=example.org=alice@second.example"),
    # Per-message identifiers: Amazon SES style, long hex and base32 ids.
    ("0100018c3d4e5f6a-1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e-000000@amazonses.com",
     "0100018c9999aaaa-aaaa0000-bbbb-1111-cccc-222222222222-000000@amazonses.com"),
    ("msg-7f3a9c21@mailer.example", "msg-0b11e8d4@mailer.example"),
    ("r-q2w3e4r5t6y7u8i9@mailer.example", "r-z9x8c7v6b5n4m3l2@mailer.example"),
]

DIFFERENT_SENDERS = [
    ("alice@example.org", "bob@example.org"),
    ("alice@example.org", "alice@example.com"),
    ("john2@example.org", "john3@example.org"),   # short non-hex token: a name
    ("<>", "postmaster@example.org"),
    ("SRS0=HHH=T2=example.org=alice@forwarder.net", "SRS0=HHH=T2=example.org=bob@forwarder.net"),
    ("SRS0=HHH=T2=example.org=alice@forwarder.net", "alice@example.org"),
]


@pytest.mark.parametrize(("first", "retry"), SAME_SENDER)
def test_sender_forms_that_match(greylist: Greylist, clock: Clock, first: str,
                                 retry: str) -> None:
    assert normalize_sender(first) == normalize_sender(retry)
    greylist.check(CLIENT, first, RCPT)
    clock.advance(DELAY)
    assert greylist.check(CLIENT, retry, RCPT).reason == "retried"


@pytest.mark.parametrize(("first", "other"), DIFFERENT_SENDERS)
def test_sender_forms_that_differ(first: str, other: str) -> None:
    assert normalize_sender(first) != normalize_sender(other)


def test_normalized_forms_are_readable() -> None:
    assert normalize_sender("<>") == "<>"
    assert normalize_sender("Bounce-123-456@X.org.") == "bounce-#-#@x.org"
    assert normalize_sender("SRS0=HaSh=TT=example.com=Joe+x@fwd.net") == \
        "srs0=example.com=joe@fwd.net"
    assert normalize_sender("@relay.example:alice@example.org") == "alice@example.org"
    assert normalize_sender("postmaster") == "postmaster"
    assert normalize_recipient("<Bob+Tag@Example.NET>") == "bob+tag@example.net"
    assert normalize_domain("<Alice@Mail.Example.ORG.>") == "mail.example.org"


def test_recipient_is_case_insensitive_but_keeps_its_tag(greylist: Greylist,
                                                         clock: Clock) -> None:
    greylist.check(CLIENT, SENDER, "Bob@Example.NET")
    clock.advance(DELAY)
    assert greylist.check(CLIENT, SENDER, "bob@example.net").reason == "retried"
    assert greylist.check(CLIENT, SENDER, "bob+x@example.net").reason == "new"


def test_overlong_fields_are_bounded(greylist: Greylist, clock: Clock, tmp_path: Path) -> None:
    huge = "a" * 100_000 + "@example.org"
    assert greylist.check(CLIENT, huge, "b" * 50_000).reason == "new"
    clock.advance(DELAY)
    assert greylist.check(CLIENT, huge, "b" * 50_000).reason == "retried"
    with closing(sqlite3.connect(tmp_path / DB_FILENAME)) as conn:
        lengths = conn.execute("SELECT length(sender), length(recipient) FROM triplets").fetchone()
    assert max(lengths) <= 256


# --- DKIM-known domains -------------------------------------------------------------------

def test_dkim_domains(greylist: Greylist, clock: Clock, tmp_path: Path) -> None:
    assert not greylist.dkim_domain_known("example.org")
    greylist.note_dkim_pass("Example.ORG.")
    assert greylist.dkim_domain_known("example.org")
    assert greylist.dkim_domain_known("someone@EXAMPLE.org")  # an address's domain
    assert not greylist.dkim_domain_known("mail.example.org")
    assert not greylist.dkim_domain_known("<>")
    assert not greylist.dkim_domain_known("")
    greylist.note_dkim_pass("")                                 # ignored, no row
    clock.advance(ALLOW - DAY)
    assert greylist.dkim_domain_known("example.org")
    greylist.note_dkim_pass("example.org")                      # extends
    greylist.close()
    with reopen(tmp_path, clock) as again:
        clock.advance(ALLOW - DAY)
        assert again.dkim_domain_known("example.org")
        clock.advance(2 * DAY)
        assert not again.dkim_domain_known("example.org")
    assert rows(tmp_path, "dkim_domains") == 1


# --- client network auto-allow ------------------------------------------------------------

def test_client_network_auto_allowed_after_enough_retries(greylist: Greylist,
                                                          clock: Clock) -> None:
    for n in range(CLIENT_AUTO_ALLOW_PASSES - 1):
        assert pass_through(greylist, clock, f"192.0.2.{n}", f"s{n}@example.org").reason == \
            "retried"
    # One pass short: a new triplet from the network is still deferred.
    assert greylist.check("192.0.2.200", "new@example.org", RCPT).reason == "new"
    clock.advance(DELAY)
    assert greylist.check("192.0.2.201", "new@example.org", RCPT).reason == "retried"
    # Now the whole /24 skips greylisting, for any sender and recipient ...
    allowed = greylist.check("192.0.2.99", "stranger@example.com", "x@example.net")
    assert allowed == GreylistDecision(True, "known", 0.0, client_allowed=True)
    # ... but another network does not.
    assert greylist.check("192.0.3.99", "stranger@example.com", "x@example.net").reason == "new"
    # The allowance lasts auto_allow after the client's last pass, and each pass extends it.
    clock.advance(ALLOW - DAY)
    assert greylist.check("192.0.2.5", "other@example.com", RCPT).client_allowed
    clock.advance(ALLOW - DAY)
    assert greylist.check("192.0.2.6", "other2@example.com", RCPT).client_allowed
    clock.advance(ALLOW + 1)
    assert greylist.check("192.0.2.7", "other3@example.com", RCPT).reason == "new"


def test_client_counter_restarts_after_expiry(greylist: Greylist, clock: Clock,
                                              tmp_path: Path) -> None:
    for n in range(CLIENT_AUTO_ALLOW_PASSES - 1):
        pass_through(greylist, clock, "198.51.100.1", f"s{n}@example.org")
    clock.advance(ALLOW + 1)
    pass_through(greylist, clock, "198.51.100.1", "late@example.org")
    # The old passes expired: one pass does not complete the count.
    assert greylist.check("198.51.100.1", "fresh@example.org", RCPT).reason == "new"
    greylist.close()
    with reopen(tmp_path, clock) as again:  # the count is stored, not only cached
        assert again.check("198.51.100.1", "fresh2@example.org", RCPT).reason == "new"


def test_client_allowance_persists(greylist: Greylist, clock: Clock, tmp_path: Path) -> None:
    for n in range(CLIENT_AUTO_ALLOW_PASSES):
        pass_through(greylist, clock, "203.0.113.1", f"s{n}@example.org")
    greylist.close()
    with reopen(tmp_path, clock) as again:
        assert again.check("203.0.113.50", "anyone@example.com", RCPT).client_allowed


# --- persistence, purge, the database -----------------------------------------------------

def test_state_survives_a_restart(greylist: Greylist, clock: Clock, tmp_path: Path) -> None:
    greylist.check(CLIENT, SENDER, RCPT)
    pass_through(greylist, clock, CLIENT, "known@example.org")
    greylist.close()
    with reopen(tmp_path, clock) as again:
        assert again.check(CLIENT, SENDER, RCPT).reason == "retried"
        assert again.check(CLIENT, "known@example.org", RCPT).reason == "known"
    clock.advance(10)
    with reopen(tmp_path, clock) as third:
        assert third.check(CLIENT, SENDER, RCPT).reason == "known"


def test_purge_removes_only_expired_rows(greylist: Greylist, clock: Clock,
                                         tmp_path: Path) -> None:
    greylist.check("192.0.2.1", "waiting@example.org", RCPT)
    pass_through(greylist, clock, "198.51.100.1", "passed@example.org")
    greylist.note_dkim_pass("example.org")
    assert greylist.purge() == 0
    clock.advance(WINDOW)
    assert greylist.purge() == 1                  # the triplet never retried
    assert rows(tmp_path, "triplets") == 1        # the passed one stays
    clock.advance(ALLOW - WINDOW)
    assert greylist.purge() == 0
    clock.advance(WINDOW + 1)
    # The passed triplet, its client network and the DKIM domain.
    assert greylist.purge() == 3
    assert rows(tmp_path, "triplets") == rows(tmp_path, "clients") == 0
    assert rows(tmp_path, "dkim_domains") == 0
    # A purged triplet starts over.
    assert greylist.check("198.51.100.1", "passed@example.org", RCPT).reason == "new"


def test_check_purges_in_batches_by_itself(greylist: Greylist, clock: Clock,
                                           tmp_path: Path) -> None:
    count = PURGE_BATCH_ROWS + 10
    for n in range(count):
        greylist.check(CLIENT, f"s{n}@example.org", RCPT)
    clock.advance(max(WINDOW, PURGE_INTERVAL) + 1)
    greylist.check("198.51.100.1", SENDER, RCPT)    # starts one bounded purge step
    assert rows(tmp_path, "triplets") == count + 1 - PURGE_BATCH_ROWS
    greylist.check("198.51.100.1", SENDER, RCPT)    # too soon for the next step
    assert rows(tmp_path, "triplets") == count + 1 - PURGE_BATCH_ROWS
    clock.advance(2)                                 # a full step is continued soon
    greylist.check("198.51.100.1", SENDER, RCPT)
    assert rows(tmp_path, "triplets") == 1


def test_database_mode_and_concurrent_reader(greylist: Greylist, clock: Clock,
                                             tmp_path: Path) -> None:
    reader = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # A reader in the middle of a read transaction (the CLI listing triplets) does
        # not hold the server up.
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM triplets").fetchone()[0] == 0
        assert greylist.check(CLIENT, SENDER, RCPT).reason == "new"
        clock.advance(DELAY)
        assert greylist.check(CLIENT, SENDER, RCPT).reason == "retried"
        assert reader.execute("SELECT count(*) FROM triplets").fetchone()[0] == 0  # snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM triplets").fetchone()[0] == 1
    finally:
        reader.close()
    frames, copied = greylist.checkpoint()
    assert frames > 0 and copied == frames


def test_hot_triplet_needs_no_write_and_failures_pass_open(
        greylist: Greylist, clock: Clock, tmp_path: Path) -> None:
    pass_through(greylist, clock, CLIENT, SENDER)
    greylist.note_dkim_pass("example.org")
    blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None, timeout=0)
    try:
        blocker.execute("BEGIN IMMEDIATE")        # someone else holds the write lock
        clock.advance(60)
        assert greylist.check(CLIENT, SENDER, RCPT).reason == "known"
        assert greylist.dkim_domain_known("example.org")
        # A new triplet needs a write: it cannot wait on the event loop, so it passes.
        assert greylist.check(CLIENT, "new@example.org", RCPT) == \
            GreylistDecision(True, "error", 0.0)
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    # Once the lock is gone the triplet is greylisted as usual.
    assert greylist.check(CLIENT, "new@example.org", RCPT).reason == "new"


def test_closed_greylist_passes_open(greylist: Greylist) -> None:
    greylist.close()
    assert greylist.check(CLIENT, SENDER, RCPT) == GreylistDecision(True, "error", 0.0)
    assert not greylist.dkim_domain_known("example.org")
    greylist.note_dkim_pass("example.org")
    greylist.close()


def test_constructor_refuses_bad_settings_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Greylist(tmp_path, delay=600, retry_window=300)
    with pytest.raises(ValueError):
        Greylist(tmp_path, delay=-1)
    with pytest.raises(ValueError):
        Greylist(tmp_path, auto_allow=0)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(GreylistError):
        Greylist(garbage)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(GreylistError, match="newer Mailkeep"):
        Greylist(newer)


def test_reply_constant() -> None:
    assert GREYLIST_REPLY.code == 450 and GREYLIST_REPLY.enhanced == "4.7.1"
    assert GREYLIST_REPLY.is_transient
    assert "retry in 300 seconds" in GREYLIST_REPLY.one_line()


# --- hostile input ------------------------------------------------------------------------

TEXT = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["", "<>", "<", ">", "@", "@@", "+", "prvs==", "srs0=", "srs1====",
                     "SRS0=a=b=c=", "btv1====", "::", "[]", "IPv6:", "%", "\x00", "\ud800"]),
    st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=80), st.text(max_size=40)),
)


def test_check_never_raises(tmp_path: Path) -> None:
    clock = Clock()
    with Greylist(tmp_path, clock=clock) as greylist:
        @settings(max_examples=200, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(client=st.one_of(TEXT, st.ip_addresses().map(str)), sender=TEXT,
               recipient=TEXT, step=st.floats(0, 10 * DAY))
        def run(client: str, sender: str, recipient: str, step: float) -> None:
            clock.advance(step)
            first = greylist.check(client, sender, recipient)
            again = greylist.check(client, sender, recipient)
            assert first.reason in ("new", "too-early", "retried", "known")
            assert again.reason in ("too-early", "retried", "known")
            assert first.passed == (first.retry_after == 0)
            assert 0 <= again.retry_after <= DELAY
            greylist.note_dkim_pass(sender)
            assert greylist.dkim_domain_known(sender) == bool(normalize_domain(sender))

        run()
