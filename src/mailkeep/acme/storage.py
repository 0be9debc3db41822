"""What ACME keeps on disk, in ``data_dir/acme`` (mode 0700):

``account.key``
    The ES256 account key (PEM, 0600). Created once; a key that cannot be read stops
    ACME with an error rather than being replaced (the CA knows the account by it).
``archive/<kind>-<UTC time>-<serial>/``
    One issued certificate: ``key.pem`` (0600), ``cert.pem`` (the leaf, then the chain),
    ``source.json`` (the directory URL it came from). A version directory is complete
    before it gets its name: the files are written and fsync'd under a temporary name,
    then the directory is renamed into place.
``ecdsa``, ``rsa``
    Symbolic links to the version in use, switched with one atomic rename. A crash at
    any moment leaves the previous pair or the new one in use, never a certificate with
    another key. Readers resolve the link once and read both files from that directory.
    The version before the current one is kept (to go back by hand); older ones go.
``state.json``
    The last check's outcome for ``mailkeep cert status``: when, what failed, when the
    next attempt is, which optional names were left out.
``renew-request``
    Written by ``mailkeep cert renew`` for the running server, which removes it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailkeep.acme.certs import KEY_TYPES, CertificateInfo
from mailkeep.acme.jws import AccountKey
from mailkeep.acme.messages import AcmeError
from mailkeep.durable import (
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    replace_durably,
    write_all,
)
from mailkeep.logfmt import log

logger = logging.getLogger("mailkeep.acme")

ACME_DIR = "acme"
ACCOUNT_KEY = "account.key"
STATE_FILE = "state.json"
REQUEST_FILE = "renew-request"
ARCHIVE = "archive"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
SOURCE_FILE = "source.json"
#: Largest state or request file read (they are a few hundred bytes).
MAX_SMALL_FILE = 64 * 1024
MAX_CERT_FILE = 1 << 20


@dataclass(frozen=True)
class StoredCertificate:
    """One issued certificate pair, as found through its ``<kind>`` link."""

    kind: str
    directory: Path  # the version directory (the link resolved once)
    info: CertificateInfo
    #: The ACME directory URL it was obtained from ("" if unknown).
    source: str = ""

    @property
    def cert_file(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE


@dataclass(frozen=True)
class RenewRequest:
    id: str
    force: bool


def _read_small(path: Path, limit: int = MAX_SMALL_FILE) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with ``data``, fsync'd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class AcmeStorage:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / ACME_DIR

    def ensure(self) -> None:
        """Create ``acme/`` and ``acme/archive/`` (0700). When root creates them (the CLI
        before the server ran), they go to the owner of data_dir, who runs the server."""
        for directory in (self.root, self.root / ARCHIVE):
            if directory.is_dir():
                continue
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.getuid() == 0:
                owner = os.stat(self.data_dir)
                os.chown(directory, owner.st_uid, owner.st_gid, follow_symlinks=False)

    # -- account ------------------------------------------------------------------------

    def account_key(self) -> AccountKey:
        """The account key, created on first use (0600, written atomically)."""
        path = self.root / ACCOUNT_KEY
        try:
            data = _read_small(path)
        except FileNotFoundError:
            self.ensure()
            key = AccountKey.generate()
            atomic_write_bytes(path, key.to_pem(), mode=0o600)
            log(logger, "ACME account key created", path=str(path))
            return key
        except (OSError, ValueError) as exc:
            raise AcmeError(f"cannot read the ACME account key {path}: {exc}") from None
        try:
            return AccountKey.from_pem(data)
        except ValueError as exc:
            raise AcmeError(f"the ACME account key {path} is unusable ({exc}); move it away "
                            "to start a new account") from None

    # -- certificates -------------------------------------------------------------------

    def link(self, kind: str) -> Path:
        return self.root / kind

    def current(self, kind: str) -> StoredCertificate | None:
        """The pair in use for ``kind``, or None when there is none (or it is unreadable,
        which is logged: the caller falls back as if there were none)."""
        link = self.link(kind)
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log(logger, "ignoring a broken certificate link", logging.WARNING,
                path=str(link), error=exc.strerror or str(exc))
            return None
        parts = Path(target).parts
        if len(parts) != 2 or parts[0] != ARCHIVE or parts[1] in ("..", "."):
            log(logger, "ignoring a certificate link that points outside the archive",
                logging.WARNING, path=str(link), target=target)
            return None
        directory = self.root / ARCHIVE / parts[1]
        try:
            info = CertificateInfo.from_pem(_read_small(directory / CERT_FILE, MAX_CERT_FILE))
        except (OSError, ValueError) as exc:
            log(logger, "ignoring an unreadable certificate", logging.WARNING,
                path=str(directory / CERT_FILE), error=str(exc))
            return None
        source = ""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            source = str(json.loads(_read_small(directory / SOURCE_FILE)).get("directory", ""))
        return StoredCertificate(kind, directory, info, source)

    def install(self, kind: str, key_pem: bytes, chain_pem: bytes,
                source: str) -> StoredCertificate:
        """Make a new pair the one in use for ``kind``: a complete version directory
        first, then the link switched atomically (see the module docstring)."""
        if kind not in KEY_TYPES:
            raise ValueError(f"unknown key type {kind!r}")
        info = CertificateInfo.from_pem(chain_pem)
        self.ensure()
        archive = self.root / ARCHIVE
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"{kind}-{stamp}-{info.serial[-16:]}"
        while (archive / name).exists():
            name += "-" + secrets.token_hex(2)
        staging = archive / f".{name}.tmp"
        staging.mkdir(mode=0o700)
        try:
            # The key first: a certificate never sits beside a key that is not its own.
            _write_new(staging / KEY_FILE, key_pem, 0o600)
            _write_new(staging / CERT_FILE, chain_pem, 0o644)
            _write_new(staging / SOURCE_FILE, json.dumps(
                {"directory": source, "installed": time.time()}).encode(), 0o644)
            fsync_dir(staging)
            os.rename(staging, archive / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(archive)
        previous = self.current(kind)
        link = self.link(kind)
        temporary = self.root / f".{kind}.{secrets.token_hex(6)}.link"
        os.symlink(f"{ARCHIVE}/{name}", temporary)
        replace_durably(temporary, link)
        self._prune(kind, keep={name, previous.directory.name if previous else ""})
        return StoredCertificate(kind, archive / name, info, source)

    def _prune(self, kind: str, keep: set[str]) -> None:
        """Remove versions of ``kind`` other than ``keep``, and leftovers of a crash."""
        archive = self.root / ARCHIVE
        for entry in archive.iterdir():
            name = entry.name
            ours = name.startswith(f"{kind}-") or name.startswith(f".{kind}-")
            if ours and name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
        for entry in self.root.glob(f".{kind}.*.link"):
            entry.unlink(missing_ok=True)

    # -- state and requests -------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(_read_small(self.root / STATE_FILE))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, state: dict[str, Any]) -> None:
        self.ensure()
        atomic_write_text(self.root / STATE_FILE, json.dumps(state, indent=1, sort_keys=True)
                          + "\n", mode=0o644)

    def request_renewal(self, force: bool) -> str:
        """Leave a renewal request for the running server; returns its id."""
        self.ensure()
        request_id = secrets.token_hex(8)
        atomic_write_text(self.root / REQUEST_FILE, json.dumps(
            {"id": request_id, "force": force, "requested": time.time()}) + "\n", mode=0o644)
        return request_id

    def withdraw_request(self, request_id: str) -> None:
        request = self._read_request()
        if request is not None and request.id == request_id:
            (self.root / REQUEST_FILE).unlink(missing_ok=True)

    def take_request(self) -> RenewRequest | None:
        """The pending renewal request, removed; None when there is none."""
        request = self._read_request()
        if request is not None:
            (self.root / REQUEST_FILE).unlink(missing_ok=True)
        return request

    def _read_request(self) -> RenewRequest | None:
        path = self.root / REQUEST_FILE
        try:
            data = json.loads(_read_small(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log(logger, "ignoring an unreadable renewal request", logging.WARNING,
                path=str(path), error=str(exc))
            path.unlink(missing_ok=True)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            path.unlink(missing_ok=True)
            return None
        return RenewRequest(id=data["id"][:64], force=data.get("force") is True)
