"""Configuration reload (SPEC §2): a new runtime built from the config file and swapped in, the
old one retired once it has drained; a reload through the admin API reaches every worker over
the store's pub/sub. The reload methods of ``process.GatewayProcess`` (a mixin), and the
collector freeze that start-up and every retired runtime end with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from pathlib import Path
from typing import Any

import orjson
import structlog

from gateway.audit import SYSTEM_TRAIL, AuditTrail
from gateway.auth.jwt import JwtVerifier
from gateway.config.errors import ConfigError
from gateway.config_schema import load_config
from gateway.errors import StoreUnavailable
from gateway.logs.setup import configure_logging
from gateway.metrics import METRICS
from gateway.runtime import GatewayStatus, ProcessServices, Runtime, build_runtime, build_verifier
from gateway.server.maintenance import STORE_PROBE_INTERVAL
from gateway.state import StateStore
from gateway.upstream.pools import UpstreamRegistry

log = structlog.get_logger("gateway.server.process")
RELOAD_CHANNEL = "config.reload"


class ConfigReload:
    """The reload methods of ``GatewayProcess``; its state is declared here for the type checker."""

    config_path: Path | None
    instance_id: str
    store: StateStore
    status: GatewayStatus
    registry: UpstreamRegistry
    audit: AuditTrail
    services: ProcessServices
    _runtime: Runtime
    _tasks: list[asyncio.Task[Any]]
    _reload_lock: asyncio.Lock

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
