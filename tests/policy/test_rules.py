"""The rule list of a listener (mailkeep.policy.rules) and the pure checks of the inbound
policy (HELO syntax, address literals), plus how the configuration loads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.config import ConfigError, load_config
from mailkeep.config.schema import DEFAULT_POLICY_RULES
from mailkeep.policy.inbound import address_literal, helo_problem, valid_hostname
from mailkeep.policy.rules import RULES, RuleError, Stage, parse_rules

FIXTURES = Path(__file__).parent / "fixtures"


def test_default_rules_parse_in_stage_order() -> None:
    rules = parse_rules(DEFAULT_POLICY_RULES)
    assert [r.name for r in rules] == list(DEFAULT_POLICY_RULES)
    stages = [r.stage for r in rules]
    assert stages == sorted(stages)
    assert rules[0].stage is Stage.CONNECT and rules[-1].stage is Stage.DATA


def test_unknown_rule_names_the_allowed_ones() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(["permit_trusted_networks", "reject_everything"])
    assert caught.value.index == 1
    assert "unknown rule 'reject_everything'" in str(caught.value)
    assert "greylist" in (caught.value.allowed or "")


def test_rules_out_of_transaction_order_are_refused() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(["greylist", "reject_non_fqdn_helo_hostname"])
    assert caught.value.index == 1
    assert "helo stage" in str(caught.value) and "rcpt stage" in str(caught.value)


def test_table_rules_load_their_table_and_others_take_no_argument() -> None:
    rules = parse_rules([f"check_helo_access hash:{FIXTURES}/helo_reject_domains",
                         f"header_checks pcre:{FIXTURES}/header_checks.pcre"])
    assert rules[0].table is not None and rules[1].table is not None
    assert str(rules[0]) == f"check_helo_access hash:{FIXTURES}/helo_reject_domains"
    with pytest.raises(RuleError, match="needs a table"):
        parse_rules(["check_sender_access"])
    with pytest.raises(RuleError, match="takes no argument"):
        parse_rules(["greylist hash:/etc/x"])
    with pytest.raises(RuleError, match="cannot be used for header checks"):
        parse_rules([f"header_checks hash:{FIXTURES}/helo_reject_domains"])


def test_keys_only_table_needs_bare_keys() -> None:
    with pytest.raises(RuleError, match="has no value"):
        parse_rules([f"check_recipient_access hash:{FIXTURES}/invalid_recipients"])
    (rule,) = parse_rules([
        f"check_recipient_access hash:{FIXTURES}/invalid_recipients bare_keys=REJECT"])
    assert rule.table is not None
    with pytest.raises(RuleError, match="unknown option"):
        parse_rules([f"check_recipient_access hash:{FIXTURES}/invalid_recipients keys=1"])


def test_missing_table_file_is_an_error_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="cannot read table"):
        parse_rules([f"check_client_access cidr:{tmp_path}/absent"])


@settings(max_examples=200)
@given(st.lists(st.one_of(st.sampled_from(sorted(RULES)), st.text(max_size=40)),
                max_size=8))
def test_parse_rules_raises_only_rule_errors(texts: list[str]) -> None:
    try:
        rules = parse_rules(texts)
    except RuleError:
        return
    assert len(rules) == len(texts)


@pytest.mark.parametrize(("helo", "fqdn", "expected"), [
    ("mx.example.org", True, None),
    ("[192.0.2.1]", True, None),
    ("[IPv6:2001:db8::1]", True, None),
    ("localhost", True, (504, "5.5.2")),
    ("localhost", False, None),
    ("bad_name!", False, (501, "5.5.2")),
    ("-lead.example", False, (501, "5.5.2")),
    ("a" * 64 + ".example", False, (501, "5.5.2")),
    ("[300.1.1.1]", False, (501, "5.5.2")),
])
def test_helo_syntax(helo: str, fqdn: bool, expected: tuple[int, str] | None) -> None:
    reply = helo_problem(helo, check_fqdn=fqdn)
    assert (None if reply is None else (reply.code, reply.enhanced)) == expected


def test_address_literals_and_host_names() -> None:
    assert address_literal("[192.0.2.1]") == "192.0.2.1"
    assert address_literal("[IPv6:2001:DB8::1]") == "2001:db8::1"
    assert address_literal("[2001:db8::1]") is None      # RFC 5321 §4.1.3 needs "IPv6:"
    assert address_literal("192.0.2.1") is None
    assert valid_hostname("xn--bcher-kva.example.")
    assert not valid_hostname("")
    assert not valid_hostname("a..b")


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_helo_checks_never_raise(helo: str) -> None:
    helo_problem(helo, check_fqdn=True)
    address_literal(helo)


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "mailkeep.toml"
    path.write_text(f'hostname = "mx.example.org"\ndata_dir = "data"\n{body}')
    return path


def test_config_compiles_rulesets_and_checks_listener_policies(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, """
[policy]
rules = ["permit_trusted_networks", "dmarc"]
trusted_networks = ["192.0.2.0/24"]
quota_grace = 5
[policy.rulesets]
strict = ["reject_unknown_client_hostname"]
[[listeners]]
protocol = "smtp"
address = "127.0.0.1:0"
policy = "strict"
"""))
    assert [r.name for r in config.policy.compiled[""]] == ["permit_trusted_networks", "dmarc"]
    assert [r.name for r in config.policy.compiled["strict"]] == [
        "reject_unknown_client_hostname"]
    assert config.policy.trusted_networks == ("192.0.2.0/24",)
    assert config.policy.quota_grace == 0.05
    assert config.listeners[0].policy == "strict"


@pytest.mark.parametrize(("body", "key", "message"), [
    ('[policy]\nrules = ["greylist", "reject_our_helo"]\n', "policy.rules[1]", "comes after"),
    ('[policy]\ntrusted_networks = ["nonsense"]\n', "policy.trusted_networks[0]",
     "not a network"),
    ('[policy.dnsbl]\nsites = ["zen.spamhaus.org*x"]\n', "policy.dnsbl.sites", ""),
    ('[policy.dnsbl]\naction = "explode"\n', "policy.dnsbl.action", "not a valid value"),
    ('[policy.greylist]\ndelay = "20h"\nretry_window = "10h"\n',
     "policy.greylist.retry_window", "longer than delay"),
    ('[policy.clamav]\nsocket = "nowhere"\n', "policy.clamav.socket", ""),
    ('[policy.rspamd]\nurl = "ftp://x"\n', "policy.rspamd.url", "not an HTTP URL"),
    ('[[listeners]]\nprotocol = "smtp"\naddress = "127.0.0.1:0"\npolicy = "nope"\n',
     "listeners[0].policy", "no ruleset named 'nope'"),
    ('[[listeners]]\nprotocol = "imap"\naddress = "127.0.0.1:0"\npolicy = "none"\n',
     "listeners[0].policy", "only smtp listeners"),
])
def test_config_errors_name_the_key(tmp_path: Path, body: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, body))
    issue = next(i for i in caught.value.errors if i.key == key)
    assert message in issue.message


def test_message_dns_budget_turns_extra_lookups_into_temporary_errors() -> None:
    import asyncio

    from mailkeep.outbound.dns import DnsTemporaryError, query
    from mailkeep.policy.inbound import BudgetResolver

    class Counting:
        """Stands in for dnspython's resolver: counts what reaches it."""

        lifetime = 1.0
        calls = 0

        async def resolve(self, *args: object, **kwargs: object) -> object:
            self.calls += 1
            raise __import__("dns.resolver").resolver.NXDOMAIN()

    inner = Counting()
    budget = BudgetResolver(inner, 2)

    async def run() -> list[str]:
        outcomes = []
        for _ in range(4):
            try:
                await query(budget, "example.test", "TXT")
            except DnsTemporaryError as exc:
                outcomes.append("temp:" + ("budget" if "budget" in str(exc) else "other"))
            except Exception as exc:  # NXDOMAIN → DnsNameError
                outcomes.append(type(exc).__name__)
        return outcomes

    assert asyncio.run(run()) == ["DnsNameError", "DnsNameError", "temp:budget", "temp:budget"]
    assert inner.calls == 2 and budget.lifetime == 1.0
