"""Writing trails: chaining, placement, concurrency (in one process, across store objects and
across processes), on both store backends."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.audit import GENESIS_HASH, AuditTrail
from gateway.audit.record import compute_hash
from gateway.state import StateStore, open_store
from tests.unit.audit.conftest import Backend, FakeClock, stored_records


async def test_chain_of_100_records_verifies(trail: AuditTrail, store: StateStore, clock: FakeClock) -> None:
    for i in range(100):
        await trail.record("auth.login", tenants=["acme"], actor=f"user{i}", request_id=f"r{i}")
        clock.advance(1.5)
    records = await stored_records(store, "acme")
    assert [r["seq"] for r in records] == list(range(1, 101))
    assert records[0]["prev_hash"] == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]
        assert after["time"] > before["time"]
    assert all(compute_hash(r) == r["hash"] for r in records)
    result = await trail.verify("acme")
    assert result.ok and result.records == 100 and result.problem is None
    assert (result.first_seq, result.last_seq, result.anchored) == (1, 100, True)


async def test_record_fields(trail: AuditTrail, store: StateStore) -> None:
    await trail.record(
        "killswitch.engage",
        tenants=["acme"],
        actor="responder-1",
        request_id="req-9",
        incident="INC-7",
        details={"scope": "tenant", "mode": "block"},
    )
    (rec,) = await stored_records(store, "acme")
    assert rec == {
        "seq": 1,
        "time": "2026-11-27T19:02:40.123Z",
        "tenant": "acme",
        "event": "killswitch.engage",
        "actor": "responder-1",
        "request_id": "req-9",
        "incident": "INC-7",
        "details": {"scope": "tenant", "mode": "block"},
        "prev_hash": GENESIS_HASH,
        "hash": rec["hash"],
    }


async def test_event_filed_in_every_tenant_it_concerns(trail: AuditTrail, store: StateStore) -> None:
    await trail.record("tenant.mismatch", tenants=["acme", "globex", "acme"], actor="u1")
    await trail.record("keys.rotate", tenants=["_system"], actor="admin")
    assert [r["event"] for r in await stored_records(store, "acme")] == ["tenant.mismatch"]
    assert [r["tenant"] for r in await stored_records(store, "globex")] == ["globex"]
    assert [r["event"] for r in await stored_records(store, "_system")] == ["keys.rotate"]
    assert await trail.tenants() == ["_system", "acme", "globex"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tenants": []}, "non-empty"),
        ({"tenants": "acme"}, "non-empty"),
        ({"tenants": ["a:b"]}, "invalid tenant"),
        ({"tenants": ["acme"], "details": {"n": 2**70}}, "64 bits"),
        ({"tenants": ["acme"], "details": {"s": "\ud800"}}, "not valid Unicode"),
    ],
)
async def test_caller_bugs_are_value_errors(trail: AuditTrail, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await trail.record("x", actor="a", **kwargs)
    assert trail.spooled_count == 0


async def test_50_concurrent_writers_on_two_trail_objects(backend: Backend, tmp_path: Path) -> None:
    """Two AuditTrail objects on two store objects (two "instances") on the same state."""
    store_a, store_b = open_store(backend.url), open_store(backend.url)
    if backend.kind == "local":
        store_b = store_a  # local: one process, one store object by contract
    async with store_a:
        await store_b.open()
        trails = [AuditTrail(s, spool_dir=tmp_path / f"spool{i}") for i, s in enumerate((store_a, store_b))]
        await asyncio.gather(
            *(
                trails[i % 2].record("api.call", tenants=["acme", "_system"], actor=f"w{i}", details={"i": i})
                for i in range(50)
            )
        )
        assert [t.spooled_count for t in trails] == [0, 0]
        for tenant in ("acme", "_system"):
            result = await trails[0].verify(tenant)
            assert result.ok, result.problem
            assert result.records == 50
        records = await stored_records(store_a, "acme")
        assert sorted(r["details"]["i"] for r in records) == list(range(50))
        for trail in trails:
            trail.close()
        await store_b.close()


async def test_concurrent_writers_in_separate_processes(redis_url: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from gateway.audit import AuditTrail
        from gateway.state import open_store

        async def main(url, name, spool):
            async with open_store(url) as store:
                trail = AuditTrail(store, spool_dir=Path(spool))
                await asyncio.gather(*(
                    trail.record("api.call", tenants=["acme"], actor=f"{name}-{i}") for i in range(40)
                ))
                assert trail.spooled_count == 0

        asyncio.run(main(*sys.argv[1:]))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, redis_url, f"p{n}", str(tmp_path / f"s{n}")])
        for n in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    async with open_store(redis_url) as store:
        trail = AuditTrail(store, spool_dir=tmp_path / "check")
        result = await trail.verify("acme")
        assert result.ok, result.problem
        assert result.records == 120
        actors = {r["actor"] for r in await stored_records(store, "acme")}
        assert len(actors) == 120
