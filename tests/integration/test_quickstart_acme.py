"""`mailkeep quickstart` against a real ACME CA (Debian's pebble) and a real DNS
(NSD + Unbound): certificates obtained during quickstart, the zone's TLSA records computed
from them, and the resulting configuration served by `mailkeep serve`."""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.pebble import Pebble
from tests.support.procs import free_port

from mailkeep.acme.storage import AcmeStorage
from mailkeep.quickstart import Options, quickstart

pytestmark = pytest.mark.slow

MAILKEEP = str(Path(sys.executable).with_name("mailkeep"))
# Only the host has an address: mta-sts. and autoconfig. are left out with a warning.
ZONES = [Zone("example.test", "mail A 127.0.0.1")]


@pytest.fixture(scope="module")
def dns() -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS(ZONES) as throwaway:
        yield throwaway


def test_quickstart_obtains_certificates_and_the_server_serves_them(tmp_path: Path,
                                                                    dns: ThrowawayDNS):
    ports = {"smtp": free_port(), "submission": free_port(), "submissions": free_port(),
             "imaps": free_port(), "pop3s": free_port(), "http": free_port(),
             "https": free_port()}
    pebble = Pebble(tmp_path / "pebble", dns=dns.resolver_address, http_port=ports["http"],
                    tls_port=ports["https"])
    with pebble:
        opts = Options(address="me@example.test", config_path=tmp_path / "mailkeep.toml",
                       data_dir=tmp_path / "data", run_as=None, listen=("127.0.0.1",),
                       acme_directory=pebble.directory_url, acme_ca_file=pebble.ca_file,
                       unit_path=None, ports=ports)
        outcome = quickstart(opts)
        assert outcome.certificate == "acme", outcome.certificate_note
        storage = AcmeStorage(outcome.config.data_dir)
        leaves = {}
        for kind in ("ecdsa", "rsa"):
            stored = storage.current(kind)
            assert stored is not None and "mail.example.test" in stored.info.names
            leaves[kind] = x509.load_pem_x509_certificates(stored.cert_file.read_bytes())[0]
        # The zone's TLSA 3 1 1 records are those of the ACME keys (RFC 7672 §3.1.1).
        for leaf in leaves.values():
            spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
            assert f"TLSA 3 1 1 {hashlib.sha256(spki).hexdigest()}" in outcome.zone
        versions = {k: storage.current(k).directory for k in ("ecdsa", "rsa")}
        # A rerun keeps everything: no new order, same certificates.
        again = quickstart(Options(address="me@example.test",
                                   config_path=tmp_path / "mailkeep.toml",
                                   data_dir=tmp_path / "data", run_as=None, unit_path=None,
                                   acme_ca_file=pebble.ca_file))
        assert again.password is None and again.certificate == "acme"
        assert {k: storage.current(k).directory for k in ("ecdsa", "rsa")} == versions

    # The server started on that configuration serves the ACME certificate on IMAPS.
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([MAILKEEP, "serve", "--config", str(tmp_path / "mailkeep.toml")],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["imaps"]), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.1)
        client = ssl.create_default_context()
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", ports["imaps"]), timeout=10) as raw, \
                client.wrap_socket(raw, server_hostname="mail.example.test") as tls:
            served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            assert served.serial_number in {leaf.serial_number for leaf in leaves.values()}
            assert tls.recv(200).startswith(b"* OK")
    finally:
        server.terminate()
        server.wait(timeout=30)
