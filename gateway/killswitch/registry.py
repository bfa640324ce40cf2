"""``KillSwitchRegistry``: switches in the state store, enforced from memory on every instance
(SPEC §9, §14; issue 7 items 3 and 4).

Store layout
------------
* ``killswitch:switches`` — hash, switch id → JSON record (``Switch.to_record``).
* ``killswitch:version`` — integer, bumped by every engage and release (the set's version).
* ``killswitch:instances`` — hash, instance id → ``{"version", "at"}`` heartbeats.
* channel ``killswitch`` — "reload now", carrying the new version (for humans reading traces).

Versions without compare-and-set: a writer changes the hash *first* and bumps the version
*after*; a loader reads the version *first* and the hash *after*. So a loader that read version
``v`` holds every change up to ``v`` (maybe more, never less), and acknowledging ``v`` is honest.

Propagation: the writer publishes; every instance's ``SyncedSnapshot`` reloads on the message,
and every ``resync`` seconds in case a message was lost. Applying a set swaps one reference
(memory only per request), cuts in-flight streams now in scope, then heartbeats the version.
``wait_acknowledged`` polls the heartbeats until every live instance (heartbeat ≤ 3 s old, App.
B) reports the version, or the time is up and the laggards are named.

Failure modes: store down → the last applied set keeps being enforced, ``healthy`` is False
(ready says degraded, metric ``killswitch_stale`` is 1). Never loaded → ``index`` is None and
the middleware answers 503 not-ready (fail closed: switches must survive restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from gateway.audit import AuditTrail
from gateway.errors import StoreUnavailable
from gateway.killswitch.matcher import SwitchIndex
from gateway.killswitch.metrics import gauges
from gateway.killswitch.model import Switch, audit_trails
from gateway.killswitch.peers import peer_states
from gateway.killswitch.streams import STREAMS, StreamRegistry
from gateway.state.base import StateStore
from gateway.state.generation import StoreGeneration, StoreReset
from gateway.state.sync import SnapshotBacked, SyncedSnapshot

SWITCHES_KEY = "killswitch:switches"
VERSION_KEY = "killswitch:version"
INSTANCES_KEY = "killswitch:instances"
CHANNEL = "killswitch"
LIVE_WINDOW = 3.0  # SPEC App. B: live while it has heartbeated within the last 3 s
HEARTBEAT = 1.0
ACK_TIMEOUT = 2.0
_ACK_POLL = 0.01
_FORGET_AFTER = 3600.0  # heartbeats older than this are removed from the hash
_TOMBSTONE_TTL = 3600.0  # how long a release is remembered for a store reset's write-back
_RELEASED_KEPT = 1024
PEERS_EVERY = 5  # beats between two reads of every peer's heartbeat (the instances gauge)

log = logging.getLogger(__name__)


class KillSwitchRegistry(SnapshotBacked[SwitchIndex]):
    def __init__(
        self,
        store: StateStore,
        *,
        instance_id: str,
        resync: float = 5.0,
        retry: float = 1.0,
        clock: Callable[[], float] = time.time,
        streams: StreamRegistry = STREAMS,
        audit: AuditTrail | None = None,
        generation: StoreGeneration | None = None,
    ) -> None:
        self._store, self._clock, self._streams = store, clock, streams
        self._audit = audit
        self._generation = generation  # App. C: a store that forgot the set is not applied
        self.instance_id = instance_id
        self.index: SwitchIndex | None = None  # the hot path reads this, nothing else
        self._snapshot: SyncedSnapshot[SwitchIndex] = SyncedSnapshot(
            store, CHANNEL, self.load, resync=resync, retry=retry
        )
        self._beat_task: asyncio.Task[None] | None = None
        self._parsed: dict[str, tuple[bytes, Switch | None]] = {}
        self._loads_started = 0  # orders loads by start, not by version (see _apply)
        self._applied_load = 0
        self._released: dict[str, float] = {}  # switch id → when its release was applied here

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await super().start()
        if self._beat_task is None:
            self._beat_task = asyncio.create_task(self._heartbeat_loop(), name="killswitch-heartbeat")

    async def stop(self) -> None:
        task, self._beat_task = self._beat_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().stop()
        with contextlib.suppress(StoreUnavailable):
            await self._store.hdel(INSTANCES_KEY, self.instance_id)  # no longer a live instance

    @property
    def version(self) -> int | None:
        return None if self.index is None else self.index.version

    # -- loading and applying -----------------------------------------------------------------
    async def load(self) -> SwitchIndex:
        self._loads_started += 1
        started = self._loads_started
        since = self._generation.begin() if self._generation is not None else 0
        raw_version = await self._store.get(VERSION_KEY)  # version first: see module docstring
        version = int(raw_version) if raw_version else 0
        current = self.index
        if current is not None and version == current.version and not self._expiry_due(current):
            # The resync of an unchanged set reads one key, not the whole hash: every change to
            # the hash is followed by a version bump (module docstring), and a switch that ran
            # out of time is tidied by the full path below. 1,000 switches made every resync
            # read and compare 1,000 records (the scale bench's 1.19x under callgrind).
            if self._generation is not None:
                await self._generation.verify(since)
            self._applied_load = max(self._applied_load, started)
            return current
        records = await self._store.hgetall(SWITCHES_KEY)
        if self._generation is not None:
            await self._generation.verify(since)  # after reading: not a reset store's records
        self._check_not_reset(version)  # a replica that lagged but kept the marker
        now = self._clock()
        switches: list[Switch] = []
        expired: list[Switch] = []
        parsed: dict[str, tuple[bytes, Switch | None]] = {}
        unchanged = len(records) == len(self._parsed)
        for switch_id, raw in records.items():
            cached = self._parsed.get(switch_id)
            # Unchanged records are not validated again on every resync (1,000 switches ≈ 30 ms).
            if cached is not None and cached[0] == raw:
                switch = cached[1]
            else:
                switch, unchanged = _parse(switch_id, raw), False
            parsed[switch_id] = (raw, switch)
            if switch is None:
                continue
            (switches if switch.active(now) else expired).append(switch)
        self._parsed = parsed
        current = self.index
        if unchanged and not expired and current is not None and current.version == version:
            # The resync of an unchanged set: no index is rebuilt (1,000 switches cost about 3 ms
            # of CPU every resync otherwise). A load that began earlier still cannot win.
            self._applied_load = max(self._applied_load, started)
            return current
        for switch in expired:
            # TTL ended: no instance matches it any more (clock check); now tidy the store. One
            # delete per switch, so only the instance that removed it files the audit record.
            if await self._store.hdel(SWITCHES_KEY, switch.id):
                await self._audit_expiry(switch)
        return await self._apply(SwitchIndex(switches, version), started)

    def _expiry_due(self, index: SwitchIndex) -> bool:
        due = index.next_expiry()
        return due is not None and due <= self._clock()

    def _check_not_reset(self, version: int) -> None:
        """SECURITY (App. C): a set version below the one enforced here means the store was
        flushed or failed over to a replica that lagged. Its set is not applied (that would drop
        engaged switches): the reset is reported and this instance writes its set back."""
        current = self.index
        if self._generation is None or current is None or version >= current.version:
            return
        log.info(  # the one warning of the reset is the restorer's
            "kill switch set version went back from v%d to v%d: store reset, keeping v%d",
            current.version,
            version,
            current.version,
        )
        self._generation.report("killswitch version went back")
        raise StoreReset("kill switch set version went back")

    def _note_released(self, old: SwitchIndex, new: SwitchIndex) -> None:
        """Remember switches released while still active, for an hour: a store reset's
        write-back tombstones them, so an instance that had not yet seen the release cannot
        revive them (``StateStore.hash_merge``)."""
        now = self._clock()
        kept = {s.id for s in new.switches}
        for switch in old.switches:
            if switch.id not in kept and switch.active(now):
                self._released[switch.id] = now
        if len(self._released) > _RELEASED_KEPT:
            self._released = {i: t for i, t in self._released.items() if now - t < _TOMBSTONE_TTL}

    async def restore(self) -> tuple[int, int]:
        """Write the enforced set back to a store that was reset: every active switch (with its
        own expiry, so the remaining ttl) unless the store already has it expiring as late (no
        expiry beats any; then the higher version wins: an extension is never lost to another
        writer's older copy), and the set version raised to at least ours. Returns (held,
        written); ``StoreUnavailable``."""
        index = self.index
        if index is None:
            return 0, 0
        now = self._clock()
        active = {s.id: orjson.dumps(s.to_record()) for s in index.switches if s.active(now)}
        released = [i for i, at in self._released.items() if now - at < _TOMBSTONE_TTL and i not in active]
        written = await self._store.hash_merge(
            SWITCHES_KEY, active, released, tombstone_ttl=_TOMBSTONE_TTL, keep_later=True
        )
        await self._store.set_max(VERSION_KEY, index.version)
        with contextlib.suppress(StoreUnavailable):
            await self._store.publish(CHANNEL, str(index.version).encode())
        return len(active), written

    async def _audit_expiry(self, switch: Switch) -> None:
        if self._audit is None:
            return
        tenants = audit_trails(switch)
        try:
            await self._audit.record(
                "killswitch.expired",
                tenants=tenants,
                actor="gateway",
                incident=switch.incident,
                details={
                    "id": switch.id,
                    "scope": switch.scope,
                    "target": switch.target,
                    "mode": switch.mode,
                },
            )
        except (OSError, ValueError):
            log.error("kill switch %s: expiry not audited", switch.id)

    async def _apply(self, index: SwitchIndex, started: int) -> SwitchIndex:
        current = self.index
        if current is not None:
            if started < self._applied_load:
                return current  # a slower load that began earlier must not roll back a newer one
            self._applied_load = started
            if index.version == current.version and index.switches == current.switches:
                return current
            if index.version < current.version:
                # SECURITY: the store was flushed or failed over to a stale replica and its counter
                # restarted. Ignoring lower versions would silently never enforce a switch engaged
                # from now on (fail open): the store is the truth, so its set is applied.
                log.warning(
                    "kill switch set version went back from v%d to v%d (store reset?); applying it",
                    current.version,
                    index.version,
                )
        self._applied_load = started
        if current is not None:
            self._note_released(current, index)
        self.index = index  # swapped before acknowledging: the ack is never ahead of enforcement
        gauges().version.set(index.version)
        gauges().active.set(len(index.switches))
        cut = self._streams.cut(index)
        if current is None or index.version != current.version:
            log.info(
                "kill switch set v%d applied (%d active, %d streams cut)",
                index.version,
                len(index.switches),
                cut,
            )
        with contextlib.suppress(StoreUnavailable):
            # The store has just answered (a load, or this instance's own write): not stale,
            # whatever the snapshot's flag says before its load returns (a fresh instance's
            # first beat said "stale" for a second).
            await self._beat(stale=False)
        return index

    # -- writing ------------------------------------------------------------------------------
    async def engage(self, spec: Switch, *, ttl: float | None, actor: str | None) -> Switch:
        """Store a new switch, bump the version, publish and apply here; ``StoreUnavailable``."""
        now = self._clock()
        switch = replace(
            spec,
            id=f"ks_{uuid.uuid4().hex[:16]}",
            created_at=now,
            expires_at=None if ttl is None else now + ttl,
            actor=actor,
        )
        return await self._publish(switch)

    async def release(self, switch_id: str) -> tuple[Switch, int] | None:
        """Remove a switch; returns it and the set version without it, None if unknown."""
        switch = await self._stored(switch_id)
        if switch is None or not await self._store.hdel(SWITCHES_KEY, switch_id):
            return None
        version = await self._store.incr(VERSION_KEY)
        await self._announce(version)
        return switch, version

    async def extend(self, switch_id: str, ttl: float) -> Switch | None:
        """Set an active switch to expire ``ttl`` seconds from now (the console's "extend"); the
        id stays, the version is bumped so every instance applies the new expiry. None if unknown."""
        switch = await self._stored(switch_id)
        if switch is None or not switch.active(self._clock()):
            return None
        return await self._publish(replace(switch, expires_at=self._clock() + ttl))

    async def _stored(self, switch_id: str) -> Switch | None:
        raw = await self._store.hget(SWITCHES_KEY, switch_id)
        return _parse(switch_id, raw) if raw is not None else None

    async def _publish(self, switch: Switch) -> Switch:
        """Write ``switch``, bump the set's version, write it again with that version, announce."""
        await self._write(switch)  # hash before version (module docstring)
        version = await self._store.incr(VERSION_KEY)
        switch = replace(switch, version=version)
        await self._write(switch)
        await self._announce(version)
        return switch

    async def _write(self, switch: Switch) -> None:
        await self._store.hset(SWITCHES_KEY, switch.id, orjson.dumps(switch.to_record()))

    async def _announce(self, version: int) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._store.publish(CHANNEL, str(version).encode())
        await self.reload()  # enforced here at once, and acknowledged

    # -- reading for the admin API ------------------------------------------------------------
    async def stored_switches(self) -> list[Switch]:
        now = self._clock()
        parsed = (_parse(k, v) for k, v in (await self._store.hgetall(SWITCHES_KEY)).items())
        return sorted((s for s in parsed if s is not None and s.active(now)), key=lambda s: s.created_at)

    async def _beats(self) -> dict[str, tuple[int, float, bool]]:
        beats = {}
        for instance, raw in (await self._store.hgetall(INSTANCES_KEY)).items():
            beat = _parse_beat(raw)
            if beat is not None:
                beats[instance] = beat
        return beats

    async def instances(self) -> list[dict[str, Any]]:
        """Every live instance: id, applied version, heartbeat age (s), store staleness."""
        now = self._clock()
        return [
            {"instance": instance, "version": version, "age_s": round(now - at, 3), "stale": stale}
            for instance, (version, at, stale) in sorted((await self._beats()).items())
            if now - at <= LIVE_WINDOW
        ]

    async def instance_states(self) -> tuple[int, list[dict[str, Any]]]:
        """Appendix C ``GET /admin/instances``: the store's set version and every instance that
        heartbeated within the last hour, each ``enforcing`` (its applied version is the
        store's), ``lagging`` (alive, another version) or ``silent`` (no heartbeat for
        ``LIVE_WINDOW``, i.e. 3 missed beats). A gracefully stopped instance removes its own
        heartbeat, so it leaves the list instead of turning silent."""
        beats = await self._beats()
        raw_current = await self._store.get(VERSION_KEY)
        current = int(raw_current) if raw_current else 0
        now = self._clock()
        rows = []
        for instance, (version, at, stale) in sorted(beats.items()):
            age = now - at
            # Above the store's counter predates a store reset: not an ack (wait_acknowledged).
            fresh = "enforcing" if version == current else "lagging"
            state = "silent" if age > LIVE_WINDOW else fresh
            rows.append(
                {
                    "instance": instance,
                    "version": version,
                    "heartbeat_age_s": round(max(age, 0.0), 3),
                    "store": "stale" if stale else "ok",
                    "state": state,
                }
            )
        return current, rows

    async def wait_acknowledged(
        self, version: int, timeout: float = ACK_TIMEOUT
    ) -> tuple[list[str], list[str]]:
        """(acknowledged, lagging) once every instance live during the wait has applied
        ``version``, or at the deadline. An instance live when the wait began stays expected
        even if its heartbeat ages out meanwhile: a hung process is a laggard, not a leaver."""
        deadline = time.monotonic() + timeout
        expected: set[str] = set()
        acked: set[str] = set()
        while True:
            with contextlib.suppress(StoreUnavailable):
                beats = await self._beats()
                raw_current = await self._store.get(VERSION_KEY)
                current = int(raw_current) if raw_current else 0
                now = self._clock()
                expected |= {i for i, (_, at, _) in beats.items() if now - at <= LIVE_WINDOW}
                # A heartbeat above the store's own counter predates a store reset: not an ack.
                acked = {i for i in expected if i in beats and version <= beats[i][0] <= current}
                if version <= (self.version or 0) <= current:
                    expected.add(self.instance_id)
                    acked.add(self.instance_id)  # our own heartbeat write may have failed
                if acked == expected:
                    return sorted(acked), []
            if time.monotonic() >= deadline:
                return sorted(acked), sorted(expected - acked)
            await asyncio.sleep(_ACK_POLL)

    # -- heartbeats ---------------------------------------------------------------------------
    async def _beat(self, stale: bool | None = None) -> None:
        if self.index is None:
            return  # nothing applied yet: not an instance that enforces anything
        stale = not self.healthy if stale is None else stale
        beat = {"version": self.index.version, "at": self._clock(), "stale": stale}
        await self._store.hset(INSTANCES_KEY, self.instance_id, orjson.dumps(beat))

    async def _heartbeat_loop(self) -> None:
        beats = 0
        while True:
            gauges().stale.set(0 if self.healthy else 1)
            try:
                # Bounded: a hung store must not stall the staleness gauge or later beats.
                async with asyncio.timeout(HEARTBEAT):
                    await self._beat()
                    beats += 1
                    if beats % 60 == 1:
                        await self._forget_dead_instances()
                    elif beats % PEERS_EVERY == 1:
                        await self._observe_peers()
            except (StoreUnavailable, TimeoutError):
                pass
            await asyncio.sleep(HEARTBEAT)

    async def _observe_peers(self) -> None:
        """The peers' states for Prometheus (gateway.killswitch.peers): one read every few beats."""
        counts = peer_states(await self._beats(), self._clock(), LIVE_WINDOW)
        for state, count in counts.items():
            gauges().instances.labels(state).set(count)

    async def _forget_dead_instances(self) -> None:
        now = self._clock()
        beats = await self._store.hgetall(INSTANCES_KEY)
        dead = [
            i for i, raw in beats.items() if (b := _parse_beat(raw)) is None or now - b[1] > _FORGET_AFTER
        ]
        if dead:
            await self._store.hdel(INSTANCES_KEY, *dead)
        await self._observe_peers()


def _parse(switch_id: str, raw: bytes) -> Switch | None:
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("id") != switch_id:
            raise ValueError("id mismatch")
        return Switch.from_record(data)
    except (ValueError, orjson.JSONDecodeError) as exc:
        # Only a bug or tampering writes these; one bad record must not freeze the whole set.
        log.error("kill switch %s: ignoring malformed record (%s)", switch_id[:64], exc)
        return None


def _parse_beat(raw: bytes) -> tuple[int, float, bool] | None:
    try:
        data = orjson.loads(raw)
        return int(data["version"]), float(data["at"]), bool(data.get("stale", False))
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None


__all__ = ["CHANNEL", "INSTANCES_KEY", "SWITCHES_KEY", "VERSION_KEY", "KillSwitchRegistry"]
