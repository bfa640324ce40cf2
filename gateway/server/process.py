"""One gateway process: listeners, TLS, the state store, reload, graceful drain (SPEC §2, §14).

Beside it: the lean listener's start and drain (``lean_listener``), reload (``reload``) and the
background tasks (``maintenance``), mixed into ``GatewayProcess``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from pathlib import Path

import structlog
from aiohttp import web

from gateway.admin.app import make_admin_app
from gateway.aiohttp_access_log import GatewayAccessLogger
from gateway.app import PublicHandler
from gateway.audit import AuditTrail
from gateway.audit.anchors import AnchorHeads, Anchoring, AnchorKeyArchive, LastAnchors
from gateway.auth.mfa_freeze import MfaEnrolmentFreeze
from gateway.auth.revocation import RevocationEpochs
from gateway.auth.signing import SigningKeys
from gateway.auth.webhooks import IntegrationSecrets
from gateway.config.errors import ConfigError
from gateway.config_model import GatewayConfig
from gateway.crypto import Keyring
from gateway.errors import StoreUnavailable
from gateway.http1.server import LeanServer
from gateway.killswitch import STREAMS, KillSwitchRegistry
from gateway.listener import GuardedServer
from gateway.logs.access_log import ACCESS_LOGGER, flush_access_logs, pseudonym_key
from gateway.metrics import METRICS
from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.lockout_memory import LockoutMemory
from gateway.runtime import GatewayStatus, ProcessServices, Runtime, build_runtime, build_verifier
from gateway.server.lean_listener import LeanListener
from gateway.server.maintenance import Maintenance
from gateway.server.reload import ConfigReload, freeze_long_lived
from gateway.server.tls import server_ssl_context
from gateway.state import StateStore, open_store
from gateway.state.generation import StoreGeneration
from gateway.state.restore import Restorable, StoreRestorer
from gateway.tenancy.grants import SupportGrants
from gateway.tenancy.keys import ContextKeys
from gateway.tracing import flush_exported_spans
from gateway.upstream.pools import UpstreamRegistry
from gateway.upstream.transports import open_transport

log = structlog.get_logger("gateway.server.process")


class GatewayProcess(LeanListener, ConfigReload, Maintenance):
    def __init__(
        self,
        config: GatewayConfig,
        config_path: Path | None,
        *,
        workdir: Path | None = None,
        demo: bool = False,
    ) -> None:
        self.config_path = config_path
        self.workdir = workdir
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.store: StateStore = open_store(config.state.url)
        self.status = GatewayStatus(instance_id=self.instance_id, store_description=self.store.describe())
        self.registry = UpstreamRegistry(open_transport)
        self.audit = AuditTrail(
            self.store,
            spool_dir=Path(config.audit.spool_dir),
            queue_size=config.audit.queue_size,
            write_timeout=config.audit.write_timeout,
            # A lease orphaned by a fault (a request sent into a paused Redis runs when it wakes;
            # a failover promotes a replica holding the dead primary's lease) blocks that
            # tenant's chain for lock_ttl: keep it short. Half of it still exceeds an
            # append's whole budget, so the writer never appends on a lease near expiry.
            lock_ttl=max(3.0, 3 * config.audit.write_timeout),
        )
        # SPEC §6: outside the demo a missing master key is a start-up error (KeyringError).
        keyring = Keyring.from_env(os.environ, demo=demo)
        # App. C: one marker tells a store that came back empty or older from an intact one.
        generation = StoreGeneration(self.store)
        resync = config.killswitch.resync  # bounds every security snapshot's staleness
        self.services = ProcessServices(
            store=self.store,
            audit=self.audit,
            keyring=keyring,
            signing=SigningKeys(self.store, keyring, generation=generation),
            revocations=RevocationEpochs(self.store, resync=resync, generation=generation),
            integrations=IntegrationSecrets(self.store, keyring),
            killswitches=KillSwitchRegistry(
                self.store,
                instance_id=self.instance_id,
                resync=resync,
                audit=self.audit,
                generation=generation,
            ),
            ratelimit=RateLimitBackend(config.state.url),
            grants=SupportGrants(self.store, resync=resync, generation=generation),
            context_keys=ContextKeys.from_env(os.environ, keyring, demo=demo),
            pseudonym_key=pseudonym_key(os.environ, keyring),
            generation=generation,
            lockout_memory=LockoutMemory(self.store),
            # Registered on ``generation`` before any load: a reset freezes MFA enrolment at once.
            mfa_freeze=MfaEnrolmentFreeze(self.store, generation, self.audit, instance_id=self.instance_id),
        )
        # App. C: trail heads signed with the gateway's key; the last anchor kept on local disk.
        self.audit.use_anchors(
            Anchoring(
                self.services.signing,
                AnchorKeyArchive(self.store, keyring),
                LastAnchors(Path(config.audit.spool_dir) / "last-anchors"),
                period=lambda: self._runtime.config.audit.anchor_every,  # follows reloads
                heads=AnchorHeads(self.store, keyring),
            )
        )
        generation.on_reset(lambda _reason: self.audit.forget_anchor_keys())
        self.restorer = self._store_restorer(generation)
        # App. C: open streams end with their session (revocations and grants applied here).
        STREAMS.follow_sessions(self.services.revocations, self.services.grants)
        self._runtime = build_runtime(
            config,
            registry=self.registry,
            status=self.status,
            generation=1,
            process=self.services,
            verifier=build_verifier(config, self.services.signing),
        )
        self._runners: list[web.BaseRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._lean: tuple[LeanServer, GuardedServer, asyncio.Server] | None = None
        self.public_port: int | None = None
        self.admin_port: int | None = None

    def runtime(self) -> Runtime:
        return self._runtime

    def _store_restorer(self, generation: StoreGeneration) -> StoreRestorer:
        services = self.services
        assert services.lockout_memory is not None
        parts: dict[str, Restorable] = {
            "killswitches": services.killswitches,
            "revocations": services.revocations,
            "grants": services.grants,
            "lockouts": services.lockout_memory,
            "signing": services.signing,
        }
        if services.mfa_freeze is not None:
            parts["mfa_freeze"] = services.mfa_freeze  # written after the renewal (it names it)

        def restoring(now: bool) -> None:
            self.status.store_restoring = now

        return StoreRestorer(
            generation,
            parts,
            self.audit.system_event("store.restored"),
            instance_id=self.instance_id,
            on_reset=METRICS.store_resets.inc,
            on_state=restoring,
        )

    async def start(self) -> None:
        config = self._runtime.config
        await self.store.open()
        self._warn_about_insecure_settings(config)
        await self.services.signing.start()
        await self.services.revocations.start()
        await self.services.integrations.start()
        await self.services.killswitches.start()
        with contextlib.suppress(TimeoutError):
            # Hold the switch set before listening when the store answers at once, so the first
            # requests are not refused as not-ready (an unreachable store delays start by 1 s).
            await self.services.killswitches.wait_loaded(1.0)
        await self.services.grants.start()
        assert self.services.lockout_memory is not None
        await self.services.lockout_memory.start()
        if self.services.mfa_freeze is not None:
            await self.services.mfa_freeze.start(config.killswitch.resync)
        await self._runtime.verifier.start()
        limits = config.listen.limits
        public = GuardedServer(
            PublicHandler(self.runtime),
            max_connections=limits.max_connections,
            header_timeout=limits.header_timeout,
            body_timeout=limits.body_timeout,
            tls=self._runtime.tls,
            keepalive_timeout=limits.keepalive_timeout,
            # aiohttp's parser limits sit above the gateway's own (App. B): its errors are the
            # last resort, the gateway's 431 problem+json is the rule.
            max_headers=limits.max_headers + 16,
            max_field_size=max(limits.max_header_bytes, limits.max_header_line) + 1024,
            max_line_size=max(16384, limits.max_header_bytes + 1024),
            access_log_class=GatewayAccessLogger,
            access_log=ACCESS_LOGGER,
        )
        reuse_port = config.listen.workers > 1
        ssl_context = server_ssl_context(config.listen.tls, self.workdir)
        if config.listen.server == "lean":
            await self._start_lean(public, config, ssl_context, reuse_port=reuse_port)
        else:
            public_runner = web.ServerRunner(public, shutdown_timeout=config.listen.drain_timeout)
            await public_runner.setup()
            site = web.TCPSite(
                public_runner,
                config.listen.host,
                config.listen.port,
                reuse_port=reuse_port,
                backlog=1024,
                ssl_context=ssl_context,
            )
            await site.start()
            self._runners.append(public_runner)
            self.public_port = _bound_port(public_runner)
        admin_runner = web.AppRunner(
            make_admin_app(
                self.runtime,
                self.reload_everywhere,
                self.audit,
                self.services.signing,
                self.services.revocations,
                self.services.integrations,
            ),
            access_log=None,
            # aiohttp applies a runner's shutdown timeout twice (wait, then wait after cancelling);
            # the admin listener drains alongside the public one, within the same drain_timeout.
            shutdown_timeout=config.listen.drain_timeout / 2,
        )
        await admin_runner.setup()
        admin_site = web.TCPSite(
            admin_runner,
            config.admin.host,
            config.admin.port,
            reuse_port=reuse_port,
            ssl_context=server_ssl_context(config.admin.tls, self.workdir, listener="admin"),
        )
        await admin_site.start()
        self._runners.append(admin_runner)
        self.admin_port = _bound_port(admin_runner)
        self._tasks.append(asyncio.create_task(self._watch_store()))
        self._tasks.append(asyncio.create_task(self._maintain_audit()))
        self._tasks.append(asyncio.create_task(self._anchor_audit_heads()))
        if len(self.services.keyring.key_ids) > 1:
            self._tasks.append(asyncio.create_task(self._reencrypt_under_primary()))
        if self.store.shared:
            self._tasks.append(asyncio.create_task(self._follow_reloads()))
        log.info(
            "gateway_started",
            instance=self.instance_id,
            public_port=self.public_port,
            admin_port=self.admin_port,
            tls=config.listen.tls.mode,
            state=self.store.kind,
        )

    def _warn_about_insecure_settings(self, config: GatewayConfig) -> None:
        if config.listen.tls.mode == "off":
            log.warning("tls_disabled", detail="listen.tls is off: traffic to the gateway is plain text")
        for upstream in config.upstreams.values():
            if not upstream.tls.verify:
                log.warning("upstream_tls_unverified", upstream=upstream.name)
        if self.services.context_keys.source == "master-key":
            log.warning(
                "context_key_derived",
                detail="$SHOPINO_GATEWAY_CONTEXT_KEY is not set: X-Gateway-Context is signed with a key "
                "derived from the master key, which no backend can verify",
            )

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout), release all."""
        log.info("gateway_stopping", instance=self.instance_id)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # One drain for both listeners, at once: drain_timeout bounds the whole of it (App. C).
        await asyncio.gather(self._stop_lean(), *(runner.cleanup() for runner in self._runners))
        await self.registry.close()
        await self._runtime.verifier.stop()
        await self.services.signing.stop()
        await self.services.revocations.stop()
        await self.services.integrations.stop()
        await self.services.killswitches.stop()
        await self.services.grants.stop()
        if self.services.lockout_memory is not None:
            await self.services.lockout_memory.stop()
        if self.services.mfa_freeze is not None:
            await self.services.mfa_freeze.stop()
        await self.services.ratelimit.close()
        with contextlib.suppress(StoreUnavailable, TimeoutError, OSError):
            # A last chance for queued and spooled records; close() spools whatever is left.
            async with asyncio.timeout(2 * self._runtime.config.audit.write_timeout):
                await self.audit.flush()
                await self.audit.replay_spool()
        self.audit.close()
        await self.store.close()
        log.info("gateway_stopped", instance=self.instance_id)


def _bound_port(runner: web.BaseRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return None


async def serve(config: GatewayConfig, config_path: Path | None, *, workdir: Path | None = None) -> None:
    """Run one gateway process until SIGTERM/SIGINT; SIGHUP reloads."""
    process = GatewayProcess(config, config_path, workdir=workdir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_quietly(process)))
    await process.start()
    freeze_long_lived()
    try:
        await stop.wait()
    finally:
        await process.stop()
        flush_access_logs()  # a forked worker exits through os._exit: no atexit hooks run
        flush_exported_spans()  # likewise the OTLP spans still batched (App. C)


async def _reload_quietly(process: GatewayProcess) -> None:
    with contextlib.suppress(ConfigError):
        await process.reload("signal:SIGHUP")
