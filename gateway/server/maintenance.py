"""The background work of one gateway process (the mixin ``Maintenance`` of
``process.GatewayProcess``): the store probe and readiness, master-key re-encryption, audit
spool replay and retention, and the periodic signing of audit heads.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from gateway.audit import AuditTrail
from gateway.errors import StoreUnavailable
from gateway.metrics import METRICS
from gateway.runtime import GatewayStatus, ProcessServices, Runtime
from gateway.state.restore import StoreRestorer

log = structlog.get_logger("gateway.server.process")
STORE_PROBE_INTERVAL = 1.0


class Maintenance:
    """The background tasks of ``GatewayProcess``; its state is declared here for the type checker."""

    status: GatewayStatus
    services: ProcessServices
    restorer: StoreRestorer
    audit: AuditTrail
    _runtime: Runtime

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
