"""Key store: files on disk, selector names, rotation, removal, DNS records, and a running
signer picking up a rotation made by another process."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailkeep.dkim.keys import DkimKeyError, DkimKeys, txt_strings, zone_file_record

# 2026-01-15 12:00 UTC and a month later.
JAN = datetime(2026, 1, 15, 12, tzinfo=UTC).timestamp()
FEB = datetime(2026, 2, 15, 12, tzinfo=UTC).timestamp()


@pytest.fixture
def store(tmp_path: Path) -> DkimKeys:
    return DkimKeys.for_data_dir(tmp_path)


def test_keygen_writes_private_keys_and_state(store: DkimKeys, tmp_path: Path):
    created = store.keygen("Example.COM", rsa_bits=1024, now=JAN)
    assert [(s.name, s.algorithm, s.status, s.bits) for s in created] == [
        ("mk202601r", "rsa", "active", 1024), ("mk202601e", "ed25519", "active", None)]
    directory = tmp_path / "dkim" / "example.com"
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == [
        "mk202601e.ed25519.key", "mk202601r.rsa.key", "state.json"]
    for name in ("mk202601r.rsa.key", "mk202601e.ed25519.key", "state.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    rsa_pem = (directory / "mk202601r.rsa.key").read_bytes()
    assert rsa_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert isinstance(serialization.load_pem_private_key(rsa_pem, None), rsa.RSAPrivateKey)
    ed_pem = (directory / "mk202601e.ed25519.key").read_bytes()
    assert isinstance(serialization.load_pem_private_key(ed_pem, None), ed25519.Ed25519PrivateKey)
    state = json.loads((directory / "state.json").read_text())
    assert state["selectors"] == [
        {"selector": "mk202601r", "algorithm": "rsa", "status": "active",
         "created": "2026-01-15T12:00:00Z", "bits": 1024},
        {"selector": "mk202601e", "algorithm": "ed25519", "status": "active",
         "created": "2026-01-15T12:00:00Z"}]


def test_unicode_domain_is_stored_as_a_label(store: DkimKeys, tmp_path: Path):
    store.keygen("Bücher.example", rsa_bits=1024, now=JAN)
    assert (tmp_path / "dkim" / "xn--bcher-kva.example" / "state.json").is_file()
    assert [k.selector for k in store.signing_keys("bücher.example")] == ["mk202601r", "mk202601e"]
    assert store.dns_records("BÜCHER.example")[0][0] == "mk202601r._domainkey.xn--bcher-kva.example"


def test_selector_prefix(store: DkimKeys):
    created = store.keygen("example.com", selector_prefix="Mail2026", rsa_bits=1024)
    assert [s.name for s in created] == ["mail2026r", "mail2026e"]


@pytest.mark.parametrize("prefix", ["-x", "a_b", "dots.in", "x" * 63, "é"])
def test_bad_selector_prefix_is_refused(store: DkimKeys, prefix: str):
    with pytest.raises(DkimKeyError, match="not a valid selector"):
        store.keygen("example.com", selector_prefix=prefix, rsa_bits=1024)
    assert store.selectors("example.com") == []


def test_empty_selector_prefix_is_refused(store: DkimKeys):
    with pytest.raises(DkimKeyError, match="cannot be empty"):
        store.keygen("example.com", selector_prefix="", rsa_bits=1024)


def test_keygen_twice_is_refused_and_points_to_rotate(store: DkimKeys):
    store.keygen("example.com", rsa_bits=1024, now=JAN)
    with pytest.raises(DkimKeyError, match=r"already has active keys .*dkim rotate example\.com"):
        store.keygen("example.com", rsa_bits=1024, now=JAN)


@pytest.mark.parametrize("bits", [512, 2047, 8192])
def test_unsupported_rsa_size_is_refused(store: DkimKeys, bits: int):
    with pytest.raises(DkimKeyError, match=f"{bits} is not a supported RSA key size"):
        store.keygen("example.com", rsa_bits=bits)


def test_invalid_domain_is_refused(store: DkimKeys):
    with pytest.raises(DkimKeyError, match="not a valid domain"):
        store.keygen("exa mple.com")
    assert store.signing_keys("[192.0.2.1]") == []  # From: domains come from the network


def test_rotate_retires_old_keys_and_signs_with_new(store: DkimKeys):
    store.keygen("example.com", rsa_bits=1024, now=JAN)
    new, retired = store.rotate("example.com", now=FEB)
    assert [s.name for s in new] == ["mk202602r", "mk202602e"]
    assert new[0].bits == 1024  # the size of the key it replaces
    assert [(s.name, s.status) for s in retired] == [("mk202601r", "retired"),
                                                      ("mk202601e", "retired")]
    assert retired[0].retired == datetime(2026, 2, 15, 12, tzinfo=UTC)
    assert [k.selector for k in store.signing_keys("example.com")] == ["mk202602r", "mk202602e"]
    assert [s.name for s in store.retired("example.com")] == ["mk202601r", "mk202601e"]
    # Retired records stay in the DNS list until removed.
    names = [name for name, _ in store.dns_records("example.com")]
    assert names == [f"{s}._domainkey.example.com"
                     for s in ("mk202602r", "mk202602e", "mk202601r", "mk202601e")]


def test_rotate_twice_in_a_month_numbers_the_selectors(store: DkimKeys):
    store.keygen("example.com", rsa_bits=1024, now=JAN)
    first, _ = store.rotate("example.com", now=JAN + 60)
    second, _ = store.rotate("example.com", now=JAN + 120)
    assert [s.name for s in first] == ["mk202601-2r", "mk202601-2e"]
    assert [s.name for s in second] == ["mk202601-3r", "mk202601-3e"]
    assert len(store.selectors("example.com")) == 6


def test_rotate_without_keys_is_refused(store: DkimKeys):
    with pytest.raises(DkimKeyError, match=r"no active keys to rotate.*dkim keygen example\.com"):
        store.rotate("example.com")


def test_remove_refuses_active_and_unknown_deletes_retired(store: DkimKeys, tmp_path: Path):
    store.keygen("example.com", rsa_bits=1024, now=JAN)
    with pytest.raises(DkimKeyError, match=r"mk202601r of example\.com is active.*rotate"):
        store.remove("example.com", "mk202601r")
    store.rotate("example.com", now=FEB)
    with pytest.raises(DkimKeyError, match=r"no selector 'nope' \(selectors: mk202601r, "):
        store.remove("example.com", "nope")
    removed = store.remove("example.com", "MK202601R")
    assert removed.name == "mk202601r"
    assert not (tmp_path / "dkim" / "example.com" / "mk202601r.rsa.key").exists()
    assert [s.name for s in store.selectors("example.com")] == ["mk202601e", "mk202602r", "mk202602e"]


def test_dns_records_publish_the_public_keys(store: DkimKeys):
    store.keygen("example.com", rsa_bits=2048, now=JAN)
    keys = {k.algorithm: k.private_key for k in store.signing_keys("example.com")}
    records = dict(store.dns_records("example.com"))
    rsa_value = records["mk202601r._domainkey.example.com"]
    ed_value = records["mk202601e._domainkey.example.com"]
    assert rsa_value.startswith("v=DKIM1; k=rsa; p=")
    public = serialization.load_der_public_key(base64.b64decode(rsa_value.split("p=")[1]))
    assert public.public_numbers() == keys["rsa"].public_key().public_numbers()  # type: ignore[union-attr]
    # RFC 8463 §4.2: the bare 32-byte key, not an ASN.1 structure.
    assert ed_value.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(ed_value.split("p=")[1])
    assert len(raw) == 32
    assert raw == keys["ed25519"].public_key().public_bytes(serialization.Encoding.Raw,
                                                            serialization.PublicFormat.Raw)


def test_long_txt_values_are_split_into_255_octet_strings():
    value = "v=DKIM1; k=rsa; p=" + "A" * 700
    parts = txt_strings(value)
    assert [len(p) for p in parts] == [255, 255, 208] and "".join(parts) == value
    line = zone_file_record("s._domainkey.example.com", value)
    assert line.startswith("s._domainkey.example.com. IN TXT (")
    assert re.findall(r'"([^"]*)"', line) == parts
    assert zone_file_record("e._domainkey.example.com", "v=DKIM1; k=ed25519; p=abc") == \
        'e._domainkey.example.com. IN TXT "v=DKIM1; k=ed25519; p=abc"'


def test_signing_keys_are_cached_until_state_changes(store: DkimKeys, tmp_path: Path):
    store.keygen("example.com", rsa_bits=1024, now=JAN)
    first = store.signing_keys("example.com")
    again = store.signing_keys("example.com")
    assert [a.private_key for a in again] == [f.private_key for f in first]
    assert all(a.private_key is f.private_key for a, f in zip(again, first, strict=True))
    # Another process (the CLI) rotates: the running server's store notices by itself.
    DkimKeys.for_data_dir(tmp_path).rotate("example.com", now=FEB)
    after = store.signing_keys("example.com")
    assert [k.selector for k in after] == ["mk202602r", "mk202602e"]


def test_damaged_state_and_key_files_give_precise_errors(store: DkimKeys, tmp_path: Path):
    store.keygen("example.com", rsa_bits=1024, now=JAN)
    directory = tmp_path / "dkim" / "example.com"
    (directory / "mk202601r.rsa.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(DkimKeyError, match=r"mk202601r\.rsa\.key: not a readable unencrypted PEM"):
        store.signing_keys("example.com")
    (directory / "mk202601r.rsa.key").unlink()
    with pytest.raises(DkimKeyError, match="cannot read the key of selector mk202601r"):
        store.signing_keys("example.com")
    (directory / "state.json").write_text("{not json")
    with pytest.raises(DkimKeyError, match=r"state\.json: not valid JSON"):
        store.signing_keys("example.com")
    (directory / "state.json").write_text(json.dumps(
        {"version": 1, "selectors": [{"selector": "x", "algorithm": "dsa", "status": "active",
                                      "created": "2026-01-01T00:00:00Z"}]}))
    with pytest.raises(DkimKeyError, match=r"selectors\[0\]: unknown algorithm 'dsa'"):
        store.selectors("example.com")


def test_key_of_the_wrong_type_is_refused(store: DkimKeys, tmp_path: Path):
    store.keygen("example.com", rsa_bits=1024, now=JAN)
    directory = tmp_path / "dkim" / "example.com"
    os.replace(directory / "mk202601e.ed25519.key", directory / "mk202601r.rsa.key")
    with pytest.raises(DkimKeyError, match=r"holds a .*Ed25519PrivateKey.*, expected rsa"):
        store.signing_keys("example.com")


def test_files_belong_to_the_server_user_when_created_by_root(tmp_path: Path):
    owner = (65534, 65534)  # nobody:nogroup
    store = DkimKeys.for_data_dir(tmp_path, owner=owner)
    store.keygen("example.com", rsa_bits=1024, now=JAN)
    directory = tmp_path / "dkim" / "example.com"
    paths = [tmp_path / "dkim", directory, *directory.iterdir()]
    expected = owner if os.geteuid() == 0 else (os.getuid(), os.getgid())
    assert {(p.stat().st_uid, p.stat().st_gid) for p in paths} == {expected}
