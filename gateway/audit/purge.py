"""Purging a tenant (SPEC §11): its registered data and its trail go, one ``tenant.purged``
record stays and still verifies (a mixin of ``trail.AuditTrail``).

Features that keep per-tenant data declare its key prefix here at import
(``register_tenant_data("<name>:{tenant}:")``), so ``purge_tenant`` removes it. As with
retention, the vouching record is appended (and anchored) before the log is trimmed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.audit.chain import ChainWriter, stream_name
from gateway.audit.record import PURGED_EVENT, SYSTEM_TENANT, build_record, format_time, validate_tenant
from gateway.state.base import StateStore

_TENANT_DATA: list[str] = []
_TENANT_DATA_CHANNELS: list[str] = []


def register_tenant_data(prefix_template: str, *, channel: str | None = None) -> None:
    """Declare a per-tenant key prefix (e.g. ``"mfa:{tenant}:"``) that ``purge_tenant`` deletes.

    ``{tenant}`` must be followed by ``:`` (which tenant ids never contain), so that purging
    tenant ``a`` can never match keys of tenant ``ab``. Registering twice is harmless.
    ``channel``: the pub/sub channel of a snapshot held from that data (support grants); a purge
    publishes on it, so every instance drops the purged entries within a pub/sub round trip
    instead of enforcing them until its next resync."""
    if "{tenant}:" not in prefix_template or prefix_template.count("{") != 1:
        raise ValueError("prefix template must contain '{tenant}:' once, e.g. 'mfa:{tenant}:'")
    if prefix_template not in _TENANT_DATA:
        _TENANT_DATA.append(prefix_template)
    if channel is not None and channel not in _TENANT_DATA_CHANNELS:
        _TENANT_DATA_CHANNELS.append(channel)


def registered_tenant_data() -> tuple[str, ...]:
    return tuple(_TENANT_DATA)


class TrailPurge:
    """The purge method of ``AuditTrail``; its state is declared here for the type checker."""

    _store: StateStore
    _chain: ChainWriter
    _clock: Callable[[], float]
    anchor: Callable[[str], Any]
    flush: Callable[[], Any]
    replay_spool: Callable[[], Any]
    record: Callable[..., Any]

    async def purge_tenant(
        self, tenant: str, *, actor: str | None, request_id: str | None = None
    ) -> dict[str, Any]:
        """Delete ``tenant``'s registered data and its trail, leaving one ``tenant.purged``
        record that still verifies; audited in ``_system`` too. Idempotent."""
        if validate_tenant(tenant) == SYSTEM_TENANT:
            raise ValueError("the _system trail cannot be purged")
        stream = stream_name(tenant)
        # Queued and spooled events of this process for the tenant are purged as well.
        await self.flush()
        await self.replay_spool()
        prefixes = [template.format(tenant=tenant) for template in _TENANT_DATA]
        deleted_keys = 0
        for prefix in prefixes:
            deleted_keys += await self._store.delete_prefix(prefix)
        for channel in _TENANT_DATA_CHANNELS:
            # SECURITY: a purged tenant's support grants must stop on every instance at once
            # (within 1 s, like a kill switch), not at each instance's next resync.
            await self._store.publish(channel, b"")
        counted_through = await self._store.log_length(stream)
        counted = await self._chain.count(tenant, 1, counted_through)
        summary: dict[str, Any] = {}

        async def build(head_seq: int, head_hash: str) -> dict[str, Any]:
            removed = counted + await self._chain.count(tenant, counted_through + 1, head_seq)
            summary.update(removed_records=removed, data_prefixes=prefixes, deleted_keys=deleted_keys)
            details = {**summary, "removed_through_seq": head_seq, "removed_last_hash": head_hash}
            return build_record(
                seq=head_seq + 1,
                time=format_time(self._clock()),
                tenant=tenant,
                event=PURGED_EVENT,
                actor=actor,
                request_id=request_id,
                incident=None,
                details=details,
                prev_hash=head_hash,
            )

        purged = await self._chain.append_built(tenant, build)
        await self.anchor(tenant)  # signed before the cut (see apply_retention)
        await self._store.log_trim(stream, purged["seq"] - 1)
        await self.record(
            PURGED_EVENT,
            tenants=[SYSTEM_TENANT],
            actor=actor,
            request_id=request_id,
            details={"tenant": tenant, **summary},
        )
        return summary
