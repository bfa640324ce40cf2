"""Retention removes old records behind a checkpoint, and the remaining chain still verifies."""

from __future__ import annotations

import io
import json

from gateway.audit import CHECKPOINT_EVENT, AuditTrail, iter_export_records, verify_records
from gateway.state import StateStore
from tests.unit.audit.conftest import FakeClock, export_bytes, stored_records

DAY = 86_400.0


async def write_days(trail: AuditTrail, clock: FakeClock, days: int, tenant: str = "acme") -> None:
    for day in range(days):
        await trail.record("auth.login", tenants=[tenant], actor=f"u{day}", details={"day": day})
        clock.advance(DAY)


async def test_retention_trims_behind_a_checkpoint_that_verifies(
    trail: AuditTrail, store: StateStore, clock: FakeClock
) -> None:
    await write_days(trail, clock, 10)  # records at day 0..9; now is day 10
    before = await stored_records(store, "acme")
    removed = await trail.apply_retention("acme", older_than_seconds=4.5 * DAY)  # cutoff: day 5.5
    assert removed == 6
    records = await stored_records(store, "acme")
    assert [r["seq"] for r in records] == [7, 8, 9, 10, 11]
    checkpoint = records[-1]
    assert checkpoint["event"] == CHECKPOINT_EVENT and checkpoint["actor"] == "gateway"
    assert checkpoint["details"] == {
        "removed_through_seq": 6,
        "removed_last_hash": before[5]["hash"],
        "removed_count": 6,
        "cutoff": "2026-12-03T07:02:40.123Z",
    }
    assert records[0]["prev_hash"] == before[5]["hash"]
    result = await trail.verify("acme")
    assert result.ok, result.problem
    assert (result.records, result.first_seq, result.anchored) == (5, 7, True)
    # An export of the trimmed trail verifies offline too, anchored by the checkpoint.
    exported = verify_records(iter_export_records(io.BytesIO(await export_bytes(trail, "acme"))))
    assert exported.ok and exported.anchored


async def test_repeated_retention_keeps_verifying(trail: AuditTrail, clock: FakeClock) -> None:
    await write_days(trail, clock, 5)
    assert await trail.apply_retention("acme", 2.5 * DAY) == 3
    await write_days(trail, clock, 5)
    # Now the first checkpoint itself is old and goes too; the new one vouches.
    assert await trail.apply_retention("acme", 2.5 * DAY) == 6
    result = await trail.verify("acme")
    assert result.ok, result.problem
    assert await trail.apply_retention("acme", 2.5 * DAY) == 0  # nothing old: no new checkpoint
    assert (await trail.verify("acme")).records == result.records


async def test_retention_removing_everything_leaves_the_checkpoint(
    trail: AuditTrail, store: StateStore, clock: FakeClock
) -> None:
    await write_days(trail, clock, 3)
    assert await trail.apply_retention("acme", 0) == 3
    (only,) = await stored_records(store, "acme")
    assert only["seq"] == 4 and only["event"] == CHECKPOINT_EVENT
    assert (await trail.verify("acme")).ok
    await trail.record("later", tenants=["acme"], actor="u")
    assert (await trail.verify("acme")).records == 2


async def test_trim_without_checkpoint_is_detected(
    trail: AuditTrail, store: StateStore, clock: FakeClock
) -> None:
    await write_days(trail, clock, 5)
    await store.log_trim("audit:acme", 2)  # someone trims behind retention's back
    result = await trail.verify("acme")
    assert result.problem == "records before 3 removed without a checkpoint (removed)"


async def test_checkpoint_must_name_the_right_hash(
    trail: AuditTrail, store: StateStore, clock: FakeClock
) -> None:
    await write_days(trail, clock, 5)
    # A chained record that merely claims to be a checkpoint with a wrong hash vouches for nothing.
    await trail.record(
        CHECKPOINT_EVENT,
        tenants=["acme"],
        actor="x",
        details={"removed_through_seq": 2, "removed_last_hash": "0" * 64},
    )
    await store.log_trim("audit:acme", 2)
    assert not (await trail.verify("acme")).ok


async def test_retention_stops_at_the_first_young_record(
    trail: AuditTrail, store: StateStore, clock: FakeClock
) -> None:
    """A spool replay can put an old time after a newer one; only the old prefix is removed."""
    await write_days(trail, clock, 2)
    old_time = clock.now - 10 * DAY
    now = clock.now
    clock.now = old_time
    await trail.record("replayed-late", tenants=["acme"], actor="u")
    clock.now = now
    assert await trail.apply_retention("acme", 1.5 * DAY) == 1  # cutoff: day 0.5
    events = [r["event"] for r in await stored_records(store, "acme")]
    assert events == ["auth.login", "replayed-late", CHECKPOINT_EVENT]
    assert (await trail.verify("acme")).ok


async def test_apply_retention_all(trail: AuditTrail, clock: FakeClock) -> None:
    for day in range(4):
        await trail.record("e", tenants=["acme", "globex", "_system"], actor="u", details={"d": day})
        clock.advance(DAY)
    await trail.record("fresh", tenants=["initech"], actor="u")
    assert await trail.apply_retention_all(1.5 * DAY) == {"_system": 3, "acme": 3, "globex": 3}
    for tenant in await trail.tenants():
        assert (await trail.verify(tenant)).ok
    exported = json.loads(await export_bytes(trail, "globex"))
    assert [r["event"] for r in exported] == ["e", CHECKPOINT_EVENT]
