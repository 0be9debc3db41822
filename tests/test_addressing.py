"""Recipient resolution: every rule of mailkeep.addressing, in its documented order."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.addressing import Resolution, Resolver, Target, split_subaddress
from mailkeep.config import parse_config_text

# The seed 000 home server, as one Mailkeep file: personalized catch-alls for me@ and he@,
# a general catch-all to me@, the invalid_recipients list as "burned", a relay-only account.
SEED_000 = """
hostname = "mail.example.com"
data_dir = "/var/lib/mailkeep"

[domains."example.com"]
catch_all = "me@example.com"
personalized_catch_all = true
burned = ["adobe@example.com", "alx@example.com", "ebrats2015@example.com",
          "ama-rolf@example.com", "daora-rolf@example.com"]

[accounts."me@example.com"]
name = "Me"
aliases = ["rolf@example.com"]

[accounts."he@example.com"]

[accounts."relay1@example.com"]
relay_only = true
"""

FULL = """
hostname = "mail.example.com"
postmaster = "boss@example.org"

[domains."example.com"]
subaddress_separator = "+-"
subaddress_to_folder = true

[domains."example.org"]
catch_all = "team@example.org"

[domains."bücher.example"]
subaddress_separator = ""

[accounts."me@example.com"]
[accounts."she@example.com"]
[accounts."boss@example.org"]
[accounts."leser@bücher.example"]
[accounts."jürgen@bücher.example"]
[accounts."sender@example.org"]
relay_only = true

[aliases]
"info@example.com" = ["me@example.com", "she@example.com", "me@example.com"]
"all@example.com" = ["info@example.com", "boss@example.org", "she+news@example.com"]
"team@example.org" = "all@example.com"
"fwd@example.com" = ["me@example.com", "friend@gmail.example"]
"postmaster@example.com" = "she@example.com"
"""


@functools.cache
def resolver(text: str) -> Resolver:
    return Resolver(parse_config_text(text, Path("/etc/mailkeep/mailkeep.toml")))


@pytest.fixture(scope="module")
def seed() -> Resolver:
    return resolver(SEED_000)


@pytest.fixture(scope="module")
def full() -> Resolver:
    return resolver(FULL)


def accounts(resolution: Resolution) -> list[str]:
    return [t.account for t in resolution.targets]


def test_foreign_domain_is_relay_denied(full: Resolver):
    result = full.resolve("someone@gmail.example")
    assert result.kind == "foreign_domain"
    assert result.targets == ()


def test_exact_account_any_case(full: Resolver):
    assert full.resolve("me@example.com") == Resolution("deliver", (Target("me@example.com"),), "account")
    assert full.resolve("ME@Example.COM").targets == (Target("me@example.com"),)


def test_burned_wins_over_catch_all(seed: Resolver):
    # Seed 000 invalid_recipients: 550 5.1.1 although the catch-all would take them.
    for address in ("adobe@example.com", "ADOBE@example.com", "ama-rolf@example.com"):
        assert seed.resolve(address).kind == "burned", address
    assert seed.resolve("adobe+x@example.com").kind == "burned"


def test_seed_personalized_catch_all(seed: Resolver):
    # /^.*me@example\.com$/ -> me@, /^.*he@example\.com$/ -> he@
    assert accounts(seed.resolve("shopme@example.com")) == ["me@example.com"]
    assert accounts(seed.resolve("github-he@example.com")) == ["he@example.com"]
    # The general catch-all takes the rest.
    assert accounts(seed.resolve("random@example.com")) == ["me@example.com"]
    assert seed.resolve("random@example.com").reason.startswith("catch-all")


def test_personalized_catch_all_longest_match_wins():
    r = resolver("""
hostname = "mx.example.com"
[domains."example.com"]
personalized_catch_all = true
[accounts."me@example.com"]
[accounts."ome@example.com"]
""")
    assert accounts(r.resolve("homeome@example.com")) == ["ome@example.com"]
    assert accounts(r.resolve("xme@example.com")) == ["me@example.com"]
    assert r.resolve("nobody@example.com").kind == "unknown"


def test_account_alias(seed: Resolver):
    result = seed.resolve("Rolf@example.com")
    assert result.kind == "deliver" and accounts(result) == ["me@example.com"]


def test_relay_only_account_has_no_mailbox(seed: Resolver):
    # Not even the catch-all takes mail for a relay-only account.
    result = seed.resolve("relay1@example.com")
    assert result.kind == "unknown"
    assert "relay-only" in result.reason


def test_alias_expansion_is_recursive_and_deduplicated(full: Resolver):
    info = full.resolve("info@example.com")
    assert info.kind == "deliver"
    assert accounts(info) == ["me@example.com", "she@example.com"]
    everyone = full.resolve("all@example.com")
    assert accounts(everyone) == ["me@example.com", "she@example.com", "boss@example.org"]


def test_alias_to_outside_address_is_remote_unsupported(full: Resolver):
    result = full.resolve("fwd@example.com")
    assert result.kind == "remote_unsupported"
    assert result.external == ("friend@gmail.example",)


def test_subaddress_first_separator_and_folder_keeps_case(full: Resolver):
    result = full.resolve("me+Shopping-2024@example.com")
    assert result.targets == (Target("me@example.com", "Shopping-2024"),)
    assert full.resolve("me-lists@example.com").targets == (Target("me@example.com", "lists"),)
    # An empty detail is the inbox.
    assert full.resolve("me+@example.com").targets == (Target("me@example.com", None),)


def test_subaddress_of_alias_delivers_to_each_target_folder(full: Resolver):
    result = full.resolve("info+x@example.com")
    assert result.targets == (Target("me@example.com", "x"), Target("she@example.com", "x"))


def test_subaddress_without_folder_option():
    r = resolver(SEED_000)
    assert r.resolve("me+lists@example.com").targets == (Target("me@example.com", None),)


def test_separator_disabled(full: Resolver):
    assert full.resolve("leser+x@bücher.example").kind == "unknown"


@pytest.mark.parametrize("address", ["postmaster@example.org", "POSTMASTER@example.org",
                                     "PostMaster@bücher.example"])
def test_postmaster_of_every_domain(full: Resolver, address: str):
    # RFC 5321 §4.5.1: postmaster is case-insensitive and exists in every domain.
    assert accounts(full.resolve(address)) == ["boss@example.org"]


def test_explicit_postmaster_alias_wins(full: Resolver):
    assert accounts(full.resolve("postmaster@example.com")) == ["she@example.com"]


def test_postmaster_default_is_first_account_of_the_domain(seed: Resolver):
    assert accounts(seed.resolve("postmaster@example.com")) == ["me@example.com"]
    r = resolver("""
hostname = "mx.example.com"
[domains."a.example"]
[domains."b.example"]
[accounts."first@a.example"]
[accounts."second@b.example"]
""")
    assert accounts(r.resolve("postmaster@b.example")) == ["second@b.example"]


def test_catch_all_through_alias(full: Resolver):
    result = full.resolve("unknown-person@example.org")
    assert result.kind == "deliver"
    assert accounts(result) == ["me@example.com", "she@example.com", "boss@example.org"]


def test_unknown(full: Resolver):
    assert full.resolve("nobody@example.com").kind == "unknown"
    assert full.resolve("nobody@example.com").targets == ()


@pytest.mark.parametrize("address", ["leser@bücher.example", "leser@xn--bcher-kva.example",
                                     "LESER@BÜCHER.EXAMPLE"])
def test_idna_domains(full: Resolver, address: str):
    assert accounts(full.resolve(address)) == ["leser@xn--bcher-kva.example"]


def test_utf8_local_parts(full: Resolver):
    # RFC 6531: UTF-8 local parts, compared NFC-normalised and case-insensitively.
    assert accounts(full.resolve("JÜRGEN@bücher.example")) == ["jürgen@xn--bcher-kva.example"]
    decomposed = "ju\u0308rgen@bücher.example"
    assert accounts(full.resolve(decomposed)) == ["jürgen@xn--bcher-kva.example"]


def test_quoted_local_part(full: Resolver):
    assert accounts(full.resolve('"me"@example.com')) == ["me@example.com"]


@pytest.mark.parametrize("address", ["", "no-at-sign", "@example.com", "me@", "me@[192.0.2.1]",
                                     "me@exa mple.com", "x" * 65 + "@example.com"])
def test_invalid_addresses_are_unknown(full: Resolver, address: str):
    assert full.resolve(address).kind == "unknown"


def test_is_local_domain(full: Resolver):
    assert full.is_local_domain("EXAMPLE.com")
    assert full.is_local_domain("bücher.example")
    assert full.is_local_domain("xn--bcher-kva.example")
    assert not full.is_local_domain("gmail.example")
    assert not full.is_local_domain("")


def test_split_subaddress():
    assert split_subaddress("me+a+b", "+") == ("me", "a+b")
    assert split_subaddress("me-a+b", "+-") == ("me", "a+b")
    assert split_subaddress("+me", "+") is None
    assert split_subaddress("me", "+") is None
    assert split_subaddress("me+x", "") is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_resolve_never_raises(text: str):
    r = resolver(FULL)
    result = r.resolve(text)
    assert result.kind in ("deliver", "unknown", "burned", "foreign_domain", "remote_unsupported")


_LOCAL = st.text(alphabet="abcdehilmnorsx+-.ÄÖü", min_size=1, max_size=20)
_DOMAIN = st.sampled_from(["example.com", "EXAMPLE.COM", "example.org", "bücher.example",
                           "gmail.example"])


@settings(max_examples=200, deadline=None)
@given(_LOCAL, _DOMAIN)
def test_resolution_invariants(local: str, domain: str):
    r = resolver(FULL)
    result = r.resolve(f"{local}@{domain}")
    mailboxes = {"me@example.com", "she@example.com", "boss@example.org",
                 "leser@xn--bcher-kva.example", "jürgen@xn--bcher-kva.example"}
    if result.kind == "deliver":
        assert result.targets
        assert {t.account for t in result.targets} <= mailboxes
        assert len({t.account for t in result.targets}) == len(result.targets)
    else:
        assert result.kind == "remote_unsupported" or not result.targets
    # Case never changes the outcome for the account part.
    again = r.resolve(f"{local.upper()}@{domain}")
    assert again.kind == result.kind
