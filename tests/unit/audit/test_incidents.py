"""The incident index: every record filed under an incident is found, in time order, on both
backends - including records spooled while the store was down - and stale pointers never
attribute another record to the incident."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditTrail
from gateway.audit.incidents import incident_actions, index_key, validate_incident
from gateway.errors import StoreUnavailable
from gateway.state import StateStore, open_store
from tests.support.redis_server import RedisServer
from tests.unit.audit.conftest import FakeClock, FlakyStore, stored_records


@pytest.fixture
def failing(store: StateStore) -> FlakyStore:
    return FlakyStore(store)


@pytest.fixture
def flaky_trail(failing: FlakyStore, tmp_path: Path, clock: FakeClock) -> Any:
    opened = AuditTrail(failing, spool_dir=tmp_path / "spool", clock=clock, retry_interval=0)  # type: ignore[arg-type]
    yield opened
    opened.close()


async def test_actions_in_time_order_across_trails(trail: AuditTrail, clock: FakeClock) -> None:
    await trail.record(
        "keys.rotated", tenants=["_system"], actor="jwt:ann", incident="INC-1", details={"kid": "k2"}
    )
    clock.advance(1)
    await trail.record("unrelated", tenants=["acme"], actor="jwt:ann", details={})
    await trail.record("other.incident", tenants=["acme"], actor="jwt:ann", incident="INC-2")
    clock.advance(1)
    await trail.record(
        "killswitch.engaged", tenants=["acme", "_system"], actor="jwt:ann", incident="INC-1", request_id="r1"
    )
    clock.advance(1)
    await trail.record("sessions.revoked", tenants=["globex"], actor="jwt:bob", incident="INC-1")
    actions, truncated = await trail.incident_actions("INC-1")
    assert not truncated
    assert [a["event"] for a in actions] == ["keys.rotated", "killswitch.engaged", "sessions.revoked"]
    assert actions[0] == {
        "time": "2026-11-27T19:02:40.123Z",
        "tenant": "_system",
        "tenants": ["_system"],
        "event": "keys.rotated",
        "actor": "jwt:ann",
        "request_id": None,
        "details": {"kid": "k2"},
    }
    # One event filed in two trails is one action; it names the real tenant first.
    assert actions[1]["tenant"] == "acme" and sorted(actions[1]["tenants"]) == ["_system", "acme"]
    assert actions[1]["request_id"] == "r1"
    assert actions[2]["tenant"] == "globex" and actions[2]["actor"] == "jwt:bob"
    assert [a["event"] for a in (await trail.incident_actions("INC-2"))[0]] == ["other.incident"]
    assert await trail.incident_actions("INC-404") == ([], False)
    for tenant in ("acme", "_system", "globex"):
        assert (await trail.verify(tenant)).ok  # the index is beside the chain, not in it


async def test_copies_merge_only_when_they_share_a_request_id(trail: AuditTrail) -> None:
    # Two revocations in the same millisecond without a request id are two acts, not one.
    await trail.record("sessions.revoked", tenants=["acme"], actor="a", incident="INC-D")
    await trail.record("sessions.revoked", tenants=["globex"], actor="a", incident="INC-D")
    actions, _ = await trail.incident_actions("INC-D")
    assert sorted(a["tenant"] for a in actions) == ["acme", "globex"]


async def test_sparse_records_among_many_are_found_exactly(trail: AuditTrail, clock: FakeClock) -> None:
    wanted = []
    for i in range(120):
        incident = "INC-G" if i % 7 == 0 or 50 <= i < 60 else ("INC-H" if i % 2 else None)
        await trail.record("e", tenants=["acme"], actor="a", incident=incident, details={"i": i})
        clock.advance(0.01)
        if incident == "INC-G":
            wanted.append(i)
    actions, truncated = await trail.incident_actions("INC-G")
    assert [a["details"]["i"] for a in actions] == wanted and not truncated


async def test_spooled_while_store_down_is_indexed_at_replay(
    flaky_trail: AuditTrail, failing: FlakyStore, store: StateStore, clock: FakeClock
) -> None:
    await flaky_trail.record("before", tenants=["acme"], actor="a", incident="INC-9")
    failing.down = True
    clock.advance(1)
    await flaky_trail.record("sessions.revoked", tenants=["acme"], actor="a", incident="INC-9")
    clock.advance(1)
    await flaky_trail.record("keys.rotated", tenants=["_system"], actor="a", incident="INC-9")
    assert flaky_trail.spooled_count == 2
    with pytest.raises(StoreUnavailable):
        await flaky_trail.incident_actions("INC-9")  # a 503, never a misleading "nothing"
    failing.down = False
    assert await flaky_trail.replay_spool() == 2
    actions, _ = await incident_actions(store, "INC-9")
    assert [a["event"] for a in actions] == ["before", "sessions.revoked", "keys.rotated"]


async def test_real_redis_stopped_then_back_the_spooled_actions_are_listed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    clock = FakeClock()
    async with open_store(redis_server.url) as store:
        trail = AuditTrail(store, spool_dir=tmp_path / "spool", clock=clock, retry_interval=0)
        await trail.record("killswitch.engaged", tenants=["_system"], actor="a", incident="INC-R")
        redis_server.stop()
        clock.advance(1)
        await trail.record("sessions.revoked", tenants=["acme"], actor="a", incident="INC-R")
        assert trail.spooled_count == 1
        redis_server.start()
        clock.advance(1)
        await trail.record("keys.rotated", tenants=["_system"], actor="a", incident="INC-R")  # replays first
        assert trail.spooled_count == 0
        actions, _ = await trail.incident_actions("INC-R")
        assert [a["event"] for a in actions] == ["killswitch.engaged", "sessions.revoked", "keys.rotated"]
        trail.close()


async def test_pointer_write_failure_spools_the_record_instead_of_losing_its_pointer(
    flaky_trail: AuditTrail, failing: FlakyStore, store: StateStore
) -> None:
    failing.failing = {"sadd"}  # the store takes the record but not the index write
    await flaky_trail.record("killswitch.engaged", tenants=["acme"], actor="a", incident="INC-3")
    assert flaky_trail.spooled_count == 1
    assert await stored_records(store, "acme") == []  # not appended without its pointer
    failing.failing = set()
    assert await flaky_trail.replay_spool() == 1
    assert [a["event"] for a in (await incident_actions(store, "INC-3"))[0]] == ["killswitch.engaged"]


async def test_lost_append_reply_is_listed_once(
    flaky_trail: AuditTrail, failing: FlakyStore, store: StateStore, clock: FakeClock
) -> None:
    failing.lose_append_replies = 1
    await flaky_trail.record("sessions.revoked", tenants=["acme"], actor="a", incident="INC-4")
    assert flaky_trail.spooled_count == 1
    assert await flaky_trail.replay_spool() == 1
    clock.advance(1)
    await flaky_trail.record("keys.rotated", tenants=["acme"], actor="a", incident="INC-4")
    assert len(await stored_records(store, "acme")) == 2
    assert [a["event"] for a in (await incident_actions(store, "INC-4"))[0]] == [
        "sessions.revoked",
        "keys.rotated",
    ]


async def test_stale_and_foreign_pointers_are_skipped(trail: AuditTrail, store: StateStore) -> None:
    await trail.record("mine", tenants=["acme"], actor="a", incident="INC-5")  # acme seq 1
    await trail.record("not.mine", tenants=["acme"], actor="a", incident="INC-6")  # acme seq 2
    # A pointer whose append failed and whose seq another record took; one past the end;
    # one into a trail that does not exist; junk.
    await store.sadd(index_key("INC-5"), "acme:2", "acme:99", "ghost:1", "junk", ":", "acme:x")
    actions, _ = await trail.incident_actions("INC-5")
    assert [a["event"] for a in actions] == ["mine"]


async def test_purged_tenant_leaves_the_other_trails_listed(
    trail: AuditTrail, tenant_registry: list[str]
) -> None:
    await trail.record("sessions.revoked", tenants=["acme"], actor="a", incident="INC-7")
    await trail.record("keys.rotated", tenants=["_system"], actor="a", incident="INC-7")
    await trail.purge_tenant("acme", actor="admin")
    actions, _ = await trail.incident_actions("INC-7")
    assert [a["event"] for a in actions] == ["keys.rotated"]  # the purged record is skipped


@pytest.mark.parametrize("good", ["INC-1", "2026.11.27:breach_7", "a", "A" * 64])
def test_valid_incident_ids(good: str) -> None:
    assert validate_incident(good) == good


@pytest.mark.parametrize("bad", ["", "-x", "INC 1", "INC-1\n", "a/b", "a" * 65, "é", None, 7, "inc*"])
def test_invalid_incident_ids(bad: object) -> None:
    with pytest.raises(ValueError):
        validate_incident(bad)


async def test_record_refuses_a_non_string_incident(trail: AuditTrail) -> None:
    with pytest.raises(ValueError):
        await trail.record("e", tenants=["acme"], actor="a", incident=7)  # type: ignore[arg-type]
