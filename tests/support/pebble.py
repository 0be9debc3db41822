"""Pebble, Let's Encrypt's ACME test CA (Debian package ``pebble``), for end-to-end tests.

``Pebble(directory, dns=..., http_port=..., tls_port=...)`` writes its own config into
``directory`` and runs ``/usr/bin/pebble`` on 127.0.0.1:

- its HTTPS (ACME and management) uses a certificate from :class:`tests.support.certs.TestCA`
  (Debian's package does not ship upstream's test/certs); clients trust :attr:`ca_file`;
- validation asks ``-dnsserver`` (a :class:`tests.support.dns.ThrowawayDNS`) for the names'
  addresses, and connects to ``http_port`` for HTTP-01 and ``tls_port`` for TLS-ALPN-01
  (the ports of the Mailkeep listeners under test);
- ``PEBBLE_VA_NOSLEEP=1`` (no random validation delay); ``nonce_reject`` percent of good
  nonces are refused as badNonce (pebble's default is 5), exercising the client's retry;
- ``validity`` sets the issued certificates' lifetime in seconds (to test renewal).

The issuing root is regenerated at every start: :meth:`issuing_root` fetches it from the
management interface, so tests can verify the chains Mailkeep serves. Every wait is bounded;
a missing program raises :class:`PebbleUnavailable` (tests fail, never skip).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.certs import TestCA
from tests.support.procs import StartStop, free_port, start_process, stop_process

PEBBLE = "/usr/bin/pebble"
START_TIMEOUT = 15.0
LOG_EXCERPT = 4000


class PebbleUnavailable(RuntimeError):
    """The pebble program is not installed."""


class Pebble(StartStop):
    def __init__(self, directory: Path, *, dns: tuple[str, int], http_port: int,
                 tls_port: int, validity: int | None = None, nonce_reject: int = 5,
                 port: int | None = None) -> None:
        self.directory = Path(directory)
        self.dns = dns
        self.http_port = http_port
        self.tls_port = tls_port
        self.validity = validity
        self.nonce_reject = nonce_reject
        #: The ACME port; chosen now so a test can configure it before pebble runs.
        self.port = port or free_port()
        self.management_port = free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.test_ca = TestCA.create(self.directory / "https-ca", "Pebble HTTPS Test CA")
        self.log_path = self.directory / "pebble.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._root: bytes | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def ca_file(self) -> Path:
        """The CA of pebble's own HTTPS ([acme] ca_file)."""
        return self.test_ca.ca_file

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        if shutil.which(PEBBLE) is None:
            raise PebbleUnavailable(f"{PEBBLE} is missing: apt-get install pebble "
                                    "(`make test` installs it)")
        https = self.test_ca.issue(["localhost"], stem="pebble-https")
        settings = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(https.cert_file),
            "privateKey": str(https.key_file),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity is not None:
            settings["certificateValidityPeriod"] = self.validity
        config = self.directory / "pebble.json"
        config.write_text(json.dumps({"pebble": settings}, indent=1))
        env = {"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1",
               "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject)}
        self._process = start_process(
            [PEBBLE, "-config", str(config), "-dnsserver", f"{self.dns[0]}:{self.dns[1]}"],
            log_path=self.log_path, env=env, cwd=self.directory)
        self._root = None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"pebble exited with {self._process.returncode}: "
                                   f"{self.log_text()[-LOG_EXCERPT:]}")
            try:
                self._get(self.directory_url)
                return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"pebble did not answer on {self.directory_url} within "
                                   f"{START_TIMEOUT:g}s: {self.log_text()[-LOG_EXCERPT:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, timeout=5.0)
            self._process = None

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.read(1 << 20)

    def issuing_root(self) -> bytes:
        """The PEM root that the issued chains lead to (new at every start)."""
        if self._root is None:
            self._root = self._get(f"https://127.0.0.1:{self.management_port}/roots/0")
        return self._root

    def issuing_root_file(self) -> Path:
        path = self.directory / "issuing-root.pem"
        path.write_bytes(self.issuing_root())
        return path
