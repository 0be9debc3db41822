"""[submission], [queue], [delivery] and [relays.NAME]: values, defaults and precise errors."""

from __future__ import annotations

import pickle

import pytest

from mailkeep.config import ConfigError, parse_config_text

BASE = """
hostname = "mail.example.com"
[domains."example.com"]
[accounts."me@example.com"]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(BASE + text, "mailkeep.toml")
    return [str(e) for e in info.value.errors]


def test_defaults_match_postfix_and_the_docs() -> None:
    config = parse_config_text(BASE, "mailkeep.toml")
    assert config.queue.minimal_backoff_time == 300
    assert config.queue.maximal_backoff_time == 4000
    assert config.queue.maximal_queue_lifetime == 5 * 86400
    assert config.queue.delay_warning_time == 0
    assert config.delivery.relayhost is None and config.delivery.dane and config.delivery.mta_sts
    assert config.submission.max_messages_per_hour == 500
    assert "X-Originating-IP" in config.submission.remove_headers
    assert config.accounts["me@example.com"].send == "allow"


@pytest.mark.parametrize("host, expected", [
    ("[smtp.provider.net]:submission", ("smtp.provider.net", 587, False, "verify")),
    ("[smtp.provider.net]:465", ("smtp.provider.net", 465, False, "implicit")),
    ("relay.example.net", ("relay.example.net", 587, True, "verify")),
    ("relay.example.net:smtp", ("relay.example.net", 25, True, "verify")),
    ("[192.0.2.1]:2525", ("192.0.2.1", 2525, False, "verify")),
])
def test_relay_hosts_in_postfix_syntax(host: str, expected: tuple) -> None:
    config = parse_config_text(BASE + f'[relays.r]\nhost = "{host}"\n', "mailkeep.toml")
    relay = config.delivery.relays["r"]
    assert (relay.host, relay.port, relay.mx_lookup, relay.tls) == expected


def test_full_sending_config() -> None:
    config = parse_config_text(BASE + """
[accounts."shared@example.com"]
send = "hold"
max_recipients_per_day = 10
[submission]
max_messages_per_hour = 50
remove_headers = ["X-Mailer"]
senders = { "info@example.com" = ["me@example.com", "shared@example.com"] }
[queue]
minimal_backoff_time = "1m"
delay_warning_time = "4h"
[relays.provider]
host = "[smtp.provider.net]:587"
username = "me@provider.net"
password_file = "/etc/mailkeep/provider.secret"
[delivery]
relayhost = "provider"
transport = { "partner.example" = "direct", ".corp.example" = "provider" }
resolvers = ["127.0.0.1", "127.0.0.1:5353", "[::1]:53"]
""", "mailkeep.toml")
    assert config.submission.senders["info@example.com"] == ("me@example.com",
                                                             "shared@example.com")
    assert config.submission.remove_headers == ("X-Mailer",)
    assert config.queue.delay_warning_time == 4 * 3600
    assert dict(config.delivery.transport) == {"partner.example": "direct",
                                               ".corp.example": "provider"}
    assert config.delivery.resolvers == ("127.0.0.1", "127.0.0.1:5353", "[::1]:53")
    shared = config.accounts["shared@example.com"]
    assert (shared.send, shared.max_recipients_per_day, shared.max_messages_per_hour) == (
        "hold", 10, None)
    # The server hands its config to the delivery process pickled (mailkeep.queue.agent):
    # the read-only mappings survive, still read-only.
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy.delivery.transport[".corp.example"] == "provider"
    with pytest.raises(TypeError):
        copy.delivery.transport["new.example"] = "direct"  # type: ignore[index]


@pytest.mark.parametrize("text, expected", [
    ('[delivery]\nrelayhost = "nowhere"\n',
     'mailkeep.toml: delivery.relayhost: no relay named \'nowhere\' '
     '(allowed: define it in [relays.NAME] first)'),
    ('[relays.r]\nhost = "[a.example]:99999"\n',
     "mailkeep.toml: relays.r.host: '[a.example]:99999' is not a relay host"),
    ('[relays.r]\nhost = "a.example"\nusername = "u"\n',
     "mailkeep.toml: relays.r.password_file: username and password_file go together"),
    ('[relays.direct]\nhost = "a.example"\n',
     "mailkeep.toml: relays.direct: not a usable relay name"),
    ('[delivery]\ntransport = { "x.example" = "nope" }\n',
     "mailkeep.toml: delivery.transport.\"x.example\": 'nope' is neither \"direct\" nor a "
     "relay name"),
    ('[delivery]\nresolvers = ["dns.example"]\n',
     "mailkeep.toml: delivery.resolvers[0]: 'dns.example' is not an IP address"),
    ('[queue]\nminimal_backoff_time = "2h"\nmaximal_backoff_time = "1h"\n',
     "mailkeep.toml: queue.minimal_backoff_time: larger than maximal_backoff_time"),
    ('[submission]\nsenders = { "info@example.com" = ["nobody@example.com"] }\n',
     "mailkeep.toml: submission.senders.\"info@example.com\"[0]: 'nobody@example.com' is not "
     "an account"),
    ('[submission]\nsenders = { "info@elsewhere.test" = ["me@example.com"] }\n',
     "mailkeep.toml: submission.senders.\"info@elsewhere.test\": the domain of "
     "'info@elsewhere.test' is not a domain of this server"),
    ('[accounts."x@example.com"]\nsend = "maybe"\n',
     "mailkeep.toml: accounts.\"x@example.com\".send: 'maybe' is not a valid value"),
])
def test_precise_errors(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors
