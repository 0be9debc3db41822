"""Signatures verified by OpenDKIM (Debian opendkim-tools: opendkim-testmsg), a verifier
written independently of ours and of dkimpy, fetching the keys from a real DNS server.

opendkim-testmsg has no option to read keys from a file; it asks the system resolver. So
the verifier runs in a private network and mount namespace with its own resolv.conf and
NSD serving our TXT records on 127.0.0.1:53 (see opendkim_netns.py); nothing outside
that namespace is touched. Both rsa-sha256 and ed25519-sha256 verify with OpenDKIM 2.11.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.dkim.verifiers import DOMAIN, NOW
from tests.support.procs import kill_group

from mailkeep.dkim.keys import DkimKeys, SigningKey, zone_file_record
from mailkeep.dkim.sign import sign_message

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

RUNNER = Path(__file__).with_name("opendkim_netns.py")
BIG_KEY_DOMAIN = "example.net"   # published with a 4096-bit RSA key: TXT over 512 octets
UNPUBLISHED_DOMAIN = "example.org"  # keys exist, DNS has nothing for them
ANSWER_TIMEOUT = 30.0

HEADER = (b"From: Alice <alice@example.com>\r\n"
          b"To: Bob <bob@example.org>\r\n"
          b"Subject: Checked by OpenDKIM\r\n"
          b"Date: Sat, 21 Nov 2026 04:00:00 +0000\r\n"
          b"Message-ID: <opendkim.1@example.com>\r\n"
          b"MIME-Version: 1.0\r\n"
          b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
BODY = "Hello Bob,  \r\n\tthis is\t\tsigned.\r\nGrüße\r\n\r\n\r\n".encode()


def zone_text(domain: str, records: list[tuple[str, str]]) -> str:
    lines = [f"$ORIGIN {domain}.", "$TTL 300",
             f"@ IN SOA ns.{domain}. hostmaster.{domain}. 1 3600 600 86400 300",
             f"@ IN NS ns.{domain}.", "ns IN A 127.0.0.1"]
    lines += [zone_file_record(name, value) for name, value in records]
    return "\n".join(lines) + "\n"


class OpenDkim:
    """The namespace runner: hand it a message, get opendkim-testmsg's status and text."""

    def __init__(self, workdir: Path, zones: dict[str, str]) -> None:
        for tool in ("unshare", "mount", "nsd", "nsd-checkconf", "opendkim-testmsg"):
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
                pytest.fail(f"{tool} is not installed (Debian packages: util-linux, mount, "
                            "nsd, opendkim-tools)")
        self.workdir = workdir
        for name, text in zones.items():
            (workdir / f"{name}.zone").write_text(text)
        # As root, a network and mount namespace; otherwise in a user namespace too, where
        # we are root and may bind port 53 and mount over /etc/resolv.conf.
        unshare = ["unshare", "--net", "--mount"]
        if os.geteuid() != 0:
            unshare.insert(1, "--map-root-user")
        env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        self.process = subprocess.Popen(
            [*unshare, "--", sys.executable, str(RUNNER), str(workdir), *zones],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(workdir / "runner.log", "wb"),
            env=env, start_new_session=True)
        self.count = 0
        first = self._answer("NSD to start in the namespace")
        assert first == {"ready": True}

    def _answer(self, what: str) -> dict[str, object]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline()
                if line:
                    return json.loads(line)
            if self.process.poll() is not None:
                break
        log = (self.workdir / "runner.log").read_text(errors="replace")
        nsd_log = self.workdir / "nsd.log"
        nsd = nsd_log.read_text(errors="replace") if nsd_log.exists() else ""
        pytest.fail(f"no answer while waiting for {what} (runner status "
                    f"{self.process.poll()}):\n{log}\n{nsd}")

    def verify(self, message: bytes) -> tuple[int, str]:
        self.count += 1
        path = self.workdir / f"message-{self.count}.eml"
        path.write_bytes(message)
        assert self.process.stdin is not None
        self.process.stdin.write(f"{path}\n".encode())
        self.process.stdin.flush()
        answer = self._answer(f"opendkim-testmsg on {path.name}")
        return int(answer["status"]), str(answer["stderr"]).strip()  # type: ignore[call-overload]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_group(self.process.pid)
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def big_keys(tmp_path_factory: pytest.TempPathFactory) -> DkimKeys:
    store = DkimKeys.for_data_dir(tmp_path_factory.mktemp("dkim-big"))
    store.keygen(BIG_KEY_DOMAIN, rsa_bits=4096, now=NOW)
    store.keygen(UNPUBLISHED_DOMAIN, rsa_bits=1024, now=NOW)
    return store


@pytest.fixture(scope="module")
def opendkim(tmp_path_factory: pytest.TempPathFactory, key_store: DkimKeys,
             big_keys: DkimKeys) -> Iterator[OpenDkim]:
    zones = {DOMAIN: zone_text(DOMAIN, key_store.dns_records(DOMAIN)),
             BIG_KEY_DOMAIN: zone_text(BIG_KEY_DOMAIN, big_keys.dns_records(BIG_KEY_DOMAIN))}
    verifier = OpenDkim(tmp_path_factory.mktemp("opendkim"), zones)
    yield verifier
    verifier.close()


def signed(keys: list[SigningKey], header: bytes = HEADER, body: bytes = BODY,
           domain: str = DOMAIN) -> bytes:
    return sign_message(header, body, 0, keys, domain=domain, now=NOW) + header + body


def by_algorithm(keys: list[SigningKey], algorithm: str) -> list[SigningKey]:
    return [k for k in keys if k.algorithm == algorithm]


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_opendkim_verifies_each_algorithm(opendkim: OpenDkim, signing_keys, algorithm: str):
    message = signed(by_algorithm(signing_keys, algorithm))
    assert opendkim.verify(message) == (0, "")


def test_opendkim_verifies_dual_signature(opendkim: OpenDkim, signing_keys):
    assert opendkim.verify(signed(signing_keys)) == (0, "")


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_opendkim_rejects_changed_body(opendkim: OpenDkim, signing_keys, algorithm: str):
    message = signed(by_algorithm(signing_keys, algorithm)).replace(b"signed.", b"forged.")
    status, text = opendkim.verify(message)
    assert status != 0 and "bad signature" in text.lower()


def insert_field(message: bytes, field: bytes) -> bytes:
    """``field`` added as the last header field, as a forger on the way would."""
    split = message.index(b"\r\n\r\n") + 2
    return message[:split] + field + message[split:]


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_opendkim_rejects_added_from(opendkim: OpenDkim, signing_keys, algorithm: str):
    # OpenDKIM refuses a second From: as malformed before it checks signatures
    # ("dkim_chunk(): Syntax error"); dkimpy, which does not, shows that the oversigned
    # From breaks the signature itself (test_dkim_sign.py).
    forged = insert_field(signed(by_algorithm(signing_keys, algorithm)),
                          b"From: Mallory <ceo@example.com>\r\n")
    status, text = opendkim.verify(forged)
    assert status != 0 and text, "a From: added after signing went unnoticed"


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_opendkim_oversigned_to_cannot_be_added(opendkim: OpenDkim, signing_keys, algorithm: str):
    keys = by_algorithm(signing_keys, algorithm)
    message = signed(keys, header=HEADER.replace(b"To: Bob <bob@example.org>\r\n", b""))
    assert opendkim.verify(message) == (0, "")
    # Cc is signed only when present: adding one leaves the signature valid ...
    assert opendkim.verify(insert_field(message, b"Cc: carol@example.net\r\n")) == (0, "")
    # ... but To is oversigned, so a To: the message did not have breaks it.
    status, text = opendkim.verify(insert_field(message, b"To: victim@example.net\r\n"))
    assert status != 0 and "bad signature" in text.lower()


def test_opendkim_verifies_large_body_signed_from_spool_file(opendkim: OpenDkim, signing_keys,
                                                            tmp_path: Path):
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    body = b"".join(line if i % 50 else b"text  with\t runs  \r\n" for i in range(40000))
    spool = tmp_path / "spool"
    spool.write_bytes(HEADER + body)
    fields = sign_message(HEADER, spool, len(HEADER), signing_keys, domain=DOMAIN, now=NOW)
    assert opendkim.verify(fields + HEADER + body) == (0, "")


def test_opendkim_verifies_4096_bit_key_published_as_split_txt(opendkim: OpenDkim, big_keys):
    keys = big_keys.signing_keys(BIG_KEY_DOMAIN)
    header = HEADER.replace(b"alice@example.com", b"alice@example.net")
    assert opendkim.verify(signed(keys, header=header, domain=BIG_KEY_DOMAIN)) == (0, "")


def test_opendkim_fails_when_the_key_is_not_published(opendkim: OpenDkim, big_keys):
    # Shows the verifier really asks DNS: same code path, no record, no pass.
    keys = big_keys.signing_keys(UNPUBLISHED_DOMAIN)
    header = HEADER.replace(b"alice@example.com", b"alice@example.org")
    status, text = opendkim.verify(signed(keys, header=header, domain=UNPUBLISHED_DOMAIN))
    assert status != 0 and "key retrieval failed" in text.lower(), text
