"""Shared fixtures of the DKIM tests: one set of keys (created once) and its DNS records."""

from __future__ import annotations

import pytest
from tests.dkim.verifiers import DOMAIN, NOW

from mailkeep.dkim.keys import DkimKeys, SigningKey


@pytest.fixture(scope="session")
def key_store(tmp_path_factory: pytest.TempPathFactory) -> DkimKeys:
    """example.com with an active RSA-2048 and Ed25519 key (created once per run)."""
    store = DkimKeys.for_data_dir(tmp_path_factory.mktemp("dkim-data"))
    store.keygen(DOMAIN, now=NOW)
    return store


@pytest.fixture(scope="session")
def records(key_store: DkimKeys) -> dict[str, str]:
    return dict(key_store.dns_records(DOMAIN))


@pytest.fixture(scope="session")
def signing_keys(key_store: DkimKeys) -> list[SigningKey]:
    return key_store.signing_keys(DOMAIN)
