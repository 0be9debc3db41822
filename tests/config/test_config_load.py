"""Loading mailkeep.toml: defaults, canonical names, and precise error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.config import Config, ConfigError, load_config, parse_config_text
from mailkeep.config.load import MAX_CONFIG_BYTES, key_path
from mailkeep.config.schema import SmtpConfig

BASE = """
hostname = "mail.example.com"

[domains."example.com"]

[accounts."me@example.com"]
"""


def load(text: str, name: str = "/etc/mailkeep/mailkeep.toml") -> Config:
    return parse_config_text(text, Path(name), label="mailkeep.toml")


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return [str(issue) for issue in info.value.errors]


def warnings_of(text: str) -> list[str]:
    return [str(issue) for issue in load(text).warnings]


# -- defaults ------------------------------------------------------------------------------

def test_minimal_file_gets_safe_defaults():
    config = load(BASE)
    assert config.hostname == "mail.example.com"
    assert config.data_dir == Path("/var/lib/mailkeep")
    assert config.smtp == SmtpConfig()
    assert config.smtp.message_size_limit == 100 * 1024 * 1024
    assert config.smtp.error_sleep == 17.0
    assert config.smtp.bare_newlines == "reject"
    assert config.log.format == "logfmt" and config.log.level == "info" and config.log.file is None
    assert config.tls.cert is None and config.tls.key is None
    assert config.run_as is None and config.postmaster is None
    assert [(lst.protocol, lst.address, lst.tls) for lst in config.listeners] == [
        ("smtp", "0.0.0.0:25", "starttls"),
        ("lmtp", "unix:/var/lib/mailkeep/lmtp.sock", "none")]
    assert config.pidfile == Path("/var/lib/mailkeep/mailkeep.pid")
    assert config.passwd_file == Path("/var/lib/mailkeep/passwd")


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path):
    (tmp_path / "mailkeep.toml").write_text(
        'hostname = "localhost"\ndata_dir = "data"\n[tls]\ncert = "c.pem"\nkey = "/k.pem"\n'
        '[log]\nfile = "log/mk.log"\n[[listeners]]\nprotocol = "lmtp"\naddress = "unix:lmtp.sock"\n')
    config = load_config(tmp_path / "mailkeep.toml")
    assert config.data_dir == tmp_path / "data"
    assert config.tls.cert == tmp_path / "c.pem" and config.tls.key == Path("/k.pem")
    assert config.log.file == tmp_path / "log" / "mk.log"
    assert config.listeners[0].path == tmp_path / "lmtp.sock"
    assert config.path == tmp_path / "mailkeep.toml"


def test_every_smtp_limit_is_settable_with_units():
    config = load(BASE + """
[smtp]
message_size_limit = "10M"
max_recipients = 200
max_connections = 50
max_connections_per_ip = 5
max_commands = 500
soft_error_limit = 2
hard_error_limit = 4
error_sleep = "1.5s"
command_timeout = "10m"
data_timeout = 900
max_data_line = 4096
bare_newlines = "normalize"
""")
    assert config.smtp == SmtpConfig(
        message_size_limit=10 * 1024 * 1024, max_recipients=200, max_connections=50,
        max_connections_per_ip=5, max_commands=500, soft_error_limit=2, hard_error_limit=4,
        error_sleep=1.5, command_timeout=600.0, data_timeout=900.0, max_data_line=4096,
        bare_newlines="normalize")


def test_accounts_domains_and_aliases_are_canonical():
    config = load("""
hostname = "Mail.Example.COM"
[domains."Bücher.Example"]
[domains."EXAMPLE.com"]
[accounts."Leser@BÜCHER.example"]
name = "Leser"
quota = "2G"
quota_messages = 5000
aliases = ["Lesen@bücher.example"]
[accounts."Relay@example.com"]
relay_only = true
[aliases]
"INFO@example.com" = "leser@xn--bcher-kva.example"
"team@example.com" = ["Leser@Bücher.example", "Friend@Elsewhere.example"]
""")
    assert config.hostname == "mail.example.com"
    assert list(config.domains) == ["xn--bcher-kva.example", "example.com"]
    account = config.accounts["leser@xn--bcher-kva.example"]
    assert account.name == "Leser" and account.quota == 2 * 1024**3
    assert account.quota_messages == 5000
    assert account.aliases == ("lesen@xn--bcher-kva.example",)
    assert config.accounts["relay@example.com"].relay_only
    assert config.aliases["info@example.com"] == ("leser@xn--bcher-kva.example",)
    assert config.aliases["team@example.com"] == ("leser@xn--bcher-kva.example",
                                                  "friend@elsewhere.example")


def test_future_protocols_are_accepted_with_their_tls_default():
    config = load(BASE + "".join(
        f'[[listeners]]\nprotocol = "{p}"\naddress = "127.0.0.1:{port}"\n'
        for p, port in [("submission", 587), ("submissions", 465), ("imap", 143), ("imaps", 993),
                        ("pop3", 110), ("pop3s", 995), ("http", 80), ("smtp", 25)]))
    assert [(lst.protocol, lst.tls) for lst in config.listeners] == [
        ("submission", "starttls"), ("submissions", "implicit"), ("imap", "starttls"),
        ("imaps", "implicit"), ("pop3", "starttls"), ("pop3s", "implicit"), ("http", "none"),
        ("smtp", "starttls")]


def test_listener_addresses():
    config = load(BASE + """
[[listeners]]
protocol = "smtp"
address = "[::]:25"
[[listeners]]
protocol = "lmtp"
address = "unix:/run/mailkeep/lmtp.sock"
tls = "none"
""")
    v6, unix = config.listeners
    assert (v6.host, v6.port, v6.is_unix) == ("::", 25, False)
    assert unix.path == Path("/run/mailkeep/lmtp.sock") and unix.is_unix


def test_localhost_is_a_valid_hostname():
    assert load('hostname = "localhost"\n[domains.localhost]\n[accounts."demo@localhost"]\n'
                ).hostname == "localhost"


# -- errors ----------------------------------------------------------------------------------

def test_catch_all_typo_message_is_precise():
    assert errors_of(BASE.replace('[domains."example.com"]',
                                  '[domains."example.com"]\ncatch_all = "me@exmaple.com"')) == [
        "mailkeep.toml: domains.\"example.com\".catch_all: 'me@exmaple.com' is not an account or "
        "alias of this server (allowed: an address in accounts or aliases)"]


def test_unknown_keys_suggest_the_right_one():
    errors = errors_of(BASE + '[smtp]\nmax_recipient = 10\n[acounts."x@example.com"]\n')
    assert "mailkeep.toml: smtp.max_recipient: unknown key; did you mean 'max_recipients'?" in errors
    assert "mailkeep.toml: acounts: unknown key; did you mean 'accounts'?" in errors


def test_unknown_key_without_suggestion_lists_the_allowed_keys():
    assert errors_of(BASE + "[log]\nzzz = 1\n") == [
        "mailkeep.toml: log.zzz: unknown key (allowed: format, level, target, file, dir, "
        "files, rotate_size, rotate_keep, syslog_socket, journald_socket, facility)"]


def test_password_in_config_is_an_unknown_key():
    errors = errors_of(BASE + 'password = "secret"\n')
    assert errors == ["mailkeep.toml: accounts.\"me@example.com\".password: unknown key "
                      "(allowed: name, quota, quota_messages, relay_only, aliases, send, "
                      "send_message, max_messages_per_hour, max_recipients_per_day)"]


def test_all_errors_are_reported_together():
    errors = errors_of("""
hostname = "mail"
[smtp]
max_recipients = "lots"
bare_newlines = "fix"
[log]
level = "verbose"
[domains."example.com"]
[accounts."me@example.org"]
""")
    assert errors == [
        "mailkeep.toml: hostname: 'mail' is not fully qualified (allowed: a fully qualified "
        "domain name or \"localhost\")",
        "mailkeep.toml: log.level: 'verbose' is not a valid value (allowed: debug, info, warning, error)",
        "mailkeep.toml: smtp.max_recipients: expected an integer, got the string 'lots'",
        "mailkeep.toml: smtp.bare_newlines: 'fix' is not a valid value (allowed: reject, normalize)",
        "mailkeep.toml: accounts.\"me@example.org\": the domain of 'me@example.org' is not a "
        "domain of this server (allowed: a domain listed in [domains]: example.com)",
    ]


def test_config_error_exposes_the_first_problem():
    with pytest.raises(ConfigError) as info:
        load(BASE + "[smtp]\nmax_recipients = 0\n")
    exc = info.value
    assert (exc.file, exc.key, exc.message, exc.allowed) == (
        "mailkeep.toml", "smtp.max_recipients", "0 is out of range", "1 to 100000")
    assert str(exc) == "mailkeep.toml: smtp.max_recipients: 0 is out of range (allowed: 1 to 100000)"


def test_hostname_is_required():
    assert errors_of('[domains."example.com"]\n') == [
        "mailkeep.toml: hostname: required setting is missing: the name of this server in DNS, "
        "such as \"mail.example.com\""]


def test_unquoted_domain_gets_a_hint():
    errors = errors_of(BASE + "[domains.example.org]\n")
    assert errors == ["mailkeep.toml: domains.example.org: unknown key; is this a domain name "
                      "without quotes? Write [domains.\"example.org\"]"]


def test_same_domain_twice_in_different_forms():
    errors = errors_of(BASE + '[domains."xn--bcher-kva.example"]\n[domains."BÜCHER.example"]\n')
    assert errors == ["mailkeep.toml: domains.\"BÜCHER.example\": the same domain as "
                      "'xn--bcher-kva.example' (both are 'xn--bcher-kva.example' in lower-case IDNA form)"]


@pytest.mark.parametrize("name", ["exa_mple.com", "-bad.example", "[192.0.2.1]", "1.2.3.4",
                                  "a..b", "example.com."])
def test_invalid_domain_names(name: str):
    errors = errors_of(f'hostname = "mx.example.com"\n[domains."{name}"]\n')
    assert len(errors) == 1 and errors[0].startswith(f"mailkeep.toml: {key_path('domains', name)}: ")


def test_account_collides_with_alias():
    errors = errors_of(BASE + '[aliases]\n"ME@example.com" = "x@elsewhere.example"\n')
    assert errors == ["mailkeep.toml: aliases.\"ME@example.com\": 'ME@example.com' is already an "
                      "account; an address is either an account or an alias"]


def test_account_alias_collides_with_another_account():
    errors = errors_of(BASE + '[accounts."she@example.com"]\naliases = ["me@example.com"]\n')
    assert errors == ["mailkeep.toml: accounts.\"she@example.com\".aliases[0]: 'me@example.com' "
                      "is already an account"]


def test_alias_loop_is_an_error():
    errors = errors_of(BASE + '[aliases]\n"a@example.com" = "b@example.com"\n'
                       '"b@example.com" = ["me@example.com", "a@example.com"]\n')
    assert errors == ["mailkeep.toml: aliases.\"a@example.com\": aliases form a loop: "
                      "a@example.com -> b@example.com -> a@example.com"]


def test_alias_target_must_exist_in_our_domains():
    errors = errors_of(BASE + '[aliases]\n"info@example.com" = ["me@example.com", "she@example.com"]\n')
    assert errors == ["mailkeep.toml: aliases.\"info@example.com\": 'she@example.com' is not an "
                      "account or alias of this server (allowed: accounts, aliases or addresses "
                      "in other domains)"]


def test_alias_target_may_be_a_subaddress():
    config = load(BASE + '[aliases]\n"lists@example.com" = "me+lists@example.com"\n')
    assert config.aliases["lists@example.com"] == ("me+lists@example.com",)


def test_alias_to_relay_only_account_is_an_error():
    errors = errors_of(BASE + '[accounts."relay@example.com"]\nrelay_only = true\n'
                       '[aliases]\n"r@example.com" = "relay@example.com"\n')
    assert errors == ["mailkeep.toml: aliases.\"r@example.com\": 'relay@example.com' is a "
                      "relay-only account, which has no mailbox (allowed: accounts, aliases or "
                      "addresses in other domains)"]


def test_empty_alias_is_an_error():
    assert errors_of(BASE + '[aliases]\n"a@example.com" = []\n') == [
        "mailkeep.toml: aliases.\"a@example.com\": an alias needs at least one target "
        "(allowed: an address or an array of addresses)"]


def test_burned_must_be_in_its_domain_and_not_an_account():
    errors = errors_of(BASE.replace('[domains."example.com"]',
                                    '[domains."example.com"]\nburned = ["x@example.org", "me@example.com"]'))
    assert errors == [
        "mailkeep.toml: domains.\"example.com\".burned[0]: 'x@example.org' is not an address in "
        "example.com (allowed: addresses ending in @example.com)",
        "mailkeep.toml: domains.\"example.com\".burned[1]: 'me@example.com' is an account; "
        "remove it from burned or remove the account or alias",
    ]


def test_postmaster_must_be_deliverable():
    errors = errors_of('postmaster = "relay@example.com"\n' + BASE +
                       '[accounts."relay@example.com"]\nrelay_only = true\n')
    assert errors == ["mailkeep.toml: postmaster: 'relay@example.com' is a relay-only account, "
                      "which has no mailbox (allowed: an address in accounts or aliases)"]


def test_postmaster_alias_pointing_outside_is_an_error():
    errors = errors_of(BASE + '[aliases]\n"postmaster@example.com" = "pm@elsewhere.example"\n')
    assert len(errors) == 1
    assert errors[0].startswith("mailkeep.toml: domains.\"example.com\": mail to "
                                "postmaster@example.com cannot be delivered")
    assert "RFC 5321 §4.5.1" in errors[0]


def test_no_mailbox_at_all_is_only_a_warning():
    # A fresh setup: domains first, accounts next. Nothing can be delivered yet.
    warnings = warnings_of('hostname = "mx.example.com"\n[domains."example.com"]\n')
    assert any("postmaster@example.com would be rejected" in w for w in warnings)


def test_missing_abuse_is_a_warning():
    assert warnings_of(BASE) == [
        "mailkeep.toml: domains.\"example.com\": abuse@example.com does not reach anyone "
        "(RFC 2142 §2); add an alias or a catch-all"]
    assert warnings_of(BASE + '[aliases]\n"abuse@example.com" = "me@example.com"\n') == []


def test_limits_are_range_checked():
    errors = errors_of(BASE + '[smtp]\nmessage_size_limit = "0"\nmax_data_line = 100\n'
                       'soft_error_limit = 9\nhard_error_limit = 5\nerror_sleep = "2h"\n')
    assert errors == [
        "mailkeep.toml: smtp.message_size_limit: '0' is out of range (allowed: 1024 to 1099511627776 bytes)",
        "mailkeep.toml: smtp.error_sleep: '2h' is out of range (allowed: 0 to 300 seconds)",
        "mailkeep.toml: smtp.max_data_line: 100 is out of range (allowed: 1000 to 104857600)",
        "mailkeep.toml: smtp.soft_error_limit: 9 is larger than hard_error_limit (5) "
        "(allowed: a number not above hard_error_limit)",
    ]


def test_rfc_minimums_are_warnings():
    warnings = warnings_of(BASE + '[aliases]\n"abuse@example.com" = "me@example.com"\n'
                           '[smtp]\nmax_recipients = 10\ncommand_timeout = "20s"\n')
    assert [w.split(": ")[1] for w in warnings] == ["smtp.max_recipients", "smtp.command_timeout"]


def test_listener_errors():
    errors = errors_of(BASE + """
[[listeners]]
protocol = "smtps"
address = "0.0.0.0:465"
[[listeners]]
protocol = "smtp"
address = "mail.example.com:25"
[[listeners]]
protocol = "smtp"
address = "::1:25"
[[listeners]]
protocol = "smtp"
address = "127.0.0.1:99999"
[[listeners]]
protocol = "lmtp"
address = "unix:/run/a.sock"
[[listeners]]
protocol = "lmtp"
address = "unix:/run/a.sock"
""")
    assert errors == [
        "mailkeep.toml: listeners[0].protocol: 'smtps' is not a valid value (allowed: smtp, "
        "submission, submissions, imap, imaps, pop3, pop3s, lmtp, http, https)",
        "mailkeep.toml: listeners[1].address: 'mail.example.com' is not an IP address (allowed: "
        "\"IPv4:port\", \"[IPv6]:port\" or \"unix:/path/to/socket\")",
        "mailkeep.toml: listeners[2].address: '::1:25': write IPv6 addresses in brackets, such as "
        "\"[::]:25\" (allowed: \"IPv4:port\", \"[IPv6]:port\" or \"unix:/path/to/socket\")",
        "mailkeep.toml: listeners[3].address: '99999' is not a port number (allowed: 0 to 65535)",
        "mailkeep.toml: listeners[5].address: 'unix:/run/a.sock' is already used by listeners[4]",
    ]


def test_password_protocol_without_tls_warns():
    warnings = warnings_of(BASE + '[aliases]\n"abuse@example.com" = "me@example.com"\n'
                           '[[listeners]]\nprotocol = "imap"\naddress = "0.0.0.0:143"\ntls = "none"\n'
                           '[[listeners]]\nprotocol = "imap"\naddress = "127.0.0.1:1143"\ntls = "none"\n')
    assert warnings == ["mailkeep.toml: listeners[0].tls: imap without TLS on 0.0.0.0:143 lets "
                        "passwords cross the network in clear"]


def test_tls_needs_both_files():
    assert errors_of(BASE + '[tls]\ncert = "/etc/ssl/c.pem"\n') == [
        "mailkeep.toml: tls.key: required when the other of cert and key is set (allowed: both "
        "cert and key, or neither for a generated self-signed certificate)"]


def test_subaddress_separator_is_checked():
    errors = errors_of(BASE.replace('[domains."example.com"]',
                                    '[domains."example.com"]\nsubaddress_separator = "a."'))
    assert errors == ["mailkeep.toml: domains.\"example.com\".subaddress_separator: 'a.' is not a "
                      "set of separator characters (allowed: up to 8 of +-_=#%&~!$*/?^`{|}', or "
                      "\"\" to disable sub-addressing)"]


def test_invalid_toml(tmp_path: Path):
    path = tmp_path / "mailkeep.toml"
    path.write_text('hostname = "x\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: not valid TOML: ")


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == (f"{tmp_path / 'nope.toml'}: cannot read the configuration file: "
                               "No such file or directory")


def test_oversized_file_is_refused(tmp_path: Path):
    path = tmp_path / "mailkeep.toml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_key_path_rendering():
    assert key_path("domains", "example.com", "burned", 2) == 'domains."example.com".burned[2]'
    assert key_path("smtp", "max_recipients") == "smtp.max_recipients"
    assert key_path("accounts", 'we"ird') == 'accounts."we\\"ird"'


# -- property tests --------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_a_config_or_a_config_error(text: str):
    try:
        load(text)
    except ConfigError as exc:
        assert exc.errors and all(str(issue).startswith("mailkeep.toml: ") for issue in exc.errors)


_SCALARS = st.one_of(st.booleans(), st.integers(-10, 10**7), st.text(max_size=12),
                     st.sampled_from(["100M", "17s", "me@example.com", "x@elsewhere.example",
                                      "unix:/run/x.sock", "127.0.0.1:25", "[::]:25", "starttls"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
_KNOWN = st.sampled_from(["hostname", "data_dir", "postmaster", "log", "tls", "smtp", "domains",
                          "accounts", "aliases", "run_as", "format", "level", "catch_all",
                          "burned", "relay_only", "quota", "name", "aliases", "example.com",
                          "me@example.com", "max_recipients", "message_size_limit"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.one_of(_KNOWN, st.text(max_size=8)), st.one_of(
    _VALUES, st.dictionaries(st.one_of(_KNOWN, st.text(max_size=8)), _VALUES, max_size=4)),
    max_size=6))
def test_any_document_gives_a_config_or_a_config_error(document: dict):
    text = tomlkit.dumps(document)
    try:
        config = load(text)
    except ConfigError as exc:
        assert exc.errors
    else:
        assert config.hostname
