"""Which certificates to have, when to renew them, and what to do when that fails.

Names: [acme] ``names``, else the hostname plus ``mta-sts.D`` and ``autoconfig.D`` of every
domain D. The ``mta-sts.`` and ``autoconfig.`` names are optional: when the CA cannot
validate one (no DNS record yet, most often), the order is retried without it and a
warning names it and the DNS record to add; it is tried again a day later. Every other
name, the hostname first, is required.

One certificate per [acme] ``key_types`` entry (ECDSA P-256, RSA 2048), each renewed when
less than ``renew_before`` is left (or a third of its lifetime, if that is less), when it
lacks a wanted name, when the [acme] directory changed, or on ``mailkeep cert renew``.

:class:`CertificateManager` runs inside the server: it checks at start, then when the
next renewal is due and at least every :data:`CHECK_INTERVAL`, and after every reload. A
failed attempt keeps the current certificate (or the self-signed fallback), logs the
reason, and is retried after ``retry_interval``, doubling up to :data:`MAX_RETRY_INTERVAL`.
Challenges are answered by the server's own listeners through the shared
:class:`~mailkeep.web.challenges.ChallengeStore`.

:func:`obtain_standalone` does one check before any server runs (``mailkeep quickstart``,
``mailkeep cert renew`` with no server), on listeners of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mailkeep.acme.certs import generate_key, key_to_pem, reusable_key
from mailkeep.acme.client import ORDER_TIMEOUT, AcmeClient, AuthorizationFailed
from mailkeep.acme.messages import AcmeError
from mailkeep.acme.storage import AcmeStorage, RenewRequest, StoredCertificate
from mailkeep.acme.tlsalpn import challenge_context
from mailkeep.config import Config
from mailkeep.logfmt import log
from mailkeep.web.challenges import ChallengeStore, standalone_application

logger = logging.getLogger("mailkeep.acme")

#: Longest time between two checks of the certificates (seconds).
CHECK_INTERVAL = 12 * 3600.0
#: Shortest time between two checks, whatever a certificate's lifetime.
MIN_CHECK_INTERVAL = 10.0
#: Longest wait after failed attempts (the first waits [acme] retry_interval).
MAX_RETRY_INTERVAL = 12 * 3600.0
#: How often the server looks for a `mailkeep cert renew` request without a signal.
REQUEST_POLL_INTERVAL = 30.0
#: An optional name the CA could not validate is tried again after this long.
DROPPED_NAME_RETRY = 24 * 3600.0
#: Names the certificate can do without (their services then warn or fail alone).
OPTIONAL_PREFIXES = ("mta-sts.", "autoconfig.")
#: Time limit of a standalone run: every key type's order (seconds).
STANDALONE_TIMEOUT = 2 * ORDER_TIMEOUT + 60


def wanted_names(config: Config) -> list[str]:
    """The names the certificates should cover, the most important first."""
    if config.acme.names:
        names = list(config.acme.names)
    else:
        names = [config.hostname]
        for domain in sorted(config.domains):
            names += [f"mta-sts.{domain}", f"autoconfig.{domain}"]
    return list(dict.fromkeys(n.lower() for n in names))


def is_optional(name: str, hostname: str) -> bool:
    return name != hostname and name.startswith(OPTIONAL_PREFIXES)


def challenge_types_for(config: Config) -> tuple[str, ...]:
    """The configured challenge types the server's listeners can answer: HTTP-01 needs an
    ``http`` listener (port 80), TLS-ALPN-01 an ``https`` one (port 443)."""
    protocols = {listener.protocol for listener in config.listeners}
    needs = {"http-01": "http", "tls-alpn-01": "https"}
    return tuple(t for t in config.acme.challenges if needs[t] in protocols)


def due_reason(current: StoredCertificate | None, names: list[str], config: Config,
               now: datetime.datetime, force: bool = False) -> str | None:
    """Why ``current`` must be replaced now, or None when it is good."""
    if force:
        return "renewal requested"
    if current is None:
        return "no certificate yet"
    missing = [n for n in names if n not in current.info.names]
    if missing:
        return "it lacks " + ", ".join(missing)
    if current.source and current.source != config.acme.directory:
        return "the [acme] directory changed"
    if now >= current.info.renewal_time(config.acme.renew_before):
        left = time_left((current.info.not_after - now).total_seconds())
        return f"it expires {current.info.not_after:%Y-%m-%d %H:%M:%S} UTC ({left})"
    return None


def time_left(seconds: float) -> str:
    """A remaining lifetime for people: "29.5 days left", "5.2 hours left", "expired"."""
    if seconds <= 0:
        return "expired"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days left"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours left"
    return f"{seconds:.0f} seconds left"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``ok`` False means something that was due failed."""

    ok: bool
    message: str
    issued: tuple[StoredCertificate, ...] = ()
    #: When the next check should run (time.time()).
    next_check: float = 0.0

    def __bool__(self) -> bool:
        return self.ok


class StoreResponder:
    """Answers challenges through a ChallengeStore (read by the HTTP(S) listeners)."""

    def __init__(self, store: ChallengeStore, challenge_types: tuple[str, ...]) -> None:
        self.store = store
        self.challenge_types = challenge_types

    def present(self, challenge_type: str, name: str, token: str,
                key_authorization: str) -> None:
        if challenge_type == "http-01":
            self.store.add_http01(token, key_authorization)
        elif challenge_type == "tls-alpn-01":
            self.store.add_tls_alpn(name, challenge_context(name, key_authorization))
        else:
            raise ValueError(f"cannot answer {challenge_type}")

    def cleanup(self, challenge_type: str, name: str, token: str) -> None:
        if challenge_type == "http-01":
            self.store.remove_http01(token)
        elif challenge_type == "tls-alpn-01":
            self.store.remove_tls_alpn(name)


class CertificateManager:
    """Keeps the ACME certificates of one server current (see the module docstring).

    ``on_renewed`` is called (in the event loop) after new certificates were installed, to
    load them into every listener at once.
    """

    def __init__(self, config: Config, challenges: ChallengeStore, *,
                 on_renewed: Callable[[], None] | None = None,
                 challenge_types: tuple[str, ...] | None = None) -> None:
        self.config = config
        self.challenges = challenges
        self.on_renewed = on_renewed
        self._fixed_types = challenge_types
        self.storage = AcmeStorage(config.data_dir)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._changed = True
        self._failures = 0
        self._next_attempt = 0.0

    # -- lifecycle in the server ----------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="acme")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def update(self, config: Config) -> None:
        """After a reload: take the new settings, and look at once when they (or the names)
        changed. Either way, pick up a request `mailkeep cert renew` left before its
        signal. Other reloads do not cut a retry delay short (no hammering a failing CA)."""
        if self.config.acme != config.acme or wanted_names(self.config) != wanted_names(config):
            self._failures = 0
            self._next_attempt = 0.0
            self._changed = True
        self.config = config
        self._wake.set()

    async def _run(self) -> None:
        while True:
            request = None
            try:
                request = await asyncio.to_thread(self.storage.take_request)
            except OSError as exc:
                log(logger, "cannot read the renewal request", logging.ERROR,
                    error=exc.strerror or str(exc))
            if request is not None or self._changed or time.time() >= self._next_attempt:
                self._changed = False
                await self._attempt(request)
            wait = min(max(self._next_attempt - time.time(), 0.0), REQUEST_POLL_INTERVAL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()

    async def _attempt(self, request: RenewRequest | None) -> None:
        """One check with its bookkeeping: retry schedule, log, state for `cert status`."""
        if not self.config.acme.enabled:
            self._next_attempt = math.inf
            if request is not None:
                self._record(None, request, "ACME is not enabled ([acme] enabled = false)")
            return
        try:
            result = await self.check(force=request.force if request else False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one failure end the renewals
            reason = str(exc) if isinstance(exc, AcmeError | OSError) else repr(exc)
            self._failures += 1
            delay = min(self.config.acme.retry_interval * 2 ** (self._failures - 1),
                        MAX_RETRY_INTERVAL)
            self._next_attempt = time.time() + delay
            fallback = "the current certificate" if any(
                self.storage.current(k) for k in self.config.acme.key_types) \
                else "the self-signed certificate"
            log(logger, "could not obtain a certificate", logging.ERROR, error=reason,
                retry_in=f"{delay:.0f}s", serving=fallback)
            self._record(None, request, reason)
            return
        self._failures = 0
        self._next_attempt = result.next_check
        self._record(result, request, None)

    def _record(self, result: CheckResult | None, request: RenewRequest | None,
                error: str | None) -> None:
        state = self.storage.read_state()
        state.update(last_check=time.time(), last_error=error,
                     next_check=None if math.isinf(self._next_attempt) else self._next_attempt,
                     failures=self._failures)
        if result is not None:
            state["last_result"] = result.message
        if request is not None:
            state["request"] = {"id": request.id, "ok": error is None,
                                "message": error or (result.message if result else "")}
        try:
            self.storage.write_state(state)
        except OSError as exc:
            log(logger, "cannot write the ACME state", logging.ERROR,
                error=exc.strerror or str(exc))

    # -- one check ------------------------------------------------------------------------

    def challenge_types(self) -> tuple[str, ...]:
        return self._fixed_types if self._fixed_types is not None \
            else challenge_types_for(self.config)

    async def check(self, *, force: bool = False) -> CheckResult:
        """Renew whatever is due (everything with ``force``); raises AcmeError (or OSError)
        when something due could not be obtained. Certificates obtained before a failure
        stay installed and are announced."""
        config = self.config
        acme = config.acme
        state = await asyncio.to_thread(self.storage.read_state)
        now = time.time()
        # Optional names the CA could not validate lately; a forced renewal tries them all.
        dropped: dict[str, float] = {} if force else {
            name: float(when) for name, when in (state.get("dropped") or {}).items()
            if isinstance(when, int | float) and now - when < DROPPED_NAME_RETRY}
        names = [n for n in wanted_names(config) if n not in dropped]
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        due = {}
        for kind in acme.key_types:
            current = await asyncio.to_thread(self.storage.current, kind)
            reason = due_reason(current, names, config, moment, force)
            if reason is not None:
                due[kind] = reason
        if not due:
            return CheckResult(True, "certificates are current", (),
                               self._next_check(now))
        types = self.challenge_types()
        if not types:
            raise AcmeError(
                "no listener can answer the CA's challenges: add an http listener on port 80 "
                "(for http-01) or an https listener on port 443 (for tls-alpn-01), as "
                "[acme] challenges allows")
        issued: list[StoredCertificate] = []
        account_key = await asyncio.to_thread(self.storage.account_key)
        responder = StoreResponder(self.challenges, types)
        try:
            async with AcmeClient(acme.directory, account_key, ca_file=acme.ca_file,
                                  email=acme.email) as client:
                for kind in due:
                    # An earlier key type's order may have left optional names out.
                    names = [n for n in names if n not in dropped]
                    current = await asyncio.to_thread(self.storage.current, kind)
                    reason = due_reason(current, names, config,
                                        datetime.datetime.now(datetime.UTC), force)
                    if reason is None:
                        continue
                    log(logger, "obtaining a certificate", kind=kind, reason=reason,
                        names=",".join(names))
                    stored = await self._obtain(client, kind, names, dropped, responder,
                                                force)
                    if stored is not None:
                        issued.append(stored)
                        log(logger, "certificate installed", kind=kind,
                            names=",".join(stored.info.names), serial=stored.info.serial,
                            not_after=f"{stored.info.not_after:%Y-%m-%dT%H:%M:%SZ}",
                            issuer=stored.info.issuer)
        finally:
            state = await asyncio.to_thread(self.storage.read_state)
            state["dropped"] = dropped
            await asyncio.to_thread(self.storage.write_state, state)
            if issued and self.on_renewed is not None:
                try:
                    self.on_renewed()
                except Exception as exc:  # the certificates are installed all the same
                    log(logger, "loading the new certificates failed", logging.ERROR,
                        error=repr(exc))
        message = (f"obtained {', '.join(s.kind for s in issued)} certificate"
                   f"{'s' if len(issued) > 1 else ''} for {', '.join(issued[0].info.names)}"
                   if issued else "certificates are current")
        if dropped:
            message += f" (left out for now: {', '.join(sorted(dropped))})"
        return CheckResult(True, message, tuple(issued), self._next_check(time.time()))

    async def _obtain(self, client: AcmeClient, kind: str, names: list[str],
                      dropped: dict[str, float], responder: StoreResponder,
                      force: bool) -> StoredCertificate | None:
        """One certificate for ``kind``; optional names the CA cannot validate are left
        out (and added to ``dropped``). None when, without them, the current certificate
        is still good."""
        hostname = self.config.hostname
        current = await asyncio.to_thread(self.storage.current, kind)
        key = None
        if current is not None:
            key = await asyncio.to_thread(reusable_key, current.key_file, kind)
        if key is None:
            key = await asyncio.to_thread(generate_key, kind)
        while True:
            try:
                chain = await client.obtain(names, key, responder)
            except AuthorizationFailed as exc:
                required = {n: r for n, r in exc.failures.items()
                            if not is_optional(n, hostname)}
                if required:
                    raise AcmeError(
                        "the CA could not validate " + "; ".join(
                            f"{n}: {r}" for n, r in required.items())
                        + ". Check that each name's A/AAAA record points to this server and "
                        "that port 80 (http-01) or 443 (tls-alpn-01) reaches Mailkeep") from None
                for name, reason in exc.failures.items():
                    log(logger, "name left out of the certificate", logging.WARNING,
                        identifier=name, reason=reason,
                        fix=f"publish an A/AAAA record for {name} pointing to this server "
                            f"(or a CNAME to {hostname}); tried again in a day, or at once "
                            "by `mailkeep cert renew --force`")
                    dropped[name] = time.time()
                remaining = [n for n in names if n not in exc.failures]
                if not remaining or len(remaining) == len(names):
                    raise AcmeError(str(exc)) from None
                names = remaining
                current = await asyncio.to_thread(self.storage.current, kind)
                moment = datetime.datetime.now(datetime.UTC)
                if due_reason(current, names, self.config, moment, force) is None:
                    return None  # no new certificate just to say the same thing
                continue
            return await asyncio.to_thread(self.storage.install, kind, key_to_pem(key), chain,
                                           self.config.acme.directory)

    def _next_check(self, now: float) -> float:
        """When to look next: the earliest renewal moment, at most CHECK_INTERVAL away."""
        moment = now + CHECK_INTERVAL
        for kind in self.config.acme.key_types:
            current = self.storage.current(kind)
            if current is not None:
                due = current.info.renewal_time(self.config.acme.renew_before).timestamp()
                moment = min(moment, due)
        return max(moment, now + MIN_CHECK_INTERVAL)


# -- before the server runs ------------------------------------------------------------------


@dataclass(frozen=True)
class StandaloneResult:
    """What :func:`obtain_standalone` did. ``ok`` is False with the reason in ``message``."""

    ok: bool
    message: str
    certificates: tuple[StoredCertificate, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


class _Hangup(asyncio.Protocol):
    """TLS-ALPN-01 needs the handshake only (RFC 8737 §4): close right after it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _alpn_front(store: ChallengeStore) -> ssl.SSLContext:
    front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    front.minimum_version = ssl.TLSVersion.TLSv1_2

    def pick(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        context = store.tls_alpn_context(server_name) if server_name else None
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = context
        return None

    front.sni_callback = pick
    return front


def _default_address(config: Config, protocol: str, fallback: str) -> str:
    for listener in config.listeners:
        if listener.protocol == protocol and not listener.address.startswith("unix:"):
            return listener.address
    return fallback


async def obtain_standalone(config: Config, *, http_address: str | None = None,
                            tls_address: str | None = None, force: bool = False,
                            timeout: float = STANDALONE_TIMEOUT) -> StandaloneResult:
    """Obtain (or renew, when due or ``force``) the [acme] certificates before any server
    runs, answering the challenges on listeners of its own::

        result = await obtain_standalone(config, http_address="0.0.0.0:80")
        if not result.ok:
            print(result.message)

    ``http_address`` serves HTTP-01 (default: the config's ``http`` listener, else
    ``0.0.0.0:80``), ``tls_address`` TLS-ALPN-01 (default: the ``https`` listener, else
    ``0.0.0.0:443``), each only when [acme] ``challenges`` allows it. An address that cannot
    be bound (in use, or not root for ports below 1024) is skipped; with none left, the
    result says why. Ports are bound only for the duration of the call. Never raises for
    ACME or network failures: the certificates on disk are then unchanged (a rerun
    converges), and ``message`` holds the reason.
    """
    if not config.acme.enabled:
        return StandaloneResult(False, "ACME is not enabled ([acme] enabled = false)")
    from mailkeep.servers.daemon import bind_socket

    store = ChallengeStore()
    types: list[str] = []
    problems: list[str] = []
    runner: web.AppRunner | None = None
    alpn_server: asyncio.base_events.Server | None = None
    loop = asyncio.get_running_loop()
    try:
        for kind in config.acme.challenges:
            if kind == "http-01":
                address = http_address or _default_address(config, "http", "0.0.0.0:80")
            else:
                address = tls_address or _default_address(config, "https", "0.0.0.0:443")
            try:
                sock = bind_socket(address)
            except OSError as exc:
                problems.append(f"cannot listen on {address} for {kind}: "
                                f"{exc.strerror or exc}")
                continue
            if kind == "http-01":
                runner = web.AppRunner(standalone_application(store), access_log=None,
                                       handle_signals=False)
                await runner.setup()
                await web.SockSite(runner, sock).start()
            else:
                alpn_server = await loop.create_server(
                    _Hangup, sock=sock, ssl=_alpn_front(store), ssl_handshake_timeout=10.0)
            types.append(kind)
        if not types:
            return StandaloneResult(False, "; ".join(problems) + " (ports below 1024 need "
                                    "root; stop whatever else listens there)")
        manager = CertificateManager(config, store, challenge_types=tuple(types))
        manager._next_attempt = math.inf  # nothing runs after this call
        try:
            async with asyncio.timeout(timeout):
                result = await manager.check(force=force)
        except TimeoutError:
            message = f"no certificate within {timeout:.0f}s"
        except (AcmeError, OSError) as exc:
            message = str(exc)
        else:
            manager._record(result, None, None)
            return StandaloneResult(True, result.message, result.issued)
        manager._record(None, None, message)
        return StandaloneResult(False, message)
    finally:
        if runner is not None:
            await runner.cleanup()
        if alpn_server is not None:
            alpn_server.close()
            with contextlib.suppress(Exception):
                await alpn_server.wait_closed()
