"""The authenticator: SASL mechanisms, password checks, throttling and logging, for every
protocol (IMAP, POP3, submission) - one instance per server process.

This is the async layer around the pure mechanism modules (``plain``, ``login``,
``cram_md5``, ``scram``): it looks up accounts and their stored secrets, runs Argon2 in a
thread pool (``mailkeep.auth.verify_password_async``), sleeps the failure delays
(``throttle``), skips Argon2 for a client that proved the same password recently
(``cache``), upgrades imported hashes after a successful plaintext login, logs every
success and failure with the client's address, protocol, mechanism, account and reason, and
reports every failure to the server's ban list (``mailkeep.bans``), which bans an address
that fails too often from every listener.

What a protocol does with it::

    exchange = authenticator.start("SCRAM-SHA-256", client)   # or UnsupportedMechanism
    step = await exchange.step(initial_response_or_None)
    while step.kind == "challenge":
        step = await exchange.step(await read_client_response())   # "*" -> exchange.cancel()

Accounts are the configured ones (``Config.accounts``), named by canonical address
(``mailkeep.config.canonical_address``); their secrets live in ``data_dir/passwd``
(``mailkeep.auth.PasswdFile``, re-read when it changes). Relay-only accounts authenticate
like any other; the session decides what they may do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailkeep.auth.passwd_file import PasswdEntry, PasswdFile, PasswdFileError
from mailkeep.auth.passwords import (
    hash_password_async,
    needs_rehash,
    verify_password_async,
)
from mailkeep.bans import BanPolicy
from mailkeep.config.names import InvalidName, canonical_address
from mailkeep.durable import fsync_dir
from mailkeep.logfmt import log
from mailkeep.sasl import cram_md5 as cram_md5_mechanism
from mailkeep.sasl import login as login_mechanism
from mailkeep.sasl import plain as plain_mechanism
from mailkeep.sasl import scram as scram_mechanism
from mailkeep.sasl.cache import MAX_ENTRIES, LoginCache
from mailkeep.sasl.common import (
    ClientInfo,
    FailureReason,
    MalformedResponse,
    SaslLimits,
    SaslStep,
    UnsupportedMechanism,
    challenge,
    check_identity,
    check_password,
    failure,
)
from mailkeep.sasl.credentials import (
    cram_md5_secret,
    fake_scram_verifier,
    missing_credentials,
    scram_verifier,
    write_credentials,
)
from mailkeep.sasl.throttle import MAX_TRACKED, Throttle, ThrottlePolicy

if TYPE_CHECKING:
    from mailkeep.bans import BanList
    from mailkeep.config import Account, Config

logger = logging.getLogger("mailkeep.auth")

# The server secret that derives fake SCRAM salts for unknown users; kept in data_dir so
# that the fake salts do not change at a restart (which would tell real users apart).
SECRET_FILE = "auth.secret"
SECRET_BYTES = 32
# A user name is cut to this many characters in log lines.
MAX_LOGGED_NAME = 100

PLAINTEXT_MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True)
class AuthPolicy:
    """Authentication settings (``[auth]`` in the configuration, docs/auth.md)."""

    cram_md5: bool = False
    max_failures_per_ip: int = 10
    max_failures_per_account: int = 20
    failure_window: float = 900.0
    #: The delay before answering the first failure; it doubles with each further one.
    first_failure_delay: float = 0.5
    max_failure_delay: float = 15.0
    login_cache_ttl: float = 3600.0
    login_cache_size: int = MAX_ENTRIES
    scram_iterations: int = 4096
    #: Addresses and accounts the throttle remembers at most (each).
    max_tracked: int = MAX_TRACKED
    #: Our host name, in CRAM-MD5 challenges (RFC 2195 §2).
    hostname: str = "localhost"
    limits: SaslLimits = field(default_factory=SaslLimits)

    @classmethod
    def from_config(cls, config: Config) -> AuthPolicy:
        auth = config.auth
        return cls(cram_md5=auth.cram_md5, max_failures_per_ip=auth.max_failures_per_ip,
                   max_failures_per_account=auth.max_failures_per_account,
                   failure_window=auth.failure_window, max_failure_delay=auth.max_failure_delay,
                   login_cache_ttl=auth.login_cache_ttl, scram_iterations=auth.scram_iterations,
                   hostname=config.hostname)

    def throttle_policy(self) -> ThrottlePolicy:
        return ThrottlePolicy(
            max_failures_per_ip=self.max_failures_per_ip,
            max_failures_per_account=self.max_failures_per_account,
            failure_window=self.failure_window, first_failure_delay=self.first_failure_delay,
            max_failure_delay=self.max_failure_delay, max_tracked=self.max_tracked)


def load_server_secret(path: Path) -> bytes:
    """The persistent server secret in ``path`` (hex), created on first use (mode 0600).

    Creation is race-free between processes: the new file is linked into place, and a
    process that loses the race reads the winner's secret.
    """
    try:
        return _parse_secret(path.read_text("ascii"))
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(SECRET_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secret.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.geteuid() == 0:
            # Created by root before the privilege drop: the server's user must read it.
            parent = os.stat(path.parent)
            os.chown(tmp, parent.st_uid, parent.st_gid)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _parse_secret(path.read_text("ascii"))
        fsync_dir(path.parent)
        return secret
    finally:
        os.unlink(tmp)


def _parse_secret(text: str) -> bytes:
    secret = bytes.fromhex(text.strip())
    if len(secret) < SECRET_BYTES:
        raise ValueError("the authentication secret is too short")
    return secret


def _printable(name: str) -> str:
    """A user name from the wire, safe and short enough for a log line."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in name[:MAX_LOGGED_NAME])
    return cleaned + ("..." if len(name) > MAX_LOGGED_NAME else "")


class SaslExchange:
    """One authentication exchange (RFC 4422 §3): feed client responses to ``step``."""

    mechanism: str

    def __init__(self, authenticator: Authenticator, mechanism: str, client: ClientInfo) -> None:
        self.mechanism = mechanism
        self._auth = authenticator
        self._client = client
        self._username: str | None = None  # the name the client gave, for the log
        self._account_key: str | None = None
        self._started = False
        self._done = False

    async def step(self, response: bytes | None) -> SaslStep:
        """Feed the client's decoded response (None for no initial response, b"" for an
        empty one); returns the next challenge or the outcome. Failures are answered
        after the throttle's delay (the coroutine sleeps; the event loop keeps running)."""
        if self._done:
            return failure("malformed", "Authentication exchange already finished")
        if response is not None and len(response) > self._auth.policy.limits.max_response_bytes:
            return await self._fail("malformed", "response longer than "
                                    f"{self._auth.policy.limits.max_response_bytes} bytes")
        first = not self._started
        self._started = True
        if first:
            refused = self._auth._refused(self._client)
            if refused:
                return await self._fail("throttled", refused)
        try:
            return await self._step(response, first)
        except MalformedResponse as exc:
            return await self._fail("malformed", str(exc))
        except Exception:
            # A bug or an unreadable password file: the client gets a temporary failure,
            # never a dropped connection; every protocol relies on this.
            logger.exception("SASL exchange failed", extra={"client": self._client.ip})
            self._done = True
            return failure("unavailable", "Temporary authentication failure")

    async def _step(self, response: bytes | None, first: bool) -> SaslStep:
        raise NotImplementedError

    def cancel(self) -> SaslStep:
        """The client gave up ("*", RFC 4422 §3.5); not counted as a failed guess."""
        if not self._done:
            self._done = True
            self._auth._log_outcome(self._client, self.mechanism, self._username,
                                    "failure", "cancelled", "client cancelled")
        return failure("cancelled")

    async def _fail(self, reason: FailureReason, detail: str) -> SaslStep:
        self._done = True
        return await self._auth._fail(self._client, self.mechanism, self._username,
                                      self._account_key, reason, detail)

    def _finish(self, step: SaslStep) -> SaslStep:
        self._done = True
        return step


class _PlainExchange(SaslExchange):
    async def _step(self, response: bytes | None, first: bool) -> SaslStep:
        if response is None:
            # RFC 4422 §5: no initial response; an empty challenge asks for it.
            return challenge(b"")
        credentials = plain_mechanism.parse_plain(response, self._auth.policy.limits)
        self._username = credentials.authcid
        if credentials.authzid and not _same_identity(credentials.authzid, credentials.authcid):
            return await self._fail("invalid", "authorization identity differs from the "
                                    "user name (proxy authentication is not supported)")
        self._done = True
        return await self._auth._check_password(self._client, self.mechanism,
                                                credentials.authcid, credentials.password)


class _LoginExchange(SaslExchange):
    def __init__(self, authenticator: Authenticator, mechanism: str, client: ClientInfo) -> None:
        super().__init__(authenticator, mechanism, client)
        self._machine = login_mechanism.LoginExchange(authenticator.policy.limits)

    async def _step(self, response: bytes | None, first: bool) -> SaslStep:
        if first:
            return challenge(self._machine.start(response))
        if response is None:
            raise MalformedResponse("missing response")
        result = self._machine.receive(response)
        if isinstance(result, bytes):
            return challenge(result)
        self._username = result.username
        self._done = True
        return await self._auth._check_password(self._client, self.mechanism,
                                                result.username, result.password)


class _CramMd5Exchange(SaslExchange):
    def __init__(self, authenticator: Authenticator, mechanism: str, client: ClientInfo) -> None:
        super().__init__(authenticator, mechanism, client)
        self._challenge = cram_md5_mechanism.make_challenge(
            secrets.randbits(63), int(authenticator.wall_clock()), authenticator.policy.hostname)

    async def _step(self, response: bytes | None, first: bool) -> SaslStep:
        if first:
            if response:
                # RFC 2195 is server-first: a client cannot know the answer yet.
                raise MalformedResponse("CRAM-MD5 does not take an initial response")
            return challenge(self._challenge)
        if response is None:
            raise MalformedResponse("missing response")
        answer = cram_md5_mechanism.parse_response(response, self._auth.policy.limits)
        self._username = answer.username
        auth = self._auth
        account, self._account_key = auth._canonical(answer.username)
        verdict = auth.throttle.check(self._client.ip, self._account_key, auth.now())
        if verdict == "throttled":
            return await self._fail("throttled", "too many failures")
        try:
            entry = auth._entry(account)
        except PasswdFileError as exc:
            return self._finish(auth._unavailable(self._client, self.mechanism, answer.username, exc))
        state = cram_md5_secret(entry) if entry is not None else None
        if account is None or entry is None:
            return await self._fail("invalid", "unknown user")
        if state is None:
            return await self._fail("invalid", "no CRAM-MD5 secret stored for this account")
        if not cram_md5_mechanism.verify(state, self._challenge, answer):
            return await self._fail("invalid", "wrong password")
        return self._finish(await auth._succeed(self._client, self.mechanism, account, verdict))


class _ScramExchange(SaslExchange):
    def __init__(self, authenticator: Authenticator, mechanism: str, client: ClientInfo) -> None:
        super().__init__(authenticator, mechanism, client)
        self._server = scram_mechanism.ScramServer(
            mechanism,
            channel_bindings=scram_mechanism.usable_channel_bindings(
                client.channel_bindings, client.tls_version),
            server_nonce=secrets.token_urlsafe(18), limits=authenticator.policy.limits)
        self._account: str | None = None
        self._sent_server_first = False
        self._unknown_reason = ""  # why no real verifier was used ("" when one was)
        self._verdict = "allow"

    async def _step(self, response: bytes | None, first: bool) -> SaslStep:
        if response is None:
            if first:
                return challenge(b"")  # SCRAM is client-first (RFC 5802 §5): ask for it
            raise MalformedResponse("missing response")
        if not self._sent_server_first:
            return await self._client_first(response)
        return await self._client_final(response)

    async def _client_first(self, response: bytes) -> SaslStep:
        auth = self._auth
        try:
            client_first = self._server.receive_client_first(response)
        except scram_mechanism.ScramRejected as exc:
            return await self._fail("invalid", str(exc))
        self._username = client_first.username
        if client_first.authzid and not _same_identity(client_first.authzid, client_first.username):
            return await self._fail("invalid", "authorization identity differs from the user "
                                    "name (proxy authentication is not supported)")
        account, self._account_key = auth._canonical(client_first.username)
        self._verdict = auth.throttle.check(self._client.ip, self._account_key, auth.now())
        if self._verdict == "throttled":
            return await self._fail("throttled", "too many failures")
        try:
            entry = auth._entry(account)
        except PasswdFileError as exc:
            return self._finish(auth._unavailable(self._client, self.mechanism,
                                                  client_first.username, exc))
        base = self._server.base_mechanism
        verifier = scram_verifier(entry, base) if entry is not None else None
        self._account = account
        if verifier is None:
            # Unknown user, or no verifier yet: answer as for a real user and fail at the
            # proof, so that the exchange does not reveal which it was.
            self._unknown_reason = (
                "unknown user" if account is None
                else "no password set" if entry is None
                else "no SCRAM verifier stored for this account yet (a login with a "
                     "password creates it)")
            verifier = fake_scram_verifier(auth.secret, base, account or client_first.username,
                                           auth.policy.scram_iterations)
        self._sent_server_first = True
        return challenge(self._server.server_first(verifier))

    async def _client_final(self, response: bytes) -> SaslStep:
        try:
            server_final = self._server.receive_client_final(response)
        except scram_mechanism.ScramRejected as exc:
            return await self._fail("invalid", self._unknown_reason or str(exc))
        if self._unknown_reason or self._account is None:
            # Unreachable in practice: nobody knows a preimage of a fake StoredKey.
            return await self._fail("invalid", self._unknown_reason or "unknown user")
        step = await self._auth._succeed(self._client, self.mechanism, self._account,
                                         self._verdict)
        return self._finish(SaslStep("success", server_final, account=step.account))


_EXCHANGES: Mapping[str, type[SaslExchange]] = {
    "PLAIN": _PlainExchange,
    "LOGIN": _LoginExchange,
    "CRAM-MD5": _CramMd5Exchange,
    **{name: _ScramExchange for name in scram_mechanism.MECHANISMS},
}


def _same_identity(authzid: str, authcid: str) -> bool:
    if authzid == authcid:
        return True
    try:
        return canonical_address(authzid) == canonical_address(authcid)
    except InvalidName:
        return False


class Authenticator:
    """One per server process, shared by IMAP, POP3 and submission sessions so that
    failure counters (and the login cache) are shared."""

    def __init__(self, passwd: PasswdFile, accounts: Mapping[str, Account],
                 policy: AuthPolicy = AuthPolicy(), *, secret: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 bans: BanList | None = None, metrics: Any = None) -> None:
        self.passwd = passwd
        #: Logins and failures are counted here (mailkeep.metrics.ServerMetrics).
        self.metrics = metrics
        #: The server's ban list: told of every failure; a banned address is refused
        #: without a password check (a connection made before the ban may still be open).
        self.bans = bans
        self.policy = policy
        self.secret = secret if secret is not None else secrets.token_bytes(SECRET_BYTES)
        self.now = clock
        self.wall_clock = wall_clock
        self._sleep = sleep
        self._accounts = accounts
        self.throttle = Throttle(policy.throttle_policy())
        self.cache = LoginCache(policy.login_cache_ttl, policy.login_cache_size)
        self._upgrades: dict[str, asyncio.Task[None]] = {}
        self._decoy_hash: str | None = None

    @classmethod
    def from_config(cls, config: Config, *, bans: BanList | None = None,
                    metrics: Any = None) -> Authenticator:
        """The authenticator of a server: ``config.auth`` as policy, ``data_dir/passwd``."""
        try:
            secret: bytes | None = load_server_secret(config.data_dir / SECRET_FILE)
        except (OSError, ValueError) as exc:
            log(logger, "cannot read or create the authentication secret; fake SCRAM salts "
                "for unknown users will change at each restart", logging.WARNING,
                event="auth-secret", path=str(config.data_dir / SECRET_FILE), error=str(exc))
            secret = None
        return cls(PasswdFile(config.passwd_file), config.accounts, AuthPolicy.from_config(config),
                   secret=secret, bans=bans, metrics=metrics)

    def update(self, config: Config) -> None:
        """Configuration reload: new accounts and policy; counters and cache are kept."""
        self._accounts = config.accounts
        self.policy = AuthPolicy.from_config(config)
        self.throttle.set_policy(self.policy.throttle_policy())
        self.cache.configure(self.policy.login_cache_ttl, self.policy.login_cache_size)
        if self.passwd.path != config.passwd_file:
            self.passwd = PasswdFile(config.passwd_file)
        if self.bans is not None:
            self.bans.configure(BanPolicy.from_config(config.auth))

    # -- what to offer ---------------------------------------------------------------

    def mechanisms(self, client: ClientInfo) -> list[str]:
        """What to advertise, strongest first."""
        names: list[str] = []
        if scram_mechanism.usable_channel_bindings(client.channel_bindings, client.tls_version):
            names += ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]
        names += ["SCRAM-SHA-256", "SCRAM-SHA-1"]
        if self.policy.cram_md5:
            names.append("CRAM-MD5")
        if self.plaintext_allowed(client):
            names += list(PLAINTEXT_MECHANISMS)
        return names

    def plaintext_allowed(self, client: ClientInfo) -> bool:
        """PLAIN, LOGIN and the protocols' own password commands need a secured connection."""
        return client.secured

    def start(self, mechanism: str, client: ClientInfo) -> SaslExchange:
        """Begin an exchange; raises UnsupportedMechanism for a mechanism not offered to
        this client (unknown, disabled, plaintext without TLS, -PLUS without binding data)."""
        name = mechanism.upper()
        if name not in self.mechanisms(client):
            raise UnsupportedMechanism(name)
        return _EXCHANGES[name](self, name, client)

    async def login(self, username: str | bytes, password: str | bytes,
                    client: ClientInfo) -> SaslStep:
        """IMAP LOGIN and POP3 USER/PASS: the checks of PLAIN, without SASL framing."""
        # For the log: the protocol's own password command.
        mechanism = {"imap": "LOGIN-COMMAND", "pop3": "USER-PASS"}.get(client.protocol, "PASSWORD")
        name = username.encode("utf-8", "surrogateescape") if isinstance(username, str) else username
        secret = password.encode("utf-8", "surrogateescape") if isinstance(password, str) else password
        shown = name[:MAX_LOGGED_NAME * 4].decode("utf-8", "replace")  # for the log only
        if not self.plaintext_allowed(client):
            self._log_outcome(client, mechanism, shown, "failure", "malformed",
                              "plaintext login without TLS")
            return failure("malformed", "Plaintext authentication is not allowed without TLS")
        refused = self._refused(client)
        if refused:
            return await self._fail(client, mechanism, shown, None, "throttled", refused)
        try:
            text = check_identity(name, self.policy.limits)
            check_password(secret, self.policy.limits)
        except MalformedResponse as exc:
            return await self._fail(client, mechanism, shown, None, "malformed", str(exc))
        return await self._check_password(client, mechanism, text, secret)

    async def wait_for_upgrades(self) -> None:
        """Wait until background hash upgrades are written (tests, orderly shutdown)."""
        while self._upgrades:
            await asyncio.gather(*self._upgrades.values(), return_exceptions=True)

    # -- shared steps ----------------------------------------------------------------

    def _refused(self, client: ClientInfo) -> str:
        """Why an attempt from this address is refused before any check ("" if it is not)."""
        if self.bans is not None and self.bans.is_banned(client.ip) is not None:
            return "address banned"
        if self.throttle.check(client.ip, None, self.now()) == "throttled":
            return "too many failures from this address"
        return ""

    def _canonical(self, username: str) -> tuple[str | None, str]:
        """(our account name or None, the key to count failures under)."""
        try:
            canonical = canonical_address(username)
        except InvalidName:
            return None, username.lower()
        return (canonical if canonical in self._accounts else None), canonical

    def _entry(self, account: str | None) -> PasswdEntry | None:
        """The passwd entry of a configured account (raises PasswdFileError)."""
        if account is None:
            return None
        entry = self.passwd.get(account)
        return entry if entry is not None and entry.hash else None

    async def _check_password(self, client: ClientInfo, mechanism: str, username: str,
                              password: bytes) -> SaslStep:
        """The plaintext path (PLAIN, LOGIN, IMAP LOGIN, POP3 PASS)."""
        account, account_key = self._canonical(username)
        verdict = self.throttle.check(client.ip, account_key, self.now())
        if verdict == "throttled":
            return await self._fail(client, mechanism, username, account_key, "throttled",
                                    "too many failures")
        try:
            entry = self._entry(account)
        except PasswdFileError as exc:
            return self._unavailable(client, mechanism, username, exc)
        if account is None or entry is None:
            # Spend the time a real check takes, so that the answer's timing does not
            # tell which accounts exist.
            await verify_password_async(await self._decoy(), password)
            return await self._fail(client, mechanism, username, account_key, "invalid",
                                    "unknown user" if account is None else "no password set")
        cached = self.cache.check(account, password, entry.hash, self.now())
        if not cached and not await verify_password_async(entry.hash, password):
            return await self._fail(client, mechanism, username, account_key, "invalid",
                                    "wrong password")
        if not cached:
            self.cache.remember(account, password, entry.hash, self.now())
        self._maybe_upgrade(account, entry, password)
        step = await self._succeed(client, mechanism, account, verdict, cached=cached)
        return step

    async def _succeed(self, client: ClientInfo, mechanism: str, account: str, verdict: str,
                       *, cached: bool = False) -> SaslStep:
        if verdict == "slow":
            # The account is under attack: its owner still gets in, after the longest delay.
            await self._sleep(self.throttle.longest_delay())
        self.throttle.success(client.ip, account)
        self._log_outcome(client, mechanism, account, "success", "", "cached" if cached else "")
        return SaslStep("success", account=account)

    async def _fail(self, client: ClientInfo, mechanism: str, username: str | None,
                    account_key: str | None, reason: FailureReason, detail: str) -> SaslStep:
        delay = self.throttle.failure(client.ip, account_key, self.now())
        self._log_outcome(client, mechanism, username, "failure", reason, detail, delay=delay)
        if self.bans is not None:
            # After the failure's own log line, so that the log reads in order.
            self.bans.record_failure(client.ip)
        if delay > 0:
            await self._sleep(delay)
        return failure(reason)

    def _unavailable(self, client: ClientInfo, mechanism: str, username: str,
                     exc: Exception) -> SaslStep:
        self._log_outcome(client, mechanism, username, "failure", "unavailable",
                          f"cannot read the password file: {exc}", level=logging.ERROR)
        return failure("unavailable")

    def _log_outcome(self, client: ClientInfo, mechanism: str, username: str | None,
                     result: str, reason: str, detail: str, *, delay: float | None = None,
                     level: int | None = None) -> None:
        fields: dict[str, object] = {
            "event": "auth", "result": result, "protocol": client.protocol, "ip": client.ip,
            "mechanism": mechanism, "account": _printable(username) if username else "",
            "tls": client.tls_version or "no",
        }
        if reason:
            fields["reason"] = reason
        if detail:
            fields["detail"] = detail
        if delay:
            fields["delay"] = round(delay, 3)
        if level is None:
            level = logging.INFO if result == "success" else logging.WARNING
        log(logger, "login" if result == "success" else "login failed", level, **fields)
        if self.metrics is not None:
            self.metrics.auth_outcome(client.protocol, result, reason)

    async def _decoy(self) -> str:
        if self._decoy_hash is None:
            self._decoy_hash = await hash_password_async(secrets.token_urlsafe(16))
        return self._decoy_hash

    # -- upgrade on login ------------------------------------------------------------

    def _maybe_upgrade(self, account: str, entry: PasswdEntry, password: bytes) -> None:
        """After a plaintext login: rewrite a non-Argon2id hash, and add missing SCRAM
        verifiers (and the CRAM-MD5 state when enabled), in the background."""
        if account in self._upgrades:
            return
        if not (needs_rehash(entry.hash) or missing_credentials(
                entry, scram_iterations=self.policy.scram_iterations, cram_md5=self.policy.cram_md5)):
            return
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            log(logger, "password is not UTF-8; stored hash not upgraded", logging.WARNING,
                event="auth-upgrade", account=account)
            return
        task = asyncio.get_running_loop().create_task(self._upgrade(account, entry.hash, text))
        self._upgrades[account] = task
        task.add_done_callback(lambda _task: self._upgrades.pop(account, None))

    async def _upgrade(self, account: str, old_hash: str, password: str) -> None:
        policy = self.policy
        try:
            rehash = needs_rehash(old_hash)
            new_hash = await hash_password_async(password) if rehash else old_hash
            # Only if the hash is still the one the client proved: an administrator may
            # have changed the password in the meantime.
            written = await asyncio.to_thread(
                write_credentials, self.passwd, account, new_hash, password,
                scram_iterations=policy.scram_iterations, cram_md5=policy.cram_md5,
                expected_hash=old_hash)
        except Exception as exc:  # a failed upgrade must never fail the login
            log(logger, "could not upgrade the stored password", logging.WARNING,
                event="auth-upgrade", account=account, error=f"{type(exc).__name__}: {exc}")
            return
        if not written:
            log(logger, "stored password changed meanwhile; not upgraded", logging.INFO,
                event="auth-upgrade", account=account)
            return
        if rehash:
            self.cache.remember(account, password.encode("utf-8"), new_hash, self.now())
        log(logger, "stored password upgraded", logging.INFO, event="auth-upgrade",
            account=account, rehashed=rehash, verifiers="scram-sha-256,scram-sha-1"
            + (",cram-md5" if policy.cram_md5 else ""))
