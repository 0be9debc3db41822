"""DKIM signing keys: per-domain selectors, their files, rotation and DNS records.

Layout under ``data_dir/dkim/<domain>/`` (domain as its lower-case A-label)::

    state.json               the selectors: algorithm, created, status active|retired
    <selector>.rsa.key       RSA private key, PEM PKCS#8, mode 0600
    <selector>.ed25519.key   Ed25519 private key (RFC 8463), PEM PKCS#8, mode 0600

Every domain has at most one *active* RSA and one active Ed25519 selector; the signer
signs with both (RFC 8463 §4: dual signatures until Ed25519 is verified everywhere). A
*retired* selector signs nothing, but its DNS record must stay published until the last
message signed with it has left the queue; ``mailkeep dkim remove`` deletes it after that.

Key files are written before the state file names them, and the state file is replaced
atomically, so a crash leaves either the old set of selectors or the new one in force.
The server re-reads state.json only when it changes (inode, mtime, size), so a rotation
done with the CLI applies to a running server at its next message, without a restart.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailkeep.config.names import InvalidName, canonical_domain
from mailkeep.durable import atomic_write_bytes, fsync_dir

Algorithm = Literal["rsa", "ed25519"]
Status = Literal["active", "retired"]

ALGORITHMS: tuple[Algorithm, ...] = ("rsa", "ed25519")
#: The letter that ends a generated selector name, so one name says which key it is.
SELECTOR_SUFFIX: dict[Algorithm, str] = {"rsa": "r", "ed25519": "e"}
#: The signature algorithm (a= tag) each key type signs with.
SIGNATURE_ALGORITHM: dict[Algorithm, str] = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}

#: RSA modulus sizes keygen accepts. RFC 8301 §3.2: signers MUST use at least 1024 bits
#: and SHOULD use at least 2048; above 4096 many DNS providers cannot hold the TXT record
#: and RFC 8301 only requires verifiers to handle up to 4096.
RSA_KEY_SIZES = (1024, 2048, 3072, 4096)
DEFAULT_RSA_BITS = 2048

#: Bytes of one TXT character-string (RFC 1035 §3.3: a length octet, then at most 255).
TXT_STRING_OCTETS = 255
#: Upper bound on state.json and on a key file; anything larger is damage, not a key.
MAX_STATE_FILE_BYTES = 1 << 20
MAX_KEY_FILE_BYTES = 64 * 1024

STATE_FILE = "state.json"
STATE_VERSION = 1
FILE_MODE = 0o600
DIR_MODE = 0o700

# RFC 1035 §2.3.1 label (letters, digits, inner hyphens), at most 63 octets. Selectors
# may contain dots in RFC 6376 §3.1, but a single label keeps the file names and the DNS
# records simple; we only generate single labels.
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class DkimKeyError(Exception):
    """A key operation that cannot be done; the message says why, for a person."""


@dataclass(frozen=True)
class Selector:
    """One DKIM key of a domain, as listed in state.json."""

    domain: str
    name: str
    algorithm: Algorithm
    status: Status
    created: datetime
    retired: datetime | None = None
    bits: int | None = None  # RSA modulus size; None for Ed25519

    @property
    def dns_name(self) -> str:
        """Where the public key is published (RFC 6376 §3.6.2.1)."""
        return f"{self.name}._domainkey.{self.domain}"

    @property
    def key_file(self) -> str:
        return f"{self.name}.{self.algorithm}.key"

    def to_json(self) -> dict[str, object]:
        entry: dict[str, object] = {"selector": self.name, "algorithm": self.algorithm,
                                    "status": self.status, "created": _iso(self.created)}
        if self.bits is not None:
            entry["bits"] = self.bits
        if self.retired is not None:
            entry["retired"] = _iso(self.retired)
        return entry


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key, ready for ``mailkeep.dkim.sign.sign_message``."""

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def signature_algorithm(self) -> str:
        """The a= tag value: rsa-sha256 or ed25519-sha256."""
        return SIGNATURE_ALGORITHM[self.algorithm]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: object, where: str) -> datetime:
    if not isinstance(text, str):
        raise DkimKeyError(f"{where}: expected a time such as 2026-01-31T12:00:00Z")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise DkimKeyError(f"{where}: {text!r} is not a time such as 2026-01-31T12:00:00Z") from None


def check_selector_name(name: str) -> str:
    """``name`` lower-cased if it is a usable selector (one DNS label), else DkimKeyError."""
    lowered = name.lower()
    if not _LABEL.match(lowered):
        raise DkimKeyError(
            f"{name!r} is not a valid selector: use 1-63 letters, digits and inner hyphens "
            "(one DNS label)")
    return lowered


def public_key_txt(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The TXT record value publishing the public half of ``key`` (RFC 6376 §3.6.1)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8463 §4.2: p= is the base64 of the raw 32-byte public key, not an ASN.1
        # structure.
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")
    # RFC 6376 §3.6.1 says RSAPublicKey; every verifier (and every key published with
    # openssl or opendkim-genkey) uses the SubjectPublicKeyInfo wrapping, which is
    # unambiguous because it names the algorithm.
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def txt_strings(value: str) -> list[str]:
    """``value`` cut into TXT character-strings of at most 255 octets (RFC 1035 §3.3);
    a verifier joins them without separator (RFC 6376 §3.6.2.2)."""
    data = value.encode("ascii")
    return [data[i:i + TXT_STRING_OCTETS].decode("ascii")
            for i in range(0, len(data), TXT_STRING_OCTETS)] or [""]


def zone_file_record(name: str, value: str) -> str:
    """A zone-file line (RFC 1035 §5.1) for copy-paste: long values as several strings."""
    strings = txt_strings(value)
    if len(strings) == 1:
        return f'{name}. IN TXT "{strings[0]}"'
    inner = "\n".join(f'    "{part}"' for part in strings)
    return f"{name}. IN TXT (\n{inner} )"


class DkimKeys:
    """The DKIM keys of every domain under one data directory.

    Safe to share between threads; signing_keys() is cheap after the first call (the
    loaded keys are cached until state.json changes).
    """

    def __init__(self, root: str | os.PathLike[str], *, owner: tuple[int, int] | None = None):
        self.root = Path(root)
        # (uid, gid) that files we create must belong to when we run as root: the server's
        # unprivileged user, who must be able to read the keys.
        self.owner = owner
        self._cache: dict[str, tuple[tuple[int, int, int], list[SigningKey]]] = {}
        self._cache_lock = threading.Lock()

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike[str], *,
                     owner: tuple[int, int] | None = None) -> DkimKeys:
        return cls(Path(data_dir) / "dkim", owner=owner)

    # -- reading ---------------------------------------------------------------------------

    def domain_dir(self, domain: str) -> Path:
        return self.root / _domain(domain)

    def domains(self) -> list[str]:
        """Domains that have a state file, sorted."""
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        return [entry.name for entry in entries if (entry / STATE_FILE).is_file()]

    def selectors(self, domain: str) -> list[Selector]:
        """All selectors of ``domain`` (active and retired), oldest first."""
        domain = _domain(domain)
        return self._read_state(domain)

    def active(self, domain: str) -> list[Selector]:
        return [s for s in self.selectors(domain) if s.status == "active"]

    def retired(self, domain: str) -> list[Selector]:
        return [s for s in self.selectors(domain) if s.status == "retired"]

    def signing_keys(self, domain: str) -> list[SigningKey]:
        """The loaded active keys of ``domain`` (RSA first, then Ed25519); [] if none,
        or if ``domain`` is not a valid domain name (it comes from a message's From:).

        Raises DkimKeyError if the state file or a key file it names is damaged: the
        caller decides whether to send unsigned or to refuse.
        """
        try:
            domain = canonical_domain(domain)
        except InvalidName:
            return []  # e.g. an address literal in From:; no key can exist for it
        state_path = self.root / domain / STATE_FILE
        try:
            st = os.stat(state_path)
        except FileNotFoundError:
            return []
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            cached = self._cache.get(domain)
            if cached is not None and cached[0] == stamp:
                return list(cached[1])
        # Loading happens outside the lock: a slow disk must not stall other domains.
        keys = [SigningKey(domain, s.name, s.algorithm, self._load_private_key(s))
                for s in self._read_state(domain) if s.status == "active"]
        keys.sort(key=lambda k: ALGORITHMS.index(k.algorithm))
        with self._cache_lock:
            self._cache[domain] = (stamp, keys)
        return list(keys)

    def dns_records(self, domain: str) -> list[tuple[str, str]]:
        """``(name, TXT value)`` of every selector that must be published, active first."""
        domain = _domain(domain)
        selectors = sorted(self._read_state(domain), key=lambda s: s.status != "active")
        return [(s.dns_name, public_key_txt(self._load_private_key(s))) for s in selectors]

    def _load_private_key(self, selector: Selector) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        path = self.root / selector.domain / selector.key_file
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise DkimKeyError(f"cannot read the key of selector {selector.name}: {exc}") from None
        if len(data) > MAX_KEY_FILE_BYTES:
            raise DkimKeyError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise DkimKeyError(f"{path}: not a readable unencrypted PEM private key ({exc})") from None
        expected = rsa.RSAPrivateKey if selector.algorithm == "rsa" else ed25519.Ed25519PrivateKey
        if not isinstance(key, expected):
            raise DkimKeyError(f"{path}: holds a {type(key).__name__}, expected {selector.algorithm}")
        return key

    def _read_state(self, domain: str) -> list[Selector]:
        path = self.root / domain / STATE_FILE
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_STATE_FILE_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DkimKeyError(f"cannot read {path}: {exc}") from None
        if len(raw) > MAX_STATE_FILE_BYTES:
            raise DkimKeyError(f"{path}: larger than {MAX_STATE_FILE_BYTES} bytes; damaged?")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise DkimKeyError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("selectors"), list):
            raise DkimKeyError(f"{path}: expected an object with a list of selectors")
        if data.get("version") != STATE_VERSION:
            raise DkimKeyError(f"{path}: unknown format version {data.get('version')!r}")
        selectors = []
        for index, entry in enumerate(data["selectors"]):
            where = f"{path}: selectors[{index}]"
            if not isinstance(entry, dict):
                raise DkimKeyError(f"{where}: expected an object")
            name = entry.get("selector")
            algorithm = entry.get("algorithm")
            status = entry.get("status")
            if not isinstance(name, str) or not _LABEL.match(name):
                raise DkimKeyError(f"{where}: {name!r} is not a valid selector")
            if algorithm not in ALGORITHMS:
                raise DkimKeyError(f"{where}: unknown algorithm {algorithm!r}")
            if status not in ("active", "retired"):
                raise DkimKeyError(f"{where}: unknown status {status!r}")
            bits = entry.get("bits")
            if bits is not None and not isinstance(bits, int):
                raise DkimKeyError(f"{where}: bits must be a number")
            retired = entry.get("retired")
            selectors.append(Selector(
                domain=domain, name=name, algorithm=algorithm, status=status,
                created=_parse_iso(entry.get("created"), f"{where}.created"),
                retired=None if retired is None else _parse_iso(retired, f"{where}.retired"),
                bits=bits))
        return selectors

    # -- changing --------------------------------------------------------------------------

    def keygen(self, domain: str, *, selector_prefix: str | None = None,
               rsa_bits: int = DEFAULT_RSA_BITS, now: float | None = None) -> list[Selector]:
        """Create the first active RSA and Ed25519 keys of ``domain``.

        Selectors are ``mk<YYYYMM>r`` / ``mk<YYYYMM>e``, or ``<prefix>r`` / ``<prefix>e``.
        Refused if the domain already has active keys (that is a rotation).
        """
        domain = _domain(domain)
        with self._locked(domain):
            current = self._read_state(domain)
            active = [s.name for s in current if s.status == "active"]
            if active:
                raise DkimKeyError(
                    f"{domain} already has active keys ({', '.join(active)}); use "
                    f"'mailkeep dkim rotate {domain}' to replace them")
            new = self._create_keys(domain, current, selector_prefix, rsa_bits, now)
            self._write_state(domain, [*current, *new])
        return new

    def rotate(self, domain: str, *, selector_prefix: str | None = None,
               rsa_bits: int | None = None, now: float | None = None,
               ) -> tuple[list[Selector], list[Selector]]:
        """New active keys for ``domain``; the previously active ones become retired.

        Returns ``(new, retired_now)``. The RSA size defaults to that of the key it
        replaces. One atomic state change: a running server signs with either the old or
        the new pair, never with a mix or with none.
        """
        domain = _domain(domain)
        moment = _now(now)
        with self._locked(domain):
            current = self._read_state(domain)
            old = [s for s in current if s.status == "active"]
            if not old:
                raise DkimKeyError(f"{domain} has no active keys to rotate; create them with "
                                   f"'mailkeep dkim keygen {domain}'")
            if rsa_bits is None:
                rsa_bits = next((s.bits for s in old if s.algorithm == "rsa" and s.bits),
                                DEFAULT_RSA_BITS)
            new = self._create_keys(domain, current, selector_prefix, rsa_bits, moment)
            retired_now = [Selector(s.domain, s.name, s.algorithm, "retired", s.created,
                                    datetime.fromtimestamp(int(moment), UTC), s.bits)
                           for s in old]
            keep = [s for s in current if s.status != "active"]
            self._write_state(domain, [*keep, *retired_now, *new])
        return new, retired_now

    def remove(self, domain: str, selector: str) -> Selector:
        """Forget a retired selector and delete its key file. Active ones are refused:
        rotate first. Whether queued mail still needs it is the caller's question."""
        domain = _domain(domain)
        name = selector.lower()
        with self._locked(domain):
            current = self._read_state(domain)
            found = next((s for s in current if s.name == name), None)
            if found is None:
                known = ", ".join(s.name for s in current) or "none"
                raise DkimKeyError(f"{domain} has no selector {selector!r} (selectors: {known})")
            if found.status == "active":
                raise DkimKeyError(
                    f"selector {found.name} of {domain} is active: it signs outgoing mail. "
                    f"Run 'mailkeep dkim rotate {domain}' first")
            # State first: a crash between the two steps leaves an unused key file behind,
            # never a state file naming a key that is gone.
            self._write_state(domain, [s for s in current if s is not found])
            directory = self.root / domain
            (directory / found.key_file).unlink(missing_ok=True)
            fsync_dir(directory)
        return found

    def _create_keys(self, domain: str, current: list[Selector], prefix: str | None,
                     rsa_bits: int, now: float | None) -> list[Selector]:
        if rsa_bits not in RSA_KEY_SIZES:
            raise DkimKeyError(
                f"{rsa_bits} is not a supported RSA key size (choose one of "
                f"{', '.join(map(str, RSA_KEY_SIZES))}; 2048 is recommended, RFC 8301 §3.2)")
        moment = datetime.fromtimestamp(int(_now(now)), UTC)
        taken = {s.name for s in current}
        names = self._new_selector_names(prefix, moment, taken)
        directory = self.root / domain
        created = []
        for algorithm in ALGORITHMS:
            if algorithm == "rsa":
                key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(
                    public_exponent=65537, key_size=rsa_bits)
            else:
                key = ed25519.Ed25519PrivateKey.generate()
            selector = Selector(domain, names[algorithm], algorithm, "active", moment,
                                bits=rsa_bits if algorithm == "rsa" else None)
            pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            path = directory / selector.key_file
            atomic_write_bytes(path, pem, mode=FILE_MODE)
            self._chown(path)
            created.append(selector)
        return created

    @staticmethod
    def _new_selector_names(prefix: str | None, moment: datetime,
                            taken: set[str]) -> dict[Algorithm, str]:
        if prefix is not None:
            if not prefix:
                raise DkimKeyError("'' is not a valid selector prefix: it cannot be empty")
            names = {a: check_selector_name(prefix + SELECTOR_SUFFIX[a]) for a in ALGORITHMS}
            clash = [n for n in names.values() if n in taken]
            if clash:
                raise DkimKeyError(f"selector {clash[0]} exists already; choose another prefix")
            return names
        base = f"mk{moment:%Y%m}"
        # A second key pair in the same month (a rotation soon after keygen) gets -2, -3...
        for number in range(1, 1000):
            stem = base if number == 1 else f"{base}-{number}"
            names = {a: stem + SELECTOR_SUFFIX[a] for a in ALGORITHMS}
            if not taken.intersection(names.values()):
                return names
        raise DkimKeyError(f"too many selectors named {base}-N; remove old ones or give --selector")

    def _write_state(self, domain: str, selectors: list[Selector]) -> None:
        document = {"version": STATE_VERSION, "domain": domain,
                    "selectors": [s.to_json() for s in selectors]}
        path = self.root / domain / STATE_FILE
        atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"),
                           mode=FILE_MODE)
        self._chown(path)

    @contextlib.contextmanager
    def _locked(self, domain: str) -> Iterator[None]:
        """Serialize changes to one domain's keys (two CLI runs at once)."""
        directory = self.root / domain
        for path in (self.root, directory):
            if not path.is_dir():
                path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                self._chown(path)
                fsync_dir(path.parent)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            if self.owner is not None and os.geteuid() == 0:
                os.fchown(fd, *self.owner)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _chown(self, path: Path) -> None:
        if self.owner is not None and os.geteuid() == 0:
            os.chown(path, *self.owner, follow_symlinks=False)


def _domain(domain: str) -> str:
    try:
        return canonical_domain(domain)
    except InvalidName as exc:
        raise DkimKeyError(str(exc)) from None


def _now(now: float | None) -> float:
    return time.time() if now is None else now
