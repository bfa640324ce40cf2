"""One gateway process: listeners, TLS, the state store, reload, graceful drain (SPEC §2, §14)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import ssl
import time
import uuid
from pathlib import Path

import orjson
import structlog
from aiohttp import web

from gateway.admin.app import make_admin_app
from gateway.app import PublicHandler
from gateway.audit import SYSTEM_TRAIL, AuditTrail
from gateway.audit.anchors import AnchorHeads, Anchoring, AnchorKeyArchive, LastAnchors
from gateway.auth.jwt import JwtVerifier
from gateway.auth.mfa_freeze import MfaEnrolmentFreeze
from gateway.auth.revocation import RevocationEpochs
from gateway.auth.signing import SigningKeys
from gateway.auth.webhooks import IntegrationSecrets
from gateway.config.errors import ConfigError
from gateway.config_model import GatewayConfig
from gateway.config_schema import load_config
from gateway.crypto import Keyring
from gateway.errors import StoreUnavailable
from gateway.http1.handler import LeanPublicHandler
from gateway.http1.server import LeanServer
from gateway.killswitch import STREAMS, KillSwitchRegistry
from gateway.listener import CUT_GRACE, GuardedServer
from gateway.logs.access_log import ACCESS_LOGGER, flush_access_logs, pseudonym_key
from gateway.logs.aiohttp_access import GatewayAccessLogger
from gateway.logs.setup import configure_logging
from gateway.metrics import METRICS
from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.lockout_memory import LockoutMemory
from gateway.runtime import GatewayStatus, ProcessServices, Runtime, build_runtime, build_verifier
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
RELOAD_CHANNEL = "config.reload"
STORE_PROBE_INTERVAL = 1.0


class GatewayProcess:
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

    async def _start_lean(
        self,
        guarded: GuardedServer,
        config: GatewayConfig,
        ssl_context: ssl.SSLContext | None,
        *,
        reuse_port: bool,
    ) -> None:
        """The lean HTTP/1.1 listener; ``guarded`` (never listening itself) takes the connections
        handed to aiohttp (WebSocket, CONNECT) and shares its counters and its drain."""
        limits = config.listen.limits
        lean = LeanServer(
            LeanPublicHandler(self.runtime),
            guarded,
            keepalive_timeout=limits.keepalive_timeout,
            # The same last-resort parser limits as aiohttp's (above the gateway's own, App. B).
            max_line_size=max(16384, limits.max_header_bytes + 1024),
            max_field_size=max(limits.max_header_bytes, limits.max_header_line) + 1024,
            max_headers=limits.max_headers + 16,
        )
        server = await asyncio.get_running_loop().create_server(
            lean,
            config.listen.host,
            config.listen.port,
            reuse_port=reuse_port or None,
            backlog=1024,
            ssl=ssl_context,
        )
        self._lean = (lean, guarded, server)
        for sock in server.sockets:
            address = sock.getsockname()
            if isinstance(address, tuple):
                self.public_port = int(address[1])
                break

    async def _stop_lean(self) -> None:
        """One drain for the lean listener and the connections it handed to aiohttp (App. C)."""
        if self._lean is None:
            return
        lean, guarded, server = self._lean
        server.close()
        timeout = self._runtime.config.listen.drain_timeout
        await asyncio.gather(lean.shutdown(timeout, CUT_GRACE), guarded.shutdown(timeout))

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

    async def reload(self, actor: str | None = "signal:SIGHUP", request_id: str | None = None) -> Runtime:
        """Build a new runtime from the config file and swap it; raises ``ConfigError``.

        ``actor`` None means a peer worker asked (its origin already audited the reload)."""
        async with self._reload_lock:
            if self.config_path is None:
                raise ConfigError(["<file>: this gateway was started without a config file"])
            try:
                config = load_config(self.config_path)
            except ConfigError as exc:
                METRICS.reloads.labels("rejected").inc()
                self.status.last_reload_error = "; ".join(exc.errors)
                log.error("config_reload_rejected", errors=exc.errors)
                if actor is not None:
                    await self.audit.record(
                        "config.reload_rejected",
                        tenants=[SYSTEM_TRAIL],
                        actor=actor,
                        request_id=request_id,
                        details={"errors": exc.errors},
                    )
                raise
            old = self._runtime
            configure_logging(config.logging)
            if (config.listen, config.admin, config.state) != (
                old.config.listen,
                old.config.admin,
                old.config.state,
            ):
                log.warning("config_reload_partial", detail="listen, admin and state apply at restart")
            verifier = build_verifier(config, self.services.signing)
            await verifier.start()
            self._runtime = build_runtime(
                config,
                registry=self.registry,
                status=self.status,
                generation=old.generation + 1,
                process=self.services,
                verifier=verifier,
            )
            self._tasks.append(
                asyncio.create_task(_retire_later(old.verifier, old.config.listen.drain_timeout))
            )
            self.status.reloads += 1
            self.status.last_reload_error = None
            METRICS.reloads.labels("applied").inc()
            log.info("config_reloaded", generation=self._runtime.generation)
            if actor is not None:
                await self.audit.record(
                    "config.reloaded",
                    tenants=[SYSTEM_TRAIL],
                    actor=actor,
                    request_id=request_id,
                    details={"generation": self._runtime.generation, "source": str(self.config_path)},
                )
            self._tasks.append(
                asyncio.create_task(
                    self.registry.retire_unused(
                        lambda: self._runtime.config.upstreams, old.config.listen.drain_timeout
                    )
                )
            )
            return self._runtime

    async def reload_everywhere(self, actor: str, request_id: str | None) -> Runtime:
        """Admin reload: this worker first (so errors come back), then every other worker."""
        runtime = await self.reload(actor, request_id)
        if self.store.shared:
            with contextlib.suppress(StoreUnavailable):
                await self.store.publish(RELOAD_CHANNEL, orjson.dumps({"from": self.instance_id}))
        return runtime

    async def _follow_reloads(self) -> None:
        while True:
            try:
                subscription = await self.store.subscribe(RELOAD_CHANNEL)
                try:
                    async for _, message in subscription:
                        if orjson.loads(message).get("from") != self.instance_id:
                            with contextlib.suppress(ConfigError):
                                await self.reload(actor=None)
                finally:
                    await subscription.close()
            except StoreUnavailable:
                await asyncio.sleep(STORE_PROBE_INTERVAL)

    async def _watch_store(self) -> None:
        while True:
            try:
                # One GET of the generation marker is the probe (as cheap as PING) and notices a
                # store reset; a pending one is handled here, off the request path (App. C).
                await self.restorer.probe()
                healthy = True
            except StoreUnavailable:
                healthy = False
                METRICS.store_errors.inc()
            if healthy != self.status.store_healthy:
                log.info("state_store_health", healthy=healthy, store=self.status.store_description)
            self.status.store_healthy = healthy
            # Ready once the store answered and the signing keys are held (SPEC §11).
            services = self.services
            loaded = healthy and services.signing.loaded and services.revocations.loaded
            loaded = loaded and services.integrations.loaded
            loaded = loaded and services.killswitches.loaded  # SPEC §11: switches held before ready
            loaded = loaded and services.grants.loaded
            self.status.snapshot_loaded = self.status.snapshot_loaded or loaded
            self.status.store_checked_at = time.time()
            METRICS.store_healthy.set(1 if healthy else 0)
            await self.restorer.wait(STORE_PROBE_INTERVAL)  # woken early by a reported reset

    async def _reencrypt_under_primary(self) -> None:
        """Master-key rotation (SPEC App. B): values under an older key are rewritten under the
        first one, so the old key can be dropped from the environment afterwards."""
        while True:
            try:
                signing = await self.services.signing.reencrypt()
                mfa = await self._runtime.services.mfa.reencrypt()
            except StoreUnavailable:
                await asyncio.sleep(STORE_PROBE_INTERVAL)
                continue
            log.info(
                "master_key_reencrypted",
                signing_records=signing,
                mfa_records=mfa,
                primary=self.services.keyring.primary_id,
            )
            return

    async def _maintain_audit(self) -> None:
        """Replay spooled audit records once the store is back; apply retention hourly."""
        next_retention = 0.0
        while True:
            try:
                await self.audit.replay_spool()
                if time.monotonic() >= next_retention:
                    retention = self._runtime.config.audit.retention
                    await self.audit.apply_retention_all(retention)
                    next_retention = time.monotonic() + 3600
            except StoreUnavailable:
                pass
            METRICS.audit_spooled.set(self.audit.spooled_count)
            METRICS.audit_queued.set(self.audit.queued_count)
            await asyncio.sleep(STORE_PROBE_INTERVAL)

    async def _anchor_audit_heads(self) -> None:
        """App. C: sign every trail's head once the signing keys are held, then every
        ``audit.anchor_every``; a task of its own, so many trails never delay spool replay."""
        while True:
            try:
                if self.services.signing.loaded:
                    await self.audit.anchor_all()
                    await asyncio.sleep(self._runtime.config.audit.anchor_every)
                    continue
            except StoreUnavailable:
                pass
            except Exception:  # a bug must not end anchoring for the life of the process
                log.exception("audit.anchor_failed")
            await asyncio.sleep(STORE_PROBE_INTERVAL)

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


def freeze_long_lived() -> None:
    """Move what is alive now (modules, config, the runtime) out of the collector's sight.

    It lives as long as the process, yet every full collection walked all of it, on the
    request path, for milliseconds at a time; frozen, it costs nothing. Called at start-up and
    again once a reload's old runtime is gone (unfrozen first, so it can be collected)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _retire_later(verifier: JwtVerifier, delay: float) -> None:
    """Once the old runtime has drained: stop its verifier, let the runtime go, freeze the new one."""
    await asyncio.sleep(delay)
    await verifier.stop()
    freeze_long_lived()


async def _reload_quietly(process: GatewayProcess) -> None:
    with contextlib.suppress(ConfigError):
        await process.reload("signal:SIGHUP")
