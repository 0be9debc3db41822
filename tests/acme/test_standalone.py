"""Obtaining certificates before any server runs (quickstart, `mailkeep cert renew` with no
server), against Debian's pebble with names resolved by a throwaway NSD + Unbound."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from tests.support.dns import ThrowawayDNS, Zone
from tests.support.pebble import Pebble
from tests.support.procs import free_port

from mailkeep.acme.manager import obtain_standalone
from mailkeep.acme.storage import AcmeStorage
from mailkeep.config import Config, load_config
from mailkeep.servers.tls import CertificatePair, server_context

pytestmark = pytest.mark.slow

MAILKEEP = str(Path(sys.executable).with_name("mailkeep"))
ZONES = [Zone("example.test", "mx A 127.0.0.1\nmta-sts A 127.0.0.1")]


@pytest.fixture(scope="module")
def dns() -> Iterator[ThrowawayDNS]:
    with ThrowawayDNS(ZONES) as throwaway:
        yield throwaway


def write_config(directory: Path, pebble: Pebble, *, names: str = '["mx.example.test"]',
                 challenges: str = '["http-01", "tls-alpn-01"]', enabled: bool = True) -> Path:
    path = directory / "mailkeep.toml"
    path.write_text(f"""\
hostname = "mx.example.test"
data_dir = "{directory / 'data'}"

[[listeners]]
protocol = "smtp"
address = "127.0.0.1:{free_port()}"

[[listeners]]
protocol = "http"
address = "127.0.0.1:{pebble.http_port}"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{pebble.tls_port}"

[acme]
enabled = {'true' if enabled else 'false'}
directory = "{pebble.directory_url}"
ca_file = "{pebble.ca_file}"
names = {names}
challenges = {challenges}

[domains."example.test"]
""")
    return path


def new_pebble(directory: Path, dns: ThrowawayDNS) -> Pebble:
    return Pebble(directory / "pebble", dns=dns.resolver_address, http_port=free_port(),
                  tls_port=free_port())


def serials(config: Config) -> dict[str, str]:
    storage = AcmeStorage(config.data_dir)
    return {kind: stored.info.serial for kind in ("ecdsa", "rsa")
            if (stored := storage.current(kind)) is not None}


async def test_obtains_both_key_types_then_converges_and_releases_the_ports(tmp_path, dns):
    with new_pebble(tmp_path, dns) as pebble:
        config = load_config(write_config(tmp_path, pebble,
                                          names='["mx.example.test", "mta-sts.example.test"]'))
        result = await obtain_standalone(config)
        assert result.ok, result.message
        assert sorted(c.kind for c in result.certificates) == ["ecdsa", "rsa"]
        for stored in result.certificates:
            assert set(stored.info.names) == {"mx.example.test", "mta-sts.example.test"}
            assert "Pebble Intermediate" in stored.info.issuer
            chain = x509.load_pem_x509_certificates(stored.cert_file.read_bytes())
            assert len(chain) >= 2  # leaf and intermediate, for clients to build the path
            server_context([CertificatePair(stored.cert_file, stored.key_file)])
        first = serials(config)
        # A rerun changes nothing; --force replaces both.
        again = await obtain_standalone(config)
        assert again.ok and again.certificates == () and "current" in again.message
        assert serials(config) == first
        forced = await obtain_standalone(config, force=True)
        assert forced.ok and len(forced.certificates) == 2
        assert set(serials(config).values()).isdisjoint(first.values())
        for port in (pebble.http_port, pebble.tls_port):
            with socket.socket() as probe:
                # As a server binds (SO_REUSEADDR: pebble's closed connections may linger
                # in TIME_WAIT); it fails while anything still listens there.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
                probe.listen()


async def test_a_required_name_that_fails_writes_nothing(tmp_path, dns):
    with new_pebble(tmp_path, dns) as pebble:
        config = load_config(write_config(
            tmp_path, pebble, names='["mx.example.test", "mail.nowhere.test"]'))
        result = await obtain_standalone(config)
        assert not result.ok
        assert "the CA could not validate mail.nowhere.test" in result.message
        assert serials(config) == {}


async def test_unreachable_ca_then_a_rerun_converges(tmp_path, dns):
    pebble = new_pebble(tmp_path, dns)
    config = load_config(write_config(tmp_path, pebble, challenges='["tls-alpn-01"]'))
    result = await obtain_standalone(config)
    assert not result.ok
    assert result.message == (f"cannot reach the ACME server https://127.0.0.1:{pebble.port}: "
                              "Connection refused")
    acme = config.data_dir / "acme"
    assert not (acme / "ecdsa").exists() and not (acme / "rsa").exists()
    assert not (acme / "archive").exists() or not any((acme / "archive").iterdir())
    with pebble:
        result = await obtain_standalone(config)
        assert result.ok, result.message
        assert set(serials(config)) == {"ecdsa", "rsa"}


async def test_a_port_in_use_is_reported(tmp_path, dns):
    pebble = new_pebble(tmp_path, dns)
    config = load_config(write_config(tmp_path, pebble, challenges='["http-01"]'))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", pebble.http_port))
        busy.listen()
        result = await obtain_standalone(config)
    assert not result.ok
    assert f"cannot listen on 127.0.0.1:{pebble.http_port} for http-01" in result.message


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAILKEEP, *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "MAILKEEP_CONFIG": ""})


def test_cert_renew_without_a_server_obtains_directly(tmp_path, dns):
    with new_pebble(tmp_path, dns) as pebble:
        config_file = write_config(tmp_path, pebble)
        status = _cli(config_file, "cert", "status")
        assert status.returncode == 0
        assert "ecdsa: no certificate yet" in status.stdout
        renew = _cli(config_file, "cert", "renew")
        assert renew.returncode == 0, renew.stderr
        assert "no server is running: obtaining the certificates directly" in renew.stderr
        assert renew.stdout.strip() == \
            "obtained ecdsa, rsa certificates for mx.example.test"
        status = _cli(config_file, "cert", "status")
        assert status.returncode == 0
        assert "ecdsa (acme)" in status.stdout and "rsa (acme)" in status.stdout
        assert "names:     mx.example.test" in status.stdout
        assert not (tmp_path / "data" / "acme" / "renew-request").exists()


def test_cert_renew_refuses_when_acme_is_off(tmp_path, dns):
    pebble = new_pebble(tmp_path, dns)
    result = _cli(write_config(tmp_path, pebble, enabled=False), "cert", "renew")
    assert result.returncode == 78
    assert "ACME is not enabled" in result.stderr
