"""The MFA enrolment freeze (gateway.auth.mfa_freeze) against a real redis-server: a store
reset freezes enrolment at once in memory, the write-back stores it (audited once), instances
that noticed nothing obey the store, verification of kept enrolments goes on, and only an
explicit lift of that very freeze opens enrolment again."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pyotp
import pytest

from gateway.audit import SYSTEM_TRAIL, AuditTrail
from gateway.audit.purge import registered_tenant_data
from gateway.auth.mfa import MfaService
from gateway.auth.mfa_freeze import (
    ALLOW_PREFIX_TEMPLATE,
    FREEZE_KEY,
    Freeze,
    MfaEnrolmentFreeze,
    MfaEnrolmentFrozen,
    allowance_key,
)
from gateway.config.model import MfaConfig
from gateway.crypto import ENV_VAR, Keyring
from gateway.errors import BadRequest, Conflict, StoreUnavailable
from gateway.state import StateStore, open_store
from gateway.state.generation import MARKER_KEY, StoreGeneration
from gateway.state.restore import StoreRestorer
from tests.support.redis_server import RedisServer
from tests.support.timing import Clock

KEYRING = Keyring.from_env({ENV_VAR: f"k1:{base64.b64encode(bytes(range(32))).decode()}"})
CONFIG = MfaConfig(issuer="https://gw.test", token_ttl=900.0, max_attempts=5, lockout=900.0)
ACTOR = "admin-token:tests"


class Node:
    """One gateway instance's MFA and reset handling on its own connection pool."""

    def __init__(self, url: str, name: str, spool: Path, clock: Clock) -> None:
        self.name = name
        self.store: StateStore = open_store(url)
        self.generation = StoreGeneration(self.store)
        self.audit = AuditTrail(self.store, spool_dir=spool / name)
        self.freeze = MfaEnrolmentFreeze(
            self.store, self.generation, self.audit, instance_id=name, clock=clock
        )
        self.restorer = StoreRestorer(
            self.generation,
            {"mfa_freeze": self.freeze},
            self.audit.system_event("store.restored"),
            instance_id=name,
        )
        self.mfa = MfaService(self.store, KEYRING, CONFIG, clock=clock, freeze=self.freeze)

    async def start(self) -> None:
        await self.store.open()
        assert not await self.generation.check()  # first contact: adopts (or writes) the marker

    async def records(self, event: str) -> list[dict[str, Any]]:
        return [r async for r in self.audit._records(SYSTEM_TRAIL) if r["event"] == event]

    async def close(self) -> None:
        await self.freeze.stop()
        self.audit.close()
        await self.store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_025.0)


@pytest.fixture
async def nodes(redis_url: str, tmp_path: Path, clock: Clock) -> AsyncIterator[Callable[[str], Any]]:
    made: list[Node] = []

    async def make(name: str) -> Node:
        node = Node(redis_url, name, tmp_path, clock)
        await node.start()
        made.append(node)
        return node

    yield make
    for node in made:
        await node.close()


async def enrol(node: Node, clock: Clock, user: str) -> tuple[str, list[str]]:
    enrollment = await node.mfa.enroll("acme", user, mfa_backed=False)
    codes = await node.mfa.activate("acme", user, pyotp.TOTP(enrollment.secret).at(clock.now))
    clock.now += 30  # the activation step is used up
    return enrollment.secret, codes


async def stored(store: StateStore) -> Freeze | None:
    return Freeze.decode(await store.get(FREEZE_KEY))


async def eventually_stored(store: StateStore, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while await store.get(FREEZE_KEY) is None:
        assert time.monotonic() < deadline, "the freeze was not written back"
        await asyncio.sleep(0.02)


async def test_a_reset_freezes_enrolment_everywhere_until_an_operator_lifts_it(
    nodes: Any, shared_redis_server: RedisServer, clock: Clock
) -> None:
    a: Node = await nodes("a")
    b: Node = await nodes("b")
    await enrol(a, clock, "alice")  # open before any reset
    shared_redis_server.flushall()  # alice's enrolment is gone with everything else

    # The attack: alice's password alone would enrol a new factor. Refused on the instance that
    # notices first (by the enrolment's own check), before the store holds any freeze.
    with pytest.raises(MfaEnrolmentFrozen) as refused:
        await a.mfa.enroll("acme", "alice", mfa_backed=False)
    assert refused.value.status == 503 and refused.value.slug == "mfa-enrolment-frozen"
    assert a.freeze.held is not None and a.freeze.held.generation is None  # memory only
    assert await stored(a.store) is None
    with pytest.raises(MfaEnrolmentFrozen):  # b notices through its own check too
        await b.mfa.enroll("acme", "alice", mfa_backed=False)
    assert await a.store.get("mfa:acme:user:YWxpY2U") is None  # nothing pending was written

    # The write-back stores the freeze, bound to the marker it settled on; audited once.
    await a.restorer.probe()
    record = await stored(a.store)
    assert record is not None and record.state == "frozen" and record.reason == "marker missing"
    assert record.generation == (await a.store.get(MARKER_KEY) or b"").decode()
    await b.restorer.probe()  # b adopts the renewed marker and the fleet's freeze id
    assert b.freeze.held == a.freeze.held == record
    frozen = await a.records("mfa.enrolment_frozen")
    assert len(frozen) == 1, frozen
    assert frozen[0]["actor"] == "gateway" and frozen[0]["details"]["reason"] == "marker missing"
    assert frozen[0]["details"]["freeze"] == record.id
    restored = await a.records("store.restored")
    assert [r["details"]["held"] for r in restored] == [{"mfa_freeze": 1}, {"mfa_freeze": 1}]

    # An instance that noticed nothing (started later) obeys the store.
    c: Node = await nodes("c")
    assert c.freeze.held is None
    with pytest.raises(MfaEnrolmentFrozen):
        await c.mfa.enroll("acme", "mallory", mfa_backed=True)  # MFA-backed too: frozen is frozen
    assert (await c.freeze.status())["frozen"] is True

    # The lift, through b: every instance learns it at its next enrolment check.
    lifted = await b.freeze.lift(actor=ACTOR, reason="enrolments restored from backup", request_id="r1")
    assert lifted.state == "lifted" and lifted.lifted_by == ACTOR
    assert b.freeze.held is None
    await enrol(a, clock, "alice")  # a held the freeze in memory; the lift record released it
    assert a.freeze.held is None
    await enrol(c, clock, "bob")
    unfrozen = await a.records("mfa.enrolment_unfrozen")
    assert len(unfrozen) == 1
    assert unfrozen[0]["actor"] == ACTOR and unfrozen[0]["request_id"] == "r1"
    details = unfrozen[0]["details"]
    assert details["reason"] == "enrolments restored from backup" and details["freeze"] == record.id
    assert details["reset_reason"] == "marker missing"
    with pytest.raises(Conflict):  # nothing left to lift
        await a.freeze.lift(actor=ACTOR, reason="again")


async def test_memory_holds_when_the_store_forgets_or_garbles_the_freeze(
    nodes: Any, shared_redis_server: RedisServer
) -> None:
    a: Node = await nodes("a")
    shared_redis_server.flushall()
    await a.restorer.probe()  # noticed and written back
    record = await stored(a.store)
    assert record is not None

    await a.store.delete(FREEZE_KEY)  # the record alone is lost (the marker is not)
    with pytest.raises(MfaEnrolmentFrozen):
        await a.mfa.enroll("acme", "alice", mfa_backed=False)
    assert await stored(a.store) is None  # the request path only reads...
    await a.freeze.start(0.05)
    await eventually_stored(a.store)  # ...the background loop writes it back
    assert await stored(a.store) == record
    assert len(await a.records("mfa.enrolment_frozen")) == 2  # each write that created it

    # A record nobody can read is no lift: frozen for an instance without memory of its own.
    await a.store.set(FREEZE_KEY, b"{not json")
    b: Node = await nodes("b")
    with pytest.raises(MfaEnrolmentFrozen):
        await b.mfa.enroll("acme", "alice", mfa_backed=False)
    # The operator can still lift it (from b, which holds nothing of its own).
    await b.freeze.lift(actor=ACTOR, reason="inspected")
    await b.mfa.enroll("acme", "alice", mfa_backed=False)
    raw = await a.store.get(FREEZE_KEY)
    assert raw is not None and orjson.loads(raw)["state"] == "lifted"


async def test_a_lift_is_refused_while_the_write_back_is_pending(
    nodes: Any, shared_redis_server: RedisServer
) -> None:
    a: Node = await nodes("a")
    shared_redis_server.flushall()
    assert await a.generation.check()  # noticed; not written back yet
    with pytest.raises(Conflict, match="written back"):
        await a.freeze.lift(actor=ACTOR, reason="too early")
    with pytest.raises(MfaEnrolmentFrozen):
        await a.mfa.enroll("acme", "alice", mfa_backed=False)
    status = await a.freeze.status()
    assert status["frozen"] and status["held_by_this_instance"] and not status["written_back"]


async def test_an_old_lift_never_lifts_a_later_freeze(nodes: Any, shared_redis_server: RedisServer) -> None:
    a: Node = await nodes("a")
    shared_redis_server.flushall()
    await a.restorer.probe()
    first = await stored(a.store)
    assert first is not None
    await a.freeze.lift(actor=ACTOR, reason="first reset handled")
    await a.mfa.enroll("acme", "alice", mfa_backed=False)

    # A second reset from a store that kept the lift record (an older replica): new freeze.
    a.generation.report("security writes went back")
    await a.restorer.probe()
    second = await stored(a.store)
    assert second is not None and second.state == "frozen" and second.id != first.id
    assert second.generation != first.generation and second.reason == "security writes went back"
    with pytest.raises(MfaEnrolmentFrozen):
        await a.mfa.enroll("acme", "alice", mfa_backed=False)


async def test_verification_of_kept_enrolments_goes_on_while_enrolment_is_frozen(
    nodes: Any, clock: Clock
) -> None:
    a: Node = await nodes("a")
    secret, codes = await enrol(a, clock, "alice")
    await a.mfa.enroll("acme", "carol", mfa_backed=False)  # pending when the reset comes

    # A store that came back older but kept these enrolments (a replica that lagged).
    a.generation.report("security writes went back")
    await a.restorer.probe()
    assert a.freeze.held is not None

    await a.mfa.verify_code("acme", "alice", pyotp.TOTP(secret).at(clock.now))
    await a.mfa.verify_recovery_code("acme", "alice", codes[0])
    for user, backed in (("alice", True), ("alice", False), ("bob", False)):
        with pytest.raises(MfaEnrolmentFrozen):  # even alice's own MFA-backed rotation waits
            await a.mfa.enroll("acme", user, mfa_backed=backed)
    with pytest.raises(MfaEnrolmentFrozen):  # a pending secret cannot be activated either
        await a.mfa.activate("acme", "carol", "000000")
    assert await a.mfa.status("acme", "carol") == "pending"
    assert await a.mfa.status("acme", "bob") == "none"


async def test_a_hung_store_never_holds_the_enrolment_check_past_its_timeout(
    redis_server: RedisServer, tmp_path: Path, clock: Clock
) -> None:
    """Issue 15 item 2: the check runs on the request path. Frozen in memory: refused at once
    the store hangs; not frozen: ``StoreUnavailable`` (503) after the timeout, never open."""
    a = Node(redis_server.url, "a", tmp_path, clock)
    b = Node(redis_server.url, "b", tmp_path, clock)
    try:
        for node in (a, b):
            await node.start()
        redis_server.flushall()
        await a.restorer.probe()  # a holds the freeze; b has not looked
        redis_server.pause()
        try:
            for node, expected in ((a, MfaEnrolmentFrozen), (b, StoreUnavailable)):
                started = time.monotonic()
                with pytest.raises(expected):
                    await node.freeze.check_enrolment(0.2)
                # Bounded by the timeout, not by the store (a pause would hold it for ever);
                # the margin is for a loaded machine, not a speed claim.
                assert time.monotonic() - started < 5
        finally:
            redis_server.resume()
    finally:
        for node in (a, b):
            await node.close()


async def test_an_allowance_lets_one_user_enrol_once_during_this_freeze_only(
    nodes: Any, shared_redis_server: RedisServer, clock: Clock
) -> None:
    a: Node = await nodes("a")
    b: Node = await nodes("b")
    with pytest.raises(Conflict, match="not frozen"):  # nothing to allow while enrolment is open
        await a.freeze.allow("acme", "alice", ttl=900, actor=ACTOR, reason="checked")
    shared_redis_server.flushall()
    await a.restorer.probe()
    await b.restorer.probe()

    allowance = await a.freeze.allow(
        "acme", "alice", ttl=900, actor=ACTOR, reason="called her back", request_id="r2"
    )
    assert allowance.freeze == (await stored(a.store) or Freeze("", "", 0, "")).id
    # Through the other instance (which holds the freeze in memory too): alice, and only her.
    with pytest.raises(MfaEnrolmentFrozen):
        await b.mfa.enroll("acme", "bob", mfa_backed=False)
    with pytest.raises(MfaEnrolmentFrozen):
        await b.mfa.enroll("globex", "alice", mfa_backed=False)  # same sub, another tenant
    await enrol(b, clock, "alice")
    assert await b.mfa.status("acme", "alice") == "active"
    with pytest.raises(MfaEnrolmentFrozen):  # used up by the activation
        await b.mfa.enroll("acme", "alice", mfa_backed=True)
    assert await a.store.get(allowance_key("acme", "alice")) is None

    acme = [r async for r in a.audit._records("acme")]
    allowed = [r for r in acme if r["event"] == "mfa.enrolment_allowed"]
    assert len(allowed) == 1 and allowed[0]["actor"] == ACTOR and allowed[0]["request_id"] == "r2"
    assert allowed[0]["details"]["reason"] == "called her back"
    assert [r["actor"] for r in acme if r["event"] == "mfa.enrolment_allowance_used"] == ["alice"]
    assert len(await a.records("mfa.enrolment_allowed")) == 1  # the freeze's story in _system too

    # Expired: refused (the clock, not only the store's ttl, decides).
    await a.freeze.allow("acme", "carol", ttl=60, actor=ACTOR, reason="short")
    clock.now += 61
    with pytest.raises(MfaEnrolmentFrozen):
        await a.mfa.enroll("acme", "carol", mfa_backed=False)

    # Given under one freeze, void under the next (a store that kept it, came back older).
    await a.freeze.allow("acme", "dave", ttl=900, actor=ACTOR, reason="before the next reset")
    a.generation.report("security writes went back")
    await a.restorer.probe()
    with pytest.raises(MfaEnrolmentFrozen):
        await a.mfa.enroll("acme", "dave", mfa_backed=False)

    with pytest.raises(BadRequest):
        await a.freeze.allow("_system", "x", ttl=60, actor=ACTOR, reason="no such tenant")
    assert ALLOW_PREFIX_TEMPLATE in registered_tenant_data()  # a tenant purge removes them


async def test_no_allowance_while_the_write_back_is_pending(
    nodes: Any, shared_redis_server: RedisServer
) -> None:
    a: Node = await nodes("a")
    shared_redis_server.flushall()
    assert await a.generation.check()
    with pytest.raises(Conflict, match="written back"):
        await a.freeze.allow("acme", "alice", ttl=900, actor=ACTOR, reason="too early")
