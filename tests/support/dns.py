"""A throwaway DNS for tests: NSD serving test zones, a validating Unbound in front of it.

``ThrowawayDNS(zones)`` writes each :class:`Zone` as a zone file, signs the zones marked
``signed`` with DNSSEC (ldns-keygen + ldns-signzone: a KSK and a ZSK, algorithm 13,
ECDSAP256SHA256, RFC 6605), serves all of them from ``nsd`` (authoritative) and puts
``unbound`` (a validating recursive resolver) in front, with a stub zone per test zone
pointing at NSD and a trust anchor (the KSK's DS record) per signed zone. A resolver that
asks Unbound gets what a mail server behind a local validating resolver gets on the
Internet: the AD flag on answers from signed zones (RFC 4035 §3.2.3), none on answers
from unsigned ones, and SERVFAIL for a zone whose signatures do not validate ("bogus",
e.g. ``Zone(..., expired=True)``) or whose server refuses to answer (``lame_zones``).

Both daemons run from a temporary directory with their own configuration, pid files and
logs, on 127.0.0.1 and ports from ``free_port()``; ``/etc/nsd`` and ``/etc/unbound`` are
never read or written (every path is given on the command line or in our config file).
There is no root trust anchor, and the root zone is refused, so no query ever leaves the
machine. Exiting the context manager kills both process groups and removes the directory.

Requires the Debian packages nsd, unbound and ldnsutils (``make test`` installs them); a
missing program is reported as ``DNSUnavailable`` naming it, so tests fail rather than skip.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from tests.support.procs import (
    ProcessError,
    StartStop,
    free_port,
    start_process,
    stop_process,
)

NSD = "/usr/sbin/nsd"
UNBOUND = "/usr/sbin/unbound"
LDNS_KEYGEN = "/usr/bin/ldns-keygen"
LDNS_SIGNZONE = "/usr/bin/ldns-signzone"

#: How long the daemons get to answer their first query (seconds).
START_TIMEOUT = 10.0
#: How many fresh port pairs to try when a port was taken before a daemon bound it.
PORT_ATTEMPTS = 3
#: Time limit for one ldns-keygen / ldns-signzone run (seconds).
TOOL_TIMEOUT = 20.0
#: Largest log excerpt quoted in an error (characters).
LOG_EXCERPT_LIMIT = 4000
#: TTL of every record the harness writes (seconds). Short, but caching is per instance.
DEFAULT_TTL = 300


class DNSUnavailable(RuntimeError):
    """A program the DNS harness needs is not installed."""


@dataclass(frozen=True)
class Zone:
    """One test zone.

    ``records`` are zone-file lines relative to the zone (``$ORIGIN`` is the zone name),
    e.g. ``"@ MX 10 mx1\\nmx1 A 127.0.0.1"``. The harness adds the SOA, an NS record
    (``ns1``) and its address, so ``records`` must not contain apex SOA or NS records.

    ``signed`` signs the zone and makes Unbound trust its KSK; ``signature_validity`` is how
    long the signatures last from one hour ago. ``expired`` signs with a window that ended
    three days ago, more than Unbound's largest allowed clock skew (``val-sig-skew-max``,
    one day), so every answer from the zone is bogus.
    """

    name: str
    records: str = ""
    signed: bool = False
    signature_validity: datetime.timedelta = datetime.timedelta(days=30)
    expired: bool = False

    @property
    def origin(self) -> str:
        return self.name.rstrip(".").lower() + "."


def _require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise DNSUnavailable(
            "the DNS test harness needs " + ", ".join(missing) + " (Debian packages nsd, "
            "unbound and ldnsutils; `make test` installs them)")


def _run_tool(argv: list[str], cwd: Path) -> str:
    """Run one ldns tool in ``cwd`` (where ldns-keygen writes its files); return stdout."""
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=TOOL_TIMEOUT,
                                check=False)
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(f"{argv} did not finish within {TOOL_TIMEOUT:g}s") from exc
    except FileNotFoundError as exc:
        raise DNSUnavailable(f"cannot run {argv[0]}: not installed ({exc})") from exc
    if result.returncode != 0:
        raise ProcessError(f"{argv} exited with status {result.returncode}:\n"
                           f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode()


def _ldns_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y%m%d%H%M%S")


def _zone_text(zone: Zone) -> str:
    return (f"$ORIGIN {zone.origin}\n$TTL {DEFAULT_TTL}\n"
            f"@ IN SOA ns1 hostmaster 1 3600 900 604800 {DEFAULT_TTL}\n"
            "@ IN NS ns1\nns1 IN A 127.0.0.1\n"
            + zone.records.strip() + "\n")


def _answers(address: tuple[str, int], name: str, timeout: float = 0.3) -> int | None:
    """The rcode for an SOA query of ``name`` at ``address`` over UDP, or None (no answer)."""
    query = dns.message.make_query(name, dns.rdatatype.SOA, want_dnssec=True)
    try:
        response = dns.query.udp(query, address[0], port=address[1], timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return None
    return response.rcode()


class ThrowawayDNS(StartStop):
    """NSD + a validating Unbound serving ``zones``; use as a context manager.

    ``lame_zones`` are delegated to NSD, which does not serve them and answers REFUSED:
    every lookup below them ends in SERVFAIL from Unbound, the way a broken delegation
    does on the Internet.
    """

    def __init__(self, zones: Sequence[Zone], *, lame_zones: Sequence[str] = ()) -> None:
        if not zones:
            raise ValueError("ThrowawayDNS needs at least one zone")
        names = [z.origin for z in zones]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate zone in {names}")
        self.zones = tuple(zones)
        self.lame_zones = tuple(z.rstrip(".").lower() + "." for z in lame_zones)
        self.root: Path | None = None
        #: The DS record (zone-file text) that anchors each signed zone, by zone origin.
        self.ds_records: dict[str, str] = {}
        self.nsd_port = 0
        self.unbound_port = 0
        self._nsd: subprocess.Popen[bytes] | None = None
        self._unbound: subprocess.Popen[bytes] | None = None

    # -- what tests use --------------------------------------------------------------

    @property
    def resolver_address(self) -> tuple[str, int]:
        """(host, port) of the validating Unbound: what Mailkeep is configured with."""
        return ("127.0.0.1", self.unbound_port)

    @property
    def authoritative_address(self) -> tuple[str, int]:
        """(host, port) of NSD, which answers without validation (never sets AD)."""
        return ("127.0.0.1", self.nsd_port)

    def log_text(self) -> str:
        """Both daemons' output so far (Unbound logs validation failures at level 2)."""
        assert self.root is not None
        parts = []
        for name in ("nsd.log", "unbound.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        _require(NSD, UNBOUND, LDNS_KEYGEN, LDNS_SIGNZONE)
        self.root = Path(tempfile.mkdtemp(prefix="mailkeep-dns-"))
        try:
            zone_files = {z.origin: self._write_zone(z) for z in self.zones}
            for attempt in range(PORT_ATTEMPTS):
                self.nsd_port, self.unbound_port = free_port(), free_port()
                while self.unbound_port == self.nsd_port:
                    self.unbound_port = free_port()
                if self._start_daemons(zone_files, last_attempt=attempt == PORT_ATTEMPTS - 1):
                    return
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._stop_daemons()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- zones and signing -----------------------------------------------------------

    def _write_zone(self, zone: Zone) -> Path:
        assert self.root is not None
        directory = self.root / "zones" / zone.origin.rstrip(".")
        directory.mkdir(parents=True)
        path = directory / "zone"
        path.write_text(_zone_text(zone))
        if not zone.signed:
            return path
        # RFC 6781 §3.1: a KSK (SEP flag, anchored by its DS) signs the DNSKEY set, a ZSK
        # signs the rest; ldns-signzone tells them apart by the SEP flag.
        ksk = _run_tool([LDNS_KEYGEN, "-a", "ECDSAP256SHA256", "-k", zone.origin],
                        directory).strip()
        zsk = _run_tool([LDNS_KEYGEN, "-a", "ECDSAP256SHA256", zone.origin], directory).strip()
        now = datetime.datetime.now(datetime.UTC)
        if zone.expired:
            inception = now - datetime.timedelta(days=10)
            expiration = now - datetime.timedelta(days=3)
        else:
            inception = now - datetime.timedelta(hours=1)
            expiration = now + zone.signature_validity
        signed = directory / "zone.signed"
        _run_tool([LDNS_SIGNZONE, "-i", _ldns_time(inception), "-e", _ldns_time(expiration),
                   "-f", str(signed), "-o", zone.origin, str(path), zsk, ksk], directory)
        ds_text = (directory / f"{ksk}.ds").read_text().strip()
        self.ds_records[zone.origin] = ds_text
        (directory / "anchor.ds").write_text(ds_text + "\n")
        return signed

    # -- daemons ---------------------------------------------------------------------

    def _nsd_conf(self, zone_files: dict[str, Path]) -> str:
        assert self.root is not None
        root = self.root
        lines = [
            "server:",
            f"  ip-address: 127.0.0.1@{self.nsd_port}",
            f"  port: {self.nsd_port}",
            "  do-ip6: no",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{root}"',
            '  database: ""',
            f'  pidfile: "{root}/nsd.pid"',
            f'  xfrdfile: "{root}/nsd-xfrd.state"',
            f'  zonelistfile: "{root}/nsd-zone.list"',
            f'  xfrdir: "{root}"',
            "  server-count: 1",
            "  tcp-count: 16",
            "  verbosity: 1",
            "  reuseport: no",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin, path in zone_files.items():
            lines += ["zone:", f"  name: {origin}", f'  zonefile: "{path}"']
        return "\n".join(lines) + "\n"

    def _unbound_conf(self) -> str:
        assert self.root is not None
        root = self.root
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {self.unbound_port}",
            "  do-ip6: no",
            "  access-control: 127.0.0.0/8 allow",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{root}"',
            f'  pidfile: "{root}/unbound.pid"',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 1",
            # Why a lookup was bogus, in the log a failing test quotes.
            "  val-log-level: 2",
            "  num-threads: 1",
            "  so-reuseport: no",
            "  outgoing-range: 64",
            "  msg-cache-size: 1m",
            "  rrset-cache-size: 1m",
            # NSD listens on loopback, which Unbound refuses to query unless told.
            "  do-not-query-localhost: no",
            '  module-config: "validator iterator"',
            "  qname-minimisation: no",
            "  trust-anchor-signaling: no",
            "  root-key-sentinel: no",
            # Extended DNS Errors (RFC 8914) say why an answer was SERVFAIL.
            "  ede: yes",
            # Nothing outside the test zones is resolved: no query leaves the machine.
            '  local-zone: "." refuse',
        ]
        stubs = [*[z.origin for z in self.zones], *self.lame_zones]
        for origin in stubs:
            lines.append(f'  local-zone: "{origin}" transparent')
        for zone in self.zones:
            if zone.signed:
                anchor = root / "zones" / zone.origin.rstrip(".") / "anchor.ds"
                lines.append(f'  trust-anchor-file: "{anchor}"')
        lines += ["remote-control:", "  control-enable: no"]
        for origin in stubs:
            lines += ["stub-zone:", f'  name: "{origin}"',
                      f"  stub-addr: 127.0.0.1@{self.nsd_port}"]
        return "\n".join(lines) + "\n"

    def _start_daemons(self, zone_files: dict[str, Path], *, last_attempt: bool) -> bool:
        """Start NSD then Unbound; False (after cleaning up) if a port was taken."""
        assert self.root is not None
        nsd_conf = self.root / "nsd.conf"
        nsd_conf.write_text(self._nsd_conf(zone_files))
        unbound_conf = self.root / "unbound.conf"
        unbound_conf.write_text(self._unbound_conf())
        nsd_log = self.root / "nsd.log"
        unbound_log = self.root / "unbound.log"
        first = self.zones[0].origin
        self._nsd = start_process([NSD, "-d", "-c", str(nsd_conf)], log_path=nsd_log)
        if not self._wait_ready(self._nsd, self.authoritative_address, first, nsd_log,
                                last_attempt):
            return False
        # NSD serves on even when a zone file did not load: say which one, and why.
        for zone in self.zones:
            rcode = _answers(self.authoritative_address, zone.origin, timeout=2.0)
            if rcode != dns.rcode.NOERROR:
                log = nsd_log.read_text(errors="replace")[-LOG_EXCERPT_LIMIT:]
                self._stop_daemons()
                shown = "no answer" if rcode is None else dns.rcode.to_text(rcode)
                raise ProcessError(f"nsd did not load zone {zone.origin} (SOA query: {shown});"
                                   f" its output:\n{log}")
        self._unbound = start_process([UNBOUND, "-d", "-c", str(unbound_conf)],
                                      log_path=unbound_log)
        return self._wait_ready(self._unbound, self.resolver_address, first, unbound_log,
                                last_attempt)

    def _wait_ready(self, process: subprocess.Popen[bytes], address: tuple[str, int],
                    name: str, log_path: Path, last_attempt: bool) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            rcode = _answers(address, name)
            if rcode is not None:
                # Unbound is up before it has reached NSD; any answer means it serves.
                return True
            if process.poll() is not None:
                log = log_path.read_text(errors="replace")[-LOG_EXCERPT_LIMIT:]
                if "address already in use" in log.lower() and not last_attempt:
                    self._stop_daemons()
                    return False
                raise ProcessError(f"{process.args!r} exited with status "
                                   f"{process.returncode} before answering on "
                                   f"{address[0]}:{address[1]}; its output:\n{log}")
            if time.monotonic() >= deadline:
                self._stop_daemons()
                raise ProcessError(f"{process.args!r} did not answer DNS queries on "
                                   f"{address[0]}:{address[1]} within {START_TIMEOUT:g}s")
            time.sleep(0.02)

    def _stop_daemons(self) -> None:
        for attr in ("_unbound", "_nsd"):
            process = getattr(self, attr)
            if process is not None:
                # Both stop at once on SIGTERM; stop_process kills the group if not.
                stop_process(process, timeout=5.0)
                setattr(self, attr, None)
