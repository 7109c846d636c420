"""The composition root: builds the pool and the services, starts and stops them in order, and `hub serve`.

`hub serve` checks the configuration (hub.preflight: every file, then the data-directory lock and the listening
addresses, bound once here), starts the embedded PostgreSQL when no database URL is set, applies migrations, then
runs `hub.processes` worker processes (default: one per core) under the supervisor (hub.supervisor). Each worker
accepts on its own socket of one SO_REUSEPORT group bound by the supervisor (the kernel spreads connections; no
other process can join the group), shares the queue through PostgreSQL (SKIP LOCKED), and runs intake, processing
and delivery; worker 0 also serves HTTP. The supervisor restarts a worker that dies (with backoff, giving up after
repeated fast failures), forwards SIGTERM/SIGINT (graceful: stop accepting, finish transactions in flight, 421 to
idle sessions) and SIGHUP (rules reload), and restarts the embedded PostgreSQL if its postmaster dies.
A start-up problem is one line naming the setting and the file or address, and exit 2 (configuration) or 1
(database unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time

import structlog

from hub import db, health, observability as obs, preflight
from hub.memory import tune_allocator
from hub.settings import Settings, split_hostport

log = structlog.get_logger("hub.app")


def _detector(body: bytes) -> tuple[str | None, str | None]:
    from hub.transform import content_info

    info = content_info(body)
    return info.kind, info.doc_code


class Hub:
    """One hub process: intake, processing, delivery, and (optionally) HTTP."""

    def __init__(self, settings: Settings, runtime_url: str, *, index: int = 0, http: bool = True,
                 smtp_socket: socket.socket | None = None, http_socket: socket.socket | None = None):
        self.settings = settings
        self.smtp_socket = smtp_socket          # bound by the supervisor (hub serve); else bound here
        self.http_socket = http_socket
        self.runtime_url = runtime_url
        self.index = index
        self.http_enabled = http
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.watchers: list[asyncio.Task] = []
        self.smtp_server = None
        self.http_runner = None
        self.rules = None
        self.conformance_warning: str | None = None    # set by _check_conformance
        self.senders_warning: str | None = None        # set by _check_senders
        self.smtp_port: int | None = None
        self.http_port: int | None = None
        self.sample: health.Sample | None = None     # the last queue / freshness sample (worker 0)

    async def start(self) -> "Hub":
        from hub.delivery.worker import DeliveryWorker
        from hub.directory.trust import TrustSpace
        from hub.intake.accounts import AccountBook
        from hub.intake.handler import IntakeHandler, server_tls_context
        from hub.intake.protocol import HubSMTP
        from hub.pipeline import Router
        from hub.revocation import RevocationChecker

        s = self.settings
        obs.initialise()
        self.pool = await db.create_pool(self.runtime_url, s)
        self.work_pool = await db.create_pool(self.runtime_url, s, durable=False)
        self.trust = TrustSpace(s.hub.domains, s.delivery.local_domains)
        self.accounts = AccountBook()
        async with self.pool.acquire() as conn:
            await self.trust.load(conn)
            await self.accounts.load(conn)
        await self._start_services()
        self.router = self._build_router(Router)
        self.revocation = RevocationChecker(s, self.work_pool)
        await self.revocation.start()
        self.handler = IntakeHandler(settings=s, pool=self.pool, accounts=self.accounts, router=self.router,
                                     revocation=self.revocation)
        tls = server_tls_context(s)
        loop = asyncio.get_running_loop()

        make = HubSMTP.factory(self.handler, hostname=s.smtp.hostname, ident="hub ESMTP", tls_context=tls,
                               require_starttls=False, auth_require_tls=True, data_size_limit=s.smtp.max_message_size,
                               enable_SMTPUTF8=True, decode_data=False, timeout=s.smtp.session_timeout,
                               command_call_limit={"AUTH": 5, "STARTTLS": 2, "*": 10_000_000})

        def factory():
            obs.SMTP_SESSIONS.inc()
            return make()

        sock = self.smtp_socket or preflight.listen_socket("smtp.listen", s.smtp.listen)
        self.smtp_server = await loop.create_server(factory, sock=sock)
        self.smtp_port = sock.getsockname()[1]
        self.delivery = DeliveryWorker(s, self.work_pool, self.trust, listen_url=self.runtime_url,
                                       revocation=self.revocation)
        self.handler.on_queued = self.delivery.wake
        self.handler.delivery = self.delivery
        self.tasks.append(asyncio.create_task(self.delivery.run(self.stop_event), name="delivery"))
        for extra in self._extra_tasks():
            self.tasks.append(asyncio.create_task(extra, name=getattr(extra, "__name__", "task")))
        # watchers hold no work in flight and run until cancelled: stop() cancels them at once
        self.watchers = [asyncio.create_task(self.rules.watch(self.pool), name="rules-watch")]
        if self.http_enabled:
            await self._start_http()
        postmaster = health.postmaster_warning(s, self.trust)
        if postmaster and self.index == 0:
            log.warning("postmaster_undeliverable", setting="delivery.local_domains", detail=postmaster)
        log.info("hub_started", process=self.index, smtp=f"{s.smtp.listen}", smtp_port=self.smtp_port,
                 http=self.http_port, trust_domains=len(self.trust))
        return self

    def _build_router(self, router_cls):
        from hub.directory.resolve import Resolver

        resolver = Resolver(resolution_domain=self.settings.resolution_domain, hub_domains=self.settings.hub.domains,
                            is_trusted_domain=self.trust.is_trusted)
        return router_cls(self.settings, self.trust, resolver=resolver, rules=self.rules, detector=_detector)

    async def _start_services(self) -> None:
        """Rules (validated, versioned), transformations, the audit key: before intake opens."""
        from hub.audit.patient import load_patient_key, patient_key
        from hub.rules import RulesService
        from hub.transform.registry import build_registry

        s = self.settings
        self.registry = build_registry(s.transform, s.hub.nil)
        for chain in self.registry.names():          # every series exists from the start (dashboards, alerts)
            for decision in ("hold", "original", "notify"):
                obs.TRANSFORM_FAILED.labels(chain, decision)
        await asyncio.to_thread(self.registry.context.schematrons.warm)   # compiled once, before traffic
        self.rules = RulesService(s.rules, self.registry.names(), version_gauge=obs.RULES_VERSION,
                                  error_gauge=obs.RULES_FAILED)
        async with self.pool.acquire() as conn:
            await self.rules.start(conn, actor=f"hub process {self.index}")
            await self._check_senders(conn)
        self._check_conformance()
        key = load_patient_key(s)
        self.patient_key = lambda ins: patient_key(ins, key)
        self.patient_secret = key

    def _extra_tasks(self):
        from hub.audit.chain import AuditSealer
        from hub.audit.retention import retention_loop
        from hub.queue.processor import Processor

        s = self.settings
        self.processor = Processor(s, self.work_pool, self.registry, patient_key=self.patient_key)
        self.processor.on_queued = self.delivery.wake
        self.handler.on_processing = self.processor.wake
        tasks = [self.processor.run(self.stop_event), self._refresh_views(), self.revocation.run(self.stop_event)]
        if self.index == 0:       # one sealer and one retention job per hub process group (advisory locks too)
            tasks.append(AuditSealer(interval=s.audit.seal_interval, batch=s.audit.seal_batch)
                         .run(self.pool, self.stop_event))
            tasks.append(retention_loop(self.pool, s, self.stop_event))
        return tasks

    async def _refresh_views(self) -> None:
        """Keep this process's view of the authorised domains and accounts current even without SMTP traffic
        (health, delivery checks), every few seconds."""
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), 5.0)
            except asyncio.TimeoutError:
                pass
            try:
                await self.trust.maybe_refresh(self.pool)
                await self.accounts.maybe_refresh(self.pool)
                if self.index == 0:            # one sample for the whole hub
                    async with self.pool.acquire() as conn:
                        self.sample = await health.sample(conn)
                        if self.senders_warning:           # until the accounts exist
                            await self._check_senders(conn)
                    health.export(self.sample)
                obs.DATABASE_UP.set(1)
            except Exception as exc:          # keep the last view; intake answers 451 if the DB is really gone
                obs.DATABASE_UP.set(0)
                log.warning("view_refresh_failed", error=f"{type(exc).__name__}: {exc}")

    async def _check_senders(self, conn) -> None:
        """A sender profile (transform.senders) whose name is no account applies to no message: a typo, or an
        account not created yet. Said at start-up and on /healthz until such an account exists."""
        from hub.intake.store import all_accounts

        senders = self.registry.context.senders
        if not len(senders):
            return
        known = {a.name for a in await all_accounts(conn)}
        unknown = [name for name in senders.names() if name not in known]
        before, self.senders_warning = self.senders_warning, (
            f"transform.senders: no account named {', '.join(unknown)} (names are case-sensitive; "
            f"hub accounts list): those profiles apply to no message" if unknown else None)
        if unknown and self.index == 0 and before != self.senders_warning:
            log.warning("sender_profile_without_account", setting="transform.senders", file=senders.source,
                        profiles=unknown, detail=self.senders_warning)

    def _check_conformance(self) -> None:
        """A rule that produces a CDA while no ANS rules are configured: said at start-up, on /healthz, in a
        metric (deploy/alerts.yml)."""
        from hub.transform.registry import UNCHECKED, unchecked_chains

        chains = unchecked_chains(self.registry, self.rules.current)
        obs.CONFORMANCE_UNCHECKED.set(1 if chains else 0)
        self.conformance_warning = UNCHECKED.format(chains=", ".join(chains)) if chains else None
        if chains and self.index == 0:
            log.warning("conformance_not_checked", setting="transform.schematron_dir", chains=chains,
                        detail=self.conformance_warning)

    async def reload_rules(self, actor: str) -> None:
        async with self.pool.acquire() as conn:
            result = await self.rules.reload(conn, actor=actor)
        self._check_conformance()
        log.info("rules_reloaded" if result.ok else "rules_reload_failed", version=result.version,
                 changed=result.changed, errors=[str(e) for e in result.errors][:5])

    async def _start_http(self) -> None:
        from aiohttp import web

        from hub.web.app import build

        app = build(self, self._http_setups())
        self.http_runner = web.AppRunner(app, access_log=None)
        await self.http_runner.setup()
        if self.http_socket is not None:
            site = web.SockSite(self.http_runner, self.http_socket)
        else:
            host, port = split_hostport(self.settings.http.listen)
            site = web.TCPSite(self.http_runner, host, port)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]

    def _http_setups(self):
        from hub.web import admin, audit_api

        def patient(app):
            app["patient_key"] = self.patient_secret

        return [patient, audit_api.setup, admin.setup]

    async def stop(self, grace: float = 30.0) -> None:
        """Graceful: stop accepting, let DATA in flight commit, 421 the rest, finish deliveries in flight."""
        self.handler.closing = True
        if self.smtp_server is not None:
            self.smtp_server.close()
        deadline = time.monotonic() + grace
        while self.handler.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.handler.sessions):       # idle sessions: 421 and close
            if session.transport is not None and not session.transport.is_closing():
                session.transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
                session.transport.close()
        if self.smtp_server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.smtp_server.wait_closed(), 5)
        self.stop_event.set()
        for t in self.watchers:
            t.cancel()
        if self.tasks:                      # work in flight: until done or the grace period ends
            done, pending = await asyncio.wait(self.tasks, timeout=max(1.0, deadline - time.monotonic()))
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.watchers:
            await asyncio.wait(self.watchers, timeout=5)
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        for pool in (self.pool, self.work_pool):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5)
        log.info("hub_stopped", process=self.index)


async def run_process(settings: Settings, runtime_url: str, index: int, *, smtp_socket=None, http_socket=None,
                      ready_fd: int | None = None) -> None:
    """One worker: start, tell the supervisor (READY on `ready_fd`, then a heartbeat every few seconds), serve
    until SIGTERM/SIGINT; SIGHUP reloads the rules."""
    hub = Hub(settings, runtime_url, index=index, http=(index == 0), smtp_socket=smtp_socket,
              http_socket=http_socket)
    await hub.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(hub.reload_rules("SIGHUP")))
    beat = None
    if ready_fd is not None:
        beat = asyncio.create_task(_heartbeat(ready_fd, stop))
    await stop.wait()
    await hub.stop()
    if beat is not None:
        await beat


async def _heartbeat(fd: int, stop: asyncio.Event) -> None:
    from hub.supervisor import BEAT, BEAT_INTERVAL, READY

    message = READY
    while not stop.is_set():
        with contextlib.suppress(OSError):
            os.write(fd, message)
        message = BEAT
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), BEAT_INTERVAL)


def _run(coro) -> None:
    """Run a hub process's event loop: uvloop when installed (a faster loop, same semantics), else asyncio."""
    tune_allocator()
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _die_with_parent() -> None:
    """Linux: a worker process gets SIGKILL when the supervisor dies, so no orphan keeps the port."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def _startup_failed(exc: Exception, code: int) -> int:
    """One line: JSON on a service's output, plain text on a terminal."""
    if sys.stderr.isatty():
        print(f"hub: error: {exc}", file=sys.stderr)
    else:
        log.error("startup_failed", error=str(exc))
    return code


def serve(settings: Settings) -> int:
    from hub.errors import ConfigError, DatabaseUnavailable
    from hub.supervisor import PostgresWatch, Supervisor

    obs.configure_logging(json=not sys.stderr.isatty())
    n = settings.hub.processes or os.cpu_count() or 1
    embedded = None
    try:
        try:
            certificates = preflight.check(settings)
            lock_fd = preflight.lock_data_dir(settings.data_dir)      # noqa: F841 (held until exit)
            listeners = preflight.bind_listeners(settings, n)
            urls = db.urls(settings)
            if not settings.database.url:
                embedded = db.Embedded(settings.data_dir)
            try:
                asyncio.run(db.migrate(urls.admin))
            except DatabaseUnavailable as exc:
                where = "embedded PostgreSQL" if embedded else (
                    "HUB_DATABASE_ADMIN_URL" if os.environ.get("HUB_DATABASE_ADMIN_URL") else "database.url")
                raise DatabaseUnavailable(f"setting {where}: {db.describe(urls.admin)}: {exc}") from None
        except ConfigError as exc:
            return _startup_failed(exc, 2)
        except DatabaseUnavailable as exc:
            return _startup_failed(exc, 1)
        obs.set_certificates(certificates)
        for info in certificates:
            log.info("certificate_loaded", setting=info.setting, subject=info.subject,
                     not_after=info.not_after.isoformat())

        def worker(index: int, ready_fd: int) -> int:
            _die_with_parent()
            for i, sock in enumerate(listeners.smtp):
                if i != index:
                    sock.close()
            if index != 0:
                listeners.http.close()
            try:
                _run(run_process(settings, urls.runtime, index, smtp_socket=listeners.smtp[index],
                                 http_socket=listeners.http if index == 0 else None, ready_fd=ready_fd))
            except ConfigError as exc:
                log.error("startup_failed", process=index, error=str(exc))
                return 2
            return 0

        watch = PostgresWatch(embedded, settings.data_dir / "postgresql.status.json") if embedded else None
        log.info("hub_starting", processes=n, smtp=settings.smtp.listen, smtp_port=listeners.smtp_port,
                 http=settings.http.listen, http_port=listeners.http_port, pid=os.getpid())
        services = _validators(settings)
        return Supervisor(n, worker, pg=watch, services=services).run()
    finally:
        if embedded is not None:       # the embedded server lives and dies with `hub serve`
            embedded.stop()
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        if os.path.basename(metrics_dir).startswith("hub-metrics-"):
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _validators(settings: Settings) -> list:
    """The ANS schematron validators, started once for every worker process of the node (their compiled rules
    take hundreds of MB): hub.transform.validate.service."""
    if not settings.transform.schematron_dir:
        return []
    from hub.transform.registry import use_shared_validators
    from hub.transform.validate.service import ValidatorService

    service = ValidatorService(settings.transform.schematron_dir, settings.data_dir,
                               settings.transform.schematron_processes)
    use_shared_validators(settings.transform.schematron_dir, service.addresses)
    service.start()
    return [service]


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the hub (SMTP intake, processing, delivery, HTTP)")
    p.set_defaults(run=lambda args, ctx: serve(ctx.settings), sync=True)
