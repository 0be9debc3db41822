"""data_dir/acme: the account key, pairs switched atomically, crash leftovers, requests."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.support.certs import TestCA

from mailkeep.acme.messages import AcmeError
from mailkeep.acme.storage import AcmeStorage
from mailkeep.servers.tls import CertificatePair, server_context


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "ca")


def _issue(ca: TestCA, stem: str) -> tuple[bytes, bytes]:
    issued = ca.issue(["mx.example.test"], stem=stem)
    return issued.key_file.read_bytes(), issued.cert_file.read_bytes()


def test_account_key_is_created_once_private_and_reused(tmp_path: Path):
    storage = AcmeStorage(tmp_path)
    first = storage.account_key()
    path = tmp_path / "acme" / "account.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "acme").stat().st_mode) == 0o700
    assert storage.account_key().jwk == first.jwk


def test_a_damaged_account_key_is_an_error_not_replaced(tmp_path: Path):
    storage = AcmeStorage(tmp_path)
    storage.ensure()
    path = tmp_path / "acme" / "account.key"
    path.write_bytes(b"garbage")
    with pytest.raises(AcmeError, match="unusable"):
        storage.account_key()
    assert path.read_bytes() == b"garbage"


def test_install_switches_the_pair_and_keeps_one_previous(tmp_path: Path, ca: TestCA):
    storage = AcmeStorage(tmp_path)
    assert storage.current("ecdsa") is None
    installed = []
    for n in range(3):
        key, chain = _issue(ca, f"c{n}")
        installed.append(storage.install("ecdsa", key, chain, "https://ca.test/dir"))
        current = storage.current("ecdsa")
        assert current is not None
        assert current.directory == installed[-1].directory
        assert current.cert_file.read_bytes() == chain and current.key_file.read_bytes() == key
        assert current.source == "https://ca.test/dir"
        assert stat.S_IMODE(current.key_file.stat().st_mode) == 0o600
        # The pair loads: the key belongs to the certificate.
        server_context([CertificatePair(current.cert_file, current.key_file)])
    versions = sorted(p.name for p in (tmp_path / "acme" / "archive").iterdir())
    assert versions == sorted([installed[1].directory.name, installed[2].directory.name])
    assert os.readlink(tmp_path / "acme" / "ecdsa") == f"archive/{installed[2].directory.name}"


def test_crash_leftovers_are_ignored_then_cleaned(tmp_path: Path, ca: TestCA):
    storage = AcmeStorage(tmp_path)
    key, chain = _issue(ca, "a")
    good = storage.install("rsa", key, chain, "")
    archive = tmp_path / "acme" / "archive"
    # A crash while writing a version (staging directory, half a pair), and one between
    # the finished version and the link switch (an unreferenced complete version).
    staging = archive / ".rsa-20260101T000000Z-1.tmp"
    staging.mkdir()
    (staging / "key.pem").write_bytes(b"half")
    orphan = archive / "rsa-20260101T000001Z-2"
    orphan.mkdir()
    (orphan / "cert.pem").write_bytes(chain)
    os.symlink("archive/nothing", tmp_path / "acme" / ".rsa.abc.link")
    current = storage.current("rsa")
    assert current is not None and current.directory == good.directory
    key2, chain2 = _issue(ca, "b")
    newest = storage.install("rsa", key2, chain2, "")
    names = {p.name for p in archive.iterdir()}
    assert names == {good.directory.name, newest.directory.name}
    assert not list((tmp_path / "acme").glob(".rsa.*.link"))


def test_a_link_outside_the_archive_is_not_followed(tmp_path: Path, ca: TestCA):
    storage = AcmeStorage(tmp_path)
    storage.ensure()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _key, chain = _issue(ca, "x")
    (elsewhere / "cert.pem").write_bytes(chain)
    os.symlink("../elsewhere", tmp_path / "acme" / "ecdsa")
    assert storage.current("ecdsa") is None


def test_renewal_requests_round_trip_once(tmp_path: Path):
    storage = AcmeStorage(tmp_path)
    assert storage.take_request() is None
    request_id = storage.request_renewal(force=True)
    request = storage.take_request()
    assert request is not None and request.id == request_id and request.force
    assert storage.take_request() is None
    other = storage.request_renewal(force=False)
    storage.withdraw_request("not-this-one")
    storage.withdraw_request(other)
    assert storage.take_request() is None
    (tmp_path / "acme" / "renew-request").write_text("{broken")
    assert storage.take_request() is None
    assert not (tmp_path / "acme" / "renew-request").exists()


def test_state_survives_and_garbage_reads_as_empty(tmp_path: Path):
    storage = AcmeStorage(tmp_path)
    storage.write_state({"last_error": "x", "dropped": {"a.test": 1.0}})
    assert storage.read_state()["dropped"] == {"a.test": 1.0}
    (tmp_path / "acme" / "state.json").write_text("[]")
    assert storage.read_state() == {}
