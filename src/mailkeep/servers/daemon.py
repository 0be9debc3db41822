"""The server process: bind, drop privileges, serve, reload on SIGHUP, stop on SIGTERM.

Order at start (the same for ``serve`` and ``localserve``):
1. load and validate the config (a bad config never starts a half-working server);
2. bind every listener while still privileged (ports below 1024);
3. switch to the configured unprivileged user (``run_as``);
4. open the store (running recovery), make sure every account exists;
5. start the listeners, write the pid file, wait for signals.

SIGHUP reloads the config: accounts, aliases, domains, limits and certificates apply to new
sessions at once; running sessions finish with what they started with. SIGTERM/SIGINT stop
accepting, let deliveries in flight complete (their 250 is still sent), close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import pwd
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailkeep.addressing import Resolver
from mailkeep.bans import BanList, BanPolicy, ban_refusal
from mailkeep.config import Config, ConfigError, load_config
from mailkeep.delivery.pipeline import Pipeline
from mailkeep.delivery.submission import RateLimiter, Submission
from mailkeep.dkim.keys import DkimKeys
from mailkeep.logfmt import configure as configure_logging
from mailkeep.logfmt import log
from mailkeep.metrics import ServerMetrics
from mailkeep.outbound.dns import make_resolver
from mailkeep.queue.agent import DeliveryProcess
from mailkeep.queue.pickup import Pickup
from mailkeep.queue.scheduler import Scheduler, deliver_local
from mailkeep.queue.store import QueueStore
from mailkeep.runtime import tune_for_serving
from mailkeep.sasl import Authenticator
from mailkeep.servers.imap import IMAPContext, IMAPListener
from mailkeep.servers.indexer import BackgroundIndexer
from mailkeep.servers.listener import ConnectionCounts
from mailkeep.servers.pop3 import LoginTimes, POP3Listener, pop3_context
from mailkeep.servers.smtp import ReceiverContext, SMTPListener
from mailkeep.servers.tls import TLSManager
from mailkeep.smtp.server import SessionConfig
from mailkeep.store import open_store
from mailkeep.store.fts import FullTextIndex
from mailkeep.web.challenges import ChallengeStore
from mailkeep.web.server import WebContext, WebListener

logger = logging.getLogger("mailkeep.server")

SMTP_PROTOCOLS = {"smtp", "lmtp", "submission", "submissions"}
SUBMISSION_PROTOCOLS = {"submission", "submissions"}
IMAP_PROTOCOLS = {"imap", "imaps"}
POP3_PROTOCOLS = {"pop3", "pop3s"}
WEB_PROTOCOLS = {"http", "https"}
SERVED_PROTOCOLS = SMTP_PROTOCOLS | IMAP_PROTOCOLS | POP3_PROTOCOLS | WEB_PROTOCOLS
TLS_RELOAD_INTERVAL = 10.0


def protocol_family(protocol: str) -> str:
    """Which server speaks a listener protocol: "smtp", "imap", "pop3" or "web"."""
    if protocol in WEB_PROTOCOLS:
        return "web"
    if protocol in IMAP_PROTOCOLS:
        return "imap"
    if protocol in POP3_PROTOCOLS:
        return "pop3"
    return "smtp"


@dataclass(frozen=True)
class ListenerKey:
    """A listener is its socket and the server behind it: a reload that changes only TLS
    or limits keeps it; one that moves an address to another protocol family rebinds."""

    address: str
    family: str = "smtp"


def listener_key(listener) -> ListenerKey:
    return ListenerKey(listener.address, protocol_family(listener.protocol))


def bind_socket(address: str, *, unix_mode: int = 0o666) -> socket.socket:
    """Bind (not yet serve) a listening socket for ``host:port``, ``[v6]:port`` or ``unix:PATH``."""
    if address.startswith("unix:"):
        path = Path(address[5:])
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            # A stale socket from a crash; refuse to remove anything that is not a socket,
            # or a socket another running server still answers on.
            if path.is_socket():
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(str(path))
                except OSError:
                    path.unlink()
                else:
                    raise OSError(errno.EADDRINUSE, "another server is listening there")
                finally:
                    probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The mode is set at creation (umask), never by a chmod that could follow a link.
        old_umask = os.umask(0o777 & ~unix_mode)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        sock.listen(1024)
        sock.setblocking(False)
        return sock
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, int(port)))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def open_fts(store: Any, data_dir: Path) -> Any:
    """The full-text index beside the store (rebuilt from the store if it is lost)."""
    return FullTextIndex.for_data_dir(store, data_dir)


def drop_privileges(user: str, data_dir: Path) -> None:
    """Switch to ``user`` (and its groups) for good; the data directory becomes theirs."""
    if os.getuid() != 0:
        return
    entry = pwd.getpwnam(user)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    # fwalk with directory descriptors: a directory swapped for a symlink meanwhile cannot
    # redirect root's chown outside the data directory.
    for _root, dirs, files, root_fd in os.fwalk(data_dir, follow_symlinks=False):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, entry.pw_uid, entry.pw_gid, dir_fd=root_fd,
                         follow_symlinks=False)
    os.setgroups([g.gr_gid for g in grp.getgrall() if user in g.gr_mem] + [entry.pw_gid])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise RuntimeError("could not drop root privileges")
    log(logger, "dropped privileges", user=user, uid=entry.pw_uid)


#: Answers the inbound policy's resolver keeps (SPF, DKIM keys, DMARC, DNSBL, PTR).
DNS_CACHE_SIZE = 50_000


class Server:
    def __init__(self, config_path: Path, *, banner=None):
        self.config_path = Path(config_path)
        self.config: Config = load_config(self.config_path)
        self.banner = banner
        self.store = None
        self.tls: TLSManager | None = None
        self.listeners: dict[ListenerKey, Any] = {}
        self.authenticator: Any = None
        self.imap_counts = ConnectionCounts()
        self.pop3_counts: Any = None
        # Brute-force bans (data_dir/bans.db), opened after the privilege drop; one list
        # for the authenticator and every listener.
        self.bans: BanList | None = None
        self.pop3_login_times: Any = None
        self.bound: dict[ListenerKey, socket.socket] = {}
        self.stopping: asyncio.Event | None = None  # created in run(), inside the loop
        self.ready: asyncio.Event | None = None
        self.fts: Any = None
        self.indexer: Any = None
        self._reload_task: asyncio.Task | None = None
        # Sending: the durable queue, the delivery process that empties it (its scheduler
        # and SMTP client, mailkeep.queue.agent), the pipeline that stores its mail for our
        # own domains, the sendmail pickup, DKIM keys, and the per-account rate limits
        # (kept across reloads).
        self.queue: Any = None
        self.delivery: DeliveryProcess | None = None
        self._local_pipeline: Pipeline | None = None
        self.pickup: Any = None
        self.dkim: Any = None
        self.rates = RateLimiter()
        # Receiving: the inbound policy of the current config (built on first use and on
        # each reload), its DNS resolver (whose cache outlives reloads) and greylist.
        self._inbound: tuple[Config, Any] | None = None
        self._inbound_resolver: tuple[tuple[str, ...], float, Any] | None = None
        self.greylist: Any = None
        self._greylist_settings: tuple[float, float, float] | None = None
        # DMARC aggregate reports: received ones are read into this store, our own are
        # recorded there and sent daily by the reporter (docs/dmarc-reports.md).
        self.dmarc_store: Any = None
        self.dmarc_reporter: Any = None
        # HTTP(S): pending ACME challenges, and what the web routes may use by name
        # ("store", "metrics", ...; see mailkeep.web.server.WebContext).
        self.challenges = ChallengeStore()
        self.web_services: dict[str, Any] = {}
        # Prometheus metrics of this server (GET /metrics on the HTTP(S) listeners).
        self.metrics = ServerMetrics()
        self.web_services["metrics"] = self.metrics
        # The certificates in use (replaced on reload), e.g. to sign Apple profiles.
        self.web_services["tls"] = lambda: self.tls
        # ACME certificates (mailkeep.acme.manager), renewed in the background.
        self.certificates: Any = None

    # -- assembling the runtime from a config ------------------------------------------

    def _session_config(self, config: Config, lmtp: bool, tls_available: bool,
                        tls_active: bool) -> SessionConfig:
        s = config.smtp
        return SessionConfig(
            hostname=config.hostname,
            lmtp=lmtp,
            max_message_size=s.message_size_limit,
            max_recipients=s.max_recipients,
            max_data_line=s.max_data_line,
            bare_newlines=s.bare_newlines,
            starttls_available=tls_available and not tls_active,
            tls_active=tls_active,
            max_commands=s.max_commands,
            soft_error_limit=s.soft_error_limit,
            hard_error_limit=s.hard_error_limit,
        )

    def submission(self, config: Config, pipeline: Pipeline) -> Submission:
        """The submission service for a config snapshot (587/465 and the sendmail pickup)."""
        return Submission(config, pipeline, self.queue, spool_dir=self.spool_dir(config),
                          dkim=self.dkim, rates=self.rates,
                          wake=self.delivery.notify_new if self.delivery else None)

    def _receiver_context(self, config: Config, pipeline: Pipeline, listener) -> ReceiverContext:
        lmtp = listener.protocol == "lmtp"
        implicit = listener.tls == "implicit"
        tls_ctx = self.tls.context if self.tls and listener.tls != "none" else None
        submission = None
        if listener.protocol in SUBMISSION_PROTOCOLS:
            submission = self.submission(config, pipeline)
        return ReceiverContext(
            pipeline=pipeline,
            session_config=self._session_config(config, lmtp, listener.tls == "starttls",
                                                implicit),
            limits=config.smtp,
            tls_context=tls_ctx,
            spool_dir=self.spool_dir(config),
            lmtp=lmtp,
            listener=f"{listener.protocol}:{listener.address}",
            implicit_tls=implicit,
            submission=submission,
            authenticator=self.authenticator if submission is not None else None,
            allow_plaintext_loopback=config.auth.allow_plaintext_loopback,
            policy=self.inbound_policy(config) if listener.protocol == "smtp" else None,
            policy_rules=(self.inbound_policy(config).rules_for(listener.policy)
                          if listener.protocol == "smtp" else None),
            queue=self.queue,
            dmarc_store=self.dmarc_store,
            dmarc_report_address=config.dmarc.report_address,
            metrics=self.metrics,
        )

    def inbound_policy(self, config: Config) -> Any:
        """The inbound policy of ``config``, built once per config snapshot."""
        if self._inbound is not None and self._inbound[0] is config:
            return self._inbound[1]
        from mailkeep.policy.inbound import InboundPolicy

        settings = config.policy
        resolvers = tuple(config.delivery.resolvers)
        if (self._inbound_resolver is None
                or self._inbound_resolver[:2] != (resolvers, settings.dns_timeout)):
            resolver = make_resolver(list(resolvers) or None, timeout=settings.dns_timeout,
                                     cache_size=DNS_CACHE_SIZE)
            self._inbound_resolver = (resolvers, settings.dns_timeout, resolver)
        resolver = self._inbound_resolver[2]
        names = {rule.name for rules in settings.compiled.values() for rule in rules}
        greylist = dnsbl = clamd = rspamd = None
        if "greylist" in names:
            from mailkeep.policy.greylist import Greylist

            wanted = (settings.greylist.delay, settings.greylist.retry_window,
                      settings.greylist.auto_allow)
            if self.greylist is None or self._greylist_settings != wanted:
                # Sessions of the old config may still hold the old one: a closed greylist
                # lets mail through (it fails open), so replace it only when it changed.
                if self.greylist is not None:
                    self.greylist.close()
                self.greylist = Greylist(
                    config.data_dir / "greylist.db", delay=settings.greylist.delay,
                    retry_window=settings.greylist.retry_window,
                    auto_allow=settings.greylist.auto_allow)
                self._greylist_settings = wanted
            greylist = self.greylist
        if "dnsbl" in names and settings.dnsbl.sites:
            from mailkeep.trust.dnsbl import DnsblChecker, parse_postscreen_sites

            entries = parse_postscreen_sites(", ".join(settings.dnsbl.sites))
            dnsbl = DnsblChecker(entries, threshold=settings.dnsbl.threshold,
                                 allow_threshold=settings.dnsbl.allow_threshold,
                                 resolver=resolver,
                                 skip_non_global=not settings.dnsbl.check_private_addresses)
        if "clamav" in names and settings.clamav.socket:
            from mailkeep.policy.clamd import ClamdClient

            clamd = ClamdClient(settings.clamav.socket, timeout=settings.clamav.timeout,
                                max_scan_size=settings.clamav.max_size)
        if "rspamd" in names and settings.rspamd.url:
            from mailkeep.policy.rspamd import RspamdClient

            password = None
            if settings.rspamd.password_file is not None:
                password = settings.rspamd.password_file.read_text().strip()
            rspamd = RspamdClient(settings.rspamd.url, timeout=settings.rspamd.timeout,
                                  max_size=settings.rspamd.max_size, password=password)
        policy = InboundPolicy(config, resolver=resolver, greylist=greylist, dnsbl=dnsbl,
                               clamd=clamd, rspamd=rspamd,
                               dmarc_reports=(self.dmarc_store if config.dmarc.send_reports
                                              else None))
        self._inbound = (config, policy)
        return policy

    @staticmethod
    def spool_dir(config: Config) -> Path:
        return config.data_dir / "spool" / "incoming"

    @staticmethod
    def _mailbox_accounts(config: Config) -> list[str]:
        return [name for name, account in config.accounts.items() if not account.relay_only]

    def _ensure_accounts(self, config: Config) -> None:
        for name, account in config.accounts.items():
            if not account.relay_only:
                self.store.ensure_account(name)

    def _served_listeners(self, config: Config) -> list:
        return [lst for lst in config.listeners if lst.protocol in SERVED_PROTOCOLS]

    def _context(self, config: Config, pipeline: Pipeline, listener) -> Any:
        """The per-listener context of the server that speaks its protocol."""
        family = protocol_family(listener.protocol)
        tls_ctx = self.tls.context if self.tls and listener.tls != "none" else None
        implicit = listener.tls == "implicit"
        name = f"{listener.protocol}:{listener.address}"
        if family == "imap":
            return IMAPContext(config=config, store=self.store,
                               authenticator=self.authenticator, tls_context=tls_ctx,
                               implicit_tls=implicit, listener=name, fts=self.fts)
        if family == "pop3":
            return pop3_context(config, self.store, self.authenticator, tls_ctx,
                                implicit, name)
        if family == "web":
            return WebContext(config=config, tls=self.tls if implicit else None,
                              challenges=self.challenges, services=self.web_services,
                              implicit_tls=implicit, listener=name)
        return self._receiver_context(config, pipeline, listener)

    def _make_listener(self, key: ListenerKey, context: Any) -> Any:
        server = self._new_listener(key, context)
        # A banned client is refused by every listener, in its protocol, before a session.
        server.enforce_bans(self.bans, lambda: ban_refusal(
            key.family, self.config.hostname, server.context.implicit_tls))
        counts = getattr(server, "counter", None) or getattr(server, "counts", None)
        if counts is not None:  # connections opened, refused and open, for the metrics
            counts.stats = self.metrics.connection_stats(context.listener, counts)
        return server

    def _new_listener(self, key: ListenerKey, context: Any) -> Any:
        if key.family == "web":
            return WebListener(context.listener, context)
        if key.family == "imap":
            return IMAPListener(key.address, context, self.imap_counts)
        if key.family == "pop3":
            # One counter and one login table for every POP3 listener: the [pop3] limits
            # and LOGIN-DELAY apply to the server, not to each port.
            if self.pop3_counts is None:
                self.pop3_counts = ConnectionCounts(bans=self.bans)
                self.pop3_login_times = LoginTimes()
            return POP3Listener(key.address, context, self.pop3_counts,
                                self.pop3_login_times)
        smtp = SMTPListener(key.address, context)
        smtp.counter.bans = self.bans  # its allow-list is exempt from the connection rate
        return smtp

    def bind_all(self) -> None:
        for listener in self._served_listeners(self.config):
            key = listener_key(listener)
            try:
                self.bound[key] = bind_socket(listener.address)
            except OSError as exc:
                for sock in self.bound.values():
                    sock.close()
                raise SystemExit(f"mailkeep: cannot listen on {listener.address} "
                                 f"({listener.protocol}): {exc.strerror or exc}") from exc

    # -- running ---------------------------------------------------------------------

    async def run(self) -> int:
        config = self.config
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Bind first: a second instance started by mistake fails here, before it touches
        # anything of the running one.
        self.bind_all()
        spool = self.spool_dir(config)
        spool.mkdir(parents=True, exist_ok=True)
        for leftover in spool.glob("in-*"):  # never acknowledged: safe to drop
            leftover.unlink(missing_ok=True)
        day_ago = time.time() - 86400
        for leftover in spool.glob("lda-*"):  # a `mailkeep deliver` that was killed
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < day_ago:
                    leftover.unlink()
        # Certificates are read while still root (certbot's keys are root-only); renewed
        # files must be readable by run_as, e.g. through Debian's ssl-cert group.
        self.tls = TLSManager.for_config(config)
        if config.run_as:
            if os.getuid() == 0:
                drop_privileges(config.run_as, config.data_dir)
            else:
                log(logger, "run_as ignored: not started as root", logging.WARNING,
                    run_as=config.run_as)
        self.store = await asyncio.to_thread(open_store, config.data_dir)
        self._ensure_accounts(config)
        bans = self.bans = BanList.open(config.data_dir, BanPolicy.from_config(config.auth))
        self.imap_counts.bans = bans
        self.authenticator = Authenticator.from_config(config, bans=bans, metrics=self.metrics)
        bans.metrics = self.metrics
        self.fts = await asyncio.to_thread(open_fts, self.store, config.data_dir)
        self.indexer = BackgroundIndexer(self.store, self.fts)
        self.indexer.watch(self._mailbox_accounts(config))
        self.indexer.start()
        pipeline = Pipeline(config, self.store, Resolver(config))
        self.queue = await asyncio.to_thread(QueueStore.for_data_dir, config.data_dir)
        self.dkim = DkimKeys.for_data_dir(config.data_dir)
        self._local_pipeline = pipeline
        self.delivery = DeliveryProcess(config, local=self._deliver_local,
                                        metrics=self.metrics, inline=self._inline_scheduler)
        self.store.instrument(self.metrics)
        self.queue.instrument(self.metrics)
        self.metrics.watch(queue=self.queue, bans=bans, delivery=self.delivery)
        self.pickup = Pickup(config.data_dir / "queue" / "maildrop", lambda: self.submission(
            self.config, Pipeline(self.config, self.store, Resolver(self.config))))
        self.pickup.metrics = self.metrics
        if config.dmarc.report_address or config.dmarc.send_reports:
            from mailkeep.reports.dmarc_send import DmarcReporter, ReportSettings
            from mailkeep.reports.dmarc_store import DmarcStore

            self.dmarc_store = await asyncio.to_thread(DmarcStore.for_data_dir,
                                                       config.data_dir)
            if config.dmarc.send_reports:
                self.dmarc_reporter = DmarcReporter(
                    self.dmarc_store, lambda: self.submission(
                        self.config, Pipeline(self.config, self.store, Resolver(self.config))),
                    ReportSettings.from_config(config),
                    make_resolver(list(config.delivery.resolvers) or None))
        for listener in self._served_listeners(config):
            key = listener_key(listener)
            server = self._make_listener(key, self._context(config, pipeline, listener))
            await server.start(self.bound.pop(key))
            self.listeners[key] = server
        loop = asyncio.get_running_loop()
        reporter_task = None
        if self.dmarc_reporter is not None:
            reporter_task = loop.create_task(self.dmarc_reporter.run(self.stopping))
        pickup_task = loop.create_task(self.pickup.run())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
        loop.add_signal_handler(signal.SIGUSR1, self._queue_changed)
        pidfile = config.pidfile
        pidfile.write_text(f"{os.getpid()}\n")
        log(logger, "started", hostname=config.hostname, pid=os.getpid(),
            listeners=",".join(f"{lst.protocol}:{lst.address}"
                               for lst in self._served_listeners(config)))
        if self.banner:
            self.banner(config)
        self.ready.set()
        tls_task = loop.create_task(self._watch_certificates())
        from mailkeep.acme.manager import CertificateManager

        self.certificates = CertificateManager(config, self.challenges,
                                               on_renewed=self._certificates_renewed)
        self.certificates.start()
        # `mailkeep ban add|lift` take effect within a second, without a reload.
        bans_task = loop.create_task(bans.watch())
        try:
            self.delivery.start()
            await self.stopping.wait()
        finally:
            tls_task.cancel()
            bans_task.cancel()
            log(logger, "stopping")
            if self.certificates is not None:
                await self.certificates.stop()
            await asyncio.gather(*(lst.stop() for lst in self.listeners.values()))
            self.pickup.stop()
            # Before the store closes: attempts in flight may still store local mail.
            await self.delivery.stop()
            pickup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pickup_task
            await asyncio.to_thread(self.queue.close)
            if reporter_task is not None:
                reporter_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reporter_task
            if self.dmarc_store is not None:
                await asyncio.to_thread(self.dmarc_store.close)
            if self.greylist is not None:
                self.greylist.close()
            await self.indexer.stop()
            await asyncio.to_thread(self.store.close)
            bans.close()
            if self.fts is not None:
                await asyncio.to_thread(self.fts.close)
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
            for key in self.listeners:
                if key.address.startswith("unix:"):
                    with contextlib.suppress(OSError):
                        Path(key.address[5:]).unlink()
            log(logger, "stopped")
        return 0

    def _inline_scheduler(self, config: Config) -> Scheduler:
        """The scheduler in this process, for when no delivery process can run."""
        assert self._local_pipeline is not None
        return Scheduler(config, self.queue, self._local_pipeline, data_dir=config.data_dir,
                         metrics=self.metrics)

    async def _deliver_local(self, entry: Any, rcpts: list) -> list:
        """The delivery process asks for queued mail to be stored for our own domains."""
        assert self._local_pipeline is not None
        return await deliver_local(self._local_pipeline,
                                   self.queue.message_path(entry.queue_id), entry, rcpts)

    def _queue_changed(self) -> None:
        """SIGUSR1 (sent by `mailkeep queue ...`): rescan the queue and the maildrop."""
        if self.delivery is not None:
            self.delivery.wake()
        if self.pickup is not None:
            self.pickup.wake()

    async def _watch_certificates(self) -> None:
        while True:
            await asyncio.sleep(TLS_RELOAD_INTERVAL)
            if self.tls and self.tls.reload_if_changed():
                self._apply(self.config)

    def _certificates_renewed(self) -> None:
        """ACME installed new certificates: every listener gets them for its next session."""
        if self.tls is not None and self.tls.refresh():
            self._apply(self.config)

    def _apply(self, config: Config) -> None:
        pipeline = Pipeline(config, self.store, Resolver(config))
        for listener in self._served_listeners(config):
            key = listener_key(listener)
            if key in self.listeners:
                self.listeners[key].update(self._context(config, pipeline, listener))

    def _schedule_reload(self) -> None:
        # One reload at a time; a SIGHUP during a reload runs another one after it.
        previous = self._reload_task
        async def chained() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await self.reload()
        self._reload_task = asyncio.get_running_loop().create_task(chained())

    async def reload(self) -> None:
        """SIGHUP: re-read the config; keep the running one if anything in the new fails."""
        try:
            config = load_config(self.config_path)
            tls = self.tls
            if tls is None or not tls.serves(config):
                tls = TLSManager.for_config(config)
            if config.data_dir != self.config.data_dir:
                raise ConfigError(str(self.config_path), "data_dir",
                                  "cannot change while the server runs; restart it")
        except (ConfigError, OSError, ValueError) as exc:
            log(logger, "reload failed, keeping the running config", logging.ERROR,
                error=str(exc))
            return
        except Exception as exc:  # e.g. ssl.SSLError from a broken key
            log(logger, "reload failed, keeping the running config", logging.ERROR,
                error=repr(exc))
            return
        self.tls = tls
        self._ensure_accounts(config)
        if config.log != self.config.log:
            # New [log] settings: what is pending is written to the old target first.
            configure_logging(config.log)
        self.config = config
        self.authenticator.update(config)
        self.indexer.watch(self._mailbox_accounts(config))
        self._apply(config)
        if self.certificates is not None:
            self.certificates.update(config)
        pipeline = self._local_pipeline = Pipeline(config, self.store, Resolver(config))
        if self.delivery is not None:
            self.delivery.update(config, pipeline)
        if self.dmarc_reporter is not None:
            from mailkeep.reports.dmarc_send import ReportSettings

            self.dmarc_reporter.settings = ReportSettings.from_config(config)
        new_listeners = {listener_key(lst): lst for lst in self._served_listeners(config)}
        for key in set(self.listeners) - set(new_listeners):
            await self.listeners.pop(key).stop()
            if key.address.startswith("unix:"):
                with contextlib.suppress(OSError):
                    Path(key.address[5:]).unlink()
        for key, listener in new_listeners.items():
            if key in self.listeners:
                continue  # same socket; protocol/TLS/limits were updated by _apply
            try:
                sock = bind_socket(key.address)
            except OSError as exc:
                log(logger, "cannot add listener on reload", logging.ERROR,
                    address=key.address, error=os.strerror(exc.errno or errno.EIO))
                continue
            server = self._make_listener(key, self._context(config, pipeline, listener))
            await server.start(sock)
            self.listeners[key] = server
        log(logger, "reloaded", accounts=len(config.accounts), domains=len(config.domains))


def _log_owner(run_as: str | None) -> tuple[int, int] | None:
    """Who gets the log directories created at start: the user the server will run as
    (it writes and rotates the files after dropping privileges)."""
    if not run_as or os.getuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def run_server(config_path: Path, *, banner=None) -> int:
    try:
        server = Server(config_path, banner=banner)
    except ConfigError as exc:
        print(f"mailkeep: {exc}")
        return 78  # EX_CONFIG
    c = server.config
    configure_logging(c.log, owner=_log_owner(c.run_as))
    tune_for_serving()  # GIL switch interval and GC (mailkeep.runtime)
    return asyncio.run(server.run())
