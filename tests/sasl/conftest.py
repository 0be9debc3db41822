"""Fixtures for the SASL tests."""

from __future__ import annotations

from collections.abc import Iterator

import argon2
import pytest

from mailkeep.auth import passwords


@pytest.fixture(autouse=True, scope="module")
def _cheap_argon2() -> Iterator[None]:
    """Argon2id with 1 MiB and one pass instead of 64 MiB and three, so that a test that
    logs in a dozen times takes milliseconds. The code paths are the same: hashes are
    still ``{ARGON2ID}$argon2id$...``, verified by argon2-cffi, and count as current for
    ``needs_rehash``. tests/auth tests the real parameters."""
    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                                  hash_len=passwords.ARGON2_HASH_LEN,
                                  salt_len=passwords.ARGON2_SALT_LEN, type=argon2.Type.ID)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passwords, "_hasher", cheap)
        yield
