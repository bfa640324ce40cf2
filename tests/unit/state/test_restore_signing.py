"""Store reset and the gateway's signing keys (SPEC App. C, review finding MEDIUM 1): a store
rolled back to before ``keys rotate --revoke-old`` must never make the revoked (exposed) key
usable again - for verification or for signing - on an instance that held the rotation, nor,
after the write-back, on a fresh one. Against a real redis-server."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.audit import AuditTrail
from gateway.auth.signing import SIGNING_KEYS_HASH, SigningKeys
from gateway.crypto import ENV_VAR, Keyring
from gateway.state import StateStore, open_store
from gateway.state.generation import MARKER_KEY, SEQ_KEY, StoreGeneration
from gateway.state.restore import StoreRestorer
from tests.support.redis_server import RedisServer

KEYRING = Keyring.from_env({ENV_VAR: "k1:" + base64.b64encode(bytes(range(32))).decode()})
PREFIX = "sgw:k:"  # RedisStore's key layout: what an RDB snapshot holds


class Holder:
    """One gateway's signing keys, store generation and restorer on its own connection pool."""

    def __init__(self, url: str, name: str, spool: Path) -> None:
        self.store: StateStore = open_store(url)
        self.generation = StoreGeneration(self.store)
        self.keys = SigningKeys(self.store, KEYRING, generation=self.generation)
        self.audit = AuditTrail(self.store, spool_dir=spool / name)
        self.restorer = StoreRestorer(
            self.generation,
            {"signing": self.keys},
            self.audit.system_event("store.restored"),
            instance_id=name,
        )

    async def start(self) -> None:
        await self.store.open()
        await self.generation.check()
        await self.keys.load()

    def refuses(self, kid: str) -> bool:
        """Memory only, like the hot path: no verification and no signing with ``kid``."""
        return (
            self.keys.known_keys(kid) is None
            and kid not in {k["kid"] for k in self.keys.jwks()["keys"]}
            and self.keys.active.kid != kid
        )

    async def close(self) -> None:
        self.audit.close()
        await self.store.close()


@pytest.fixture
async def holders(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    made: list[Holder] = []

    async def make(name: str) -> Holder:
        holder = Holder(redis_url, name, tmp_path)
        made.append(holder)
        await holder.start()
        return holder

    yield make
    for holder in made:
        await holder.close()


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, password=server.password)


ROLLBACKS = {
    # Only the key set goes back (a partial restore): marker and counter look intact.
    "key-set-only": ([SIGNING_KEYS_HASH], False),
    # The store comes back from an older snapshot that kept the marker (a lagging replica).
    "older-snapshot-with-marker": ([SIGNING_KEYS_HASH, SEQ_KEY, MARKER_KEY], True),
    # ... or that never had it (a replica that never synced the marker).
    "older-snapshot-without-marker": ([SIGNING_KEYS_HASH, SEQ_KEY], True),
}
REASONS = {
    "key-set-only": "signing key revocation went back",
    "older-snapshot-with-marker": "security writes went back",
    "older-snapshot-without-marker": "marker missing",
}


@pytest.mark.parametrize("rollback", list(ROLLBACKS))
async def test_a_store_rolled_back_before_revoke_old_never_revives_the_exposed_key(
    holders: Any, shared_redis_server: RedisServer, rollback: str
) -> None:
    a: Holder = await holders("a")
    exposed = a.keys.active.kid
    await a.store.incr(SEQ_KEY)  # some security write before the snapshot
    names, flush = ROLLBACKS[rollback]
    with client(shared_redis_server) as raw:
        snapshot = {name: raw.dump(PREFIX + name) for name in names}
        new = await a.keys.rotate(revoke_old=True, token_ttl=900)
        assert a.refuses(exposed)
        # The store goes back to before the rotation.
        if flush:
            raw.flushall()
        for name, value in snapshot.items():
            assert value is not None, name
            raw.restore(PREFIX + name, 0, value, replace=True)

    # SECURITY: the periodic resync (or an unknown-kid reload) does not bring the key back.
    assert await a.keys.reload() is False
    assert await a.keys.key_for(exposed) == ()
    assert a.refuses(exposed) and a.keys.active.kid == new.kid
    assert a.generation.pending == REASONS[rollback]

    await a.restorer.probe()  # the write-back: revoked wins
    assert a.generation.pending is None and not a.restorer.restoring
    assert a.refuses(exposed) and a.keys.active.kid == new.kid
    assert await a.store.get(MARKER_KEY) == a.generation.known

    # A fresh instance started after the write-back refuses it too, and signs with the new key.
    c: Holder = await holders("c")
    assert c.refuses(exposed) and c.keys.active.kid == new.kid
    assert await c.keys.key_for(exposed) == ()
    assert c.keys.known_keys(new.kid) is not None


@pytest.mark.parametrize("order", ["together", "laggard-first", "laggard-last"])
async def test_a_laggard_writing_back_the_exposed_key_cannot_unrevoke_it(
    holders: Any, shared_redis_server: RedisServer, order: str
) -> None:
    """b never heard of the rotation (it still holds the exposed key as active); after a flush
    both write back: whichever lands first, the store ends with the key revoked."""
    a: Holder = await holders("a")
    b: Holder = await holders("b")
    exposed = a.keys.active.kid
    assert b.keys.active.kid == exposed
    new = await a.keys.rotate(revoke_old=True, token_ttl=900)  # b does not reload: it lags
    assert not b.refuses(exposed)

    shared_redis_server.flushall()
    if order == "together":
        await asyncio.gather(a.restorer.probe(), b.restorer.probe())
    elif order == "laggard-first":
        await b.restorer.probe()
        await a.restorer.probe()
    else:
        await a.restorer.probe()
        await b.restorer.probe()
    assert a.refuses(exposed)

    c: Holder = await holders("c")
    assert c.refuses(exposed) and c.keys.active.kid == new.kid
    # The laggard learns it too once the marker renewal reaches it (its next probe and load).
    for _ in range(3):
        await b.restorer.probe()
        await b.keys.reload()
    assert b.refuses(exposed) and b.keys.active.kid == new.kid


async def test_without_a_generation_memory_still_never_unrevokes(redis_url: str) -> None:
    """Revocations are monotonic in memory even where no reset detection runs (a CLI, a test):
    the rolled-back key set is read, but the exposed key stays refused and never signs."""
    async with open_store(redis_url) as store:
        keys = SigningKeys(store, KEYRING)
        await keys.load()
        exposed = keys.active.kid
        before = await store.hgetall(SIGNING_KEYS_HASH)
        await keys.rotate(revoke_old=True, token_ttl=900)
        await keys.rotate(revoke_old=False, token_ttl=900)  # tidies the dead key away
        assert exposed not in await store.hgetall(SIGNING_KEYS_HASH)
        await store.delete(SIGNING_KEYS_HASH)
        for kid, value in before.items():
            await store.hset(SIGNING_KEYS_HASH, kid, value)
        await keys.load()
        assert keys.known_keys(exposed) is None and await keys.key_for(exposed) == ()
        assert keys.active.kid != exposed
        assert exposed not in {k["kid"] for k in keys.jwks()["keys"]}


async def test_revoke_old_on_a_store_flushed_unnoticed_still_revokes_the_key_held(
    holders: Any, shared_redis_server: RedisServer
) -> None:
    """The operator revokes the exposed key right after a flush nobody noticed yet: the store
    no longer lists it, but the key this instance holds is revoked all the same."""
    a: Holder = await holders("a")
    exposed = a.keys.active.kid
    shared_redis_server.flushall()
    new = await a.keys.rotate(revoke_old=True, token_ttl=900)
    assert a.refuses(exposed) and a.keys.active.kid == new.kid
    await a.restorer.probe()
    assert a.generation.pending is None and a.refuses(exposed)
    c: Holder = await holders("c")
    assert c.refuses(exposed) and c.keys.active.kid == new.kid
