"""The migration plan of each seed: every account, alias and catch-all mapped, and the list
of what is not migrated, with its reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.migrate.conftest import SEEDS

from mailkeep.migrate.apply import ApplyOptions, prepare
from mailkeep.migrate.plan import MigrationSources, Plan, build_plan
from mailkeep.migrate.sources import MigrateError, SourceTree


def plan_of(name: str) -> Plan:
    return build_plan(SEEDS[name].sources())


def unmapped(plan: Plan, *fragments: str) -> list[str]:
    """The not-migrated entries ("item: reason") containing every fragment."""
    return [str(u) for u in plan.unmapped if all(f in str(u) for f in fragments)]


# --- seed 000 ------------------------------------------------------------------------------


def test_seed000_accounts_and_passwords() -> None:
    plan = plan_of("seed000")
    assert plan.hostname == "mail.example.com"
    assert list(plan.domains) == ["example.com"]
    assert {a: (p.relay_only, p.password_scheme) for a, p in plan.accounts.items()} == {
        "rolf@example.com": (False, "CRAM-MD5"), "user1@example.com": (False, "CRAM-MD5"),
        "user2@example.com": (False, "CRAM-MD5"), "relay1@example.com": (True, "CRAM-MD5")}
    assert plan.accounts["rolf@example.com"].password_hash == (
        "{CRAM-MD5}cf8527ae5867fc08068952261363c49f0bcc0d1d5f166bbd20d3783b3e97f828")
    assert plan.settings["auth"] == {"cram_md5": True}


def test_seed000_catch_alls_burned_and_local_aliases() -> None:
    plan = plan_of("seed000")
    domain = plan.domains["example.com"]
    assert domain.catch_all == "rolf@example.com"  # /^.+@example.com$/ rolf@example.com
    assert domain.personalized_catch_all  # /^.*rolf@example.com$/ rolf@example.com, ...
    assert sorted(domain.burned) == [
        "adobe@example.com", "alx@example.com", "ama-rolf@example.com",
        "daora-rolf@example.com", "ebrats2015@example.com", "ebrats2018@example.com"]
    # /etc/aliases: names in each local domain, targets qualified with $myorigin.
    assert plan.aliases["root@example.com"] == ["rolf@example.com"]
    assert plan.aliases["postmaster@example.com"] == ["root@example.com"]
    assert plan.aliases["mailer-daemon@example.com"] == ["postmaster@example.com"]
    assert plan.subaddress_separator == ""  # recipient_delimiter is not set


def test_seed000_relay_limits_policy_and_listeners() -> None:
    plan = plan_of("seed000")
    assert plan.relay is not None
    assert (plan.relay.name, plan.relay.host, plan.relay.tls, plan.relay.username,
            plan.relay.password) == ("maildomainhoster", "[smtp.maildomainhoster.net]:submission",
                                     "verify", "admin_user@example.com", "plaintext-password")
    assert "plaintext-password" not in repr(plan.relay)
    assert plan.settings["smtp"] == {"message_size_limit": 104857600, "soft_error_limit": 3,
                                     "hard_error_limit": 5, "error_sleep": "17s",
                                     "max_connection_rate_per_ip": 13}
    assert plan.settings["queue"]["maximal_queue_lifetime"] == "24h"
    assert plan.settings["queue"]["maximal_backoff_time"] == "180s"
    rules = plan.policy_rules
    assert rules is not None
    assert rules.index("reject_unknown_helo_hostname") < rules.index(
        "check_helo_access hash:postfix-tables/helo_reject_domains") < rules.index(
        "check_sender_access pcre:postfix-tables/sender_access.pcre") < rules.index(
        "greylist") < rules.index("header_checks pcre:postfix-tables/header_checks.pcre")
    assert sorted(plan.policy_tables.values()) == [
        "header_checks.pcre", "helo_reject_domains", "sender_access.pcre",
        "sender_domain_reject"]
    assert {(entry["protocol"], entry["address"]) for entry in plan.listeners} >= {
        ("smtp", "0.0.0.0:25"), ("submission", "0.0.0.0:587"), ("imaps", "0.0.0.0:993")}


def test_seed000_not_migrated() -> None:
    plan = plan_of("seed000")
    assert unmapped(plan, "mydestination: mail.example.com", "system mail")
    assert unmapped(plan, "mailbox_size_limit", "quota")
    assert unmapped(plan, "smtpd_discard_ehlo_keywords")
    assert unmapped(plan, "smtpd_client_auth_rate_limit", "max_failures_per_ip")
    assert unmapped(plan, "smtpd_tls_cert_file", "--root", "[acme]")
    assert len(plan.unmapped) == 5, plan.unmapped
    # Nothing silently dropped: the greyfix policy service and the restrictions Mailkeep
    # has built in are listed as such.
    builtin = {item for item, _ in plan.builtin}
    assert any("greyfix" in item for item in builtin)
    assert any("permit_sasl_authenticated" in item for item in builtin)


def test_seed000_mail_and_special_use_names() -> None:
    plan = plan_of("seed000")
    rolf = plan.accounts["rolf@example.com"]
    assert rolf.mail is not None and rolf.mail.layout == "maildir++"
    assert rolf.special_use_renames == {"Sent": "Sent Messages", "Trash": "Deleted Messages"}
    assert plan.accounts["user2@example.com"].mail is None
    assert plan.accounts["relay1@example.com"].mail is None
    assert plan.message_count() == 13


# --- seed 001 ------------------------------------------------------------------------------


def test_seed001() -> None:
    plan = plan_of("seed001")
    assert plan.hostname == "novaprospekt.domain.tld"
    assert list(plan.domains) == ["domain.tld", "another.tld"]
    assert {a: (p.relay_only, p.password_scheme) for a, p in plan.accounts.items()} == {
        "example@domain.tld": (False, "ARGON2I"), "eg@another.tld": (False, "ARGON2I")}
    assert plan.domains["domain.tld"].catch_all == "example@domain.tld"  # @domain.tld
    assert plan.aliases == {"edgaer_the_pimp@another.tld": ["eg@another.tld"]}
    assert plan.policy_rules is not None
    assert "reject_unknown_client_hostname" in plan.policy_rules
    assert "check_sender_access texthash:postfix-tables/check_sender_domain" in plan.policy_rules
    # The SQL passdb is replaced by the exported passwd-file given on the command line.
    assert any("passdb driver = sql" in note for note in plan.notes)
    assert plan.message_count() == 5
    # submission's header cleanup strips only what Mailkeep strips by default.
    assert "submission" not in plan.settings


def test_seed001_sql_passdb_without_an_export() -> None:
    seed = SEEDS["seed001"]
    sources = seed.sources()
    plan = build_plan(MigrationSources(
        sources.postfix_dir, sources.tree, sources.dovecot_conf, mail_location=None))
    assert unmapped(plan, "passdb driver = sql", "--dovecot-passwd")
    assert plan.accounts == {
        "example@domain.tld": plan.accounts["example@domain.tld"],
        "eg@another.tld": plan.accounts["eg@another.tld"]}
    # Without the users' file the mailboxes still come from virtual_mailbox_maps.
    assert all(a.password_hash is None for a in plan.accounts.values())
    assert any("no password" in note for note in plan.notes)


# --- seed 004 ------------------------------------------------------------------------------


def test_seed004() -> None:
    plan = plan_of("seed004")
    assert plan.hostname == "mx.example.net"
    assert list(plan.domains) == ["example.net", "another-example.com"]
    brian, notbrian = plan.accounts["brian@example.net"], plan.accounts["notbrian@example.net"]
    assert (brian.password_scheme, brian.quota, brian.send) == ("BLF-CRYPT", "1G", "hold")
    assert (notbrian.send, notbrian.quota) == ("block", "1G")  # sasl_access REJECT
    assert plan.aliases["info@example.net"] == ["brian@example.net", "notbrian@example.net"]
    assert plan.aliases["postmaster@example.net"] == ["brian@example.net"]
    assert plan.senders == {"info@example.net": ["brian@example.net", "notbrian@example.net"]}
    assert plan.settings["policy"] == {"quota_grace": 10}
    assert brian.mail is not None and brian.mail.layout == "fs"
    assert plan.domains["example.net"].catch_all is None


def test_seed004_not_migrated() -> None:
    plan = plan_of("seed004")
    assert unmapped(plan, "*@example.net", "literal address", "@example.net")
    assert unmapped(plan, "smtpd_milters = unix:/var/db/opendkim/opendkim.sock",
                    "mailkeep dkim keygen another-example.com example.net")
    assert unmapped(plan, "smtpd_milters = unix:/var/clamav/mail-scan", "[policy.clamav]")
    assert unmapped(plan, "relay_domains", "backup MX")
    assert unmapped(plan, "check_recipient_access: hash:/opt/local/etc/postfix/filtered_domains",
                    "does not exist")
    assert unmapped(plan, "smtpd_tls_eccert_file")
    # non_smtpd_milters repeats smtpd_milters: reported once.
    assert not unmapped(plan, "non_smtpd_milters")


def test_seed004_mdbox_without_a_converted_maildir() -> None:
    sources = SEEDS["seed004"].sources()
    plan = build_plan(MigrationSources(sources.postfix_dir, sources.tree,
                                       sources.dovecot_conf))
    assert unmapped(plan, "userdb override_fields mail = mdbox:~/mail", "doveadm backup")
    assert plan.message_count() == 0


# --- edge cases ------------------------------------------------------------------------------


def write_setup(tmp_path: Path, main_cf: str, files: dict[str, str]) -> MigrationSources:
    postfix = tmp_path / "postfix"
    postfix.mkdir()
    (postfix / "main.cf").write_text(main_cf)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return MigrationSources(postfix, SourceTree(),
                            passwd_files=(tmp_path / "users",) if "users" in files else ())


def test_alias_problems_are_reported_not_written(tmp_path: Path) -> None:
    sources = write_setup(tmp_path, (
        "myhostname = mx.x.test\nvirtual_mailbox_domains = x.test\n"
        f"virtual_mailbox_maps = texthash:{tmp_path}/mailboxes\n"
        f"virtual_alias_maps = texthash:{tmp_path}/virtual\nrecipient_delimiter = +\n"), {
        "mailboxes": "me@x.test ok\nyou@x.test ok\n",
        "users": "me@x.test:{PLAIN}secret-password::::::\nyou@x.test:{PLAIN}pw2::::::\n"
                 "relay@x.test:{PLAIN}pw3::::::\n",
        "virtual": ("me@x.test me@x.test\n"                      # declares the mailbox
                    "you@x.test you@x.test, backup@y.test\n"     # account + copy elsewhere
                    "ghost@x.test nobody@x.test\n"               # target does not exist
                    "team@x.test me@x.test, nobody@x.test\n"     # one bad target of two
                    "lists@x.test me+lists@x.test\n"             # a sub-address: fine
                    "a@x.test b@x.test\nb@x.test a@x.test\n"     # a loop
                    "torelay@x.test relay@x.test\n"              # relay-only target
                    "out@x.test friend@elsewhere.test\n"         # forwarding
                    "@x.test me@x.test, you@x.test\n"            # catch-all, two targets
                    "other@y.test me@x.test\n"),                 # not our domain
    })
    plan = build_plan(sources)
    assert plan.accounts["relay@x.test"].relay_only  # not in virtual_mailbox_maps
    assert plan.aliases == {"team@x.test": ["me@x.test"], "lists@x.test": ["me+lists@x.test"],
                            "out@x.test": ["friend@elsewhere.test"]}
    assert unmapped(plan, "you@x.test", "also sent copies", "backup@y.test")
    assert unmapped(plan, "ghost@x.test -> nobody@x.test", "neither an account nor an alias")
    assert unmapped(plan, "team@x.test -> nobody@x.test")
    assert unmapped(plan, "part of a loop")
    assert unmapped(plan, "torelay@x.test -> relay@x.test", "relay-only")
    assert unmapped(plan, "@x.test", "several targets")
    assert unmapped(plan, "other@y.test", "not in one of our domains")
    assert any("friend@elsewhere.test" in note and "temporary failure" in note
               for note in plan.notes)
    assert plan.domains["x.test"].catch_all is None


def test_bad_hashes_and_logins_without_domain(tmp_path: Path) -> None:
    sources = write_setup(tmp_path, "myhostname = mx.x.test\nmydestination = x.test\n", {
        "users": "ok@x.test:{SHA512-CRYPT}$6$salt$" + "a" * 86 + "::::::\n"
                 "bad@x.test:{MD4}0123::::::\nbare:{PLAIN}pw::::::\nelse@y.test:{PLAIN}pw\n",
    })
    plan = build_plan(sources)
    assert set(plan.accounts) == {"ok@x.test", "bad@x.test"}
    assert plan.accounts["bad@x.test"].password_hash is None
    assert unmapped(plan, "bad@x.test (password)", "unknown password scheme {MD4}",
                    "mailkeep account passwd bad@x.test")
    assert unmapped(plan, "bare", "without a domain")
    assert unmapped(plan, "else@y.test", "y.test is not a domain Postfix receives mail for")


def test_settings_the_loader_refuses_are_reported(tmp_path: Path) -> None:
    plan = build_plan(write_setup(tmp_path, (
        "myhostname = mx.x.test\nsmtpd_hard_error_limit = 0\nsmtpd_soft_error_limit = 3\n"
        "queue_run_delay = soon\nmessage_size_limit = 0\nsome_future_parameter = 1\n"), {}))
    assert unmapped(plan, "smtpd_hard_error_limit = 0")
    assert plan.settings["smtp"] == {"soft_error_limit": 3}
    assert unmapped(plan, "queue_run_delay = soon", "not a number or time value")
    assert unmapped(plan, "message_size_limit = 0", "100M")
    assert unmapped(plan, "some_future_parameter", "no Mailkeep equivalent known")


def test_main_cf_is_required(tmp_path: Path) -> None:
    with pytest.raises(MigrateError, match=r"main\.cf .* does not exist"):
        build_plan(MigrationSources(tmp_path))
    with pytest.raises(MigrateError, match="not a directory"):
        build_plan(MigrationSources(tmp_path / "missing"))


KITCHEN_SINK = """\
myhostname = mx.x.test
mydomain = x.test
mydestination = $mydomain
mynetworks = 127.0.0.0/8 [::1]/128 192.0.2.0/24
recipient_delimiter = +-
relayhost = smtp.provider.test:465
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{d}/relay_passwords
postscreen_dnsbl_sites = zen.spamhaus.org*2, list.dnswl.org=127.0.[0..255].[1..3]*-2
postscreen_dnsbl_threshold = 2
postscreen_dnsbl_action = drop
postscreen_greet_wait = ${{stress?2}}${{stress:6}}s
smtpd_recipient_restrictions = permit_mynetworks, reject_rbl_client bl.example.test,
  check_policy_service inet:127.0.0.1:12345, warn_if_reject
smtpd_client_restrictions = check_client_access cidr:{d}/clients
inet_interfaces = loopback-only
virtual_mailbox_base = {d}/vmail
content_filter = smtp-amavis:[127.0.0.1]:10024
alias_maps = hash:{d}/aliases
"""
MASTER = """\
smtp      inet  n       -       n       -       -       postscreen
smtpd     pass  -       -       n       -       -       smtpd
smtps     inet  n       -       n       -       -       smtpd
  -o smtpd_tls_wrappermode=yes
  -o cleanup_service_name=clean-sub
clean-sub unix  n       -       n       -       0       cleanup
  -o header_checks=pcre:{d}/strip
amavis    unix  -       -       n       -       2       smtp
127.0.0.1:10025 inet n  -       n       -       -       smtpd
"""


def test_kitchen_sink(tmp_path: Path) -> None:
    d = tmp_path
    (d / "postfix").mkdir()
    (d / "postfix" / "main.cf").write_text(KITCHEN_SINK.format(d=d))
    (d / "postfix" / "master.cf").write_text(MASTER.format(d=d))
    (d / "relay_passwords").write_text("smtp.provider.test:465 me@provider.test:s3cret:x\n")
    (d / "clients").write_text("192.0.2.66 REJECT go away\n")
    (d / "strip").write_text("/^X-Spam-Info:/ IGNORE\n/^X-Mailer:/ IGNORE\n"
                             "/^Subject:/ REPLACE Subject: censored\n")
    (d / "users").write_text("me@x.test:{SSHA512}" + "A" * 96 + "::::::\n")
    (d / "aliases").write_text("postmaster: root\nabuse: me@x.test\n")
    (d / "vmail" / "x.test" / "me" / "cur").mkdir(parents=True)
    (d / "vmail" / "x.test" / "me" / "cur" / "1.M1.h:2,S").write_text("Subject: hi\n\nbody\n")
    (d / "vmap").write_text("me@x.test x.test/me/\n")
    main_cf = (d / "postfix" / "main.cf").read_text()
    (d / "postfix" / "main.cf").write_text(
        main_cf + f"virtual_mailbox_domains = y.test\nvirtual_mailbox_maps = texthash:{d}/vmap\n")
    plan = build_plan(MigrationSources(d / "postfix", SourceTree(), passwd_files=(d / "users",)))
    assert plan.relay is not None
    assert (plan.relay.host, plan.relay.tls, plan.relay.username, plan.relay.password) == (
        "smtp.provider.test:465", "implicit", "me@provider.test", "s3cret:x")
    assert plan.settings["policy"]["trusted_networks"] == ["127.0.0.0/8", "::1/128",
                                                         "192.0.2.0/24"]
    assert plan.settings["policy"]["greet_wait"] == "6s"
    assert plan.settings["policy.dnsbl"] == {
        "sites": ["zen.spamhaus.org*2", "list.dnswl.org=127.0.[0..255].[1..3]*-2",
                  "bl.example.test"], "threshold": 2, "action": "drop"}
    assert plan.policy_rules is not None
    assert "check_client_access cidr:postfix-tables/clients" in plan.policy_rules
    assert plan.subaddress_separator == "+-"
    assert {(e["protocol"], e["address"]) for e in plan.listeners} == {
        ("smtp", "127.0.0.1:25"), ("submissions", "127.0.0.1:465"),
        ("imap", "127.0.0.1:143"), ("imaps", "127.0.0.1:993")}
    assert plan.settings["submission"]["remove_headers"][-1] == "X-Spam-Info"
    assert unmapped(plan, "/^Subject:/ REPLACE", "remove_headers")
    assert unmapped(plan, "check_policy_service inet:127.0.0.1:12345", "no equivalent")
    assert unmapped(plan, "warn_if_reject", "no equivalent restriction")
    assert unmapped(plan, "content_filter", "clamd")
    assert unmapped(plan, "master.cf:8: amavis", "content filters")
    assert unmapped(plan, "127.0.0.1:10025", "another port")
    # virtual(8) Maildirs below virtual_mailbox_base, found through the map's values.
    me = plan.accounts["me@x.test"]
    assert me.mail is not None and me.mail.message_count() == 1
    assert me.password_scheme == "SSHA512"
    assert list(plan.domains) == ["y.test", "x.test"]
    # root is qualified with $myorigin = the host name: a system user, not migrated.
    assert unmapped(plan, "postmaster -> root@mx.x.test", "system user")
    assert plan.aliases == {"abuse@x.test": ["me@x.test"]}
    # The whole result is a configuration the server accepts (prepare validates it).
    prepared = prepare(plan, ApplyOptions(config_path=d / "out" / "mailkeep.toml",
                                          data_dir=d / "data"))
    assert prepared.config.delivery.relays["provider"].tls == "implicit"
    assert not (d / "out").exists()


def test_maildir_root_finds_each_layout() -> None:
    for name, relative, expected in (
            ("seed000", "var/mail/users", {"rolf@example.com": 11, "user1@example.com": 2}),
            ("seed004", "var/mail/virtual", {"brian@example.net": 5,
                                             "notbrian@example.net": 2})):
        seed = SEEDS[name]
        sources = seed.sources()
        plan = build_plan(MigrationSources(
            sources.postfix_dir, sources.tree, sources.dovecot_conf,
            maildir_root=seed.root() / relative))
        assert {a: p.mail.message_count() for a, p in plan.accounts.items() if p.mail} == \
            expected, name


def test_what_the_loader_refuses_is_reported_not_written(tmp_path: Path) -> None:
    """The planner's last check: anything the configuration loader would refuse."""
    from mailkeep.migrate.plan import _Planner

    sources = write_setup(tmp_path, "myhostname = mx.x.test\nmydestination = x.test\n", {
        "users": "me@x.test:{PLAIN}password::::::\n"})
    planner = _Planner(sources)
    plan = planner.run()
    plan.aliases["bad@x.test"] = ["nobody@x.test"]  # what a missed check would leave
    plan.domains["x.test"].catch_all = "ghost@x.test"
    planner._drop_what_the_loader_refuses()
    assert "bad@x.test" not in plan.aliases and plan.domains["x.test"].catch_all is None
    assert unmapped(plan, "alias bad@x.test", "nobody@x.test")
    assert unmapped(plan, "catch-all of x.test", "ghost@x.test")
